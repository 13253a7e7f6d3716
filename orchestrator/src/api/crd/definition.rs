//! What happens to a CustomResourceDefinition on its way into the store:
//! upstream's defaults (`listKind`, `singular`, conversion `None`), the
//! validation users hit (`pkg/apis/apiextensions/validation` in
//! apiextensions-apiserver: names, scope, versions, structural schemas,
//! subresources, printer columns), `metadata.generation`, and the status
//! the server owns: `acceptedNames`, `storedVersions` and the
//! `NamesAccepted` and `Established` conditions, which are `True` as soon
//! as the CRD is stored (a CRD is served from the moment its write
//! returns; upstream's controllers take about a second).
//!
//! # Current limitations
//! - Name conflicts between CRDs of one group (two kinds with one short
//!   name) are not detected; a CRD that names a built-in resource is
//!   stored but not served.
//! - Webhook conversion is refused.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrBool,
};
use serde_json::{Value, json};

use super::schema::{self, items};
use crate::api::status::ApiError;
use crate::api::strategy::{Errors, Write};

const GROUP: &str = "apiextensions.k8s.io";
const KIND: &str = "CustomResourceDefinition";

/// Prepares a CRD for a create (`old` is `None`) or an update through
/// `write`: defaults, validation, generation and the server-set status.
pub fn prepare(old: Option<&Value>, obj: &mut Value, write: Write) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if write == Write::Main {
        defaults(obj);
    }
    let crd: CustomResourceDefinition = serde_json::from_value(obj.clone()).map_err(|err| {
        ApiError::bad_request(format!(
            "CustomResourceDefinition in version \"v1\" cannot be handled as a CustomResourceDefinition: {err}"
        ))
    })?;
    let mut errors = Errors::default();
    validate(&crd, &mut errors);
    if let Some(old) = old {
        for field in ["group", "scope"] {
            if old["spec"][field] != obj["spec"][field] {
                errors.invalid(
                    format!("spec.{field}"),
                    &obj["spec"][field],
                    "field is immutable",
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.into_error(GROUP, KIND, &name));
    }
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            g + i64::from(old.get("spec") != obj.get("spec"))
        }
    };
    obj["metadata"]["generation"] = generation.into();
    set_status(old, obj);
    Ok(())
}

/// Upstream's defaults of a v1 CRD.
fn defaults(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    let kind = spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let names = &mut spec["names"];
    if names.is_object() {
        if names["listKind"].as_str().is_none_or(str::is_empty) && !kind.is_empty() {
            names["listKind"] = format!("{kind}List").into();
        }
        if names["singular"].as_str().is_none_or(str::is_empty) && !kind.is_empty() {
            names["singular"] = kind.to_ascii_lowercase().into();
        }
    }
    if spec["conversion"].is_null() {
        spec["conversion"] = json!({"strategy": "None"});
    }
}

