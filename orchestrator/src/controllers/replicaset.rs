//! The ReplicaSet controller: keeps `spec.replicas` pods from the template.
//!
//! A sync of one ReplicaSet (upstream's `syncReplicaSet`):
//! 1. claims pods: those whose controller reference is this ReplicaSet and
//!    whose labels still match its selector are its own; such pods that no
//!    longer match are released (the reference removed); pods without a
//!    controller that match are adopted (a controller reference added);
//! 2. creates pods (`generateName: <rs>-`, so `<rs>-<5 random>`, with a
//!    controller reference) or deletes surplus ones, least valuable first
//!    (unscheduled, then pending, then not ready, then the youngest);
//! 3. waits until its pod cache shows its own writes, so that the next
//!    sync does not count stale pods (in place of upstream's expectations);
//! 4. writes `status` (replicas, fullyLabeledReplicas, readyReplicas,
//!    availableReplicas with `minReadySeconds`, observedGeneration).
//!
//! ReplicaSets being deleted are left to the garbage collector.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use super::client::Client;
use super::objects::{
    controlled_by, controller_ref, is_deleting, name, namespace, owner_ref, pod_active,
    pod_available, pod_ready, selector_matches, uid,
};
use super::queue::Queue;
use super::reflector::{PODS, REPLICASETS, Reflector, key_of, rv_of};

/// Most pods created or deleted in one sync (upstream's burst is 500).
const BURST: usize = 500;

/// The controller's state.
#[derive(Debug, Clone)]
pub struct ReplicaSets {
    client: Client,
    rs: Arc<Reflector>,
    pods: Arc<Reflector>,
    /// Keys of ReplicaSets to sync.
    pub queue: Queue,
}

