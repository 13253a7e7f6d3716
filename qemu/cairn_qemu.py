"""Launching Cairn images in QEMU: firmware, accelerator, console capture, QMP.

One module owns every QEMU command line the project uses, so `qemu/run`
(interactive), the end-to-end tests and the bench boot images the same way:

- x86_64: `-machine q35` + OVMF; aarch64: `-machine virt -cpu max` + AAVMF.
  The firmware code is mapped read-only; every VM gets a private copy of the
  firmware variables file in its own temporary directory, so boots never share
  (or persist) NVRAM boot entries.
- The disk is raw on virtio-blk with `bootindex=0` (stale NVRAM entries can
  otherwise drop OVMF into its shell).
- User-mode networking on virtio-net, with host port forwards bound to
  127.0.0.1.
- The accelerator: KVM only when the host can really run the guest under it
  (same architecture, /dev/kvm usable, and a probe that runs guest code and
  the real firmware under KVM); TCG (multi-threaded) otherwise.
  `CAIRN_ACCEL=kvm|tcg` or an explicit `accel=` forces the choice.
- Library mode: the serial console goes to a pipe that a reader thread
  splits into lines, stamps with the host time since QEMU started, keeps in
  memory (for `wait_for`) and appends to a log file. A QMP socket drives
  `system_powerdown` and `quit`.
- Interactive mode (`qemu/run`): serial and monitor muxed on the terminal,
  so Ctrl-A X quits and Ctrl-A C reaches the monitor.

Python 3.11, standard library only.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

ARCHES = ("x86_64", "aarch64")

# Firmware: (code, vars template), first existing pair wins.
FIRMWARE = {
    "x86_64": [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ],
    "aarch64": [
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    ],
}

# Under TCG, `max` with the cheap (implementation-defined) pointer
# authentication emulates fastest; the architected QARMA algorithm is slow.
TCG_CPU = {"x86_64": None, "aarch64": "max,pauth-impdef=on"}

CONSOLE_TAIL = 40
_ANSI = re.compile(r"\x1b(\[[0-9;?=]*[A-Za-z]|[()][0-9A-Za-z]|[=>78cDEHM])")


_live_vms: "weakref.WeakSet[Vm]" = weakref.WeakSet()


@atexit.register
def _kill_live_vms() -> None:
    for vm in list(_live_vms):
        vm.kill()


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the QEMU child: SIGKILL it when the process that started it dies,
    so no VM outlives a killed test run."""
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class VmError(RuntimeError):
    """QEMU failed, exited, or the console did not show what was awaited."""


def qemu_binary(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r} (expected one of {', '.join(ARCHES)})")
    return f"qemu-system-{arch}"


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def firmware(arch: str) -> tuple[str, str]:
    for code, vars_template in FIRMWARE[arch]:
        if os.path.exists(code) and os.path.exists(vars_template):
            return code, vars_template
    wanted = ", ".join(c for c, _ in FIRMWARE[arch])
    pkg = "ovmf" if arch == "x86_64" else "qemu-efi-aarch64"
    raise VmError(f"no UEFI firmware for {arch} (looked for {wanted}; apt-get install {pkg})")


# ---------------------------------------------------------------------------
# Accelerator choice


_kvm_cache: dict[str, tuple[bool, str]] = {}


def _probe_firmware_bytes() -> bytes:
    """A 64 KiB BIOS image whose reset vector prints 'K' on COM1 and halts."""
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere
    # mov dx,0x3f8 ; mov al,'K' ; out dx,al ; hlt ; hlt
    code = bytes([0xBA, 0xF8, 0x03, 0xB0, ord("K"), 0xEE, 0xF4, 0xF4])
    image[0xFFF0 : 0xFFF0 + len(code)] = code
    return bytes(image)


def _run_probe(cmd: list[str], want: bytes, timeout: float) -> tuple[bool, str]:
    """Runs QEMU until `want` appears on its stdout; returns (seen, why-not)."""
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as e:
        return False, str(e)
    out, err = b"", b""
    deadline = time.monotonic() + timeout
    try:
        streams = [proc.stdout, proc.stderr]
        while streams and time.monotonic() < deadline:
            ready, _, _ = select.select(streams, [], [], 0.05)
            for f in ready:
                data = os.read(f.fileno(), 4096)
                if not data:
                    streams.remove(f)
                elif f is proc.stdout:
                    out += data
                else:
                    err += data
            if want in out:
                return True, ""
            if b"KVM internal error" in err or b"emulation failure" in err:
                return False, "KVM internal error (emulation failure)"
        if proc.poll() is not None:
            msg = err.decode(errors="replace").strip().splitlines()
            return False, msg[-1] if msg else f"QEMU exited with {proc.returncode}"
        return False, f"no output within {timeout:.0f} s"
    finally:
        proc.kill()
        proc.wait()


