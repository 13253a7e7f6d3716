//! The resource registry: every kind the API serves, described once as data
//! (group, version, kind, plural, scope, short names, categories, verbs,
//! subresources), so discovery, routing, OpenAPI and the handlers all read
//! the same table. Adding a kind is one line here; the names come from
//! `k8s-openapi`'s type metadata, so nothing is typed out by hand except
//! short names and categories (which upstream keeps in its REST storage,
//! `pkg/registry/<group>/<kind>/storage/storage.go`, not in the types).

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, PodTemplate, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsEvent;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::sync::Arc;

use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::crd::Custom;

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

/// The verbs of a review kind (`TokenReview`, `SelfSubjectAccessReview`...):
/// created, answered at once, never stored.
pub const REVIEW_VERBS: &[&str] = &["create"];

/// The `all` category: what `kubectl get all` lists.
const ALL: &[&str] = &["all"];

/// A subresource: `.../<plural>/<name>/<subresource>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `status`: the object, where writes change only `status`.
    Status,
    /// `scale`: an `autoscaling/v1` `Scale` over `spec.replicas`.
    Scale,
    /// Pod `binding`: POST a `Binding` to set `spec.nodeName`.
    Binding,
    /// Pod `eviction`: POST a `policy/v1` `Eviction` to delete the pod.
    Eviction,
    /// Pod `log`: a container's log, proxied to the node (`api::proxy`).
    Log,
    /// Pod `exec`: a command in a container, streamed through the node.
    Exec,
    /// Pod `attach`: a container's own streams, through the node.
    Attach,
    /// Pod `portforward`: TCP to the pod's ports, through the node.
    PortForward,
    /// ServiceAccount `token`: POST an `authentication.k8s.io/v1`
    /// `TokenRequest`, get a signed token back.
    Token,
}

impl Subresource {
    /// Every subresource, for parsing.
    const ALL: [Subresource; 9] = [
        Subresource::Status,
        Subresource::Scale,
        Subresource::Binding,
        Subresource::Eviction,
        Subresource::Log,
        Subresource::Exec,
        Subresource::Attach,
        Subresource::PortForward,
        Subresource::Token,
    ];

