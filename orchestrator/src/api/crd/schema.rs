//! Custom resources against their version's `openAPIV3Schema`: pruning of
//! unknown fields, `default`s, and validation with upstream's messages.
//!
//! Why not the `jsonschema` crate: CRD schemas are OpenAPI v3 *structural*
//! schemas, not JSON Schema documents — `nullable`, the `x-kubernetes-*`
//! extensions, pruning and defaulting are Kubernetes semantics a JSON Schema
//! validator does not have, its error paths are JSON pointers rather than
//! the `spec.items[0].name` fields kubectl users see, and it pulls in a
//! large dependency tree (regex, URL, ahash, number formats...) for a
//! static binary where size matters. A walk over `serde_json::Value` driven
//! by k8s-openapi's typed `JSONSchemaProps` does all three jobs in one
//! place; `pattern` uses `regex-lite` (Go's RE2 syntax is a subset of what
//! it accepts, at a fraction of `regex`'s size).
//!
//! The order is upstream's: [`prune`] (unknown fields; `fieldValidation`
//! decides whether they are an error), then [`default`] (non-nullable
//! `null`s are dropped, missing fields with a `default` are set), then
//! [`validate`] (422 causes naming each field).
//!
//! # Current limitations
//! - `format` is not checked; `x-kubernetes-list-type: set|map`
//!   uniqueness and CEL rules are not enforced.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::{Map, Value};

use crate::api::strategy::Errors;

/// `path.key`, or `key` at the root.
pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The schema of an array's items.
pub fn items(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(s)) => Some(s),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.first(),
        None => None,
    }
}

/// The schema of an object's other keys (`additionalProperties: {...}`).
fn additional(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s),
        _ => None,
    }
}

fn flag(v: Option<bool>) -> bool {
    v.unwrap_or(false)
}

/// Removes the fields `schema` does not describe from `value`, recording
/// their paths in `unknown`. At the root (`path` empty) `apiVersion`,
/// `kind` and `metadata` always stay.
pub fn prune(schema: &JSONSchemaProps, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if flag(schema.x_kubernetes_int_or_string) {
        return;
    }
    match value {
        Value::Object(map) => {
            let preserve = flag(schema.x_kubernetes_preserve_unknown_fields)
                || matches!(
                    schema.additional_properties,
                    Some(JSONSchemaPropsOrBool::Bool(true))
                );
            let embedded = path.is_empty() || flag(schema.x_kubernetes_embedded_resource);
            let mut drop = Vec::new();
            for (key, field) in map.iter_mut() {
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = schema
                    .properties
                    .as_ref()
                    .and_then(|p| p.get(key))
                    .or_else(|| additional(schema));
                match sub {
                    Some(sub) => prune(sub, field, &child(path, key), unknown),
                    None if preserve => {}
                    None => {
                        unknown.push(child(path, key));
                        drop.push(key.clone());
                    }
                }
            }
            for key in drop {
                map.remove(&key);
            }
        }
        Value::Array(list) => {
            if let Some(sub) = items(schema) {
                for (i, item) in list.iter_mut().enumerate() {
                    prune(sub, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Drops `null`s of non-nullable fields and sets missing fields that have
/// a `default`, recursively.
pub fn default(schema: &JSONSchemaProps, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = &schema.properties {
                map.retain(|key, v| {
                    !(v.is_null() && props.get(key).is_some_and(|p| !flag(p.nullable)))
                });
                for (key, prop) in props {
                    if let Some(d) = &prop.default
                        && !map.contains_key(key)
                    {
                        map.insert(key.clone(), d.0.clone());
                    }
                }
            }
            if let Some(extra) = additional(schema)
                && !flag(extra.nullable)
            {
                map.retain(|_, v| !v.is_null());
            }
            for (key, field) in map.iter_mut() {
                let sub = schema
                    .properties
                    .as_ref()
                    .and_then(|p| p.get(key))
                    .or_else(|| additional(schema));
                if let Some(sub) = sub {
                    default(sub, field);
                }
            }
        }
        Value::Array(list) => {
            if let Some(sub) = items(schema) {
                list.iter_mut().for_each(|item| default(sub, item));
            }
        }
        _ => {}
    }
}

/// The JSON type name of `value`, as upstream's messages print it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_ok(want: &str, value: &Value) -> bool {
    match want {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => is_integer(value),
        _ => true,
    }
}

/// A number as Go prints it in messages (`3`, not `3.0`).
fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// Checks `value` against `schema`, adding a cause per failure at `path`.
pub fn validate(schema: &JSONSchemaProps, value: &Value, path: &str, errors: &mut Errors) {
    let shown = if path.is_empty() { "body" } else { path };
    if value.is_null() {
        if !flag(schema.nullable) && schema.type_.as_deref().is_some_and(|t| !t.is_empty()) {
            let t = schema.type_.as_deref().unwrap_or_default();
            errors.invalid_repr(
                path,
                "\"null\"",
                &format!("{shown} in body must be of type {t}: \"null\""),
            );
        }
        return;
    }
    if flag(schema.x_kubernetes_int_or_string) {
        if !(is_integer(value) || value.is_string()) {
            errors.invalid_repr(
                path,
                &format!("{:?}", type_name(value)),
                &format!(
                    "{shown} in body must be of type integer-or-string: {:?}",
                    type_name(value)
                ),
            );
            return;
        }
    } else if let Some(t) = schema.type_.as_deref().filter(|t| !t.is_empty())
        && !type_ok(t, value)
    {
        let actual = format!("{:?}", type_name(value));
        errors.invalid_repr(
            path,
            &actual,
            &format!("{shown} in body must be of type {t}: {actual}"),
        );
        return;
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| &a.0 == value)
    {
        let quoted: Vec<String> = allowed
            .iter()
            .map(|a| match &a.0 {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let supported: Vec<&str> = quoted.iter().map(String::as_str).collect();
        errors.unsupported(path, value, &supported);
    }
    match value {
        Value::Number(n) => number(schema, n.as_f64().unwrap_or(0.0), value, path, errors),
        Value::String(s) => string(schema, s, value, path, errors),
        Value::Array(list) => array(schema, list, value, path, errors),
        Value::Object(map) => object(schema, map, path, errors),
        _ => {}
    }
    combinators(schema, value, path, errors);
}

fn number(schema: &JSONSchemaProps, n: f64, value: &Value, path: &str, errors: &mut Errors) {
    let shown = if path.is_empty() { "body" } else { path };
    if let Some(min) = schema.minimum {
        let exclusive = flag(schema.exclusive_minimum);
        if n < min || (exclusive && n == min) {
            let op = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.invalid(
                path,
                value,
                &format!("{shown} in body should be {op} {}", num(min)),
            );
        }
    }
    if let Some(max) = schema.maximum {
        let exclusive = flag(schema.exclusive_maximum);
        if n > max || (exclusive && n == max) {
            let op = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.invalid(
                path,
                value,
                &format!("{shown} in body should be {op} {}", num(max)),
            );
        }
    }
    if let Some(m) = schema.multiple_of.filter(|m| *m > 0.0)
        && (n / m).fract() != 0.0
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body should be a multiple of {}", num(m)),
        );
    }
}

fn string(schema: &JSONSchemaProps, s: &str, value: &Value, path: &str, errors: &mut Errors) {
    let shown = if path.is_empty() { "body" } else { path };
    let len = s.chars().count() as i64;
    if let Some(max) = schema.max_length
        && len > max
    {
        errors.other(
            "FieldValueTooLong",
            path,
            format!("Too long: may not be more than {max} bytes"),
        );
    }
    if let Some(min) = schema.min_length
        && len < min
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body should be at least {min} chars long"),
        );
    }
    if let Some(pattern) = &schema.pattern {
        match regex_lite::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => errors.invalid(
                path,
                value,
                &format!("{shown} in body should match '{pattern}'"),
            ),
            Err(_) => errors.invalid(
                path,
                value,
                &format!("the schema's pattern {pattern:?} does not compile"),
            ),
        }
    }
}

