//! A container's `ContainerConfig` (command and args with `$(VAR)`
//! expansion, env, working dir, mounts of the pod's volumes, resources as
//! cgroup limits, security context, log path `<name>/<restartCount>.log`,
//! the labels and annotations the agent finds it by again) and its
//! lifecycle calls: create + start, the postStart and preStop exec hooks,
//! the graceful stop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::env::parse_quantity;
use super::runtime::{
    self, CONTAINER_HASH, CONTAINER_NAME, GRACE_PERIOD, INIT, POD_NAME, POD_NAMESPACE, POD_UID,
    PRE_STOP, RESTART_COUNT,
};
use crate::agent::cri::{Cri, CriError, api, call};

/// CPU period of the CFS quota (100 ms, as the kubelet uses).
const CPU_PERIOD: i64 = 100_000;
/// The least grace a container gets after its preStop hook (upstream's
/// `minimumGracePeriodInSeconds`).
const MIN_GRACE: i64 = 2;

/// Paths masked in every unprivileged container (upstream's defaults,
/// which CRI expects from its client).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths read-only in every unprivileged container.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The hash of a container's spec: a container whose spec changed is
/// restarted.
pub fn hash(container: &Value) -> String {
    let bytes = serde_json::to_vec(container).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the config needs besides the spec.
pub struct Inputs<'a> {
    /// The pod.
    pub pod: &'a Value,
    /// The container's spec.
    pub container: &'a Value,
    /// An init container?
    pub init: bool,
    /// Its restart count (the attempt).
    pub restart_count: u32,
    /// Its environment, resolved.
    pub env: Vec<(String, String)>,
    /// Volume name → host path.
    pub volumes: &'a HashMap<String, PathBuf>,
    /// The pod's grace period.
    pub grace: i64,
}

/// The container config.
pub fn config(inputs: &Inputs) -> Result<api::ContainerConfig, String> {
    let Inputs {
        pod,
        container,
        init,
        restart_count,
        env,
        volumes,
        grace,
    } = inputs;
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let name = text(&container["name"]);
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| super::env::expand(s.as_str().unwrap_or(""), &vars))
            .collect()
    };
    let meta = &pod["metadata"];
    let labels = HashMap::from([
        (POD_NAME.to_owned(), text(&meta["name"])),
        (POD_NAMESPACE.to_owned(), text(&meta["namespace"])),
        (POD_UID.to_owned(), text(&meta["uid"])),
        (CONTAINER_NAME.to_owned(), name.clone()),
    ]);
    let mut annotations = HashMap::from([
        (CONTAINER_HASH.to_owned(), hash(container)),
        (RESTART_COUNT.to_owned(), restart_count.to_string()),
        (GRACE_PERIOD.to_owned(), grace.to_string()),
    ]);
    if *init {
        annotations.insert(INIT.to_owned(), "true".to_owned());
    }
    if let Some(cmd) = container["lifecycle"]["preStop"]["exec"]["command"].as_array() {
        annotations.insert(PRE_STOP.to_owned(), Value::Array(cmd.clone()).to_string());
    }
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = text(&m["name"]);
        // VOLUMES: the map comes from agent::volumes; a volume it does not
        // know is an error as upstream makes it.
        let Some(host) = volumes.get(&volume) else {
            return Err(format!(
                "cannot find volume \"{volume}\" to mount into container \"{name}\""
            ));
        };
        let sub = text(&m["subPath"]);
        if sub.split('/').any(|p| p == "..") || Path::new(&sub).is_absolute() {
            return Err(format!("invalid subPath {sub:?}"));
        }
        let host_path = if sub.is_empty() {
            host.clone()
        } else {
            host.join(&sub)
        };
        mounts.push(api::Mount {
            container_path: text(&m["mountPath"]),
            host_path: host_path.display().to_string(),
            readonly: m["readOnly"].as_bool() == Some(true),
            ..Default::default()
        });
    }
    let restart = restart_count.to_string();
    Ok(api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.clone(),
            attempt: *restart_count,
        }),
        image: Some(api::ImageSpec {
            image: text(&container["image"]),
            ..Default::default()
        }),
        command: strings(&container["command"]),
        args: strings(&container["args"]),
        working_dir: text(&container["workingDir"]),
        envs: env
            .iter()
            .map(|(key, value)| api::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{name}/{restart}.log"),
        stdin: container["stdin"].as_bool() == Some(true),
        stdin_once: container["stdinOnce"].as_bool() == Some(true),
        tty: container["tty"].as_bool() == Some(true),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(resources(pod, container)),
            security_context: Some(security_context(pod, container)),
        }),
        ..Default::default()
    })
}

