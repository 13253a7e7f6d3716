//! Graceful deletion of pods, as upstream's `rest.BeforeDelete` with the
//! pod strategy's `CheckGracefulDelete`.
//!
//! A pod bound to a node and still running is not removed by a `DELETE`:
//! it gets `metadata.deletionTimestamp` (now + the grace period) and
//! `metadata.deletionGracePeriodSeconds`, and the node agent stops its
//! containers (preStop, SIGTERM, SIGKILL after the grace) and then sends
//! the final `DELETE` with `gracePeriodSeconds: 0`.
//!
//! - The grace period is the request's `gracePeriodSeconds`, else the
//!   pod's `spec.terminationGracePeriodSeconds` (defaulted to 30). It is 0
//!   for a pod without `spec.nodeName` (no agent would finish it) or one
//!   already `Succeeded`/`Failed`; a negative value counts as 1.
//! - Once marked, a delete may only shorten the grace: the
//!   `deletionTimestamp` moves earlier by the difference. A delete that
//!   does not shorten it changes nothing (not even finalizers).
//! - A pod whose grace is 0 is marked (watchers see the `MODIFIED` event
//!   with the timestamp) and removed in the same request, unless
//!   finalizers hold it; a pod marked with grace 0 is removed like any
//!   object.
//!
//! Other kinds have no graceful deletion ([`Grace::None`]); `delete`
//! handles finalizers for all kinds.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::resources::ResourceType;

/// The grace period of a pod that does not name one.
const DEFAULT_GRACE: i64 = 30;

/// What a delete does about one object's grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grace {
    /// No graceful deletion: the kind has none, or the object's grace
    /// already ran down to 0. It is removed now unless finalizers hold it.
    None,
    /// A graceful deletion is under way and the request does not shorten
    /// it: nothing changes.
    Pending,
    /// The object was marked (`deletionTimestamp`,
    /// `deletionGracePeriodSeconds`) with this many seconds; with 0 and
    /// no finalizers it is removed now, otherwise it stays.
    Marked(i64),
}

/// Kinds deleted gracefully (upstream's `RESTGracefulDeleteStrategy`
/// implementations served here): pods.
pub(super) fn is_graceful(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "pods"
}

/// Decides the grace of a delete of `obj` asking for `requested` seconds
/// at `now`, and marks `obj` accordingly.
pub(super) fn before_delete(
    rt: &ResourceType,
    obj: &mut Value,
    requested: Option<i64>,
    now: Timestamp,
) -> Grace {
    if !is_graceful(rt) {
        return Grace::None;
    }
    let requested = requested.map(at_least_one);
    if let Some(marked) = obj["metadata"]["deletionTimestamp"].as_str() {
        let current = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .map(at_least_one)
            .unwrap_or(0);
        if current == 0 {
            return Grace::None;
        }
        let Some(period) = requested.filter(|p| *p < current) else {
            return Grace::Pending;
        };
        let since = marked.parse::<Timestamp>().unwrap_or(now);
        let at = since
            .checked_add(SignedDuration::from_secs(period - current))
            .unwrap_or(now);
        mark(obj, at, period);
        return Grace::Marked(period);
    }
    let mut period = requested.unwrap_or_else(|| {
        obj["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(DEFAULT_GRACE)
    });
    let unscheduled = obj["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    let finished = matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        period = 0;
    }
    let period = at_least_one(period);
    let at = now
        .checked_add(SignedDuration::from_secs(period))
        .unwrap_or(now);
    mark(obj, at, period);
    if let Some(generation) = obj["metadata"]["generation"].as_i64()
        && generation > 0
    {
        obj["metadata"]["generation"] = (generation + 1).into();
    }
    Grace::Marked(period)
}

/// A negative grace counts as 1 second, as upstream.
fn at_least_one(grace: i64) -> i64 {
    if grace < 0 { 1 } else { grace }
}

fn mark(obj: &mut Value, at: Timestamp, period: i64) {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        let at = at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        meta.insert("deletionTimestamp".into(), at.into());
        meta.insert("deletionGracePeriodSeconds".into(), period.into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::resources::Registry;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().expect("time")
    }

    fn pod(node: &str, phase: &str, grace: Option<i64>) -> Value {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": node},
            "status": {"phase": phase}});
        if let Some(grace) = grace {
            pod["spec"]["terminationGracePeriodSeconds"] = grace.into();
        }
        pod
    }

    #[test]
    fn a_running_pod_gets_its_spec_grace_or_the_requested_one() {
        let registry = Registry::builtin();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let mut p = pod("n1", "Running", Some(5));
        assert_eq!(before_delete(pods, &mut p, None, now()), Grace::Marked(5));
        assert_eq!(p["metadata"]["deletionTimestamp"], "2026-01-01T00:00:05Z");
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 5);
        let mut p = pod("n1", "Running", None);
        assert_eq!(before_delete(pods, &mut p, None, now()), Grace::Marked(30));
        let mut p = pod("n1", "Running", Some(5));
        assert_eq!(
            before_delete(pods, &mut p, Some(60), now()),
            Grace::Marked(60)
        );
        let mut p = pod("n1", "Running", Some(5));
        assert_eq!(
            before_delete(pods, &mut p, Some(-3), now()),
            Grace::Marked(1)
        );
    }

    #[test]
    fn unscheduled_and_finished_pods_have_no_grace() {
        let registry = Registry::builtin();
        let pods = registry.find("", "v1", "pods").expect("pods");
        for mut p in [
            pod("", "Pending", Some(30)),
            pod("n1", "Succeeded", Some(30)),
            pod("n1", "Failed", Some(30)),
        ] {
            assert_eq!(
                before_delete(pods, &mut p, Some(10), now()),
                Grace::Marked(0)
            );
            assert_eq!(p["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
        }
    }

    #[test]
    fn a_second_delete_may_only_shorten_the_grace() {
        let registry = Registry::builtin();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let mut p = pod("n1", "Running", Some(30));
        before_delete(pods, &mut p, None, now());
        let marked = p.clone();
        assert_eq!(before_delete(pods, &mut p, None, now()), Grace::Pending);
        assert_eq!(before_delete(pods, &mut p, Some(30), now()), Grace::Pending);
        assert_eq!(before_delete(pods, &mut p, Some(90), now()), Grace::Pending);
        assert_eq!(p, marked);
        assert_eq!(
            before_delete(pods, &mut p, Some(10), now()),
            Grace::Marked(10)
        );
        assert_eq!(p["metadata"]["deletionTimestamp"], "2026-01-01T00:00:10Z");
        assert_eq!(
            before_delete(pods, &mut p, Some(0), now()),
            Grace::Marked(0)
        );
        assert_eq!(p["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
        // Marked with grace 0: removed like any object.
        assert_eq!(before_delete(pods, &mut p, None, now()), Grace::None);
    }

    #[test]
    fn other_kinds_are_not_graceful() {
        let registry = Registry::builtin();
        let cm = registry.find("", "v1", "configmaps").expect("cm");
        let mut obj = json!({"metadata": {"name": "c"}});
        assert_eq!(before_delete(cm, &mut obj, Some(30), now()), Grace::None);
        assert!(obj["metadata"].get("deletionTimestamp").is_none());
    }
}
