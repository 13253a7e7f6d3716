//! `metadata.managedFields`: which manager (`fieldManager`, else the
//! User-Agent's product) last set which fields, as `FieldsV1` sets
//! (`{"f:data": {".": {}, "f:a": {}}}`), so `kubectl get -o yaml
//! --show-managed-fields` shows who owns what.
//!
//! Creates, updates and patches are `operation: Update` entries. An update
//! gives its manager the fields it added or changed and takes them from
//! the other managers; removed fields leave every set; a manager left with
//! nothing is dropped; an update that changes nothing leaves the entries
//! (and so the object) as they were.
//!
//! # Current limitations
//! - Lists are atomic (`f:containers: {}`), not keyed by their merge keys
//!   (`k:{"name":"nginx"}`) as structured-merge-diff does.
//! - `.` (the manager owns the map itself) is written for every nested
//!   map but `metadata`, `spec`, `status` and `template`, without the
//!   schema's struct/map distinction.
//! - No `Apply` entries: server-side apply is not served.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path, as `f:` segments (`["f:data", "f:a"]`).
type Path = Vec<String>;

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

/// Maps whose own `.` entry is not written (structs, in upstream's sets).
const STRUCTS: &[&str] = &["f:metadata", "f:spec", "f:status", "f:template"];

/// Leaf paths of `obj` with their values: scalars, lists and empty maps.
fn leaves(obj: &Value) -> Vec<(Path, &Value)> {
    fn walk<'a>(value: &'a Value, path: &mut Path, out: &mut Vec<(Path, &'a Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(format!("f:{key}"));
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => out.push((path.clone(), value)),
        }
    }
    let mut out = Vec::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for (field, child) in value.as_object().into_iter().flatten() {
                    if !SERVER_METADATA.contains(&field.as_str()) {
                        let mut path = vec!["f:metadata".to_owned(), format!("f:{field}")];
                        walk(child, &mut path, &mut out);
                    }
                }
            }
            _ => walk(value, &mut vec![format!("f:{key}")], &mut out),
        }
    }
    out
}

/// The paths of a `FieldsV1` value.
fn paths_of(fields: &Value) -> BTreeSet<Path> {
    fn walk(value: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<_> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != ".")
            .collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
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

/// The `FieldsV1` value of a set of paths.
fn fields_of(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for (i, segment) in path.iter().enumerate() {
            let entry = node
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(map) = entry else {
                break;
            };
            if i + 1 < path.len() && !STRUCTS.contains(&segment.as_str()) {
                map.insert(".".into(), json!({}));
            }
            node = map;
        }
    }
    Value::Object(root)
}

/// The managed-fields entries of an object.
fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn set_entries(obj: &mut Value, entries: Vec<Value>) {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

fn entry(manager: &str, api_version: &str, time: &str, paths: &BTreeSet<Path>) -> Value {
    json!({
        "manager": manager,
        "operation": "Update",
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_of(paths),
    })
}

/// Sets the entries of a created object: `manager` owns every field.
pub fn on_create(obj: &mut Value, manager: &str, api_version: &str, time: &str) {
    let paths: BTreeSet<Path> = leaves(obj).into_iter().map(|(p, _)| p).collect();
    let entries = if paths.is_empty() {
        Vec::new()
    } else {
        vec![entry(manager, api_version, time, &paths)]
    };
    set_entries(obj, entries);
}

/// Moves the fields an update by `manager` changed from `old` to `new`.
pub fn on_update(old: &Value, new: &mut Value, manager: &str, api_version: &str, time: &str) {
    let before: Vec<(Path, &Value)> = leaves(old);
    let after: Vec<(Path, &Value)> = leaves(new);
    let before_paths: BTreeSet<&Path> = before.iter().map(|(p, _)| p).collect();
    let after_paths: BTreeSet<&Path> = after.iter().map(|(p, _)| p).collect();
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|(p, v)| !before.iter().any(|(q, w)| q == p && w == v))
        .map(|(p, _)| p.clone())
        .collect();
    let removed: BTreeSet<Path> = before_paths
        .difference(&after_paths)
        .map(|p| (*p).clone())
        .collect();
    let mut entries = entries(old);
    if changed.is_empty() && removed.is_empty() {
        set_entries(new, entries);
        return;
    }
    // A field that became a map (or the reverse) leaves its old path.
    let stale = |p: &Path| {
        removed.contains(p)
            || changed.contains(p)
            || changed.iter().any(|c| c.starts_with(p) || p.starts_with(c))
    };
    let mut mine: BTreeSet<Path> = BTreeSet::new();
    entries.retain_mut(|e| {
        let paths: BTreeSet<Path> = paths_of(&e["fieldsV1"])
            .into_iter()
            .filter(|p| !stale(p))
            .collect();
        if e["manager"] == manager && e["operation"] == "Update" {
            mine = paths;
            return false;
        }
        e["fieldsV1"] = fields_of(&paths);
        !paths.is_empty()
    });
    mine.extend(changed);
    if !mine.is_empty() {
        entries.push(entry(manager, api_version, time, &mine));
    }
    set_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_owns_every_field_but_server_metadata() {
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "uid": "u", "labels": {"app": "web"}},
            "data": {"a": "b"},
        });
        on_create(&mut cm, "kubectl-create", "v1", "T");
        assert_eq!(
            cm["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                "time": "T", "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:data": {".": {}, "f:a": {}},
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                },
            }])
        );
    }

    #[test]
    fn updates_move_changed_fields() {
        let mut old = json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}});
        on_create(&mut old, "creator", "v1", "T0");
        let mut new = json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "3", "c": "4"}});
        on_update(&old, &mut new, "editor", "v1", "T1");
        let entries = new["metadata"]["managedFields"]
            .as_array()
            .expect("entries")
            .clone();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["manager"], "creator");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:data": {".": {}, "f:a": {}}})
        );
        assert_eq!(entries[1]["manager"], "editor");
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:data": {".": {}, "f:b": {}, "f:c": {}}})
        );
        // Nothing changes: the entries stay as they were.
        let mut same = new.clone();
        on_update(&new, &mut same, "third", "v1", "T2");
        assert_eq!(same, new);
        // The last field of a manager goes: so does the manager.
        let mut fewer = json!({"metadata": {"name": "x"}, "data": {"b": "3", "c": "4"}});
        on_update(&new, &mut fewer, "editor", "v1", "T3");
        let entries = fewer["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "editor");
    }
}
