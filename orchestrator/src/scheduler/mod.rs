//! The scheduler: binds each pod without `spec.nodeName` whose
//! `schedulerName` is `default-scheduler` to a node, through the pod's
//! `binding` subresource, as kube-scheduler does.
//!
//! It runs under the controller manager's leadership (see
//! [`crate::controllers`]) on the same reflectors of pods, nodes and
//! namespaces. For each pending pod, every node goes through the
//! [`filters`], then the pod's DoNotSchedule topology spread constraints
//! ([`spread`]) and inter-pod (anti-)affinity ([`affinity`]), in upstream's
//! plugin order; the feasible nodes are ranked by the weighted, normalised
//! scores of [`score`] (ties: fewer pods, then the name). The chosen node
//! and the pod's labels and affinity are *assumed* at once, before the
//! binding is written, so that concurrent scheduling of the next pods
//! (several workers) counts it for resources, affinity and spreading alike;
//! the watch then confirms it (or a failed binding forgets it).
//!
//! A pod that fits no node gets `PodScheduled=False`, reason
//! `Unschedulable`, message `0/N nodes are available: <count> <reason>, ...`
//! (reasons sorted, as upstream) and a `FailedScheduling` Warning event; it
//! is tried again when a node is added or changes, when a bound pod goes
//! away, when a pod is placed (for pods with pod affinity or spread
//! constraints), and every 30 s.
//!
//! # Current limitations
//! - Filters: node readiness, cordon, NoSchedule/NoExecute taints,
//!   `nodeSelector`, required node affinity, host ports, cpu/memory/pods,
//!   topology spread (DoNotSchedule), pod affinity and anti-affinity. No
//!   volume filters, no preemption (the message carries no `preemption:`
//!   part), no default (system) topology spreading.
//! - Scores: LeastAllocated, preferred node affinity, PreferNoSchedule
//!   taints, topology spread (ScheduleAnyway), preferred pod (anti-)affinity;
//!   no BalancedAllocation or ImageLocality.

pub mod affinity;
pub mod filters;
pub mod score;
pub mod spread;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::controllers::client::Client;
use crate::controllers::objects::{name, namespace, now, pod_active, uid};
use crate::controllers::queue::Queue;
use crate::controllers::reflector::{PODS, Reflector, key_of};
use affinity::{Cluster, PodMeta};
use filters::{Demand, Usage};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// How often unschedulable pods are tried again regardless.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);

/// A pod placed on a node.
#[derive(Debug)]
struct Bound {
    node: String,
    demand: Demand,
    /// Assumed by this scheduler, not yet seen bound.
    assumed: bool,
    meta: Arc<PodMeta>,
}

#[derive(Debug, Default)]
struct State {
    bound: HashMap<String, Bound>,
    usage: HashMap<String, Usage>,
    /// Pods that fit no node → whether placing other pods may change that
    /// (they have pod affinity or spread constraints).
    unschedulable: HashMap<String, bool>,
    /// How many placed pods have pod (anti-)affinity terms.
    affine: usize,
}

impl State {
    fn unbind(&mut self, key: &str) {
        let Some(bound) = self.bound.remove(key) else {
            return;
        };
        if bound.meta.affinity.is_some() {
            self.affine -= 1;
        }
        if let Some(usage) = self.usage.get_mut(&bound.node) {
            usage.apply(&bound.demand, -1);
        }
    }

    fn bind(&mut self, key: &str, node: &str, demand: Demand, meta: Arc<PodMeta>, assumed: bool) {
        self.unbind(key);
        self.usage
            .entry(node.to_owned())
            .or_default()
            .apply(&demand, 1);
        if meta.affinity.is_some() {
            self.affine += 1;
        }
        let bound = Bound {
            node: node.to_owned(),
            demand,
            assumed,
            meta,
        };
        self.bound.insert(key.to_owned(), bound);
    }

    /// Queues the unschedulable pods again (only those depending on other
    /// pods' placement if `dependent`).
    fn retry(&mut self, queue: &Queue, dependent: bool) {
        let keys: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, depends)| !dependent || **depends)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.unschedulable.remove(&key);
            queue.add(key);
        }
    }
}

/// The scheduler's state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    client: Client,
    pods: Arc<Reflector>,
    nodes: Arc<Reflector>,
    namespaces: Arc<Reflector>,
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

