//! Node lifecycle and taint-based eviction inside a real `cairn server`
//! (short grace periods), driven by the real kubectl and curl: the test
//! plays the node agents, registering Nodes and renewing their Leases in
//! `kube-node-lease` through the API as a kubelet would, then stops
//! renewing one.
//!
//! A node whose Lease stops goes `Unknown` and gets the `unreachable`
//! taints; pods on it go not Ready and are evicted as their tolerations
//! say (2 s: deleted; for ever: kept; the admitted default: 300 s); a node
//! that posts again loses the taints; a node that never posted counts
//! from its creation; a user's NoExecute taint evicts at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, json};
use serde_json::Value;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn send(server: &Server, method: &str, path: &str, content_type: &str, body: &Value) -> Value {
    let (code, out) = server.curl(method, path, content_type, body.to_string().as_bytes());
    assert!((200..300).contains(&code), "{method} {path}: {code} {out}");
    json(&out)
}

/// Registers a Node as an agent does: status with Ready=True and a
/// heartbeat (none with `ready` false: a node that never posted).
fn register(server: &Server, name: &str, ready: bool) {
    let conditions = if ready {
        serde_json::json!([{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now(), "lastTransitionTime": now()},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
            "lastHeartbeatTime": now(), "lastTransitionTime": now()}])
    } else {
        serde_json::json!([])
    };
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": conditions,
        },
    });
    send(server, "POST", "/api/v1/nodes", "application/json", &node);
}

fn renew(server: &Server, name: &str) {
    let patch = serde_json::json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}});
    let path = format!("{LEASES}/{name}");
    let (code, _) = server.curl(
        "PATCH",
        &path,
        "application/merge-patch+json",
        patch.to_string().as_bytes(),
    );
    if code == 404 {
        let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": patch["spec"]});
        send(server, "POST", LEASES, "application/json", &lease);
    }
}

fn get(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    json(&server.kubectl(&all))
}

fn condition<'a>(obj: &'a Value, kind: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

fn has_taint(node: &Value, key: &str, effect: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == key && t["effect"] == effect)
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `secs`.
fn wait_for<T>(secs: u64, what: &str, server: &Server, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod bound to `node` with `tolerations` (JSON), marked Ready as its
/// agent would.
fn pod(server: &Server, name: &str, node: &str, tolerations: &str) -> Value {
    let pod = json(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"registry.k8s.io/pause:3.10"}}],
"tolerations":{tolerations}}}}}"#
    ));
    let created = send(
        server,
        "POST",
        "/api/v1/namespaces/t/pods",
        "application/json",
        &pod,
    );
    let status = serde_json::json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}});
    send(
        server,
        "PATCH",
        &format!("/api/v1/namespaces/t/pods/{name}/status"),
        "application/merge-patch+json",
        &status,
    );
    created
}

/// True while the pod exists and is not being deleted (an evicted pod is
/// deleted gracefully: with no agent to finish it, it stays `Terminating`).
fn pod_running(server: &Server, name: &str) -> bool {
    let out = server.try_kubectl(&["get", "pod", "-n", "t", name, "-o", "json"]);
    out.status.success()
        && json(&String::from_utf8_lossy(&out.stdout))["metadata"]["deletionTimestamp"].is_null()
}

