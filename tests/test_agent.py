"""The node agent end to end in the booted image: a config made by
`cairn-image config init`, a busybox image (built here from the host's static
busybox with `cairn-image oci`) dropped into the CAIRN partition's `images/`
as an air-gapped user would, then with stock kubectl through the forwarded
API port: the node is Ready (`cairn: ready` waits for it), a Deployment of
that image rolls out with pod IPs from the node's podCIDR, `kubectl logs`
shows the container's output, `kubectl exec` runs a command in it,
`kubectl port-forward` reaches its port, `kubectl cp` copies a file in and
out, a PersistentVolumeClaim of the default `local-path` class holds what a
pod wrote (read back from the data partition after power-off), and a pod
with an image that exists nowhere reports ErrImagePull/ImagePullBackOff while
the others keep running. An image only in a password-protected local
registry, named under a registry host that does not exist, is pulled
through the mirror and credentials of `[cluster.registries]`.

Pod networking beyond the node (the image's iptables, driven by the CNI
bridge plugin's `ipMasq` and the portmap plugin): a pod's `hostPort` answers
on the node's address, reached from the host through a QEMU port forward;
and a pod fetches a page from an HTTP server on the host at 10.0.2.2 (QEMU
user networking's host address), which only answers a source address on
the user network, so the pod's traffic must be masqueraded.

Both architectures: the test image's busybox is the pinned one of the
image's components (harness.busybox).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import harness
from registry import Registry

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: httpd
        image: localhost/test/busybox:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "echo serving from $(hostname); exec httpd -f -p 8080 -h /etc"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
"""

MIRRORED = """\
apiVersion: v1
kind: Pod
metadata:
  name: mirrored
spec:
  containers:
  - name: c
    image: registry.example/test/busybox:2
    command: ["/bin/sh", "-c", "echo pulled through the mirror; exec sleep 3600"]
"""

HOSTPORT = """\
apiVersion: v1
kind: Pod
metadata:
  name: hostport
spec:
  containers:
  - name: httpd
    image: localhost/test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "exec httpd -f -p 8080 -h /etc"]
    ports:
    - containerPort: 8080
      hostPort: %d
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 2
"""

CLAIM = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: notes
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests: {storage: 16Mi}
---
apiVersion: v1
kind: Pod
metadata:
  name: writer
spec:
  containers:
  - name: c
    image: localhost/test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo %s > /notes/token; sync; exec sleep 3600"]
    volumeMounts:
    - {name: notes, mountPath: /notes}
  volumes:
  - name: notes
    persistentVolumeClaim: {claimName: notes}
"""

MISSING = """\
apiVersion: v1
kind: Pod
metadata:
  name: missing
spec:
  containers:
  - name: c
    image: localhost:5999/nowhere/missing:1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubectl(kubeconfig, *args, stdin=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout", "30s", *args],
        capture_output=True, text=True, input=stdin, timeout=timeout,
    )


def poll(what: str, check, timeout: float, log) -> object:
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.time() < deadline, f"{what} ({log})"
        time.sleep(2)


@pytest.fixture
def host_http():
    """An HTTP server on the host's loopback (10.0.2.2 from the VM) that
    answers every GET with a token; yields (port, token)."""
    token = f"cairn-egress-{os.getpid()}-{time.time_ns()}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], token
    server.shutdown()
    server.server_close()


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except (OSError, urllib.error.URLError):
        return None


@pytest.fixture
def registry(workdir):
    """A password-protected registry on the host (10.0.2.2 from the VM)."""
    (workdir / "registry").mkdir()
    r = Registry(workdir / "registry", "cairn", "pull-secret-1")
    yield r
    r.close()


