//! The subresources other than `status` (which the generic handlers serve
//! with [`Write::Status`]):
//! - `scale`: an `autoscaling/v1` `Scale` over `spec.replicas`
//!   (`status.replicas` and the selector as a string in `status.selector`),
//!   for Deployments, ReplicaSets and StatefulSets (custom kinds: the
//!   paths their CRD declares); GET, PUT and PATCH,
//!   which is what `kubectl scale` and the HPA use.
//! - pod `binding`: POST a `Binding` to set `spec.nodeName` once (409 if
//!   the pod is bound already), as the scheduler does.
//! - pod `eviction`: POST a `policy/v1` `Eviction` to delete the pod
//!   (gracefully, as a `DELETE` does) as its PodDisruptionBudget allows
//!   ([`super::eviction`]).
//! - serviceaccount `token`: POST a `TokenRequest` ([`super::token_request`]).
//!
//! Writes go to the store with compare-and-swap on the object's revision
//! and are retried when a concurrent write moved it, unless the client
//! pinned a `resourceVersion`.

use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Response};
use serde_json::{Value, json};

use super::codec;
use super::crd;
use super::handlers::{Target, from_kv, read_body, to_value_bytes};
use super::patch::{self, PatchType};
use super::query::Query;
use super::resources::{ResourceType, Subresource};
use super::status::ApiError;
use super::strategy::{self, Errors, Write};
use super::table::format_selector;
use super::{Api, Body, json_response};
use crate::store::{KeyValue, StoreError};

/// How often a write is retried after a concurrent write.
const ATTEMPTS: usize = 5;

/// Serves `sub` of `target`.
pub async fn handle(
    api: &Api,
    method: &Method,
    target: &Target<'_>,
    sub: Subresource,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let Some(name) = target.name.as_deref() else {
        return Err(ApiError::method_not_allowed(method.as_str()));
    };
    match (sub, method) {
        (Subresource::Scale, &Method::GET) => {
            let kv = current(api, target, name).await?;
            Ok(json_response(200, &scale_for(target.rt, &from_kv(&kv)?)))
        }
        (Subresource::Scale, &Method::PUT) => {
            let scale = json_body(body).await?;
            set_scale(api, target, name, |_| Ok(scale.clone())).await
        }
        (Subresource::Scale, &Method::PATCH) => {
            let content_type = headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchType::from_content_type(content_type)?;
            let body = read_body(body).await?;
            // Scale has no lists: strategic merge is merge patch here.
            let shape = crate::api::shape::Shape::unknown(api.openapi.schemas());
            set_scale(api, target, name, |current| {
                patch::apply(kind, current, &body, shape)
            })
            .await
        }
        (Subresource::Binding, &Method::POST) => {
            bind(api, target, name, json_body(body).await?).await
        }
        (Subresource::Eviction, &Method::POST) => {
            let eviction = decode_kind(json_body(body).await?, "policy/v1", "Eviction")?;
            check_name(&eviction, name)?;
            super::eviction::evict(api, target, name, query, &eviction).await
        }
        (Subresource::Token, &Method::POST) => {
            let content_type = headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let format = codec::Format::from_content_type(content_type)?;
            let request = codec::decode_untyped(format, &read_body(body).await?)?;
            super::token_request::create(api, target, name, request).await
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

async fn json_body(body: Incoming) -> Result<Value, ApiError> {
    let bytes = read_body(body).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ))
    }
}

async fn current(api: &Api, target: &Target<'_>, name: &str) -> Result<KeyValue, ApiError> {
    let rt = target.rt;
    let key = rt.key(target.namespace.as_deref(), name);
    match api.store.get(&key).await {
        Ok(Some(kv)) => Ok(kv),
        Ok(None) => Err(ApiError::not_found(rt.plural, name)),
        Err(err) => Err(ApiError::from_store(err, rt.plural, name)),
    }
}

/// The `Scale` of an object of `rt`: a custom kind's from its CRD's paths.
fn scale_for(rt: &ResourceType, obj: &Value) -> Value {
    match &rt.custom {
        Some(custom) => crd::resource::scale_of(custom, obj),
        None => scale_of(obj),
    }
}

/// The `Scale` of a Deployment, ReplicaSet or StatefulSet.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let mut metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            metadata[field] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": format_selector(&obj["spec"]["selector"]),
        },
    })
}

/// Sets `spec.replicas` from the `Scale` that `make` builds from the
/// current one (a PUT body, or the current `Scale` patched).
async fn set_scale(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    make: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    for attempt in 1..=ATTEMPTS {
        let kv = current(api, target, name).await?;
        let old = from_kv(&kv)?;
        let current_scale = scale_for(rt, &old);
        let scale = make(&current_scale)?;
        if scale["kind"].as_str().is_some_and(|k| k != "Scale") {
            return Err(ApiError::bad_request(format!(
                "the object is a {}, not a Scale",
                scale["kind"]
            )));
        }
        if scale["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty() && n != name)
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                scale["metadata"]["name"]
            )));
        }
        let replicas = &scale["spec"]["replicas"];
        let mut errors = Errors::default();
        match replicas.as_i64() {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => {}
            None if replicas.is_null() => {}
            _ => errors.invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            ),
        }
        if !errors.is_empty() {
            return Err(errors.into_error("autoscaling", "Scale", name));
        }
        let pinned = scale["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| !rv.is_empty());
        if pinned.is_some_and(|rv| rv != kv.mod_revision.to_string()) {
            return Err(ApiError::conflict(rt.plural, name));
        }
        let mut new = old.clone();
        match &rt.custom {
            Some(custom) => {
                crd::resource::set_replicas(custom, &mut new, replicas.as_i64().unwrap_or(0))
            }
            None => new["spec"]["replicas"] = replicas.as_i64().unwrap_or(0).into(),
        }
        strategy::before_update(api, rt, Write::Main, &old, &mut new).await?;
        if let Some(meta) = new["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        match api
            .store
            .update(&kv.key, to_value_bytes(&new), kv.mod_revision)
            .await
        {
            Ok(revision) => {
                new["metadata"]["resourceVersion"] = revision.to_string().into();
                return Ok(json_response(200, &scale_for(rt, &new)));
            }
            Err(StoreError::Conflict { .. }) if pinned.is_none() && attempt < ATTEMPTS => {}
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
        }
    }
    Err(ApiError::conflict(rt.plural, name))
}

