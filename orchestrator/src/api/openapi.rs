//! OpenAPI v3: `/openapi/v3` (the root, one entry per group-version) and
//! `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`.
//!
//! kubectl needs these before `apply`, `create -f` and `replace -f` run
//! with default validation: it looks in the group-version document for a
//! `patch` operation tagged with the kind's `x-kubernetes-group-version-kind`
//! that takes a `fieldValidation` query parameter, and when it finds one it
//! leaves validation to the server (see `validation`). `kubectl explain`
//! reads `components.schemas`.
//!
//! The schemas are not a copied spec: each kind's schema comes from
//! k8s-openapi's `schemars` derive (through [`ResourceType::schema`]),
//! generated with OpenAPI 3.0 settings, so `$ref`s point into
//! `#/components/schemas/` and a `$ref` with a description becomes
//! `allOf: [{$ref}]` as upstream writes it. List kinds (k8s-openapi's
//! generic `List<T>` has no schema) are assembled from `ListMeta` and the
//! item schema. Documents are built once, at start.
//!
//! `/openapi/v2` is `openapi_v2`'s, converted from these documents.
//!
//! # Current limitations
//! - Operations are described with the parameters kubectl checks, not
//!   every parameter upstream lists; `patch` is advertised for every kind.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Patch, Status};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::Body;
use super::query::Query;
use super::resources::{Registry, ResourceType};
use super::status::ApiError;

/// Where `$ref`s point.
pub(crate) const REF_PREFIX: &str = "#/components/schemas/";

/// The OpenAPI documents of every served group-version, and the schemas
/// `validation` checks request bodies against.
#[derive(Debug, Clone)]
pub struct Documents {
    root: Served,
    /// `api/v1`, `apis/<group>/<version>` → its document.
    group_versions: BTreeMap<String, Served>,
    /// All component schemas by name (names are global, as upstream's).
    schemas: Map<String, Value>,
    /// (`apiVersion`, kind) → schema name.
    kinds: BTreeMap<(String, String), String>,
}

/// One served JSON document and its hash.
#[derive(Debug, Clone)]
struct Served {
    body: Bytes,
    hash: String,
}

impl Served {
    fn new(value: &Value) -> Served {
        // Serializing a serde_json::Value cannot fail.
        let body = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        // As upstream: the upper-case hex SHA-512 of the document.
        let digest = ring::digest::digest(&ring::digest::SHA512, &body);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        Served { body, hash }
    }
}

impl Documents {
    /// Generates the documents of every group-version in `registry`.
    pub fn build(registry: &Registry) -> Documents {
        let mut group_versions = BTreeMap::new();
        let mut schemas = Map::new();
        let mut kinds = BTreeMap::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for rt in registry.all() {
            if seen.contains(&(rt.group, rt.version)) {
                continue;
            }
            seen.push((rt.group, rt.version));
            let (doc, kind_names) = document(registry, rt.group, rt.version);
            if let Some(components) = doc["components"]["schemas"].as_object() {
                schemas.extend(components.clone());
            }
            for (kind, name) in kind_names {
                kinds.insert((rt.api_version.to_owned(), kind.to_owned()), name);
            }
            group_versions.insert(gv_path(rt.group, rt.version), Served::new(&doc));
        }
        Documents {
            root: root(&group_versions),
            group_versions,
            schemas,
            kinds,
        }
    }

    /// These documents plus `extra` (`apis/<group>/<version>` → document),
    /// for the group-versions CRDs serve; the schemas `validation` reads
    /// stay the built-in ones.
    pub fn with_documents(&self, extra: Vec<(String, Value)>) -> Documents {
        let mut docs = self.clone();
        for (path, doc) in extra {
            docs.group_versions
                .entry(path)
                .or_insert_with(|| Served::new(&doc));
        }
        docs.root = root(&docs.group_versions);
        docs
    }

    /// Every group-version document (`api/v1`, `apis/<group>/<version>`,
    /// built-in and custom), as served: what `openapi_v2` is built from.
    pub(crate) fn group_version_bodies(&self) -> impl Iterator<Item = &Bytes> {
        self.group_versions.values().map(|served| &served.body)
    }

    /// The hash of the `/openapi/v3` root, which changes whenever any
    /// group-version document does.
    pub(crate) fn root_hash(&self) -> &str {
        &self.root.hash
    }

    /// The component schemas, by name.
    pub fn schemas(&self) -> &Map<String, Value> {
        &self.schemas
    }

    /// The schema name of `kind` in `api_version`.
    pub fn schema_name(&self, api_version: &str, kind: &str) -> Option<&str> {
        self.kinds
            .get(&(api_version.to_owned(), kind.to_owned()))
            .map(String::as_str)
    }

