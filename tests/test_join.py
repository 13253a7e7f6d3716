"""Two devices, one cluster (x86_64): a server and an agent, each flashed
with a config from `cairn-image config init` the way a user makes them
(the agent's from `--role agent --server ... --token <join-token>`, with no
CA: the agent fetches the one its token pins), linked by an Ethernet
segment between the two VMs (UDP-carried, so their start order does not
matter; a second NIC on the server,
`[[network.interfaces]]` with a static address and `node_ip` naming it; the
agent's only NIC).

With stock kubectl through the server's forwarded API port: the agent's
console says `cairn: ready` once the server has its Node Ready; the Node
carries the config's `node_labels` and `node_taints` and no control-plane
role; a pod pinned to it (tolerating the taint) runs the busybox image the
agent imported from its own CAIRN partition's `images/`, gets an IP from the
agent's podCIDR, and `kubectl logs` and `kubectl exec` reach it through the
server and the agent's API across the link.

Both arches: the test image's busybox is the pinned one of the image's
components (harness.busybox).
"""

from __future__ import annotations

import json
import os
import re

import pytest

import harness
from cairn_qemu import free_udp_ports, socket_link
from test_agent import free_port, kubectl, poll

SERVER_IP = "192.168.77.1"
AGENT_IP = "192.168.77.2"

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: on-agent
spec:
  nodeSelector: {kubernetes.io/hostname: edge-agent}
  tolerations:
  - {key: dedicated, operator: Equal, value: edge, effect: NoSchedule}
  containers:
  - name: c
    image: localhost/test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from $(hostname); exec sleep 3600"]
