"""A/B fallback, end to end: GRUB's script and cairn-init together.

Slot b is made a copy of slot a (its root partition and its kernel and
initramfs on the ESP) and marked OK, while slot a has used all its tries.
GRUB must then boot slot b, and once the system is ready cairn-init must
mark slot b good in grubenv, leaving slot a's exhausted counter alone."""

from __future__ import annotations

import os

import harness


def populate_slot_b(image, workdir):
    """Copies root_a to root_b and the slot-a kernel files to cairn/b on the ESP."""
    parts = harness.partitions(image)
    a, b = parts["root_a"], parts["root_b"]
    assert a["size"] == b["size"], "root slots differ in size"
    harness.run(["dd", f"if={image}", f"of={image}", "bs=1M", "conv=notrunc,sparse",
                 "iflag=skip_bytes,count_bytes", "oflag=seek_bytes", f"skip={a['offset']}",
                 f"seek={b['offset']}", f"count={a['size']}", "status=none"])
    esp = f"{image}@@{parts['ESP']['offset']}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    harness.run(["mmd", "-i", esp, "::cairn/b"], env=env)
    for name in ("vmlinuz", "initrd.img"):
        local = workdir / name
        harness.run(["mcopy", "-o", "-i", esp, f"::cairn/a/{name}", local], env=env)
        harness.run(["mcopy", "-o", "-i", esp, local, f"::cairn/b/{name}"], env=env)


def test_exhausted_slot_falls_back_to_the_other(arch, image, workdir):
    populate_slot_b(image, workdir)
    harness.tool("grubenv", image, "--set", "a_TRY=3", "--set", "b_OK=1", "--set", "b_TRY=0")

    log = workdir / "console.log"
    vm = harness.boot(arch, image, log)
    try:
        vm.wait_for(r"booting slot b", harness.ready_timeout(arch))
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        assert "slot marked good slot=b" in vm.console, f"init did not mark slot b good ({log})"
        harness.power_off(vm)
    finally:
        vm.kill()

    env = harness.grubenv(image)
    assert env.get("b_OK") == "1" and env.get("b_TRY") == "0", f"slot b not marked good: {env}"
    assert env.get("a_TRY") == "3", f"slot a's exhausted counter changed: {env}"


def test_all_slots_exhausted_starts_over_instead_of_bricking(arch, image, workdir):
    # Slot a used its tries and slot b holds nothing: GRUB resets the counters
    # and boots slot a again rather than leave the device unbootable.
    harness.tool("grubenv", image, "--set", "a_TRY=3")

    log = workdir / "console.log"
    vm = harness.boot(arch, image, log)
    try:
        vm.wait_for(r"starting over", harness.ready_timeout(arch))
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        harness.power_off(vm)
    finally:
        vm.kill()

    env = harness.grubenv(image)
    assert env.get("a_OK") == "1" and env.get("a_TRY") == "0", f"slot a not marked good: {env}"
