"""A local image registry for the end-to-end tests: Debian's
`docker-registry` on a free loopback port, plain HTTP, with htpasswd basic
auth, and a push of an OCI-layout archive (what `cairn-image oci` writes)
through the registry's blob-upload and manifest API. A VM reaches it at
10.0.2.2:<port> (QEMU user networking forwards that to the host's loopback).

Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # bcrypt for htpasswd; `crypt` is deprecated (gone in Python 3.13) but
    # Debian 12's and Ubuntu 24.04's Pythons have it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


class Registry:
    def __init__(self, workdir: Path, user: str, password: str):
        self.dir = Path(workdir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Cost 4: the registry checks the hash on every request.
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        (self.dir / "htpasswd").write_text(f"{user}:{hashed}\n")
        (self.dir / "config.yml").write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.dir / 'data'}}}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"auth:\n  htpasswd: {{realm: cairn-test, path: {self.dir / 'htpasswd'}}}\n"
        )
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.dir / "config.yml")],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "registry.log", "wb"),
        )
        deadline = time.time() + 20
        while True:
            try:
                self.request("GET", "/v2/")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"docker-registry did not start ({self.dir})")
                time.sleep(0.1)

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict | None = None, auth: bool = True):
        url = path if path.startswith("http") else self.url + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if auth:
            req.add_header("Authorization", self.auth)
        return urllib.request.urlopen(req, timeout=30)

    def push_oci(self, archive: Path, repo: str, tag: str) -> None:
        """Pushes the single image of an OCI-layout tar as repo:tag."""
        with tarfile.open(archive) as tar:
            def blob(ref: str) -> bytes:
                algo, hexd = ref.split(":", 1)
                return tar.extractfile(f"blobs/{algo}/{hexd}").read()

            index = json.loads(tar.extractfile("index.json").read())
            desc = index["manifests"][0]
            manifest_bytes = blob(desc["digest"])
            manifest = json.loads(manifest_bytes)
            for part in [manifest["config"], *manifest["layers"]]:
                data = blob(part["digest"])
                assert "sha256:" + hashlib.sha256(data).hexdigest() == part["digest"]
                started = self.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"")
                location = started.headers["Location"]
                sep = "&" if "?" in location else "?"
                self.request("PUT", f"{location}{sep}digest={part['digest']}", data=data,
                             headers={"Content-Type": "application/octet-stream"})
            media = desc.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
            self.request("PUT", f"/v2/{repo}/manifests/{tag}", data=manifest_bytes,
                         headers={"Content-Type": media})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