#[test]
fn lost_nodes_are_tainted_and_their_pods_evicted_by_toleration() {
    let server = Arc::new(Server::start_with(&[
        "--node-monitor-grace-period",
        "3s",
        "--node-startup-grace-period",
        "3s",
    ]));
    common::create_namespace_t(&server);
    server.kubectl(&["create", "namespace", "kube-node-lease"]);
    for name in ["alive", "lost"] {
        register(&server, name, true);
        renew(&server, name);
    }
    register(&server, "silent", false);
    // The agents' heartbeats: `lost` stops when told.
    let lost_beats = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let (server, lost_beats, stop) = (server.clone(), lost_beats.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                renew(&server, "alive");
                if lost_beats.load(Ordering::SeqCst) {
                    renew(&server, "lost");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    let unreachable = "node.kubernetes.io/unreachable";
    let short = format!(
        r#"[{{"key":"{unreachable}","operator":"Exists","effect":"NoExecute","tolerationSeconds":2}}]"#
    );
    let forever =
        format!(r#"[{{"key":"{unreachable}","operator":"Exists","effect":"NoExecute"}}]"#);
    let short_pod = pod(&server, "short", "lost", &short);
    pod(&server, "forever", "lost", &forever);
    let default = pod(&server, "default", "lost", "[]");
    pod(&server, "elsewhere", "alive", "[]");
    // DefaultTolerationSeconds: 300 s for both, the pod's own kept.
    let toleration = |key: &str, seconds: i64| serde_json::json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds});
    assert_eq!(
        default["spec"]["tolerations"],
        serde_json::json!([
            toleration("node.kubernetes.io/not-ready", 300),
            toleration(unreachable, 300)
        ])
    );
    assert_eq!(
        short_pod["spec"]["tolerations"],
        serde_json::json!([
            toleration(unreachable, 2),
            toleration("node.kubernetes.io/not-ready", 300)
        ])
    );

    // The node that never posted goes Unknown from its creation.
    let silent = wait_for(10, "silent to go Unknown", &server, || {
        let node = get(&server, &["get", "node", "silent"]);
        (condition(&node, "Ready")["status"] == "Unknown").then_some(node)
    });
    assert_eq!(
        condition(&silent, "Ready")["reason"],
        "NodeStatusNeverUpdated"
    );

    // While its Lease is renewed the node stays Ready, past the grace.
    std::thread::sleep(Duration::from_secs(4));
    let node = get(&server, &["get", "node", "lost"]);
    assert_eq!(condition(&node, "Ready")["status"], "True", "{node}");
    assert!(!has_taint(&node, unreachable, "NoExecute"));

    lost_beats.store(false, Ordering::SeqCst);
    let lost = wait_for(10, "lost to be tainted unreachable", &server, || {
        let node = get(&server, &["get", "node", "lost"]);
        has_taint(&node, unreachable, "NoExecute").then_some(node)
    });
    assert!(
        pod_running(&server, "short"),
        "tolerated for 2 s, not evicted at once"
    );
    // The conditions it reported are Unknown; those it never did, added so.
    for kind in ["Ready", "MemoryPressure"] {
        let c = condition(&lost, kind);
        assert_eq!(c["status"], "Unknown", "{kind}: {lost}");
        assert_eq!(c["reason"], "NodeStatusUnknown", "{kind}");
        assert_eq!(c["message"], "Kubelet stopped posting node status.");
    }
    for kind in ["DiskPressure", "PIDPressure"] {
        let c = condition(&lost, kind);
        assert_eq!(c["status"], "Unknown", "{kind}: {lost}");
        assert_eq!(c["reason"], "NodeStatusNeverUpdated", "{kind}");
    }
    assert!(has_taint(&lost, unreachable, "NoSchedule"), "{lost}");
    let taint = lost["spec"]["taints"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["effect"] == "NoExecute"))
        .cloned()
        .unwrap_or_default();
    assert!(taint["timeAdded"].is_string(), "{taint}");
    let table = server.kubectl(&["get", "nodes"]);
    let status_of = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    assert_eq!(status_of("lost").as_deref(), Some("NotReady"), "{table}");
    assert_eq!(status_of("alive").as_deref(), Some("Ready"), "{table}");

    // Tolerated for 2 s: gone about 2 s after the taint; the others stay.
    wait_for(8, "the 2 s pod to be evicted", &server, || {
        (!pod_running(&server, "short")).then_some(())
    });
    let events = server.kubectl(&[
        "get",
        "events",
        "-n",
        "t",
        "--field-selector",
        "reason=TaintManagerEviction",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("Marking for deletion Pod t/short"),
        "{events}"
    );
    let forever_pod = get(&server, &["get", "pod", "-n", "t", "forever"]);
    assert_eq!(
        condition(&forever_pod, "Ready")["status"],
        "False",
        "MarkPodsNotReady"
    );
    assert!(pod_running(&server, "default"));
    assert!(pod_running(&server, "elsewhere"));
    let alive = get(&server, &["get", "node", "alive"]);
    assert!(
        alive["spec"]["taints"].as_array().is_none_or(Vec::is_empty),
        "{alive}"
    );

    // The agent comes back: Lease renewed, Ready posted; the taints go.
    lost_beats.store(true, Ordering::SeqCst);
    let ready = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "back",
         "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
    send(
        &server,
        "PATCH",
        "/api/v1/nodes/lost/status",
        "application/merge-patch+json",
        &ready,
    );
    wait_for(10, "lost's taints to go", &server, || {
        let node = get(&server, &["get", "node", "lost"]);
        let clean = node["spec"]["taints"].as_array().is_none_or(Vec::is_empty);
        clean.then_some(())
    });
    assert!(pod_running(&server, "forever"));

    // A user's NoExecute taint evicts untolerating pods at once.
    server.kubectl(&["taint", "node", "alive", "dedicated=edge:NoExecute"]);
    wait_for(5, "the pod on alive to be evicted", &server, || {
        (!pod_running(&server, "elsewhere")).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    beats.join().expect("heartbeats");
}
