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
//! descriptor turns any kind into its JSON form; the descriptors come from
//! upstream's 1.32 `.proto` files, compiled at build time (see `build.rs`)
//! into a ~150 KB descriptor set and read with `prost-reflect`. This was
//! chosen over the `k8s-pb` crate: its prost structs have no JSON form, so
//! every kind would need a hand-written conversion, and linking the
//! structs of every kind costs far more than a descriptor set.
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

use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage};
use serde_json::{Map, Number, Value};

use super::resources::ResourceType;
use super::status::ApiError;

/// `Content-Type` of Kubernetes protobuf bodies.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The magic prefix of a Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// The descriptor set `build.rs` compiles from upstream's protos.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"));

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
        Format::Protobuf => protobuf_to_json(bytes, properties)?,
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

fn pool() -> Result<&'static DescriptorPool, ApiError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|err| err.to_string()))
        .as_ref()
        .map_err(|err| ApiError::internal(format!("protobuf descriptors: {err}")))
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

/// Decodes a `k8s\0` + `runtime.Unknown` body to the object's JSON value,
/// with `apiVersion` and `kind` from its type meta.
fn protobuf_to_json(bytes: &[u8], properties: &Properties) -> Result<Value, ApiError> {
    let raw = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 magic"))?;
    let pool = pool()?;
    let unknown = pool
        .get_message_by_name("apimachinery.pkg.runtime.Unknown")
        .ok_or_else(|| ApiError::internal("protobuf descriptors lack runtime.Unknown"))?;
    let envelope = DynamicMessage::decode(unknown, raw).map_err(bad)?;
    let field = |name: &str| envelope.get_field_by_name(name);
    let type_meta = field("typeMeta");
    let type_meta = type_meta.as_ref().and_then(|v| v.as_message());
    let text = |name: &str| {
        type_meta
            .and_then(|m| m.get_field_by_name(name))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if kind.is_empty() || api_version.is_empty() {
        return Err(bad("typeMeta needs apiVersion and kind"));
    }
    if let Some(encoding) = field("contentEncoding").and_then(|v| v.as_str().map(str::to_owned))
        && !encoding.is_empty()
    {
        return Err(bad(format!(
            "contentEncoding {encoding:?} is not supported"
        )));
    }
    if let Some(content_type) = field("contentType").and_then(|v| v.as_str().map(str::to_owned))
        && !content_type.is_empty()
        && content_type != PROTOBUF
    {
        return Err(bad(format!(
            "contentType {content_type:?} is not supported"
        )));
    }
    let descriptor = find_message(pool, &api_version, &kind).ok_or_else(|| {
        bad(format!(
            "no protobuf type is known for {api_version}, Kind={kind}"
        ))
    })?;
    let object_bytes = field("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let object = DynamicMessage::decode(descriptor, object_bytes)
        .map_err(|err| bad(format!("{kind}: {err}")))?;
    let mut value = message_to_json(&object, properties)?;
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    Ok(value)
}

/// The message of `kind` in `api_version`: the packages are upstream's Go
/// packages (`api.apps.v1`, `apimachinery.pkg.apis.meta.v1`), so the kind
/// and version pick candidates and the group's first label (`rbac` of
/// `rbac.authorization.k8s.io`, `core` for the core group) breaks ties.
fn find_message(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let label = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let candidates: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.name() == kind && m.package_name().ends_with(&format!(".{version}")))
        .collect();
    if candidates.len() == 1 {
        return candidates.into_iter().next();
    }
    candidates.into_iter().find(|m| {
        m.package_name()
            .strip_suffix(&format!(".{version}"))
            .is_some_and(|p| p.rsplit('.').next() == Some(label))
    })
}

/// The JSON value of a decoded message (see the module doc for the rules).
fn message_to_json(message: &DynamicMessage, properties: &Properties) -> Result<Value, ApiError> {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    let int = |field: &str| {
        message
            .get_field_by_name(field)
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    let text = |field: &str| {
        message
            .get_field_by_name(field)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    if name.ends_with("meta.v1.Time") || name.ends_with("meta.v1.MicroTime") {
        let (seconds, nanos) = (int("seconds"), int("nanos"));
        if seconds == 0 && nanos == 0 {
            return Ok(Value::Null);
        }
        let time = i32::try_from(nanos)
            .ok()
            .and_then(|n| jiff::Timestamp::new(seconds, n).ok())
            .ok_or_else(|| bad(format!("{name}: time out of range")))?;
        let format = if name.ends_with("MicroTime") {
            "%Y-%m-%dT%H:%M:%S%.6fZ"
        } else {
            "%Y-%m-%dT%H:%M:%SZ"
        };
        return Ok(time.strftime(format).to_string().into());
    }
    if name.ends_with("resource.Quantity") || name.ends_with("resource.QuantityValue") {
        return Ok(text("string").into());
    }
    if name.ends_with("intstr.IntOrString") {
        return Ok(if int("type") == 1 {
            text("strVal").into()
        } else {
            int("intVal").into()
        });
    }
    if name.ends_with("meta.v1.Duration") {
        return Ok(go_duration(int("duration")).into());
    }
    let raw_field = if name.ends_with("meta.v1.FieldsV1") {
        Some("Raw")
    } else if name.ends_with("runtime.RawExtension") || name.ends_with("apiextensions.v1.JSON") {
        Some("raw")
    } else {
        None
    };
    if let Some(field) = raw_field {
        let raw = message
            .get_field_by_name(field)
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        if raw.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&raw)
            .map_err(|err| bad(format!("{name} holds no JSON: {err}")));
    }
    if name.ends_with(".ExtraValue") || name.ends_with("meta.v1.Verbs") {
        return match message.get_field_by_name("items") {
            Some(items) => value_to_json(&items, properties),
            None => Ok(Value::Array(Vec::new())),
        };
    }
    let known = properties.get(&definition_name(name));
    let mut map = Map::new();
    for (field, value) in message.fields() {
        let json = value_to_json(value, properties)?;
        if let (Some(known), Value::Object(inline)) = (known, &json)
            && !known.contains(field.name())
            && !field.is_map()
        {
            map.extend(inline.clone());
            continue;
        }
        let empty = match &json {
            Value::Null => true,
            Value::String(s) => s.is_empty() && !field.is_list(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty() && field.is_map(),
            _ => false,
        };
        // `generation` is the one non-pointer number of ObjectMeta: every
        // Go client writes it, as 0, and Go's JSON omits it then.
        let zero_generation = field.name() == "generation" && json == 0;
        if !empty && !zero_generation {
            map.insert(field.name().to_owned(), json);
        }
    }
    Ok(Value::Object(map))
}

fn value_to_json(value: &prost_reflect::Value, properties: &Properties) -> Result<Value, ApiError> {
    use prost_reflect::Value as V;
    Ok(match value {
        V::Bool(b) => Value::Bool(*b),
        V::I32(n) | V::EnumNumber(n) => Value::from(*n),
        V::I64(n) => Value::from(*n),
        V::U32(n) => Value::from(*n),
        V::U64(n) => Value::from(*n),
        V::F32(n) => Number::from_f64(f64::from(*n)).map_or(Value::Null, Value::Number),
        V::F64(n) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        V::String(s) => Value::String(s.clone()),
        V::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        V::Message(m) => message_to_json(m, properties)?,
        V::List(items) => Value::Array(
            items
                .iter()
                .map(|v| value_to_json(v, properties))
                .collect::<Result<_, _>>()?,
        ),
        V::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                map.insert(key, value_to_json(value, properties)?);
            }
            Value::Object(map)
        }
    })
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

#[cfg(test)]
mod tests;
