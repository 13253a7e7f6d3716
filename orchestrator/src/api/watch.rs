//! Watches: `?watch=true` on any resource, as chunked newline-delimited
//! events (`{"type": "ADDED|MODIFIED|DELETED|ERROR", "object": ...}`) read
//! from the store's watch, resuming from `resourceVersion`.
//!
//! A store event becomes a Kubernetes event through the request's filter:
//! an update that moves an object into the selection is ADDED, out of it
//! DELETED. A compacted start revision is a 410 `Expired` Status; an error
//! once the stream runs is sent as an ERROR event, as upstream does.
//!
//! Where it starts is [`WatchFrom`]'s: from a resourceVersion, or with the
//! current state as ADDED events first (then, with `sendInitialEvents`,
//! a BOOKMARK annotated `k8s.io/initial-events-end`). With
//! `allowWatchBookmarks=true` a BOOKMARK (only kind, apiVersion and
//! `metadata.resourceVersion`: the last revision this watch has passed)
//! goes out every [`BOOKMARK_INTERVAL`] and just before `timeoutSeconds`
//! closes the stream, so clients resume without a relist.

use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};

use super::handlers::{Target, from_kv, to_value_bytes};
use super::query::{Query, WatchFrom};
use super::resources::ResourceType;
use super::selector::Filter;
use super::status::ApiError;
use super::table::Output;
use super::{Api, Body};
use crate::store::{Event, Revision, StoreError};

/// Default and largest watch duration without `timeoutSeconds`.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often a watch with `allowWatchBookmarks` sends a BOOKMARK, as
/// upstream's watch cache (about once a minute).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// A BOOKMARK event at `revision`, with `annotations` if any.
fn bookmark(
    api_version: &str,
    kind: &str,
    revision: Revision,
    annotations: Option<Value>,
) -> Bytes {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    event_line("BOOKMARK", &obj)
}

/// One newline-terminated watch event.
fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = to_value_bytes(&json!({"type": kind, "object": obj}));
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch event of object `obj` of kind `rt_kind`, rendered as `output`
/// (with a Table, each event's object is a one-row Table).
fn object_event(kind: &str, obj: Value, output: Output, rt: &ResourceType) -> Bytes {
    let obj = output.object_of(rt, obj);
    let mut line = to_value_bytes(&json!({"type": kind, "object": obj}));
    line.push(b'\n');
    Bytes::from(line)
}

/// Maps a store event to the watch event a filtered watcher sees: objects
/// moving into the selection are ADDED, moving out of it DELETED.
fn watch_event(
    event: &Event,
    filter: &Filter,
    output: Output,
    rt: &ResourceType,
) -> Result<Option<Bytes>, ApiError> {
    let line = |kind: &str, obj: Value| object_event(kind, obj, output, rt);
    Ok(match event {
        Event::Put { kv, prev } => {
            let obj = from_kv(kv)?;
            let now = filter.matches(&obj);
            let before = match prev {
                Some(prev) => Some(filter.matches(&from_kv(prev)?)),
                None => None,
            };
            match (before, now) {
                (None | Some(false), true) => Some(line("ADDED", obj)),
                (Some(true), true) => Some(line("MODIFIED", obj)),
                (Some(true), false) => Some(line("DELETED", obj)),
                (_, false) => None,
            }
        }
        Event::Delete { kv } => {
            let obj = from_kv(kv)?;
            filter.matches(&obj).then(|| line("DELETED", obj))
        }
    })
}

pub(super) async fn watch(
    api: &Api,
    target: &Target<'_>,
    query: &Query,
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt;
    // The spawned stream outlives the request's borrow of the registry.
    let rt_owned = rt.clone();
    let filter = Filter::from_query(query, rt)?;
    let start = WatchFrom::from_query(query)?;
    let timeout = query
        .number("timeoutSeconds")?
        .map(Duration::from_secs)
        .map_or(WATCH_TIMEOUT, |t| t.min(WATCH_TIMEOUT));
    let prefix = target.prefix();
    let (api_version, kind) = (rt.api_version, rt.kind);

    // With initial events, the current state goes first as ADDED events,
    // then changes follow from the revision that state was read at.
    let mut initial = Vec::new();
    let from = match start.resource_version {
        Some(rv) if !start.initial_events => rv,
        None if !start.initial_events => api
            .store
            .current_revision()
            .await
            .map_err(|err| ApiError::from_store(err, rt.plural, ""))?,
        _ => {
            let mut after: Option<String> = None;
            let mut revision = None;
            loop {
                let page = api
                    .store
                    .list(&prefix, after.as_deref(), Some(500), revision)
                    .await
                    .map_err(|err| ApiError::from_store(err, rt.plural, ""))?;
                revision = Some(page.revision);
                for kv in &page.items {
                    let obj = from_kv(kv)?;
                    if filter.matches(&obj) {
                        initial.push(object_event("ADDED", obj, output, rt));
                    }
                }
                after = page.items.last().map(|kv| kv.key.clone());
                if !page.more || after.is_none() {
                    break;
                }
            }
            let revision = revision.unwrap_or(0);
            if start.initial_events_end {
                let end = json!({"k8s.io/initial-events-end": "true"});
                initial.push(bookmark(api_version, kind, revision, Some(end)));
            }
            revision
        }
    };
    let mut stream = api
        .store
        .watch(&prefix, from)
        .await
        .map_err(|err| match err {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            err => ApiError::from_store(err, rt.plural, ""),
        })?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        let mut last = from;
        loop {
            let event = tokio::select! {
                event = stream.recv() => event,
                () = &mut deadline => {
                    if start.bookmarks {
                        let _ = tx.send(bookmark(api_version, kind, last, None)).await;
                    }
                    return;
                }
                _ = ticks.tick(), if start.bookmarks => {
                    if tx.send(bookmark(api_version, kind, last, None)).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
            };
            if let Some(Ok(event)) = &event {
                last = last.max(event.revision());
            }
            let line = match event {
                Some(Ok(event)) => match watch_event(&event, &filter, output, &rt_owned) {
                    Ok(Some(line)) => line,
                    Ok(None) => continue,
                    Err(err) => event_line("ERROR", &status_value(&err)),
                },
                Some(Err(err)) => {
                    let err = ApiError::from_store(err, "", "");
                    let _ = tx.send(event_line("ERROR", &status_value(&err))).await;
                    return;
                }
                None => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok(Frame::data(line)), rx))
    });
    let body = http_body_util::StreamBody::new(body);
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn status_value(err: &ApiError) -> Value {
    serde_json::to_value(err.to_status()).unwrap_or(Value::Null)
}
