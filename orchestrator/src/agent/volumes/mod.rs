//! Pod volumes on the node: what each of a pod's `spec.volumes` is on the
//! host, made ready before its containers start and removed after the pod
//! is gone (the kubelet's volume manager and `pkg/volume` plugins).
//!
//! [`Volumes::prepare`] gives the pods part a map volume name → host
//! directory (or file, for a hostPath file), which it turns into CRI
//! mounts per container (`volumeMounts`: mountPath, subPath, readOnly).
//! Per kind:
//! - `emptyDir`: `<root>/pods/<uid>/volumes/empty-dir/<name>`, mode 0777;
//!   `medium: Memory` mounts a tmpfs there (`size=` from `sizeLimit`).
//! - `hostPath`: the path itself, after the `type` check ([`host`]).
//! - `configMap`, `secret`, `downwardAPI`, `projected`: files written by
//!   [`atomic`] under `volumes/<kind>/<name>`, from the objects read
//!   through the API ([`sources`]); [`Volumes::refresh`] rewrites them
//!   when the objects changed (the pods part calls it on every resync).
//! - `persistentVolumeClaim`: the bound PV's host directory; a PV of the
//!   local-path provisioner (`crate::controllers::localpath`) gets its
//!   directory created here, under the node's storage directory, and
//!   [`Volumes::sweep`] removes directories whose PV is gone.
//!
//! [`Volumes::cleanup`] unmounts everything under the pod's directory and
//! removes it; `remove_dir_all` never follows a symlink, so nothing
//! outside the pod directory is touched.
//!
//! # Current limitations
//! No `fsGroup`/`runAsUser` ownership of written files, no `sizeLimit`
//! enforcement on disk emptyDirs (upstream evicts), no service-account
//! token rotation before expiry (a token is rewritten only when the
//! payload is rebuilt by `refresh`, which requests a new one when less
//! than a fifth of its lifetime is left), no clusterTrustBundle, CSI,
//! ephemeral or network volume kinds (they fail with a clear error).

pub mod atomic;
pub mod host;
pub mod sources;

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use tracing::{debug, info};

use crate::controllers::client::Client;

/// The provisioner name of Cairn's local-path PVs (their
/// `pv.kubernetes.io/provisioned-by` annotation).
pub const LOCAL_PATH_PROVISIONER: &str = "cairn.io/local-path";

/// What kind of failure a [`VolumeError`] is, for the pod's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A configMap, secret or key the pod needs does not exist: the pods
    /// part reports `CreateContainerConfigError` and retries.
    Config,
    /// Not ready yet (a PVC not bound): retry later, `ContainerCreating`.
    Pending,
    /// The host refused (a hostPath type check, a mount, a write):
    /// `FailedMount`.
    Mount,
}

/// A volume of a pod that could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" of pod {pod}: {message}")]
pub struct VolumeError {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The volume's name in `spec.volumes`.
    pub volume: String,
    pub failure: Failure,
    /// What failed, naming the object (`configmap "x" not found`).
    pub message: String,
}

impl VolumeError {
    /// The container-waiting reason the pods part shows.
    pub fn reason(&self) -> &'static str {
        match self.failure {
            Failure::Config => "CreateContainerConfigError",
            Failure::Pending | Failure::Mount => "ContainerCreating",
        }
    }
}

/// The volume directories of one pod kind: `volumes/<dir>/<name>`.
const EMPTY_DIR: &str = "empty-dir";
const CONFIG_MAP: &str = "configmap";
const SECRET: &str = "secret";
const DOWNWARD_API: &str = "downward-api";
const PROJECTED: &str = "projected";

/// The node's volume context (cheap to clone).
#[derive(Debug, Clone)]
pub struct Volumes {
    client: Client,
    root_dir: PathBuf,
    storage_dir: PathBuf,
}

/// An error on one volume, before the pod's name is known.
pub(crate) type Fail = (Failure, String);

pub(crate) fn mount_err(message: impl std::fmt::Display) -> Fail {
    (Failure::Mount, message.to_string())
}

/// Pod UIDs and volume names become path components: refuse anything
/// that could leave the directory.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0')
        && s.len() <= 253
}

