"""config.toml end to end, in two boots of one image:

1. A config made by `cairn-image config init` (fresh CA, admin credentials,
   kubeconfig for a forwarded port), edited for a static address and a host
   name, written into the image with `cairn-image config write`. The node
   comes up with that name and address (console), the generated kubeconfig
   works through the forwarded port (`kubectl get ns`), the API certificate
   carries the host name (`--tls-server-name`), `write_kubeconfig = true`
   puts a kubeconfig for the device's address back on the CAIRN partition, and
   a manifest dropped into the partition's `manifests/` is applied, and the
   Node's `InvalidConfig` condition is False. Two more NICs: `eth1` on a
   second QEMU user network with `dhcp = true` (its leased address answers
   the API through a port forwarded on that network), and `eth2`, left
   unconfigured, carrying VLAN 42 with a static address on a UDP socket
   link whose far end is this test: an 802.1Q-tagged ARP request for that
   address gets a reply tagged 42, one tagged 43 gets none. With
   `[debug] serial_shell = true`, a line typed on the serial console is run
   by a shell.
2. The file broken by a typo, as a laptop user would (mcopy): the console
   names the file, line, column and key, the node boots on the last known
   good configuration (same host name), kubectl still works, and the Node's
   `InvalidConfig` condition is True with the same error.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import pytest

import harness
from cairn_qemu import free_udp_ports

VLAN_ID = 42
VLAN_IP = "192.168.42.5"
FURTHER = f"""
[[network.interfaces]]
name = "eth1"
dhcp = true

[[network.vlans]]
link = "eth2"
id = {VLAN_ID}
dhcp = false
addresses = ["{VLAN_IP}/24"]
"""

STATIC = """\
[network]
dhcp = false
address = "10.0.2.15/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_condition(kubeconfig, node: str, status: str, log) -> dict:
    """The Node's InvalidConfig condition, once it has `status`."""
    deadline = time.time() + 60
    while True:
        got = kubectl(kubeconfig, "get", "node", node, "-o", "json")
        if got.returncode == 0:
            conditions = {c["type"]: c for c in json.loads(got.stdout)["status"]["conditions"]}
            condition = conditions.get("InvalidConfig", {})
            if condition.get("status") == status:
                return condition
        assert time.time() < deadline, f"no InvalidConfig={status} on {node}: {got} ({log})"
        time.sleep(1)


def kubectl(kubeconfig, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout", "20s", *args],
        capture_output=True, text=True, timeout=timeout,
    )


class VlanPeer:
    """The far end of the VM's `eth2`: raw Ethernet frames in UDP datagrams
    (QEMU's socket netdev), sent and read by this test."""

    MAC = bytes.fromhex("525400004209")
    IP = "192.168.42.9"

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        (self.vm_port,) = free_udp_ports(1)

    def nic(self) -> list[str]:
        """QEMU arguments: a NIC that sends to us and receives on vm_port."""
        return [
            "-netdev",
            f"socket,id=trunk,udp=127.0.0.1:{self.port},localaddr=127.0.0.1:{self.vm_port}",
            "-device", "virtio-net-pci,netdev=trunk,romfile=",
        ]

    def arp(self, target: str, vid: int | None, timeout: float = 3.0) -> bytes | None:
        """Sends an ARP request for `target` (tagged `vid`, or untagged) and
        returns the reply frame the VM sends back, if any."""
        arp = (bytes.fromhex("0001080006040001") + self.MAC + socket.inet_aton(self.IP)
               + bytes(6) + socket.inet_aton(target))
        tag = b"" if vid is None else b"\x81\x00" + vid.to_bytes(2, "big")
        frame = b"\xff" * 6 + self.MAC + tag + b"\x08\x06" + arp
        self.sock.sendto(frame.ljust(64, b"\0"), ("127.0.0.1", self.vm_port))
        deadline = time.time() + timeout
        while (left := deadline - time.time()) > 0:
            self.sock.settimeout(left)
            try:
                got = self.sock.recv(2048)
            except socket.timeout:
                break
            inner = got[12:]
            if inner[:2] == b"\x81\x00":
                inner = inner[4:]
            is_reply = inner[:2] == b"\x08\x06" and inner[8:10] == b"\x00\x02"
            if is_reply and got[:6] == self.MAC and inner[16:20] == socket.inet_aton(target):
                return got
        return None

    def close(self):
        self.sock.close()


