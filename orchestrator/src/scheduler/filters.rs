//! The scheduler's filters and score, after upstream's default plugins in
//! their order: NodeUnschedulable, TaintToleration, NodeAffinity (with
//! `nodeSelector`), NodePorts, NodeResourcesFit; then the
//! LeastAllocated score. Each filter's rejection reason is worded as
//! upstream's, since users read them in `0/N nodes are available: ...`.

use std::collections::HashSet;

use serde_json::Value;

/// What a pod asks of a node: requests and host ports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demand {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// CPU for scoring: containers without a request count 100m.
    pub cpu_nonzero: i64,
    /// Memory for scoring: containers without a request count 200 MiB.
    pub memory_nonzero: i64,
    /// `(protocol, hostIP, hostPort)` of ports with a hostPort.
    pub ports: Vec<(String, String, i64)>,
}

/// What is bound to a node already.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Sum of requests.
    pub used: Demand,
    /// Pods bound.
    pub pods: i64,
}

impl Usage {
    /// Adds (`sign` 1) or removes (-1) a pod's demand.
    pub fn apply(&mut self, demand: &Demand, sign: i64) {
        self.used.cpu += sign * demand.cpu;
        self.used.memory += sign * demand.memory;
        self.used.cpu_nonzero += sign * demand.cpu_nonzero;
        self.used.memory_nonzero += sign * demand.memory_nonzero;
        self.pods += sign;
        for port in &demand.ports {
            if sign > 0 {
                self.used.ports.push(port.clone());
            } else if let Some(i) = self.used.ports.iter().position(|p| p == port) {
                self.used.ports.swap_remove(i);
            }
        }
    }
}

/// A Kubernetes quantity (`100m`, `1.5`, `128Mi`, `1G`, `1e3`) times
/// `scale` (1000 for millicores), rounded up; `None` if it does not parse.
pub fn quantity(text: &str, scale: f64) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    Some((value * factor * scale).ceil() as i64)
}

fn resource(list: &Value, name: &str, scale: f64) -> Option<i64> {
    let value = &list[name];
    match value {
        Value::String(s) => quantity(s, scale),
        Value::Number(n) => n.as_f64().map(|v| (v * scale).ceil() as i64),
        _ => None,
    }
}

/// The pod's demand: the sum over its containers (requests, else limits),
/// or the largest init container's if more.
pub fn demand(pod: &Value) -> Demand {
    let mut out = Demand::default();
    let container = |c: &Value| {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        let get = |name, scale| resource(requests, name, scale).or(resource(limits, name, scale));
        (get("cpu", 1000.0), get("memory", 1.0))
    };
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let (cpu, memory) = container(c);
        out.cpu += cpu.unwrap_or(0);
        out.memory += memory.unwrap_or(0);
        out.cpu_nonzero += cpu.unwrap_or(100);
        out.memory_nonzero += memory.unwrap_or(200 * 1024 * 1024);
        for port in c["ports"].as_array().into_iter().flatten() {
            if let Some(host_port) = port["hostPort"].as_i64().filter(|p| *p > 0) {
                let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
                let ip = port["hostIP"].as_str().unwrap_or("0.0.0.0").to_owned();
                out.ports.push((protocol, ip, host_port));
            }
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (cpu, memory) = container(c);
        out.cpu = out.cpu.max(cpu.unwrap_or(0));
        out.memory = out.memory.max(memory.unwrap_or(0));
    }
    out
}

