//! What CRI reports about a pod: its sandboxes and containers, found by
//! the labels the agent puts on them (`io.kubernetes.pod.uid` and the
//! kubelet's others), newest first, with each container's full status
//! (exit code, reason, times) — and the calls that stop and remove them.

use std::collections::HashMap;

use crate::agent::cri::{Cri, CriError, api, call};

/// Label: the pod's uid.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the pod's name.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the container's name.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation: the hash of the container's spec.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
/// Annotation: the container's restart count.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation: the pod's grace period, for a stop after the pod is gone.
pub const GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
/// Annotation: the container's preStop exec command (JSON), for a stop
/// after the pod is gone.
pub const PRE_STOP: &str = "io.cairn.container.preStop";
/// Annotation: the host file of the container's termination message.
pub const TERMINATION_LOG: &str = "io.cairn.container.terminationLog";
/// Annotation: an init container.
pub const INIT: &str = "io.cairn.container.init";

/// A pod as CRI has it.
#[derive(Debug, Default, Clone)]
pub struct RuntimePod {
    /// Its sandboxes, newest first.
    pub sandboxes: Vec<api::PodSandbox>,
    /// Its containers with their status, newest first.
    pub containers: Vec<api::ContainerStatus>,
}

impl RuntimePod {
    /// The newest sandbox if it is ready.
    pub fn ready_sandbox(&self) -> Option<&api::PodSandbox> {
        self.sandboxes
            .first()
            .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
    }

    /// The containers of sandbox `id` named `name`, newest first.
    pub fn named<'a>(
        &'a self,
        sandbox: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a api::ContainerStatus> + 'a {
        self.containers.iter().filter(move |c| {
            c.labels.get(CONTAINER_NAME).map(String::as_str) == Some(name)
                && c.labels.get(SANDBOX_ID).map(String::as_str) == Some(sandbox)
        })
    }

    /// The newest container named `name` (any sandbox).
    pub fn latest(&self, name: &str) -> Option<&api::ContainerStatus> {
        self.containers
            .iter()
            .find(|c| c.labels.get(CONTAINER_NAME).map(String::as_str) == Some(name))
    }
}

/// A pseudo-label the agent adds to a container status it observed: the
/// sandbox it runs in (ListContainers says, ContainerStatus does not).
pub const SANDBOX_ID: &str = "io.cairn.sandbox.id";

/// Is the container running?
pub fn running(c: &api::ContainerStatus) -> bool {
    c.state == api::ContainerState::ContainerRunning as i32
}

/// Has the container exited (or never started)?
pub fn exited(c: &api::ContainerStatus) -> bool {
    c.state == api::ContainerState::ContainerExited as i32
}

/// The restart count recorded on a container.
pub fn restart_count(c: &api::ContainerStatus) -> u32 {
    c.annotations
        .get(RESTART_COUNT)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| c.metadata.as_ref().map_or(0, |m| m.attempt))
}

/// Lists the sandboxes and containers carrying `labels` (all of them
/// with an empty map), with each container's status.
pub async fn observe(cri: &Cri, labels: HashMap<String, String>) -> Result<RuntimePod, CriError> {
    let mut cri = cri.clone();
    let mut sandboxes = cri
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                label_selector: labels.clone(),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListPodSandbox"))?
        .into_inner()
        .items;
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let listed = cri
        .runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListContainers"))?
        .into_inner()
        .containers;
    let mut containers = Vec::new();
    for c in listed {
        let status = cri
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await;
        match status {
            Ok(s) => {
                if let Some(mut s) = s.into_inner().status {
                    s.labels.insert(SANDBOX_ID.into(), c.pod_sandbox_id.clone());
                    containers.push(s);
                }
            }
            // Removed meanwhile.
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => {
                return Err(CriError::Call {
                    call: "ContainerStatus",
                    status,
                });
            }
        }
    }
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(RuntimePod {
        sandboxes,
        containers,
    })
}

/// The labels selecting the sandboxes and containers of pod `uid`.
pub fn of_uid(uid: &str) -> HashMap<String, String> {
    HashMap::from([(POD_UID.to_owned(), uid.to_owned())])
}

/// Stops a container with `grace` seconds before SIGKILL (after a
/// preStop command, if one is given); a container already gone is fine.
pub async fn stop_container(cri: &Cri, id: &str, grace: i64) -> Result<(), CriError> {
    let mut cri = cri.clone();
    match cri
        .runtime
        .stop_container(api::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: grace.max(0),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(CriError::Call {
            call: "StopContainer",
            status,
        }),
    }
}

/// Removes a container (stopped or not).
pub async fn remove_container(cri: &Cri, id: &str) -> Result<(), CriError> {
    let mut cri = cri.clone();
    match cri
        .runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: id.to_owned(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(CriError::Call {
            call: "RemoveContainer",
            status,
        }),
    }
}

/// Stops a sandbox (its containers are killed, its network torn down).
pub async fn stop_sandbox(cri: &Cri, id: &str) -> Result<(), CriError> {
    let mut cri = cri.clone();
    match cri
        .runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(CriError::Call {
            call: "StopPodSandbox",
            status,
        }),
    }
}

/// Stops and removes a sandbox and its containers.
pub async fn remove_sandbox(cri: &Cri, id: &str) -> Result<(), CriError> {
    stop_sandbox(cri, id).await?;
    let mut cri = cri.clone();
    match cri
        .runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(CriError::Call {
            call: "RemovePodSandbox",
            status,
        }),
    }
}

/// The status of sandbox `id`.
pub async fn sandbox_status(cri: &Cri, id: &str) -> Result<api::PodSandboxStatus, CriError> {
    let mut cri = cri.clone();
    cri.runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        })
        .await
        .map_err(call("PodSandboxStatus"))?
        .into_inner()
        .status
        .ok_or_else(|| CriError::Call {
            call: "PodSandboxStatus",
            status: tonic::Status::not_found("no status"),
        })
}
