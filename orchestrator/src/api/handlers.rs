//! Generic CRUD, list and watch over the store, for any [`ResourceType`].
//!
//! Objects stay `serde_json::Value`s here: the handlers only touch
//! `metadata` (name, namespace, uid, creationTimestamp, resourceVersion)
//! and leave per-kind work (defaults, validation, status and generation
//! rules, allocations) to [`strategy`](super::strategy), so one code path
//! serves every kind. The `status` subresource goes through `update` with
//! [`Write::Status`]; the other subresources live in
//! [`subresources`](super::subresources).
//! The stored value never carries `resourceVersion`; it is the store
//! revision, set on the way out (as kine does), so it can't go stale.
//!
//! Watches live in [`watch`](super::watch). GET, list and watch render through [`Output`] (plain objects or a
//! `Table`); PATCH applies a [`patch`](super::patch) to the current object
//! and stores the result through `update`.
//!
//! Bodies are decoded by [`codec`](super::codec) (JSON, YAML, protobuf).
//! Deletes (options, finalizers, namespaces) live in
//! [`delete`](super::delete); creates, updates and patches honour
//! `dryRun` and keep [`managed`](super::managed) fields.
//!
//! Server-side apply (`application/apply-patch+yaml`) is served by
//! [`apply`](super::apply), which stores through `create` and `update`.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Response};
use serde_json::{Map, Value, json};
use tracing::debug;

use super::options::WriteOptions;
use super::patch::{self, PatchType};
use super::query::{Query, ReadAt};
use super::resources::{ResourceType, Subresource};
use super::selector::Filter;
use super::shape::{self, Shape};
use super::status::ApiError;
use super::strategy::{self, Write};
use super::table::Output;
use super::validation;
use super::{Api, Body, codec, delete, json_response, managed, namespaces};
use crate::store::{KeyValue, Revision, StoreError};

/// Largest request body accepted, as kube-apiserver's limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What a resource request addresses.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The resource.
    pub rt: &'a ResourceType,
    /// The namespace in the path (`None`: cluster-scoped or all namespaces).
    pub namespace: Option<String>,
    /// The object name in the path (`None`: the collection).
    pub name: Option<String>,
    /// The subresource in the path (`None`: the object itself).
    pub subresource: Option<Subresource>,
}

impl Target<'_> {
    pub(super) fn prefix(&self) -> String {
        self.rt.key_prefix(self.namespace.as_deref())
    }
}

