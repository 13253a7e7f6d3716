//! The CronJob controller: creates a Job at each scheduled time, as
//! upstream's `pkg/controller/cronjob` (v2).
//!
//! A sync of one CronJob:
//! 1. Its Jobs are those whose controller reference is the CronJob
//!    (`kubectl create job --from=cronjob/x` sets one too). Unfinished ones
//!    are `status.active`; the latest `completionTime` of a `Complete` one
//!    is `status.lastSuccessfulTime`.
//! 2. Finished Jobs beyond `successfulJobsHistoryLimit` /
//!    `failedJobsHistoryLimit` are deleted, oldest first, with background
//!    propagation.
//! 3. Unless suspended: the most recent scheduled time after
//!    `lastScheduleTime` (or the creation) that is not older than
//!    `startingDeadlineSeconds` is run, once: `Forbid` skips it while a Job
//!    is active, `Replace` deletes the active Jobs first, `Allow` runs
//!    alongside. The Job is `<cronjob>-<scheduled minutes since the
//!    epoch>`, from `jobTemplate`, annotated with
//!    `batch.kubernetes.io/cronjob-scheduled-timestamp`, and the time
//!    becomes `lastScheduleTime`. The CronJob is synced again at its next
//!    scheduled time.
//!
//! # Current limitations
//! - No events (upstream's `SawCompletedJob`, `MissSchedule`,
//!   `TooManyMissedTimes`...); an invalid schedule or time zone is logged.

mod schedule;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::warn;

use super::client::Client;
use super::events::{self, Type};
use super::job::{condition_true, finished};
use super::objects::{controlled_by, is_deleting, name, namespace, owner_ref, uid};
use super::queue::Queue;
use super::reflector::{CRONJOBS, JOBS, Reflector, key_of, rv_of};
pub use schedule::{Schedule, ScheduleError};

/// The annotation with a Job's scheduled time.
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The controller's state.
#[derive(Debug, Clone)]
pub struct CronJobs {
    client: Client,
    cronjobs: Arc<Reflector>,
    jobs: Arc<Reflector>,
    /// Keys of CronJobs to sync.
    pub queue: Queue,
}

fn parse_time(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

/// The most recent scheduled time in `(earliest, now]`, if any.
pub fn most_recent(schedule: &Schedule, earliest: Timestamp, now: Timestamp) -> Option<Timestamp> {
    // A schedule lagging more than a year: start a year back.
    let year_ago = now
        .checked_sub(jiff::SignedDuration::from_hours(24 * 366))
        .ok()?;
    let mut t = schedule.next(earliest.max(year_ago))?;
    if t > now {
        return None;
    }
    while let Some(n) = schedule.next(t).filter(|n| *n <= now) {
        t = n;
    }
    Some(t)
}

/// The name of the Job for `scheduled`: minutes since the epoch.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name(job),
        "namespace": namespace(job),
        "uid": uid(job),
        "resourceVersion": job["metadata"]["resourceVersion"],
    })
}

fn started(job: &Value) -> String {
    job["status"]["startTime"]
        .as_str()
        .or_else(|| job["metadata"]["creationTimestamp"].as_str())
        .unwrap_or("")
        .to_owned()
}

impl CronJobs {
    /// Registers the controller's handlers on the reflectors.
    pub fn new(client: Client, cronjobs: Arc<Reflector>, jobs: Arc<Reflector>) -> CronJobs {
        let queue = Queue::new();
        queue.follow(&cronjobs);
        queue.follow_owned(&jobs, "CronJob");
        CronJobs {
            client,
            cronjobs,
            jobs,
            queue,
        }
    }

    /// Processes the queue until aborted.
    pub async fn run(self, workers: usize) {
        let caches = [&self.cronjobs, &self.jobs];
        self.queue
            .run_synced(&caches, workers, self.clone(), |this, key| async move {
                this.sync(&key).await
            })
            .await;
    }