    /// Serves `GET /openapi/<rest>`.
    pub fn serve(
        &self,
        rest: &[&str],
        query: &Query,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, ApiError> {
        let served = match rest {
            ["v3"] => &self.root,
            ["v3", gv @ ..] => self
                .group_versions
                .get(&gv.join("/"))
                .ok_or_else(|| ApiError::no_route(&format!("/openapi/v3/{}", gv.join("/"))))?,
            _ => return Err(ApiError::no_route(&format!("/openapi/{}", rest.join("/")))),
        };
        let asked_hash = query.get("hash");
        if let Some(hash) = asked_hash.filter(|h| *h != served.hash) {
            // A stale hash (the server changed): send the client to the current one.
            let path = rest.join("/");
            tracing::debug!(%hash, "redirecting a stale openapi hash");
            let location = format!("/openapi/{path}?hash={}", served.hash);
            return Ok(respond(StatusCode::MOVED_PERMANENTLY, Bytes::new(), |h| {
                if let Ok(v) = HeaderValue::from_str(&location) {
                    h.insert(header::LOCATION, v);
                }
            }));
        }
        let etag = format!("\"{}\"", served.hash);
        let cache = if asked_hash.is_some() {
            "public, immutable"
        } else {
            "no-cache, private"
        };
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let (code, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else {
            (StatusCode::OK, served.body.clone())
        };
        Ok(respond(code, body, |h| {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
        }))
    }
}

/// The `/openapi/v3` document: each group-version's URL with its hash.
fn root(group_versions: &BTreeMap<String, Served>) -> Served {
    let paths: Map<String, Value> = group_versions
        .iter()
        .map(|(path, served)| {
            let url = format!("/openapi/v3/{path}?hash={}", served.hash);
            (path.clone(), json!({ "serverRelativeURL": url }))
        })
        .collect();
    Served::new(&json!({ "paths": paths }))
}

fn respond(code: StatusCode, body: Bytes, headers: impl FnOnce(&mut HeaderMap)) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = code;
    headers(response.headers_mut());
    response
}

/// `api/v1` or `apis/<group>/<version>`.
pub(crate) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub(crate) fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{REF_PREFIX}{name}") })
}

pub(crate) fn name_of_ref(schema: &schemars::Schema) -> String {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(REF_PREFIX))
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn gvk(rt: &ResourceType, kind: &str) -> Value {
    json!({ "group": rt.group, "version": rt.version, "kind": kind })
}

/// The OpenAPI 3.0 document of one group-version, and (kind, schema name)
/// of its kinds and list kinds.
fn document(
    registry: &Registry,
    group: &str,
    version: &str,
) -> (Value, Vec<(&'static str, String)>) {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let list_meta = name_of_ref(&generator.subschema_for::<ListMeta>());
    let status = name_of_ref(&generator.subschema_for::<Status>());
    let delete_options = name_of_ref(&generator.subschema_for::<DeleteOptions>());
    let patch = name_of_ref(&generator.subschema_for::<Patch>());
    let types: Vec<&ResourceType> = registry.in_group_version(group, version).collect();
    let names: Vec<String> = types
        .iter()
        .map(|rt| name_of_ref(&(rt.schema.0)(&mut generator)))
        .collect();
    let mut schemas = generator.take_definitions(true);
    super::lists::annotate(&mut schemas);
    optional_metadata(&mut schemas);
    let mut kinds = Vec::new();
    let mut paths = Map::new();
    for (rt, name) in types.iter().zip(&names) {
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(rt, rt.kind)]),
            );
        }
        let list_name = format!("{name}List");
        kinds.push((rt.kind, name.clone()));
        if !rt.is_review() {
            schemas.insert(list_name.clone(), list_schema(rt, name, &list_meta));
            kinds.push((rt.list_kind, list_name.clone()));
        }
        let names = OperationSchemas {
            kind: name,
            list: &list_name,
            status: &status,
            delete_options: &delete_options,
            patch: &patch,
        };
        add_paths(&mut paths, rt, &names);
    }
    let title = if group.is_empty() {
        "Kubernetes".to_owned()
    } else {
        format!("Kubernetes {group}")
    };
    let doc = json!({
        "openapi": "3.0.0",
        "info": { "title": title, "version": version },
        "paths": paths,
        "components": { "schemas": schemas },
    });
    (doc, kinds)
}

/// Drops `metadata` from every schema's `required`: k8s-openapi's types
/// hold it unwrapped, so the derive lists it, but upstream's Go fields are
/// all `omitempty` and its documents never require it (kubectl's
/// client-side validation would refuse a manifest without one).
fn optional_metadata(schemas: &mut Map<String, Value>) {
    for schema in schemas.values_mut() {
        let Some(Value::Array(required)) = schema.get_mut("required") else {
            continue;
        };
        required.retain(|r| r != "metadata");
        if required.is_empty()
            && let Value::Object(schema) = schema
        {
            schema.remove("required");
        }
    }
}

