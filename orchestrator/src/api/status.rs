//! Errors as Kubernetes reports them: a `meta/v1` `Status` object with the
//! upstream HTTP code and `reason`, so kubectl and client libraries print
//! and react to them the way they do against kube-apiserver (`NotFound`,
//! `AlreadyExists`, `Conflict`, `Expired` that makes a watcher re-list).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

use crate::store::StoreError;

/// An API error: HTTP status, upstream reason and a message naming the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason` (`NotFound`, `Conflict`...).
    pub reason: &'static str,
    /// Human-readable message, upstream wording where kubectl users know it.
    pub message: String,
    /// `details`: the resource (`kind` is the plural upstream) and name concerned.
    pub details: Option<(String, String)>,
    /// `details.group` and `details.causes` of a 422 `Invalid` (boxed:
    /// errors travel in every `Result` of the API server).
    pub fields: Option<Box<FieldCauses>>,
}

/// The group of an invalid object's kind and what is wrong with it; or,
/// for other errors, causes and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldCauses {
    /// `details.group` (`""` for core).
    pub group: String,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds` and the `Retry-After` header (0: none).
    pub retry_after_seconds: u32,
}

/// One `StatusCause`: a field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`...
    pub reason: &'static str,
    /// What is wrong, without the field path.
    pub message: String,
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            fields: None,
        }
    }

    fn with_details(mut self, resource: &str, name: &str) -> ApiError {
        self.details = Some((resource.to_owned(), name.to_owned()));
        self
    }

    /// 404: `configmaps "x" not found`.
    pub fn not_found(resource: &str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(resource, name)
    }

    /// 404 for a path that names no resource.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409: `configmaps "x" already exists`.
    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(resource, name)
    }

    /// 409: an update with a stale `resourceVersion`.
    pub fn conflict(resource: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(resource, name)
    }

    /// 410: the requested `resourceVersion` is compacted away.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 400: a malformed request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 422: a well-formed object that fails validation.
    pub fn invalid(kind: &str, name: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {message}"),
        )
        .with_details(kind, name)
    }

    /// 422 with a cause per field: `Deployment.apps "x" is invalid:
    /// spec.selector: Required value`, several in brackets as upstream.
    pub fn invalid_fields(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let group_kind = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let each: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let all = match each.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("{group_kind} \"{name}\" is invalid: {all}"),
        )
        .with_details(kind, name);
        err.fields = Some(Box::new(FieldCauses {
            group: group.to_owned(),
            causes,
            ..FieldCauses::default()
        }));
        err
    }

    /// 429 `TooManyRequests`, to try again after `retry_after_seconds`
    /// (0: whenever the client likes).
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> ApiError {
        let mut err = ApiError::new(429, "TooManyRequests", message);
        err.fields = Some(Box::new(FieldCauses {
            retry_after_seconds,
            ..FieldCauses::default()
        }));
        err
    }

    /// Adds a cause that names no field (`DisruptionBudget`...).
    pub fn push_cause(&mut self, reason: &'static str, message: impl Into<String>) {
        self.fields
            .get_or_insert_with(Box::default)
            .causes
            .push(Cause {
                reason,
                message: message.into(),
                field: String::new(),
            });
    }

    /// The `Retry-After` the response carries, if any.
    pub fn retry_after(&self) -> Option<u32> {
        self.fields
            .as_ref()
            .map(|f| f.retry_after_seconds)
            .filter(|s| *s > 0)
    }

    /// 409 `Conflict` with a message of its own (e.g. a pod already bound).
    pub fn conflict_with(resource: &str, name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, "Conflict", message).with_details(resource, name)
    }

    /// 401: no valid client certificate.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403: a request that is not allowed on this object.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    /// 405: a verb the resource does not serve.
    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 413: a body over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415: a body type the server does not decode (yet).
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    /// 406: no representation the client accepts (`accepted` lists them).
    pub fn not_acceptable(accepted: &[&str]) -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 500: the datastore or the server failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// The `Status` object sent as the response body.
    pub fn to_status(&self) -> Status {
        Status {
            code: Some(i32::from(self.code)),
            message: Some(self.message.clone()),
            reason: Some(self.reason.to_owned()),
            status: Some("Failure".to_owned()),
            details: (self.details.is_some() || self.fields.is_some()).then(|| StatusDetails {
                kind: self.details.as_ref().map(|(kind, _)| kind.clone()),
                name: self.details.as_ref().map(|(_, name)| name.clone()),
                retry_after_seconds: self.retry_after().and_then(|s| i32::try_from(s).ok()),
                group: self
                    .fields
                    .as_ref()
                    .map(|f| f.group.clone())
                    .filter(|g| !g.is_empty()),
                causes: self.fields.as_ref().map(|f| {
                    f.causes
                        .iter()
                        .map(|c| StatusCause {
                            reason: Some(c.reason.to_owned()),
                            message: Some(c.message.clone()),
                            field: Some(c.field.clone()).filter(|f| !f.is_empty()),
                        })
                        .collect()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The `Status` as JSON, with `kind` and `apiVersion`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a k8s-openapi struct into a Vec cannot fail.
        serde_json::to_vec(&self.to_status()).unwrap_or_default()
    }

    /// Maps a datastore error for the object `resource`/`name`.
    pub fn from_store(err: StoreError, resource: &str, name: &str) -> ApiError {
        match err {
            StoreError::AlreadyExists { .. } => ApiError::already_exists(resource, name),
            StoreError::NotFound { .. } => ApiError::not_found(resource, name),
            StoreError::Conflict { .. } => ApiError::conflict(resource, name),
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            StoreError::InvalidKey { key } => {
                ApiError::bad_request(format!("invalid name in key {key:?}"))
            }
            StoreError::Backend(crate::store::BackendError::Unavailable(cause)) => {
                ApiError::new(503, "ServiceUnavailable", cause)
            }
            StoreError::Backend(err) => ApiError::internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_upstream_status() {
        let json: serde_json::Value =
            serde_json::from_slice(&ApiError::not_found("configmaps", "x").to_json())
                .expect("json");
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "NotFound");
        assert_eq!(json["code"], 404);
        assert_eq!(json["message"], "configmaps \"x\" not found");
        assert_eq!(json["details"]["name"], "x");
        assert_eq!(json["details"]["kind"], "configmaps");
    }

    #[test]
    fn invalid_fields_carry_causes() {
        let cause = |field: &str| Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        };
        let one = ApiError::invalid_fields("apps", "Deployment", "x", vec![cause("spec.selector")]);
        assert_eq!(
            one.message,
            "Deployment.apps \"x\" is invalid: spec.selector: Required value"
        );
        let json: serde_json::Value = serde_json::from_slice(&one.to_json()).expect("json");
        assert_eq!(json["details"]["group"], "apps");
        assert_eq!(json["details"]["causes"][0]["field"], "spec.selector");
        assert_eq!(json["details"]["causes"][0]["reason"], "FieldValueRequired");
        let two = ApiError::invalid_fields("", "Pod", "p", vec![cause("a"), cause("b")]);
        assert_eq!(
            two.message,
            "Pod \"p\" is invalid: [a: Required value, b: Required value]"
        );
    }

    #[test]
    fn store_errors_map_to_reasons() {
        let conflict = ApiError::from_store(
            StoreError::Conflict {
                key: "/k".into(),
                current: 3,
            },
            "configmaps",
            "x",
        );
        assert_eq!((conflict.code, conflict.reason), (409, "Conflict"));
        let exists = ApiError::from_store(
            StoreError::AlreadyExists { key: "/k".into() },
            "configmaps",
            "x",
        );
        assert_eq!((exists.code, exists.reason), (409, "AlreadyExists"));
        let expired = ApiError::from_store(
            StoreError::Compacted {
                requested: 1,
                compacted: 5,
            },
            "configmaps",
            "",
        );
        assert_eq!((expired.code, expired.reason), (410, "Expired"));
    }
}
