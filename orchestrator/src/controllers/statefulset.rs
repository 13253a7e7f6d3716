//! The StatefulSet controller: stable, ordered pods and their claims, as
//! upstream's `pkg/controller/statefulset`.
//!
//! - Pods are `<set>-<ordinal>` for ordinals `start .. start + replicas`
//!   (`spec.ordinals.start`, default 0), with hostname `<pod>` and
//!   subdomain `serviceName`, and the labels
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`
//!   and `controller-revision-hash` (`<set>-<hash of the template>`).
//! - Each `volumeClaimTemplates` entry `t` becomes the claim `t-<pod>`
//!   (labels: the template's and the selector's), created before the pod
//!   and mounted as the volume `t`; claims are never deleted here
//!   (`persistentVolumeClaimRetentionPolicy` `Retain`).
//! - `OrderedReady` (the default): a pod is only created once every lower
//!   ordinal is Running and Ready; scale down removes the highest ordinal
//!   first, one at a time, and only while the others are healthy.
//!   `Parallel`: all at once.
//! - `RollingUpdate`: once every pod is healthy, the highest-ordinal pod at
//!   or above `partition` whose revision is not the update revision is
//!   deleted, and is recreated from the current template; one at a time.
//!   `OnDelete`: only pods deleted by the user are recreated.
//! - Failed pods are deleted and recreated.
//! - Status: replicas, readyReplicas, availableReplicas, currentReplicas,
//!   updatedReplicas, currentRevision/updateRevision (the current one
//!   follows once every pod is updated and ready), observedGeneration —
//!   what `kubectl rollout status sts/x` reads.
//!
//! - Each template gets a ControllerRevision ([`super::history`]); a pod
//!   below the partition that has to be made again is made from the
//!   current revision's template, not the update's, and
//!   `kubectl rollout history/undo sts/x` work.
//!
//! # Current limitations
//! - No `maxUnavailable` above 1, no `whenDeleted`/`whenScaled: Delete`
//!   claim retention, no adoption of orphan pods.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::Client;
use super::deployment::template_hash;
use super::events::{self, Type};
use super::history::{self, HASH_LABEL as REVISION_LABEL};
use super::objects::{
    controlled_by, is_deleting, name, namespace, owner_ref, pod_available, pod_ready, uid,
};
use super::queue::Queue;
use super::reflector::{PODS, Reflector, STATEFULSETS, key_of, rv_of};

const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct StatefulSets {
    client: Client,
    sets: Arc<Reflector>,
    pods: Arc<Reflector>,
    revisions: Arc<Reflector>,
    /// Keys of StatefulSets to sync.
    pub queue: Queue,
}

/// Running and Ready, not being deleted.
fn healthy(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod_ready(pod) && !is_deleting(pod)
}

/// The ordinal of a pod of the set `set`, from its name.
fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    name(pod)
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|o: &i64| *o >= 0)
}

/// Whether ordinal `o` stays at the current revision during a rolling
/// update: below the partition, or, with no `rollingUpdate`, among the
/// first `status.currentReplicas` (upstream's `newVersionedStatefulSetPod`).
fn below_partition(sts: &Value, o: i64) -> bool {
    let strategy = &sts["spec"]["updateStrategy"];
    if strategy["type"].as_str().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return false;
    }
    let start = sts["spec"]["ordinals"]["start"]
        .as_i64()
        .unwrap_or(0)
        .max(0);
    match strategy["rollingUpdate"]["partition"].as_i64() {
        Some(partition) => o < partition,
        None if strategy["rollingUpdate"].is_object() => false,
        None => o < start + sts["status"]["currentReplicas"].as_i64().unwrap_or(0),
    }
}

/// The claims of `ordinal`'s pod, from the claim templates.
pub fn claims_for(sts: &Value, pod_name: &str) -> Vec<Value> {
    let selector_labels = &sts["spec"]["selector"]["matchLabels"];
    sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut labels = t["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            for (k, v) in selector_labels.as_object().into_iter().flatten() {
                labels[k] = v.clone();
            }
            let mut meta = json!({
                "name": format!("{}-{pod_name}", name(t)),
                "namespace": namespace(sts),
                "labels": labels,
            });
            if t["metadata"]["annotations"].is_object() {
                meta["annotations"] = t["metadata"]["annotations"].clone();
            }
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": meta, "spec": t["spec"]})
        })
        .collect()
}

/// The pod of `sts` at `ordinal`, of revision `revision`.
pub fn pod_for(sts: &Value, ordinal: i64, revision: &str) -> Value {
    let template = &sts["spec"]["template"];
    let pod_name = format!("{}-{ordinal}", name(sts));
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    if let Some(meta) = metadata.as_object_mut() {
        for field in [
            "generateName",
            "uid",
            "resourceVersion",
            "creationTimestamp",
        ] {
            meta.remove(field);
        }
    }
    metadata["name"] = pod_name.clone().into();
    metadata["namespace"] = namespace(sts).into();
    metadata["labels"][REVISION_LABEL] = revision.into();
    metadata["labels"][POD_NAME_LABEL] = pod_name.clone().into();
    metadata["labels"][POD_INDEX_LABEL] = ordinal.to_string().into();
    metadata["ownerReferences"] = json!([owner_ref("apps/v1", "StatefulSet", sts)]);
    let mut spec = template["spec"].clone();
    spec["hostname"] = pod_name.clone().into();
    if let Some(service) = sts["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = service.into();
    }
    let mut volumes: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let volume = json!({"name": name(t), "persistentVolumeClaim":
            {"claimName": format!("{}-{pod_name}", name(t))}});
        volumes.retain(|v| v["name"] != t["metadata"]["name"]);
        volumes.push(volume);
    }
    if !volumes.is_empty() {
        spec["volumes"] = volumes.into();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

impl StatefulSets {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(
        client: Client,
        sets: Arc<Reflector>,
        pods: Arc<Reflector>,
        revisions: Arc<Reflector>,
    ) -> StatefulSets {
        let queue = Queue::new();
        queue.follow(&sets);
        queue.follow_owned(&pods, "StatefulSet");
        queue.follow_owned(&revisions, "StatefulSet");
        StatefulSets {
            client,
            sets,
            pods,
            revisions,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.sets, &self.pods, &self.revisions];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(sts) = self.sets.get(key) else {
            return Ok(());
        };
        if is_deleting(&sts) {
            return Ok(());
        }
        let set = name(&sts).to_owned();
        let spec = &sts["spec"];
        let start = spec["ordinals"]["start"].as_i64().unwrap_or(0).max(0);
        let replicas = spec["replicas"].as_i64().unwrap_or(1).max(0);
        let end = start + replicas;
        // The status always carries collisionCount once written (0): count
        // from 0 before that too, or the first status write would change
        // the update revision under the pods just made.
        let collisions = sts["status"]["collisionCount"].as_i64().unwrap_or(0);
        let hash = template_hash(&spec["template"], Some(collisions));
        let update_rev = history::revision_name(&sts, &hash);
        let ordered = spec["podManagementPolicy"] != "Parallel";
        let mut wanted: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
        let mut condemned: Vec<(i64, Arc<Value>)> = Vec::new();
        for pod in self.pods.in_namespace(namespace(&sts)) {
            if !controlled_by(&pod, uid(&sts)) {
                continue;
            }
            match ordinal(&set, &pod) {
                Some(o) if (start..end).contains(&o) => {
                    wanted.insert(o, pod);
                }
                Some(o) => condemned.push((o, pod)),
                None => condemned.push((i64::MAX, pod)),
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        let in_use: HashSet<String> = wanted
            .values()
            .chain(condemned.iter().map(|(_, p)| p))
            .filter_map(|p| p["metadata"]["labels"][REVISION_LABEL].as_str())
            .map(str::to_owned)
            .collect();
        let mut last_rv = history::record(
            &self.client,
            &self.revisions,
            &sts,
            "StatefulSet",
            &hash,
            &in_use,
        )
        .await
        .map_err(|e| format!("statefulset {key}: {e}"))?;
        let current = self.current_set(&sts, &update_rev);
        let mut errors = Vec::new();
        // Create and repair, in order.
        let mut blocked = false;
        for o in start..end {
            match wanted.get(&o) {
                None => {
                    let made = match &current {
                        Some((set, rev)) if below_partition(&sts, o) => {
                            self.create(set, o, rev).await
                        }
                        _ => self.create(&sts, o, &update_rev).await,
                    };
                    match made {
                        Ok(rv) => last_rv = last_rv.max(rv),
                        Err(err) => errors.push(err),
                    }
                    if ordered {
                        blocked = true;
                        break;
                    }
                }
                Some(pod) if pod["status"]["phase"] == "Failed" && !is_deleting(pod) => {
                    last_rv = last_rv.max(self.delete(&sts, pod, &mut errors).await);
                    if ordered {
                        blocked = true;
                        break;
                    }
                }
                Some(pod) if ordered && !healthy(pod) => {
                    blocked = true;
                    break;
                }
                Some(_) => {}
            }
        }
        // Scale down, highest ordinal first.
        if !blocked {
            for (_, pod) in &condemned {
                if is_deleting(pod) {
                    if ordered {
                        blocked = true;
                        break;
                    }
                    continue;
                }
                last_rv = last_rv.max(self.delete(&sts, pod, &mut errors).await);
                if ordered {
                    blocked = true;
                    break;
                }
            }
        }
        // Rolling update, one pod at a time once all are healthy.
        let strategy = &spec["updateStrategy"];
        let rolling = strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
        if !blocked && rolling && condemned.is_empty() && wanted.values().all(|p| healthy(p)) {
            let partition = strategy["rollingUpdate"]["partition"].as_i64().unwrap_or(0);
            let stale = wanted.iter().rev().find(|(o, p)| {
                **o >= partition && p["metadata"]["labels"][REVISION_LABEL] != update_rev.as_str()
            });
            if let Some((_, pod)) = stale {
                last_rv = last_rv.max(self.delete(&sts, pod, &mut errors).await);
            }
        }
        if last_rv > 0 {
            self.pods.wait_for(last_rv, Duration::from_secs(10)).await;
        }
        self.update_status(&sts, &update_rev, &mut errors).await;
        match errors.first() {
            Some(err) => Err(format!("statefulset {key}: {} errors: {err}", errors.len())),
            None => Ok(()),
        }
    }

    /// The set as of its current revision (`status.currentRevision`) and
    /// that revision's name, when it differs from the update revision and
    /// its template is in the history.
    fn current_set(&self, sts: &Value, update_rev: &str) -> Option<(Value, String)> {
        let current = sts["status"]["currentRevision"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != update_rev)?;
        let revision = history::owned(&self.revisions, sts)
            .into_iter()
            .find(|r| name(r) == current)?;
        let mut set = sts.clone();
        set["spec"]["template"] = history::template_of(&revision);
        Some((set, current.to_owned()))
    }

    /// Creates the claims of ordinal `o`, then its pod.
    async fn create(&self, sts: &Value, o: i64, revision: &str) -> Result<i64, String> {
        let pod = pod_for(sts, o, revision);
        let claims_path = format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims",
            namespace(sts)
        );
        for claim in claims_for(sts, name(&pod)) {
            match self.client.post(&claims_path, &claim).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {} Pod {} in StatefulSet {} success",
                        name(&claim),
                        name(&pod),
                        name(sts)
                    );
                    self.event(sts, "SuccessfulCreate", &message).await;
                }
                Err(err) if err.is_conflict() => {}
                Err(err) => return Err(format!("creating claim {}: {err}", name(&claim))),
            }
        }
        match self
            .client
            .post(&PODS.collection(Some(namespace(sts))), &pod)
            .await
        {
            Ok(created) => {
                let message = format!(
                    "create Pod {} in StatefulSet {} successful",
                    name(&pod),
                    name(sts)
                );
                self.event(sts, "SuccessfulCreate", &message).await;
                Ok(rv_of(&created))
            }
            Err(err) if err.is_conflict() => Ok(0),
            Err(err) => Err(format!("creating pod {}: {err}", name(&pod))),
        }
    }

    async fn delete(&self, sts: &Value, pod: &Value, errors: &mut Vec<String>) -> i64 {
        match self
            .client
            .delete(&PODS.path(&key_of(pod)), &Value::Null)
            .await
        {
            Ok(deleted) => {
                let message = format!(
                    "delete Pod {} in StatefulSet {} successful",
                    name(pod),
                    name(sts)
                );
                self.event(sts, "SuccessfulDelete", &message).await;
                rv_of(&deleted).max(1)
            }
            Err(err) if err.is_not_found() => 0,
            Err(err) => {
                errors.push(format!("deleting pod {}: {err}", name(pod)));
                0
            }
        }
    }

    async fn event(&self, sts: &Value, reason: &str, message: &str) {
        let source = "statefulset-controller";
        let kind = ("apps/v1", "StatefulSet");
        events::record(
            &self.client,
            source,
            kind,
            sts,
            Type::Normal,
            reason,
            message,
        )
        .await;
    }

    async fn update_status(&self, sts: &Value, update_rev: &str, errors: &mut Vec<String>) {
        let Some(sts_now) = self.sets.get(&key_of(sts)) else {
            return;
        };
        let pods: Vec<Arc<Value>> = self
            .pods
            .in_namespace(namespace(sts))
            .into_iter()
            .filter(|p| controlled_by(p, uid(sts)) && !is_deleting(p))
            .collect();
        let min_ready = sts["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let current = &sts_now["status"];
        let mut current_rev = current["currentRevision"]
            .as_str()
            .filter(|r| !r.is_empty())
            .unwrap_or(update_rev)
            .to_owned();
        let revision_of = |p: &Value| {
            p["metadata"]["labels"][REVISION_LABEL]
                .as_str()
                .map(str::to_owned)
        };
        let count = |f: &dyn Fn(&Value) -> bool| pods.iter().filter(|p| f(p)).count() as i64;
        let replicas = pods.len() as i64;
        let ready = count(&|p| pod_ready(p));
        let updated = count(&|p| revision_of(p).as_deref() == Some(update_rev));
        let want = sts["spec"]["replicas"].as_i64().unwrap_or(1);
        if updated == replicas && ready == replicas && replicas == want {
            current_rev = update_rev.to_owned();
        }
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": count(&|p| pod_available(p, min_ready)),
            "currentReplicas": count(&|p| revision_of(p).as_deref() == Some(current_rev.as_str())),
            "updatedReplicas": updated,
            "currentRevision": current_rev,
            "updateRevision": update_rev,
            "collisionCount": current["collisionCount"].as_i64().unwrap_or(0),
        });
        let same = status
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| &current[k] == v || (v == 0 && current[k].is_null()));
        if same {
            return;
        }
        let path = format!("{}/status", STATEFULSETS.path(&key_of(sts)));
        match self
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => errors.push(format!("status: {err}")),
        }
        if min_ready > 0 {
            self.queue
                .add_after(key_of(sts), Duration::from_secs(min_ready as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_claims_are_named_by_ordinal() {
        let sts = json!({"metadata": {"name": "db", "namespace": "t", "uid": "u"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        let pod = pod_for(&sts, 2, "db-abc");
        assert_eq!(name(&pod), "db-2");
        assert_eq!(pod["spec"]["hostname"], "db-2");
        assert_eq!(pod["spec"]["subdomain"], "db");
        assert_eq!(pod["metadata"]["labels"][POD_INDEX_LABEL], "2");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-db-2"
        );
        assert_eq!(ordinal("db", &pod), Some(2));
        assert_eq!(ordinal("d", &pod), None);
        let claims = claims_for(&sts, "db-2");
        assert_eq!(name(&claims[0]), "data-db-2");
        assert_eq!(claims[0]["metadata"]["labels"]["app"], "db");
    }
}
