//! The node agent's volumes and probes against the real API server and
//! controller manager, run in-process (the library, as the agent inside
//! `cairn server` uses them) on a temporary SQLite store, with volumes on
//! a temporary root: configMap and secret files with modes and items and
//! their atomic update, downwardAPI contents, projected volumes (the
//! token subresource answering 404), emptyDir on tmpfs, hostPath type
//! checks, PVCs bound by the local-path provisioner, cleanup that leaves
//! nothing mounted; probes over HTTP and TCP against listeners on
//! 127.0.0.1 (thresholds, recovery, startup gating).
//!
//! Exec probes run in a busybox container of a real containerd with CRI
//! (`common/cri.rs`).
//!
//! Runs as root (tmpfs mounts, containerd), as `.ci/run` does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use cairn::agent::cri::api;
use cairn::agent::probes::Probes;
use cairn::agent::volumes::{Failure, Volumes};
use cairn::api::Api;
use cairn::controllers::client::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An in-process API server with the controller manager, and the node's
/// volume context on temporary directories.
struct Cluster {
    admin: Client,
    volumes: Volumes,
    root: PathBuf,
    storage: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = cairn::store::Store::open_sqlite(dir.path().join("state.db"))
        .await
        .expect("store");
    let api = Arc::new(Api::new(store, Default::default()));
    api.bootstrap(6443).await.expect("bootstrap");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(cairn::controllers::run(api.clone(), stopped));
    let admin = Client::new(api.clone(), "admin", "kubectl");
    let node = Client::new(api, "system:node:n1", "cairn-agent");
    let root = dir.path().join("agent");
    let storage = dir.path().join("storage");
    Cluster {
        admin,
        volumes: Volumes::new(node, &root, &storage),
        root,
        storage,
        _stop: stop,
        dir,
    }
}

impl Cluster {
    async fn create(&self, collection: &str, obj: Value) -> Value {
        self.admin
            .post(collection, &obj)
            .await
            .unwrap_or_else(|e| panic!("create in {collection}: {e}"))
    }

    async fn config_map(&self, name: &str, data: Value) -> Value {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": data});
        self.create("/api/v1/namespaces/default/configmaps", cm)
            .await
    }

    /// A pod object (not created through the API: the volumes only read
    /// its spec) bound to node `n1`.
    fn pod(&self, uid: &str, volumes: Value) -> Value {
        json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "default", "uid": uid,
                "labels": {"app": "web", "tier": "a \"quoted\" one"},
                "annotations": {"note": "hello"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}],
                "volumes": volumes},
        })
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// Mount points at or under `dir`: (path, filesystem type, super options).
fn mounts_under(dir: &Path) -> Vec<(PathBuf, String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let tail: Vec<&str> = l.split(" - ").nth(1)?.split(' ').collect();
            let (fs, options) = (tail.first()?, tail.get(2)?);
            Some((
                PathBuf::from(fields.get(4)?),
                fs.to_string(),
                options.to_string(),
            ))
        })
        .filter(|(p, _, _)| p.starts_with(dir))
        .collect()
}