fn success(code: u16) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": code,
        }),
    )
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A body's `metadata.name` must be the one on the URL (or absent).
fn check_name(body: &Value, name: &str) -> Result<(), ApiError> {
    match body["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() && n != name => Err(ApiError::bad_request(format!(
            "name in URL does not match name in {} object",
            body["kind"].as_str().unwrap_or("the")
        ))),
        _ => Ok(()),
    }
}

/// POST `pods/<name>/binding`.
async fn bind(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    binding: Value,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    let binding = decode_kind(binding, "v1", "Binding")?;
    check_name(&binding, name)?;
    let node = binding["target"]["name"].as_str().unwrap_or("");
    let mut errors = Errors::default();
    if node.is_empty() {
        errors.required("target.name", "");
    }
    let kind = &binding["target"]["kind"];
    if kind.as_str().is_some_and(|k| !k.is_empty() && k != "Node") {
        errors.unsupported("target.kind", kind, &["Node"]);
    }
    if !errors.is_empty() {
        return Err(errors.into_error("", "Binding", name));
    }
    for attempt in 1..=ATTEMPTS {
        let kv = current(api, target, name).await?;
        let mut pod = from_kv(&kv)?;
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict_with(
                rt.plural,
                name,
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict_with(
                rt.plural,
                name,
                format!("pod {name} is already assigned to node {bound:?}"),
            ));
        }
        pod["spec"]["nodeName"] = node.into();
        if let Some(annotations) = binding["metadata"]["annotations"].as_object() {
            for (k, v) in annotations {
                pod["metadata"]["annotations"][k] = v.clone();
            }
        }
        set_condition(&mut pod, "PodScheduled");
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        match api
            .store
            .update(&kv.key, to_value_bytes(&pod), kv.mod_revision)
            .await
        {
            Ok(_) => return Ok(success(201)),
            Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => {}
            Err(err) => return Err(ApiError::from_store(err, rt.plural, name)),
        }
    }
    Err(ApiError::conflict(rt.plural, name))
}

/// Sets the pod condition `kind` to True (now, if it changes).
fn set_condition(pod: &mut Value, kind: &str) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let Some(conditions) = pod["status"]["conditions"].as_array_mut() else {
        return;
    };
    let fresh = json!({
        "type": kind,
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": now(),
    });
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
}

/// Checks and normalizes a subresource body of `api_version`/`kind`.
fn decode_kind(body: Value, api_version: &str, kind: &str) -> Result<Value, ApiError> {
    let ok = |field: &str, want: &str| {
        body[field]
            .as_str()
            .is_none_or(|v| v.is_empty() || v == want)
    };
    // Evictions are accepted in policy/v1 and v1beta1, as upstream serves both.
    let version_ok = ok("apiVersion", api_version)
        || (kind == "Eviction" && body["apiVersion"] == "policy/v1beta1");
    if !ok("kind", kind) || !version_ok {
        return Err(ApiError::bad_request(format!(
            "the object is a {}, Kind={}, not {api_version}, Kind={kind}",
            body["apiVersion"], body["kind"]
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reflects_the_object() {
        let deploy = json!({
            "metadata": {"name": "web", "namespace": "t", "uid": "u", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "tier": "front"}}},
            "status": {"replicas": 2},
        });
        let scale = scale_of(&deploy);
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["apiVersion"], "autoscaling/v1");
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
        assert!(scale["metadata"].get("labels").is_none());
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["replicas"], 2);
        assert_eq!(scale["status"]["selector"], "app=web,tier=front");
    }

    #[test]
    fn bindings_and_evictions_are_checked() {
        assert!(
            decode_kind(
                json!({"kind": "Binding", "apiVersion": "v1"}),
                "v1",
                "Binding"
            )
            .is_ok()
        );
        assert_eq!(
            decode_kind(json!({"kind": "Pod"}), "v1", "Binding")
                .expect_err("wrong kind")
                .code,
            400
        );
        assert!(
            decode_kind(
                json!({"kind": "Eviction", "apiVersion": "policy/v1beta1"}),
                "policy/v1",
                "Eviction"
            )
            .is_ok()
        );
        assert!(check_name(&json!({"metadata": {"name": "p"}}), "p").is_ok());
        assert!(check_name(&json!({}), "p").is_ok());
        assert_eq!(
            check_name(&json!({"metadata": {"name": "q"}}), "p")
                .expect_err("mismatch")
                .code,
            400
        );
    }

    #[test]
    fn conditions_are_set_once() {
        let mut pod = json!({"status": {"phase": "Pending"}});
        set_condition(&mut pod, "PodScheduled");
        let first = pod["status"]["conditions"][0].clone();
        assert_eq!(first["status"], "True");
        set_condition(&mut pod, "PodScheduled");
        assert_eq!(
            pod["status"]["conditions"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(pod["status"]["conditions"][0], first);
    }
}
