//! The pod spec honoured (env, args, workingDir, init containers, memory
//! limits), failures reported as Kubernetes reports them, pulls with
//! secrets, lifecycle hooks, host network, and volumes with probes.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::env::{Env, base64_encode, condition, container_state, http_get};
use crate::common::cluster::eventually;
use crate::common::cri::{BUSYBOX, INDEX_HTML, Registry, busybox_parts};

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
