//! The node lifecycle controller, as upstream's
//! `pkg/controller/nodelifecycle`: notices nodes whose agent went quiet
//! and says so on the Node, in conditions and taints.
//!
//! - **Health.** A node's heartbeats are its Lease in `kube-node-lease`
//!   (`spec.renewTime`) and its Ready condition's `lastHeartbeatTime`.
//!   As upstream, the controller notes *when it saw them move* on its own
//!   clock (the probe time), so a skewed agent clock changes nothing; a
//!   node first seen gets a full grace period from then, and a Node that
//!   never posted a Ready condition (nor a Lease) counts from its
//!   `creationTimestamp` with the longer startup grace
//!   (`--node-startup-grace-period`, 60 s). Once the probe time is older
//!   than the grace (`--node-monitor-grace-period`, 40 s), Ready,
//!   MemoryPressure, DiskPressure and PIDPressure become `Unknown`
//!   (reason `NodeStatusUnknown`, "Kubelet stopped posting node status.";
//!   missing ones are added as `NodeStatusNeverUpdated`). The agent posts
//!   Ready again when it comes back.
//! - **NoSchedule taints from conditions** (TaintNodesByCondition):
//!   Ready False/Unknown → `not-ready`/`unreachable`, MemoryPressure,
//!   DiskPressure, PIDPressure, NetworkUnavailable True → their
//!   `*-pressure`/`network-unavailable` taint, `spec.unschedulable` →
//!   `unschedulable`, all under `node.kubernetes.io/`; removed when the
//!   condition clears.
//! - **NoExecute taints** (taint-based eviction): Ready False →
//!   `not-ready:NoExecute`, Unknown → `unreachable:NoExecute` (the two
//!   swap, never both), Ready True → neither. Every taint added carries
//!   `timeAdded`; [`super::tainteviction`] evicts the pods that do not
//!   tolerate them.
//! - **Disruption** (upstream's zone states, zones by the
//!   `topology.kubernetes.io/region`/`zone` labels; nodes labelled
//!   `node.kubernetes.io/exclude-disruption` do not count): when every
//!   zone has no Ready node, the problem is more likely the control
//!   plane's network than the nodes, so no NoExecute taint is set and the
//!   existing ones are removed; in a zone of at most 50 nodes where more
//!   than 2 and at least 55 % are not Ready, no new NoExecute taint is set.
//! - **Pods** on a node that became `Unknown` get `Ready=False` (upstream's
//!   `MarkPodsNotReady`) and a `NodeNotReady` event, so Services stop
//!   sending them traffic.
//!
//! One task runs a pass over every node each monitor period (an eighth
//! of the grace, at most upstream's 5 s) and when a Node changes. Writes
//! are merge patches guarded by the resourceVersion read: a Node changed
//! meanwhile is looked at again in the next pass.
//!
//! # Current limitations
//! NoExecute tainting is not rate limited (upstream taints 0.1 node/s per
//! zone, `--node-eviction-rate`); no `RegisteredNode`/`NodeNotReady` Node
//! events; no label reconciliation.

pub mod decide;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::Settings;
use super::client::Client;
use super::events::{self, Type};
use super::objects::{name, namespace};
use super::reflector::Reflector;
use decide::{
    Health, NoExecute, condition, desired_taints, observe, policies, ready_status,
    unknown_conditions,
};

/// The namespace of node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct NodeLifecycle {
    client: Client,
    nodes: Arc<Reflector>,
    leases: Arc<Reflector>,
    pods: Arc<Reflector>,
    settings: Settings,
    health: Arc<Mutex<HashMap<String, Health>>>,
    wake: Arc<Notify>,
}

impl NodeLifecycle {
    /// Registers the handlers; `leases` reflects `kube-node-lease`.
    pub fn new(
        client: Client,
        nodes: Arc<Reflector>,
        leases: Arc<Reflector>,
        pods: Arc<Reflector>,
        settings: Settings,
    ) -> NodeLifecycle {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        nodes.on_change(Box::new(move |_, _| w.notify_one()));
        NodeLifecycle {
            client,
            nodes,
            leases,
            pods,
            settings,
            health: Arc::default(),
            wake,
        }
    }

