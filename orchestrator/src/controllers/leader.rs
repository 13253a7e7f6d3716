//! Leader election through the Lease `kube-system/cairn-controller-manager`,
//! as client-go's `leaderelection` does it: a candidate takes the Lease
//! when it is free or its holder has not renewed it for the lease duration
//! (measured on this candidate's clock from when it last saw the record
//! change, so clock skew between servers does not matter), the holder
//! renews it every [`RETRY`], and steps down when it could not renew for
//! [`RENEW_DEADLINE`]. Writes use the Lease's `resourceVersion`, so of two
//! servers on one PostgreSQL only one wins each round.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::{debug, info};

use super::client::{Client, ClientResult};

/// The Lease's namespace and name.
pub const NAMESPACE: &str = "kube-system";
/// The Lease's name.
pub const NAME: &str = "cairn-controller-manager";
/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it steps down.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Time between attempts.
pub const RETRY: Duration = Duration::from_secs(2);

const PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cairn-controller-manager";

/// A candidate for the leadership.
#[derive(Debug)]
pub struct Elector {
    client: Client,
    identity: String,
    /// The holder and renewTime last seen, and when they were first seen.
    observed: Option<(String, Instant)>,
}

fn micro_time(ts: jiff::Timestamp) -> String {
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_microsecond()
    )
}

impl Elector {
    /// A candidate named `identity`.
    pub fn new(client: Client, identity: String) -> Elector {
        Elector {
            client,
            identity,
            observed: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        ensure_namespace(&self.client).await;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.identity, "acquired the controller lease");
                    return;
                }
                Ok(false) => {}
                Err(err) => debug!(%err, "lease acquisition failed"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the Lease until a renewal deadline passes without success;
    /// then returns (the caller stops its loops).
    pub async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    info!(identity = %self.identity, "the controller lease was taken over");
                    return;
                }
                Err(err) => debug!(%err, "lease renewal failed"),
            }
            if renewed.elapsed() > RENEW_DEADLINE {
                info!(identity = %self.identity, "could not renew the controller lease; stepping down");
                return;
            }
        }
    }

    /// One round: true if this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> ClientResult<bool> {
        let now = jiff::Timestamp::now();
        let seconds = LEASE_DURATION.as_secs();
        let lease = match self.client.get(PATH).await {
            Ok(lease) => lease,
            Err(err) if err.is_not_found() => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": NAME, "namespace": NAMESPACE},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": seconds,
                        "acquireTime": micro_time(now),
                        "renewTime": micro_time(now),
                        "leaseTransitions": 0,
                    },
                });
                let path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
                return match self.client.post(path, &lease).await {
                    Ok(_) => Ok(true),
                    Err(err) if err.is_conflict() => Ok(false),
                    Err(err) => Err(err),
                };
            }
            Err(err) => return Err(err),
        };
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let record = format!("{holder}@{}", spec["renewTime"].as_str().unwrap_or(""));
        let seen_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let duration = spec["leaseDurationSeconds"]
            .as_u64()
            .map_or(LEASE_DURATION, Duration::from_secs);
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && seen_at.elapsed() < duration {
            return Ok(false);
        }
        let mut updated: Value = lease.clone();
        updated["spec"]["holderIdentity"] = self.identity.clone().into();
        updated["spec"]["leaseDurationSeconds"] = seconds.into();
        updated["spec"]["renewTime"] = micro_time(now).into();
        if !ours {
            updated["spec"]["acquireTime"] = micro_time(now).into();
            let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
            updated["spec"]["leaseTransitions"] = (transitions + 1).into();
        }
        match self.client.put(PATH, &updated).await {
            Ok(_) => Ok(true),
            Err(err) if err.is_conflict() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up (on shutdown), so another server takes over at once.
    pub async fn release(&mut self) {
        if let Ok(mut lease) = self.client.get(PATH).await
            && lease["spec"]["holderIdentity"].as_str() == Some(self.identity.as_str())
        {
            lease["spec"]["holderIdentity"] = Value::Null;
            let _ = self.client.put(PATH, &lease).await;
        }
    }
}

/// Creates `kube-system` if it does not exist.
async fn ensure_namespace(client: &Client) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    match client.post("/api/v1/namespaces", &ns).await {
        Ok(_) => {}
        Err(err) if err.is_conflict() => {}
        Err(err) => debug!(%err, "creating kube-system failed"),
    }
}
