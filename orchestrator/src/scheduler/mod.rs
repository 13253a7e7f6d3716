//! The scheduler: binds each pod without `spec.nodeName` whose
//! `schedulerName` is `default-scheduler` to a node, through the pod's
//! `binding` subresource, as kube-scheduler does.
//!
//! It runs under the controller manager's leadership (see
//! [`crate::controllers`]) on the same reflectors of pods and nodes. For
//! each pending pod, every node goes through the [`filters`]; the feasible
//! node with the best LeastAllocated score wins (ties: fewer pods, then the
//! name). The chosen node's usage is *assumed* at once, before the binding
//! is written, so that concurrent scheduling of the next pods (several
//! workers) counts it; the watch then confirms it (or a failed binding
//! forgets it).
//!
//! A pod that fits no node gets `PodScheduled=False`, reason
//! `Unschedulable`, message `0/N nodes are available: <count> <reason>, ...`
//! (reasons sorted, as upstream) and a `FailedScheduling` Warning event; it
//! is tried again when a node is added or changes, when a bound pod goes
//! away, and every 30 s.
//!
//! # Current limitations
//! - Filters: node readiness, cordon, NoSchedule/NoExecute taints,
//!   `nodeSelector`, required node affinity, host ports, cpu/memory/pods.
//!   No pod (anti-)affinity, topology spread, preferred affinity or
//!   PreferNoSchedule scoring, volumes, or preemption (the message carries
//!   no `preemption:` part).

pub mod filters;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::controllers::client::Client;
use crate::controllers::objects::{name, namespace, now, pod_active, uid};
use crate::controllers::queue::Queue;
use crate::controllers::reflector::{PODS, Reflector, key_of};
use filters::{Demand, Usage};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// How often unschedulable pods are tried again regardless.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// Pod key → (node, demand, assumed but not yet seen bound).
    bound: HashMap<String, (String, Demand, bool)>,
    usage: HashMap<String, Usage>,
    unschedulable: HashSet<String>,
}

impl State {
    fn unbind(&mut self, key: &str) {
        if let Some((node, demand, _)) = self.bound.remove(key)
            && let Some(usage) = self.usage.get_mut(&node)
        {
            usage.apply(&demand, -1);
        }
    }

    fn bind(&mut self, key: &str, node: &str, demand: Demand, assumed: bool) {
        self.unbind(key);
        self.usage
            .entry(node.to_owned())
            .or_default()
            .apply(&demand, 1);
        self.bound
            .insert(key.to_owned(), (node.to_owned(), demand, assumed));
    }
}

/// The scheduler's state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    client: Client,
    pods: Arc<Reflector>,
    nodes: Arc<Reflector>,
    state: Arc<Mutex<State>>,
    /// Keys of pods to schedule.
    pub queue: Queue,
}

fn wants_scheduling(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod_active(pod)
        && pod["spec"]["schedulerName"]
            .as_str()
            .is_none_or(|s| s == DEFAULT_SCHEDULER)
}

/// A pod whose containers all ended: it no longer uses its node.
fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// The parts of a node that scheduling depends on.
fn schedulable_view(node: &Value) -> Value {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"].clone());
    json!([
        node["metadata"]["labels"],
        node["spec"],
        node["status"]["allocatable"],
        ready
    ])
}