/// Millicores of a CPU quantity.
fn millicpu(q: &Value) -> Option<i64> {
    let s = q
        .as_str()
        .map(str::to_owned)
        .or_else(|| q.as_f64().map(|f| f.to_string()))?;
    parse_quantity(&s).map(|c| (c * 1000.0).ceil() as i64)
}

fn bytes(q: &Value) -> Option<i64> {
    let s = q
        .as_str()
        .map(str::to_owned)
        .or_else(|| q.as_f64().map(|f| f.to_string()))?;
    parse_quantity(&s).map(|b| b as i64)
}

/// The pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`).
pub fn qos_class(pod: &Value) -> &'static str {
    let all: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .collect();
    let set = |c: &Value, s: &str, r: &str| !c["resources"][s][r].is_null();
    if all.iter().all(|c| {
        ["cpu", "memory"]
            .iter()
            .all(|r| !set(c, "requests", r) && !set(c, "limits", r))
    }) {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][*r];
            let request = &c["resources"]["requests"][*r];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `resources` as cgroup limits: CPU shares from the request (or the
/// limit), the CFS quota from the CPU limit, the memory limit.
pub fn resources(pod: &Value, container: &Value) -> api::LinuxContainerResources {
    let r = &container["resources"];
    let request = millicpu(&r["requests"]["cpu"]).or_else(|| millicpu(&r["limits"]["cpu"]));
    let cpu_shares = request.map_or(2, |m| (m * 1024 / 1000).max(2));
    let (cpu_period, cpu_quota) = match millicpu(&r["limits"]["cpu"]) {
        Some(m) => (CPU_PERIOD, (m * CPU_PERIOD / 1000).max(1000)),
        None => (0, 0),
    };
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => 500,
    };
    api::LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: bytes(&r["limits"]["memory"]).unwrap_or(0),
        oom_score_adj,
        ..Default::default()
    }
}

/// The container's security context over the pod's.
pub fn security_context(pod: &Value, container: &Value) -> api::LinuxContainerSecurityContext {
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];
    let csc = &container["securityContext"];
    let pick = |field: &str| csc[field].as_i64().or_else(|| psc[field].as_i64());
    let caps = |field: &str| -> Vec<String> {
        csc["capabilities"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    let privileged = csc["privileged"].as_bool() == Some(true);
    let node = |b: &Value| b.as_bool() == Some(true);
    let pid = if node(&spec["hostPID"]) {
        api::NamespaceMode::Node
    } else if node(&spec["shareProcessNamespace"]) {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect(),
            READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect(),
        )
    };
    api::LinuxContainerSecurityContext {
        capabilities: Some(api::Capability {
            add_capabilities: caps("add"),
            drop_capabilities: caps("drop"),
            ..Default::default()
        }),
        privileged,
        namespace_options: Some(api::NamespaceOption {
            network: if node(&spec["hostNetwork"]) {
                api::NamespaceMode::Node as i32
            } else {
                api::NamespaceMode::Pod as i32
            },
            pid: pid as i32,
            ipc: if node(&spec["hostIPC"]) {
                api::NamespaceMode::Node as i32
            } else {
                api::NamespaceMode::Pod as i32
            },
            ..Default::default()
        }),
        run_as_user: pick("runAsUser").map(|value| api::Int64Value { value }),
        run_as_group: pick("runAsGroup").map(|value| api::Int64Value { value }),
        readonly_rootfs: csc["readOnlyRootFilesystem"].as_bool() == Some(true),
        supplemental_groups: psc["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .collect(),
        no_new_privs: csc["allowPrivilegeEscalation"].as_bool() == Some(false),
        masked_paths: masked,
        readonly_paths: readonly,
        ..Default::default()
    }
}

/// Where creating or starting failed.
#[derive(Debug)]
pub enum StartError {
    /// CreateContainer (`CreateContainerError`).
    Create(CriError),
    /// StartContainer (`RunContainerError`); the container exists.
    Start(String, CriError),
}

/// Creates and starts a container in `sandbox`; its id.
pub async fn create_and_start(
    cri: &Cri,
    sandbox_id: &str,
    sandbox: &api::PodSandboxConfig,
    config: api::ContainerConfig,
) -> Result<String, StartError> {
    let mut cri = cri.clone();
    let id = cri
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .map_err(|s| StartError::Create(call("CreateContainer")(s)))?
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|s| StartError::Start(id.clone(), call("StartContainer")(s)))?;
    Ok(id)
}

