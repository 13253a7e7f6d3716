use prost::Message;
use serde_json::{Map, Value, json};

use super::gnostic::{Document, Schema};
use super::*;
use crate::api::resources::Registry;

fn docs() -> Documents {
    Documents::build(&Registry::builtin())
}

fn yaml(any: &Option<gnostic::Any>) -> Option<Value> {
    any.as_ref()
        .map(|a| serde_json::from_str(&a.yaml).expect("the yaml is JSON"))
}

/// A decoded `Schema` back as v2 JSON (the inverse of `gnostic::schema`
/// for the keywords Cairn's documents use).
fn to_json(s: &Schema) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), Value::from(v));
        }
    };
    text("$ref", &s.r#ref);
    text("format", &s.format);
    text("description", &s.description);
    text("pattern", &s.pattern);
    if let Some(d) = yaml(&s.default) {
        m.insert("default".into(), d);
    }
    if !s.required.is_empty() {
        m.insert("required".into(), json!(s.required));
    }
    if !s.r#enum.is_empty() {
        let values: Vec<Value> = s
            .r#enum
            .iter()
            .map(|a| yaml(&Some(a.clone())))
            .collect::<Option<_>>()
            .expect("enum");
        m.insert("enum".into(), Value::Array(values));
    }
    if let Some(t) = &s.r#type {
        m.insert("type".into(), Value::from(t.value.join(",")));
    }
    if let Some(items) = &s.items {
        assert_eq!(items.schema.len(), 1);
        m.insert("items".into(), to_json(&items.schema[0]));
    }
    if let Some(a) = &s.additional_properties {
        let v = match (&a.schema, a.boolean) {
            (Some(schema), None) => to_json(schema),
            (None, Some(b)) => Value::Bool(b),
            other => panic!("additionalProperties {other:?}"),
        };
        m.insert("additionalProperties".into(), v);
    }
    if let Some(props) = &s.properties {
        let props: Map<String, Value> = props
            .additional_properties
            .iter()
            .map(|p| (p.name.clone(), to_json(p.value.as_ref().expect("value"))))
            .collect();
        m.insert("properties".into(), Value::Object(props));
    }
    for ext in &s.vendor_extension {
        m.insert(ext.name.clone(), yaml(&ext.value).expect("extension value"));
    }
    Value::Object(m)
}

fn decode(docs: &Documents) -> (Spec, Document) {
    let spec = Spec::build(docs);
    let doc = Document::decode(spec.to_protobuf().as_slice()).expect("decodes");
    (spec, doc)
}

