//! DaemonSets (placement, rolling update, history and undo) and
//! StatefulSets (order, claims, scale-down, partitioned update, history).

use super::*;

/// Marks every bound, not yet Ready pod of namespace `t` Running and Ready.
fn mark_bound_pods_ready(server: &Server) {
    for pod in pods(server, "app") {
        let bound = pod["spec"]["nodeName"].is_string();
        if bound && condition(&pod, "Ready").is_none() {
            let out = server.try_kubectl(&[
                "patch",
                "pod",
                pod_name(&pod),
                "-n",
                "t",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Running","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True"}]}}"#,
            ]);
            let _ = out;
        }
    }
}

/// `kubectl rollout status` of `what` while a thread plays the agent.
fn rollout_status(server: &Arc<Server>, what: &str) {
    rollout_status_says(server, what, "successfully rolled out");
}

/// `kubectl rollout status` of `what`, expecting `says` in its output.
fn rollout_status_says(server: &Arc<Server>, what: &str, says: &str) {
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
    let out = server.try_kubectl(&["rollout", "status", what, "-n", "t", "--timeout=90s"]);
    stop.store(true, Ordering::Relaxed);
    agent.join().expect("agent thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(says),
        "rollout status {what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pod node → image, for pods with label `app`.
fn placement(server: &Server) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pods(server, "app")
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: c
        image: busybox:1
";

#[test]
fn daemonset_runs_on_each_eligible_node_and_rolls() {
    let (server, _kubelet) = start();
    let server = Arc::new(server);
    server.register_nodes(&[node(
        "n3",
        r#","gpu":"yes""#,
        r#"{"key":"dedicated","value":"gpu","effect":"NoSchedule"}"#,
    )]);
    apply(&server, "ds.yaml", DAEMONSET);
    let two = |img: &str| {
        vec![
            ("n1".to_owned(), img.to_owned()),
            ("n2".to_owned(), img.to_owned()),
        ]
    };
    wait_for(30, "a pod bound on n1 and n2", &server, || {
        (placement(&server) == two("busybox:1")).then_some(())
    });
    let pod = &pods(&server, "app")[0];
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    assert!(pod["metadata"]["labels"]["controller-revision-hash"].is_string());
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unschedulable"),
        "{tolerations}"
    );
    let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0];
    assert_eq!(term["matchFields"][0]["key"], "metadata.name");
    rollout_status(&server, "ds/agent");
    let ds = get_json(&server, &["get", "ds", "agent"]);
    let status = &ds["status"];
    assert_eq!(status["desiredNumberScheduled"], 2, "{status}");
    assert_eq!(status["numberReady"], 2, "{status}");
    assert_eq!(status["numberAvailable"], 2, "{status}");
    assert_eq!(status["observedGeneration"], ds["metadata"]["generation"]);
    assert_quiet(&server, "ds", "agent");

    // A rolling update, one node at a time.
    let old_hash = pod["metadata"]["labels"]["controller-revision-hash"].clone();
    server.kubectl(&["set", "image", "ds/agent", "c=busybox:2", "-n", "t"]);
    rollout_status(&server, "ds/agent");
    assert_eq!(placement(&server), two("busybox:2"));
    for pod in pods(&server, "app") {
        assert_ne!(
            pod["metadata"]["labels"]["controller-revision-hash"],
            old_hash
        );
    }
    let status = &get_json(&server, &["get", "ds", "agent"])["status"];
    assert_eq!(status["updatedNumberScheduled"], 2, "{status}");

    // Each template is a ControllerRevision: history lists them, undo puts
    // the first back (and renumbers its revision to the top).
    let revisions = server.kubectl(&["get", "controllerrevisions", "-n", "t"]);
    assert!(
        revisions.contains("daemonset.apps/agent"),
        "no CONTROLLER column: {revisions}"
    );
    let history = server.kubectl(&["rollout", "history", "ds/agent", "-n", "t"]);
    assert_eq!(revision_numbers(&history), [1, 2], "{history}");
    let undone = server.kubectl(&["rollout", "undo", "ds/agent", "-n", "t"]);
    assert!(undone.contains("rolled back"), "{undone}");
    rollout_status(&server, "ds/agent");
    assert_eq!(placement(&server), two("busybox:1"));
    for pod in pods(&server, "app") {
        assert_eq!(
            pod["metadata"]["labels"]["controller-revision-hash"],
            old_hash
        );
    }
    let history = server.kubectl(&["rollout", "history", "ds/agent", "-n", "t"]);
    assert_eq!(revision_numbers(&history), [2, 3], "{history}");

    // Tolerating the taint puts a pod on n3; a nodeSelector narrows it down.
    server.kubectl(&[
        "patch",
        "ds",
        "agent",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"tolerations":[{"key":"dedicated","operator":"Equal","value":"gpu","effect":"NoSchedule"}]}}}}"#,
    ]);
    rollout_status(&server, "ds/agent");
    wait_for(30, "a pod on every node", &server, || {
        let nodes: Vec<String> = placement(&server).into_iter().map(|(n, _)| n).collect();
        (nodes == ["n1", "n2", "n3"]).then_some(())
    });
    server.kubectl(&[
        "patch",
        "ds",
        "agent",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"gpu":"yes"}}}}}"#,
    ]);
    rollout_status(&server, "ds/agent");
    wait_for(30, "only n3", &server, || {
        let nodes: Vec<String> = placement(&server).into_iter().map(|(n, _)| n).collect();
        (nodes == ["n3"]).then_some(())
    });
    let status = &get_json(&server, &["get", "ds", "agent"])["status"];
    assert_eq!(status["desiredNumberScheduled"], 1, "{status}");

    // Deleting the DaemonSet: the collector takes its pods and revisions.
    server.kubectl(&["delete", "ds", "agent", "-n", "t"]);
    wait_for(30, "daemon pods and revisions collected", &server, || {
        let revisions = server.kubectl(&["get", "controllerrevisions", "-n", "t", "-o", "name"]);
        (pods(&server, "app=agent").is_empty() && revisions.trim().is_empty()).then_some(())
    });
}

