//! The Deployment controller: one ReplicaSet per pod template, rolled
//! forward by the strategy, as upstream's `DeploymentController`.
//!
//! - The ReplicaSet of the current template is `<deployment>-<hash>`, its
//!   selector, labels and template carrying `pod-template-hash=<hash>` (a
//!   hash of the template and `status.collisionCount`). A template equal to
//!   an older ReplicaSet's (`kubectl rollout undo`) reuses that ReplicaSet.
//! - Revisions: the current ReplicaSet's `deployment.kubernetes.io/revision`
//!   is one more than every older one's, and the Deployment carries it too;
//!   the Deployment's other annotations (`kubernetes.io/change-cause`) are
//!   copied to it, which is what `kubectl rollout history` shows.
//! - `RollingUpdate`: the new ReplicaSet grows while the total stays within
//!   `replicas + maxSurge`; old ones shrink while at least
//!   `replicas - maxUnavailable` pods are available (unavailable old pods
//!   go first). `Recreate`: old ReplicaSets go to 0, and once their pods are
//!   gone the new one is scaled up.
//! - A paused Deployment only gets its status.
//! - Old ReplicaSets with no pods beyond `revisionHistoryLimit` (default
//!   10) are deleted once a rollout is complete.
//! - Status: replicas, updatedReplicas, readyReplicas, availableReplicas,
//!   unavailableReplicas, observedGeneration, and the `Available` and
//!   `Progressing` conditions (`ProgressDeadlineExceeded` after
//!   `progressDeadlineSeconds` without progress), which is what
//!   `kubectl rollout status` waits on.
//!
//! # Current limitations
//! - Scaling during a rollout is not proportional across ReplicaSets.
//! - A hash collision with a foreign ReplicaSet is reported, not resolved by
//!   bumping `collisionCount`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::Client;
use super::objects::{
    controlled_by, controller_ref, is_deleting, name, namespace, owner_ref, selector_matches, uid,
};
use super::queue::Queue;
use super::reflector::{DEPLOYMENTS, REPLICASETS, Reflector, key_of};

mod rules;

pub use rules::template_hash;
use rules::{
    available, complete, condition, copied_annotations, limits, other_refs, revision,
    same_template, spec_replicas, timed_out,
};

/// The revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the ReplicaSets of one Deployment apart.
pub const HASH_LABEL: &str = "pod-template-hash";
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX,
];

/// The controller's state.
#[derive(Debug, Clone)]
pub struct Deployments {
    client: Client,
    deployments: Arc<Reflector>,
    sets: Arc<Reflector>,
    /// Keys of Deployments to sync.
    pub queue: Queue,
}

/// What a rollout step did.
struct Step {
    progressed: bool,
    created: bool,
}

impl Deployments {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(client: Client, deployments: Arc<Reflector>, sets: Arc<Reflector>) -> Deployments {
        let queue = Queue::new();
        let q = queue.clone();
        deployments.on_change(Box::new(move |old, new| {
            if let Some(obj) = new.or(old) {
                q.add(key_of(obj));
            }
        }));
        let (q, ds) = (queue.clone(), deployments.clone());
        sets.on_change(Box::new(move |old, new| {
            for rs in [old, new].into_iter().flatten() {
                match controller_ref(rs) {
                    Some(r) if r["kind"] == "Deployment" => {
                        if let Some(owner) = r["name"].as_str() {
                            q.add(format!("{}/{owner}", namespace(rs)));
                        }
                    }
                    Some(_) => {}
                    None => {
                        for d in ds.in_namespace(namespace(rs)) {
                            if selector_matches(&d["spec"]["selector"], &rs["metadata"]["labels"]) {
                                q.add(key_of(&d));
                            }
                        }
                    }
                }
            }
        }));
        Deployments {
            client,
            deployments,
            sets,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.deployments, &self.sets];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(d) = self.deployments.get(key) else {
            return Ok(());
        };
        if is_deleting(&d) {
            return Ok(());
        }
        let mut sets = self.claim(&d).await?;
        let template = &d["spec"]["template"];
        let new_index = sets.iter().position(|rs| same_template(rs, template));
        let mut step = Step {
            progressed: false,
            created: false,
        };
        if d["spec"]["paused"].as_bool() != Some(true) {
            let recreate = d["spec"]["strategy"]["type"] == "Recreate";
            step = if recreate {
                self.recreate(&d, &mut sets, new_index).await?
            } else {
                self.rolling(&d, &mut sets, new_index).await?
            };
        }
        let new_rs = sets.iter().find(|rs| same_template(rs, template)).cloned();
        let old: Vec<&Value> = sets
            .iter()
            .filter(|rs| !same_template(rs, template))
            .collect();
        let status = self.status(&d, new_rs.as_ref(), &sets, &step);
        if complete(&d, &status) {
            self.cleanup(&d, &old).await?;
        }
        self.write_status(&d, status).await
    }

