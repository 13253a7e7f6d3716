//! One pod's sync, after upstream's `computePodActions` and
//! `SyncPod`: compare the spec with what CRI reports and act.
//!
//! 1. A pod gone from the API: its containers are stopped (their recorded
//!    grace period and preStop) and its sandboxes removed.
//! 2. A pod with `deletionTimestamp`: graceful termination (preStop,
//!    SIGTERM, SIGKILL after the grace period), sandbox stopped and
//!    removed, then the final DELETE (`gracePeriodSeconds: 0`, the pod's
//!    uid as precondition) that lets `kubectl delete` return.
//! 3. A pod already `Succeeded`/`Failed`: everything stays stopped.
//! 4. Otherwise: a ready sandbox (created, or re-created with the next
//!    attempt when it died — its containers killed first), then the init
//!    containers one after another to completion, then every container
//!    per `restartPolicy` with the crash-loop back-off; a container whose
//!    spec changed or whose liveness probe failed is killed and restarted.
//!
//! The status is computed and written after every sync ([`super::status`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::containers;
use super::env::Downward;
use super::events::Type;
use super::gc::remove_runtime_pod;
use super::runtime::{self, CONTAINER_HASH, GRACE_PERIOD, POD_NAME, POD_NAMESPACE, RuntimePod};
use super::sandbox;
use super::start::{Ctx, start};
use super::status;
use super::{Pods, Waiting};
use crate::agent::cri::{CriError, api};
use crate::controllers::client::ClientError;