    /// The path segment.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
            Subresource::Token => "token",
        }
    }

    /// The subresource named `name`.
    pub fn from_name(name: &str) -> Option<Subresource> {
        Subresource::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Verbs, as discovery lists them.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Binding | Subresource::Eviction | Subresource::Token => &["create"],
            Subresource::Log => &["get"],
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => {
                &["create", "get"]
            }
        }
    }

    /// (group, version, kind) of what the subresource takes and returns.
    pub fn kind_of(self, rt: &ResourceType) -> (&str, &str, &str) {
        match self {
            Subresource::Status => (rt.group, rt.version, rt.kind),
            Subresource::Scale => ("autoscaling", "v1", "Scale"),
            Subresource::Binding => ("", "v1", "Binding"),
            Subresource::Eviction => ("policy", "v1", "Eviction"),
            Subresource::Log => ("", "v1", "Pod"),
            Subresource::Exec => ("", "v1", "PodExecOptions"),
            Subresource::Attach => ("", "v1", "PodAttachOptions"),
            Subresource::PortForward => ("", "v1", "PodPortForwardOptions"),
            Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        }
    }
}

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
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Subresources served under each object.
    pub subresources: &'static [Subresource],
    /// Adds the kind's JSON Schema (from k8s-openapi) to a generator and
    /// returns a `$ref` to it; `openapi` builds its documents from this.
    pub schema: SchemaFn,
    /// For a kind a CustomResourceDefinition serves: its schema, scale
    /// paths and printer columns (`None` for built-in kinds).
    pub custom: Option<Arc<Custom>>,
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
    /// Describes the k8s-openapi type `K`: CRUD verbs, no short names,
    /// categories or subresources until the builder methods add them.
    pub fn of<K>() -> Self
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
            short_names: &[],
            verbs: CRUD_VERBS,
            categories: &[],
            subresources: &[],
            schema: SchemaFn(|generator| generator.subschema_for::<K>()),
            custom: None,
        }
    }

    /// Describes the review kind `K` ([`REVIEW_VERBS`]; no list kind).
    pub fn review<K>() -> Self
    where
        K: k8s_openapi::Resource + JsonSchema,
        K::Scope: Scope,
    {
        ResourceType {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            list_kind: "",
            plural: K::URL_PATH_SEGMENT,
            singular: K::KIND.to_ascii_lowercase(),
            namespaced: <K::Scope as Scope>::NAMESPACED,
            short_names: &[],
            verbs: REVIEW_VERBS,
            categories: &[],
            subresources: &[],
            schema: SchemaFn(|generator| generator.subschema_for::<K>()),
            custom: None,
        }
    }

    /// Whether this is a review kind, answered by `api::reviews`.
    pub fn is_review(&self) -> bool {
        self.verbs == REVIEW_VERBS
    }

    /// With kubectl short names.
    pub fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }

    /// In categories (`all`).
    pub fn categories(mut self, categories: &'static [&'static str]) -> Self {
        self.categories = categories;
        self
    }

    /// With subresources.
    pub fn subresources(mut self, subresources: &'static [Subresource]) -> Self {
        self.subresources = subresources;
        self
    }

    /// Whether `sub` is served for this resource.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// `Kind` for core, `Kind.group` otherwise, as upstream names a kind
    /// in error messages (`Deployment.apps "x" is invalid`).
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_owned()
        } else {
            format!("{}.{}", self.kind, self.group)
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
        use Subresource::{
            Attach, Binding, Eviction, Exec, Log, PortForward, Scale, Status, Token,
        };
        type R = ResourceType;
        Registry {
            types: vec![
                // core/v1
                R::of::<Namespace>().short(&["ns"]).subresources(&[Status]),
                R::of::<Pod>()
                    .short(&["po"])
                    .categories(ALL)
                    .subresources(&[Status, Binding, Eviction, Log, Exec, Attach, PortForward]),
                R::of::<Service>()
                    .short(&["svc"])
                    .categories(ALL)
                    .subresources(&[Status]),
                R::of::<Endpoints>().short(&["ep"]),
                R::of::<ConfigMap>().short(&["cm"]),
                R::of::<Secret>(),
                R::of::<ServiceAccount>()
                    .short(&["sa"])
                    .subresources(&[Token]),
                R::of::<Node>().short(&["no"]).subresources(&[Status]),
                R::of::<Event>().short(&["ev"]),
                R::of::<PersistentVolume>()
                    .short(&["pv"])
                    .subresources(&[Status]),
                R::of::<PersistentVolumeClaim>()
                    .short(&["pvc"])
                    .subresources(&[Status]),
                R::of::<LimitRange>().short(&["limits"]),
                R::of::<ResourceQuota>()
                    .short(&["quota"])
                    .subresources(&[Status]),
                R::of::<PodTemplate>(),
                // apps/v1
                R::of::<Deployment>()
                    .short(&["deploy"])
                    .categories(ALL)
                    .subresources(&[Status, Scale]),
                R::of::<ReplicaSet>()
                    .short(&["rs"])
                    .categories(ALL)
                    .subresources(&[Status, Scale]),
                R::of::<DaemonSet>()
                    .short(&["ds"])
                    .categories(ALL)
                    .subresources(&[Status]),
                R::of::<StatefulSet>()
                    .short(&["sts"])
                    .categories(ALL)
                    .subresources(&[Status, Scale]),
                R::of::<ControllerRevision>(),
                // batch/v1
                R::of::<Job>().categories(ALL).subresources(&[Status]),
                R::of::<CronJob>()
                    .short(&["cj"])
                    .categories(ALL)
                    .subresources(&[Status]),
                R::of::<Lease>(),
                R::of::<EndpointSlice>(),
                R::of::<EventsEvent>().short(&["ev"]),
                R::of::<StorageClass>().short(&["sc"]),
                R::of::<Role>(),
                R::of::<RoleBinding>(),
                R::of::<ClusterRole>(),
                R::of::<ClusterRoleBinding>(),
                // authentication.k8s.io/v1, authorization.k8s.io/v1: reviews
                R::review::<TokenReview>(),
                R::review::<SelfSubjectReview>(),
                R::review::<SubjectAccessReview>(),
                R::review::<SelfSubjectAccessReview>(),
                R::review::<LocalSubjectAccessReview>(),
                R::review::<SelfSubjectRulesReview>(),
                R::of::<PodDisruptionBudget>()
                    .short(&["pdb"])
                    .subresources(&[Status]),
                R::of::<CustomResourceDefinition>()
                    .short(&["crd", "crds"])
                    .categories(&["api-extensions"])
                    .subresources(&[Status]),
            ],
        }
    }

    /// This registry plus `custom` kinds; a custom kind whose group,
    /// version and plural a kind here already serves is left out (built-in
    /// kinds win, as upstream's own groups cannot be taken over).
    pub fn with_custom(&self, custom: Vec<ResourceType>) -> Registry {
        let mut types = self.types.clone();
        for rt in custom {
            if self.find(rt.group, rt.version, rt.plural).is_none() {
                types.push(rt);
            }
        }
        Registry { types }
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

    #[test]
    fn scope_short_names_and_subresources_follow_upstream() {
        let registry = Registry::builtin();
        let deploy = registry.find("apps", "v1", "deployments").expect("deploy");
        assert!(deploy.namespaced);
        assert_eq!(deploy.short_names, ["deploy"]);
        assert_eq!(deploy.categories, ["all"]);
        assert!(deploy.has(Subresource::Scale) && deploy.has(Subresource::Status));
        assert_eq!(deploy.group_kind(), "Deployment.apps");
        assert_eq!(
            Subresource::Scale.kind_of(deploy),
            ("autoscaling", "v1", "Scale")
        );
        let ds = registry.find("apps", "v1", "daemonsets").expect("ds");
        assert!(!ds.has(Subresource::Scale));
        for (group, plural) in [
            ("", "nodes"),
            ("", "persistentvolumes"),
            ("storage.k8s.io", "storageclasses"),
            ("rbac.authorization.k8s.io", "clusterroles"),
        ] {
            assert!(!registry.find(group, "v1", plural).expect(plural).namespaced);
        }
        let all: Vec<&str> = registry
            .all()
            .iter()
            .filter(|t| t.categories.contains(&"all"))
            .map(|t| t.plural)
            .collect();
        assert_eq!(
            all,
            [
                "pods",
                "services",
                "deployments",
                "replicasets",
                "daemonsets",
                "statefulsets",
                "jobs",
                "cronjobs"
            ]
        );
        assert_eq!(
            Subresource::from_name("eviction"),
            Some(Subresource::Eviction)
        );
        assert_eq!(Subresource::from_name("log"), Some(Subresource::Log));
        assert_eq!(Subresource::from_name("proxy"), None);
    }
}
