//! The node agent's pods part against a real containerd with CRI and runc
//! (see `common/cri.rs`), the API server and controllers in this process,
//! and the real kubectl: Deployments run and serve, the pod spec is
//! honoured, failures are reported as Kubernetes reports them, and pods
//! deleted (even while the agent was down) leave nothing in CRI.
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use cairn::agent::Config;
use cairn::agent::cri::api;
use common::cluster::{Cluster, eventually};
use common::cri::{BUSYBOX, CriRuntime, INDEX_HTML, Registry, busybox_parts};
use serde_json::Value;

const NODE: &str = "node1";

/// containerd, the API, a Ready node and the agent's pods loop.
struct Env {
    runtime: CriRuntime,
    cluster: Cluster,
    agent: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Env {
    async fn start() -> Env {
        let runtime = CriRuntime::start().await;
        let cluster = Cluster::start(true).await;
        cluster.register_node(NODE).await;
        let mut env = Env {
            runtime,
            cluster,
            agent: None,
        };
        env.start_agent();
        env
    }

    fn config(&self) -> Config {
        let mut config = Config::new(NODE);
        config.runtime_endpoint = self.runtime.socket();
        config.pod_log_dir = self.runtime.pod_log_dir();
        config.root_dir = self.runtime.dir.path().join("agent");
        config.cni_conf_dir = self.runtime.cni_conf_dir();
        config.node_ip = Some("127.0.0.1".parse().expect("ip"));
        config.sandbox_image = self.runtime.sandbox_image.clone();
        config
    }

    fn start_agent(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cairn::agent::pods::run(
            self.config(),
            self.cluster.node_client(NODE),
            async {
                let _ = stopped.await;
            },
        ));
        self.agent = Some((stop, task));
    }

    async fn stop_agent(&mut self) {
        if let Some((stop, task)) = self.agent.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// kubectl, from a blocking section of this runtime.
    fn kubectl(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.cluster.kubectl(args))
    }

    fn apply(&self, manifest: &str) {
        tokio::task::block_in_place(|| self.cluster.apply(manifest));
    }

    /// Waits until pod `name` satisfies `check`; the pod.
    async fn pod_until(&self, name: &str, limit: u64, check: impl Fn(&Value) -> bool) -> Value {
        eventually(
            Duration::from_secs(limit),
            || {
                let pod = tokio::task::block_in_place(|| {
                    self.cluster
                        .try_kubectl(&["get", "pod", name, "-o", "json"])
                        .stdout
                });
                format!(
                    "pod {name}: {}\n{}",
                    String::from_utf8_lossy(&pod),
                    self.kubectl(&["get", "events", "-o", "wide"])
                )
            },
            || async {
                let pod = self.cluster.pod("default", name).await?;
                check(&pod).then_some(pod)
            },
        )
        .await
    }

    /// The log lines (text only) of `container` of `pod`, attempt `n`.
    fn log(&self, pod: &Value, container: &str, n: u32) -> Vec<String> {
        let meta = &pod["metadata"];
        let path = self.runtime.pod_log_dir().join(format!(
            "default_{}_{}/{container}/{n}.log",
            meta["name"].as_str().unwrap_or(""),
            meta["uid"].as_str().unwrap_or("")
        ));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // `<time> <stream> <F|P> <text>`
        text.lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_owned())
            .collect()
    }

    /// Sandboxes and containers of pod `uid` CRI still has.
    async fn in_cri(&self, uid: &str) -> usize {
        let of = |labels: &std::collections::HashMap<String, String>| {
            labels.get("io.kubernetes.pod.uid").map(String::as_str) == Some(uid)
        };
        let sandboxes = self.runtime.sandboxes().await;
        let containers = self.runtime.containers().await;
        sandboxes.iter().filter(|s| of(&s.labels)).count()
            + containers.iter().filter(|c| of(&c.labels)).count()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The agent first: it would make sandboxes while containerd is
        // being emptied.
        if let Some((_, task)) = self.agent.take() {
            task.abort();
        }
    }
}