fn has_spread_constraints(pod: &Value) -> bool {
    pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
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
    pub fn new(
        client: Client,
        pods: Arc<Reflector>,
        nodes: Arc<Reflector>,
        namespaces: Arc<Reflector>,
    ) -> Scheduler {
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
                            let meta = PodMeta::of(pod);
                            // A pod newly placed (or relabelled) may be what
                            // a pending pod's affinity or spreading awaits.
                            let news = state
                                .bound
                                .get(&key)
                                .is_none_or(|b| b.assumed || *b.meta != meta);
                            state.bind(&key, node, filters::demand(pod), Arc::new(meta), false);
                            state.unschedulable.remove(&key);
                            if news {
                                state.retry(&q, true);
                            }
                        }
                        Some(_) => state.unbind(&key),
                        None if !pod_active(pod) => state.unbind(&key),
                        None => {}
                    }
                    if wants_scheduling(pod) && !state.unschedulable.contains_key(&key) {
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
                        state.retry(&q, false);
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
                state.retry(&q, false);
            }
        }));
        Scheduler {
            client,
            pods,
            nodes,
            namespaces,
            state,
            queue,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Schedules until aborted.
    pub async fn run(self, workers: usize) {
        let retry = self.clone();
        let retrier = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_UNSCHEDULABLE).await;
                retry.lock().retry(&retry.queue, false);
            }
        });
        let caches = [&self.pods, &self.nodes, &self.namespaces];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.schedule(&key).await
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
        let nodes = self.nodes.list(|_| true);
        let choice = {
            let mut state = self.lock();
            if state.bound.contains_key(key) {
                // Assumed by another worker, or bound meanwhile.
                return Ok(());
            }
            let meta = Arc::new(PodMeta::of(&pod));
            let demand = filters::demand(&pod);
            match self.choose(&pod, &meta, &demand, &nodes, &state) {
                Ok(node) => {
                    state.bind(key, &node, demand, meta, true);
                    Ok(node)
                }
                Err(message) => {
                    let depends = meta.affinity.is_some() || has_spread_constraints(&pod);
                    state.unschedulable.insert(key.to_owned(), depends);
                    Err(message)
                }
            }
        };
        match choice {
            Ok(node) => self.bind(&pod, key, &node).await,
            Err(message) => self.report_unschedulable(&pod, &message).await,
        }
    }

    /// The best node for `pod`, or the `0/N nodes are available` message.
    fn choose(
        &self,
        pod: &Value,
        meta: &PodMeta,
        demand: &Demand,
        nodes: &[Arc<Value>],
        state: &State,
    ) -> Result<String, String> {
        let nodes: Vec<&Value> = nodes.iter().map(|n| n.as_ref()).collect();
        let ns_labels = |ns: &str| {
            self.namespaces
                .get(ns)
                .map(|n| n["metadata"]["labels"].clone())
                .unwrap_or(Value::Null)
        };
        let mut cluster = Cluster {
            nodes: HashMap::new(),
            pods: HashMap::new(),
            ns_labels: &ns_labels,
        };
        // Other pods matter only to pods with pod affinity or spreading,
        // or when a placed pod has (anti-)affinity terms of its own; the
        // node labels by name only to those.
        if meta.affinity.is_some() || has_spread_constraints(pod) || state.affine > 0 {
            cluster.nodes = nodes
                .iter()
                .map(|n| (name(n), &n["metadata"]["labels"]))
                .collect();
            for bound in state.bound.values() {
                cluster
                    .pods
                    .entry(bound.node.as_str())
                    .or_default()
                    .push(&bound.meta);
            }
        }
        let inter_pod = affinity::prefilter(meta, &cluster);
        let spreading = spread::prefilter(pod, meta, &nodes, &cluster);
        let idle = Usage::default();
        // (node, LeastAllocated score, pods on it)
        let mut feasible: Vec<(&Value, i64, i64)> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for node in &nodes {
            let usage = state.usage.get(name(node)).unwrap_or(&idle);
            let labels = &node["metadata"]["labels"];
            let verdict = filters::evaluate(pod, demand, node, usage).and_then(|score| {
                spreading
                    .check(meta, labels)
                    .and_then(|()| inter_pod.check(labels))
                    .map(|()| score)
                    .map_err(|reason| vec![reason.to_owned()])
            });
            match verdict {
                Ok(score) => feasible.push((node, score, usage.pods)),
                Err(why) => {
                    for reason in why {
                        *reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Err(unschedulable_message(nodes.len(), &reasons));
        }
        let candidates: Vec<&Value> = feasible.iter().map(|(n, _, _)| *n).collect();
        let least: Vec<i64> = feasible.iter().map(|(_, s, _)| *s).collect();
        let extra = score::Extra {
            inter_pod: if cluster.pods.is_empty() {
                Vec::new()
            } else {
                let labels: Vec<&Value> = candidates
                    .iter()
                    .map(|n| &n["metadata"]["labels"])
                    .collect();
                affinity::score(meta, &cluster, &labels)
            },
            spread: spread::score(pod, meta, &nodes, &cluster, &candidates).unwrap_or_default(),
        };
        let totals = score::totals(pod, &candidates, &least, &extra);
        let best = feasible
            .iter()
            .zip(&totals)
            .min_by(|((a, _, pods_a), sa), ((b, _, pods_b), sb)| {
                sb.cmp(sa)
                    .then(pods_a.cmp(pods_b))
                    .then_with(|| name(a).cmp(name(b)))
            })
            .map(|((n, _, _), _)| name(n).to_owned());
        best.ok_or_else(|| unschedulable_message(nodes.len(), &reasons))
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
        if state
            .bound
            .get(key)
            .is_some_and(|b| b.assumed && b.node == node)
        {
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
