//! Query parameters: percent-decoding, Go-style booleans (`watch=true`,
//! `watch=1`, the Python client's `watch=True`), and the resource version
//! a list or watch reads from ([`ReadAt`], [`WatchFrom`]) with upstream's
//! `ListOptions` validation. Selectors live in
//! [`selector`](super::selector).

use super::status::ApiError;
use crate::store::Revision;

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

/// 422 for invalid list options, as upstream's `ValidateListOptions`:
/// one error as is, several as `[a, b]`.
fn invalid_list_options(errors: &[String]) -> Result<(), ApiError> {
    match errors {
        [] => Ok(()),
        [one] => Err(ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            one.clone(),
        )),
        many => Err(ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            format!("[{}]", many.join(", ")),
        )),
    }
}

fn parse_revision(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

const MATCH_FIELD: &str = "resourceVersionMatch";

/// Where a list reads, from `resourceVersion` and `resourceVersionMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The current state (no resourceVersion, or `0`: any state will do).
    Latest,
    /// A state at least as new as this revision (the current one).
    NotOlderThan(Revision),
    /// The state at exactly this revision.
    Exact(Revision),
}

impl ReadAt {
    /// Reads and validates a list's options.
    pub fn from_query(query: &Query) -> Result<ReadAt, ApiError> {
        let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
        let matching = query.get(MATCH_FIELD).filter(|v| !v.is_empty());
        let continued = query.get("continue").is_some_and(|c| !c.is_empty());
        let mut errors = Vec::new();
        if query.get("sendInitialEvents").is_some() {
            errors.push(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list".into(),
            );
        }
        if let Some(m) = matching {
            if rv.is_none() {
                errors.push(format!(
                    "{MATCH_FIELD}: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                ));
            }
            if continued {
                errors.push(format!(
                    "{MATCH_FIELD}: Forbidden: resourceVersionMatch is forbidden when continue is provided"
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                errors.push(format!(
                    "{MATCH_FIELD}: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                ));
            }
            if m == "Exact" && rv == Some("0") {
                errors.push(format!(
                    "{MATCH_FIELD}: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                ));
            }
        }
        invalid_list_options(&errors)?;
        if continued && rv.is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(match (rv, matching) {
            (None | Some("0"), _) => ReadAt::Latest,
            (Some(rv), Some("Exact")) => ReadAt::Exact(parse_revision(rv)?),
            (Some(rv), _) => ReadAt::NotOlderThan(parse_revision(rv)?),
        })
    }
}

/// Where a watch starts and what it sends besides changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchFrom {
    /// `resourceVersion` to follow changes after (`None`: unset or `0`).
    pub resource_version: Option<Revision>,
    /// Send the current state first, as ADDED events.
    pub initial_events: bool,
    /// `sendInitialEvents=true`: end the initial events with a BOOKMARK
    /// annotated `k8s.io/initial-events-end`.
    pub initial_events_end: bool,
    /// `allowWatchBookmarks=true`: periodic and closing BOOKMARKs.
    pub bookmarks: bool,
}

impl WatchFrom {
    /// Reads and validates a watch's options. Without `sendInitialEvents`,
    /// a watch from no resourceVersion (or `0`) starts with the current
    /// state, as upstream's legacy semantics.
    pub fn from_query(query: &Query) -> Result<WatchFrom, ApiError> {
        let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
        let matching = query.get(MATCH_FIELD).filter(|v| !v.is_empty());
        let initial = match query.get("sendInitialEvents") {
            Some(_) => Some(query.flag("sendInitialEvents")?),
            None => None,
        };
        let mut errors = Vec::new();
        if initial.is_some() && matching != Some("NotOlderThan") {
            errors.push(format!(
                "{MATCH_FIELD}: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
            ));
        }
        if let Some(m) = matching {
            if initial.is_none() {
                errors.push(format!(
                    "{MATCH_FIELD}: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                ));
            }
            if m != "NotOlderThan" {
                errors.push(format!(
                    "{MATCH_FIELD}: Unsupported value: {m:?}: supported values: \"NotOlderThan\""
                ));
            }
            if query.get("continue").is_some_and(|c| !c.is_empty()) {
                errors.push(format!(
                    "{MATCH_FIELD}: Forbidden: resourceVersionMatch is forbidden when continue is provided"
                ));
            }
        }
        invalid_list_options(&errors)?;
        let resource_version = match rv {
            None | Some("0") => None,
            Some(rv) => Some(parse_revision(rv)?),
        };
        Ok(WatchFrom {
            resource_version,
            initial_events: initial.unwrap_or(resource_version.is_none()),
            initial_events_end: initial == Some(true),
            bookmarks: query.flag("allowWatchBookmarks")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn list_resource_versions() {
        assert_eq!(ReadAt::from_query(&q("")), Ok(ReadAt::Latest));
        assert_eq!(
            ReadAt::from_query(&q("resourceVersion=0")),
            Ok(ReadAt::Latest)
        );
        assert_eq!(
            ReadAt::from_query(&q("resourceVersion=5")),
            Ok(ReadAt::NotOlderThan(5))
        );
        assert_eq!(
            ReadAt::from_query(&q("resourceVersion=5&resourceVersionMatch=Exact")),
            Ok(ReadAt::Exact(5))
        );
        for (bad, code) in [
            ("resourceVersionMatch=Exact", 422),
            ("resourceVersion=0&resourceVersionMatch=Exact", 422),
            ("resourceVersion=1&resourceVersionMatch=Newest", 422),
            (
                "resourceVersion=1&resourceVersionMatch=Exact&continue=x",
                422,
            ),
            ("sendInitialEvents=true", 422),
            ("resourceVersion=abc", 400),
            ("resourceVersion=3&continue=x", 400),
        ] {
            assert_eq!(
                ReadAt::from_query(&q(bad)).expect_err(bad).code,
                code,
                "{bad}"
            );
        }
        let err = ReadAt::from_query(&q("resourceVersionMatch=Exact")).expect_err("rv");
        assert!(
            err.message
                .contains("forbidden unless resourceVersion is provided"),
            "{}",
            err.message
        );
    }

    #[test]
    fn watch_starts() {
        let from = WatchFrom::from_query(&q("allowWatchBookmarks=true")).expect("ok");
        assert_eq!(
            (from.resource_version, from.initial_events, from.bookmarks),
            (None, true, true)
        );
        let from = WatchFrom::from_query(&q("resourceVersion=7")).expect("ok");
        assert_eq!(
            (from.resource_version, from.initial_events),
            (Some(7), false)
        );
        let from = WatchFrom::from_query(&q(
            "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=7",
        ))
        .expect("ok");
        assert!(from.initial_events && from.initial_events_end);
        let from = WatchFrom::from_query(&q(
            "sendInitialEvents=false&resourceVersionMatch=NotOlderThan",
        ))
        .expect("ok");
        assert!(!from.initial_events);
        for bad in [
            "sendInitialEvents=true",
            "resourceVersionMatch=NotOlderThan",
            "sendInitialEvents=true&resourceVersionMatch=Exact",
        ] {
            assert_eq!(
                WatchFrom::from_query(&q(bad)).expect_err(bad).code,
                422,
                "{bad}"
            );
        }
    }

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
}