fn container_state<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .map_or(&Value::Null, |c| c)
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// An HTTP/1.0 GET of `/` on `ip:port`; the body.
fn http_get(ip: &str, port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("addr"),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_runs_ready_serves_http_and_deletes_cleanly() {
    let env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: [httpd, -f, -p, "8080", -h, /www]
        ports: [{{containerPort: 8080}}]
"#
    ));
    let prefix = env
        .runtime
        .subnet
        .rsplit_once('.')
        .expect("subnet")
        .0
        .to_owned();
    let pods = eventually(
        Duration::from_secs(60),
        || env.kubectl(&["get", "pods", "-o", "wide"]) + &env.kubectl(&["get", "events"]),
        || async {
            let pods = env.cluster.pods("default", "app%3Dweb").await;
            let ok = pods.len() == 2
                && pods
                    .iter()
                    .all(|p| p["status"]["phase"] == "Running" && condition(p, "Ready") == "True");
            ok.then_some(pods)
        },
    )
    .await;
    for pod in &pods {
        let ip = pod["status"]["podIP"].as_str().expect("podIP");
        assert!(
            ip.starts_with(&prefix),
            "{ip} not in {}",
            env.runtime.subnet
        );
        assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
        let c = container_state(pod, "httpd");
        assert_eq!(c["ready"], true, "{c}");
        assert_eq!(c["started"], true, "{c}");
        assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
        assert!(
            c["containerID"]
                .as_str()
                .is_some_and(|id| id.starts_with("containerd://"))
        );
        assert!(!c["imageID"].as_str().unwrap_or("").is_empty(), "{c}");
        for kind in ["PodScheduled", "Initialized", "ContainersReady"] {
            assert_eq!(condition(pod, kind), "True", "{kind}");
        }
        let body = eventually(
            Duration::from_secs(10),
            || format!("no HTTP answer from {ip}"),
            || async { http_get(ip, 8080).ok() },
        )
        .await;
        assert_eq!(body, INDEX_HTML);
    }
    let name = pods[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let uid = pods[0]["metadata"]["uid"].as_str().expect("uid").to_owned();
    let describe = env.kubectl(&["describe", "pod", &name]);
    for line in ["Started", "Created", "Status:       Running"] {
        assert!(describe.contains(line), "{line} not in\n{describe}");
    }
    // A status that did not change is not written again.
    let rv = pods[0]["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = env.cluster.pod("default", &name).await.expect("pod");
    assert_eq!(again["metadata"]["resourceVersion"], rv, "status rewritten");

    env.kubectl(&["delete", "pod", &name, "--timeout=60s"]);
    eventually(
        Duration::from_secs(30),
        || format!("pod {uid} still in CRI"),
        || async { (env.in_cri(&uid).await == 0).then_some(()) },
    )
    .await;
    assert!(
        env.runtime.log().contains("StopPodSandbox"),
        "sandbox not stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_is_honoured_env_args_workdir_init_and_memory_limit() {
    let env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{colour: blue, size: large}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: spec, labels: {{tier: test}}}}
spec:
  restartPolicy: Never
  initContainers:
  - name: init
    image: {BUSYBOX}
    command: [sh, -c, "echo init-ran"]
  containers:
  - name: main
    image: {BUSYBOX}
    workingDir: /tmp
    command: [sh, -c]
    args:
    - 'echo "greeting=$GREETING"; echo "args=$1"; echo "colour=$COLOUR password=$PASSWORD"; echo "name=$POD_NAME ip=$POD_IP mem=$MEM_MB cpus=$NODE_CPUS"; echo "cfg_size=$CFG_size"; echo "pwd=$(pwd)"; echo "limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"'
    - sh
    - $(GREETING)-$(MISSING)-$$(GREETING)
    env:
    - {{name: GREETING, value: "hello-$(COLOUR_MISSING)"}}
    - name: COLOUR
      valueFrom: {{configMapKeyRef: {{name: settings, key: colour}}}}
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: MEM_MB
      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
    - name: NODE_CPUS
      valueFrom: {{resourceFieldRef: {{containerName: init, resource: limits.cpu}}}}
    envFrom:
    - configMapRef: {{name: settings}}
      prefix: CFG_
    resources:
      limits: {{memory: 48Mi, cpu: 500m}}
"#
    ));
    let pod = env
        .pod_until("spec", 60, |p| p["status"]["phase"] == "Succeeded")
        .await;
    assert_eq!(env.log(&pod, "init", 0), ["init-ran"]);
    let lines = env.log(&pod, "main", 0);
    let ip = pod["status"]["podIP"].as_str().expect("podIP");
    let want = [
        "greeting=hello-$(COLOUR_MISSING)".to_owned(),
        "args=hello-$(COLOUR_MISSING)-$(MISSING)-$(GREETING)".to_owned(),
        "colour=blue password=s3cret".to_owned(),
        format!("name=spec ip={ip} mem=48 cpus=2"),
        "cfg_size=large".to_owned(),
        "pwd=/tmp".to_owned(),
        format!("limit={}", 48 * 1024 * 1024),
    ];
    assert_eq!(lines, want);
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    let main = container_state(&pod, "main");
    assert_eq!(main["state"]["terminated"]["exitCode"], 0, "{main}");
    // One after the other: the init container ended before main started.
    let ended = init["state"]["terminated"]["finishedAt"]
        .as_str()
        .expect("finishedAt");
    let started = main["state"]["terminated"]["startedAt"]
        .as_str()
        .expect("startedAt");
    assert!(ended <= started, "{ended} > {started}");
    assert_eq!(condition(&pod, "Initialized"), "True");
    assert_eq!(condition(&pod, "Ready"), "False");

    // Security context: user and group, read-only root, capabilities.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: secure}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'id -u; id -g; touch /x 2>/dev/null && echo writable || echo read-only; grep CapEff /proc/self/status']
    securityContext:
      runAsGroup: 2000
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
"#
    ));
    let pod = env
        .pod_until("secure", 60, |p| p["status"]["phase"] == "Succeeded")
        .await;
    assert_eq!(
        env.log(&pod, "c", 0),
        ["1000", "2000", "read-only", "CapEff:\t0000000000000000"]
    );

    // A missing ConfigMap: CreateContainerConfigError, and the pod waits.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: noconfig}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "600"]
    envFrom: [{{configMapRef: {{name: absent}}}}]