/// The revision numbers `kubectl rollout history` lists.
fn revision_numbers(history: &str) -> Vec<i64> {
    history
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

const STATEFULSET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: c
        image: busybox:1
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
";

fn pod_names(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = pods(server, "app=db")
        .iter()
        .map(|p| pod_name(p).to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn statefulset_orders_pods_claims_scale_down_and_partitioned_update() {
    let (server, _kubelet) = start();
    let server = Arc::new(server);
    apply(&server, "sts.yaml", STATEFULSET);
    // One at a time: the next ordinal waits for the previous to be Ready.
    for (i, expected) in [
        vec!["db-0"],
        vec!["db-0", "db-1"],
        vec!["db-0", "db-1", "db-2"],
    ]
    .into_iter()
    .enumerate()
    {
        let pod = format!("db-{i}");
        wait_for(30, &format!("{pod} bound"), &server, || {
            pods(&server, "app=db")
                .iter()
                .any(|p| pod_name(p) == pod && p["spec"]["nodeName"].is_string())
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            pod_names(&server),
            expected,
            "no pod before its predecessor is Ready"
        );
        set_phase(&server, &pod, "Running");
    }
    let db1 = &pods(&server, "statefulset.kubernetes.io/pod-name=db-1")[0];
    assert_eq!(db1["spec"]["hostname"], "db-1");
    assert_eq!(db1["spec"]["subdomain"], "db");
    assert_eq!(
        db1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );
    assert_eq!(
        db1["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-db-1"
    );
    let claims = server.kubectl(&["get", "pvc", "-n", "t", "-o", "name"]);
    assert_eq!(
        claims.lines().collect::<Vec<_>>(),
        [
            "persistentvolumeclaim/data-db-0",
            "persistentvolumeclaim/data-db-1",
            "persistentvolumeclaim/data-db-2"
        ]
    );
    rollout_status_says(&server, "sts/db", "roll out complete");
    let status = &get_json(&server, &["get", "sts", "db"])["status"];
    assert_eq!(status["readyReplicas"], 3, "{status}");
    let events = events_of(&server, "db");
    for expected in [
        "SuccessfulCreate: create Claim data-db-0 Pod db-0 in StatefulSet db success",
        "SuccessfulCreate: create Pod db-2 in StatefulSet db successful",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} not in {events:?}"
        );
    }
    assert_eq!(
        status["currentRevision"], status["updateRevision"],
        "{status}"
    );

    // Scale down: highest ordinal first; claims stay.
    server.kubectl(&["scale", "sts/db", "--replicas=1", "-n", "t"]);
    wait_for(30, "db-0 alone", &server, || {
        (pod_names(&server) == ["db-0"]).then_some(())
    });
    let claims = server.kubectl(&["get", "pvc", "-n", "t", "-o", "name"]);
    assert_eq!(claims.lines().count(), 3, "{claims}");

    // Back to 3, then a partitioned update: only ordinals >= 1 change.
    server.kubectl(&["scale", "sts/db", "--replicas=3", "-n", "t"]);
    rollout_status_says(&server, "sts/db", "roll out complete");
    server.kubectl(&[
        "patch",
        "sts",
        "db",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}},"template":{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}}}"#,
    ]);
    rollout_status_says(
        &server,
        "sts/db",
        "partitioned roll out complete: 2 new pods",
    );
    let images: Vec<(String, String)> = pods(&server, "app=db")
        .iter()
        .map(|p| {
            (
                pod_name(p).to_owned(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(
        images,
        [
            ("db-0".to_owned(), "busybox:1".to_owned()),
            ("db-1".to_owned(), "busybox:2".to_owned()),
            ("db-2".to_owned(), "busybox:2".to_owned()),
        ]
    );
    let status = &get_json(&server, &["get", "sts", "db"])["status"];
    assert_eq!(status["updatedReplicas"], 2, "{status}");
    assert_ne!(
        status["currentRevision"], status["updateRevision"],
        "{status}"
    );

    // Below the partition a pod made again keeps the current revision's
    // template, which the history holds.
    let by_name = "statefulset.kubernetes.io/pod-name=db-0";
    let old_uid = pods(&server, by_name)[0]["metadata"]["uid"].clone();
    server.kubectl(&["delete", "pod", "db-0", "-n", "t", "--wait=false"]);
    let db0 = wait_for(30, "db-0 made again", &server, || {
        pods(&server, by_name)
            .into_iter()
            .find(|p| p["metadata"]["uid"] != old_uid)
    });
    assert_eq!(db0["spec"]["containers"][0]["image"], "busybox:1", "{db0}");
    assert_eq!(
        db0["metadata"]["labels"]["controller-revision-hash"],
        status["currentRevision"]
    );
    let history = server.kubectl(&["rollout", "history", "sts/db", "-n", "t"]);
    assert_eq!(revision_numbers(&history), [1, 2], "{history}");

    // Deleting the StatefulSet takes its pods and keeps the claims.
    server.kubectl(&["delete", "sts", "db", "-n", "t"]);
    wait_for(30, "stateful pods collected", &server, || {
        pod_names(&server).is_empty().then_some(())
    });
    let claims = server.kubectl(&["get", "pvc", "-n", "t", "-o", "name"]);
    assert_eq!(claims.lines().count(), 3, "{claims}");
}
