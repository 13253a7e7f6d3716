"""pytest glue for the end-to-end tests: one test per architecture in
CAIRN_TEST_ARCHES, a private work directory per test (image copy, console
logs), and the path of that directory in the report when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# Host tools the tests drive; `make deps` installs them.
HOST_TOOLS = ("qemu-img", "e2fsck", "dumpe2fs", "debugfs", "mcopy", "sgdisk", "dd")
DEFAULT_TIMEOUT_S = 1500  # per test, only if pytest-timeout is installed


def pytest_configure(config):
    config.addinivalue_line("markers", "boots(n): the test boots QEMU n times")
    if config.pluginmanager.hasplugin("timeout") and not getattr(config.option, "timeout", None):
        config.option.timeout = DEFAULT_TIMEOUT_S


def pytest_generate_tests(metafunc):
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", harness.arches())


@pytest.fixture
def workdir(tmp_path, request):
    """The test's own directory: image copies, extracted partitions, console logs."""
    request.node.cairn_workdir = tmp_path
    return tmp_path


@pytest.fixture
def image(arch, workdir):
    """A private sparse copy of out/<arch>/cairn.img."""
    missing = harness.which(*HOST_TOOLS)
    if missing:
        pytest.fail(f"missing host tools: {', '.join(missing)} (make deps)")
    if not harness.image_tool().exists():
        pytest.fail(f"{harness.image_tool()} does not exist (cargo build -p cairn-image)")
    try:
        return harness.copy_image(arch, workdir)
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    workdir = getattr(item, "cairn_workdir", None)
    if report.failed and workdir is not None:
        logs = sorted(str(p) for p in Path(workdir).glob("*.log"))
        report.sections.append(
            ("cairn logs", f"work dir: {workdir}\n" + "\n".join(f"  {p}" for p in logs))
        )
