//! The node lifecycle controller's decisions, as pure functions of the
//! objects and the time (so the rules are tested without a server): a
//! node's [`Health`] from its heartbeats ([`observe`]), the conditions of
//! a node presumed gone ([`unknown_conditions`]), the zones' disruption
//! states ([`policies`]) and the taints a node should carry
//! ([`desired_taints`]). See [`super`] for the rules themselves.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::controllers::objects::name;

/// The taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a cordoned node.
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Nodes with this label are left out of the disruption counts.
const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";
/// The conditions a quiet node's agent no longer vouches for.
const HEARTBEAT_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// The NoSchedule taint of each condition status (TaintNodesByCondition).
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", NOT_READY),
    ("Ready", "Unknown", UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];
/// Zones larger than this keep tainting in a partial disruption.
const LARGE_CLUSTER: usize = 50;
/// Share of not-Ready nodes that makes a zone partially disrupted.
const UNHEALTHY_ZONE: f64 = 0.55;

/// What the controller last saw of a node's heartbeats (upstream's
/// `nodeHealthData`).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The Ready condition's `lastHeartbeatTime` (`None`: no Ready condition).
    ready_heartbeat: Option<Value>,
    /// The Lease's `renewTime` last seen.
    renew_time: Option<Timestamp>,
    /// When a heartbeat was last seen to move, on this clock.
    probe: Timestamp,
}

impl Health {
    /// True once the probe time is older than `grace`.
    pub fn stale(&self, grace: Duration, now: Timestamp) -> bool {
        let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
        self.probe
            .checked_add(grace)
            .is_ok_and(|deadline| now > deadline)
    }
}

/// The node's condition `kind`, if set.
pub fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The status of the node's Ready condition (`None`: never posted).
pub fn ready_status(node: &Value) -> Option<&str> {
    condition(node, "Ready").and_then(|c| c["status"].as_str())
}

