//! Field sets as structured-merge-diff writes them in `FieldsV1`: paths of
//! `f:<field>` segments, `k:{"name":"app"}` for an item of an associative
//! list (its keys as a JSON object, keys sorted) and `v:<json>` for an item
//! of a set; `.` in a node means the node itself is a member. The kind's
//! [`Shape`] says which lists are associative; the others are atomic and
//! are one leaf. Used by [`managed`](super::managed) for every write and by
//! [`apply`](super::apply) for ownership and conflicts.
//!
//! # Current limitations
//! - A missing key field of an associative list item has no value in its
//!   `k:` key, except `protocol`, which upstream defaults to `TCP` in every
//!   list keyed by it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::shape::{ListKind, Shape};

/// A field path (`["f:spec", "f:containers", "k:{\"name\":\"app\"}"]`).
pub type Path = Vec<String>;

/// Metadata that the server owns, never a manager.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// A member of a field set: a value, or an associative list item / set
/// element / map that is owned as a whole (`None`).
pub type Leaf<'a> = (Path, Option<&'a Value>);

/// The `k:` key of `item` in a list keyed by `keys`, if it has them.
pub fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut map = Map::new();
    for key in keys {
        match item.get(key) {
            Some(v) if !v.is_null() => {
                map.insert(key.clone(), v.clone());
            }
            _ if key == "protocol" => {
                map.insert(key.clone(), "TCP".into());
            }
            _ => {}
        }
    }
    if map.is_empty() {
        return None;
    }
    // serde_json's Map keeps keys sorted, as Go marshals a map.
    Some(format!("k:{}", Value::Object(map)))
}

/// Whether `item` is the list item a `k:`/`v:` segment names.
fn is_item(segment: &str, item: &Value, keys: Option<&[String]>) -> bool {
    match (segment.strip_prefix("v:"), keys) {
        (Some(json), _) => serde_json::from_str::<Value>(json).is_ok_and(|v| &v == item),
        (None, Some(keys)) => item_key(item, keys).as_deref() == Some(segment),
        (None, None) => false,
    }
}

/// The members of `obj`: leaves (scalars, atomic lists, empty maps) with
/// their values, and list items (and, with `maps`, maps with free keys
/// such as labels) as members of their own. `apiVersion`, `kind`,
/// `status` and server-owned metadata are left out.
pub fn leaves<'a>(obj: &'a Value, shape: Shape, maps: bool) -> Vec<Leaf<'a>> {
    let mut out = Vec::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (key, value) in map {
        let field = shape.field(key);
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for (name, child) in value.as_object().into_iter().flatten() {
                    if !SERVER_METADATA.contains(&name.as_str()) {
                        let mut path = vec!["f:metadata".to_owned(), format!("f:{name}")];
                        walk(child, field.field(name), &mut path, maps, &mut out);
                    }
                }
            }
            _ => walk(value, field, &mut vec![format!("f:{key}")], maps, &mut out),
        }
    }
    out
}

fn walk<'a>(value: &'a Value, shape: Shape, path: &mut Path, maps: bool, out: &mut Vec<Leaf<'a>>) {
    match value {
        Value::Object(map) if !map.is_empty() && !shape.atomic_map() => {
            if maps && shape.free_keys() {
                out.push((path.clone(), None));
            }
            for (key, child) in map {
                path.push(format!("f:{key}"));
                walk(child, shape.field(key), path, maps, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list_kind() {
            ListKind::Map(keys) => {
                for item in items {
                    let Some(key) = item_key(item, &keys) else {
                        // An item without its keys: the list is atomic.
                        out.retain(|(p, _)| !p.starts_with(path));
                        out.push((path.clone(), Some(value)));
                        return;
                    };
                    path.push(key);
                    out.push((path.clone(), None));
                    walk(item, shape.items(), path, maps, out);
                    path.pop();
                }
            }
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.push((path.clone(), None));
                    path.pop();
                }
            }
            ListKind::Atomic => out.push((path.clone(), Some(value))),
        },
        _ => out.push((path.clone(), Some(value))),
    }
}

