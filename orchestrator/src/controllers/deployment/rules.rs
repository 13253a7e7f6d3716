//! The rules of a rollout, free of I/O: `maxSurge`/`maxUnavailable`
//! arithmetic, template comparison and `pod-template-hash`, revisions and
//! the Deployment's conditions.

use serde_json::{Map, Value, json};

use super::{HASH_LABEL, REVISION, SKIPPED_ANNOTATIONS};
use crate::controllers::objects::now;

/// A condition; the previous one is kept (timestamps and all) when it says
/// the same, unless `refresh` (progress was made: a new lastUpdateTime).
pub(super) fn condition(
    previous: Option<Value>,
    kind: &str,
    (status, reason, message): (&str, &str, String),
    refresh: bool,
) -> Value {
    let now = now();
    match previous {
        Some(c)
            if c["status"] == status
                && c["reason"] == reason
                && c["message"] == message
                && !refresh =>
        {
            c
        }
        Some(c) if c["status"] == status => json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": c["lastTransitionTime"],
        }),
        _ => json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now,
        }),
    }
}

pub(super) fn timed_out(condition: &Value, deadline: i64) -> bool {
    let updated = condition["lastUpdateTime"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    updated.is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() > deadline)
}

/// A rollout is complete when every wanted replica is updated and available
/// and no old pod remains.
pub(super) fn complete(d: &Value, status: &Value) -> bool {
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let get = |f: &str| status[f].as_i64().unwrap_or(0);
    get("updatedReplicas") == want && get("replicas") == want && get("availableReplicas") >= want
}

pub(super) fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(1)
}

pub(super) fn available(rs: &Value) -> i64 {
    rs["status"]["availableReplicas"].as_i64().unwrap_or(0)
}

pub(super) fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn other_refs(obj: &Value) -> Vec<Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["controller"].as_bool() != Some(true))
        .cloned()
        .collect()
}

/// The Deployment's annotations that its ReplicaSets carry too.
pub(super) fn copied_annotations(d: &Value) -> Map<String, Value> {
    d["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `(replicas, maxSurge, maxUnavailable)`: percentages of replicas, surge
/// rounded up and unavailability down; both 0 would stall, so then one pod
/// may be unavailable. Recreate has neither.
pub(super) fn limits(d: &Value) -> (i64, i64, i64) {
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    if d["spec"]["strategy"]["type"] == "Recreate" {
        return (want, 0, 0);
    }
    let rolling = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&rolling["maxSurge"], want, true);
    let mut unavailable = int_or_percent(&rolling["maxUnavailable"], want, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (want, surge, unavailable.min(want))
}

pub(super) fn int_or_percent(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0).max(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = pct * total;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        // Upstream's default: 25% each.
        _ => {
            if round_up {
                (25 * total + 99) / 100
            } else {
                25 * total / 100
            }
        }
    }
}

/// True if `rs`'s template is `template` once `pod-template-hash` is
/// removed, comparing as Go's typed objects would ([`normalized`]).
pub(super) fn same_template(rs: &Value, template: &Value) -> bool {
    let mut theirs = rs["spec"]["template"].clone();
    if let Some(labels) = theirs["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    normalized(&theirs) == normalized(template)
}

/// `value` without the fields a typed Go object cannot tell from absent:
/// null, false, 0, "" and empty objects and arrays (kubectl's protobuf
/// creates spell them out, its JSON patches leave them out).
pub(super) fn normalized(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

pub(super) fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// The `pod-template-hash` of a template: FNV-1a of its JSON and the
/// collision count, spelled with upstream's safe alphabet.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&normalized(template)).unwrap_or_default());
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_upstream_rounding() {
        let d = |strategy: Value| json!({"spec": {"replicas": 10, "strategy": strategy}});
        assert_eq!(limits(&d(json!({}))), (10, 3, 2));
        let fixed = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
        assert_eq!(limits(&d(fixed)), (10, 0, 1));
        let pct = json!({"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "15%"}});
        assert_eq!(limits(&d(pct)), (10, 5, 1));
        assert_eq!(limits(&d(json!({"type": "Recreate"}))), (10, 0, 0));
    }

    #[test]
    fn template_hashes_differ_by_template_and_collisions() {
        let a = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let b = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert_eq!(template_hash(&a, None), template_hash(&a, None));
        assert_ne!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        assert!(
            template_hash(&a, None)
                .bytes()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {}});
        let rs = json!({"spec": {"template": {
            "metadata": {"labels": {"app": "x", HASH_LABEL: "abc"}}, "spec": {}}}});
        assert!(same_template(&rs, &template));
        let other = json!({"metadata": {"labels": {"app": "y"}}, "spec": {}});
        assert!(!same_template(&rs, &other));
        // As kubectl's protobuf create and JSON patch spell the same template.
        let spelled = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "x"}},
            "spec": {"hostIPC": false, "containers": [{"stdin": false, "resources": {}}]}});
        let terse = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{}]}});
        assert_eq!(normalized(&spelled), normalized(&terse));
        assert_eq!(template_hash(&spelled, None), template_hash(&terse, None));
    }
}
