#!/usr/bin/env python3
"""`make bench`: boot, memory and size figures of the Cairn images, side by
side with a conventional systemd + containerd baseline. Printed, never asserted.

  python3 tests/bench.py [--arches "x86_64 aarch64"] [--boots N] [--no-baseline]

Env: BENCH_BOOTS (3), BENCH_ARCHES (CAIRN_TEST_ARCHES, default both),
BENCH_MEMORY (MiB, 1024: the baseline's default, and passed to it as MEM_MIB),
BENCH_BASELINE (1; 0 skips ../shared/bench/baseline-systemd.sh, which needs
root, debootstrap and a Debian mirror, ~5 min the first time, cached in
out/baseline). Console logs and results.json land in out/bench/.

Boot phases come from console timestamps: cairn-init prints
`[  uptime] cairn-init: <message>` with CLOCK_BOOTTIME seconds (the kernel's
clock), and the harness stamps every console line with the host time since
QEMU started. Kernel start on the host clock = host time of the first init
line minus its uptime; everything before it is firmware + GRUB + loading.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from cairn_qemu import fields, uptime_of  # noqa: E402

PHASES = ["stage 1 started", "switching root", "stage 2 started", "containerd started",
          "containerd answered", "API answered"]
MB = 1000 * 1000
say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731


# -- boots ---------------------------------------------------------------------


def boot_once(arch: str, log: Path, memory: int) -> dict:
    """Boots a fresh copy of the image to ready; returns the figures of that boot."""
    with tempfile.TemporaryDirectory(prefix="cairn-bench.") as tmp:
        image = harness.copy_image(arch, Path(tmp))
        vm = harness.Vm(image, arch=arch, memory=memory, log=log).start()
        try:
            vm.wait_for(harness.READY, harness.ready_timeout(arch))
            lines = list(vm.lines)
            accel = vm.accel
        finally:
            vm.kill()
    return analyse(lines) | {"accel": accel}


def analyse(lines: list[tuple[float, str]]) -> dict:
    """Figures of one boot from (host seconds, console line) pairs."""
    r: dict = {}
    kernel_host = None
    for host_t, line in lines:
        ts = uptime_of(line.strip())
        if ts is None:
            continue
        uptime, msg = ts
        if "cairn-init:" in msg and kernel_host is None:
            kernel_host = host_t - uptime
        for phase in PHASES:
            if f"cairn-init: {phase}" in msg and phase not in r:
                r[phase] = uptime
        if re.search(r"cairn-init: ready\b", msg) and "ready_uptime" not in r:
            r["ready_uptime"] = uptime
            r |= {k: v for k, v in fields(msg).items() if k.endswith("_kib")}
    for host_t, line in lines:
        if line.strip() == "cairn: ready" or harness.READY in line:
            r["qemu_to_ready"] = host_t
            if "ready_uptime" not in r and kernel_host is not None:
                r["ready_uptime"] = host_t - kernel_host
            break
        if "Linux version" in line and kernel_host is None:
            kernel_host = host_t  # banner shown (loglevel allows it)
    r["firmware"] = kernel_host
    p = lambda name: r.get(name)  # noqa: E731
    diff = lambda a, b: (a - b) if a is not None and b is not None else None  # noqa: E731
    return {
        "firmware_grub_s": r["firmware"],
        "kernel_to_stage1_s": p("stage 1 started"),
        "stage1_s": diff(p("stage 2 started"), p("stage 1 started")),
        "stage1_to_switch_root_s": diff(p("switching root"), p("stage 1 started")),
        "stage2_to_containerd_started_s": diff(p("containerd started"), p("stage 2 started")),
        "stage2_to_containerd_answered_s": diff(p("containerd answered"), p("stage 2 started")),
        "kernel_to_containerd_answered_s": p("containerd answered"),
        "kernel_to_api_answered_s": p("API answered"),
        "kernel_to_ready_s": p("ready_uptime"),
        "qemu_to_ready_s": p("qemu_to_ready"),
        "mem_used_kib": _num(r.get("mem_used_kib")),
        "containerd_rss_kib": _num(r.get("containerd_rss_kib")),
        "init_rss_kib": _num(r.get("init_rss_kib")),
        "cairn_rss_kib": _num(r.get("cairn_rss_kib")),
    }


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def series(boots: list[dict], key: str) -> list[float]:
    return sorted(b[key] for b in boots if b.get(key) is not None)


def mmm(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{fmt.format(values[0])} / {fmt.format(med)} / {fmt.format(values[-1])}"


def median(values):
    return statistics.median(values) if values else None


# -- sizes ---------------------------------------------------------------------


def allocated_extents(f, start: int, end: int):
    """(offset, length) of the data (non-hole) regions of a sparse file in [start, end)."""
    fd = f.fileno()
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def region_sizes(image: Path, start: int, end: int) -> tuple[int, int]:
    """(allocated bytes, zlib -6 compressed bytes) of a region of the image."""
    allocated, comp = 0, zlib.compressobj(6)
    compressed = 0
    with open(image, "rb") as f:
        for off, length in allocated_extents(f, start, end):
            allocated += length
            f.seek(off)
            left = length
            while left:
                chunk = f.read(min(left, 4 * 1024 * 1024))
                if not chunk:
                    break
                left -= len(chunk)
                compressed += len(comp.compress(chunk))
    return allocated, compressed + len(comp.flush())


SQUASHFS_COMP = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


def squashfs_info(image: Path, offset: int) -> tuple[int, str] | None:
    """(bytes_used, compressor) from a squashfs superblock at `offset`."""
    with open(image, "rb") as f:
        f.seek(offset)
        sb = f.read(96)
    if len(sb) < 48 or sb[:4] != b"hsqs":
        return None
    comp = int.from_bytes(sb[20:22], "little")
    return int.from_bytes(sb[40:48], "little"), SQUASHFS_COMP.get(comp, str(comp))


def esp_files(image: Path, offset: int) -> dict[str, int]:
    """Files on the ESP and their sizes (mtools, no mount)."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    with tempfile.TemporaryDirectory(prefix="cairn-esp.") as tmp:
        p = subprocess.run(["mcopy", "-s", "-n", "-i", f"{image}@@{offset}", "::*", tmp],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return {}
        return {str(f.relative_to(tmp)): f.stat().st_size
                for f in sorted(Path(tmp).rglob("*")) if f.is_file()}


def sizes(arch: str) -> dict:
    image = harness.image_path(arch)
    st = image.stat()
    out: dict = {"image_apparent": st.st_size, "image_allocated": st.st_blocks * 512,
                 "partitions": {}}
    parts = harness.partitions(image)
    total_comp = 0
    for name, p in sorted(parts.items(), key=lambda kv: kv[1]["offset"]):
        alloc, comp = region_sizes(image, p["offset"], p["offset"] + p["size"])
        total_comp += comp
        out["partitions"][name] = {"size": p["size"], "allocated": alloc, "gzip": comp}
    out["image_gzip"] = total_comp
    if "root_a" in parts:
        sq = squashfs_info(image, parts["root_a"]["offset"])
        if sq:
            out["root_a_squashfs"], out["root_a_compressor"] = sq
    if "ESP" in parts:
        out["esp_files"] = esp_files(image, parts["ESP"]["offset"])
    kernel = out.get("esp_files", {}).get("cairn/a/vmlinuz")
    initrd = out.get("esp_files", {}).get("cairn/a/initrd.img")
    if kernel is not None and initrd is not None and "root_a_squashfs" in out:
        out["kernel"], out["initrd"] = kernel, initrd
        out["slot_a"] = out["root_a_squashfs"] + kernel + initrd
    init = harness.init_binary(arch)
    out["cairn_init"] = init.stat().st_size if init.exists() else None
    work = harness.REPO / "out" / arch / "work"
    if work.is_dir():
        out["work_files"] = {str(f.relative_to(work)): f.stat().st_size
                             for f in sorted(work.iterdir()) if f.is_file()}
    return out


# -- baseline ------------------------------------------------------------------


def run_baseline(boots: int, memory: int) -> dict | None:
    script = harness.REPO.parent / "shared" / "bench" / "baseline-systemd.sh"
    if not script.exists():
        say(f"baseline: {script} not found; skipped")
        return None
    if os.geteuid() != 0:
        say("baseline: needs root (debootstrap, chroot); skipped")
        return None
    workdir = harness.REPO / "out" / "baseline"
    say(f"baseline: bash {script} {workdir} (BOOTS={boots} MEM_MIB={memory}); "
        "~5 min the first time")
    env = dict(os.environ, BOOTS=str(boots), MEM_MIB=str(memory))
    p = subprocess.run(["bash", str(script), str(workdir)], cwd=harness.REPO, env=env,
                       stdout=subprocess.PIPE, text=True)
    (harness.REPO / "out" / "bench").mkdir(parents=True, exist_ok=True)
    (harness.REPO / "out" / "bench" / "baseline.txt").write_text(p.stdout)
    if p.returncode != 0:
        say(f"baseline: failed (exit {p.returncode}):\n{p.stdout[-2000:]}")
        return None
    return parse_baseline(p.stdout)


def parse_baseline(text: str) -> dict:
    """`key: value` lines; `min X / median Y / max Z` values become their median."""
    figures: dict = {}
    for key, value in re.findall(r"^(\w+):\s*(.*)$", text, re.M):
        m = re.search(r"median\s+([\d.]+)", value)
        if m:
            figures[key] = float(m.group(1))
        elif re.fullmatch(r"[\d.]+", value.strip()):
            figures[key] = float(value)
        else:
            figures[key] = value.strip()
    return figures


# -- report --------------------------------------------------------------------


def fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / MB:8.2f} MB"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"


