//! Deletes as upstream's generic registry does them: `DeleteOptions`
//! (preconditions, propagation, dryRun), finalizers, `deletecollection`,
//! and namespace termination.
//!
//! - A pod is deleted gracefully ([`graceful`]): bound to a node and not
//!   finished, it gets `deletionTimestamp` = now + its grace period and
//!   stays `Terminating` until its node agent stopped it and sends the
//!   final delete (`gracePeriodSeconds: 0`); a later delete may only
//!   shorten the grace. This holds for every path that deletes pods
//!   (`DELETE`, `deletecollection`, namespace termination, eviction, and
//!   the controllers and garbage collector, which delete through the API).
//! - An object with finalizers is not removed: it gets `deletionTimestamp`
//!   (and `deletionGracePeriodSeconds: 0` unless a pod's grace runs) and
//!   stays until an update removes its last finalizer; that update
//!   deletes it ([`guard_update`]) once no grace is left. While it is
//!   being deleted, updates may not add finalizers.
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
//!   deleted ([`super::namespaces`]).
//! - Every object actually removed goes through the kind's
//!   [`strategy::after_delete`] (a Service's ClusterIP is released).
//!
//! # Current limitations
//! - A pod bound to a node that has no agent (a Node object registered by
//!   a client, an agent that is down) stays `Terminating` until it is
//!   deleted with `gracePeriodSeconds: 0`, as upstream; nothing here
//!   force-deletes pods of lost nodes yet (upstream's pod GC does).

use hyper::body::Incoming;
use hyper::{HeaderMap, Response};
use serde_json::{Value, json};
use tracing::debug;

use super::graceful::{self, Grace};
use super::handlers::{Target, from_kv, read_body, to_value_bytes};
use super::namespaces;
use super::options::{DeleteOptions, Propagation, finalizers};
use super::query::Query;
use super::resources::ResourceType;
use super::selector::Filter;
use super::status::ApiError;
use super::strategy;
use super::{Api, Body, json_response};
use crate::store::{KeyValue, Revision, Store, StoreError};

/// Kinds whose delete answers with the deleted object, not a `Status`
/// (`ReturnDeletedObject` in upstream's registries), by plural.
pub const RETURNS_DELETED_OBJECT: &[&str] =
    &["pods", "serviceaccounts", "storageclasses", "namespaces"];

/// The finalizer of namespaces (`spec.finalizers`), removed once the
/// namespace's contents are gone.
pub(super) const NAMESPACE_FINALIZER: &str = "kubernetes";
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// How often a delete that raced a write is tried again.
pub(super) const ATTEMPTS: usize = 5;

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

/// Deletes the object at `key` with `options` (gracefully for pods,
/// finalizers respected), retrying when it races a write; what the
/// `DELETE` of one object and a pod eviction do.
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
                            namespaces::terminate(api, name).await;
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
                    namespaces::terminate(api, &name).await;
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
/// deleted when its grace period ([`graceful`]) or finalizers hold it.
/// Store conflicts are for the caller to retry.
pub(super) async fn delete_object(
    store: &Store,
    rt: &ResourceType,
    kv: &KeyValue,
    mut obj: Value,
    options: &DeleteOptions,
) -> Result<Outcome, StoreError> {
    let grace = graceful::before_delete(rt, &mut obj, options.grace, jiff::Timestamp::now());
    if grace == Grace::Pending {
        // As upstream, finalizers cannot change once the grace runs.
        return Ok(Outcome::Pending(obj));
    }
    let current = finalizers(&obj);
    let wanted = finalizers_for(&current, options.propagation);
    let namespace_pending = rt.kind == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    let held = !wanted.is_empty() || namespace_pending;
    if let Grace::Marked(period) = grace {
        return mark_graceful(store, kv, obj, &current, wanted, period, options.dry_run).await;
    }
    if !held {
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
    store_marked(store, kv, &mut obj).await?;
    Ok(Outcome::Pending(obj))
}

/// Stores an object [`graceful::before_delete`] marked with `period`
/// (and the finalizers the delete wants); with no grace left and no
/// finalizer, removes it right after, as upstream does (watchers see the
/// marked object, then its deletion).
async fn mark_graceful(
    store: &Store,
    kv: &KeyValue,
    mut obj: Value,
    current: &[String],
    wanted: Vec<String>,
    period: i64,
    dry_run: bool,
) -> Result<Outcome, StoreError> {
    let remove = period == 0 && wanted.is_empty();
    if wanted != current {
        obj["metadata"]["finalizers"] = json!(wanted);
    }
    if dry_run && remove {
        return Ok(Outcome::Deleted(obj));
    }
    if dry_run {
        return Ok(Outcome::Pending(obj));
    }
    let revision = store_marked(store, kv, &mut obj).await?;
    if !remove {
        return Ok(Outcome::Pending(obj));
    }
    match store.delete(&kv.key, Some(revision)).await {
        Ok(last) => Ok(Outcome::Deleted(from_kv(&last).unwrap_or(obj))),
        // Someone else (the agent, another delete) removed it meanwhile:
        // as upstream, that is this delete's success.
        Err(StoreError::NotFound { .. }) => Ok(Outcome::Deleted(obj)),
        Err(err) => Err(err),
    }
}

/// Writes `obj` over `kv` (its revision as precondition); returns and
/// sets the new resourceVersion.
async fn store_marked(
    store: &Store,
    kv: &KeyValue,
    obj: &mut Value,
) -> Result<Revision, StoreError> {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let revision = store
        .update(&kv.key, to_value_bytes(obj), kv.mod_revision)
        .await?;
    obj["metadata"]["resourceVersion"] = revision.to_string().into();
    Ok(revision)
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
    // A pod whose grace still runs stays for its node agent's final
    // delete (upstream deletes on update only at grace 0).
    let grace_left = stored["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|g| g != 0);
    Ok(finalizers(obj).is_empty() && !namespace_pending && !grace_left)
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
        // A pod whose grace still runs waits for its agent's final delete.
        let pods = registry.find("", "v1", "pods").expect("pods");
        let terminating = json!({"metadata": {"name": "x", "deletionTimestamp": "T",
            "deletionGracePeriodSeconds": 30, "finalizers": ["a"]}});
        let mut none = json!({"metadata": {"name": "x"}});
        assert!(!guard_update(pods, "x", &terminating, &mut none).expect("ok"));
        // Not being deleted: a client cannot set deletionTimestamp.
        let live = json!({"metadata": {"name": "x"}});
        let mut sneaky = json!({"metadata": {"name": "x", "deletionTimestamp": "T"}});
        assert!(!guard_update(cm, "x", &live, &mut sneaky).expect("ok"));
        assert!(sneaky["metadata"].get("deletionTimestamp").is_none());
    }
}