@pytest.mark.boots(1)
def test_deployment_logs_exec_and_bad_image(arch, image, workdir, registry, host_http):
    if harness.which("kubectl"):
        pytest.fail("kubectl must be installed (make deps)")
    busybox = harness.busybox(arch)
    port = free_port()
    out = workdir / "cfg"
    harness.tool("config", "init", "--server", f"https://127.0.0.1:{port}", out)
    kubeconfig = out / "kubeconfig.yaml"
    archive = workdir / "busybox.tar"
    links = [f"--link=bin/{a}=busybox" for a in ("sh", "httpd", "cat", "hostname", "sleep", "nc", "tar")]
    harness.tool(
        "oci", "--name", "localhost/test/busybox:1", "--arch", arch,
        "--entrypoint", "/bin/sh", f"--file={busybox}=bin/busybox", *links, archive,
    )
    try:
        registry.request("GET", "/v2/", auth=False)
        pytest.fail("the registry must refuse anonymous requests")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e
    registry.push_oci(archive, "test/busybox", "2")
    with open(out / "config.toml", "a") as f:
        f.write(
            '\n[cluster.registries.mirrors."registry.example"]\n'
            f'endpoints = ["http://10.0.2.2:{registry.port}"]\n'
            f'[cluster.registries.configs."10.0.2.2:{registry.port}"]\n'
            'username = "cairn"\npassword = "pull-secret-1"\n'
        )
    harness.tool("config", "validate", out / "config.toml")
    harness.tool("config", "write", image, out / "config.toml")
    offset = harness.partitions(image)["config"]["offset"]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    harness.run(["mmd", "-i", f"{image}@@{offset}", "::images"], env=env, check=False)
    harness.mcopy_to_partition(image, "config", archive, "images/busybox.tar")

    log = workdir / "console.log"
    # The host's side of the hostPort pod: a QEMU forward to the guest's port.
    host_port, guest_port = free_port(), 8088
    vm = harness.boot(arch, image, log, forwards=[(port, 6443), (host_port, guest_port)],
                      memory=1024)
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch) + 60)
        nodes = kubectl(kubeconfig, "get", "nodes", "-o", "json")
        assert nodes.returncode == 0, nodes
        node = json.loads(nodes.stdout)["items"][0]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready.get("Ready") == "True", node["status"]
        assert "Cairn" in node["status"]["nodeInfo"]["osImage"], node["status"]["nodeInfo"]
        pod_cidr = node["spec"]["podCIDR"]

        applied = kubectl(kubeconfig, "apply", "-f", "-", stdin=DEPLOYMENT)
        assert applied.returncode == 0, applied
        rolled = kubectl(kubeconfig, "rollout", "status", "deployment/web", "--timeout=240s",
                         timeout=260)
        assert rolled.returncode == 0, f"{rolled} ({log})"
        pods = json.loads(kubectl(kubeconfig, "get", "pods", "-l", "app=web", "-o", "json").stdout)
        prefix = pod_cidr.rsplit(".", 1)[0] + "."
        for pod in pods["items"]:
            assert pod["status"]["phase"] == "Running", pod["status"]
            assert pod["status"]["podIP"].startswith(prefix), (pod["status"], pod_cidr)
        name = pods["items"][0]["metadata"]["name"]

        logs = poll("kubectl logs shows the container's output",
                    lambda: (r := kubectl(kubeconfig, "logs", name)).returncode == 0
                    and "serving from" in r.stdout and r, 60, log)
        assert name in logs.stdout, logs
        got = kubectl(kubeconfig, "exec", name, "--", "cat", "/etc/hostname")
        assert got.returncode == 0 and got.stdout.strip() == name, got
        code = kubectl(kubeconfig, "exec", name, "--", "sh", "-c", "exit 3")
        assert code.returncode == 3, code

        # port-forward: a local port reaches the pod's 8080 (SPDY in WebSocket).
        local = free_port()
        forward = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(kubeconfig), "port-forward", f"pod/{name}",
             f"{local}:8080"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            page = poll("kubectl port-forward reaches the pod",
                        lambda: http_get(f"http://127.0.0.1:{local}/hostname"), 60, log)
            assert page.strip() == name, page
        finally:
            forward.terminate()
            forward.wait(timeout=10)

        # cp: in (tar x in the pod) and back out (tar c).
        sent = workdir / "sent.txt"
        sent.write_text(f"copied into {name}\n")
        cp_in = kubectl(kubeconfig, "cp", str(sent), f"{name}:/sent.txt")
        assert cp_in.returncode == 0, cp_in
        inside = kubectl(kubeconfig, "exec", name, "--", "cat", "/sent.txt")
        assert inside.stdout == sent.read_text(), inside
        back = workdir / "back.txt"
        cp_out = kubectl(kubeconfig, "cp", f"{name}:/sent.txt", str(back))
        assert cp_out.returncode == 0 and back.read_text() == sent.read_text(), cp_out

        # Masquerading: from the pod to the host's server at 10.0.2.2 (busybox
        # nc; the static busybox's wget crashes when it cannot connect).
        egress_port, token = host_http
        egress = kubectl(kubeconfig, "exec", name, "--", "sh", "-c",
                         f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.0.2.2 {egress_port}")
        assert egress.returncode == 0 and token in egress.stdout, f"{egress} ({log})"

        # hostPort: the node's port 8088 reaches the pod's 8080.
        assert kubectl(kubeconfig, "apply", "-f", "-",
                       stdin=HOSTPORT % guest_port).returncode == 0
        waited = kubectl(kubeconfig, "wait", "pod/hostport", "--for=condition=Ready",
                         "--timeout=180s", timeout=200)
        assert waited.returncode == 0, (
            f"{waited} {kubectl(kubeconfig, 'describe', 'pod', 'hostport').stdout} ({log})"
        )
        served = poll("the hostPort answers through the forwarded port",
                      lambda: http_get(f"http://127.0.0.1:{host_port}/hostname"), 60, log)
        assert served.strip() == "hostport", served

        # A PVC of the default class: a directory on the data partition.
        note = f"pvc-{time.time_ns()}"
        assert kubectl(kubeconfig, "apply", "-f", "-", stdin=CLAIM % note).returncode == 0
        waited = kubectl(kubeconfig, "wait", "pod/writer", "--for=condition=Ready",
                         "--timeout=180s", timeout=200)
        assert waited.returncode == 0, (
            f"{waited} {kubectl(kubeconfig, 'describe', 'pod', 'writer').stdout} ({log})"
        )
        wrote = poll("the pod wrote into its claim",
                     lambda: (r := kubectl(kubeconfig, "exec", "writer", "--", "cat",
                                           "/notes/token")).stdout.strip() == note and r,
                     60, log)
        assert wrote
        claim = json.loads(kubectl(kubeconfig, "get", "pvc", "notes", "-o", "json").stdout)
        assert claim["status"]["phase"] == "Bound", claim["status"]
        assert claim["spec"]["storageClassName"] == "local-path", claim["spec"]
        volume = json.loads(kubectl(kubeconfig, "get", "pv", claim["spec"]["volumeName"],
                                    "-o", "json").stdout)
        source = volume["spec"].get("hostPath") or volume["spec"].get("local")
        volume_dir = source["path"]
        assert volume_dir.startswith("/var/"), volume["spec"]

        assert kubectl(kubeconfig, "apply", "-f", "-", stdin=MISSING).returncode == 0
        reason = poll(
            "a pod with a missing image reports ErrImagePull or ImagePullBackOff",
            lambda: re.search(r"ErrImagePull|ImagePullBackOff",
                              kubectl(kubeconfig, "get", "pod", "missing").stdout),
            120, log,
        )
        assert reason
        still = kubectl(kubeconfig, "get", "deployment", "web", "-o",
                        "jsonpath={.status.readyReplicas}")
        assert still.stdout == "2", still

        assert kubectl(kubeconfig, "apply", "-f", "-", stdin=MIRRORED).returncode == 0
        waited = kubectl(kubeconfig, "wait", "pod/mirrored", "--for=condition=Ready",
                         "--timeout=180s", timeout=200)
        assert waited.returncode == 0, (
            f"{waited} {kubectl(kubeconfig, 'describe', 'pod', 'mirrored').stdout} ({log})"
        )
        harness.power_off(vm)
    finally:
        vm.kill()
    # The claim's directory is on the data partition (mounted at /var).
    data = harness.extract_partition(image, "data", workdir / "data.ext4")
    on_disk = harness.debugfs_cat(data, volume_dir.removeprefix("/var") + "/token")
    assert on_disk.strip() == note, (volume_dir, on_disk)
