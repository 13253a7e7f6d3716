//! The DaemonSet controller: one pod on every eligible node, as upstream's
//! `pkg/controller/daemon`.
//!
//! - A node is eligible when it matches the template's `nodeSelector` and
//!   required node affinity, and its `NoSchedule`/`NoExecute` taints are
//!   tolerated by the template's tolerations plus the ones every daemon
//!   pod gets (`not-ready`/`unreachable` `NoExecute`; `disk-pressure`,
//!   `memory-pressure`, `pid-pressure`, `unschedulable` `NoSchedule`;
//!   `network-unavailable` with `hostNetwork`).
//! - Pods are placed as upstream does since 1.12: not bound here but given
//!   required node affinity on `metadata.name` (a `matchFields` term) and
//!   left to the [`crate::scheduler`], which binds them.
//! - Each pod carries `controller-revision-hash` (a hash of the template)
//!   and `pod-template-generation`. `RollingUpdate`: pods of an older hash
//!   are deleted — unavailable ones first, then available ones while fewer
//!   than `maxUnavailable` (default 1; a percentage of the desired count,
//!   rounded up) nodes lack an available pod — and recreated from the
//!   current template. `OnDelete`: only pods deleted by the user are
//!   replaced.
//! - Failed pods and pods on nodes that should not run one are deleted;
//!   a node with several pods keeps the oldest (current hash first).
//! - Status: desired/current/misscheduled/ready/available/unavailable/
//!   updated counts and `observedGeneration`, which is what
//!   `kubectl rollout status ds/x` waits on.
//!
//! - Each template gets a ControllerRevision ([`super::history`]), so
//!   `kubectl rollout history ds/x` lists them and `kubectl rollout undo
//!   ds/x` puts an earlier template back.
//!
//! # Current limitations
//! - No `maxSurge` (updates delete before they create), no back-off for
//!   pods failing again and again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use super::client::Client;
use super::deployment::template_hash;
use super::events::{self, Type};
use super::history::{self, HASH_LABEL};
use super::objects::{
    controlled_by, is_deleting, name, namespace, owner_ref, pod_available, pod_ready, uid,
};
use super::queue::Queue;
use super::reflector::{DAEMONSETS, PODS, Reflector, key_of, rv_of};
use crate::scheduler::filters::{matches_node, tolerates};

const GENERATION_LABEL: &str = "pod-template-generation";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct DaemonSets {
    client: Client,
    sets: Arc<Reflector>,
    pods: Arc<Reflector>,
    nodes: Arc<Reflector>,
    revisions: Arc<Reflector>,
    /// Keys of DaemonSets to sync.
    pub queue: Queue,
}

/// What about a node matters to daemon placement.
fn placement_facts(node: &Value) -> (Value, Value, Value, bool) {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    (
        node["metadata"]["labels"].clone(),
        node["spec"]["taints"].clone(),
        node["spec"]["unschedulable"].clone(),
        ready,
    )
}

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
pub fn default_tolerations(host_network: bool) -> Vec<Value> {
    let mut out: Vec<Value> = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| json!({"key": key, "operator": "Exists", "effect": effect}))
    .collect();
    if host_network {
        out.push(json!({"key": "node.kubernetes.io/network-unavailable",
            "operator": "Exists", "effect": "NoSchedule"}));
    }
    out
}

/// The template's tolerations plus the daemon defaults not already there.
fn tolerations(template_spec: &Value) -> Vec<Value> {
    let mut all: Vec<Value> = template_spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in default_tolerations(template_spec["hostNetwork"].as_bool() == Some(true)) {
        if !all
            .iter()
            .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
        {
            all.push(t);
        }
    }
    all
}

