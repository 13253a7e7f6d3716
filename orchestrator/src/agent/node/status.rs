//! The Node's `status` as this agent reports it, built from a
//! [`Machine`] reading and the runtime's state: capacity and allocatable,
//! conditions, addresses, `nodeInfo`, the agent's endpoint.
//!
//! Pure functions, so the rules are tested without a machine: conditions
//! keep their `lastTransitionTime` while their status holds, and
//! [`unchanged`] compares two statuses without their heartbeat times, which
//! is how the agent decides that a heartbeat has nothing to write.
//!
//! Thresholds are the hard eviction thresholds of [`super::eviction`]
//! (the kubelet's defaults unless `--eviction-hard` says otherwise).
//! Allocatable is capacity less those thresholds (nothing is reserved for
//! the system).

use std::net::IpAddr;

use serde_json::{Value, json};

use super::eviction::Thresholds;
use super::machine::{Machine, architecture};
use crate::agent::Config;

/// Pods a node accepts (the kubelet's `maxPods` default).
pub const MAX_PODS: u64 = 110;

/// The version this agent reports as its kubelet's (the served API's).
pub fn kubelet_version() -> String {
    let (major, minor) = crate::api::discovery::KUBERNETES_VERSION;
    format!("v{major}.{minor}.0-cairn")
}

/// What the container runtime said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `containerd://1.6.20` (empty until the runtime answered once).
    pub version: String,
    /// `None` when it reports RuntimeReady and NetworkReady; otherwise why not.
    pub not_ready: Option<String>,
}

/// Everything the status depends on besides the previous status.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub config: &'a Config,
    pub machine: &'a Machine,
    pub runtime: &'a Runtime,
    pub ip: IpAddr,
    pub hostname: &'a str,
    /// The device's config outcome (cairn-init's status line), if known.
    pub config_status: Option<&'a str>,
}

/// The node condition that says whether the device runs the `config.toml`
/// on its partition (False, as the pressure conditions when all is well)
/// or fell back to the last known good copy or the defaults (True).
pub const INVALID_CONFIG: &str = "InvalidConfig";

/// `(status, reason, message)` of [`INVALID_CONFIG`] for cairn-init's
/// status line: `ok config.toml`, `last-known-good <error>`, `defaults
/// <error>`, or `defaults` alone (no file: a choice, not an error).
pub fn config_condition(line: &str) -> (bool, String, String) {
    let line = line.trim();
    let (source, error) = line.split_once(' ').unwrap_or((line, ""));
    match source {
        "ok" | "file" => (
            false,
            "ConfigLoaded".into(),
            "config.toml is valid and in use".into(),
        ),
        "last-known-good" | "lastknowngood" => (
            true,
            "LastKnownGood".into(),
            format!(
                "config.toml is not used: {error}; running with the last known good configuration"
            ),
        ),
        _ if error.is_empty() => (
            false,
            "ConfigDefaults".into(),
            "no config.toml: running with the defaults".into(),
        ),
        _ => (
            true,
            "ConfigDefaults".into(),
            format!("config.toml is not used: {error}; running with the defaults"),
        ),
    }
}

/// A quantity of bytes in the canonical binary-SI spelling the API uses.
fn bytes_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// `share`% of `n`.
fn percent(n: u64, share: u64) -> u64 {
    u64::try_from(u128::from(n) * u128::from(share) / 100).unwrap_or(u64::MAX)
}

/// Capacity and allocatable.
fn resources(m: &Machine, limits: &Thresholds) -> (Value, Value) {
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_kib),
        "ephemeral-storage": bytes_quantity(m.disk_bytes),
        "pods": MAX_PODS.to_string(),
    });
    let disk_reserved = percent(m.disk_bytes, limits.nodefs_percent);
    // Whole KiB, as capacity.
    let disk_allocatable = m.disk_bytes.saturating_sub(disk_reserved) / 1024 * 1024;
    let allocatable = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_kib.saturating_sub(limits.memory_kib)),
        "ephemeral-storage": bytes_quantity(disk_allocatable),
        "pods": MAX_PODS.to_string(),
    });
    (capacity, allocatable)
}

