//! policy/v1 PodDisruptionBudget validation, as upstream's
//! `pkg/apis/policy/validation`: at most one of `minAvailable` and
//! `maxUnavailable` (neither is allowed: such a budget protects nothing),
//! each a non-negative integer or a percentage up to 100%; a valid label
//! selector; a known `unhealthyPodEvictionPolicy`.

use serde_json::Value;

use super::Errors;
use crate::api::selector::{valid_key, valid_value};

/// Upstream's `unhealthyPodEvictionPolicy` values.
const EVICTION_POLICIES: [&str; 2] = ["AlwaysAllow", "IfHealthyBudget"];

const PERCENT: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";
const KEY: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Validates a PodDisruptionBudget's spec.
pub fn validate(obj: &Value, errors: &mut Errors) {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        errors.invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for field in ["minAvailable", "maxUnavailable"] {
        int_or_percent(&spec[field], &format!("spec.{field}"), errors);
    }
    label_selector(&spec["selector"], "spec.selector", errors);
    let policy = &spec["unhealthyPodEvictionPolicy"];
    if policy
        .as_str()
        .is_some_and(|p| !EVICTION_POLICIES.contains(&p))
    {
        errors.unsupported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &EVICTION_POLICIES,
        );
    }
}

/// An `intstr.IntOrString` as Go's `%#v` prints it in upstream's messages.
fn go_repr(s: &str) -> String {
    format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}")
}

/// `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`.
fn int_or_percent(value: &Value, path: &str, errors: &mut Errors) {
    match value {
        Value::Null => {}
        Value::Number(n) => {
            if n.as_i64().is_none_or(|n| n < 0) {
                errors.invalid(path, value, "must be greater than or equal to 0");
            }
        }
        Value::String(s) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits.map(str::parse::<u64>) {
                None => errors.invalid_repr(path, &go_repr(s), PERCENT),
                Some(Ok(p)) if p <= 100 => {}
                Some(_) => errors.invalid_repr(path, &go_repr(s), "must not be greater than 100%"),
            }
        }
        other => errors.invalid(path, other, "must be an integer or percentage (e.g '5%')"),
    }
}

/// `ValidateLabelSelector`: label keys and values, operators and their
/// values.
fn label_selector(selector: &Value, path: &str, errors: &mut Errors) {
    let labels = selector["matchLabels"].as_object().into_iter().flatten();
    for (key, value) in labels {
        let at = format!("{path}.matchLabels");
        if !valid_key(key) {
            errors.invalid(at.clone(), &key.as_str().into(), KEY);
        }
        if !value.as_str().is_some_and(valid_value) {
            errors.invalid(at, value, VALUE);
        }
    }
    let expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten();
    for (i, expr) in expressions.enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let values = expr["values"].as_array().map_or(&[][..], Vec::as_slice);
        match expr["operator"].as_str().unwrap_or("") {
            "In" | "NotIn" if values.is_empty() => errors.required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => errors.invalid(
                format!("{at}.operator"),
                &expr["operator"],
                "not a valid selector operator",
            ),
        }
        if !expr["key"].as_str().is_some_and(valid_key) {
            errors.invalid(format!("{at}.key"), &expr["key"], KEY);
        }
        for (j, value) in values.iter().enumerate() {
            if !value.as_str().is_some_and(valid_value) {
                errors.invalid(format!("{at}.values[{j}]"), value, VALUE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(spec: Value) -> Vec<(String, String)> {
        let mut errors = Errors::default();
        validate(&json!({"spec": spec}), &mut errors);
        errors
            .causes()
            .iter()
            .map(|c| (c.field.clone(), c.message.clone()))
            .collect()
    }

    #[test]
    fn budgets_are_one_int_or_percent() {
        let selector = json!({"matchLabels": {"app": "web"}});
        for ok in [
            json!({"minAvailable": 1, "selector": selector}),
            json!({"maxUnavailable": "100%", "selector": selector}),
            json!({"minAvailable": "0%"}),
            json!({}),
        ] {
            assert_eq!(fields(ok.clone()), [], "{ok}");
        }
        let both = fields(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both[0].0, "spec");
        assert!(
            both[0]
                .1
                .ends_with("minAvailable and maxUnavailable cannot be both set")
        );
        assert_eq!(
            fields(json!({"minAvailable": -1})),
            [(
                "spec.minAvailable".to_owned(),
                "Invalid value: -1: must be greater than or equal to 0".to_owned()
            )]
        );
        let over = fields(json!({"maxUnavailable": "150%"}));
        assert_eq!(over[0].0, "spec.maxUnavailable");
        assert!(
            over[0]
                .1
                .ends_with("StrVal:\"150%\"}: must not be greater than 100%"),
            "{}",
            over[0].1
        );
        let word = fields(json!({"maxUnavailable": "half"}));
        assert!(
            word[0].1.contains("a valid percent string"),
            "{}",
            word[0].1
        );
        assert_eq!(
            fields(json!({"minAvailable": true}))[0].0,
            "spec.minAvailable"
        );
    }

    #[test]
    fn selectors_and_policies_are_checked() {
        let bad = fields(json!({
            "minAvailable": 1,
            "selector": {
                "matchLabels": {"app": "-web-"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In"},
                    {"key": "tier", "operator": "Exists", "values": ["x"]},
                    {"key": "bad key", "operator": "Near"},
                ],
            },
            "unhealthyPodEvictionPolicy": "Sometimes",
        }));
        let names: Vec<&str> = bad.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "spec.selector.matchLabels",
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].values",
                "spec.selector.matchExpressions[2].operator",
                "spec.selector.matchExpressions[2].key",
                "spec.unhealthyPodEvictionPolicy",
            ]
        );
    }
}
