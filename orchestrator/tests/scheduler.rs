//! The scheduler's affinity, spreading and scoring inside a real
//! `cairn server`, driven by the real kubectl: required pod anti-affinity
//! spreads a Deployment one replica per node and says why the extra one
//! waits; required pod affinity follows a labelled pod (also one created
//! later); DoNotSchedule topology spread keeps two zones within maxSkew;
//! preferred node affinity and PreferNoSchedule taints steer the choice
//! against the emptier node.
//!
//! Nodes are registered through the API as a client could (labels
//! `kubernetes.io/hostname` and `topology.kubernetes.io/zone`, Ready=True);
//! each case is built so that the LeastAllocated score alone would choose
//! differently, so a missing rule fails the test.

mod common;

use std::collections::BTreeMap;

use common::{Server, create_namespace_t, json, wait_for};
use serde_json::Value;

const ZONE: &str = "topology.kubernetes.io/zone";

/// A Ready Node with `cpu` allocatable, in `zone`, with extra labels
/// (`"k":"v",...`) and taints (JSON array or empty).
fn node(name: &str, cpu: &str, zone: &str, labels: &str, taints: &str) -> String {
    let taints = if taints.is_empty() { "[]" } else { taints };
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}","{ZONE}":"{zone}"{labels}}}}},
"spec":{{"taints":{taints}}},
"status":{{"capacity":{{"cpu":"{cpu}","memory":"64Gi","pods":"110"}},
"allocatable":{{"cpu":"{cpu}","memory":"64Gi","pods":"110"}},
"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}}]}}}}"#
    )
}

fn pods(server: &Server) -> Vec<Value> {
    json(&server.kubectl(&["get", "pods", "-n", "t", "-o", "json"]))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn node_of(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
}

fn scheduled_message(pod: &Value) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        .and_then(|c| c["message"].as_str().map(str::to_owned))
}

/// Waits until `n` pods of namespace `t` are bound and the rest carry an
/// unschedulable message; returns (pod name → node) and the messages.
fn settle(server: &Server, n: usize, total: usize) -> (BTreeMap<String, String>, Vec<String>) {
    wait_for(30, &format!("{n} of {total} pods bound"), server, || {
        let pods = pods(server);
        let bound: BTreeMap<String, String> = pods
            .iter()
            .filter_map(|p| {
                node_of(p).map(|node| {
                    (
                        p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                        node.to_owned(),
                    )
                })
            })
            .collect();
        let waiting: Vec<String> = pods
            .iter()
            .filter(|p| node_of(p).is_none())
            .filter_map(scheduled_message)
            .collect();
        (pods.len() == total && bound.len() == n && waiting.len() == total - n)
            .then_some((bound, waiting))
    })
}

fn deployment(name: &str, replicas: usize, cpu: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: t}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, group: {name}}}}}
    spec:
{extra_spec}
      containers:
      - name: c
        image: busybox
        resources: {{requests: {{cpu: "{cpu}"}}}}
"#
    )
}

fn pod(name: &str, labels: &str, cpu: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: t, labels: {{{labels}}}}}
spec:
{extra_spec}
  containers:
  - name: c
    image: busybox
    resources: {{requests: {{cpu: "{cpu}"}}}}
"#
    )
}

#[test]
fn required_anti_affinity_puts_one_replica_per_node() {
    let server = Server::start();
    create_namespace_t(&server);
    // "big" has the most room: without anti-affinity it would take more
    // than one replica.
    server.register_nodes(&[
        node("big", "32", "a", "", ""),
        node("n2", "2", "a", "", ""),
        node("n3", "2", "b", "", ""),
    ]);
    let anti = r#"      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {group: web}}
            topologyKey: kubernetes.io/hostname"#;
    server.create_file("web.yaml", &deployment("web", 3, "100m", anti));
    let (bound, _) = settle(&server, 3, 3);
    let mut nodes: Vec<&String> = bound.values().collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["big", "n2", "n3"],
        "one replica per node: {bound:?}"
    );

    server.kubectl(&["scale", "deployment", "web", "-n", "t", "--replicas=4"]);
    let (_, waiting) = settle(&server, 3, 4);
    assert_eq!(
        waiting,
        ["0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."]
    );
    let events = server.kubectl(&[
        "get",
        "events",
        "-n",
        "t",
        "--field-selector",
        "reason=FailedScheduling",
    ]);
    assert!(
        events.contains("didn't match pod anti-affinity rules"),
        "{events}"
    );

    // A pod without affinity of its own (and outside the Deployment's
    // selector), selected by the replicas' terms, is kept off every node
    // by them.
    server.create_file("stray.yaml", &pod("stray", "group: web", "100m", ""));
    let stray = wait_for(30, "stray unschedulable", &server, || {
        let p = json(&server.kubectl(&["get", "pod", "stray", "-n", "t", "-o", "json"]));
        scheduled_message(&p)
    });
    assert_eq!(
        stray,
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
    );

    // A fourth node takes one of the two waiting pods; whichever comes
    // first keeps the other off (its own terms, or the replica's).
    server.register_nodes(&[node("n4", "2", "b", "", "")]);
    let (bound, waiting) = wait_for(30, "the other pod reconsidered", &server, || {
        let (bound, waiting) = settle(&server, 4, 5);
        waiting[0].starts_with("0/4").then_some((bound, waiting))
    });
    assert_eq!(
        bound.values().filter(|n| *n == "n4").count(),
        1,
        "{bound:?}"
    );
    let reason = waiting[0].as_str();
    assert!(
        reason == "0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules."
            || reason
                == "0/4 nodes are available: 4 node(s) didn't satisfy existing pods anti-affinity rules.",
        "{reason}"
    );
}

