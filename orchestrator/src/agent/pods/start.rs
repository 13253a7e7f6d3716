//! Starting one container: its image pulled per `imagePullPolicy` (with
//! the image-pull back-off: `ErrImagePull`, then `ImagePullBackOff`), its
//! environment and volumes resolved (`CreateContainerConfigError`), then
//! CreateContainer + StartContainer (`CreateContainerError`,
//! `RunContainerError` with the runtime's message) and its postStart
//! hook. What stops a container is recorded as its waiting reason for the
//! status; only runtime errors fail the sync.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;
use tracing::debug;

use super::containers::{self, StartError};
use super::env::{self, Downward, Sources};
use super::events::Type;
use super::images::{self, PullError};
use super::runtime::{self, POD_UID};
use super::sandbox;
use super::sync::SyncError;
use super::{Pods, Waiting};
use crate::agent::cri::api;

/// What syncing one pod's containers needs.
pub(super) struct Ctx<'a> {
    pub p: &'a Pods,
    pub pod: &'a Value,
    pub key: &'a str,
    pub uid: &'a str,
    pub sandbox_id: &'a str,
    pub sandbox_config: &'a api::PodSandboxConfig,
    pub downward: Downward,
    /// The pod's volumes, prepared on first use.
    pub volumes: Option<HashMap<String, PathBuf>>,
}

/// Pulls the image if needed, makes the config, creates and starts the
/// container, runs its postStart hook. What stops it is recorded as the
/// container's waiting reason; only runtime errors fail the sync.
pub(super) async fn start(
    ctx: &mut Ctx<'_>,
    spec: &Value,
    init: bool,
    restart_count: u32,
) -> Result<(), SyncError> {
    let p = ctx.p;
    let name = spec["name"].as_str().unwrap_or("");
    let fail = |reason: &str, message: String| {
        p.events.pod(
            ctx.pod,
            Some(name),
            Type::Warning,
            "Failed",
            &format!(
                "Error: {}",
                if reason == "RunContainerError" || reason == "CreateContainerError" {
                    message.clone()
                } else {
                    reason.to_owned()
                }
            ),
        );
        p.set_waiting(
            ctx.uid,
            name,
            Some(Waiting {
                reason: reason.to_owned(),
                message,
            }),
        );
    };
    let mut sources = Sources::new(
        &p.client,
        ctx.pod["metadata"]["namespace"].as_str().unwrap_or(""),
    );
    if let Err(waiting) = ensure_image(ctx, spec, &mut sources).await {
        p.set_waiting(ctx.uid, name, Some(waiting));
        return Ok(());
    }
    let env = match env::environment(ctx.pod, spec, &mut sources, &ctx.downward).await {
        Ok(env) => env,
        Err(e) => {
            fail("CreateContainerConfigError", e.0);
            return Ok(());
        }
    };
    if ctx.volumes.is_none() {
        // VOLUMES: agent::volumes prepares them (NoVolumes: empty map).
        match p.volumes.prepare(ctx.pod).await {
            Ok(v) => ctx.volumes = Some(v),
            Err(waiting) => {
                if waiting.reason == "CreateContainerConfigError" {
                    fail("CreateContainerConfigError", waiting.message);
                } else {
                    p.events.pod(
                        ctx.pod,
                        None,
                        Type::Warning,
                        "FailedMount",
                        &waiting.message,
                    );
                    p.set_waiting(ctx.uid, name, Some(waiting));
                }
                return Ok(());
            }
        }
    }
    let empty = HashMap::new();
    let inputs = containers::Inputs {
        pod: ctx.pod,
        container: spec,
        init,
        restart_count,
        env,
        volumes: ctx.volumes.as_ref().unwrap_or(&empty),
        grace: sandbox::grace_period(ctx.pod),
    };
    let mut config = match containers::config(&inputs) {
        Ok(c) => c,
        Err(e) => {
            fail("CreateContainerConfigError", e);
            return Ok(());
        }
    };
    if let Err(e) = termination_log(p, ctx.uid, spec, restart_count, &mut config) {
        fail("CreateContainerConfigError", e);
        return Ok(());
    }
    let id = match containers::create_and_start(&p.cri, ctx.sandbox_id, ctx.sandbox_config, config)
        .await
    {
        Ok(id) => id,
        Err(StartError::Create(e)) => {
            fail("CreateContainerError", e.message());
            return Ok(());
        }
        Err(StartError::Start(_, e)) => {
            fail("RunContainerError", e.message());
            return Ok(());
        }
    };
    p.set_waiting(ctx.uid, name, None);
    p.events.pod(
        ctx.pod,
        Some(name),
        Type::Normal,
        "Created",
        &format!("Created container {name}"),
    );
    p.events.pod(
        ctx.pod,
        Some(name),
        Type::Normal,
        "Started",
        &format!("Started container {name}"),
    );
    debug!(
        pod = ctx.key,
        container = name,
        id,
        restart_count,
        "container started"
    );
    if let Some(cmd) = containers::hook_command(&spec["lifecycle"]["postStart"])
        && let Err(error) = containers::exec_hook(&p.cri, &id, &cmd, 30).await
    {
        p.events.pod(
            ctx.pod,
            Some(name),
            Type::Warning,
            "FailedPostStartHook",
            &format!("PostStartHook failed: {error}"),
        );
        let rt = runtime::observe(
            &p.cri,
            HashMap::from([(POD_UID.to_owned(), ctx.uid.to_owned())]),
        )
        .await?;
        if let Some(c) = rt.containers.iter().find(|c| c.id == id) {
            containers::kill(&p.cri, c, Some(spec), sandbox::grace_period(ctx.pod)).await?;
        }
    }
    Ok(())
}

