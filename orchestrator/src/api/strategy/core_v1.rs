//! The core/v1 kinds other than workloads' pod templates and Services'
//! allocation, plus storage.k8s.io, rbac.authorization.k8s.io and
//! discovery.k8s.io: upstream's defaults (`pkg/apis/<group>/v1/defaults.go`),
//! create-time status (`pkg/registry/core/<kind>/strategy.go`) and the
//! validation users hit.

use base64::Engine;
use serde_json::{Value, json};

use super::super::resources::ResourceType;
use super::super::status::ApiError;
use super::{Errors, default, default_str, each_mut, object_mut, object_path, pod, service};

/// Defaults of `rt`'s objects.
pub fn defaults(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    match rt.kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            if let Some(labels) = object_path(obj, &["metadata", "labels"]) {
                labels["kubernetes.io/metadata.name"] = name.into();
            }
        }
        "Secret" => default_secret(rt, obj)?,
        "Pod" => pod::default_pod(obj),
        "PodTemplate" => pod::default_template(obj.get_mut("template")),
        "Service" => service::defaults(obj),
        "Node" => {
            let capacity = obj["status"]["capacity"].clone();
            if let Some(status) = object_mut(obj, "/status")
                && capacity.is_object()
            {
                default(status, "allocatable", capacity);
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = object_mut(obj, "/spec") {
                default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
                default_str(spec, "volumeMode", "Filesystem");
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = object_mut(obj, "/spec") {
                default_str(spec, "volumeMode", "Filesystem");
            }
        }
        "Endpoints" => {
            for subset in each_mut(obj, "subsets") {
                for port in each_mut(subset, "ports") {
                    default_str(port, "protocol", "TCP");
                }
            }
        }
        "EndpointSlice" => {
            for port in each_mut(obj, "ports") {
                default(port, "name", "".into());
                default_str(port, "protocol", "TCP");
            }
        }
        "LimitRange" => {
            if let Some(spec) = object_mut(obj, "/spec") {
                for item in each_mut(spec, "limits") {
                    default_limit_range_item(item);
                }
            }
        }
        "StorageClass" => {
            default_str(obj, "reclaimPolicy", "Delete");
            default_str(obj, "volumeBindingMode", "Immediate");
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            for subject in each_mut(obj, "subjects") {
                // A ServiceAccount's group is "", which upstream's
                // `omitempty` leaves out (kubectl apply would see a change).
                if matches!(subject["kind"].as_str(), Some("User" | "Group")) {
                    default_str(subject, "apiGroup", "rbac.authorization.k8s.io");
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `SetDefaults_LimitRangeItem`: for containers, the default limit falls
/// back to the max, the default request to the default limit, then the min.
fn default_limit_range_item(item: &mut Value) {
    if item["type"] != "Container" {
        return;
    }
    let merge_missing = |item: &mut Value, field: &str, from: &Value| {
        if let Some(target) = object_path(item, &[field]).and_then(Value::as_object_mut) {
            for (k, v) in from.as_object().into_iter().flatten() {
                target.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    };
    let max = item["max"].clone();
    merge_missing(item, "default", &max);
    let limits = item["default"].clone();
    merge_missing(item, "defaultRequest", &limits);
    let min = item["min"].clone();
    merge_missing(item, "defaultRequest", &min);
}

/// `stringData` folded into `data` (base64), `data` checked, `type` Opaque.
fn default_secret(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|m| m.remove("stringData"))
    {
        for (k, v) in string_data {
            let v = v
                .as_str()
                .ok_or_else(|| ApiError::bad_request(format!("stringData.{k} must be a string")))?;
            if let Some(data) = object_path(obj, &["data"]) {
                data[k] = b64.encode(v).into();
            }
        }
    }
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        if v.as_str().is_none_or(|s| b64.decode(s).is_err()) {
            return Err(ApiError::invalid(
                rt.kind,
                &name,
                format!("data[{k}]: Invalid value: not base64"),
            ));
        }
    }
    default_str(obj, "type", "Opaque");
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The status a new object of `kind` starts with, where upstream sets one.
pub fn prepare_create(kind: &str, obj: &mut Value) {
    match kind {
        "Namespace" => {
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Service" => obj["status"] = json!({"loadBalancer": {}}),
        "PersistentVolume" => {
            obj["status"] = json!({"phase": "Pending", "lastPhaseTransitionTime": now()});
        }
        "PersistentVolumeClaim" => obj["status"] = json!({"phase": "Pending"}),
        _ => {}
    }
}

/// Fields of a pod spec an update may change (upstream's
/// `ValidatePodUpdate`): images, activeDeadlineSeconds, tolerations and
/// terminationGracePeriodSeconds.
fn mutable_pod_fields_cleared(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for list in ["initContainers", "containers"] {
        for c in each_mut(&mut spec, list) {
            if let Some(map) = c.as_object_mut() {
                map.remove("image");
            }
        }
    }
    if let Some(map) = spec.as_object_mut() {
        for field in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
        ] {
            map.remove(field);
        }
    }
    spec
}

/// Validation of the core, storage, RBAC and discovery kinds (not Services).
pub fn validate(rt: &ResourceType, old: Option<&Value>, obj: &Value, errors: &mut Errors) {
    match rt.kind {
        "Pod" => {
            pod::validate_spec(
                &obj["spec"],
                "spec",
                &["Always", "OnFailure", "Never"],
                errors,
            );
            if let Some(old) = old
                && mutable_pod_fields_cleared(&old["spec"])
                    != mutable_pod_fields_cleared(&obj["spec"])
            {
                errors.forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                );
            }
        }
        "PodTemplate" => pod::validate_spec(
            &obj["template"]["spec"],
            "template.spec",
            &["Always", "OnFailure", "Never"],
            errors,
        ),
        "PersistentVolumeClaim" => {
            let spec = &obj["spec"];
            if spec["accessModes"].as_array().is_none_or(|m| m.is_empty()) {
                errors.required("spec.accessModes", "at least 1 access mode is required");
            }
            if spec["resources"]["requests"]["storage"].is_null() && spec["dataSourceRef"].is_null()
            {
                errors.required("spec.resources[storage]", "");
            }
        }
        "StorageClass" if obj["provisioner"].as_str().is_none_or(str::is_empty) => {
            errors.required("provisioner", "");
        }
        "EndpointSlice" => {
            let types = ["IPv4", "IPv6", "FQDN"];
            match obj["addressType"].as_str() {
                None | Some("") => errors.required("addressType", ""),
                Some(t) if !types.contains(&t) => {
                    errors.unsupported("addressType", &obj["addressType"], &types);
                }
                Some(_) => {}
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let kinds: &[&str] = if rt.kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            let kind = &obj["roleRef"]["kind"];
            if !kind.as_str().is_some_and(|k| kinds.contains(&k)) {
                errors.unsupported("roleRef.kind", kind, kinds);
            }
            if obj["roleRef"]["name"].as_str().is_none_or(str::is_empty) {
                errors.required("roleRef.name", "");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;

    fn run(group: &str, plural: &str, mut obj: Value) -> Value {
        let registry = Registry::builtin();
        let rt = registry.find(group, "v1", plural).expect("kind");
        defaults(rt, &mut obj).expect("defaults");
        prepare_create(rt.kind, &mut obj);
        obj
    }

    #[test]
    fn storage_and_volume_defaults() {
        let sc = run(
            "storage.k8s.io",
            "storageclasses",
            json!({"provisioner": "x"}),
        );
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
        let pvc = run("", "persistentvolumeclaims", json!({"spec": {}}));
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pvc["status"]["phase"], "Pending");
        let pv = run("", "persistentvolumes", json!({"spec": {}}));
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["status"]["phase"], "Pending");
    }

    #[test]
    fn namespaces_rbac_and_limits() {
        let ns = run("", "namespaces", json!({"metadata": {"name": "t"}}));
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "t");
        assert_eq!(ns["status"]["phase"], "Active");
        let rb = run(
            "rbac.authorization.k8s.io",
            "rolebindings",
            json!({"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]}),
        );
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert!(rb["subjects"][1].get("apiGroup").is_none());
        let lr = run(
            "",
            "limitranges",
            json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "1Mi"}}]}}),
        );
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"]["cpu"], "2");
        assert_eq!(item["defaultRequest"]["cpu"], "2");
        assert_eq!(item["defaultRequest"]["memory"], "1Mi");
    }

    #[test]
    fn secrets_fold_string_data() {
        let s = run(
            "",
            "secrets",
            json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}),
        );
        assert_eq!(s["data"]["a"], "Yg==");
        assert_eq!(s["type"], "Opaque");
        let registry = Registry::builtin();
        let rt = registry.find("", "v1", "secrets").expect("secrets");
        let mut bad = json!({"metadata": {"name": "s"}, "data": {"a": "!"}});
        assert_eq!(defaults(rt, &mut bad).expect_err("bad").code, 422);
    }

    #[test]
    fn pod_updates_only_change_images() {
        let registry = Registry::builtin();
        let rt = registry.find("", "v1", "pods").expect("pods");
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let mut errors = Errors::default();
        let new = json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}});
        validate(rt, Some(&old), &new, &mut errors);
        assert!(errors.0.is_empty(), "{:?}", errors.0);
        let moved =
            json!({"spec": {"nodeName": "n", "containers": [{"name": "a", "image": "x:1"}]}});
        validate(rt, Some(&old), &moved, &mut errors);
        assert_eq!(errors.0[0].field, "spec");
    }
}
