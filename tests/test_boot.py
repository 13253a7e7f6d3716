"""First boot of a grown image, clean power-off, slot marked good, and state
kept across a second boot; the Kubernetes API answers through a forwarded port.

One test per architecture does it all on one image copy, because every boot
under TCG costs tens of seconds:
  resize +1G -> boot 1 -> ready -> anonymous API request gets 401 ->
  system_powerdown -> checks, admin kubeconfig read from the data partition ->
  boot 2 -> ready -> kubectl with that kubeconfig sees the `default` namespace
  created on boot 1 -> system_powerdown -> checks.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import harness

GROW = 1024 * 1024 * 1024  # qemu-img resize +1G
MIB = 1024 * 1024


API_PORT = 6443


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def anonymous_request_is_refused(port: int, log) -> None:
    """The API answers on the forwarded port, and refuses a client without credentials."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/api", context=context, timeout=30)
    except urllib.error.HTTPError as err:
        status = json.loads(err.read())
        assert err.code == 401 and status.get("kind") == "Status", (err.code, status, log)
        return
    raise AssertionError(f"an anonymous request to the API was served (console: {log})")


def boot_to_ready_and_power_off(arch, image, log, while_up=None):
    port = free_port()
    vm = harness.boot(arch, image, log, forwards=[(port, API_PORT)])
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        if while_up:
            while_up(port)
        status = harness.power_off(vm, 120)
        assert status == 0, f"QEMU exited with status {status} (console: {log})"
        return vm.console
    finally:
        vm.kill()


def check_data_clean(image, part_file, log):
    harness.extract_partition(image, "data", part_file)
    fsck = harness.e2fsck(part_file)
    assert fsck.returncode == 0, (
        f"e2fsck -fn on the data partition after power-off: exit {fsck.returncode}\n"
        f"{fsck.stdout}{fsck.stderr}(console: {log})"
    )


def test_first_boot_grow_powerdown_and_second_boot(arch, image, workdir):
    before = harness.partitions(image)
    harness.run(["qemu-img", "resize", "-f", "raw", image, "+1G"])
    disk_size = image.stat().st_size

    # -- boot 1: ready, data grown, clean power-off ----------------------------
    log1 = workdir / "boot1.log"
    console = boot_to_ready_and_power_off(
        arch, image, log1, lambda port: anonymous_request_is_refused(port, log1)
    )
    assert "API answered" in console, f"readiness did not wait for the API ({log1})"
    assert re.search(r"(?i)\bgr[eo]w|resiz", console), (
        f"the console does not say that the data partition/filesystem grew ({log1})"
    )

    after = harness.partitions(image)
    data = after["data"]
    assert data["offset"] == before["data"]["offset"], "the data partition moved"
    assert data["size"] >= before["data"]["size"] + GROW - 2 * MIB, (
        f"data partition not grown: {before['data']['size']} -> {data['size']} bytes"
    )
    # The backup GPT (33 sectors) and alignment may follow it; nothing else.
    assert disk_size - (data["offset"] + data["size"]) <= 2 * MIB, (
        f"data partition ends at {data['offset'] + data['size']}, disk is {disk_size} bytes"
    )
    for name in ("ESP", "root_a", "root_b", "config"):
        assert after[name] == before[name], f"partition {name} changed: {before[name]} -> {after[name]}"

    part1 = workdir / "data1.ext4"
    check_data_clean(image, part1, log1)
    fs_size = harness.ext4_size(part1)
    assert fs_size >= data["size"] - 4 * MIB, (
        f"ext4 not grown to its partition: fs {fs_size} bytes, partition {data['size']} bytes"
    )

    env = harness.grubenv(image)
    assert env.get("a_OK") == "1" and env.get("a_TRY") == "0", (
        f"slot a not marked good after ready: grubenv {env}"
    )

    machine_id = harness.debugfs_cat(part1, "/lib/cairn/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), (
        f"/var/lib/cairn/machine-id is {machine_id!r}, expected 32 hex digits"
    )
    kubeconfig_text = harness.debugfs_cat(part1, "/lib/cairn/server/admin.kubeconfig")
    assert "client-certificate-data" in kubeconfig_text, "no admin kubeconfig on /var"
    part1.unlink()

    # -- boot 2: same machine-id, clean again, nothing grown twice --------------
    # The kubeconfig written on boot 1 still works: same CA, same datastore.
    def kubectl_sees_default_namespace(port):
        kubeconfig = workdir / "admin.kubeconfig"
        kubeconfig.write_text(
            re.sub(r"server: https://[^\s]+", f"server: https://127.0.0.1:{port}", kubeconfig_text)
        )
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "get", "namespace", "default", "-o", "name"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0 and out.stdout.strip() == "namespace/default", (
            f"kubectl against the device: {out.stdout}{out.stderr}(console: {log2})"
        )

    log2 = workdir / "boot2.log"
    boot_to_ready_and_power_off(arch, image, log2, kubectl_sees_default_namespace)
    assert harness.partitions(image)["data"] == data, "the data partition changed on boot 2"
    part2 = workdir / "data2.ext4"
    check_data_clean(image, part2, log2)
    assert harness.debugfs_cat(part2, "/lib/cairn/machine-id").strip() == machine_id, (
        "machine-id changed between boots"
    )
    env = harness.grubenv(image)
    assert env.get("a_OK") == "1" and env.get("a_TRY") == "0", f"grubenv after boot 2: {env}"
