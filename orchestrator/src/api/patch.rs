//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch, applied to an object as a `serde_json::Value`.
//! The handler reads the current object, applies the patch here, and
//! writes the result as an update (so validation and optimistic
//! concurrency are the update's).
//!
//! Strategic merge patch is merge patch plus directives, driven by a table
//! of list merge strategies ([`list_strategy`]): `$patch: replace|delete`
//! on maps, `$retainKeys`, `$deleteFromPrimitiveList/<field>`, and lists
//! merged by key or as sets where upstream's types say so.
//!
//! # Current limitations
//! - The merge-key table covers what the served kinds have
//!   (`metadata.finalizers`, `metadata.ownerReferences`); pods, services
//!   and workloads add theirs (`containers` by `name`, `ports` by
//!   `containerPort`...) when they are served. Lists not in the table are
//!   replaced whole, as in merge patch.
//! - `$setElementOrder` is accepted and ignored: merged lists keep the
//!   server's order with new elements appended.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch formats served, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, ApiError> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            _ => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
                ),
                details: None,
                fields: None,
            }),
        }
    }
}

/// Applies `patch` (the request body) of type `kind` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|err| ApiError::bad_request(format!("the patch is not valid JSON: {err}")))?;
    match kind {
        PatchType::Json => json_patch(target, &patch),
        PatchType::Merge | PatchType::Strategic if !patch.is_object() => {
            Err(ApiError::bad_request("a merge patch must be a JSON object"))
        }
        PatchType::Merge => Ok(merge_patch(target, &patch)),
        PatchType::Strategic => strategic_merge_patch(target, &patch, ""),
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge_patch(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

// ---- RFC 6902 -------------------------------------------------------------

/// Applies an RFC 6902 operation list. A malformed operation is a 400, an
/// operation that cannot apply (missing path, failed `test`) a 422; both
/// name the operation by index and `op`, as upstream's messages do.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Value::Array(ops) = patch else {
        return Err(ApiError::bad_request(
            "a JSON patch must be an array of operations",
        ));
    };
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op["op"].as_str().unwrap_or("");
        let malformed = |what: &str| {
            ApiError::bad_request(format!(
                "json patch operation {i} ({}): {what}",
                if name.is_empty() {
                    "missing \"op\""
                } else {
                    name
                }
            ))
        };
        let failed = |what: String| ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("json patch operation {i} ({name}) failed: {what}"),
            details: None,
            fields: None,
        };
        let path = op["path"]
            .as_str()
            .ok_or_else(|| malformed("missing \"path\""))?;
        let path = parse_pointer(path).map_err(|e| malformed(&e))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| malformed("missing \"value\""))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| malformed("missing \"from\""))
                .and_then(|f| parse_pointer(f).map_err(|e| malformed(&e)))
        };
        match name {
            "add" => add(&mut doc, &path, value()?).map_err(failed)?,
            "remove" => {
                remove(&mut doc, &path).map_err(failed)?;
            }
            "replace" => {
                let value = value()?;
                remove(&mut doc, &path).map_err(failed)?;
                add(&mut doc, &path, value).map_err(failed)?;
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(failed(
                        "cannot move a value into one of its children".into(),
                    ));
                }
                let moved = remove(&mut doc, &from).map_err(failed)?;
                add(&mut doc, &path, moved).map_err(failed)?;
            }
            "copy" => {
                let copied = get(&doc, &from()?).map_err(failed)?.clone();
                add(&mut doc, &path, copied).map_err(failed)?;
            }
            "test" => {
                let want = value()?;
                let got = get(&doc, &path).map_err(failed)?;
                if *got != want {
                    return Err(failed(format!(
                        "testing value {} failed: found {got}, expected {want}",
                        op["path"].as_str().unwrap_or("")
                    )));
                }
            }
            "" => return Err(malformed("an operation needs an \"op\"")),
            other => {
                return Err(malformed(&format!(
                    "unknown operation {other:?} (add, remove, replace, move, copy, test)"
                )));
            }
        }
    }
    Ok(doc)
}

/// RFC 6901 JSON pointer tokens (`~1` is `/`, `~0` is `~`).
fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("path {pointer:?} does not start with /"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn display(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn array_index(token: &str, len: usize, path: &[String]) -> Result<usize, String> {
    let ok = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    match token.parse::<usize>() {
        Ok(i) if ok && i < len => Ok(i),
        _ => Err(format!("index {token:?} out of range at {}", display(path))),
    }
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Result<&'a Value, String> {
    let mut cur = doc;
    for (depth, token) in path.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => map.get(token),
            Value::Array(items) => {
                let i = array_index(token, items.len(), &path[..=depth])?;
                items.get(i)
            }
            _ => None,
        }
        .ok_or_else(|| format!("path {} does not exist", display(&path[..=depth])))?;
    }
    Ok(cur)
}

