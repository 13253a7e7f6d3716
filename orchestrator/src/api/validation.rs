//! `fieldValidation`: unknown fields in create and update bodies, checked
//! against the same schemas `openapi` serves.
//!
//! As upstream: `Strict` refuses the request with a 400 `BadRequest`
//! (`strict decoding error: unknown field "spec.foo"`), `Warn` (the
//! default when the parameter is missing) accepts it and answers with a
//! `Warning` header per field, `Ignore` accepts it silently. Unknown fields
//! are never stored either way: the handlers keep the body as JSON, so a
//! field the schema lacks is dropped here before it reaches the store.
//!
//! # Current limitations
//! - Duplicate fields are not detected (the body is parsed by serde_json,
//!   which keeps the last one).

use hyper::Response;
use hyper::header::HeaderValue;
use serde_json::{Map, Value};

use super::Body;
use super::crd;
use super::openapi::Documents;
use super::query::Query;
use super::resources::ResourceType;
use super::status::ApiError;

/// What to do about unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Drop them silently.
    Ignore,
    /// Drop them, with a `Warning` header each.
    Warn,
    /// Refuse the request.
    Strict,
}

impl Directive {
    /// The `fieldValidation` query parameter; `Warn` when absent.
    pub fn from_query(query: &Query) -> Result<Directive, ApiError> {
        match query.get("fieldValidation").unwrap_or("") {
            "" | "Warn" => Ok(Directive::Warn),
            "Ignore" => Ok(Directive::Ignore),
            "Strict" => Ok(Directive::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Warnings to add to a response.
#[derive(Debug, Default)]
#[must_use]
pub struct Warnings(Vec<String>);

impl Warnings {
    /// Adds a `Warning: 299 - "<text>"` header per warning.
    pub fn attach(self, mut response: Response<Body>) -> Response<Body> {
        for text in self.0 {
            let value = format!("299 - {}", serde_json::Value::from(text));
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append("Warning", value);
            }
        }
        response
    }
}

/// Applies `fieldValidation` to the body `obj` of kind `rt`: removes unknown
/// fields, refuses them under `Strict`, or returns warnings.
pub fn check(
    docs: &Documents,
    rt: &ResourceType,
    query: &Query,
    mut obj: Value,
) -> Result<(Value, Warnings), ApiError> {
    let directive = Directive::from_query(query)?;
    let mut unknown = Vec::new();
    if let Some(custom) = &rt.custom {
        // A custom kind: its CRD's schema, and ObjectMeta for metadata.
        crd::schema::prune(&custom.schema, &mut obj, "", &mut unknown);
        if let Some(meta) = obj.get_mut("metadata") {
            let schema = Value::String("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
            prune(
                docs.schemas(),
                &schema_ref(&schema),
                meta,
                "metadata",
                &mut unknown,
            );
        }
    } else {
        let Some(name) = docs.schema_name(rt.api_version, rt.kind) else {
            return Ok((obj, Warnings::default()));
        };
        let schema = Value::String(name.to_owned());
        prune(
            docs.schemas(),
            &schema_ref(&schema),
            &mut obj,
            "",
            &mut unknown,
        );
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    match directive {
        Directive::Strict if !messages.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        ))),
        Directive::Warn => Ok((obj, Warnings(messages))),
        _ => Ok((obj, Warnings::default())),
    }
}

fn schema_ref(name: &Value) -> Value {
    let name = name.as_str().unwrap_or_default();
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Follows `$ref` and a single-entry `allOf` (upstream's "ref with a
/// description") to the schema that has the structure.
fn resolve<'a>(schemas: &'a Map<String, Value>, mut schema: &'a Value) -> Option<&'a Value> {
    for _ in 0..32 {
        if let Some(target) = schema["$ref"].as_str() {
            let name = target.strip_prefix("#/components/schemas/")?;
            schema = schemas.get(name)?;
        } else if let Some([only]) = schema["allOf"].as_array().map(Vec::as_slice) {
            schema = only;
        } else {
            return Some(schema);
        }
    }
    None
}

/// Removes from `value` the fields `schema` does not describe, recording
/// each one's path (`metadata.bogus`, `items[0].foo`) in `unknown`.
fn prune(
    schemas: &Map<String, Value>,
    schema: &Value,
    value: &mut Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    let Some(schema) = resolve(schemas, schema) else {
        return;
    };
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                // A free-form object (RawExtension, `type: object`).
                return;
            }
            let mut drop = Vec::new();
            for (key, field) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match properties.and_then(|p| p.get(key)).or(additional) {
                    Some(sub) => prune(schemas, sub, field, &child, unknown),
                    None => {
                        unknown.push(child);
                        drop.push(key.clone());
                    }
                }
            }
            for key in drop {
                map.remove(&key);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(schemas, item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;
    use serde_json::json;

    fn run(query: &str, obj: Value) -> Result<(Value, Warnings), ApiError> {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        let cm = registry.find("", "v1", "configmaps").expect("configmaps");
        check(&docs, cm, &Query::parse(Some(query)), obj)
    }

    fn configmap() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "x",
                "bogus": 1,
                "labels": {"a": "b"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "y", "uid": "u", "extra": true}],
            },
            "data": {"k": "v"},
            "spec": {"foo": 1},
        })
    }

    #[test]
    fn strict_names_every_unknown_field() {
        let err = run("fieldValidation=Strict", configmap()).expect_err("refused");
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "strict decoding error: unknown field \"metadata.bogus\", unknown field \"metadata.ownerReferences[0].extra\", unknown field \"spec\""
        );
    }

    #[test]
    fn warn_is_the_default_and_drops_the_fields() {
        let (obj, warnings) = run("", configmap()).expect("accepted");
        assert_eq!(warnings.0.len(), 3);
        assert!(obj.get("spec").is_none());
        assert!(obj["metadata"].get("bogus").is_none());
        assert_eq!(obj["data"]["k"], "v");
        assert_eq!(obj["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn ignore_accepts_and_known_fields_pass_strict() {
        let (_, warnings) = run("fieldValidation=Ignore", configmap()).expect("accepted");
        assert!(warnings.0.is_empty());
        let clean = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let (obj, _) = run("fieldValidation=Strict", clean.clone()).expect("accepted");
        assert_eq!(obj, clean);
        let err = run("fieldValidation=Loose", clean).expect_err("bad value");
        assert_eq!(err.code, 400);
    }
}
