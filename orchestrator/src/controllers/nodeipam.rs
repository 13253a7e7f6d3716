//! Node IPAM: gives each Node without `spec.podCIDR` a /24 of the cluster
//! CIDR (`10.42.0.0/16`, K3s' default), in `spec.podCIDR` and
//! `spec.podCIDRs` (upstream's range allocator). The node's agent turns it
//! into its CNI configuration.
//!
//! A range is never handed out twice: the free ranges are computed from
//! every Node in the cache plus the ranges this controller assigned whose
//! Node the cache has not caught up with yet (a node keeps its reserved
//! range across retries), and one worker assigns them in order. The write is a merge patch guarded by the Node's
//! resourceVersion, so a Node that got a CIDR meanwhile is read again,
//! not overwritten. A CIDR, once set, is never changed (upstream forbids
//! it too); a deleted Node's range becomes free again.
//!
//! # Current limitations
//! IPv4 only, /24 per node (256 nodes in a /16); a Node whose CIDR lies
//! outside the cluster CIDR is left alone and its range not reserved.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing::info;

use super::client::Client;
use super::objects::name;
use super::queue::Queue;
use super::reflector::{Reflector, key_of};

/// The cluster's pod network when none is configured.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";

/// [`CLUSTER_CIDR`], parsed.
pub fn default_cluster_cidr() -> Cidr {
    CLUSTER_CIDR.parse().expect("the default CIDR parses")
}
/// Prefix length of each node's range.
const NODE_PREFIX: u8 = 24;

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        Ok(Cidr {
            base: u32::from(ip) & mask(prefix),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The `index`th /`prefix` subnet of this network, if it has one.
    fn subnet(&self, prefix: u8, index: u32) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        let base = u64::from(self.base) + u64::from(index) * step;
        Some(Cidr {
            base: u32::try_from(base).ok()?,
            prefix,
        })
    }

    fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && other.base & mask(self.prefix) == self.base
    }
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct NodeIpam {
    client: Client,
    nodes: Arc<Reflector>,
    queue: Queue,
    cluster: Cidr,
    /// Ranges written by this controller: node name → range.
    assigned: Arc<Mutex<std::collections::BTreeMap<String, Cidr>>>,
}

impl NodeIpam {
    /// Registers the handlers; `cluster` is the pod network.
    pub fn new(client: Client, nodes: Arc<Reflector>, cluster: Cidr) -> NodeIpam {
        let queue = Queue::new();
        let q = queue.clone();
        nodes.on_change(Box::new(move |old, new| {
            if let Some(node) = new.or(old) {
                q.add(key_of(node));
            }
        }));
        NodeIpam {
            client,
            nodes,
            queue,
            cluster,
            assigned: Arc::default(),
        }
    }

    /// Processes the queue until aborted (one worker: assignments are serial).
    pub async fn run(self) {
        let caches = [&self.nodes];
        self.queue
            .run_synced(&caches, 1, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    /// Ranges in use: every cached Node's, plus ours not yet in the cache.
    fn used(&self) -> BTreeSet<Cidr> {
        let mut used: BTreeSet<Cidr> = self
            .nodes
            .list(|_| true)
            .iter()
            .filter_map(|n| n["spec"]["podCIDR"].as_str()?.parse().ok())
            .collect();
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        // Forget assignments the cache shows (or whose Node is gone).
        assigned.retain(|node, cidr| {
            let cached = self.nodes.get(node);
            let pending = cached
                .as_ref()
                .is_some_and(|n| n["spec"]["podCIDR"].as_str().is_none());
            if pending {
                used.insert(*cidr);
            }
            pending
        });
        used
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(node) = self.nodes.get(key) else {
            return Ok(());
        };
        if node["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            return Ok(());
        }
        let used = self.used();
        let pending = self
            .assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let cidr = match pending {
            Some(cidr) => cidr,
            None => (0..)
                .map_while(|i| self.cluster.subnet(NODE_PREFIX, i))
                .find(|c| !used.iter().any(|u| u.contains(c) || c.contains(u)))
                .ok_or_else(|| format!("no free /{NODE_PREFIX} left in {}", self.cluster))?,
        };
        let node_name = name(&node);
        let patch = json!({
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
        });
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), cidr);
        match self
            .client
            .merge_patch(&format!("/api/v1/nodes/{node_name}"), &patch)
            .await
        {
            Ok(_) => {
                info!(node = node_name, %cidr, "pod CIDR assigned");
                Ok(())
            }
            Err(err) if err.is_not_found() => {
                self.assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                Ok(())
            }
            // The range stays reserved for this node until the cache shows
            // it with a CIDR (ours, or one set meanwhile): a conflict may
            // come from a stale cache after our own write succeeded.
            Err(err) => Err(format!("assigning {cidr} to node {node_name}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_the_cluster_cidr() {
        let cluster: Cidr = "10.42.0.0/16".parse().expect("cidr");
        assert_eq!(
            cluster.subnet(24, 0).map(|c| c.to_string()).as_deref(),
            Some("10.42.0.0/24")
        );
        assert_eq!(
            cluster.subnet(24, 255).map(|c| c.to_string()).as_deref(),
            Some("10.42.255.0/24")
        );
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(
            "10.42.7.9/24".parse::<Cidr>().expect("cidr").to_string(),
            "10.42.7.0/24"
        );
        assert!(cluster.contains(&"10.42.3.0/24".parse().expect("cidr")));
        assert!(!cluster.contains(&"10.43.3.0/24".parse().expect("cidr")));
        for bad in ["10.42.0.0", "10.42.0.0/33", "x/24", "10.42.0/16"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let small: Cidr = "10.0.0.0/25".parse().expect("cidr");
        assert_eq!(small.subnet(24, 0), None);
    }
}
