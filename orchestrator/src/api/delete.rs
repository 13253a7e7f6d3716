//! Deletes as upstream's generic registry does them: `DeleteOptions`
//! (preconditions, propagation, dryRun), finalizers, `deletecollection`,
//! and namespace termination.
//!
//! - An object with finalizers is not removed: it gets `deletionTimestamp`
//!   (and `deletionGracePeriodSeconds: 0`) and stays until an update
//!   removes its last finalizer; that update deletes it ([`guard_update`]).
//!   While it is being deleted, updates may not add finalizers.
//! - `propagationPolicy=Orphan` adds the `orphan` finalizer, `Foreground`
//!   adds `foregroundDeletion` (and `Background` removes both), as
//!   upstream does before the garbage collector handles them. Cairn has no
//!   garbage collector yet (the controllers' issue), so such an object
//!   stays until a client removes the finalizer.
//! - `preconditions` (uid, resourceVersion) that do not match are a 409.
//! - The answer is the object while it is pending, and once it is gone a
//!   `Status` `Success` naming it, or the object for the kinds upstream
//!   returns it for ([`RETURNS_DELETED_OBJECT`]).
//! - A namespace is marked `Terminating` at once and its contents are
//!   deleted in the same request (their finalizers respected); if
//!   finalizers hold some, a background task checks every second until
//!   they are gone. Then the `kubernetes` finalizer is dropped and the
//!   namespace deleted. Creates in a terminating namespace are 403
//!   Forbidden with the `NamespaceTerminating` cause.
//! - Every object actually removed goes through the kind's
//!   [`strategy::after_delete`] (a Service's ClusterIP is released).
//!
//! # Current limitations
//! - `gracePeriodSeconds` is parsed but deletes are immediate: graceful
//!   deletion only matters for pods, which the node agent will drive.
//! - A namespace cleanup interrupted by a restart resumes when the server
//!   starts again ([`resume_terminating_namespaces`]). The background task
//!   holds only the store: an object that slipped into the namespace while
//!   it was being marked is deleted there without its `after_delete`.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{HeaderMap, Response};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::handlers::{Target, from_kv, read_body, to_value_bytes};
use super::options::{DeleteOptions, Propagation, finalizers};
use super::query::Query;
use super::resources::ResourceType;
use super::selector::Filter;
use super::status::{ApiError, Cause, FieldCauses};
use super::strategy;
use super::{Api, Body, json_response};
use crate::store::{KeyValue, Store, StoreError};

/// Kinds whose delete answers with the deleted object, not a `Status`
/// (`ReturnDeletedObject` in upstream's registries), by plural.
pub const RETURNS_DELETED_OBJECT: &[&str] =
    &["pods", "serviceaccounts", "storageclasses", "namespaces"];

/// The finalizer of namespaces (`spec.finalizers`), removed once the
/// namespace's contents are gone.
const NAMESPACE_FINALIZER: &str = "kubernetes";
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// How often a delete that raced a write is tried again.
const ATTEMPTS: usize = 5;

/// What a delete did to one object.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Gone; the object as it was last stored.
    Deleted(Value),
    /// Still there, being deleted (finalizers, a terminating namespace).
    Pending(Value),
}

/// `DELETE` of one object.
pub(super) async fn delete(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let body = read_body(body).await?;
    let options = DeleteOptions::from_request(query, headers, &body)?;
    let key = rt.key(target.namespace.as_deref(), name);
    let outcome = delete_named(api, rt, &key, name, &options).await?;
    Ok(respond(rt, outcome))
}

/// Deletes the object at `key` with `options` (finalizers respected),
/// retrying when it races a write; what the `DELETE` of one object and a
/// pod eviction do.
pub(super) async fn delete_named(
    api: &Api,
    rt: &ResourceType,
    key: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Outcome, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let kv = match api.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Err(ApiError::not_found(rt.plural, name)),
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
        };
        let obj = from_kv(&kv)?;
        check_preconditions(options, &obj, rt, name)?;
        match delete_object(&api.store, rt, &kv, obj, options).await {
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. })
                if attempt < ATTEMPTS =>
            {
                debug!(%key, attempt, "delete raced a write; trying again");
            }
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
            Ok(outcome) => {
                if !options.dry_run {
                    match &outcome {
                        Outcome::Deleted(obj) => strategy::after_delete(api, rt, obj).await,
                        Outcome::Pending(_) if rt.kind == "Namespace" => {
                            terminate_namespace(api, name).await;
                        }
                        Outcome::Pending(_) => {}
                    }
                }
                return Ok(outcome);
            }
        }
    }
}