#[test]
fn required_affinity_follows_the_labelled_pod() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[
        node("big", "32", "a", "", ""),
        node("small1", "2", "a", "", ""),
        node("small2", "2", "b", "", ""),
    ]);
    // The db pod goes to a small node by node selector; its companion's
    // LeastAllocated choice would be "big".
    server.create_file(
        "db.yaml",
        &pod(
            "db",
            "app: db",
            "100m",
            "  nodeSelector: {kubernetes.io/hostname: small2}",
        ),
    );
    let with = |app: &str| {
        format!(
            r#"  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {{matchLabels: {{app: {app}}}}}
        topologyKey: kubernetes.io/hostname"#
        )
    };
    server.create_file(
        "cache.yaml",
        &pod("cache", "app: cache", "100m", &with("db")),
    );
    let (bound, _) = settle(&server, 2, 2);
    assert_eq!(bound["cache"], "small2", "{bound:?}");

    // A pod whose target does not exist yet waits, and follows it once it
    // is placed.
    server.create_file(
        "worker.yaml",
        &pod("worker", "app: worker", "100m", &with("queue")),
    );
    let (_, waiting) = settle(&server, 2, 3);
    assert_eq!(
        waiting,
        ["0/3 nodes are available: 3 node(s) didn't match pod affinity rules."]
    );
    server.create_file(
        "queue.yaml",
        &pod(
            "queue",
            "app: queue",
            "100m",
            "  nodeSelector: {kubernetes.io/hostname: small1}",
        ),
    );
    let (bound, _) = settle(&server, 4, 4);
    assert_eq!(bound["worker"], "small1", "{bound:?}");
}

#[test]
fn topology_spread_keeps_zones_within_max_skew() {
    let server = Server::start();
    create_namespace_t(&server);
    // Zone a has the room (LeastAllocated alone would fill it); zone b's
    // one node holds two replicas at most.
    server.register_nodes(&[
        node("a1", "16", "a", "", ""),
        node("a2", "16", "a", "", ""),
        node("b1", "1", "b", "", ""),
    ]);
    let spread = r#"      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}"#;
    server.create_file("spread.yaml", &deployment("spread", 4, "500m", spread));
    let (bound, _) = settle(&server, 4, 4);
    let in_b = bound.values().filter(|n| *n == "b1").count();
    assert_eq!(in_b, 2, "two per zone: {bound:?}");

    // A fifth fits zone a (3 to 2); a sixth would make it 4 to 2, and
    // zone b is full.
    server.kubectl(&["scale", "deployment", "spread", "-n", "t", "--replicas=6"]);
    let (bound, waiting) = settle(&server, 5, 6);
    assert_eq!(
        bound.values().filter(|n| *n == "b1").count(),
        2,
        "{bound:?}"
    );
    assert_eq!(
        waiting,
        [
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod topology spread constraints."
        ]
    );
}

#[test]
fn preferred_node_affinity_and_prefer_no_schedule_steer_scoring() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[
        node("roomy", "32", "a", "", ""),
        node("ssd", "2", "a", r#","disk":"ssd""#, ""),
        node(
            "soft",
            "64",
            "b",
            "",
            r#"[{"key":"maintenance","value":"soon","effect":"PreferNoSchedule"}]"#,
        ),
    ]);
    // Preferred node affinity beats the emptier nodes.
    let prefer_ssd = r#"  affinity:
    nodeAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 50
        preference:
          matchExpressions: [{key: disk, operator: In, values: [ssd]}]"#;
    server.create_file("fast.yaml", &pod("fast", "app: fast", "500m", prefer_ssd));
    let (bound, _) = settle(&server, 1, 1);
    assert_eq!(bound["fast"], "ssd");

    // The PreferNoSchedule node is the emptiest, but avoided while
    // another node fits...
    server.create_file("plain.yaml", &pod("plain", "app: plain", "500m", ""));
    let (bound, _) = settle(&server, 2, 2);
    assert_eq!(bound["plain"], "roomy");
    // ...and used when none other does (the taint is only a preference).
    server.create_file("huge.yaml", &pod("huge", "app: huge", "40", ""));
    let (bound, _) = settle(&server, 3, 3);
    assert_eq!(bound["huge"], "soft");
}
