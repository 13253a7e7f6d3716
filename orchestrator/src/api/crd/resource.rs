//! Custom resources on their way into the store, as apiextensions'
//! `customResourceStrategy` does it: client `status` is dropped on create
//! and kept from the stored object on main-resource updates when the
//! version has a `status` subresource, schema `default`s are applied,
//! `metadata.generation` starts at 1 and grows when anything but
//! `metadata` and `status` changes, and the object is validated against
//! the version's schema (422 with a cause per field). The `scale`
//! subresource reads and writes the paths the CRD declares.

use serde_json::{Map, Value, json};

use super::Custom;
use super::schema;
use crate::api::resources::{ResourceType, Subresource};
use crate::api::status::ApiError;
use crate::api::strategy::Errors;

fn validate(rt: &ResourceType, custom: &Custom, obj: &Value) -> Result<(), ApiError> {
    let mut errors = Errors::default();
    schema::validate(&custom.schema, obj, "", &mut errors);
    errors.into_result(rt, obj["metadata"]["name"].as_str().unwrap_or_default())
}

/// Prepares a new custom resource.
pub fn before_create(rt: &ResourceType, custom: &Custom, obj: &mut Value) -> Result<(), ApiError> {
    if rt.has(Subresource::Status)
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
    schema::default(&custom.schema, obj);
    obj["metadata"]["generation"] = 1.into();
    validate(rt, custom, obj)
}

/// The object without `metadata` and `status`: what a generation counts.
fn generation_part(obj: &Value) -> Map<String, Value> {
    let mut map = obj.as_object().cloned().unwrap_or_default();
    map.remove("metadata");
    map.remove("status");
    map
}

/// Prepares `new` to replace `old` through the main resource.
pub fn before_update(
    rt: &ResourceType,
    custom: &Custom,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    if rt.has(Subresource::Status)
        && let Some(map) = new.as_object_mut()
    {
        match old.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    schema::default(&custom.schema, new);
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let bump = generation_part(old) != generation_part(new);
    new["metadata"]["generation"] = (generation + i64::from(bump)).into();
    validate(rt, custom, new)
}

/// Validates a write through the `status` subresource (the rest of the
/// object is already the stored one).
pub fn after_status_write(
    rt: &ResourceType,
    custom: &Custom,
    new: &mut Value,
) -> Result<(), ApiError> {
    schema::default(&custom.schema, new);
    validate(rt, custom, new)
}

/// `.spec.replicas` → `/spec/replicas`.
fn pointer(path: &str) -> String {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The `Scale` of a custom resource from its CRD's scale paths.
pub fn scale_of(custom: &Custom, obj: &Value) -> Value {
    let Some(scale) = &custom.scale else {
        return Value::Null;
    };
    let read = |path: &str| {
        obj.pointer(&pointer(path))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let mut metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj["metadata"].get(field) {
            metadata[field] = v.clone();
        }
    }
    let mut status = json!({"replicas": read(&scale.status_replicas_path)});
    if let Some(selector) = scale
        .label_selector_path
        .as_deref()
        .and_then(|p| obj.pointer(&pointer(p)))
        .and_then(Value::as_str)
    {
        status["selector"] = selector.into();
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": read(&scale.spec_replicas_path)},
        "status": status,
    })
}

/// Sets the CRD's spec replicas path of `obj` to `replicas`.
pub fn set_replicas(custom: &Custom, obj: &mut Value, replicas: i64) {
    let Some(scale) = &custom.scale else {
        return;
    };
    let mut at = obj;
    let keys: Vec<&str> = scale
        .spec_replicas_path
        .split('.')
        .filter(|s| !s.is_empty())
        .collect();
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    for key in parents {
        if !at[*key].is_object() {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
    at[*last] = replicas.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom() -> Custom {
        Custom {
            crd: "w.x.io".into(),
            schema: serde_json::from_value(json!({
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "default": 1},
                        "nested": {"type": "object", "properties": {"count": {"type": "integer"}}},
                    }},
                    "status": {"type": "object", "properties": {"count": {"type": "integer"}, "sel": {"type": "string"}}},
                },
            }))
            .expect("schema"),
            scale: serde_json::from_value(json!({
                "specReplicasPath": ".spec.nested.count",
                "statusReplicasPath": ".status.count",
                "labelSelectorPath": ".status.sel",
            }))
            .expect("scale"),
            columns: vec![],
        }
    }

    fn rt() -> ResourceType {
        let mut rt = crate::api::resources::Registry::builtin().all()[0].clone();
        rt.subresources = &[Subresource::Status, Subresource::Scale];
        rt
    }

    #[test]
    fn status_and_generation_follow_upstream() {
        let (rt, custom) = (rt(), custom());
        let mut obj = json!({"metadata": {"name": "a"}, "spec": {}, "status": {"count": 9}});
        before_create(&rt, &custom, &mut obj).expect("create");
        assert!(obj.get("status").is_none());
        assert_eq!(obj["spec"]["size"], 1);
        assert_eq!(obj["metadata"]["generation"], 1);
        let old = json!({"metadata": {"name": "a", "generation": 1}, "spec": {"size": 1}, "status": {"count": 2}});
        let mut same = json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"size": 1}, "status": {"count": 5}});
        before_update(&rt, &custom, &old, &mut same).expect("update");
        assert_eq!(
            (
                same["metadata"]["generation"].clone(),
                same["status"]["count"].clone()
            ),
            (json!(1), json!(2))
        );
        let mut changed = json!({"metadata": {"name": "a"}, "spec": {"size": 4}});
        before_update(&rt, &custom, &old, &mut changed).expect("update");
        assert_eq!(changed["metadata"]["generation"], 2);
        let mut bad = json!({"metadata": {"name": "a"}, "spec": {"size": "big"}});
        let err = before_update(&rt, &custom, &old, &mut bad).expect_err("invalid");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.size"), "{}", err.message);
    }

    #[test]
    fn scale_uses_the_declared_paths() {
        let custom = custom();
        let mut obj = json!({"metadata": {"name": "a", "resourceVersion": "3"}, "spec": {}, "status": {"count": 1, "sel": "app=a"}});
        set_replicas(&custom, &mut obj, 4);
        assert_eq!(obj["spec"]["nested"]["count"], 4);
        let scale = scale_of(&custom, &obj);
        assert_eq!(scale["spec"]["replicas"], 4);
        assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=a"}));
        assert_eq!(scale["metadata"]["resourceVersion"], "3");
    }
}
