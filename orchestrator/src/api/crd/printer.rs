//! `kubectl get` tables of custom resources: `Name`, then the version's
//! `additionalPrinterColumns` (or upstream's default `Age`), each cell
//! read with a JSONPath and typed as the column says (`date` cells are
//! ages, as apiextensions' table convertor renders them).
//!
//! The JSONPath subset is what CRDs use in practice: `.a.b`, `{.a.b}`,
//! `.a[0].b`, `.a[*].b` (first match) and filters
//! `.a[?(@.type=="Ready")].status` (`==`/`!=` against a string literal).

use serde_json::{Value, json};

use super::Custom;
use crate::api::table::translate_timestamp_since;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.<path>==<value>)]` (`equal` false: `!=`).
    Filter {
        path: Vec<String>,
        value: String,
        equal: bool,
    },
}

/// A parsed JSONPath of the supported subset.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parses `path`; `None` if it is outside the subset.
    pub fn parse(path: &str) -> Option<JsonPath> {
        let mut s = path.trim();
        if let Some(inner) = s.strip_prefix('{') {
            s = inner.strip_suffix('}')?;
        }
        let mut steps = Vec::new();
        let mut rest = s;
        if !rest.starts_with('.') && !rest.starts_with('[') {
            return None;
        }
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let name = &r[..end];
                if name.is_empty() {
                    return None;
                }
                steps.push(Step::Field(name.to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = bracket_end(r)?;
                let inner = &r[..end];
                steps.push(bracket(inner)?);
                rest = &r[end + 1..];
            } else {
                return None;
            }
        }
        Some(JsonPath(steps))
    }

    /// The first value the path selects in `obj`.
    pub fn find<'a>(&self, obj: &'a Value) -> Option<&'a Value> {
        find(&self.0, obj)
    }
}

/// The index of the `]` closing a bracket, skipping quoted strings.
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn bracket(inner: &str) -> Option<Step> {
    let inner = inner.trim();
    if inner == "*" {
        return Some(Step::All);
    }
    if let Ok(i) = inner.parse() {
        return Some(Step::Index(i));
    }
    let filter = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, rhs, equal) = match filter.split_once("==") {
        Some((l, r)) => (l, r, true),
        None => {
            let (l, r) = filter.split_once("!=")?;
            (l, r, false)
        }
    };
    let path: Vec<String> = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_owned)
        .collect();
    let rhs = rhs.trim();
    let value = rhs
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(rhs);
    Some(Step::Filter {
        path,
        value: value.to_owned(),
        equal,
    })
}

fn find<'a>(steps: &[Step], v: &'a Value) -> Option<&'a Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match step {
        Step::Field(name) => find(rest, v.get(name)?),
        Step::Index(i) => find(rest, v.as_array()?.get(*i)?),
        Step::All => v.as_array()?.iter().find_map(|item| find(rest, item)),
        Step::Filter { path, value, equal } => v.as_array()?.iter().find_map(|item| {
            let field = path.iter().try_fold(item, |v, key| v.get(key));
            let text = match field {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
                None => None,
            };
            let matched = text.as_deref() == Some(value.as_str());
            if matched == *equal && (field.is_some() || !*equal) {
                find(rest, item)
            } else {
                None
            }
        }),
    }
}

/// The column definitions of a custom kind's table.
pub fn definitions(custom: &Custom) -> Vec<Value> {
    let mut columns = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })];
    columns.extend(custom.columns.iter().map(|c| {
        json!({
            "name": c.name,
            "type": c.type_,
            "format": c.format.clone().unwrap_or_default(),
            "description": c.description.clone().unwrap_or_default(),
            "priority": c.priority.unwrap_or(0),
        })
    }));
    columns
}

/// The cells of one custom resource.
pub fn cells(custom: &Custom, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for column in &custom.columns {
        let value = JsonPath::parse(&column.json_path).and_then(|p| p.find(obj));
        cells.push(match (column.type_.as_str(), value) {
            (_, None | Some(Value::Null)) => Value::Null,
            ("date", Some(v)) => translate_timestamp_since(v.as_str(), now).into(),
            ("integer", Some(v)) => v.as_i64().map_or(Value::Null, Value::from),
            ("number", Some(v)) if v.is_number() => v.clone(),
            ("boolean", Some(v)) if v.is_boolean() => v.clone(),
            ("string", Some(Value::String(s))) => s.clone().into(),
            ("string", Some(v)) => v.to_string().into(),
            _ => Value::Null,
        });
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_select_like_kubectl() {
        let obj = json!({
            "spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [
                {"type": "Synced", "status": "True"},
                {"type": "Ready", "status": "False"},
            ]},
        });
        let get = |p: &str| JsonPath::parse(p).and_then(|p| p.find(&obj).cloned());
        assert_eq!(get(".spec.replicas"), Some(json!(3)));
        assert_eq!(get("{.spec.replicas}"), Some(json!(3)));
        assert_eq!(get(".spec.ports[1].port"), Some(json!(443)));
        assert_eq!(get(".spec.ports[*].port"), Some(json!(80)));
        assert_eq!(
            get(".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("False"))
        );
        assert_eq!(
            get(".status.conditions[?(@.type=='Synced')].status"),
            Some(json!("True"))
        );
        assert_eq!(
            get(".status.conditions[?(@.type!=\"Synced\")].type"),
            Some(json!("Ready"))
        );
        assert_eq!(get(".spec.missing"), None);
        for bad in ["spec.x", ".a[", ".a..b", "", ".a[?(x)]"] {
            assert!(JsonPath::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cells_follow_column_types() {
        let custom: Custom = Custom {
            crd: "w.x.io".into(),
            schema: Default::default(),
            scale: None,
            columns: serde_json::from_value(json!([
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                {"name": "Missing", "type": "string", "jsonPath": ".spec.nothing"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ])).expect("columns"),
        };
        let now: jiff::Timestamp = "2024-01-01T00:10:00Z".parse().expect("ts");
        let obj = json!({
            "metadata": {"name": "a", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"size": 3},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        assert_eq!(
            cells(&custom, &obj, now),
            [
                json!("a"),
                json!(3),
                json!("True"),
                Value::Null,
                json!("10m")
            ]
        );
        let names: Vec<Value> = definitions(&custom)
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, ["Name", "Size", "Ready", "Missing", "Age"]);
    }
}
