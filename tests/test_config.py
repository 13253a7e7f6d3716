"""config.toml end to end, in two boots of one image:

1. A config made by `cairn-image config init` (fresh CA, admin credentials,
   kubeconfig for a forwarded port), edited for a static address and a host
   name, written into the image with `cairn-image config write`. The node
   comes up with that name and address (console), the generated kubeconfig
   works through the forwarded port (`kubectl get ns`), the API certificate
   carries the host name (`--tls-server-name`), `write_kubeconfig = true`
   puts a kubeconfig for the device's address back on the CAIRN partition, and
   a manifest dropped into the partition's `manifests/` is applied, and the
   Node's `InvalidConfig` condition is False.
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

    # Boot 1: the config as written.
    log = workdir / "console-1.log"
    vm = harness.boot(arch, image, log, forwards=[(port, 6443)])
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
    vm = harness.boot(arch, image, log, forwards=[(port, 6443)])
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
