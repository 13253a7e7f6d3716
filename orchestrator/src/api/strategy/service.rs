//! Services: upstream's `SetDefaults_Service`, the validation users hit,
//! and the REST storage's allocation of ClusterIPs (from the service CIDR,
//! 10.43.0.0/16 by default as K3s; 10.43.0.1 is the `kubernetes` Service's)
//! and NodePorts (30000-32767) for NodePort and LoadBalancer Services,
//! through [`alloc`](super::alloc).
//!
//! On update the allocated values carry over when the new object leaves
//! them out (upstream's `patchAllocatedValues`), a ClusterIP may not
//! change once set, and what the old object held but the new one does not
//! is released after the write.
//!
//! # Current limitations
//! - IPv4 single-stack only: `ipFamilies` is `[IPv4]`, dual-stack and
//!   IPv6 requests are refused.
//! - The CIDR and NodePort range are fixed at their defaults (no flag yet).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::super::Api;
use super::super::status::ApiError;
use super::alloc::{self, Holder};
use super::{Errors, default, default_str, each_mut, object_mut, object_path};

const IPS: &str = "serviceips";
const PORTS: &str = "servicenodeports";

/// The service CIDR and NodePort range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceNetwork {
    network: u32,
    prefix: u8,
    node_ports: (u16, u16),
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            network: u32::from(Ipv4Addr::new(10, 43, 0, 0)),
            prefix: 16,
            node_ports: (30000, 32767),
        }
    }
}

impl std::str::FromStr for ServiceNetwork {
    type Err = String;

    /// An IPv4 network of prefix /12 to /28 (`--service-cidr`; upstream
    /// refuses ranges of more than 2^20 addresses).
    fn from_str(s: &str) -> Result<ServiceNetwork, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected an IPv4 network such as 10.43.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (12..=28).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 12 to 28"))?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(ServiceNetwork {
            network: u32::from(ip) & mask,
            prefix,
            ..ServiceNetwork::default()
        })
    }
}

impl ServiceNetwork {
    /// Addresses handed out: all but the network and broadcast addresses.
    fn size(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))).saturating_sub(2)
    }

    fn address(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1 + offset)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip)
            .checked_sub(self.network + 1)
            .is_some_and(|o| o < self.size())
    }

    /// The `kubernetes` Service's address: the first of the range.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.address(0)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// `SetDefaults_Service`.
pub fn defaults(svc: &mut Value) {
    let Some(spec) = object_mut(svc, "/spec") else {
        return;
    };
    default_str(spec, "type", "ClusterIP");
    default_str(spec, "sessionAffinity", "None");
    if spec["sessionAffinity"] == "ClientIP"
        && let Some(client) = object_path(spec, &["sessionAffinityConfig", "clientIP"])
    {
        default(client, "timeoutSeconds", 10800.into());
    }
    for port in each_mut(spec, "ports") {
        default_str(port, "protocol", "TCP");
        let unset = match &port["targetPort"] {
            Value::Null => true,
            Value::Number(n) => n.as_i64() == Some(0),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if unset && port.is_object() {
            port["targetPort"] = port["port"].clone();
        }
    }
    let kind = spec["type"].as_str().unwrap_or("").to_owned();
    if kind != "ExternalName" {
        default_str(spec, "internalTrafficPolicy", "Cluster");
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", true.into());
    }
}

/// The ClusterIP a Service asks for (`clusterIP`, else `clusterIPs[0]`).
fn cluster_ip(spec: &Value) -> &str {
    spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["clusterIPs"][0].as_str())
        .unwrap_or("")
}

fn needs_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

/// Validation of a Service (`old`: the stored one on update).
pub fn validate(old: Option<&Value>, svc: &Value, errors: &mut Errors) {
    let spec = &svc["spec"];
    let kind = spec["type"].as_str().unwrap_or("");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&kind) {
        errors.unsupported("spec.type", &spec["type"], &types);
    }
    let affinities = ["ClientIP", "None"];
    if spec["sessionAffinity"]
        .as_str()
        .is_some_and(|a| !affinities.contains(&a))
    {
        errors.unsupported(
            "spec.sessionAffinity",
            &spec["sessionAffinity"],
            &affinities,
        );
    }
    let ip = cluster_ip(spec);
    if kind == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            errors.required("spec.externalName", "");
        }
    } else if !ip.is_empty() && ip != "None" && ip.parse::<Ipv4Addr>().is_err() {
        errors.invalid(
            "spec.clusterIPs[0]",
            &ip.into(),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        );
    }
    if let Some(old) = old {
        let old_ip = cluster_ip(&old["spec"]);
        let external = kind == "ExternalName" || old["spec"]["type"] == "ExternalName";
        if !external && !ip.is_empty() && !old_ip.is_empty() && ip != old_ip {
            errors.invalid_repr(
                "spec.clusterIPs[0]",
                &format!("[]string{{{ip:?}}}"),
                "may not change once set",
            );
        }
    }
    for (i, family) in spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if family != "IPv4" {
            errors.invalid(
                format!("spec.ipFamilies[{i}]"),
                family,
                "not configured on this cluster",
            );
        }
    }
    if spec["ipFamilyPolicy"] == "RequireDualStack" {
        errors.invalid(
            "spec.ipFamilyPolicy",
            &spec["ipFamilyPolicy"],
            "this cluster is not configured for dual-stack services",
        );
    }
    validate_ports(old, spec, kind, ip, errors);
}

