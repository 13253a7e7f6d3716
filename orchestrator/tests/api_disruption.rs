//! PodDisruptionBudgets through the real kubectl and a real `cairn server`:
//! `kubectl create pdb` and `get pdb` as upstream prints them, validation,
//! the status the disruption controller keeps (integer and percentage
//! budgets, scales from the pods' Deployment), the eviction subresource
//! granting then refusing with 429, and `kubectl drain` that succeeds
//! when the budget allows it and times out when it does not.
//!
//! There is no node agent here (`--disable-agent`): nodes are registered
//! through the API, and a thread plays the agent: it marks bound pods
//! Running and Ready through the status subresource and makes the final
//! delete of pods being deleted, as the agent would.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, create_namespace_t, json, wait_for};
use serde_json::Value;

/// A schedulable Node with Ready=True.
fn node(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}"}}}},
"spec":{{}},
"status":{{"capacity":{{"cpu":"8","memory":"16Gi","pods":"110"}},
"allocatable":{{"cpu":"8","memory":"16Gi","pods":"110"}},
"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}}]}}}}"#
    )
}

fn register_nodes(server: &Server, names: &[&str]) {
    let docs: Vec<String> = names.iter().map(|n| node(n)).collect();
    let file = server.write("nodes.yaml", &format!("---\n{}", docs.join("\n---\n")));
    server.kubectl(&["create", "-f", common::path_str(&file)]);
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    json(&server.kubectl(&all))
}

fn pdb_status(server: &Server, name: &str) -> Value {
    get_json(server, &["get", "pdb", name, "-n", "t"])["status"].clone()
}