def report(arch: str, boots: list[dict], sz: dict, base: dict | None, memory: int) -> None:
    n = len(boots)
    accel = boots[0]["accel"] if boots else "?"
    print(f"\n=== {arch}: {n} boot(s), accel {accel}, -m {memory}, min / median / max ===")
    rows = [
        ("firmware + GRUB + kernel load", "firmware_grub_s"),
        ("kernel start -> stage 1", "kernel_to_stage1_s"),
        ("stage 1 (stage 1 -> stage 2 started)", "stage1_s"),
        ("stage 2 -> containerd started", "stage2_to_containerd_started_s"),
        ("stage 2 -> containerd answered", "stage2_to_containerd_answered_s"),
        ("kernel start -> containerd answered", "kernel_to_containerd_answered_s"),
        ("kernel start -> API answered", "kernel_to_api_answered_s"),
        ("kernel start -> cairn: ready", "kernel_to_ready_s"),
        ("QEMU start -> cairn: ready", "qemu_to_ready_s"),
    ]
    for label, key in rows:
        print(f"  {label:<42} {mmm(series(boots, key)):>26} s")
    for label, key in [("memory in use at ready", "mem_used_kib"),
                       ("containerd RSS at ready", "containerd_rss_kib"),
                       ("cairn server RSS at ready", "cairn_rss_kib"),
                       ("cairn-init RSS at ready", "init_rss_kib")]:
        print(f"  {label:<42} {mmm(series(boots, key), '{:.0f}'):>26} KiB")

    print("  sizes (allocated in the sparse image / gzip -6 of that):")
    print(f"    {'whole image':<20} apparent {fmt_bytes(sz['image_apparent'])}  allocated "
          f"{fmt_bytes(sz['image_allocated'])}  gzip {fmt_bytes(sz['image_gzip'])}")
    for name, p in sz["partitions"].items():
        print(f"    {name:<20} size {fmt_bytes(p['size'])}  allocated {fmt_bytes(p['allocated'])}"
              f"  gzip {fmt_bytes(p['gzip'])}")
    if "root_a_squashfs" in sz:
        print(f"    root_a squashfs ({sz['root_a_compressor']}) {fmt_bytes(sz['root_a_squashfs'])}")
    for f, s in sz.get("esp_files", {}).items():
        print(f"    ESP {f:<32} {fmt_bytes(s)}")
    print(f"    cairn-init binary{'':<15} {fmt_bytes(sz.get('cairn_init'))}")

    b = base or {}
    # The baseline runs containerd and no Kubernetes: the like-for-like figure is
    # Cairn's kernel start -> containerd answering; the API comes on top.
    k2c = median(series(boots, "kernel_to_containerd_answered_s"))
    k2r = median(series(boots, "kernel_to_ready_s"))
    mem = median(series(boots, "mem_used_kib"))
    ctd = median(series(boots, "containerd_rss_kib"))
    init_rss = median(series(boots, "init_rss_kib"))
    slot = sz.get("slot_a")
    note = "" if arch == "x86_64" else " (baseline is x86_64)"
    print(f"  vs systemd baseline{note}, medians:")
    print(f"    {'figure':<34} {'Cairn':>12} {'baseline':>12} {'ratio':>7}  target")
    table = [
        ("kernel -> containerd answers (s)", k2c, b.get("kernel_start_to_containerd_ready_s"),
         "<= 0.33x"),
        ("kernel -> ready, API up (s)", k2r, b.get("kernel_start_to_containerd_ready_s"), ""),
        ("memory in use at ready (KiB)", mem, b.get("mem_used_at_ready_kib"), "<= 0.5x"),
        ("containerd RSS (KiB)", ctd, b.get("containerd_rss_at_ready_kib"), ""),
        ("root fs, no kernel (bytes)", sz.get("root_a_squashfs"),
         b.get("rootfs_squashfs_xz_without_kernel_and_modules_bytes"), ""),
        ("slot: root+kernel+initrd (bytes)", slot, None,
         "<= 64 MB" + ("" if arch == "x86_64" else " (x86_64)")),
        ("cairn-init on disk (bytes)", sz.get("cairn_init"), None, "<= 3 MB"),
        ("cairn-init RSS (KiB)", init_rss, None, "<= 4 MB"),
    ]
    for label, ours, theirs, target in table:
        o = "n/a" if ours is None else f"{ours:.2f}" if ours < 1000 else f"{ours:.0f}"
        t = "n/a" if theirs is None else f"{theirs:.2f}" if theirs < 1000 else f"{theirs:.0f}"
        print(f"    {label:<34} {o:>12} {t:>12} {ratio(ours, theirs):>7}  {target}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arches", default=os.environ.get(
        "BENCH_ARCHES", os.environ.get("CAIRN_TEST_ARCHES", "x86_64 aarch64")))
    ap.add_argument("--boots", type=int, default=int(os.environ.get("BENCH_BOOTS", "3")))
    ap.add_argument("--memory", type=int, default=int(os.environ.get("BENCH_MEMORY", "1024")))
    ap.add_argument("--no-baseline", action="store_true",
                    default=os.environ.get("BENCH_BASELINE", "1") == "0")
    args = ap.parse_args()
    outdir = harness.REPO / "out" / "bench"
    outdir.mkdir(parents=True, exist_ok=True)

    results: dict = {}
    for arch in args.arches.replace(",", " ").split():
        if not harness.image_path(arch).exists():
            say(f"{arch}: {harness.image_path(arch)} missing (make image ARCH={arch}); skipped")
            continue
        boots = []
        for i in range(1, args.boots + 1):
            log = outdir / f"{arch}-boot{i}.log"
            say(f"{arch}: boot {i}/{args.boots} (console: {log})")
            try:
                boots.append(boot_once(arch, log, args.memory))
            except harness.VmError as e:
                say(f"{arch}: boot {i} did not reach ready: {str(e).splitlines()[0]} ({log})")
        results[arch] = {"boots": boots, "sizes": sizes(arch)}

    base = None if args.no_baseline else run_baseline(args.boots, args.memory)
    for arch, r in results.items():
        report(arch, r["boots"], r["sizes"], base, args.memory)
    if base:
        print("\n=== systemd baseline (../shared/bench/baseline-systemd.sh), medians ===")
        for k, v in base.items():
            print(f"  {k:<52} {v}")
    (outdir / "results.json").write_text(json.dumps({"cairn": results, "baseline": base},
                                                    indent=2, default=str))
    print(f"\nraw figures: {outdir / 'results.json'}; console logs in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
