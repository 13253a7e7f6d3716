//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902,
//! `json`), strategic merge patch (`strategic`) applied to an object as a
//! `serde_json::Value`, and the media type of server-side apply (served by
//! [`apply`](super::apply)). The handler reads the current object, applies
//! the patch here, and writes the result as an update (so validation and
//! optimistic concurrency are the update's).
//!
//! Strategic merge patch follows the kind's schema ([`Shape`]), whose list
//! extensions come from the merge-key table in [`lists`](super::lists).

use serde_json::{Map, Value};

use super::shape::Shape;
use super::status::ApiError;

mod json;
mod strategic;

pub use json::json_patch;

/// The patch formats served, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, ApiError> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            _ => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
                ),
                details: None,
                fields: None,
            }),
        }
    }
}

/// Applies `patch` (the request body) of type `kind` to `target`, whose
/// schema is `shape`. Server-side apply is not a patch of this kind: it
/// is a 415 here (the handler serves it before).
pub fn apply(
    kind: PatchType,
    target: &Value,
    patch: &[u8],
    shape: Shape,
) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|err| ApiError::bad_request(format!("the patch is not valid JSON: {err}")))?;
    match kind {
        PatchType::Json => json_patch(target, &patch),
        PatchType::Merge | PatchType::Strategic if !patch.is_object() => {
            Err(ApiError::bad_request("a merge patch must be a JSON object"))
        }
        PatchType::Merge => Ok(merge_patch(target, &patch)),
        PatchType::Strategic => strategic::patch_map(target, &patch, shape, ""),
        PatchType::Apply => Err(ApiError::bad_request(
            "server-side apply is not a merge patch",
        )),
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
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8")
                .expect("merge"),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml").expect("apply"),
            PatchType::Apply
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+cbor")
                .expect_err("cbor")
                .code,
            415
        );
    }
}
