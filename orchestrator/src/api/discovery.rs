//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis` and
//! `/apis/<group>/<version>`, built from the [`Registry`].
//!
//! `/api` and `/apis` answer in two forms, chosen by the `Accept` header
//! the way upstream negotiates (the first acceptable entry wins):
//! - aggregated discovery (`application/json;g=apidiscovery.k8s.io;v=v2;
//!   as=APIGroupDiscoveryList`, also `v2beta1`), which kubectl 1.32 asks
//!   for first: every group, version and resource with its verbs, short
//!   names, categories and subresources in one document, so kubectl needs
//!   no per-group-version requests. Written with serde_json in upstream's
//!   field names (`apidiscovery.k8s.io/v2`), which k8s-openapi lacks and
//!   which is not worth kube-core for a dozen fields.
//! - the legacy `APIVersions`/`APIGroupList`, after which clients fetch
//!   each group-version's `APIResourceList` (subresources appear there as
//!   `<plural>/<sub>` entries, as upstream lists them).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::header::{self, HeaderMap, HeaderValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use serde_json::{Value, json};

use super::Body;
use super::resources::{Registry, ResourceType};

/// The Kubernetes version whose API this server speaks; kubectl compares it
/// with its own to warn about skew.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "32");

/// `/version`.
pub fn version() -> Info {
    Info {
        major: KUBERNETES_VERSION.0.to_owned(),
        minor: KUBERNETES_VERSION.1.to_owned(),
        git_version: format!("v{}.{}.0-cairn", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1),
        git_commit: env!("CARGO_PKG_VERSION").to_owned(),
        git_tree_state: "clean".to_owned(),
        build_date: "1970-01-01T00:00:00Z".to_owned(),
        go_version: "none (cairn is written in Rust)".to_owned(),
        compiler: "rustc".to_owned(),
        platform: format!("{}/{}", std::env::consts::OS, go_arch()),
    }
}

/// Go's name for this architecture, as `platform` carries it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`: the core group's versions.
pub fn api_versions() -> APIVersions {
    APIVersions {
        versions: vec!["v1".to_owned()],
        server_address_by_client_cidrs: vec![],
    }
}

/// `/apis`: the named groups.
pub fn api_group_list(registry: &Registry) -> APIGroupList {
    let groups = registry
        .groups()
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<GroupVersionForDiscovery> = versions
                .iter()
                .map(|v| GroupVersionForDiscovery {
                    group_version: format!("{group}/{v}"),
                    version: (*v).to_owned(),
                })
                .collect();
            APIGroup {
                name: group.to_owned(),
                preferred_version: versions.first().cloned(),
                versions,
                server_address_by_client_cidrs: None,
            }
        })
        .collect();
    APIGroupList { groups }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The `APIResource`s of one kind: itself, then one per subresource.
fn api_resources(t: &ResourceType) -> impl Iterator<Item = APIResource> + '_ {
    let main = APIResource {
        name: t.plural.to_owned(),
        singular_name: t.singular.clone(),
        namespaced: t.namespaced,
        kind: t.kind.to_owned(),
        verbs: strings(t.verbs),
        short_names: (!t.short_names.is_empty()).then(|| strings(t.short_names)),
        categories: (!t.categories.is_empty()).then(|| strings(t.categories)),
        ..Default::default()
    };
    let subs = t.subresources.iter().map(move |sub| {
        let (group, version, kind) = sub.kind_of(t);
        // Upstream names the group and version only where they differ.
        let other = (group, version) != (t.group, t.version);
        APIResource {
            name: format!("{}/{}", t.plural, sub.name()),
            singular_name: String::new(),
            namespaced: t.namespaced,
            kind: kind.to_owned(),
            group: other.then(|| group.to_owned()),
            version: other.then(|| version.to_owned()),
            verbs: strings(sub.verbs()),
            ..Default::default()
        }
    });
    std::iter::once(main).chain(subs)
}

