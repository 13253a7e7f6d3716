//! The controller manager and scheduler inside a real `cairn server`,
//! driven by the real kubectl: Deployments roll out through ReplicaSets
//! onto registered nodes, scale, update, undo; unschedulable pods say why;
//! the garbage collector cascades deletes; of two servers on one
//! PostgreSQL only the Lease holder acts, and the other takes over.
//!
//! There is no node agent yet: nodes are registered through the API as a
//! client could (capacity, allocatable, Ready=True), and the tests mark
//! pods Ready through the status subresource, as the agent will.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, create_namespace_t, json, wait_for};
use serde_json::Value;

/// A Node manifest with `cpu`/`memory` allocatable and Ready=True.
fn node(name: &str, cpu: &str, memory: &str, labels: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}"{labels}}}}},
"spec":{{}},
"status":{{"capacity":{{"cpu":"{cpu}","memory":"{memory}","pods":"110"}},
"allocatable":{{"cpu":"{cpu}","memory":"{memory}","pods":"110"}},
"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}}]}}}}"#
    )
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    json(&server.kubectl(&all))
}

fn pods(server: &Server, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["get", "pods", "-n", "t"];
    args.extend_from_slice(extra);
    get_json(server, &args)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn active(pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

/// Marks every bound pod of namespace `t` that is not Ready as Running and
/// Ready, as the node agent would.
fn mark_bound_pods_ready(server: &Server) -> usize {
    let mut marked = 0;
    for pod in pods(server, &[]) {
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if !bound || ready || !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().expect("name");
        let patch = r#"{"status":{"phase":"Running","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}"#;
        if pod_status(server, name, patch).status.success() {
            marked += 1;
        }
    }
    marked
}

/// Runs `kubectl rollout status` while a thread plays the agent.
fn rollout_status(server: &Arc<Server>) {
    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                mark_bound_pods_ready(&server);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let out = server.try_kubectl(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "t",
        "--timeout=90s",
    ]);
    stop.store(true, Ordering::Relaxed);
    agent.join().expect("agent thread");
    assert!(
        out.status.success(),
        "rollout status failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        get_json(server, &["get", "deployment", "web", "-n", "t"])["status"]
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn images(pods: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = pods
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn deployment_rolls_out_scales_updates_and_undoes() {
    let server = Arc::new(Server::start());
    create_namespace_t(&server);
    server.register_nodes(&[
        node("n1", "4", "8Gi", ""),
        node("n2", "4", "8Gi", ""),
        node("n3", "4", "8Gi", ""),
    ]);
    // No agent runs: a stand-in finishes the pods deleted on these nodes.
    let _kubelet = server.fake_kubelet();
    server.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.0",
        "--replicas=3",
        "-n",
        "t",
    ]);

    // A ReplicaSet with the pod-template-hash, owning 3 pods spread on the nodes.
    let bound = wait_for(30, "3 bound pods", &server, || {
        let p = active(&pods(&server, &[]));
        (p.len() == 3 && p.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(p)
    });
    let rs = get_json(&server, &["get", "rs", "-n", "t"]);
    let rs = &rs["items"][0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("pod-template-hash");
    let rs_name = rs["metadata"]["name"].as_str().expect("name");
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let mut nodes: Vec<&str> = bound
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().expect("name");
            assert!(name.starts_with(&format!("{rs_name}-")), "{name}");
            assert_eq!(name.len(), rs_name.len() + 6, "{name}");
            assert_eq!(p["metadata"]["ownerReferences"][0]["name"], rs_name);
            assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
            p["spec"]["nodeName"].as_str().expect("node")
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "pods spread over the nodes");
    rollout_status(&server);
    let d = get_json(&server, &["get", "deployment", "web", "-n", "t"]);
    assert_eq!(d["status"]["availableReplicas"], 3, "{}", d["status"]);
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    let available = d["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Available")
        .expect("Available");
    assert_eq!(available["status"], "True");
    let rs = get_json(&server, &["get", "rs", rs_name, "-n", "t"]);
    assert_eq!(rs["status"]["readyReplicas"], 3, "{}", rs["status"]);
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3);

    // Scale up and down.
    server.kubectl(&["scale", "deployment/web", "--replicas=5", "-n", "t"]);
    wait_for(30, "5 pods", &server, || {
        (active(&pods(&server, &[])).len() == 5).then_some(())
    });
    server.kubectl(&["scale", "deployment/web", "--replicas=2", "-n", "t"]);
    wait_for(30, "2 pods", &server, || {
        (active(&pods(&server, &[])).len() == 2).then_some(())
    });
    rollout_status(&server);

    // A rolling update to a new image, then back.
    server.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "nginx=nginx:2.0",
        "-n",
        "t",
    ]);
    rollout_status(&server);
    let now = active(&pods(&server, &[]));
    assert_eq!(now.len(), 2);
    assert_eq!(images(&now), ["nginx:2.0"]);
    let d = get_json(&server, &["get", "deployment", "web", "-n", "t"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let history = server.kubectl(&["rollout", "history", "deployment/web", "-n", "t"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    server.kubectl(&["rollout", "undo", "deployment/web", "-n", "t"]);
    rollout_status(&server);
    let now = active(&pods(&server, &[]));
    assert_eq!(images(&now), ["nginx:1.0"]);
    let d = get_json(&server, &["get", "deployment", "web", "-n", "t"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    // The undo reused the first ReplicaSet.
    let sets = get_json(&server, &["get", "rs", "-n", "t"]);
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(2), "{sets}");

    // `rollout restart` makes a new ReplicaSet too.
    server.kubectl(&["rollout", "restart", "deployment/web", "-n", "t"]);
    rollout_status(&server);
    let sets = get_json(&server, &["get", "rs", "-n", "t"]);
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(3), "{sets}");

    // Deleting the Deployment collects its ReplicaSets and their pods.
    server.kubectl(&["delete", "deployment", "web", "-n", "t"]);
    wait_for(30, "ReplicaSets and pods collected", &server, || {
        let sets = get_json(&server, &["get", "rs", "-n", "t"]);
        let gone =
            sets["items"].as_array().is_some_and(Vec::is_empty) && pods(&server, &[]).is_empty();
        gone.then_some(())
    });
}

#[test]
fn unschedulable_pods_say_why_and_are_retried() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[node("small", "1", "2Gi", "")]);
    let pod = |name: &str, cpu: &str, selector: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{{selector}"containers":[{{"name":"c","image":"busybox","resources":{{"requests":{{"cpu":"{cpu}"}}}}}}]}}}}"#
        )
    };
    let file = server.write("big.json", &pod("big", "8", ""));
    server.kubectl(&["create", "-f", common::path_str(&file)]);
    let file = server.write(
        "picky.json",
        &pod("picky", "100m", r#""nodeSelector":{"disk":"ssd"},"#),
    );
    server.kubectl(&["create", "-f", common::path_str(&file)]);
    let condition = |name: &str| {
        let pod = get_json(&server, &["get", "pod", name, "-n", "t"]);
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled")
            .cloned()
    };
    let big = wait_for(20, "big unschedulable", &server, || condition("big"));
    assert_eq!(big["status"], "False");
    assert_eq!(big["reason"], "Unschedulable");
    assert_eq!(
        big["message"],
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    let picky = wait_for(20, "picky unschedulable", &server, || condition("picky"));
    assert_eq!(
        picky["message"],
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    );
    let events = server.kubectl(&[
        "get",
        "events",
        "-n",
        "t",
        "--field-selector",
        "involvedObject.name=big",
    ]);
    assert!(events.contains("FailedScheduling"), "{events}");

    // A tainted node is no help; a matching one takes the picky pod.
    let mut tainted = json(&node("tainted", "16", "32Gi", r#","disk":"ssd""#));
    tainted["spec"]["taints"] =
        json(r#"[{"key":"dedicated","value":"gpu","effect":"NoSchedule"}]"#);
    server.register_nodes(&[tainted.to_string()]);
    let picky = wait_for(20, "picky reconsidered", &server, || {
        condition("picky").filter(|c| c["message"].as_str().is_some_and(|m| m.starts_with("0/2")))
    });
    assert_eq!(
        picky["message"],
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    server.register_nodes(&[node("fast", "16", "32Gi", r#","disk":"ssd""#)]);
    wait_for(20, "picky bound to fast", &server, || {
        let pod = get_json(&server, &["get", "pod", "picky", "-n", "t"]);
        (pod["spec"]["nodeName"] == "fast").then_some(())
    });
    let big = get_json(&server, &["get", "pod", "big", "-n", "t"]);
    assert_eq!(
        big["spec"]["nodeName"], "fast",
        "the big pod fits the new node"
    );
}

/// A terminating pod still holds its node (its containers run out their
/// grace period there); a pod waiting for the room is bound once it is gone.
#[test]
fn terminating_pods_hold_their_node_until_gone() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[node("small", "1", "2Gi", "")]);
    let create = |name: &str| {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{"containers":[{{"name":"c","image":"busybox","resources":{{"requests":{{"cpu":"800m"}}}}}}]}}}}"#
        );
        let file = server.write(&format!("{name}.json"), &pod);
        server.kubectl(&["create", "-f", common::path_str(&file)]);
    };
    let bound = |name: &str| {
        let pod = get_json(&server, &["get", "pod", name, "-n", "t"]);
        (pod["spec"]["nodeName"] == "small").then_some(())
    };
    create("old");
    wait_for(20, "old bound", &server, || bound("old"));
    server.kubectl(&["delete", "pod", "old", "-n", "t", "--wait=false"]);
    create("new");
    let waiting = wait_for(20, "new unschedulable", &server, || {
        let pod = get_json(&server, &["get", "pod", "new", "-n", "t"]);
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .cloned()
    });
    assert_eq!(
        waiting["message"], "0/1 nodes are available: 1 Insufficient cpu.",
        "{waiting}"
    );
    // The node's stand-in kubelet finishes the old pod: the new one fits.
    let _kubelet = server.fake_kubelet();
    wait_for(20, "new bound once old is gone", &server, || bound("new"));
}

#[test]
fn garbage_collection_and_leadership() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[node("n1", "8", "16Gi", "")]);
    // No agent runs: a stand-in finishes the pods deleted on these nodes.
    let _kubelet = server.fake_kubelet();
    // The leader holds the Lease; every namespace gets its default ServiceAccount.
    let lease = wait_for(20, "controller lease", &server, || {
        let out = server.try_kubectl(&[
            "get",
            "lease",
            "cairn-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "json",
        ]);
        out.status
            .success()
            .then(|| json(&String::from_utf8_lossy(&out.stdout)))
    });
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );
    wait_for(20, "default ServiceAccount", &server, || {
        server
            .try_kubectl(&["get", "serviceaccount", "default", "-n", "t"])
            .status
            .success()
            .then_some(())
    });

    let rs = |name: &str| {
        format!(
            r#"{{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"{name}"}}}},
"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox"}}]}}}}}}}}"#
        )
    };
    let with_label = |app: &str| pods(&server, &["-l", &format!("app={app}")]);
    for name in ["bg", "orphan", "fg"] {
        let file = server.write(&format!("{name}.json"), &rs(name));
        server.kubectl(&["create", "-f", common::path_str(&file)]);
        wait_for(20, "2 pods", &server, || {
            (with_label(name).len() == 2).then_some(())
        });
    }
    // Background: the pods go after the ReplicaSet.
    server.kubectl(&["delete", "rs", "bg", "-n", "t"]);
    wait_for(20, "bg pods collected", &server, || {
        with_label("bg").is_empty().then_some(())
    });
    // Orphan: the pods stay, without an owner.
    server.kubectl(&["delete", "rs", "orphan", "-n", "t", "--cascade=orphan"]);
    wait_for(20, "orphan ReplicaSet gone", &server, || {
        (!server
            .try_kubectl(&["get", "rs", "orphan", "-n", "t"])
            .status
            .success())
        .then_some(())
    });
    let left = with_label("orphan");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|p| {
        p["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty)
    }));
    // Foreground: kubectl waits until the pods, then the ReplicaSet, are gone.
    server.kubectl(&[
        "delete",
        "rs",
        "fg",
        "-n",
        "t",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    wait_for(20, "fg gone", &server, || {
        (with_label("fg").is_empty()
            && !server
                .try_kubectl(&["get", "rs", "fg", "-n", "t"])
                .status
                .success())
        .then_some(())
    });
    // Adoption: a new ReplicaSet with the orphans' selector takes them over.
    let file = server.write("adopt.json", &rs("orphan"));
    server.kubectl(&["create", "-f", common::path_str(&file)]);
    wait_for(20, "orphans adopted", &server, || {
        let p = with_label("orphan");
        (p.len() == 2
            && p.iter()
                .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"))
        .then_some(())
    });
}

#[test]
fn disable_controllers_keeps_the_server_quiet() {
    let server = Server::start_with(&["--disable-controllers"]);
    create_namespace_t(&server);
    server.kubectl(&["create", "deployment", "web", "--image=nginx", "-n", "t"]);
    std::thread::sleep(Duration::from_secs(2));
    let sets = get_json(&server, &["get", "rs", "-n", "t"]);
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(0));
    assert!(
        !server
            .try_kubectl(&[
                "get",
                "lease",
                "-n",
                "kube-system",
                "cairn-controller-manager"
            ])
            .status
            .success()
    );
}

/// Scheduler throughput: 1,000 pending pods bound onto 100 nodes. The pods
/// wait on a node label that the test then adds to every node at once, so
/// the figure is scheduling and binding alone. Run with `--ignored`.
/// Pod garbage collection (upstream's `podgc`): pods bound to a deleted
/// Node go (after the quarantine, shortened here), a terminating pod on a
/// not-Ready node tainted `out-of-service` goes, and finished pods beyond
/// `--terminated-pod-gc-threshold` go oldest first.
#[test]
fn pod_gc_deletes_orphans_out_of_service_and_old_finished_pods() {
    let server = Server::start_with(&[
        "--pod-gc-quarantine",
        "2s",
        "--terminated-pod-gc-threshold",
        "2",
    ]);
    create_namespace_t(&server);
    server.register_nodes(&[
        node("gone", "8", "16Gi", ""),
        node("down", "8", "16Gi", ""),
        node("done", "8", "16Gi", ""),
    ]);
    let pod_on = |name: &str, node: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"t"}},
