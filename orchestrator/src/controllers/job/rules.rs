//! The Job controller's rules that need no I/O: conditions, completion
//! indexes, the failure back-off and the pods' shape.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::super::objects::{name, namespace, now, owner_ref};

/// The annotation and label carrying an Indexed Job pod's index.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The condition `kind` of an object's status, if `True`.
pub fn condition_true<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

/// True once a Job is `Complete` or `Failed`.
pub fn finished(job: &Value) -> bool {
    condition_true(job, "Complete").is_some() || condition_true(job, "Failed").is_some()
}

pub(super) fn seconds_since(time: &Value) -> Option<i64> {
    let t = time.as_str()?.parse::<jiff::Timestamp>().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

/// Sets condition `kind` (status, reason, message) in `conditions`,
/// keeping its transition time if its status does not change.
pub(super) fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    msg: &str,
) {
    let stamp = now();
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(c) if c["status"] == status => {
            c["reason"] = reason.into();
            c["message"] = msg.into();
        }
        Some(c) => {
            *c = json!({"type": kind, "status": status, "reason": reason, "message": msg,
                "lastProbeTime": stamp, "lastTransitionTime": stamp});
        }
        None => conditions.push(json!({"type": kind, "status": status, "reason": reason,
            "message": msg, "lastProbeTime": stamp, "lastTransitionTime": stamp})),
    }
}

/// A pod's completion index (Indexed Jobs).
pub(super) fn pod_index(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX]
        .as_str()
        .or_else(|| pod["metadata"]["labels"][INDEX].as_str())?
        .parse()
        .ok()
}

/// Indexes as upstream's `completedIndexes`: `1,3-5,7`.
pub fn index_ranges(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The back-off before a new pod after `consecutive` failures.
pub(super) fn backoff_delay(consecutive: u32) -> Duration {
    if consecutive == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((consecutive - 1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// A pod of `job` (of completion `index` for Indexed Jobs).
pub(super) fn pod_for(job: &Value, index: Option<i64>) -> Value {
    let template = &job["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    if let Some(meta) = metadata.as_object_mut() {
        for field in ["name", "uid", "resourceVersion", "creationTimestamp"] {
            meta.remove(field);
        }
    }
    let mut spec = template["spec"].clone();
    match index {
        Some(i) => {
            metadata["generateName"] = format!("{}-{i}-", name(job)).into();
            metadata["annotations"][INDEX] = i.to_string().into();
            metadata["labels"][INDEX] = i.to_string().into();
            if spec["hostname"].is_null() {
                spec["hostname"] = format!("{}-{i}", name(job)).into();
            }
            for container in spec["containers"].as_array_mut().into_iter().flatten() {
                let env = json!({
                    "name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {"fieldRef": {"fieldPath":
                        format!("metadata.labels['{INDEX}']")}},
                });
                match container["env"].as_array_mut() {
                    Some(list) => list.push(env),
                    None => container["env"] = json!([env]),
                }
            }
        }
        None => metadata["generateName"] = format!("{}-", name(job)).into(),
    }
    metadata["namespace"] = namespace(job).into();
    metadata["ownerReferences"] = json!([owner_ref("batch/v1", "Job", job)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_indexes() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(index_ranges(&set), "0-2,4,6-7");
        assert_eq!(index_ranges(&BTreeSet::new()), "");
    }

    #[test]
    fn backoff_doubles_to_six_minutes() {
        assert_eq!(backoff_delay(0), Duration::ZERO);
        assert_eq!(backoff_delay(1), Duration::from_secs(10));
        assert_eq!(backoff_delay(3), Duration::from_secs(40));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job = json!({"metadata": {"name": "j", "namespace": "t", "uid": "u"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let pod = pod_for(&job, Some(3));
        assert_eq!(pod["metadata"]["generateName"], "j-3-");
        assert_eq!(pod["metadata"]["labels"][INDEX], "3");
        assert_eq!(pod["spec"]["hostname"], "j-3");
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(pod_index(&pod), Some(3));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
    }
}
