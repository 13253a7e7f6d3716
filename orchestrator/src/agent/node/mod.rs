//! The Node: registers this machine, reports its status, renews its Lease,
//! and hands the pod CIDR the cluster gave it to [`crate::agent::network`].
//!
//! # Registration
//! The Node is created if missing, with the labels the agent owns
//! (`kubernetes.io/hostname`, `kubernetes.io/os`, `kubernetes.io/arch`, and
//! `node-role.kubernetes.io/control-plane` inside a server, plus the
//! `--node-label`s), the `--node-taint`s and its first status. An existing
//! Node only gets those labels merged in and the missing ones of those
//! taints added (K3s' behaviour on restart): labels, annotations and taints
//! others added stay, and a taint dropped from the flags is not removed. A
//! Node deleted while the agent runs is registered again.
//!
//! # Heartbeats
//! Two clocks, as the kubelet with node leases:
//! - the Lease (`kube-node-lease/<node>`, see [`lease`]) every
//!   [`Config::lease_interval`] (10 s): the liveness signal;
//! - the status, read every [`Config::status_interval`] (10 s; every
//!   second while the node is not Ready or has no pod CIDR, so it becomes
//!   Ready promptly), written through `nodes/status` only when it differs
//!   from what was last written, heartbeat times aside, or when 5 minutes
//!   passed since the last write. An idle node therefore writes its Node
//!   every 5 minutes and its Lease every 10 s, nothing else.
//!
//! Condition changes and the agent's start are recorded as Node events
//! (`NodeReady`, `NodeHasDiskPressure`, `Starting`...), as the kubelet's.
//!
//! Ready follows CRI `Status`: True when the runtime reports both
//! `RuntimeReady` and `NetworkReady` (containerd's CRI reports the
//! network ready once a CNI configuration exists, which the agent writes
//! as soon as the Node has a pod CIDR), False with the runtime's reason
//! otherwise.

pub mod eviction;
pub mod lease;
pub mod machine;
pub mod status;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use super::Config;
use super::cri::{Cri, api};
use crate::controllers::client::{Client, ClientResult};
use machine::Machine;
use status::{Facts, Runtime};

/// A status is written at least this often, changed or not (the
/// kubelet's `nodeStatusReportFrequency`).
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// The longest a Lease renewal or a status round may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Status reads while the node is not Ready yet.
const CONVERGING: Duration = Duration::from_secs(1);

/// The labels the agent owns on its Node.
pub fn labels(config: &Config) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(
        "kubernetes.io/hostname".into(),
        config.node_name.clone().into(),
    );
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), machine::architecture().into());
    if config.control_plane {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
    }
    for (key, value) in &config.node_labels {
        labels.insert(key.clone(), value.clone().into());
    }
    labels
}

/// The `--node-taint`s the Node lacks (by key and effect), as API taints.
pub fn missing_taints(config: &Config, node: &Value) -> Vec<Value> {
    let present = node["spec"]["taints"].as_array();
    config
        .node_taints
        .iter()
        .filter(|t| {
            !present.is_some_and(|p| {
                p.iter().any(|have| {
                    have["key"] == t.key.as_str() && have["effect"] == t.effect.as_str()
                })
            })
        })
        .map(|t| {
            let mut taint = json!({"key": t.key, "effect": t.effect});
            if !t.value.is_empty() {
                taint["value"] = t.value.clone().into();
            }
            taint
        })
        .collect()
}

/// The node loop's state.
pub struct NodeAgent {
    config: Config,
    client: Client,
    cri: Option<Cri>,
    hostname: String,
    ip: IpAddr,
    /// The status last written (or read at registration), and when it was written.
    reported: Value,
    written: Option<Instant>,
    /// The pod CIDR whose CNI configuration is written.
    network: Option<String>,
    /// cairn-init's config outcome, read once: it is settled at boot.
    config_status: Option<String>,
}

