//! The protobuf encoding of `/openapi/v2`: gnostic's `openapi.v2.Document`
//! (`github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto`), which
//! client-go decodes for kubectl's client-side validation.
//!
//! Only the messages and fields Cairn's documents use are declared, with
//! gnostic's field numbers; a decoder skips the rest. gnostic's `oneof`s
//! (`AdditionalPropertiesItem`, `Parameter`, `NonBodyParameter`,
//! `ParametersItem`, `ResponseValue`, `SchemaItem`) are declared as
//! optional fields with the same numbers: one of them set encodes exactly
//! as the `oneof` does (`boolean` is `optional` so that `false` is sent).
//! Values (`default`, `enum`, `example`, vendor extensions) travel as
//! gnostic's `Any.yaml`; JSON text is YAML, which is what kube-openapi
//! parses them with.
//!
//! The document is written from the v2 JSON (`convert`'s output), so both
//! encodings say the same; definitions are encoded one at a time and
//! appended, so no second whole document is held as messages.

use prost::Message;
use serde_json::{Map, Value};

/// `openapi.v2.Document`, without `definitions` when encoding (appended
/// by [`encode`]).
#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

/// `openapi.v2.Info`.
#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `openapi.v2.Paths`.
#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

/// `openapi.v2.NamedPathItem`.
#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

/// `openapi.v2.PathItem`.
#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
}

/// `openapi.v2.Operation`.
#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, repeated, tag = "1")]
    pub tags: Vec<String>,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.ParametersItem` (`oneof`: `parameter`).
#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

/// `openapi.v2.Parameter` (`oneof`: body or not).
#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "1")]
    pub body_parameter: Option<BodyParameter>,
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

/// `openapi.v2.BodyParameter`.
#[derive(Clone, PartialEq, Message)]
pub struct BodyParameter {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub r#in: String,
    #[prost(bool, tag = "4")]
    pub required: bool,
    #[prost(message, optional, tag = "5")]
    pub schema: Option<Schema>,
}

/// `openapi.v2.NonBodyParameter` (`oneof`: query or path here).
#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    #[prost(message, optional, tag = "4")]
    pub path_parameter_sub_schema: Option<PathParameterSubSchema>,
}

/// `openapi.v2.QueryParameterSubSchema`.
#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

/// `openapi.v2.PathParameterSubSchema`.
#[derive(Clone, PartialEq, Message)]
pub struct PathParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub r#type: String,
    #[prost(bool, tag = "19")]
    pub unique_items: bool,
}

/// `openapi.v2.Responses`.
#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

/// `openapi.v2.NamedResponseValue`.
#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

/// `openapi.v2.ResponseValue` (`oneof`: `response`).
#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

/// `openapi.v2.Response`.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
}

/// `openapi.v2.SchemaItem` (`oneof`: `schema`).
#[derive(Clone, PartialEq, Message)]
pub struct SchemaItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
}

/// `openapi.v2.Definitions`.
#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.NamedSchema`.
#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

/// `openapi.v2.Schema`, without `xml` and `externalDocs`.
#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(double, tag = "6")]
    pub multiple_of: f64,
    #[prost(double, tag = "7")]
    pub maximum: f64,
    #[prost(bool, tag = "8")]
    pub exclusive_maximum: bool,
    #[prost(double, tag = "9")]
    pub minimum: f64,
    #[prost(bool, tag = "10")]
    pub exclusive_minimum: bool,
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    #[prost(string, tag = "13")]
    pub pattern: String,
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    #[prost(int64, tag = "17")]
    pub max_properties: i64,
    #[prost(int64, tag = "18")]
    pub min_properties: i64,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(string, tag = "26")]
    pub discriminator: String,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.AdditionalPropertiesItem` (`oneof`: schema or boolean).
#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
    #[prost(bool, optional, tag = "2")]
    pub boolean: Option<bool>,
}

/// `openapi.v2.TypeItem`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

/// `openapi.v2.ItemsItem`.
#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// `openapi.v2.Properties`.
#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.NamedAny` (vendor extensions).
#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

/// `openapi.v2.Any`: the value as YAML (`value`, a protobuf `Any`, is
/// not used).
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

/// Key of `Definitions.additional_properties` (field 1, length-delimited).
const DEFINITION_KEY: u8 = (1 << 3) | 2;
/// Key of `Document.definitions` (field 9, length-delimited).
const DEFINITIONS_KEY: u8 = (9 << 3) | 2;

/// The whole document: `info`, `paths` (v2 JSON path items) and
/// `definitions` (name → v2 JSON schema).
pub fn encode<'a>(
    info: Info,
    paths: impl Iterator<Item = (&'a String, &'a Value)>,
    definitions: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Vec<u8> {
    let head = Document {
        swagger: "2.0".to_owned(),
        info: Some(info),
        paths: Some(Paths {
            path: paths
                .map(|(name, item)| NamedPathItem {
                    name: name.clone(),
                    value: Some(path_item(item)),
                })
                .collect(),
        }),
        definitions: None,
    };
    let mut out = head.encode_to_vec();
    let mut defs = Vec::new();
    for (name, value) in definitions {
        let named = NamedSchema {
            name: name.clone(),
            value: Some(schema(value)),
        };
        defs.push(DEFINITION_KEY);
        // Writing into a Vec cannot run out of room.
        let _ = named.encode_length_delimited(&mut defs);
    }
    out.push(DEFINITIONS_KEY);
    let _ = prost::encode_length_delimiter(defs.len(), &mut out);
    out.extend_from_slice(&defs);
    out
}

fn text(m: &Map<String, Value>, key: &str) -> String {
    m.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn flag(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).and_then(Value::as_bool).unwrap_or_default()
}

