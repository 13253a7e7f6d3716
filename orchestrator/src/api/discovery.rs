//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis` and
//! `/apis/<group>/<version>`, built from the [`Registry`].
//!
//! Only the legacy (unaggregated) documents are served. kubectl 1.32 asks for
//! `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`
//! first, with plain `application/json` as the last choice in its `Accept`;
//! a plain `APIVersions`/`APIGroupList` answer makes client-go fall back to
//! the per-group-version `APIResourceList`s.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
};
use k8s_openapi::apimachinery::pkg::version::Info;

use super::resources::Registry;

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

/// `/api/v1`, `/apis/<group>/<version>`: `None` if nothing is served there.
pub fn api_resource_list(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Option<APIResourceList> {
    let resources: Vec<APIResource> = registry
        .in_group_version(group, version)
        .map(|t| APIResource {
            name: t.plural.to_owned(),
            singular_name: t.singular.clone(),
            namespaced: t.namespaced,
            kind: t.kind.to_owned(),
            verbs: t.verbs.iter().map(|v| (*v).to_owned()).collect(),
            short_names: (!t.short_names.is_empty())
                .then(|| t.short_names.iter().map(|s| (*s).to_owned()).collect()),
            ..Default::default()
        })
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
        assert!(api_resource_list(&Registry::builtin(), "apps", "v1").is_none());
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
        assert_eq!(apis["groups"].as_array().expect("groups").len(), 0);
    }
}