/// Serves one resource request.
pub async fn handle(
    api: &Api,
    method: &Method,
    target: Target<'_>,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let needs_ns = target.rt.namespaced && target.namespace.is_none();
    let output = || Output::negotiate(headers, query);
    match target.subresource {
        None => {}
        Some(Subresource::Status) if method != Method::POST => {}
        Some(sub) => {
            return super::subresources::handle(api, method, &target, sub, query, headers, body)
                .await;
        }
    }
    match (method, target.name.as_deref()) {
        (&Method::GET, None) if query.flag("watch")? => {
            super::watch::watch(api, &target, query, output()?).await
        }
        (&Method::GET, None) => list(api, &target, query, output()?).await,
        (&Method::GET, Some(name)) => get(api, &target, name, output()?).await,
        (&Method::POST, None) if !needs_ns => {
            let options = WriteOptions::from_request(query, headers, "CreateOptions")?;
            let obj = read_object(target.rt, headers, body).await?;
            let (obj, warnings) = validation::check(&api.openapi, target.rt, query, obj)?;
            create(api, &target, obj, &options)
                .await
                .map(|r| warnings.attach(r))
        }
        (&Method::PUT, Some(name)) => {
            let options = WriteOptions::from_request(query, headers, "UpdateOptions")?;
            let obj = read_object(target.rt, headers, body).await?;
            let (obj, warnings) = validation::check(&api.openapi, target.rt, query, obj)?;
            update(api, &target, name, obj, &options)
                .await
                .map(|r| warnings.attach(r))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchType::from_content_type(content_type)?;
            let options = WriteOptions::from_request(query, headers, "PatchOptions")?;
            let body = read_body(body).await?;
            if kind == PatchType::Apply {
                return super::apply::serve(api, &target, name, &body, query, &options).await;
            }
            if query.get("force").is_some() {
                return Err(ApiError::invalid(
                    "PatchOptions.meta.k8s.io",
                    "",
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            apply_patch(api, &target, name, kind, &body, query, &options).await
        }
        (&Method::DELETE, Some(name)) => {
            delete::delete(api, &target, name, query, headers, body).await
        }
        (&Method::DELETE, None) if !needs_ns => {
            delete::delete_collection(api, &target, query, headers, body).await
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// Reads and decodes an object body of kind `rt` (JSON, YAML or protobuf).
async fn read_object(
    rt: &ResourceType,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Value, ApiError> {
    let content_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = codec::Format::from_content_type(content_type)?;
    check_object(rt, codec::decode(format, &read_body(body).await?, rt)?)
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(err) => Err(ApiError::bad_request(format!(
            "reading the request body: {err}"
        ))),
    }
}

/// Decodes `bytes` as an object of kind `rt`: a JSON object whose
/// `apiVersion`/`kind` (if given, as kubectl always does) name the resource.
pub fn decode_object(rt: &ResourceType, bytes: &[u8]) -> Result<Value, ApiError> {
    check_object(rt, codec::decode(codec::Format::Json, bytes, rt)?)
}

/// Checks that a decoded body is an object of kind `rt` and fills in its
/// `apiVersion`, `kind` and `metadata`.
pub fn check_object(rt: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or(rt.kind);
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or(rt.api_version);
    if kind != rt.kind || api_version != rt.api_version {
        return Err(ApiError::bad_request(format!(
            "the object is a {api_version}, Kind={kind}, not {}, Kind={} as the path says",
            rt.api_version, rt.kind
        )));
    }
    map.insert("kind".into(), rt.kind.into());
    map.insert("apiVersion".into(), rt.api_version.into());
    match map.entry("metadata").or_insert_with(|| json!({})) {
        Value::Object(_) => Ok(obj),
        _ => Err(ApiError::bad_request("metadata must be an object")),
    }
}

fn metadata(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match &mut obj["metadata"] {
        Value::Object(map) => map,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// A stored value as the API returns it: `resourceVersion` = the revision.
pub(super) fn from_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|err| ApiError::internal(format!("stored object {} is corrupt: {err}", kv.key)))?;
    metadata(&mut obj).insert("resourceVersion".into(), kv.mod_revision.to_string().into());
    Ok(obj)
}

pub(super) fn to_value_bytes(obj: &Value) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail.
    serde_json::to_vec(obj).unwrap_or_default()
}

/// DNS-1123 label (namespaces) or subdomain (everything else) names.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label = rt.kind == "Namespace";
    let max = if label { 63 } else { 253 };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() <= max
        && name.chars().all(ok_char)
        && ends(name.chars().next())
        && ends(name.chars().last())
    {
        return Ok(());
    }
    let what = if label {
        "RFC 1123 label"
    } else {
        "RFC 1123 subdomain"
    };
    Err(ApiError::invalid(
        rt.kind,
        name,
        format!(
            "metadata.name: Invalid value: {name:?}: a lowercase {what} must consist of lower case alphanumeric characters{}, and must start and end with an alphanumeric character (at most {max} characters)",
            if label { " or '-'" } else { ", '-' or '.'" }
        ),
    ))
}

/// Checks the object's namespace against the path and that it exists;
/// returns the namespace (`None` for a cluster-scoped object).
async fn check_namespace(
    api: &Api,
    target: &Target<'_>,
    obj: &mut Value,
) -> Result<Option<Value>, ApiError> {
    if !target.rt.namespaced {
        metadata(obj).remove("namespace");
        return Ok(None);
    }
    let Some(ns) = target.namespace.as_deref() else {
        return Err(ApiError::bad_request(
            "a namespaced object needs a namespace in the path",
        ));
    };
    if let Some(body_ns) = meta_str(obj, "namespace")
        && body_ns != ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
        )));
    }
    metadata(obj).insert("namespace".into(), ns.into());
    let ns_key = format!("/registry/namespaces/{ns}");
    match api.store.get(&ns_key).await {
        Ok(Some(kv)) => from_kv(&kv).map(Some),
        Ok(None) => Err(ApiError::not_found("namespaces", ns)),
        Err(err) => Err(ApiError::from_store(err, "namespaces", ns)),
    }
}

