//! The pod status as Kubernetes reports it, from what CRI has: phase
//! (upstream's `getPhase`), conditions (PodScheduled, Initialized,
//! ContainersReady, Ready), `containerStatuses` and
//! `initContainerStatuses` (state, lastState, restartCount, image,
//! imageID, containerID, ready, started), `podIP(s)`, `hostIP(s)`,
//! `startTime`, `qosClass`. Written through `pods/status` only when it
//! changed, so a quiet pod costs no writes.
//!
//! Waiting reasons the runtime cannot tell (`ErrImagePull`,
//! `ImagePullBackOff`, `CrashLoopBackOff`, `CreateContainerConfigError`,
//! `RunContainerError`) come from what the sync recorded
//! ([`Pods::waiting_of`]).

use serde_json::{Map, Value, json};

use super::containers::qos_class;
use super::runtime::{self, RuntimePod};
use super::sandbox::host_network;
use super::sync::SyncError;
use super::{Health, Pods};
use crate::agent::cri::api;
use crate::controllers::reflector::PODS;

/// RFC 3339 (seconds) of a CRI time in nanoseconds.
fn time(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .ok()
        .and_then(|t| t.round(jiff::Unit::Second).ok())
        .map_or(Value::Null, |t| json!(t.to_string()))
}

fn now() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// The node's address: the configured one, else the Node's InternalIP.
pub async fn host_ip(p: &Pods) -> Option<String> {
    if let Some(ip) = p.host_ip.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Some(ip);
    }
    let node = p
        .client
        .get(&format!("/api/v1/nodes/{}", p.config.node_name))
        .await
        .ok()?;
    let ip = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .to_owned();
    *p.host_ip.lock().unwrap_or_else(|e| e.into_inner()) = Some(ip.clone());
    Some(ip)
}

/// The message a dead container left: its termination-log file (at most
/// 4 KiB), else, under `FallbackToLogsOnError` after a failure, the end of
/// its log (80 lines, 2 KiB), as upstream reads them.
fn termination_message(c: &api::ContainerStatus, spec: &Value) -> Option<String> {
    let read_tail = |path: &str, max: u64| -> Option<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        Some(buf)
    };
    if let Some(file) = c.annotations.get(runtime::TERMINATION_LOG)
        && let Ok(bytes) = std::fs::read(file)
        && !bytes.is_empty()
    {
        let bytes = &bytes[..bytes.len().min(4096)];
        return Some(String::from_utf8_lossy(bytes).into_owned());
    }
    if spec["terminationMessagePolicy"] != "FallbackToLogsOnError" || c.exit_code == 0 {
        return None;
    }
    let bytes = read_tail(&c.log_path, 2048)?;
    let text = String::from_utf8_lossy(&bytes);
    // CRI lines: `<time> <stream> <F|P> <text>`.
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    let start = lines.len().saturating_sub(80);
    let message = lines[start..].join("\n");
    (!message.is_empty()).then_some(message)
}

/// The `terminated` state of a dead container.
fn terminated(c: &api::ContainerStatus, spec: &Value) -> Value {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".to_owned()
    } else {
        "Error".to_owned()
    };
    let mut t = json!({
        "exitCode": c.exit_code,
        "reason": reason,
        "startedAt": time(c.started_at),
        "finishedAt": time(c.finished_at),
        "containerID": format!("containerd://{}", c.id),
    });
    if let Some(message) = termination_message(c, spec) {
        t["message"] = json!(message);
    } else if !c.message.is_empty() {
        t["message"] = json!(c.message);
    }
    json!({"terminated": t})
}

