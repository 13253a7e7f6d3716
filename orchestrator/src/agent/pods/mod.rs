//! The pods loop: the heart of the kubelet. It watches the pods bound to
//! this node (`fieldSelector=spec.nodeName=<node>`), and for each one
//! compares the spec with what CRI reports and acts, then reports the
//! status back through `pods/status`.
//!
//! - [`sync`]: one pod's sync, after upstream's `computePodActions`: the
//!   sandbox (created or re-created), init containers one after another,
//!   then the containers per `restartPolicy` with the crash-loop back-off;
//!   graceful termination and the final delete of a pod being deleted.
//! - [`sandbox`]: the `PodSandboxConfig` of a pod (hostname, DNS, ports,
//!   namespaces, log directory).
//! - [`containers`]: the `ContainerConfig` of a container (command, env,
//!   mounts, resources, security context, log path) and its lifecycle
//!   calls (create/start, hooks, stop).
//! - [`env`]: environment variables (`env`, `envFrom`, `valueFrom`,
//!   `$(VAR)` expansion) and resource quantities.
//! - [`images`]: pulls per `imagePullPolicy` with `imagePullSecrets`.
//! - [`runtime`]: what CRI reports about a pod (sandboxes, containers).
//! - [`status`]: the pod status as Kubernetes reports it, written only
//!   when it changed; [`events`]: core/v1 Events for `kubectl describe`.
//! - [`start`]: starting one container (image, config, create, start,
//!   postStart), recording what stops it.
//! - [`gc`]: the sweep of removed pods and dead containers.
//! - [`backoff`]: the crash-loop and image-pull back-offs.
//!
//! Every pod is synced on every change of it, on a timer (every
//! [`RESYNC`], since containerd changes underneath), and when a back-off
//! ends. A sweep on the same timer removes the containers and sandboxes of
//! pods no longer in the API (deleted while the agent was down, or deleted
//! at once by the API) and the dead containers beyond the last two of each.
//!
//! # Hooks for the other parts
//! - Volumes: [`Volumes`] gives the host paths of a pod's volumes
//!   (`agent::volumes`; [`NoVolumes`]: none).
//! - Probes: [`Health`] answers readiness, startup and liveness
//!   (`agent::probes`; [`NoProbes`]: ready = running). The probes' pod
//!   keys come back on [`Pods::resync_channel`].
//! - [`parts`] implements both with the agent's own and wires them
//!   ([`Pods::with_parts`]).

pub mod backoff;
pub mod containers;
pub mod env;
pub mod events;
pub mod gc;
pub mod images;
pub mod parts;
pub mod runtime;
pub mod sandbox;
pub mod start;
pub mod status;
pub mod sync;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Config;
use super::cri::Cri;
use crate::controllers::client::Client;
use crate::controllers::queue::Queue;
use crate::controllers::reflector::{PODS, Reflector, key_of};

/// How often every pod is synced again and the sweep runs.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How often container states are listed to notice exits (upstream's
/// PLEG relist period).
pub const RELIST: Duration = Duration::from_secs(1);
/// Pods synced at once (a graceful stop holds its worker).
const WORKERS: usize = 8;

/// A boxed future (the [`Volumes`] calls are async).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Host paths of a pod's volumes (`agent::volumes`).
pub trait Volumes: Send + Sync {
    /// Volume name → host directory or file, made ready for the pod;
    /// what the containers wait on otherwise (`CreateContainerConfigError`
    /// for a missing source, `ContainerCreating` while mounting).
    fn prepare<'a>(
        &'a self,
        pod: &'a Value,
    ) -> BoxFuture<'a, Result<HashMap<String, PathBuf>, Waiting>>;
    /// Called on every sync of a running pod: rewrite the contents of
    /// configMap, secret, downwardAPI and projected volumes that changed.
    fn refresh<'a>(&'a self, pod: &'a Value) -> BoxFuture<'a, ()> {
        let _ = pod;
        Box::pin(async {})
    }
    /// The pod is gone (its containers removed): release what `prepare` made.
    fn cleanup<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, ()>;
}

/// No volume support yet: every pod gets an empty map (a container
/// mounting a volume waits with `CreateContainerConfigError`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVolumes;

impl Volumes for NoVolumes {
    fn prepare<'a>(
        &'a self,
        _pod: &'a Value,
    ) -> BoxFuture<'a, Result<HashMap<String, PathBuf>, Waiting>> {
        Box::pin(async { Ok(HashMap::new()) })
    }
    fn cleanup<'a>(&'a self, _pod_uid: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Probe results (`agent::probes`).
