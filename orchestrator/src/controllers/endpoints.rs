//! Endpoints and EndpointSlices for every Service with a selector, from
//! the pods it selects (upstream's endpoints and endpointslice
//! controllers, together).
//!
//! A pod counts once it has an IP (`status.podIP`); Ready pods are
//! `addresses` (slices: `ready: true`), the others `notReadyAddresses`
//! (`ready: false`). A pod being deleted (Terminating, its grace period
//! running) leaves the Endpoints but stays in the slice with
//! `terminating: true`, `ready: false` and `serving` = its readiness, as
//! upstream's endpointslice controller keeps it for graceful draining. Ports are the Service's, with
//! `targetPort` resolved per pod (a named port is looked up in the pod's
//! containers). The Endpoints object has the Service's name and groups
//! pods by their resolved ports, as upstream's subsets; the slice is
//! `<service>-<random>`, labelled `kubernetes.io/service-name` and owned by
//! the Service. When the Service goes, so do they.
//!
//! # Current limitations
//! - One slice per Service (upstream splits at 100 endpoints), IPv4 only;
//!   no `publishNotReadyAddresses`, no topology hints.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::client::Client;
use super::objects::{is_deleting, name, namespace, owner_ref, pod_ready, uid};
use super::queue::Queue;
use super::reflector::{Reflector, key_of};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct Endpoints {
    client: Client,
    services: Arc<Reflector>,
    pods: Arc<Reflector>,
    queue: Queue,
}

/// Whether a Service's `selector` (a plain map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// One endpoint: a pod with an IP.
struct Member {
    ip: String,
    ready: bool,
    /// Being deleted (its grace period runs): only in the slice.
    terminating: bool,
    pod: Arc<Value>,
    /// `(name, port, protocol)` per Service port.
    ports: Vec<(String, i64, String)>,
}

