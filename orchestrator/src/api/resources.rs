//! The resource registry: every kind the API serves, described once as data
//! (group, version, kind, plural, scope, short names, verbs), so discovery,
//! routing and the generic handlers all read the same table. Adding a kind
//! is one line here; the names come from `k8s-openapi`'s type metadata, so
//! nothing is typed out by hand except short names (which upstream keeps in
//! its REST storage, not in the types).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope};
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// Whether a k8s-openapi scope marker is namespaced.
pub trait Scope {
    /// `true` for namespaced kinds.
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// The verbs of a plain stored resource, as discovery lists them.
pub const CRUD_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; `""` for core.
    pub group: &'static str,
    /// Version, e.g. `v1`.
    pub version: &'static str,
    /// `apiVersion` of its objects (`v1`, `apps/v1`).
    pub api_version: &'static str,
    /// Kind, e.g. `ConfigMap`.
    pub kind: &'static str,
    /// Kind of its lists, e.g. `ConfigMapList`.
    pub list_kind: &'static str,
    /// URL segment and store prefix, e.g. `configmaps`.
    pub plural: &'static str,
    /// Lower-case singular, e.g. `configmap`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names, e.g. `cm`.
    pub short_names: &'static [&'static str],
    /// Verbs served.
    pub verbs: &'static [&'static str],
    /// Adds the kind's JSON Schema (from k8s-openapi) to a generator and
    /// returns a `$ref` to it; `openapi` builds its documents from this.
    pub schema: SchemaFn,
}

/// [`SchemaGenerator::subschema_for`] of one kind.
#[derive(Clone, Copy)]
pub struct SchemaFn(pub fn(&mut SchemaGenerator) -> Schema);

impl std::fmt::Debug for SchemaFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaFn")
    }
}

// Two `ResourceType`s are the same resource whatever their schema function.
impl PartialEq for SchemaFn {
    fn eq(&self, _: &SchemaFn) -> bool {
        true
    }
}

impl Eq for SchemaFn {}

impl ResourceType {
    /// Describes the k8s-openapi type `K`.
    pub fn of<K>(short_names: &'static [&'static str], verbs: &'static [&'static str]) -> Self
    where
        K: ListableResource + JsonSchema,
        K::Scope: Scope,
    {
        ResourceType {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            singular: K::KIND.to_ascii_lowercase(),
            namespaced: <K::Scope as Scope>::NAMESPACED,
            short_names,
            verbs,
            schema: SchemaFn(|generator| generator.subschema_for::<K>()),
        }
    }

    /// `group/version`, or `version` for core.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Store key prefix of the objects in `namespace` (all of them with `None`).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!("{}/", self.group)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}{}/{ns}/", self.plural),
            _ => format!("/registry/{group}{}/", self.plural),
        }
    }

    /// Store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }
}

/// All served resources.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    /// The built-in resources of this release.
    pub fn builtin() -> Registry {
        Registry {
            types: vec![
                ResourceType::of::<Namespace>(&["ns"], CRUD_VERBS),
                ResourceType::of::<ConfigMap>(&["cm"], CRUD_VERBS),
                ResourceType::of::<Secret>(&[], CRUD_VERBS),
            ],
        }
    }

    /// Every served resource.
    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// The resource `plural` of `group`/`version`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Resources of one group-version, in registry order.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types
            .iter()
            .filter(move |t| t.group == group && t.version == version)
    }

    /// Named (non-core) groups with their versions, in registry order.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version),
                Some(_) => {}
                None => groups.push((t.group, vec![t.version])),
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_comes_from_the_types() {
        let registry = Registry::builtin();
        let cm = registry.find("", "v1", "configmaps").expect("configmaps");
        assert_eq!(cm.kind, "ConfigMap");
        assert_eq!(cm.list_kind, "ConfigMapList");
        assert_eq!(cm.singular, "configmap");
        assert!(cm.namespaced);
        assert_eq!(cm.key(Some("t"), "x"), "/registry/configmaps/t/x");
        let ns = registry.find("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert_eq!(ns.key(None, "t"), "/registry/namespaces/t");
    }
}
