#!/usr/bin/env python3
"""`make bench` (API part): figures of `cairn server` on this machine, for the
embedded SQLite store and for PostgreSQL. Printed, never asserted.

  python3 tests/bench_api.py [--stores "sqlite postgres"] [--seconds S] [--idle S]

For each store: start a release `cairn server` on loopback, then run the load
generator (orchestrator/examples/api_load.rs, a second process) phase by phase:
GET and LIST throughput, creates+patches at 100/s (p50/p99 latency from the
scheduled start), 500 watches receiving a burst (fan-out latency), RSS empty and
with 10,000 ConfigMaps, and bytes written to storage while idle with one node
Lease renewed every 10 s (the server's /proc/<pid>/io write_bytes; for
PostgreSQL, the database server's processes, and PostgreSQL's own count
from pg_stat_wal and pg_stat_bgwriter in 8 KiB pages), extrapolated to a
day. On kernels with ext4 large folios (6.16 and later) write_bytes charges
a whole folio (up to 2 MiB) for each page dirtied in a large preallocated
file, so for PostgreSQL's 8 KiB rewrites of its WAL segments it overstates
what is written many times over; PostgreSQL's own count is the figure. The
Lease is created before that window. The SQLite store writes renewals at
each compaction (every 5 min) or every 10 min: an --idle shorter than that
sees none of them, so use --idle 900 or more for the steady-state figure.

Env: CARGO_TARGET_DIR (binaries in its release/), BENCH_API_SECONDS (10),
BENCH_API_IDLE (120). Raw figures land in out/bench/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
CAIRN = TARGET / "release" / "cairn"
LOAD = TARGET / "release" / "examples" / "api_load"
say = lambda msg: print(f"bench-api: {msg}", file=sys.stderr, flush=True)  # noqa: E731


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Postgres:
    """A throwaway PostgreSQL server on a unix socket (default durability settings)."""

    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        on_path = shutil.which("pg_ctl")
        self.bin = Path(on_path).parent if on_path else bins[0]
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-bench-pg."))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user)
        self.run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust")
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                 "-o", f"-k {self.dir} -c listen_addresses=''", "start")

    def run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def sql(self, query: str) -> str:
        """One query through psql on the socket; the single-row result as text."""
        psql = self.bin / "psql"
        cmd = [str(psql if psql.exists() else shutil.which("psql")), "-h", str(self.dir),
               "-U", "postgres", "-Atc", query]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def own_writes(self) -> dict:
        """PostgreSQL's own account of what it wrote: WAL generated (bytes of
        records), WAL writes (each writes whole 8 KiB pages, rewriting the
        current page at every commit) and data pages written by the
        checkpointer, background writer and backends."""
        wal_bytes, wal_writes = self.sql("SELECT wal_bytes, wal_write FROM pg_stat_wal").split("|")
        buffers = self.sql("SELECT buffers_checkpoint + buffers_clean + buffers_backend "
                           "FROM pg_stat_bgwriter")
        return {"wal_bytes": int(wal_bytes), "wal_writes": int(wal_writes),
                "buffers_written": int(buffers)}

    def url(self) -> str:
        return f"postgres://postgres@{str(self.dir).replace('/', '%2F')}/postgres"

    def pids(self) -> list[int]:
        uid = pwd.getpwnam(self.user).pw_uid if self.user else os.getuid()
        found = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if p.stat().st_uid == uid and "postgres" in (p / "comm").read_text():
                        found.append(int(p.name))
                except OSError:
                    pass
        return found

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    def __init__(self, data_dir: Path, endpoint: str | None):
        self.dir = data_dir
        self.port = free_port()
        cmd = [str(CAIRN), "server", "--disable-agent", "--data-dir", str(data_dir),
               "--listen", f"127.0.0.1:{self.port}"]
        if endpoint:
            cmd += ["--datastore-endpoint", endpoint]
        self.log = open(data_dir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        while subprocess.run([str(CAIRN), "healthz", "--data-dir", str(data_dir), "--port",
                              str(self.port)], capture_output=True).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"cairn server did not become ready: {data_dir / 'server.log'}")
            time.sleep(0.1)

    def load(self, phase: str, *args: str) -> dict:
        out = subprocess.run([str(LOAD), "--data-dir", str(self.dir), "--port", str(self.port),
                              phase, *args], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"api_load {phase}: {out.stderr.strip()}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bench_store(store: str, seconds: int, idle: int) -> dict:
    pg = Postgres() if store == "postgres" else None
    data = Path(tempfile.mkdtemp(prefix=f"cairn-bench-{store}."))
    r: dict = {}
    try:
        server = Server(data, pg.url() if pg else None)
        try:
            time.sleep(2)
            r["rss_empty_kib"] = rss_kib(server.proc.pid)
            # Idle first, on the fresh server: after the load phases the
            # store's compaction and checkpoints of 10,000 objects would be
            # counted as idle writes.
            say(f"{store}: idle with a heartbeat for {idle} s")
            pids = pg.pids() if pg else [server.proc.pid]
            # The namespace and the Lease are created before the window:
            # what is measured is the renewals, not the node joining.
            server.load("heartbeat", "--seconds", "0")
            time.sleep(1)
            before = write_bytes(pids)
            own_before = pg.own_writes() if pg else None
            try:
                r["heartbeat"] = server.load("heartbeat", "--seconds", str(idle))
                written = write_bytes(pids) - before
                r["idle_bytes_written"] = written
                r["idle_bytes_per_day"] = written * 86400 / idle
                if pg:
                    after = pg.own_writes()
                    own = {k: after[k] - own_before[k] for k in after}
                    own["page_bytes"] = (own["wal_writes"] + own["buffers_written"]) * 8192
                    own["page_bytes_per_day"] = own["page_bytes"] * 86400 / idle
                    r["postgres_own_writes"] = own
            except RuntimeError as e:
                say(str(e).splitlines()[0])
                r["heartbeat"] = {"error": str(e).splitlines()[0]}
            s = str(seconds)
            for phase, args in [("get", ["--seconds", s]), ("list", ["--seconds", s]),
                                ("writes", ["--seconds", s, "--rate", "100"]),
                                ("watch", ["--watchers", "500", "--objects", "100"]),
                                ("fill", ["--objects", "10000", "--connections", "8"])]:
                say(f"{store}: {phase}")
                try:
                    r[phase] = server.load(phase, *args)
                except RuntimeError as e:
                    say(str(e).splitlines()[0])
                    r[phase] = {"error": str(e).splitlines()[0]}
            r["rss_10k_objects_kib"] = rss_kib(server.proc.pid)
        finally:
            server.stop()
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(data, ignore_errors=True)
    return r


def report(store: str, r: dict) -> None:
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    lines = {
        "get": lambda g: f"GET one ConfigMap      {g['per_second']:>9.0f} req/s "
                         f"({g['connections']} connections, {g['errors']} errors)",
        "list": lambda g: f"LIST 100 ConfigMaps    {g['per_second']:>9.0f} req/s",
        "writes": lambda w: f"writes at {w['target_per_second']}/s          p50 {w['p50_ms']:.1f} ms  "
                            f"p99 {w['p99_ms']:.1f} ms  max {w['max_ms']:.1f} ms  (achieved "
                            f"{w['achieved_per_second']:.0f}/s, {w['errors']} errors)   target p99 <= 25 ms",
        "watch": lambda f: f"watch fan-out          {f['watchers']} watches x {f['objects']} objects: "
                           f"p50 {f['p50_ms']:.1f} ms  p99 {f['p99_ms']:.1f} ms  max {f['max_ms']:.1f} ms  "
                           f"({f['count']}/{f['expected_deliveries']} delivered, "
                           f"{f['failed_watchers']} watches failed)",
        "fill": lambda f: f"create throughput      {f['per_second']:>9.0f} /s (10,000 ConfigMaps)",
        "heartbeat": lambda h: f"idle + node heartbeat  {mb(r['idle_bytes_written'])} in {h['seconds']} s "
                               f"= {mb(r['idle_bytes_per_day'])}/day   target <= 10 MB/day",
    }
    own = r.get("postgres_own_writes")
    if own:
        lines["postgres_own"] = lambda _: (
            f"  PostgreSQL's own count: {own['wal_bytes'] / 1e3:.0f} kB of WAL records, "
            f"{own['wal_writes']} WAL page writes + {own['buffers_written']} data pages "
            f"= {mb(own['page_bytes'])} = {mb(own['page_bytes_per_day'])}/day")
    print(f"\n=== cairn server, {store} store ===")
    for phase, line in lines.items():
        figures = r.get(phase, {}) if phase != "postgres_own" else {}
        print("  " + (f"{phase}: failed: {figures['error']}" if "error" in figures else line(figures)))
        if phase == "fill":
            print(f"  RSS empty              {r['rss_empty_kib'] / 1024:>9.1f} MiB   target <= 30 MB")
            print(f"  RSS, 10,000 objects    {r['rss_10k_objects_kib'] / 1024:>9.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default="sqlite postgres")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_API_SECONDS", "10")))
    ap.add_argument("--idle", type=int, default=int(os.environ.get("BENCH_API_IDLE", "120")))
    args = ap.parse_args()
    for binary in (CAIRN, LOAD):
        if not binary.exists():
            say(f"{binary} missing: cargo build --release -p cairn --bin cairn --example api_load")
            return 1
    results = {}
    for store in args.stores.split():
        results[store] = bench_store(store, args.seconds, args.idle)
        report(store, results[store])
    out = REPO / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api.json").write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out / 'api.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