#[test]
fn definitions_round_trip_through_protobuf() {
    let (spec, doc) = decode(&docs());
    assert_eq!(doc.swagger, "2.0");
    assert_eq!(
        doc.info.as_ref().map(|i| i.title.as_str()),
        Some("Kubernetes")
    );
    let defs = doc.definitions.expect("definitions").additional_properties;
    assert_eq!(defs.len(), spec.definitions.len());
    for name in [
        "io.k8s.api.core.v1.Pod",
        "io.k8s.api.core.v1.PodSpec",
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "io.k8s.api.apps.v1.DeploymentList",
    ] {
        let decoded = defs
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{name} is defined"));
        assert_eq!(
            to_json(decoded.value.as_ref().expect("schema")),
            spec.definitions[name],
            "{name}"
        );
    }
    let pod = &spec.definitions["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    assert_eq!(
        pod["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );
    let containers = &spec.definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(
        containers["items"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.Container"
    );
}

/// What kube-openapi's `proto.NewOpenAPIData` refuses (it fails the
/// whole document over one of these).
fn check(schema: &Schema, defs: &[String], path: &str, problems: &mut Vec<String>) {
    let types = schema
        .r#type
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_default();
    if !schema.r#ref.is_empty() {
        let name = schema
            .r#ref
            .strip_prefix("#/definitions/")
            .unwrap_or_default();
        if !defs.iter().any(|d| d == name) {
            problems.push(format!(
                "{path}: unknown model in reference {}",
                schema.r#ref
            ));
        }
        if !types.is_empty()
            || schema
                .properties
                .as_ref()
                .is_some_and(|p| !p.additional_properties.is_empty())
        {
            problems.push(format!("{path}: a reference with a type or properties"));
        }
        return;
    }
    match types.as_slice() {
        [] => {}
        [t] if t == "object" => {}
        [t] if t == "array" => match &schema.items {
            Some(items) if items.schema.len() == 1 => {
                check(&items.schema[0], defs, &format!("{path}[]"), problems)
            }
            _ => problems.push(format!("{path}: array without exactly one item schema")),
        },
        [t] if ["string", "number", "integer", "boolean"].contains(&t.as_str()) => {}
        other => problems.push(format!("{path}: type {other:?}")),
    }
    for p in schema
        .properties
        .iter()
        .flat_map(|p| &p.additional_properties)
    {
        match &p.value {
            Some(v) => check(v, defs, &format!("{path}.{}", p.name), problems),
            None => problems.push(format!("{path}.{}: no schema", p.name)),
        }
    }
    if let Some(s) = schema
        .additional_properties
        .as_ref()
        .and_then(|a| a.schema.as_ref())
    {
        check(s, defs, &format!("{path}{{}}"), problems);
    }
    for ext in &schema.vendor_extension {
        if yaml(&ext.value).is_none() {
            problems.push(format!("{path}: extension {} without a value", ext.name));
        }
    }
}

#[test]
fn every_definition_reads_as_kube_openapi_reads_it() {
    let (_, doc) = decode(&docs());
    let defs = doc.definitions.expect("definitions").additional_properties;
    let names: Vec<String> = defs.iter().map(|d| d.name.clone()).collect();
    let mut problems = Vec::new();
    for d in &defs {
        check(
            d.value.as_ref().expect("schema"),
            &names,
            &d.name,
            &mut problems,
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Every review kind is there for kubectl to find by its kind.
    for kind in [
        "SelfSubjectAccessReview",
        "TokenReview",
        "SelfSubjectReview",
        "SubjectAccessReview",
    ] {
        assert!(
            defs.iter().any(|d| d
                .value
                .as_ref()
                .is_some_and(|s| s.vendor_extension.iter().any(|e| {
                    e.name == "x-kubernetes-group-version-kind"
                        && yaml(&e.value).is_some_and(|v| v[0]["kind"] == kind)
                }))),
            "{kind}"
        );
    }
}

#[test]
fn paths_keep_operations_and_field_validation() {
    let (spec, doc) = decode(&docs());
    let path = "/api/v1/namespaces/{namespace}/configmaps/{name}";
    let item = &spec.paths[path];
    assert_eq!(
        item["patch"]["x-kubernetes-group-version-kind"]["kind"],
        "ConfigMap"
    );
    let decoded = doc
        .paths
        .expect("paths")
        .path
        .into_iter()
        .find(|p| p.name == path)
        .and_then(|p| p.value)
        .expect("path item");
    let patch = decoded.patch.expect("patch");
    assert_eq!(patch.operation_id, "patchCoreV1NamespacedConfigMap");
    let names: Vec<String> = patch
        .parameters
        .iter()
        .filter_map(|p| p.parameter.as_ref())
        .filter_map(|p| p.non_body_parameter.as_ref())
        .filter_map(|p| p.query_parameter_sub_schema.as_ref())
        .map(|q| q.name.clone())
        .collect();
    assert!(names.iter().any(|n| n == "fieldValidation"), "{names:?}");
    let body = patch
        .parameters
        .iter()
        .filter_map(|p| p.parameter.as_ref())
        .find_map(|p| p.body_parameter.as_ref())
        .expect("body");
    assert_eq!(
        body.schema.as_ref().map(|s| s.r#ref.as_str()),
        Some("#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch")
    );
    // The review kinds are created, never patched.
    let review = &spec.paths["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"];
    assert!(review["post"].is_object() && review.get("patch").is_none());
}

#[test]
fn negotiates_the_encoding_and_answers_not_modified() {
    let docs = docs();
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(PROTOBUF_ASKED));
    let pb = serve(&docs, &headers).expect("served");
    assert_eq!(pb.status(), StatusCode::OK);
    assert_eq!(pb.headers()[header::CONTENT_TYPE], PROTOBUF);
    let etag = pb.headers()[header::ETAG].clone();
    headers.insert(header::IF_NONE_MATCH, etag.clone());
    let again = serve(&docs, &headers).expect("served");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // JSON has its own tag.
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, */*"),
    );
    headers.insert(header::IF_NONE_MATCH, etag);
    let json = serve(&docs, &headers).expect("served");
    assert_eq!(json.status(), StatusCode::OK);
    assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");

    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
    assert_eq!(serve(&docs, &headers).expect_err("406").code, 406);
}