"""


def set_hostname(text: str, name: str) -> str:
    out, n = re.subn(r'(?m)^# hostname = "cairn"$', f'hostname = "{name}"', text)
    assert n == 1, "the generated config has no hostname line"
    return out


def with_network(text: str, lines: str) -> str:
    out, n = re.subn(r"(?m)^\[network\]$", "[network]\n" + lines, text)
    assert n == 1, "the generated config has no [network] table"
    return out


def busybox_archive(arch: str, workdir) -> "os.PathLike":
    if harness.which("kubectl"):
        pytest.fail("kubectl must be installed (make deps)")
    busybox = harness.busybox(arch)
    archive = workdir / "busybox.tar"
    links = [f"--link=bin/{a}=busybox" for a in ("sh", "cat", "hostname", "sleep")]
    harness.tool(
        "oci", "--name", "localhost/test/busybox:1", "--arch", arch,
        "--entrypoint", "/bin/sh", f"--file={busybox}=bin/busybox", *links, archive,
    )
    return archive


@pytest.mark.boots(2)
def test_agent_joins_a_server(arch, image, workdir):
    archive = busybox_archive(arch, workdir)
    port = free_port()
    server_udp, agent_udp = free_udp_ports(2)

    # The server: DHCP on the user NIC (the forwarded API port), a static
    # address on the link to the agent.
    server_cfg = workdir / "server"
    harness.tool("config", "init", "--server", f"https://127.0.0.1:{port}", server_cfg)
    kubeconfig = server_cfg / "kubeconfig.yaml"
    text = set_hostname((server_cfg / "config.toml").read_text(), "edge-server")
    # Two NICs: the node reports the link's address, not the DHCP one.
    text = text.replace('token = "', f'node_ip = "{SERVER_IP}"\ntoken = "', 1)
    text += f'\n[[network.interfaces]]\nname = "eth1"\ndhcp = false\naddresses = ["{SERVER_IP}/24"]\n'
    (server_cfg / "config.toml").write_text(text)
    harness.tool("config", "write", image, server_cfg / "config.toml")

    # The agent: what `config init --role agent` writes, plus its address,
    # a label and a taint.
    token = (server_cfg / "join-token").read_text().strip()
    agent_cfg = workdir / "agent"
    harness.tool("config", "init", "--role", "agent", "--server",
                 f"https://{SERVER_IP}:6443", "--token", token, agent_cfg)
    text = set_hostname((agent_cfg / "config.toml").read_text(), "edge-agent")
    text = with_network(text, f'dhcp = false\naddress = "{AGENT_IP}/24"\n')
    assert "ca_cert" not in text.replace("# ca_cert", ""), "the agent's config carries no CA"
    text = text.replace(
        'token = "', 'node_taints = ["dedicated=edge:NoSchedule"]\ntoken = "', 1
    ) + '\n[cluster.node_labels]\n"example.com/site" = "north"\n'
    (agent_cfg / "config.toml").write_text(text)
    harness.tool("config", "validate", agent_cfg / "config.toml")
    agent_image = harness.copy_image(arch, workdir, "agent.img")
    harness.tool("config", "write", agent_image, agent_cfg / "config.toml")
    offset = harness.partitions(agent_image)["config"]["offset"]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    harness.run(["mmd", "-i", f"{agent_image}@@{offset}", "::images"], env=env, check=False)
    harness.mcopy_to_partition(agent_image, "config", archive, "images/busybox.tar")

    server_log, agent_log = workdir / "server-console.log", workdir / "agent-console.log"
    # One vCPU each: two VMs at once beside another test's VM on a 2-core
    # host; with two each, TCG starved the guests into soft lockups.
    server = harness.boot(arch, image, server_log, forwards=[(port, 6443)], memory=1024, smp=1,
                          extra=socket_link("link", server_udp, agent_udp))
    agent = None
    try:
        agent = harness.boot(arch, agent_image, agent_log, memory=768, user_net=False, smp=1,
                             extra=socket_link("link", agent_udp, server_udp))
        server.wait_for(harness.READY, harness.ready_timeout(arch) + 60)
        agent.wait_for(harness.READY, harness.ready_timeout(arch) + 120)

        nodes = kubectl(kubeconfig, "get", "nodes", "-o", "json")
        assert nodes.returncode == 0, nodes
        by_name = {n["metadata"]["name"]: n for n in json.loads(nodes.stdout)["items"]}
        assert set(by_name) == {"edge-server", "edge-agent"}, by_name.keys()
        node = by_name["edge-agent"]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready.get("Ready") == "True", node["status"]
        labels = node["metadata"]["labels"]
        assert labels.get("example.com/site") == "north", labels
        assert "node-role.kubernetes.io/control-plane" not in labels, labels
        assert "node-role.kubernetes.io/control-plane" in by_name["edge-server"]["metadata"]["labels"]
        taints = node["spec"].get("taints", [])
        assert {"key": "dedicated", "value": "edge", "effect": "NoSchedule"} in taints, taints
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses.get("InternalIP") == AGENT_IP, addresses
        server_addresses = {a["type"]: a["address"]
                            for a in by_name["edge-server"]["status"]["addresses"]}
        assert server_addresses.get("InternalIP") == SERVER_IP, server_addresses

        assert kubectl(kubeconfig, "apply", "-f", "-", stdin=POD).returncode == 0
        waited = kubectl(kubeconfig, "wait", "pod/on-agent", "--for=condition=Ready",
                         "--timeout=240s", timeout=260)
        assert waited.returncode == 0, f"{waited} ({agent_log})"
        pod = json.loads(kubectl(kubeconfig, "get", "pod", "on-agent", "-o", "json").stdout)
        assert pod["spec"]["nodeName"] == "edge-agent", pod["spec"]
        assert pod["status"]["hostIP"] == AGENT_IP, pod["status"]
        prefix = node["spec"]["podCIDR"].rsplit(".", 1)[0] + "."
        assert pod["status"]["podIP"].startswith(prefix), (pod["status"], node["spec"])

        logs = poll("kubectl logs reaches the agent's pod",
                    lambda: (r := kubectl(kubeconfig, "logs", "on-agent")).returncode == 0
                    and "hello from on-agent" in r.stdout and r, 60, agent_log)
        assert logs
        got = kubectl(kubeconfig, "exec", "on-agent", "--", "cat", "/etc/hostname")
        assert got.returncode == 0 and got.stdout.strip() == "on-agent", got
        harness.power_off(agent)
        harness.power_off(server)
    finally:
        if agent is not None:
            agent.kill()
        server.kill()