/// The schema of `<Kind>List`, the way upstream's list types read.
pub(crate) fn list_schema(rt: &ResourceType, item: &str, list_meta: &str) -> Value {
    json!({
        "description": format!("{} is a list of {} objects.", rt.list_kind, rt.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object.",
                "type": "string",
            },
            "items": {
                "description": format!("Items is a list of {} objects.", rt.kind),
                "type": "array",
                "items": { "allOf": [schema_ref(item)], "default": {} },
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents.",
                "type": "string",
            },
            "metadata": {
                "description": "Standard list metadata.",
                "allOf": [schema_ref(list_meta)],
                "default": {},
            },
        },
        "x-kubernetes-group-version-kind": [gvk(rt, rt.list_kind)],
    })
}

/// Schema names an operation refers to.
pub(crate) struct OperationSchemas<'a> {
    pub(crate) kind: &'a str,
    pub(crate) list: &'a str,
    pub(crate) status: &'a str,
    pub(crate) delete_options: &'a str,
    pub(crate) patch: &'a str,
}

fn query_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": { "type": "string", "uniqueItems": true },
    })
}

fn path_param(name: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": format!("{name} of the object"),
        "schema": { "type": "string", "uniqueItems": true },
    })
}

/// Parameters of the writing verbs; `fieldValidation` is the one kubectl
/// looks for to leave validation to the server.
fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict.",
        ),
    ]
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn ok(schema: Value) -> Value {
    json!({ "description": "OK", "content": json_content(schema) })
}

