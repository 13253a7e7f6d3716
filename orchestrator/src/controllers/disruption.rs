//! The disruption controller: keeps each PodDisruptionBudget's `status`,
//! which the API's eviction subresource (`api::eviction`) reads and
//! decrements, as upstream's `pkg/controller/disruption` does.
//!
//! A sync of one budget:
//! 1. its pods: those of its namespace its selector matches;
//! 2. `expectedPods` and `desiredHealthy`: with an integer `minAvailable`,
//!    the number of pods and that integer; with a percentage, or with
//!    `maxUnavailable`, the sum of the `spec.replicas` of the pods'
//!    controllers (a ReplicaSet owned by a Deployment counts as the
//!    Deployment; StatefulSets; plain ReplicaSets), the percentage rounded
//!    up; a selected pod of any other controller fails the sync, which then
//!    sets `disruptionsAllowed` to 0 with the `SyncFailed` reason (pods
//!    without a controller are counted as upstream does: not at all);
//! 3. `disruptedPods`: the evictions the API granted whose pod still
//!    exists and is not being deleted, each kept for 2 minutes
//!    ([`DELETION_TIMEOUT`]) and the budget synced again when the oldest
//!    expires;
//! 4. `currentHealthy`: pods Ready, not being deleted, not disrupted;
//!    `disruptionsAllowed = currentHealthy - desiredHealthy` (0 when
//!    negative or when no pod is expected), `observedGeneration`, and the
//!    `DisruptionAllowed` condition (`SufficientPods`/`InsufficientPods`).
//!
//! The status is written only when it changes, with a PUT of the whole
//! object to `status` so that a concurrent eviction's write is a conflict
//! (retried after the cache caught up), never lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::client::Client;
use super::events::{self, Type};
use super::objects::{
    controller_ref, is_deleting, name, namespace, pod_ready, selector_matches, uid,
};
use super::queue::Queue;
use super::reflector::{PDBS, Reflector, key_of};
use crate::api::eviction::{set_allowed_condition, set_condition};

/// How long an eviction's entry in `disruptedPods` holds before the pod
/// counts again (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// The component of the events it records.
const COMPONENT: &str = "controllermanager";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct Disruption {
    client: Client,
    pdbs: Arc<Reflector>,
    pods: Arc<Reflector>,
    sets: Arc<Reflector>,
    deployments: Arc<Reflector>,
    statefulsets: Arc<Reflector>,
    /// Keys of budgets to sync.
    pub queue: Queue,
}

/// The caches a sync reads besides budgets and pods.
#[derive(Debug, Clone)]
pub struct Controllers {
    /// ReplicaSets.
    pub sets: Arc<Reflector>,
    /// Deployments.
    pub deployments: Arc<Reflector>,
    /// StatefulSets.
    pub statefulsets: Arc<Reflector>,
}

