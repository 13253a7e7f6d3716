//! Label and field selectors (`labelSelector`, `fieldSelector`), parsed
//! and matched as upstream's `labels.Parse` and `fields.ParseSelector`.
//!
//! - Labels: `k=v`, `k==v`, `k!=v` (also true without the label), `k in
//!   (a,b)`, `k notin (a,b)` (also true without the label), `k`, `!k`,
//!   and `k>n`, `k<n` on integer values. Keys and values are checked as
//!   label keys and values.
//! - Fields: `=`, `==` and `!=` (`\` escapes `,`, `=` and `!`), on
//!   `metadata.name` and `metadata.namespace` for every kind and on the
//!   per-kind fields upstream registers ([`FIELD_LABELS`]); another field
//!   is a 400 `field label not supported`. Values compare with the field's
//!   text (`true`, `3`), a missing field as `""`.

use serde_json::Value;

use super::query::Query;
use super::resources::ResourceType;
use super::status::ApiError;

/// Field selectors per kind beyond `metadata.name`/`metadata.namespace`
/// (upstream's `GetAttrs`/`AddFieldLabelConversionFunc` of each kind);
/// `source` of an Event is its `source.component`.
pub const FIELD_LABELS: &[(&str, &[&str])] = &[
    (
        "Pod",
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    ),
    (
        "Event",
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    ),
    ("Secret", &["type"]),
    ("Namespace", &["status.phase"]),
    ("Node", &["spec.unschedulable"]),
    ("ReplicaSet", &["status.replicas"]),
    ("ReplicationController", &["status.replicas"]),
    ("Job", &["status.successful"]),
    ("CertificateSigningRequest", &["spec.signerName"]),
];

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label or field selector; empty matches everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

