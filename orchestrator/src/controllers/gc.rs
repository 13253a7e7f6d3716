//! Garbage collection by owner references, and the `default`
//! ServiceAccount of every namespace.
//!
//! Over the reflected kinds (Deployments, ReplicaSets, DaemonSets,
//! StatefulSets, CronJobs, Jobs, Pods, ControllerRevisions), as
//! upstream's garbage collector:
//! - Background: a dependent all of whose owners are gone (confirmed with a
//!   live GET: absent, or another uid) is deleted; owner references to
//!   owners that are gone while others remain are removed.
//! - Orphan: an owner being deleted with the `orphan` finalizer has its
//!   references removed from every dependent, then the finalizer.
//! - Foreground: an owner being deleted with `foregroundDeletion` has its
//!   dependents deleted; once none is left the finalizer is removed (and
//!   the API then deletes the owner).
//!
//! # Current limitations
//! - Only the reflected workload kinds are known as owners and as
//!   dependents; owners of other kinds (custom kinds) are assumed to exist.

use std::sync::Arc;

use serde_json::{Value, json};

use super::client::Client;
use super::objects::{is_deleting, name, uid};
use super::queue::Queue;
use super::reflector::{
    CRONJOBS, DAEMONSETS, DEPLOYMENTS, JOBS, Kind, REPLICASETS, Reflector, STATEFULSETS, key_of,
};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// The garbage collector's state.
#[derive(Debug, Clone)]
pub struct Collector {
    client: Client,
    /// The reflected kinds, dependents and owners alike.
    kinds: Vec<Arc<Reflector>>,
    namespaces: Arc<Reflector>,
    queue: Queue,
}

