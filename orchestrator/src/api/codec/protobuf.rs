//! Kubernetes protobuf bodies to JSON: the `k8s\0` envelope, a wire-format
//! reader driven by the schema table `build.rs` derives from upstream's
//! protos, and the JSON forms of upstream's special types (see the
//! [`codec`](super) doc for the rules).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Number, Value};

use super::{Properties, bad};
use crate::api::status::ApiError;

/// The magic prefix of a Kubernetes protobuf body.
pub(super) const MAGIC: &[u8] = b"k8s\0";

/// The schema table `build.rs` writes (see its doc for the format).
static SCHEMA: &str = include_str!(concat!(env!("OUT_DIR"), "/k8s.schema"));

/// Nesting deeper than this is refused (upstream's objects nest ~15 deep).
const MAX_DEPTH: usize = 100;

/// One field of a message.
#[derive(Debug)]
struct Field {
    name: &'static str,
    /// `FieldDescriptorProto.Type`: 9 string, 11 message, 12 bytes...
    kind: u8,
    repeated: bool,
    /// The message type of a message field.
    message: Option<&'static str>,
}

/// One message: its fields by number, and whether it is a map entry.
#[derive(Debug, Default)]
struct Message {
    fields: HashMap<u32, Field>,
    map_entry: bool,
}

const STRING: u8 = 9;
const MESSAGE: u8 = 11;
const BYTES: u8 = 12;

fn schema() -> &'static HashMap<&'static str, Message> {
    static PARSED: OnceLock<HashMap<&'static str, Message>> = OnceLock::new();
    PARSED.get_or_init(|| {
        // Field types refer to messages by the index of their `M` line.
        let names: Vec<&'static str> = SCHEMA
            .lines()
            .filter_map(|line| line.strip_prefix("M "))
            .map(|rest| rest.split(' ').next().unwrap_or_default())
            .collect();
        let mut messages = HashMap::new();
        let mut current: Option<(&str, Message)> = None;
        for line in SCHEMA.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("M") => {
                    if let Some((name, message)) = current.take() {
                        messages.insert(name, message);
                    }
                    let name = words.next().unwrap_or_default();
                    let message = Message {
                        map_entry: words.next() == Some("map"),
                        ..Message::default()
                    };
                    current = Some((name, message));
                }
                Some("F") => {
                    let (Some(number), Some(name), Some(kind), Some(label)) =
                        (words.next(), words.next(), words.next(), words.next())
                    else {
                        continue;
                    };
                    let (Ok(number), Ok(kind)) = (number.parse(), kind.parse()) else {
                        continue;
                    };
                    let message = words
                        .next()
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| names.get(i).copied());
                    if let Some((_, current)) = &mut current {
                        let field = Field {
                            name,
                            kind,
                            repeated: label == "r",
                            message,
                        };
                        current.fields.insert(number, field);
                    }
                }
                _ => {}
            }
        }
        if let Some((name, message)) = current {
            messages.insert(name, message);
        }
        messages
    })
}