/// `(type, status, reason, message)` of each condition, as upstream words them.
fn condition_states(facts: &Facts<'_>) -> Vec<(&'static str, bool, String, String)> {
    let (m, runtime) = (facts.machine, facts.runtime);
    let limits = &facts.config.eviction_hard;
    let memory = m.memory_kib > 0 && m.memory_available_kib < limits.memory_kib;
    let disk =
        m.disk_bytes > 0 && m.disk_available_bytes < percent(m.disk_bytes, limits.nodefs_percent);
    let pids = m.pid_max > 0
        && m.pid_max.saturating_sub(m.pids_used) < percent(m.pid_max, limits.pid_percent);
    let pressure = |kind: &'static str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        (kind, on, reason.to_owned(), message.to_owned())
    };
    let ready = match &runtime.not_ready {
        None => (
            "Ready",
            true,
            "KubeletReady".to_owned(),
            "kubelet is posting ready status".to_owned(),
        ),
        Some(why) => ("Ready", false, "KubeletNotReady".to_owned(), why.clone()),
    };
    let mut states = vec![
        pressure(
            "MemoryPressure",
            memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure(
            "DiskPressure",
            disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            pids,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        ready,
    ];
    if let Some(line) = facts.config_status {
        let (on, reason, message) = config_condition(line);
        states.push((INVALID_CONFIG, on, reason, message));
    }
    states
}

/// The conditions, keeping each one's times from `previous` (a conditions
/// array) while its status holds; new or changed ones get `now`.
fn conditions(facts: &Facts<'_>, previous: &Value, now: &str) -> Value {
    let old = |kind: &str| {
        previous
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
    };
    condition_states(facts)
        .into_iter()
        .map(|(kind, on, reason, message)| {
            let status = if on { "True" } else { "False" };
            let (transition, heartbeat) = match old(kind) {
                Some(c) if c["status"] == status => (
                    c["lastTransitionTime"].as_str().unwrap_or(now).to_owned(),
                    c["lastHeartbeatTime"].as_str().unwrap_or(now).to_owned(),
                ),
                _ => (now.to_owned(), now.to_owned()),
            };
            json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": transition,
            })
        })
        .collect()
}

/// The status to report; conditions carry their times over from
/// `previous` (the status last written or read).
pub fn desired(facts: &Facts<'_>, previous: &Value, now: &str) -> Value {
    let m = facts.machine;
    let (capacity, allocatable) = resources(m, &facts.config.eviction_hard);
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(facts, &previous["conditions"], now),
        "addresses": [
            {"type": "InternalIP", "address": facts.ip.to_string()},
            {"type": "Hostname", "address": facts.hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.config.agent_port}},
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.system_uuid,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel,
            "osImage": m.os_image,
            "containerRuntimeVersion": facts.runtime.version,
            "kubeletVersion": kubelet_version(),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": architecture(),
        },
    })
}

/// Sets every condition's `lastHeartbeatTime` to `now` (a write is a heartbeat).
pub fn beat(status: &mut Value, now: &str) {
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions {
            c["lastHeartbeatTime"] = now.into();
        }
    }
}

/// The kubelet's event reasons for the conditions whose status differs
/// between `old` and `new` (all of them when `old` has none).
pub fn transitions(old: &Value, new: &Value) -> Vec<&'static str> {
    let status_of = |status: &Value, kind: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .map(|c| c["status"].clone())
    };
    let reasons = [
        (
            "MemoryPressure",
            "NodeHasInsufficientMemory",
            "NodeHasSufficientMemory",
        ),
        (
            "DiskPressure",
            "NodeHasDiskPressure",
            "NodeHasNoDiskPressure",
        ),
        (
            "PIDPressure",
            "NodeHasInsufficientPID",
            "NodeHasSufficientPID",
        ),
        ("Ready", "NodeReady", "NodeNotReady"),
        (INVALID_CONFIG, "InvalidConfig", "ConfigLoaded"),
    ];
    reasons
        .into_iter()
        .filter_map(|(kind, when_true, when_false)| {
            let now = status_of(new, kind)?;
            if status_of(old, kind).as_ref() == Some(&now) {
                return None;
            }
            Some(if now == "True" { when_true } else { when_false })
        })
        .collect()
}