"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        )
    };
    let manifests: Vec<String> = [
        ("a", "gone"),
        ("b", "gone"),
        ("c", "down"),
        ("d", "down"),
        ("f1", "done"),
        ("f2", "done"),
        ("f3", "done"),
        ("f4", "done"),
    ]
    .iter()
    .map(|(name, node)| pod_on(name, node))
    .collect();
    server.create_file("pods.yaml", &format!("---\n{}", manifests.join("\n---\n")));
    let names = |server: &Server| -> Vec<String> {
        let mut names: Vec<String> = pods(server, &[])
            .iter()
            .map(|p| p["metadata"]["name"].as_str().expect("name").to_owned())
            .collect();
        names.sort();
        names
    };

    // Finished pods: two are kept, the oldest (f1, f2) go (created in
    // that order; within a second, the name decides).
    for name in ["f1", "f2", "f3", "f4"] {
        let patch = r#"{"status":{"phase":"Succeeded"}}"#;
        let out = pod_status(&server, name, patch);
        assert!(out.status.success(), "{out:?}");
    }
    wait_for(20, "f1 and f2 collected", &server, || {
        let left = names(&server);
        (!left.contains(&"f1".to_owned()) && !left.contains(&"f2".to_owned())).then_some(())
    });
    assert_eq!(names(&server), ["a", "b", "c", "d", "f3", "f4"]);

    // The Node object goes: its pods follow once the quarantine is over.
    server.kubectl(&["delete", "node", "gone"]);
    wait_for(20, "pods of the deleted node collected", &server, || {
        (names(&server) == ["c", "d", "f3", "f4"]).then_some(())
    });

    // A pod being deleted on a node that is down stays Terminating (no
    // kubelet finishes it) until the node is declared out of service.
    server.kubectl(&["delete", "pod", "c", "-n", "t", "--wait=false"]);
    let not_ready = r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"down"}]}}"#;
    server.kubectl(&[
        "patch",
        "node",
        "down",
        "--subresource=status",
        "--type=merge",
        "-p",
        not_ready,
    ]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        names(&server).contains(&"c".to_owned()),
        "c waits for its kubelet"
    );
    server.kubectl(&[
        "taint",
        "node",
        "down",
        "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
    ]);
    wait_for(
        20,
        "the terminating pod on the out-of-service node collected",
        &server,
        || (!names(&server).contains(&"c".to_owned())).then_some(()),
    );
}