/// Adds the collection and object paths of `rt`, as upstream names them.
/// Custom kinds take no strategic merge patch (kubectl would send one if
/// the document offered it).
pub(crate) fn add_paths(
    paths: &mut Map<String, Value>,
    rt: &ResourceType,
    names: &OperationSchemas<'_>,
) {
    let base = format!("/{}", gv_path(rt.group, rt.version));
    let prefix = if rt.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{base}/{}", rt.plural)
    };
    let scope = if rt.namespaced { "Namespaced" } else { "" };
    let gv_id: String = if rt.group.is_empty() {
        format!("Core{}", capitalize(rt.version))
    } else {
        rt.group
            .split('.')
            .next()
            .map(capitalize)
            .unwrap_or_default()
            + &capitalize(rt.version)
    };
    let id = |verb: &str| format!("{verb}{gv_id}{scope}{}", rt.kind);
    let op = |verb: &str, action: &str, extra: Value| {
        let mut op = json!({
            "operationId": id(verb),
            "tags": [gv_id.clone()],
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(rt, rt.kind),
        });
        if let (Value::Object(op), Value::Object(extra)) = (&mut op, extra) {
            op.extend(extra);
        }
        op
    };
    let mut scope_params = Vec::new();
    if rt.namespaced {
        scope_params.push(path_param("namespace"));
    }
    let kind_ref = schema_ref(names.kind);
    let body = json!({ "required": true, "content": json_content(kind_ref.clone()) });
    let list_params = vec![
        query_param(
            "labelSelector",
            "A selector to restrict the list of returned objects by their labels.",
        ),
        query_param(
            "fieldSelector",
            "A selector to restrict the list of returned objects by their fields.",
        ),
        query_param(
            "resourceVersion",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query_param(
            "limit",
            "limit is a maximum number of responses to return for a list call.",
        ),
        query_param(
            "continue",
            "The continue option should be set when retrieving more results from the server.",
        ),
        query_param(
            "watch",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ];
    if rt.is_review() {
        // Created and answered, never stored: only POST.
        paths.insert(
            prefix,
            json!({
                "parameters": scope_params,
                "post": op("create", "post", json!({
                    "parameters": write_params(),
                    "requestBody": body,
                    "responses": {
                        "200": ok(kind_ref.clone()),
                        "201": ok(kind_ref.clone()),
                    },
                })),
            }),
        );
        return;
    }
    paths.insert(
        prefix.clone(),
        json!({
            "parameters": scope_params,
            "get": op("list", "list", json!({
                "parameters": list_params,
                "responses": { "200": ok(schema_ref(names.list)) },
            })),
            "post": op("create", "post", json!({
                "parameters": write_params(),
                "requestBody": body,
                "responses": {
                    "200": ok(kind_ref.clone()),
                    "201": ok(kind_ref.clone()),
                },
            })),
        }),
    );
    let mut object_params = vec![path_param("name")];
    object_params.extend(scope_params);
    let patch_types = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        // application/apply-patch+yaml (server-side apply) is not served yet.
    ];
    let patch_content: Map<String, Value> = patch_types
        .iter()
        .filter(|t| rt.custom.is_none() || !t.starts_with("application/strategic"))
        .map(|t| {
            (
                (*t).to_owned(),
                json!({ "schema": schema_ref(names.patch) }),
            )
        })
        .collect();
    let mut patch_params = write_params();
    patch_params.push(query_param(
        "force",
        "Force is going to \"force\" Apply requests.",
    ));
    paths.insert(
        format!("{prefix}/{{name}}"),
        json!({
            "parameters": object_params,
            "get": op("read", "get", json!({
                "responses": { "200": ok(kind_ref.clone()) },
            })),
            "put": op("replace", "put", json!({
                "parameters": write_params(),
                "requestBody": body,
                "responses": { "200": ok(kind_ref.clone()), "201": ok(kind_ref.clone()) },
            })),
            "patch": op("patch", "patch", json!({
                "parameters": patch_params,
                "requestBody": { "required": true, "content": patch_content },
                "responses": { "200": ok(kind_ref.clone()), "201": ok(kind_ref.clone()) },
            })),
            "delete": op("delete", "delete", json!({
                "requestBody": { "content": json_content(schema_ref(names.delete_options)) },
                "responses": { "200": ok(schema_ref(names.status)) },
            })),
        }),
    );
    if rt.namespaced {
        paths.insert(
            format!("{base}/{}", rt.plural),
            json!({
                "get": op("list", "list", json!({
                    "operationId": format!("list{gv_id}{}ForAllNamespaces", rt.kind),
                    "responses": { "200": ok(schema_ref(names.list)) },
                })),
            }),
        );
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_v1() -> Value {
        let docs = Documents::build(&Registry::builtin());
        serde_json::from_slice(&docs.group_versions["api/v1"].body).expect("json")
    }

    /// Every `$ref` anywhere in `value`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn configmap_schema_comes_from_the_type() {
        let doc = core_v1();
        let cm = &doc["components"]["schemas"]["io.k8s.api.core.v1.ConfigMap"];
        assert_eq!(cm["properties"]["data"]["type"], "object");
        assert_eq!(
            cm["properties"]["data"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(
            cm["x-kubernetes-group-version-kind"],
            json!([{ "group": "", "version": "v1", "kind": "ConfigMap" }])
        );
        assert_eq!(
            cm["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let list = &doc["components"]["schemas"]["io.k8s.api.core.v1.ConfigMapList"];
        assert_eq!(
            list["x-kubernetes-group-version-kind"][0]["kind"],
            "ConfigMapList"
        );
    }

    #[test]
    fn metadata_is_never_required() {
        let doc = core_v1();
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert!(pod.get("required").is_none(), "{pod}");
        let event = &doc["components"]["schemas"]["io.k8s.api.core.v1.Event"];
        assert_eq!(event["required"], json!(["involvedObject"]));
    }

    #[test]
    fn every_ref_resolves() {
        let doc = core_v1();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 10, "{all:?}");
        for r in all {
            let name = r
                .strip_prefix(REF_PREFIX)
                .unwrap_or_else(|| panic!("ref {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn patch_operations_take_field_validation() {
        let doc = core_v1();
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        let params = op["parameters"].as_array().expect("parameters");
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(doc["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
    }

    #[test]
    fn etags_answer_not_modified() {
        let docs = Documents::build(&Registry::builtin());
        let hash = docs.group_versions["api/v1"].hash.clone();
        let query = Query::parse(Some(&format!("hash={hash}")));
        let mut headers = HeaderMap::new();
        let first = docs
            .serve(&["v3", "api", "v1"], &query, &headers)
            .expect("served");
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        assert_eq!(etag.to_str().ok(), Some(format!("\"{hash}\"").as_str()));
        headers.insert(header::IF_NONE_MATCH, etag);
        let again = docs
            .serve(&["v3", "api", "v1"], &query, &headers)
            .expect("served");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let stale = docs
            .serve(
                &["v3", "api", "v1"],
                &Query::parse(Some("hash=0")),
                &HeaderMap::new(),
            )
            .expect("served");
        assert_eq!(stale.status(), StatusCode::MOVED_PERMANENTLY);
        let missing = docs.serve(&["v4"], &Query::parse(None), &HeaderMap::new());
        assert_eq!(missing.expect_err("no v4").code, 404);
    }

    #[test]
    fn root_links_each_document_by_hash() {
        let docs = Documents::build(&Registry::builtin());
        let root: Value = serde_json::from_slice(&docs.root.body).expect("json");
        let url = root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .expect("url");
        assert_eq!(
            url,
            format!(
                "/openapi/v3/api/v1?hash={}",
                docs.group_versions["api/v1"].hash
            )
        );
        assert_eq!(docs.group_versions["api/v1"].hash.len(), 128);
        assert_eq!(
            docs.schema_name("v1", "Secret"),
            Some("io.k8s.api.core.v1.Secret")
        );
    }
}