pub(super) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Five characters from a random UUID, as upstream's `generateName` suffix.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

pub(super) async fn create(
    api: &Api,
    target: &Target<'_>,
    mut obj: Value,
    options: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
        (Some(name), _) => name.to_owned(),
        (None, Some(prefix)) => format!("{prefix}{}", name_suffix()),
        (None, None) => {
            return Err(ApiError::invalid(
                rt.kind,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    validate_name(rt, &name)?;
    if let Some(namespace) = check_namespace(api, target, &mut obj).await? {
        namespaces::forbid_terminating(&namespace, rt, &name)?;
    }
    let meta = metadata(&mut obj);
    meta.insert("name".into(), name.clone().into());
    meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
    meta.insert("creationTimestamp".into(), now().into());
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    strategy::before_create(api, rt, &mut obj).await?;
    if !options.apply {
        let root = shape::root_of(&api.openapi, rt);
        let shape = Shape::new(api.openapi.schemas(), &root);
        managed::on_create(&mut obj, shape, &options.manager, rt.api_version, &now());
    }
    let key = rt.key(target.namespace.as_deref(), &name);
    if options.dry_run {
        // As upstream's dry-run storage: AlreadyExists is still checked,
        // and what the strategy allocated is released.
        strategy::after_write(api, rt, None, &obj, false).await;
        return match api.store.get(&key).await {
            Ok(None) => Ok(json_response(201, &obj)),
            Ok(Some(_)) => Err(ApiError::already_exists(rt.plural, &name)),
            Err(err) => Err(ApiError::from_store(err, rt.plural, &name)),
        };
    }
    let created = api.store.create(&key, to_value_bytes(&obj)).await;
    strategy::after_write(api, rt, None, &obj, created.is_ok()).await;
    let revision = created.map_err(|err| ApiError::from_store(err, rt.plural, &name))?;
    metadata(&mut obj).insert("resourceVersion".into(), revision.to_string().into());
    Ok(json_response(201, &obj))
}

async fn get(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let key = target.rt.key(target.namespace.as_deref(), name);
    match api.store.get(&key).await {
        Ok(Some(kv)) => Ok(json_response(
            200,
            &output.object_of(target.rt, from_kv(&kv)?),
        )),
        Ok(None) => Err(ApiError::not_found(target.rt.plural, name)),
        Err(err) => Err(ApiError::from_store(err, target.rt.plural, name)),
    }
}

pub(super) async fn update(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    mut obj: Value,
    options: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    match meta_str(&obj, "name") {
        Some(body_name) if body_name != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        _ => {
            metadata(&mut obj).insert("name".into(), name.into());
        }
    }
    check_namespace(api, target, &mut obj).await?;
    let key = rt.key(target.namespace.as_deref(), name);
    let current = match api.store.get(&key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return Err(ApiError::not_found(rt.plural, name)),
        Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
    };
    let expected: Revision = match meta_str(&obj, "resourceVersion") {
        Some(rv) => rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion {rv:?} is not a resource version"
            ))
        })?,
        // Upstream allows unconditional updates for the kinds served here.
        None => current.mod_revision,
    };
    let stored: Value = serde_json::from_slice(&current.value)
        .map_err(|err| ApiError::internal(format!("stored object {key} is corrupt: {err}")))?;
    let write = Write::of(target.subresource);
    strategy::before_update(api, rt, write, &stored, &mut obj).await?;
    let meta = metadata(&mut obj);
    meta.remove("resourceVersion");
    for field in ["uid", "creationTimestamp"] {
        match stored["metadata"].get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    let delete_now = delete::guard_update(rt, name, &stored, &mut obj)?;
    if !options.apply {
        let root = shape::root_of(&api.openapi, rt);
        let shape = Shape::new(api.openapi.schemas(), &root);
        managed::on_update(
            &stored,
            &mut obj,
            shape,
            &options.manager,
            rt.api_version,
            &now(),
        );
    }
    if options.dry_run {
        strategy::after_write(api, rt, Some(&stored), &obj, false).await;
        if expected != current.mod_revision {
            return Err(ApiError::conflict(rt.plural, name));
        }
        let rv = current.mod_revision.to_string();
        metadata(&mut obj).insert("resourceVersion".into(), rv.into());
        return Ok(json_response(200, &obj));
    }
    if delete_now {
        // The last finalizer of an object being deleted is gone.
        let deleted = api.store.delete(&key, Some(expected)).await;
        strategy::after_write(api, rt, Some(&stored), &obj, false).await;
        let kv = deleted.map_err(|err| ApiError::from_store(err, rt.plural, name))?;
        strategy::after_delete(api, rt, &stored).await;
        let rv = kv.mod_revision.to_string();
        metadata(&mut obj).insert("resourceVersion".into(), rv.into());
        return Ok(json_response(200, &obj));
    }
    let updated = api.store.update(&key, to_value_bytes(&obj), expected).await;
    strategy::after_write(api, rt, Some(&stored), &obj, updated.is_ok()).await;
    let revision = updated.map_err(|err| ApiError::from_store(err, rt.plural, name))?;
    metadata(&mut obj).insert("resourceVersion".into(), revision.to_string().into());
    Ok(json_response(200, &obj))
}