/// `/api/v1`, `/apis/<group>/<version>`: `None` if nothing is served there.
pub fn api_resource_list(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Option<APIResourceList> {
    let resources: Vec<APIResource> = registry
        .in_group_version(group, version)
        .flat_map(api_resources)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(APIResourceList {
        group_version,
        resources,
    })
}

/// Which form of `/api` and `/apis` a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `APIVersions` / `APIGroupList`.
    Legacy,
    /// `APIGroupDiscoveryList` of `apidiscovery.k8s.io/<version>`.
    Aggregated(&'static str),
}

impl Format {
    /// The first acceptable entry of `Accept` (legacy if none is).
    pub fn negotiate(headers: &HeaderMap) -> Format {
        let entries = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for entry in entries {
            let mut parts = entry.split(';').map(str::trim);
            let essence = parts.next().unwrap_or("");
            let (mut g, mut v, mut as_) = ("", "", "");
            for param in parts {
                match param.split_once('=') {
                    Some(("g", x)) => g = x,
                    Some(("v", x)) => v = x,
                    Some(("as", x)) => as_ = x,
                    _ => {}
                }
            }
            if !matches!(essence, "application/json" | "application/*" | "*/*") {
                continue;
            }
            match (g, v, as_) {
                ("", "", "") => return Format::Legacy,
                ("apidiscovery.k8s.io", "v2", "APIGroupDiscoveryList") => {
                    return Format::Aggregated("v2");
                }
                ("apidiscovery.k8s.io", "v2beta1", "APIGroupDiscoveryList") => {
                    return Format::Aggregated("v2beta1");
                }
                _ => {}
            }
        }
        Format::Legacy
    }
}

/// `GET /api` (`core`) or `GET /apis` in the negotiated [`Format`].
pub fn serve_root(registry: &Registry, core: bool, headers: &HeaderMap) -> Response<Body> {
    let (body, content_type) = match Format::negotiate(headers) {
        Format::Legacy if core => (
            serde_json::to_value(api_versions()),
            "application/json".to_owned(),
        ),
        Format::Legacy => (
            serde_json::to_value(api_group_list(registry)),
            "application/json".to_owned(),
        ),
        Format::Aggregated(version) => (
            Ok(aggregated(registry, core, version)),
            format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        ),
    };
    // Serializing k8s-openapi structs cannot fail.
    let bytes = serde_json::to_vec(&body.unwrap_or_default()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// The `APIGroupDiscoveryList` of the core group (`core`) or the named groups.
pub fn aggregated(registry: &Registry, core: bool, version: &str) -> Value {
    let groups: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        registry.groups()
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .in_group_version(group, v)
                        .map(discovery_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = group.into();
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

fn discovery_resource(t: &ResourceType) -> Value {
    let subresources: Vec<Value> = t
        .subresources
        .iter()
        .map(|sub| {
            let (group, version, kind) = sub.kind_of(t);
            json!({
                "subresource": sub.name(),
                "responseKind": {"group": group, "version": version, "kind": kind},
                "verbs": sub.verbs(),
            })
        })
        .collect();
    let mut resource = json!({
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs,
    });
    if !t.short_names.is_empty() {
        resource["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        resource["categories"] = json!(t.categories);
    }
    if !subresources.is_empty() {
        resource["subresources"] = subresources.into();
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_v1_resource_list() {
        let list = api_resource_list(&Registry::builtin(), "", "v1").expect("core/v1");
        let json = serde_json::to_value(&list).expect("json");
        assert_eq!(json["kind"], "APIResourceList");
        assert_eq!(json["groupVersion"], "v1");
        let cm = json["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["name"] == "configmaps")
            .expect("configmaps");
        assert_eq!(cm["kind"], "ConfigMap");
        assert_eq!(cm["namespaced"], true);
        assert_eq!(cm["singularName"], "configmap");
        assert_eq!(cm["shortNames"][0], "cm");
        assert!(
            cm["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .any(|v| v == "watch")
        );
        let ns = json["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["name"] == "namespaces")
            .expect("ns");
        assert_eq!(ns["namespaced"], false);
    }

    #[test]
    fn unknown_group_version_has_no_list() {
        assert!(api_resource_list(&Registry::builtin(), "apps", "v2").is_none());
    }

    #[test]
    fn legacy_lists_carry_subresources() {
        let list = api_resource_list(&Registry::builtin(), "apps", "v1").expect("apps/v1");
        let json = serde_json::to_value(&list).expect("json");
        let find = |name: &str| {
            json["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} in {json}"))
        };
        let deploy = find("deployments");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
        let scale = find("deployments/scale");
        assert_eq!(
            (&scale["group"], &scale["version"], &scale["kind"]),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        let status = find("deployments/status");
        assert_eq!(status["kind"], "Deployment");
        assert!(status.get("group").is_none());
    }

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().expect("header"));
        headers
    }

    #[test]
    fn accept_picks_the_form() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            Format::negotiate(&accept(kubectl)),
            Format::Aggregated("v2")
        );
        assert_eq!(
            Format::negotiate(&accept(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            )),
            Format::Aggregated("v2beta1")
        );
        assert_eq!(
            Format::negotiate(&accept("application/json")),
            Format::Legacy
        );
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Legacy);
        let response = serve_root(&Registry::builtin(), false, &accept(kubectl));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
    }

    #[test]
    fn aggregated_documents_describe_every_resource() {
        let registry = Registry::builtin();
        let core = aggregated(&registry, true, "v2");
        assert_eq!(core["kind"], "APIGroupDiscoveryList");
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(core["items"].as_array().expect("items").len(), 1);
        let v1 = &core["items"][0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        let pods = v1["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "pods")
            .expect("pods");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .filter_map(|s| s["subresource"].as_str())
            .collect();
        assert_eq!(
            subs,
            [
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "attach",
                "portforward"
            ]
        );
        let apis = aggregated(&registry, false, "v2");
        let groups: Vec<&str> = apis["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|g| g["metadata"]["name"].as_str())
            .collect();
        for group in [
            "apps",
            "batch",
            "rbac.authorization.k8s.io",
            "policy",
            "events.k8s.io",
        ] {
            assert!(groups.contains(&group), "{groups:?}");
        }
        let count: usize = apis["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|g| g["versions"][0]["resources"].as_array().map_or(0, Vec::len))
            .sum();
        let named = registry
            .all()
            .iter()
            .filter(|t| !t.group.is_empty())
            .count();
        assert_eq!(count, named);
    }

    #[test]
    fn version_and_groups() {
        let json = serde_json::to_value(version()).expect("json");
        assert_eq!(json["gitVersion"], "v1.32.0-cairn");
        assert_eq!(json["major"], "1");
        assert_eq!(json["minor"], "32");
        let api = serde_json::to_value(api_versions()).expect("json");
        assert_eq!(api["kind"], "APIVersions");
        assert_eq!(api["versions"][0], "v1");
        let apis = serde_json::to_value(api_group_list(&Registry::builtin())).expect("json");
        assert_eq!(apis["kind"], "APIGroupList");
        assert_eq!(apis["groups"][0]["name"], "apps");
        assert_eq!(
            apis["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
    }
}
