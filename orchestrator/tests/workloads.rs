//! The workload controllers inside a real `cairn server`, driven by the
//! real kubectl: Jobs run to completion or fail, CronJobs create Jobs and
//! keep their history, DaemonSets put one pod on each eligible node and
//! roll, StatefulSets create ordered pods and their claims.
//!
//! Nodes are registered through the API as a client could, and the tests
//! set pod phases and readiness through the status subresource, as the
//! node agent does.

mod common;

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

fn job_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n"
    )
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

#[test]
fn job_runs_pods_in_parallel_to_completion() {
    let (server, _kubelet) = start();
    apply(
        &server,
        "job.yaml",
        &job_yaml("calc", "  completions: 3\n  parallelism: 2\n"),
    );
    let first = wait_for(30, "2 bound pods", &server, || {
        let p = pods(&server, "job-name=calc");
        (p.len() == 2 && p.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(p)
    });
    let job = get_json(&server, &["get", "job", "calc"]);
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    for pod in &first {
        let meta = &pod["metadata"];
        assert!(pod_name(pod).starts_with("calc-"), "{}", pod_name(pod));
        assert_eq!(meta["labels"]["batch.kubernetes.io/job-name"], "calc");
        assert_eq!(meta["labels"]["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(meta["ownerReferences"][0]["kind"], "Job");
        assert_eq!(meta["ownerReferences"][0]["controller"], true);
        set_phase(&server, pod_name(pod), "Running");
    }
    wait_for(20, "2 active, 2 ready", &server, || {
        let s = &get_json(&server, &["get", "job", "calc"])["status"];
        (s["active"] == 2 && s["ready"] == 2 && s["startTime"].is_string()).then_some(())
    });
    assert_quiet(&server, "job", "calc");
    for pod in &first {
        set_phase(&server, pod_name(pod), "Succeeded");
    }
    // One more pod for the third completion, never more than parallelism.
    let third = wait_for(30, "the third pod", &server, || {
        let p: Vec<Value> = pods(&server, "job-name=calc")
            .into_iter()
            .filter(|p| phase(p) != "Succeeded")
            .collect();
        (p.len() == 1).then(|| pod_name(&p[0]).to_owned())
    });
    let out = server.try_kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/calc",
        "-n",
        "t",
        "--timeout=1s",
    ]);
    assert!(!out.status.success(), "complete too early");
    set_phase(&server, &third, "Succeeded");
    server.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/calc",
        "-n",
        "t",
        "--timeout=30s",
    ]);
    let job = get_json(&server, &["get", "job", "calc"]);
    let status = &job["status"];
    assert_eq!(status["succeeded"], 3, "{status}");
    assert_eq!(status["active"], 0, "{status}");
    assert!(status["completionTime"].is_string(), "{status}");
    assert!(condition(&job, "SuccessCriteriaMet").is_some(), "{status}");
    assert_eq!(
        condition(&job, "Complete").expect("Complete")["reason"],
        "CompletionsReached"
    );
    let table = server.kubectl(&["get", "jobs", "-n", "t"]);
    assert!(
        table.contains("Complete") && table.contains("3/3"),
        "{table}"
    );
    let events = events_of(&server, "calc");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("SuccessfulCreate: Created pod: calc-"))
            .count(),
        3,
        "{events:?}"
    );
    assert!(
        events.contains(&"Completed: Job completed".to_owned()),
        "{events:?}"
    );
}

