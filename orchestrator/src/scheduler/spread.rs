//! `topologySpreadConstraints`, after upstream's PodTopologySpread plugin:
//! `whenUnsatisfiable: DoNotSchedule` constraints filter, `ScheduleAnyway`
//! ones score.
//!
//! A constraint counts the pods of the incoming pod's namespace that its
//! `labelSelector` (plus `matchLabelKeys`) selects, per value of
//! `topologyKey` (a domain), over the nodes that have every constraint's
//! key and pass its inclusion policies (`nodeAffinityPolicy` Honor and
//! `nodeTaintsPolicy` Ignore by default). A node passes the filter when
//! `count(its domain) + self - min(count over domains) <= maxSkew`, the
//! minimum being 0 while there are fewer domains than `minDomains`.
//! Terminating pods do not count. Upstream's cluster-wide default
//! constraints (system spreading for pods without constraints) are not
//! applied.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::affinity::{Cluster, PodMeta, label};
use super::filters::{matches_node, untolerated_taint};
use crate::controllers::objects::selector_matches;

/// The well-known hostname label: spread by node.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// "node(s) didn't match pod topology spread constraints".
pub const MISMATCH: &str = "node(s) didn't match pod topology spread constraints";
/// The same, for a node missing a constraint's topology key.
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// One parsed constraint.
#[derive(Debug, Clone)]
pub struct Constraint {
    max_skew: i64,
    key: String,
    selector: Value,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    /// Whether `node` is counted for this constraint (inclusion policies).
    fn includes(&self, pod: &Value, node: &Value) -> bool {
        let tolerations = pod["spec"]["tolerations"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        (!self.honor_affinity || matches_node(pod, node))
            && (!self.honor_taints || untolerated_taint(tolerations, node).is_none())
    }

    /// The pods of `pods` in `namespace` it counts.
    fn count(&self, pods: Option<&Vec<&PodMeta>>, namespace: &str) -> i64 {
        // An empty selector (everything) counts nothing, as upstream.
        let empty = self.selector.is_object()
            && self.selector["matchLabels"]
                .as_object()
                .is_none_or(|m| m.is_empty())
            && self.selector["matchExpressions"]
                .as_array()
                .is_none_or(|e| e.is_empty());
        if empty {
            return 0;
        }
        pods.into_iter()
            .flatten()
            .filter(|p| {
                !p.terminating
                    && p.namespace == namespace
                    && selector_matches(&self.selector, &p.labels)
            })
            .count() as i64
    }
}

/// The pod's constraints with `whenUnsatisfiable` equal to `action`.
pub fn constraints(pod: &Value, meta: &PodMeta, action: &str) -> Vec<Constraint> {
    pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") == action)
        .map(|c| {
            let mut selector = c["labelSelector"].clone();
            let mut extra: Vec<Value> = Vec::new();
            for key in c["matchLabelKeys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if let Some(value) = meta.label(key) {
                    extra.push(json!({"key": key, "operator": "In", "values": [value]}));
                }
            }
            if !extra.is_empty() {
                if !selector.is_object() {
                    selector = json!({});
                }
                match selector["matchExpressions"].as_array_mut() {
                    Some(list) => list.extend(extra),
                    None => selector["matchExpressions"] = Value::Array(extra),
                }
            }
            Constraint {
                max_skew: c["maxSkew"].as_i64().unwrap_or(1).max(1),
                key: c["topologyKey"].as_str().unwrap_or("").to_owned(),
                selector,
                min_domains: c["minDomains"].as_i64().unwrap_or(1),
                honor_affinity: c["nodeAffinityPolicy"].as_str() != Some("Ignore"),
                honor_taints: c["nodeTaintsPolicy"].as_str() == Some("Honor"),
            }
        })
        .collect()
}

fn has_all_keys(labels: &Value, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| label(labels, &c.key).is_some())
}

/// The filter's counts for one incoming pod.
#[derive(Debug, Default)]
pub struct Filter {
    constraints: Vec<Constraint>,
    /// `(key, value)` → matching pods in that domain.
    counts: HashMap<(String, String), i64>,
}

