//! The Job controller: runs a Job's pods to completion, as upstream's
//! `pkg/controller/job` (and the TTL-after-finished controller).
//!
//! A sync of one Job:
//! 1. A finished Job (`Complete` or `Failed`) is only kept for
//!    `ttlSecondsAfterFinished`, then deleted with background propagation
//!    (the garbage collector removes its pods).
//! 2. Its pods are those whose controller reference is the Job. Counts:
//!    `succeeded`/`failed` pods by phase (with `restartPolicy: OnFailure`
//!    container restarts count as failures for `backoffLimit`), `active`
//!    the others not being deleted, `ready` the active Ready ones.
//! 3. `suspend`: active pods are deleted, `Suspended=True` (`JobSuspended`)
//!    and `startTime` cleared; resuming sets `Suspended=False`
//!    (`JobResumed`) and a fresh `startTime`.
//! 4. Failure: more failures than `backoffLimit` (`BackoffLimitExceeded`)
//!    or active longer than `activeDeadlineSeconds` (`DeadlineExceeded`).
//!    Success: `completions` pods (NonIndexed) or indexes (Indexed)
//!    succeeded; without `completions`, one success and no active pod. As
//!    1.32 does, the interim condition (`FailureTarget`,
//!    `SuccessCriteriaMet`) comes first while the remaining active pods
//!    are deleted, then the terminal one (`Failed`, `Complete` with
//!    `completionTime`) once none is left.
//! 5. Otherwise active pods are kept at `min(parallelism, remaining)`:
//!    NonIndexed pods are `<job>-<random>`; Indexed ones `<job>-<i>-<random>`
//!    with the `batch.kubernetes.io/job-completion-index` annotation and
//!    label, the `JOB_COMPLETION_INDEX` env and hostname `<job>-<i>`. After
//!    failures, new pods wait an exponential back-off (10 s doubling to
//!    6 min), as upstream's.
//!
//! # Current limitations
//! - Counts come from the pods that exist (upstream's legacy tracking):
//!   pods are created without the `batch.kubernetes.io/job-tracking`
//!   finalizer, so a finished pod deleted by hand is no longer counted.
//! - No `podFailurePolicy`, `successPolicy`, `backoffLimitPerIndex`,
//!   `podReplacementPolicy: Failed` or `managedBy`; orphan pods matching a
//!   manual selector are not adopted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use super::client::Client;
use super::events::{self, Type};
use super::objects::{controlled_by, is_deleting, name, namespace, now, pod_active, pod_ready};
use super::queue::Queue;
use super::reflector::{JOBS, PODS, Reflector, key_of, rv_of};

mod rules;

pub use rules::{INDEX, condition_true, finished, index_ranges};
use rules::{backoff_delay, pod_for, pod_index, seconds_since, set_condition};

const BURST: usize = 500;

/// Consecutive failures seen of one Job, and when the last was seen.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failed: i64,
    succeeded: i64,
    consecutive: u32,
    at: Instant,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct Jobs {
    client: Client,
    jobs: Arc<Reflector>,
    pods: Arc<Reflector>,
    backoff: Arc<Mutex<HashMap<String, Backoff>>>,
    /// Keys of Jobs to sync.
    pub queue: Queue,
}

impl Jobs {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(client: Client, jobs: Arc<Reflector>, pods: Arc<Reflector>) -> Jobs {
        let queue = Queue::new();
        queue.follow(&jobs);
        queue.follow_owned(&pods, "Job");
        Jobs {
            client,
            jobs,
            pods,
            backoff: Arc::new(Mutex::new(HashMap::new())),
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.jobs, &self.pods];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(job) = self.jobs.get(key) else {
            self.backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            return Ok(());
        };
        if is_deleting(&job) {
            return Ok(());
        }
        if finished(&job) {
            return self.expire(key, &job).await;
        }
        let spec = &job["spec"];
        let pods: Vec<Arc<Value>> = self
            .pods
            .in_namespace(namespace(&job))
            .into_iter()
            .filter(|p| controlled_by(p, super::objects::uid(&job)))
            .collect();
        let indexed = spec["completionMode"] == "Indexed";
        let active: Vec<Arc<Value>> = pods.iter().filter(|p| pod_active(p)).cloned().collect();
        let succeeded_pods = pods.iter().filter(|p| p["status"]["phase"] == "Succeeded");
        let completed: BTreeSet<i64> = succeeded_pods
            .clone()
            .filter_map(|p| pod_index(p))
            .collect();
        let succeeded = succeeded_pods.count() as i64;
        let failed = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .count() as i64;
        let restarts: i64 = if spec["template"]["spec"]["restartPolicy"] == "OnFailure" {
            active
                .iter()
                .flat_map(|p| p["status"]["containerStatuses"].as_array().cloned())
                .flatten()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum()
        } else {
            0
        };
        let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;

        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        let suspended = spec["suspend"].as_bool() == Some(true);
        let mut requeue: Option<Duration> = None;
        let mut last_rv = 0;
        let mut errors: Vec<String> = Vec::new();
        let mut events: Vec<(Type, String, String)> = Vec::new();