    /// How often every node is looked at: an eighth of the grace period,
    /// between 100 ms and upstream's 5 s.
    fn period(&self) -> Duration {
        (self.settings.node_monitor_grace_period / 8)
            .clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Runs passes until aborted.
    pub async fn run(self) {
        self.nodes.synced().await;
        self.leases.synced().await;
        self.pods.synced().await;
        loop {
            self.pass().await;
            tokio::select! {
                () = tokio::time::sleep(self.period()) => {}
                () = self.wake.notified() => {
                    // Let a burst of changes settle into one pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One look at every node.
    async fn pass(&self) {
        let now = Timestamp::now();
        let stamp = super::objects::now();
        let nodes = self.nodes.list(|_| true);
        {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            health.retain(|n, _| self.nodes.get(n).is_some());
        }
        let mut current = Vec::with_capacity(nodes.len());
        for node in nodes {
            let node_name = name(&node).to_owned();
            let lease = self.leases.get(&format!("{LEASE_NAMESPACE}/{node_name}"));
            let health = {
                let mut all = self.health.lock().unwrap_or_else(|e| e.into_inner());
                let health = observe(all.get(&node_name), &node, lease.as_deref(), now);
                all.insert(node_name.clone(), health.clone());
                health
            };
            let grace = if condition(&node, "Ready").is_some() {
                self.settings.node_monitor_grace_period
            } else {
                self.settings.node_startup_grace_period
            };
            let mut node = (*node).clone();
            if health.stale(grace, now)
                && let Some(conditions) = unknown_conditions(&node, &stamp)
            {
                let patch = json!({
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "status": {"conditions": conditions},
                });
                let path = format!("/api/v1/nodes/{node_name}/status");
                match self.client.merge_patch(&path, &patch).await {
                    Ok(updated) => {
                        info!(
                            node = node_name,
                            "node stopped posting status: conditions Unknown"
                        );
                        node = updated;
                    }
                    // Changed meanwhile: the next pass looks again.
                    Err(err) => warn!(node = node_name, %err, "marking the node Unknown failed"),
                }
            }
            current.push(node);
        }
        let policies = policies(&current);
        for node in &current {
            let policy = policies.get(name(node)).copied().unwrap_or(NoExecute::Hold);
            self.taint(node, policy, &stamp).await;
            if ready_status(node) == Some("Unknown") {
                self.mark_pods_not_ready(node, &stamp).await;
            }
        }
    }

    /// Writes the node's taints if they should change.
    async fn taint(&self, node: &Value, policy: NoExecute, stamp: &str) {
        let Some(taints) = desired_taints(node, policy, stamp) else {
            return;
        };
        let node_name = name(node);
        let patch = json!({
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"taints": taints},
        });
        match self
            .client
            .merge_patch(&format!("/api/v1/nodes/{node_name}"), &patch)
            .await
        {
            Ok(_) => info!(node = node_name, ?taints, "node taints updated"),
            // Changed meanwhile: the next pass looks again.
            Err(err) => warn!(node = node_name, %err, "updating the node's taints failed"),
        }
    }

    /// `MarkPodsNotReady`: the Ready condition of the node's pods False.
    async fn mark_pods_not_ready(&self, node: &Value, stamp: &str) {
        let node_name = name(node);
        let pods = self.pods.list(|p| {
            p["spec"]["nodeName"].as_str() == Some(node_name)
                && super::objects::pod_condition(p, "Ready").is_some_and(|c| c["status"] != "False")
        });
        for pod in pods {
            let mut conditions = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
                c["status"] = "False".into();
                c["lastTransitionTime"] = stamp.into();
            }
            let patch = json!({
                "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
                "status": {"conditions": conditions},
            });
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                namespace(&pod),
                name(&pod)
            );
            match self.client.merge_patch(&path, &patch).await {
                Ok(updated) => {
                    events::record(
                        &self.client,
                        "node-controller",
                        ("v1", "Pod"),
                        &updated,
                        Type::Warning,
                        "NodeNotReady",
                        "Node is not ready",
                    )
                    .await;
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    warn!(pod = name(&pod), %err, "marking the pod not ready failed");
                }
            }
        }
    }
}
