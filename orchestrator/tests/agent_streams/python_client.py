"""Exec and port-forward with the official Python kubernetes client, which
speaks WebSocket only (`v4.channel.k8s.io`, no SPDY fallback): run by
agent_streams.rs against its pod, prints one JSON object of what it saw.

usage: python_client.py KUBECONFIG POD CONTAINER HTTP_PORT CLOSED_PORT
"""

import json
import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream

kubeconfig, pod, container = sys.argv[1], sys.argv[2], sys.argv[3]
http_port, closed_port = int(sys.argv[4]), int(sys.argv[5])
config.load_kube_config(config_file=kubeconfig)
api = client.CoreV1Api()
seen = {}

# Whole output, as the client's docs show it.
seen["exec"] = stream(
    api.connect_get_namespaced_pod_exec, pod, "default", container=container,
    command=["sh", "-c", "echo out-line"], stdout=True, stderr=False, stdin=False, tty=False,
)

# Separate streams, stdin, and the exit code from the error channel.
resp = stream(
    api.connect_get_namespaced_pod_exec, pod, "default", container=container,
    command=["sh", "-c", "read line; echo got $line; echo to-stderr >&2; exit 3"],
    stdout=True, stderr=True, stdin=True, tty=False, _preload_content=False,
)
resp.write_stdin("hello\n")
out, err = "", ""
while resp.is_open():
    resp.update(timeout=1)
    out += resp.read_stdout()
    err += resp.read_stderr()
resp.close()
seen["stdout"], seen["stderr"] = out, err
# Parsed from the Status on channel 3 (NonZeroExitCode and its cause).
seen["returncode"] = resp.returncode

# Port-forward: an HTTP request through the forwarded socket; two ports in
# one `ports=A,B`, the second with nothing listening (its error channel
# says so).
pf = portforward(
    api.connect_get_namespaced_pod_portforward, pod, "default", ports=f"{http_port},{closed_port}",
)
sock = pf.socket(http_port)
sock.settimeout(20)
sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
reply = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    reply += chunk
sock.close()
seen["forwarded"] = reply.decode(errors="replace")
seen["forward_error"] = pf.error(http_port)
seen["closed_error"] = pf.error(closed_port)
print(json.dumps(seen))