/// Two servers on one PostgreSQL: only the Lease holder acts (a ReplicaSet
/// gets its pods once, not twice); a leader that stops releases the Lease,
/// and one that is killed loses it when it expires.
#[test]
fn two_servers_on_postgresql_act_once_and_fail_over() {
    let pg = common::postgres::PgServer::start();
    let url = pg.database_url("controllers");
    let a = Server::start_with(&["--datastore-endpoint", &url]);
    let b = Server::start_in_with(a.dir_sharing_ca(), &["--datastore-endpoint", &url]);
    create_namespace_t(&a);
    a.register_nodes(&[node("n1", "8", "16Gi", "")]);
    let leader_log = "acquired the controller lease";
    let first = wait_for(30, "a leader", &a, || {
        match (a.log().contains(leader_log), b.log().contains(leader_log)) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            (true, true) => panic!("both servers lead"),
            (false, false) => None,
        }
    });
    let (leader, other) = if first == 0 { (a, b) } else { (b, a) };
    let rs = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"once","namespace":"t"},
"spec":{"replicas":3,"selector":{"matchLabels":{"app":"once"}},
"template":{"metadata":{"labels":{"app":"once"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#;
    let file = other.write("once.json", rs);
    other.kubectl(&["create", "-f", common::path_str(&file)]);
    let count = |server: &Server| {
        let args = ["get", "pods", "-n", "t", "-l", "app=once", "-o", "json"];
        json(&server.kubectl(&args))["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for(20, "3 pods", &other, || (count(&other) == 3).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&other), 3, "only the leader acts");
    assert!(!other.log().contains(leader_log));

    // The leader stops (SIGTERM) and gives the Lease up: the other takes
    // over at its next attempt, not after the lease duration.
    drop(leader.terminate());
    let stopped = Instant::now();
    other.kubectl(&["scale", "rs", "once", "--replicas=4", "-n", "t"]);
    wait_for(20, "the other server leads and scales", &other, || {
        (count(&other) == 4).then_some(())
    });
    assert!(other.log().contains(leader_log));
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "takeover after a released Lease took {:?}",
        stopped.elapsed()
    );
    // A third server; the leader dies without a word (kill -9): the third
    // takes over once the Lease expires.
    let third = Server::start_in_with(other.dir_sharing_ca(), &["--datastore-endpoint", &url]);
    drop(other.stop());
    third.kubectl(&["scale", "rs", "once", "--replicas=5", "-n", "t"]);
    wait_for(40, "the third server leads and scales", &third, || {
        (count(&third) == 5).then_some(())
    });
    let lease = get_json(
        &third,
        &[
            "get",
            "lease",
            "cairn-controller-manager",
            "-n",
            "kube-system",
        ],
    );
    assert!(
        lease["spec"]["leaseTransitions"].as_i64() >= Some(2),
        "{lease}"
    );
}

/// A merge patch of pod `name`'s status in namespace `t`, as an agent writes it.
fn pod_status(server: &Server, name: &str, patch: &str) -> std::process::Output {
    server.try_kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        "t",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ])
}

/// Sets a pod's status as the agent would: Running with an IP, Ready or not.
fn run_pod(server: &Server, name: &str, ip: &str, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    let patch = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"PodScheduled","status":"True"}},{{"type":"Ready","status":"{ready}"}}]}}}}"#
    );
    let out = pod_status(server, name, &patch);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn services_get_endpoints_and_slices_from_ready_pods() {
    let server = Server::start();
    create_namespace_t(&server);
    server.register_nodes(&[node("n1", "8", "16Gi", "")]);
    server.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        "t",
    ]);
    let names: Vec<String> = wait_for(30, "2 bound pods", &server, || {
        let p = active(&pods(&server, &[]));
        (p.len() == 2 && p.iter().all(|p| p["spec"]["nodeName"].is_string())).then(|| {
            p.iter()
                .map(|p| p["metadata"]["name"].as_str().expect("name").to_owned())
                .collect()
        })
    });
    run_pod(&server, &names[0], "10.42.0.10", true);
    run_pod(&server, &names[1], "10.42.0.11", false);
    server.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "-n",
        "t",
    ]);
    let endpoints = wait_for(20, "endpoints", &server, || {
        let out = server.try_kubectl(&["get", "endpoints", "web", "-n", "t", "-o", "json"]);
        let e = json(&String::from_utf8_lossy(&out.stdout));
        (out.status.success() && e["subsets"].is_array()).then_some(e)
    });
    let subset = &endpoints["subsets"][0];
    assert_eq!(subset["addresses"][0]["ip"], "10.42.0.10", "{endpoints}");
    assert_eq!(
        subset["addresses"][0]["targetRef"]["name"],
        names[0].as_str()
    );
    assert_eq!(subset["notReadyAddresses"][0]["ip"], "10.42.0.11");
    assert_eq!(subset["ports"][0]["port"], 8080);
    let slices = get_json(
        &server,
        &[
            "get",
            "endpointslices",
            "-n",
            "t",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    );
    let slice = &slices["items"][0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0]["port"], 8080);
    let eps = slice["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 2, "{slice}");
    assert_eq!(eps[0]["conditions"]["ready"], true);
    assert_eq!(eps[1]["conditions"]["ready"], false);
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");

    // Readiness and membership changes follow.
    run_pod(&server, &names[1], "10.42.0.11", true);
    wait_for(20, "both ready", &server, || {
        let e = get_json(&server, &["get", "endpoints", "web", "-n", "t"]);
        (e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    // A deleted pod leaves the Endpoints at once; the slice keeps it,
    // terminating, until its node has stopped it.
    server.kubectl(&["delete", "pod", &names[0], "-n", "t", "--wait=false"]);
    wait_for(20, "deleted pod dropped", &server, || {
        let e = get_json(&server, &["get", "endpoints", "web", "-n", "t"]);
        let ips: Vec<&str> = e["subsets"][0]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str())
            .collect();
        (ips == ["10.42.0.11"]).then_some(())
    });
    let slice_endpoints = || {
        let slices = get_json(
            &server,
            &[
                "get",
                "endpointslices",
                "-n",
                "t",
                "-l",
                "kubernetes.io/service-name=web",
            ],
        );
        slices["items"][0]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let leaving = wait_for(20, "a terminating endpoint", &server, || {
        slice_endpoints()
            .into_iter()
            .find(|e| e["addresses"][0] == "10.42.0.10" && e["conditions"]["terminating"] == true)
    });
    assert_eq!(leaving["conditions"]["ready"], false, "{leaving}");
    assert_eq!(leaving["conditions"]["serving"], true, "{leaving}");
    // No agent runs: a stand-in finishes the pod on its node.
    let _kubelet = server.fake_kubelet();
    wait_for(20, "the finished pod leaves the slice", &server, || {
        let eps = slice_endpoints();
        (eps.len() == 1 && eps[0]["addresses"][0] == "10.42.0.11").then_some(())
    });
    // Deleting the Service removes both.
    server.kubectl(&["delete", "service", "web", "-n", "t"]);
    wait_for(20, "endpoints removed", &server, || {
        let gone = !server
            .try_kubectl(&["get", "endpoints", "web", "-n", "t"])
            .status
            .success();
        let slices = get_json(&server, &["get", "endpointslices", "-n", "t"]);
        (gone && slices["items"].as_array().is_some_and(Vec::is_empty)).then_some(())
    });
}
