//! Inter-pod affinity and anti-affinity, after upstream's InterPodAffinity
//! plugin: the filter (the incoming pod's required terms, and the required
//! anti-affinity terms of pods already placed against the incoming pod) and
//! the score (preferred terms of both sides, plus existing pods' required
//! affinity terms at weight 1).
//!
//! A term selects pods by `labelSelector` in its namespaces (`namespaces`
//! and `namespaceSelector`; neither means the owner's own namespace), and
//! spreads or gathers them by the value of `topologyKey` on their nodes:
//! counts are kept per `(topologyKey, value)` pair over the [`Cluster`] of
//! placed pods, which includes pods assumed but not yet bound, so that one
//! replica placed counts for the next.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::controllers::objects::selector_matches;

/// The parts of a placed (or incoming) pod that affinity and spreading
/// look at.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    /// The pod's namespace.
    pub namespace: String,
    /// `metadata.labels` (an object, or null).
    pub labels: Value,
    /// Whether it has a `deletionTimestamp` (spreading skips those).
    pub terminating: bool,
    /// `spec.affinity`, kept only when it has pod (anti-)affinity.
    pub affinity: Option<Value>,
}

impl PodMeta {
    /// Reads the parts of `pod`.
    pub fn of(pod: &Value) -> PodMeta {
        let affinity = &pod["spec"]["affinity"];
        let inter_pod =
            affinity["podAffinity"].is_object() || affinity["podAntiAffinity"].is_object();
        PodMeta {
            namespace: pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            labels: pod["metadata"]["labels"].clone(),
            terminating: !pod["metadata"]["deletionTimestamp"].is_null(),
            affinity: inter_pod.then(|| affinity.clone()),
        }
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(Value::as_str)
    }
}

/// Namespace name → its labels (for `namespaceSelector`).
pub type NsLabels<'a> = dyn Fn(&str) -> Value + 'a;

/// Node name → the pods placed on it (bound or assumed), and each node's
/// labels: the snapshot one scheduling decision reads.
pub struct Cluster<'a> {
    /// Every known node's labels, by name.
    pub nodes: HashMap<&'a str, &'a Value>,
    /// The pods on each node.
    pub pods: HashMap<&'a str, Vec<&'a PodMeta>>,
    /// Labels of a namespace.
    pub ns_labels: &'a NsLabels<'a>,
}

/// The value of label `key` in a labels object.
pub fn label<'a>(labels: &'a Value, key: &str) -> Option<&'a str> {
    labels.get(key).and_then(Value::as_str)
}

/// A `(topologyKey, value)` pair → a count.
pub type Counts = HashMap<(String, String), i64>;

/// One `PodAffinityTerm`, with its namespaces resolved against its owner.
#[derive(Debug, Clone)]
pub struct Term {
    namespaces: Vec<String>,
    namespace_selector: Value,
    selector: Value,
    /// The node label the term groups by.
    pub topology_key: String,
    /// The weight of a preferred term (1 for required ones).
    pub weight: i64,
}

impl Term {
    /// Parses a `PodAffinityTerm` of the pod `owner`.
    pub fn parse(term: &Value, owner: &PodMeta, weight: i64) -> Term {
        let mut namespaces: Vec<String> = term["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        let namespace_selector = term["namespaceSelector"].clone();
        if namespaces.is_empty() && namespace_selector.is_null() {
            namespaces.push(owner.namespace.clone());
        }
        let mut selector = term["labelSelector"].clone();
        // matchLabelKeys / mismatchLabelKeys: the owner's values of those
        // labels join the selector (as the API server merges them).
        if selector.is_object() {
            for (field, op) in [("matchLabelKeys", "In"), ("mismatchLabelKeys", "NotIn")] {
                for key in term[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if let Some(value) = owner.label(key) {
                        let expr = json!({"key": key, "operator": op, "values": [value]});
                        match selector["matchExpressions"].as_array_mut() {
                            Some(list) => list.push(expr),
                            None => selector["matchExpressions"] = json!([expr]),
                        }
                    }
                }
            }
        }
        Term {
            namespaces,
            namespace_selector,
            selector,
            topology_key: term["topologyKey"].as_str().unwrap_or("").to_owned(),
            weight,
        }
    }

    /// Whether `pod` is one the term selects (namespace and labels).
    pub fn matches(&self, pod: &PodMeta, ns_labels: &NsLabels<'_>) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || (self.namespace_selector.is_object()
                && selector_matches(&self.namespace_selector, &ns_labels(&pod.namespace)));
        in_namespace && selector_matches(&self.selector, &pod.labels)
    }

