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
//!
//! Each concern below follows the control-loop shape of
//! `../shared/STYLE.md` (watch, cache, queue, reconcile): the agent
//! compares the pods the API wants on this node with what containerd
//! reports, and requeues on a timer because containerd can change
//! underneath it.

use std::net::IpAddr;
use std::path::PathBuf;

pub mod cri;
pub mod logs;
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
        }
    }
}

/// The pod sandbox image's name: Cairn's pause program, built by the image
/// builder and imported at boot, so no pod needs a registry to start.
pub const SANDBOX_IMAGE: &str = cairn_image::layout::PAUSE_IMAGE;
