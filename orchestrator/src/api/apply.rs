//! Server-side apply: `PATCH` with `application/apply-patch+yaml`.
//!
//! The body is the manager's whole intent for the object. It is merged
//! into the live object (or creates it: apply is an upsert) by the kind's
//! [`Shape`]: maps field by field, associative lists item by item by their
//! keys, sets by value, atomic lists and scalars replaced. The manager's
//! `operation: Apply` entry in `managedFields` becomes exactly the fields
//! of the body ([`fieldset`]); fields it applied before and omits now are
//! removed from the object unless another manager owns them (or something
//! below them). A field another manager owns whose value the apply would
//! change is a conflict: 409 naming each manager and field, unless
//! `force=true`, which moves the fields to the applier.
//!
//! The result is stored through the handlers' create/update, so
//! defaulting, validation, `dryRun` and optimistic concurrency are theirs.
//!
//! # Current limitations
//! - Ownership is not converted between API versions: an entry's
//!   `apiVersion` is recorded, not used.
//! - `status` in the body is ignored (as upstream does on the main
//!   resource); the `status` subresource takes no apply.

use std::collections::BTreeSet;

use hyper::Response;
use serde_json::{Map, Value};
use tracing::debug;

use super::fieldset::{self, Path};
use super::handlers::{self, Target};
use super::options::WriteOptions;
use super::query::Query;
use super::shape::{self, ListKind, Shape};
use super::status::{ApiError, Cause};
use super::{Api, Body, codec, managed, validation};

/// How often an apply is retried after a concurrent write.
const ATTEMPTS: usize = 5;

