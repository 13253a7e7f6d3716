//! The workload controllers inside a real `cairn server`, driven by the
//! real kubectl: Jobs run to completion or fail, CronJobs create Jobs and
//! keep their history, DaemonSets put one pod on each eligible node and
//! roll, StatefulSets create ordered pods and their claims.
//!
//! Nodes are registered through the API as a client could, and the tests
//! set pod phases and readiness through the status subresource, as the
//! node agent does.
//!
//! The tests are grouped by kind, [`jobs`] (Jobs and CronJobs) and
//! [`sets`] (DaemonSets and StatefulSets), on the helpers here.

mod common;
#[path = "workloads/jobs.rs"]
mod jobs;
#[path = "workloads/sets.rs"]
mod sets;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, create_namespace_t, json, wait_for};
use serde_json::Value;

/// A Node manifest, Ready=True, with extra `labels` and `taints` (JSON).
fn node(name: &str, labels: &str, taints: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}"{labels}}}}},
"spec":{{"taints":[{taints}]}},
"status":{{"capacity":{{"cpu":"4","memory":"8Gi","pods":"110"}},
"allocatable":{{"cpu":"4","memory":"8Gi","pods":"110"}},
"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}}]}}}}"#
    )
}

fn apply(server: &Server, name: &str, yaml: &str) {
    let file = server.write(name, yaml);
    server.kubectl(&["apply", "-n", "t", "-f", common::path_str(&file)]);
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-n", "t", "-o", "json"]);
    json(&server.kubectl(&all))
}

/// Pods of namespace `t` not being deleted, with a label `selector`.
fn pods(server: &Server, selector: &str) -> Vec<Value> {
    get_json(server, &["get", "pods", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn pod_name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().expect("name")
}

/// Sets a pod's phase (and Ready for `Running`), as the agent would.
fn set_phase(server: &Server, pod: &str, phase: &str) {
    let ready = if phase == "Running" { "True" } else { "False" };
    let patch = format!(
        r#"{{"status":{{"phase":"{phase}","conditions":[{{"type":"PodScheduled","status":"True"}},{{"type":"Ready","status":"{ready}"}}]}}}}"#
    );
    server.kubectl(&[
        "patch",
        "pod",
        pod,
        "-n",
        "t",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

/// Asserts that the controller leaves a settled object alone (no status
/// write loop): its resourceVersion holds for 1.5 s.
fn assert_quiet(server: &Server, kind: &str, name: &str) {
    let rv = |s: &Server| get_json(s, &["get", kind, name])["metadata"]["resourceVersion"].clone();
    let before = rv(server);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rv(server), before, "{kind}/{name} keeps being written");
}

/// `reason: message` of the events about the object `name` in `t`.
fn events_of(server: &Server, name: &str) -> Vec<String> {
    get_json(server, &["get", "events"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// A server with namespace `t`, nodes n1 and n2, and the stand-in that
/// finishes the pods deleted on them (no agent runs).
fn start() -> (Server, common::kubelet::FakeKubelet) {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[node("n1", "", ""), node("n2", "", "")]);
    let kubelet = server.fake_kubelet();
    (server, kubelet)
}
