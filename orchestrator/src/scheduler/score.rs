//! Ranking the feasible nodes, as kube-scheduler's default profile does:
//! each score plugin gives every feasible node a score, normalises it onto
//! 0..=100, and the node's total is the sum of those times the plugin's
//! weight: TaintToleration 3, NodeAffinity 2, PodTopologySpread 2,
//! InterPodAffinity 2, NodeResourcesFit (LeastAllocated) 1.
//!
//! This module has the two node-only plugins (preferred node affinity and
//! PreferNoSchedule taints), upstream's default normalisation, and the
//! weighted sum; the affinity and spread scores come from
//! [`super::affinity`] and [`super::spread`]. NodeResourcesBalancedAllocation
//! and ImageLocality are not scored.

use serde_json::Value;

use super::filters::{term_matches, tolerates};

/// The highest normalised score.
pub const MAX_NODE_SCORE: i64 = 100;

/// Plugin weights of the default profile.
pub mod weight {
    /// TaintToleration.
    pub const TAINT_TOLERATION: i64 = 3;
    /// NodeAffinity.
    pub const NODE_AFFINITY: i64 = 2;
    /// PodTopologySpread.
    pub const TOPOLOGY_SPREAD: i64 = 2;
    /// InterPodAffinity.
    pub const INTER_POD_AFFINITY: i64 = 2;
    /// NodeResourcesFit.
    pub const RESOURCES_FIT: i64 = 1;
}

/// Upstream's default normalisation: scales so that the highest raw score
/// becomes 100 (all 0 stay 0), then, if `reverse`, flips (100 - score);
/// all-zero scores become 100 when reversed.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// NodeAffinity's raw score: the summed weights of the pod's preferred
/// node affinity terms that `node` matches.
pub fn preferred_node_affinity(pod: &Value, node: &Value) -> i64 {
    pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| term_matches(&t["preference"], node))
        .map(|t| t["weight"].as_i64().unwrap_or(0))
        .sum()
}

/// TaintToleration's raw score: the node's PreferNoSchedule taints that the
/// pod does not tolerate (fewer is better).
pub fn intolerable_taints(pod: &Value, node: &Value) -> i64 {
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "PreferNoSchedule")
        .filter(|t| {
            let key = t["key"].as_str().unwrap_or("");
            let value = t["value"].as_str().unwrap_or("");
            !tolerates(tolerations, key, value, "PreferNoSchedule")
        })
        .count() as i64
}

/// The already-normalised scores of the other plugins, per feasible node.
#[derive(Debug, Default)]
pub struct Extra {
    /// InterPodAffinity (0..=100), or empty.
    pub inter_pod: Vec<i64>,
    /// PodTopologySpread (0..=100), or empty when the pod has no
    /// ScheduleAnyway constraint.
    pub spread: Vec<i64>,
}

/// The weighted total of each feasible node: `least_allocated` holds
/// NodeResourcesFit's scores (0..=100) for `nodes`, in order.
pub fn totals(pod: &Value, nodes: &[&Value], least_allocated: &[i64], extra: &Extra) -> Vec<i64> {
    let mut affinity: Vec<i64> = nodes
        .iter()
        .map(|n| preferred_node_affinity(pod, n))
        .collect();
    normalize(&mut affinity, false);
    let mut taints: Vec<i64> = nodes.iter().map(|n| intolerable_taints(pod, n)).collect();
    normalize(&mut taints, true);
    let at = |v: &[i64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..nodes.len())
        .map(|i| {
            weight::RESOURCES_FIT * at(least_allocated, i)
                + weight::TAINT_TOLERATION * taints[i]
                + weight::NODE_AFFINITY * affinity[i]
                + weight::TOPOLOGY_SPREAD * at(&extra.spread, i)
                + weight::INTER_POD_AFFINITY * at(&extra.inter_pod, i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn default_normalisation() {
        let mut s = vec![0, 5, 10];
        normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 1, 2];
        normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
        let mut s = vec![0, 0];
        normalize(&mut s, false);
        assert_eq!(s, vec![0, 0]);
    }

    #[test]
    fn preferred_affinity_and_prefer_no_schedule_outweigh_free_room() {
        let pod = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
        ]}}}});
        let ssd = node("ssd", json!({"disk": "ssd", "zone": "a"}), Value::Null);
        let hdd = node("hdd", json!({"disk": "hdd", "zone": "a"}), Value::Null);
        assert_eq!(preferred_node_affinity(&pod, &ssd), 100);
        assert_eq!(preferred_node_affinity(&pod, &hdd), 20);
        // The emptier hdd node (100 vs 40 LeastAllocated) still loses:
        // 2 x (100 - 20) > 60.
        let t = totals(&pod, &[&ssd, &hdd], &[40, 100], &Extra::default());
        assert!(t[0] > t[1], "{t:?}");

        let soft = node(
            "soft",
            json!({}),
            json!([{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]),
        );
        let plain = node("plain", json!({}), Value::Null);
        let pod = json!({"spec": {}});
        assert_eq!(intolerable_taints(&pod, &soft), 1);
        let t = totals(&pod, &[&soft, &plain], &[100, 50], &Extra::default());
        assert!(t[0] < t[1], "{t:?}");
        let tolerant = json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}]}});
        assert_eq!(intolerable_taints(&tolerant, &soft), 0);
        let noexec = json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute"}]}});
        assert_eq!(intolerable_taints(&noexec, &soft), 1);
    }
}