/// Decodes a `k8s\0` + `runtime.Unknown` body to the object's JSON value,
/// with `apiVersion` and `kind` from its type meta.
pub(super) fn to_json(bytes: &[u8], properties: &Properties) -> Result<Value, ApiError> {
    let raw = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 magic"))?;
    let envelope = message("apimachinery.pkg.runtime.Unknown", raw, 0)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (api_version, kind) = (
        text(&envelope.get("typeMeta", "apiVersion")),
        text(&envelope.get("typeMeta", "kind")),
    );
    if kind.is_empty() || api_version.is_empty() {
        return Err(bad("typeMeta needs apiVersion and kind"));
    }
    let encoding = text(&envelope.get("contentEncoding", ""));
    if !encoding.is_empty() {
        return Err(bad(format!(
            "contentEncoding {encoding:?} is not supported"
        )));
    }
    let content_type = text(&envelope.get("contentType", ""));
    if !content_type.is_empty() && content_type != super::PROTOBUF {
        return Err(bad(format!(
            "contentType {content_type:?} is not supported"
        )));
    }
    let name = find_message(&api_version, &kind).ok_or_else(|| {
        bad(format!(
            "no protobuf type is known for {api_version}, Kind={kind}"
        ))
    })?;
    let object = envelope.bytes("raw");
    let mut value = message(name, object, 0)
        .map_err(|err| bad(format!("{kind}: {}", err.message)))?
        .into_json(properties)?;
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
fn find_message(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let label = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let suffix = format!(".{version}.{kind}");
    let candidates: Vec<&'static str> = schema()
        .iter()
        .filter(|(name, message)| name.ends_with(&suffix) && !message.map_entry)
        .map(|(name, _)| *name)
        .collect();
    if candidates.len() == 1 {
        return candidates.first().copied();
    }
    candidates.into_iter().find(|name| {
        name.strip_suffix(&suffix)
            .is_some_and(|package| package.rsplit('.').next() == Some(label))
    })
}

/// A field's decoded value before its JSON form is chosen.
#[derive(Debug, Clone)]
enum Wire {
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    Message(Decoded),
}

/// A decoded message: its fields by number, repeated ones in order.
#[derive(Debug, Clone, Default)]
struct Decoded {
    name: &'static str,
    fields: BTreeMap<u32, Vec<Wire>>,
}

/// Reads one varint.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, ApiError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or_else(|| bad("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(bad("varint longer than 10 bytes"))
}

fn take<'b>(bytes: &'b [u8], at: &mut usize, len: usize) -> Result<&'b [u8], ApiError> {
    let end = at
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| bad("truncated field"))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

/// Decodes `bytes` as message `name`; unknown fields are skipped.
fn message(name: &'static str, bytes: &[u8], depth: usize) -> Result<Decoded, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("messages nest too deep"));
    }
    let message = schema()
        .get(name)
        .ok_or_else(|| bad(format!("unknown message type {name}")))?;
    let mut out = Decoded {
        name,
        fields: BTreeMap::new(),
    };
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        let wire_type = key & 7;
        let field = message.fields.get(&number);
        let values = match wire_type {
            0 => vec![scalar_varint(varint(bytes, &mut at)?, field)],
            1 => {
                let b = take(bytes, &mut at, 8)?;
                let n = u64::from_le_bytes(b.try_into().map_err(|_| bad("fixed64"))?);
                vec![fixed64(n, field)]
            }
            5 => {
                let b = take(bytes, &mut at, 4)?;
                let n = u32::from_le_bytes(b.try_into().map_err(|_| bad("fixed32"))?);
                vec![fixed32(n, field)]
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?)
                    .map_err(|_| bad("length out of range"))?;
                let payload = take(bytes, &mut at, len)?;
                match field {
                    Some(f) => delimited(f, payload, depth)?,
                    None => Vec::new(),
                }
            }
            other => return Err(bad(format!("unsupported wire type {other}"))),
        };
        if let Some(f) = field {
            let slot = out.fields.entry(number).or_default();
            if !f.repeated {
                // The last value of a singular field wins.
                slot.clear();
            }
            slot.extend(values);
        }
    }
    Ok(out)
}

fn scalar_varint(n: u64, field: Option<&Field>) -> Wire {
    match field.map(|f| f.kind) {
        Some(8) => Wire::Bool(n != 0),
        Some(4 | 13) => Wire::Unsigned(n),
        Some(5 | 14) => Wire::Int(i64::from(n as u32 as i32)),
        Some(17) => Wire::Int(i64::from(((n >> 1) as i32) ^ -((n & 1) as i32))),
        Some(18) => Wire::Int(((n >> 1) as i64) ^ -((n & 1) as i64)),
        _ => Wire::Int(n as i64),
    }
}

