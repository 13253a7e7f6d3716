//! Graceful pod deletion through the real kubectl (v1.32) and raw
//! requests, on a server without an agent (`--disable-agent`): a pod bound
//! to a node is marked (`deletionTimestamp`, `deletionGracePeriodSeconds`)
//! and shows `Terminating` until the final delete with grace 0 (what
//! `kubectl delete --grace-period=0 --force` and the node agent send);
//! unscheduled pods go at once. The agent's side is in `agent_pods.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_namespace_t, json};
use serde_json::Value;

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates pod `name` in `t`, bound to `node` (none: unscheduled), with
/// `spec.terminationGracePeriodSeconds` = `grace`.
fn create_pod(server: &Server, name: &str, node: Option<&str>, grace: i64) -> Value {
    let node = node.map_or(String::new(), |n| format!(r#""nodeName":"{n}","#));
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{{node}"terminationGracePeriodSeconds":{grace},"containers":[{{"name":"c","image":"busybox"}}]}}}}"#
    );
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/t/pods",
        "application/json",
        pod.as_bytes(),
    );
    assert_eq!(code, 201, "{body}");
    json(&body)
}

fn get_pod(server: &Server, name: &str) -> Option<Value> {
    let out = server.try_kubectl(&["get", "pod", name, "-n", "t", "-o", "json"]);
    out.status
        .success()
        .then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

fn timestamp(pod: &Value) -> jiff::Timestamp {
    pod["metadata"]["deletionTimestamp"]
        .as_str()
        .expect("deletionTimestamp")
        .parse()
        .expect("RFC 3339")
}

/// The watch events of pods in `t` from `rv` on (the history replayed,
/// then a one-second timeout): `(type, pod)`.
fn events_since(server: &Server, rv: &str) -> Vec<(String, Value)> {
    let path = format!("/api/v1/namespaces/t/pods?watch=1&resourceVersion={rv}&timeoutSeconds=1");
    let (code, body) = server.curl("GET", &path, "application/json", b"");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let event = json(l);
            (
                event["type"].as_str().unwrap_or("").to_owned(),
                event["object"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_scheduled_pod_terminates_with_its_grace_period() {
    let server = Server::start();
    create_namespace_t(&server);
    let created = create_pod(&server, "p", Some("n1"), 30);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();

    // A dry run marks nothing.
    let out = server.kubectl(&["delete", "pod", "p", "-n", "t", "--dry-run=server"]);
    assert!(out.contains("server dry run"), "{out}");
    let pod = get_pod(&server, "p").expect("pod");
    assert!(pod["metadata"]["deletionTimestamp"].is_null(), "{pod}");

    let before = jiff::Timestamp::now();
    let out = server.kubectl(&["delete", "pod", "p", "-n", "t", "--wait=false"]);
    assert!(out.contains("pod \"p\" deleted"), "{out}");
    let pod = get_pod(&server, "p").expect("a scheduled pod stays until its node finishes it");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30, "{pod}");
    let at = timestamp(&pod);
    let expected = before.as_second() + 30;
    assert!(
        (expected - 1..=expected + 2).contains(&at.as_second()),
        "deletionTimestamp {at} is not now + 30s"
    );
    let table = server.kubectl(&["get", "pods", "-n", "t"]);
    let row = table.lines().find(|l| l.starts_with("p ")).expect("row");
    assert!(row.contains("Terminating"), "{table}");

    // A second delete cannot lengthen the grace, nor change anything.
    server.kubectl(&[
        "delete",
        "pod",
        "p",
        "-n",
        "t",
        "--wait=false",
        "--grace-period=90",
    ]);
    let again = get_pod(&server, "p").expect("still there");
    assert_eq!(
        again["metadata"]["resourceVersion"], pod["metadata"]["resourceVersion"],
        "{again}"
    );
    assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 30);
    // It may shorten it: the timestamp moves earlier by the difference.
    server.kubectl(&[
        "delete",
        "pod",
        "p",
        "-n",
        "t",
        "--wait=false",
        "--grace-period=5",
    ]);
    let shorter = get_pod(&server, "p").expect("still there");
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
    assert_eq!(timestamp(&shorter).as_second(), at.as_second() - 25);
    // Status updates (an agent's) do not remove it while its grace runs.
    let (code, body) = server.curl(
        "PATCH",
        "/api/v1/namespaces/t/pods/p/status",
        "application/merge-patch+json",
        br#"{"status":{"phase":"Running"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(get_pod(&server, "p").is_some());

    // kubectl waits for the deletion by default: without an agent it
    // times out, the pod still Terminating.
    let out = server.try_kubectl(&["delete", "pod", "p", "-n", "t", "--timeout=2s"]);
    assert!(!out.status.success(), "kubectl delete returned early");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out waiting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get_pod(&server, "p").is_some());

    let out = server.kubectl_with_stderr(&[
        "delete",
        "pod",
        "p",
        "-n",
        "t",
        "--grace-period=0",
        "--force",
    ]);
    assert!(out.0.contains("pod \"p\" force deleted"), "{out:?}");
    assert!(get_pod(&server, "p").is_none());

    // Watchers saw the pod marked, its grace shortened, then deleted.
    let events = events_since(&server, &rv);
    let kinds: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    let graces: Vec<&Value> = events
        .iter()
        .map(|(_, p)| &p["metadata"]["deletionGracePeriodSeconds"])
        .collect();
    assert_eq!(
        kinds.first().copied(),
        Some("MODIFIED"),
        "{kinds:?} {graces:?}"
    );
    assert_eq!(events[0].1["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(kinds.last().copied(), Some("DELETED"), "{kinds:?}");
    let n = events.len();
    assert!(n >= 3, "{kinds:?}");
    assert_eq!(kinds[n - 2], "MODIFIED", "{kinds:?}");
    assert_eq!(events[n - 2].1["metadata"]["deletionGracePeriodSeconds"], 0);
}

#[test]
fn unscheduled_and_finished_pods_go_at_once() {
    let server = Server::start();
    create_namespace_t(&server);
    let created = create_pod(&server, "u", None, 30);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let out = server.kubectl(&["delete", "pod", "u", "-n", "t"]);
    assert!(out.contains("pod \"u\" deleted"), "{out}");
    assert!(get_pod(&server, "u").is_none());
    // The scheduler's status updates first, then the pod marked with
    // grace 0 and deleted, as upstream.
    let events = events_since(&server, &rv);
    let marked: Vec<&(String, Value)> = events
        .iter()
        .filter(|(_, p)| p["metadata"]["deletionTimestamp"].is_string())
        .collect();
    let kinds: Vec<&str> = marked.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED"], "{events:?}");
    assert_eq!(marked[0].1["metadata"]["deletionGracePeriodSeconds"], 0);
    assert!(events[events.len() - 2..].iter().eq(marked.iter().copied()));

    // A pod whose containers all finished has nothing left to stop.
    create_pod(&server, "done", Some("n1"), 30);
    let (code, body) = server.curl(
        "PATCH",
        "/api/v1/namespaces/t/pods/done/status",
        "application/merge-patch+json",
        br#"{"status":{"phase":"Succeeded"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    server.kubectl(&["delete", "pod", "done", "-n", "t", "--timeout=5s"]);
    assert!(get_pod(&server, "done").is_none());
}

/// `kubectl delete` returns once the node's agent sent the final delete
/// (here the tests' stand-in, which sends what the agent sends).
#[test]
fn kubectl_delete_waits_for_the_node() {
    let server = Server::start();
    create_namespace_t(&server);
    create_pod(&server, "w", Some("n1"), 30);
    let _kubelet = server.fake_kubelet();
    let started = Instant::now();
    let out = server.kubectl(&["delete", "pod", "w", "-n", "t", "--timeout=20s"]);
    assert!(out.contains("pod \"w\" deleted"), "{out}");
    assert!(get_pod(&server, "w").is_none());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn finalizers_and_grace_both_hold_a_pod() {
    let server = Server::start();
    create_namespace_t(&server);
    create_pod(&server, "f", Some("n1"), 30);
    server.kubectl(&[
        "patch",
        "pod",
        "f",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    server.kubectl(&["delete", "pod", "f", "-n", "t", "--wait=false"]);
    // Dropping the finalizer while the grace runs leaves it Terminating.
    server.kubectl(&[
        "patch",
        "pod",
        "f",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let pod = get_pod(&server, "f").expect("grace still runs");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    // The final delete (grace 0) removes it.
    server.kubectl(&[
        "delete",
        "pod",
        "f",
        "-n",
        "t",
        "--grace-period=0",
        "--force",
    ]);
    assert!(get_pod(&server, "f").is_none());

    // Grace 0 with a finalizer: marked, removed with the finalizer.
    create_pod(&server, "g", Some("n1"), 30);
    server.kubectl(&[
        "patch",
        "pod",
        "g",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    server.kubectl(&[
        "delete",
        "pod",
        "g",
        "-n",
        "t",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let pod = get_pod(&server, "g").expect("the finalizer holds it");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 0);
    server.kubectl(&[
        "patch",
        "pod",
        "g",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(get_pod(&server, "g").is_none());
}

/// deletecollection, eviction and namespace deletion mark scheduled pods
/// the same way; the namespace stays Terminating until its pods are gone.
#[test]
fn every_delete_path_is_graceful() {
    let server = Server::start();
    create_namespace_t(&server);
    create_pod(&server, "a", Some("n1"), 30);
    create_pod(&server, "b", None, 30);
    let (code, body) = server.curl(
        "DELETE",
        "/api/v1/namespaces/t/pods",
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let a = get_pod(&server, "a").expect("scheduled: marked");
    assert_eq!(a["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(get_pod(&server, "b").is_none(), "unscheduled: gone");

    create_pod(&server, "e", Some("n1"), 30);
    let eviction =
        br#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"e","namespace":"t"},
"deleteOptions":{"gracePeriodSeconds":7}}"#;
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/t/pods/e/eviction",
        "application/json",
        eviction,
    );
    assert_eq!(code, 201, "{body}");
    let e = get_pod(&server, "e").expect("evicted: marked");
    assert_eq!(e["metadata"]["deletionGracePeriodSeconds"], 7);

    create_pod(&server, "c", Some("n1"), 30);
    server.kubectl(&["delete", "namespace", "t", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let ns = json(&server.kubectl(&["get", "namespace", "t", "-o", "json"]));
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    let c = get_pod(&server, "c").expect("the namespace's pod is marked");
    assert_eq!(c["metadata"]["deletionGracePeriodSeconds"], 30);

    // The node finishes them: then the namespace goes.
    let _kubelet = server.fake_kubelet();
    eventually("the namespace to go", || {
        !server
            .try_kubectl(&["get", "namespace", "t"])
            .status
            .success()
    });
}