"#
    ));
    let pod = env
        .pod_until("noconfig", 30, |p| {
            container_state(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    let message = container_state(&pod, "c")["state"]["waiting"]["message"].clone();
    assert_eq!(message, "configmap \"absent\" not found");
    assert_eq!(pod["status"]["phase"], "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_reported_as_kubernetes_reports_them() {
    let env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: badimage}}
spec:
  containers:
  - {{name: c, image: "127.0.0.1:1/nothing/here:1"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: neverpull}}
spec:
  containers:
  - {{name: c, image: "localhost/absent:1", imagePullPolicy: Never}}
---
apiVersion: v1
kind: Pod
metadata: {{name: badcommand}}
spec:
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [/no/such/program]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [sh, -c, "echo crashing; echo -n bad thing >/dev/termination-log; exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fallback}}
spec:
  restartPolicy: Never
  containers:
  - {{name: c, image: "{BUSYBOX}", terminationMessagePolicy: FallbackToLogsOnError, command: [sh, -c, "echo first; echo last words; exit 1"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: "{BUSYBOX}"
    command: [sh, -c, 'x=$(dd if=/dev/zero bs=1048576 count=256 2>/dev/null | tr "\\0" x); echo survived']
    resources: {{limits: {{memory: 24Mi}}}}
"#
    ));
    let waiting = |p: &Value| container_state(p, "c")["state"]["waiting"].clone();
    let pod = env
        .pod_until("badimage", 30, |p| waiting(p)["reason"] == "ErrImagePull")
        .await;
    let message = waiting(&pod)["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("127.0.0.1:1/nothing/here:1"), "{message}");
    env.pod_until("badimage", 30, |p| {
        waiting(p)["reason"] == "ImagePullBackOff"
    })
    .await;

    let pod = env
        .pod_until("neverpull", 30, |p| {
            waiting(p)["reason"] == "ErrImageNeverPull"
        })
        .await;
    assert_eq!(
        waiting(&pod)["message"],
        "Container image \"localhost/absent:1\" is not present with pull policy of Never"
    );

    // RunContainerError with the runtime's message, until the next sync
    // finds the dead container in its back-off.
    let pod = env
        .pod_until("badcommand", 30, |p| {
            waiting(p)["reason"] == "RunContainerError"
                || container_state(p, "c")["lastState"]["terminated"]["reason"] == "StartError"
        })
        .await;
    let c = container_state(&pod, "c");
    let message = match waiting(&pod)["reason"].as_str() {
        Some("RunContainerError") => waiting(&pod)["message"].clone(),
        _ => c["lastState"]["terminated"]["message"].clone(),
    };
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("/no/such/program")),
        "{c}"
    );
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=badcommand",
    ]);
    assert!(
        events.contains("stat /no/such/program: no such file"),
        "{events}"
    );

    let pod = env
        .pod_until("crasher", 40, |p| {
            waiting(p)["reason"] == "CrashLoopBackOff"
                && container_state(p, "c")["restartCount"].as_u64() >= Some(1)
        })
        .await;
    let c = container_state(&pod, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c}");
    assert_eq!(c["lastState"]["terminated"]["message"], "bad thing", "{c}");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(condition(&pod, "Ready"), "False");
    assert!(
        waiting(&pod)["message"].as_str().is_some_and(
            |m| m.starts_with("back-off 10s restarting failed container=c pod=crasher_default")
        ),
        "{c}"
    );
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crasher",
    ]);
    assert!(events.contains("BackOff"), "{events}");

    let pod = env
        .pod_until("fallback", 60, |p| p["status"]["phase"] == "Failed")
        .await;
    let c = container_state(&pod, "c");
    assert_eq!(
        c["state"]["terminated"]["message"], "first\nlast words",
        "{c}"
    );

    let pod = env
        .pod_until("oom", 60, |p| p["status"]["phase"] == "Failed")
        .await;
    let c = container_state(&pod, "c");
    assert_eq!(c["state"]["terminated"]["reason"], "OOMKilled", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_deleted_while_the_agent_is_down_is_cleaned_up() {
    let mut env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: orphan}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [sleep, "3600"]}}