/// Whether two statuses say the same, heartbeat times aside.
pub fn unchanged(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        beat(&mut v, "");
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            memory_kib: 4_000_000,
            memory_available_kib: 2_000_000,
            disk_bytes: 10 * 1024 * 1024 * 1024,
            disk_available_bytes: 5 * 1024 * 1024 * 1024,
            pids_used: 300,
            pid_max: 32768,
            kernel: "6.1.0".into(),
            os_image: "Cairn 0.1.0".into(),
            ..Machine::default()
        }
    }

    fn ready() -> Runtime {
        Runtime {
            version: "containerd://1.6.20".into(),
            not_ready: None,
        }
    }

    fn status(m: &Machine, runtime: &Runtime, previous: &Value, now: &str) -> Value {
        let config = Config::new("n1");
        let facts = Facts {
            config: &config,
            machine: m,
            runtime,
            ip: "10.0.0.5".parse().expect("ip"),
            hostname: "n1",
            config_status: None,
        };
        desired(&facts, previous, now)
    }

    #[test]
    fn the_config_outcome_is_a_condition() {
        let (on, reason, _) = config_condition("ok config.toml\n");
        assert!(!on);
        assert_eq!(reason, "ConfigLoaded");
        let (on, reason, message) =
            config_condition("last-known-good config.toml:3:1: host.hostnme: unknown field\n");
        assert!(on);
        assert_eq!(reason, "LastKnownGood");
        assert!(
            message.contains("config.toml:3:1: host.hostnme"),
            "{message}"
        );
        assert!(!config_condition("defaults").0, "no file is a choice");
        assert!(config_condition("defaults bad file").0);

        let config = Config::new("n1");
        let facts = Facts {
            config: &config,
            machine: &machine(),
            runtime: &ready(),
            ip: "10.0.0.5".parse().expect("ip"),
            hostname: "n1",
            config_status: Some("last-known-good x:1:1: bad"),
        };
        let s = desired(&facts, &Value::Null, "t0");
        assert_eq!(condition(&s, INVALID_CONFIG)["status"], "True");
        assert!(transitions(&Value::Null, &s).contains(&"InvalidConfig"));
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == kind)
            .expect("condition")
    }

    #[test]
    fn capacity_allocatable_and_info() {
        let s = status(&machine(), &ready(), &Value::Null, "t0");
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["memory"], "4000000Ki");
        assert_eq!(s["allocatable"]["memory"], "3897600Ki");
        assert_eq!(s["capacity"]["ephemeral-storage"], "10485760Ki");
        assert_eq!(s["allocatable"]["ephemeral-storage"], "9437184Ki");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "10.0.0.5");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(s["nodeInfo"]["kubeletVersion"], "v1.32.0-cairn");
        assert_eq!(s["nodeInfo"]["osImage"], "Cairn 0.1.0");
        assert_eq!(condition(&s, "Ready")["status"], "True");
        for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(condition(&s, kind)["status"], "False", "{kind}");
        }
    }

    #[test]
    fn pressure_past_the_thresholds() {
        let mut m = machine();
        m.memory_available_kib = 50 * 1024;
        m.disk_available_bytes = m.disk_bytes / 20;
        m.pids_used = 32000;
        let s = status(&m, &ready(), &Value::Null, "t0");
        assert_eq!(condition(&s, "MemoryPressure")["status"], "True");
        assert_eq!(
            condition(&s, "MemoryPressure")["reason"],
            "KubeletHasInsufficientMemory"
        );
        assert_eq!(condition(&s, "DiskPressure")["status"], "True");
        assert_eq!(condition(&s, "PIDPressure")["status"], "True");
    }

    #[test]
    fn times_move_only_on_transitions_and_heartbeats_are_not_changes() {
        let m = machine();
        let not_ready = Runtime {
            version: "containerd://1.6.20".into(),
            not_ready: Some("container runtime network not ready".into()),
        };
        let first = status(&m, &not_ready, &Value::Null, "t0");
        assert_eq!(
            transitions(&Value::Null, &first),
            [
                "NodeHasSufficientMemory",
                "NodeHasNoDiskPressure",
                "NodeHasSufficientPID",
                "NodeNotReady"
            ]
        );
        assert_eq!(condition(&first, "Ready")["status"], "False");
        assert_eq!(condition(&first, "Ready")["reason"], "KubeletNotReady");
        let same = status(&m, &not_ready, &first, "t1");
        assert!(unchanged(&first, &same));
        assert_eq!(condition(&same, "Ready")["lastTransitionTime"], "t0");
        let mut beaten = same.clone();
        beat(&mut beaten, "t2");
        assert!(unchanged(&first, &beaten));
        let now_ready = status(&m, &ready(), &beaten, "t3");
        assert!(!unchanged(&beaten, &now_ready));
        assert_eq!(transitions(&beaten, &now_ready), ["NodeReady"]);
        assert!(transitions(&now_ready, &now_ready).is_empty());
        assert_eq!(condition(&now_ready, "Ready")["lastTransitionTime"], "t3");
        assert_eq!(
            condition(&now_ready, "DiskPressure")["lastTransitionTime"],
            "t0"
        );
        // Memory use moving above the threshold is no change.
        let mut m2 = m.clone();
        m2.memory_available_kib -= 1000;
        assert!(unchanged(
            &now_ready,
            &status(&m2, &ready(), &now_ready, "t4")
        ));
    }
}