/// One container's status. `pending_init`: the pod's init containers are
/// not done (main containers wait with `PodInitializing`).
fn container_status(
    p: &Pods,
    uid: &str,
    spec: &Value,
    rt: &RuntimePod,
    pending_init: bool,
    health: &dyn Health,
) -> Value {
    let name = spec["name"].as_str().unwrap_or("");
    let sandbox = rt.sandboxes.first().map(|s| s.id.as_str()).unwrap_or("");
    let mut instances = rt
        .containers
        .iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name));
    let current = instances.next();
    let previous = instances.next();
    let current = current.filter(|c| {
        c.labels.get(runtime::SANDBOX_ID).map(String::as_str) == Some(sandbox) || previous.is_none()
    });
    let waiting = p.waiting_of(uid, name);
    let waiting_state = |default: &str| match &waiting {
        Some(w) => json!({"waiting": {"reason": w.reason, "message": w.message}}),
        None => json!({"waiting": {"reason": default}}),
    };
    let mut status = json!({
        "name": name,
        "image": spec["image"],
        "imageID": "",
        "ready": false,
        "restartCount": 0,
        "started": false,
        "lastState": {},
    });
    match current {
        None => {
            status["state"] = waiting_state(if pending_init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            });
            if let Some(prev) = rt.latest(name) {
                status["lastState"] = terminated(prev, spec);
                status["restartCount"] = json!(runtime::restart_count(prev) + 1);
            }
        }
        Some(c) => {
            status["containerID"] = json!(format!("containerd://{}", c.id));
            status["imageID"] = json!(c.image_ref);
            status["restartCount"] = json!(runtime::restart_count(c));
            if let Some(prev) = previous {
                status["lastState"] = terminated(prev, spec);
            }
            if runtime::running(c) {
                status["state"] = json!({"running": {"startedAt": time(c.started_at)}});
                status["ready"] = json!(health.ready(&c.id) && health.started(&c.id));
                status["started"] = json!(health.started(&c.id));
            } else if waiting.is_some() {
                // Dead and about to restart (or failing to): waiting, with
                // the dead instance as lastState.
                status["state"] = waiting_state("");
                status["lastState"] = terminated(c, spec);
            } else {
                status["state"] = terminated(c, spec);
            }
        }
    }
    status
}