impl ReplicaSets {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(client: Client, rs: Arc<Reflector>, pods: Arc<Reflector>) -> ReplicaSets {
        let queue = Queue::new();
        let q = queue.clone();
        rs.on_change(Box::new(move |old, new| {
            if let Some(obj) = new.or(old) {
                q.add(key_of(obj));
            }
        }));
        let (q, sets) = (queue.clone(), rs.clone());
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                match controller_ref(pod) {
                    Some(r) if r["kind"] == "ReplicaSet" => {
                        if let Some(owner) = r["name"].as_str() {
                            q.add(format!("{}/{owner}", namespace(pod)));
                        }
                    }
                    Some(_) => {}
                    // An orphan: the ReplicaSets that may adopt it.
                    None => {
                        let labels = &pod["metadata"]["labels"];
                        for rs in sets.in_namespace(namespace(pod)) {
                            if selector_matches(&rs["spec"]["selector"], labels) {
                                q.add(key_of(&rs));
                            }
                        }
                    }
                }
            }
        }));
        ReplicaSets {
            client,
            rs,
            pods,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.rs, &self.pods];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(rs) = self.rs.get(key) else {
            return Ok(());
        };
        if is_deleting(&rs) {
            return Ok(());
        }
        let ns = namespace(&rs).to_owned();
        let selector = &rs["spec"]["selector"];
        let mut owned = Vec::new();
        let mut last_rv = 0;
        for pod in self.pods.in_namespace(&ns) {
            let labels = &pod["metadata"]["labels"];
            let matches = selector_matches(selector, labels);
            if controlled_by(&pod, uid(&rs)) {
                if matches {
                    owned.push(pod);
                } else {
                    last_rv = last_rv.max(self.release(&pod).await?);
                }
            } else if matches && controller_ref(&pod).is_none() && !is_deleting(&pod) {
                let adopted = self.adopt(&rs, &pod).await?;
                last_rv = last_rv.max(rv_of(&adopted));
                owned.push(Arc::new(adopted));
            }
        }
        let active: Vec<Arc<Value>> = owned.into_iter().filter(|p| pod_active(p)).collect();
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let mut errors = Vec::new();
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            let pod = self.pod_from_template(&rs);
            let path = PODS.collection(Some(&ns));
            let results = join_all((0..n).map(|_| self.client.post(&path, &pod))).await;
            for result in results {
                match result {
                    Ok(created) => last_rv = last_rv.max(rv_of(&created)),
                    Err(err) => errors.push(err.to_string()),
                }
            }
        } else if active.len() > want {
            let mut doomed = active.clone();
            doomed.sort_by_key(|p| deletion_rank(p));
            doomed.truncate((active.len() - want).min(BURST));
            let paths: Vec<String> = doomed.iter().map(|p| PODS.path(&key_of(p))).collect();
            let results = join_all(
                paths
                    .iter()
                    .map(|path| self.client.delete(path, &Value::Null)),
            )
            .await;
            for result in results {
                match result {
                    Ok(deleted) => last_rv = last_rv.max(rv_of(&deleted)),
                    Err(err) if err.is_not_found() => {}
                    Err(err) => errors.push(err.to_string()),
                }
            }
        }
        if last_rv > 0 {
            self.pods.wait_for(last_rv, Duration::from_secs(10)).await;
        }
        self.update_status(&rs, &active).await?;
        match errors.first() {
            Some(err) => Err(format!("{} pod writes failed: {err}", errors.len())),
            None => Ok(()),
        }
    }

    fn pod_from_template(&self, rs: &Value) -> Value {
        let template = &rs["spec"]["template"];
        let mut metadata = template["metadata"].clone();
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["generateName"] = format!("{}-", name(rs)).into();
        metadata["namespace"] = namespace(rs).into();
        metadata["ownerReferences"] = json!([owner_ref("apps/v1", "ReplicaSet", rs)]);
        if let Some(meta) = metadata.as_object_mut() {
            for field in ["name", "uid", "resourceVersion", "creationTimestamp"] {
                meta.remove(field);
            }
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": template["spec"],
        })
    }

    async fn adopt(&self, rs: &Value, pod: &Value) -> Result<Value, String> {
        let mut refs = pod["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        refs.push(owner_ref("apps/v1", "ReplicaSet", rs));
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": pod["metadata"]["resourceVersion"],
        }});
        self.client
            .merge_patch(&PODS.path(&key_of(pod)), &patch)
            .await
            .map_err(|e| format!("adopting pod {}: {e}", name(pod)))
    }

    async fn release(&self, pod: &Value) -> Result<i64, String> {
        let refs: Vec<Value> = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["controller"].as_bool() != Some(true))
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": pod["metadata"]["resourceVersion"],
        }});
        match self
            .client
            .merge_patch(&PODS.path(&key_of(pod)), &patch)
            .await
        {
            Ok(pod) => Ok(rv_of(&pod)),
            Err(err) if err.is_not_found() => Ok(0),
            Err(err) => Err(format!("releasing pod {}: {err}", name(pod))),
        }
    }

    async fn update_status(&self, rs: &Value, pods: &[Arc<Value>]) -> Result<(), String> {
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
        let fully_labeled = pods
            .iter()
            .filter(|p| {
                let labels = &p["metadata"]["labels"];
                template_labels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
            .count();
        let status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": pods.iter().filter(|p| pod_ready(p)).count(),
            "availableReplicas": pods.iter().filter(|p| pod_available(p, min_ready)).count(),
            "observedGeneration": rs["metadata"]["generation"],
        });
        let current = &rs["status"];
        let same = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
        ]
        .iter()
        .all(|f| current[f].as_i64().unwrap_or(0) == status[f].as_i64().unwrap_or(0))
            && current["observedGeneration"] == status["observedGeneration"];
        if same {
            return Ok(());
        }
        let path = format!("{}/status", REPLICASETS.path(&key_of(rs)));
        match self
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("status of {}: {err}", name(rs))),
        }
    }
}

/// Sort key for scale-down: lower goes first (unscheduled, pending, not
/// ready, then the youngest).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let running = pod["status"]["phase"] == "Running";
    let created = pod["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    (
        u8::from(scheduled),
        u8::from(running),
        u8::from(pod_ready(pod)),
        std::cmp::Reverse(created),
    )
}
