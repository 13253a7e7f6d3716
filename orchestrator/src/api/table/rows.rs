//! The rows of the kinds whose cells take more than reading fields
//! (upstream's `printPod`, `printJob`, `printService`, `printNode`,
//! `printEvent`, `formatEndpoints`, `printResourceQuota`), for
//! [`cells`](super::cells).

use serde_json::Value;

use super::format::{container_cells, format_label_selector, format_labels, int, or, text};
use super::{human_duration, translate_timestamp_since};

/// A quantity as stored (upstream prints it canonicalized).
pub fn quantity(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "0".to_owned(),
        other => other.to_string(),
    }
}

fn condition_true(conditions: &Value, kind: &str) -> bool {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .is_some_and(|c| c["status"] == "True")
}

/// `printPod`: READY, STATUS (the reason a user cares about) and RESTARTS.
pub fn pod(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let init_specs = list(&spec["initContainers"]);
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == name && c["restartPolicy"] == "Always")
    };
    let total = list(&spec["containers"]).len()
        + init_specs
            .iter()
            .filter(|c| c["restartPolicy"] == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart: Option<String> = None;
    let mut sidecar_last_restart: Option<String> = None;
    let later = |a: Option<String>, b: &Value| -> Option<String> {
        match (a, b.as_str()) {
            (Some(a), Some(b)) if b > a.as_str() => Some(b.to_owned()),
            (None, Some(b)) => Some(b.to_owned()),
            (a, _) => a,
        }
    };
    let mut reason = or(&status["reason"], text(&status["phase"])).to_owned();
    if status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".to_owned();
    }
    let mut initializing = false;
    let init_statuses = list(&status["initContainerStatuses"]);
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += int(&c["restartCount"]);
        let finished = &c["lastState"]["terminated"]["finishedAt"];
        last_restart = later(last_restart, finished);
        let name = text(&c["name"]);
        if restartable(name) {
            sidecar_restarts += int(&c["restartCount"]);
            sidecar_last_restart = later(sidecar_last_restart, finished);
        }
        let terminated = &c["state"]["terminated"];
        let waiting = text(&c["state"]["waiting"]["reason"]);
        if terminated.is_object() && int(&terminated["exitCode"]) == 0 {
            continue;
        }
        if restartable(name) && c["started"] == true {
            if c["ready"] == true {
                ready += 1;
            }
            continue;
        }
        reason = if terminated.is_object() {
            match (text(&terminated["reason"]), int(&terminated["signal"])) {
                ("", 0) => format!("Init:ExitCode:{}", int(&terminated["exitCode"])),
                ("", signal) => format!("Init:Signal:{signal}"),
                (r, _) => format!("Init:{r}"),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }
    if !initializing || condition_true(&status["conditions"], "Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in list(&status["containerStatuses"]).iter().rev() {
            restarts += int(&c["restartCount"]);
            last_restart = later(last_restart, &c["lastState"]["terminated"]["finishedAt"]);
            let state = &c["state"];
            let terminated = &state["terminated"];
            if !text(&state["waiting"]["reason"]).is_empty() {
                reason = text(&state["waiting"]["reason"]).to_owned();
            } else if !text(&terminated["reason"]).is_empty() {
                reason = text(&terminated["reason"]).to_owned();
            } else if terminated.is_object() {
                reason = match int(&terminated["signal"]) {
                    0 => format!("ExitCode:{}", int(&terminated["exitCode"])),
                    signal => format!("Signal:{signal}"),
                };
            } else if c["ready"] == true && state["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(&status["conditions"], "Ready") {
                "Running".to_owned()
            } else {
                "NotReady".to_owned()
            };
        }
    }
    let phase = text(&status["phase"]);
    if obj["metadata"]["deletionTimestamp"].is_string() {
        if status["reason"] == "NodeLost" {
            reason = "Unknown".to_owned();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_owned();
        }
    }
    let restarts_cell = match last_restart {
        Some(at) if restarts != 0 => {
            format!(
                "{restarts} ({} ago)",
                translate_timestamp_since(Some(&at), now)
            )
        }
        _ => restarts.to_string(),
    };
    let gates = spec["readinessGates"].as_array().map_or(0, Vec::len);
    let gates_cell = if gates == 0 {
        "<none>".to_owned()
    } else {
        let passed = spec["readinessGates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| condition_true(&status["conditions"], text(&g["conditionType"])))
            .count();
        format!("{passed}/{gates}")
    };
    vec![
        text(&obj["metadata"]["name"]).into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        translate_timestamp_since(obj["metadata"]["creationTimestamp"].as_str(), now).into(),
        or(&status["podIPs"][0]["ip"], "<none>").into(),
        or(&spec["nodeName"], "<none>").into(),
        or(&status["nominatedNodeName"], "<none>").into(),
        gates_cell.into(),
    ]
}

