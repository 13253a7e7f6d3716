//! The local-path provisioner: PersistentVolumeClaims of StorageClass
//! `local-path` get a PersistentVolume that is a directory on the node's
//! data partition (after rancher's local-path-provisioner, which K3s
//! ships), bound at once; the PV is deleted when its claim goes.
//!
//! - At start the StorageClass `local-path` is created if missing:
//!   provisioner `cairn.io/local-path`, the default class
//!   (`storageclass.kubernetes.io/is-default-class: "true"`),
//!   `reclaimPolicy: Delete`, `volumeBindingMode: Immediate`. Immediate
//!   because Cairn's scheduler does not bind volumes: it never sets the
//!   `volume.kubernetes.io/selected-node` annotation a
//!   WaitForFirstConsumer class waits for, so such claims would stay
//!   Pending; on one node the node is known anyway. A class of this
//!   provisioner with WaitForFirstConsumer is served once a claim carries
//!   that annotation (the PV then gets node affinity to it).
//! - A claim without `storageClassName` gets the default class's name
//!   (the API server has no DefaultStorageClass admission; upstream's PV
//!   controller does the same retroactively since 1.28). An empty string
//!   means "no class" and is left alone.
//! - The PV is `pvc-<claim uid>`: `hostPath` `<path>/pvc-<uid>`
//!   (`type: DirectoryOrCreate`), `<path>` the class's `parameters.path`
//!   or [`DEFAULT_PATH`]; capacity and access modes from the claim,
//!   `claimRef` to it, the class's reclaim policy. Both become `Bound`.
//!   The node agent creates the directory when a pod uses it and removes
//!   directories whose PV is gone (`crate::agent::volumes`).
//! - A PV of this provisioner whose claim is gone becomes `Released` and,
//!   with `reclaimPolicy: Delete`, is deleted.
//!
//! # Current limitations
//! No capacity accounting or quota on the directory (the request is
//! recorded, not enforced), no `kubernetes.io/pvc-protection` finalizer
//! (a claim deleted while a pod uses it releases its PV at once), no
//! volume expansion, no binding of claims to pre-existing PVs.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::client::Client;
use super::objects::{is_deleting, name, uid};
use super::queue::Queue;
use super::reflector::{Kind, Reflector, key_of};
use crate::agent::volumes::LOCAL_PATH_PROVISIONER;

/// PersistentVolumeClaims.
pub const CLAIMS: Kind = Kind {
    api: "/api/v1",
    plural: "persistentvolumeclaims",
    namespaced: true,
};
/// PersistentVolumes.
pub const VOLUMES: Kind = Kind {
    api: "/api/v1",
    plural: "persistentvolumes",
    namespaced: false,
};
/// StorageClasses.
pub const CLASSES: Kind = Kind {
    api: "/apis/storage.k8s.io/v1",
    plural: "storageclasses",
    namespaced: false,
};

/// The default class's name.
pub const CLASS: &str = "local-path";
/// Where PV directories go unless the class's `parameters.path` says.
pub const DEFAULT_PATH: &str = "/var/lib/cairn/storage";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Runs the provisioner (its reflectors, the default class, the loop)
/// until aborted.
pub async fn run(client: Client, workers: usize) {
    let claims = Reflector::new(CLAIMS);
    let volumes = Reflector::new(VOLUMES);
    let classes = Reflector::new(CLASSES);
    let provisioner = LocalPath::new(
        client.clone(),
        claims.clone(),
        volumes.clone(),
        classes.clone(),
    );
    let mut tasks = JoinSet::new();
    for reflector in [claims, volumes, classes] {
        tasks.spawn(reflector.run(client.clone()));
    }
    tasks.spawn(provisioner.run(workers));
    // None of these ends on its own; if one does, the manager restarts.
    tasks.join_next().await;
}

/// The provisioner's state.
#[derive(Debug, Clone)]
pub struct LocalPath {
    client: Client,
    claims: Arc<Reflector>,
    volumes: Arc<Reflector>,
    classes: Arc<Reflector>,
    queue: Queue,
}

impl LocalPath {
    /// Registers the handlers: keys `pvc/<ns>/<name>` and `pv/<name>`.
    pub fn new(
        client: Client,
        claims: Arc<Reflector>,
        volumes: Arc<Reflector>,
        classes: Arc<Reflector>,
    ) -> LocalPath {
        let queue = Queue::new();
        let q = queue.clone();
        claims.on_change(Box::new(move |old, new| {
            if let Some(claim) = new.or(old) {
                q.add(format!("pvc/{}", key_of(claim)));
            }
            // A deleted claim releases its volume.
            if new.is_none()
                && let Some(volume) = old.and_then(|c| c["spec"]["volumeName"].as_str())
            {
                q.add(format!("pv/{volume}"));
            }
        }));
        let q = queue.clone();
        volumes.on_change(Box::new(move |old, new| {
            if let Some(pv) = new.or(old) {
                q.add(format!("pv/{}", name(pv)));
            }
        }));
        let (q, pending) = (queue.clone(), claims.clone());
        classes.on_change(Box::new(move |_, _| {
            for claim in
                pending.list(|c| c["spec"]["volumeName"].as_str().is_none_or(str::is_empty))
            {
                q.add(format!("pvc/{}", key_of(&claim)));
            }
        }));
        LocalPath {
            client,
            claims,
            volumes,
            classes,
            queue,
        }
    }

