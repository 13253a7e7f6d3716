//! Pod specs, wherever they appear (Pods, and the templates of
//! Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs, CronJobs and
//! PodTemplates): upstream's `SetDefaults_PodSpec`, `SetDefaults_Container`
//! and friends from `pkg/apis/core/v1/defaults.go`, the Pod-only defaults
//! (`SetDefaults_Pod`, and the priority and default-toleration admission
//! plugins), the Pod's create-time status (phase `Pending`, QoS class) and
//! the container validation users hit most.

use serde_json::{Value, json};

use super::{Errors, default, default_str, each_mut, object_path};

/// Container lists of a pod spec that take container defaults.
const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// `IfNotPresent` for a pinned image, `Always` for `:latest` or no tag, as
/// `SetDefaults_Container` decides from the image reference.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Value) {
    if !probe.is_object() {
        return;
    }
    default(probe, "timeoutSeconds", 1.into());
    default(probe, "periodSeconds", 10.into());
    default(probe, "successThreshold", 1.into());
    default(probe, "failureThreshold", 3.into());
    default_handler(probe);
}

/// `httpGet` handlers (probes, lifecycle hooks): path `/`, scheme `HTTP`.
fn default_handler(handler: &mut Value) {
    if let Some(http) = handler.get_mut("httpGet").filter(|h| h.is_object()) {
        default_str(http, "path", "/");
        default_str(http, "scheme", "HTTP");
    }
}

fn default_field_ref(holder: &mut Value) {
    if let Some(field_ref) = holder.get_mut("fieldRef").filter(|f| f.is_object()) {
        default_str(field_ref, "apiVersion", "v1");
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    if !c.is_object() {
        return;
    }
    let image = c["image"].as_str().unwrap_or("").to_owned();
    if !image.is_empty() {
        default_str(c, "imagePullPolicy", image_pull_policy(&image));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    default(c, "resources", json!({}));
    for port in each_mut(c, "ports") {
        default_str(port, "protocol", "TCP");
        if host_network && port["hostPort"].as_i64().unwrap_or(0) == 0 {
            port["hostPort"] = port["containerPort"].clone();
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default_probe(p);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c.get_mut("lifecycle").and_then(|l| l.get_mut(hook)) {
            default_handler(h);
        }
    }
    for env in each_mut(c, "env") {
        if let Some(from) = env.get_mut("valueFrom") {
            default_field_ref(from);
        }
    }
}

fn default_volume(volume: &mut Value) {
    let Some(map) = volume.as_object_mut() else {
        return;
    };
    // A volume without a source is an emptyDir.
    if map.keys().all(|k| k == "name") {
        map.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = volume.get_mut(source).filter(|s| s.is_object()) {
            default(s, "defaultMode", 420.into());
        }
    }
    if let Some(host_path) = volume.get_mut("hostPath").filter(|s| s.is_object()) {
        default(host_path, "type", "".into());
    }
    if let Some(items) = volume.get_mut("downwardAPI") {
        for item in each_mut(items, "items") {
            default_field_ref(item);
        }
    }
    if let Some(projected) = volume.get_mut("projected") {
        for source in each_mut(projected, "sources") {
            if let Some(token) = source
                .get_mut("serviceAccountToken")
                .filter(|t| t.is_object())
            {
                default(token, "expirationSeconds", 3600.into());
            }
            if let Some(downward) = source.get_mut("downwardAPI") {
                for item in each_mut(downward, "items") {
                    default_field_ref(item);
                }
            }
        }
    }
}

/// `SetDefaults_PodSpec` and the container, probe and volume defaults under it.
pub fn default_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default(spec, "securityContext", json!({}));
    default(spec, "terminationGracePeriodSeconds", 30.into());
    default_str(spec, "schedulerName", "default-scheduler");
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    for list in CONTAINER_LISTS {
        for c in each_mut(spec, list) {
            default_container(c, host_network);
        }
    }
    for volume in each_mut(spec, "volumes") {
        default_volume(volume);
    }
}

/// The pod spec of a template at `template` (`spec.template` and such), if any.
pub fn default_template(template: Option<&mut Value>) {
    if let Some(spec) = template.and_then(|t| t.get_mut("spec")) {
        default_spec(spec);
    }
}

/// Pod-only defaults: `SetDefaults_Pod` (requests from limits,
/// enableServiceLinks) and the admission plugins every cluster runs
/// (Priority: priority 0; DefaultTolerationSeconds is
/// [`default_toleration_seconds`], which takes the server's settings).
pub fn default_pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    default_spec(spec);
    for list in ["initContainers", "containers"] {
        for c in each_mut(spec, list) {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            if let Some(requests) =
                object_path(c, &["resources", "requests"]).and_then(Value::as_object_mut)
            {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
    default(spec, "enableServiceLinks", true.into());
    if spec["priorityClassName"].as_str().unwrap_or("").is_empty() {
        default(spec, "priority", 0.into());
    }
    default_str(spec, "preemptionPolicy", "PreemptLowerPriority");
}

/// The DefaultTolerationSeconds admission plugin's settings: how long
/// pods tolerate a not-ready and an unreachable node by default
/// (`--default-not-ready-toleration-seconds`,
/// `--default-unreachable-toleration-seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTolerations {
    /// Seconds on `node.kubernetes.io/not-ready:NoExecute`.
    pub not_ready_seconds: i64,
    /// Seconds on `node.kubernetes.io/unreachable:NoExecute`.
    pub unreachable_seconds: i64,
}

impl Default for DefaultTolerations {
    /// Upstream's 300 s for both.
    fn default() -> DefaultTolerations {
        DefaultTolerations {
            not_ready_seconds: 300,
            unreachable_seconds: 300,
        }
    }
}

/// DefaultTolerationSeconds (pods on create and update): a pod without a
/// toleration of the not-ready or unreachable `NoExecute` taint gets one
/// for the configured seconds. As upstream, any toleration with that key
/// or no key, and the `NoExecute` effect or none, counts as one.
pub fn default_toleration_seconds(pod: &mut Value, settings: DefaultTolerations) {
    let Some(map) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = map.entry("tolerations").or_insert_with(|| json!([]));
    if tolerations.is_null() {
        *tolerations = json!([]);
    }
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", settings.not_ready_seconds),
        (
            "node.kubernetes.io/unreachable",
            settings.unreachable_seconds,
        ),
    ] {
        let covered = list.iter().any(|t| {
            let t_key = t["key"].as_str().unwrap_or("");
            let effect = t["effect"].as_str().unwrap_or("");
            (t_key == key || t_key.is_empty()) && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": seconds,
            }));
        }
    }
}

