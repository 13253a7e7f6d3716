//! OpenAPI 3.0 → Swagger 2.0, for the schemas and paths of the `/openapi/v3`
//! group-version documents.
//!
//! Schemas: `$ref`s move from `#/components/schemas/` to `#/definitions/`;
//! a `$ref` wrapped in a one-element `allOf` (how v3 gives a reference a
//! description or default) becomes a plain `$ref` beside them, as upstream's
//! v2 writes it. What Swagger 2.0 cannot say is dropped the way
//! apiextensions' `ToStructuralOpenAPIV2` drops it for CRDs, so that
//! kube-openapi's `proto` parser (kubectl's client-side validation), which
//! rejects the whole document over one schema it cannot read, accepts every
//! schema: `anyOf`/`oneOf`/`not` and other `allOf`s go; `nullable` values
//! lose `type`, `items` and `properties` (and leave `required`);
//! `x-kubernetes-preserve-unknown-fields` values lose `items` and
//! `properties`; an `array` left without `items` and an int-or-string
//! lose `type`; a `$ref` keeps no `type` or `properties` beside it.
//!
//! Paths: each operation keeps its id, tags, `x-kubernetes-*` extensions,
//! query and path parameters (typed from their v3 `schema`); a
//! `requestBody` becomes a `body` parameter plus `consumes`, responses
//! keep their description and schema plus `produces`.

use serde_json::{Map, Value};

use crate::api::openapi::REF_PREFIX;

/// Where v2 `$ref`s point.
pub const DEFINITIONS: &str = "#/definitions/";

/// Swagger 2.0 schema keywords kept as they are (besides `$ref`, the
/// nested schemas and the `x-` extensions).
const KEPT: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "enum",
    "example",
    "required",
    "pattern",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "discriminator",
    "readOnly",
];

/// A v3 schema as a v2 schema.
pub fn schema(v3: &Value) -> Value {
    let Some(m) = v3.as_object() else {
        return Value::Object(Map::new());
    };
    let mut out = Map::new();
    for key in KEPT {
        if let Some(v) = m.get(*key) {
            out.insert((*key).to_owned(), v.clone());
        }
    }
    for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        out.insert(k.clone(), v.clone());
    }
    let reference = m.get("$ref").and_then(Value::as_str).or_else(|| {
        // `allOf: [{$ref}]`: the reference, with this schema's siblings.
        match m.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            Some([only]) if only.as_object().is_some_and(|o| o.len() == 1) => {
                only.get("$ref").and_then(Value::as_str)
            }
            _ => None,
        }
    });
    if let Some(reference) = reference {
        let name = reference.strip_prefix(REF_PREFIX).unwrap_or(reference);
        out.remove("type");
        out.insert(
            "$ref".to_owned(),
            Value::String(format!("{DEFINITIONS}{name}")),
        );
        return Value::Object(out);
    }
    let nullable = m.get("nullable").and_then(Value::as_bool) == Some(true);
    let preserve = m
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if !nullable && !preserve {
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            let converted: Map<String, Value> = props
                .iter()
                .map(|(name, s)| (name.clone(), schema(s)))
                .collect();
            // A nullable field may be sent as null: not required in v2.
            if let Some(Value::Array(required)) = out.get_mut("required") {
                required.retain(|r| {
                    r.as_str()
                        .and_then(|r| props.get(r))
                        .and_then(|p| p.get("nullable"))
                        .and_then(Value::as_bool)
                        != Some(true)
                });
            }
            out.insert("properties".to_owned(), Value::Object(converted));
        }
        if let Some(items) = m.get("items") {
            out.insert("items".to_owned(), schema(items));
        }
    }
    if nullable {
        out.remove("type");
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            out.insert("additionalProperties".to_owned(), Value::Bool(*b));
        }
        Some(s @ Value::Object(_)) => {
            out.insert("additionalProperties".to_owned(), schema(s));
        }
        _ => {}
    }
    let untyped_array =
        out.get("type") == Some(&Value::from("array")) && !out.contains_key("items");
    let int_or_string = m.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if untyped_array || int_or_string {
        out.remove("type");
    }
    Value::Object(out)
}

/// A v3 path item as a v2 one.
pub fn path_item(v3: &Value) -> Value {
    let mut out = Map::new();
    if let Some(Value::Array(params)) = v3.get("parameters") {
        out.insert(
            "parameters".to_owned(),
            Value::Array(params.iter().map(parameter).collect()),
        );
    }
    for verb in ["get", "put", "post", "delete", "patch"] {
        if let Some(op) = v3.get(verb) {
            out.insert(verb.to_owned(), operation(op));
        }
    }
    Value::Object(out)
}