impl Endpoints {
    /// Registers the controller's handlers.
    pub fn new(client: Client, services: Arc<Reflector>, pods: Arc<Reflector>) -> Endpoints {
        let queue = Queue::new();
        let q = queue.clone();
        services.on_change(Box::new(move |old, new| {
            if let Some(svc) = new.or(old) {
                q.add(key_of(svc));
            }
        }));
        let (q, svcs) = (queue.clone(), services.clone());
        pods.on_change(Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                let labels = &pod["metadata"]["labels"];
                for svc in svcs.in_namespace(namespace(pod)) {
                    if selects(&svc["spec"]["selector"], labels) {
                        q.add(key_of(&svc));
                    }
                }
            }
        }));
        Endpoints {
            client,
            services,
            pods,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.services, &self.pods];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some((ns, svc_name)) = key.split_once('/') else {
            return Ok(());
        };
        let endpoints_path = format!("/api/v1/namespaces/{ns}/endpoints/{svc_name}");
        let slices_path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
        let slices = self
            .client
            .get(&format!(
                "{slices_path}?labelSelector={SERVICE_NAME}%3D{svc_name}"
            ))
            .await
            .map_err(|e| format!("slices of {key}: {e}"))?;
        let slices: Vec<Value> = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["metadata"]["labels"][MANAGED_BY] == MANAGER)
            .cloned()
            .collect();
        let svc = self.services.get(key).filter(|s| !is_deleting(s));
        let Some(svc) = svc.filter(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        }) else {
            // Gone, or without a selector (its endpoints are the user's).
            if self.services.get(key).is_none() {
                self.delete(&endpoints_path).await?;
            }
            for slice in &slices {
                self.delete(&format!("{slices_path}/{}", name(slice)))
                    .await?;
            }
            return Ok(());
        };
        let members = self.members(&svc);
        self.write_endpoints(&svc, &endpoints_path, &members)
            .await?;
        self.write_slice(&svc, &slices_path, &slices, &members)
            .await
    }

    async fn delete(&self, path: &str) -> Result<(), String> {
        match self.client.delete(path, &Value::Null).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(format!("deleting {path}: {err}")),
        }
    }

    fn members(&self, svc: &Value) -> Vec<Member> {
        let selector = &svc["spec"]["selector"];
        let mut members: Vec<Member> = self
            .pods
            .in_namespace(namespace(svc))
            .into_iter()
            .filter(|p| selects(selector, &p["metadata"]["labels"]))
            .filter_map(|pod| {
                let ip = pod["status"]["podIP"]
                    .as_str()
                    .filter(|ip| !ip.is_empty())?
                    .to_owned();
                let ports = svc["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|port| resolve(port, &pod))
                    .collect();
                Some(Member {
                    ip,
                    ready: pod_ready(&pod),
                    terminating: is_deleting(&pod),
                    pod,
                    ports,
                })
            })
            .collect();
        members.sort_by(|a, b| a.ip.cmp(&b.ip));
        members
    }

    async fn write_endpoints(
        &self,
        svc: &Value,
        path: &str,
        members: &[Member],
    ) -> Result<(), String> {
        let mut subsets: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for m in members.iter().filter(|m| !m.terminating) {
            let ports: Vec<Value> = m
                .ports
                .iter()
                .map(|(n, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !n.is_empty() {
                        p["name"] = n.clone().into();
                    }
                    p
                })
                .collect();
            let group = subsets
                .entry(serde_json::to_string(&ports).unwrap_or_default())
                .or_insert_with(|| (json!(ports), Vec::new(), Vec::new()));
            let address = json!({
                "ip": m.ip,
                "nodeName": m.pod["spec"]["nodeName"],
                "targetRef": target_ref(&m.pod),
            });
            if m.ready {
                group.1.push(address);
            } else {
                group.2.push(address);
            }
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .map(|(ports, ready, not_ready)| {
                let mut subset = json!({"ports": ports});
                if !ready.is_empty() {
                    subset["addresses"] = ready.into();
                }
                if !not_ready.is_empty() {
                    subset["notReadyAddresses"] = not_ready.into();
                }
                subset
            })
            .collect();
        let labels = svc["metadata"]["labels"].clone();
        match self.client.get(path).await {
            Ok(mut current) => {
                let have = current["subsets"].as_array().cloned().unwrap_or_default();
                if have == subsets {
                    return Ok(());
                }
                current["subsets"] = subsets.into();
                self.client.put(path, &current).await.map(|_| ())
            }
            Err(err) if err.is_not_found() => {
                let endpoints = json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": name(svc), "namespace": namespace(svc), "labels": labels},
                    "subsets": subsets,
                });
                let collection = format!("/api/v1/namespaces/{}/endpoints", namespace(svc));
                self.client.post(&collection, &endpoints).await.map(|_| ())
            }
            Err(err) => Err(err),
        }
        .map_err(|e| format!("endpoints of {}: {e}", name(svc)))
    }

    async fn write_slice(
        &self,
        svc: &Value,
        collection: &str,
        slices: &[Value],
        members: &[Member],
    ) -> Result<(), String> {
        let ports: Vec<Value> = members.first().map_or_else(
            || {
                svc["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        json!({"name": p["name"].as_str().unwrap_or(""), "port": p["targetPort"].as_i64().or(p["port"].as_i64()), "protocol": p["protocol"].as_str().unwrap_or("TCP")})
                    })
                    .collect()
            },
            |m| {
                m.ports
                    .iter()
                    .map(|(n, port, protocol)| json!({"name": n, "port": port, "protocol": protocol}))
                    .collect()
            },
        );
        let endpoints: Vec<Value> = members
            .iter()
            .map(|m| {
                let mut e = json!({
                    "addresses": [m.ip],
                    "conditions": {
                        "ready": m.ready && !m.terminating,
                        "serving": m.ready,
                        "terminating": m.terminating,
                    },
                    "targetRef": target_ref(&m.pod),
                });
                if let Some(node) = m.pod["spec"]["nodeName"].as_str() {
                    e["nodeName"] = node.into();
                }
                e
            })
            .collect();
        let result = match slices.split_first() {
            Some((slice, extra)) => {
                for other in extra {
                    self.delete(&format!("{collection}/{}", name(other)))
                        .await?;
                }
                if slice["endpoints"].as_array().cloned().unwrap_or_default() == endpoints
                    && slice["ports"].as_array().cloned().unwrap_or_default() == ports
                {
                    return Ok(());
                }
                let mut updated = slice.clone();
                updated["endpoints"] = endpoints.into();
                updated["ports"] = ports.into();
                self.client
                    .put(&format!("{collection}/{}", name(slice)), &updated)
                    .await
            }
            None => {
                let mut labels = svc["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                labels[SERVICE_NAME] = name(svc).into();
                labels[MANAGED_BY] = MANAGER.into();
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{}-", name(svc)),
                        "namespace": namespace(svc),
                        "labels": labels,
                        "ownerReferences": [owner_ref("v1", "Service", svc)],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                });
                self.client.post(collection, &slice).await
            }
        };
        result
            .map(|_| ())
            .map_err(|e| format!("EndpointSlice of {}: {e}", name(svc)))
    }
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "name": name(pod), "namespace": namespace(pod), "uid": uid(pod)})
}

/// A Service port's `(name, port on the pod, protocol)`.
fn resolve(port: &Value, pod: &Value) -> (String, i64, String) {
    let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
    let name = port["name"].as_str().unwrap_or("").to_owned();
    let fallback = port["port"].as_i64().unwrap_or(0);
    let target = match &port["targetPort"] {
        Value::Number(n) => n.as_i64().unwrap_or(fallback),
        Value::String(s) => s.parse().ok().unwrap_or_else(|| {
            pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| p["name"].as_str() == Some(s.as_str()))
                .and_then(|p| p["containerPort"].as_i64())
                .unwrap_or(fallback)
        }),
        _ => fallback,
    };
    (name, target, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_resolve_by_number_or_name() {
        let pod =
            json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        let port = |target: Value| json!({"name": "web", "port": 80, "targetPort": target});
        assert_eq!(resolve(&port(json!(9000)), &pod).1, 9000);
        assert_eq!(resolve(&port(json!("http")), &pod).1, 8080);
        assert_eq!(resolve(&port(json!("nope")), &pod).1, 80);
        assert_eq!(
            resolve(&json!({"port": 53, "protocol": "UDP"}), &pod),
            (String::new(), 53, "UDP".into())
        );
    }

    #[test]
    fn service_selectors_are_plain_maps() {
        let labels = json!({"app": "web", "x": "y"});
        assert!(selects(&json!({"app": "web"}), &labels));
        assert!(!selects(&json!({"app": "db"}), &labels));
        assert!(!selects(&json!({}), &labels));
        assert!(!selects(&Value::Null, &labels));
    }
}
