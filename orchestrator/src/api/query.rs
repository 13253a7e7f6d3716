//! Query parameters of list and watch requests: percent-decoding, Go-style
//! booleans (`watch=true`, `watch=1`, the Python client's `watch=True`),
//! label selectors (equality, inequality, existence) and the field
//! selectors every object has (`metadata.name`, `metadata.namespace`).
//!
//! Set-based label operators (`in`, `notin`) and per-kind field selectors
//! (`spec.nodeName`, `status.phase`...) are rejected with 400 until they come.

use serde_json::Value;

use super::status::ApiError;

/// Decoded `?a=b&c=d` pairs, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses the query string of a URI (without the `?`).
    pub fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (`dryRun=All&dryRun=All`), in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean parameter, parsed as Go's `strconv.ParseBool`.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid boolean for {key}: {other:?}"
            ))),
        }
    }

    /// A non-negative integer parameter.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid {key}: {v:?}"))),
        }
    }
}

/// Percent-decoding of one query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed label or field selector; empty matches everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a label selector (`a=b,c!=d,e,!f`).
    pub fn labels(s: Option<&str>) -> Result<Selector, ApiError> {
        Selector::parse(s, true)
    }

    /// Parses a field selector over the fields every object has.
    pub fn fields(s: Option<&str>) -> Result<Selector, ApiError> {
        let selector = Selector::parse(s, false)?;
        for r in &selector.0 {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = r else {
                return Err(ApiError::bad_request("field selectors need = or !="));
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
        }
        Ok(selector)
    }

    fn parse(s: Option<&str>, existence: bool) -> Result<Selector, ApiError> {
        let mut reqs = Vec::new();
        for term in s
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let req = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if term.contains(' ') || term.contains('(') {
                return Err(ApiError::bad_request(format!(
                    "unsupported selector term {term:?}: set-based operators are not served yet"
                )));
            } else if !existence {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else {
                Requirement::Exists(term.to_owned())
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether the label selector matches `object`'s labels.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|k| labels.get(k).and_then(Value::as_str))
    }

    /// Whether the field selector matches `object`.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|k| match k {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => Some(object["metadata"]["namespace"].as_str().unwrap_or("")),
            _ => None,
        })
    }

    fn matches<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => value(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => value(k) != Some(v.as_str()),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::NotExists(k) => value(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_decoding_and_booleans() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier%21%3Ddb&watch=True&limit=5",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier!=db"));
        assert!(q.flag("watch").expect("bool"));
        assert_eq!(q.number("limit").expect("n"), Some(5));
        assert!(Query::parse(Some("watch=maybe")).flag("watch").is_err());
        assert_eq!(Query::parse(Some("a=%zz%4")).get("a"), Some("%zz%4"));
    }

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"name": "x", "labels": {"app": "web", "tier": "fe"}}});
        let sel = |s| Selector::labels(Some(s)).expect("selector");
        assert!(sel("app=web").matches_labels(&obj));
        assert!(sel("app==web,tier!=db").matches_labels(&obj));
        assert!(sel("app,!missing").matches_labels(&obj));
        assert!(!sel("app=db").matches_labels(&obj));
        assert!(!sel("missing").matches_labels(&obj));
        assert!(Selector::labels(Some("app in (web)")).is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "x", "namespace": "t"}});
        let sel = Selector::fields(Some("metadata.name=x,metadata.namespace!=u")).expect("sel");
        assert!(sel.matches_fields(&obj));
        assert!(Selector::fields(Some("spec.nodeName=a")).is_err());
    }
}