/// Runs an exec hook in a container; its failure as text (the output).
pub async fn exec_hook(
    cri: &Cri,
    id: &str,
    command: &[String],
    timeout: i64,
) -> Result<(), String> {
    let mut cri = cri.clone();
    let out = cri
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: command.to_vec(),
            timeout: timeout.max(1),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    if out.exit_code == 0 {
        return Ok(());
    }
    Err(format!(
        "command {command:?} exited with {}: {}{}",
        out.exit_code,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The exec command of a hook (`lifecycle.postStart` / `preStop`).
pub fn hook_command(hook: &Value) -> Option<Vec<String>> {
    let cmd = hook["exec"]["command"].as_array()?;
    Some(
        cmd.iter()
            .map(|s| s.as_str().unwrap_or("").to_owned())
            .collect(),
    )
}

/// Stops a running container gracefully: its preStop command (from the
/// spec, or as recorded on the container), then SIGTERM and, after what is
/// left of `grace` (at least [`MIN_GRACE`]), SIGKILL.
pub async fn kill(
    cri: &Cri,
    c: &api::ContainerStatus,
    spec: Option<&Value>,
    grace: i64,
) -> Result<(), CriError> {
    if !runtime::running(c) {
        return Ok(());
    }
    let started = Instant::now();
    let pre_stop = match spec {
        Some(spec) => hook_command(&spec["lifecycle"]["preStop"]),
        None => c
            .annotations
            .get(PRE_STOP)
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()),
    };
    let mut grace = grace;
    if let Some(cmd) = pre_stop
        && grace > 0
    {
        let limit = Duration::from_secs(grace.unsigned_abs());
        match tokio::time::timeout(limit, exec_hook(cri, &c.id, &cmd, grace)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(id = %c.id, %error, "preStop hook failed"),
            Err(_) => tracing::debug!(id = %c.id, "preStop hook timed out"),
        }
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
        grace = (grace - spent).max(MIN_GRACE);
    }
    runtime::stop_container(cri, &c.id, grace).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_of_a_container() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"securityContext": {"runAsUser": 1000}}});
        let c = json!({"name": "app", "image": "busybox:1", "command": ["sh", "-c"],
            "args": ["echo $(GREETING) $$(X)"], "workingDir": "/tmp",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            "securityContext": {"runAsGroup": 7, "readOnlyRootFilesystem": true,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["CAP_KILL"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "x", "readOnly": true}]});
        let volumes = HashMap::from([("data".to_owned(), PathBuf::from("/v/data"))]);
        let cfg = config(&Inputs {
            pod: &pod,
            container: &c,
            init: false,
            restart_count: 3,
            env: vec![("GREETING".into(), "hi".into())],
            volumes: &volumes,
            grace: 30,
        })
        .unwrap();
        assert_eq!(cfg.args, ["echo hi $(X)"]);
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.labels[POD_UID], "u");
        assert_eq!(cfg.mounts[0].host_path, "/v/data/x");
        assert!(cfg.mounts[0].readonly);
        let linux = cfg.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (512, 50_000, 100_000)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 * 1024 * 1024);
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert_eq!(sc.run_as_group.unwrap().value, 7);
        assert!(sc.readonly_rootfs);
        let caps = sc.capabilities.unwrap();
        assert_eq!(
            (caps.add_capabilities, caps.drop_capabilities),
            (vec!["NET_ADMIN".to_owned()], vec!["KILL".to_owned()])
        );
        let missing = json!({"name": "x", "volumeMounts": [{"name": "nope", "mountPath": "/n"}]});
        let err = config(&Inputs {
            pod: &pod,
            container: &missing,
            init: false,
            restart_count: 0,
            env: vec![],
            volumes: &HashMap::new(),
            grace: 1,
        })
        .unwrap_err();
        assert!(err.contains("nope"), "{err}");
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [c]}})),
            "Guaranteed"
        );
        let burst = json!({"name": "b", "resources": {"requests": {"cpu": "1"}}});
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [burst]}})),
            "Burstable"
        );
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})),
            "BestEffort"
        );
    }
}
