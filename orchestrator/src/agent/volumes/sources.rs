//! The payloads (files) of configMap, secret, downwardAPI and projected
//! volumes, read through the API as the kubelet's plugins build them:
//! every key unless `items` picks some (`key` → `path`, `mode`), modes
//! from `mode` else `defaultMode` else 0644, `optional` sources that do
//! not exist give no files, a missing key of a non-optional source is an
//! error naming it. DownwardAPI files hold one field each (labels and
//! annotations as sorted `key="value"` lines, upstream's `FormatMap`).

use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};
use tracing::warn;

use super::atomic::{File, Payload};
use super::{Fail, Failure, Volumes, mount_err};
use crate::scheduler::filters::quantity;

/// Upstream's default file mode of these volumes (0644).
const DEFAULT_MODE: u32 = 0o644;

/// A source's keys and bytes.
type Data = Vec<(String, Vec<u8>)>;

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map_or(default, |m| (m as u32) & 0o7777)
}

/// GETs an object; `None` on 404.
async fn fetch(volumes: &Volumes, path: &str) -> Result<Option<Value>, Fail> {
    match volumes.client().get(path).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(mount_err(format!("reading {path}: {e}"))),
    }
}

fn namespace(pod: &Value) -> &str {
    pod["metadata"]["namespace"].as_str().unwrap_or("")
}

/// A configMap's `data` and `binaryData`.
fn config_map_data(cm: &Value) -> Data {
    let mut out: Data = cm["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()))
        .collect();
    for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
        if let Some(bytes) = v
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        {
            out.push((k.clone(), bytes));
        }
    }
    out
}

/// A secret's `data` (base64).
fn secret_data(secret: &Value) -> Data {
    secret["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let bytes = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default();
            (k.clone(), bytes)
        })
        .collect()
}

/// Files of `data` per `items` (all keys when none).
fn key_payload(
    data: &Data,
    items: &Value,
    default_mode: u32,
    optional: bool,
    missing_key: &str,
    out: &mut Payload,
) -> Result<(), Fail> {
    let items = items.as_array().filter(|i| !i.is_empty());
    let Some(items) = items else {
        for (key, bytes) in data {
            let file = File {
                data: bytes.clone(),
                mode: default_mode,
            };
            out.insert(key.clone(), file);
        }
        return Ok(());
    };
    for item in items {
        let key = item["key"].as_str().unwrap_or("");
        let path = item["path"].as_str().unwrap_or(key);
        match data.iter().find(|(k, _)| k == key) {
            Some((_, bytes)) => {
                let file = File {
                    data: bytes.clone(),
                    mode: mode_of(&item["mode"], default_mode),
                };
                out.insert(path.to_owned(), file);
            }
            None if optional => {}
            None => return Err((Failure::Config, format!("{missing_key}: {key}"))),
        }
    }
    Ok(())
}

/// A configMap source's files into `out`.
async fn add_config_map(
    volumes: &Volumes,
    pod: &Value,
    source: &Value,
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), Fail> {
    let name = source["name"].as_str().unwrap_or("");
    let optional = source["optional"].as_bool().unwrap_or(false);
    let path = format!("/api/v1/namespaces/{}/configmaps/{name}", namespace(pod));
    match fetch(volumes, &path).await? {
        Some(cm) => key_payload(
            &config_map_data(&cm),
            &source["items"],
            default_mode,
            optional,
            "configmap references non-existent config key",
            out,
        ),
        None if optional => Ok(()),
        None => Err((Failure::Config, format!("configmap \"{name}\" not found"))),
    }
}

/// A secret source's files into `out` (`secretName` in a volume, `name`
/// in a projection).
async fn add_secret(
    volumes: &Volumes,
    pod: &Value,
    name: &str,
    source: &Value,
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), Fail> {
    let optional = source["optional"].as_bool().unwrap_or(false);
    let path = format!("/api/v1/namespaces/{}/secrets/{name}", namespace(pod));
    match fetch(volumes, &path).await? {
        Some(secret) => key_payload(
            &secret_data(&secret),
            &source["items"],
            default_mode,
            optional,
            "references non-existent secret key",
            out,
        ),
        None if optional => Ok(()),
        None => Err((Failure::Config, format!("secret \"{name}\" not found"))),
    }
}

/// The files of a `configMap` volume.
pub async fn config_map(volumes: &Volumes, pod: &Value, source: &Value) -> Result<Payload, Fail> {
    let mut out = Payload::new();
    let mode = mode_of(&source["defaultMode"], DEFAULT_MODE);
    add_config_map(volumes, pod, source, mode, &mut out).await?;
    Ok(out)
}

/// The files of a `secret` volume.
pub async fn secret(volumes: &Volumes, pod: &Value, source: &Value) -> Result<Payload, Fail> {
    let mut out = Payload::new();
    let mode = mode_of(&source["defaultMode"], DEFAULT_MODE);
    let name = source["secretName"].as_str().unwrap_or("");
    add_secret(volumes, pod, name, source, mode, &mut out).await?;
    Ok(out)
}