/// A sync that failed (retried with the queue's back-off).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A CRI call.
    #[error(transparent)]
    Cri(#[from] CriError),
    /// An API call.
    #[error(transparent)]
    Api(#[from] ClientError),
}

/// Syncs the pod at `key` (`namespace/name`).
pub async fn sync_pod(p: &Pods, key: &str) -> Result<(), SyncError> {
    let Some(pod) = p.pods.get(key) else {
        return remove_gone(p, key).await;
    };
    let pod: &Value = &pod;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let rt = runtime::observe(&p.cri, runtime::of_uid(&uid)).await?;
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return terminate(p, pod, key, &rt).await;
    }
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        stop_all(p, pod, &rt).await?;
        return Ok(());
    }
    let rt = match ensure_sandbox(p, pod, rt).await {
        Ok(rt) => rt,
        Err(e) => {
            // Containers wait (ContainerCreating) while the sandbox fails.
            status::update(p, pod, &RuntimePod::default(), None).await?;
            return Err(e);
        }
    };
    let Some(sandbox) = rt.ready_sandbox().cloned() else {
        // The pod is done (restartPolicy Never after its sandbox died):
        // report it as it is.
        return status::update(p, pod, &rt, None).await;
    };
    let attempt = sandbox.metadata.as_ref().map_or(0, |m| m.attempt);
    let sandbox_config = sandbox::config(&p.config, pod, attempt);
    let sandbox_status = runtime::sandbox_status(&p.cri, &sandbox.id).await?;
    let downward = downward(p, pod, &sandbox_status).await;
    let mut ctx = Ctx {
        p,
        pod,
        key,
        uid: &uid,
        sandbox_id: &sandbox.id,
        sandbox_config: &sandbox_config,
        downward,
        volumes: None,
    };
    // VOLUMES: contents of configMap/secret/downwardAPI volumes follow
    // their sources.
    if rt.containers.iter().any(runtime::running) {
        p.volumes.refresh(pod).await;
    }
    if init_containers_done(&mut ctx, &rt).await? {
        containers(&mut ctx, &rt).await?;
    }
    let rt = runtime::observe(&p.cri, runtime::of_uid(&uid)).await?;
    status::update(p, pod, &rt, Some(&sandbox_status)).await?;
    // A pod that completed keeps its containers for their logs; its
    // sandbox is stopped (its IP released), as upstream does.
    if let Some(latest) = p.pods.get(key)
        && matches!(
            latest["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
    {
        runtime::stop_sandbox(&p.cri, &sandbox.id).await?;
    }
    Ok(())
}

/// The addresses and node figures the downward API reads.
async fn downward(p: &Pods, pod: &Value, sandbox: &api::PodSandboxStatus) -> Downward {
    let mut pod_ips = Vec::new();
    if let Some(net) = &sandbox.network {
        if !net.ip.is_empty() {
            pod_ips.push(net.ip.clone());
        }
        pod_ips.extend(net.additional_ips.iter().map(|ip| ip.ip.clone()));
    }
    let host_ip = status::host_ip(p).await.unwrap_or_default();
    let pod_ip = pod_ips.first().cloned().unwrap_or_else(|| host_ip.clone());
    // A `resourceFieldRef` to a limit left unset reads the node's
    // allocatable, as upstream's downward API does.
    let mut allocatable = HashMap::new();
    if pod["spec"].to_string().contains("resourceFieldRef")
        && let Ok(node) = p
            .client
            .get(&format!("/api/v1/nodes/{}", p.config.node_name))
            .await
    {
        for (k, v) in node["status"]["allocatable"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if let Some(v) = v.as_str() {
                allocatable.insert(k.clone(), v.to_owned());
            }
        }
    }
    Downward {
        pod_ip,
        pod_ips,
        host_ip,
        allocatable,
    }
}

/// Makes sure the newest sandbox is ready, creating the next one
/// otherwise; the pod as CRI then has it.
async fn ensure_sandbox(p: &Pods, pod: &Value, rt: RuntimePod) -> Result<RuntimePod, SyncError> {
    let ready = rt
        .sandboxes
        .iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
        .count();
    if rt.ready_sandbox().is_some() && ready == 1 {
        return Ok(rt);
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let never = pod["spec"]["restartPolicy"].as_str() == Some("Never");
    let ran = rt
        .containers
        .iter()
        .any(|c| !c.annotations.contains_key(runtime::INIT));
    if never && ran {
        // Upstream does not re-create the sandbox of a pod that may not
        // restart its containers: it is done.
        stop_all(p, pod, &rt).await?;
        return Ok(rt);
    }
    if !rt.sandboxes.is_empty() {
        p.events.pod(
            pod,
            None,
            Type::Normal,
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.",
        );
        stop_all(p, pod, &rt).await?;
    }
    let attempt = rt
        .sandboxes
        .first()
        .and_then(|s| s.metadata.as_ref())
        .map_or(0, |m| m.attempt + 1);
    let config = sandbox::config(&p.config, pod, attempt);
    let log_dir = sandbox::log_directory(&p.config, pod);
    if let Err(error) = std::fs::create_dir_all(&log_dir) {
        warn!(dir = %log_dir.display(), %error, "pod log directory not created");
    }
    let mut cri = p.cri.clone();
    let created = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await;
    if let Err(status) = created {
        let message = format!("Failed to create pod sandbox: {}", status.message());
        p.events
            .pod(pod, None, Type::Warning, "FailedCreatePodSandBox", &message);
        return Err(CriError::Call {
            call: "RunPodSandbox",
            status,
        }
        .into());
    }
    info!(pod = %crate::controllers::reflector::key_of(pod), uid, attempt, "sandbox created");
    Ok(runtime::observe(&p.cri, runtime::of_uid(uid)).await?)
}

/// Stops every running container of the pod (gracefully) and its sandboxes.
async fn stop_all(p: &Pods, pod: &Value, rt: &RuntimePod) -> Result<(), SyncError> {
    let grace = sandbox::grace_period(pod);
    kill_running(p, Some(pod), rt, grace).await?;
    for s in &rt.sandboxes {
        if s.state == api::PodSandboxState::SandboxReady as i32 {
            runtime::stop_sandbox(&p.cri, &s.id).await?;
        }
    }
    Ok(())
}

/// Stops the running containers of `rt` at once, each with its preStop.
pub(super) async fn kill_running(
    p: &Pods,
    pod: Option<&Value>,
    rt: &RuntimePod,
    grace: i64,
) -> Result<(), SyncError> {
    let kills = rt
        .containers
        .iter()
        .filter(|c| runtime::running(c))
        .map(|c| {
            let name = c.metadata.as_ref().map_or("", |m| m.name.as_str());
            let spec = pod.and_then(|pod| spec_of(pod, name));
            if let Some(pod) = pod {
                p.events.pod(
                    pod,
                    Some(name),
                    Type::Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
            }
            let grace = match pod {
                Some(_) => grace,
                None => c
                    .annotations
                    .get(GRACE_PERIOD)
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(grace),
            };
            containers::kill(&p.cri, c, spec, grace)
        });
    for result in join_all(kills).await {
        result?;
    }
    Ok(())
}

/// The spec of the container `name` of `pod` (init or not).
fn spec_of<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == name)
}

/// Graceful termination of a pod being deleted, then its final delete.
async fn terminate(p: &Pods, pod: &Value, key: &str, rt: &RuntimePod) -> Result<(), SyncError> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    stop_all(p, pod, rt).await?;
    for c in &rt.containers {
        runtime::remove_container(&p.cri, &c.id).await?;
    }
    for s in &rt.sandboxes {
        runtime::remove_sandbox(&p.cri, &s.id).await?;
    }
    let path = crate::controllers::reflector::PODS.path(key);
    let options = json!({
        "kind": "DeleteOptions", "apiVersion": "v1",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": uid},
    });
    match p.client.delete(&path, &options).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() || e.is_conflict() => {}
        Err(e) => return Err(e.into()),
    }
    p.forget(uid, key);
    info!(pod = key, uid, "pod terminated and deleted");
    Ok(())
}

