"""Helpers shared by the end-to-end tests and the bench: where the images and
the host tool are, sparse working copies of an image, partition extraction and
the host-side filesystem tools (e2fsck, dumpe2fs, debugfs, mtools, sgdisk).

Standard library only, so `tests/bench.py` runs without pytest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu"))

import cairn_qemu  # noqa: E402
from cairn_qemu import Vm, VmError  # noqa: E402,F401

READY = r"cairn: ready"
POWERING_OFF = r"cairn: powering off"
# The kernel's banner is KERN_NOTICE, hidden by loglevel=4: the init's first
# line is the first sure sign of the kernel on the console.
KERNEL_START = r"Linux version \d|cairn-init: stage 1 started"
STAGE1 = r"cairn-init: stage 1 started"
FIRMWARE_BOOT = r"BdsDxe: (loading|starting) Boot"
MUSL = {"x86_64": "x86_64-unknown-linux-musl", "aarch64": "aarch64-unknown-linux-musl"}


def arches() -> list[str]:
    """Architectures under test: env CAIRN_TEST_ARCHES (default both)."""
    wanted = os.environ.get("CAIRN_TEST_ARCHES", "x86_64 aarch64").replace(",", " ").split()
    for a in wanted:
        if a not in cairn_qemu.ARCHES:
            raise ValueError(f"CAIRN_TEST_ARCHES: unknown arch {a!r}")
    return wanted


def ready_timeout(arch: str) -> float:
    """Seconds from QEMU start to `cairn: ready` we tolerate (TCG, shared CPUs)."""
    env = os.environ.get("CAIRN_READY_TIMEOUT")
    if env:
        return float(env)
    return 240.0 if arch == "x86_64" else 360.0


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def image_path(arch: str) -> Path:
    return REPO / "out" / arch / "cairn.img"


def image_tool() -> Path:
    """The host tool: env CAIRN_IMAGE_TOOL, else a release or debug build."""
    env = os.environ.get("CAIRN_IMAGE_TOOL")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = target_dir() / profile / "cairn-image"
        if p.exists():
            return p
    return target_dir() / "release" / "cairn-image"


def init_binary(arch: str) -> Path:
    return target_dir() / MUSL[arch] / "release" / "cairn-init"


def run(cmd: list, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Runs a command, capturing text output; a failure names the command and its output."""
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def tool(*args, check: bool = True) -> subprocess.CompletedProcess:
    return run([image_tool(), *args], check=check)


def copy_image(arch: str, dest_dir: Path, name: str = "cairn.img") -> Path:
    """A private sparse copy of out/<arch>/cairn.img (out/ is never modified)."""
    src = image_path(arch)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist: build it first (make image ARCH={arch})")
    dest = Path(dest_dir) / name
    run(["cp", "--sparse=always", src, dest])
    return dest


def partitions(image: Path) -> dict[str, dict]:
    """GPT partitions by name: {name: {number, name, offset, size}} (cairn-image)."""
    return {p["name"]: p for p in json.loads(tool("partitions", "--json", image).stdout)}


def extract_partition(image: Path, name: str, dest: Path) -> Path:
    """Copies partition `name` of `image` to the file `dest` (sparse)."""
    p = partitions(image)[name]
    run(["dd", f"if={image}", f"of={dest}", "bs=1M", "iflag=skip_bytes,count_bytes",
         f"skip={p['offset']}", f"count={p['size']}", "conv=sparse", "status=none"])
    return dest


def dumpe2fs_header(part: Path) -> dict[str, str]:
    out = run(["dumpe2fs", "-h", part]).stdout
    return {k.strip(): v.strip() for k, v in re.findall(r"^([^:\n]+):\s*(.*)$", out, re.M)}


def ext4_size(part: Path) -> int:
    """Size of the ext4 filesystem on `part` in bytes (block count x block size)."""
    h = dumpe2fs_header(part)
    return int(h["Block count"]) * int(h["Block size"])


def e2fsck(part: Path) -> subprocess.CompletedProcess:
    """`e2fsck -fn`: forced, read-only check; exit status 0 means clean."""
    return run(["e2fsck", "-fn", part], check=False)


def debugfs_cat(part: Path, path: str) -> str:
    p = run(["debugfs", "-R", f"cat {path}", part], check=False)
    return p.stdout


def grubenv(image: Path) -> dict[str, str]:
    """The ESP's grubenv variables (cairn-image grubenv)."""
    out = tool("grubenv", image).stdout
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", out, re.M))


def mcopy_to_partition(image: Path, part: str, src: Path, dest_name: str) -> None:
    """Writes a file into a FAT partition of the image, as a user's laptop would."""
    offset = partitions(image)[part]["offset"]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    run(["mcopy", "-o", "-i", f"{image}@@{offset}", src, f"::{dest_name}"], env=env)


def busybox(arch: str) -> Path:
    """A static busybox for `arch`, to build test container images from:
    Debian 12's `busybox-static`, pinned in `image/components.lock` (the
    image's debug shell) and extracted by the image build into
    `<CAIRN_CACHE>/<arch>/tree`; the host's for its own architecture if
    that tree is not there."""
    cache = Path(os.environ.get("CAIRN_CACHE") or REPO / ".cache" / "components")
    pinned = cache / arch / "tree" / "bin" / "busybox"
    if pinned.exists():
        return pinned
    host = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(os.uname().machine)
    found = shutil.which("busybox")
    if arch == host and found:
        return Path(found)
    raise RuntimeError(f"no busybox for {arch} at {pinned}: build the image first (make images)")


def which(*tools: str) -> list[str]:
    """The tools in `tools` that are not on PATH (sbin included)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [t for t in tools if shutil.which(t, path=path) is None]


def boot(arch: str, image: Path, log: Path, **kw) -> Vm:
    """Starts QEMU on `image` (library mode, console to `log`)."""
    kw.setdefault("memory", int(os.environ.get("CAIRN_TEST_MEMORY", "512")))
    return Vm(image, arch=arch, log=log, **kw).start()


def power_off(vm: Vm, timeout: float = 120.0) -> int:
    """QMP system_powerdown; waits for `cairn: powering off` and for QEMU to exit."""
    mark = vm.mark()
    vm.powerdown()
    vm.wait_for(POWERING_OFF, timeout, since=mark)
    return vm.wait_exit(timeout)