def kvm_usable(arch: str) -> tuple[bool, str]:
    """Whether KVM really runs `arch` guests here: (usable, reason if not).

    Two probes, both cheap when KVM is broken: a 64 KiB real-mode program
    (x86_64 only) that must print 'K', then the real UEFI firmware, which must
    reach its first console output. Some nested setups pass the first and
    fail the second with "KVM internal error", so both are needed.
    The result is cached for the life of the process.
    """
    if arch in _kvm_cache:
        return _kvm_cache[arch]
    result = _kvm_probe(arch)
    _kvm_cache[arch] = result
    return result


def _kvm_probe(arch: str) -> tuple[bool, str]:
    if host_arch() != arch:
        return False, f"host is {host_arch()}, guest is {arch}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    binary = qemu_binary(arch)
    if shutil.which(binary) is None:
        return False, f"{binary} not found"
    with tempfile.TemporaryDirectory(prefix="cairn-kvm-probe.") as tmp:
        if arch == "x86_64":
            bios = Path(tmp, "probe.bin")
            bios.write_bytes(_probe_firmware_bytes())
            ok, why = _run_probe(
                [binary, "-accel", "kvm", "-M", "pc", "-nodefaults", "-display", "none",
                 "-serial", "stdio", "-bios", str(bios)],
                b"K", 3.0,
            )
            if not ok:
                return False, f"real-mode probe: {why}"
        code, vars_template = firmware(arch)
        vars_copy = Path(tmp, "vars.fd")
        shutil.copyfile(vars_template, vars_copy)
        machine = ["-machine", "q35"] if arch == "x86_64" else ["-machine", "virt", "-cpu", "host"]
        ok, why = _run_probe(
            [binary, "-accel", "kvm", *machine, "-m", "256", "-nodefaults", "-display", "none",
             "-serial", "stdio",
             "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
             "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"],
            b"\x1b", 6.0,  # the firmware's console starts with an escape sequence
        )
        if not ok:
            return False, f"firmware probe: {why}"
    return True, ""


def choose_accel(arch: str, requested: str = "auto") -> tuple[str, str]:
    """Resolves auto|kvm|tcg to kvm or tcg; returns (accel, reason)."""
    if requested == "auto":
        requested = os.environ.get("CAIRN_ACCEL", "auto") or "auto"
        forced_by = "CAIRN_ACCEL"
    else:
        forced_by = "--accel"
    if requested in ("kvm", "tcg"):
        return requested, f"forced by {forced_by}"
    if requested != "auto":
        raise ValueError(f"accel must be auto, kvm or tcg, not {requested!r}")
    ok, why = kvm_usable(arch)
    return ("kvm", "KVM probe passed") if ok else ("tcg", f"KVM not usable: {why}")


# ---------------------------------------------------------------------------
# The VM


