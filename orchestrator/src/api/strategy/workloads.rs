//! apps/v1, batch/v1 and policy/v1: upstream's defaults
//! (`pkg/apis/apps/v1/defaults.go`, `pkg/apis/batch/v1/defaults.go`), the
//! Job's generated selector (`pkg/registry/batch/job/strategy.go`), the
//! status each kind starts with, and the validation users commonly hit:
//! selectors that must select the template, immutable selectors, restart
//! policies, replica counts and schedules.

use serde_json::{Value, json};

use super::pod;
use super::{Errors, default, default_str, each_mut, object_mut, object_path, selector_matches};

/// Defaults of an apps/v1 or batch/v1 object of `kind`.
pub fn defaults(kind: &str, obj: &mut Value) {
    match kind {
        "Job" => default_job(obj),
        "CronJob" => {
            if let Some(spec) = object_mut(obj, "/spec") {
                default_str(spec, "concurrencyPolicy", "Allow");
                default(spec, "suspend", false.into());
                default(spec, "successfulJobsHistoryLimit", 3.into());
                default(spec, "failedJobsHistoryLimit", 1.into());
            }
            pod::default_template(obj.pointer_mut("/spec/jobTemplate/spec/template"));
        }
        _ => default_apps(kind, obj),
    }
}

fn default_apps(kind: &str, obj: &mut Value) {
    let Some(spec) = object_mut(obj, "/spec") else {
        return;
    };
    pod::default_template(spec.get_mut("template"));
    match kind {
        "Deployment" => {
            default(spec, "replicas", 1.into());
            if let Some(strategy) = object_path(spec, &["strategy"]) {
                default_str(strategy, "type", "RollingUpdate");
                if strategy["type"] == "RollingUpdate"
                    && let Some(ru) = object_path(strategy, &["rollingUpdate"])
                {
                    default(ru, "maxUnavailable", "25%".into());
                    default(ru, "maxSurge", "25%".into());
                }
            }
            default(spec, "revisionHistoryLimit", 10.into());
            default(spec, "progressDeadlineSeconds", 600.into());
        }
        "ReplicaSet" => default(spec, "replicas", 1.into()),
        "DaemonSet" => {
            if let Some(strategy) = object_path(spec, &["updateStrategy"]) {
                default_str(strategy, "type", "RollingUpdate");
                if strategy["type"] == "RollingUpdate"
                    && let Some(ru) = object_path(strategy, &["rollingUpdate"])
                {
                    default(ru, "maxUnavailable", 1.into());
                    default(ru, "maxSurge", 0.into());
                }
            }
            default(spec, "revisionHistoryLimit", 10.into());
        }
        "StatefulSet" => {
            default(spec, "replicas", 1.into());
            default_str(spec, "podManagementPolicy", "OrderedReady");
            if let Some(strategy) = object_path(spec, &["updateStrategy"]) {
                default_str(strategy, "type", "RollingUpdate");
                if strategy["type"] == "RollingUpdate"
                    && let Some(ru) = object_path(strategy, &["rollingUpdate"])
                {
                    default(ru, "partition", 0.into());
                }
            }
            if let Some(policy) = object_path(spec, &["persistentVolumeClaimRetentionPolicy"]) {
                default_str(policy, "whenDeleted", "Retain");
                default_str(policy, "whenScaled", "Retain");
            }
            default(spec, "revisionHistoryLimit", 10.into());
            for claim in each_mut(spec, "volumeClaimTemplates") {
                if let Some(claim_spec) = object_mut(claim, "/spec") {
                    default_str(claim_spec, "volumeMode", "Filesystem");
                }
                if let Some(status) = object_path(claim, &["status"]) {
                    default_str(status, "phase", "Pending");
                }
            }
        }
        _ => {}
    }
}

fn default_job(obj: &mut Value) {
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    let Some(spec) = object_mut(obj, "/spec") else {
        return;
    };
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = 1.into();
    }
    default(spec, "parallelism", 1.into());
    let backoff = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i64::from(i32::MAX)
    };
    default(spec, "backoffLimit", backoff.into());
    default_str(spec, "completionMode", "NonIndexed");
    default(spec, "suspend", false.into());
    let replacement = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    default_str(spec, "podReplacementPolicy", replacement);
    pod::default_template(spec.get_mut("template"));
    // A Job without labels takes its template's.
    let no_labels = obj["metadata"]["labels"]
        .as_object()
        .is_none_or(|l| l.is_empty());
    if no_labels
        && let Some(labels) = template_labels.filter(Value::is_object)
        && let Some(meta) = obj["metadata"].as_object_mut()
    {
        meta.insert("labels".into(), labels);
    }
}