/// Why `node` cannot take `pod` (upstream's wording), or `Ok` with its score.
pub fn evaluate(
    pod: &Value,
    demand: &Demand,
    node: &Value,
    usage: &Usage,
) -> Result<i64, Vec<String>> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if node["spec"]["unschedulable"].as_bool() == Some(true)
        && !tolerates(
            tolerations,
            "node.kubernetes.io/unschedulable",
            "",
            "NoSchedule",
        )
    {
        return Err(vec!["node(s) were unschedulable".into()]);
    }
    // A node the node lifecycle controller tainted for its Ready condition
    // is judged by those taints, as upstream (which looks at taints only);
    // the condition itself keeps pods off a node not tainted yet.
    let condition_tainted = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            t["effect"] == "NoSchedule"
                && (t["key"] == "node.kubernetes.io/not-ready"
                    || t["key"] == "node.kubernetes.io/unreachable")
        });
    if !ready
        && !condition_tainted
        && !tolerates(
            tolerations,
            "node.kubernetes.io/not-ready",
            "",
            "NoSchedule",
        )
    {
        return Err(vec![
            "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into(),
        ]);
    }
    if let Some((key, value)) = untolerated_taint(tolerations, node) {
        return Err(vec![format!(
            "node(s) had untolerated taint {{{key}: {value}}}"
        )]);
    }
    if !matches_node(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    let taken: HashSet<&(String, String, i64)> = usage.used.ports.iter().collect();
    let conflict = demand.ports.iter().any(|(proto, ip, port)| {
        taken.iter().any(|(p, i, n)| {
            p == proto && n == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        })
    });
    if conflict {
        return Err(vec![
            "node(s) didn't have free ports for the requested pod ports".into(),
        ]);
    }
    let allocatable = if node["status"]["allocatable"].is_object() {
        &node["status"]["allocatable"]
    } else {
        &node["status"]["capacity"]
    };
    let cpu = resource(allocatable, "cpu", 1000.0).unwrap_or(0);
    let memory = resource(allocatable, "memory", 1.0).unwrap_or(0);
    let pods = resource(allocatable, "pods", 1.0).unwrap_or(110);
    let mut reasons = Vec::new();
    if usage.pods + 1 > pods {
        reasons.push("Too many pods".to_owned());
    }
    if demand.cpu > 0 && usage.used.cpu + demand.cpu > cpu {
        reasons.push("Insufficient cpu".to_owned());
    }
    if demand.memory > 0 && usage.used.memory + demand.memory > memory {
        reasons.push("Insufficient memory".to_owned());
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let free = |total: i64, used: i64| {
        if total <= 0 {
            0
        } else {
            ((total - used).max(0) * 100) / total
        }
    };
    let score = (free(cpu, usage.used.cpu_nonzero + demand.cpu_nonzero)
        + free(memory, usage.used.memory_nonzero + demand.memory_nonzero))
        / 2;
    Ok(score)
}

/// Whether some toleration tolerates the taint `key=value:effect`.
pub fn tolerates(tolerations: &[Value], key: &str, value: &str, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let t_key = t["key"].as_str().unwrap_or("");
        let t_effect = t["effect"].as_str().unwrap_or("");
        let op = t["operator"].as_str().unwrap_or("Equal");
        (t_effect.is_empty() || t_effect == effect)
            && match op {
                "Exists" => t_key.is_empty() || t_key == key,
                _ => t_key == key && t["value"].as_str().unwrap_or("") == value,
            }
    })
}

/// The first NoSchedule or NoExecute taint of `node` that no toleration
/// tolerates, as `(key, value)`.
pub fn untolerated_taint<'a>(tolerations: &[Value], node: &'a Value) -> Option<(&'a str, &'a str)> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|taint| {
            let effect = taint["effect"].as_str().unwrap_or("");
            if effect != "NoSchedule" && effect != "NoExecute" {
                return None;
            }
            let key = taint["key"].as_str().unwrap_or("");
            let value = taint["value"].as_str().unwrap_or("");
            (!tolerates(tolerations, key, value, effect)).then_some((key, value))
        })
}

/// `nodeSelector` and required node affinity.
pub fn matches_node(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    if let Some(selector) = pod["spec"]["nodeSelector"].as_object() {
        for (k, v) in selector {
            if labels.get(k) != Some(v) {
                return false;
            }
        }
    }
    let required =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    let Some(terms) = required["nodeSelectorTerms"].as_array() else {
        return true;
    };
    terms.iter().any(|term| term_matches(term, node))
}

/// Whether a `NodeSelectorTerm` matches `node` (an empty term matches
/// nothing).
pub fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let exprs = term["matchExpressions"].as_array();
    let fields = term["matchFields"].as_array();
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    exprs
        .into_iter()
        .flatten()
        .all(|e| requirement(e, labels[e["key"].as_str().unwrap_or("")].as_str()))
        && fields
            .into_iter()
            .flatten()
            .all(|e| e["key"] == "metadata.name" && requirement(e, Some(name)))
}

