//! The merge-key table: how upstream merges the lists (and a few structs)
//! of the served built-in types, as the `patchStrategy`/`patchMergeKey`
//! struct tags and `+listType`/`+listMapKey` markers of `k8s.io/api` say.
//! k8s-openapi's schemars output has none of these extensions, so the
//! table is written here once, as data, per OpenAPI definition and field.
//!
//! [`annotate`] writes it into the served schemas as upstream's
//! `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`,
//! `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`; kubectl's
//! client-side `apply` reads them to compute three-way strategic patches
//! by key, and the server reads them back (through
//! [`shape`](super::shape)) for strategic merge patch and server-side
//! apply, so one table drives both ends. Custom resources carry their own
//! `x-kubernetes-list-type` in their CRD schema.
//!
//! Lists that upstream marks `atomic` (or leaves unmarked) are not listed:
//! both patch kinds replace them whole by default.

use serde_json::{Map, Value, json};

/// How one field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// OpenAPI definition holding the field.
    pub definition: &'static str,
    /// The field's JSON name.
    pub field: &'static str,
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`,
    /// `merge,retainKeys`, `replace`), if any.
    pub strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key` of a list merged by key.
    pub merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type` (`map`, `set`, `atomic`), if any.
    pub list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys` of a `map` list.
    pub map_keys: &'static [&'static str],
}

const CORE: &str = "io.k8s.api.core.v1.";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// A list of objects merged by `key` (and an associative list by `keys`).
const fn keyed(
    definition: &'static str,
    field: &'static str,
    key: &'static str,
    keys: &'static [&'static str],
) -> Rule {
    Rule {
        definition,
        field,
        strategy: Some("merge"),
        merge_key: Some(key),
        list_type: Some("map"),
        map_keys: keys,
    }
}

/// The table. Definitions are short names (`PodSpec`), qualified by
/// [`qualified`]: `core.` for core/v1, `meta.` for meta/v1, else the
/// full definition name.
const RULES: &[Rule] = &[
    // meta/v1 ObjectMeta
    Rule {
        definition: "meta.ObjectMeta",
        field: "finalizers",
        strategy: Some("merge"),
        merge_key: None,
        list_type: Some("set"),
        map_keys: &[],
    },
    keyed("meta.ObjectMeta", "ownerReferences", "uid", &["uid"]),
    // core/v1 pods and templates
    keyed("core.PodSpec", "containers", "name", &["name"]),
    keyed("core.PodSpec", "initContainers", "name", &["name"]),
    keyed("core.PodSpec", "ephemeralContainers", "name", &["name"]),
    keyed("core.PodSpec", "imagePullSecrets", "name", &["name"]),
    keyed("core.PodSpec", "hostAliases", "ip", &["ip"]),
    keyed(
        "core.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
        &["topologyKey", "whenUnsatisfiable"],
    ),
    keyed("core.PodSpec", "schedulingGates", "name", &["name"]),
    Rule {
        strategy: Some("merge,retainKeys"),
        ..keyed("core.PodSpec", "volumes", "name", &["name"])
    },
    Rule {
        strategy: Some("merge,retainKeys"),
        ..keyed("core.PodSpec", "resourceClaims", "name", &["name"])
    },
    keyed(
        "core.Container",
        "ports",
        "containerPort",
        &["containerPort", "protocol"],
    ),
    keyed("core.Container", "env", "name", &["name"]),
    keyed(
        "core.Container",
        "volumeMounts",
        "mountPath",
        &["mountPath"],
    ),
    keyed(
        "core.Container",
        "volumeDevices",
        "devicePath",
        &["devicePath"],
    ),
    keyed(
        "core.EphemeralContainer",
        "ports",
        "containerPort",
        &["containerPort", "protocol"],
    ),
    keyed("core.EphemeralContainer", "env", "name", &["name"]),
    keyed(
        "core.EphemeralContainer",
        "volumeMounts",
        "mountPath",
        &["mountPath"],
    ),
    keyed(
        "core.EphemeralContainer",
        "volumeDevices",
        "devicePath",
        &["devicePath"],
    ),
    Rule {
        strategy: None,
        merge_key: None,
        ..keyed("core.ResourceRequirements", "claims", "name", &["name"])
    },
    keyed("core.PodStatus", "conditions", "type", &["type"]),
    keyed("core.PodStatus", "podIPs", "ip", &["ip"]),
    Rule {
        list_type: Some("atomic"),
        map_keys: &[],
        ..keyed("core.PodStatus", "hostIPs", "ip", &[])
    },
    Rule {
        strategy: Some("merge,retainKeys"),
        ..keyed("core.PodStatus", "resourceClaimStatuses", "name", &["name"])
    },
    keyed(
        "core.ContainerStatus",
        "volumeMounts",
        "mountPath",
        &["mountPath"],
    ),
    keyed(
        "core.ContainerStatus",
        "allocatedResourcesStatus",
        "name",
        &["name"],
    ),
    // core/v1 other kinds
    keyed("core.ServiceSpec", "ports", "port", &["port", "protocol"]),
    keyed("core.ServiceStatus", "conditions", "type", &["type"]),
    keyed("core.ServiceAccount", "secrets", "name", &["name"]),
    Rule {
        definition: "core.NodeSpec",
        field: "podCIDRs",
        strategy: Some("merge"),
        merge_key: None,
        list_type: Some("set"),
        map_keys: &[],
    },
    keyed("core.NodeStatus", "conditions", "type", &["type"]),
    keyed("core.NodeStatus", "addresses", "type", &["type"]),
    keyed("core.NamespaceStatus", "conditions", "type", &["type"]),
    keyed(
        "core.PersistentVolumeClaimStatus",
        "conditions",
        "type",
        &["type"],
    ),
    // apps/v1
    Rule {
        definition: "io.k8s.api.apps.v1.DeploymentSpec",
        field: "strategy",
        strategy: Some("retainKeys"),
        merge_key: None,
        list_type: None,
        map_keys: &[],
    },
    keyed(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "type",
        &["type"],
    ),
    keyed(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "type",
        &["type"],
    ),
    keyed(
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "type",
        &["type"],
    ),
    keyed(
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "type",
        &["type"],
    ),
    // batch/v1: merged by type in patches, atomic in apply.
    Rule {
        list_type: Some("atomic"),
        map_keys: &[],
        ..keyed("io.k8s.api.batch.v1.JobStatus", "conditions", "type", &[])
    },
    // policy/v1
    Rule {
        definition: "io.k8s.api.policy.v1.PodDisruptionBudgetSpec",
        field: "selector",
        strategy: Some("replace"),
        merge_key: None,
        list_type: None,
        map_keys: &[],
    },
    keyed(
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        "type",
        &["type"],
    ),
    // apiextensions/v1: associative for apply, replaced by patches.
    Rule {
        definition: "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        field: "conditions",
        strategy: None,
        merge_key: None,
        list_type: Some("map"),
        map_keys: &["type"],
    },
];