impl NodeAgent {
    /// The loop for `config`'s node, talking through `client`.
    pub fn new(config: Config, client: Client) -> NodeAgent {
        let ip = config.node_ip.unwrap_or_else(machine::first_ipv4);
        let config_status = config
            .config_status_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok());
        NodeAgent {
            config,
            client,
            cri: None,
            hostname: machine::hostname(),
            ip,
            reported: Value::Null,
            written: None,
            network: None,
            config_status,
        }
    }

    fn path(&self) -> String {
        format!("/api/v1/nodes/{}", self.config.node_name)
    }

    /// Registers the Node, then keeps its status and Lease up to date;
    /// returns only if the task is aborted.
    pub async fn run(mut self) {
        if let Err(err) = std::fs::create_dir_all(&self.config.root_dir) {
            warn!(dir = %self.config.root_dir.display(), %err, "cannot create the agent's root dir");
        }
        let mut node = self.register_until_done().await;
        self.event("Starting", "Starting cairn agent.").await;
        let mut lease = lease::Lease::new(self.client.clone(), &self.config.node_name, uid(&node));
        // A zero interval would spin (and `interval` refuses it).
        let floor = Duration::from_millis(100);
        let mut lease_tick = tokio::time::interval(self.config.lease_interval.max(floor));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_status = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = lease_tick.tick() => {
                    match tokio::time::timeout(CALL_TIMEOUT, lease.renew()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => warn!(%err, "renewing the node lease failed"),
                        Err(_) => warn!("renewing the node lease timed out"),
                    }
                }
                () = tokio::time::sleep_until(next_status) => {
                    // Every second while converging; at the normal pace
                    // after an API error, so an unreachable server is not
                    // hammered (the Lease keeps trying on its own clock).
                    let settled = match tokio::time::timeout(CALL_TIMEOUT, self.sync(&mut node)).await {
                        Ok(Ok(ready)) => ready,
                        Ok(Err(err)) => {
                            warn!(%err, "node status sync failed");
                            true
                        }
                        Err(_) => {
                            warn!("node status sync timed out");
                            true
                        }
                    };
                    if uid(&node) != lease_uid(&lease) {
                        lease = lease::Lease::new(self.client.clone(), &self.config.node_name, uid(&node));
                    }
                    let wait = if settled { self.config.status_interval.max(floor) } else { CONVERGING };
                    next_status = tokio::time::Instant::now() + wait;
                }
            }
        }
    }

    async fn register_until_done(&mut self) -> Value {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(node) => return node,
                Err(err) => {
                    warn!(%err, node = %self.config.node_name, "registering the node failed; trying again")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(7));
        }
    }

    /// Creates the Node, or merges the agent's labels into the existing one.
    async fn register(&mut self) -> ClientResult<Value> {
        let ours = labels(&self.config);
        match self.client.get(&self.path()).await {
            Ok(node) => {
                let current = &node["metadata"]["labels"];
                self.reported = node["status"].clone();
                let taints = missing_taints(&self.config, &node);
                if ours.iter().all(|(k, v)| current.get(k) == Some(v)) && taints.is_empty() {
                    return Ok(node);
                }
                let mut patch = json!({"metadata": {"labels": ours}});
                if !taints.is_empty() {
                    // A merge patch replaces the list: keep what is there,
                    // and fail (to retry) if someone changed it meanwhile.
                    let mut all = node["spec"]["taints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    all.extend(taints);
                    patch["spec"] = json!({"taints": all});
                    patch["metadata"]["resourceVersion"] =
                        node["metadata"]["resourceVersion"].clone();
                }
                let node = self.client.merge_patch(&self.path(), &patch).await?;
                info!(node = %self.config.node_name, "node labels and taints updated");
                Ok(node)
            }
            Err(err) if err.is_not_found() => {
                let status = self.status().await;
                let taints = missing_taints(&self.config, &Value::Null);
                let mut node = json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": self.config.node_name, "labels": ours},
                    "spec": {},
                    "status": status,
                });
                if !taints.is_empty() {
                    node["spec"]["taints"] = taints.into();
                }
                let node = self.client.post("/api/v1/nodes", &node).await?;
                info!(node = %self.config.node_name, "node registered");
                for reason in status::transitions(&Value::Null, &status) {
                    let message = format!("Node {} status is now: {reason}", self.config.node_name);
                    self.event(reason, &message).await;
                }
                self.reported = status;
                self.written = Some(Instant::now());
                Ok(node)
            }
            Err(err) => Err(err),
        }
    }

    /// Records a Node event (see [`event`]).
    async fn event(&self, reason: &str, message: &str) {
        event(&self.client, &self.config.node_name, false, reason, message).await;
    }

    /// The status now, times carried over from the last one reported.
    async fn status(&mut self) -> Value {
        let runtime = self.runtime().await;
        let root = self.config.root_dir.clone();
        let machine = tokio::task::spawn_blocking(move || Machine::read(&root))
            .await
            .unwrap_or_default();
        let facts = Facts {
            config: &self.config,
            machine: &machine,
            runtime: &runtime,
            ip: self.ip,
            hostname: &self.hostname,
            config_status: self.config_status.as_deref(),
        };
        let now = crate::controllers::objects::now();
        status::desired(&facts, &self.reported, &now)
    }

    /// One status round: reads the Node (registering it again if it was
    /// deleted), writes the CNI configuration once it has a pod CIDR,
    /// writes the status if it changed. True when the node is Ready with
    /// its network configured.
    async fn sync(&mut self, node: &mut Value) -> ClientResult<bool> {
        *node = match self.client.get(&self.path()).await {
            Ok(node) => node,
            Err(err) if err.is_not_found() => {
                warn!(node = %self.config.node_name, "the node was deleted; registering it again");
                self.reported = Value::Null;
                self.written = None;
                self.register().await?
            }
            Err(err) => return Err(err),
        };
        let cidr = node["spec"]["podCIDR"].as_str().map(str::to_owned);
        if let Some(cidr) = &cidr
            && self.network.as_ref() != Some(cidr)
        {
            let (config, pod_cidr) = (self.config.clone(), cidr.clone());
            let written = tokio::task::spawn_blocking(move || {
                super::network::write_conflist(&config, &pod_cidr)
            })
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)));
            match written {
                Ok(path) => {
                    info!(%cidr, path = %path.display(), "CNI configuration written");
                    self.network = Some(cidr.clone());
                }
                Err(err) => warn!(%cidr, %err, "writing the CNI configuration failed"),
            }
        }
        // Someone else changed Ready (the node lifecycle controller marks a
        // node Unknown when its heartbeats stopped reaching the server):
        // start from what the server has, so it is reported again at once.
        let ready = |status: &Value| {
            status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].clone())
        };
        if ready(&node["status"]) != ready(&self.reported) {
            self.reported = node["status"].clone();
        }
        let mut desired = self.status().await;
        let due = self.written.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if due || !status::unchanged(&desired, &self.reported) {
            status::beat(&mut desired, &crate::controllers::objects::now());
            let patch = json!({"status": desired});
            *node = self
                .client
                .merge_patch(&format!("{}/status", self.path()), &patch)
                .await?;
            let previous = std::mem::replace(&mut self.reported, desired);
            self.written = Some(Instant::now());
            for reason in status::transitions(&previous, &self.reported) {
                self.event(
                    reason,
                    &format!("Node {} status is now: {reason}", self.config.node_name),
                )
                .await;
            }
        }
        let ready = self.reported["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        Ok(ready && self.network.is_some())
    }

    /// The runtime's version and readiness, connecting to it if needed.
    async fn runtime(&mut self) -> Runtime {
        let cri = match &mut self.cri {
            Some(cri) => cri,
            None => match Cri::connect(&self.config.runtime_endpoint).await {
                Ok(cri) => self.cri.insert(cri),
                Err(err) => {
                    return Runtime {
                        version: String::new(),
                        not_ready: Some(format!("container runtime is down: {}", err.message())),
                    };
                }
            },
        };
        let version = match cri.version().await {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(err) => {
                self.cri = None;
                return Runtime {
                    version: String::new(),
                    not_ready: Some(format!("container runtime is down: {}", err.message())),
                };
            }
        };
        let status = cri
            .runtime
            .status(api::StatusRequest { verbose: false })
            .await
            .map(tonic::Response::into_inner);
        let not_ready = match status {
            Ok(status) => not_ready(status.status.as_ref()),
            Err(status) => {
                self.cri = None;
                Some(format!(
                    "container runtime status check failed: {}",
                    status.message()
                ))
            }
        };
        Runtime { version, not_ready }
    }
}