    /// The `(topologyKey, value)` pair of a node with these labels.
    fn pair(&self, node_labels: &Value) -> Option<(String, String)> {
        label(node_labels, &self.topology_key).map(|v| (self.topology_key.clone(), v.to_owned()))
    }
}

/// The required terms of `owner` of `kind` (`podAffinity` or
/// `podAntiAffinity`).
pub fn required(owner: &PodMeta, kind: &str) -> Vec<Term> {
    let Some(affinity) = &owner.affinity else {
        return Vec::new();
    };
    affinity[kind]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Term::parse(t, owner, 1))
        .collect()
}

/// The preferred (weighted) terms of `owner` of `kind`.
pub fn preferred(owner: &PodMeta, kind: &str) -> Vec<Term> {
    let Some(affinity) = &owner.affinity else {
        return Vec::new();
    };
    affinity[kind]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            Term::parse(
                &t["podAffinityTerm"],
                owner,
                t["weight"].as_i64().unwrap_or(0),
            )
        })
        .filter(|t| t.weight != 0)
        .collect()
}

/// The counts the filter needs, computed once per incoming pod.
#[derive(Debug, Default)]
pub struct Filter {
    /// Pairs where placed pods' required anti-affinity selects the pod.
    existing_anti: Counts,
    /// Pairs with pods matching all of the pod's required affinity terms.
    affinity: Counts,
    /// Pairs with pods matching one of its required anti-affinity terms.
    anti: Counts,
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    /// Whether the pod matches all its own affinity terms.
    self_match: bool,
}

/// Builds the filter's counts for `pod` over `cluster`.
pub fn prefilter(pod: &PodMeta, cluster: &Cluster<'_>) -> Filter {
    let mut state = Filter {
        required_affinity: required(pod, "podAffinity"),
        required_anti: required(pod, "podAntiAffinity"),
        ..Filter::default()
    };
    state.self_match = !state.required_affinity.is_empty()
        && state
            .required_affinity
            .iter()
            .all(|t| t.matches(pod, cluster.ns_labels));
    for (node, pods) in &cluster.pods {
        let Some(labels) = cluster.nodes.get(node) else {
            continue;
        };
        for existing in pods {
            if existing.affinity.is_some() {
                for term in required(existing, "podAntiAffinity") {
                    if term.matches(pod, cluster.ns_labels)
                        && let Some(pair) = term.pair(labels)
                    {
                        *state.existing_anti.entry(pair).or_default() += 1;
                    }
                }
            }
            let all = !state.required_affinity.is_empty()
                && state
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(existing, cluster.ns_labels));
            if all {
                for term in &state.required_affinity {
                    if let Some(pair) = term.pair(labels) {
                        *state.affinity.entry(pair).or_default() += 1;
                    }
                }
            }
            for term in &state.required_anti {
                if term.matches(existing, cluster.ns_labels)
                    && let Some(pair) = term.pair(labels)
                {
                    *state.anti.entry(pair).or_default() += 1;
                }
            }
        }
    }
    state
}

/// "node(s) didn't match pod affinity rules".
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// "node(s) didn't match pod anti-affinity rules".
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// "node(s) didn't satisfy existing pods anti-affinity rules".
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

impl Filter {
    /// Whether the filter can reject anything at all.
    pub fn is_empty(&self) -> bool {
        self.existing_anti.is_empty()
            && self.required_affinity.is_empty()
            && self.required_anti.is_empty()
    }

    /// Whether a node with `node_labels` passes, else upstream's reason.
    pub fn check(&self, node_labels: &Value) -> Result<(), &'static str> {
        let mut pods_exist = true;
        for term in &self.required_affinity {
            match term.pair(node_labels) {
                // Every topology key must be on the node.
                None => return Err(AFFINITY),
                Some(pair) => {
                    if self.affinity.get(&pair).copied().unwrap_or(0) <= 0 {
                        pods_exist = false;
                    }
                }
            }
        }
        // The first of a group of pods with affinity to each other: no pod
        // matches anywhere, and the pod matches its own terms.
        let first_of_group = self.affinity.is_empty() && self.self_match;
        if !pods_exist && !first_of_group {
            return Err(AFFINITY);
        }
        for term in &self.required_anti {
            if let Some(pair) = term.pair(node_labels)
                && self.anti.get(&pair).copied().unwrap_or(0) > 0
            {
                return Err(ANTI_AFFINITY);
            }
        }
        if !self.existing_anti.is_empty() {
            for (key, value) in node_labels.as_object().into_iter().flatten() {
                let Some(value) = value.as_str() else {
                    continue;
                };
                if self
                    .existing_anti
                    .get(&(key.clone(), value.to_owned()))
                    .copied()
                    .unwrap_or(0)
                    > 0
                {
                    return Err(EXISTING_ANTI_AFFINITY);
                }
            }
        }
        Ok(())
    }
}