impl Disruption {
    /// Registers the controller's handlers: a budget's own changes, and
    /// every change of a pod it selects (before or after the change).
    pub fn new(
        client: Client,
        pdbs: Arc<Reflector>,
        pods: Arc<Reflector>,
        controllers: Controllers,
    ) -> Disruption {
        let queue = Queue::new();
        queue.follow(&pdbs);
        let (q, budgets) = (queue.clone(), pdbs.clone());
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                let labels = &pod["metadata"]["labels"];
                for pdb in budgets.in_namespace(namespace(pod)) {
                    if selector_matches(&pdb["spec"]["selector"], labels) {
                        q.add(key_of(&pdb));
                    }
                }
            }
        }));
        Disruption {
            client,
            pdbs,
            pods,
            sets: controllers.sets,
            deployments: controllers.deployments,
            statefulsets: controllers.statefulsets,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [
            &self.pdbs,
            &self.pods,
            &self.sets,
            &self.deployments,
            &self.statefulsets,
        ];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    #[tracing::instrument(skip(self))]
    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(pdb) = self.pdbs.get(key) else {
            return Ok(());
        };
        if is_deleting(&pdb) {
            return Ok(());
        }
        let now = Timestamp::now();
        let pods: Vec<Arc<Value>> = self
            .pods
            .in_namespace(namespace(&pdb))
            .into_iter()
            .filter(|p| selector_matches(&pdb["spec"]["selector"], &p["metadata"]["labels"]))
            .collect();
        let (status, recheck) = match compute(&pdb, &pods, |pod| self.scale_of(pod), now) {
            Ok(computed) => (status_of(&pdb, &computed, now), computed.recheck),
            Err(err) => (failed_status(&pdb, &err, now), None),
        };
        if status != pdb["status"] {
            self.write(&pdb, status.clone()).await?;
            if status["conditions"][0]["reason"] == "SyncFailed" {
                let message = format!(
                    "Failed to calculate the number of expected pods: {}",
                    status["conditions"][0]["message"].as_str().unwrap_or("")
                );
                self.event(
                    &pdb,
                    Type::Warning,
                    "CalculateExpectedPodCountFailed",
                    &message,
                )
                .await;
            } else if pods.is_empty() {
                self.event(&pdb, Type::Normal, "NoPods", "No matching pods found")
                    .await;
            }
        }
        if let Some(at) = recheck {
            let wait = at.duration_since(now).unsigned_abs();
            self.queue.add_after(key, wait + Duration::from_millis(100));
        }
        Ok(())
    }

    /// The controller of `pod` that sets its scale, as (uid, replicas):
    /// `Ok(None)` for a pod without a controller, `Err` for a controller
    /// that has no scale (or is not in the caches).
    fn scale_of(&self, pod: &Value) -> Result<Option<(String, i64)>, String> {
        let Some(owner) = controller_ref(pod) else {
            return Ok(None);
        };
        let ns = namespace(pod);
        let key = format!("{ns}/{}", owner["name"].as_str().unwrap_or(""));
        let apps = owner["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("apps/"));
        let found = |cache: &Reflector| {
            cache
                .get(&key)
                .filter(|o| owner["uid"].as_str() == Some(uid(o)))
        };
        let replicas = |obj: &Value| obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let scale = match owner["kind"].as_str() {
            Some("ReplicaSet") if apps => found(&self.sets).and_then(|rs| {
                match controller_ref(&rs).filter(|r| r["kind"] == "Deployment") {
                    Some(d) => {
                        let key = format!("{ns}/{}", d["name"].as_str().unwrap_or(""));
                        self.deployments
                            .get(&key)
                            .filter(|dep| d["uid"].as_str() == Some(uid(dep)))
                            .map(|dep| (uid(&dep).to_owned(), replicas(&dep)))
                    }
                    None => Some((uid(&rs).to_owned(), replicas(&rs))),
                }
            }),
            Some("StatefulSet") if apps => {
                found(&self.statefulsets).map(|s| (uid(&s).to_owned(), replicas(&s)))
            }
            _ => None,
        };
        match scale {
            Some(scale) => Ok(Some(scale)),
            None => Err(format!("found no controllers for pod {:?}", name(pod))),
        }
    }

    /// Replaces the budget's status (optimistic concurrency: a conflict
    /// is retried once the cache has the newer object).
    async fn write(&self, pdb: &Value, status: Value) -> Result<(), String> {
        let mut object = pdb.clone();
        object["status"] = status;
        let path = format!("{}/status", PDBS.path(&key_of(pdb)));
        match self.client.put(&path, &object).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("status of {}: {err}", name(pdb))),
        }
    }

    async fn event(&self, pdb: &Value, kind: Type, reason: &str, message: &str) {
        let gvk = ("policy/v1", "PodDisruptionBudget");
        events::record(&self.client, COMPONENT, gvk, pdb, kind, reason, message).await;
    }
}

/// What a budget's status is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// `expectedPods`.
    pub expected: i64,
    /// `desiredHealthy`.
    pub desired: i64,
    /// `currentHealthy`.
    pub healthy: i64,
    /// `disruptedPods` still pending.
    pub disrupted: BTreeMap<String, String>,
    /// When the oldest of `disrupted` expires.
    pub recheck: Option<Timestamp>,
}

/// An `intstr.IntOrString` budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Amount {
    Count(i64),
    Percent(i64),
}

impl Amount {
    fn of(value: &Value) -> Result<Amount, String> {
        if let Some(n) = value.as_i64() {
            return Ok(Amount::Count(n));
        }
        value
            .as_str()
            .and_then(|s| s.strip_suffix('%'))
            .and_then(|n| n.parse().ok())
            .map(Amount::Percent)
            .ok_or_else(|| format!("invalid value for IntOrString: {value}"))
    }