/// The paths of a `FieldsV1` value (`.` makes its node a member).
pub fn decode(fields: &Value) -> BTreeSet<Path> {
    fn walk(value: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(map) = value.as_object() else {
            return;
        };
        let children: Vec<_> = map.iter().filter(|(k, _)| k.as_str() != ".").collect();
        if (children.is_empty() || map.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (key, child) in children {
            path.push(key.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// The `FieldsV1` value of a set of paths; a member with members below
/// it is written as `.` in its node.
pub fn encode(paths: &BTreeSet<Path>) -> Value {
    let refs: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
    encode_level(&refs)
}

fn encode_level(paths: &[&[String]]) -> Value {
    let mut out = Map::new();
    let mut firsts: Vec<&String> = paths.iter().filter_map(|p| p.first()).collect();
    firsts.dedup();
    for first in firsts {
        let below: Vec<&[String]> = paths
            .iter()
            .filter(|p| p.first() == Some(first) && p.len() > 1)
            .map(|p| &p[1..])
            .collect();
        let member = paths.iter().any(|p| p.len() == 1 && &p[0] == first);
        let mut node = encode_level(&below);
        if let Value::Object(map) = &mut node
            && member
            && !map.is_empty()
        {
            map.insert(".".into(), json!({}));
        }
        out.insert(first.clone(), node);
    }
    Value::Object(out)
}

/// The value at `path` in `obj`, with the list keys `shape` declares.
pub fn get<'a>(obj: &'a Value, path: &[String], shape: Shape) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(obj);
    };
    if let Some(field) = first.strip_prefix("f:") {
        return get(obj.get(field)?, rest, shape.field(field));
    }
    let keys = match shape.list_kind() {
        ListKind::Map(keys) => Some(keys),
        _ => None,
    };
    let item = obj
        .as_array()?
        .iter()
        .find(|item| is_item(first, item, keys.as_deref()))?;
    get(item, rest, shape.items())
}

/// Removes the field or list item at `path` from `obj`.
pub fn remove(obj: &mut Value, path: &[String], shape: Shape) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(field) = first.strip_prefix("f:") {
        match (rest.is_empty(), obj.as_object_mut()) {
            (true, Some(map)) => {
                map.remove(field);
            }
            (false, Some(map)) => {
                if let Some(child) = map.get_mut(field) {
                    remove(child, rest, shape.field(field));
                }
            }
            (_, None) => {}
        }
        return;
    }
    let keys = match shape.list_kind() {
        ListKind::Map(keys) => Some(keys),
        _ => None,
    };
    let Some(items) = obj.as_array_mut() else {
        return;
    };
    let Some(at) = items
        .iter()
        .position(|item| is_item(first, item, keys.as_deref()))
    else {
        return;
    };
    if rest.is_empty() {
        items.remove(at);
    } else {
        remove(&mut items[at], rest, shape.items());
    }
}

/// A path as upstream prints it in conflicts:
/// `.spec.template.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if let Some(field) = segment.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = segment.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = segment.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::Documents;
    use crate::api::resources::Registry;
    use crate::api::shape::root_of;

    #[test]
    fn associative_lists_are_keyed() {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        let rt = registry
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let root = root_of(&docs, rt);
        let shape = Shape::new(docs.schemas(), &root);
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "app", "image": "x", "ports": [{"containerPort": 80}], "args": ["a"]}]}}},
        });
        let paths: BTreeSet<Path> = leaves(&deploy, shape, false)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let fields = encode(&paths);
        assert_eq!(
            fields,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"a\"": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}}}}}}},
            })
        );
        assert_eq!(decode(&fields), paths);
        // Maps with free keys are members of their own for updates.
        let with_maps = leaves(&deploy, shape, true);
        assert!(
            with_maps
                .iter()
                .any(|(p, v)| v.is_none() && p == &["f:metadata", "f:labels"])
        );

        let image: Path = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"app\"}",
            "f:image",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(get(&deploy, &image, shape), Some(&json!("x")));
        assert_eq!(
            display(&image),
            ".spec.template.spec.containers[name=\"app\"].image"
        );
        let mut d = deploy.clone();
        remove(&mut d, &image[..5], shape);
        assert_eq!(d["spec"]["template"]["spec"]["containers"], json!([]));
        let finalizer: Path = ["f:metadata", "f:finalizers", "v:\"a\""]
            .map(String::from)
            .to_vec();
        remove(&mut d, &finalizer, shape);
        assert_eq!(d["metadata"]["finalizers"], json!([]));
    }
}