fn number(m: &Map<String, Value>, key: &str) -> f64 {
    m.get(key).and_then(Value::as_f64).unwrap_or_default()
}

fn integer(m: &Map<String, Value>, key: &str) -> i64 {
    m.get(key).and_then(Value::as_i64).unwrap_or_default()
}

fn texts(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn any(value: &Value) -> Any {
    Any {
        yaml: value.to_string(),
    }
}

/// The `x-` keys of `m`.
fn extensions(m: &Map<String, Value>) -> Vec<NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

/// A v2 JSON schema as gnostic's `Schema`.
pub fn schema(value: &Value) -> Schema {
    let Some(m) = value.as_object() else {
        return Schema::default();
    };
    Schema {
        r#ref: text(m, "$ref"),
        format: text(m, "format"),
        title: text(m, "title"),
        description: text(m, "description"),
        default: m.get("default").map(any),
        multiple_of: number(m, "multipleOf"),
        maximum: number(m, "maximum"),
        exclusive_maximum: flag(m, "exclusiveMaximum"),
        minimum: number(m, "minimum"),
        exclusive_minimum: flag(m, "exclusiveMinimum"),
        max_length: integer(m, "maxLength"),
        min_length: integer(m, "minLength"),
        pattern: text(m, "pattern"),
        max_items: integer(m, "maxItems"),
        min_items: integer(m, "minItems"),
        unique_items: flag(m, "uniqueItems"),
        max_properties: integer(m, "maxProperties"),
        min_properties: integer(m, "minProperties"),
        required: texts(m.get("required")),
        r#enum: m
            .get("enum")
            .and_then(Value::as_array)
            .map(|values| values.iter().map(any).collect())
            .unwrap_or_default(),
        additional_properties: m.get("additionalProperties").map(|a| {
            Box::new(match a {
                Value::Bool(b) => AdditionalPropertiesItem {
                    schema: None,
                    boolean: Some(*b),
                },
                other => AdditionalPropertiesItem {
                    schema: Some(schema(other)),
                    boolean: None,
                },
            })
        }),
        r#type: m.get("type").map(|t| TypeItem {
            value: texts(Some(t)),
        }),
        items: m.get("items").map(|items| ItemsItem {
            schema: match items {
                Value::Array(all) => all.iter().map(schema).collect(),
                one => vec![schema(one)],
            },
        }),
        all_of: m
            .get("allOf")
            .and_then(Value::as_array)
            .map(|all| all.iter().map(schema).collect())
            .unwrap_or_default(),
        properties: m
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| Properties {
                additional_properties: props
                    .iter()
                    .map(|(name, s)| NamedSchema {
                        name: name.clone(),
                        value: Some(schema(s)),
                    })
                    .collect(),
            }),
        discriminator: text(m, "discriminator"),
        read_only: flag(m, "readOnly"),
        example: m.get("example").map(any),
        vendor_extension: extensions(m),
    }
}

fn path_item(value: &Value) -> PathItem {
    let op = |verb: &str| value.get(verb).map(operation);
    PathItem {
        get: op("get"),
        put: op("put"),
        post: op("post"),
        delete: op("delete"),
        patch: op("patch"),
        parameters: parameters(value.get("parameters")),
    }
}

fn operation(value: &Value) -> Operation {
    let empty = Map::new();
    let m = value.as_object().unwrap_or(&empty);
    Operation {
        tags: texts(m.get("tags")),
        description: text(m, "description"),
        operation_id: text(m, "operationId"),
        produces: texts(m.get("produces")),
        consumes: texts(m.get("consumes")),
        parameters: parameters(m.get("parameters")),
        responses: m
            .get("responses")
            .and_then(Value::as_object)
            .map(|r| Responses {
                response_code: r
                    .iter()
                    .map(|(code, response)| NamedResponseValue {
                        name: code.clone(),
                        value: Some(ResponseValue {
                            response: Some(Response {
                                description: response["description"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                schema: response.get("schema").map(|s| SchemaItem {
                                    schema: Some(schema(s)),
                                }),
                            }),
                        }),
                    })
                    .collect(),
            }),
        vendor_extension: extensions(m),
    }
}

/// Body, query and path parameters (the kinds `convert` writes).
fn parameters(value: Option<&Value>) -> Vec<ParametersItem> {
    let Some(Value::Array(params)) = value else {
        return Vec::new();
    };
    params
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|p| {
            let parameter = match p.get("in").and_then(Value::as_str) {
                Some("body") => Parameter {
                    body_parameter: Some(BodyParameter {
                        description: text(p, "description"),
                        name: text(p, "name"),
                        r#in: "body".to_owned(),
                        required: flag(p, "required"),
                        schema: p.get("schema").map(schema),
                    }),
                    non_body_parameter: None,
                },
                Some("query") => Parameter {
                    body_parameter: None,
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: Some(QueryParameterSubSchema {
                            required: flag(p, "required"),
                            r#in: "query".to_owned(),
                            description: text(p, "description"),
                            name: text(p, "name"),
                            r#type: text(p, "type"),
                            unique_items: flag(p, "uniqueItems"),
                        }),
                        path_parameter_sub_schema: None,
                    }),
                },
                Some("path") => Parameter {
                    body_parameter: None,
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: None,
                        path_parameter_sub_schema: Some(PathParameterSubSchema {
                            required: flag(p, "required"),
                            r#in: "path".to_owned(),
                            description: text(p, "description"),
                            name: text(p, "name"),
                            r#type: text(p, "type"),
                            unique_items: flag(p, "uniqueItems"),
                        }),
                    }),
                },
                _ => return None,
            };
            Some(ParametersItem {
                parameter: Some(parameter),
            })
        })
        .collect()
}
