//! A container's environment as the kubelet makes it: `envFrom`
//! (ConfigMaps and Secrets, with `prefix`), then `env` in order — literal
//! values with `$(VAR)` expansion against the variables before them, and
//! `valueFrom` (`configMapKeyRef`, `secretKeyRef`, `fieldRef` of the
//! downward API, `resourceFieldRef`). A missing ConfigMap, Secret or key
//! that is not `optional` is a [`ConfigError`] (the container waits with
//! `CreateContainerConfigError`). Also resource quantities (`500m`,
//! `128Mi`) for `resourceFieldRef` and the cgroup limits.

use std::collections::HashMap;

use base64::Engine;
use serde_json::Value;

use crate::controllers::client::Client;

/// A container whose configuration cannot be made (`CreateContainerConfigError`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// ConfigMaps and Secrets of a pod's namespace, each read once per sync.
pub struct Sources<'a> {
    client: &'a Client,
    namespace: String,
    read: HashMap<(&'static str, String), Option<Value>>,
}

impl<'a> Sources<'a> {
    /// Sources in `namespace`.
    pub fn new(client: &'a Client, namespace: &str) -> Sources<'a> {
        Sources {
            client,
            namespace: namespace.to_owned(),
            read: HashMap::new(),
        }
    }

    /// The `data` of ConfigMap (`configmaps`) or Secret (`secrets`, decoded)
    /// `name`; `None` if it does not exist.
    pub async fn data(
        &mut self,
        plural: &'static str,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>, ConfigError> {
        let key = (plural, name.to_owned());
        if !self.read.contains_key(&key) {
            let path = format!("/api/v1/namespaces/{}/{plural}/{name}", self.namespace);
            let obj = match self.client.get(&path).await {
                Ok(obj) => Some(obj),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(ConfigError(format!("reading {plural} {name:?}: {e}"))),
            };
            self.read.insert(key.clone(), obj);
        }
        let Some(obj) = self.read.get(&key).and_then(Option::as_ref) else {
            return Ok(None);
        };
        let mut out = HashMap::new();
        if let Some(data) = obj["data"].as_object() {
            for (k, v) in data {
                let Some(s) = v.as_str() else { continue };
                let value = if plural == "secrets" {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    s.to_owned()
                };
                out.insert(k.clone(), value);
            }
        }
        if plural == "configmaps"
            && let Some(data) = obj["binaryData"].as_object()
        {
            for (k, v) in data {
                if let Some(s) = v.as_str() {
                    out.insert(k.clone(), s.to_owned());
                }
            }
        }
        Ok(Some(out))
    }

    /// The raw object (`None` if missing), e.g. a pull secret.
    pub async fn object(&mut self, plural: &'static str, name: &str) -> Option<Value> {
        self.data(plural, name).await.ok()??;
        self.read.get(&(plural, name.to_owned())).cloned().flatten()
    }
}

/// What the downward API needs beyond the pod object.
#[derive(Debug, Clone, Default)]
pub struct Downward {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.podIPs` (comma-separated).
    pub pod_ips: Vec<String>,
    /// `status.hostIP`.
    pub host_ip: String,
    /// The node's allocatable `cpu` and `memory`, for limits left unset.
    pub allocatable: HashMap<String, String>,
}

/// The environment of `container` in `pod`, in order.
pub async fn environment(
    pod: &Value,
    container: &Value,
    sources: &mut Sources<'_>,
    downward: &Downward,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    fn set(vars: &mut Vec<(String, String)>, name: String, value: String) {
        if let Some(slot) = vars.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            vars.push((name, value));
        }
    }
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        let (plural, r) = if from["configMapRef"].is_object() {
            ("configmaps", &from["configMapRef"])
        } else if from["secretRef"].is_object() {
            ("secrets", &from["secretRef"])
        } else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or("");
        match sources.data(plural, name).await? {
            Some(data) => {
                let mut keys: Vec<_> = data.into_iter().collect();
                keys.sort();
                for (k, v) in keys {
                    let name = format!("{prefix}{k}");
                    if is_env_name(&name) {
                        set(&mut vars, name, v);
                    }
                }
            }
            None if r["optional"].as_bool() == Some(true) => {}
            None => return Err(missing(plural, name)),
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let Some(name) = var["name"].as_str() else {
            continue;
        };
        let value = if let Some(v) = var["value"].as_str() {
            let lookup: HashMap<&str, &str> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(v, &lookup)
        } else if var["valueFrom"].is_object() {
            match value_from(pod, container, &var["valueFrom"], sources, downward).await? {
                Some(v) => v,
                None => continue,
            }
        } else {
            String::new()
        };
        set(&mut vars, name.to_owned(), value);
    }
    Ok(vars)
}

fn missing(plural: &str, name: &str) -> ConfigError {
    let kind = if plural == "secrets" {
        "secret"
    } else {
        "configmap"
    };
    ConfigError(format!("{kind} \"{name}\" not found"))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

async fn value_from(
    pod: &Value,
    container: &Value,
    from: &Value,
    sources: &mut Sources<'_>,
    downward: &Downward,
) -> Result<Option<String>, ConfigError> {
    for (field, plural) in [
        ("configMapKeyRef", "configmaps"),
        ("secretKeyRef", "secrets"),
    ] {
        let r = &from[field];
        if !r.is_object() {
            continue;
        }
        let name = r["name"].as_str().unwrap_or("");
        let key = r["key"].as_str().unwrap_or("");
        let optional = r["optional"].as_bool() == Some(true);
        return match sources.data(plural, name).await? {
            Some(data) => match data.get(key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(ConfigError(format!(
                    "couldn't find key {key} in {} {}/{name}",
                    if plural == "secrets" {
                        "Secret"
                    } else {
                        "ConfigMap"
                    },
                    pod["metadata"]["namespace"].as_str().unwrap_or("")
                ))),
            },
            None if optional => Ok(None),
            None => Err(missing(plural, name)),
        };
    }
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return field_ref(pod, path, downward).map(Some);
    }
    if from["resourceFieldRef"].is_object() {
        return resource_field_ref(pod, container, &from["resourceFieldRef"], downward).map(Some);
    }
    Ok(None)
}

/// A downward-API field of the pod.
pub fn field_ref(pod: &Value, path: &str, downward: &Downward) -> Result<String, ConfigError> {
    let meta = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let map_entry = |map: &str, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(text(&meta[map][key]))
    };
    Ok(match path {
        "metadata.name" => text(&meta["name"]),
        "metadata.namespace" => text(&meta["namespace"]),
        "metadata.uid" => text(&meta["uid"]),
        "spec.nodeName" => text(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => text(&pod["spec"]["serviceAccountName"]),
        "status.podIP" => downward.pod_ip.clone(),
        "status.podIPs" => downward.pod_ips.join(","),
        "status.hostIP" | "status.hostIPs" => downward.host_ip.clone(),
        "metadata.labels" | "metadata.annotations" => {
            let map = path.trim_start_matches("metadata.");
            let mut lines: Vec<String> = meta[map]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", Value::String(text(v))))
                .collect();
            lines.sort();
            lines.join("\n")
        }
        _ => match map_entry("labels", "metadata.labels['")
            .or_else(|| map_entry("annotations", "metadata.annotations['"))
        {
            Some(v) => v,
            None => return Err(ConfigError(format!("unsupported fieldPath: {path}"))),
        },
    })
}

fn resource_field_ref(
    pod: &Value,
    container: &Value,
    r: &Value,
    downward: &Downward,
) -> Result<String, ConfigError> {
    let resource = r["resource"].as_str().unwrap_or("");
    let target = match r["containerName"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                pod["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .find(|c| c["name"] == name)
            .unwrap_or(container),
        None => container,
    };
    let Some((section, name)) = resource.split_once('.') else {
        return Err(ConfigError(format!("unsupported resource: {resource}")));
    };
    let set = &target["resources"][section][name];
    let quantity = match set
        .as_str()
        .map(str::to_owned)
        .or_else(|| set.as_f64().map(|f| f.to_string()))
    {
        Some(q) => q,
        None if section == "limits" => downward
            .allocatable
            .get(name)
            .cloned()
            .unwrap_or_else(|| "0".into()),
        None if section == "requests" && name == "cpu" => "0".into(),
        None => "0".into(),
    };
    let value = parse_quantity(&quantity).unwrap_or(0.0);
    let divisor = r["divisor"]
        .as_str()
        .and_then(parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    // CPU values are rounded up to whole divisors, as upstream does.
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; an unknown
/// reference stays as written (upstream's `expansion.Expand`).
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match vars.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// A resource quantity as a number of base units (`500m` → 0.5,
/// `128Mi` → 134217728, `1e3` → 1000).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_as_upstream() {
        let vars = HashMap::from([("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$$(A) $(C) $", &vars), "$(A) $(C) $");
        assert_eq!(expand("é$(A", &vars), "é$(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12x"), None);
    }

    #[test]
    fn downward_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u",
            "labels": {"app": "web", "b": "x"}}, "spec": {"nodeName": "n1"}});
        let d = Downward {
            pod_ip: "10.0.0.2".into(),
            ..Default::default()
        };
        assert_eq!(field_ref(&pod, "metadata.name", &d).unwrap(), "p");
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']", &d).unwrap(),
            "web"
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels", &d).unwrap(),
            "app=\"web\"\nb=\"x\""
        );
        assert_eq!(field_ref(&pod, "status.podIP", &d).unwrap(), "10.0.0.2");
        assert!(field_ref(&pod, "spec.bogus", &d).is_err());
        let c = json!({"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}});
        let r = json!({"resource": "limits.memory", "divisor": "1Mi"});
        assert_eq!(resource_field_ref(&pod, &c, &r, &d).unwrap(), "64");
        let r = json!({"resource": "limits.cpu", "divisor": "1m"});
        assert_eq!(resource_field_ref(&pod, &c, &r, &d).unwrap(), "250");
    }
}