/// The phase, after upstream's `getPhase`.
fn phase(pod: &Value, init: &[Value], containers: &[Value]) -> &'static str {
    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    for s in init {
        let failed = s["state"]["terminated"]["exitCode"]
            .as_i64()
            .is_some_and(|c| c != 0)
            || s["lastState"]["terminated"]["exitCode"]
                .as_i64()
                .is_some_and(|c| c != 0)
                && !s["state"]["running"].is_object();
        if failed && policy == "Never" {
            return "Failed";
        }
        if s["state"]["terminated"]["exitCode"].as_i64() != Some(0) {
            return "Pending";
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let state = &s["state"];
        if state["running"].is_object() {
            running += 1;
        } else if let Some(code) = state["terminated"]["exitCode"].as_i64() {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if s["lastState"]["terminated"].is_object() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// A condition, keeping its `lastTransitionTime` when its status holds.
fn condition(
    old: &Value,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let previous = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    let since = match previous {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now()),
    };
    let mut c =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// The status of `pod` from `rt`.
pub async fn compute(
    p: &Pods,
    pod: &Value,
    rt: &RuntimePod,
    sandbox: Option<&api::PodSandboxStatus>,
) -> Value {
    let old = &pod["status"];
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let specs = |k: &str| pod["spec"][k].as_array().cloned().unwrap_or_default();
    let health = p.health.as_ref();
    let init: Vec<Value> = specs("initContainers")
        .iter()
        .map(|s| container_status(p, uid, s, rt, false, health))
        .collect();
    let pending_init = init
        .iter()
        .any(|s| s["state"]["terminated"]["exitCode"].as_i64() != Some(0));
    let containers: Vec<Value> = specs("containers")
        .iter()
        .map(|s| container_status(p, uid, s, rt, pending_init, health))
        .collect();
    let phase = phase(pod, &init, &containers);
    let names = |list: &[Value], keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        list.iter()
            .filter(|s| keep(s))
            .map(|s| s["name"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let not_init = names(&init, &|s| {
        s["state"]["terminated"]["exitCode"].as_i64() != Some(0)
    });
    let unready = names(&containers, &|s| s["ready"] != true);
    let completed = matches!(phase, "Succeeded" | "Failed");
    let ready_reason = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_message = (!unready.is_empty() && !completed)
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let initialized = not_init.is_empty() || completed;
    let mut conditions = vec![
        condition(
            old,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    not_init.join(" ")
                )
            }),
        ),
        condition(
            old,
            "Ready",
            unready.is_empty() && !completed,
            (!unready.is_empty() || completed).then_some(ready_reason),
            unready_message.clone(),
        ),
        condition(
            old,
            "ContainersReady",
            unready.is_empty() && !completed,
            (!unready.is_empty() || completed).then_some(ready_reason),
            unready_message,
        ),
    ];
    // Conditions of others (PodScheduled from the scheduler, readiness
    // gates) stay; PodScheduled is there.
    let ours = ["Initialized", "Ready", "ContainersReady"];
    let mut others: Vec<Value> = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !ours.contains(&c["type"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    if !others.iter().any(|c| c["type"] == "PodScheduled") {
        others.push(condition(old, "PodScheduled", true, None, None));
    }
    conditions.extend(others);
    let mut status: Map<String, Value> = old.as_object().cloned().unwrap_or_default();
    status.insert("phase".into(), json!(phase));
    status.insert("conditions".into(), json!(conditions));
    status.insert("containerStatuses".into(), json!(containers));
    if init.is_empty() {
        status.remove("initContainerStatuses");
    } else {
        status.insert("initContainerStatuses".into(), json!(init));
    }
    if let Some(host) = host_ip(p).await {
        status.insert("hostIP".into(), json!(host));
        status.insert("hostIPs".into(), json!([{"ip": host}]));
    }
    let mut ips: Vec<String> = Vec::new();
    if host_network(pod) {
        ips.extend(
            status
                .get("hostIP")
                .and_then(Value::as_str)
                .map(str::to_owned),
        );
    } else if let Some(net) = sandbox.and_then(|s| s.network.as_ref()) {
        ips.extend(std::iter::once(net.ip.clone()).filter(|ip| !ip.is_empty()));
        ips.extend(net.additional_ips.iter().map(|ip| ip.ip.clone()));
    }
    if let Some(first) = ips.first() {
        status.insert("podIP".into(), json!(first));
        status.insert(
            "podIPs".into(),
            json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()),
        );
    }
    if status.get("startTime").is_none_or(Value::is_null) {
        status.insert("startTime".into(), json!(now()));
    }
    if status.get("qosClass").is_none_or(Value::is_null) {
        status.insert("qosClass".into(), json!(qos_class(pod)));
    }
    Value::Object(status)
}

/// Computes the status and writes it if it changed.
pub async fn update(
    p: &Pods,
    pod: &Value,
    rt: &RuntimePod,
    sandbox: Option<&api::PodSandboxStatus>,
) -> Result<(), SyncError> {
    let status = compute(p, pod, rt, sandbox).await;
    if status == pod["status"] {
        return Ok(());
    }
    let key = crate::controllers::reflector::key_of(pod);
    let path = format!("{}/status", PODS.path(&key));
    let mut body = pod.clone();
    body["status"] = status.clone();
    match p.client.put(&path, &body).await {
        Ok(written) => {
            // Later syncs compare with what was written, not a stale cache.
            let rv = crate::controllers::reflector::rv_of(&written);
            p.pods.wait_for(rv, std::time::Duration::from_secs(2)).await;
            Ok(())
        }
        Err(e) if e.is_conflict() => {
            let mut fresh = p.client.get(&PODS.path(&key)).await?;
            if fresh["metadata"]["uid"] != pod["metadata"]["uid"] {
                return Ok(());
            }
            fresh["status"] = status;
            p.client.put(&path, &fresh).await?;
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