    /// Creates the default class if missing, then processes the queue.
    pub async fn run(self, workers: usize) {
        let mut delay = std::time::Duration::from_millis(200);
        while let Err(e) = self.ensure_class().await {
            warn!(%e, "creating the local-path StorageClass");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
        }
        let caches = [&self.claims, &self.volumes, &self.classes];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                match key.split_once('/') {
                    Some(("pvc", key)) => this.sync_claim(key).await,
                    Some(("pv", name)) => this.sync_volume(name).await,
                    _ => Ok(()),
                }
            })
            .await;
    }

    async fn ensure_class(&self) -> Result<(), String> {
        let path = format!("{}/{CLASS}", CLASSES.collection(None));
        match self.client.get(&path).await {
            Ok(_) => return Ok(()),
            Err(e) if !e.is_not_found() => return Err(e.to_string()),
            Err(_) => {}
        }
        let class = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
            "provisioner": LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        });
        match self.client.post(&CLASSES.collection(None), &class).await {
            Ok(_) => {
                info!("created the default StorageClass {CLASS}");
                Ok(())
            }
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The default class: annotated default, newest first, then by name.
    fn default_class(&self) -> Option<String> {
        let mut defaults = self.classes.list(|c| {
            let a = &c["metadata"]["annotations"];
            a[DEFAULT_CLASS] == "true" || a[BETA_DEFAULT_CLASS] == "true"
        });
        defaults.sort_by(|a, b| {
            let created = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            };
            created(b)
                .cmp(&created(a))
                .then_with(|| name(a).cmp(name(b)))
        });
        defaults.first().map(|c| name(c).to_owned())
    }

    async fn sync_claim(&self, key: &str) -> Result<(), String> {
        let Some(claim) = self.claims.get(key) else {
            return Ok(());
        };
        if is_deleting(&claim) {
            return Ok(());
        }
        let path = CLAIMS.path(key);
        let mut claim = (*claim).clone();
        let volume_name = claim["spec"]["volumeName"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !volume_name.is_empty() {
            return self.finish_binding(&claim, &volume_name).await;
        }
        let class_name = match claim["spec"]["storageClassName"].as_str() {
            Some(class) => class.to_owned(),
            None => {
                let Some(class) = self.default_class() else {
                    return Ok(());
                };
                let patch = json!({"spec": {"storageClassName": class}});
                claim = self
                    .client
                    .merge_patch(&path, &patch)
                    .await
                    .map_err(|e| format!("setting the default class of {key}: {e}"))?;
                class
            }
        };
        let Some(class) = self.classes.get(&class_name) else {
            return Ok(());
        };
        if class["provisioner"] != LOCAL_PATH_PROVISIONER {
            return Ok(());
        }
        let selected = claim["metadata"]["annotations"][SELECTED_NODE].as_str();
        if class["volumeBindingMode"] == "WaitForFirstConsumer" && selected.is_none() {
            return Ok(());
        }
        let pv_name = format!("pvc-{}", uid(&claim));
        if self.volumes.get(&pv_name).is_none() {
            let pv = volume_for(&claim, &class, &pv_name);
            match self.client.post(&VOLUMES.collection(None), &pv).await {
                Ok(_) => info!(claim = key, pv = pv_name, "provisioned a local-path volume"),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(format!("creating {pv_name} for {key}: {e}")),
            }
        }
        self.finish_binding(&claim, &pv_name).await
    }

    /// Points the claim at its volume and marks both Bound.
    async fn finish_binding(&self, claim: &Value, pv_name: &str) -> Result<(), String> {
        let key = key_of(claim);
        let pv_path = VOLUMES.path(pv_name);
        let pv = match self.volumes.get(pv_name) {
            Some(pv) => (*pv).clone(),
            None => match self.client.get(&pv_path).await {
                Ok(pv) => pv,
                // A claim bound by someone else to a volume not there yet.
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(format!("reading {pv_name}: {e}")),
            },
        };
        if pv["spec"]["claimRef"]["uid"] != claim["metadata"]["uid"] {
            return Ok(());
        }
        if pv["status"]["phase"] != "Bound" {
            let patch = json!({"status": {"phase": "Bound"}});
            self.client
                .merge_patch(&format!("{pv_path}/status"), &patch)
                .await
                .map_err(|e| format!("binding {pv_name}: {e}"))?;
        }
        let path = CLAIMS.path(&key);
        if claim["spec"]["volumeName"] != pv_name {
            let patch = json!({
                "metadata": {"annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                    "volume.kubernetes.io/storage-provisioner": LOCAL_PATH_PROVISIONER,
                    "volume.beta.kubernetes.io/storage-provisioner": LOCAL_PATH_PROVISIONER,
                }},
                "spec": {"volumeName": pv_name},
            });
            self.client
                .merge_patch(&path, &patch)
                .await
                .map_err(|e| format!("binding {key}: {e}"))?;
        }
        if claim["status"]["phase"] != "Bound" {
            let patch = json!({"status": {
                "phase": "Bound",
                "accessModes": pv["spec"]["accessModes"],
                "capacity": pv["spec"]["capacity"],
            }});
            self.client
                .merge_patch(&format!("{path}/status"), &patch)
                .await
                .map_err(|e| format!("binding {key}: {e}"))?;
            info!(claim = key, pv = pv_name, "claim bound");
        }
        Ok(())
    }

    /// Releases (and per policy deletes) a volume whose claim is gone.
    async fn sync_volume(&self, pv_name: &str) -> Result<(), String> {
        let Some(pv) = self.volumes.get(pv_name) else {
            return Ok(());
        };
        if pv["metadata"]["annotations"][PROVISIONED_BY] != LOCAL_PATH_PROVISIONER
            || is_deleting(&pv)
        {
            return Ok(());
        }
        let claim_ref = &pv["spec"]["claimRef"];
        let claim_key = format!(
            "{}/{}",
            claim_ref["namespace"].as_str().unwrap_or(""),
            claim_ref["name"].as_str().unwrap_or("")
        );
        let claim = self.claims.get(&claim_key);
        if claim.is_some_and(|c| c["metadata"]["uid"] == claim_ref["uid"]) {
            return Ok(());
        }
        // The cache may lag the API: ask it before releasing.
        match self.client.get(&CLAIMS.path(&claim_key)).await {
            Ok(c) if c["metadata"]["uid"] == claim_ref["uid"] => return Ok(()),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(format!("reading {claim_key}: {e}")),
        }
        let pv_path = VOLUMES.path(pv_name);
        if pv["status"]["phase"] != "Released" {
            let patch = json!({"status": {"phase": "Released"}});
            self.client
                .merge_patch(&format!("{pv_path}/status"), &patch)
                .await
                .map_err(|e| format!("releasing {pv_name}: {e}"))?;
            info!(pv = pv_name, claim = claim_key, "volume released");
        }
        if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
            match self.client.delete(&pv_path, &Value::Null).await {
                Ok(_) => info!(pv = pv_name, "released volume deleted"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(format!("deleting {pv_name}: {e}")),
            }
        }
        Ok(())
    }
}