/// The InterPodAffinity score of each of `feasible` (node labels),
/// normalised to 0..=100 (the highest raw sum gets 100, the lowest or 0
/// gets 0); all 0 when no term applies.
pub fn score(pod: &PodMeta, cluster: &Cluster<'_>, feasible: &[&Value]) -> Vec<i64> {
    let mut topology: HashMap<String, HashMap<String, i64>> = HashMap::new();
    let mut add = |term: &Term, target: &PodMeta, labels: &Value, sign: i64| {
        if term.matches(target, cluster.ns_labels)
            && let Some((key, value)) = term.pair(labels)
        {
            *topology.entry(key).or_default().entry(value).or_default() += sign * term.weight;
        }
    };
    let affinity = preferred(pod, "podAffinity");
    let anti = preferred(pod, "podAntiAffinity");
    for (node, pods) in &cluster.pods {
        let Some(labels) = cluster.nodes.get(node) else {
            continue;
        };
        for existing in pods {
            for term in &affinity {
                add(term, existing, labels, 1);
            }
            for term in &anti {
                add(term, existing, labels, -1);
            }
            if existing.affinity.is_none() {
                continue;
            }
            for term in required(existing, "podAffinity") {
                add(&term, pod, labels, 1);
            }
            for term in preferred(existing, "podAffinity") {
                add(&term, pod, labels, 1);
            }
            for term in preferred(existing, "podAntiAffinity") {
                add(&term, pod, labels, -1);
            }
        }
    }
    let raw: Vec<i64> = feasible
        .iter()
        .map(|labels| {
            topology
                .iter()
                .filter_map(|(key, values)| label(labels, key).and_then(|v| values.get(v)))
                .sum()
        })
        .collect();
    if topology.is_empty() {
        return raw;
    }
    min_max(&raw)
}

