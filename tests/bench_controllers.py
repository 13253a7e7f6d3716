#!/usr/bin/env python3
"""`make bench` (scheduler and controllers part): figures of the control
loops of a release `cairn server` on this machine. Printed, never asserted.

  python3 tests/bench_controllers.py [--idle S] [--nodes N] [--pods N] [--replicas N]

Starts `cairn server --disable-agent` on a temporary data dir (embedded
SQLite store), then drives it with the load generator
(orchestrator/examples/ctl_load.rs, a second process):

1. the server idle and empty for --idle seconds: CPU from /proc/<pid>/stat;
2. --nodes Node objects registered with their Leases, renewed every 10 s
   for the rest of the run (a background ctl_load, as the nodes' kubelets
   would);
3. scheduler throughput: --pods pods created on 8 connections, from the
   first create to the last binding seen on a watch;
4. a --replicas Deployment: time until all its pods exist and are bound,
   until it is available, and for a rolling update (a template change) until
   updatedReplicas and availableReplicas equal replicas. No agent runs: the
   load generator acts as the nodes' hollow kubelets (as Kubernetes'
   kubemark), marking each bound pod Running/Ready through pods/status and
   finishing deleted pods; no container runs;
5. the server idle again, everything settled: CPU over --idle seconds with
   the nodes heartbeating (10 Lease updates/s for 100 nodes), then over up
   to 25 s with the heartbeats paused (SIGSTOP; shorter than the 40 s node
   grace period): what the server does on its own. RSS.

Env: CARGO_TARGET_DIR (binaries in its release/), BENCH_CONTROLLERS_IDLE (30).
Raw figures land in out/bench/controllers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import CAIRN, REPO, TARGET, Server, rss_kib  # noqa: E402

LOAD = TARGET / "release" / "examples" / "ctl_load"
TICK = os.sysconf("SC_CLK_TCK")
say = lambda msg: print(f"bench-controllers: {msg}", file=sys.stderr, flush=True)  # noqa: E731


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (fields 14 and 15 of stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def idle_cpu(pid: int, seconds: int) -> float:
    """The share of one core `pid` used over `seconds`, in percent."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)