/// The files of a `downwardAPI` volume.
pub async fn downward_api(volumes: &Volumes, pod: &Value, source: &Value) -> Result<Payload, Fail> {
    let mut out = Payload::new();
    let mode = mode_of(&source["defaultMode"], DEFAULT_MODE);
    add_downward(volumes, pod, &source["items"], mode, &mut out).await?;
    Ok(out)
}

async fn add_downward(
    volumes: &Volumes,
    pod: &Value,
    items: &Value,
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), Fail> {
    let mut allocatable: Option<Value> = None;
    for item in items.as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or("");
        let text = if let Some(field) = item["fieldRef"]["fieldPath"].as_str() {
            field_value(pod, field).map_err(|e| (Failure::Config, e))?
        } else if item["resourceFieldRef"].is_object() {
            let r = &item["resourceFieldRef"];
            let resource = r["resource"].as_str().unwrap_or("");
            if resource.starts_with("limits.") && allocatable.is_none() {
                allocatable = Some(node_allocatable(volumes, pod).await);
            }
            resource_value(pod, r, allocatable.as_ref().unwrap_or(&Value::Null))
                .map_err(|e| (Failure::Config, e))?
        } else {
            return Err((
                Failure::Config,
                format!("downwardAPI item {path:?} has neither fieldRef nor resourceFieldRef"),
            ));
        };
        let file = File {
            data: text.into_bytes(),
            mode: mode_of(&item["mode"], default_mode),
        };
        out.insert(path.to_owned(), file);
    }
    Ok(())
}

/// The node's `status.allocatable` (limits default to it), or `Null`.
async fn node_allocatable(volumes: &Volumes, pod: &Value) -> Value {
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    match fetch(volumes, &format!("/api/v1/nodes/{node}")).await {
        Ok(Some(n)) => n["status"]["allocatable"].clone(),
        _ => Value::Null,
    }
}

/// Go's `%q` of a string: double quotes, `\"`, `\\` and escapes for
/// control characters.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Upstream's `FormatMap`: `key="value"` lines, sorted by key.
fn format_map(map: &Value) -> String {
    let mut keys: Vec<(&String, &Value)> = map.as_object().into_iter().flatten().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v.as_str().unwrap_or(""))))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `fieldRef` path's value (the fields a volume may use).
pub fn field_value(pod: &Value, field: &str) -> Result<String, String> {
    let meta = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let subscript = |prefix: &str| {
        field
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    Ok(match field {
        "metadata.name" => text(&meta["name"]),
        "metadata.namespace" => text(&meta["namespace"]),
        "metadata.uid" => text(&meta["uid"]),
        "metadata.labels" => format_map(&meta["labels"]),
        "metadata.annotations" => format_map(&meta["annotations"]),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                text(&meta["labels"][key])
            } else if let Some(key) = subscript("metadata.annotations") {
                text(&meta["annotations"][key])
            } else {
                return Err(format!("unsupported fieldPath: {field}"));
            }
        }
    })
}

