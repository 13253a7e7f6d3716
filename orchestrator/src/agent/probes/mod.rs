//! Container probes (the kubelet's `prober`): one worker per probe kind
//! (liveness, readiness, startup) per running container, each running
//! its check every `periodSeconds` after `initialDelaySeconds`, with
//! `timeoutSeconds`, and changing its reported result only after
//! `successThreshold` / `failureThreshold` equal results in a row.
//!
//! Results, by container ID, as the kubelet's results managers keep them:
//! - [`Probes::ready`]: false until the readiness probe succeeds; true at
//!   once when the container has none.
//! - [`Probes::started`]: false until the startup probe succeeds; true at
//!   once when the container has none. Liveness and readiness do not run
//!   before the container has started.
//! - [`Probes::liveness_failure`]: the message once the liveness probe
//!   failed `failureThreshold` times, or the startup probe did; the pods
//!   part kills and restarts the container per its restart policy. That
//!   worker then stops until [`Probes::ensure`] sees a new container ID.
//!
//! Every change sends the pod key on the channel given to [`Probes::new`],
//! so the pods part re-syncs that pod.
//!
//! Checks: `exec` through CRI `ExecSync` (with the timeout), `httpGet`
//! ([`http`]: HTTP/1.1 with hyper; HTTPS without certificate verification, as the
//! kubelet; 200–399 is success; `kube-probe/1.32` user agent; named
//! ports resolved from the container's ports), `tcpSocket` (a connect).
//!
//! # Current limitations
//! `grpc` probes are not run: they count as success, with a warning.
//! Redirects are not followed (a 3xx is a success, as upstream reports a
//! redirect to another host). No `terminationGracePeriodSeconds` per
//! probe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::cri::{Cri, api};
use http::{HttpRequest, http_get};

pub mod http;

/// The three kinds of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Startup => "startupProbe",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// A probe's timing and thresholds (upstream's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    /// From a probe spec: period 10 s, timeout 1 s, success 1, failure 3;
    /// liveness and startup always need one success.
    pub fn of(probe: &Value, kind: Kind) -> Timing {
        let secs =
            |field: &str, default: u64, min: u64| probe[field].as_u64().unwrap_or(default).max(min);
        let success = if kind == Kind::Readiness {
            secs("successThreshold", 1, 1)
        } else {
            1
        };
        Timing {
            initial_delay: Duration::from_secs(secs("initialDelaySeconds", 0, 0)),
            period: Duration::from_secs(secs("periodSeconds", 10, 1)),
            timeout: Duration::from_secs(secs("timeoutSeconds", 1, 1)),
            success_threshold: success as u32,
            failure_threshold: secs("failureThreshold", 3, 1) as u32,
        }
    }
}

/// What one container's probes report.
#[derive(Debug)]
struct Entry {
    pod_key: String,
    container_name: String,
    ready: bool,
    started: bool,
    liveness_failure: Option<String>,
    workers: Vec<AbortHandle>,
}

struct Inner {
    /// `None`: exec probes fail (see [`Probes::without_runtime`]).
    cri: Option<Cri>,
    tx: UnboundedSender<String>,
    containers: Mutex<HashMap<String, Entry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(containers) = self.containers.get_mut() {
            for entry in containers.values() {
                entry.workers.iter().for_each(AbortHandle::abort);
            }
        }
    }
}

/// The probe workers of this node (cheap to clone, shared).
#[derive(Clone)]
pub struct Probes {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

/// Where a container's network checks go.
#[derive(Debug, Clone)]
struct Target {
    pod_ip: String,
    container: Value,
    container_id: String,
}

impl Probes {
    /// Probes running exec checks through `cri`; a changed result sends
    /// the pod key on `tx`.
    pub fn new(cri: Cri, tx: UnboundedSender<String>) -> Probes {
        Probes::build(Some(cri), tx)
    }

    /// Probes without a container runtime: exec probes fail, HTTP and TCP
    /// probes run (tests of the network checks; a node whose runtime is
    /// not up yet).
    pub fn without_runtime(tx: UnboundedSender<String>) -> Probes {
        Probes::build(None, tx)
    }