/// Whether a daemon pod of `template_spec` should run on `node`.
pub fn should_run(template_spec: &Value, node: &Value) -> bool {
    if let Some(wanted) = template_spec["nodeName"].as_str().filter(|n| !n.is_empty())
        && Some(wanted) != node["metadata"]["name"].as_str()
    {
        return false;
    }
    let tolerations = tolerations(template_spec);
    let tolerated = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|taint| {
            let effect = taint["effect"].as_str().unwrap_or("");
            (effect != "NoSchedule" && effect != "NoExecute")
                || tolerates(
                    &tolerations,
                    taint["key"].as_str().unwrap_or(""),
                    taint["value"].as_str().unwrap_or(""),
                    effect,
                )
        });
    tolerated && matches_node(&json!({"spec": template_spec}), node)
}

/// The node a daemon pod is for: its `nodeName`, or the node its
/// `metadata.name` affinity names.
fn target_node(pod: &Value) -> Option<&str> {
    if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")
        .and_then(|f| f["values"][0].as_str())
}

/// An int or a percentage of `total`, rounded up (upstream's maxUnavailable).
fn int_or_percent(value: &Value, total: i64) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(1),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => (p * total + 99) / 100,
            None => s.parse().unwrap_or(1),
        },
        _ => 1,
    }
}

