//! The node agent's volumes and probes against the real API server and
//! controller manager, run in-process (the library, as the agent inside
//! `cairn server` uses them) on a temporary SQLite store, with volumes on
//! a temporary root: configMap and secret files with modes and items and
//! their atomic update, downwardAPI contents, projected volumes (the
//! token subresource answering 404), emptyDir on tmpfs, hostPath type
//! checks, PVCs bound by the local-path provisioner, cleanup that leaves
//! nothing mounted. (Probes: `agent_probes.rs`.)
//!
//! Runs as root (tmpfs mounts), as `.ci/run` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::agent::volumes::{Failure, Volumes};
use cairn::api::Api;
use cairn::controllers::client::Client;
use serde_json::{Value, json};

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
    let signer = cairn::api::tokens::Signer::load_or_create(&dir.path().join("sa.key"))
        .expect("service-account key");
    let auth = cairn::api::auth::Authenticator::default().with_signer(signer);
    let api = Arc::new(Api::new(store, auth));
    api.bootstrap(6443).await.expect("bootstrap");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(cairn::controllers::run(
        api.clone(),
        Default::default(),
        stopped,
    ));
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
    let projected = json!({"defaultMode": 0o440, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "cfg"}},
        {"downwardAPI": {"items": [{"path": "podname",
            "fieldRef": {"fieldPath": "metadata.name"}}]}},
    ]});
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
            {"name": "all-in-one", "projected": projected},
        ]),
    );
    // The token is bound to the pod: it must exist, as must the account
    // (the controller manager creates `default` in every namespace).
    let pod = c.create("/api/v1/namespaces/default/pods", pod).await;
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    eventually(20, "the default ServiceAccount", async || {
        let path = "/api/v1/namespaces/default/serviceaccounts/default";
        c.admin.get(path).await.ok()
    })
    .await;
    let paths = c.volumes.prepare(&pod).await.expect("prepare");
    let info = &paths["info"];
    assert_eq!(read(&info.join("name")), "p-u3");
    assert_eq!(read(&info.join("ns")), "default");
    assert_eq!(read(&info.join("uid")), uid);
    assert_eq!(
        read(&info.join("labels")),
        "app=\"web\"\ntier=\"a \\\"quoted\\\" one\""
    );
    assert_eq!(read(&info.join("note")), "hello");
    assert_eq!(read(&info.join("mem")), "64");
    assert_eq!(read(&info.join("cpu")), "250");
    assert_eq!(mode(&info.join("cpu")), 0o400);
    let dir = &paths["all-in-one"];
    assert_eq!(read(&dir.join("k")), "v");
    assert_eq!(read(&dir.join("podname")), "p-u3");
    assert_eq!(mode(&dir.join("k")), 0o440);
    let token = read(&dir.join("token"));
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(mode(&dir.join("token")), 0o440);
    // A fresh token is kept on refresh (no rewrite of the volume).
    let data = std::fs::read_link(dir.join("..data")).unwrap();
    c.volumes.refresh(&pod).await.expect("refresh");
    assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), data);
    assert_eq!(read(&dir.join("token")), token);

    // An account that does not exist: the API answers 404, no token file
    // is written (a warning names pod, volume and account), the rest is.
    let mut ghost = c.pod("u9", json!([{"name": "p", "projected": projected}]));
    ghost["spec"]["serviceAccountName"] = json!("ghost");
    let ghost = c.create("/api/v1/namespaces/default/pods", ghost).await;
    let paths = c.volumes.prepare(&ghost).await.expect("prepare");
    assert_eq!(read(&paths["p"].join("k")), "v");
    assert!(!paths["p"].join("token").exists());
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