"#
    ));
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: survivor}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [sleep, "3600"]}}
"#
    ));
    let pod = env
        .pod_until("orphan", 60, |p| p["status"]["phase"] == "Running")
        .await;
    let survivor = env
        .pod_until("survivor", 60, |p| p["status"]["phase"] == "Running")
        .await;
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert_eq!(env.in_cri(&uid).await, 2);
    env.stop_agent().await;
    env.kubectl(&["delete", "pod", "orphan", "--wait=false"]);
    env.start_agent();
    eventually(
        Duration::from_secs(40),
        || format!("pod {uid} still in CRI"),
        || async { (env.in_cri(&uid).await == 0).then_some(()) },
    )
    .await;
    // The pod still in the API kept its container through the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = env
        .cluster
        .pod("default", "survivor")
        .await
        .expect("survivor");
    let id = |p: &Value| container_state(p, "c")["containerID"].clone();
    assert_eq!(id(&now), id(&survivor));
    assert_eq!(container_state(&now, "c")["restartCount"], 0);
    let running = env.runtime.containers().await.into_iter().any(|c| {
        Some(format!("containerd://{}", c.id).as_str()) == id(&now).as_str()
            && c.state == api::ContainerState::ContainerRunning as i32
    });
    assert!(running, "survivor's container not running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_with_secrets_hooks_and_host_network() {
    let env = Env::start().await;
    let registry = tokio::task::block_in_place(|| {
        let registry = Registry::start();
        registry.push("test/busybox", "2", &busybox_parts(&[]));
        registry
    });
    // The preStop hook calls the host on the bridge's address.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listen");
    let hook_port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap_or(0);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let gateway = format!(
        "{}.1",
        env.runtime.subnet.rsplit_once('.').expect("subnet").0
    );
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let auth = base64_encode(b"user:pass");
    let config = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host);
    env.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: regcred}}