fn timestamp(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

/// Upstream's `tryUpdateNodeHealth` bookkeeping: the node's health after
/// seeing `node` and its `lease` at `now`, given what was `saved`.
pub fn observe(
    saved: Option<&Health>,
    node: &Value,
    lease: Option<&Value>,
    now: Timestamp,
) -> Health {
    let heartbeat = condition(node, "Ready").map(|c| c["lastHeartbeatTime"].clone());
    let saved_renew = saved.and_then(|s| s.renew_time);
    let mut health = match (saved, &heartbeat) {
        // Never posted: counts from the Node's creation.
        (None, None) => Health {
            ready_heartbeat: None,
            renew_time: None,
            probe: timestamp(&node["metadata"]["creationTimestamp"]).unwrap_or(now),
        },
        (Some(s), None) if s.ready_heartbeat.is_none() => s.clone(),
        (Some(s), Some(_)) if s.ready_heartbeat.is_some() && s.ready_heartbeat == heartbeat => {
            s.clone()
        }
        // First seen with a Ready condition, a new heartbeat, or a
        // condition that appeared or vanished: seen alive now.
        _ => Health {
            ready_heartbeat: heartbeat,
            renew_time: saved_renew,
            probe: now,
        },
    };
    let renewed = lease.and_then(|l| timestamp(&l["spec"]["renewTime"]));
    if let Some(renewed) = renewed
        && saved_renew.is_none_or(|s| s < renewed)
    {
        health.renew_time = Some(renewed);
        health.probe = now;
    }
    health
}

/// The node's conditions once its agent is presumed gone: the heartbeat
/// conditions `Unknown`; `None` when they already are.
pub fn unknown_conditions(node: &Value, now: &str) -> Option<Value> {
    let mut conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut changed = false;
    for kind in HEARTBEAT_CONDITIONS {
        match conditions.iter_mut().find(|c| c["type"] == kind) {
            None => {
                conditions.push(json!({
                    "type": kind,
                    "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": node["metadata"]["creationTimestamp"],
                    "lastTransitionTime": now,
                }));
                changed = true;
            }
            Some(c) if c["status"] != "Unknown" => {
                c["status"] = "Unknown".into();
                c["reason"] = "NodeStatusUnknown".into();
                c["message"] = "Kubelet stopped posting node status.".into();
                c["lastTransitionTime"] = now.into();
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed.then_some(Value::Array(conditions))
}

/// A zone's health (upstream's `ComputeZoneState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Tainting as usual.
    Normal,
    /// Many nodes down: in a small zone, no new NoExecute taints.
    PartialDisruption,
    /// No node Ready.
    FullDisruption,
}

/// The state of a zone of `ready` and `not_ready` nodes.
pub fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    let share = not_ready as f64 / (ready + not_ready).max(1) as f64;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && share >= UNHEALTHY_ZONE {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// What may happen to a node's NoExecute taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoExecute {
    /// Set them as Ready says.
    Taint,
    /// Keep (or swap) the ones there, add none.
    Hold,
    /// Remove them: every zone is fully disrupted.
    Untaint,
}

fn zone_of(node: &Value) -> String {
    let labels = &node["metadata"]["labels"];
    let label = |k: &str| labels[k].as_str().unwrap_or("").to_owned();
    format!(
        "{}:\u{0}:{}",
        label("topology.kubernetes.io/region"),
        label("topology.kubernetes.io/zone")
    )
}

/// The NoExecute policy of each node (by name), from the zones' states.
pub fn policies(nodes: &[Value]) -> HashMap<String, NoExecute> {
    let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for node in nodes {
        if node["metadata"]["labels"].get(EXCLUDE_DISRUPTION).is_some() {
            continue;
        }
        let counts = zones.entry(zone_of(node)).or_default();
        if ready_status(node) == Some("True") {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let states: BTreeMap<&String, (ZoneState, usize)> = zones
        .iter()
        .map(|(zone, (ready, not_ready))| {
            (zone, (zone_state(*ready, *not_ready), ready + not_ready))
        })
        .collect();
    let all_down = !states.is_empty()
        && states
            .values()
            .all(|(s, _)| *s == ZoneState::FullDisruption);
    nodes
        .iter()
        .map(|node| {
            let policy = match states.get(&zone_of(node)) {
                _ if all_down => NoExecute::Untaint,
                Some((ZoneState::PartialDisruption, size)) if *size <= LARGE_CLUSTER => {
                    NoExecute::Hold
                }
                _ => NoExecute::Taint,
            };
            (name(node).to_owned(), policy)
        })
        .collect()
}

fn has_taint(taints: &[Value], key: &str, effect: &str) -> bool {
    taints
        .iter()
        .any(|t| t["key"] == key && t["effect"] == effect)
}

/// The node's taints with the controller's own brought in line with its
/// conditions and `policy`; `None` when nothing changes. Other taints,
/// and the `timeAdded` of those kept, stay as they are.
pub fn desired_taints(node: &Value, policy: NoExecute, now: &str) -> Option<Vec<Value>> {
    let current: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let status_of = |kind: &str| condition(node, kind).and_then(|c| c["status"].as_str());
    let mut no_schedule: Vec<&str> = CONDITION_TAINTS
        .iter()
        .filter(|(kind, status, _)| status_of(kind) == Some(*status))
        .map(|(_, _, key)| *key)
        .collect();
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        no_schedule.push(UNSCHEDULABLE);
    }
    let managed = |key: &str| key == UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|t| t.2 == key);
    // (key, effect) pairs.
    let mut add: Vec<(&str, &str)> = Vec::new();
    let mut remove: Vec<(&str, &str)> = Vec::new();
    for t in &current {
        let key = t["key"].as_str().unwrap_or("");
        if t["effect"] == "NoSchedule" && managed(key) && !no_schedule.contains(&key) {
            remove.push((key, "NoSchedule"));
        }
    }
    for key in no_schedule {
        if !has_taint(&current, key, "NoSchedule") {
            add.push((key, "NoSchedule"));
        }
    }
    let wanted = match (policy, ready_status(node)) {
        (NoExecute::Untaint, _) | (_, Some("True")) => None,
        (_, Some("False")) => Some((NOT_READY, UNREACHABLE)),
        (_, Some("Unknown")) => Some((UNREACHABLE, NOT_READY)),
        // No Ready condition yet: nothing to say.
        _ => return edit(&current, &add, &remove, now),
    };
    match wanted {
        None => {
            remove.push((NOT_READY, "NoExecute"));
            remove.push((UNREACHABLE, "NoExecute"));
        }
        Some((key, opposite)) => {
            let swap = has_taint(&current, opposite, "NoExecute");
            if !has_taint(&current, key, "NoExecute") && (policy == NoExecute::Taint || swap) {
                add.push((key, "NoExecute"));
            }
            remove.push((opposite, "NoExecute"));
        }
    }
    edit(&current, &add, &remove, now)
}

/// `current` without `remove` and with `add` (stamped `now`), if that differs.
fn edit(
    current: &[Value],
    add: &[(&str, &str)],
    remove: &[(&str, &str)],
    now: &str,
) -> Option<Vec<Value>> {
    let before = current.len();
    let mut taints: Vec<Value> = current
        .iter()
        .filter(|t| {
            !remove
                .iter()
                .any(|(k, e)| t["key"] == *k && t["effect"] == *e)
        })
        .cloned()
        .collect();
    let removed = taints.len() != before;
    for (key, effect) in add {
        taints.push(json!({"key": key, "effect": effect, "timeAdded": now}));
    }
    (removed || !add.is_empty()).then_some(taints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: Value, taints: Value) -> Value {
        json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        })
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn lease(renew: &str) -> Value {
        json!({"spec": {"renewTime": renew}})
    }

    #[test]
    fn heartbeats_move_the_probe_time() {
        let t0 = ts("2026-01-01T00:10:00Z");
        let ready = json!([{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:09:00Z"}]);
        let n = node(ready.clone(), json!([]));
        // First seen: a full grace from now, whatever the heartbeat says.
        let h = observe(None, &n, None, t0);
        assert_eq!(h.probe, t0);
        let grace = Duration::from_secs(40);
        assert!(!h.stale(grace, ts("2026-01-01T00:10:40Z")));
        assert!(h.stale(grace, ts("2026-01-01T00:10:41Z")));
        // A Lease renewal moves it; the same renewal seen again does not.
        let t1 = ts("2026-01-01T00:10:30Z");
        let h = observe(Some(&h), &n, Some(&lease("2026-01-01T00:10:29.5Z")), t1);
        assert_eq!(h.probe, t1);
        let h2 = observe(
            Some(&h),
            &n,
            Some(&lease("2026-01-01T00:10:29.5Z")),
            ts("2026-01-01T00:11:30Z"),
        );
        assert_eq!(h2.probe, t1);
        // A new Ready heartbeat moves it too.
        let beat = node(
            json!([{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:11:00Z"}]),
            json!([]),
        );
        let t2 = ts("2026-01-01T00:11:31Z");
        assert_eq!(observe(Some(&h2), &beat, None, t2).probe, t2);
    }

    #[test]
    fn a_node_that_never_posted_counts_from_its_creation() {
        let n = node(json!([]), json!([]));
        let now = ts("2026-01-01T00:05:00Z");
        let h = observe(None, &n, None, now);
        assert_eq!(h.probe, ts("2026-01-01T00:00:00Z"));
        assert!(h.stale(Duration::from_secs(60), now));
        // ...unless its Lease is renewed.
        let h = observe(Some(&h), &n, Some(&lease("2026-01-01T00:04:59Z")), now);
        assert!(!h.stale(Duration::from_secs(60), now));
        // Conditions it never posted are added as never updated.
        let conditions = unknown_conditions(&n, "2026-01-01T00:05:00Z").expect("changed");
        assert_eq!(conditions.as_array().map(Vec::len), Some(4));
        assert_eq!(conditions[0]["reason"], "NodeStatusNeverUpdated");
        assert_eq!(conditions[0]["lastHeartbeatTime"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn quiet_nodes_go_unknown_once() {
        let n = node(
            json!([
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": "x"},
                {"type": "MemoryPressure", "status": "False"},
                {"type": "DiskPressure", "status": "False"},
                {"type": "PIDPressure", "status": "False"},
                {"type": "NetworkUnavailable", "status": "False"},
            ]),
            json!([]),
        );
        let conditions = unknown_conditions(&n, "now").expect("changed");
        for c in conditions.as_array().into_iter().flatten().take(4) {
            assert_eq!(c["status"], "Unknown", "{c}");
            assert_eq!(c["reason"], "NodeStatusUnknown");
            assert_eq!(c["message"], "Kubelet stopped posting node status.");
            assert_eq!(c["lastTransitionTime"], "now");
        }
        assert_eq!(
            conditions[4]["status"], "False",
            "not the agent's to vouch for"
        );
        let unknown = node(conditions, json!([]));
        assert_eq!(unknown_conditions(&unknown, "later"), None);
    }

    #[test]
    fn taints_follow_conditions() {
        let ready = |status: &str| json!([{"type": "Ready", "status": status}]);
        let user = json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"});
        // Unknown: unreachable NoSchedule and NoExecute, stamped; the user's kept.
        let lost = node(ready("Unknown"), json!([user.clone()]));
        let taints = desired_taints(&lost, NoExecute::Taint, "t1").expect("changed");
        assert_eq!(taints[0], user);
        assert_eq!(
            taints[1..],
            [
                json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": "t1"}),
                json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "t1"}),
            ]
        );
        let tainted = node(ready("Unknown"), Value::Array(taints.clone()));
        assert_eq!(desired_taints(&tainted, NoExecute::Taint, "t2"), None);
        // False: swapped for not-ready, even while holding.
        let not_ready = node(ready("False"), Value::Array(taints));
        let swapped = desired_taints(&not_ready, NoExecute::Hold, "t3").expect("changed");
        let keys: Vec<(&str, &str)> = swapped
            .iter()
            .map(|t| (t["key"].as_str().unwrap(), t["effect"].as_str().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (NOT_READY, "NoSchedule"),
                (NOT_READY, "NoExecute")
            ]
        );
        // True again: only the user's taint is left.
        let back = node(ready("True"), Value::Array(swapped.clone()));
        assert_eq!(
            desired_taints(&back, NoExecute::Taint, "t4"),
            Some(vec![user.clone()])
        );
        // Holding adds no NoExecute taint; full disruption removes it.
        let held = desired_taints(&node(ready("False"), json!([])), NoExecute::Hold, "t5");
        assert_eq!(
            held,
            Some(vec![
                json!({"key": NOT_READY, "effect": "NoSchedule", "timeAdded": "t5"})
            ])
        );
        let all_down = node(ready("False"), Value::Array(swapped));
        let untainted = desired_taints(&all_down, NoExecute::Untaint, "t6").expect("changed");
        assert!(!has_taint(&untainted, NOT_READY, "NoExecute"));
        assert!(has_taint(&untainted, NOT_READY, "NoSchedule"));
        // Pressure and cordon.
        let mut pressed = node(
            json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "True"}]),
            json!([]),
        );
        pressed["spec"]["unschedulable"] = true.into();
        let taints = desired_taints(&pressed, NoExecute::Taint, "t7").expect("changed");
        assert!(has_taint(
            &taints,
            "node.kubernetes.io/disk-pressure",
            "NoSchedule"
        ));
        assert!(has_taint(&taints, UNSCHEDULABLE, "NoSchedule"));
        // A node that never posted Ready gets no NoExecute taint.
        assert_eq!(
            desired_taints(&node(json!([]), json!([])), NoExecute::Taint, "t8"),
            None
        );
    }

    #[test]
    fn disruption_holds_evictions() {
        assert_eq!(zone_state(1, 0), ZoneState::Normal);
        assert_eq!(zone_state(0, 1), ZoneState::FullDisruption);
        assert_eq!(zone_state(1, 2), ZoneState::Normal);
        assert_eq!(zone_state(2, 3), ZoneState::PartialDisruption);
        assert_eq!(zone_state(3, 3), ZoneState::Normal);
        let named = |n: &str, status: &str, zone: &str| {
            json!({"metadata": {"name": n, "labels": {"topology.kubernetes.io/zone": zone}},
                "status": {"conditions": [{"type": "Ready", "status": status}]}})
        };
        // The only node down: all zones fully disrupted, no evictions.
        let alone = policies(&[named("a", "Unknown", "z1")]);
        assert_eq!(alone["a"], NoExecute::Untaint);
        // One zone down, another up: evict in the one that is down.
        let two = policies(&[named("a", "Unknown", "z1"), named("b", "True", "z2")]);
        assert_eq!(two["a"], NoExecute::Taint);
        // 3 of 4 down in a small zone: hold.
        let most = policies(&[
            named("a", "Unknown", "z"),
            named("b", "Unknown", "z"),
            named("c", "False", "z"),
            named("d", "True", "z"),
        ]);
        assert_eq!(most["a"], NoExecute::Hold);
    }
}