        // What the Job should become.
        let completions = spec["completions"].as_i64();
        let done = if indexed {
            completions.is_some_and(|c| completed.range(0..c).count() as i64 >= c)
        } else {
            match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            }
        };
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let elapsed = seconds_since(&status["startTime"]);
        let deadline = spec["activeDeadlineSeconds"].as_i64();
        let failure = if condition_true(&job, "FailureTarget").is_some() {
            condition_true(&job, "FailureTarget").map(|c| {
                (
                    c["reason"].as_str().unwrap_or("").to_owned(),
                    c["message"].as_str().unwrap_or("").to_owned(),
                )
            })
        } else if failed + restarts > backoff_limit {
            Some((
                "BackoffLimitExceeded".to_owned(),
                "Job has reached the specified backoff limit".to_owned(),
            ))
        } else if !suspended
            && let (Some(limit), Some(elapsed)) = (deadline, elapsed)
            && elapsed >= limit
        {
            Some((
                "DeadlineExceeded".to_owned(),
                "Job was active longer than specified deadline".to_owned(),
            ))
        } else {
            None
        };

        if let Some((reason, message)) = &failure {
            set_condition(&mut conditions, "FailureTarget", "True", reason, message);
            if active.is_empty() {
                set_condition(&mut conditions, "Failed", "True", reason, message);
                events.push((Type::Warning, reason.clone(), message.clone()));
            } else {
                last_rv = self.delete_pods(&job, &active, &mut errors).await;
            }
        } else if done || condition_true(&job, "SuccessCriteriaMet").is_some() {
            let message = "Reached expected number of succeeded pods";
            set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                message,
            );
            if active.is_empty() {
                set_condition(
                    &mut conditions,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    message,
                );
                status["completionTime"] = now().into();
                events.push((Type::Normal, "Completed".into(), "Job completed".into()));
            } else {
                last_rv = self.delete_pods(&job, &active, &mut errors).await;
            }
        } else if suspended {
            if condition_true(&job, "Suspended").is_none() {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                events.push((Type::Normal, "Suspended".into(), "Job suspended".into()));
                status["startTime"] = Value::Null;
            }
            last_rv = self.delete_pods(&job, &active, &mut errors).await;
        } else {
            if condition_true(&job, "Suspended").is_some() {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                );
                events.push((Type::Normal, "Resumed".into(), "Job resumed".into()));
                status["startTime"] = Value::Null;
            }
            if !status["startTime"].is_string() {
                status["startTime"] = now().into();
            }
            if let Some(limit) = deadline {
                let left = limit - seconds_since(&status["startTime"]).unwrap_or(0);
                requeue = Some(Duration::from_secs(left.max(0) as u64 + 1));
            }
            let wait = self.backoff_left(key, failed + restarts, succeeded);
            if wait.is_zero() {
                last_rv = self
                    .manage(&job, &active, &completed, succeeded, &mut errors)
                    .await;
            } else {
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
        }
        if last_rv > 0 {
            self.pods.wait_for(last_rv, Duration::from_secs(10)).await;
        }

        // Counts after this sync's deletions.
        let deleted_now = last_rv > 0 && (failure.is_some() || done || suspended);
        status["active"] = if deleted_now { 0 } else { active.len() as i64 }.into();
        status["ready"] = if deleted_now { 0 } else { ready }.into();
        status["succeeded"] = succeeded.into();
        status["failed"] = failed.into();
        // Pods being deleted that have not stopped yet (their agent's
        // grace period runs), as the cache holds them after this sync.
        let terminating = self
            .pods
            .in_namespace(namespace(&job))
            .into_iter()
            .filter(|p| controlled_by(p, super::objects::uid(&job)) && is_deleting(p))
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        status["terminating"] = (terminating as i64).into();
        status["uncountedTerminatedPods"] = json!({});
        if indexed {
            status["completedIndexes"] = index_ranges(&completed).into();
        }
        status["conditions"] = conditions.into();
        if status != job["status"] {
            let path = format!("{}/status", JOBS.path(key));
            match self
                .client
                .merge_patch(&path, &json!({"status": status}))
                .await
            {
                Ok(_) => {
                    for (kind, reason, message) in &events {
                        self.event(&job, *kind, reason, message).await;
                    }
                }
                Err(err) if err.is_not_found() => return Ok(()),
                Err(err) => errors.push(format!("status of {}: {err}", name(&job))),
            }
        }
        if let Some(delay) = requeue {
            self.queue.add_after(key, delay);
        }
        match errors.first() {
            Some(err) => Err(format!("job {key}: {} errors: {err}", errors.len())),
            None => Ok(()),
        }
    }

    /// How long new pods must still wait after the Job's failures.
    fn backoff_left(&self, key: &str, failed: i64, succeeded: i64) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let record = map.entry(key.to_owned()).or_insert(Backoff {
            failed: 0,
            succeeded,
            consecutive: 0,
            at: Instant::now(),
        });
        if succeeded > record.succeeded {
            record.consecutive = 0;
        }
        if failed > record.failed {
            let more = u32::try_from(failed - record.failed).unwrap_or(u32::MAX);
            record.consecutive = record.consecutive.saturating_add(more);
            record.at = Instant::now();
        }
        record.failed = failed;
        record.succeeded = succeeded;
        backoff_delay(record.consecutive).saturating_sub(record.at.elapsed())
    }

    /// Creates or deletes pods towards the wanted active count; returns the
    /// last resourceVersion written.
    async fn manage(
        &self,
        job: &Value,
        active: &[Arc<Value>],
        completed: &BTreeSet<i64>,
        succeeded: i64,
        errors: &mut Vec<String>,
    ) -> i64 {
        let spec = &job["spec"];
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let active_n = active.len() as i64;
        let want = match spec["completions"].as_i64() {
            // Work queue: no new pods once one succeeded.
            None if succeeded > 0 => active_n.min(parallelism),
            None => parallelism,
            Some(c) if spec["completionMode"] == "Indexed" => {
                parallelism.min(c - completed.range(0..c).count() as i64)
            }
            Some(c) => parallelism.min(c - succeeded),
        }
        .max(0);
        if active_n > want {
            let mut doomed = active.to_vec();
            // Not ready first, then the youngest.
            doomed.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    ),
                )
            });
            doomed.truncate((active_n - want) as usize);
            return self.delete_pods(job, &doomed, errors).await;
        }
        let missing = ((want - active_n) as usize).min(BURST);
        if missing == 0 {
            return 0;
        }
        let new_pods: Vec<Value> = if spec["completionMode"] == "Indexed" {
            let c = spec["completions"].as_i64().unwrap_or(0);
            let running: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
            (0..c)
                .filter(|i| !completed.contains(i) && !running.contains(i))
                .take(missing)
                .map(|i| pod_for(job, Some(i)))
                .collect()
        } else {
            (0..missing).map(|_| pod_for(job, None)).collect()
        };
        let path = PODS.collection(Some(namespace(job)));
        let mut last_rv = 0;
        for result in join_all(new_pods.iter().map(|p| self.client.post(&path, p))).await {
            match result {
                Ok(created) => {
                    last_rv = last_rv.max(rv_of(&created));
                    let message = format!("Created pod: {}", name(&created));
                    self.event(job, Type::Normal, "SuccessfulCreate", &message)
                        .await;
                }
                Err(err) => errors.push(format!("creating a pod: {err}")),
            }
        }
        last_rv
    }

    async fn delete_pods(&self, job: &Value, pods: &[Arc<Value>], errors: &mut Vec<String>) -> i64 {
        let paths: Vec<String> = pods.iter().map(|p| PODS.path(&key_of(p))).collect();
        let mut last_rv = 0;
        let results = join_all(paths.iter().map(|p| self.client.delete(p, &Value::Null))).await;
        for (result, pod) in results.into_iter().zip(pods) {
            match result {
                Ok(deleted) => {
                    last_rv = last_rv.max(rv_of(&deleted).max(1));
                    let message = format!("Deleted pod: {}", name(pod));
                    self.event(job, Type::Normal, "SuccessfulDelete", &message)
                        .await;
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => errors.push(format!("deleting a pod: {err}")),
            }
        }
        last_rv
    }

    async fn event(&self, job: &Value, kind: Type, reason: &str, message: &str) {
        events::record(
            &self.client,
            "job-controller",
            ("batch/v1", "Job"),
            job,
            kind,
            reason,
            message,
        )
        .await;
    }

    /// Deletes a finished Job once its `ttlSecondsAfterFinished` is over.
    async fn expire(&self, key: &str, job: &Value) -> Result<(), String> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return Ok(());
        };
        let finished_at = condition_true(job, "Complete")
            .or_else(|| condition_true(job, "Failed"))
            .map(|c| &c["lastTransitionTime"])
            .filter(|t| t.is_string())
            .unwrap_or(&job["status"]["completionTime"]);
        let since = seconds_since(finished_at).unwrap_or(0);
        if since < ttl {
            self.queue
                .add_after(key, Duration::from_secs((ttl - since) as u64));
            return Ok(());
        }
        let options = json!({
            "propagationPolicy": "Background",
            "preconditions": {"uid": super::objects::uid(job)},
        });
        match self.client.delete(&JOBS.path(key), &options).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() || err.is_conflict() => Ok(()),
            Err(err) => Err(format!("deleting expired job {key}: {err}")),
        }
    }
}