/// A pod's status on create: phase `Pending` and its QoS class.
pub fn prepare_create(pod: &mut Value) {
    let qos = qos_class(&pod["spec"]);
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
}

/// `qos.GetPodQOS`: `Guaranteed` when every container limits cpu and
/// memory with requests equal to limits, `BestEffort` with no requests or
/// limits at all, `Burstable` otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let compute = |m: &Value| -> Vec<(String, String)> {
        m.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| matches!(k.as_str(), "cpu" | "memory"))
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .filter(|(_, v)| v != "0")
            .collect()
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = compute(&c["resources"]["requests"]);
        let limits = compute(&c["resources"]["limits"]);
        any |= !requests.is_empty() || !limits.is_empty();
        let has = |k: &str| limits.iter().any(|(n, _)| n == k);
        if !(has("cpu") && has("memory")) {
            guaranteed = false;
        }
        for (k, v) in &requests {
            if limits.iter().find(|(n, _)| n == k).map(|(_, l)| l) != Some(v) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Whether `s` is an RFC 1123 label.
pub fn is_dns_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

const DNS_LABEL_DETAIL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Validates a pod spec at `path` (`spec`, `spec.template.spec`...);
/// `restart_policies` are the policies the owning kind allows.
pub fn validate_spec(spec: &Value, path: &str, restart_policies: &[&str], errors: &mut Errors) {
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    if containers.is_none() {
        errors.required(format!("{path}.containers"), "");
    }
    let mut names: Vec<&str> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            validate_container(c, &at, &mut names, errors);
        }
    }
    let restart = &spec["restartPolicy"];
    if let Some(policy) = restart.as_str()
        && !restart_policies.contains(&policy)
    {
        if restart_policies.len() == 1 {
            errors.unsupported(format!("{path}.restartPolicy"), restart, restart_policies);
        } else {
            let quoted: Vec<String> = restart_policies.iter().map(|p| format!("{p:?}")).collect();
            errors.required(
                format!("{path}.restartPolicy"),
                &format!("valid values: {}", quoted.join(", ")),
            );
        }
    }
    let dns = &spec["dnsPolicy"];
    let dns_policies = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    if let Some(policy) = dns.as_str()
        && !dns_policies.contains(&policy)
    {
        errors.unsupported(format!("{path}.dnsPolicy"), dns, &dns_policies);
    }
}

