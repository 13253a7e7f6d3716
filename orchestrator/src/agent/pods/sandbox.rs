//! A pod's `PodSandboxConfig`: metadata (name, namespace, uid, attempt),
//! hostname, log directory (`<pod_log_dir>/<namespace>_<name>_<uid>`),
//! DNS per `dnsPolicy`/`dnsConfig` (upstream's `dns.go`), host ports, the
//! labels CRI finds it by again, and the Linux namespaces (hostNetwork,
//! hostPID, hostIPC, shareProcessNamespace) and sysctls.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

use super::runtime::{GRACE_PERIOD, POD_NAME, POD_NAMESPACE, POD_UID};
use crate::agent::Config;
use crate::agent::cri::api;

/// The pod's log directory.
pub fn log_directory(config: &Config, pod: &Value) -> PathBuf {
    let meta = &pod["metadata"];
    config.pod_log_dir.join(format!(
        "{}_{}_{}",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or(""),
        meta["uid"].as_str().unwrap_or("")
    ))
}

/// Whether the pod uses the node's network.
pub fn host_network(pod: &Value) -> bool {
    pod["spec"]["hostNetwork"].as_bool() == Some(true)
}

/// The grace period of the pod's containers, in seconds.
pub fn grace_period(pod: &Value) -> i64 {
    pod["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// The sandbox config of `pod`, attempt `attempt`.
pub fn config(config: &Config, pod: &Value, attempt: u32) -> api::PodSandboxConfig {
    let meta = &pod["metadata"];
    let spec = &pod["spec"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut labels: HashMap<String, String> = meta["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    labels.insert(POD_NAME.into(), text(&meta["name"]));
    labels.insert(POD_NAMESPACE.into(), text(&meta["namespace"]));
    labels.insert(POD_UID.into(), text(&meta["uid"]));
    let mut annotations: HashMap<String, String> = meta["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    annotations.insert(GRACE_PERIOD.into(), grace_period(pod).to_string());
    // A pod on the node's network has the node's hostname: none is set
    // (runc cannot set one without a UTS namespace of its own).
    let hostname = if host_network(pod) {
        String::new()
    } else {
        let name = spec["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(meta["name"].as_str().unwrap_or(""));
        name.chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_owned()
    };
    let mode = |host: bool, otherwise: api::NamespaceMode| {
        if host {
            api::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    let pid_mode = if spec["shareProcessNamespace"].as_bool() == Some(true) {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    let psc = &spec["securityContext"];
    let privileged = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .any(|c| c["securityContext"]["privileged"].as_bool() == Some(true));
    let sysctls = psc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), text(&s["value"]))))
        .collect();
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: text(&meta["name"]),
            uid: text(&meta["uid"]),
            namespace: text(&meta["namespace"]),
            attempt,
        }),
        hostname,
        log_directory: log_directory(config, pod).display().to_string(),
        dns_config: Some(dns_config(config, pod)),
        port_mappings: port_mappings(pod),
        labels,
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: mode(host_network(pod), api::NamespaceMode::Pod),
                    pid: mode(spec["hostPID"].as_bool() == Some(true), pid_mode),
                    ipc: mode(
                        spec["hostIPC"].as_bool() == Some(true),
                        api::NamespaceMode::Pod,
                    ),
                    ..Default::default()
                }),
                run_as_user: psc["runAsUser"]
                    .as_i64()
                    .map(|value| api::Int64Value { value }),
                run_as_group: psc["runAsGroup"]
                    .as_i64()
                    .map(|value| api::Int64Value { value }),
                supplemental_groups: psc["supplementalGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect(),
                privileged,
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Host ports of the pod's containers.
pub fn port_mappings(pod: &Value) -> Vec<api::PortMapping> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for port in c["ports"].as_array().into_iter().flatten() {
            let host_port = port["hostPort"].as_i64().unwrap_or(0);
            if host_port <= 0 {
                continue;
            }
            let protocol = match port["protocol"].as_str() {
                Some("UDP") => api::Protocol::Udp,
                Some("SCTP") => api::Protocol::Sctp,
                _ => api::Protocol::Tcp,
            };
            out.push(api::PortMapping {
                protocol: protocol as i32,
                container_port: i32::try_from(port["containerPort"].as_i64().unwrap_or(0))
                    .unwrap_or(0),
                host_port: i32::try_from(host_port).unwrap_or(0),
                host_ip: port["hostIP"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    out
}

/// The host's resolver configuration: (servers, searches, options).
fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => searches = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, searches, options)
}

/// DNS per `dnsPolicy` (`ClusterFirst` by default; it needs the cluster's
/// DNS server and falls back to the node's resolver without one, as
/// upstream does) merged with `dnsConfig`.
pub fn dns_config(config: &Config, pod: &Value) -> api::DnsConfig {
    let spec = &pod["spec"];
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network(pod),
        _ => false,
    };
    let (mut servers, mut searches, mut options) = match (policy, cluster, config.cluster_dns) {
        ("None", _, _) => (Vec::new(), Vec::new(), Vec::new()),
        (_, true, Some(dns)) => {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
            let domain = &config.cluster_domain;
            let (_, host_searches, _) = host_resolv();
            let mut searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            searches.extend(host_searches);
            (vec![dns.to_string()], searches, vec!["ndots:5".to_owned()])
        }
        _ => host_resolv(),
    };
    let extra = &spec["dnsConfig"];
    for s in extra["nameservers"].as_array().into_iter().flatten() {
        if let Some(s) = s.as_str().filter(|s| !servers.iter().any(|x| x == s)) {
            servers.push(s.to_owned());
        }
    }
    for s in extra["searches"].as_array().into_iter().flatten() {
        if let Some(s) = s.as_str().filter(|s| !searches.iter().any(|x| x == s)) {
            searches.push(s.to_owned());
        }
    }
    for o in extra["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else {
            continue;
        };
        let option = match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        };
        options.retain(|x| x.split(':').next() != Some(name));
        options.push(option);
    }
    searches.truncate(32);
    servers.truncate(3);
    api::DnsConfig {
        servers,
        searches,
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns_policies() {
        let mut c = Config::new("n1");
        c.cluster_dns = Some("10.43.0.10".parse().unwrap());
        let pod = json!({"metadata": {"namespace": "web", "name": "p"}, "spec": {
            "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        let dns = dns_config(&c, &pod);
        assert_eq!(dns.servers, ["10.43.0.10", "1.1.1.1"]);
        assert_eq!(
            dns.searches[..3],
            [
                "web.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(dns.options, ["ndots:2", "edns0"]);
        let none = json!({"metadata": {"namespace": "web"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["9.9.9.9"], "searches": ["a.b"]}}});
        let dns = dns_config(&c, &none);
        assert_eq!(
            (dns.servers, dns.searches),
            (vec!["9.9.9.9".to_owned()], vec!["a.b".to_owned()])
        );
    }

    #[test]
    fn sandbox_of_a_pod() {
        let c = Config::new("n1");
        let pod = json!({"metadata": {"namespace": "web", "name": "p", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{"name": "c",
                "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}]}});
        let s = config(&c, &pod, 2);
        assert_eq!(s.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(s.hostname, "p");
        assert_eq!(s.log_directory, "/var/log/pods/web_p_u1");
        assert_eq!(s.labels[POD_UID], "u1");
        assert_eq!(s.labels["app"], "x");
        assert_eq!(s.annotations[GRACE_PERIOD], "5");
        assert_eq!(s.port_mappings.len(), 1);
        assert_eq!(s.port_mappings[0].host_port, 8080);
    }
}