type: kubernetes.io/dockerconfigjson
data: {{.dockerconfigjson: {}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  terminationGracePeriodSeconds: 5
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: c
    image: {}/test/busybox:2
    imagePullPolicy: Always
    command: [sh, -c, 'while [ ! -f /tmp/hook ]; do sleep 0.1; done; echo hooked; exec sleep 3600']
    lifecycle:
      postStart: {{exec: {{command: [touch, /tmp/hook]}}}}
      preStop: {{exec: {{command: [wget, -q, -O, /dev/null, "http://{gateway}:{hook_port}/prestop"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  hostNetwork: true
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [httpd, -f, -p, "127.0.0.1:{host_port}", -h, /www]}}
"#,
        base64_encode(config.as_bytes()),
        registry.host
    ));
    let pod = env
        .pod_until("pulled", 60, |p| condition(p, "Ready") == "True")
        .await;
    let line = eventually(
        Duration::from_secs(10),
        || "postStart hook did not run".into(),
        || async { env.log(&pod, "c", 0).first().cloned() },
    )
    .await;
    assert_eq!(line, "hooked");
    let image_id = container_state(&pod, "c")["imageID"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(image_id.contains("sha256:"), "{image_id}");
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=pulled",
    ]);
    assert!(events.contains("Successfully pulled image"), "{events}");

    let pod = env
        .pod_until("hostnet", 60, |p| p["status"]["phase"] == "Running")
        .await;
    assert_eq!(pod["status"]["podIP"], "127.0.0.1");
    let body = eventually(
        Duration::from_secs(10),
        || format!("nothing on 127.0.0.1:{host_port}"),
        || async { http_get("127.0.0.1", host_port).ok() },
    )
    .await;
    assert_eq!(body, INDEX_HTML);

    env.kubectl(&["delete", "pod", "pulled", "--wait=false"]);
    let request = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(20)))
        .expect("preStop hook did not call");
    assert!(request.starts_with("GET /prestop"), "{request}");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_sandbox_is_recreated_and_a_terminating_pod_is_stopped_then_deleted() {
    let env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: held, finalizers: [example.com/hold]}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [sleep, "3600"]}}