/// Counts the matching pods per domain for the pod's DoNotSchedule
/// constraints over every node of `cluster`.
pub fn prefilter(pod: &Value, meta: &PodMeta, nodes: &[&Value], cluster: &Cluster<'_>) -> Filter {
    let constraints = constraints(pod, meta, "DoNotSchedule");
    let mut counts = HashMap::new();
    if constraints.is_empty() {
        return Filter::default();
    }
    for node in nodes {
        let labels = &node["metadata"]["labels"];
        if !has_all_keys(labels, &constraints) {
            continue;
        }
        let name = node["metadata"]["name"].as_str().unwrap_or("");
        let pods = cluster.pods.get(name);
        for c in &constraints {
            if !c.includes(pod, node) {
                continue;
            }
            let value = label(labels, &c.key).unwrap_or("").to_owned();
            *counts.entry((c.key.clone(), value)).or_default() += c.count(pods, &meta.namespace);
        }
    }
    Filter {
        constraints,
        counts,
    }
}

impl Filter {
    /// Whether the pod has DoNotSchedule constraints.
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    /// Whether a node with `labels` keeps every skew within bounds.
    pub fn check(&self, meta: &PodMeta, labels: &Value) -> Result<(), &'static str> {
        for c in &self.constraints {
            let Some(value) = label(labels, &c.key) else {
                return Err(MISSING_LABEL);
            };
            let domains = self.counts.keys().filter(|(k, _)| *k == c.key);
            let domain_count = domains.clone().count() as i64;
            let min = if domain_count < c.min_domains {
                0
            } else {
                domains
                    .filter_map(|d| self.counts.get(d))
                    .copied()
                    .min()
                    .unwrap_or(0)
            };
            let own = i64::from(selector_matches(&c.selector, &meta.labels));
            let here = self
                .counts
                .get(&(c.key.clone(), value.to_owned()))
                .copied()
                .unwrap_or(0);
            if here + own - min > c.max_skew {
                return Err(MISMATCH);
            }
        }
        Ok(())
    }
}

/// The PodTopologySpread score of each of `feasible` for the pod's
/// ScheduleAnyway constraints, normalised to 0..=100 (fewer matching pods
/// in a node's domains scores higher; a node missing a key scores 0).
/// `None` when the pod has no such constraints.
pub fn score(
    pod: &Value,
    meta: &PodMeta,
    nodes: &[&Value],
    cluster: &Cluster<'_>,
    feasible: &[&Value],
) -> Option<Vec<i64>> {
    let constraints = constraints(pod, meta, "ScheduleAnyway");
    if constraints.is_empty() {
        return None;
    }
    let labels_of = |n: &Value| n["metadata"]["labels"].clone();
    let ignored: Vec<bool> = feasible
        .iter()
        .map(|n| !has_all_keys(&labels_of(n), &constraints))
        .collect();
    let mut domains: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
    for (node, _) in feasible.iter().zip(&ignored).filter(|(_, i)| !**i) {
        let labels = labels_of(node);
        for (i, c) in constraints.iter().enumerate() {
            if c.key != HOSTNAME {
                let value = label(&labels, &c.key).unwrap_or("").to_owned();
                domains[i].entry(value).or_default();
            }
        }
    }
    let scored = ignored.iter().filter(|i| !**i).count();
    let weights: Vec<f64> = constraints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let size = if c.key == HOSTNAME {
                scored
            } else {
                domains[i].len()
            };
            ((size + 2) as f64).ln()
        })
        .collect();
    for node in nodes {
        let labels = &node["metadata"]["labels"];
        if !has_all_keys(labels, &constraints) {
            continue;
        }
        let pods = cluster
            .pods
            .get(node["metadata"]["name"].as_str().unwrap_or(""));
        for (i, c) in constraints.iter().enumerate() {
            if !c.includes(pod, node) {
                continue;
            }
            let value = label(labels, &c.key).unwrap_or("");
            if let Some(total) = domains[i].get_mut(value) {
                *total += c.count(pods, &meta.namespace);
            }
        }
    }
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .zip(&ignored)
        .map(|(node, ignored)| {
            if *ignored {
                return None;
            }
            let labels = labels_of(node);
            let name = node["metadata"]["name"].as_str().unwrap_or("");
            let mut total = 0.0;
            for (i, c) in constraints.iter().enumerate() {
                let Some(value) = label(&labels, &c.key) else {
                    continue;
                };
                let count = if c.key == HOSTNAME {
                    c.count(cluster.pods.get(name), &meta.namespace)
                } else {
                    domains[i].get(value).copied().unwrap_or(0)
                };
                total += count_score(count, c.max_skew, weights[i]);
            }
            Some(total.round() as i64)
        })
        .collect();
    Some(normalize(&raw))
}