/// The full definition name of a table entry.
fn qualified(definition: &str) -> String {
    if let Some(short) = definition.strip_prefix("core.") {
        format!("{CORE}{short}")
    } else if let Some(short) = definition.strip_prefix("meta.") {
        format!("{META}{short}")
    } else {
        definition.to_owned()
    }
}

/// Writes the table's extensions into the `properties` of `schemas`
/// (component schemas by definition name). Entries whose definition is
/// not among `schemas` are skipped: each group-version document holds
/// only the definitions its kinds use.
pub fn annotate(schemas: &mut Map<String, Value>) {
    for rule in RULES {
        let Some(Value::Object(property)) = schemas
            .get_mut(&qualified(rule.definition))
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(rule.field))
        else {
            continue;
        };
        if let Some(strategy) = rule.strategy {
            property.insert("x-kubernetes-patch-strategy".into(), strategy.into());
        }
        if let Some(key) = rule.merge_key {
            property.insert("x-kubernetes-patch-merge-key".into(), key.into());
        }
        if let Some(list_type) = rule.list_type {
            property.insert("x-kubernetes-list-type".into(), list_type.into());
        }
        if !rule.map_keys.is_empty() {
            property.insert("x-kubernetes-list-map-keys".into(), json!(rule.map_keys));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::Documents;
    use crate::api::resources::Registry;

    #[test]
    fn every_rule_names_a_served_field() {
        let docs = Documents::build(&Registry::builtin());
        for rule in RULES {
            let name = qualified(rule.definition);
            let property = &docs.schemas()[&name]["properties"][rule.field];
            assert!(property.is_object(), "{name}.{} is not served", rule.field);
            assert_eq!(
                property
                    .get("x-kubernetes-patch-merge-key")
                    .and_then(Value::as_str),
                rule.merge_key,
                "{name}.{}",
                rule.field
            );
            if rule.list_type.is_some() && rule.list_type != Some("atomic") {
                assert_eq!(property["type"], "array", "{name}.{}", rule.field);
            }
            if rule.list_type == Some("map") {
                assert!(!rule.map_keys.is_empty(), "{name}.{}", rule.field);
            }
        }
    }

    #[test]
    fn pod_spec_lists_carry_upstream_extensions() {
        let docs = Documents::build(&Registry::builtin());
        let spec = &docs.schemas()["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(spec["containers"]["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(
            spec["volumes"]["x-kubernetes-patch-strategy"],
            "merge,retainKeys"
        );
        assert!(
            spec["tolerations"]
                .get("x-kubernetes-patch-strategy")
                .is_none()
        );
        let ports = &docs.schemas()["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
    }
}
