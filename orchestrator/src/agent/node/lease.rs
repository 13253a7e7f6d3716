//! The node's heartbeat: the Lease `kube-node-lease/<node>`, renewed every
//! [`Config::lease_interval`](crate::agent::Config) (10 s), owned by the
//! Node so it goes with it. The Node's status is written only when it
//! changes (see [`super::status`]); the Lease is what tells the cluster
//! the agent is alive, and the store keeps its renewals cheap.

use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::controllers::client::{Client, ClientResult};

/// The namespace of node Leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds`, the kubelet's default.
pub const DURATION_SECONDS: u64 = 40;

/// A `MicroTime`.
pub fn micro_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Renews one node's Lease, keeping the last copy to update.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    node: String,
    /// The Node's uid, for the owner reference.
    node_uid: String,
    /// The Lease as last written (its resourceVersion guards the update).
    current: Option<Value>,
}

impl Lease {
    /// The Lease of `node` (whose uid is `node_uid`).
    pub fn new(client: Client, node: &str, node_uid: &str) -> Lease {
        Lease {
            client,
            node: node.to_owned(),
            node_uid: node_uid.to_owned(),
            current: None,
        }
    }

    /// The uid of the Node owning the Lease.
    pub fn node_uid(&self) -> &str {
        &self.node_uid
    }

    fn path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{}",
            self.node
        )
    }

    /// One renewal: updates the Lease last seen, reads it again after a
    /// conflict, creates it (and its namespace) when missing.
    pub async fn renew(&mut self) -> ClientResult<()> {
        let now = micro_time(jiff::Timestamp::now());
        let lease = match self.current.take() {
            Some(lease) => lease,
            None => match self.client.get(&self.path()).await {
                Ok(lease) => lease,
                Err(err) if err.is_not_found() => return self.create(&now).await,
                Err(err) => return Err(err),
            },
        };
        let mut updated = lease;
        updated["spec"]["holderIdentity"] = self.node.clone().into();
        updated["spec"]["leaseDurationSeconds"] = DURATION_SECONDS.into();
        updated["spec"]["renewTime"] = now.into();
        // Owned by this Node (also after it was deleted and registered again).
        updated["metadata"]["ownerReferences"] = json!([self.owner()]);
        match self.client.put(&self.path(), &updated).await {
            Ok(written) => {
                self.current = Some(written);
                Ok(())
            }
            Err(err) => {
                // Read it again next time (a conflict, or deleted meanwhile).
                debug!(%err, node = %self.node, "lease update failed");
                Err(err)
            }
        }
    }

    fn owner(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "name": self.node,
            "uid": self.node_uid,
        })
    }

    async fn create(&mut self, now: &str) -> ClientResult<()> {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node,
                "namespace": NAMESPACE,
                "ownerReferences": [self.owner()],
            },
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": DURATION_SECONDS,
                "renewTime": now,
            },
        });
        let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
        let created = match self.client.post(&collection, &lease).await {
            Err(err) if err.is_not_found() => {
                ensure_namespace(&self.client).await;
                self.client.post(&collection, &lease).await
            }
            other => other,
        }?;
        self.current = Some(created);
        Ok(())
    }
}

/// Creates `kube-node-lease` if it does not exist.
async fn ensure_namespace(client: &Client) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    match client.post("/api/v1/namespaces", &ns).await {
        Ok(_) => {}
        Err(err) if err.is_conflict() => {}
        Err(err) => warn!(%err, "creating namespace {NAMESPACE} failed"),
    }
}