fn validate_container<'a>(c: &'a Value, at: &str, names: &mut Vec<&'a str>, errors: &mut Errors) {
    match c["name"].as_str().filter(|n| !n.is_empty()) {
        None => errors.required(format!("{at}.name"), ""),
        Some(name) if !is_dns_label(name) => {
            errors.invalid(format!("{at}.name"), &c["name"], DNS_LABEL_DETAIL);
        }
        Some(name) if names.contains(&name) => errors.duplicate(format!("{at}.name"), &c["name"]),
        Some(name) => names.push(name),
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        errors.required(format!("{at}.image"), "");
    }
    let pull = &c["imagePullPolicy"];
    let pulls = ["Always", "IfNotPresent", "Never"];
    if let Some(p) = pull.as_str()
        && !pulls.contains(&p)
    {
        errors.unsupported(format!("{at}.imagePullPolicy"), pull, &pulls);
    }
    for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let number = &port["containerPort"];
        if !number.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
            errors.invalid(
                format!("{at}.ports[{j}].containerPort"),
                number,
                "must be between 1 and 65535, inclusive",
            );
        }
        let protocol = &port["protocol"];
        let protocols = ["SCTP", "TCP", "UDP"];
        if protocol.as_str().is_some_and(|p| !protocols.contains(&p)) {
            errors.unsupported(format!("{at}.ports[{j}].protocol"), protocol, &protocols);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry:5000/nginx", "Always"),
            ("registry:5000/nginx:1", "IfNotPresent"),
            ("nginx@sha256:abcd", "IfNotPresent"),
        ] {
            assert_eq!(image_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn pods_get_upstream_defaults() {
        let mut pod = json!({"spec": {
            "containers": [{
                "name": "web", "image": "nginx:1.27",
                "ports": [{"containerPort": 80}],
                "livenessProbe": {"httpGet": {"port": 80}},
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"limits": {"cpu": "1"}},
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "scratch"}],
        }});
        default_pod(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(
            spec["tolerations"],
            Value::Null,
            "admission's, not defaulting's"
        );
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/");
        assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][1]["emptyDir"], json!({}));
        // Defaulting twice changes nothing.
        let again = {
            let mut p = pod.clone();
            default_pod(&mut p);
            p
        };
        assert_eq!(again, pod);
    }

    #[test]
    fn default_toleration_seconds_as_configured() {
        let settings = DefaultTolerations {
            not_ready_seconds: 60,
            unreachable_seconds: 120,
        };
        let mut pod = json!({"spec": {"containers": []}});
        default_toleration_seconds(&mut pod, settings);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 120},
            ])
        );
        let again = {
            let mut p = pod.clone();
            default_toleration_seconds(&mut p, DefaultTolerations::default());
            p
        };
        assert_eq!(again, pod, "admitting twice changes nothing");
        // The pod's own toleration of a key (or of every key) stands.
        let own = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2});
        let mut pod = json!({"spec": {"tolerations": [own]}});
        default_toleration_seconds(&mut pod, settings);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(pod["spec"]["tolerations"][0], own);
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_toleration_seconds(&mut pod, settings);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
        // A NoSchedule toleration does not count.
        let mut pod = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}});
        default_toleration_seconds(&mut pod, settings);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn qos_classes() {
        let spec = |resources: Value| json!({"containers": [{"resources": resources}]});
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        let equal = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(
            qos_class(&spec(json!({"requests": equal, "limits": equal}))),
            "Guaranteed"
        );
    }

    #[test]
    fn containers_are_validated() {
        let mut errors = Errors::default();
        let spec = json!({"containers": [{"name": "a"}, {"name": "a", "image": "x"}, {"name": "B", "image": "y", "ports": [{"containerPort": 0}]}], "restartPolicy": "Never"});
        validate_spec(&spec, "spec.template.spec", &["Always"], &mut errors);
        let fields: Vec<&str> = errors.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[1].name",
                "spec.template.spec.containers[2].name",
                "spec.template.spec.containers[2].ports[0].containerPort",
                "spec.template.spec.restartPolicy",
            ]
        );
        assert_eq!(
            errors.0[4].message,
            "Unsupported value: \"Never\": supported values: \"Always\""
        );
        let mut none = Errors::default();
        validate_spec(&json!({}), "spec", &["Always"], &mut none);
        assert_eq!(none.0[0].message, "Required value");
    }
}