async fn eventually<T>(secs: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_and_secret_files_modes_items_and_updates() {
    let c = cluster().await;
    c.config_map("cfg", json!({"a": "1", "b": "2"})).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sec", "namespace": "default"},
        "data": {"user": "YWRtaW4=", "pass": "czNjcjN0"}});
    c.create("/api/v1/namespaces/default/secrets", secret).await;
    let pod = c.pod(
        "u1",
        json!([
            {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
            {"name": "some", "configMap": {"name": "cfg",
                "items": [{"key": "b", "path": "dir/b.txt", "mode": 0o400}]}},
            {"name": "creds", "secret": {"secretName": "sec", "items": [{"key": "pass", "path": "p"}]}},
            {"name": "maybe", "configMap": {"name": "absent", "optional": true}},
        ]),
    );
    assert_eq!(
        Volumes::references(&pod),
        [
            ("configmaps", "absent".to_owned()),
            ("configmaps", "cfg".to_owned()),
            ("secrets", "sec".to_owned())
        ]
    );
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    let all = &paths["all"];
    assert!(all.starts_with(c.root.join("pods/u1/volumes/configmap")));
    assert_eq!(read(&all.join("a")), "1");
    assert_eq!(mode(&all.join("a")), 0o600);
    assert_eq!(read(&paths["some"].join("dir/b.txt")), "2");
    assert_eq!(mode(&paths["some"].join("dir/b.txt")), 0o400);
    assert!(!paths["some"].join("a").exists(), "items pick keys");
    assert_eq!(read(&paths["creds"].join("p")), "s3cr3t");
    assert_eq!(mode(&paths["creds"].join("p")), 0o644);
    assert!(!paths["creds"].join("user").exists());
    let maybe: Vec<_> = std::fs::read_dir(&paths["maybe"]).unwrap().collect();
    assert_eq!(maybe.len(), 2, "only ..data and its directory: {maybe:?}");

    // The user-visible file is a link through ..data.
    assert_eq!(
        std::fs::read_link(all.join("a")).unwrap(),
        Path::new("..data/a")
    );
    let before = std::fs::read_link(all.join("..data")).unwrap();
    // Unchanged objects: refresh writes nothing.
    c.volumes.refresh(&pod).await.expect("refresh");
    assert_eq!(std::fs::read_link(all.join("..data")).unwrap(), before);
    // An update swaps ..data; a removed key's link goes.
    let patch = json!({"data": {"a": "one", "b": null, "c": "3"}});
    c.admin
        .merge_patch("/api/v1/namespaces/default/configmaps/cfg", &patch)
        .await
        .expect("patch");
    // The item's key went: that volume fails, naming it; the others update.
    let err = c.volumes.refresh(&pod).await.unwrap_err();
    assert_eq!(err.volume, "some");
    assert_eq!(err.failure, Failure::Config);
    assert!(
        err.to_string()
            .contains("configmap references non-existent config key: b"),
        "{err}"
    );
    let after = std::fs::read_link(all.join("..data")).unwrap();
    assert_ne!(before, after);
    assert!(!all.join(&before).exists(), "old payload directory removed");
    assert_eq!(read(&all.join("a")), "one");
    assert_eq!(read(&all.join("c")), "3");
    assert!(std::fs::symlink_metadata(all.join("b")).is_err());
    // A missing non-optional configMap names the pod, volume and object.
    let missing = c.pod("u2", json!([{"name": "cm", "configMap": {"name": "nope"}}]));
    let err = c.volumes.prepare(&missing).await.unwrap_err();
    assert_eq!(err.reason(), "CreateContainerConfigError");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cm\" of pod default/p-u2: configmap \"nope\" not found"
    );
    c.volumes.cleanup("u1").await.expect("cleanup");
    assert!(!c.root.join("pods/u1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downward_api_and_projected_contents() {
    let c = cluster().await;
    c.config_map("cfg", json!({"k": "v"})).await;
    let pod = c.pod(
        "u3",
        json!([
            {"name": "info", "downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c",
                    "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c",
                    "resource": "requests.cpu", "divisor": "1m"}, "mode": 0o400},
            ]}},
            {"name": "all-in-one", "projected": {"defaultMode": 0o440, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "cfg"}},
                {"downwardAPI": {"items": [{"path": "podname",
                    "fieldRef": {"fieldPath": "metadata.name"}}]}},
            ]}},
        ]),
    );
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    let info = &paths["info"];
    assert_eq!(read(&info.join("name")), "p-u3");
    assert_eq!(read(&info.join("ns")), "default");
    assert_eq!(read(&info.join("uid")), "u3");
    assert_eq!(
        read(&info.join("labels")),
        "app=\"web\"\ntier=\"a \\\"quoted\\\" one\""
    );
    assert_eq!(read(&info.join("note")), "hello");
    assert_eq!(read(&info.join("mem")), "64");
    assert_eq!(read(&info.join("cpu")), "250");
    assert_eq!(mode(&info.join("cpu")), 0o400);
    let projected = &paths["all-in-one"];
    assert_eq!(read(&projected.join("k")), "v");
    assert_eq!(read(&projected.join("podname")), "p-u3");
    assert_eq!(mode(&projected.join("k")), 0o440);
    // This API server has no serviceaccounts/token subresource yet: the
    // token file is not written (a warning says so), the rest is.
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    let token = c
        .admin
        .post(
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            &request,
        )
        .await;
    match token {
        Err(e) if e.is_not_found() => assert!(!projected.join("token").exists()),
        Err(e) => panic!("token request: {e}"),
        Ok(_) => assert!(!read(&projected.join("token")).is_empty()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_dir_memory_is_tmpfs_and_cleanup_leaves_nothing() {
    let c = cluster().await;
    let outside = c.dir.path().join("outside");
    std::fs::write(&outside, "keep").unwrap();
    let pod = c.pod(
        "u4",
        json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "ram2", "emptyDir": {"medium": "Memory"}},
        ]),
    );
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    let scratch = &paths["scratch"];
    assert_eq!(scratch, &c.root.join("pods/u4/volumes/empty-dir/scratch"));
    assert_eq!(mode(scratch), 0o777);
    let ram = &paths["ram"];
    let mut mounts = mounts_under(&c.root);
    mounts.sort();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let (path, fs, options) = &mounts[0];
    assert_eq!((path, fs.as_str()), (ram, "tmpfs"));
    assert!(options.split(',').any(|o| o == "size=16384k"), "{options}");
    assert_eq!(mode(ram), 0o777);
    // Without sizeLimit: the pod's memory limit (its one container's 64Mi).
    let (path, _, options) = &mounts[1];
    assert_eq!(path, &paths["ram2"]);
    assert!(options.split(',').any(|o| o == "size=65536k"), "{options}");
    // Preparing again mounts nothing more.
    c.volumes.prepare(&pod).await.expect("prepare again");
    assert_eq!(mounts_under(&c.root).len(), 2);
    std::fs::write(ram.join("f"), "x").unwrap();
    // Links out of the pod directory are removed, not followed.
    std::os::unix::fs::symlink(&outside, scratch.join("link")).unwrap();
    std::os::unix::fs::symlink(c.dir.path(), ram.join("dirlink")).unwrap();
    c.volumes.cleanup("u4").await.expect("cleanup");
    assert!(mounts_under(&c.root).is_empty(), "nothing mounted");
    assert!(!c.root.join("pods/u4").exists());
    assert_eq!(read(&outside), "keep");
    assert!(c.dir.path().join("state.db").exists());
    c.volumes.cleanup("u4").await.expect("cleanup of nothing");
    assert!(c.volumes.cleanup("../x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_types() {
    let c = cluster().await;
    let base = c.dir.path().join("host");
    let made = base.join("made");
    let file = base.join("conf/app.conf");
    let pod = c.pod(
        "u5",
        json!([
            {"name": "d", "hostPath": {"path": made, "type": "DirectoryOrCreate"}},
            {"name": "f", "hostPath": {"path": file, "type": "FileOrCreate"}},
            {"name": "plain", "hostPath": {"path": "/nonexistent/anything"}},
        ]),
    );
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    assert_eq!(paths["d"], made);
    assert!(made.is_dir());
    assert!(file.is_file());
    for (kind, path, what) in [
        ("Directory", &file, "a directory"),
        ("File", &made, "a file"),
        ("Socket", &made, "a socket file"),
        ("BlockDevice", &made, "a block device"),
    ] {
        let pod = c.pod(
            "u6",
            json!([{"name": "h", "hostPath": {"path": path, "type": kind}}]),
        );
        let err = c.volumes.prepare(&pod).await.unwrap_err();
        assert_eq!(err.failure, Failure::Mount);
        assert!(
            err.to_string().ends_with(&format!(
                "hostPath type check failed: {} is not {what}",
                path.display()
            )),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_is_bound_to_a_local_path_volume_and_released() {
    let c = cluster().await;
    // The provisioner creates the default class at start.
    let class = eventually(20, "the local-path StorageClass", async || {
        c.admin
            .get("/apis/storage.k8s.io/v1/storageclasses/local-path")
            .await
            .ok()
    })
    .await;
    assert_eq!(class["provisioner"], "cairn.io/local-path");
    assert_eq!(
        class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(class["volumeBindingMode"], "Immediate");
    assert_eq!(class["reclaimPolicy"], "Delete");
    // A class of the same provisioner writing under this test's storage dir.
    let test_class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-test"}, "provisioner": "cairn.io/local-path",
        "reclaimPolicy": "Delete", "parameters": {"path": c.storage}});
    c.create("/apis/storage.k8s.io/v1/storageclasses", test_class)
        .await;
    let claim = |name: &str, class: Option<&str>| {
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        if let Some(class) = class {
            pvc["spec"]["storageClassName"] = json!(class);
        }
        pvc
    };
    let pvcs = "/api/v1/namespaces/default/persistentvolumeclaims";
    c.create(pvcs, claim("data", Some("local-test"))).await;
    c.create(pvcs, claim("plain", None)).await;
    let bound = |name: &'static str| {
        let admin = c.admin.clone();
        async move {
            eventually(20, name, async || {
                let pvc = admin.get(&format!("{pvcs}/{name}")).await.ok()?;
                (pvc["status"]["phase"] == "Bound").then_some(pvc)
            })
            .await
        }
    };
    let data = bound("data").await;
    let pv_name = data["spec"]["volumeName"].as_str().unwrap().to_owned();
    assert_eq!(
        pv_name,
        format!("pvc-{}", data["metadata"]["uid"].as_str().unwrap())
    );
    assert_eq!(data["status"]["capacity"]["storage"], "1Gi");
    let pv = c
        .admin
        .get(&format!("/api/v1/persistentvolumes/{pv_name}"))
        .await
        .unwrap();
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    let dir = c.storage.join(&pv_name);
    assert_eq!(pv["spec"]["hostPath"]["path"], dir.to_str().unwrap());
    // No class: the default one is filled in.
    let plain = bound("plain").await;
    assert_eq!(plain["spec"]["storageClassName"], "local-path");

    // A pod using the claim gets the directory, made by the agent.
    assert!(!dir.exists());
    let pod = c.pod(
        "u7",
        json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]),
    );
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    assert_eq!(paths["v"], dir);
    assert_eq!(mode(&dir), 0o777);
    std::fs::write(dir.join("f"), "x").unwrap();
    assert!(
        c.volumes.sweep().await.unwrap().is_empty(),
        "the PV exists: kept"
    );
    // A claim that does not exist or is not bound yet: pending.
    let pod = c.pod(
        "u8",
        json!([{"name": "v", "persistentVolumeClaim": {"claimName": "nope"}}]),
    );
    assert_eq!(
        c.volumes.prepare(&pod).await.unwrap_err().failure,
        Failure::Pending
    );

    // Deleting the claim releases and deletes the PV; the sweep removes the directory.
    c.admin
        .delete(&format!("{pvcs}/data"), &Value::Null)
        .await
        .expect("delete");
    eventually(20, "the PV deleted", async || {
        let gone = c
            .admin
            .get(&format!("/api/v1/persistentvolumes/{pv_name}"))
            .await;
        gone.is_err_and(|e| e.is_not_found()).then_some(())
    })
    .await;
    assert_eq!(c.volumes.sweep().await.unwrap(), vec![dir.clone()]);
    assert!(!dir.exists());
}