/// The container of `path`'s last token.
fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for (depth, token) in path[..path.len() - 1].iter().enumerate() {
        let missing = || format!("path {} does not exist", display(&path[..=depth]));
        cur = match cur {
            Value::Object(map) => map.get_mut(token).ok_or_else(missing)?,
            Value::Array(items) => {
                let i = array_index(token, items.len(), &path[..=depth])?;
                &mut items[i]
            }
            _ => return Err(missing()),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) if last == "-" => {
            items.push(value);
            Ok(())
        }
        Value::Array(items) => {
            let i = array_index(last, items.len() + 1, path)?;
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "path {} does not exist",
            display(&path[..path.len() - 1])
        )),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some(last) = path.last() else {
        return Err("cannot remove the whole document".into());
    };
    let missing = || format!("path {} does not exist", display(path));
    match parent_mut(doc, path)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(items) => {
            let i = array_index(last, items.len(), path)?;
            Ok(items.remove(i))
        }
        _ => Err(missing()),
    }
}

// ---- strategic merge patch ------------------------------------------------

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Replaced whole (no `patchStrategy` upstream).
    Replace,
    /// A set of primitives: the patch's values are added.
    MergePrimitives,
    /// Objects merged by the value of a key field.
    MergeByKey(&'static str),
}

/// The merge table: upstream's `patchStrategy:"merge"` and
/// `patchMergeKey` tags for the fields of the served kinds, by dotted path.
fn list_strategy(path: &str) -> ListStrategy {
    match path {
        "metadata.finalizers" => ListStrategy::MergePrimitives,
        "metadata.ownerReferences" => ListStrategy::MergeByKey("uid"),
        _ => ListStrategy::Replace,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Applies a strategic merge patch map to `target` at dotted `path`.
fn strategic_merge_patch(target: &Value, patch: &Value, path: &str) -> Result<Value, ApiError> {
    let Value::Object(patch) = patch else {
        return Ok(patch.clone());
    };
    let bad = |what: String| ApiError::bad_request(format!("strategic merge patch: {what}"));
    let mut out = match (patch.get("$patch").and_then(Value::as_str), target) {
        (Some("delete"), _) => return Ok(Value::Null),
        // The patch, without its directives, is the new value.
        (Some("replace"), _) => Map::new(),
        (Some(other), _) => {
            return Err(bad(format!(
                "unknown $patch directive {other:?} at {}",
                if path.is_empty() { "the root" } else { path }
            )));
        }
        (None, Value::Object(map)) => map.clone(),
        (None, _) => Map::new(),
    };
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
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
            return Err(bad(format!("unknown directive {key:?}")));
        }
        let field_path = child_path(path, key);
        let current = out.get(key).cloned().unwrap_or(Value::Null);
        let merged = match value {
            Value::Null => None,
            Value::Object(_) => {
                let merged = strategic_merge_patch(&current, value, &field_path)?;
                (!merged.is_null()).then_some(merged)
            }
            Value::Array(items) => Some(merge_list(&current, items, &field_path)?),
            scalar => Some(scalar.clone()),
        };
        match merged {
            Some(v) => out.insert(key.clone(), v),
            None => out.remove(key),
        };
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(retain) = retain else {
            return Err(bad("$retainKeys must be a list".into()));
        };
        out.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(Value::Object(out))
}

fn merge_list(current: &Value, patch: &[Value], path: &str) -> Result<Value, ApiError> {
    let current = match current {
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    let replace = patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"));
    match list_strategy(path) {
        ListStrategy::Replace => Ok(Value::Array(strip_directives(patch))),
        _ if replace => Ok(Value::Array(strip_directives(patch))),
        ListStrategy::MergePrimitives => {
            let mut out = current;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeByKey(merge_key) => {
            let mut out = current;
            for item in patch {
                let Some(key) = item.get(merge_key) else {
                    return Err(ApiError::bad_request(format!(
                        "strategic merge patch: an element of {path} has no merge key {merge_key:?}"
                    )));
                };
                let at = out.iter().position(|c| c.get(merge_key) == Some(key));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => out[i] = strategic_merge_patch(&out[i], item, path)?,
                    (None, false) => out.push(strategic_merge_patch(&Value::Null, item, path)?),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// A list that replaces the current one, without `$patch` markers.
fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|item| {
            item.get("$patch").is_none() || item.as_object().is_some_and(|m| m.len() > 1)
        })
        .map(|item| match item {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's appendix A examples.
        for (target, patch, want) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            assert_eq!(merge_patch(&target, &patch), want, "{target} + {patch}");
        }
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"data": {"a": "1"}, "list": [1, 2]});
        let apply = |ops: Value| json_patch(&doc, &ops);
        assert_eq!(
            apply(json!([{"op": "add", "path": "/data/b", "value": "2"}])).expect("add"),
            json!({"data": {"a": "1", "b": "2"}, "list": [1, 2]})
        );
        assert_eq!(
            apply(json!([{"op": "add", "path": "/list/1", "value": 9}, {"op": "add", "path": "/list/-", "value": 3}]))
                .expect("array add")["list"],
            json!([1, 9, 2, 3])
        );
        assert_eq!(
            apply(json!([{"op": "remove", "path": "/data/a"}])).expect("remove")["data"],
            json!({})
        );
        assert_eq!(
            apply(json!([{"op": "replace", "path": "/list/0", "value": 5}])).expect("replace")["list"],
            json!([5, 2])
        );
        assert_eq!(
            apply(json!([{"op": "move", "from": "/data/a", "path": "/data/z"}])).expect("move")["data"],
            json!({"z": "1"})
        );
        assert_eq!(
            apply(json!([{"op": "copy", "from": "/data", "path": "/copy"}])).expect("copy")["copy"],
            json!({"a": "1"})
        );
        assert!(apply(json!([{"op": "test", "path": "/data/a", "value": "1"}])).is_ok());
        assert_eq!(
            apply(json!([{"op": "add", "path": "/a~1b", "value": 1}])).expect("escaped")["a/b"],
            1
        );

        let err =
            apply(json!([{"op": "test", "path": "/data/a", "value": "2"}])).expect_err("test");
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("operation 0 (test)"),
            "{}",
            err.message
        );
        let err = apply(json!([{"op": "remove", "path": "/data/nope"}])).expect_err("missing");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("/data/nope"), "{}", err.message);
        let err =
            apply(json!([{"op": "replace", "path": "/list/2", "value": 0}])).expect_err("index");
        assert_eq!(err.code, 422);
        let err = apply(
            json!([{"op": "add", "path": "/data/b", "value": "2"}, {"op": "frob", "path": "/x"}]),
        )
        .expect_err("unknown");
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("operation 1 (frob)"),
            "{}",
            err.message
        );
        assert_eq!(
            apply(json!([{"op": "add", "path": "/x"}]))
                .expect_err("value")
                .code,
            400
        );
        assert_eq!(
            apply(json!({"op": "add"})).expect_err("not a list").code,
            400
        );
        assert_eq!(
            apply(json!([{"op": "move", "from": "/data", "path": "/data/x"}]))
                .expect_err("into itself")
                .code,
            422
        );
    }

    #[test]
    fn strategic_merge_patch_directives() {
        let doc = json!({
            "metadata": {"name": "x", "finalizers": ["a"], "labels": {"k": "v", "j": "w"},
                "ownerReferences": [{"uid": "1", "name": "one"}, {"uid": "2", "name": "two"}]},
            "data": {"a": "1", "b": "2"},
            "spec": {"finalizers": ["kubernetes"]},
        });
        let smp = |p: Value| strategic_merge_patch(&doc, &p, "").expect("patch");
        // Like merge patch for maps and scalars.
        assert_eq!(
            smp(json!({"data": {"a": null, "c": "3"}}))["data"],
            json!({"b": "2", "c": "3"})
        );
        // $patch: replace and delete on maps.
        assert_eq!(
            smp(json!({"data": {"$patch": "replace", "z": "9"}}))["data"],
            json!({"z": "9"})
        );
        assert!(
            smp(json!({"data": {"$patch": "delete"}}))
                .get("data")
                .is_none()
        );
        // $retainKeys drops the keys it does not name.
        assert_eq!(
            smp(json!({"data": {"$retainKeys": ["b", "c"], "c": "3"}}))["data"],
            json!({"b": "2", "c": "3"})
        );
        // Lists with patchStrategy merge.
        assert_eq!(
            smp(json!({"metadata": {"finalizers": ["b", "a"]}}))["metadata"]["finalizers"],
            json!(["a", "b"])
        );
        assert_eq!(
            smp(json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}))["metadata"]["finalizers"],
            json!([])
        );
        assert_eq!(
            smp(json!({"metadata": {"ownerReferences": [
                {"uid": "2", "name": "deux"}, {"uid": "1", "$patch": "delete"}, {"uid": "3", "name": "three"}]}}))
                ["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "deux"}, {"uid": "3", "name": "three"}])
        );
        // Lists without a strategy are replaced.
        assert_eq!(
            smp(json!({"spec": {"finalizers": ["other"]}}))["spec"]["finalizers"],
            json!(["other"])
        );
        // $setElementOrder is accepted.
        assert_eq!(
            smp(json!({"metadata": {"$setElementOrder/finalizers": ["a"]}}))["metadata"]["finalizers"],
            json!(["a"])
        );
        assert_eq!(
            strategic_merge_patch(&doc, &json!({"data": {"$patch": "merge-ish"}}), "")
                .expect_err("bad directive")
                .code,
            400
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8")
                .expect("merge"),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml")
                .expect_err("apply")
                .code,
            415
        );
    }
}