/// DNS-1035 label: lower-case alphanumerics and '-', starting with a
/// letter, ending alphanumeric, at most 63 characters.
fn dns1035(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// DNS-1123 subdomain.
fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

fn validate(crd: &CustomResourceDefinition, errors: &mut Errors) {
    let spec = &crd.spec;
    let names = &spec.names;
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    if name != format!("{}.{}", names.plural, spec.group) {
        errors.invalid(
            "metadata.name",
            &name.into(),
            "must be spec.names.plural+\".\"+spec.group",
        );
    }
    if spec.group.is_empty() {
        errors.required("spec.group", "");
    } else if !dns1123_subdomain(&spec.group) || !spec.group.contains('.') {
        errors.invalid(
            "spec.group",
            &spec.group.as_str().into(),
            "should be a domain with at least one dot",
        );
    }
    if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
        errors.unsupported(
            "spec.scope",
            &spec.scope.as_str().into(),
            &["Cluster", "Namespaced"],
        );
    }
    let label = |errors: &mut Errors, field: &str, value: &str| {
        if value.is_empty() {
            errors.required(field, "");
        } else if !dns1035(value) {
            errors.invalid(field, &value.into(), DNS1035_MSG);
        }
    };
    label(errors, "spec.names.plural", &names.plural);
    label(
        errors,
        "spec.names.singular",
        names.singular.as_deref().unwrap_or_default(),
    );
    for (i, short) in names.short_names.iter().flatten().enumerate() {
        label(errors, &format!("spec.names.shortNames[{i}]"), short);
    }
    for (i, category) in names.categories.iter().flatten().enumerate() {
        label(errors, &format!("spec.names.categories[{i}]"), category);
    }
    if names.kind.is_empty() {
        errors.required("spec.names.kind", "");
    }
    let list_kind = names.list_kind.as_deref().unwrap_or_default();
    if list_kind.is_empty() {
        errors.required("spec.names.listKind", "");
    } else if list_kind == names.kind {
        errors.invalid(
            "spec.names.listKind",
            &list_kind.into(),
            "kind and listKind may not be the same or parameter",
        );
    }
    if spec.preserve_unknown_fields == Some(true) {
        errors.invalid(
            "spec.preserveUnknownFields",
            &true.into(),
            "must be false in order to use defaults in the schema",
        );
    }
    let strategy = spec
        .conversion
        .as_ref()
        .map_or("None", |c| c.strategy.as_str());
    match strategy {
        "None" => {}
        "Webhook" => errors.forbidden(
            "spec.conversion.strategy",
            "webhook conversion is not supported by this server",
        ),
        other => errors.unsupported(
            "spec.conversion.strategy",
            &other.into(),
            &["None", "Webhook"],
        ),
    }
    validate_versions(crd, errors);
}

fn validate_versions(crd: &CustomResourceDefinition, errors: &mut Errors) {
    let versions = &crd.spec.versions;
    if versions.is_empty() {
        errors.required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        );
        return;
    }
    let storage = versions.iter().filter(|v| v.storage).count();
    if storage != 1 {
        let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
        errors.invalid_repr(
            "spec.versions",
            &format!("{names:?}"),
            "must have exactly one version marked as storage version",
        );
    }
    if !versions.iter().any(|v| v.served) {
        errors.invalid_repr(
            "spec.versions",
            "[]",
            "must have at least one served version",
        );
    }
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        if !dns1035(&v.name) {
            errors.invalid(format!("{path}.name"), &v.name.as_str().into(), DNS1035_MSG);
        }
        if versions[..i].iter().any(|o| o.name == v.name) {
            errors.duplicate(format!("{path}.name"), &v.name.as_str().into());
        }
        let schema_path = format!("{path}.schema.openAPIV3Schema");
        match v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        {
            None => errors.required(schema_path, "schemas are required"),
            Some(root) => {
                match root.type_.as_deref() {
                    Some("object") => {}
                    None | Some("") => errors.required(
                        format!("{schema_path}.type"),
                        "must not be empty at the root",
                    ),
                    Some(t) => errors.invalid(
                        format!("{schema_path}.type"),
                        &t.into(),
                        "must be object at the root",
                    ),
                }
                structural(root, &schema_path, true, errors);
            }
        }
        if let Some(scale) = v.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
            let sub = format!("{path}.subresources.scale");
            for (field, value, under) in [
                (
                    "specReplicasPath",
                    scale.spec_replicas_path.as_str(),
                    ".spec.",
                ),
                (
                    "statusReplicasPath",
                    scale.status_replicas_path.as_str(),
                    ".status.",
                ),
            ] {
                if !value.starts_with(under) {
                    errors.invalid(
                        format!("{sub}.{field}"),
                        &value.into(),
                        &format!(
                            "should be a json path under {}",
                            under.trim_end_matches('.')
                        ),
                    );
                }
            }
            if let Some(selector) = &scale.label_selector_path
                && !(selector.starts_with(".spec.") || selector.starts_with(".status."))
            {
                errors.invalid(
                    format!("{sub}.labelSelectorPath"),
                    &selector.as_str().into(),
                    "should be a json path under either .spec or .status",
                );
            }
        }
        for (j, col) in v.additional_printer_columns.iter().flatten().enumerate() {
            let cp = format!("{path}.additionalPrinterColumns[{j}]");
            if col.name.is_empty() {
                errors.required(format!("{cp}.name"), "");
            }
            if !matches!(
                col.type_.as_str(),
                "integer" | "number" | "string" | "boolean" | "date"
            ) {
                errors.unsupported(
                    format!("{cp}.type"),
                    &col.type_.as_str().into(),
                    &["boolean", "date", "integer", "number", "string"],
                );
            }
            if col.json_path.is_empty() {
                errors.required(format!("{cp}.jsonPath"), "");
            } else if super::printer::JsonPath::parse(&col.json_path).is_none() {
                errors.invalid(
                    format!("{cp}.jsonPath"),
                    &col.json_path.as_str().into(),
                    "must be a simple json path",
                );
            }
        }
    }
}

