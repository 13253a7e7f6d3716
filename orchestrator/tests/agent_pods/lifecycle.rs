//! Pods coming and going: a Deployment that serves and is deleted
//! cleanly, pods deleted while the agent was down, a dead sandbox
//! recreated, and graceful deletion (preStop, SIGTERM, the grace period).

use std::time::Duration;

use cairn::agent::cri::api;
use serde_json::Value;

use super::env::{Env, condition, container_state, http_get};
use crate::common::cluster::eventually;
use crate::common::cri::{BUSYBOX, INDEX_HTML};

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
