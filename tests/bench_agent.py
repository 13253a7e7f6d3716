#!/usr/bin/env python3
"""`make bench` (node agent part): figures of `cairn agent` on this machine
against a real containerd 1.6 + runc. Printed, never asserted.

  $CAIRN_VENV/bin/python tests/bench_agent.py [--pods 50] [--idle 30]

Starts a containerd with the CRI plugin (its own root, socket, CNI bridge),
a release `cairn server --disable-agent` on loopback and a release
`cairn agent` joining it with the server token, the pause image made from the
release `cairn-pause` and a busybox image from the host's static busybox
(both with `cairn-image oci`). Then, with the official Python client:

- pod create → Running (watch event) for 1 pod at a time (10 runs) and for
  N pods created at once: p50 / p99;
- the agent's RSS with 0 pods and with 30 running pods;
- the agent's CPU while idle with those 30 pods (utime+stime over --idle s).

Compare with the K3s agent's published 268 MB RSS. Raw figures land in
out/bench/agent.json. Needs root (containerd, bridges).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
CAIRN = TARGET / "release" / "cairn"
TOOL = TARGET / "debug" / "cairn-image"
PAUSE = TARGET / "x86_64-unknown-linux-musl" / "release" / "cairn-pause"
K3S_AGENT_RSS_MB = 268
say = lambda msg: print(f"bench-agent: {msg}", file=sys.stderr, flush=True)  # noqa: E731


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"bench-agent: {what} did not happen in {timeout} s")
        time.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Rig:
    """containerd + server + agent in one temporary directory."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.bridge = f"cb{os.getpid() % 10000}"

    def start(self) -> None:
        w = self.work
        (w / "net.d").mkdir()
        (w / "sysimages").mkdir()
        (w / "images").mkdir()
        subprocess.run([TOOL, "oci", "--name", "localhost/cairn/pause:1", "--arch", "x86_64",
                        "--entrypoint", "/pause", f"--file={PAUSE}=pause",
                        w / "sysimages" / "pause.tar"], check=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        subprocess.run([TOOL, "oci", "--name", "localhost/bench/busybox:1", "--arch", "x86_64",
                        "--entrypoint", "/bin/sh", f"--file={busybox}=bin/busybox",
                        "--link=bin/sh=busybox", "--link=bin/sleep=busybox",
                        w / "images" / "busybox.tar"], check=True)
        (w / "containerd.toml").write_text(f"""version = 2
root = "{w}/containerd"
state = "{w}/state"
[grpc]
  address = "{w}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/cairn/pause:1"
  # runc on some VMs may not lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{w}/net.d"
""")
        self.spawn("containerd", ["containerd", "--config", w / "containerd.toml"])
        wait_for("containerd", lambda: (w / "containerd.sock").exists(), 30)
        self.port = free_port()
        token = "bench-node-token"
        self.spawn("server", [CAIRN, "server", "--disable-agent", "--data-dir", w / "server",
                              "--listen", f"127.0.0.1:{self.port}", "--token", token])
        kubeconfig = w / "server" / "admin.kubeconfig"
        wait_for("the API server", kubeconfig.exists, 60)
        time.sleep(1)
        subprocess.run([CAIRN, "import-images", "--container-runtime-endpoint",
                        w / "containerd.sock", w / "images"], check=True, capture_output=True)
        self.agent = self.spawn("agent", [
            CAIRN, "agent", "--server", f"https://127.0.0.1:{self.port}", "--token", token,
            "--ca-file", w / "server" / "pki" / "ca.crt", "--node-name", "bench",
            "--container-runtime-endpoint", w / "containerd.sock",
            "--cni-conf-dir", w / "net.d", "--root-dir", w / "agent", "--agent-port", "0",
            "--system-images-dir", w / "sysimages", "--pod-log-dir", w / "pods",
            "--cni-bridge", self.bridge,
        ])
        config.load_kube_config(str(kubeconfig))
        self.core = client.CoreV1Api()

        def ready() -> bool:
            try:
                node = self.core.read_node("bench")
            except client.ApiException:
                return False
            return any(c.type == "Ready" and c.status == "True"
                       for c in node.status.conditions or [])
        wait_for("node Ready", ready, 120)

    def spawn(self, name: str, argv: list) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=log,
                                env=dict(os.environ, NO_COLOR="1"))
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        time.sleep(3)  # the agent's sweep removes the deleted pods' containers
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def pod(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "agent"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "localhost/bench/busybox:1",
                            "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
        },
    }