/// The structural-schema rules (apiextensions' `structuralschema`): every
/// node has a type unless `x-kubernetes-int-or-string` or
/// `x-kubernetes-preserve-unknown-fields` stand for it, no
/// `additionalProperties` next to `properties`, arrays have `items`,
/// no `$ref`; patterns compile and defaults validate.
fn structural(s: &JSONSchemaProps, path: &str, root: bool, errors: &mut Errors) {
    let int_or_string = s.x_kubernetes_int_or_string == Some(true);
    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    let t = s.type_.as_deref().unwrap_or_default();
    if t.is_empty() && !int_or_string && !preserve && !root {
        errors.required(
            format!("{path}.type"),
            "must not be empty for specified object fields",
        );
    }
    if !t.is_empty()
        && !matches!(
            t,
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        errors.unsupported(
            format!("{path}.type"),
            &t.into(),
            &["array", "boolean", "integer", "number", "object", "string"],
        );
    }
    if int_or_string && !t.is_empty() {
        errors.forbidden(
            format!("{path}.type"),
            "must be empty when x-kubernetes-int-or-string is true",
        );
    }
    if s.ref_path.is_some() {
        errors.forbidden(format!("{path}.$ref"), "$ref is not supported");
    }
    if s.properties.is_some() && s.additional_properties.is_some() {
        errors.forbidden(
            format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        );
    }
    if t == "array" && s.items.is_none() {
        errors.required(format!("{path}.items"), "must be specified");
    }
    if let Some(p) = &s.pattern
        && regex_lite::Regex::new(p).is_err()
    {
        errors.invalid(
            format!("{path}.pattern"),
            &p.as_str().into(),
            "must be a valid regular expression",
        );
    }
    if let Some(d) = &s.default {
        let mut value = d.0.clone();
        let mut unknown = Vec::new();
        schema::prune(s, &mut value, "", &mut unknown);
        if !unknown.is_empty() {
            errors.invalid(
                format!("{path}.default"),
                &d.0,
                &format!("must not have unknown fields: {}", unknown.join(", ")),
            );
        }
        schema::validate(s, &d.0, &format!("{path}.default"), errors);
    }
    for (key, sub) in s.properties.iter().flatten() {
        structural(sub, &format!("{path}.properties[{key}]"), false, errors);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &s.additional_properties {
        structural(sub, &format!("{path}.additionalProperties"), false, errors);
    }
    if let Some(sub) = items(s) {
        structural(sub, &format!("{path}.items"), false, errors);
    }
}

/// Sets `acceptedNames`, `storedVersions` and the two conditions; a
/// condition's `lastTransitionTime` stays while its status does.
fn set_status(old: Option<&Value>, obj: &mut Value) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let previous = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
    let mut stored: Vec<Value> = previous["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(storage) = obj["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
        && !stored.contains(&storage)
    {
        stored.push(storage);
    }
    let condition = |kind: &str, reason: &str, message: &str| {
        let since = previous["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind && c["status"] == "True")
            .map_or_else(|| now.clone().into(), |c| c["lastTransitionTime"].clone());
        json!({"type": kind, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message})
    };
    obj["status"] = json!({
        "acceptedNames": obj["spec"]["names"].clone(),
        "storedVersions": stored,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "default": 1},
                        "port": {"x-kubernetes-int-or-string": true},
                        "any": {"x-kubernetes-preserve-unknown-fields": true},
                    }}},
                }}}],
            },
        })
    }

    fn causes(obj: &mut Value) -> Vec<String> {
        match prepare(None, obj, Write::Main) {
            Ok(()) => vec![],
            Err(err) => err
                .fields
                .map(|f| {
                    f.causes
                        .iter()
                        .map(|c| format!("{}: {}", c.field, c.message))
                        .collect()
                })
                .unwrap_or_else(|| vec![err.message]),
        }
    }

    #[test]
    fn a_good_crd_is_defaulted_and_established() {
        let mut obj = crd();
        assert_eq!(causes(&mut obj), Vec::<String>::new());
        assert_eq!(obj["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(obj["spec"]["names"]["singular"], "widget");
        assert_eq!(obj["spec"]["conversion"]["strategy"], "None");
        assert_eq!(obj["status"]["acceptedNames"]["kind"], "Widget");
        assert_eq!(obj["status"]["storedVersions"], json!(["v1"]));
        let types: Vec<&str> = obj["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter(|c| c["status"] == "True")
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["NamesAccepted", "Established"]);
        assert_eq!(obj["metadata"]["generation"], 1);
        let old = obj.clone();
        let mut new = obj.clone();
        new["spec"]["versions"][0]["served"] = false.into();
        new["spec"]["versions"].as_array_mut().expect("versions").push(json!({"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}}));
        prepare(Some(&old), &mut new, Write::Main).expect("update");
        assert_eq!(new["metadata"]["generation"], 2);
        new["spec"]["scope"] = "Cluster".into();
        let err = prepare(Some(&old), &mut new, Write::Main).expect_err("immutable");
        assert!(
            err.message
                .contains("spec.scope: Invalid value: \"Cluster\": field is immutable"),
            "{}",
            err.message
        );
    }

    #[test]
    fn names_scope_and_versions_are_checked() {
        let mut obj = crd();
        obj["metadata"]["name"] = "gadgets.example.com".into();
        obj["spec"]["scope"] = "Global".into();
        obj["spec"]["names"]["shortNames"] = json!(["Bad_Name"]);
        obj["spec"]["versions"][0]["storage"] = false.into();
        let got = causes(&mut obj);
        assert_eq!(
            got,
            [
                "metadata.name: Invalid value: \"gadgets.example.com\": must be spec.names.plural+\".\"+spec.group",
                "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
                format!("spec.names.shortNames[0]: Invalid value: \"Bad_Name\": {DNS1035_MSG}")
                    .as_str(),
                "spec.versions: Invalid value: [\"v1\"]: must have exactly one version marked as storage version",
            ]
        );
        let mut nogroup = crd();
        nogroup["spec"]["group"] = "example".into();
        nogroup["metadata"]["name"] = "widgets.example".into();
        assert_eq!(
            causes(&mut nogroup),
            ["spec.group: Invalid value: \"example\": should be a domain with at least one dot"]
        );
    }

    #[test]
    fn schemas_must_be_structural() {
        let mut obj = crd();
        obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"] = json!({
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "list": {"type": "array"},
            "bad": {"type": "integer", "default": "x"},
            "re": {"type": "string", "pattern": "("},
        });
        let root = "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties";
        assert_eq!(
            causes(&mut obj),
            [
                format!(
                    "{root}[bad].default: Invalid value: \"string\": {root}[bad].default in body must be of type integer: \"string\""
                ),
                format!(
                    "{root}[both].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
                ),
                format!("{root}[list].items: Required value: must be specified"),
                format!(
                    "{root}[re].pattern: Invalid value: \"(\": must be a valid regular expression"
                ),
                format!(
                    "{root}[untyped].type: Required value: must not be empty for specified object fields"
                ),
            ]
        );
        let mut missing = crd();
        missing["spec"]["versions"][0]["schema"] = Value::Null;
        assert_eq!(
            causes(&mut missing),
            ["spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"]
        );
    }
}
