//! core/v1 Events about pods, as the kubelet posts them (`source.component`
//! `kubelet`, the container as `involvedObject.fieldPath`), so that
//! `kubectl describe pod` and `kubectl get events` read right. Posting is
//! fire-and-forget: an event that cannot be written is logged, never
//! retried.

use serde_json::{Value, json};
use tracing::debug;

use crate::controllers::client::Client;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// Posts events as the node's kubelet.
#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    node: String,
}

impl Recorder {
    /// A recorder for `node`.
    pub fn new(client: Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_owned(),
        }
    }

    /// Posts an event about `pod` (its container `container`, if any).
    pub fn pod(
        &self,
        pod: &Value,
        container: Option<&str>,
        kind: Type,
        reason: &str,
        message: &str,
    ) {
        let meta = &pod["metadata"];
        let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
            return;
        };
        let now = jiff::Timestamp::now();
        let time = now.round(jiff::Unit::Second).unwrap_or(now).to_string();
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name,
            "uid": meta["uid"], "resourceVersion": meta["resourceVersion"],
        });
        if let Some(c) = container {
            let in_init = pod["spec"]["initContainers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["name"] == c));
            let list = if in_init {
                "initContainers"
            } else {
                "containers"
            };
            involved["fieldPath"] = json!(format!("spec.{list}{{{c}}}"));
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {
                "name": format!("{name}.{:x}", now.as_nanosecond()),
                "namespace": ns,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": match kind { Type::Normal => "Normal", Type::Warning => "Warning" },
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        });
        let client = self.client.clone();
        let path = format!("/api/v1/namespaces/{ns}/events");
        tokio::spawn(async move {
            if let Err(error) = client.post(&path, &event).await {
                debug!(%error, "event not recorded");
            }
        });
    }
}
