//! Reflectors: one per watched kind, keeping an in-memory cache of every
//! object of that kind in step with the API.
//!
//! A reflector lists the kind, then watches from the list's
//! `resourceVersion` (with bookmarks, so its version keeps moving while
//! its kind is quiet); when the watch ends it watches again from the last
//! version seen, and on 410 `Expired` (history compacted) or any error it
//! lists again and reports what changed meanwhile. Handlers registered
//! before [`Reflector::run`] see every change as `(old, new)`; they only
//! enqueue keys, the controllers read the cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::client::{Client, error_of};

/// A served kind, by the path prefix of its group-version and its plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `/api/v1` or `/apis/<group>/<version>`.
    pub api: &'static str,
    /// The resource, e.g. `pods`.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

/// Pods.
pub const PODS: Kind = Kind {
    api: "/api/v1",
    plural: "pods",
    namespaced: true,
};
/// Nodes.
pub const NODES: Kind = Kind {
    api: "/api/v1",
    plural: "nodes",
    namespaced: false,
};
/// Namespaces.
pub const NAMESPACES: Kind = Kind {
    api: "/api/v1",
    plural: "namespaces",
    namespaced: false,
};
/// Services.
pub const SERVICES: Kind = Kind {
    api: "/api/v1",
    plural: "services",
    namespaced: true,
};
/// ReplicaSets.
pub const REPLICASETS: Kind = Kind {
    api: "/apis/apps/v1",
    plural: "replicasets",
    namespaced: true,
};
/// Deployments.
pub const DEPLOYMENTS: Kind = Kind {
    api: "/apis/apps/v1",
    plural: "deployments",
    namespaced: true,
};

/// Jobs.
pub const JOBS: Kind = Kind {
    api: "/apis/batch/v1",
    plural: "jobs",
    namespaced: true,
};
/// CronJobs.
pub const CRONJOBS: Kind = Kind {
    api: "/apis/batch/v1",
    plural: "cronjobs",
    namespaced: true,
};
/// DaemonSets.
pub const DAEMONSETS: Kind = Kind {
    api: "/apis/apps/v1",
    plural: "daemonsets",
    namespaced: true,
};
/// Leases (the node agents' heartbeats are in `kube-node-lease`).
pub const LEASES: Kind = Kind {
    api: "/apis/coordination.k8s.io/v1",
    plural: "leases",
    namespaced: true,
};
/// StatefulSets.
pub const STATEFULSETS: Kind = Kind {
    api: "/apis/apps/v1",
    plural: "statefulsets",
    namespaced: true,
};
/// ControllerRevisions (DaemonSet and StatefulSet history).
pub const CONTROLLER_REVISIONS: Kind = Kind {
    api: "/apis/apps/v1",
    plural: "controllerrevisions",
    namespaced: true,
};
/// PodDisruptionBudgets.
pub const PDBS: Kind = Kind {
    api: "/apis/policy/v1",
    plural: "poddisruptionbudgets",
    namespaced: true,
};

impl Kind {
    /// The collection in `namespace` (`None`: every namespace).
    pub fn collection(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/namespaces/{ns}/{}", self.api, self.plural),
            _ => format!("{}/{}", self.api, self.plural),
        }
    }

    /// The object at a cache key (`ns/name` or `name`).
    pub fn path(&self, key: &str) -> String {
        match key.split_once('/') {
            Some((ns, name)) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}/{name}", self.api, self.plural)
            }
            _ => format!("{}/{}/{key}", self.api, self.plural),
        }
    }
}

/// The cache key of an object: `namespace/name`, or `name`.
pub fn key_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    match meta["namespace"].as_str().filter(|ns| !ns.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The `resourceVersion` of an object or list, as a number (0 if none).
pub fn rv_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// A change handler: `(old, new)`; `None` for a creation's old or a
/// deletion's new.
pub type Handler = Box<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The cache of one kind and the handlers told of its changes.
pub struct Reflector {
    kind: Kind,
    /// A `fieldSelector` on the list and watch (the agent's
    /// `spec.nodeName=<node>`), none by default.
    field_selector: Option<String>,
    cache: RwLock<HashMap<String, Arc<Value>>>,
    handlers: RwLock<Vec<Handler>>,
    version: watch::Sender<i64>,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("kind", &self.kind)
            .finish()
    }
}

/// Why a watch stopped.
enum WatchEnd {
    /// The stream ended: watch again from the last version.
    Closed,
    /// 410 or an error: list again.
    Relist,
}

impl Reflector {
    /// An empty reflector of `kind`.
    pub fn new(kind: Kind) -> Arc<Reflector> {
        Reflector::with_field_selector(kind, None)
    }

    /// A reflector of only the objects of `kind` matching `selector`
    /// (a `fieldSelector`, e.g. `spec.nodeName=node1`).
    pub fn with_field_selector(kind: Kind, selector: Option<String>) -> Arc<Reflector> {
        Arc::new(Reflector {
            kind,
            field_selector: selector,
            cache: RwLock::new(HashMap::new()),
            handlers: RwLock::new(Vec::new()),
            version: watch::channel(0).0,
        })
    }