fn requirement(expr: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = expr["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |s: &str| s.parse::<i64>().ok();
    match expr["operator"].as_str().unwrap_or("") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => match (
            value.and_then(number),
            values.first().and_then(|v| number(v)),
        ) {
            (Some(v), Some(bound)) => v > bound,
            _ => false,
        },
        "Lt" => match (
            value.and_then(number),
            values.first().and_then(|v| number(v)),
        ) {
            (Some(v), Some(bound)) => v < bound,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(cpu: &str, memory: &str) -> Value {
        json!({
            "metadata": {"name": "n1", "labels": {"zone": "a", "size": "4"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    }

    fn pod(cpu: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}})
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("100m", 1000.0), Some(100));
        assert_eq!(quantity("1.5", 1000.0), Some(1500));
        assert_eq!(quantity("128Mi", 1.0), Some(128 * 1024 * 1024));
        assert_eq!(quantity("1G", 1.0), Some(1_000_000_000));
        assert_eq!(quantity("1e3", 1.0), Some(1000));
        assert_eq!(quantity("12x", 1.0), None);
        assert_eq!(quantity("", 1.0), None);
    }

    #[test]
    fn resources_fit_or_say_what_is_short() {
        let p = pod("3");
        let d = demand(&p);
        assert_eq!((d.cpu, d.memory), (3000, 1 << 30));
        assert!(evaluate(&p, &d, &node("4", "8Gi"), &Usage::default()).is_ok());
        let mut usage = Usage::default();
        usage.apply(&d, 1);
        assert_eq!(
            evaluate(&p, &d, &node("4", "1Gi"), &usage),
            Err(vec![
                "Insufficient cpu".to_owned(),
                "Insufficient memory".to_owned()
            ])
        );
        usage.apply(&d, -1);
        assert_eq!(usage, Usage::default());
    }

    #[test]
    fn taints_selectors_and_affinity() {
        let p = pod("1");
        let d = demand(&p);
        let mut n = node("4", "8Gi");
        n["spec"]["taints"] = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(
            evaluate(&p, &d, &n, &Usage::default()),
            Err(vec![
                "node(s) had untolerated taint {dedicated: gpu}".to_owned()
            ])
        );
        let mut tolerant = p.clone();
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
        assert!(evaluate(&tolerant, &d, &n, &Usage::default()).is_ok());
        let mut picky = p.clone();
        picky["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(!matches_node(&picky, &n));
        let mut affine = p.clone();
        affine["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["2"]}]},
        ]}}});
        assert!(matches_node(&affine, &n));
        let mut unready = node("4", "8Gi");
        unready["status"]["conditions"][0]["status"] = "False".into();
        assert!(evaluate(&p, &d, &unready, &Usage::default()).is_err());
        // A lost node: its unreachable NoSchedule taint keeps pods off,
        // even pods tolerating the NoExecute one for a while (the default).
        let mut lost = node("4", "8Gi");
        lost["status"]["conditions"][0]["status"] = "Unknown".into();
        lost["spec"]["taints"] = json!([
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        ]);
        let mut defaulted = p.clone();
        defaulted["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unreachable",
            "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
        assert_eq!(
            evaluate(&defaulted, &d, &lost, &Usage::default()),
            Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/unreachable: }".to_owned()
            ])
        );
        let mut everywhere = p.clone();
        everywhere["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        assert!(evaluate(&everywhere, &d, &lost, &Usage::default()).is_ok());
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let p = pod("1");
        let d = demand(&p);
        let busy = Usage {
            used: Demand {
                cpu_nonzero: 2000,
                memory_nonzero: 4 << 30,
                ..Demand::default()
            },
            pods: 2,
        };
        let idle = evaluate(&p, &d, &node("4", "8Gi"), &Usage::default()).expect("fits");
        let loaded = evaluate(&p, &d, &node("4", "8Gi"), &busy).expect("fits");
        assert!(idle > loaded, "{idle} > {loaded}");
    }
}