impl DaemonSets {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(
        client: Client,
        sets: Arc<Reflector>,
        pods: Arc<Reflector>,
        nodes: Arc<Reflector>,
        revisions: Arc<Reflector>,
    ) -> DaemonSets {
        let queue = Queue::new();
        queue.follow(&sets);
        queue.follow_owned(&pods, "DaemonSet");
        queue.follow_owned(&revisions, "DaemonSet");
        let (q, all) = (queue.clone(), sets.clone());
        nodes.on_change(Box::new(move |old, new| {
            let changed = match (old, new) {
                (Some(a), Some(b)) => placement_facts(a) != placement_facts(b),
                _ => true,
            };
            if changed {
                for ds in all.list(|_| true) {
                    q.add(key_of(&ds));
                }
            }
        }));
        DaemonSets {
            client,
            sets,
            pods,
            nodes,
            revisions,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.sets, &self.pods, &self.nodes, &self.revisions];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(ds) = self.sets.get(key) else {
            return Ok(());
        };
        if is_deleting(&ds) {
            return Ok(());
        }
        let template = &ds["spec"]["template"];
        let hash = template_hash(template, ds["status"]["collisionCount"].as_i64());
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        let mut doomed: Vec<Arc<Value>> = Vec::new();
        for pod in self.pods.in_namespace(namespace(&ds)) {
            if !controlled_by(&pod, uid(&ds)) || is_deleting(&pod) {
                continue;
            }
            if pod["status"]["phase"] == "Failed" {
                doomed.push(pod);
                continue;
            }
            match target_node(&pod) {
                Some(node) => by_node.entry(node.to_owned()).or_default().push(pod),
                None => doomed.push(pod),
            }
        }
        let in_use: HashSet<String> = by_node
            .values()
            .flatten()
            .filter_map(|p| p["metadata"]["labels"][HASH_LABEL].as_str())
            .map(|h| history::revision_name(&ds, h))
            .collect();
        let mut last_rv = history::record(
            &self.client,
            &self.revisions,
            &ds,
            "DaemonSet",
            &hash,
            &in_use,
        )
        .await
        .map_err(|e| format!("daemonset {key}: {e}"))?;
        let is_current = |p: &Value| p["metadata"]["labels"][HASH_LABEL] == hash.as_str();
        let mut nodes: Vec<Arc<Value>> = self.nodes.list(|_| true);
        nodes.sort_by(|a, b| name(a).cmp(name(b)));
        let mut create_on: Vec<String> = Vec::new();
        // Per eligible node: its one pod, if any.
        let mut placed: Vec<(String, Option<Arc<Value>>)> = Vec::new();
        let mut misscheduled = 0;
        for node in &nodes {
            let node_name = name(node).to_owned();
            let mut pods = by_node.remove(&node_name).unwrap_or_default();
            if !should_run(&template["spec"], node) {
                if pods.iter().any(|p| p["spec"]["nodeName"].is_string()) {
                    misscheduled += 1;
                }
                doomed.extend(pods);
                continue;
            }
            // Keep one: current hash first, then the oldest.
            pods.sort_by_key(|p| {
                (
                    !is_current(p),
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            });
            let mut pods = pods.into_iter();
            let keep = pods.next();
            doomed.extend(pods);
            if keep.is_none() {
                create_on.push(node_name.clone());
            }
            placed.push((node_name, keep));
        }
        // Pods for nodes that no longer exist.
        doomed.extend(by_node.into_values().flatten());

        // Rolling update: replace pods of older templates.
        let strategy = &ds["spec"]["updateStrategy"];
        if strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
            let desired = placed.len() as i64;
            let max_unavailable =
                int_or_percent(&strategy["rollingUpdate"]["maxUnavailable"], desired).max(1);
            let mut unavailable = placed
                .iter()
                .filter(|(_, p)| p.as_ref().is_none_or(|p| !pod_available(p, min_ready)))
                .count() as i64;
            let old: Vec<&Arc<Value>> = placed
                .iter()
                .filter_map(|(_, p)| p.as_ref())
                .filter(|p| !is_current(p))
                .collect();
            for pod in &old {
                if !pod_available(pod, min_ready) {
                    doomed.push((*pod).clone());
                }
            }
            for pod in old {
                if pod_available(pod, min_ready) && unavailable < max_unavailable {
                    doomed.push(pod.clone());
                    unavailable += 1;
                }
            }
        }

        let mut errors = Vec::new();
        let new_pods: Vec<Value> = create_on
            .iter()
            .map(|node| self.pod_for(&ds, &hash, node))
            .collect();
        let path = PODS.collection(Some(namespace(&ds)));
        for result in join_all(new_pods.iter().map(|p| self.client.post(&path, p))).await {
            match result {
                Ok(created) => {
                    last_rv = last_rv.max(rv_of(&created));
                    let message = format!("Created pod: {}", name(&created));
                    self.event(&ds, "SuccessfulCreate", &message).await;
                }
                Err(err) => errors.push(format!("creating a pod: {err}")),
            }
        }
        let paths: Vec<String> = doomed.iter().map(|p| PODS.path(&key_of(p))).collect();
        let results = join_all(paths.iter().map(|p| self.client.delete(p, &Value::Null))).await;
        for (result, pod) in results.into_iter().zip(&doomed) {
            match result {
                Ok(deleted) => {
                    last_rv = last_rv.max(rv_of(&deleted));
                    let message = format!("Deleted pod: {}", name(pod));
                    self.event(&ds, "SuccessfulDelete", &message).await;
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => errors.push(format!("deleting a pod: {err}")),
            }
        }
        if last_rv > 0 {
            self.pods.wait_for(last_rv, Duration::from_secs(10)).await;
        }
        self.update_status(&ds, &placed, &hash, misscheduled, min_ready, &mut errors)
            .await;
        if min_ready > 0 {
            // Availability changes with time alone.
            self.queue
                .add_after(key, Duration::from_secs(min_ready as u64));
        }
        match errors.first() {
            Some(err) => Err(format!("daemonset {key}: {} errors: {err}", errors.len())),
            None => Ok(()),
        }
    }

    async fn event(&self, ds: &Value, reason: &str, message: &str) {
        let source = "daemonset-controller";
        let kind = ("apps/v1", "DaemonSet");
        events::record(
            &self.client,
            source,
            kind,
            ds,
            Type::Normal,
            reason,
            message,
        )
        .await;
    }

    async fn update_status(
        &self,
        ds: &Value,
        placed: &[(String, Option<Arc<Value>>)],
        hash: &str,
        misscheduled: i64,
        min_ready: i64,
        errors: &mut Vec<String>,
    ) {
        let pods: Vec<&Arc<Value>> = placed.iter().filter_map(|(_, p)| p.as_ref()).collect();
        let desired = placed.len() as i64;
        let count = |f: &dyn Fn(&Value) -> bool| pods.iter().filter(|p| f(p)).count() as i64;
        let available = count(&|p| pod_available(p, min_ready));
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": count(&|p| p["spec"]["nodeName"].is_string()),
            "numberMisscheduled": misscheduled,
            "numberReady": count(&|p| pod_ready(p)),
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "updatedNumberScheduled": count(&|p| p["metadata"]["labels"][HASH_LABEL] == hash),
            "observedGeneration": ds["metadata"]["generation"],
        });
        let current = &ds["status"];
        let same = status
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| current[k].as_i64().unwrap_or(0) == v.as_i64().unwrap_or(0));
        if same {
            return;
        }
        let path = format!("{}/status", DAEMONSETS.path(&key_of(ds)));
        match self
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => errors.push(format!("status: {err}")),
        }
    }

    /// A daemon pod of `ds` for `node`.
    fn pod_for(&self, ds: &Value, hash: &str, node: &str) -> Value {
        let template = &ds["spec"]["template"];
        let mut metadata = template["metadata"].clone();
        if !metadata.is_object() {
            metadata = json!({});
        }
        if let Some(meta) = metadata.as_object_mut() {
            for field in ["name", "uid", "resourceVersion", "creationTimestamp"] {
                meta.remove(field);
            }
        }
        metadata["generateName"] = format!("{}-", name(ds)).into();
        metadata["namespace"] = namespace(ds).into();
        metadata["labels"][HASH_LABEL] = hash.into();
        if let Some(generation) = ds["metadata"]["generation"].as_i64() {
            metadata["labels"][GENERATION_LABEL] = generation.to_string().into();
        }
        metadata["ownerReferences"] = json!([owner_ref("apps/v1", "DaemonSet", ds)]);
        let mut spec = template["spec"].clone();
        spec["tolerations"] = tolerations(&template["spec"]).into();
        set_node_affinity(&mut spec, node);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }
}