/// `printJob`: STATUS from the conditions, COMPLETIONS, DURATION.
pub fn job(obj: &Value, name: Value, age: Value, now: jiff::Timestamp) -> Vec<Value> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let succeeded = int(&status["succeeded"]);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(&spec["parallelism"]) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let seconds = |t: &Value| t.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let duration = match (
        seconds(&status["startTime"]),
        seconds(&status["completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.as_second() - start.as_second()),
        (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
    };
    let conditions = &status["conditions"];
    let state = if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = container_cells(&spec["template"]["spec"]["containers"]);
    vec![
        name,
        state.into(),
        completions.into(),
        duration.into(),
        age,
        names.into(),
        images.into(),
        format_label_selector(&spec["selector"]).into(),
    ]
}

/// `printService`: CLUSTER-IP, EXTERNAL-IP by type, PORT(S) as `80:30080/TCP`.
pub fn service(obj: &Value, name: Value, age: Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let external: Vec<&str> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let external_ip = match text(&spec["type"]) {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_owned(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let mut ingress: Vec<&str> = obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .or(i["hostname"].as_str())
                })
                .collect();
            ingress.sort_unstable();
            ingress.dedup();
            ingress.extend(external);
            if ingress.is_empty() {
                "<pending>".to_owned()
            } else {
                ingress.join(",")
            }
        }
        "ExternalName" => text(&spec["externalName"]).to_owned(),
        _ => "<unknown>".to_owned(),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match int(&p["nodePort"]) {
            0 => format!("{}/{}", int(&p["port"]), text(&p["protocol"])),
            node => format!("{}:{node}/{}", int(&p["port"]), text(&p["protocol"])),
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    };
    vec![
        name,
        text(&spec["type"]).into(),
        or(&spec["clusterIPs"][0], "<none>").into(),
        external_ip.into(),
        ports.into(),
        age,
        format_labels(&spec["selector"]).into(),
    ]
}

/// `printNode`: Ready/NotReady/Unknown (+SchedulingDisabled), ROLES from labels.
pub fn node(obj: &Value, name: Value, age: Value) -> Vec<Value> {
    let status = &obj["status"];
    let mut state: Vec<&str> = match status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
    {
        Some(c) if c["status"] == "True" => vec!["Ready"],
        Some(_) => vec!["NotReady"],
        None => vec!["Unknown"],
    };
    if obj["spec"]["unschedulable"] == true {
        state.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = obj["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role),
            Some(_) => None,
            None if k == "kubernetes.io/role" => v.as_str().filter(|r| !r.is_empty()),
            None => None,
        })
        .collect();
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    };
    let address = |kind: &str| -> String {
        status["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == kind)
            .map_or("<none>", |a| text(&a["address"]))
            .to_owned()
    };
    let info = &status["nodeInfo"];
    vec![
        name,
        state.join(",").into(),
        roles.into(),
        age,
        text(&info["kubeletVersion"]).into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        or(&info["osImage"], "<unknown>").into(),
        or(&info["kernelVersion"], "<unknown>").into(),
        or(&info["containerRuntimeVersion"], "<unknown>").into(),
    ]
}

/// `printEvent`, for core/v1 Events and events.k8s.io/v1 Events (whose
/// fields carry other names).
pub fn event(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let modern = text(&obj["apiVersion"]).starts_with("events.k8s.io/");
    let field = |core: &str, events: &str| &obj[if modern { events } else { core }];
    let since = |v: &Value| translate_timestamp_since(v.as_str(), now);
    let first = match field("firstTimestamp", "deprecatedFirstTimestamp") {
        Value::String(t) => since(&Value::String(t.clone())),
        _ => since(&obj["eventTime"]),
    };
    let mut last = match field("lastTimestamp", "deprecatedLastTimestamp") {
        Value::String(t) => since(&Value::String(t.clone())),
        _ => first.clone(),
    };
    let mut count = int(field("count", "deprecatedCount"));
    if obj["series"].is_object() {
        last = since(&obj["series"]["lastObservedTime"]);
        count = int(&obj["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = field("involvedObject", "regarding");
    let target = match text(&involved["name"]) {
        "" => text(&involved["kind"]).to_lowercase(),
        n => format!("{}/{n}", text(&involved["kind"]).to_lowercase()),
    };
    let source = field("source", "deprecatedSource");
    let component = or(&source["component"], text(&obj["reportingController"]));
    let component = if component.is_empty() {
        text(&obj["reportingComponent"])
    } else {
        component
    };
    let host = or(&source["host"], text(&obj["reportingInstance"]));
    let source = if host.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {host}")
    };
    vec![
        last.into(),
        text(&obj["type"]).into(),
        text(&obj["reason"]).into(),
        target.into(),
        text(&involved["fieldPath"]).into(),
        source.into(),
        text(field("message", "note")).trim().into(),
        first.into(),
        count.into(),
        text(&obj["metadata"]["name"]).into(),
    ]
}

/// `formatEndpoints`: up to three `ip:port`, then `+ N more...`.
pub fn endpoints(obj: &Value) -> String {
    let subsets = obj["subsets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if subsets.is_empty() {
        return "<none>".to_owned();
    }
    let mut list = Vec::new();
    let mut count = 0;
    for ss in subsets {
        let addresses = ss["addresses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let ports = ss["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if ports.is_empty() {
            count += addresses.len();
            list.extend(addresses.iter().map(|a| text(&a["ip"]).to_owned()));
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                let ip = text(&a["ip"]);
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_owned()
                };
                list.push(format!("{host}:{}", int(&port["port"])));
            }
        }
    }
    list_with_more(list, count, "")
}

/// `listWithMoreString`: up to three items, `<unset>` when there are none.
fn list_with_more(mut list: Vec<String>, count: usize, empty: &str) -> String {
    let more = list.len() > 3;
    list.truncate(3);
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - 3)
    } else if joined.is_empty() {
        empty.to_owned()
    } else {
        joined
    }
}