def create_and_time(core, names: list[str]) -> list[float]:
    """Creates `names` at once; seconds from each create to its Running event."""
    running: dict[str, float] = {}
    created: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_pod, "default",
                              label_selector="bench=agent", timeout_seconds=300):
            p = event["object"]
            if p.status and p.status.phase == "Running" and p.metadata.name not in running:
                running[p.metadata.name] = time.monotonic()
                if all(n in running for n in names):
                    break
        done.set()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    time.sleep(0.5)
    for name in names:
        created[name] = time.monotonic()
        core.create_namespaced_pod("default", pod(name))
    if not done.wait(180):
        say(f"only {len(running)}/{len(names)} pods Running after 180 s")
    return [running[n] - created[n] for n in names if n in running]


def delete_all(core) -> None:
    for p in core.list_namespaced_pod("default", label_selector="bench=agent").items:
        try:
            core.delete_namespaced_pod(p.metadata.name, "default", grace_period_seconds=0)
        except client.ApiException as e:
            if e.status != 404:
                raise
    wait_for("pods deleted",
             lambda: not core.list_namespaced_pod("default", label_selector="bench=agent").items,
             300)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--idle", type=int, default=30)
    args = parser.parse_args()
    for path in (CAIRN, TOOL, PAUSE):
        if not path.exists():
            raise SystemExit(f"bench-agent: {path} is missing (make bench builds it)")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-agent-"))
    rig = Rig(work)
    figures: dict = {}
    try:
        rig.start()
        time.sleep(3)
        figures["rss_0_pods_kib"] = rss_kib(rig.agent.pid)
        single = []
        for i in range(10):
            single += create_and_time(rig.core, [f"one-{i}"])
        figures["one_pod_s"] = single
        delete_all(rig.core)
        burst = create_and_time(rig.core, [f"many-{i}" for i in range(args.pods)])
        figures["burst_s"] = burst
        delete_all(rig.core)
        create_and_time(rig.core, [f"steady-{i}" for i in range(30)])
        time.sleep(5)
        figures["rss_30_pods_kib"] = rss_kib(rig.agent.pid)
        ticks = cpu_ticks(rig.agent.pid)
        time.sleep(args.idle)
        hz = os.sysconf("SC_CLK_TCK")
        figures["idle_cpu_percent"] = 100 * (cpu_ticks(rig.agent.pid) - ticks) / hz / args.idle
        delete_all(rig.core)
    finally:
        rig.stop()
    out = REPO / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent.json").write_text(json.dumps(figures, indent=2))
    one, many = figures["one_pod_s"], figures["burst_s"]
    print("\nnode agent (host, containerd 1.6 + runc, local image)")
    print(f"  pod create -> Running, 1 pod:   p50 {percentile(one, 50):.2f} s  "
          f"p99 {percentile(one, 99):.2f} s  (target p99 <= 1 s)")
    print(f"  pod create -> Running, {args.pods} pods: p50 {percentile(many, 50):.2f} s  "
          f"p99 {percentile(many, 99):.2f} s  ({len(many)}/{args.pods} Running)")
    for key, label in (("rss_0_pods_kib", "0 pods"), ("rss_30_pods_kib", "30 pods")):
        mb = figures[key] / 1024
        print(f"  agent RSS, {label}: {mb:.1f} MB  ({mb / K3S_AGENT_RSS_MB:.2f}x the K3s "
              f"agent's {K3S_AGENT_RSS_MB} MB; target <= 15 MB)")
    print(f"  agent CPU idle with 30 pods: {figures['idle_cpu_percent']:.2f} % of one core")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
