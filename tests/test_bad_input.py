"""Bad input must not stop a node: an invalid config.toml is reported on the
console (file, line, problem) and the node still becomes ready; a missing
root partition is reported (with the partitions that were found) and retried,
never a kernel panic."""

from __future__ import annotations

import re
import time

import harness

# Line 3 is a table header without its closing bracket.
BAD_TOML = """\
hostname = "edge-1"

[network
dhcp = true
"""


def test_invalid_config_still_boots(arch, image, workdir):
    bad = workdir / "bad.toml"
    bad.write_text(BAD_TOML)
    # What the laptop-side validator says about it: the device must say the same.
    check = harness.tool("config", "validate", bad, check=False)
    assert check.returncode != 0, "cairn-image config validate accepted invalid TOML"
    harness.mcopy_to_partition(image, "config", bad, "config.toml")

    log = workdir / "console.log"
    vm = harness.boot(arch, image, log)
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        console = vm.console
    finally:
        vm.kill()
    lines = [l for l in console.splitlines() if re.search(r"config\.toml:3\b", l)]
    assert lines, f"no console line names config.toml:3 ({log})"
    # The problem itself: the same words the validator uses, or the usual ones.
    said = (check.stdout + check.stderr).replace(str(bad), "")
    words = {w.lower() for w in re.findall(r"[A-Za-z]{5,}", said)}
    words -= {"error", "config", "validate", "bad"}
    words |= {"expected", "invalid", "unclosed", "unterminated"}
    text = "\n".join(lines).lower()
    nearby = console.lower()[console.lower().find("config.toml:3") :][:600]
    assert any(w in text or w in nearby for w in words), (
        f"the console names config.toml:3 but not the problem ({log}):\n" + "\n".join(lines)
    )


def test_missing_root_partition_keeps_retrying(arch, image, workdir):
    number = harness.partitions(image)["root_a"]["number"]
    harness.run(["sgdisk", "-c", f"{number}:gone", image])
    assert "root_a" not in harness.partitions(image)

    log = workdir / "console.log"
    vm = harness.boot(arch, image, log)
    try:
        kernel = vm.wait_for(harness.KERNEL_START, harness.ready_timeout(arch))
        # The partitions stage 1 did find, on one line or on lines close together.
        found = (
            r"(?is)(partition|found|saw|see)"
            r"(.{0,400}?\bESP\b.{0,400}?\bdata\b|.{0,400}?\bdata\b.{0,400}?\bESP\b)"
        )
        vm.wait_for(found, 90, since=kernel.start())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert vm.running(), f"QEMU exited while root_a was missing ({log})"
            time.sleep(1)
        console = vm.console
        assert "Kernel panic" not in console, f"kernel panic ({log})"
        for marker in (r"Linux version \d", harness.STAGE1, r"BdsDxe: starting Boot"):
            assert len(re.findall(marker, console)) <= 1, (
                f"the machine rebooted instead of retrying ({marker!r} seen twice; {log})"
            )
        assert harness.READY not in console
    finally:
        vm.kill()
