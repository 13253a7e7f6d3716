//! Namespace termination, as upstream's NamespaceLifecycle admission and
//! namespace controller do it.
//!
//! - A namespace being deleted is marked `Terminating` at once (by
//!   [`super::delete`]) and its contents are deleted in the same request,
//!   their finalizers and pods' grace periods respected; if some remain, a
//!   background task checks every second until they are gone (a pod
//!   waits for its node agent's final delete). Then the `kubernetes`
//!   finalizer is dropped and the namespace deleted.
//! - Creates in a terminating namespace are 403 Forbidden with the
//!   `NamespaceTerminating` cause ([`forbid_terminating`]).
//!
//! # Current limitations
//! - A cleanup interrupted by a restart resumes when the server starts
//!   again ([`resume_terminating_namespaces`]). The background task holds
//!   only the store: an object that slipped into the namespace while it
//!   was being marked is deleted there without its `after_delete`.

use std::time::Duration;

use serde_json::Value;
use tracing::warn;

use super::Api;
use super::delete::{ATTEMPTS, NAMESPACE_FINALIZER, Outcome, delete_object};
use super::handlers::{from_kv, to_value_bytes};
use super::options::{DeleteOptions, Propagation, finalizers};
use super::resources::ResourceType;
use super::status::{ApiError, Cause, FieldCauses};
use super::strategy;
use crate::store::{Store, StoreError};

/// 403 when `namespace` is being deleted: nothing new may be created in
/// it (upstream's NamespaceLifecycle admission, with its cause).
pub(super) fn forbid_terminating(
    namespace: &Value,
    rt: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    if namespace["metadata"].get("deletionTimestamp").is_none()
        && namespace["status"]["phase"] != "Terminating"
    {
        return Ok(());
    }
    let ns = namespace["metadata"]["name"].as_str().unwrap_or("");
    let why =
        format!("unable to create new content in namespace {ns} because it is being terminated");
    let mut err = ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", rt.plural));
    err.details = Some((rt.plural.to_owned(), name.to_owned()));
    err.fields = Some(Box::new(FieldCauses {
        group: rt.group.to_owned(),
        causes: vec![Cause {
            reason: "NamespaceTerminating",
            message: why,
            field: "metadata.namespace".into(),
        }],
        ..FieldCauses::default()
    }));
    Err(err)
}

/// Restarts the cleanup of namespaces left `Terminating` by a restart.
pub async fn resume_terminating_namespaces(api: &Api) {
    let snapshot = api.snapshot();
    let Some(namespaces) = snapshot.registry.find("", "v1", "namespaces") else {
        return;
    };
    let page = match api
        .store
        .list(&namespaces.key_prefix(None), None, None, None)
        .await
    {
        Ok(page) => page,
        Err(err) => {
            warn!(?err, "listing namespaces to resume their deletion");
            return;
        }
    };
    for kv in &page.items {
        if let Ok(ns) = from_kv(kv)
            && ns["metadata"].get("deletionTimestamp").is_some()
            && let Some(name) = ns["metadata"]["name"].as_str()
        {
            terminate(api, name).await;
        }
    }
}

/// Deletes a terminating namespace's contents now, then the namespace if
/// nothing is left; otherwise leaves the rest to a background task.
pub(super) async fn terminate(api: &Api, namespace: &str) {
    let snapshot = api.snapshot();
    let kinds: Vec<ResourceType> = snapshot
        .registry
        .all()
        .iter()
        .filter(|rt| rt.namespaced)
        .cloned()
        .collect();
    match empty_namespace(&api.store, Some(api), &kinds, namespace).await {
        Ok(true) => {
            if let Some(namespaces) = snapshot.registry.find("", "v1", "namespaces") {
                let key = namespaces.key(None, namespace);
                finalize_with_retries(&api.store, &key, namespace).await;
            }
        }
        Ok(false) => spawn_namespace_cleanup(api, namespace),
        Err(err) => {
            warn!(?err, %namespace, "deleting a namespace's contents");
            spawn_namespace_cleanup(api, namespace);
        }
    }
}

async fn finalize_with_retries(store: &Store, key: &str, namespace: &str) {
    for _ in 0..ATTEMPTS {
        match finalize_namespace(store, key).await {
            Ok(()) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => {
                warn!(?err, %namespace, "finalizing a namespace");
                return;
            }
        }
    }
}

/// Waits in the background for a terminating namespace's remaining
/// contents to go (deleting any that are not marked yet), then deletes the
/// namespace (upstream's namespace controller does this).
fn spawn_namespace_cleanup(api: &Api, namespace: &str) {
    let store = api.store.clone();
    let snapshot = api.snapshot();
    let kinds: Vec<ResourceType> = snapshot
        .registry
        .all()
        .iter()
        .filter(|rt| rt.namespaced)
        .cloned()
        .collect();
    let Some(namespaces) = snapshot.registry.find("", "v1", "namespaces").cloned() else {
        return;
    };
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match empty_namespace(&store, None, &kinds, &namespace).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => warn!(?err, %namespace, "deleting a namespace's contents"),
            }
        }
        let key = namespaces.key(None, &namespace);
        finalize_with_retries(&store, &key, &namespace).await;
    });
}

/// Deletes what is in `namespace` (with `api`, through each kind's
/// `after_delete`); true once nothing is left.
async fn empty_namespace(
    store: &Store,
    api: Option<&Api>,
    kinds: &[ResourceType],
    namespace: &str,
) -> Result<bool, StoreError> {
    let options = DeleteOptions {
        propagation: Some(Propagation::Background),
        ..DeleteOptions::default()
    };
    let mut left = 0;
    for rt in kinds {
        let page = store
            .list(&rt.key_prefix(Some(namespace)), None, None, None)
            .await?;
        for kv in &page.items {
            let Ok(obj) = from_kv(kv) else { continue };
            match delete_object(store, rt, kv, obj, &options).await {
                Ok(Outcome::Deleted(obj)) => {
                    if let Some(api) = api {
                        strategy::after_delete(api, rt, &obj).await;
                    }
                }
                Ok(Outcome::Pending(_)) => left += 1,
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => left += 1,
                Err(err) => return Err(err),
            }
        }
    }
    Ok(left == 0)
}

/// Drops the namespace finalizer; deletes the namespace when no other
/// finalizer holds it.
async fn finalize_namespace(store: &Store, key: &str) -> Result<(), StoreError> {
    let Some(kv) = store.get(key).await? else {
        return Ok(());
    };
    let Ok(mut ns) = from_kv(&kv) else {
        return Ok(());
    };
    if finalizers(&ns).is_empty() {
        store.delete(key, Some(kv.mod_revision)).await?;
        return Ok(());
    }
    if let Some(list) = ns["spec"]["finalizers"].as_array_mut() {
        list.retain(|f| f != NAMESPACE_FINALIZER);
    }
    if let Some(meta) = ns["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    store
        .update(key, to_value_bytes(&ns), kv.mod_revision)
        .await?;
    Ok(())
}
