//! Cell formatting shared by the printers, as apimachinery and upstream's
//! printers write them: label selectors as `selector.String()`, label
//! maps as `labels.FormatLabels`, container names and images as
//! `layoutContainerCells`, access modes as `GetAccessModesAsString`.

use serde_json::Value;

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A `LabelSelector` as `labels.Selector.String()`: requirements sorted by
/// key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; `""` when it
/// selects everything (or is null), `<error>` for an unknown operator.
pub fn format_selector(selector: &Value) -> String {
    let mut requirements: Vec<(String, String)> = Vec::new();
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        requirements.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or("");
        let mut values = strings(&e["values"]);
        values.sort_unstable();
        let text = match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<error>".to_owned(),
        };
        requirements.push((key.to_owned(), text));
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    requirements
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.FormatLabelSelector`: [`format_selector`], `<none>` when empty.
pub fn format_label_selector(selector: &Value) -> String {
    match format_selector(selector) {
        s if s.is_empty() => "<none>".to_owned(),
        s => s,
    }
}

/// `labels.FormatLabels`: `k=v,...` sorted by key, `<none>` when empty.
pub fn format_labels(labels: &Value) -> String {
    let mut pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".to_owned();
    }
    pairs.sort();
    pairs.join(",")
}

/// `layoutContainerCells`: the containers' names and images, comma-joined.
pub fn container_cells(containers: &Value) -> (String, String) {
    let list = containers.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let names: Vec<&str> = list
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    let images: Vec<&str> = list
        .iter()
        .map(|c| c["image"].as_str().unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

/// `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order.
pub fn access_modes(modes: &Value) -> String {
    let modes = strings(modes);
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// A string field, or `""`.
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A string field, or `default` when missing or empty.
pub fn or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

/// An integer field, or 0.
pub fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_print_like_apimachinery() {
        let sel = json!({
            "matchLabels": {"tier": "front", "app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "x", "operator": "DoesNotExist"},
                {"key": "b", "operator": "Exists"},
                {"key": "c", "operator": "NotIn", "values": ["z"]},
            ],
        });
        assert_eq!(
            format_selector(&sel),
            "app=web,b,c notin (z),env in (dev,prod),tier=front,!x"
        );
        assert_eq!(format_selector(&Value::Null), "");
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(
            format_selector(&json!({"matchExpressions": [{"key": "a", "operator": "Nope"}]})),
            "<error>"
        );
    }

    #[test]
    fn labels_containers_and_modes() {
        assert_eq!(format_labels(&json!({"b": "2", "a": "1"})), "a=1,b=2");
        assert_eq!(format_labels(&Value::Null), "<none>");
        let (names, images) =
            container_cells(&json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]));
        assert_eq!((names.as_str(), images.as_str()), ("a,b", "x,y"));
        assert_eq!(
            access_modes(&json!(["ReadWriteMany", "ReadWriteOnce"])),
            "RWO,RWX"
        );
    }
}