/// A `resourceFieldRef`'s value: the container's limit (else the node's
/// allocatable) or request, divided by `divisor` and rounded up.
pub fn resource_value(pod: &Value, r: &Value, allocatable: &Value) -> Result<String, String> {
    let container_name = r["containerName"].as_str().unwrap_or("");
    let resource = r["resource"].as_str().unwrap_or("");
    let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten();
    let container = containers
        .chain(inits)
        .find(|c| c["name"] == container_name)
        .ok_or_else(|| format!("container {container_name:?} not found in the pod"))?;
    let (list, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource: {resource}"))?;
    let cpu = name == "cpu";
    let scale = if cpu { 1000.0 } else { 1.0 };
    let read = |v: &Value| match v {
        Value::String(s) => quantity(s, scale),
        Value::Number(n) => n.as_f64().map(|f| (f * scale).ceil() as i64),
        _ => None,
    };
    let value = match list {
        "limits" => read(&container["resources"]["limits"][name])
            .or_else(|| read(&allocatable[name]))
            .unwrap_or(0),
        "requests" => read(&container["resources"]["requests"][name]).unwrap_or(0),
        _ => return Err(format!("unsupported container resource: {resource}")),
    };
    let divisor = match &r["divisor"] {
        Value::Null => None,
        d => read(d),
    }
    .filter(|d| *d > 0)
    .unwrap_or(if cpu { 1000 } else { 1 });
    Ok(((value + divisor - 1).div_euclid(divisor)).to_string())
}

/// The files of a `projected` volume; `dir` is its directory (a token
/// already written there is reused while fresh).
pub async fn projected(
    volumes: &Volumes,
    pod: &Value,
    volume: &str,
    source: &Value,
    dir: &Path,
) -> Result<Payload, Fail> {
    let mut out = Payload::new();
    let mode = mode_of(&source["defaultMode"], DEFAULT_MODE);
    for s in source["sources"].as_array().into_iter().flatten() {
        if s["configMap"].is_object() {
            add_config_map(volumes, pod, &s["configMap"], mode, &mut out).await?;
        } else if s["secret"].is_object() {
            let name = s["secret"]["name"].as_str().unwrap_or("");
            add_secret(volumes, pod, name, &s["secret"], mode, &mut out).await?;
        } else if s["downwardAPI"].is_object() {
            add_downward(volumes, pod, &s["downwardAPI"]["items"], mode, &mut out).await?;
        } else if s["serviceAccountToken"].is_object() {
            add_token(
                volumes,
                pod,
                volume,
                &s["serviceAccountToken"],
                mode,
                dir,
                &mut out,
            )
            .await?;
        } else {
            return Err(mount_err(
                "projected source kind not supported by this node (clusterTrustBundle?)",
            ));
        }
    }
    Ok(out)
}

/// A service-account token from the `token` subresource. Reused while
/// less than 80% of its lifetime has passed (the kubelet's rotation
/// point). If the API does not serve the subresource (404), no file is
/// written and a warning names the pod, the volume and the account.
async fn add_token(
    volumes: &Volumes,
    pod: &Value,
    volume: &str,
    source: &Value,
    mode: u32,
    dir: &Path,
    out: &mut Payload,
) -> Result<(), Fail> {
    let path = source["path"].as_str().unwrap_or("token");
    let expiration = source["expirationSeconds"]
        .as_u64()
        .unwrap_or(3600)
        .max(600);
    let existing = dir.join(path);
    let fresh = std::fs::metadata(&existing)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < expiration * 4 / 5);
    if fresh && let Ok(data) = std::fs::read(&existing) {
        out.insert(path.to_owned(), File { data, mode });
        return Ok(());
    }
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let ns = namespace(pod);
    let mut audiences = Vec::new();
    if let Some(a) = source["audience"].as_str().filter(|a| !a.is_empty()) {
        audiences.push(a.to_owned());
    }
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        },
    });
    let url = format!("/api/v1/namespaces/{ns}/serviceaccounts/{account}/token");
    match volumes.client().post(&url, &request).await {
        Ok(answer) => {
            let token = answer["status"]["token"].as_str().unwrap_or("");
            out.insert(
                path.to_owned(),
                File {
                    data: token.as_bytes().to_vec(),
                    mode,
                },
            );
            Ok(())
        }
        Err(e) if e.is_not_found() => {
            warn!(
                pod = %format!("{ns}/{}", pod["metadata"]["name"].as_str().unwrap_or("")),
                volume,
                serviceaccount = account,
                message = %e.message,
                "the API answered 404 to a service-account token request (no serviceaccounts/token \
                 subresource, or no such ServiceAccount): the token file {path:?} is not written"
            );
            Ok(())
        }
        Err(e) => Err(mount_err(format!(
            "requesting a token for serviceaccount \"{account}\": {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_format_like_upstream() {
        let pod = json!({"metadata": {"labels": {"b": "two \"q\"", "a": "1"}, "name": "p",
            "annotations": {"x/y": "z"}}});
        assert_eq!(
            field_value(&pod, "metadata.labels").unwrap(),
            "a=\"1\"\nb=\"two \\\"q\\\"\""
        );
        assert_eq!(
            field_value(&pod, "metadata.annotations['x/y']").unwrap(),
            "z"
        );
        assert_eq!(field_value(&pod, "metadata.name").unwrap(), "p");
        assert!(field_value(&pod, "spec.nodeName").is_err());
    }

    #[test]
    fn resources_divide_and_round_up() {
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {
            "limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}});
        let r = |resource: &str, divisor: Value| {
            let spec = json!({"containerName": "c", "resource": resource, "divisor": divisor});
            resource_value(&pod, &spec, &json!({"cpu": "4", "memory": "1Gi"})).unwrap()
        };
        assert_eq!(r("requests.cpu", Value::Null), "1");
        assert_eq!(r("requests.cpu", json!("1m")), "250");
        assert_eq!(r("limits.memory", json!("1Mi")), "64");
        assert_eq!(r("limits.memory", Value::Null), "67108864");
        assert_eq!(r("limits.cpu", Value::Null), "4", "node allocatable");
        assert_eq!(r("requests.memory", Value::Null), "0");
    }

    #[test]
    fn items_pick_keys_and_modes() {
        let data: Data = vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())];
        let mut out = Payload::new();
        let items = json!([{"key": "b", "path": "dir/b.txt", "mode": 0o400}]);
        key_payload(&data, &items, 0o644, false, "missing", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out["dir/b.txt"].mode, 0o400);
        let items = json!([{"key": "c", "path": "c"}]);
        let (failure, msg) =
            key_payload(&data, &items, 0o644, false, "missing", &mut out).unwrap_err();
        assert_eq!((failure, msg.as_str()), (Failure::Config, "missing: c"));
        key_payload(&data, &items, 0o644, true, "missing", &mut out).unwrap();
    }
}
