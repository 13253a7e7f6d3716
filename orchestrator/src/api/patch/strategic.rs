//! Strategic merge patch: merge patch plus directives, with list merge
//! strategies read from the kind's schema through a [`Shape`] (the
//! `x-kubernetes-patch-strategy`/`-merge-key` extensions that
//! [`lists`](crate::api::lists) writes): lists with strategy `merge` merge
//! by their merge key (objects) or as sets (scalars); other lists are
//! replaced. Directives: `$patch: replace|delete|merge` on maps and list
//! elements, `$retainKeys`, `$deleteFromPrimitiveList/<field>` and
//! `$setElementOrder/<field>`.

use serde_json::{Map, Value};

use crate::api::shape::Shape;
use crate::api::status::ApiError;

fn bad(what: String) -> ApiError {
    ApiError::bad_request(format!("strategic merge patch: {what}"))
}

fn at(path: &str) -> &str {
    if path.is_empty() { "the root" } else { path }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Applies a strategic merge patch map to `target`, whose schema is
/// `shape`, at dotted `path` (for messages).
pub fn patch_map(
    target: &Value,
    patch: &Value,
    shape: Shape,
    path: &str,
) -> Result<Value, ApiError> {
    let Value::Object(patch) = patch else {
        return Ok(patch.clone());
    };
    let mut out = match (patch.get("$patch").and_then(Value::as_str), target) {
        (Some("delete"), _) => return Ok(Value::Null),
        // The patch, without its directives, is the new value.
        (Some("replace"), _) => Map::new(),
        (Some("merge") | None, Value::Object(map)) => map.clone(),
        (Some("merge") | None, _) => Map::new(),
        (Some(other), _) => {
            return Err(bad(format!(
                "unknown $patch directive {other:?} at {}",
                at(path)
            )));
        }
    };
    let mut orders = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let Value::Array(order) = value else {
                return Err(bad(format!("{key} must be a list")));
            };
            orders.push((field, order));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(delete) = value else {
                return Err(bad(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|item| !delete.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(bad(format!("unknown directive {key:?} at {}", at(path))));
        }
        let field_path = child_path(path, key);
        let field_shape = shape.field(key);
        let current = out.get(key).cloned().unwrap_or(Value::Null);
        let merged = match value {
            Value::Null => None,
            Value::Object(_) if field_shape.patch_strategies().contains(&"replace") => {
                Some(strip(value))
            }
            Value::Object(_) => {
                let merged = patch_map(&current, value, field_shape, &field_path)?;
                (!merged.is_null()).then_some(merged)
            }
            Value::Array(items) => Some(merge_list(&current, items, field_shape, &field_path)?),
            scalar => Some(scalar.clone()),
        };
        match merged {
            Some(v) => out.insert(key.clone(), v),
            None => out.remove(key),
        };
    }
    for (field, order) in orders {
        if let Some(Value::Array(items)) = out.get_mut(field) {
            let key = shape.field(field).merge_key();
            reorder(items, order, key);
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(retain) = retain else {
            return Err(bad("$retainKeys must be a list".into()));
        };
        out.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(Value::Object(out))
}

fn merge_list(
    current: &Value,
    patch: &[Value],
    shape: Shape,
    path: &str,
) -> Result<Value, ApiError> {
    let current = match current {
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    let replace = patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"));
    let merge = shape.patch_strategies().contains(&"merge");
    if !merge || replace {
        return Ok(Value::Array(patch.iter().filter_map(strip_item).collect()));
    }
    let mut out = current;
    let Some(merge_key) = shape.merge_key() else {
        // A set of scalars: the patch's values are added.
        for item in patch {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Ok(Value::Array(out));
    };
    let items = shape.items();
    for item in patch {
        let Some(key) = item.get(merge_key) else {
            return Err(bad(format!(
                "an element of {path} has no merge key {merge_key:?}"
            )));
        };
        let found = out.iter().position(|c| c.get(merge_key) == Some(key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = patch_map(&out[i], item, items, path)?,
            (None, false) => out.push(patch_map(&Value::Null, item, items, path)?),
        }
    }
    Ok(Value::Array(out))
}

/// `$setElementOrder`: the elements it names (by merge key, or by value
/// for scalars) take its order; the others keep their places.
fn reorder(items: &mut [Value], order: &[Value], key: Option<&str>) {
    let rank = |item: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == item.get(k),
            None => o == item,
        })
    };
    let slots: Vec<usize> = (0..items.len())
        .filter(|&i| rank(&items[i]).is_some())
        .collect();
    let mut ordered: Vec<Value> = slots.iter().map(|&i| items[i].clone()).collect();
    ordered.sort_by_key(|item| rank(item));
    for (slot, item) in slots.into_iter().zip(ordered) {
        items[slot] = item;
    }
}

/// A value without its directives (`$patch`, `$retainKeys`...).
fn strip(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().filter_map(strip_item).collect()),
        other => other.clone(),
    }
}

/// A list element without directives; a bare `{"$patch": ...}` is dropped.
fn strip_item(item: &Value) -> Option<Value> {
    match item {
        Value::Object(map) if map.keys().all(|k| k.starts_with('$')) => None,
        other => Some(strip(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::Documents;
    use crate::api::resources::Registry;
    use crate::api::shape::root_of;
    use serde_json::json;

    fn deployment_patch(target: &Value, patch: Value) -> Result<Value, ApiError> {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        let rt = registry
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let root = root_of(&docs, rt);
        patch_map(target, &patch, Shape::new(docs.schemas(), &root), "")
    }

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "finalizers": ["a"],
                "ownerReferences": [{"uid": "1", "name": "one"}, {"uid": "2", "name": "two"}]},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {
                    "containers": [
                        {"name": "app", "image": "app:1", "imagePullPolicy": "IfNotPresent",
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}],
                         "args": ["x", "y"]},
                        {"name": "side", "image": "side:1"},
                    ],
                    "tolerations": [{"key": "k", "operator": "Exists"}],
                }},
            },
        })
    }

    #[test]
    fn lists_merge_by_their_keys() {
        let d = deployment();
        let out = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "C", "value": "3"}],
                 "ports": [{"containerPort": 443, "$patch": "delete"}], "args": ["z"]},
            ]}}}}),
        )
        .expect("patch");
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().expect("list").len(), 2);
        let app = &containers[0];
        assert_eq!(app["image"], "app:2");
        assert_eq!(app["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            app["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(
            app["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        // Atomic lists are replaced.
        assert_eq!(app["args"], json!(["z"]));
        assert_eq!(containers[1]["image"], "side:1");
        let out = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "other", "operator": "Exists"}]}}}}),
        )
        .expect("tolerations");
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "other", "operator": "Exists"}])
        );
        // An element without its merge key is a 400.
        let err = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        )
        .expect_err("no key");
        assert_eq!(err.code, 400);
    }

    #[test]
    fn directives() {
        let d = deployment();
        // $patch: replace on a list element replaces the list.
        let out = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "only", "image": "o"}, {"$patch": "replace"}]}}}}),
        )
        .expect("replace list");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "o"}])
        );
        // $patch: delete on an element and on a map; $patch: merge is the default.
        let out = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "side", "$patch": "delete"}]}}, "strategy": {"$patch": "delete"}}}),
        )
        .expect("delete");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert!(out["spec"].get("strategy").is_none());
        let out = deployment_patch(&d, json!({"spec": {"$patch": "merge", "replicas": 2}}))
            .expect("merge");
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(out["spec"]["strategy"]["type"], "RollingUpdate");
        // $retainKeys (kubectl sends it for the retainKeys strategy).
        let out = deployment_patch(
            &d,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        )
        .expect("retainKeys");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // Primitive sets: merge and $deleteFromPrimitiveList.
        let out =
            deployment_patch(&d, json!({"metadata": {"finalizers": ["b", "a"]}})).expect("set");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let out = deployment_patch(
            &d,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .expect("delete from set");
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        // $setElementOrder reorders by key; new elements take their place.
        let out = deployment_patch(
            &d,
            json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}}}}),
        )
        .expect("order");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["name"],
            "side"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["name"],
            "app"
        );
        let out = deployment_patch(&d, json!({"metadata": {"ownerReferences": [
            {"uid": "2", "name": "deux"}, {"uid": "1", "$patch": "delete"}, {"uid": "3", "name": "three"}]}}))
        .expect("owners");
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "deux"}, {"uid": "3", "name": "three"}])
        );
        for bad in [
            json!({"spec": {"$patch": "merge-ish"}}),
            json!({"spec": {"$frob": 1}}),
            json!({"spec": {"$retainKeys": "x"}}),
        ] {
            assert_eq!(deployment_patch(&d, bad).expect_err("bad").code, 400);
        }
    }
}