/// Pulls the container's image per its policy; the waiting reason if it
/// is not there.
async fn ensure_image(
    ctx: &Ctx<'_>,
    spec: &Value,
    sources: &mut Sources<'_>,
) -> Result<(), Waiting> {
    let p = ctx.p;
    let name = spec["name"].as_str().unwrap_or("");
    let image = spec["image"].as_str().unwrap_or("");
    let policy = images::policy(spec);
    let present = images::present(&p.cri, image).await.unwrap_or(false);
    let event = |kind, reason: &str, message: String| {
        p.events.pod(ctx.pod, Some(name), kind, reason, &message);
    };
    if policy == "Never" && !present {
        let message = PullError::NeverPull(image.to_owned()).to_string();
        event(Type::Warning, "ErrImageNeverPull", message.clone());
        return Err(Waiting {
            reason: "ErrImageNeverPull".into(),
            message,
        });
    }
    if present && policy != "Always" {
        event(
            Type::Normal,
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        );
        return Ok(());
    }
    let key = format!("{}/image/{image}", ctx.uid);
    let remaining = p
        .backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remaining_since_attempt(&key);
    if let Some(remaining) = remaining {
        let message = format!("Back-off pulling image \"{image}\"");
        if p.waiting_of(ctx.uid, name).map(|w| w.reason) != Some("ImagePullBackOff".into()) {
            event(Type::Normal, "BackOff", message.clone());
        }
        p.queue.add_after(ctx.key, remaining);
        return Err(Waiting {
            reason: "ImagePullBackOff".into(),
            message,
        });
    }
    event(
        Type::Normal,
        "Pulling",
        format!("Pulling image \"{image}\""),
    );
    let started = Instant::now();
    let auths = images::credentials(ctx.pod, image, sources).await;
    match images::pull(&p.cri, image, auths).await {
        Ok(_) => {
            p.backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset(&key);
            event(
                Type::Normal,
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            Ok(())
        }
        Err(error) => {
            let delay = {
                let mut backoff = p.backoff.lock().unwrap_or_else(|e| e.into_inner());
                backoff.next(&key);
                backoff.delay(&key)
            };
            let message = format!("Failed to pull image \"{image}\": {error}");
            event(Type::Warning, "Failed", message.clone());
            event(Type::Warning, "Failed", "Error: ErrImagePull".into());
            p.queue.add_after(ctx.key, delay);
            Err(Waiting {
                reason: "ErrImagePull".into(),
                message,
            })
        }
    }
}

/// The host file behind a container's `terminationMessagePath`
/// (`/dev/termination-log` by default), as the kubelet makes it:
/// `<root_dir>/pods/<uid>/containers/<name>/<restartCount>`, mounted
/// writable, read back for `terminated.message`
/// ([`super::status`]). Its path is kept as an annotation.
fn termination_log(
    p: &Pods,
    uid: &str,
    spec: &Value,
    restart_count: u32,
    config: &mut api::ContainerConfig,
) -> Result<(), String> {
    let target = spec["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    if target.is_empty() {
        return Ok(());
    }
    let name = spec["name"].as_str().unwrap_or("");
    let dir = containers_dir(p, uid).join(name);
    let file = dir.join(restart_count.to_string());
    let made = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(&file, b"")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
    });
    made.map_err(|e| format!("termination log {}: {e}", file.display()))?;
    config.mounts.push(api::Mount {
        container_path: target.to_owned(),
        host_path: file.display().to_string(),
        ..Default::default()
    });
    config
        .annotations
        .insert(runtime::TERMINATION_LOG.into(), file.display().to_string());
    Ok(())
}

/// `<root_dir>/pods/<uid>/containers`: the pod's termination-log files.
pub fn containers_dir(p: &Pods, uid: &str) -> PathBuf {
    p.config.root_dir.join("pods").join(uid).join("containers")
}
