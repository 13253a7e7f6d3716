//! Options of write requests, as upstream's `CreateOptions`,
//! `UpdateOptions`, `PatchOptions` and `DeleteOptions`: `dryRun`,
//! `fieldManager` and, for deletes, `propagationPolicy`,
//! `orphanDependents`, `gracePeriodSeconds` and `preconditions` (from the
//! query, then from a body, which wins, as upstream decodes them).

use hyper::HeaderMap;
use serde_json::Value;

use super::codec;
use super::query::Query;
use super::status::ApiError;

/// `dryRun` and `fieldManager` of a create, update or patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and answer, write nothing.
    pub dry_run: bool,
    /// Who writes, for `metadata.managedFields`.
    pub manager: String,
    /// Server-side apply: the object carries its managed fields already.
    pub apply: bool,
}

/// 422 for invalid options, as upstream's `<Kind>.meta.k8s.io "" is invalid`.
fn invalid_options(kind: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(&format!("{kind}.meta.k8s.io"), "", message)
}

/// `dryRun` values: only `All` exists.
fn dry_run(values: &[&str], kind: &str) -> Result<bool, ApiError> {
    for (i, value) in values.iter().enumerate() {
        if *value != "All" {
            return Err(invalid_options(
                kind,
                format!("dryRun[{i}]: Unsupported value: {value:?}: supported values: \"All\""),
            ));
        }
    }
    Ok(!values.is_empty())
}

impl WriteOptions {
    /// Reads the options of a request whose options kind is `kind`
    /// (`CreateOptions`...). Without `fieldManager`, the manager is the
    /// `User-Agent` up to its first `/`, as upstream names it.
    pub fn from_request(
        query: &Query,
        headers: &HeaderMap,
        kind: &str,
    ) -> Result<WriteOptions, ApiError> {
        let dry_run = dry_run(&query.all("dryRun"), kind)?;
        let manager = match query.get("fieldManager") {
            Some(manager) => {
                if manager.len() > 128 || manager.chars().any(|c| c.is_control()) {
                    return Err(invalid_options(
                        kind,
                        format!(
                            "fieldManager: Invalid value: {manager:?}: must be at most 128 printable characters"
                        ),
                    ));
                }
                manager.to_owned()
            }
            None => headers
                .get(hyper::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|ua| !ua.is_empty())
                .unwrap_or("unknown")
                .chars()
                .take(128)
                .collect(),
        };
        Ok(WriteOptions {
            dry_run,
            manager,
            apply: false,
        })
    }
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted by the garbage collector afterwards (default).
    Background,
    /// The object stays (`foregroundDeletion` finalizer) until its
    /// dependents are gone.
    Foreground,
    /// Dependents are orphaned first (`orphan` finalizer).
    Orphan,
}

/// What a delete request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `propagationPolicy` (or `orphanDependents`), if given.
    pub propagation: Option<Propagation>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `gracePeriodSeconds`, if given (negative values as given; the
    /// graceful delete treats them as 1, as upstream).
    pub grace: Option<i64>,
}