    /// The kind reflected.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Adds a change handler.
    pub fn on_change(&self, handler: Handler) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(handler);
    }

    /// The cached object at `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().get(key).cloned()
    }

    /// Every cached object for which `keep` holds.
    pub fn list(&self, keep: impl Fn(&Value) -> bool) -> Vec<Arc<Value>> {
        self.read().values().filter(|o| keep(o)).cloned().collect()
    }

    /// Every cached object in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.list(|o| o["metadata"]["namespace"].as_str() == Some(namespace))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Value>>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the cache reflects the state at `rv` or later (the
    /// answer to this controller's own write), at most `limit`.
    pub async fn wait_for(&self, rv: i64, limit: Duration) -> bool {
        let mut seen = self.version.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|v| *v >= rv))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits for the first list.
    pub async fn synced(&self) {
        let mut seen = self.version.subscribe();
        let _ = seen.wait_for(|v| *v > 0).await;
    }

    fn notify(&self, old: Option<&Value>, new: Option<&Value>) {
        for handler in self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            handler(old, new);
        }
    }

    fn put(&self, obj: Value) {
        let key = key_of(&obj);
        let obj = Arc::new(obj);
        let old = self
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, obj.clone());
        self.notify(old.as_deref(), Some(&obj));
    }

    fn remove(&self, obj: &Value) {
        let key = key_of(obj);
        let old = self
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.notify(old.as_deref().or(Some(obj)), None);
    }

    /// Lists and watches until the task is aborted.
    pub async fn run(self: Arc<Self>, client: Client) {
        loop {
            let rv = match self.relist(&client).await {
                Ok(rv) => rv,
                Err(err) => {
                    warn!(kind = self.kind.plural, %err, "list failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.version.send_replace(rv.max(1));
            // Watch again from the last version until a list is needed.
            while let WatchEnd::Closed = self.watch(&client).await {}
        }
    }

    /// Lists the kind and replaces the cache, telling handlers what changed.
    async fn relist(&self, client: &Client) -> Result<i64, super::client::ClientError> {
        let path = match &self.field_selector {
            Some(selector) => format!("{}?fieldSelector={selector}", self.kind.collection(None)),
            None => self.kind.collection(None),
        };
        let list = client.get(&path).await?;
        let items = match list["items"].as_array() {
            Some(items) => items.clone(),
            None => Vec::new(),
        };
        let mut fresh: HashMap<String, Value> =
            items.into_iter().map(|o| (key_of(&o), o)).collect();
        let gone: Vec<Arc<Value>> = {
            let cache = self.read();
            cache
                .iter()
                .filter(|(k, _)| !fresh.contains_key(*k))
                .map(|(_, v)| v.clone())
                .collect()
        };
        for obj in gone {
            self.remove(&obj);
        }
        for (_, obj) in fresh.drain() {
            let unchanged = self
                .get(&key_of(&obj))
                .is_some_and(|old| rv_of(&old) == rv_of(&obj));
            if !unchanged {
                self.put(obj);
            }
        }
        Ok(rv_of(&list))
    }

    /// One watch from the current version, applying its events.
    async fn watch(&self, client: &Client) -> WatchEnd {
        let from = *self.version.borrow();
        let mut path = format!(
            "{}?watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={from}",
            self.kind.collection(None)
        );
        if let Some(selector) = &self.field_selector {
            path.push_str("&fieldSelector=");
            path.push_str(selector);
        }
        let response = match client.send(Method::GET, &path, "", None).await {
            Ok(response) => response,
            Err(err) => {
                debug!(kind = self.kind.plural, %err, "watch failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return WatchEnd::Relist;
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|c| c.to_bytes());
            let value = bytes
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            debug!(kind = self.kind.plural, err = %error_of(status, &value), "watch refused");
            return WatchEnd::Relist;
        }
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    debug!(kind = self.kind.plural, %err, "watch stream broke");
                    return WatchEnd::Closed;
                }
                None => return WatchEnd::Closed,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    warn!(kind = self.kind.plural, "unreadable watch event");
                    return WatchEnd::Relist;
                };
                if !self.apply(event) {
                    return WatchEnd::Relist;
                }
            }
        }
    }

    /// Applies one watch event; false when the watch must list again.
    fn apply(&self, mut event: Value) -> bool {
        let object = event["object"].take();
        let rv = rv_of(&object);
        match event["type"].as_str() {
            Some("ADDED" | "MODIFIED") => self.put(object),
            Some("DELETED") => self.remove(&object),
            Some("BOOKMARK") => {}
            _ => {
                debug!(kind = self.kind.plural, event = %object, "watch error; listing again");
                return false;
            }
        }
        if rv > 0 {
            self.version.send_replace(rv);
        }
        true
    }
}
