//! Taint-based eviction, as upstream's `pkg/controller/tainteviction`:
//! pods on a node with `NoExecute` taints they do not tolerate are
//! deleted.
//!
//! For each taint the first toleration that matches it counts (upstream's
//! `GetMatchingTolerations`). A taint no toleration matches: the pod is
//! deleted at once. Tolerated with `tolerationSeconds`: deleted that many
//! seconds after the taint's `timeAdded` (the earliest such deadline of
//! its taints wins; a taint without `timeAdded` counts from when this
//! controller first saw it). Tolerated without seconds: never. Upstream
//! counts from when its own timer started, which a new leader resets;
//! `timeAdded` survives a failover.
//!
//! An eviction records `TaintManagerEviction` ("Marking for deletion Pod
//! ns/name") on the pod, adds the `DisruptionTarget` condition (reason
//! `DeletionByTaintManager`) and deletes the pod through the API, so the
//! usual graceful deletion applies. A scheduled eviction whose taint went
//! away first is cancelled with `TaintManagerEviction` ("Cancelling
//! deletion of Pod ns/name"). Pods already being deleted are left alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tracing::info;

use super::client::Client;
use super::events::{self, Type};
use super::objects::{is_deleting, name, namespace, now, pod_condition};
use super::queue::Queue;
use super::reflector::{Reflector, key_of};
use crate::scheduler::filters::tolerates;

/// The events' source component.
const COMPONENT: &str = "taint-eviction-controller";

/// What to do with a pod on a tainted node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Every NoExecute taint is tolerated for ever (or there is none).
    Never,
    /// A taint is not tolerated.
    Now,
    /// Tolerated until then.
    At(Timestamp),
}

/// The node's `NoExecute` taints.
pub fn no_execute_taints(node: &Value) -> Vec<&Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
        .collect()
}

