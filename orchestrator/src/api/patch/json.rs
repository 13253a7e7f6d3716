//! RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy` and
//! `test` over RFC 6901 pointers.

use serde_json::Value;

use crate::api::status::ApiError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