/// An HTTP server on 127.0.0.1 answering every request with `status`.
async fn http_server(status: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test server");
    let port = listener.local_addr().expect("test server").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

async fn wait_probe(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_thresholds_and_recovery() {
    let status = Arc::new(AtomicU16::new(200));
    let port = http_server(status.clone()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c", "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2}});
    probes.ensure("default/p", "127.0.0.1", "c", "id1", &spec);
    assert!(!probes.ready("id1"), "not ready before the probe passes");
    assert!(probes.started("id1"), "no startup probe");
    wait_probe("ready", || probes.ready("id1")).await;
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));
    let t = Instant::now();
    status.store(503, Ordering::SeqCst);
    wait_probe("not ready after 2 failures", || !probes.ready("id1")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "one failure is not enough"
    );
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));
    status.store(302, Ordering::SeqCst);
    wait_probe("ready again after 2 successes", || probes.ready("id1")).await;
    assert_eq!(probes.liveness_failure("id1"), None);
    probes.forget("default/p");
    assert!(!probes.ready("id1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_liveness_fails_after_threshold_and_startup_gates() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c",
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 2}});
    probes.ensure("default/p", "127.0.0.1", "c", "id1", &spec);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(probes.liveness_failure("id1"), None, "the port is open");
    assert!(probes.ready("id1"), "no readiness probe");
    drop(listener);
    wait_probe("liveness failure", || {
        probes.liveness_failure("id1").is_some()
    })
    .await;
    assert_eq!(
        probes.liveness_failure("id1").unwrap(),
        format!("Liveness probe failed: dial tcp 127.0.0.1:{port}: connect: connection refused")
    );
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));

    // A new container of the same name replaces the old one's workers.
    // Its startup probe holds readiness and liveness back until it passes.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let status = Arc::new(AtomicU16::new(200));
    let http = http_server(status).await;
    let spec = json!({"name": "c",
        "startupProbe": {"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"port": http}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 1}});
    probes.ensure("default/p", "127.0.0.1", "c", "id2", &spec);
    assert_eq!(
        probes.liveness_failure("id1"),
        None,
        "old container forgotten"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!probes.started("id2"));
    assert!(!probes.ready("id2"), "readiness waits for startup");
    assert_eq!(
        probes.liveness_failure("id2"),
        None,
        "liveness waits for startup"
    );
    let _open = std::net::TcpListener::bind(("127.0.0.1", closed)).expect("rebind the port");
    wait_probe("started", || probes.started("id2")).await;
    wait_probe("ready", || probes.ready("id2")).await;
    assert_eq!(probes.liveness_failure("id2"), None);
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate, answering 200.
async fn https_server() -> u16 {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("test server");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("test server")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("test server");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test server");
    let port = listener.local_addr().expect("test server").port();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_does_not_verify_the_certificate() {
    let port = https_server().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c",
        "readinessProbe": {"httpGet": {"port": port, "scheme": "HTTPS", "path": "/healthz"},
            "periodSeconds": 1}});
    probes.ensure("default/s", "127.0.0.1", "c", "tls", &spec);
    wait_probe("ready over HTTPS", || probes.ready("tls")).await;
    // The same server spoken to in plain HTTP does not pass.
    let plain = json!({"name": "c",
        "readinessProbe": {"httpGet": {"port": port}, "periodSeconds": 1, "timeoutSeconds": 1}});
    probes.ensure("default/s2", "127.0.0.1", "c", "plain", &plain);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!probes.ready("plain"));
}

/// A running busybox container (`sleep`) in a sandbox: its ID.
async fn busybox_container(runtime: &common::cri::CriRuntime) -> String {
    let mut cri = runtime.cri().await;
    let sandbox = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "probed".into(),
            namespace: "default".into(),
            uid: "probed-uid".into(),
            attempt: 0,
        }),
        hostname: "probed".into(),
        log_directory: runtime.pod_log_dir().display().to_string(),
        ..Default::default()
    };
    let sandbox_id = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", runtime.log()))
        .into_inner()
        .pod_sandbox_id;
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: common::cri::BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    let id = cri
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id,
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", runtime.log()))
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", runtime.log()));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_in_a_container() {
    let runtime = common::cri::CriRuntime::start().await;
    let id = busybox_container(&runtime).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::new(runtime.cri().await, tx);
    let spec = json!({"name": "c",
        "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/ready"]},
            "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["sh", "-c", "echo slow; sleep 10"]},
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}});
    probes.ensure("default/probed", "", "c", &id, &spec);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!probes.ready(&id), "/tmp/ready is not there yet");
    let mut cri = runtime.cri().await;
    let touched = cri
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["touch".into(), "/tmp/ready".into()],
            timeout: 5,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(touched.exit_code, 0);
    wait_probe("ready once the file exists", || probes.ready(&id)).await;
    assert_eq!(rx.recv().await.as_deref(), Some("default/probed"));
    // The liveness command outlives its timeout twice.
    wait_probe("liveness failure", || {
        probes.liveness_failure(&id).is_some()
    })
    .await;
    let failure = probes.liveness_failure(&id).unwrap();
    assert_eq!(
        failure,
        "Liveness probe failed: command \"sh -c echo slow; sleep 10\" timed out"
    );
}
