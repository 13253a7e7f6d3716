//! Pod garbage collection, as upstream's `pkg/controller/podgc`: force
//! deletes pods that no kubelet will ever finish, and old terminated pods.
//!
//! - **Orphaned**: a pod bound to a node that no longer exists. A node
//!   name missing from the cache is quarantined (upstream's 40 s, in case
//!   the cache lags), then asked of the API; if it is still not found,
//!   its pods get `DisruptionTarget` (reason `DeletionByPodGC`, "PodGC:
//!   node no longer exists") and phase `Failed`, and are deleted with
//!   `gracePeriodSeconds: 0`.
//! - **Terminating on an out-of-service node**: a pod being deleted on a
//!   node that is not Ready and carries the `node.kubernetes.io/out-of-service`
//!   taint (an operator's word that the node is gone for good) is marked
//!   `Failed` and deleted at once.
//! - **Terminated**: when more pods are `Succeeded` or `Failed` than
//!   `--terminated-pod-gc-threshold` (upstream's default 12,500; 0 turns
//!   this off), the surplus is deleted: evicted pods first, then the
//!   oldest, ties by name.
//! - **Unscheduled terminating**: a pod being deleted that was never bound
//!   has no kubelet to finish it; it is deleted at once.
//!
//! Upstream makes a pass over every pod each 20 s. Here a pass runs when
//! a pod or node changes in a way one of the rules looks at (a burst
//! settles into one pass), when a quarantine ends, and 5 s after a pass
//! whose writes failed: an idle cluster wakes nothing. A pod is force
//! deleted once per uid, so a pod held by a finalizer is not deleted
//! again at every pass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::client::Client;
use super::objects::{is_deleting, name, namespace, now, pod_condition, uid};
use super::reflector::{Reflector, key_of};

/// Upstream's `quarantineTime`.
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's `--terminated-pod-gc-threshold` default.
pub const TERMINATED_THRESHOLD: usize = 12_500;
/// The taint that lets terminating pods on a not-Ready node go.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// How long a burst of changes may settle before a pass.
const SETTLE: Duration = Duration::from_millis(100);
/// When a pass whose writes failed is tried again.
const RETRY: Duration = Duration::from_secs(5);

fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or("")
}

/// Upstream's `isPodTerminated`: any phase but Pending, Running, Unknown.
fn terminated(pod: &Value) -> bool {
    !matches!(
        pod["status"]["phase"].as_str(),
        None | Some("Pending" | "Running" | "Unknown")
    )
}

fn evicted(pod: &Value) -> bool {
    pod["status"]["phase"] == "Failed" && pod["status"]["reason"] == "Evicted"
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn out_of_service(node: &Value) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == OUT_OF_SERVICE)
}

/// The terminated pods to delete to get down to `threshold`, in upstream's
/// order (`byEvictionAndCreationTimestamp`).
pub fn surplus(pods: &[Arc<Value>], threshold: usize) -> Vec<Arc<Value>> {
    let mut done: Vec<Arc<Value>> = pods.iter().filter(|p| terminated(p)).cloned().collect();
    if threshold == 0 || done.len() <= threshold {
        return Vec::new();
    }
    let created = |p: &Value| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned)
    };
    done.sort_by(|a, b| {
        evicted(b)
            .cmp(&evicted(a))
            .then_with(|| created(a).cmp(&created(b)))
            .then_with(|| name(a).cmp(name(b)))
    });
    done.truncate(done.len() - threshold);
    done
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct PodGc {
    client: Client,
    pods: Arc<Reflector>,
    nodes: Arc<Reflector>,
    threshold: usize,
    quarantine: Duration,
    wake: Arc<Notify>,
    /// Node names pods are bound to that the cache lacks → since when.
    missing: Arc<Mutex<HashMap<String, Instant>>>,
    /// Uids of pods already force deleted.
    deleted: Arc<Mutex<HashSet<String>>>,
}

impl PodGc {
    /// Registers the handlers: a pass is due when a pod terminates, is
    /// being deleted, or is bound to a node the cache lacks; and when a
    /// node goes away or its readiness or out-of-service taint changes.
    pub fn new(
        client: Client,
        pods: Arc<Reflector>,
        nodes: Arc<Reflector>,
        threshold: usize,
        quarantine: Duration,
    ) -> PodGc {
        let wake = Arc::new(Notify::new());
        let (w, known) = (wake.clone(), nodes.clone());
        pods.on_change(Box::new(move |_, new| {
            let Some(pod) = new else { return };
            let node = node_of(pod);
            let orphan = !node.is_empty() && known.get(node).is_none();
            if orphan || is_deleting(pod) || (threshold > 0 && terminated(pod)) {
                w.notify_one();
            }
        }));
        let w = wake.clone();
        nodes.on_change(Box::new(move |old, new| {
            let view = |n: &Value| (ready(n), out_of_service(n));
            match (old, new) {
                (Some(old), Some(new)) if view(old) == view(new) => {}
                _ => w.notify_one(),
            }
        }));
        PodGc {
            client,
            pods,
            nodes,
            threshold,
            quarantine,
            wake,
            missing: Arc::default(),
            deleted: Arc::default(),
        }
    }