fn validate_ports(old: Option<&Value>, spec: &Value, kind: &str, ip: &str, errors: &mut Errors) {
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.is_empty() && kind != "ExternalName" && ip != "None" {
        errors.required("spec.ports", "");
    }
    let mut names: Vec<&str> = Vec::new();
    let old_node_ports: Vec<&Value> = old
        .and_then(|o| o["spec"]["ports"].as_array())
        .into_iter()
        .flatten()
        .map(|p| &p["nodePort"])
        .collect();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = port["name"].as_str().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errors.required(format!("{at}.name"), "");
        } else if !name.is_empty() && names.contains(&name) {
            errors.duplicate(format!("{at}.name"), &port["name"]);
        }
        names.push(name);
        if !port["port"]
            .as_i64()
            .is_some_and(|p| (1..=65535).contains(&p))
        {
            errors.invalid(
                format!("{at}.port"),
                &port["port"],
                "must be between 1 and 65535, inclusive",
            );
        }
        let protocols = ["SCTP", "TCP", "UDP"];
        if port["protocol"]
            .as_str()
            .is_some_and(|p| !protocols.contains(&p))
        {
            errors.unsupported(format!("{at}.protocol"), &port["protocol"], &protocols);
        }
        if let Some(target) = port["targetPort"].as_i64()
            && !(1..=65535).contains(&target)
        {
            errors.invalid(
                format!("{at}.targetPort"),
                &port["targetPort"],
                "must be between 1 and 65535, inclusive",
            );
        }
        let node_port = &port["nodePort"];
        let set = node_port.as_i64().is_some_and(|n| n != 0);
        if set
            && (kind == "ClusterIP" || kind == "ExternalName")
            && !old_node_ports.contains(&node_port)
        {
            errors.forbidden(
                format!("{at}.nodePort"),
                &format!("may not be used when `type` is '{kind}'"),
            );
        }
    }
}

/// What a Service holds: (pool, item) pairs.
fn holdings(svc: &Value) -> Vec<(&'static str, String)> {
    let spec = &svc["spec"];
    let mut held = Vec::new();
    for ip in spec["clusterIPs"].as_array().into_iter().flatten() {
        if let Some(ip) = ip.as_str().filter(|ip| *ip != "None" && !ip.is_empty()) {
            held.push((IPS, ip.to_owned()));
        }
    }
    for port in spec["ports"].as_array().into_iter().flatten() {
        if let Some(n) = port["nodePort"].as_i64().filter(|n| *n != 0) {
            held.push((PORTS, n.to_string()));
        }
    }
    if let Some(n) = spec["healthCheckNodePort"].as_i64().filter(|n| *n != 0) {
        held.push((PORTS, n.to_string()));
    }
    held.sort();
    held.dedup();
    held
}

/// [`alloc::Uses`] for Services.
fn uses(svc: &Value, pool: &str, item: &str) -> bool {
    holdings(svc).iter().any(|(p, i)| *p == pool && i == item)
}

/// Releases what `from` holds and `keep` does not.
pub async fn release_unused(api: &Api, from: &Value, keep: &Value) {
    let kept = holdings(keep);
    let uid = from["metadata"]["uid"].as_str().unwrap_or("");
    for (pool, item) in holdings(from) {
        if !kept.contains(&(pool, item.clone())) {
            alloc::release(api, pool, &item, uid).await;
        }
    }
}