    /// `intstr.GetScaledValueFromIntOrPercent`, rounding up.
    fn scaled(self, total: i64) -> i64 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (p * total + 99).div_euclid(100),
        }
    }
}

/// Computes a budget's numbers from its selected `pods` at `now`; `scale`
/// names a pod's controller and its replicas (see [`Disruption`]).
pub fn compute(
    pdb: &Value,
    pods: &[Arc<Value>],
    scale: impl Fn(&Value) -> Result<Option<(String, i64)>, String>,
    now: Timestamp,
) -> Result<Computed, String> {
    let spec = &pdb["spec"];
    let expected_scale = || -> Result<i64, String> {
        let mut controllers: BTreeMap<String, i64> = BTreeMap::new();
        for pod in pods {
            if let Some((uid, replicas)) = scale(pod)? {
                controllers.insert(uid, replicas);
            }
        }
        Ok(controllers.values().sum())
    };
    let (expected, desired) = if !spec["maxUnavailable"].is_null() {
        let expected = expected_scale()?;
        let max = Amount::of(&spec["maxUnavailable"])?.scaled(expected);
        (expected, (expected - max).max(0))
    } else if !spec["minAvailable"].is_null() {
        match Amount::of(&spec["minAvailable"])? {
            Amount::Count(n) => (pods.len() as i64, n),
            percent => {
                let expected = expected_scale()?;
                (expected, percent.scaled(expected))
            }
        }
    } else {
        (0, 0)
    };
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    let granted = pdb["status"]["disruptedPods"].as_object();
    for pod in pods.iter().filter(|p| !is_deleting(p)) {
        let Some(at) = granted.and_then(|g| g.get(name(pod))) else {
            continue;
        };
        let Some(since) = at.as_str().and_then(|s| s.parse::<Timestamp>().ok()) else {
            continue;
        };
        let expires = since + DELETION_TIMEOUT;
        if expires > now {
            recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
            disrupted.insert(name(pod).to_owned(), at.as_str().unwrap_or("").to_owned());
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| !is_deleting(p) && !disrupted.contains_key(name(p)) && pod_ready(p))
        .count() as i64;
    Ok(Computed {
        expected,
        desired,
        healthy,
        disrupted,
        recheck,
    })
}

/// The status upstream's `updatePdbStatus` writes.
pub fn status_of(pdb: &Value, computed: &Computed, now: Timestamp) -> Value {
    let mut allowed = computed.healthy - computed.desired;
    if computed.expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let generation = pdb["metadata"]["generation"].clone();
    let mut status = json!({
        "currentHealthy": computed.healthy,
        "desiredHealthy": computed.desired,
        "expectedPods": computed.expected,
        "disruptionsAllowed": allowed,
        "observedGeneration": generation,
        "conditions": pdb["status"]["conditions"],
    });
    if !computed.disrupted.is_empty() {
        let map: Map<String, Value> = computed
            .disrupted
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        status["disruptedPods"] = map.into();
    }
    set_allowed_condition(&mut status, now);
    status
}

/// The status after a failed sync (upstream's `failSafe`): no disruption
/// allowed, `SyncFailed` saying why, the rest as it was.
fn failed_status(pdb: &Value, err: &str, now: Timestamp) -> Value {
    let mut status = match &pdb["status"] {
        Value::Object(map) => Value::Object(map.clone()),
        _ => json!({}),
    };
    status["disruptionsAllowed"] = 0.into();
    set_condition(&mut status, "False", "SyncFailed", err, now);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, owner: Option<&str>) -> Arc<Value> {
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "t", "labels": {"app": "web"}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(owner) = owner {
            pod["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]);
        }
        Arc::new(pod)
    }

    fn pdb(spec: Value) -> Value {
        json!({"metadata": {"name": "b", "namespace": "t", "generation": 2}, "spec": spec, "status": {}})
    }

    /// Each owner `rs<n>` has `n` replicas.
    fn scale(pod: &Value) -> Result<Option<(String, i64)>, String> {
        match controller_ref(pod) {
            None => Ok(None),
            Some(r) => {
                let owner = r["name"].as_str().unwrap_or("");
                match owner.strip_prefix("rs").and_then(|n| n.parse().ok()) {
                    Some(n) => Ok(Some((owner.to_owned(), n))),
                    None => Err(format!("found no controllers for pod {owner:?}")),
                }
            }
        }
    }

    #[test]
    fn min_available_counts_pods_or_scales_a_percentage() {
        let now = Timestamp::now();
        let pods = [
            pod("a", true, Some("rs4")),
            pod("b", true, Some("rs4")),
            pod("c", false, Some("rs4")),
        ];
        let c = compute(&pdb(json!({"minAvailable": 1})), &pods, scale, now).expect("int");
        assert_eq!((c.expected, c.desired, c.healthy), (3, 1, 2));
        let status = status_of(&pdb(json!({})), &c, now);
        assert_eq!(status["disruptionsAllowed"], 1);
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["conditions"][0]["reason"], "SufficientPods");
        assert_eq!(status["conditions"][0]["status"], "True");
        // 50% of the controller's 4 replicas, not of the 3 pods.
        let c = compute(&pdb(json!({"minAvailable": "50%"})), &pods, scale, now).expect("pct");
        assert_eq!((c.expected, c.desired), (4, 2));
        let status = status_of(&pdb(json!({})), &c, now);
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["conditions"][0]["reason"], "InsufficientPods");
    }

    #[test]
    fn max_unavailable_rounds_up_and_never_goes_negative() {
        let now = Timestamp::now();
        let pods = [
            pod("a", true, Some("rs3")),
            pod("b", true, Some("rs3")),
            pod("c", true, Some("rs3")),
        ];
        let c = compute(&pdb(json!({"maxUnavailable": "34%"})), &pods, scale, now).expect("pct");
        // ceil(3 * 34%) = 2 may be unavailable.
        assert_eq!((c.expected, c.desired, c.healthy), (3, 1, 3));
        let c = compute(&pdb(json!({"maxUnavailable": 5})), &pods, scale, now).expect("int");
        assert_eq!(c.desired, 0);
        let err = compute(
            &pdb(json!({"maxUnavailable": 1})),
            &[pod("x", true, Some("job"))],
            scale,
            now,
        )
        .expect_err("no scale");
        assert!(err.contains("found no controllers"), "{err}");
        let failed = failed_status(&pdb(json!({})), &err, now);
        assert_eq!(failed["disruptionsAllowed"], 0);
        assert_eq!(failed["conditions"][0]["reason"], "SyncFailed");
        // No pod expected: nothing may be disrupted.
        let c = compute(&pdb(json!({"maxUnavailable": 1})), &[], scale, now).expect("empty");
        assert_eq!(status_of(&pdb(json!({})), &c, now)["disruptionsAllowed"], 0);
    }

    #[test]
    fn disrupted_pods_do_not_count_until_they_expire() {
        let now = Timestamp::now();
        let fresh = (now - Duration::from_secs(30))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let stale = (now - Duration::from_secs(180))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut budget = pdb(json!({"minAvailable": 1}));
        budget["status"]["disruptedPods"] = json!({"a": fresh, "b": stale, "gone": fresh});
        let pods = [
            pod("a", true, None),
            pod("b", true, None),
            pod("c", true, None),
        ];
        let c = compute(&budget, &pods, scale, now).expect("ok");
        assert_eq!(c.healthy, 2);
        assert_eq!(c.disrupted.keys().collect::<Vec<_>>(), ["a"]);
        let recheck = c.recheck.expect("recheck");
        assert!(recheck > now && recheck <= now + DELETION_TIMEOUT);
        let status = status_of(&budget, &c, now);
        assert_eq!(status["disruptedPods"], json!({"a": fresh}));
    }

    #[test]
    fn the_condition_keeps_its_transition_time() {
        let then = Timestamp::now() - Duration::from_secs(60);
        let mut status = json!({"disruptionsAllowed": 1, "observedGeneration": 1});
        set_allowed_condition(&mut status, then);
        let first = status["conditions"][0]["lastTransitionTime"].clone();
        set_allowed_condition(&mut status, Timestamp::now());
        assert_eq!(status["conditions"][0]["lastTransitionTime"], first);
        status["disruptionsAllowed"] = 0.into();
        set_allowed_condition(&mut status, Timestamp::now());
        assert_ne!(status["conditions"][0]["lastTransitionTime"], first);
        assert_eq!(status["conditions"].as_array().map(Vec::len), Some(1));
    }
}
