"""The official Python kubernetes client (32.x, for Kubernetes 1.32) against
the host `cairn server`, on SQLite and on PostgreSQL: CRUD of namespaces,
configmaps and secrets, the three patch types, label selectors and
limit/continue, watches resumed from a resourceVersion, 410 Expired after
compaction and the re-list that recovers from it, `utils.create_from_yaml`
with a multi-document manifest (namespace, configmaps, secret, deployment,
service), and bearer-token authentication."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from kubernetes import client, utils, watch
from kubernetes.client.rest import ApiException

NS = "default"


def cm(name: str, data: dict | None = None, labels: dict | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data=data or {},
    )


def status_of(call, *args, **kwargs) -> int:
    with pytest.raises(ApiException) as e:
        call(*args, **kwargs)
    return e.value.status


def test_configmap_crud(core):
    created = core.create_namespaced_config_map(NS, cm("crud", {"a": "1"}))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None

    got = core.read_namespaced_config_map("crud", NS)
    assert got.data == {"a": "1"}
    assert got.metadata.resource_version == created.metadata.resource_version

    assert status_of(core.create_namespaced_config_map, NS, cm("crud")) == 409

    got.data["b"] = "2"
    replaced = core.replace_namespaced_config_map("crud", NS, got)
    assert replaced.data == {"a": "1", "b": "2"}
    assert int(replaced.metadata.resource_version) > int(got.metadata.resource_version)

    # A replace with the stale resourceVersion conflicts.
    got.data["c"] = "3"
    assert status_of(core.replace_namespaced_config_map, "crud", NS, got) == 409

    names = [i.metadata.name for i in core.list_namespaced_config_map(NS).items]
    assert "crud" in names

    core.delete_namespaced_config_map("crud", NS)
    assert status_of(core.read_namespaced_config_map, "crud", NS) == 404
    assert status_of(core.delete_namespaced_config_map, "crud", NS) == 404


def test_secret_crud(core):
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"),
        type="Opaque",
        data={"password": base64.b64encode(b"s3cr\x00t").decode()},
    )
    core.create_namespaced_secret(NS, secret)
    got = core.read_namespaced_secret("creds", NS)
    assert base64.b64decode(got.data["password"]) == b"s3cr\x00t"
    assert got.type == "Opaque"
    got.data["user"] = base64.b64encode(b"jane").decode()
    core.replace_namespaced_secret("creds", NS, got)
    assert set(core.read_namespaced_secret("creds", NS).data) == {"password", "user"}
    core.delete_namespaced_secret("creds", NS)
    assert status_of(core.read_namespaced_secret, "creds", NS) == 404


def test_namespace_crud(core):
    name = "py-" + uuid.uuid4().hex[:8]
    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert ns.metadata.name == name
    assert name in [n.metadata.name for n in core.list_namespace().items]
    core.create_namespaced_config_map(name, cm("inside", {"k": "v"}))
    assert core.read_namespaced_config_map("inside", name).data == {"k": "v"}
    # Objects in a namespace that does not exist are refused.
    assert status_of(core.create_namespaced_config_map, "nowhere", cm("x")) == 404
    core.delete_namespace(name)
    assert status_of(core.read_namespace, name) == 404


def owner(name: str, uid: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid}


def test_patches_of_each_type(server, core):
    core.create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="patched", owner_references=[
            client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="o1", uid="u1"),
        ]),
        data={"a": "1", "b": "2"},
    ))

    # A list body is sent as application/json-patch+json.
    out = core.patch_namespaced_config_map("patched", NS, [
        {"op": "replace", "path": "/data/a", "value": "10"},
        {"op": "remove", "path": "/data/b"},
        {"op": "add", "path": "/metadata/labels", "value": {"via": "json"}},
    ])
    assert out.data == {"a": "10"}
    assert out.metadata.labels == {"via": "json"}

    # A dict body is sent as application/strategic-merge-patch+json: owner
    # references merge by uid (patchStrategy=merge), a null removes a key.
    out = core.patch_namespaced_config_map("patched", NS, {
        "metadata": {"ownerReferences": [owner("o2", "u2")], "labels": {"via": None}},
        "data": {"c": "3"},
    })
    assert sorted(r.uid for r in out.metadata.owner_references) == ["u1", "u2"]
    assert out.data == {"a": "10", "c": "3"}
    assert not out.metadata.labels

    # application/merge-patch+json (the client picks it only when told, by a
    # default header): lists are replaced whole.
    with server.api_client() as merge_client:
        merge_client.set_default_header("Content-Type", "application/merge-patch+json")
        out = client.CoreV1Api(merge_client).patch_namespaced_config_map("patched", NS, {
            "metadata": {"ownerReferences": [owner("o3", "u3")]},
            "data": {"a": None},
        })
    assert [r.uid for r in out.metadata.owner_references] == ["u3"]
    assert out.data == {"c": "3"}

    # A patch that does not apply is a 4xx Status, and changes nothing.
    assert status_of(core.patch_namespaced_config_map, "patched", NS,
                     [{"op": "test", "path": "/data/c", "value": "nope"}]) in (409, 422)
    assert core.read_namespaced_config_map("patched", NS).data == {"c": "3"}


def test_label_selectors_and_pages(core):
    for i in range(5):
        core.create_namespaced_config_map(NS, cm(
            f"sel-{i}", {"i": str(i)},
            labels={"app": "sel", "tier": "front" if i % 2 else "back", "n": str(i)},
        ))
    core.create_namespaced_config_map(NS, cm("other", labels={"app": "other"}))

    def names(**kw):
        return sorted(i.metadata.name for i in core.list_namespaced_config_map(NS, **kw).items)

    assert names(label_selector="app=sel") == [f"sel-{i}" for i in range(5)]
    assert names(label_selector="app=sel,tier=front") == ["sel-1", "sel-3"]
    assert names(label_selector="app=sel,tier!=front") == ["sel-0", "sel-2", "sel-4"]
    assert names(label_selector="app==sel,n=3") == ["sel-3"]

    # limit/continue: pages of 2, one resourceVersion, every item once.
    seen, pages, token, rv = [], 0, None, None
    while True:
        page = core.list_namespaced_config_map(NS, label_selector="app=sel", limit=2,
                                               _continue=token)
        pages += 1
        assert len(page.items) <= 2
        seen += [i.metadata.name for i in page.items]
        rv = rv or page.metadata.resource_version
        assert page.metadata.resource_version == rv
        token = page.metadata._continue
        if not token:
            break
    assert pages == 3
    assert seen == [f"sel-{i}" for i in range(5)]


def test_set_based_label_selectors(core):
    for i in range(3):
        core.create_namespaced_config_map(NS, cm(f"set-{i}", labels={"n": str(i)}))
    core.create_namespaced_config_map(NS, cm("set-none", labels={"app": "x"}))

    def names(selector):
        items = core.list_namespaced_config_map(NS, label_selector=selector).items
        return sorted(i.metadata.name for i in items)

    assert names("n in (0,2)") == ["set-0", "set-2"]
    assert names("n notin (0,2),n") == ["set-1"]
    assert names("!n,app") == ["set-none"]
    assert names("n") == ["set-0", "set-1", "set-2"]


def events(core, rv: str, timeout: int = 3, **kw) -> list[tuple[str, str, str]]:
    w = watch.Watch()
    out = []
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv,
                       timeout_seconds=timeout, **kw):
        obj = ev["object"]
        out.append((ev["type"], obj.metadata.name, obj.metadata.resource_version))
    return out


def test_watch_resumes_from_a_resource_version(core):
    start = core.list_namespaced_config_map(NS).metadata.resource_version
    a = core.create_namespaced_config_map(NS, cm("w-a", {"v": "1"}))
    a.data["v"] = "2"
    a2 = core.replace_namespaced_config_map("w-a", NS, a)
    b = core.create_namespaced_config_map(NS, cm("w-b"))
    deleted = core.delete_namespaced_config_map("w-a", NS)

    got = events(core, start)
    assert [(t, n) for t, n, _ in got] == [
        ("ADDED", "w-a"), ("MODIFIED", "w-a"), ("ADDED", "w-b"), ("DELETED", "w-a"),
    ]
    assert [rv for _, _, rv in got][:3] == [
        a.metadata.resource_version, a2.metadata.resource_version, b.metadata.resource_version,
    ]
    if isinstance(deleted, client.V1ConfigMap):
        assert got[3][2] == deleted.metadata.resource_version
    # Resuming from the middle replays only what came after.
    assert [(t, n) for t, n, _ in events(core, a2.metadata.resource_version)] == [
        ("ADDED", "w-b"), ("DELETED", "w-a"),
    ]


def test_watch_from_a_compacted_resource_version_is_410_then_relist(start_server):
    server = start_server("--datastore-compact-interval", "1s", "--datastore-compact-retain", "0")
    with server.api_client() as api:
        core = client.CoreV1Api(api)
        old = core.create_namespaced_config_map(NS, cm("old", {"v": "1"}))
        old.data["v"] = "2"
        core.replace_namespaced_config_map("old", NS, old)
        core.create_namespaced_config_map(NS, cm("newer"))

        deadline = time.monotonic() + 20
        while True:
            try:
                events(core, old.metadata.resource_version, timeout=1)
            except ApiException as e:
                assert e.status == 410, e
                # As an HTTP 410 the Status is the body; as a watch ERROR
                # event the client puts it in the reason.
                assert "Expired" in f"{e.reason} {e.body}", e
                break
            assert time.monotonic() < deadline, "history was never compacted"
            time.sleep(0.5)

        # What a reflector does on 410: list again, watch from the list.
        listed = core.list_namespaced_config_map(NS)
        assert {"old", "newer"} <= {i.metadata.name for i in listed.items}
        rv = listed.metadata.resource_version
        core.create_namespaced_config_map(NS, cm("after"))
        got = events(core, rv)
        assert ("ADDED", "after") in [(t, n) for t, n, _ in got], got


MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: from-yaml
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: from-yaml
  labels: {app: demo}
data:
  mode: edge
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: from-yaml
type: Opaque
stringData:
  plain: hello
data:
  key: dmFsdWU=
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: in-default
data: {}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: from-yaml
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: from-yaml
spec:
  selector: {app: web}
  ports:
  - port: 80
"""