/// Allocates the ClusterIP and NodePorts of `svc` (`old`: the stored
/// Service on update). On error, nothing new stays allocated.
pub async fn allocate(api: &Api, old: Option<&Value>, svc: &mut Value) -> Result<(), ApiError> {
    let holder_name = format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or(""),
        svc["metadata"]["name"].as_str().unwrap_or("")
    );
    let uid = old
        .and_then(|o| o["metadata"]["uid"].as_str())
        .or_else(|| svc["metadata"]["uid"].as_str())
        .unwrap_or("")
        .to_owned();
    let holder = Holder {
        name: &holder_name,
        uid: &uid,
    };
    let before = old.map(holdings).unwrap_or_default();
    let result = assign(api, old, svc, holder, &before).await;
    if result.is_err() {
        // Release what this request took; what the old object held stays.
        let mut taken = svc.clone();
        taken["metadata"]["uid"] = uid.clone().into();
        let kept = old.cloned().unwrap_or_else(|| json!({}));
        release_unused(api, &taken, &kept).await;
    }
    result
}

fn invalid(svc: &Value, field: &str, value: Value, detail: &str) -> ApiError {
    let mut errors = Errors::default();
    match value {
        Value::String(repr) => errors.invalid_repr(field, &repr, detail),
        value => errors.invalid(field, &value, detail),
    }
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    ApiError::invalid_fields("", "Service", name, errors.0)
}

