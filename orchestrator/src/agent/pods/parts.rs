//! The pods part's hooks ([`Volumes`], [`Health`]) implemented by the
//! agent's own volumes ([`crate::agent::volumes`]) and probes
//! ([`crate::agent::probes`]), and [`Pods::with_parts`] wiring them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tracing::warn;

use super::{BoxFuture, Health, Pods, Volumes, Waiting};
use crate::agent::probes::Probes;
use crate::agent::volumes::{self, Failure};

impl Volumes for volumes::Volumes {
    fn prepare<'a>(
        &'a self,
        pod: &'a Value,
    ) -> BoxFuture<'a, Result<HashMap<String, PathBuf>, Waiting>> {
        Box::pin(async move {
            volumes::Volumes::prepare(self, pod)
                .await
                .map_err(|e| Waiting {
                    reason: e.reason().to_owned(),
                    message: match e.failure {
                        Failure::Config => e.message.clone(),
                        Failure::Pending | Failure::Mount => e.to_string(),
                    },
                })
        })
    }

    fn refresh<'a>(&'a self, pod: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = volumes::Volumes::refresh(self, pod).await {
                warn!(%error, "volume contents not refreshed");
            }
        })
    }

    fn cleanup<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = volumes::Volumes::cleanup(self, pod_uid).await {
                warn!(%error, "pod volumes not cleaned up");
            }
        })
    }
}

impl Health for Probes {
    fn ensure(&self, pod_key: &str, pod_ip: &str, container: &str, id: &str, spec: &Value) {
        Probes::ensure(self, pod_key, pod_ip, container, id, spec);
    }
    fn forget(&self, pod_key: &str) {
        Probes::forget(self, pod_key);
    }
    fn ready(&self, container_id: &str) -> bool {
        Probes::ready(self, container_id)
    }
    fn started(&self, container_id: &str) -> bool {
        Probes::started(self, container_id)
    }
    fn liveness_failure(&self, container_id: &str) -> Option<String> {
        Probes::liveness_failure(self, container_id)
    }
}

impl Pods {
    /// The pods part with the agent's volumes (under `config.root_dir`
    /// and `config.storage_dir`) and probes (whose changes re-sync pods).
    pub fn with_parts(self) -> Pods {
        let volumes = volumes::Volumes::new(
            self.client.clone(),
            self.config.root_dir.clone(),
            self.config.storage_dir.clone(),
        );
        let probes = Probes::new(self.cri.clone(), self.resync_channel());
        self.with_volumes(Arc::new(volumes))
            .with_health(Arc::new(probes))
    }
}