/// How often a patch without a `resourceVersion` is re-applied after a
/// concurrent write moved the object on.
const PATCH_ATTEMPTS: usize = 5;

/// PATCH: applies `body` to the current object and stores the result
/// through [`update`]. A `metadata.resourceVersion` in the patch is a
/// precondition (409 when stale); without one, a concurrent write makes
/// the patch apply again to the new object, as upstream retries. A patch
/// that changes nothing writes nothing (no new resourceVersion). Unknown
/// fields in the result are handled per `fieldValidation`.
async fn apply_patch(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    kind: PatchType,
    body: &[u8],
    query: &Query,
    options: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let key = rt.key(target.namespace.as_deref(), name);
    let root = shape::root_of(&api.openapi, rt);
    let shape = Shape::new(api.openapi.schemas(), &root);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = match api.store.get(&key).await {
            Ok(Some(kv)) => from_kv(&kv)?,
            Ok(None) => return Err(ApiError::not_found(rt.plural, name)),
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
        };
        let patched = patch::apply(kind, &current, body, shape)?;
        if patched == current {
            return Ok(json_response(200, &current));
        }
        // The kind, apiVersion and metadata must still be what they were.
        let patched = decode_object(rt, &to_value_bytes(&patched))?;
        let (patched, warnings) = validation::check(&api.openapi, rt, query, patched)?;
        let pinned = meta_str(&patched, "resourceVersion") != meta_str(&current, "resourceVersion");
        match update(api, target, name, patched, options).await {
            Err(err) if err.reason == "Conflict" && !pinned && attempt < PATCH_ATTEMPTS => {
                debug!(%key, attempt, "patch raced a write; applying it again");
            }
            result => return result.map(|r| warnings.attach(r)),
        }
    }
}