/// Active (not being deleted) pods of namespace `t` matching `selector`.
fn pods(server: &Server, selector: &str) -> Vec<Value> {
    get_json(server, &["get", "pods", "-n", "t", "-l", selector])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Waits until the budget's status has these `(field, value)` pairs.
fn wait_status(server: &Server, name: &str, want: &[(&str, i64)]) -> Value {
    wait_for(
        30,
        &format!("status {want:?} of pdb {name}"),
        server,
        || {
            let status = pdb_status(server, name);
            want.iter()
                .all(|(field, value)| status[*field].as_i64() == Some(*value))
                .then_some(status)
        },
    )
}

/// Sets a pod's phase and readiness as the agent would.
fn set_pod(server: &Server, name: &str, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    let patch = format!(
        r#"{{"status":{{"phase":"Running","conditions":[{{"type":"PodScheduled","status":"True"}},{{"type":"Ready","status":"{ready}"}},{{"type":"ContainersReady","status":"{ready}"}}]}}}}"#
    );
    server.kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        "t",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// Plays the node agent: finishes pods being deleted (the final delete,
/// `gracePeriodSeconds: 0`, once their containers would have stopped) and,
/// with `ready_too`, marks every bound pod Running and Ready.
fn play_agent(server: &Server, ready_too: bool) {
    let all = get_json(server, &["get", "pods", "-n", "t"]);
    for pod in all["items"].as_array().into_iter().flatten() {
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        // A pod deleted meanwhile makes these fail: fine.
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            let _ = server.try_kubectl(&[
                "delete",
                "pod",
                name_of(pod),
                "-n",
                "t",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
        } else if ready_too && bound && !ready(pod) {
            let _ = server.try_kubectl(&[
                "patch",
                "pod",
                name_of(pod),
                "-n",
                "t",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Running","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}"#,
            ]);
        }
    }
}

/// Runs [`play_agent`] every 300 ms until dropped.
struct Agent {
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(server: &Arc<Server>) -> Agent {
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(true));
        let (server, flag, ready_too) = (server.clone(), stop.clone(), ready.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                play_agent(&server, ready_too.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Agent {
            stop,
            ready,
            thread: Some(thread),
        }
    }

    /// From now on, pods stay as they are (not Ready).
    fn stop_readying(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// POSTs an Eviction of pod `name`: (HTTP code, answer).
fn evict(server: &Server, name: &str) -> (u16, Value) {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{name}","namespace":"t"}}}}"#
    );
    let path = format!("/api/v1/namespaces/t/pods/{name}/eviction");
    let (code, answer) = server.curl("POST", &path, "application/json", body.as_bytes());
    (code, json(&answer))
}

fn wait_ready_web(server: &Server, n: usize) -> Vec<Value> {
    wait_for(60, &format!("{n} ready web pods"), server, || {
        let pods = pods(server, "app=web");
        (pods.len() == n && pods.iter().all(ready)).then_some(pods)
    })
}

#[test]
fn budgets_are_served_kept_and_honoured_by_eviction() {
    let server = Arc::new(Server::start());
    create_namespace_t(&server);
    register_nodes(&server, &["n1"]);
    server.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=3",
        "-n",
        "t",
    ]);
    let agent = Agent::start(&server);
    wait_ready_web(&server, 3);

    // kubectl create pdb, and the status the controller computes.
    let out = server.kubectl(&[
        "create",
        "pdb",
        "web-min",
        "--selector=app=web",
        "--min-available=2",
        "-n",
        "t",
    ]);
    assert!(
        out.contains("poddisruptionbudget.policy/web-min created"),
        "{out}"
    );
    let status = wait_status(
        &server,
        "web-min",
        &[
            ("expectedPods", 3),
            ("currentHealthy", 3),
            ("desiredHealthy", 2),
            ("disruptionsAllowed", 1),
            ("observedGeneration", 1),
        ],
    );
    // Nothing changes, nothing is written.
    let version = |s: &Server| {
        get_json(s, &["get", "pdb", "web-min", "-n", "t"])["metadata"]["resourceVersion"].clone()
    };
    let before = version(&server);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(version(&server), before, "an idle budget is not rewritten");
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "DisruptionAllowed");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "SufficientPods");
    let table = server.kubectl(&["get", "pdb", "-n", "t"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE"
        ],
        "{table}"
    );
    assert_eq!(lines[1][..4], ["web-min", "2", "N/A", "1"], "{table}");

    let described = server.kubectl(&["describe", "pdb", "web-min", "-n", "t"]);
    let value = |key: &str| {
        described
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} in {described}"))
            .to_owned()
    };
    assert_eq!(value("Min available:"), "2");
    assert_eq!(value("Selector:"), "app=web");
    assert_eq!(value("Allowed disruptions:"), "1");
    assert_eq!(value("Current:"), "3");
    assert_eq!(value("Desired:"), "2");
    assert_eq!(value("Total:"), "3");

    // A percentage scales from the Deployment's replicas; an integer
    // minAvailable from the pods selected (an unmanaged one included).
    server.kubectl(&[
        "create",
        "pdb",
        "web-pct",
        "--selector=app=web",
        "--max-unavailable=34%",
        "-n",
        "t",
    ]);
    // 3 - ceil(3 * 34%) = 1 must stay.
    wait_status(
        &server,
        "web-pct",
        &[
            ("expectedPods", 3),
            ("desiredHealthy", 1),
            ("disruptionsAllowed", 2),
        ],
    );
    let table = server.kubectl(&["get", "pdb", "web-pct", "-n", "t", "--no-headers"]);
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cells[..4], ["web-pct", "N/A", "34%", "2"], "{table}");
    server.kubectl(&["delete", "pdb", "web-pct", "-n", "t"]);
    server.kubectl(&["scale", "deployment", "web", "-n", "t", "--replicas=4"]);
    wait_ready_web(&server, 4);
    server.kubectl(&[
        "create",
        "pdb",
        "web-half",
        "--selector=app=web",
        "--min-available=50%",
        "-n",
        "t",
    ]);
    wait_status(
        &server,
        "web-half",
        &[
            ("expectedPods", 4),
            ("desiredHealthy", 2),
            ("disruptionsAllowed", 2),
        ],
    );
    server.kubectl(&["delete", "pdb", "web-half", "-n", "t"]);
    server.kubectl(&["scale", "deployment", "web", "-n", "t", "--replicas=3"]);
    wait_ready_web(&server, 3);
    wait_status(
        &server,
        "web-min",
        &[("expectedPods", 3), ("disruptionsAllowed", 1)],
    );

    // Eviction: granted while the budget allows one, then 429; a dry
    // run changes nothing.
    agent.stop_readying();
    let web = pods(&server, "app=web");
    let path = format!(
        "/api/v1/namespaces/t/pods/{}/eviction?dryRun=All",
        name_of(&web[0])
    );
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{}"}}}}"#,
        name_of(&web[0])
    );
    let (code, answer) = server.curl("POST", &path, "application/json", body.as_bytes());
    assert_eq!(code, 201, "{answer}");
    assert_eq!(
        pods(&server, "app=web").len(),
        3,
        "a dry run deletes nothing"
    );
    assert_eq!(pdb_status(&server, "web-min")["disruptionsAllowed"], 1);
    let (code, answer) = evict(&server, name_of(&web[0]));
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["status"], "Success");
    wait_for(30, "the evicted pod to go", &server, || {
        let out = server.try_kubectl(&["get", "pod", name_of(&web[0]), "-n", "t"]);
        (!out.status.success()).then_some(())
    });
    let (code, answer) = evict(&server, name_of(&web[1]));
    assert_eq!(code, 429, "{answer}");
    assert_eq!(answer["reason"], "TooManyRequests");
    assert_eq!(
        answer["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &answer["details"]["causes"][0];
    assert_eq!(cause["reason"], "DisruptionBudget");
    assert!(
        cause["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The disruption budget web-min needs 2 healthy pods")),
        "{cause}"
    );
    // The replacement is not Ready: 2 healthy, none to spare.
    let status = wait_status(
        &server,
        "web-min",
        &[("currentHealthy", 2), ("disruptionsAllowed", 0)],
    );
    assert_eq!(status["conditions"][0]["reason"], "InsufficientPods");
    assert!(
        status
            .get("disruptedPods")
            .is_none_or(|d| d.as_object().is_some_and(|m| m.is_empty())),
        "{status}"
    );
    assert!(
        pods(&server, "app=web")
            .iter()
            .any(|p| name_of(p) == name_of(&web[1]))
    );

    // A pending pod disrupts nothing: evicted whatever the budget says.
    let pending = wait_for(30, "the replacement pod", &server, || {
        pods(&server, "app=web").into_iter().find(|p| !ready(p))
    });
    assert_eq!(pending["status"]["phase"], "Pending");
    let (code, answer) = evict(&server, name_of(&pending));
    assert_eq!(code, 201, "{answer}");

    // A Running pod that is not Ready while the budget is short: refused
    // under IfHealthyBudget, granted under AlwaysAllow.
    let unready = wait_for(30, "another replacement pod", &server, || {
        pods(&server, "app=web").into_iter().find(|p| !ready(p))
    });
    set_pod(&server, name_of(&unready), false);
    server.kubectl(&[
        "patch",
        "pdb",
        "web-min",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":3}}"#,
    ]);
    wait_status(
        &server,
        "web-min",
        &[
            ("observedGeneration", 2),
            ("desiredHealthy", 3),
            ("currentHealthy", 2),
        ],
    );
    let (code, answer) = evict(&server, name_of(&unready));
    assert_eq!(code, 429, "{answer}");
    server.kubectl(&[
        "patch",
        "pdb",
        "web-min",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"unhealthyPodEvictionPolicy":"AlwaysAllow"}}"#,
    ]);
    wait_status(&server, "web-min", &[("observedGeneration", 3)]);
    let (code, answer) = evict(&server, name_of(&unready));
    assert_eq!(code, 201, "{answer}");

    // Two budgets over one pod: upstream refuses to choose.
    server.kubectl(&[
        "create",
        "pdb",
        "web-too",
        "--selector=app=web",
        "--max-unavailable=1",
        "-n",
        "t",
    ]);
    let (code, answer) = evict(&server, name_of(&web[1]));
    assert_eq!(code, 500, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than one PodDisruptionBudget")),
        "{answer}"
    );

    // Invalid budgets name their fields.
    let bad = server.write(
        "bad-pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: bad\n  namespace: t\nspec:\n  minAvailable: 1\n  maxUnavailable: 150%\n  selector:\n    matchExpressions:\n    - key: app\n      operator: In\n",
    );
    let err = server.kubectl_fails(&["apply", "-f", common::path_str(&bad)]);
    assert!(
        err.contains(r#"The PodDisruptionBudget "bad" is invalid"#),
        "{err}"
    );
    for field in [
        "spec: Invalid value",
        "minAvailable and maxUnavailable cannot be both set",
        "spec.maxUnavailable: Invalid value",
        "must not be greater than 100%",
        "spec.selector.matchExpressions[0].values: Required value",
    ] {
        assert!(err.contains(field), "{field} in {err}");
    }
}