fn delimited(field: &Field, payload: &[u8], depth: usize) -> Result<Vec<Wire>, ApiError> {
    Ok(match field.kind {
        STRING => {
            let text = std::str::from_utf8(payload)
                .map_err(|_| bad(format!("{}: invalid UTF-8", field.name)))?;
            vec![Wire::Text(text.to_owned())]
        }
        BYTES => vec![Wire::Bytes(payload.to_vec())],
        MESSAGE => {
            let name = field
                .message
                .ok_or_else(|| bad(format!("{}: no message type", field.name)))?;
            vec![Wire::Message(message(name, payload, depth + 1)?)]
        }
        // Packed repeated scalars.
        kind => {
            let mut at = 0;
            let mut out = Vec::new();
            while at < payload.len() {
                out.push(match kind {
                    1 | 6 | 16 => {
                        let b = take(payload, &mut at, 8)?;
                        fixed64(
                            u64::from_le_bytes(b.try_into().map_err(|_| bad("fixed64"))?),
                            Some(field),
                        )
                    }
                    2 | 7 | 15 => {
                        let b = take(payload, &mut at, 4)?;
                        fixed32(
                            u32::from_le_bytes(b.try_into().map_err(|_| bad("fixed32"))?),
                            Some(field),
                        )
                    }
                    _ => scalar_varint(varint(payload, &mut at)?, Some(field)),
                });
            }
            out
        }
    })
}

fn fixed64(n: u64, field: Option<&Field>) -> Wire {
    match field.map(|f| f.kind) {
        Some(1) => Wire::Float(f64::from_bits(n)),
        Some(16) => Wire::Int(n as i64),
        _ => Wire::Unsigned(n),
    }
}

fn fixed32(n: u32, field: Option<&Field>) -> Wire {
    match field.map(|f| f.kind) {
        Some(2) => Wire::Float(f64::from(f32::from_bits(n))),
        Some(15) => Wire::Int(i64::from(n as i32)),
        _ => Wire::Unsigned(u64::from(n)),
    }
}

impl Decoded {
    fn field(&self, name: &str) -> Option<&Wire> {
        let message = schema().get(self.name)?;
        let (number, _) = message.fields.iter().find(|(_, f)| f.name == name)?;
        self.fields.get(number).and_then(|values| values.last())
    }

    /// A nested scalar as JSON (`inner` empty: the field itself).
    fn get(&self, name: &str, inner: &str) -> Value {
        match (self.field(name), inner) {
            (Some(Wire::Message(m)), inner) if !inner.is_empty() => m.get(inner, ""),
            (Some(Wire::Text(s)), "") => Value::String(s.clone()),
            _ => Value::Null,
        }
    }

    fn int(&self, name: &str) -> i64 {
        match self.field(name) {
            Some(Wire::Int(n)) => *n,
            Some(Wire::Unsigned(n)) => i64::try_from(*n).unwrap_or(i64::MAX),
            _ => 0,
        }
    }

    fn bytes(&self, name: &str) -> &[u8] {
        match self.field(name) {
            Some(Wire::Bytes(b)) => b,
            _ => &[],
        }
    }

