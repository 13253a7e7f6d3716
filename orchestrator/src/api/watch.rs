//! Watches: `?watch=true` on any resource, as chunked newline-delimited
//! events (`{"type": "ADDED|MODIFIED|DELETED|ERROR", "object": ...}`) read
//! from the store's watch, resuming from `resourceVersion`.
//!
//! A store event becomes a Kubernetes event through the request's filter:
//! an update that moves an object into the selection is ADDED, out of it
//! DELETED. A compacted start revision is a 410 `Expired` Status; an error
//! once the stream runs is sent as an ERROR event, as upstream does.

use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};

use super::handlers::{Filter, Target, from_kv, to_value_bytes};
use super::query::Query;
use super::resources::ResourceType;
use super::status::ApiError;
use super::table::Output;
use super::{Api, Body};
use crate::store::{Event, Revision, StoreError};

/// Default and largest watch duration without `timeoutSeconds`.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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
    let filter = Filter::from_query(query)?;
    let timeout = query
        .number("timeoutSeconds")?
        .map(Duration::from_secs)
        .map_or(WATCH_TIMEOUT, |t| t.min(WATCH_TIMEOUT));
    let prefix = target.prefix();
    let requested = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0");

    // Without a resourceVersion, a watch starts with the current state as
    // ADDED events, then follows from the revision that state was read at.
    let mut initial = Vec::new();
    let from = match requested {
        Some(rv) => rv
            .parse::<Revision>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        None => {
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
            revision.unwrap_or(0)
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
        loop {
            let event = tokio::select! {
                event = stream.recv() => event,
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
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