    fn build(cri: Option<Cri>, tx: UnboundedSender<String>) -> Probes {
        Probes {
            inner: Arc::new(Inner {
                cri,
                tx,
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the workers of a running container (`container_spec` is its
    /// entry in `spec.containers`) unless they run already; the workers of
    /// an earlier container of the same name in the pod stop.
    pub fn ensure(
        &self,
        pod_key: &str,
        pod_ip: &str,
        container_name: &str,
        container_id: &str,
        container_spec: &Value,
    ) {
        let mut containers = self.lock();
        if containers.contains_key(container_id) {
            return;
        }
        containers.retain(|_, e| {
            let stale = e.pod_key == pod_key && e.container_name == container_name;
            if stale {
                e.workers.iter().for_each(AbortHandle::abort);
            }
            !stale
        });
        let target = Target {
            pod_ip: pod_ip.to_owned(),
            container: container_spec.clone(),
            container_id: container_id.to_owned(),
        };
        let mut workers = Vec::new();
        for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
            let probe = &container_spec[kind.field()];
            if !probe.is_object() {
                continue;
            }
            let worker = Worker {
                probes: Arc::downgrade(&self.inner),
                kind,
                probe: probe.clone(),
                timing: Timing::of(probe, kind),
                target: target.clone(),
            };
            workers.push(tokio::spawn(worker.run()).abort_handle());
        }
        debug!(
            pod = pod_key,
            container = container_name,
            workers = workers.len(),
            "probes started"
        );
        containers.insert(
            container_id.to_owned(),
            Entry {
                pod_key: pod_key.to_owned(),
                container_name: container_name.to_owned(),
                ready: !container_spec["readinessProbe"].is_object(),
                started: !container_spec["startupProbe"].is_object(),
                liveness_failure: None,
                workers,
            },
        );
    }

    /// Stops the workers of every container of the pod and drops their
    /// results.
    pub fn forget(&self, pod_key: &str) {
        self.lock().retain(|_, e| {
            let gone = e.pod_key == pod_key;
            if gone {
                e.workers.iter().for_each(AbortHandle::abort);
            }
            !gone
        });
    }

    /// Whether the container is ready (false for a container never
    /// passed to [`Probes::ensure`]).
    pub fn ready(&self, container_id: &str) -> bool {
        self.lock().get(container_id).is_some_and(|e| e.ready)
    }

    /// Whether the container's startup probe succeeded (or it has none).
    pub fn started(&self, container_id: &str) -> bool {
        self.lock().get(container_id).is_some_and(|e| e.started)
    }

    /// Why the container must be restarted: `Liveness probe failed: ...`
    /// or `Startup probe failed: ...`.
    pub fn liveness_failure(&self, container_id: &str) -> Option<String> {
        self.lock()
            .get(container_id)
            .and_then(|e| e.liveness_failure.clone())
    }
}

/// One probe of one container.
struct Worker {
    probes: Weak<Inner>,
    kind: Kind,
    probe: Value,
    timing: Timing,
    target: Target,
}

impl Worker {
    async fn run(self) {
        tokio::time::sleep(self.timing.initial_delay).await;
        let mut last: Option<bool> = None;
        let mut run = 0u32;
        let mut interval = tokio::time::interval(self.timing.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(inner) = self.probes.upgrade() else {
                return;
            };
            let started = Probes {
                inner: inner.clone(),
            }
            .started(&self.target.container_id);
            if self.kind == Kind::Startup && started {
                return;
            }
            if self.kind != Kind::Startup && !started {
                continue;
            }
            let cri = inner.cri.clone();
            drop(inner);
            let outcome = check(cri.as_ref(), &self.probe, &self.timing, &self.target).await;
            let ok = outcome.is_ok();
            if last == Some(ok) {
                run = run.saturating_add(1);
            } else {
                last = Some(ok);
                run = 1;
            }
            if let Err(message) = &outcome {
                debug!(kind = self.kind.title(), container = %self.target.container_id, %message, "probe failed");
            }
            let threshold = if ok {
                self.timing.success_threshold
            } else {
                self.timing.failure_threshold
            };
            if run < threshold {
                continue;
            }
            if !self.report(outcome) {
                return;
            }
        }
    }

    /// Records a result that passed its threshold; false when this worker
    /// is done (startup succeeded or failed, liveness failed).
    fn report(&self, outcome: Result<(), String>) -> bool {
        let Some(inner) = self.probes.upgrade() else {
            return false;
        };
        let probes = Probes { inner };
        let mut containers = probes.lock();
        let Some(entry) = containers.get_mut(&self.target.container_id) else {
            return false;
        };
        let failure = |message: &str| format!("{} probe failed: {message}", self.kind.title());
        let (changed, more) = match (self.kind, &outcome) {
            (Kind::Readiness, _) => {
                let changed = entry.ready != outcome.is_ok();
                entry.ready = outcome.is_ok();
                (changed, true)
            }
            (Kind::Startup, Ok(())) => {
                entry.started = true;
                (true, false)
            }
            (Kind::Liveness, Ok(())) => (false, true),
            (Kind::Liveness | Kind::Startup, Err(message)) => {
                entry.liveness_failure = Some(failure(message));
                (true, false)
            }
        };
        if changed {
            let key = entry.pod_key.clone();
            drop(containers);
            let _ = probes.inner.tx.send(key);
        }
        more
    }
}

/// Runs one check: `Err` carries the failure message.
async fn check(
    cri: Option<&Cri>,
    probe: &Value,
    timing: &Timing,
    target: &Target,
) -> Result<(), String> {
    if probe["exec"].is_object() {
        let cri = cri.ok_or("no container runtime to run an exec probe in")?;
        exec(cri.clone(), &target.container_id, probe, timing.timeout).await
    } else if probe["httpGet"].is_object() {
        let get = &probe["httpGet"];
        let port = resolve_port(&get["port"], &target.container)?;
        let host = get["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(&target.pod_ip);
        let request = HttpRequest::of(get, host, port);
        match tokio::time::timeout(timing.timeout, http_get(&request)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                request.url
            )),
        }
    } else if probe["tcpSocket"].is_object() {
        let t = &probe["tcpSocket"];
        let port = resolve_port(&t["port"], &target.container)?;
        let host = t["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(&target.pod_ip);
        let addr = join_host_port(host, port);
        match tokio::time::timeout(timing.timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", plain_io_error(&e))),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        }
    } else if probe["grpc"].is_object() {
        warn!(container = %target.container_id, "gRPC probes are not supported yet; counted as success");
        Ok(())
    } else {
        Err("probe has no exec, httpGet, tcpSocket or grpc handler".into())
    }
}

/// `std::io::Error` text without Rust's ` (os error N)` suffix.
pub(crate) fn plain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text.to_lowercase(),
    }
}

/// `host:port`, bracketing IPv6 addresses.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &Value, container: &Value) -> Result<u16, String> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).map_err(|_| format!("invalid port number: {n}"));
    }
    let name = port.as_str().unwrap_or("");
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "couldn't find port: {name} in {}",
                container["name"].as_str().unwrap_or("")
            )
        })
}

