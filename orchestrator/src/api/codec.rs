//! Request bodies: JSON, YAML and Kubernetes protobuf, all decoded to the
//! same `serde_json::Value` the handlers work on. Responses stay JSON:
//! client-go sends `Accept: application/vnd.kubernetes.protobuf,
//! application/json` with protobuf bodies and decodes a response by its
//! `Content-Type`, so kubectl reads our JSON answers as it reads upstream's.
//!
//! # Protobuf
//! A body is the magic `k8s\0` then a `runtime.Unknown` message: the
//! `typeMeta` (apiVersion, kind) and the object's own protobuf bytes in
//! `raw`. Upstream's protobuf messages are generated from the Go types,
//! with the JSON names as field names, so one generic walk over a
//! schema turns any kind into its JSON form. The schema comes from
//! upstream's 1.32 `.proto` files, compiled at build time (see `build.rs`)
//! into a table of messages and fields (~100 KB), read by a small
//! wire-format reader (`protobuf`). Alternatives measured or weighed:
//! - `k8s-pb`'s prost structs have no JSON form: every kind would need a
//!   hand-written conversion, and the structs of every kind cost more
//!   binary than a table.
//! - `prost-reflect` over a descriptor set is the generic, maintained
//!   decoder, but it added ~300 KB of code to the static binary (7%) for
//!   what is ~250 lines here; it stays as a dev-dependency: the tests
//!   encode their bodies with it from the same descriptors.
//!
//! The walk follows how Go's JSON encoder writes the decoded object:
//! - Embedded Go structs (`json:",inline"`) are fields in protobuf
//!   (`Probe.handler`, `Volume.volumeSource`) but flattened in JSON: a
//!   message field that the kind's JSON Schema (from k8s-openapi, as the
//!   OpenAPI documents use) does not list as a property is merged into its
//!   parent.
//! - Go zero values: a singular empty string, an empty list or map and an
//!   all-zero `Time` are left out (as `omitempty` does and as JSON clients
//!   send them); numbers and booleans that are present stay, because
//!   pointers such as `replicas: 0` must (the protobuf does not say which
//!   fields are pointers: code reading objects treats `0` as unset where
//!   Go does, e.g. `nodePort`), except `metadata.generation: 0`. An
//!   optional message that is present stays even when empty
//!   (`emptyDir: {}`).
//! - Types with their own JSON form: `Time` and `MicroTime` (RFC 3339),
//!   `Quantity` (its string), `IntOrString` (number or string), `Duration`
//!   (Go's `1h2m3s`), `RawExtension`, `FieldsV1` and apiextensions' `JSON`
//!   (embedded JSON), `Verbs` and `ExtraValue` (string lists); `bytes`
//!   fields are base64, as in Go.
//!
//! # YAML
//! `application/yaml` bodies go through `serde_yaml_ng`, the maintained
//! fork of `serde_yaml` (libyaml's parser, with serde_yaml's recursion and
//! alias-expansion limits against hostile documents). `serde-saphyr` is
//! pure safe Rust but pulls `encoding_rs` into the binary.
//!
//! # Current limitations
//! - Protobuf responses are not encoded (clients fall back to JSON).
//! - apiextensions' `JSONSchemaProps*` union types (CRD schemas) decode
//!   field by field, not to their JSON shorthand forms.
//! - Alpha and beta API versions have no descriptors (not served).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

/// `Content-Type` of Kubernetes protobuf bodies.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The encodings of object bodies (create and update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (also a missing `Content-Type`).
    Json,
    /// `application/yaml`.
    Yaml,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

impl Format {
    /// The format of a `Content-Type` header value (`None`: not sent).
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, ApiError> {
        let Some(content_type) = content_type else {
            return Ok(Format::Json);
        };
        match content_type.split(';').next().unwrap_or("").trim() {
            "" | "application/json" => Ok(Format::Json),
            "application/yaml" => Ok(Format::Yaml),
            PROTOBUF => Ok(Format::Protobuf),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }
}

/// Decodes an object body of kind `rt` to its JSON value (an object, or
/// an error).
pub fn decode(format: Format, bytes: &[u8], rt: &ResourceType) -> Result<Value, ApiError> {
    if format == Format::Protobuf && rt.custom.is_some() {
        // As upstream: custom resources have no protobuf form.
        return Err(ApiError::unsupported_media_type(PROTOBUF));
    }
    match format {
        Format::Protobuf => decode_with(format, bytes, &properties(rt)),
        _ => decode_with(format, bytes, &Properties::new()),
    }
}

fn decode_with(format: Format, bytes: &[u8], properties: &Properties) -> Result<Value, ApiError> {
    let value = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|err| {
            ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
        })?,
        Format::Yaml => yaml_to_json(bytes)?,
        Format::Protobuf => protobuf::to_json(bytes, properties)?,
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("the request body is not an object"))
    }
}

/// Decodes a body of no served kind (`DeleteOptions`): protobuf embedded
/// structs are not flattened, which options types do not have.
pub fn decode_untyped(format: Format, bytes: &[u8]) -> Result<Value, ApiError> {
    decode_with(format, bytes, &Properties::new())
}

/// Decodes one YAML document (also used for `apply-patch+yaml` bodies).
pub fn yaml_to_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_yaml_ng::from_slice(bytes)
        .map_err(|err| ApiError::bad_request(format!("the request body is not valid YAML: {err}")))
}

/// JSON property names of each type a kind contains, by OpenAPI
/// definition name (`io.k8s.api.core.v1.Probe`).
type Properties = HashMap<String, HashSet<String>>;

/// The [`Properties`] of `rt`'s kind, computed once per kind.
fn properties(rt: &ResourceType) -> Arc<Properties> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Properties>>>> = OnceLock::new();
    let key = format!("{}/{}", rt.api_version, rt.kind);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    (rt.schema.0)(&mut generator);
    let properties: Properties = generator
        .take_definitions(true)
        .into_iter()
        .filter_map(|(name, schema)| {
            let props = schema.get("properties")?.as_object()?;
            Some((name, props.keys().cloned().collect()))
        })
        .collect();
    let properties = Arc::new(properties);
    if let Ok(mut cache) = cache.lock() {
        cache.insert(key, properties.clone());
    }
    properties
}

/// The OpenAPI definition name of a protobuf message: upstream's protos
/// are named after the Go package (`api.core.v1.Probe`), as are the
/// definitions, with an `io.k8s.` prefix and `-` for `_`.
fn definition_name(message: &str) -> String {
    format!("io.k8s.{}", message.replace('_', "-"))
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf request body is invalid: {message}"))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let fraction = |value: u64, unit: u64, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.ilog10() as usize;
        let frac = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", frac.trim_end_matches('0'))
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}", fraction(n, 1_000, "µs"));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}", fraction(n, 1_000_000, "ms"));
    }
    let seconds = n / 1_000_000_000;
    let (h, m) = (seconds / 3600, (seconds % 3600) / 60);
    let s = fraction(n % 60_000_000_000, 1_000_000_000, "s");
    match (h, m) {
        (0, 0) => format!("{sign}{s}"),
        (0, m) => format!("{sign}{m}m{s}"),
        (h, m) => format!("{sign}{h}h{m}m{s}"),
    }
}

mod protobuf;
#[cfg(test)]
mod tests;