#[test]
fn drain_evicts_within_the_budget_and_times_out_beyond_it() {
    let server = Arc::new(Server::start());
    create_namespace_t(&server);
    register_nodes(&server, &["n1", "n2"]);
    let ds = server.write(
        "ds.yaml",
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: logs\n  namespace: t\nspec:\n  selector:\n    matchLabels:\n      app: logs\n  template:\n    metadata:\n      labels:\n        app: logs\n    spec:\n      containers:\n      - name: c\n        image: busybox\n",
    );
    server.kubectl(&["apply", "-f", common::path_str(&ds)]);
    server.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        "t",
    ]);
    server.kubectl(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=1",
        "-n",
        "t",
    ]);
    let _agent = Agent::start(&server);
    wait_ready_web(&server, 2);
    wait_for(60, "2 ready daemon pods", &server, || {
        let logs = pods(&server, "app=logs");
        (logs.len() == 2 && logs.iter().all(ready)).then_some(())
    });
    wait_status(
        &server,
        "web",
        &[("currentHealthy", 2), ("disruptionsAllowed", 1)],
    );

    // The budget allows it: drained (a second pod on the node waits for
    // its replacement to be Ready elsewhere, as kubectl retries on 429).
    let node_of = |pod: &Value| pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
    let first = node_of(&pods(&server, "app=web")[0]);
    let out = server.try_kubectl(&["drain", &first, "--ignore-daemonsets", "--timeout=90s"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "drain failed: {stdout}{stderr}");
    assert!(stdout.contains("evicted"), "{stdout}");
    assert!(
        stdout.contains(&format!("node/{first} drained")),
        "{stdout}"
    );
    assert!(
        stderr.contains("ignoring DaemonSet-managed Pods"),
        "{stderr}"
    );
    let nodes = get_json(&server, &["get", "node", &first]);
    assert_eq!(nodes["spec"]["unschedulable"], true);
    let web = wait_ready_web(&server, 2);
    assert!(web.iter().all(|p| node_of(p) != first), "{web:?}");
    assert_eq!(pods(&server, "app=logs").len(), 2, "daemon pods stay");
    server.kubectl(&["uncordon", &first]);

    // No disruption allowed: drain keeps retrying and times out saying why.
    server.kubectl(&[
        "patch",
        "pdb",
        "web",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":2}}"#,
    ]);
    wait_status(
        &server,
        "web",
        &[("observedGeneration", 2), ("disruptionsAllowed", 0)],
    );
    let second = node_of(&pods(&server, "app=web")[0]);
    let out = server.try_kubectl(&["drain", &second, "--ignore-daemonsets", "--timeout=12s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "drain succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{stderr}"
    );
    assert!(stderr.contains("global timeout reached: 12s"), "{stderr}");
    assert_eq!(wait_ready_web(&server, 2).len(), 2, "nothing was evicted");
}