/// The labels a Job's pods carry and its generated selector selects.
const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Generates a Job's selector unless `manualSelector` is set: the
/// template gets the controller-uid and job-name labels (the
/// `batch.kubernetes.io/` ones and the legacy unprefixed ones), and the
/// selector matches the uid.
pub fn prepare_job_create(job: &mut Value) {
    if job["spec"]["manualSelector"].as_bool() == Some(true) {
        return;
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let Some(labels) = object_path(job, &["spec", "template", "metadata", "labels"]) else {
        return;
    };
    labels[JOB_UID_LABEL] = uid.clone().into();
    labels[JOB_NAME_LABEL] = name.clone().into();
    labels["controller-uid"] = uid.clone().into();
    labels["job-name"] = name.into();
    job["spec"]["selector"] = json!({"matchLabels": {JOB_UID_LABEL: uid}});
}

/// The status a new object starts with: upstream's zero status, whose
/// non-optional counters serialize as 0.
pub fn initial_status(kind: &str, obj: &mut Value) {
    let status = match kind {
        "ReplicaSet" => json!({"replicas": 0}),
        "StatefulSet" => json!({"replicas": 0, "availableReplicas": 0}),
        "DaemonSet" => json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        }),
        "PodDisruptionBudget" => json!({
            "disruptionsAllowed": 0,
            "currentHealthy": 0,
            "desiredHealthy": 0,
            "expectedPods": 0,
        }),
        _ => return,
    };
    obj["status"] = status;
}

/// Restart policies the pods of `kind` may have.
fn restart_policies(kind: &str) -> &'static [&'static str] {
    match kind {
        "Job" | "CronJob" => &["OnFailure", "Never"],
        _ => &["Always"],
    }
}

/// Validation of apps/v1 and batch/v1 objects.
pub fn validate(kind: &str, old: Option<&Value>, obj: &Value, errors: &mut Errors) {
    let spec = &obj["spec"];
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => {
            validate_selected_template(kind, spec, "spec", errors);
            let immutable = old.is_some_and(|o| o["spec"]["selector"] != spec["selector"]);
            if immutable && !spec["selector"].is_null() {
                errors.invalid("spec.selector", &spec["selector"], "field is immutable");
            }
        }
        "ControllerRevision" => {
            if obj["revision"].as_i64().is_none_or(|r| r < 0) {
                errors.invalid(
                    "revision",
                    &obj["revision"],
                    "must be greater than or equal to 0",
                );
            }
            if old.is_some_and(|o| o["data"] != obj["data"]) {
                errors.invalid("data", &obj["data"], "field is immutable");
            }
        }
        "CronJob" => {
            match spec["schedule"].as_str() {
                None | Some("") => errors.required("spec.schedule", ""),
                Some(s) if !valid_schedule(s) => {
                    errors.invalid("spec.schedule", &spec["schedule"], "unparseable schedule")
                }
                Some(_) => {}
            }
            let policy = &spec["concurrencyPolicy"];
            let policies = ["Allow", "Forbid", "Replace"];
            if policy.as_str().is_some_and(|p| !policies.contains(&p)) {
                errors.unsupported("spec.concurrencyPolicy", policy, &policies);
            }
            let template = &spec["jobTemplate"]["spec"]["template"];
            pod::validate_spec(
                &template["spec"],
                "spec.jobTemplate.spec.template.spec",
                restart_policies(kind),
                errors,
            );
        }
        _ => {}
    }
    for field in [
        "replicas",
        "revisionHistoryLimit",
        "parallelism",
        "completions",
        "backoffLimit",
    ] {
        if spec[field].as_i64().is_some_and(|n| n < 0) {
            errors.invalid(
                format!("spec.{field}"),
                &spec[field],
                "must be greater than or equal to 0",
            );
        }
    }
}