pub trait Health: Send + Sync {
    /// Starts the probes of a running container if not started.
    fn ensure(&self, pod_key: &str, pod_ip: &str, container: &str, id: &str, spec: &Value);
    /// The pod is gone: stop its probes.
    fn forget(&self, pod_key: &str);
    /// Readiness (true without a readiness probe).
    fn ready(&self, container_id: &str) -> bool;
    /// Startup (true without a startup probe).
    fn started(&self, container_id: &str) -> bool;
    /// A liveness failure to restart the container for.
    fn liveness_failure(&self, container_id: &str) -> Option<String>;
}

/// No probes yet: a running container is ready and started.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProbes;

impl Health for NoProbes {
    fn ensure(&self, _: &str, _: &str, _: &str, _: &str, _: &Value) {}
    fn forget(&self, _: &str) {}
    fn ready(&self, _: &str) -> bool {
        true
    }
    fn started(&self, _: &str) -> bool {
        true
    }
    fn liveness_failure(&self, _: &str) -> Option<String> {
        None
    }
}

/// What a container waits on, remembered between syncs for its status
/// (`ErrImagePull`, `CreateContainerConfigError`, `RunContainerError`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

/// The shared state of the pods part.
pub struct Pods {
    /// Node, directories, DNS.
    pub config: Config,
    /// The API, as `system:node:<node>`.
    pub client: Client,
    /// The runtime.
    pub cri: Cri,
    /// The pods bound to this node.
    pub pods: Arc<Reflector>,
    /// Pod keys (`namespace/name`) to sync.
    pub queue: Queue,
    /// Volume paths.
    pub volumes: Arc<dyn Volumes>,
    /// Probe results.
    pub health: Arc<dyn Health>,
    /// Back-offs of container restarts and image pulls.
    pub backoff: Mutex<backoff::BackOff>,
    /// Per pod uid, per container name: what it waits on.
    pub waiting: Mutex<HashMap<String, HashMap<String, Waiting>>>,
    /// Events.
    pub events: events::Recorder,
    /// The node's address (`status.hostIP`), once known.
    pub host_ip: Mutex<Option<String>>,
    resync_tx: mpsc::UnboundedSender<String>,
    resync_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("node", &self.config.node_name)
            .finish()
    }
}

impl Pods {
    /// The pods part of the agent of `config.node_name`.
    pub fn new(config: Config, client: Client, cri: Cri) -> Pods {
        let selector = format!("spec.nodeName={}", config.node_name);
        let (resync_tx, resync_rx) = mpsc::unbounded_channel();
        Pods {
            events: events::Recorder::new(client.clone(), &config.node_name),
            host_ip: Mutex::new(config.node_ip.map(|ip| ip.to_string())),
            pods: Reflector::with_field_selector(PODS, Some(selector)),
            config,
            client,
            cri,
            queue: Queue::new(),
            volumes: Arc::new(NoVolumes),
            health: Arc::new(NoProbes),
            backoff: Mutex::new(backoff::BackOff::default()),
            waiting: Mutex::new(HashMap::new()),
            resync_tx,
            resync_rx: Mutex::new(Some(resync_rx)),
        }
    }

    /// Uses `volumes` for pod volumes.
    pub fn with_volumes(mut self, volumes: Arc<dyn Volumes>) -> Pods {
        self.volumes = volumes;
        self
    }

    /// Uses `health` for readiness, startup and liveness.
    pub fn with_health(mut self, health: Arc<dyn Health>) -> Pods {
        self.health = health;
        self
    }

    /// A sender of pod keys to sync now (the probes' channel).
    pub fn resync_channel(&self) -> mpsc::UnboundedSender<String> {
        self.resync_tx.clone()
    }

    /// Remembers (or, with `None`, forgets) what a container waits on.
    pub fn set_waiting(&self, uid: &str, container: &str, waiting: Option<Waiting>) {
        let mut map = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting {
            Some(w) => {
                map.entry(uid.to_owned())
                    .or_default()
                    .insert(container.to_owned(), w);
            }
            None => {
                if let Some(m) = map.get_mut(uid) {
                    m.remove(container);
                }
            }
        }
    }

    /// What `container` of pod `uid` waits on.
    pub fn waiting_of(&self, uid: &str, container: &str) -> Option<Waiting> {
        let map = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        map.get(uid).and_then(|m| m.get(container)).cloned()
    }