#[test]
fn job_fails_after_backoff_limit_and_is_deleted_after_ttl() {
    let (server, _kubelet) = start();
    apply(
        &server,
        "job.yaml",
        &job_yaml("flaky", "  backoffLimit: 1\n  ttlSecondsAfterFinished: 2\n"),
    );
    let first = wait_for(30, "a pod", &server, || {
        pods(&server, "job-name=flaky")
            .first()
            .map(|p| pod_name(p).to_owned())
    });
    set_phase(&server, &first, "Failed");
    // A replacement after the 10 s back-off.
    let started = Instant::now();
    let second = wait_for(30, "a second pod", &server, || {
        pods(&server, "job-name=flaky")
            .iter()
            .find(|p| phase(p) != "Failed")
            .map(|p| pod_name(p).to_owned())
    });
    assert!(started.elapsed() >= Duration::from_secs(7), "no back-off");
    let job = get_json(&server, &["get", "job", "flaky"]);
    assert_eq!(job["status"]["failed"], 1, "{}", job["status"]);
    assert!(condition(&job, "Failed").is_none());
    set_phase(&server, &second, "Failed");
    server.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "-n",
        "t",
        "--timeout=30s",
    ]);
    let job = get_json(&server, &["get", "job", "flaky"]);
    assert_eq!(job["status"]["failed"], 2, "{}", job["status"]);
    assert_eq!(
        condition(&job, "Failed").expect("Failed")["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(
        condition(&job, "FailureTarget").expect("target")["reason"],
        "BackoffLimitExceeded"
    );
    // ttlSecondsAfterFinished: the Job goes, and the collector takes its pods.
    wait_for(30, "the job and its pods deleted", &server, || {
        let gone = server.try_kubectl(&["get", "job", "flaky", "-n", "t"]);
        (!gone.status.success() && pods(&server, "job-name=flaky").is_empty()).then_some(())
    });
}

