//! The node agent: Cairn's kubelet. It registers this machine as a Node,
//! renews its Lease, and runs the pods bound to it on containerd through
//! CRI, reporting their status back through the API.
//!
//! It runs inside `cairn server` (the single-node case) or alone as
//! `cairn agent` joining a server over HTTPS; either way it talks to the
//! API through a [`Client`](crate::controllers::client::Client), as any
//! kubelet does, never to the store.
//!
//! # Layout
//! - [`cri`]: the CRI runtime and image services on containerd's socket.
//! - [`pods`]: the pods bound to this node, run through CRI, their status
//!   and events.
//! - [`logs`]: CRI log files read as `kubectl logs` asks; [`server`]: the
//!   agent HTTPS API (the kubelet port); [`streams`]: logs, exec, attach and
//!   port-forward through CRI and containerd's stream server.
//! - [`probes`]: liveness, readiness and startup probe workers.
//! - [`volumes`]: pod volumes on the host (emptyDir, hostPath, configMap,
//!   secret, downwardAPI, projected, local-path PVCs).
//! - [`node`]: the Node object (registration, status, Lease) and what it
//!   reports about the machine.
//! - [`network`]: the CNI configuration for the node's pod CIDR.
//! - [`join`]: the cluster CA a joining agent trusts, pinned by its token.
//! - [`imagegc`]: unused images removed when the image filesystem passes
//!   the high threshold; [`logrotate`]: container logs rotated by size.
//!
//! [`run`] starts the loops; `cairn server` runs it with the in-process
//! client (as `system:node:<node>` in `system:nodes`), `cairn agent` with a
//! remote one (HTTPS, the server token: user `node`).
//!
//! Each concern below follows the control-loop shape of
//! `../shared/STYLE.md` (watch, cache, queue, reconcile): the agent
//! compares the pods the API wants on this node with what containerd
//! reports, and requeues on a timer because containerd can change
//! underneath it.
//!
//! # Current limitations
//! Nothing marks a Node whose Lease expired NotReady or taints it (that is
//! the node lifecycle controller's job, not written yet); no resources are
//! reserved for the system (allocatable is capacity less the eviction
//! thresholds); IPv4 pod networking only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::api::User;
use crate::controllers::client::Client;

pub mod cri;
pub mod imagegc;
pub mod join;
pub mod logrotate;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod probes;
pub mod server;
pub mod streams;
pub mod volumes;

/// What the agent needs to know about its node and its machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node's name (the host name unless given).
    pub node_name: String,
    /// containerd's socket (CRI and containerd services are both on it).
    pub runtime_endpoint: PathBuf,
    /// The agent's state: `pods/<uid>/volumes/...`, pod-local files.
    pub root_dir: PathBuf,
    /// Container logs, `<namespace>_<name>_<uid>/<container>/<n>.log`,
    /// as the kubelet lays them out.
    pub pod_log_dir: PathBuf,
    /// Where the agent writes the CNI configuration containerd's CRI
    /// plugin reads.
    pub cni_conf_dir: PathBuf,
    /// Local-path volumes (PVCs of StorageClass `local-path`).
    pub storage_dir: PathBuf,
    /// The node's address to report and to serve the agent API on; the
    /// first non-loopback address when not given.
    pub node_ip: Option<IpAddr>,
    /// Port of the agent's HTTPS API (logs, exec, attach, port-forward).
    pub agent_port: u16,
    /// The cluster's DNS server for pods (none until the DNS issue).
    pub cluster_dns: Option<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The cluster's pod network; each node gets a /24 of it.
    pub cluster_cidr: String,
    /// Image of the pod sandbox (Cairn's own pause, imported at boot).
    pub sandbox_image: String,
    /// The Linux bridge pods are attached to (`cni0`).
    pub cni_bridge: String,
    /// This node runs the control plane (the agent inside `cairn server`):
    /// labelled `node-role.kubernetes.io/control-plane`.
    pub control_plane: bool,
    /// How often the node's status is read (written only on change).
    pub status_interval: Duration,
    /// How often the node's Lease is renewed.
    pub lease_interval: Duration,
    /// The CA whose certificates may call the agent API (the API server's
    /// `kube-apiserver-kubelet-client`); without it the agent API is off.
    pub client_ca_file: Option<PathBuf>,
    /// Image archives imported at every start before any pod runs (the
    /// root filesystem's pause image).
    pub system_images_dir: PathBuf,
    /// Labels the user asked for (`--node-label`), merged at every start.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Hard eviction thresholds (`--eviction-hard`): pressure conditions
    /// and allocatable.
    pub eviction_hard: node::eviction::Thresholds,
    /// cairn-init's config outcome (`/run/cairn/config-status`), reported
    /// as the Node condition `InvalidConfig`.
    pub config_status_file: Option<PathBuf>,
    /// Taints the user asked for (`--node-taint`), added at every start
    /// where missing (never removed: taints are also the cluster's to set).
    pub node_taints: Vec<cairn_image::config::values::Taint>,
    /// Image garbage collection (`--image-gc-high-threshold`,
    /// `--image-gc-low-threshold`, `--image-minimum-gc-age`).
    pub image_gc: imagegc::Policy,
    /// Container log rotation (`--container-log-max-size`,
    /// `--container-log-max-files`).
    pub log_rotation: logrotate::Policy,
}