/// The kind an owner reference names, if reflected here.
fn owner_kind(reference: &Value) -> Option<Kind> {
    match (reference["apiVersion"].as_str(), reference["kind"].as_str()) {
        (Some("apps/v1"), Some("Deployment")) => Some(DEPLOYMENTS),
        (Some("apps/v1"), Some("ReplicaSet")) => Some(REPLICASETS),
        (Some("apps/v1"), Some("DaemonSet")) => Some(DAEMONSETS),
        (Some("apps/v1"), Some("StatefulSet")) => Some(STATEFULSETS),
        (Some("batch/v1"), Some("Job")) => Some(JOBS),
        (Some("batch/v1"), Some("CronJob")) => Some(CRONJOBS),
        _ => None,
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

impl Collector {
    /// Registers the collector's handlers; `kinds` are the reflected kinds.
    pub fn new(
        client: Client,
        kinds: Vec<Arc<Reflector>>,
        namespaces: Arc<Reflector>,
    ) -> Collector {
        let queue = Queue::new();
        for (i, reflector) in kinds.iter().enumerate() {
            let (q, all) = (queue.clone(), kinds.clone());
            reflector.on_change(Box::new(move |old, new| {
                match new {
                    Some(obj) => {
                        let has_owner = !owner_refs(obj).is_empty();
                        let gc_finalizer = is_deleting(obj)
                            && finalizers(obj)
                                .iter()
                                .any(|f| *f == ORPHAN || *f == FOREGROUND);
                        if has_owner || gc_finalizer {
                            q.add(format!("{i}|{}", key_of(obj)));
                        }
                    }
                    None => {
                        let Some(gone) = old else { return };
                        // Its dependents, and an owner waiting for them.
                        let gone_uid = uid(gone);
                        for (j, r) in all.iter().enumerate() {
                            for dep in r.list(|o| {
                                owner_refs(o)
                                    .iter()
                                    .any(|x| x["uid"].as_str() == Some(gone_uid))
                            }) {
                                q.add(format!("{j}|{}", key_of(&dep)));
                            }
                        }
                        for reference in owner_refs(gone) {
                            if let Some(kind) = owner_kind(&reference)
                                && let Some(j) = all.iter().position(|r| r.kind() == kind)
                                && let Some(owner) = reference["name"].as_str()
                            {
                                let ns = gone["metadata"]["namespace"].as_str().unwrap_or("");
                                q.add(format!("{j}|{ns}/{owner}"));
                            }
                        }
                    }
                }
            }));
        }
        let q = queue.clone();
        namespaces.on_change(Box::new(move |old, new| {
            if let (None, Some(ns)) = (old, new) {
                q.add(format!("sa|{}", name(ns)));
            }
        }));
        Collector {
            client,
            kinds,
            namespaces,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self) {
        let caches: Vec<_> = self.kinds.iter().chain([&self.namespaces]).collect();
        self.queue
            .run_synced(&caches, 2, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, item: &str) -> Result<(), String> {
        let Some((tag, key)) = item.split_once('|') else {
            return Ok(());
        };
        if tag == "sa" {
            return self.default_service_account(key).await;
        }
        let Some(reflector) = tag.parse::<usize>().ok().and_then(|i| self.kinds.get(i)) else {
            return Ok(());
        };
        let Some(obj) = reflector.get(key) else {
            return Ok(());
        };
        if is_deleting(&obj) {
            let fins = finalizers(&obj);
            if fins.contains(&ORPHAN) {
                return self.orphan(reflector.kind(), &obj).await;
            }
            if fins.contains(&FOREGROUND) {
                return self.foreground(reflector.kind(), &obj).await;
            }
        }
        self.collect(reflector.kind(), &obj).await
    }

    /// Whether the owner a reference names still exists (asking the API).
    async fn owner_exists(&self, namespace: &str, reference: &Value) -> Result<bool, String> {
        let Some(kind) = owner_kind(reference) else {
            return Ok(true);
        };
        let owner = reference["name"].as_str().unwrap_or("");
        match self
            .client
            .get(&kind.path(&format!("{namespace}/{owner}")))
            .await
        {
            Ok(found) => Ok(uid(&found) == reference["uid"].as_str().unwrap_or("")),
            Err(err) if err.is_not_found() => Ok(false),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Background collection of one dependent.
    async fn collect(&self, kind: Kind, obj: &Value) -> Result<(), String> {
        let refs = owner_refs(obj);
        if refs.is_empty() {
            return Ok(());
        }
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
        let mut alive = Vec::new();
        for reference in &refs {
            if self.owner_exists(ns, reference).await? {
                alive.push(reference.clone());
            }
        }
        if alive.len() == refs.len() {
            return Ok(());
        }
        let path = kind.path(&key_of(obj));
        let result = if alive.is_empty() {
            if is_deleting(obj) {
                return Ok(());
            }
            tracing::debug!(object = %path, "owner gone: deleting");
            self.client
                .delete(&path, &json!({"propagationPolicy": "Background"}))
                .await
        } else {
            let patch = json!({"metadata": {
                "ownerReferences": alive,
                "resourceVersion": obj["metadata"]["resourceVersion"],
            }});
            self.client.merge_patch(&path, &patch).await
        };
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("collecting {path}: {err}")),
        }
    }

    fn dependents(&self, owner: &Value) -> Vec<(Kind, Arc<Value>)> {
        let owner_uid = uid(owner);
        self.kinds
            .iter()
            .flat_map(|r| {
                let kind = r.kind();
                r.list(|o| {
                    owner_refs(o)
                        .iter()
                        .any(|x| x["uid"].as_str() == Some(owner_uid))
                })
                .into_iter()
                .map(move |o| (kind, o))
            })
            .collect()
    }

    async fn orphan(&self, kind: Kind, owner: &Value) -> Result<(), String> {
        let owner_uid = uid(owner);
        for (dep_kind, dep) in self.dependents(owner) {
            let refs: Vec<Value> = owner_refs(&dep)
                .into_iter()
                .filter(|r| r["uid"].as_str() != Some(owner_uid))
                .collect();
            let patch = json!({"metadata": {"ownerReferences": refs}});
            match self
                .client
                .merge_patch(&dep_kind.path(&key_of(&dep)), &patch)
                .await
            {
                Ok(_) => {}
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(format!("orphaning {}: {err}", name(&dep))),
            }
        }
        self.remove_finalizer(kind, owner, ORPHAN).await
    }

    async fn foreground(&self, kind: Kind, owner: &Value) -> Result<(), String> {
        let dependents = self.dependents(owner);
        if dependents.is_empty() {
            return self.remove_finalizer(kind, owner, FOREGROUND).await;
        }
        for (dep_kind, dep) in dependents {
            if is_deleting(&dep) {
                continue;
            }
            let options = json!({"propagationPolicy": "Foreground"});
            match self
                .client
                .delete(&dep_kind.path(&key_of(&dep)), &options)
                .await
            {
                Ok(_) => {}
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(format!("deleting {}: {err}", name(&dep))),
            }
        }
        // Synced again when the last dependent's deletion is seen.
        Ok(())
    }

    async fn remove_finalizer(
        &self,
        kind: Kind,
        owner: &Value,
        finalizer: &str,
    ) -> Result<(), String> {
        let rest: Vec<&str> = finalizers(owner)
            .into_iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": owner["metadata"]["resourceVersion"],
        }});
        match self
            .client
            .merge_patch(&kind.path(&key_of(owner)), &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("finalizer of {}: {err}", name(owner))),
        }
    }

    /// Creates `default` in a new namespace.
    async fn default_service_account(&self, namespace: &str) -> Result<(), String> {
        if self
            .namespaces
            .get(namespace)
            .is_none_or(|ns| is_deleting(&ns))
        {
            return Ok(());
        }
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        });
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts");
        match self.client.post(&path, &sa).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_conflict() => Ok(()),
            // Terminating namespaces refuse creates.
            Err(err) if err.code == 403 || err.is_not_found() => Ok(()),
            Err(err) => Err(format!("default ServiceAccount in {namespace}: {err}")),
        }
    }
}