impl Scheduler {
    /// Registers the scheduler's handlers on the reflectors.
    pub fn new(client: Client, pods: Arc<Reflector>, nodes: Arc<Reflector>) -> Scheduler {
        let queue = Queue::new();
        let state: Arc<Mutex<State>> = Arc::default();
        let (q, st) = (queue.clone(), state.clone());
        pods.on_change(Box::new(move |old, new| {
            let mut state = st.lock().unwrap_or_else(|e| e.into_inner());
            match new {
                Some(pod) => {
                    let key = key_of(pod);
                    let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
                    match node {
                        // A terminating pod still runs on its node (its
                        // grace period) and counts there until it is gone.
                        Some(node) if !finished(pod) => {
                            state.bind(&key, node, filters::demand(pod), false);
                            state.unschedulable.remove(&key);
                        }
                        Some(_) => state.unbind(&key),
                        None if !pod_active(pod) => state.unbind(&key),
                        None => {}
                    }
                    if wants_scheduling(pod) && !state.unschedulable.contains(&key) {
                        q.add(key);
                    }
                }
                None => {
                    let Some(pod) = old else { return };
                    let key = key_of(pod);
                    let freed = state.bound.contains_key(&key);
                    state.unbind(&key);
                    state.unschedulable.remove(&key);
                    if freed {
                        for key in state.unschedulable.drain() {
                            q.add(key);
                        }
                    }
                }
            }
        }));
        let (q, st) = (queue.clone(), state.clone());
        nodes.on_change(Box::new(move |old, new| {
            let changed = match (old, new) {
                (Some(old), Some(new)) => schedulable_view(old) != schedulable_view(new),
                _ => true,
            };
            if changed {
                let mut state = st.lock().unwrap_or_else(|e| e.into_inner());
                for key in state.unschedulable.drain() {
                    q.add(key);
                }
            }
        }));
        Scheduler {
            client,
            pods,
            nodes,
            state,
            queue,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Schedules until aborted.
    pub async fn run(self, workers: usize) {
        self.pods.synced().await;
        self.nodes.synced().await;
        let retry = self.clone();
        let retrier = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_UNSCHEDULABLE).await;
                let keys: Vec<String> = retry.lock().unschedulable.drain().collect();
                for key in keys {
                    retry.queue.add(key);
                }
            }
        });
        let this = self.clone();
        self.queue
            .run(workers, move |key| {
                let this = this.clone();
                async move { this.schedule(&key).await }
            })
            .await;
        retrier.abort();
    }

    async fn schedule(&self, key: &str) -> Result<(), String> {
        let Some(pod) = self.pods.get(key) else {
            return Ok(());
        };
        if !wants_scheduling(&pod) {
            return Ok(());
        }
        let demand = filters::demand(&pod);
        let nodes = self.nodes.list(|_| true);
        let choice = {
            let mut state = self.lock();
            if state.bound.contains_key(key) {
                // Assumed by another worker, or bound meanwhile.
                return Ok(());
            }
            let mut best: Option<(i64, i64, &str)> = None;
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            for node in &nodes {
                let node_name = name(node);
                let usage = state.usage.get(node_name).cloned().unwrap_or_default();
                match filters::evaluate(&pod, &demand, node, &usage) {
                    Ok(score) => {
                        let rank = (score, -usage.pods, node_name);
                        let better = best.is_none_or(|(s, p, n)| {
                            (rank.0, rank.1) > (s, p) || ((rank.0, rank.1) == (s, p) && rank.2 < n)
                        });
                        if better {
                            best = Some(rank);
                        }
                    }
                    Err(why) => {
                        for reason in why {
                            *reasons.entry(reason).or_default() += 1;
                        }
                    }
                }
            }
            match best {
                Some((_, _, node)) => {
                    state.bind(key, node, demand.clone(), true);
                    Ok(node.to_owned())
                }
                None => {
                    state.unschedulable.insert(key.to_owned());
                    Err(unschedulable_message(nodes.len(), &reasons))
                }
            }
        };
        match choice {
            Ok(node) => self.bind(&pod, key, &node).await,
            Err(message) => self.report_unschedulable(&pod, &message).await,
        }
    }

    async fn bind(&self, pod: &Value, key: &str, node: &str) -> Result<(), String> {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name(pod), "namespace": namespace(pod)},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let path = format!("{}/binding", PODS.path(key));
        match self.client.post(&path, &binding).await {
            Ok(_) => {
                tracing::debug!(pod = %key, %node, "bound");
                Ok(())
            }
            Err(err) => {
                self.forget(key, node);
                if err.is_not_found() || err.is_conflict() {
                    // Gone, or bound by someone else: nothing to retry.
                    Ok(())
                } else {
                    Err(format!("binding {key} to {node}: {err}"))
                }
            }
        }
    }

    /// Drops an assumption that the binding did not confirm.
    fn forget(&self, key: &str, node: &str) {
        let mut state = self.lock();
        if matches!(state.bound.get(key), Some((n, _, true)) if n == node) {
            state.unbind(key);
        }
    }

    async fn report_unschedulable(&self, pod: &Value, message: &str) -> Result<(), String> {
        let current = crate::controllers::objects::pod_condition(pod, "PodScheduled");
        if current.is_some_and(|c| c["status"] == "False" && c["message"] == message) {
            return Ok(());
        }
        tracing::debug!(pod = %key_of(pod), %message, "unschedulable");
        let mut conditions: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"] != "PodScheduled")
            .cloned()
            .collect();
        conditions.push(json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": now(),
        }));
        let path = format!("{}/status", PODS.path(&key_of(pod)));
        // The conditions come from the cache: a pod changed meanwhile (its
        // agent marked it Ready) is a conflict, retried on the newer pod,
        // rather than a lost update.
        let patch = json!({
            "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
            "status": {"conditions": conditions},
        });
        match self.client.merge_patch(&path, &patch).await {
            Ok(_) => {}
            Err(err) if err.is_not_found() => return Ok(()),
            Err(err) => return Err(format!("condition of {}: {err}", key_of(pod))),
        }
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}.", name(pod)), "namespace": namespace(pod)},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod",
                "name": name(pod), "namespace": namespace(pod), "uid": uid(pod),
                "resourceVersion": pod["metadata"]["resourceVersion"],
            },
            "reason": "FailedScheduling",
            "message": message,
            "type": "Warning",
            "source": {"component": DEFAULT_SCHEDULER},
            "reportingComponent": DEFAULT_SCHEDULER,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        });
        let events = format!("/api/v1/namespaces/{}/events", namespace(pod));
        if let Err(err) = self.client.post(&events, &event).await {
            tracing::debug!(%err, "FailedScheduling event not written");
        }
        Ok(())
    }
}

/// `0/N nodes are available: <count> <reason>, ...`, reasons sorted.
pub fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sorted_with_counts() {
        let mut reasons = BTreeMap::new();
        reasons.insert(
            "node(s) didn't match Pod's node affinity/selector".to_owned(),
            2,
        );
        reasons.insert("Insufficient cpu".to_owned(), 1);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            unschedulable_message(0, &reasons),
            "no nodes available to schedule pods"
        );
    }
}