fn parse_error(selector: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (in selector {selector:?})"
    ))
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of
/// at most 63 alphanumerics, `-`, `_` and `.`, starting and ending
/// alphanumeric.
pub(super) fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    });
    prefix_ok && !name.is_empty() && valid_value(name)
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`,
/// starting and ending alphanumeric.
pub(super) fn valid_value(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && edge(value.chars().next())
        && edge(value.chars().last())
}

/// Splits on top-level commas (not those inside `(...)`).
fn terms(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    out.push(&s[start..]);
    Ok(out.into_iter().map(str::trim).collect())
}

fn label_term(term: &str) -> Result<Requirement, String> {
    let check_key = |k: &str| {
        let k = k.trim();
        if valid_key(k) {
            Ok(k.to_owned())
        } else {
            Err(format!("invalid label key {k:?}"))
        }
    };
    let check_value = |v: &str| {
        let v = v.trim();
        if valid_value(v) {
            Ok(v.to_owned())
        } else {
            Err(format!("invalid label value {v:?}"))
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(check_key(k)?, check_value(v)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(check_key(k)?, check_value(v)?));
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some((k, v)) = term.split_once(op) {
            let n = v
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("for '{op}' the value must be an integer, not {v:?}"))?;
            let k = check_key(k)?;
            return Ok(if greater {
                Requirement::GreaterThan(k, n)
            } else {
                Requirement::LessThan(k, n)
            });
        }
    }
    if let Some(open) = term.find('(') {
        let (head, rest) = term.split_at(open);
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or("expected a ')' at the end of the set")?;
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "expected `key in (...)` or `key notin (...)`, got {term:?}"
            ));
        };
        let values = inner
            .split(',')
            .map(check_value)
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(check_key(key)?, values)),
            "notin" => Ok(Requirement::NotIn(check_key(key)?, values)),
            _ => Err(format!("unknown operator {op:?}")),
        };
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("unexpected whitespace in {term:?}"));
    }
    Ok(Requirement::Exists(check_key(term)?))
}

/// Splits a field term at its first unescaped `!=`, `==` or `=`, and
/// unescapes the value.
fn field_term(term: &str) -> Result<Requirement, String> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Ok(Requirement::NotEquals(
                    term[..i].trim().to_owned(),
                    unescape(&term[i + 2..]),
                ));
            }
            b'=' => {
                let skip = if bytes.get(i + 1) == Some(&b'=') {
                    2
                } else {
                    1
                };
                return Ok(Requirement::Equals(
                    term[..i].trim().to_owned(),
                    unescape(&term[i + skip..]),
                ));
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!(
        "invalid field selector term {term:?}: needs =, == or !="
    ))
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Selector {
    /// Parses a label selector.
    pub fn labels(s: Option<&str>) -> Result<Selector, ApiError> {
        let s = s.unwrap_or("");
        if s.trim().is_empty() {
            return Ok(Selector::default());
        }
        let reqs = terms(s)
            .and_then(|terms| terms.into_iter().map(label_term).collect())
            .map_err(|why| parse_error(s, why))?;
        Ok(Selector(reqs))
    }

    /// Parses a field selector over the fields `kind` supports.
    pub fn fields(s: Option<&str>, kind: &str) -> Result<Selector, ApiError> {
        let s = s.unwrap_or("");
        let mut reqs = Vec::new();
        // Commas escaped with `\` belong to values.
        let mut start = 0;
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut raw_terms = Vec::new();
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 1,
                b',' => {
                    raw_terms.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        raw_terms.push(&s[start.min(s.len())..]);
        let extra = FIELD_LABELS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, fields)| *fields);
        for term in raw_terms
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let req = field_term(term).map_err(ApiError::bad_request)?;
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = &req else {
                unreachable!("field terms are equalities");
            };
            if k != "metadata.name" && k != "metadata.namespace" && !extra.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether the label selector matches `object`'s labels.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|k| labels.get(k).and_then(Value::as_str).map(str::to_owned))
    }

    /// Whether the field selector matches `object`.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|k| {
            let path = if k == "source" && object["kind"] == "Event" {
                "/source/component".to_owned()
            } else {
                format!("/{}", k.replace('.', "/"))
            };
            Some(match object.pointer(&path) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
        })
    }

    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => value(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, set) => value(k).is_some_and(|v| set.contains(&v)),
            Requirement::NotIn(k, set) => !value(k).is_some_and(|v| set.contains(&v)),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::NotExists(k) => value(k).is_none(),
            Requirement::GreaterThan(k, n) => value(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => value(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// The label and field selectors of a list, watch or deletecollection.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    /// The selectors of `query` for objects of `rt`.
    pub fn from_query(query: &Query, rt: &ResourceType) -> Result<Filter, ApiError> {
        Ok(Filter {
            labels: Selector::labels(query.get("labelSelector"))?,
            fields: Selector::fields(query.get("fieldSelector"), rt.kind)?,
        })
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> Selector {
        Selector::labels(Some(s)).unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    #[test]
    fn label_operators() {
        let obj =
            json!({"metadata": {"name": "x", "labels": {"app": "web", "tier": "fe", "n": "5"}}});
        let yes = [
            "app=web",
            "app==web,tier!=db",
            "missing!=x",
            "app,!missing",
            "app in (web,db)",
            "app in (web), tier notin (db, be)",
            "missing notin (a)",
            "n>3,n<6",
            " app = web ",
            "example.com/x!=y",
        ];
        for s in yes {
            assert!(sel(s).matches_labels(&obj), "{s}");
        }
        let no = [
            "app=db",
            "missing",
            "!app",
            "app in (db)",
            "missing in (a)",
            "app notin (web)",
            "n>5",
            "app>1",
        ];
        for s in no {
            assert!(!sel(s).matches_labels(&obj), "{s}");
        }
        for bad in [
            "app in (web",
            "app in web)",
            "app between (a)",
            "a b",
            "-bad=x",
            "app=in valid",
            "n>x",
            "a/b/c=d",
            &format!("app={}", "v".repeat(64)),
        ] {
            let err = Selector::labels(Some(bad)).expect_err(bad);
            assert_eq!(err.code, 400, "{bad}");
        }
        assert_eq!(
            Selector::labels(Some("")).expect("empty"),
            Selector::default()
        );
    }

    #[test]
    fn field_selectors_by_kind() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "x", "namespace": "t"},
            "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        let fields = |s: &str, kind: &str| Selector::fields(Some(s), kind);
        let ok = |s: &str| fields(s, "Pod").expect(s).matches_fields(&pod);
        assert!(ok("metadata.name=x,metadata.namespace!=u"));
        assert!(ok("spec.nodeName==n1,status.phase=Running"));
        assert!(ok("spec.hostNetwork=true"));
        assert!(ok("status.podIP="));
        assert!(!ok("spec.nodeName!=n1"));
        let event = json!({"kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "x"}, "reason": "Started",
            "type": "Normal", "source": {"component": "kubelet"}});
        let sel = fields(
            "involvedObject.kind=Pod,involvedObject.name=x,reason=Started,type=Normal,source=kubelet",
            "Event",
        )
        .expect("event selector");
        assert!(sel.matches_fields(&event));
        let err = fields("spec.nodeName=a", "ConfigMap").expect_err("unsupported");
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "field label not supported: spec.nodeName");
        assert_eq!(fields("metadata.name", "Pod").expect_err("no op").code, 400);
        let escaped = json!({"metadata": {"name": "a,b=c"}});
        assert!(
            fields(r"metadata.name=a\,b\=c", "ConfigMap")
                .expect("escaped")
                .matches_fields(&escaped)
        );
    }
}
