//! Garbage: what CRI has of pods the API no longer has (deleted at once,
//! or while the agent was down) is stopped with its recorded grace period
//! and preStop, then removed; of live pods, sandboxes other than the
//! newest that are not ready, and dead containers beyond the newest two of
//! each name (the last one is `lastState` and `logs --previous`). The log
//! directory of a removed pod is removed with it.

use std::collections::HashMap;

use tracing::info;

use super::Pods;
use super::runtime::{self, POD_NAME, POD_NAMESPACE, POD_UID, RuntimePod};
use super::sync::{SyncError, kill_running};
use crate::agent::cri::api;

/// Kills (with their recorded grace) and removes the containers and
/// sandboxes of `rt`, a pod the API no longer has.
pub async fn remove_runtime_pod(p: &Pods, key: &str, rt: &RuntimePod) -> Result<(), SyncError> {
    kill_running(p, None, rt, 30).await?;
    for c in &rt.containers {
        runtime::remove_container(&p.cri, &c.id).await?;
    }
    let mut uids: Vec<&str> = Vec::new();
    for s in &rt.sandboxes {
        runtime::remove_sandbox(&p.cri, &s.id).await?;
        if let Some(uid) = s.labels.get(POD_UID) {
            uids.push(uid);
        }
    }
    for uid in uids {
        p.forget(uid, key);
        // The pod's logs go with it, as the kubelet removes them.
        let dir = p
            .config
            .pod_log_dir
            .join(format!("{}_{uid}", key.replace('/', "_")));
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %error, "pod logs not removed");
        }
    }
    if !rt.sandboxes.is_empty() {
        info!(pod = key, "removed the containers of a deleted pod");
    }
    Ok(())
}

/// Removes what CRI has of pods the API no longer has, and the dead
/// containers and sandboxes of live pods beyond the ones kept.
pub async fn sweep(p: &Pods) -> Result<(), SyncError> {
    let all = runtime::observe(&p.cri, HashMap::new()).await?;
    let live: HashMap<String, String> = p
        .pods
        .list(|_| true)
        .iter()
        .map(|pod| {
            (
                pod["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                crate::controllers::reflector::key_of(pod),
            )
        })
        .collect();
    let mut by_uid: HashMap<String, RuntimePod> = HashMap::new();
    for s in &all.sandboxes {
        let uid = s.labels.get(POD_UID).cloned().unwrap_or_default();
        by_uid.entry(uid).or_default().sandboxes.push(s.clone());
    }
    for c in &all.containers {
        let uid = c.labels.get(POD_UID).cloned().unwrap_or_default();
        by_uid.entry(uid).or_default().containers.push(c.clone());
    }
    for (uid, rt) in by_uid {
        if uid.is_empty() {
            continue;
        }
        match live.get(&uid) {
            None => {
                let key = rt
                    .sandboxes
                    .first()
                    .map(|s| {
                        format!(
                            "{}/{}",
                            s.labels.get(POD_NAMESPACE).map_or("", String::as_str),
                            s.labels.get(POD_NAME).map_or("", String::as_str)
                        )
                    })
                    .unwrap_or_default();
                remove_runtime_pod(p, &key, &rt).await?;
            }
            Some(_) => collect_dead(p, &rt).await?,
        }
    }
    Ok(())
}

/// Of a live pod: sandboxes other than the newest that are not ready
/// (with their containers), and exited containers beyond the newest two
/// of each name.
async fn collect_dead(p: &Pods, rt: &RuntimePod) -> Result<(), SyncError> {
    let newest = rt.sandboxes.first().map(|s| s.id.clone());
    for s in rt.sandboxes.iter().skip(1) {
        if s.state != api::PodSandboxState::SandboxReady as i32 {
            for c in rt.containers.iter().filter(|c| {
                c.labels.get(runtime::SANDBOX_ID) == Some(&s.id) && !runtime::running(c)
            }) {
                runtime::remove_container(&p.cri, &c.id).await?;
            }
            runtime::remove_sandbox(&p.cri, &s.id).await?;
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in &rt.containers {
        if c.labels.get(runtime::SANDBOX_ID) != newest.as_ref() {
            continue;
        }
        let name = c.metadata.as_ref().map_or("", |m| m.name.as_str());
        let n = seen.entry(name).or_default();
        *n += 1;
        if *n > 2 && !runtime::running(c) {
            runtime::remove_container(&p.cri, &c.id).await?;
        }
    }
    Ok(())
}