    /// Runs passes until aborted.
    pub async fn run(self) {
        self.pods.synced().await;
        self.nodes.synced().await;
        let mut retry_at: Option<Instant> = None;
        loop {
            let quarantine_end = self
                .lock_missing()
                .values()
                .map(|since| *since + self.quarantine)
                .min();
            let due = match (quarantine_end, retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => tokio::time::sleep(SETTLE).await,
                () = timer => {}
            }
            retry_at = (!self.pass().await).then(|| Instant::now() + RETRY);
        }
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.missing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Upstream's `gc`; false if a write failed.
    async fn pass(&self) -> bool {
        let pods = self.pods.list(|_| true);
        {
            let live: HashSet<&str> = pods.iter().map(|p| uid(p)).collect();
            let mut deleted = self.deleted.lock().unwrap_or_else(|e| e.into_inner());
            deleted.retain(|u| live.contains(u.as_str()));
        }
        let mut doomed: Vec<(Arc<Value>, Option<Value>)> = Vec::new();
        for pod in surplus(&pods, self.threshold) {
            doomed.push((pod, None));
        }
        for pod in pods.iter().filter(|p| is_deleting(p)) {
            let node = node_of(pod);
            let gone = if node.is_empty() {
                true
            } else {
                self.nodes
                    .get(node)
                    .is_some_and(|n| !ready(&n) && out_of_service(&n))
            };
            if gone {
                doomed.push((pod.clone(), None));
            }
        }
        let mut ok = true;
        match self.orphans(&pods).await {
            Ok(orphans) => {
                let condition = json!({
                    "type": "DisruptionTarget", "status": "True",
                    "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists",
                    "lastTransitionTime": now(),
                });
                doomed.extend(orphans.into_iter().map(|p| (p, Some(condition.clone()))));
            }
            Err(err) => {
                warn!(%err, "pod GC: looking up a missing node");
                ok = false;
            }
        }
        for (pod, condition) in doomed {
            if self.first_time(uid(&pod)) {
                ok &= self.force_delete(&pod, condition).await;
            }
        }
        ok
    }

    /// Pods bound to nodes that are gone: not in the cache for the
    /// quarantine, and not found by the API either.
    async fn orphans(&self, pods: &[Arc<Value>]) -> Result<Vec<Arc<Value>>, String> {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut missing = self.lock_missing();
            let absent: HashSet<&str> = pods
                .iter()
                .map(|p| node_of(p))
                .filter(|n| !n.is_empty() && self.nodes.get(n).is_none())
                .collect();
            missing.retain(|n, _| absent.contains(n.as_str()));
            for node in absent {
                missing.entry(node.to_owned()).or_insert(now);
            }
            missing
                .iter()
                .filter(|(_, since)| **since + self.quarantine <= now)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let mut gone = HashSet::new();
        for node in due {
            match self.client.get(&format!("/api/v1/nodes/{node}")).await {
                Err(err) if err.is_not_found() => {
                    gone.insert(node);
                }
                Err(err) => return Err(format!("node {node}: {err}")),
                // The cache lags: quarantined again.
                Ok(_) => {
                    self.lock_missing().insert(node, Instant::now());
                }
            }
        }
        Ok(pods
            .iter()
            .filter(|p| gone.contains(node_of(p)))
            .cloned()
            .collect())
    }

    /// Whether `uid` was not force deleted yet (and is now).
    fn first_time(&self, pod_uid: &str) -> bool {
        self.deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod_uid.to_owned())
    }

    /// Upstream's `markFailedAndDeletePodWithCondition`: phase `Failed`
    /// (and `condition`) unless the pod already finished, then a delete
    /// with no grace period. False if a write failed (tried again later).
    async fn force_delete(&self, pod: &Value, condition: Option<Value>) -> bool {
        let key = key_of(pod);
        let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod));
        info!(pod = %key, node = node_of(pod), "pod GC: force deleting");
        let result = async {
            if !matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) {
                let mut status = json!({"phase": "Failed"});
                if let Some(condition) = condition {
                    let kind = condition["type"].clone();
                    let mut conditions: Vec<Value> = pod["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["type"] != kind)
                        .cloned()
                        .collect();
                    if let Some(old) = pod_condition(pod, "DisruptionTarget")
                        && old["status"] == condition["status"]
                    {
                        // Unchanged status keeps its transition time.
                        let mut kept = condition.clone();
                        kept["lastTransitionTime"] = old["lastTransitionTime"].clone();
                        conditions.push(kept);
                    } else {
                        conditions.push(condition);
                    }
                    status["conditions"] = conditions.into();
                }
                let patch = json!({"metadata": {"uid": uid(pod)}, "status": status});
                self.client
                    .merge_patch(&format!("{path}/status"), &patch)
                    .await?;
            }
            let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid(pod)}});
            self.client.delete(&path, &options).await
        }
        .await;
        match result {
            Ok(_) => true,
            Err(err) if err.is_not_found() || err.is_conflict() => true,
            Err(err) => {
                warn!(pod = %key, %err, "pod GC: force delete failed");
                self.deleted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uid(pod));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, created: &str, reason: Option<&str>) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": phase, "reason": reason},
        }))
    }

    #[test]
    fn surplus_goes_evicted_first_then_oldest() {
        let pods = vec![
            pod("a", "Succeeded", "2026-01-01T00:00:03Z", None),
            pod("b", "Running", "2026-01-01T00:00:00Z", None),
            pod("c", "Failed", "2026-01-01T00:00:02Z", None),
            pod("d", "Failed", "2026-01-01T00:00:05Z", Some("Evicted")),
            pod("e", "Succeeded", "2026-01-01T00:00:02Z", None),
        ];
        let names = |v: Vec<Arc<Value>>| v.iter().map(|p| name(p).to_owned()).collect::<Vec<_>>();
        assert_eq!(names(surplus(&pods, 2)), ["d", "c"]);
        assert_eq!(names(surplus(&pods, 1)), ["d", "c", "e"]);
        assert!(surplus(&pods, 4).is_empty());
        assert!(surplus(&pods, 0).is_empty(), "0 turns it off");
        assert!(terminated(&json!({"status": {"phase": "Weird"}})));
        assert!(!terminated(&json!({"status": {}})));
    }
}
