//! The cells of one object's row per kind, in [`columns`](super::columns)
//! order, computed as upstream's `print<Kind>` functions do (1.32). The
//! server always renders the wide cells too (upstream's table convertor
//! prints with `Wide: true`); kubectl hides priority 1 columns itself.

use serde_json::Value;

use super::format::{
    access_modes, container_cells, format_label_selector, format_labels, format_selector, int, or,
    text,
};
use super::rows::{
    endpoints, event, job, node, pod, quantity, resource_quota, service, slice_endpoints,
    slice_ports,
};
use super::translate_timestamp_since;

/// The cells of `obj` of `kind` at `now`.
pub fn cells(kind: &str, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name: Value = text(&obj["metadata"]["name"]).into();
    let since = |v: &Value| translate_timestamp_since(v.as_str(), now);
    let age: Value = since(&obj["metadata"]["creationTimestamp"]).into();
    let spec = &obj["spec"];
    let status = &obj["status"];
    let count = |field: &str| obj[field].as_object().map_or(0, |m| m.len());
    let template = |spec: &Value| {
        let (names, images) = container_cells(&spec["template"]["spec"]["containers"]);
        [names.into(), images.into()]
    };
    let mut row: Vec<Value> = match kind {
        "Namespace" => vec![name, text(&status["phase"]).into(), age],
        // Upstream counts both maps for ConfigMaps, only `data` for Secrets.
        "ConfigMap" => vec![name, (count("data") + count("binaryData")).into(), age],
        "Secret" => vec![name, text(&obj["type"]).into(), count("data").into(), age],
        "Pod" => return pod(obj, now),
        "PodTemplate" => {
            let [names, images] = template(obj);
            vec![
                name,
                names,
                images,
                format_labels(&obj["template"]["metadata"]["labels"]).into(),
            ]
        }
        "PodDisruptionBudget" => {
            let budget = |v: &Value| match v {
                Value::Null => "N/A".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                name,
                budget(&spec["minAvailable"]).into(),
                budget(&spec["maxUnavailable"]).into(),
                int(&status["disruptionsAllowed"]).into(),
                age,
            ]
        }
        "ReplicaSet" => vec![
            name,
            int(&spec["replicas"]).into(),
            int(&status["replicas"]).into(),
            int(&status["readyReplicas"]).into(),
            age,
        ],
        "DaemonSet" => vec![
            name,
            int(&status["desiredNumberScheduled"]).into(),
            int(&status["currentNumberScheduled"]).into(),
            int(&status["numberReady"]).into(),
            int(&status["updatedNumberScheduled"]).into(),
            int(&status["numberAvailable"]).into(),
            format_labels(&spec["template"]["spec"]["nodeSelector"]).into(),
            age,
        ],
        "Job" => return job(obj, name, age, now),
        "CronJob" => {
            let job_spec = &spec["jobTemplate"]["spec"];
            let [names, images] = template(job_spec);
            let last = match status["lastScheduleTime"].as_str() {
                Some(t) => translate_timestamp_since(Some(t), now),
                None => "<none>".to_owned(),
            };
            let suspend = match spec["suspend"].as_bool() {
                Some(b) => b.into(),
                None => "<unset>".into(),
            };
            return vec![
                name,
                text(&spec["schedule"]).into(),
                or(&spec["timeZone"], "<none>").into(),
                suspend,
                status["active"].as_array().map_or(0, Vec::len).into(),
                last.into(),
                age,
                names,
                images,
                format_label_selector(&job_spec["selector"]).into(),
            ];
        }
        "Service" => return service(obj, name, age),
        "StatefulSet" => {
            let [names, images] = template(spec);
            return vec![
                name,
                format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )
                .into(),
                age,
                names,
                images,
            ];
        }
        "Deployment" => {
            let [names, images] = template(spec);
            let selector = match format_selector(&spec["selector"]) {
                s if s == "<error>" => "<invalid>".to_owned(),
                s => s,
            };
            return vec![
                name,
                format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )
                .into(),
                int(&status["updatedReplicas"]).into(),
                int(&status["availableReplicas"]).into(),
                age,
                names,
                images,
                selector.into(),
            ];
        }
        "Endpoints" => vec![name, endpoints(obj).into(), age],
        "EndpointSlice" => vec![
            name,
            text(&obj["addressType"]).into(),
            slice_ports(obj).into(),
            slice_endpoints(obj).into(),
            age,
        ],
        "Node" => return node(obj, name, age),
        "Event" => return event(obj, now),
        "ServiceAccount" => vec![
            name,
            obj["secrets"].as_array().map_or(0, Vec::len).into(),
            age,
        ],
        "PersistentVolume" => {
            let claim = match &spec["claimRef"] {
                Value::Null => String::new(),
                r => format!("{}/{}", text(&r["namespace"]), text(&r["name"])),
            };
            let class = obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
                .as_str()
                .unwrap_or(text(&spec["storageClassName"]));
            let phase = if obj["metadata"]["deletionTimestamp"].is_string() {
                "Terminating"
            } else {
                text(&status["phase"])
            };
            vec![
                name,
                quantity(&spec["capacity"]["storage"]).into(),
                access_modes(&spec["accessModes"]).into(),
                text(&spec["persistentVolumeReclaimPolicy"]).into(),
                phase.into(),
                claim.into(),
                class.into(),
                or(&spec["volumeAttributesClassName"], "<unset>").into(),
                text(&status["reason"]).into(),
                age,
                or(&spec["volumeMode"], "<unset>").into(),
            ]
        }
        "PersistentVolumeClaim" => {
            let bound = !text(&spec["volumeName"]).is_empty();
            let (capacity, modes) = if bound {
                (
                    quantity(&status["capacity"]["storage"]),
                    access_modes(&status["accessModes"]),
                )
            } else {
                (String::new(), String::new())
            };
            let class = obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
                .as_str()
                .unwrap_or(text(&spec["storageClassName"]));
            let phase = if obj["metadata"]["deletionTimestamp"].is_string() {
                "Terminating"
            } else {
                text(&status["phase"])
            };
            vec![
                name,
                phase.into(),
                text(&spec["volumeName"]).into(),
                capacity.into(),
                modes.into(),
                class.into(),
                or(&spec["volumeAttributesClassName"], "<unset>").into(),
                age,
                or(&spec["volumeMode"], "<unset>").into(),
            ]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role = format!(
                "{}/{}",
                text(&obj["roleRef"]["kind"]),
                text(&obj["roleRef"]["name"])
            );
            let subjects = |kind: &str| -> String {
                obj["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match (kind, text(&s["namespace"])) {
                        ("ServiceAccount", ns) => format!("{ns}/{}", text(&s["name"])),
                        _ => text(&s["name"]).to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                role.into(),
                age,
                subjects("User").into(),
                subjects("Group").into(),
                subjects("ServiceAccount").into(),
            ]
        }
        "Lease" => vec![name, text(&spec["holderIdentity"]).into(), age],
        "ControllerRevision" => {
            // `<kind>.<group>/<name>` of the controller, lower case.
            let controller = obj["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true)
                .map_or_else(
                    || "<none>".to_owned(),
                    |r| {
                        let group = text(&r["apiVersion"]).rsplit_once('/').map(|(g, _)| g);
                        let kind = text(&r["kind"]).to_lowercase();
                        match group {
                            Some(g) => format!("{kind}.{g}/{}", text(&r["name"])),
                            None => format!("{kind}/{}", text(&r["name"])),
                        }
                    },
                );
            vec![name, controller.into(), obj["revision"].clone(), age]
        }
        "StorageClass" => {
            let default_class = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| obj["metadata"]["annotations"][*a] == "true");
            let shown = if default_class {
                format!("{} (default)", text(&obj["metadata"]["name"]))
            } else {
                text(&obj["metadata"]["name"]).to_owned()
            };
            vec![
                shown.into(),
                text(&obj["provisioner"]).into(),
                or(&obj["reclaimPolicy"], "Delete").into(),
                or(&obj["volumeBindingMode"], "Immediate").into(),
                obj["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .into(),
                age,
            ]
        }
        "ResourceQuota" => return resource_quota(obj, name, age),
        // Upstream's default table: the creation time as RFC 3339.
        _ => vec![name, text(&obj["metadata"]["creationTimestamp"]).into()],
    };
    if matches!(kind, "ReplicaSet" | "DaemonSet") {
        let [names, images] = template(spec);
        row.extend([
            names,
            images,
            format_label_selector(&spec["selector"]).into(),
        ]);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn jobs_and_workloads() {
        let now = at("2024-01-01T00:10:00Z");
        let j = json!({"metadata": {"name": "j"}, "spec": {"completions": 3, "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"succeeded": 1, "startTime": "2024-01-01T00:00:00Z"}});
        let row = job(&j, "j".into(), "10m".into(), now);
        assert_eq!(row, ["j", "Running", "1/3", "10m", "10m", "c", "i", "a=b"]);
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"readyReplicas": 1}});
        let row = cells("Deployment", &d, now);
        assert_eq!(row[1], "1/3");
        assert_eq!(row[2], 0);
        assert_eq!(row[7], "app=d");
        let rs = cells("ReplicaSet", &d, now);
        assert_eq!(rs.len(), 8);
        assert_eq!(rs[7], "app=d");
        let role = cells(
            "Role",
            &json!({"metadata": {"name": "r", "creationTimestamp": "2024-01-01T00:00:00Z"}}),
            now,
        );
        assert_eq!(role, ["r", "2024-01-01T00:00:00Z"]);
    }
}
