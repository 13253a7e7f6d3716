//! `metadata.managedFields`: which manager (`fieldManager`, else the
//! User-Agent's product) set which fields, as `FieldsV1` sets
//! (`{"f:data": {".": {}, "f:a": {}}}`, associative list items as
//! `k:{"name":"app"}`, see [`fieldset`]), so `kubectl get -o yaml
//! --show-managed-fields` shows who owns what and server-side apply
//! ([`apply`](super::apply)) finds conflicts.
//!
//! Creates, updates and patches are `operation: Update` entries. An update
//! gives its manager the fields it added or changed and takes them from
//! the other managers; removed fields leave every set; a manager left with
//! nothing is dropped; an update that changes nothing leaves the entries
//! (and so the object) as they were. Applies write `operation: Apply`
//! entries through [`set_entries`].

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::fieldset::{self, Path};
use super::shape::Shape;

/// The managed-fields entries of an object.
pub fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Replaces the entries of `obj` (none: the field goes), in upstream's
/// order: `Apply` before `Update`, then by time, manager and apiVersion.
pub fn set_entries(obj: &mut Value, mut entries: Vec<Value>) {
    entries.sort_by(|p, q| {
        let key = |e: &Value| {
            ["operation", "time", "manager", "apiVersion"]
                .map(|k| e[k].as_str().unwrap_or("").to_owned())
        };
        key(p).cmp(&key(q))
    });
    if let Some(meta) = obj["metadata"].as_object_mut() {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// One entry.
pub fn entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    time: &str,
    paths: &BTreeSet<Path>,
) -> Value {
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fieldset::encode(paths),
    })
}

/// Sets the entries of a created object: `manager` owns every field.
pub fn on_create(obj: &mut Value, shape: Shape, manager: &str, api_version: &str, time: &str) {
    let paths: BTreeSet<Path> = fieldset::leaves(obj, shape, true)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let entries = if paths.is_empty() {
        Vec::new()
    } else {
        vec![entry(manager, "Update", api_version, time, &paths)]
    };
    set_entries(obj, entries);
}

/// Moves the fields an update by `manager` changed from `old` to `new`.
pub fn on_update(
    old: &Value,
    new: &mut Value,
    shape: Shape,
    manager: &str,
    api_version: &str,
    time: &str,
) {
    let before = fieldset::leaves(old, shape, true);
    let after = fieldset::leaves(new, shape, true);
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
    // A leaf that became a map (or the reverse) is removed or changed.
    let stale = |p: &Path| removed.contains(p) || changed.contains(p);
    let mut mine: BTreeSet<Path> = BTreeSet::new();
    entries.retain_mut(|e| {
        let paths: BTreeSet<Path> = fieldset::decode(&e["fieldsV1"])
            .into_iter()
            .filter(|p| !stale(p))
            .collect();
        if e["manager"] == manager && e["operation"] == "Update" {
            mine = paths;
            return false;
        }
        e["fieldsV1"] = fieldset::encode(&paths);
        !paths.is_empty()
    });
    mine.extend(changed);
    if !mine.is_empty() {
        entries.push(entry(manager, "Update", api_version, time, &mine));
    }
    set_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::Documents;
    use crate::api::resources::Registry;
    use std::sync::OnceLock;

    /// The ConfigMap shape (data is a map with free keys).
    fn unknown() -> Shape<'static> {
        static DOCS: OnceLock<(Documents, Value)> = OnceLock::new();
        let (docs, root) = DOCS.get_or_init(|| {
            let registry = Registry::builtin();
            let docs = Documents::build(&registry);
            let root = crate::api::shape::root_of(
                &docs,
                registry.find("", "v1", "configmaps").expect("cm"),
            );
            (docs, root)
        });
        Shape::new(docs.schemas(), root)
    }

    #[test]
    fn create_owns_every_field_but_server_metadata() {
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "uid": "u", "labels": {"app": "web"}},
            "data": {"a": "b"},
        });
        on_create(&mut cm, unknown(), "kubectl-create", "v1", "T");
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
        on_create(&mut old, unknown(), "creator", "v1", "T0");
        let mut new = json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "3", "c": "4"}});
        on_update(&old, &mut new, unknown(), "editor", "v1", "T1");
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
            json!({"f:data": {"f:b": {}, "f:c": {}}})
        );
        // Nothing changes: the entries stay as they were.
        let mut same = new.clone();
        on_update(&new, &mut same, unknown(), "third", "v1", "T2");
        assert_eq!(same, new);
        // The creator keeps the data map itself when its key goes...
        let mut fewer = json!({"metadata": {"name": "x"}, "data": {"b": "3", "c": "4"}});
        on_update(&new, &mut fewer, unknown(), "editor", "v1", "T3");
        let entries = fewer["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data": {}}));
        // ...and when the last field of a manager goes, so does the manager.
        let mut none =
            json!({"metadata": {"name": "x"}, "data": {"b": "3", "c": "4"}, "binaryData": {}});
        let mut start = json!({"metadata": {"name": "x"}, "binaryData": {"z": "eg=="}});
        on_create(&mut start, unknown(), "creator", "v1", "T0");
        on_update(&start, &mut none, unknown(), "editor", "v1", "T4");
        let entries = none["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["manager"], "editor");
    }
}