"#
    ));
    let pod = env
        .pod_until("held", 60, |p| condition(p, "Ready") == "True")
        .await;
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let first_ip = pod["status"]["podIP"].clone();

    // The sandbox dies: a new one (attempt 1), the container restarted in it.
    let sandbox = env
        .runtime
        .sandboxes()
        .await
        .into_iter()
        .find(|s| s.labels.get("io.kubernetes.pod.uid") == Some(&uid))
        .expect("sandbox");
    let mut cri = env.runtime.cri().await;
    cri.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let pod = env
        .pod_until("held", 40, |p| {
            condition(p, "Ready") == "True" && container_state(p, "c")["restartCount"] == 1
        })
        .await;
    let ready = env
        .runtime
        .sandboxes()
        .await
        .into_iter()
        .filter(|s| {
            s.labels.get("io.kubernetes.pod.uid") == Some(&uid)
                && s.state == api::PodSandboxState::SandboxReady as i32
        })
        .map(|s| s.metadata.map_or(0, |m| m.attempt))
        .collect::<Vec<_>>();
    assert_eq!(ready, [1], "one ready sandbox, attempt 1");
    assert!(pod["status"]["podIP"].is_string(), "{first_ip} then none");

    // Deleted: the finalizer keeps the object with its deletionTimestamp;
    // the agent stops everything and removes it from CRI meanwhile.
    env.kubectl(&["delete", "pod", "held", "--wait=false"]);
    eventually(
        Duration::from_secs(30),
        || format!("pod {uid} still in CRI"),
        || async { (env.in_cri(&uid).await == 0).then_some(()) },
    )
    .await;
    let pod = env
        .cluster
        .pod("default", "held")
        .await
        .expect("held by its finalizer");
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    // Nothing comes back while it is terminating.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.in_cri(&uid).await, 0);
    env.kubectl(&[
        "patch",
        "pod",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(
        Duration::from_secs(20),
        || "pod held still there".into(),
        || async {
            env.cluster
                .pod("default", "held")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_and_probes_are_plugged_in() {
    let env = Env::start().await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: files}}
data: {{colour: green}}
---
apiVersion: v1
kind: Pod
metadata: {{name: shared}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: files}}}}
  initContainers:
  - name: init
    image: {BUSYBOX}
    command: [sh, -c, "echo from-init > /work/note"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "cat /work/note; cat /config/colour; echo; touch /tmp/ready; exec sleep 3600"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: config, mountPath: /config, readOnly: true}}
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: unlively}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "3600"]
    livenessProbe:
      exec: {{command: ["false"]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    ));
    let pod = env
        .pod_until("shared", 60, |p| condition(p, "Ready") == "True")
        .await;
    assert_eq!(env.log(&pod, "main", 0), ["from-init", "green"]);

    let pod = env
        .pod_until("unlively", 60, |p| {
            container_state(p, "c")["restartCount"].as_u64() >= Some(1)
        })
        .await;
    let c = container_state(&pod, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137, "{c}");
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=unlively",
    ]);
    assert!(events.contains("failed liveness probe"), "{events}");
}

/// `kubectl delete pod` of running pods: the API marks them
/// (`deletionTimestamp`, grace), the agent runs the preStop hook, sends
/// SIGTERM, SIGKILL after the grace, removes the sandbox and sends the
/// final delete; only then does kubectl return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_waits_for_prestop_sigterm_and_the_grace_period() {
    let env = Env::start().await;
    // What the container sees lands on the host, past the pod's removal.
    let seen = tempfile::tempdir().expect("dir");
    let seen_dir = seen.path().display();
    // `trap`: SIGTERM ends it at once; `stubborn` (PID 1 without a handler
    // ignores SIGTERM) is killed after its 2 s.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: trap}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: seen, hostPath: {{path: "{seen_dir}"}}}}]
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, "trap 'echo sigterm >> /seen/events; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
    volumeMounts: [{{name: seen, mountPath: /seen}}]
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, "echo prestop >> /seen/events"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - {{name: c, image: "{BUSYBOX}", command: [sleep, "3600"]}}
"#
    ));
    let mut uids = Vec::new();
    for name in ["trap", "stubborn"] {
        let pod = env
            .pod_until(name, 60, |p| p["status"]["phase"] == "Running")
            .await;
        uids.push(pod["metadata"]["uid"].as_str().expect("uid").to_owned());
    }

    let started = std::time::Instant::now();
    let out = env.kubectl(&["delete", "pod", "trap", "--timeout=60s"]);
    assert!(out.contains("pod \"trap\" deleted"), "{out}");
    let took = started.elapsed();
    // Returned once the agent was done: hook, then signal, nothing left.
    let events = std::fs::read_to_string(seen.path().join("events")).expect("events");
    assert_eq!(events.lines().collect::<Vec<_>>(), ["prestop", "sigterm"]);
    assert!(env.cluster.pod("default", "trap").await.is_none());
    assert_eq!(env.in_cri(&uids[0]).await, 0);
    assert!(
        took < Duration::from_secs(15),
        "SIGTERM not honoured: {took:?}"
    );

    let started = std::time::Instant::now();
    env.kubectl(&["delete", "pod", "stubborn", "--timeout=60s"]);
    let took = started.elapsed();
    assert!(env.cluster.pod("default", "stubborn").await.is_none());
    assert_eq!(env.in_cri(&uids[1]).await, 0);
    assert!(
        took >= Duration::from_secs(2),
        "killed before its grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "not killed after its grace period: {took:?}"
    );
}