pub fn slice_ports(obj: &Value) -> String {
    let ports: Vec<String> = obj["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match (&p["port"], text(&p["name"])) {
            (Value::Number(n), _) => n.to_string(),
            (_, "") => "*".to_owned(),
            (_, name) => name.to_owned(),
        })
        .collect();
    let count = ports.len();
    list_with_more(ports, count, "<unset>")
}

pub fn slice_endpoints(obj: &Value) -> String {
    let addresses: Vec<String> = obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .map(|a| text(&a).to_owned())
        .collect();
    let count = addresses.len();
    list_with_more(addresses, count, "<unset>")
}

/// `printResourceQuota`: `resource: used/hard` per resource, limits apart.
pub fn resource_quota(obj: &Value, name: Value, age: Value) -> Vec<Value> {
    let hard = obj["status"]["hard"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut resources: Vec<&String> = hard.keys().collect();
    resources.sort();
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    for resource in resources {
        let used = quantity(&obj["status"]["used"][resource.as_str()]);
        let line = format!("{resource}: {used}/{}", quantity(&hard[resource.as_str()]));
        if resource.starts_with("limits.") {
            limits.push(line);
        } else {
            requests.push(line);
        }
    }
    vec![
        name,
        requests.join(", ").into(),
        limits.join(", ").into(),
        age,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn pods_show_readiness_status_and_restarts() {
        let now = at("2024-01-01T01:00:00Z");
        let pending = json!({"metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(
            pod(&pending, now),
            json!([
                "p", "0/1", "Pending", "0", "60m", "<none>", "<none>", "<none>", "<none>"
            ])
            .as_array()
            .cloned()
            .unwrap_or_default()
        );
        let running = json!({"metadata": {"name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.5"}], "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
             "lastState": {"terminated": {"finishedAt": "2024-01-01T00:59:00Z"}}},
            {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]}});
        let cells = pod(&running, now);
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "2 (60s ago)");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(cells[6], "n1");
    }

    #[test]
    fn services_print_ports_and_ips() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIPs": ["10.43.0.9"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"}}});
        let cells = service(&svc, "s".into(), "1s".into());
        assert_eq!(
            cells,
            [
                "s",
                "NodePort",
                "10.43.0.9",
                "<none>",
                "80:30080/TCP,53/UDP",
                "1s",
                "app=web"
            ]
        );
        let lb = json!({"spec": {"type": "LoadBalancer", "clusterIP": "None"}});
        let cells = service(&lb, "l".into(), "1s".into());
        assert_eq!(cells[2], "<none>");
        assert_eq!(cells[3], "<pending>");
        assert_eq!(cells[4], "<none>");
    }

    #[test]
    fn events_of_both_groups() {
        let now = at("2024-01-01T00:10:00Z");
        let core = json!({"apiVersion": "v1", "metadata": {"name": "e"}, "type": "Normal", "reason": "Pulled",
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": " done ", "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:05:00Z", "count": 2});
        assert_eq!(
            Value::from(event(&core, now)),
            json!([
                "5m",
                "Normal",
                "Pulled",
                "pod/p",
                "",
                "kubelet, n1",
                "done",
                "10m",
                2,
                "e"
            ])
        );
        let modern = json!({"apiVersion": "events.k8s.io/v1", "metadata": {"name": "e"}, "type": "Warning", "reason": "X",
            "regarding": {"kind": "Node", "name": "n"}, "note": "n", "reportingController": "c",
            "eventTime": "2024-01-01T00:09:00.000000Z"});
        let cells = event(&modern, now);
        assert_eq!(cells[0], "60s");
        assert_eq!(cells[3], "node/n");
        assert_eq!(cells[5], "c");
        assert_eq!(cells[8], 1);
    }

    #[test]
    fn endpoints_list_three_then_more() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            endpoints(&ep),
            "1.1.1.1:80,2.2.2.2:80,1.1.1.1:443 + 1 more..."
        );
        assert_eq!(endpoints(&json!({})), "<none>");
        assert_eq!(slice_ports(&json!({"ports": []})), "<unset>");
    }
}