    async fn sync(&self, key: &str) -> Result<(), String> {
        let Some(cj) = self.cronjobs.get(key) else {
            return Ok(());
        };
        let spec = &cj["spec"];
        let owned: Vec<Arc<Value>> = self
            .jobs
            .in_namespace(namespace(&cj))
            .into_iter()
            .filter(|j| controlled_by(j, uid(&cj)))
            .collect();
        // Unfinished Jobs, keeping the references already listed as they are.
        let listed: Vec<Value> = cj["status"]["active"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut active: Vec<Value> = owned
            .iter()
            .filter(|j| !finished(j) && !is_deleting(j))
            .map(|j| {
                listed
                    .iter()
                    .find(|r| r["uid"].as_str() == Some(uid(j)))
                    .cloned()
                    .unwrap_or_else(|| job_ref(j))
            })
            .collect();
        active.sort_by_key(|r| {
            let at = listed.iter().position(|l| l["uid"] == r["uid"]);
            (
                at.unwrap_or(usize::MAX),
                r["name"].as_str().unwrap_or("").to_owned(),
            )
        });
        let mut status = cj["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let last_success = owned
            .iter()
            .filter(|j| condition_true(j, "Complete").is_some())
            .filter_map(|j| parse_time(&j["status"]["completionTime"]))
            .chain(parse_time(&status["lastSuccessfulTime"]))
            .max();
        if let Some(t) = last_success {
            status["lastSuccessfulTime"] = seconds(t).into();
        }
        let mut errors = Vec::new();
        for r in &listed {
            let done = owned.iter().find(|j| r["uid"].as_str() == Some(uid(j)));
            if let Some(job) = done.filter(|j| finished(j)) {
                let state = if condition_true(job, "Complete").is_some() {
                    "Complete"
                } else {
                    "Failed"
                };
                let message = format!("Saw completed job: {}, condition: {state}", name(job));
                self.event(&cj, Type::Normal, "SawCompletedJob", &message)
                    .await;
            }
        }
        if !is_deleting(&cj) {
            self.clean_history(&cj, &owned, &mut errors).await;
        }
        let mut requeue = None;
        if !is_deleting(&cj) && spec["suspend"].as_bool() != Some(true) {
            match Schedule::parse(
                spec["schedule"].as_str().unwrap_or(""),
                spec["timeZone"].as_str(),
            ) {
                Ok(schedule) => {
                    let now = Timestamp::now();
                    if let Some(t) = self
                        .run_due(&cj, &schedule, now, &mut active, &mut status, &mut errors)
                        .await
                    {
                        requeue = Some(t);
                    }
                    if let Some(next) = schedule.next(now) {
                        let wait = next.duration_since(now).unsigned_abs();
                        requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
                    }
                }
                Err(err) => {
                    warn!(cronjob = key, %err, "not scheduling");
                    let reason = match err {
                        ScheduleError::TimeZone(_) => "UnknownTimeZone",
                        ScheduleError::Syntax(..) => "UnparseableSchedule",
                    };
                    self.event(&cj, Type::Warning, reason, &err.to_string())
                        .await;
                }
            }
        }
        status["active"] = if active.is_empty() {
            Value::Null
        } else {
            active.into()
        };
        let mut current = cj["status"].clone();
        if let Some(obj) = current.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        let mut wanted = status.clone();
        if let Some(obj) = wanted.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        if wanted != current {
            let path = format!("{}/status", CRONJOBS.path(key));
            match self
                .client
                .merge_patch(&path, &json!({"status": status}))
                .await
            {
                Ok(_) => {}
                Err(err) if err.is_not_found() => return Ok(()),
                Err(err) => errors.push(format!("status: {err}")),
            }
        }
        if let Some(wait) = requeue {
            self.queue.add_after(key, wait + Duration::from_millis(100));
        }
        match errors.first() {
            Some(err) => Err(format!("cronjob {key}: {} errors: {err}", errors.len())),
            None => Ok(()),
        }
    }

    /// Runs the most recent missed time, if any; returns a retry delay
    /// when it must wait.
    async fn run_due(
        &self,
        cj: &Value,
        schedule: &Schedule,
        now: Timestamp,
        active: &mut Vec<Value>,
        status: &mut Value,
        errors: &mut Vec<String>,
    ) -> Option<Duration> {
        let spec = &cj["spec"];
        let created = parse_time(&cj["metadata"]["creationTimestamp"]).unwrap_or(now);
        let mut earliest = parse_time(&status["lastScheduleTime"]).unwrap_or(created);
        let deadline = spec["startingDeadlineSeconds"].as_i64();
        if let Some(d) = deadline
            && let Ok(limit) = now.checked_sub(jiff::SignedDuration::from_secs(d))
        {
            earliest = earliest.max(limit);
        }
        let scheduled = most_recent(schedule, earliest, now)?;
        match spec["concurrencyPolicy"].as_str().unwrap_or("Allow") {
            "Forbid" if !active.is_empty() => return None,
            "Replace" => {
                for job in active.drain(..) {
                    let path = JOBS.path(&format!("{}/{}", namespace(cj), name(&job)));
                    let options = json!({"propagationPolicy": "Background"});
                    match self.client.delete(&path, &options).await {
                        Ok(_) => {
                            let message = format!("Deleted job {}", name(&job));
                            self.event(cj, Type::Normal, "SuccessfulDelete", &message)
                                .await;
                        }
                        Err(err) if err.is_not_found() => {}
                        Err(err) => errors.push(format!("replacing {path}: {err}")),
                    }
                }
            }
            _ => {}
        }
        let job = job_for(cj, schedule, scheduled);
        match self
            .client
            .post(&JOBS.collection(Some(namespace(cj))), &job)
            .await
        {
            Ok(created) => {
                let message = format!("Created job {}", name(&created));
                self.event(cj, Type::Normal, "SuccessfulCreate", &message)
                    .await;
                self.jobs
                    .wait_for(rv_of(&created), Duration::from_secs(10))
                    .await;
                active.push(job_ref(&created));
            }
            // Created by an earlier sync whose status write was lost.
            Err(err) if err.is_conflict() => {}
            Err(err) => {
                errors.push(format!("creating job {}: {err}", name(&job)));
                return Some(Duration::from_secs(1));
            }
        }
        status["lastScheduleTime"] = seconds(scheduled).into();
        None
    }

    async fn event(&self, cj: &Value, kind: Type, reason: &str, message: &str) {
        let source = "cronjob-controller";
        events::record(
            &self.client,
            source,
            ("batch/v1", "CronJob"),
            cj,
            kind,
            reason,
            message,
        )
        .await;
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    async fn clean_history(&self, cj: &Value, owned: &[Arc<Value>], errors: &mut Vec<String>) {
        let spec = &cj["spec"];
        for (kind, limit) in [
            (
                "Complete",
                spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3),
            ),
            (
                "Failed",
                spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1),
            ),
        ] {
            let mut done: Vec<&Arc<Value>> = owned
                .iter()
                .filter(|j| condition_true(j, kind).is_some() && !is_deleting(j))
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            if excess == 0 {
                continue;
            }
            done.sort_by_key(|j| {
                let created = j["metadata"]["creationTimestamp"].as_str().unwrap_or("");
                (started(j), created.to_owned(), name(j).to_owned())
            });
            for job in done.into_iter().take(excess) {
                let options = json!({"propagationPolicy": "Background"});
                match self.client.delete(&JOBS.path(&key_of(job)), &options).await {
                    Ok(_) => {
                        let message = format!("Deleted job {}", name(job));
                        self.event(cj, Type::Normal, "SuccessfulDelete", &message)
                            .await;
                    }
                    Err(err) if err.is_not_found() => {}
                    Err(err) => errors.push(format!("deleting old job {}: {err}", name(job))),
                }
            }
        }
    }
}

fn seconds(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The Job of `cj` for the time `scheduled`.
fn job_for(cj: &Value, schedule: &Schedule, scheduled: Timestamp) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut metadata = json!({
        "name": job_name(name(cj), scheduled),
        "namespace": namespace(cj),
        "ownerReferences": [owner_ref("batch/v1", "CronJob", cj)],
    });
    if template["metadata"]["labels"].is_object() {
        metadata["labels"] = template["metadata"]["labels"].clone();
    }
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    let local = scheduled.to_zoned(schedule.time_zone().clone());
    annotations[SCHEDULED] = local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string().into();
    metadata["annotations"] = annotations;
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn most_recent_missed_time() {
        let every = Schedule::parse("*/5 * * * *", None).expect("parse");
        let recent = |earliest: &str, now: &str| most_recent(&every, ts(earliest), ts(now));
        assert_eq!(recent("2026-01-01T10:00:00Z", "2026-01-01T10:04:59Z"), None);
        assert_eq!(
            recent("2026-01-01T10:00:00Z", "2026-01-01T10:17:00Z"),
            Some(ts("2026-01-01T10:15:00Z"))
        );
        // The scheduled time itself counts; the earliest one does not.
        assert_eq!(recent("2026-01-01T10:05:00Z", "2026-01-01T10:05:00Z"), None);
        assert_eq!(
            recent("2026-01-01T10:04:00Z", "2026-01-01T10:05:00Z"),
            Some(ts("2026-01-01T10:05:00Z"))
        );
        // Years behind: still the latest.
        assert_eq!(
            recent("2020-01-01T00:00:00Z", "2026-01-01T10:07:00Z"),
            Some(ts("2026-01-01T10:05:00Z"))
        );
    }

    #[test]
    fn jobs_are_named_by_minutes_and_annotated() {
        let t = ts("2026-01-01T10:05:00Z");
        assert_eq!(
            job_name("backup", t),
            format!("backup-{}", t.as_second() / 60)
        );
        let cj = json!({"metadata": {"name": "backup", "namespace": "t", "uid": "u"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}},
                "spec": {"template": {"spec": {"containers": []}}}}}});
        let schedule = Schedule::parse("0 * * * *", Some("Europe/Paris")).expect("parse");
        let job = job_for(&cj, &schedule, t);
        assert_eq!(job["metadata"]["labels"]["a"], "b");
        assert_eq!(
            job["metadata"]["annotations"][SCHEDULED],
            "2026-01-01T11:05:00+01:00"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
}