impl Volumes {
    /// Volumes under `root_dir/pods/` with local-path PVs under
    /// `storage_dir`, reading objects through `client` (the node's).
    pub fn new(
        client: Client,
        root_dir: impl Into<PathBuf>,
        storage_dir: impl Into<PathBuf>,
    ) -> Volumes {
        Volumes {
            client,
            root_dir: root_dir.into(),
            storage_dir: storage_dir.into(),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }

    /// Sets up every volume of `pod` (idempotent: a second call rewrites
    /// only contents that changed) and returns volume name → host path.
    pub async fn prepare(&self, pod: &Value) -> Result<HashMap<String, PathBuf>, VolumeError> {
        self.each(pod, true).await
    }

    /// Rewrites the configMap, secret, downwardAPI and projected volumes
    /// of `pod` whose sources changed; the others are left alone.
    pub async fn refresh(&self, pod: &Value) -> Result<(), VolumeError> {
        self.each(pod, false).await.map(drop)
    }

    async fn each(&self, pod: &Value, all: bool) -> Result<HashMap<String, PathBuf>, VolumeError> {
        let meta = &pod["metadata"];
        let pod_name = format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().unwrap_or("")
        );
        let uid = meta["uid"].as_str().unwrap_or("");
        let mut out = HashMap::new();
        // Volumes are independent: one failing does not hold the others
        // back (an update still reaches them); the first error is returned.
        let mut first_error = None;
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            match self.one(pod, &pod_name, uid, volume, all).await {
                Ok(Some((name, path))) => {
                    out.insert(name, path);
                }
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// One volume: `None` when `all` is false and its kind is not refreshed.
    async fn one(
        &self,
        pod: &Value,
        pod_name: &str,
        uid: &str,
        volume: &Value,
        all: bool,
    ) -> Result<Option<(String, PathBuf)>, VolumeError> {
        let name = volume["name"].as_str().unwrap_or("");
        let err = |(failure, message): Fail| VolumeError {
            pod: pod_name.to_owned(),
            volume: name.to_owned(),
            failure,
            message,
        };
        if !safe_component(uid) || !safe_component(name) {
            return Err(err(mount_err(format!(
                "invalid pod uid {uid:?} or volume name {name:?}"
            ))));
        }
        let dir = |kind: &str| self.pod_dir(uid).join("volumes").join(kind).join(name);
        let path = if let Some(empty) = volume.get("emptyDir") {
            if !all {
                return Ok(None);
            }
            let path = dir(EMPTY_DIR);
            host::empty_dir(&path, empty, host::pod_memory_limit(pod)).map_err(err)?;
            path
        } else if let Some(source) = volume.get("hostPath") {
            if !all {
                return Ok(None);
            }
            host::host_path(source).map_err(err)?
        } else if let Some(source) = volume.get("persistentVolumeClaim") {
            if !all {
                return Ok(None);
            }
            self.claim(pod, source).await.map_err(err)?
        } else {
            let (kind, payload) = if let Some(source) = volume.get("configMap") {
                (CONFIG_MAP, sources::config_map(self, pod, source).await)
            } else if let Some(source) = volume.get("secret") {
                (SECRET, sources::secret(self, pod, source).await)
            } else if let Some(source) = volume.get("downwardAPI") {
                (DOWNWARD_API, sources::downward_api(self, pod, source).await)
            } else if let Some(source) = volume.get("projected") {
                let path = dir(PROJECTED);
                (
                    PROJECTED,
                    sources::projected(self, pod, name, source, &path).await,
                )
            } else {
                let kind = volume
                    .as_object()
                    .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                    .unwrap_or_default();
                return Err(err(mount_err(format!(
                    "volume kind {kind:?} is not supported by this node"
                ))));
            };
            let path = dir(kind);
            let payload = payload.map_err(err)?;
            let changed = atomic::write(&path, &payload).map_err(|e| err(mount_err(e)))?;
            if changed {
                debug!(pod = %pod_name, volume = name, "volume contents written");
            }
            path
        };
        Ok(Some((name.to_owned(), path)))
    }

    /// The configMaps and secrets the pod's volumes read, as
    /// `("configmaps" | "secrets", name)` in the pod's namespace: the pods
    /// part may watch them to call [`Volumes::refresh`] on a change rather
    /// than wait for its resync.
    pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |kind: &'static str, name: &Value| {
            if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
                out.push((kind, name.to_owned()));
            }
        };
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            add("configmaps", &volume["configMap"]["name"]);
            add("secrets", &volume["secret"]["secretName"]);
            for source in volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                add("configmaps", &source["configMap"]["name"]);
                add("secrets", &source["secret"]["name"]);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The host directory of a `persistentVolumeClaim` volume.
    async fn claim(&self, pod: &Value, source: &Value) -> Result<PathBuf, Fail> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let claim = source["claimName"].as_str().unwrap_or("");
        let pvc = self
            .client
            .get(&format!(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"
            ))
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    (
                        Failure::Pending,
                        format!("persistentvolumeclaim \"{claim}\" not found"),
                    )
                } else {
                    mount_err(format!("persistentvolumeclaim \"{claim}\": {e}"))
                }
            })?;
        let pv_name = pvc["spec"]["volumeName"].as_str().unwrap_or("");
        if pvc["status"]["phase"] != "Bound" || pv_name.is_empty() {
            return Err((
                Failure::Pending,
                format!("persistentvolumeclaim \"{claim}\" is not bound"),
            ));
        }
        let pv = self
            .client
            .get(&format!("/api/v1/persistentvolumes/{pv_name}"))
            .await
            .map_err(|e| mount_err(format!("persistentvolume \"{pv_name}\": {e}")))?;
        let spec = &pv["spec"];
        let path = spec["hostPath"]["path"]
            .as_str()
            .or(spec["local"]["path"].as_str())
            .ok_or_else(|| {
                mount_err(format!(
                    "persistentvolume \"{pv_name}\" has no hostPath or local path this node can use"
                ))
            })?;
        let path = PathBuf::from(path);
        let ours = pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"]
            == LOCAL_PATH_PROVISIONER;
        if ours && !path.exists() {
            if path.parent() != Some(self.storage_dir.as_path()) {
                return Err(mount_err(format!(
                    "persistentvolume \"{pv_name}\": {} is not under this node's storage directory {}",
                    path.display(),
                    self.storage_dir.display()
                )));
            }
            host::make_dir(&path, 0o777).map_err(mount_err)?;
            info!(pv = pv_name, path = %path.display(), "local-path volume directory created");
        }
        if !path.is_dir() {
            return Err(mount_err(format!(
                "persistentvolume \"{pv_name}\": {} is not a directory",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Unmounts everything under the pod's directory and removes it.
    pub async fn cleanup(&self, pod_uid: &str) -> Result<(), VolumeError> {
        let err = |message: String| VolumeError {
            pod: pod_uid.to_owned(),
            volume: String::new(),
            failure: Failure::Mount,
            message,
        };
        if !safe_component(pod_uid) {
            return Err(err(format!("invalid pod uid {pod_uid:?}")));
        }
        let dir = self.pod_dir(pod_uid);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let task = tokio::task::spawn_blocking(move || -> Result<(), String> {
            host::unmount_under(&dir)?;
            std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))
        });
        task.await.map_err(|e| err(e.to_string()))?.map_err(err)
    }

    /// Removes local-path directories (`<storage>/pvc-*`) whose PV no
    /// longer exists; returns what it removed.
    pub async fn sweep(&self) -> Result<Vec<PathBuf>, VolumeError> {
        let err = |message: String| VolumeError {
            pod: String::new(),
            volume: String::new(),
            failure: Failure::Mount,
            message,
        };
        // Directories first: one made after this listing has a PV that the
        // list below already holds.
        let dirs: Vec<PathBuf> = match std::fs::read_dir(&self.storage_dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("pvc-"))
                })
                .map(|e| e.path())
                .collect(),
            Err(_) => return Ok(Vec::new()),
        };
        let pvs = self
            .client
            .get("/api/v1/persistentvolumes")
            .await
            .map_err(|e| err(format!("listing persistentvolumes: {e}")))?;
        let known: Vec<&str> = pvs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pv| pv["metadata"]["name"].as_str())
            .collect();
        let mut removed = Vec::new();
        for dir in dirs {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if known.contains(&name) {
                continue;
            }
            std::fs::remove_dir_all(&dir)
                .map_err(|e| err(format!("removing {}: {e}", dir.display())))?;
            info!(path = %dir.display(), "local-path volume directory of a deleted PV removed");
            removed.push(dir);
        }
        Ok(removed)
    }
}