def load(server: Server, phase: str, *args: str) -> dict:
    out = subprocess.run([str(LOAD), "--data-dir", str(server.dir), "--port", str(server.port),
                          phase, *args], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"ctl_load {phase}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """What else the machine was doing: load average and the busiest processes."""
    load1 = Path("/proc/loadavg").read_text().split()[0]
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
                         capture_output=True, text=True).stdout.splitlines()[:4]
    return f"{os.cpu_count()} CPUs, load average {load1}; busiest: " + \
        ", ".join(" ".join(t.split()[::-1]) + "%" for t in top)


def bench(args: argparse.Namespace) -> dict:
    data = Path(tempfile.mkdtemp(prefix="cairn-bench-ctl."))
    r: dict = {"machine_before": machine()}
    heartbeats = None
    server = Server(data, None)
    pid = server.proc.pid
    try:
        time.sleep(2)
        r["rss_empty_kib"] = rss_kib(pid)
        say(f"empty server idle for {args.idle} s")
        r["idle_cpu_empty_pct"] = idle_cpu(pid, args.idle)
        say(f"registering {args.nodes} nodes")
        heartbeats = subprocess.Popen(
            [str(LOAD), "--data-dir", str(data), "--port", str(server.port), "nodes",
             "--nodes", str(args.nodes)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = heartbeats.stdout.readline()
        if not line:
            raise RuntimeError(f"ctl_load nodes: {heartbeats.stderr.read().strip()}")
        r["nodes"] = json.loads(line)
        time.sleep(2)
        r["rss_nodes_kib"] = rss_kib(pid)
        for phase, extra in [("schedule", ["--pods", str(args.pods)]),
                             ("deployment", ["--replicas", str(args.replicas)])]:
            say(phase)
            before = cpu_seconds(pid)
            try:
                r[phase] = load(server, phase, *extra)
                r[phase]["server_cpu_seconds"] = cpu_seconds(pid) - before
            except RuntimeError as e:
                say(str(e).splitlines()[0])
                r[phase] = {"error": str(e).splitlines()[0]}
            r[f"rss_after_{phase}_kib"] = rss_kib(pid)
        # Let the last status updates and events land before the window.
        time.sleep(5)
        say(f"settled server idle for {args.idle} s, {args.nodes} nodes heartbeating")
        r["idle_cpu_settled_pct"] = idle_cpu(pid, args.idle)
        # The same without the heartbeats: what the server does on its own
        # (controller passes, its leader Lease, bookmarks). Shorter than the
        # 40 s node grace period, so no node goes Unknown meanwhile.
        quiet = min(args.idle, 25)
        say(f"settled server idle for {quiet} s, heartbeats paused")
        heartbeats.send_signal(signal.SIGSTOP)
        try:
            r["idle_cpu_quiet_pct"] = idle_cpu(pid, quiet)
        finally:
            heartbeats.send_signal(signal.SIGCONT)
        r["rss_settled_kib"] = rss_kib(pid)
        r["machine_after"] = machine()
    finally:
        if heartbeats:
            heartbeats.terminate()
            heartbeats.wait(10)
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return r


def report(r: dict, args: argparse.Namespace) -> None:
    mib = lambda k: f"{r[k] / 1024:.1f} MiB"  # noqa: E731
    print("\n=== scheduler and controllers (release cairn server, SQLite store) ===")
    s = r.get("schedule", {})
    if "error" in s:
        print(f"  schedule: failed: {s['error']}")
    else:
        print(f"  scheduler: {s['pods']} pods on {args.nodes} nodes  {s['per_second']:>7.0f} pods/s "
              f"(first create -> last binding {s['bind_seconds']:.2f} s; creates took "
              f"{s['create_seconds']:.2f} s; {s['nodes_used']} nodes used, "
              f"{s['min_pods_per_node']}-{s['max_pods_per_node']} pods each)   "
              f"target >= 1,000 pods/s (kube-scheduler: 100-300)")
    d = r.get("deployment", {})
    if "error" in d:
        print(f"  deployment: failed: {d['error']}")
    else:
        print(f"  Deployment of {d['replicas']}: all pods created and bound {d['all_bound_seconds']:.2f} s, "
              f"available {d['available_seconds']:.2f} s")
        print(f"  rolling update of it (25% surge/unavailable): {d['rollout_seconds']:.2f} s")
        print("    (pods made Running/Ready by hollow kubelets in the load generator, as kubemark; "
              "no containers)")
    print(f"  RSS empty {mib('rss_empty_kib')}, {args.nodes} nodes {mib('rss_nodes_kib')}, "
          f"after the scheduler run {mib('rss_after_schedule_kib')}, after the Deployment "
          f"{mib('rss_after_deployment_kib')}, settled {mib('rss_settled_kib')}")
    if "error" not in s:
        print(f"  server CPU for it: {s['server_cpu_seconds'] * 1000 / s['pods']:.2f} ms per pod "
              f"(its create, binding and watch events)")
    print(f"  idle CPU, empty server                              {r['idle_cpu_empty_pct']:.2f} % of a core")
    print(f"  idle CPU, settled, no client traffic                {r['idle_cpu_quiet_pct']:.2f} % "
          f"of a core   target <= 1 %")
    print(f"  idle CPU, settled, {args.nodes} nodes renewing Leases every 10 s "
          f"{r['idle_cpu_settled_pct']:.2f} % of a core")
    print(f"  machine: before {r['machine_before']}\n           after {r.get('machine_after', '?')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=int(os.environ.get("BENCH_CONTROLLERS_IDLE", "30")))
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=100)
    args = ap.parse_args()
    for binary in (CAIRN, LOAD):
        if not binary.exists():
            say(f"{binary} missing: cargo build --release -p cairn --bin cairn --example ctl_load")
            return 1
    r = bench(args)
    report(r, args)
    out = REPO / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "controllers.json").write_text(json.dumps(r, indent=2))
    print(f"\nraw figures: {out / 'controllers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