async fn assign(
    api: &Api,
    old: Option<&Value>,
    svc: &mut Value,
    holder: Holder<'_>,
    before: &[(&'static str, String)],
) -> Result<(), ApiError> {
    let net = api.services;
    let old_spec = old.map(|o| o["spec"].clone()).unwrap_or_default();
    let svc_copy = svc.clone();
    let Some(spec) = object_mut(svc, "/spec") else {
        return Ok(());
    };
    let held = |pool: &str, item: &str| before.iter().any(|(p, i)| *p == pool && i == item);
    if spec["type"] == "ExternalName" {
        if let Some(map) = spec.as_object_mut() {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                map.remove(field);
            }
        }
    } else {
        let mut ip = cluster_ip(spec).to_owned();
        if ip.is_empty() && old_spec["type"] != "ExternalName" {
            ip = cluster_ip(&old_spec).to_owned();
        }
        if ip.is_empty() {
            ip = allocate_ip(api, &net, holder).await?;
        } else if ip != "None" && !held(IPS, &ip) {
            let field = "spec.clusterIPs";
            let shown = Value::String(format!("[]string{{{ip:?}}}"));
            let addr: Ipv4Addr = ip.parse().map_err(|_| {
                invalid(
                    &svc_copy,
                    field,
                    shown.clone(),
                    "must be a valid IP address",
                )
            })?;
            if !net.contains(addr) {
                let detail = format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                    net.cidr()
                );
                return Err(invalid(&svc_copy, field, shown, &detail));
            }
            if !alloc::reserve(api, IPS, &ip, holder, uses).await? {
                let detail =
                    format!("failed to allocate IP {ip}: provided IP is already allocated");
                return Err(invalid(&svc_copy, field, shown, &detail));
            }
        }
        spec["clusterIP"] = ip.clone().into();
        spec["clusterIPs"] = json!([ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        default_str(spec, "ipFamilyPolicy", "SingleStack");
    }
    let needs = needs_node_ports(spec);
    let old_ports: Vec<Value> = old_spec["ports"].as_array().cloned().unwrap_or_default();
    let count = spec["ports"].as_array().map_or(0, Vec::len);
    for i in 0..count {
        let port = &spec["ports"][i];
        if !needs {
            if let Some(map) = spec["ports"][i].as_object_mut() {
                map.remove("nodePort");
            }
            continue;
        }
        let mut node_port = port["nodePort"].as_i64().unwrap_or(0);
        if node_port == 0 {
            node_port = old_ports
                .iter()
                .find(|o| o["port"] == port["port"] && o["protocol"] == port["protocol"])
                .and_then(|o| o["nodePort"].as_i64())
                .unwrap_or(0);
        }
        let node_port = if node_port == 0 {
            allocate_port(api, &net, holder).await?
        } else {
            let field = format!("spec.ports[{i}].nodePort");
            let (lo, hi) = net.node_ports;
            if !(i64::from(lo)..=i64::from(hi)).contains(&node_port) {
                let detail = format!(
                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                );
                return Err(invalid(&svc_copy, &field, node_port.into(), &detail));
            }
            let item = node_port.to_string();
            if !held(PORTS, &item) && !alloc::reserve(api, PORTS, &item, holder, uses).await? {
                return Err(invalid(
                    &svc_copy,
                    &field,
                    node_port.into(),
                    "provided port is already allocated",
                ));
            }
            node_port
        };
        spec["ports"][i]["nodePort"] = node_port.into();
    }
    let health = spec["type"] == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local";
    if health {
        let mut port = spec["healthCheckNodePort"].as_i64().unwrap_or(0);
        if port == 0 {
            port = old_spec["healthCheckNodePort"].as_i64().unwrap_or(0);
        }
        if port == 0 {
            port = allocate_port(api, &net, holder).await?;
        } else if !held(PORTS, &port.to_string())
            && !alloc::reserve(api, PORTS, &port.to_string(), holder, uses).await?
        {
            return Err(invalid(
                &svc_copy,
                "spec.healthCheckNodePort",
                port.into(),
                "provided port is already allocated",
            ));
        }
        spec["healthCheckNodePort"] = port.into();
    } else if let Some(map) = spec.as_object_mut() {
        map.remove("healthCheckNodePort");
    }
    Ok(())
}

async fn allocate_ip(
    api: &Api,
    net: &ServiceNetwork,
    holder: Holder<'_>,
) -> Result<String, ApiError> {
    let taken = alloc::taken(api, IPS).await?;
    let size = net.size();
    let band = alloc::static_band(size, 16, 256);
    for offset in alloc::scan(size, band, alloc::seed()) {
        let ip = net.address(offset);
        // The first address is the `kubernetes` Service's.
        if ip == net.kubernetes_ip() {
            continue;
        }
        let ip = ip.to_string();
        if !taken.contains(&ip) && alloc::reserve(api, IPS, &ip, holder, uses).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a serviceIP: range is full",
    ))
}

async fn allocate_port(
    api: &Api,
    net: &ServiceNetwork,
    holder: Holder<'_>,
) -> Result<i64, ApiError> {
    let taken = alloc::taken(api, PORTS).await?;
    let (lo, hi) = net.node_ports;
    let size = u32::from(hi - lo) + 1;
    let band = alloc::static_band(size, 32, 128);
    for offset in alloc::scan(size, band, alloc::seed()) {
        let port = u32::from(lo) + offset;
        let item = port.to_string();
        if !taken.contains(&item) && alloc::reserve(api, PORTS, &item, holder, uses).await? {
            return Ok(i64::from(port));
        }
    }
    Err(ApiError::internal(
        "failed to allocate a nodePort: range is full",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_ranges() {
        let net = ServiceNetwork::default();
        assert_eq!(net.size(), 65534);
        assert_eq!(net.kubernetes_ip(), Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(net.address(65533), Ipv4Addr::new(10, 43, 255, 254));
        assert!(net.contains(Ipv4Addr::new(10, 43, 7, 7)));
        assert!(!net.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(!net.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!net.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(net.cidr(), "10.43.0.0/16");
    }

    #[test]
    fn service_defaults() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}});
        defaults(&mut svc);
        let spec = &svc["spec"];
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["targetPort"], "dns");
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        let mut plain = json!({"spec": {"ports": [{"port": 80}]}});
        defaults(&mut plain);
        assert_eq!(plain["spec"]["type"], "ClusterIP");
        assert!(plain["spec"].get("externalTrafficPolicy").is_none());
    }

    #[test]
    fn service_validation() {
        let mut errors = Errors::default();
        validate(None, &json!({"spec": {"type": "ClusterIP"}}), &mut errors);
        assert_eq!(errors.0[0].field, "spec.ports");
        let mut errors = Errors::default();
        validate(
            None,
            &json!({"spec": {"type": "ClusterIP", "clusterIP": "None"}}),
            &mut errors,
        );
        assert!(errors.0.is_empty(), "headless needs no ports");
        let mut errors = Errors::default();
        let two = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 0, "protocol": "TCP", "nodePort": 30001}]}});
        validate(None, &two, &mut errors);
        let fields: Vec<&str> = errors.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ports[0].name",
                "spec.ports[1].name",
                "spec.ports[1].port",
                "spec.ports[1].nodePort"
            ]
        );
        let old = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.9", "ports": [{"port": 80}]}});
        let moved = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.10", "ports": [{"port": 80}]}});
        let mut errors = Errors::default();
        validate(Some(&old), &moved, &mut errors);
        assert!(errors.0[0].message.ends_with("may not change once set"));
    }

    #[test]
    fn holdings_list_ips_and_ports() {
        let svc = json!({"spec": {"clusterIPs": ["10.43.0.5"], "ports": [{"nodePort": 30001}, {"nodePort": 30001}], "healthCheckNodePort": 30002}});
        assert_eq!(
            holdings(&svc),
            [
                (IPS, "10.43.0.5".to_owned()),
                (PORTS, "30001".to_owned()),
                (PORTS, "30002".to_owned())
            ]
        );
        assert!(holdings(&json!({"spec": {"clusterIPs": ["None"]}})).is_empty());
    }
}
