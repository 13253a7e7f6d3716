"""Fixtures for the API tests with the official Python kubernetes client:
the host `cairn server` binary (built by cargo; $CAIRN_BIN, else
$CARGO_TARGET_DIR/debug/cairn) started on a free loopback port with a
temporary data dir, once on the embedded SQLite and once on a PostgreSQL
server these fixtures start themselves (initdb/pg_ctl, unix socket only).

Run with the venv `make deps` creates: `make api`, or
`$CAIRN_VENV/bin/python -m pytest -c tests/pytest.ini tests/api`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

try:
    from kubernetes import client, config
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        f"{e}: the API tests need the Python kubernetes client 32.x; run them with "
        "the venv `make deps` creates ($CAIRN_VENV/bin/python, see the Makefile)"
    ) from e

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30


def cairn_binary() -> Path:
    if os.environ.get("CAIRN_BIN"):
        return Path(os.environ["CAIRN_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "cairn"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CairnServer:
    """A running `cairn server`; `stop()` kills it (SIGKILL)."""

    def __init__(self, data_dir: Path, args: list[str]):
        binary = cairn_binary()
        if not binary.exists():
            pytest.fail(f"{binary} does not exist: cargo build -p cairn (make api does)")
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir / "server.log"
        self.proc = subprocess.Popen(
            [
                str(binary), "server", "--disable-agent",
                "--bind-address", "127.0.0.1",
                "--https-listen-port", str(self.port),
                "--data-dir", str(data_dir),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"cairn server exited with {self.proc.returncode}:\n{self.log()}")
            if self.kubeconfig.exists():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"cairn server did not listen on {self.port}:\n{self.log()}")
            time.sleep(0.05)

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "admin.kubeconfig"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Postgres:
    """A throwaway PostgreSQL server on a unix socket, as the Rust tests'."""

    def __init__(self):
        bins = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep)]
        bins += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        found = [b for b in bins if (b / "initdb").is_file() and (b / "pg_ctl").is_file()]
        if not found:
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                        "install the postgresql package (make deps does)")
        # initdb may be a symlink on the PATH; createdb sits next to its target.
        self.bin = (found[0] / "initdb").resolve().parent
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-pg"))
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres" if shutil.which("runuser") and _has_user("postgres") else "nobody"
            shutil.chown(self.dir, self.user)
        data = str(self.dir / "data")
        self.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        opts = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self.run("pg_ctl", "-D", data, "-l", str(self.dir / "server.log"), "-o", opts, "-w", "start")
        self.count = 0

    def run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, cwd=self.dir, check=True, capture_output=True)

    def database(self) -> str:
        """A fresh database; its postgres:// URL."""
        self.count += 1
        name = f"t{self.count}"
        self.run("createdb", "-h", str(self.dir), "-U", "postgres", name)
        return f"postgres://postgres@{quote(str(self.dir), safe='')}/{name}"

    def close(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        return any(line.startswith(name + ":") for line in open("/etc/passwd"))
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture(params=["sqlite", "postgres"])
def datastore(request) -> list[str]:
    """`cairn server` flags selecting the datastore under test."""
    if request.param == "sqlite":
        return []
    return ["--datastore-endpoint", request.getfixturevalue("postgres").database()]


@pytest.fixture
def start_server(tmp_path, datastore):
    """Starts `cairn server`s on the datastore under test (extra flags as
    arguments); all are killed at the end of the test."""
    servers = []

    def start(*args: str, data_dir: Path | None = None) -> CairnServer:
        d = data_dir or tmp_path / f"server{len(servers)}"
        d.mkdir(exist_ok=True)
        s = CairnServer(d, [*datastore, *args])
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(start_server) -> CairnServer:
    return start_server()


@pytest.fixture
def api(server) -> client.ApiClient:
    with server.api_client() as c:
        yield c


@pytest.fixture
def core(api) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(srv, CairnServer):
        report.sections.append(("cairn server log", srv.log()[-4000:]))
