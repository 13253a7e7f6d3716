//! `serviceaccounts/<name>/token`: a `TokenRequest` in, the same object
//! back with `status.token` and `status.expirationTimestamp` (201), as
//! `kubectl create token` and the node agent's projected volumes use it.
//!
//! As upstream: `spec.expirationSeconds` defaults to one hour and may not
//! be under ten minutes; `spec.audiences` defaults to the API's; a
//! `boundObjectRef` (a Pod or Secret in the namespace) must exist, and the
//! token then stops working when that object is deleted; a token of a
//! service account that is deleted stops working too.

use serde_json::{Value, json};

use super::handlers::{Target, from_kv};
use super::status::ApiError;
use super::tokens::{self, Binding, Claims, Ref};
use super::{Api, Body, json_response};
use hyper::Response;

/// Issues a token for the service account `name` of `target`'s namespace.
pub async fn create(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    request: Value,
) -> Result<Response<Body>, ApiError> {
    let kind = (request["apiVersion"].as_str(), request["kind"].as_str());
    if !matches!(
        kind,
        (
            Some("authentication.k8s.io/v1") | None,
            Some("TokenRequest") | None
        )
    ) {
        return Err(ApiError::bad_request(format!(
            "the body must be an authentication.k8s.io/v1 TokenRequest, not {} {}",
            kind.0.unwrap_or(""),
            kind.1.unwrap_or("")
        )));
    }
    let invalid =
        |message: String| ApiError::invalid("TokenRequest.authentication.k8s.io", name, message);
    let Some(signer) = api.auth.signer() else {
        return Err(ApiError::internal(
            "this server issues no service account tokens",
        ));
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let account = get(api, "serviceaccounts", &namespace, name)
        .await?
        .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let spec = &request["spec"];
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => tokens::DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            invalid(format!(
                "spec.expirationSeconds: Invalid value: {v}: must be an integer"
            ))
        })?,
    };
    if seconds < tokens::MIN_EXPIRATION_SECONDS {
        return Err(invalid(format!(
            "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
        )));
    }
    let seconds = seconds.min(tokens::MAX_EXPIRATION_SECONDS);
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("spec.audiences: Invalid value: must be strings".into()))?,
        _ => vec![tokens::ISSUER.to_owned()],
    };
    let mut binding = Binding {
        namespace: namespace.clone(),
        serviceaccount: Ref {
            name: name.to_owned(),
            uid: uid_of(&account),
        },
        pod: None,
        secret: None,
    };
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let object_name = bound["name"].as_str().unwrap_or("");
        let (plural, slot) = match bound["kind"].as_str() {
            Some("Pod") => ("pods", &mut binding.pod),
            Some("Secret") => ("secrets", &mut binding.secret),
            other => {
                return Err(invalid(format!(
                    "spec.boundObjectRef.kind: Unsupported value: {:?}: supported values: \"Pod\", \"Secret\"",
                    other.unwrap_or("")
                )));
            }
        };
        let object = get(api, plural, &namespace, object_name)
            .await?
            .ok_or_else(|| ApiError::not_found(plural, object_name))?;
        let uid = uid_of(&object);
        if let Some(wanted) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && wanted != uid
        {
            return Err(ApiError::conflict_with(
                plural,
                object_name,
                format!(
                    "the UID in the bound object reference ({wanted}) does not match the UID in record ({uid})"
                ),
            ));
        }
        *slot = Some(Ref {
            name: object_name.to_owned(),
            uid,
        });
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: tokens::ISSUER.to_owned(),
        sub: tokens::user_name(&namespace, name),
        aud: audiences.clone(),
        exp: now + seconds,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: binding,
    };
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut response = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": null,
        },
        "spec": {
            "audiences": audiences,
            "expirationSeconds": seconds,
            "boundObjectRef": if bound.is_object() { bound.clone() } else { Value::Null },
        },
        "status": {
            "token": signer.sign(&claims),
            "expirationTimestamp": expires,
        },
    });
    if !bound.is_object()
        && let Some(spec) = response["spec"].as_object_mut()
    {
        spec.remove("boundObjectRef");
    }
    Ok(json_response(201, &response))
}

async fn get(
    api: &Api,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let snapshot = api.snapshot();
    let Some(rt) = snapshot.registry.find("", "v1", plural) else {
        return Err(ApiError::internal(format!("{plural} are not served")));
    };
    match api.store.get(&rt.key(Some(namespace), name)).await {
        Ok(Some(kv)) => Ok(Some(from_kv(&kv)?)),
        Ok(None) => Ok(None),
        Err(err) => Err(ApiError::from_store(err, plural, name)),
    }
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap_or("").to_owned()
}