    /// Forgets everything about pod `uid`.
    pub fn forget(&self, uid: &str, key: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_prefix(uid);
        self.health.forget(key);
        let dir = start::containers_dir(self, uid);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), %error, "termination logs not removed");
        }
        let (volumes, uid) = (self.volumes.clone(), uid.to_owned());
        tokio::spawn(async move { volumes.cleanup(&uid).await });
    }

    /// Runs the loop until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let queue = self.queue.clone();
        self.pods.on_change(Box::new(move |old, new| {
            // The agent's own status writes do not call for a sync (as the
            // kubelet's config source ignores status-only updates).
            if let (Some(old), Some(new)) = (old, new)
                && !changed_for_sync(old, new)
            {
                return;
            }
            if let Some(obj) = new.or(old) {
                queue.add(key_of(obj));
            }
        }));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.pods.clone().run(self.client.clone()));
        let me = self.clone();
        tasks.spawn(async move {
            // Not before the first list: an empty cache would read as every
            // pod deleted, and their containers would be removed.
            me.pods.synced().await;
            let workers = me.clone();
            me.queue
                .run(WORKERS, move |key| {
                    let me = workers.clone();
                    async move { me.sync(&key).await }
                })
                .await;
        });
        let me = self.clone();
        tasks.spawn(async move {
            me.pods.synced().await;
            loop {
                for pod in me.pods.list(|_| true) {
                    me.queue.add(key_of(&pod));
                }
                if let Err(error) = me.sweep().await {
                    warn!(%error, "sweep of removed pods failed");
                }
                tokio::time::sleep(RESYNC).await;
            }
        });
        let me = self.clone();
        tasks.spawn(async move { me.relist().await });
        let rx = self
            .resync_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut rx) = rx {
            let queue = self.queue.clone();
            tasks.spawn(async move {
                while let Some(key) = rx.recv().await {
                    queue.add(key);
                }
            });
        }
        info!(node = %self.config.node_name, "pods loop started");
        tokio::select! {
            () = shutdown => {}
            _ = tasks.join_next() => warn!("a pods task ended"),
        }
        tasks.abort_all();
    }

    /// Lists the containers every [`RELIST`] and queues the pods whose
    /// containers changed state (started, exited, removed), as upstream's
    /// PLEG does, so an exit is reported in about a second, not a resync.
    async fn relist(&self) {
        let mut known: HashMap<String, (i32, String)> = HashMap::new();
        loop {
            tokio::time::sleep(RELIST).await;
            let mut cri = self.cri.clone();
            let Ok(list) = cri
                .runtime
                .list_containers(super::cri::api::ListContainersRequest { filter: None })
                .await
            else {
                continue;
            };
            let mut seen = HashMap::new();
            for c in list.into_inner().containers {
                let key = format!(
                    "{}/{}",
                    c.labels
                        .get(runtime::POD_NAMESPACE)
                        .map_or("", String::as_str),
                    c.labels.get(runtime::POD_NAME).map_or("", String::as_str)
                );
                if key == "/" {
                    continue;
                }
                if known.get(&c.id).map(|(state, _)| *state) != Some(c.state) {
                    self.queue.add(key.clone());
                }
                seen.insert(c.id, (c.state, key));
            }
            for (id, (_, key)) in &known {
                if !seen.contains_key(id) {
                    self.queue.add(key.clone());
                }
            }
            known = seen;
        }
    }

    /// Removes what CRI has of pods gone from the API.
    async fn sweep(&self) -> Result<(), sync::SyncError> {
        gc::sweep(self).await
    }

    /// Syncs the pod at `key`; an error retries it with back-off.
    async fn sync(&self, key: &str) -> Result<(), String> {
        sync::sync_pod(self, key).await.map_err(|e| e.to_string())
    }
}

/// Whether an update of a pod changes what its sync does: its spec, its
/// labels or annotations, its deletion, its uid.
fn changed_for_sync(old: &Value, new: &Value) -> bool {
    let (o, n) = (&old["metadata"], &new["metadata"]);
    old["spec"] != new["spec"]
        || o["uid"] != n["uid"]
        || o["deletionTimestamp"] != n["deletionTimestamp"]
        || o["labels"] != n["labels"]
        || o["annotations"] != n["annotations"]
}

/// Runs the pods part for `config` on `client` until `shutdown`:
/// connects to CRI (retrying until it answers) and runs [`Pods::run`]
/// with the agent's volumes and probes ([`Pods::with_parts`]).
pub async fn run(config: Config, client: Client, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let cri = loop {
        match Cri::connect(&config.runtime_endpoint).await {
            Ok(cri) => break cri,
            Err(error) => {
                warn!(%error, "container runtime not reachable; trying again");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut shutdown => return,
                }
            }
        }
    };
    run_on(cri, config, client, shutdown).await;
}

/// [`run`] on a runtime already connected (the agent's `run` has one).
pub async fn run_on(
    cri: Cri,
    config: Config,
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) {
    Arc::new(Pods::new(config, client, cri).with_parts())
        .run(shutdown)
        .await;
}