/// A selector is required, non-empty, and must select the template's labels.
fn validate_selected_template(kind: &str, spec: &Value, path: &str, errors: &mut Errors) {
    let selector = &spec["selector"];
    let empty = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|e| e.is_empty());
    let template = &spec["template"];
    if selector.is_null() {
        errors.required(format!("{path}.selector"), "");
    } else if empty {
        errors.invalid(
            format!("{path}.selector"),
            selector,
            &format!(
                "empty selector is invalid for {}",
                kind.to_ascii_lowercase()
            ),
        );
    } else if !selector_matches(selector, &template["metadata"]["labels"]) {
        errors.invalid(
            format!("{path}.template.metadata.labels"),
            &template["metadata"]["labels"],
            "`selector` does not match template `labels`",
        );
    }
    pod::validate_spec(
        &template["spec"],
        &format!("{path}.template.spec"),
        restart_policies(kind),
        errors,
    );
}

/// A cron schedule: five fields, or one of the `@` macros.
fn valid_schedule(schedule: &str) -> bool {
    let schedule = schedule
        .strip_prefix("CRON_TZ=")
        .or_else(|| schedule.strip_prefix("TZ="))
        .and_then(|s| s.split_once(' ').map(|(_, rest)| rest))
        .unwrap_or(schedule);
    if let Some(name) = schedule.strip_prefix('@') {
        return matches!(
            name,
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly"
        );
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        })
    }

    #[test]
    fn deployment_defaults() {
        let mut d = deployment();
        defaults("Deployment", &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        let mut recreate = deployment();
        recreate["spec"]["strategy"] = json!({"type": "Recreate"});
        defaults("Deployment", &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut errors = Errors::default();
        validate("Deployment", None, &d, &mut errors);
        assert!(errors.0.is_empty(), "{:?}", errors.0);
    }

    #[test]
    fn daemonset_and_statefulset_defaults() {
        let mut ds = deployment();
        defaults("DaemonSet", &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        let mut sts = deployment();
        sts["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}, "spec": {}}]);
        defaults("StatefulSet", &mut sts);
        let spec = &sts["spec"];
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );
    }

    #[test]
    fn jobs_get_a_generated_selector() {
        let mut job = json!({
            "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl:5"}]},
            }},
        });
        defaults("Job", &mut job);
        prepare_job_create(&mut job);
        let spec = &job["spec"];
        assert_eq!(
            (
                &spec["completions"],
                &spec["parallelism"],
                &spec["backoffLimit"]
            ),
            (&json!(1), &json!(1), &json!(6))
        );
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(job["metadata"]["labels"], json!({"app": "pi"}));
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(labels["app"], "pi");
        let mut errors = Errors::default();
        validate("Job", None, &job, &mut errors);
        assert!(errors.0.is_empty(), "{:?}", errors.0);

        let mut always = job.clone();
        always["spec"]["template"]["spec"]["restartPolicy"] = "Always".into();
        let mut errors = Errors::default();
        validate("Job", None, &always, &mut errors);
        assert_eq!(errors.0[0].field, "spec.template.spec.restartPolicy");
    }

    #[test]
    fn selectors_must_select_the_template() {
        let mut d = deployment();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let mut errors = Errors::default();
        validate("Deployment", None, &d, &mut errors);
        assert_eq!(errors.0[0].field, "spec.template.metadata.labels");
        assert!(
            errors.0[0]
                .message
                .ends_with("`selector` does not match template `labels`")
        );
        let mut changed = deployment();
        changed["spec"]["selector"] = json!({"matchLabels": {"app": "web", "x": "y"}});
        changed["spec"]["template"]["metadata"]["labels"]["x"] = "y".into();
        let mut errors = Errors::default();
        validate("Deployment", Some(&deployment()), &changed, &mut errors);
        assert_eq!(errors.0[0].field, "spec.selector");
        assert!(errors.0[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn cronjob_defaults_and_schedules() {
        let mut cj = json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox:1"}]}}}}}});
        defaults("CronJob", &mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(cj["spec"]["suspend"], false);
        let mut errors = Errors::default();
        validate("CronJob", None, &cj, &mut errors);
        assert!(errors.0.is_empty(), "{:?}", errors.0);
        assert!(valid_schedule("@hourly") && valid_schedule("CRON_TZ=UTC 0 * * * *"));
        assert!(!valid_schedule("every minute") && !valid_schedule("* * *"));
    }
}
