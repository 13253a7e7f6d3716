//! Events the workload controllers record about the objects they act on
//! (`kubectl describe` shows them), as upstream's event recorder with the
//! component `<kind>-controller` (`job-controller`, `cronjob-controller`,
//! `daemonset-controller`, `statefulset-controller`).
//!
//! Recording is best effort: a failed write is logged at debug level and
//! never fails the sync. Events are not aggregated (each is its own object).

use serde_json::{Value, json};

use super::client::Client;
use super::objects::{name, namespace, now, uid};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Routine.
    Normal,
    /// Worth a look.
    Warning,
}

/// Records `reason`/`message` about `obj` (of `api_version`/`kind`) from
/// `component`.
pub async fn record(
    client: &Client,
    component: &str,
    (api_version, kind): (&str, &str),
    obj: &Value,
    kind_of_event: Type,
    reason: &str,
    message: &str,
) {
    let stamp = now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", name(obj)), "namespace": namespace(obj)},
        "involvedObject": {
            "apiVersion": api_version, "kind": kind,
            "name": name(obj), "namespace": namespace(obj), "uid": uid(obj),
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": match kind_of_event { Type::Normal => "Normal", Type::Warning => "Warning" },
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    });
    let path = format!("/api/v1/namespaces/{}/events", namespace(obj));
    if let Err(err) = client.post(&path, &event).await {
        tracing::debug!(%err, reason, "event not written");
    }
}