/// The eviction of a pod with `tolerations` from a node with `taints`,
/// each with the time it counts from.
pub fn decide(tolerations: &[Value], taints: &[(&Value, Timestamp)]) -> Eviction {
    let mut deadline: Option<Timestamp> = None;
    for (taint, since) in taints {
        let key = taint["key"].as_str().unwrap_or("");
        let value = taint["value"].as_str().unwrap_or("");
        let Some(toleration) = tolerations
            .iter()
            .find(|t| tolerates(std::slice::from_ref(*t), key, value, "NoExecute"))
        else {
            return Eviction::Now;
        };
        let Some(seconds) = toleration["tolerationSeconds"].as_i64() else {
            continue;
        };
        let at = since.saturating_add(SignedDuration::from_secs(seconds.max(0)));
        let at = at.unwrap_or(*since);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline.map_or(Eviction::Never, Eviction::At)
}

/// A taint of a node: (node, key, value).
type TaintId = (String, String, String);

/// The controller's state.
#[derive(Debug, Clone)]
pub struct TaintEviction {
    client: Client,
    pods: Arc<Reflector>,
    nodes: Arc<Reflector>,
    queue: Queue,
    /// When a taint without `timeAdded` was first seen.
    seen: Arc<Mutex<HashMap<TaintId, Timestamp>>>,
    /// Pods whose eviction is scheduled.
    scheduled: Arc<Mutex<HashSet<String>>>,
}

impl TaintEviction {
    /// Registers the handlers: a pod's changes queue it; a node's changed
    /// NoExecute taints queue every pod on it.
    pub fn new(client: Client, pods: Arc<Reflector>, nodes: Arc<Reflector>) -> TaintEviction {
        let queue = Queue::new();
        let q = queue.clone();
        pods.on_change(Box::new(move |old, new| {
            if let Some(pod) = new.or(old)
                && pod["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            {
                q.add(key_of(pod));
            }
        }));
        let (q, by_node) = (queue.clone(), pods.clone());
        nodes.on_change(Box::new(move |old, new| {
            let (before, after) = (
                old.map(no_execute_taints).unwrap_or_default(),
                new.map(no_execute_taints).unwrap_or_default(),
            );
            if before == after {
                return;
            }
            let Some(node) = new.or(old).map(name) else {
                return;
            };
            for pod in by_node.list(|p| p["spec"]["nodeName"].as_str() == Some(node)) {
                q.add(key_of(&pod));
            }
        }));
        TaintEviction {
            client,
            pods,
            nodes,
            queue,
            seen: Arc::default(),
            scheduled: Arc::default(),
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.pods, &self.nodes];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    /// When each of the node's NoExecute taints counts from.
    fn since(&self, node: &Value, now: Timestamp) -> Vec<(Value, Timestamp)> {
        let node_name = name(node);
        let taints = no_execute_taints(node);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|(n, key, value), _| {
            n != node_name
                || taints
                    .iter()
                    .any(|t| t["key"] == key.as_str() && t["value"].as_str().unwrap_or("") == value)
        });
        taints
            .into_iter()
            .map(|t| {
                let added = t["timeAdded"].as_str().and_then(|s| s.parse().ok());
                let since = added.unwrap_or_else(|| {
                    let id = (
                        node_name.to_owned(),
                        t["key"].as_str().unwrap_or("").to_owned(),
                        t["value"].as_str().unwrap_or("").to_owned(),
                    );
                    *seen.entry(id).or_insert(now)
                });
                (t.clone(), since)
            })
            .collect()
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(pod) = self.pods.get(key) else {
            self.unschedule(key);
            return Ok(());
        };
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node_name.is_empty() || is_deleting(&pod) {
            self.unschedule(key);
            return Ok(());
        }
        let Some(node) = self.nodes.get(node_name) else {
            return Ok(());
        };
        let now = Timestamp::now();
        let taints = self.since(&node, now);
        let taints: Vec<(&Value, Timestamp)> = taints.iter().map(|(t, s)| (t, *s)).collect();
        let tolerations = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match decide(&tolerations, &taints) {
            Eviction::Never => {
                if self.unschedule(key) {
                    let message = format!("Cancelling deletion of Pod {key}");
                    self.event(&pod, &message).await;
                }
                Ok(())
            }
            Eviction::At(at) if at > now => {
                let wait = now.duration_until(at).unsigned_abs();
                self.scheduled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.to_owned());
                self.queue.add_after(key, wait + Duration::from_millis(10));
                Ok(())
            }
            _ => self.evict(key, &pod).await,
        }
    }

    /// Forgets a scheduled eviction; true if there was one.
    fn unschedule(&self, key: &str) -> bool {
        self.scheduled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    async fn event(&self, pod: &Value, message: &str) {
        events::record(
            &self.client,
            COMPONENT,
            ("v1", "Pod"),
            pod,
            Type::Normal,
            "TaintManagerEviction",
            message,
        )
        .await;
    }

    /// Upstream's `addConditionAndDeletePod`.
    async fn evict(&self, key: &str, pod: &Value) -> Result<(), String> {
        let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod));
        if pod_condition(pod, "DisruptionTarget").is_none() {
            // Once per eviction, not per retry of its delete.
            self.event(pod, &format!("Marking for deletion Pod {key}"))
                .await;
            let mut conditions = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.push(json!({
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": now(),
            }));
            let patch = json!({
                "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
                "status": {"conditions": conditions},
            });
            match self
                .client
                .merge_patch(&format!("{path}/status"), &patch)
                .await
            {
                Ok(_) => {}
                Err(err) if err.is_not_found() => return Ok(()),
                Err(err) => return Err(format!("marking pod {key} for eviction: {err}")),
            }
        }
        match self.client.delete(&path, &Value::Null).await {
            Ok(_) => {
                info!(pod = key, "evicted for an untolerated NoExecute taint");
                self.unschedule(key);
                Ok(())
            }
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("evicting pod {key}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn tolerations_decide_when() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let unreachable = json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"});
        let taints = [(&unreachable, t0)];
        assert_eq!(decide(&[], &taints), Eviction::Now);
        assert_eq!(decide(&[], &[]), Eviction::Never);
        let for_a_while = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 2});
        assert_eq!(
            decide(std::slice::from_ref(&for_a_while), &taints),
            Eviction::At(ts("2026-01-01T00:00:02Z"))
        );
        let for_ever = json!({"operator": "Exists"});
        assert_eq!(
            decide(std::slice::from_ref(&for_ever), &taints),
            Eviction::Never
        );
        // The first matching toleration counts.
        assert_eq!(
            decide(&[for_ever, for_a_while.clone()], &taints),
            Eviction::Never
        );
        // A NoSchedule toleration is no help; negative seconds mean now.
        let no_schedule = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"});
        assert_eq!(decide(&[no_schedule], &taints), Eviction::Now);
        let negative = json!({"operator": "Exists", "tolerationSeconds": -5});
        assert_eq!(decide(&[negative], &taints), Eviction::At(t0));
        // Every taint must be tolerated; the earliest deadline wins.
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoExecute"});
        let both = [(&unreachable, t0), (&other, ts("2026-01-01T00:00:01Z"))];
        assert_eq!(
            decide(std::slice::from_ref(&for_a_while), &both),
            Eviction::Now
        );
        let other_ok =
            json!({"key": "dedicated", "operator": "Equal", "value": "x", "tolerationSeconds": 1});
        assert_eq!(
            decide(&[for_a_while, other_ok], &both),
            Eviction::At(ts("2026-01-01T00:00:02Z"))
        );
    }
}