/// `DELETE` of a collection: every object the selectors match, each as
/// one delete; answers with the list of what was deleted (or is pending).
pub(super) async fn delete_collection(
    api: &Api,
    target: &Target<'_>,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let body = read_body(body).await?;
    let options = DeleteOptions::from_request(query, headers, &body)?;
    let filter = Filter::from_query(query, rt)?;
    let page = api
        .store
        .list(&target.prefix(), None, None, None)
        .await
        .map_err(|err| ApiError::from_store(err, rt.plural, ""))?;
    let mut items = Vec::new();
    for kv in &page.items {
        let obj = from_kv(kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        match delete_object(&api.store, rt, kv, obj, &options).await {
            Ok(Outcome::Deleted(obj)) => {
                if !options.dry_run {
                    strategy::after_delete(api, rt, &obj).await;
                }
                items.push(obj);
            }
            Ok(Outcome::Pending(obj)) => {
                if rt.kind == "Namespace" && !options.dry_run {
                    terminate_namespace(api, &name).await;
                }
                items.push(obj);
            }
            // Deleted or changed meanwhile: as upstream, skip it.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(err) => return Err(ApiError::from_store(err, rt.plural, &name)),
        }
    }
    let list = json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version,
        "metadata": {"resourceVersion": page.revision.to_string()},
        "items": items,
    });
    Ok(json_response(200, &list))
}

fn respond(rt: &ResourceType, outcome: Outcome) -> Response<Body> {
    match outcome {
        Outcome::Pending(obj) => json_response(200, &obj),
        Outcome::Deleted(obj) if RETURNS_DELETED_OBJECT.contains(&rt.plural) => {
            json_response(200, &obj)
        }
        Outcome::Deleted(obj) => {
            let meta = &obj["metadata"];
            let status = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": meta["name"],
                    "group": rt.group,
                    "kind": rt.plural,
                    "uid": meta["uid"],
                },
            });
            json_response(200, &status)
        }
    }
}

/// 409 when `preconditions` name another uid or resourceVersion.
fn check_preconditions(
    options: &DeleteOptions,
    obj: &Value,
    rt: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    let meta = &obj["metadata"];
    let failed = |message: String| {
        let mut err = ApiError::conflict(rt.plural, name);
        err.message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {message}",
            rt.plural
        );
        err
    };
    if let Some(uid) = &options.uid
        && meta["uid"].as_str() != Some(uid)
    {
        return Err(failed(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            meta["uid"].as_str().unwrap_or("")
        )));
    }
    if let Some(rv) = &options.resource_version
        && meta["resourceVersion"].as_str() != Some(rv)
    {
        return Err(failed(format!(
            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in meta: {}",
            meta["resourceVersion"].as_str().unwrap_or("")
        )));
    }
    Ok(())
}

/// The finalizers after a delete with `propagation`, as upstream's
/// `deletionFinalizersForGarbageCollection`: the GC finalizers are
/// replaced by the one the policy asks for (none for Background); without
/// a policy they stay as they are.
fn finalizers_for(current: &[String], propagation: Option<Propagation>) -> Vec<String> {
    let Some(propagation) = propagation else {
        return current.to_vec();
    };
    let mut out: Vec<String> = current
        .iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .cloned()
        .collect();
    match propagation {
        Propagation::Orphan => out.push(ORPHAN.into()),
        Propagation::Foreground => out.push(FOREGROUND.into()),
        Propagation::Background => {}
    }
    out
}