impl DeleteOptions {
    /// Reads the options from the query and an optional body (JSON, YAML
    /// or protobuf `DeleteOptions`; the body wins).
    pub fn from_request(
        query: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<DeleteOptions, ApiError> {
        let mut value = None;
        if !body.iter().all(u8::is_ascii_whitespace) {
            let content_type = headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let format = codec::Format::from_content_type(content_type)?;
            value = Some(codec::decode_untyped(format, body)?);
        }
        Self::read(query, value.as_ref())
    }

    /// Reads the `deleteOptions` of an eviction (a JSON object or null).
    pub fn from_value(value: &Value) -> Result<DeleteOptions, ApiError> {
        Self::read(&Query::default(), Some(value).filter(|v| !v.is_null()))
    }

    fn read(query: &Query, body: Option<&Value>) -> Result<DeleteOptions, ApiError> {
        const KIND: &str = "DeleteOptions";
        let mut policy = query.get("propagationPolicy").map(str::to_owned);
        let mut orphan = match query.get("orphanDependents") {
            Some(_) => Some(query.flag("orphanDependents")?),
            None => None,
        };
        let mut dry_run_values: Vec<String> =
            query.all("dryRun").into_iter().map(str::to_owned).collect();
        let mut options = DeleteOptions::default();
        if let Some(grace) = query.get("gracePeriodSeconds") {
            options.grace = Some(grace.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: {grace:?}"))
            })?);
        }
        if let Some(value) = body {
            let kind = value["kind"].as_str().unwrap_or(KIND);
            if kind != KIND {
                return Err(ApiError::bad_request(format!(
                    "the body of a delete must be DeleteOptions, not {kind}"
                )));
            }
            if let Some(p) = value["propagationPolicy"].as_str() {
                policy = Some(p.to_owned());
            }
            if let Some(o) = value["orphanDependents"].as_bool() {
                orphan = Some(o);
            }
            if let Some(values) = value["dryRun"].as_array() {
                dry_run_values = values
                    .iter()
                    .map(|v| v.as_str().unwrap_or("").to_owned())
                    .collect();
            }
            let text = |field: &str| {
                value["preconditions"][field]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            options.uid = text("uid");
            options.resource_version = text("resourceVersion");
            match &value["gracePeriodSeconds"] {
                Value::Null => {}
                grace => {
                    options.grace = Some(grace.as_i64().ok_or_else(|| {
                        ApiError::bad_request(format!("invalid gracePeriodSeconds: {grace}"))
                    })?);
                }
            }
        }
        let values: Vec<&str> = dry_run_values.iter().map(String::as_str).collect();
        options.dry_run = dry_run(&values, KIND)?;
        options.propagation = match (policy.as_deref(), orphan) {
            (Some(_), Some(_)) => {
                return Err(invalid_options(
                    KIND,
                    "propagationPolicy: Invalid value: \"\": orphanDependents and deletionPropagation cannot be both set",
                ));
            }
            (Some("Background"), None) => Some(Propagation::Background),
            (Some("Foreground"), None) => Some(Propagation::Foreground),
            (Some("Orphan"), None) => Some(Propagation::Orphan),
            (Some(other), None) => {
                return Err(invalid_options(
                    KIND,
                    format!(
                        "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                ));
            }
            (None, Some(true)) => Some(Propagation::Orphan),
            (None, Some(false)) => Some(Propagation::Background),
            (None, None) => None,
        };
        Ok(options)
    }
}

/// A finalizer list of an object.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(query: &str, body: &str) -> Result<DeleteOptions, ApiError> {
        DeleteOptions::from_request(
            &Query::parse(Some(query)),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn delete_options_from_query_and_body() {
        let o = options("propagationPolicy=Foreground&dryRun=All", "").expect("ok");
        assert_eq!(o.propagation, Some(Propagation::Foreground));
        assert!(o.dry_run);
        let o = options(
            "propagationPolicy=Foreground",
            r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan","preconditions":{"uid":"u"}}"#,
        )
        .expect("ok");
        assert_eq!(o.propagation, Some(Propagation::Orphan));
        assert_eq!(o.uid.as_deref(), Some("u"));
        assert_eq!(o.grace, None);
        let o = options(
            "gracePeriodSeconds=30",
            r#"{"kind":"DeleteOptions","gracePeriodSeconds":0}"#,
        )
        .expect("ok");
        assert_eq!(o.grace, Some(0));
        assert_eq!(
            options("gracePeriodSeconds=7", "").expect("ok").grace,
            Some(7)
        );
        assert_eq!(
            options("orphanDependents=true", "")
                .expect("ok")
                .propagation,
            Some(Propagation::Orphan)
        );
        for (query, body) in [
            ("propagationPolicy=Sideways", ""),
            ("propagationPolicy=Orphan&orphanDependents=true", ""),
            ("dryRun=Some", ""),
        ] {
            assert_eq!(options(query, body).expect_err(query).code, 422, "{query}");
        }
        assert_eq!(options("", "{nope").expect_err("json").code, 400);
        assert_eq!(
            options("", r#"{"kind":"Pod"}"#).expect_err("kind").code,
            400
        );
        assert_eq!(
            options("gracePeriodSeconds=x", "").expect_err("grace").code,
            400
        );
        assert_eq!(
            options("", r#"{"gracePeriodSeconds":"soon"}"#)
                .expect_err("grace body")
                .code,
            400
        );
    }

    #[test]
    fn field_manager_defaults_to_the_user_agent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::USER_AGENT,
            "kubectl/v1.32.4 (linux/amd64)".parse().expect("header"),
        );
        let o =
            WriteOptions::from_request(&Query::default(), &headers, "CreateOptions").expect("ok");
        assert_eq!(o.manager, "kubectl");
        let q = Query::parse(Some("fieldManager=mine&dryRun=All"));
        let o = WriteOptions::from_request(&q, &headers, "CreateOptions").expect("ok");
        assert_eq!((o.manager.as_str(), o.dry_run), ("mine", true));
    }
}