/// Why the runtime is not ready (the kubelet's wording), `None` if it is.
fn not_ready(status: Option<&api::RuntimeStatus>) -> Option<String> {
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let check = |kind: &str, what: &str| match conditions.iter().find(|c| c.r#type == kind) {
        Some(c) if c.status => None,
        Some(c) => Some(format!(
            "{what}: {kind}=false reason:{} message:{}",
            c.reason, c.message
        )),
        None => Some(format!("{what}: {kind} not reported")),
    };
    check("RuntimeReady", "container runtime not ready")
        .or_else(|| check("NetworkReady", "container runtime network not ready"))
}

fn uid(node: &Value) -> &str {
    node["metadata"]["uid"].as_str().unwrap_or("")
}

fn lease_uid(lease: &lease::Lease) -> &str {
    lease.node_uid()
}

/// Records a Node event as the kubelet does (a warning when `warning`):
/// in `default`, the involved object's uid being the node's name (what
/// `kubectl describe node` looks for). Best effort.
pub async fn event(client: &Client, node: &str, warning: bool, reason: &str, message: &str) {
    let now = crate::controllers::objects::now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{node}."), "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": node, "uid": node},
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    if let Err(err) = client
        .post("/api/v1/namespaces/default/events", &event)
        .await
    {
        debug!(%err, reason, "node event not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_conditions() {
        let cond = |t: &str, s: bool, reason: &str| api::RuntimeCondition {
            r#type: t.into(),
            status: s,
            reason: reason.into(),
            message: format!("{reason} message"),
        };
        let status = |c: Vec<api::RuntimeCondition>| api::RuntimeStatus { conditions: c };
        assert_eq!(
            not_ready(Some(&status(vec![
                cond("RuntimeReady", true, ""),
                cond("NetworkReady", true, "")
            ]))),
            None
        );
        let why = not_ready(Some(&status(vec![
            cond("RuntimeReady", true, ""),
            cond("NetworkReady", false, "NetworkPluginNotReady"),
        ])))
        .expect("not ready");
        assert_eq!(
            why,
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:NetworkPluginNotReady message"
        );
        assert!(not_ready(None).is_some());
    }

    #[test]
    fn owned_labels() {
        let mut config = Config::new("n1");
        assert_eq!(labels(&config).len(), 3);
        config.control_plane = true;
        assert_eq!(
            labels(&config)["node-role.kubernetes.io/control-plane"],
            "true"
        );
        config
            .node_labels
            .insert("example.com/site".into(), "north".into());
        assert_eq!(labels(&config)["example.com/site"], "north");
    }

    #[test]
    fn only_missing_taints_are_added() {
        let mut config = Config::new("n1");
        assert!(missing_taints(&config, &Value::Null).is_empty());
        config.node_taints = ["dedicated=edge:NoSchedule", "gpu:NoExecute"]
            .iter()
            .map(|t| t.parse().expect("taint"))
            .collect();
        assert_eq!(
            missing_taints(&config, &Value::Null),
            [
                json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"}),
                json!({"key": "gpu", "effect": "NoExecute"}),
            ]
        );
        // Present by key and effect (whatever its value): not added again.
        let node = json!({"spec": {"taints": [{"key": "dedicated", "value": "other", "effect": "NoSchedule"}]}});
        assert_eq!(
            missing_taints(&config, &node),
            [json!({"key": "gpu", "effect": "NoExecute"})]
        );
    }
}