class Vm:
    """One QEMU process booting one image.

    Library mode (default) captures the serial console; `interactive=True`
    attaches serial + monitor to the terminal instead (see qemu/run).
    """

    def __init__(
        self,
        image: str | os.PathLike,
        arch: str = "x86_64",
        memory: int = 512,
        forwards: list[tuple[int, int]] | tuple = (),
        accel: str = "auto",
        log: str | os.PathLike | None = None,
        smp: int = 2,
        extra: list[str] | tuple = (),
        cpu: str | None = None,
        interactive: bool = False,
        echo: bool | None = None,
        user_net: bool = True,
    ):
        qemu_binary(arch)
        self.image = Path(image)
        self.arch = arch
        self.memory = int(memory)
        self.forwards = [(int(h), int(g)) for h, g in forwards]
        self.requested_accel = accel
        self.accel: str | None = None
        self.accel_reason = ""
        self.log_path = Path(log) if log else None
        self.smp = int(smp)
        self.extra = list(extra)
        self.cpu = cpu
        self.interactive = interactive
        # The user-mode NIC (eth0, DHCP, host forwards); off for a VM that
        # only has the NICs in `extra` (a second machine on a socket link).
        self.user_net = user_net
        # echo console lines to stdout as they arrive (env CAIRN_QEMU_ECHO=1)
        self.echo = os.environ.get("CAIRN_QEMU_ECHO") == "1" if echo is None else echo
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.qmp_path: str | None = None
        # Host wall clock (time.time()) and monotonic clock at QEMU start.
        self.started_at: float | None = None
        self._t0: float | None = None
        # Console: complete lines as (seconds since QEMU start, text).
        self.lines: list[tuple[float, str]] = []
        self._partial = ""
        self._text: list[str] = []  # chunks of the cleaned console text
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_reader: threading.Thread | None = None
        self._log = None

    # -- command line -------------------------------------------------------

    def command(self) -> list[str]:
        """The QEMU command line (needs start()'s temp dir for vars and QMP)."""
        self.prepare()
        code, _ = firmware(self.arch)
        vars_copy = os.path.join(self.tmpdir, "vars.fd")
        cmd = [qemu_binary(self.arch)]
        if self.arch == "x86_64":
            cmd += ["-machine", "q35"]
            cpu = self.cpu or ("host" if self.accel == "kvm" else TCG_CPU["x86_64"])
        else:
            cmd += ["-machine", "virt"]
            cpu = self.cpu or ("host" if self.accel == "kvm" else TCG_CPU["aarch64"])
        if cpu:
            cmd += ["-cpu", cpu]
        cmd += ["-accel", "kvm" if self.accel == "kvm" else "tcg,thread=multi"]
        cmd += ["-m", str(self.memory), "-smp", str(self.smp)]
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"if=none,id=disk0,format=raw,file={self.image}",
            "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        ]
        if self.user_net:
            netdev = "user,id=net0" + "".join(
                f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.forwards
            )
            # romfile= : no iPXE option ROM; nothing here boots from the network.
            cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
        cmd += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.interactive and self.log_path:
            # serial + monitor muxed on the terminal, serial output copied to the log
            cmd += [
                "-display", "none",
                "-chardev", f"stdio,id=char0,mux=on,logfile={self.log_path},logappend=off",
                "-serial", "chardev:char0", "-mon", "chardev=char0,mode=readline",
            ]
        elif self.interactive:
            cmd += ["-display", "none", "-serial", "mon:stdio"]
        else:
            cmd += [
                "-display", "none", "-monitor", "none",
                "-chardev", "stdio,id=console,signal=off",
                "-serial", "chardev:console",
            ]
        cmd += ["-no-user-config"] + self.extra
        return cmd

    # -- lifecycle ------------------------------------------------------------

    def prepare(self) -> None:
        """Chooses the accelerator and creates the temp dir (vars copy, QMP path)."""
        if self.tmpdir:
            return
        if not self.image.exists():
            raise VmError(f"image {self.image} does not exist")
        self.accel, self.accel_reason = choose_accel(self.arch, self.requested_accel)
        _, vars_template = firmware(self.arch)
        self.tmpdir = tempfile.mkdtemp(prefix="cairn-vm.")
        shutil.copyfile(vars_template, os.path.join(self.tmpdir, "vars.fd"))
        self.qmp_path = os.path.join(self.tmpdir, "qmp.sock")

    def start(self) -> "Vm":
        if self.proc is not None:
            raise VmError("VM already started")
        self.prepare()
        cmd = self.command()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path and not self.interactive:
            self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")
            self._log.write(f"# {' '.join(cmd)}\n# accel: {self.accel} ({self.accel_reason})\n")
            self._log.flush()
        self.started_at = time.time()
        self._t0 = time.monotonic()
        if self.interactive:
            self.proc = subprocess.Popen(cmd)
            return self
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        _live_vms.add(self)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        return self

    def _stamp(self) -> float:
        return time.monotonic() - (self._t0 or time.monotonic())

    def _read_console(self) -> None:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            now = self._stamp()
            with self._cond:
                if not data:
                    if self._partial:
                        self._add_line(now, self._partial)
                        self._partial = ""
                    self._cond.notify_all()
                    break
                text = data.decode("utf-8", errors="replace").replace("\r", "")
                text = _ANSI.sub("", self._partial + text)
                *complete, self._partial = text.split("\n")
                for line in complete:
                    self._add_line(now, line)
                self._cond.notify_all()

    def _add_line(self, stamp: float, line: str) -> None:
        self.lines.append((stamp, line))
        self._text.append(line + "\n")
        if self._log:
            self._log.write(f"{stamp:9.3f} | {line}\n")
            self._log.flush()
        if self.echo:
            print(f"{stamp:9.3f} | {line}", flush=True)

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if "host doesn't support requested feature" in line:
                continue  # harmless TCG CPUID noise
            self._stderr.append(line)
            if self._log:
                with self._cond:
                    self._log.write(f"{self._stamp():9.3f} ! qemu: {line}\n")
                    self._log.flush()

    @property
    def console(self) -> str:
        """All console text so far (ANSI escapes and CRs removed)."""
        with self._cond:
            return "".join(self._text) + self._partial

    def tail(self, n: int = CONSOLE_TAIL) -> str:
        with self._cond:
            lines = [line for _, line in self.lines[-n:]]
            if self._partial:
                lines.append(self._partial)
        return "\n".join(lines[-n:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _failure(self, what: str) -> VmError:
        parts = [what]
        if self.log_path:
            parts.append(f"console log: {self.log_path}")
        if self._stderr:
            parts.append("qemu stderr:\n  " + "\n  ".join(self._stderr))
        parts.append(f"last {CONSOLE_TAIL} console lines:\n" + self.tail())
        return VmError("\n".join(parts))

    def wait_for(self, pattern: str | re.Pattern, timeout: float, since: int = 0) -> re.Match:
        """Waits until `pattern` matches the console text from offset `since`.

        Returns the match (offsets are relative to the whole console text).
        Raises VmError on timeout or when QEMU exits first, with the console tail.
        """
        if self.proc is None:
            raise VmError("VM not started")
        rx = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = "".join(self._text) + self._partial
                m = rx.search(text, since)
                if m:
                    return m
                reader_done = self._reader is None or not self._reader.is_alive()
                if reader_done and self.proc.poll() is not None:
                    raise self._failure(
                        f"QEMU exited (status {self.proc.returncode}) before the console "
                        f"showed {rx.pattern!r}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure(
                        f"timed out after {timeout:.0f} s waiting for {rx.pattern!r} on the console"
                    )
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        """Current end of the console text, for wait_for(since=...)."""
        with self._cond:
            return sum(len(c) for c in self._text) + len(self._partial)

    def line_time(self, pattern: str | re.Pattern) -> float | None:
        """Host seconds since QEMU start at which the first line matching arrived."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._cond:
            for stamp, line in self.lines:
                if rx.search(line):
                    return stamp
        return None

    def send(self, text: str) -> None:
        """Types `text` on the serial console."""
        if not self.proc or not self.proc.stdin:
            raise VmError("console input needs a running library-mode VM")
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    # -- QMP --------------------------------------------------------------------

    def qmp(self, command: str, timeout: float = 10.0, **arguments) -> dict:
        """Runs one QMP command on a fresh connection and returns its reply."""
        if not self.qmp_path:
            raise VmError("VM not started")
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(self.qmp_path)
                break
            except OSError as e:
                sock.close()
                if not self.running() or time.monotonic() > deadline:
                    raise VmError(f"QMP connect to {self.qmp_path}: {e}") from e
                time.sleep(0.1)
        with sock, sock.makefile("rwb") as f:

            def reply() -> dict:
                while True:
                    line = f.readline()
                    if not line:
                        raise VmError(f"QMP connection closed during {command}")
                    msg = json.loads(line)
                    if "event" not in msg:
                        return msg

            reply()  # greeting
            for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                req = {"execute": cmd}
                if args:
                    req["arguments"] = args
                f.write(json.dumps(req).encode() + b"\n")
                f.flush()
                msg = reply()
                if "error" in msg:
                    raise VmError(f"QMP {cmd}: {msg['error']}")
            return msg.get("return", {})

    def powerdown(self) -> None:
        """Presses the ACPI (x86_64) / GPIO or ACPI GED (aarch64) power button."""
        self.qmp("system_powerdown")

    def wait_exit(self, timeout: float) -> int:
        """Waits for QEMU to exit by itself; returns its exit status."""
        if self.proc is None:
            raise VmError("VM not started")
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"QEMU still running after {timeout:.0f} s") from None
        if self._reader:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        """Stops QEMU now (QMP quit, then SIGKILL) and removes the temp dir."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.qmp("quit", timeout=2)
                self.proc.wait(5)
            except (VmError, OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        self.close()

    def close(self) -> None:
        if self._reader:
            self._reader.join(5)
        if self._stderr_reader:
            self._stderr_reader.join(2)
        for f in (self.proc and self.proc.stdin,):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self._log:
            with self._cond:
                self._log.close()
                self._log = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "Vm":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


# ---------------------------------------------------------------------------
# Console timestamps


KERNEL_TS = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def socket_link(name: str, local_port: int, remote_port: int) -> list[str]:
    """QEMU arguments for a NIC on a point-to-point Ethernet link between
    two VMs, its frames carried in UDP datagrams on the host's loopback:
    this VM sends to `remote_port` and receives on `local_port`, the other
    the other way round. Connectionless, so the two may start in any order."""
    return [
        "-netdev", f"socket,id={name},udp=127.0.0.1:{remote_port},localaddr=127.0.0.1:{local_port}",
        "-device", f"virtio-net-pci,netdev={name},romfile=",
    ]


def free_udp_ports(n: int) -> list[int]:
    """`n` distinct UDP ports nothing on the host's loopback is bound to (now)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def uptime_of(line: str) -> tuple[float, str] | None:
    """Splits `[   1.234] message` (kernel or cairn-init) into (seconds, message)."""
    m = KERNEL_TS.match(line)
    return (float(m.group(1)), m.group(2)) if m else None


def fields(line: str) -> dict[str, str]:
    """`key=value` fields of a log line."""
    return dict(re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", line))