/// Requires `metadata.name` = `node`: every node selector term gets the
/// field requirement (replacing any other on `metadata.name`), or one term
/// with it alone (upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn set_node_affinity(spec: &mut Value, node: &str) {
    let field = json!({"key": "metadata.name", "operator": "In", "values": [node]});
    let required =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    let terms: Vec<Value> = match required["nodeSelectorTerms"].as_array() {
        Some(terms) if !terms.is_empty() => terms
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t["matchFields"] = json!([field]);
                t
            })
            .collect(),
        _ => vec![json!({"matchFields": [field]})],
    };
    required["nodeSelectorTerms"] = terms.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(taints: Value, labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn eligibility_follows_taints_selectors_and_defaults() {
        let plain = json!({"containers": []});
        assert!(should_run(&plain, &node(json!([]), json!({}))));
        let tainted = node(
            json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            json!({}),
        );
        assert!(!should_run(&plain, &tainted));
        let tolerant = json!({"tolerations": [{"key": "gpu", "operator": "Exists"}]});
        assert!(should_run(&tolerant, &tainted));
        // PreferNoSchedule does not keep daemon pods away.
        let soft = node(
            json!([{"key": "x", "effect": "PreferNoSchedule"}]),
            json!({}),
        );
        assert!(should_run(&plain, &soft));
        // The default tolerations: unschedulable and not-ready nodes still run them.
        let cordoned = node(
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                   {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
            json!({}),
        );
        assert!(should_run(&plain, &cordoned));
        let selective = json!({"nodeSelector": {"disk": "ssd"}});
        assert!(!should_run(&selective, &node(json!([]), json!({}))));
        assert!(should_run(
            &selective,
            &node(json!([]), json!({"disk": "ssd"}))
        ));
    }

    #[test]
    fn pods_target_their_node_by_affinity() {
        let mut spec = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}}});
        set_node_affinity(&mut spec, "n2");
        let pod = json!({"spec": spec});
        assert_eq!(target_node(&pod), Some("n2"));
        let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], "a");
        assert_eq!(int_or_percent(&json!("25%"), 3), 1);
        assert_eq!(int_or_percent(&json!("50%"), 5), 3);
        assert_eq!(int_or_percent(&json!(2), 5), 2);
    }
}