    fn text(&self, name: &str) -> String {
        match self.field(name) {
            Some(Wire::Text(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// The JSON value of the message (see the module doc for the rules).
    fn into_json(self, properties: &Properties) -> Result<Value, ApiError> {
        let name = self.name;
        if let Some(special) = self.special(name)? {
            return Ok(special);
        }
        let message = schema()
            .get(self.name)
            .ok_or_else(|| bad(format!("unknown message type {}", self.name)))?;
        let known: Option<&HashSet<String>> = properties.get(&super::definition_name(name));
        let mut map = Map::new();
        for (number, values) in self.fields {
            let Some(field) = message.fields.get(&number) else {
                continue;
            };
            let map_entry = field
                .message
                .and_then(|m| schema().get(m))
                .is_some_and(|m| m.map_entry);
            let json = if map_entry {
                let mut entries = Map::new();
                for value in values {
                    if let Wire::Message(entry) = value {
                        let key = match entry.field("key") {
                            Some(Wire::Text(s)) => s.clone(),
                            Some(Wire::Int(n)) => n.to_string(),
                            Some(Wire::Unsigned(n)) => n.to_string(),
                            Some(Wire::Bool(b)) => b.to_string(),
                            _ => String::new(),
                        };
                        let value = match entry.field("value").cloned() {
                            Some(v) => wire_to_json(v, properties)?,
                            // A missing value is the type's zero value.
                            None => Value::String(String::new()),
                        };
                        entries.insert(key, value);
                    }
                }
                Value::Object(entries)
            } else if field.repeated {
                let items = values
                    .into_iter()
                    .map(|v| wire_to_json(v, properties))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::Array(items)
            } else {
                match values.into_iter().last() {
                    Some(v) => wire_to_json(v, properties)?,
                    None => continue,
                }
            };
            if let (Some(known), Value::Object(inline)) = (known, &json)
                && field.kind == MESSAGE
                && !field.repeated
                && !known.contains(field.name)
            {
                map.extend(inline.clone());
                continue;
            }
            let empty = match &json {
                Value::Null => true,
                Value::String(s) => s.is_empty() && !field.repeated,
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            // `generation` is the one non-pointer number of ObjectMeta:
            // every Go client writes it, as 0, and Go's JSON omits it then.
            let zero_generation = field.name == "generation" && json == 0;
            if !empty && !zero_generation {
                map.insert(field.name.to_owned(), json);
            }
        }
        Ok(Value::Object(map))
    }

    /// The JSON form of upstream's types that have their own.
    fn special(&self, name: &str) -> Result<Option<Value>, ApiError> {
        if name.ends_with("meta.v1.Time") || name.ends_with("meta.v1.MicroTime") {
            let (seconds, nanos) = (self.int("seconds"), self.int("nanos"));
            if seconds == 0 && nanos == 0 {
                return Ok(Some(Value::Null));
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
            return Ok(Some(time.strftime(format).to_string().into()));
        }
        if name.ends_with("resource.Quantity") || name.ends_with("resource.QuantityValue") {
            return Ok(Some(self.text("string").into()));
        }
        if name.ends_with("intstr.IntOrString") {
            return Ok(Some(if self.int("type") == 1 {
                self.text("strVal").into()
            } else {
                self.int("intVal").into()
            }));
        }
        if name.ends_with("meta.v1.Duration") {
            return Ok(Some(super::go_duration(self.int("duration")).into()));
        }
        let raw_field = if name.ends_with("meta.v1.FieldsV1") {
            Some("Raw")
        } else if name.ends_with("runtime.RawExtension") || name.ends_with("apiextensions.v1.JSON")
        {
            Some("raw")
        } else {
            None
        };
        if let Some(field) = raw_field {
            let raw = self.bytes(field);
            if raw.is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_slice(raw)
                .map(Some)
                .map_err(|err| bad(format!("{name} holds no JSON: {err}")));
        }
        if name.ends_with(".ExtraValue") || name.ends_with("meta.v1.Verbs") {
            let items = self
                .fields
                .values()
                .flatten()
                .filter_map(|w| match w {
                    Wire::Text(s) => Some(Value::String(s.clone())),
                    _ => None,
                })
                .collect();
            return Ok(Some(Value::Array(items)));
        }
        Ok(None)
    }
}

fn wire_to_json(value: Wire, properties: &Properties) -> Result<Value, ApiError> {
    Ok(match value {
        Wire::Int(n) => Value::from(n),
        Wire::Unsigned(n) => Value::from(n),
        Wire::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Wire::Bool(b) => Value::Bool(b),
        Wire::Text(s) => Value::String(s),
        Wire::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        Wire::Message(m) => m.into_json(properties)?,
    })
}
