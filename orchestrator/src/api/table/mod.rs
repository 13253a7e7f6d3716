//! Server-side printing: `meta.k8s.io/v1` `Table` responses, which is what
//! `kubectl get` asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`)
//! and prints as columns. The columns, their types and the cells follow
//! upstream's `pkg/printers/internalversion/printers.go`, so `kubectl get`
//! output looks the way users know; `AGE` is formatted like
//! `translateTimestampSince` (apimachinery's `duration.HumanDuration`).
//!
//! Kinds without a printer (Roles, ClusterRoles, LimitRanges) get
//! upstream's default table (`NAME`, `CREATED AT`). Custom kinds print
//! their CRD's `additionalPrinterColumns` (`crd::printer`).
//!
//! # Layout
//! - `columns`: the column definitions per kind (with `-o wide` ones).
//! - `cells`: the cells per kind, as upstream's `print<Kind>` functions;
//!   `rows`: the kinds whose cells are computed (pods, jobs, services...).
//! - `format`: selectors, labels, container lists, access modes.
//!
//! # Current limitations
//! - Only `meta.k8s.io/v1` tables; a client that accepts only `v1beta1`
//!   gets plain JSON.
//! - Quantities (PV/PVC capacity, quota usage) print as stored, not in
//!   upstream's canonical form (`1024Mi` stays `1024Mi`, upstream `1Gi`).

use hyper::HeaderMap;
use serde_json::{Value, json};

use super::crd::{Custom, printer};
use super::query::Query;
use super::resources::ResourceType;
use super::status::ApiError;

mod cells;
mod columns;
mod format;
mod rows;

pub use format::format_selector;

/// What `rows[].object` holds (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

/// How a GET or watch response is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The objects as stored (JSON).
    Object,
    /// A `meta.k8s.io/v1` `Table`.
    Table(IncludeObject),
}

impl Output {
    /// Picks the output from the `Accept` header (the first acceptable media
    /// type wins, as upstream negotiates) and `includeObject`.
    pub fn negotiate(headers: &HeaderMap, query: &Query) -> Result<Output, ApiError> {
        let accept = headers
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        let mut table = false;
        for media in accept {
            let mut parts = media.split(';').map(str::trim);
            let essence = parts.next().unwrap_or("");
            let (mut as_, mut g, mut v) = ("", "", "");
            for param in parts {
                match param.split_once('=') {
                    Some(("as", x)) => as_ = x,
                    Some(("g", x)) => g = x,
                    Some(("v", x)) => v = x,
                    _ => {}
                }
            }
            if !matches!(essence, "application/json" | "application/*" | "*/*") {
                continue;
            }
            match (as_, g, v) {
                ("", _, _) => break,
                ("Table", "meta.k8s.io", "v1") => {
                    table = true;
                    break;
                }
                _ => continue,
            }
        }
        if !table {
            return Ok(Output::Object);
        }
        let include = match query.get("includeObject").unwrap_or("") {
            "" | "Metadata" => IncludeObject::Metadata,
            "None" => IncludeObject::None,
            "Object" => IncludeObject::Object,
            other => {
                return Err(ApiError::bad_request(format!(
                    "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
                )));
            }
        };
        Ok(Output::Table(include))
    }

    /// Renders one object (a GET or a watch event's object).
    pub fn object(self, kind: &str, obj: Value) -> Value {
        self.render_object(kind, None, obj)
    }

    /// Renders one object of `rt` (custom kinds print their CRD's columns).
    pub fn object_of(self, rt: &ResourceType, obj: Value) -> Value {
        self.render_object(rt.kind, rt.custom.as_deref(), obj)
    }

    /// Renders a list of `rt`'s objects, as [`Output::list`].
    pub fn list_of(self, rt: &ResourceType, list: Value) -> Value {
        self.render_list(rt.kind, rt.custom.as_deref(), list)
    }

    fn render_object(self, kind: &str, custom: Option<&Custom>, obj: Value) -> Value {
        match self {
            Output::Object => obj,
            Output::Table(include) => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                table(
                    kind,
                    custom,
                    include,
                    json!({"resourceVersion": rv}),
                    vec![obj],
                )
            }
        }
    }

    /// Renders a list (`kind` is the item kind): its `metadata` (with
    /// `resourceVersion` and `continue`) is kept.
    pub fn list(self, kind: &str, list: Value) -> Value {
        self.render_list(kind, None, list)
    }

    fn render_list(self, kind: &str, custom: Option<&Custom>, mut list: Value) -> Value {
        match self {
            Output::Object => list,
            Output::Table(include) => {
                let metadata = list["metadata"].take();
                let items = match list["items"].take() {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                };
                table(kind, custom, include, metadata, items)
            }
        }
    }
}