/// The `continue` token: the revision the list is read at and the last key sent.
fn encode_continue(revision: Revision, key: &str) -> String {
    let token = json!({"rv": revision, "start": key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(to_value_bytes(&token))
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let (Some(rv), Some(start)) = (value["rv"].as_i64(), value["start"].as_str()) else {
        return Err(bad());
    };
    // A token from another collection must not read outside this one.
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((rv, start.to_owned()))
}

async fn list(
    api: &Api,
    target: &Target<'_>,
    query: &Query,
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let filter = Filter::from_query(query, rt)?;
    let read = ReadAt::from_query(query)?;
    let limit = query
        .number("limit")?
        .filter(|l| *l > 0)
        .map(|l| l.min(10_000) as usize);
    let prefix = target.prefix();
    let (mut revision, mut after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, start) = decode_continue(token, &prefix)?;
            (Some(rv), Some(start))
        }
        None => match read {
            ReadAt::Latest => (None, None),
            ReadAt::Exact(rv) => (Some(rv), None),
            ReadAt::NotOlderThan(rv) => {
                let current = api
                    .store
                    .current_revision()
                    .await
                    .map_err(|err| ApiError::from_store(err, rt.plural, ""))?;
                if rv > current {
                    let err = StoreError::FutureRevision {
                        requested: rv,
                        current,
                    };
                    return Err(ApiError::from_store(err, rt.plural, ""));
                }
                (None, None)
            }
        },
    };
    let continued = after.is_some();
    let mut items = Vec::new();
    let mut next = None;
    loop {
        let want = limit.map(|l| l - items.len());
        let page = api
            .store
            .list(&prefix, after.as_deref(), want, revision)
            .await
            .map_err(|err| match err {
                StoreError::Compacted { .. } if continued => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                StoreError::Compacted { .. } => {
                    ApiError::expired("The resourceVersion for the provided list is too old.")
                }
                err => ApiError::from_store(err, rt.plural, ""),
            })?;
        revision = Some(page.revision);
        for kv in &page.items {
            let obj = from_kv(kv)?;
            if filter.matches(&obj) {
                items.push(obj);
            }
        }
        after = page.items.last().map(|kv| kv.key.clone()).or(after);
        let full = limit.is_some_and(|l| items.len() >= l);
        match (&after, page.more) {
            (Some(last), true) if full => {
                next = Some(encode_continue(page.revision, last));
                break;
            }
            (Some(_), true) => continue,
            _ => break,
        }
    }
    let mut metadata = json!({"resourceVersion": revision.unwrap_or(0).to_string()});
    if let Some(token) = next {
        metadata["continue"] = token.into();
    }
    let list = json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version,
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(200, &output.list_of(rt, list)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;

    #[test]
    fn hostile_bodies_are_bad_requests() {
        let registry = Registry::builtin();
        let cm = registry.find("", "v1", "configmaps").expect("cm");
        for body in [
            &b"{not json"[..],
            b"[]",
            b"\"x\"",
            br#"{"kind":"Secret","apiVersion":"v1"}"#,
            br#"{"metadata":7}"#,
        ] {
            let err = decode_object(cm, body).expect_err("rejected");
            assert_eq!(err.code, 400, "{body:?}");
        }
        let ok = decode_object(cm, br#"{"metadata":{"name":"x"},"data":{"a":"b"}}"#).expect("ok");
        assert_eq!(ok["kind"], "ConfigMap");
    }

    #[test]
    fn names_are_validated() {
        let registry = Registry::builtin();
        let cm = registry.find("", "v1", "configmaps").expect("cm");
        let ns = registry.find("", "v1", "namespaces").expect("ns");
        assert!(validate_name(cm, "a.b-c").is_ok());
        assert!(validate_name(ns, "a.b").is_err());
        for bad in ["", "A", "-a", "a-", "a/b", "..", &"a".repeat(254)] {
            assert_eq!(validate_name(cm, bad).expect_err(bad).code, 422);
        }
    }

    #[test]
    fn continue_tokens_stay_in_their_collection() {
        let token = encode_continue(7, "/registry/configmaps/t/x");
        assert_eq!(
            decode_continue(&token, "/registry/configmaps/t/").expect("token"),
            (7, "/registry/configmaps/t/x".to_owned())
        );
        assert!(decode_continue(&token, "/registry/secrets/t/").is_err());
        assert!(decode_continue("!!", "/registry/").is_err());
    }
}