def test_create_from_yaml_multi_document(api, core, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST)
    created = utils.create_from_yaml(api, str(manifest))
    kinds = sorted(obj.kind for group in created for obj in group)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Namespace", "Secret", "Service"]
    assert core.read_namespaced_config_map("settings", "from-yaml").data == {"mode": "edge"}
    secret = core.read_namespaced_secret("token", "from-yaml").data
    assert base64.b64decode(secret["key"]) == b"value"
    assert base64.b64decode(secret["plain"]) == b"hello"
    assert core.read_namespaced_config_map("in-default", NS).metadata.name == "in-default"
    deployment = client.AppsV1Api(api).read_namespaced_deployment("web", "from-yaml")
    assert deployment.spec.replicas == 2
    assert deployment.spec.strategy.type == "RollingUpdate"  # defaulted, as upstream
    assert core.read_namespaced_service("web", "from-yaml").spec.cluster_ip
    # Again: everything exists, and the client reports it as a failure.
    with pytest.raises(utils.FailToCreateError) as e:
        utils.create_from_yaml(api, str(manifest))
    assert all(err.status == 409 for err in e.value.api_exceptions)


def test_bearer_tokens(tmp_path, start_server):
    data_dir = tmp_path / "tokens"
    data_dir.mkdir()
    (data_dir / "tokens.csv").write_text('py-secret,py-user,42,"system:masters"\n')
    server = start_server("--token", "node-secret", data_dir=data_dir)

    def api_with(token: str) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = f"https://127.0.0.1:{server.port}"
        cfg.ssl_ca_cert = str(data_dir / "pki" / "ca.crt")
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    for token in ("py-secret", "node-secret"):
        with api_with(token) as api:
            assert "default" in [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    with api_with("wrong") as api:
        assert status_of(client.CoreV1Api(api).list_namespace) == 401