    /// The Deployment's ReplicaSets, adopting orphans that match its
    /// selector and releasing its own that no longer do.
    async fn claim(&self, d: &Value) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for rs in self.sets.in_namespace(namespace(d)) {
            let matches = selector_matches(&d["spec"]["selector"], &rs["metadata"]["labels"]);
            if controlled_by(&rs, uid(d)) {
                if matches {
                    out.push((*rs).clone());
                } else {
                    let refs = other_refs(&rs);
                    self.patch_rs(&rs, json!({"metadata": {"ownerReferences": refs}}))
                        .await?;
                }
            } else if matches && controller_ref(&rs).is_none() && !is_deleting(&rs) {
                let mut refs = other_refs(&rs);
                refs.push(owner_ref("apps/v1", "Deployment", d));
                let adopted = self
                    .patch_rs(&rs, json!({"metadata": {"ownerReferences": refs}}))
                    .await?;
                out.push(adopted);
            }
        }
        Ok(out)
    }

    async fn patch_rs(&self, rs: &Value, patch: Value) -> Result<Value, String> {
        self.client
            .merge_patch(&REPLICASETS.path(&key_of(rs)), &patch)
            .await
            .map_err(|e| format!("ReplicaSet {}: {e}", name(rs)))
    }

    /// The ReplicaSet of the current template, created if missing, with its
    /// revision and annotations brought up to date.
    async fn new_replica_set(
        &self,
        d: &Value,
        sets: &mut Vec<Value>,
        index: Option<usize>,
        replicas: i64,
    ) -> Result<(usize, bool), String> {
        let max_old = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != index)
            .map(|(_, rs)| revision(rs))
            .max()
            .unwrap_or(0);
        let mut annotations = copied_annotations(d);
        if let Some(i) = index {
            let rs = &sets[i];
            let current = revision(rs);
            let wanted = if current > max_old {
                current
            } else {
                max_old + 1
            };
            annotations.insert(REVISION.into(), wanted.to_string().into());
            let stale = annotations
                .iter()
                .any(|(k, v)| rs["metadata"]["annotations"].get(k) != Some(v));
            if stale {
                let patch = json!({"metadata": {"annotations": annotations}});
                sets[i] = self.patch_rs(rs, patch).await?;
            }
            self.sync_revision(d, wanted).await?;
            return Ok((i, false));
        }
        let hash = template_hash(
            &d["spec"]["template"],
            d["status"]["collisionCount"].as_i64(),
        );
        let mut template = d["spec"]["template"].clone();
        template["metadata"]["labels"][HASH_LABEL] = hash.clone().into();
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = hash.clone().into();
        let rs_name = format!("{}-{hash}", name(d));
        let revision = max_old + 1;
        annotations.insert(REVISION.into(), revision.to_string().into());
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": namespace(d),
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [owner_ref("apps/v1", "Deployment", d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        let created = self
            .client
            .post(&REPLICASETS.collection(Some(namespace(d))), &rs)
            .await
            .map_err(|e| format!("creating ReplicaSet {rs_name}: {e}"))?;
        self.sync_revision(d, revision).await?;
        sets.push(created);
        Ok((sets.len() - 1, true))
    }

    /// Sets the Deployment's revision annotation.
    async fn sync_revision(&self, d: &Value, revision: i64) -> Result<(), String> {
        let revision = revision.to_string();
        if d["metadata"]["annotations"][REVISION].as_str() == Some(revision.as_str()) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        self.client
            .merge_patch(&DEPLOYMENTS.path(&key_of(d)), &patch)
            .await
            .map(|_| ())
            .map_err(|e| format!("revision of {}: {e}", name(d)))
    }

    async fn scale(&self, d: &Value, rs: &mut Value, replicas: i64) -> Result<bool, String> {
        if rs["spec"]["replicas"].as_i64() == Some(replicas) {
            return Ok(false);
        }
        let (want, surge, _) = limits(d);
        let patch = json!({
            "metadata": {"annotations": {DESIRED: want.to_string(), MAX: (want + surge).to_string()}},
            "spec": {"replicas": replicas},
        });
        *rs = self.patch_rs(rs, patch).await?;
        Ok(true)
    }

    async fn rolling(
        &self,
        d: &Value,
        sets: &mut Vec<Value>,
        index: Option<usize>,
    ) -> Result<Step, String> {
        let (want, surge, unavailable) = limits(d);
        let (i, created) = self.new_replica_set(d, sets, index, 0).await?;
        let mut progressed = created;
        // Scale the new ReplicaSet up (or down to the wanted size).
        let total: i64 = sets.iter().map(spec_replicas).sum();
        let current = spec_replicas(&sets[i]);
        let target = if current > want {
            want
        } else {
            (want + surge - total + current).clamp(current, want)
        };
        let mut rs = sets[i].clone();
        progressed |= self.scale(d, &mut rs, target).await?;
        sets[i] = rs;
        // Scale old ReplicaSets down while enough pods stay available.
        let total: i64 = sets.iter().map(spec_replicas).sum();
        let min_available = want - unavailable;
        let new_unavailable = spec_replicas(&sets[i]) - available(&sets[i]);
        let mut budget = total - min_available - new_unavailable;
        let mut old: Vec<usize> = (0..sets.len())
            .filter(|j| *j != i && spec_replicas(&sets[*j]) > 0)
            .collect();
        old.sort_by_key(|j| revision(&sets[*j]));
        // Unavailable old pods first: removing them costs no availability.
        for j in &old {
            if budget <= 0 {
                break;
            }
            let unhealthy = spec_replicas(&sets[*j]) - available(&sets[*j]);
            let cut = unhealthy.min(budget).max(0);
            if cut > 0 {
                let mut rs = sets[*j].clone();
                let replicas = spec_replicas(&rs) - cut;
                progressed |= self.scale(d, &mut rs, replicas).await?;
                sets[*j] = rs;
                budget -= cut;
            }
        }
        let all_available: i64 = sets.iter().map(available).sum();
        let mut budget = (all_available - min_available).min(budget.max(0));
        for j in &old {
            if budget <= 0 {
                break;
            }
            let cut = spec_replicas(&sets[*j]).min(budget);
            if cut > 0 {
                let mut rs = sets[*j].clone();
                let replicas = spec_replicas(&rs) - cut;
                progressed |= self.scale(d, &mut rs, replicas).await?;
                sets[*j] = rs;
                budget -= cut;
            }
        }
        Ok(Step {
            progressed,
            created,
        })
    }

    async fn recreate(
        &self,
        d: &Value,
        sets: &mut Vec<Value>,
        index: Option<usize>,
    ) -> Result<Step, String> {
        let mut progressed = false;
        for (j, rs) in sets.iter_mut().enumerate() {
            if Some(j) != index && spec_replicas(rs) > 0 {
                progressed |= self.scale(d, rs, 0).await?;
            }
        }
        let old_running = sets
            .iter()
            .enumerate()
            .any(|(j, rs)| Some(j) != index && rs["status"]["replicas"].as_i64().unwrap_or(0) > 0);
        if progressed || old_running {
            return Ok(Step {
                progressed,
                created: false,
            });
        }
        let (want, _, _) = limits(d);
        let (i, created) = self.new_replica_set(d, sets, index, want).await?;
        let mut rs = sets[i].clone();
        progressed |= self.scale(d, &mut rs, want).await?;
        sets[i] = rs;
        Ok(Step {
            progressed: progressed || created,
            created,
        })
    }

    /// Deletes old, empty ReplicaSets beyond the history limit.
    async fn cleanup(&self, d: &Value, old: &[&Value]) -> Result<(), String> {
        let limit = d["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty: Vec<&&Value> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs["status"]["replicas"].as_i64().unwrap_or(0) == 0
                    && !is_deleting(rs)
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(rs));
        let surplus = empty.len() - limit;
        for rs in empty.into_iter().take(surplus) {
            match self
                .client
                .delete(&REPLICASETS.path(&key_of(rs)), &Value::Null)
                .await
            {
                Ok(_) => {}
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(format!("deleting ReplicaSet {}: {err}", name(rs))),
            }
        }
        Ok(())
    }

    fn status(&self, d: &Value, new_rs: Option<&Value>, sets: &[Value], step: &Step) -> Value {
        let (want, _, unavailable) = limits(d);
        let sum = |field: &str| -> i64 {
            sets.iter()
                .map(|rs| rs["status"][field].as_i64().unwrap_or(0))
                .sum()
        };
        let available_total = sum("availableReplicas");
        let updated = new_rs.map_or(0, |rs| rs["status"]["replicas"].as_i64().unwrap_or(0));
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": sum("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available_total,
            "unavailableReplicas": (want - available_total).max(0),
        });
        if let Some(count) = d["status"]["collisionCount"].as_i64() {
            status["collisionCount"] = count.into();
        }
        let old = d["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |kind: &str| old.iter().find(|c| c["type"] == kind).cloned();
        let available = if available_total >= want - unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            )
        };
        let rs_name = new_rs.map_or("", |rs| name(rs));
        let previous = find("Progressing");
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        let progressing = if complete(d, &status) {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else if step.created {
            (
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
            )
        } else if !step.progressed
            && previous.as_ref().is_some_and(|c| {
                c["reason"] == "ProgressDeadlineExceeded" || timed_out(c, deadline)
            })
        {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        };
        if progressing.1 == "ReplicaSetUpdated" || progressing.1 == "NewReplicaSetCreated" {
            // Check the deadline again once it may have passed.
            self.queue
                .add_after(key_of(d), Duration::from_secs(deadline.max(1) as u64 + 1));
        }
        let refresh = step.progressed && progressing.1 == "ReplicaSetUpdated";
        status["conditions"] = json!([
            condition(find("Available"), "Available", available, false),
            condition(previous, "Progressing", progressing, refresh),
        ]);
        status
    }

    async fn write_status(&self, d: &Value, status: Value) -> Result<(), String> {
        if d["status"] == status {
            return Ok(());
        }
        let path = format!("{}/status", DEPLOYMENTS.path(&key_of(d)));
        match self
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("status of {}: {err}", name(d))),
        }
    }
}