fn table(
    kind: &str,
    custom: Option<&Custom>,
    include: IncludeObject,
    metadata: Value,
    items: Vec<Value>,
) -> Value {
    let now = jiff::Timestamp::now();
    let definitions: Vec<Value> = match custom {
        Some(custom) => printer::definitions(custom),
        None => builtin_definitions(kind),
    };
    let rows: Vec<Value> = items
        .into_iter()
        .map(|obj| {
            let cells = match custom {
                Some(custom) => printer::cells(custom, &obj, now),
                None => cells::cells(kind, &obj, now),
            };
            let mut row = json!({ "cells": cells });
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = obj,
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    });
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn builtin_definitions(kind: &str) -> Vec<Value> {
    columns::columns(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect()
}

/// `AGE` of an RFC 3339 timestamp: `<unknown>` without one, else
/// [`human_duration`] of the time since.
pub fn translate_timestamp_since(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".to_owned(),
    }
}

/// apimachinery's `duration.HumanDuration` over whole seconds: two units
/// while the second is significant (`3m2s`, `5h4m`, `2d3h`), one after.
pub fn human_duration(seconds: i64) -> String {
    // Up to a second in the future is clock skew between machines.
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(hyper::header::ACCEPT, value.parse().expect("header"));
        headers
    }

    #[test]
    fn ages_match_upstream() {
        for (seconds, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (5, "5s"),
            (119, "119s"),
            (182, "3m2s"),
            (300, "5m"),
            (11 * 60 + 5, "11m"),
            (179 * 60, "179m"),
            (4 * 3600, "4h"),
            (4 * 3600 + 5 * 60, "4h5m"),
            (47 * 3600, "47h"),
            (2 * 86400, "2d"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
        let now: jiff::Timestamp = "2024-01-01T00:10:00Z".parse().expect("ts");
        assert_eq!(
            translate_timestamp_since(Some("2024-01-01T00:00:00Z"), now),
            "10m"
        );
        assert_eq!(translate_timestamp_since(None, now), "<unknown>");
    }

    #[test]
    fn kubectl_accept_header_negotiates_a_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let q = Query::default();
        assert_eq!(
            Output::negotiate(&accept(kubectl), &q).expect("ok"),
            Output::Table(IncludeObject::Metadata)
        );
        let only_beta = "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Output::negotiate(&accept(only_beta), &q).expect("ok"),
            Output::Object
        );
        assert_eq!(
            Output::negotiate(&accept("application/json"), &q).expect("ok"),
            Output::Object
        );
        assert_eq!(
            Output::negotiate(&HeaderMap::new(), &q).expect("ok"),
            Output::Object
        );
        let none = Query::parse(Some("includeObject=None"));
        assert_eq!(
            Output::negotiate(&accept(kubectl), &none).expect("ok"),
            Output::Table(IncludeObject::None)
        );
        let bad = Query::parse(Some("includeObject=All"));
        assert_eq!(
            Output::negotiate(&accept(kubectl), &bad)
                .expect_err("bad")
                .code,
            400
        );
    }

    #[test]
    fn rows_carry_upstream_cells() {
        let secret = json!({
            "kind": "Secret",
            "metadata": {"name": "s", "resourceVersion": "7", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "type": "Opaque",
            "data": {"a": "YQ==", "b": "Yg=="},
        });
        let t = Output::Table(IncludeObject::Metadata).object("Secret", secret);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "Type", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"][0], "s");
        assert_eq!(t["rows"][0]["cells"][1], "Opaque");
        assert_eq!(t["rows"][0]["cells"][2], 2);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "s");

        let list = json!({"metadata": {"resourceVersion": "9", "continue": "c"}, "items": [
            {"metadata": {"name": "x"}, "data": {"a": "1"}, "binaryData": {"b": "AA=="}},
        ]});
        let t = Output::Table(IncludeObject::None).list("ConfigMap", list);
        assert_eq!(t["metadata"]["continue"], "c");
        assert_eq!(t["rows"][0]["cells"], json!(["x", 2, "<unknown>"]));
        assert!(t["rows"][0].get("object").is_none());
    }
}