#[test]
fn job_deadline_and_suspend() {
    let (server, _kubelet) = start();
    apply(
        &server,
        "slow.yaml",
        &job_yaml("slow", "  activeDeadlineSeconds: 3\n"),
    );
    apply(
        &server,
        "held.yaml",
        &job_yaml(
            "held",
            "  suspend: true\n  parallelism: 2\n  completions: 2\n",
        ),
    );
    wait_for(30, "the slow pod", &server, || {
        (!pods(&server, "job-name=slow").is_empty()).then_some(())
    });
    server.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/slow",
        "-n",
        "t",
        "--timeout=30s",
    ]);
    let job = get_json(&server, &["get", "job", "slow"]);
    assert_eq!(
        condition(&job, "Failed").expect("Failed")["reason"],
        "DeadlineExceeded"
    );
    assert!(
        pods(&server, "job-name=slow").is_empty(),
        "active pods deleted"
    );

    // Suspended: no pods until resumed.
    let held = wait_for(20, "Suspended", &server, || {
        let j = get_json(&server, &["get", "job", "held"]);
        condition(&j, "Suspended").is_some().then_some(j)
    });
    assert!(held["status"]["startTime"].is_null());
    assert!(pods(&server, "job-name=held").is_empty());
    server.kubectl(&[
        "patch",
        "job",
        "held",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_for(30, "2 pods after resuming", &server, || {
        (pods(&server, "job-name=held").len() == 2).then_some(())
    });
    let job = get_json(&server, &["get", "job", "held"]);
    assert!(condition(&job, "Suspended").is_none(), "{}", job["status"]);
    assert!(job["status"]["startTime"].is_string());
    // Suspending again deletes them.
    server.kubectl(&[
        "patch",
        "job",
        "held",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    wait_for(30, "pods deleted on suspend", &server, || {
        pods(&server, "job-name=held").is_empty().then_some(())
    });
}

#[test]
fn indexed_job_completes_every_index() {
    let (server, _kubelet) = start();
    apply(
        &server,
        "idx.yaml",
        &job_yaml(
            "idx",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
        ),
    );
    let all = wait_for(30, "3 pods", &server, || {
        let p = pods(&server, "job-name=idx");
        (p.len() == 3).then_some(p)
    });
    let mut indexes: Vec<String> = all
        .iter()
        .map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .expect("index")
                .to_owned()
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    for pod in &all {
        set_phase(&server, pod_name(pod), "Succeeded");
    }
    server.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "-n",
        "t",
        "--timeout=30s",
    ]);
    let job = get_json(&server, &["get", "job", "idx"]);
    assert_eq!(
        job["status"]["completedIndexes"], "0-2",
        "{}",
        job["status"]
    );
}

const CRONJOB: &str = "apiVersion: batch/v1
kind: CronJob
metadata:
  name: every
spec:
  schedule: '* * * * *'
  successfulJobsHistoryLimit: 2
  failedJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels:
        from: every
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: busybox
";

/// Runs `kubectl create job NAME --from=cronjob/every` and ends its pod in `phase`.
fn manual_job(server: &Server, job: &str, phase: &str) {
    server.kubectl(&["create", "job", job, "--from=cronjob/every", "-n", "t"]);
    let pod = wait_for(30, "the manual job's pod", server, || {
        pods(server, &format!("job-name={job}"))
            .first()
            .map(|p| pod_name(p).to_owned())
    });
    set_phase(server, &pod, phase);
    let cond = if phase == "Succeeded" {
        "complete"
    } else {
        "failed"
    };
    server.kubectl(&[
        "wait",
        &format!("--for=condition={cond}"),
        &format!("job/{job}"),
        "-n",
        "t",
        "--timeout=30s",
    ]);
}

fn job_names(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = get_json(server, &["get", "jobs"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .map(|j| j["metadata"]["name"].as_str().unwrap_or("").to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn cronjob_runs_on_schedule_and_keeps_history() {
    let (server, _kubelet) = start();
    apply(&server, "cj.yaml", CRONJOB);
    for (job, phase) in [
        ("ok1", "Succeeded"),
        ("ok2", "Succeeded"),
        ("bad1", "Failed"),
        ("ok3", "Succeeded"),
        ("bad2", "Failed"),
    ] {
        manual_job(&server, job, phase);
    }
    wait_for(30, "history limits", &server, || {
        let names: Vec<String> = job_names(&server)
            .into_iter()
            .filter(|n| !n.starts_with("every-"))
            .collect();
        (names == ["bad2", "ok2", "ok3"]).then_some(())
    });
    let cj = get_json(&server, &["get", "cronjob", "every"]);
    assert!(
        cj["status"]["lastSuccessfulTime"].is_string(),
        "{}",
        cj["status"]
    );

    // The scheduled run, at the next minute at the latest.
    let job = wait_for(75, "a scheduled job", &server, || {
        get_json(&server, &["get", "jobs", "-l", "from=every"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("every-"))
            })
            .cloned()
    });
    let name = job["metadata"]["name"].as_str().expect("name");
    let annotation =
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .expect("scheduled timestamp");
    let scheduled: jiff::Timestamp = annotation.parse().expect("RFC 3339");
    assert_eq!(name, format!("every-{}", scheduled.as_second() / 60));
    assert_eq!(scheduled.as_second() % 60, 0);
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = wait_for(20, "lastScheduleTime and active", &server, || {
        let cj = get_json(&server, &["get", "cronjob", "every"]);
        (cj["status"]["active"][0]["name"] == name).then_some(cj)
    });
    let last: jiff::Timestamp = cj["status"]["lastScheduleTime"]
        .as_str()
        .expect("lastScheduleTime")
        .parse()
        .expect("time");
    assert_eq!(last, scheduled);
    let table = server.kubectl(&["get", "cronjobs", "-n", "t"]);
    assert!(table.contains("* * * * *"), "{table}");

    // Replace: the next run deletes the still active one.
    server.kubectl(&[
        "patch",
        "cronjob",
        "every",
        "-n",
        "t",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrencyPolicy":"Replace"}}"#,
    ]);
    let next = format!("every-{}", scheduled.as_second() / 60 + 1);
    wait_for(75, "the next run replacing the first", &server, || {
        let names = job_names(&server);
        (names.contains(&next) && !names.iter().any(|n| n == name)).then_some(())
    });
    let cj = get_json(&server, &["get", "cronjob", "every"]);
    assert_eq!(
        cj["status"]["active"].as_array().map(Vec::len),
        Some(1),
        "{}",
        cj["status"]
    );
    assert_eq!(cj["status"]["active"][0]["name"], next.as_str());

    // Deleting the CronJob takes its Jobs.
    server.kubectl(&["delete", "cronjob", "every", "-n", "t"]);
    wait_for(30, "jobs collected", &server, || {
        job_names(&server).is_empty().then_some(())
    });
}

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