/// A pod no longer in the API: stop and remove what CRI has of it.
async fn remove_gone(p: &Pods, key: &str) -> Result<(), SyncError> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    let labels = HashMap::from([
        (POD_NAMESPACE.to_owned(), ns.to_owned()),
        (POD_NAME.to_owned(), name.to_owned()),
    ]);
    let rt = runtime::observe(&p.cri, labels).await?;
    remove_runtime_pod(p, key, &rt).await
}

/// Runs the init containers one after another; true once all succeeded.
async fn init_containers_done(ctx: &mut Ctx<'_>, rt: &RuntimePod) -> Result<bool, SyncError> {
    let inits: Vec<Value> = ctx.pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let never = ctx.pod["spec"]["restartPolicy"].as_str() == Some("Never");
    for spec in &inits {
        let name = spec["name"].as_str().unwrap_or("");
        let current = rt.named(ctx.sandbox_id, name).next();
        match current {
            Some(c) if runtime::exited(c) && c.exit_code == 0 => continue,
            Some(c) if runtime::running(c) => return Ok(false),
            Some(c) => {
                if !never {
                    restart(ctx, spec, true, c).await?;
                }
                return Ok(false);
            }
            None => {
                let count = rt.latest(name).map_or(0, |c| runtime::restart_count(c) + 1);
                start(ctx, spec, true, count).await?;
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Syncs every container per `restartPolicy`.
async fn containers(ctx: &mut Ctx<'_>, rt: &RuntimePod) -> Result<(), SyncError> {
    let specs: Vec<Value> = ctx.pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let policy = ctx.pod["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_owned();
    for spec in &specs {
        let name = spec["name"].as_str().unwrap_or("");
        match rt.named(ctx.sandbox_id, name).next() {
            Some(c) if runtime::running(c) => {
                let changed = c.annotations.get(CONTAINER_HASH).map(String::as_str)
                    != Some(containers::hash(spec).as_str());
                let liveness = ctx.p.health.liveness_failure(&c.id);
                if changed || liveness.is_some() {
                    let message = match &liveness {
                        Some(why) => format!(
                            "Container {name} failed liveness probe, will be restarted: {why}"
                        ),
                        None => format!("Container {name} definition changed, will be restarted"),
                    };
                    ctx.p
                        .events
                        .pod(ctx.pod, Some(name), Type::Normal, "Killing", &message);
                    containers::kill(&ctx.p.cri, c, Some(spec), sandbox::grace_period(ctx.pod))
                        .await?;
                    continue;
                }
                let ip = ctx.downward.pod_ip.clone();
                ctx.p.health.ensure(ctx.key, &ip, name, &c.id, spec);
            }
            Some(c) => {
                let restart_it = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => c.exit_code != 0,
                    _ => true,
                };
                if restart_it {
                    restart(ctx, spec, false, c).await?;
                }
            }
            None => {
                let count = rt.latest(name).map_or(0, |c| runtime::restart_count(c) + 1);
                start(ctx, spec, false, count).await?;
            }
        }
    }
    Ok(())
}

/// Restarts a dead container unless it is in its crash-loop back-off.
async fn restart(
    ctx: &mut Ctx<'_>,
    spec: &Value,
    init: bool,
    dead: &api::ContainerStatus,
) -> Result<(), SyncError> {
    let name = spec["name"].as_str().unwrap_or("");
    let key = format!("{}/{name}", ctx.uid);
    let finished = if dead.finished_at > 0 {
        dead.finished_at
    } else {
        dead.created_at
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let since = Duration::from_nanos(u64::try_from(now - finished).unwrap_or(0));
    let remaining = ctx
        .p
        .backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remaining(&key, since);
    if let Some(remaining) = remaining {
        let delay = ctx
            .p
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delay(&key);
        let meta = &ctx.pod["metadata"];
        let who = format!(
            "pod={}_{}({})",
            meta["name"].as_str().unwrap_or(""),
            meta["namespace"].as_str().unwrap_or(""),
            ctx.uid
        );
        let waiting = Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {} restarting failed container={name} {who}",
                human(delay)
            ),
        };
        if ctx
            .p
            .waiting_of(ctx.uid, name)
            .as_ref()
            .map(|w| w.reason.as_str())
            != Some("CrashLoopBackOff")
        {
            ctx.p.events.pod(
                ctx.pod,
                Some(name),
                Type::Warning,
                "BackOff",
                &format!("Back-off restarting failed container {name} in {who}"),
            );
        }
        ctx.p.set_waiting(ctx.uid, name, Some(waiting));
        ctx.p.queue.add_after(ctx.key, remaining);
        return Ok(());
    }
    ctx.p
        .backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .next(&key);
    // Only the last dead instance is kept (for `logs --previous` and
    // `lastState`); the sweep removes older ones.
    start(ctx, spec, init, runtime::restart_count(dead) + 1).await
}

/// "10s", "1m20s", "5m0s", as Go prints durations.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}
