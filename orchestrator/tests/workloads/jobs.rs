//! Jobs (parallel, failing with back-off and TTL, deadline and suspend,
//! indexed) and CronJobs (schedule and history).

use super::*;

fn job_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n"
    )
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