/// Scales scores so that the smallest (or 0) maps to 0 and the largest
/// (or 0) to 100, as upstream normalises InterPodAffinity.
pub fn min_max(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().fold(0, i64::max);
    let min = raw.iter().copied().fold(0, i64::min);
    let span = max - min;
    raw.iter()
        .map(|s| if span > 0 { 100 * (s - min) / span } else { 0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, labels: Value, affinity: Value) -> PodMeta {
        PodMeta::of(&json!({
            "metadata": {"namespace": ns, "labels": labels},
            "spec": {"affinity": affinity},
        }))
    }

    fn anti(app: &str, key: &str) -> Value {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
    }

    fn no_ns(_: &str) -> Value {
        json!({})
    }

    struct Fixture {
        nodes: Vec<(String, Value)>,
        pods: Vec<(String, PodMeta)>,
    }

    impl Fixture {
        fn cluster<'a>(&'a self, ns: &'a NsLabels<'a>) -> Cluster<'a> {
            let mut pods: HashMap<&str, Vec<&PodMeta>> = HashMap::new();
            for (node, pod) in &self.pods {
                pods.entry(node.as_str()).or_default().push(pod);
            }
            Cluster {
                nodes: self.nodes.iter().map(|(n, l)| (n.as_str(), l)).collect(),
                pods,
                ns_labels: ns,
            }
        }
    }

    fn zones() -> Vec<(String, Value)> {
        ["a1:a", "a2:a", "b1:b"]
            .iter()
            .map(|s| {
                let (name, zone) = s.split_once(':').unwrap();
                (
                    name.to_owned(),
                    json!({"kubernetes.io/hostname": name, "zone": zone}),
                )
            })
            .collect()
    }

    #[test]
    fn required_anti_affinity_spreads_by_host_and_zone() {
        let web = meta(
            "t",
            json!({"app": "web"}),
            anti("web", "kubernetes.io/hostname"),
        );
        let f = Fixture {
            nodes: zones(),
            pods: vec![("a1".into(), web.clone())],
        };
        let cluster = f.cluster(&no_ns);
        let state = prefilter(&web, &cluster);
        assert_eq!(state.check(&f.nodes[0].1), Err(ANTI_AFFINITY));
        assert_eq!(state.check(&f.nodes[1].1), Ok(()));
        // A pod without affinity is kept off a1 by the placed pod's terms.
        let plain = meta("t", json!({"app": "web"}), Value::Null);
        let state = prefilter(&plain, &cluster);
        assert_eq!(state.check(&f.nodes[0].1), Err(EXISTING_ANTI_AFFINITY));
        assert_eq!(state.check(&f.nodes[2].1), Ok(()));
        // Another namespace is not selected.
        let other = meta("u", json!({"app": "web"}), anti("web", "zone"));
        let state = prefilter(&other, &cluster);
        assert!(state.check(&f.nodes[1].1).is_ok());
        // By zone: a2 shares a1's zone.
        let zonal = meta("t", json!({"app": "web"}), anti("web", "zone"));
        let state = prefilter(&zonal, &cluster);
        assert_eq!(state.check(&f.nodes[1].1), Err(ANTI_AFFINITY));
        assert_eq!(state.check(&f.nodes[2].1), Ok(()));
    }

    #[test]
    fn required_affinity_follows_the_target_or_starts_a_group() {
        let with_db = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}});
        let web = meta("t", json!({"app": "web"}), with_db.clone());
        let db = meta("t", json!({"app": "db"}), Value::Null);
        let f = Fixture {
            nodes: zones(),
            pods: vec![("b1".into(), db)],
        };
        let cluster = f.cluster(&no_ns);
        let state = prefilter(&web, &cluster);
        assert_eq!(state.check(&f.nodes[0].1), Err(AFFINITY));
        assert_eq!(state.check(&f.nodes[2].1), Ok(()));
        // No db anywhere: a web pod waits, a db pod with the same term may
        // start the group anywhere.
        let empty = Fixture {
            nodes: zones(),
            pods: vec![],
        };
        let cluster = empty.cluster(&no_ns);
        assert_eq!(
            prefilter(&web, &cluster).check(&empty.nodes[0].1),
            Err(AFFINITY)
        );
        let first = meta("t", json!({"app": "db"}), with_db);
        assert_eq!(prefilter(&first, &cluster).check(&empty.nodes[0].1), Ok(()));
        // A node without the topology key never passes.
        assert_eq!(prefilter(&first, &cluster).check(&json!({})), Err(AFFINITY));
    }

    #[test]
    fn namespace_selectors_and_match_label_keys() {
        let term = json!({"labelSelector": {"matchLabels": {"app": "web"}},
            "namespaceSelector": {"matchLabels": {"team": "x"}},
            "matchLabelKeys": ["rev"], "topologyKey": "zone"});
        let owner = meta("t", json!({"app": "web", "rev": "2"}), Value::Null);
        let term = Term::parse(&term, &owner, 1);
        let ns = |n: &str| {
            if n == "u" {
                json!({"team": "x"})
            } else {
                json!({})
            }
        };
        assert!(term.matches(
            &meta("u", json!({"app": "web", "rev": "2"}), Value::Null),
            &ns
        ));
        assert!(!term.matches(
            &meta("u", json!({"app": "web", "rev": "1"}), Value::Null),
            &ns
        ));
        // The owner's own namespace is not implied once a selector is given.
        assert!(!term.matches(
            &meta("t", json!({"app": "web", "rev": "2"}), Value::Null),
            &ns
        ));
    }

    #[test]
    fn preferred_terms_score_by_weight_normalised() {
        let pref = json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]},
        });
        let web = meta("t", json!({"app": "web"}), pref);
        let f = Fixture {
            nodes: zones(),
            pods: vec![
                ("a1".into(), meta("t", json!({"app": "db"}), Value::Null)),
                ("a1".into(), meta("t", json!({"app": "web"}), Value::Null)),
            ],
        };
        let cluster = f.cluster(&no_ns);
        let feasible: Vec<&Value> = f.nodes.iter().map(|(_, l)| l).collect();
        // Raw: a1 = 10 - 5, a2 = 10, b1 = 0.
        assert_eq!(score(&web, &cluster, &feasible), vec![50, 100, 0]);
        assert_eq!(min_max(&[-4, 0, 4]), vec![0, 50, 100]);
        assert_eq!(min_max(&[0, 0]), vec![0, 0]);
    }
}