/// Deletes one object read at `kv`'s revision, or marks it as being
/// deleted when finalizers hold it. Store conflicts are for the caller to
/// retry.
async fn delete_object(
    store: &Store,
    rt: &ResourceType,
    kv: &KeyValue,
    mut obj: Value,
    options: &DeleteOptions,
) -> Result<Outcome, StoreError> {
    let current = finalizers(&obj);
    let wanted = finalizers_for(&current, options.propagation);
    let namespace_pending = rt.kind == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    if wanted.is_empty() && !namespace_pending {
        if options.dry_run {
            return Ok(Outcome::Deleted(obj));
        }
        let last = store.delete(&kv.key, Some(kv.mod_revision)).await?;
        return Ok(Outcome::Deleted(from_kv(&last).unwrap_or(obj)));
    }
    let meta = obj["metadata"].as_object_mut();
    let Some(meta) = meta else {
        return Ok(Outcome::Pending(obj));
    };
    let marked = meta.contains_key("deletionTimestamp");
    if !marked {
        meta.insert("deletionTimestamp".into(), super::handlers::now().into());
        meta.insert("deletionGracePeriodSeconds".into(), 0.into());
    }
    if wanted != current {
        meta.insert("finalizers".into(), json!(wanted));
    }
    if namespace_pending {
        obj["status"]["phase"] = "Terminating".into();
    }
    if (marked && wanted == current) || options.dry_run {
        return Ok(Outcome::Pending(obj));
    }
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let revision = store
        .update(&kv.key, to_value_bytes(&obj), kv.mod_revision)
        .await?;
    obj["metadata"]["resourceVersion"] = revision.to_string().into();
    Ok(Outcome::Pending(obj))
}

/// Checks an update of an object against its `stored` state: the deletion
/// fields stay as stored (a terminating namespace stays `Terminating`),
/// and an object being deleted gains no finalizer.
/// Returns true when the update removes the last finalizer of an object
/// being deleted: the caller deletes it instead of storing it.
pub(super) fn guard_update(
    rt: &ResourceType,
    name: &str,
    stored: &Value,
    obj: &mut Value,
) -> Result<bool, ApiError> {
    let deleting = stored["metadata"].get("deletionTimestamp").is_some();
    if let Some(meta) = obj["metadata"].as_object_mut() {
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            match stored["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
    }
    if !deleting {
        return Ok(false);
    }
    if rt.kind == "Namespace" {
        // Defaulting would make it Active again.
        obj["status"]["phase"] = "Terminating".into();
    }
    let old = finalizers(stored);
    let added: Vec<String> = finalizers(obj)
        .into_iter()
        .filter(|f| !old.contains(f))
        .collect();
    if !added.is_empty() {
        return Err(ApiError::invalid(
            rt.kind,
            name,
            format!(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
            ),
        ));
    }
    let namespace_pending = rt.kind == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    Ok(finalizers(obj).is_empty() && !namespace_pending)
}

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
            terminate_namespace(api, name).await;
        }
    }
}

/// Deletes a terminating namespace's contents now, then the namespace if
/// nothing is left; otherwise leaves the rest to a background task.
async fn terminate_namespace(api: &Api, namespace: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_sets_the_gc_finalizers() {
        let has = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(finalizers_for(&has(&["a"]), None), has(&["a"]));
        assert_eq!(
            finalizers_for(&has(&["a", ORPHAN]), Some(Propagation::Foreground)),
            has(&["a", FOREGROUND])
        );
        assert_eq!(
            finalizers_for(&has(&[FOREGROUND]), Some(Propagation::Background)),
            has(&[])
        );
        assert_eq!(
            finalizers_for(&[], Some(Propagation::Orphan)),
            has(&[ORPHAN])
        );
    }

    #[test]
    fn updates_of_deleted_objects_only_drop_finalizers() {
        let registry = crate::api::resources::Registry::builtin();
        let cm = registry.find("", "v1", "configmaps").expect("cm");
        let stored = json!({"metadata": {"name": "x", "deletionTimestamp": "T",
            "deletionGracePeriodSeconds": 0, "finalizers": ["a", "b"]}});
        let mut more = json!({"metadata": {"name": "x", "finalizers": ["a", "b", "c"]}});
        assert_eq!(
            guard_update(cm, "x", &stored, &mut more)
                .expect_err("c")
                .code,
            422
        );
        let mut fewer = json!({"metadata": {"name": "x", "finalizers": ["b"]}});
        assert!(!guard_update(cm, "x", &stored, &mut fewer).expect("ok"));
        assert_eq!(fewer["metadata"]["deletionTimestamp"], "T");
        let mut none = json!({"metadata": {"name": "x"}});
        assert!(guard_update(cm, "x", &stored, &mut none).expect("ok"));
        // Not being deleted: a client cannot set deletionTimestamp.
        let live = json!({"metadata": {"name": "x"}});
        let mut sneaky = json!({"metadata": {"name": "x", "deletionTimestamp": "T"}});
        assert!(!guard_update(cm, "x", &live, &mut sneaky).expect("ok"));
        assert!(sneaky["metadata"].get("deletionTimestamp").is_none());
    }
}