/// Merges `applied` into `live` by `shape` (see the module docs).
pub fn merge(live: &Value, applied: &Value, shape: Shape) -> Value {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) if !shape.atomic_map() => {
            let mut out = live.clone();
            for (key, value) in applied {
                if value.is_null() {
                    continue;
                }
                let merged = match out.get(key) {
                    Some(current) => merge(current, value, shape.field(key)),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(live), Value::Array(applied)) => match shape.list_kind() {
            ListKind::Map(keys) => {
                let mut out = live.clone();
                for item in applied {
                    let key = fieldset::item_key(item, &keys);
                    let found = key.as_ref().and_then(|k| {
                        out.iter()
                            .position(|c| fieldset::item_key(c, &keys).as_ref() == Some(k))
                    });
                    match found {
                        Some(i) => out[i] = merge(&out[i], item, shape.items()),
                        None => out.push(item.clone()),
                    }
                }
                Value::Array(out)
            }
            ListKind::Set => {
                let mut out = live.clone();
                for item in applied {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListKind::Atomic => Value::Array(applied.clone()),
        },
        _ => applied.clone(),
    }
}

/// A field another manager owns with another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner.
    pub manager: String,
    /// The owner entry's `apiVersion`.
    pub api_version: String,
    /// The field.
    pub path: Path,
}

/// The result of applying `applied` by `manager` to `live` (`Null` when the
/// object does not exist yet): the new object with its managed fields, or
/// the conflicts.
pub fn apply(
    live: &Value,
    applied: &Value,
    shape: Shape,
    manager: &str,
    api_version: &str,
    time: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let applied_leaves = fieldset::leaves(applied, shape, false);
    let applied_set: BTreeSet<Path> = applied_leaves.iter().map(|(p, _)| p.clone()).collect();
    let mut entries = managed::entries(live);
    let is_mine = |e: &Value| e["manager"] == manager && e["operation"] == "Apply";
    let owned: Vec<(usize, BTreeSet<Path>)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i, fieldset::decode(&e["fieldsV1"])))
        .collect();

    let mut conflicts = Vec::new();
    for (path, value) in &applied_leaves {
        let Some(value) = value else { continue };
        match fieldset::get(live, path, shape) {
            Some(current) if current != *value => {}
            _ => continue,
        }
        for (i, paths) in &owned {
            let e = &entries[*i];
            if !is_mine(e) && paths.contains(path) {
                conflicts.push(Conflict {
                    manager: e["manager"].as_str().unwrap_or("").to_owned(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").to_owned(),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }

    let mut out = merge(live, applied, shape);
    // What this manager applied before and omits now goes, unless another
    // manager owns it or something below it.
    let before: BTreeSet<Path> = owned
        .iter()
        .filter(|(i, _)| is_mine(&entries[*i]))
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    let others: BTreeSet<&Path> = owned
        .iter()
        .filter(|(i, _)| !is_mine(&entries[*i]))
        .flat_map(|(_, p)| p.iter())
        .collect();
    let dropped: Vec<&Path> = before
        .iter()
        .filter(|p| !applied_set.contains(*p))
        .filter(|p| !applied_set.iter().any(|a| a.starts_with(p)))
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    // A dropped item takes its dropped fields with it.
    let tops = dropped.iter().filter(|p| {
        !dropped
            .iter()
            .any(|q| q.len() < p.len() && p.starts_with(q))
    });
    for path in tops {
        fieldset::remove(&mut out, path, shape);
    }

    // Fields the applier took by force, and removed ones, leave the others.
    let taken: BTreeSet<&Path> = conflicts.iter().map(|c| &c.path).collect();
    let after: BTreeSet<Path> = fieldset::leaves(&out, shape, true)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let mut kept = Vec::new();
    for (i, mut e) in entries.drain(..).enumerate() {
        if is_mine(&e) {
            continue;
        }
        let paths: BTreeSet<Path> = owned[i]
            .1
            .iter()
            .filter(|p| !taken.contains(p) && after.contains(*p))
            .cloned()
            .collect();
        if paths.is_empty() {
            continue;
        }
        e["fieldsV1"] = fieldset::encode(&paths);
        kept.push(e);
    }
    if !applied_set.is_empty() {
        kept.push(managed::entry(
            manager,
            "Apply",
            api_version,
            time,
            &applied_set,
        ));
    }
    managed::set_entries(&mut out, kept);
    Ok(out)
}

/// The 409 of an apply with conflicts, as upstream words it.
fn conflict_error(rt_group: &str, plural: &str, name: &str, conflicts: &[Conflict]) -> ApiError {
    let each: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with {:?} using {}: {}",
                c.manager,
                c.api_version,
                fieldset::display(&c.path)
            )
        })
        .collect();
    let count = match conflicts.len() {
        1 => "1 conflict".to_owned(),
        n => format!("{n} conflicts"),
    };
    let message = format!("Apply failed with {count}: {}", each.join("\n"));
    let mut err = ApiError::invalid_fields(
        rt_group,
        plural,
        name,
        conflicts
            .iter()
            .map(|c| Cause {
                reason: "FieldManagerConflict",
                message: format!("conflict with {:?} using {}", c.manager, c.api_version),
                field: fieldset::display(&c.path),
            })
            .collect(),
    );
    err.code = 409;
    err.reason = "Conflict";
    err.message = message;
    err
}

/// Serves an apply of `body` to object `name` of `target`.
pub async fn serve(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    body: &[u8],
    query: &Query,
    options: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    if query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "",
            "fieldManager: Required value: is required for apply patch",
        ));
    }
    let force = query.flag("force")?;
    let mut applied = codec::yaml_to_json(body)?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    match (applied["apiVersion"].as_str(), applied["kind"].as_str()) {
        (Some(v), Some(k)) if v == rt.api_version && k == rt.kind => {}
        (v, k) => {
            return Err(ApiError::bad_request(format!(
                "apply patch for {}/{} has apiVersion {:?} and kind {:?}",
                rt.api_version,
                rt.kind,
                v.unwrap_or(""),
                k.unwrap_or("")
            )));
        }
    }
    // The applied config must decode as the kind (unknown fields are
    // handled per fieldValidation below, on the merged object).
    handlers::check_object(rt, applied.clone())?;
    if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        meta.remove("managedFields");
    }
    if let Some(map) = applied.as_object_mut() {
        map.remove("status");
    }
    let root = shape::root_of(&api.openapi, rt);
    let shape = Shape::new(api.openapi.schemas(), &root);
    let options = WriteOptions {
        apply: true,
        ..options.clone()
    };
    let key = rt.key(target.namespace.as_deref(), name);
    for attempt in 1.. {
        let live = match api.store.get(&key).await {
            Ok(Some(kv)) => Some(handlers::from_kv(&kv)?),
            Ok(None) => None,
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
        };
        let base = live.clone().unwrap_or_else(|| {
            let mut obj = Map::new();
            obj.insert("metadata".into(), Value::Object(Map::new()));
            Value::Object(obj)
        });
        let time = handlers::now();
        let mut merged = apply(
            &base,
            &applied,
            shape,
            &options.manager,
            rt.api_version,
            &time,
            force,
        )
        .map_err(|c| conflict_error(rt.group, rt.plural, name, &c))?;
        if let Some(meta) = merged["metadata"].as_object_mut() {
            meta.insert("name".into(), name.into());
        }
        if live.as_ref() == Some(&merged) {
            return Ok(super::json_response(200, &merged));
        }
        let merged = handlers::check_object(rt, merged)?;
        let (merged, warnings) = validation::check(&api.openapi, rt, query, merged)?;
        let result = match live {
            None => handlers::create(api, target, merged, &options).await,
            Some(_) => handlers::update(api, target, name, merged, &options).await,
        };
        match result {
            Err(err)
                if (err.reason == "Conflict" || err.reason == "AlreadyExists")
                    && attempt < ATTEMPTS =>
            {
                debug!(%key, attempt, "apply raced a write; applying it again");
            }
            result => return result.map(|r| warnings.attach(r)),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::Documents;
    use crate::api::resources::Registry;
    use serde_json::json;

    fn with_deployment_shape(test: impl FnOnce(Shape)) {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        let rt = registry
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let root = shape::root_of(&docs, rt);
        test(Shape::new(docs.schemas(), &root));
    }

    fn config(replicas: i64, image: &str, extra_env: bool) -> Value {
        let mut env = vec![json!({"name": "A", "value": "1"})];
        if extra_env {
            env.push(json!({"name": "B", "value": "2"}));
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "app", "image": image, "env": env}]}}},
        })
    }

    #[test]
    fn apply_merges_owns_and_removes() {
        with_deployment_shape(|shape| {
            let empty = json!({"metadata": {}});
            let one = apply(
                &empty,
                &config(1, "a", true),
                shape,
                "m",
                "apps/v1",
                "T",
                false,
            )
            .expect("create");
            let entries = managed::entries(&one);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0]["operation"], "Apply");
            let env = &entries[0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]
                ["f:env"];
            assert!(env.get("k:{\"name\":\"B\"}").is_some(), "{env}");
            // A server default on the live object stays; an omitted env var goes.
            let mut live = one.clone();
            live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always".into();
            let two = apply(
                &live,
                &config(1, "b", false),
                shape,
                "m",
                "apps/v1",
                "T",
                false,
            )
            .expect("re-apply");
            let app = &two["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(app["image"], "b");
            assert_eq!(app["imagePullPolicy"], "Always");
            assert_eq!(app["env"], json!([{"name": "A", "value": "1"}]));
        });
    }

    #[test]
    fn conflicts_name_manager_and_field() {
        with_deployment_shape(|shape| {
            let empty = json!({"metadata": {}});
            let by_a = apply(
                &empty,
                &config(1, "x", false),
                shape,
                "a",
                "apps/v1",
                "T",
                false,
            )
            .expect("a");
            // Same values: shared, no conflict.
            let shared = apply(
                &by_a,
                &config(1, "x", false),
                shape,
                "b",
                "apps/v1",
                "T",
                false,
            )
            .expect("shared");
            assert_eq!(managed::entries(&shared).len(), 2);
            let conflicts = apply(
                &shared,
                &config(3, "x", false),
                shape,
                "b",
                "apps/v1",
                "T",
                false,
            )
            .expect_err("conflict");
            assert_eq!(conflicts.len(), 1);
            assert_eq!(conflicts[0].manager, "a");
            assert_eq!(fieldset::display(&conflicts[0].path), ".spec.replicas");
            let err = conflict_error("apps", "deployments", "web", &conflicts);
            assert_eq!(err.code, 409);
            assert_eq!(
                err.message,
                "Apply failed with 1 conflict: conflict with \"a\" using apps/v1: .spec.replicas"
            );
            // Force takes the field: a no longer owns it.
            let forced = apply(
                &shared,
                &config(3, "x", false),
                shape,
                "b",
                "apps/v1",
                "T",
                true,
            )
            .expect("force");
            assert_eq!(forced["spec"]["replicas"], 3);
            let a = managed::entries(&forced)
                .into_iter()
                .find(|e| e["manager"] == "a")
                .expect("a still owns the image");
            assert!(a["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{a}");
            // b drops the container; a still owns it, so it stays.
            let mut fewer = config(3, "x", false);
            fewer["spec"]["template"]["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("containers");
            let kept = apply(&forced, &fewer, shape, "b", "apps/v1", "T", false).expect("drop");
            assert_eq!(
                kept["spec"]["template"]["spec"]["containers"][0]["image"],
                "x"
            );
        });
    }
}