def fat_file(image, name: str) -> str:
    offset = harness.partitions(image)["config"]["offset"]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return harness.run(["mtype", "-i", f"{image}@@{offset}", f"::{name}"], env=env).stdout


@pytest.mark.boots(2)
def test_config_init_static_network_and_last_known_good(arch, image, workdir):
    if harness.which("kubectl"):
        pytest.fail("kubectl is not installed (make deps)")
    port = free_port()
    out = workdir / "cfg"
    harness.tool("config", "init", "--server", f"https://127.0.0.1:{port}", out)
    kubeconfig = out / "kubeconfig.yaml"
    text = (out / "config.toml").read_text()
    text = text.replace("[host]\n", '[host]\nhostname = "edge-7"\n', 1)
    text = text.replace("[network]\n", STATIC, 1)
    text = text.replace("role = \"server\"\n", "role = \"server\"\nwrite_kubeconfig = true\n", 1)
    text += FURTHER
    assert "[debug]\n# serial_shell = false" in text, text
    text = text.replace("[debug]\n# serial_shell = false", "[debug]\nserial_shell = true", 1)
    config = workdir / "config.toml"
    config.write_text(text)
    harness.tool("config", "validate", config)
    harness.tool("config", "write", image, config)
    # A manifest in manifests/, written the way a laptop user would (mtools).
    manifest = workdir / "edge.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-partition\ndata:\n  k: v\n"
    )
    offset = harness.partitions(image)["config"]["offset"]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    # The builder may already have made the directory: then mmd fails, harmlessly.
    harness.run(["mmd", "-i", f"{image}@@{offset}", "::manifests"], env=env, check=False)
    harness.mcopy_to_partition(image, "config", manifest, "manifests/edge.yaml")

    # Boot 1: the config as written, with the further NICs: eth1 on a second
    # user network (the API forwarded to its DHCP address), eth2 to `peer`.
    further_port = free_port()
    peer = VlanPeer()
    nics = [
        "-netdev", f"user,id=net1,net=10.0.3.0/24,hostfwd=tcp:127.0.0.1:{further_port}-10.0.3.15:6443",
        "-device", "virtio-net-pci,netdev=net1,romfile=",
        *peer.nic(),
    ]
    log = workdir / "console-1.log"
    vm = harness.boot(arch, image, log, forwards=[(port, 6443)], extra=nics)
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        console = vm.console
        assert re.search(r"hostname set hostname=edge-7\b", console), f"hostname ({log})"
        assert re.search(r"static address set .*address=10\.0\.2\.15/24", console), (
            f"static address ({log})"
        )
        got = kubectl(kubeconfig, "get", "ns")
        assert got.returncode == 0 and re.search(r"^default\s+Active", got.stdout, re.M), got
        # The serving certificate names the host (passed as --tls-san).
        named = kubectl(kubeconfig, "--tls-server-name", "edge-7", "get", "--raw", "/version")
        assert named.returncode == 0 and "gitVersion" in named.stdout, named
        vm.wait_for(r"kubeconfig\.yaml written to the CAIRN partition", 60)
        # The manifest from the partition is applied once the API is up.
        deadline = time.time() + 60
        while True:
            got = kubectl(kubeconfig, "get", "configmap", "from-partition", "-o", "jsonpath={.data.k}")
            if got.returncode == 0 and got.stdout == "v":
                break
            assert time.time() < deadline, f"manifests/edge.yaml not applied: {got} ({log})"
            time.sleep(1)
        loaded = config_condition(kubeconfig, "edge-7", "False", log)
        assert loaded["reason"] == "ConfigLoaded", loaded
        # DHCP on a further interface: its lease, and the API through it.
        vm.wait_for(r"dhcp: lease acquired .*interface=eth1 .*address=10\.0\.3\.15/24", 60)
        assert re.search(r"dhcp: lease acquired .*interface=eth1 .*metric=1025", vm.console), log
        via_eth1 = kubectl(kubeconfig, "--server", f"https://127.0.0.1:{further_port}", "get", "ns")
        assert via_eth1.returncode == 0 and "default" in via_eth1.stdout, via_eth1
        # The VLAN on an unconfigured parent: tagged 42 answers, tagged 43 does not.
        assert re.search(rf"VLAN link created .*interface=eth2\.{VLAN_ID}\b", vm.console), log
        reply = peer.arp(VLAN_IP, VLAN_ID)
        assert reply is not None, f"no ARP reply on VLAN {VLAN_ID} ({log})"
        assert reply[12:14] == b"\x81\x00", f"reply not tagged: {reply.hex()}"
        assert int.from_bytes(reply[14:16], "big") & 0xFFF == VLAN_ID, reply.hex()
        assert peer.arp(VLAN_IP, VLAN_ID + 1) is None, "a reply on another VLAN"
        # [debug] serial_shell: a shell reads the console (what it prints
        # is computed, so the console's echo of the line cannot match).
        assert "debug.serial_shell is on" in vm.console, log
        vm.send("echo shell-$((6*7)) $(cat /proc/1/comm)\n")
        vm.wait_for(r"shell-42 init", 30)
        harness.power_off(vm)
    finally:
        vm.kill()
    written = fat_file(image, "kubeconfig.yaml")
    assert "server: https://10.0.2.15:6443" in written, written
    ours = kubeconfig.read_text()
    ca = re.search(r"certificate-authority-data: (\S+)", ours).group(1)
    assert ca in written, "the written-back kubeconfig trusts another CA"

    # Boot 2: a typo on line 3; the device must say so and keep going.
    broken = text.replace('hostname = "edge-7"', 'hostnme = "edge-9"', 1)
    line = broken.splitlines().index('hostnme = "edge-9"') + 1
    bad = workdir / "broken.toml"
    bad.write_text(broken)
    check = harness.tool("config", "validate", bad, check=False)
    assert check.returncode != 0 and f"broken.toml:{line}:1: host.hostnme" in check.stderr, check
    harness.mcopy_to_partition(image, "config", bad, "config.toml")
    log = workdir / "console-2.log"
    # The same NICs: the last known good configuration names them.
    vm = harness.boot(arch, image, log, forwards=[(port, 6443)], extra=nics)
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch))
        console = vm.console
        assert re.search(
            rf"config error: \S*config\.toml:{line}:1: host\.hostnme: unknown field", console
        ), f"the error with file, line, column and key ({log})"
        assert "booting with the last known good configuration" in console, log
        assert re.search(r"hostname set hostname=edge-7\b", console), f"LKG hostname ({log})"
        assert "hostname=edge-9" not in console, log
        got = kubectl(kubeconfig, "get", "ns")
        assert got.returncode == 0 and "default" in got.stdout, got
        # The API says it too: the Node's InvalidConfig condition.
        invalid = config_condition(kubeconfig, "edge-7", "True", log)
        assert invalid["reason"] == "LastKnownGood", invalid
        assert f"config.toml:{line}:1: host.hostnme" in invalid["message"], invalid
        # No secret from the file on the console.
        cfg = (out / "config.toml").read_text()
        token = re.search(r'token = "([^"]+)"', cfg).group(1)
        assert token.split("::server:")[-1] not in console, f"token on the console ({log})"
    finally:
        vm.kill()
        peer.close()