/// A query or path parameter: its v3 `schema`'s type beside it.
fn parameter(v3: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "in", "description", "required"] {
        if let Some(v) = v3.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    for key in ["type", "uniqueItems"] {
        if let Some(v) = v3.get("schema").and_then(|s| s.get(key)) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// The media types of a v3 `content` and the schema of the first.
fn content(v3: Option<&Value>) -> (Vec<Value>, Option<Value>) {
    let Some(content) = v3.and_then(|c| c.get("content")).and_then(Value::as_object) else {
        return (Vec::new(), None);
    };
    let types = content.keys().map(|k| Value::String(k.clone())).collect();
    let schema = content
        .values()
        .find_map(|c| c.get("schema"))
        .map(self::schema);
    (types, schema)
}

fn operation(v3: &Value) -> Value {
    let mut out = Map::new();
    let Some(m) = v3.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in m {
        if k == "operationId" || k == "tags" || k == "description" || k.starts_with("x-") {
            out.insert(k.clone(), v.clone());
        }
    }
    let mut params: Vec<Value> = m
        .get("parameters")
        .and_then(Value::as_array)
        .map(|p| p.iter().map(parameter).collect())
        .unwrap_or_default();
    if let Some(body) = m.get("requestBody") {
        let (consumes, schema) = content(Some(body));
        out.insert("consumes".to_owned(), Value::Array(consumes));
        let mut param = Map::new();
        param.insert("name".to_owned(), Value::from("body"));
        param.insert("in".to_owned(), Value::from("body"));
        if let Some(required) = body.get("required") {
            param.insert("required".to_owned(), required.clone());
        }
        if let Some(schema) = schema {
            param.insert("schema".to_owned(), schema);
        }
        params.push(Value::Object(param));
    }
    if !params.is_empty() {
        out.insert("parameters".to_owned(), Value::Array(params));
    }
    let mut produces: Vec<Value> = Vec::new();
    let mut responses = Map::new();
    for (code, response) in m
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let (types, schema) = content(Some(response));
        for t in types {
            if !produces.contains(&t) {
                produces.push(t);
            }
        }
        let mut r = Map::new();
        r.insert(
            "description".to_owned(),
            response
                .get("description")
                .cloned()
                .unwrap_or_else(|| Value::from("")),
        );
        if let Some(schema) = schema {
            r.insert("schema".to_owned(), schema);
        }
        responses.insert(code.clone(), Value::Object(r));
    }
    if !produces.is_empty() {
        out.insert("produces".to_owned(), Value::Array(produces));
    }
    out.insert("responses".to_owned(), Value::Object(responses));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_with_descriptions_become_plain_refs() {
        let v3 = json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "metadata": {
                    "description": "Standard metadata.",
                    "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                    "default": {},
                },
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/a.B"}},
            },
        });
        assert_eq!(
            schema(&v3),
            json!({
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "metadata": {
                        "description": "Standard metadata.",
                        "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                        "default": {},
                    },
                    "items": {"type": "array", "items": {"$ref": "#/definitions/a.B"}},
                },
            })
        );
    }

    #[test]
    fn what_v2_cannot_say_is_dropped_as_apiextensions_does() {
        let v3 = json!({
            "type": "object",
            "required": ["a", "n"],
            "properties": {
                "a": {"type": "string", "anyOf": [{"pattern": "x"}], "nullable": false},
                "n": {"type": "object", "nullable": true, "properties": {"x": {"type": "string"}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                         "properties": {"y": {"type": "integer"}}},
                "list": {"type": "array", "x-kubernetes-preserve-unknown-fields": true,
                         "items": {"type": "string"}},
                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            },
        });
        assert_eq!(
            schema(&v3),
            json!({
                "type": "object",
                "required": ["a"],
                "properties": {
                    "a": {"type": "string"},
                    "n": {},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "list": {"x-kubernetes-preserve-unknown-fields": true},
                    "port": {"x-kubernetes-int-or-string": true},
                },
            })
        );
    }

    #[test]
    fn operations_take_body_parameters() {
        let v3 = json!({
            "parameters": [{"name": "namespace", "in": "path", "required": true,
                            "schema": {"type": "string", "uniqueItems": true}}],
            "post": {
                "operationId": "createCoreV1NamespacedConfigMap",
                "x-kubernetes-action": "post",
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/io.k8s.api.core.v1.ConfigMap"}}}},
                "responses": {"201": {"description": "Created", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/io.k8s.api.core.v1.ConfigMap"}}}}},
            },
        });
        let cm = json!({"$ref": "#/definitions/io.k8s.api.core.v1.ConfigMap"});
        assert_eq!(
            path_item(&v3),
            json!({
                "parameters": [{"name": "namespace", "in": "path", "required": true,
                                "type": "string", "uniqueItems": true}],
                "post": {
                    "operationId": "createCoreV1NamespacedConfigMap",
                    "x-kubernetes-action": "post",
                    "consumes": ["application/json"],
                    "produces": ["application/json"],
                    "parameters": [
                        {"name": "dryRun", "in": "query", "type": "string"},
                        {"name": "body", "in": "body", "required": true, "schema": cm},
                    ],
                    "responses": {"201": {"description": "Created", "schema": cm}},
                },
            })
        );
    }
}