/// A domain's raw score: its matching pods weighted by the topology's size,
/// plus `maxSkew - 1` to soften small differences.
pub fn count_score(count: i64, max_skew: i64, weight: f64) -> f64 {
    count as f64 * weight + (max_skew - 1) as f64
}

/// Reverses raw scores onto 0..=100 (the smallest raw gets 100);
/// ignored nodes (`None`) get 0.
pub fn normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().fold(0, i64::max);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => 100,
            Some(s) => 100 * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": zone}}, "spec": {}})
    }

    fn pod(constraint: Value) -> Value {
        json!({"metadata": {"namespace": "t", "labels": {"app": "web"}},
            "spec": {"topologySpreadConstraints": [constraint]}})
    }

    fn web() -> PodMeta {
        PodMeta::of(&pod(Value::Null))
    }

    fn no_ns(_: &str) -> Value {
        json!({})
    }

    #[test]
    fn do_not_schedule_keeps_skew_within_max() {
        let nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")];
        let node_refs: Vec<&Value> = nodes.iter().collect();
        let placed = [web(), web(), web()];
        let ns: &dyn Fn(&str) -> Value = &no_ns;
        let cluster = Cluster {
            nodes: HashMap::new(),
            pods: HashMap::from([
                ("a1", vec![&placed[0]]),
                ("a2", vec![&placed[1]]),
                ("b1", vec![&placed[2]]),
            ]),
            ns_labels: ns,
        };
        let p = pod(
            json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}),
        );
        let meta = PodMeta::of(&p);
        let state = prefilter(&p, &meta, &node_refs, &cluster);
        // Zone a holds 2, zone b 1: a third in a makes the skew 2.
        let a = &nodes[0]["metadata"]["labels"];
        assert_eq!(state.check(&meta, a), Err(MISMATCH));
        assert_eq!(state.check(&meta, &nodes[2]["metadata"]["labels"]), Ok(()));
        assert_eq!(state.check(&meta, &json!({})), Err(MISSING_LABEL));
        // maxSkew 2 allows it, unless minDomains (3) exceeds the two zones:
        // then the minimum counts as 0.
        let mut loose = pod(json!({"maxSkew": 2, "topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "web"}}}));
        assert_eq!(
            prefilter(&loose, &meta, &node_refs, &cluster).check(&meta, a),
            Ok(())
        );
        loose["spec"]["topologySpreadConstraints"][0]["minDomains"] = json!(3);
        let state = prefilter(&loose, &meta, &node_refs, &cluster);
        assert_eq!(state.check(&meta, a), Err(MISMATCH));
        // Nodes the pod's node selector excludes are no domain (Honor):
        // zone a alone, its own minimum.
        let mut picky = p.clone();
        picky["spec"]["nodeSelector"] = json!({"zone": "a"});
        let state = prefilter(&picky, &meta, &node_refs, &cluster);
        assert_eq!(state.check(&meta, a), Ok(()));
        picky["spec"]["topologySpreadConstraints"][0]["nodeAffinityPolicy"] = json!("Ignore");
        let state = prefilter(&picky, &meta, &node_refs, &cluster);
        assert_eq!(state.check(&meta, a), Err(MISMATCH));
    }

    #[test]
    fn schedule_anyway_prefers_the_emptier_domain() {
        let nodes = [
            node("a1", "a"),
            node("b1", "b"),
            json!({"metadata": {"name": "x", "labels": {}}}),
        ];
        let node_refs: Vec<&Value> = nodes.iter().collect();
        let placed = [web(), web()];
        let ns: &dyn Fn(&str) -> Value = &no_ns;
        let cluster = Cluster {
            nodes: HashMap::new(),
            pods: HashMap::from([("a1", vec![&placed[0], &placed[1]])]),
            ns_labels: ns,
        };
        let p = pod(
            json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}}),
        );
        let meta = PodMeta::of(&p);
        // Raw a1 = round(2 ln 4) = 3, b1 = 0; x lacks the key.
        let scores = score(&p, &meta, &node_refs, &cluster, &node_refs).expect("constraints");
        assert_eq!(scores, vec![0, 100, 0]);
        assert_eq!(normalize(&[Some(4), Some(2), None]), vec![50, 100, 0]);
        assert_eq!(normalize(&[Some(0), Some(0)]), vec![100, 100]);
        assert!((count_score(2, 3, 1.5) - 5.0).abs() < 1e-9);
    }
}