/// The CRI `ExecSync` call of an exec probe.
pub fn exec_request(container_id: &str, probe: &Value, timeout: Duration) -> api::ExecSyncRequest {
    api::ExecSyncRequest {
        container_id: container_id.to_owned(),
        cmd: probe["exec"]["command"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or("").to_owned())
            .collect(),
        timeout: timeout.as_secs() as i64,
    }
}

async fn exec(
    mut cri: Cri,
    container_id: &str,
    probe: &Value,
    timeout: Duration,
) -> Result<(), String> {
    let request = exec_request(container_id, probe, timeout);
    let command = request.cmd.join(" ");
    // The runtime enforces the timeout; this one covers a runtime that hangs.
    let call = cri.runtime.exec_sync(request);
    match tokio::time::timeout(timeout + Duration::from_secs(2), call).await {
        Err(_) => Err(format!("command \"{command}\" timed out")),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            Err(format!("command \"{command}\" timed out"))
        }
        Ok(Err(status)) => Err(format!("exec \"{command}\": {}", status.message())),
        Ok(Ok(response)) => {
            let r = response.into_inner();
            if r.exit_code == 0 {
                return Ok(());
            }
            let mut output = String::from_utf8_lossy(&r.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&r.stderr));
            if output.trim().is_empty() {
                Err(format!("command \"{command}\" exited with {}", r.exit_code))
            } else {
                Err(output.trim_end().to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timing_defaults_and_overrides() {
        let t = Timing::of(&json!({}), Kind::Readiness);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let t = Timing::of(
            &json!({"successThreshold": 3, "periodSeconds": 0}),
            Kind::Liveness,
        );
        assert_eq!(t.success_threshold, 1, "liveness needs one success");
        assert_eq!(t.period, Duration::from_secs(1));
    }

    #[test]
    fn exec_command_construction() {
        let probe = json!({"exec": {"command": ["sh", "-c", "test -f /tmp/ok"]}});
        let r = exec_request("abc", &probe, Duration::from_secs(5));
        assert_eq!(r.container_id, "abc");
        assert_eq!(r.cmd, ["sh", "-c", "test -f /tmp/ok"]);
        assert_eq!(r.timeout, 5);
    }

    #[test]
    fn named_ports() {
        let c = json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]});
        assert_eq!(resolve_port(&json!("http"), &c).unwrap(), 8080);
        assert_eq!(resolve_port(&json!(81), &c).unwrap(), 81);
        assert!(resolve_port(&json!("nope"), &c).is_err());
    }
}
