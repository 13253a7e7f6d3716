//! The review kinds: objects a client creates to ask a question, answered
//! in the response and never stored (upstream's "virtual" resources).
//! - `authentication.k8s.io/v1` `TokenReview`: is `spec.token` valid, and
//!   whose is it (what a webhook or an aggregated server asks);
//!   `SelfSubjectReview`: who am I (`kubectl auth whoami`).
//! - `authorization.k8s.io/v1` `SelfSubjectAccessReview`,
//!   `SubjectAccessReview`, `LocalSubjectAccessReview`,
//!   `SelfSubjectRulesReview` (`kubectl auth can-i [--list]`).
//!
//! Current limitations: authorization is not enforced yet (RBAC objects
//! are stored; enforcing them is the security issue), so every access
//! review answers what the server does today: allowed, with a reason
//! saying so, and the rules review lists everything.

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Response};
use serde_json::{Value, json};

use super::auth::User;
use super::codec;
use super::handlers::read_body;
use super::resources::ResourceType;
use super::status::ApiError;
use super::{Api, Body, json_response};

/// Why every access review is allowed, in its `reason`.
const NOT_ENFORCED: &str = "cairn does not enforce authorization yet: every authenticated user may do everything (RBAC objects are stored, not enforced)";

/// Answers a POST of the review kind `rt`.
pub async fn create(
    api: &Api,
    method: &Method,
    rt: &ResourceType,
    user: Option<&User>,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let content_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = codec::Format::from_content_type(content_type)?;
    let mut review = codec::decode_untyped(format, &read_body(body).await?)?;
    let kind = review["kind"].as_str().unwrap_or(rt.kind);
    if kind != rt.kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {kind}, not a {}",
            rt.kind
        )));
    }
    let status = match rt.kind {
        "TokenReview" => token_review(api, &review["spec"]).await,
        "SelfSubjectReview" => json!({ "userInfo": user.map(user_info) }),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
            "evaluationError": "",
        }),
        _ => json!({ "allowed": true, "reason": NOT_ENFORCED }),
    };
    review["apiVersion"] = json!(rt.api_version);
    review["kind"] = json!(rt.kind);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = status;
    Ok(json_response(201, &review))
}

/// `TokenReview.status` for `spec.token`.
async fn token_review(api: &Api, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or("");
    let mut headers = HeaderMap::new();
    let user = HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .and_then(|value| {
            headers.insert(hyper::header::AUTHORIZATION, value);
            api.auth.authenticate(None, &headers)
        });
    let user = match user {
        Some(user) => match &user.bound {
            Some(binding) if !api.bound_objects_exist(binding).await => None,
            _ => Some(user),
        },
        None => None,
    };
    match user {
        Some(user) => json!({
            "authenticated": true,
            "user": user_info(&user),
            "audiences": spec["audiences"].as_array().cloned().unwrap_or_default(),
        }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    }
}

/// `UserInfo` as upstream writes it.
fn user_info(user: &User) -> Value {
    let mut info = json!({ "username": user.name, "groups": user.groups });
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    info
}
