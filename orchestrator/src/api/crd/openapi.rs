//! `/openapi/v3/apis/<group>/<version>` of the group-versions CRDs serve,
//! built the way apiextensions' `builder` does: each kind's schema is its
//! version's `openAPIV3Schema` with `apiVersion`, `kind` and a `metadata`
//! that refers to `ObjectMeta`, named `<reversed group>.<version>.<Kind>`,
//! plus its list kind and the same operations the built-in documents
//! describe (without strategic merge patch). kubectl reads these for
//! `explain` and to leave `apply` validation to the server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, ListMeta, ObjectMeta, Patch, Status,
};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::api::openapi::{
    Documents, OperationSchemas, add_paths, gv_path, gvk, list_schema, name_of_ref, schema_ref,
};
use crate::api::resources::{Registry, ResourceType};

/// `com.example.v1.Widget` for `Widget` of `example.com/v1`.
fn schema_name(rt: &ResourceType) -> String {
    let reversed: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind)
}

/// `builtin` plus a document per custom group-version of `registry`.
pub fn with_custom(builtin: &Documents, registry: &Registry) -> Documents {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for rt in registry.all().iter().filter(|rt| rt.custom.is_some()) {
        if !groups.contains(&(rt.group, rt.version)) {
            groups.push((rt.group, rt.version));
        }
    }
    let extra = groups
        .into_iter()
        .map(|(group, version)| {
            let types: Vec<&ResourceType> = registry
                .in_group_version(group, version)
                .filter(|rt| rt.custom.is_some())
                .collect();
            (gv_path(group, version), document(group, version, &types))
        })
        .collect();
    builtin.with_documents(extra)
}

/// The kind's schema: the CRD's, with the object envelope upstream adds.
fn kind_schema(rt: &ResourceType, object_meta: &str) -> Value {
    let mut schema = rt
        .custom
        .as_ref()
        .and_then(|c| serde_json::to_value(&c.schema).ok())
        .unwrap_or_else(|| json!({"type": "object"}));
    if !schema["properties"].is_object() {
        schema["properties"] = json!({});
    }
    let props = &mut schema["properties"];
    props["apiVersion"] = json!({
        "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.",
        "type": "string",
    });
    props["kind"] = json!({
        "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to.",
        "type": "string",
    });
    props["metadata"] = json!({
        "description": "Standard object's metadata.",
        "allOf": [schema_ref(object_meta)],
    });
    schema["x-kubernetes-group-version-kind"] = json!([gvk(rt, rt.kind)]);
    schema
}

fn document(group: &str, version: &str, types: &[&ResourceType]) -> Value {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let object_meta = name_of_ref(&generator.subschema_for::<ObjectMeta>());
    let list_meta = name_of_ref(&generator.subschema_for::<ListMeta>());
    let status = name_of_ref(&generator.subschema_for::<Status>());
    let delete_options = name_of_ref(&generator.subschema_for::<DeleteOptions>());
    let patch = name_of_ref(&generator.subschema_for::<Patch>());
    let mut schemas: Map<String, Value> = generator.take_definitions(true);
    crate::api::lists::annotate(&mut schemas);
    let mut paths = Map::new();
    for rt in types {
        let name = schema_name(rt);
        schemas.insert(name.clone(), kind_schema(rt, &object_meta));
        let list_name = format!("{name}List");
        schemas.insert(list_name.clone(), list_schema(rt, &name, &list_meta));
        let names = OperationSchemas {
            kind: &name,
            list: &list_name,
            status: &status,
            delete_options: &delete_options,
            patch: &patch,
        };
        add_paths(&mut paths, rt, &names);
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes CRD Swagger", "version": version, "x-group": group },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    #[test]
    fn documents_describe_the_custom_kind() {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                }}}],
            },
        }))
        .expect("crd");
        let builtin = Registry::builtin();
        let registry = builtin.with_custom(super::super::resource_types(&crd));
        let rt = registry
            .find("example.com", "v1", "widgets")
            .expect("widgets");
        let doc = document("example.com", "v1", &[rt]);
        let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(
            schema["properties"]["spec"]["properties"]["size"]["type"],
            "integer"
        );
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Widget"
        );
        let meta = schema["properties"]["metadata"]["allOf"][0]["$ref"]
            .as_str()
            .expect("ref");
        let meta = meta
            .strip_prefix("#/components/schemas/")
            .expect("local ref");
        assert!(doc["components"]["schemas"].get(meta).is_some());
        let patch =
            &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        let types: Vec<&String> = patch["requestBody"]["content"]
            .as_object()
            .expect("content")
            .keys()
            .collect();
        assert_eq!(
            types,
            [
                "application/json-patch+json",
                "application/merge-patch+json"
            ]
        );
    }
}