/// The PV provisioned for `claim` from `class`.
pub fn volume_for(claim: &Value, class: &Value, pv_name: &str) -> Value {
    let base = class["parameters"]["path"]
        .as_str()
        .filter(|p| p.starts_with('/'))
        .unwrap_or(DEFAULT_PATH)
        .trim_end_matches('/');
    let meta = &claim["metadata"];
    let access_modes = match &claim["spec"]["accessModes"] {
        Value::Array(modes) if !modes.is_empty() => Value::Array(modes.clone()),
        _ => json!(["ReadWriteOnce"]),
    };
    let mut pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": name(class),
            "volumeMode": "Filesystem",
            "hostPath": {"path": format!("{base}/{pv_name}"), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            },
        },
    });
    if let Some(node) = meta["annotations"][SELECTED_NODE].as_str() {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
        ]}]}});
    }
    pv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_shape() {
        let claim = json!({"metadata": {"name": "data", "namespace": "t", "uid": "u1",
            "resourceVersion": "5", "annotations": {SELECTED_NODE: "n1"}},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
        let class = json!({"metadata": {"name": "local-path"}, "parameters": {"path": "/srv/st/"}});
        let pv = volume_for(&claim, &class, "pvc-u1");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/srv/st/pvc-u1");
        assert_eq!(pv["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "u1");
        let values = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
            [0]["values"];
        assert_eq!(values, &json!(["n1"]));
        let plain = volume_for(&claim, &json!({"metadata": {"name": "x"}}), "pvc-u1");
        assert_eq!(
            plain["spec"]["hostPath"]["path"],
            format!("{DEFAULT_PATH}/pvc-u1")
        );
    }
}