fn array(schema: &JSONSchemaProps, list: &[Value], value: &Value, path: &str, errors: &mut Errors) {
    let shown = if path.is_empty() { "body" } else { path };
    let len = list.len() as i64;
    if let Some(max) = schema.max_items
        && len > max
    {
        errors.other(
            "FieldValueTooMany",
            path,
            format!("Too many: {len}: must have at most {max} items"),
        );
    }
    if let Some(min) = schema.min_items
        && len < min
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body should have at least {min} items"),
        );
    }
    if flag(schema.unique_items) {
        for (i, item) in list.iter().enumerate() {
            if list[..i].contains(item) {
                errors.duplicate(format!("{path}[{i}]"), item);
            }
        }
    }
    if let Some(sub) = items(schema) {
        for (i, item) in list.iter().enumerate() {
            validate(sub, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn object(schema: &JSONSchemaProps, map: &Map<String, Value>, path: &str, errors: &mut Errors) {
    let shown = if path.is_empty() { "body" } else { path };
    for name in schema.required.iter().flatten() {
        if !map.contains_key(name) {
            errors.required(child(path, name), "");
        }
    }
    let count = map.len() as i64;
    if let Some(max) = schema.max_properties
        && count > max
    {
        errors.other(
            "FieldValueTooMany",
            path,
            format!("Too many: {count}: must have at most {max} items"),
        );
    }
    if let Some(min) = schema.min_properties
        && count < min
    {
        errors.invalid_repr(
            path,
            &count.to_string(),
            &format!("{shown} in body should have at least {min} properties"),
        );
    }
    let root = path.is_empty();
    for (key, field) in map {
        // The root's metadata is ObjectMeta, checked by the handlers.
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let sub = schema
            .properties
            .as_ref()
            .and_then(|p| p.get(key))
            .or_else(|| additional(schema));
        if let Some(sub) = sub {
            validate(sub, field, &child(path, key), errors);
        }
    }
}

/// `allOf`, `anyOf`, `oneOf` and `not`.
fn combinators(schema: &JSONSchemaProps, value: &Value, path: &str, errors: &mut Errors) {
    let passes = |s: &JSONSchemaProps| {
        let mut e = Errors::default();
        validate(s, value, path, &mut e);
        e.is_empty()
    };
    for s in schema.all_of.iter().flatten() {
        validate(s, value, path, errors);
    }
    let shown = if path.is_empty() { "body" } else { path };
    if let Some(any) = &schema.any_of
        && !any.iter().any(passes)
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body must validate at least one schema (anyOf)"),
        );
    }
    if let Some(one) = &schema.one_of
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body must validate one and only one schema (oneOf)"),
        );
    }
    if let Some(not) = &schema.not
        && passes(not)
    {
        errors.invalid(
            path,
            value,
            &format!("{shown} in body must not validate the schema (not)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> JSONSchemaProps {
        serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z:0-9.]+$"},
                        "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "port": {"x-kubernetes-int-or-string": true},
                        "note": {"type": "string", "nullable": true},
                        "ratio": {"type": "number", "exclusiveMinimum": true, "minimum": 0},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "empty": {"type": "object"},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        }))
        .expect("schema")
    }

    fn check(value: Value) -> Vec<(String, String)> {
        let mut errors = Errors::default();
        validate(&schema(), &value, "", &mut errors);
        errors
            .causes()
            .iter()
            .map(|c| (c.field.clone(), c.message.clone()))
            .collect()
    }

    #[test]
    fn good_objects_pass() {
        let ok = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"}, "spec": {
            "image": "nginx:1.27", "replicas": 3, "color": "red", "port": "http", "note": null,
            "ratio": 0.5, "tags": ["a"], "labels": {"a": "b"}, "free": {"x": [1]},
        }});
        assert_eq!(check(ok), []);
        assert_eq!(
            check(json!({"spec": {"image": "a", "port": 80, "replicas": 2.0}})),
            []
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        let bad = check(json!({"spec": {
            "replicas": "3", "color": "pink", "port": true, "ratio": 0, "tags": ["a", "b", "c"],
            "labels": {"a": 1}, "note": 5,
        }, "status": {"ready": "yes"}}));
        let fields: Vec<&str> = bad.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.image",
                "spec.color",
                "spec.labels.a",
                "spec.note",
                "spec.port",
                "spec.ratio",
                "spec.replicas",
                "spec.tags",
                "status.ready"
            ]
        );
        let message = |field: &str| {
            bad.iter()
                .find(|(f, _)| f == field)
                .map(|(_, m)| m.clone())
                .unwrap_or_default()
        };
        assert_eq!(message("spec.image"), "Required value");
        assert_eq!(
            message("spec.replicas"),
            "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
        assert_eq!(
            message("spec.color"),
            "Unsupported value: \"pink\": supported values: \"red\", \"blue\""
        );
        assert_eq!(
            message("spec.ratio"),
            "Invalid value: 0: spec.ratio in body should be greater than 0"
        );
        assert_eq!(
            message("spec.tags"),
            "Too many: 3: must have at most 2 items"
        );
        let limits = check(json!({"spec": {"image": "UPPER", "replicas": 11, "tags": []}}));
        let messages: Vec<&str> = limits.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Invalid value: \"UPPER\": spec.image in body should match '^[a-z:0-9.]+$'",
                "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
                "Invalid value: []: spec.tags in body should have at least 1 items",
            ]
        );
        let long = check(json!({"spec": {"image": "a".repeat(21), "replicas": -1}}));
        assert_eq!(
            long[0],
            (
                "spec.image".into(),
                "Too long: may not be more than 20 bytes".into()
            )
        );
        assert_eq!(
            long[1].1,
            "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
        );
    }

    #[test]
    fn pruning_drops_what_the_schema_lacks() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"}, "extra": 1, "spec": {
            "image": "a", "bogus": true, "free": {"kept": 1}, "empty": {"gone": 1},
            "labels": {"a": "b"}, "tags": ["x"],
        }});
        let mut unknown = Vec::new();
        prune(&schema(), &mut obj, "", &mut unknown);
        assert_eq!(unknown, ["extra", "spec.bogus", "spec.empty.gone"]);
        assert_eq!(obj["spec"]["free"]["kept"], 1);
        assert_eq!(obj["spec"]["empty"], json!({}));
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_and_null_fields() {
        let mut obj = json!({"spec": {"image": "a", "color": null, "note": null}});
        default(&schema(), &mut obj);
        assert_eq!(
            obj["spec"],
            json!({"image": "a", "replicas": 1, "note": null})
        );
        let mut set = json!({"spec": {"replicas": 5}});
        default(&schema(), &mut set);
        assert_eq!(set["spec"]["replicas"], 5);
    }

    #[test]
    fn combinators_apply() {
        let s: JSONSchemaProps = serde_json::from_value(json!({
            "type": "string",
            "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}],
            "not": {"enum": ["bad"]},
        }))
        .expect("schema");
        let run = |v: Value| {
            let mut e = Errors::default();
            validate(&s, &v, "x", &mut e);
            e.causes().len()
        };
        assert_eq!(run(json!("apple")), 0);
        assert_eq!(run(json!("cherry")), 1);
    }
}