impl Config {
    /// Defaults of a device: state under `/var/lib/cairn`, logs under
    /// `/var/log/pods`, CNI configuration where cairn-init points containerd.
    pub fn new(node_name: impl Into<String>) -> Config {
        Config {
            node_name: node_name.into(),
            runtime_endpoint: PathBuf::from("/run/containerd/containerd.sock"),
            root_dir: PathBuf::from("/var/lib/cairn/agent"),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            cni_conf_dir: PathBuf::from("/run/cairn/cni/net.d"),
            storage_dir: PathBuf::from("/var/lib/cairn/storage"),
            node_ip: None,
            agent_port: 10250,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            sandbox_image: SANDBOX_IMAGE.into(),
            cni_bridge: "cni0".into(),
            control_plane: false,
            status_interval: Duration::from_secs(10),
            lease_interval: Duration::from_secs(10),
            client_ca_file: None,
            system_images_dir: PathBuf::from("/").join(cairn_image::layout::ROOT_IMAGES_DIR),
            node_labels: Default::default(),
            node_taints: Vec::new(),
            config_status_file: None,
            eviction_hard: Default::default(),
            image_gc: Default::default(),
            log_rotation: Default::default(),
        }
    }
}

/// The pod sandbox image's name: Cairn's pause program, built by the image
/// builder and imported at boot, so no pod needs a registry to start.
pub const SANDBOX_IMAGE: &str = cairn_image::layout::PAUSE_IMAGE;

/// The agent's field manager.
pub const MANAGER: &str = "cairn-agent";

/// The user a node's agent acts as (`system:node:<node>` in `system:nodes`),
/// for the in-process client.
pub fn node_user(node_name: &str) -> User {
    let mut user = User::internal(&format!("system:node:{node_name}"));
    user.groups
        .insert(0, crate::api::auth::NODES_GROUP.to_owned());
    user
}

/// What every part of the agent shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// The node's settings.
    pub config: Config,
    /// The API, as this node.
    pub client: Client,
}

/// Runs the agent until `shutdown` completes: waits for containerd,
/// imports the system images (the pause image), opens the agent API, then
/// runs the node loop (registration, status, Lease, pod network) and the
/// pods loop (sandboxes, containers, volumes, probes, status).
pub async fn run(
    mut config: Config,
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) {
    info!(node = %config.node_name, "starting the node agent");
    tokio::pin!(shutdown);
    let cri = tokio::select! {
        cri = connect(&config) => cri,
        () = &mut shutdown => return,
    };
    let options = crate::images::Options {
        socket: config.runtime_endpoint.clone(),
        ..Default::default()
    };
    if let Err(error) = crate::images::import_dir(&config.system_images_dir, &options).await {
        warn!(%error, dir = %config.system_images_dir.display(), "system images not imported");
    }
    let mut loops = tokio::task::JoinSet::new();
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(api) = agent_api(&mut config, cri.clone()).await {
        loops.spawn(api.serve(async move {
            let _ = api_stopped.await;
        }));
    }
    let context = Context { config, client };
    loops.spawn(node::NodeAgent::new(context.config.clone(), context.client.clone()).run());
    loops.spawn(imagegc::ImageGc::new(cri.clone(), context.client.clone(), &context.config).run());
    loops.spawn(logrotate::run(
        cri.clone(),
        context.config.log_rotation,
        logrotate::PERIOD,
    ));
    loops.spawn(pods::run_on(
        cri,
        context.config.clone(),
        context.client.clone(),
        std::future::pending(),
    ));
    tokio::select! {
        () = shutdown => {}
        _ = loops.join_next() => {}
    }
    info!(node = %context.config.node_name, "stopping the node agent");
    let _ = stop_api.send(());
    loops.abort_all();
    while loops.join_next().await.is_some() {}
}

/// containerd's CRI, once it answers (retried every second, logged once).
async fn connect(config: &Config) -> cri::Cri {
    let mut logged = false;
    loop {
        match cri::Cri::connect(&config.runtime_endpoint).await {
            Ok(cri) => return cri,
            Err(error) => {
                if !logged {
                    warn!(%error, "waiting for the container runtime");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Binds the agent API (logs, exec, attach, port-forward) and records the
/// port it got in `config.agent_port` (port 0 picks one), or `None` when it
/// cannot be served (logged).
async fn agent_api(config: &mut Config, cri: cri::Cri) -> Option<server::AgentServer> {
    let Some(ca_file) = config.client_ca_file.clone() else {
        warn!("no client CA: the agent API (logs, exec, port-forward) is off");
        return None;
    };
    let ca = match std::fs::read_to_string(&ca_file) {
        Ok(ca) => ca,
        Err(error) => {
            warn!(%error, path = %ca_file.display(), "the agent API is off: cannot read the client CA");
            return None;
        }
    };
    match server::AgentServer::bind(config, cri, &ca).await {
        Ok(api) => {
            if let Ok(addr) = api.local_addr() {
                config.agent_port = addr.port();
            }
            Some(api)
        }
        Err(error) => {
            warn!(%error, "the agent API is off");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_user() {
        let user = node_user("n1");
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(
            user.groups,
            [
                crate::api::auth::NODES_GROUP,
                crate::api::auth::AUTHENTICATED
            ]
        );
    }
}
