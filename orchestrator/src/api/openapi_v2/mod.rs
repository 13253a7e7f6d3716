//! `/openapi/v2`: one Swagger 2.0 document of every served kind, as JSON
//! or as gnostic's protobuf `openapi.v2.Document` (asked for as
//! `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, answered
//! with `...spec.v2.v1.0+protobuf` as kube-openapi does: Go's
//! `mime.ParseMediaType` refuses the `@`).
//!
//! kubectl 1.32 reads it for client-side validation: with default
//! (Strict) validation, `create -f`/`apply -f` of a kind whose v3 document
//! has no `patch` operation taking `fieldValidation` (the review kinds:
//! SelfSubjectAccessReview, TokenReview...) cannot leave validation to the
//! server, so kubectl fetches this document as protobuf and checks the
//! object against the definition whose `x-kubernetes-group-version-kind`
//! names its kind (unknown fields, missing required fields, wrong types);
//! without it, it fails with "failed to download openapi".
//!
//! The document is converted from the served `/openapi/v3` group-version
//! documents (`convert`), built-in and custom alike, so both versions say
//! the same: definitions named as upstream (`io.k8s.api.core.v1.Pod`),
//! `#/definitions/` references, the `x-kubernetes-group-version-kind` and
//! merge-key extensions. It is built on request and not kept: it is about
//! as large as all v3 documents together (0.63 MB as protobuf, 0.73 MB as
//! JSON), which would add to the server's resident memory for a document
//! kubectl asks for only when it validates a review kind, and then with
//! the `ETag` of its last copy in its HTTP cache. Building it takes ~50 ms
//! in the release binary and leaves RSS within ~0.1 MB of where it was.
//! The `ETag` is derived from the v3 root's hash (it changes whenever a v3
//! document does), so `If-None-Match` is answered with 304 without
//! building anything.
//!
//! # Current limitations
//! - Paths carry what the v3 documents describe (ids, `x-kubernetes-*`,
//!   query, path and body parameters, responses), not every parameter
//!   upstream lists; `produces` names JSON only.
//! - No gzip: the document is sent as it is.

pub mod convert;
pub mod gnostic;

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::Body;
use super::openapi::Documents;
use super::status::ApiError;

/// The protobuf media type client-go asks for (kube-openapi's deprecated
/// spelling: `@` is no token character, so it is never sent back).
pub const PROTOBUF_ASKED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The protobuf media type, as kube-openapi answers either spelling.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const JSON: &str = "application/json";

/// The encoding a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Protobuf,
}

/// The v2 document's content, converted from v3.
#[derive(Debug, Default)]
pub struct Spec {
    /// Path → v2 path item.
    pub paths: BTreeMap<String, Value>,
    /// Definition name → v2 schema.
    pub definitions: BTreeMap<String, Value>,
}

impl Spec {
    /// Converts every group-version document of `docs` (a name or path
    /// shared by several documents is taken once: they are the same).
    pub fn build(docs: &Documents) -> Spec {
        let mut spec = Spec::default();
        for body in docs.group_version_bodies() {
            let doc: Value = match serde_json::from_slice(body) {
                Ok(doc) => doc,
                Err(err) => {
                    // Served documents are serialized Values: cannot happen.
                    tracing::warn!(%err, "an openapi v3 document does not parse");
                    continue;
                }
            };
            for (name, schema) in doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
            {
                spec.definitions
                    .entry(name.clone())
                    .or_insert_with(|| convert::schema(schema));
            }
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                spec.paths
                    .entry(path.clone())
                    .or_insert_with(|| convert::path_item(item));
            }
        }
        spec
    }

    fn info() -> (String, String) {
        (
            "Kubernetes".to_owned(),
            super::discovery::version().git_version,
        )
    }

    /// The Swagger 2.0 JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let (title, version) = Spec::info();
        let doc = json!({
            "swagger": "2.0",
            "info": { "title": title, "version": version },
            "paths": self.paths,
            "definitions": self.definitions,
        });
        // Serializing a serde_json::Value cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// gnostic's `openapi.v2.Document`, encoded.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let (title, version) = Spec::info();
        gnostic::encode(
            gnostic::Info { title, version },
            self.paths.iter(),
            self.definitions.iter(),
        )
    }
}

/// The encoding `Accept` asks for, as kube-openapi negotiates it (no
/// `Accept`: JSON).
fn negotiate(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.trim().is_empty() {
        return Ok(Encoding::Json);
    }
    for clause in accept.split(',') {
        let mut parts = clause.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if parts.any(|p| p.replace(' ', "") == "q=0") {
            continue;
        }
        match media {
            PROTOBUF | PROTOBUF_ASKED => return Ok(Encoding::Protobuf),
            JSON | "application/*" | "*/*" => return Ok(Encoding::Json),
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(&[JSON, PROTOBUF]))
}

/// Serves `GET /openapi/v2` from `docs` (CPU work: call it off the
/// async workers).
pub fn serve(docs: &Documents, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let encoding = negotiate(headers)?;
    let (suffix, content_type) = match encoding {
        Encoding::Json => ("json", JSON),
        Encoding::Protobuf => ("pb", PROTOBUF),
    };
    let root = docs.root_hash();
    let etag = format!(
        "\"{}-{}-{suffix}\"",
        env!("CARGO_PKG_VERSION"),
        root.get(..64).unwrap_or(root)
    );
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let (code, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        let spec = Spec::build(docs);
        let body = match encoding {
            Encoding::Json => spec.to_json(),
            Encoding::Protobuf => spec.to_protobuf(),
        };
        (StatusCode::OK, Bytes::from(body))
    };
    let mut response = Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = code;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests;
