//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom
//! resources they define.
//!
//! The CRD kind itself is a built-in entry of the [`Registry`]; what
//! happens to a CRD on its way into the store (defaults, validation, the
//! `NamesAccepted`/`Established` conditions set at once) is in
//! `definition`. Each *served version* of a stored CRD becomes a
//! [`ResourceType`] whose [`Custom`] part carries the version's schema,
//! scale paths and printer columns, so routing, discovery, the generic
//! handlers, watches and tables serve custom resources like any other kind.
//!
//! # Concurrency
//! The served registry is an immutable [`Snapshot`] (registry + OpenAPI
//! documents) behind `RwLock<Arc<_>>`: a request clones the `Arc` once and
//! keeps a consistent view for its whole life; a change builds a new
//! snapshot from a fresh list of every stored CRD and swaps it in. Reloads
//! are serialized by an async mutex, and each lists the store anew, so a
//! later reload never installs an older state. Reloads run (1) at start,
//! (2) right after this server wrote or deleted a CRD (so a CR can be
//! created as soon as the CRD create returned) and (3) on every event of a
//! store watch on the CRD prefix, which is how a second server on the same
//! PostgreSQL store learns about CRDs created through the first.
//!
//! Strings of a [`ResourceType`] are `&'static str`; a CRD's names are
//! interned (leaked once per distinct string) rather than widening the
//! registry's types, so the built-in path stays as it is. The leak is
//! bounded by the distinct names ever served.
//!
//! # Layout
//! - `definition`: CRD defaults, validation (names, versions, structural
//!   schemas) and status.
//! - `schema`: the OpenAPI v3 validator, pruning and defaulting of custom
//!   resources, driven by k8s-openapi's `JSONSchemaProps`.
//! - `resource`: create/update rules of custom resources (status,
//!   generation, scale paths).
//! - `printer`: `additionalPrinterColumns` and their JSONPath subset.
//! - `openapi`: the `/openapi/v3` document of a CRD group-version.
//!
//! # Current limitations
//! - Conversion is `None` only: an object is stored and returned in the
//!   version it was written in (no rewrite of `apiVersion` between
//!   versions); webhook conversion is refused.
//! - Deleting a CRD deletes its objects at once (no `Terminating`
//!   condition, no finalizer).
//! - `x-kubernetes-validations` (CEL) rules are stored but not enforced;
//!   `selectableFields` are not served.

pub mod definition;
pub mod openapi;
pub mod printer;
pub mod resource;
pub mod schema;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceSubresourceScale,
    JSONSchemaProps,
};
use schemars::Schema;
use tracing::{debug, warn};

use hyper::HeaderMap;
use serde_json::Value;

use super::Api;
use super::openapi::Documents;
use super::resources::{CRUD_VERBS, Registry, ResourceType, SchemaFn, Subresource};
use super::status::ApiError;
use crate::store::{Revision, Store, StoreError};

/// Store prefix of CRDs.
pub const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// What a custom kind's version adds to its [`ResourceType`].
#[derive(Debug)]
pub struct Custom {
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
    /// `openAPIV3Schema` of the version.
    pub schema: JSONSchemaProps,
    /// The `scale` subresource's paths, if declared.
    pub scale: Option<CustomResourceSubresourceScale>,
    /// `additionalPrinterColumns` (with upstream's default `Age` column
    /// when the version declares none).
    pub columns: Vec<CustomResourceColumnDefinition>,
}

// Two snapshots' custom parts are the same only if they are the same value.
impl PartialEq for Custom {
    fn eq(&self, other: &Custom) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Custom {}

/// A `&'static` copy of `s`, leaked once per distinct string.
pub fn intern(s: &str) -> &'static str {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = seen.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// A `&'static` copy of a list of strings, leaked once per distinct list.
fn intern_list(items: &[String]) -> &'static [&'static str] {
    static SEEN: Mutex<Option<HashSet<&'static [&'static str]>>> = Mutex::new(None);
    let list: Vec<&'static str> = items.iter().map(|s| intern(s)).collect();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = seen.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(list.as_slice()) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    set.insert(leaked);
    leaked
}

/// The default printer column of a version without any.
fn age_column() -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: "Age".into(),
        type_: "date".into(),
        json_path: ".metadata.creationTimestamp".into(),
        description: Some("CreationTimestamp is a timestamp representing the server time when this object was created.".into()),
        format: None,
        priority: None,
    }
}

/// Orders versions as upstream prefers them: GA, then beta, then alpha,
/// higher numbers first, other names last alphabetically.
pub fn version_priority(
    version: &str,
) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    let parse = |v: &str| -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        match &rest[digits.len()..] {
            "" => Some((0, major, 0)),
            tail => {
                let (stage, minor) = if let Some(n) = tail.strip_prefix("beta") {
                    (1, n)
                } else {
                    (2, tail.strip_prefix("alpha")?)
                };
                Some((stage, major, minor.parse().ok()?))
            }
        }
    };
    match parse(version) {
        Some((stage, major, minor)) => (
            stage,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            String::new(),
        ),
        None => (
            3,
            std::cmp::Reverse(0),
            std::cmp::Reverse(0),
            version.to_owned(),
        ),
    }
}

/// The resource types one CRD serves: a type per served version, in
/// upstream's version preference order.
pub fn resource_types(crd: &CustomResourceDefinition) -> Vec<ResourceType> {
    let spec = &crd.spec;
    let names = &spec.names;
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let group = intern(&spec.group);
    let kind = intern(&names.kind);
    let list_kind = intern(
        &names
            .list_kind
            .clone()
            .unwrap_or_else(|| format!("{}List", names.kind)),
    );
    let plural = intern(&names.plural);
    let singular = names
        .singular
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| names.kind.to_ascii_lowercase());
    let mut versions: Vec<_> = spec.versions.iter().filter(|v| v.served).collect();
    versions.sort_by_key(|v| version_priority(&v.name));
    versions
        .into_iter()
        .map(|v| {
            let subs = v.subresources.as_ref();
            let status = subs.is_some_and(|s| s.status.is_some());
            let scale = subs.and_then(|s| s.scale.clone());
            let subresources: &'static [Subresource] = match (status, scale.is_some()) {
                (true, true) => &[Subresource::Status, Subresource::Scale],
                (true, false) => &[Subresource::Status],
                (false, true) => &[Subresource::Scale],
                (false, false) => &[],
            };
            let columns = match &v.additional_printer_columns {
                Some(columns) if !columns.is_empty() => columns.clone(),
                _ => vec![age_column()],
            };
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.clone())
                .unwrap_or_else(|| JSONSchemaProps {
                    type_: Some("object".into()),
                    x_kubernetes_preserve_unknown_fields: Some(true),
                    ..Default::default()
                });
            ResourceType {
                group,
                version: intern(&v.name),
                api_version: intern(&format!("{}/{}", spec.group, v.name)),
                kind,
                list_kind,
                plural,
                singular: singular.clone(),
                namespaced: spec.scope == "Namespaced",
                short_names: intern_list(names.short_names.as_deref().unwrap_or_default()),
                verbs: CRUD_VERBS,
                categories: intern_list(names.categories.as_deref().unwrap_or_default()),
                subresources,
                schema: SchemaFn(|_| Schema::default()),
                custom: Some(Arc::new(Custom {
                    crd: crd_name.clone(),
                    schema,
                    scale,
                    columns,
                })),
            }
        })
        .collect()
}

/// Refuses a strategic merge patch of a custom resource with 415, as
/// upstream does (custom kinds have no patch strategies).
pub fn refuse_strategic_patch(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type
        .trim_start()
        .starts_with("application/strategic-merge-patch+json")
    {
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (got {content_type:?})"
            ),
            details: None,
            fields: None,
        });
    }
    Ok(())
}

/// Deletes every object of the deleted CRD `crd` (all versions share
/// one store prefix), as upstream's CRD finalizer does.
pub async fn delete_objects(api: &Api, crd: &Value) {
    let (Some(group), Some(plural)) = (
        crd["spec"]["group"].as_str(),
        crd["spec"]["names"]["plural"].as_str(),
    ) else {
        return;
    };
    let prefix = format!("/registry/{group}/{plural}/");
    loop {
        let page = match api.store.list(&prefix, None, Some(500), None).await {
            Ok(page) => page,
            Err(err) => {
                warn!(%err, %prefix, "listing a deleted CRD's objects failed");
                return;
            }
        };
        let mut deleted = 0;
        for kv in &page.items {
            match api.store.delete(&kv.key, None).await {
                Ok(_) => deleted += 1,
                Err(err) => debug!(%err, key = %kv.key, "deleting a custom resource"),
            }
        }
        // Stop when a page makes no progress rather than loop on it.
        if !page.more || deleted == 0 {
            return;
        }
    }
}

/// What requests are served from: the registry and its OpenAPI documents.
#[derive(Debug)]
pub struct Snapshot {
    /// Built-in kinds and every established CRD's kinds.
    pub registry: Registry,
    /// `/openapi/v3` of all of them.
    pub openapi: Documents,
}

/// The served snapshot and how it is rebuilt.
#[derive(Debug)]
pub struct Dynamic {
    builtin: Registry,
    builtin_docs: Documents,
    current: RwLock<Arc<Snapshot>>,
    reload: tokio::sync::Mutex<()>,
}

impl Dynamic {
    /// Serves the built-in kinds (and their documents) until the first reload.
    pub fn new(builtin: Registry, builtin_docs: Documents) -> Dynamic {
        let current = Arc::new(Snapshot {
            registry: builtin.clone(),
            openapi: builtin_docs.clone(),
        });
        Dynamic {
            builtin,
            builtin_docs,
            current: RwLock::new(current),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the snapshot from every CRD in `store`; returns the
    /// revision the CRDs were listed at.
    pub async fn reload(&self, store: &Store) -> Result<Revision, StoreError> {
        let _serial = self.reload.lock().await;
        let mut after: Option<String> = None;
        let mut revision = None;
        let mut crds = Vec::new();
        loop {
            let page = store
                .list(CRD_PREFIX, after.as_deref(), Some(500), revision)
                .await?;
            revision = Some(page.revision);
            for kv in &page.items {
                // Through a Value: one deserializer instance of the large
                // CRD types (definition.rs decodes from a Value too).
                let decoded = serde_json::from_slice::<Value>(&kv.value)
                    .and_then(serde_json::from_value::<CustomResourceDefinition>);
                match decoded {
                    Ok(crd) => crds.push(crd),
                    Err(err) => warn!(key = %kv.key, %err, "a stored CRD does not decode"),
                }
            }
            after = page.items.last().map(|kv| kv.key.clone());
            if !page.more || after.is_none() {
                break;
            }
        }
        let custom: Vec<ResourceType> = crds.iter().flat_map(resource_types).collect();
        let registry = self.builtin.with_custom(custom);
        let openapi = openapi::with_custom(&self.builtin_docs, &registry);
        let snapshot = Arc::new(Snapshot { registry, openapi });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        debug!(crds = crds.len(), "served kinds reloaded");
        Ok(revision.unwrap_or(0))
    }

    /// Follows the CRD prefix of `store` and reloads on every change, until
    /// the store's watch ends; errors are retried after a second.
    pub async fn follow(self: Arc<Self>, store: Store) {
        loop {
            let from = match self.reload(&store).await {
                Ok(revision) => revision,
                Err(err) => {
                    warn!(%err, "listing CRDs failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut watch = match store.watch(CRD_PREFIX, from).await {
                Ok(watch) => watch,
                Err(err) => {
                    warn!(%err, "watching CRDs failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match watch.recv().await {
                    Some(Ok(_)) => {
                        if let Err(err) = self.reload(&store).await {
                            warn!(%err, "reloading CRDs failed");
                            break;
                        }
                    }
                    Some(Err(err)) => {
                        warn!(%err, "the CRD watch failed; listing again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    None => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRD written by another server (here: straight into the shared
    /// store, so no write hook of this `Api` runs) is served through the
    /// store watch, and stops being served when it is deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crds_written_elsewhere_are_served_through_the_watch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(dir.path().join("state.db"))
            .await
            .expect("store");
        let api = Api::new(store.clone(), Default::default());
        api.serve_crds().await.expect("serve CRDs");
        let mut crd = serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Cluster",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}],
            },
        });
        definition::prepare(None, &mut crd, crate::api::strategy::Write::Main).expect("valid");
        let key = format!("{CRD_PREFIX}widgets.example.com");
        store
            .create(&key, serde_json::to_vec(&crd).expect("json"))
            .await
            .expect("create");
        let served = |want: bool| {
            let api = &api;
            async move {
                for _ in 0..200 {
                    let snapshot = api.snapshot();
                    let found = snapshot
                        .registry
                        .find("example.com", "v1", "widgets")
                        .is_some();
                    let documented = snapshot
                        .openapi
                        .serve(
                            &["v3", "apis", "example.com", "v1"],
                            &Default::default(),
                            &Default::default(),
                        )
                        .is_ok();
                    if found == want && documented == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        assert!(
            served(true).await,
            "the CRD was not picked up from the watch"
        );
        store.delete(&key, None).await.expect("delete");
        assert!(served(false).await, "the deleted CRD is still served");
    }

    #[test]
    fn versions_sort_like_upstream() {
        let mut v = vec!["v1alpha1", "foo", "v2", "v1beta2", "v1", "v1beta1", "v10"];
        v.sort_by_key(|v| version_priority(v));
        assert_eq!(
            v,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn interned_strings_are_shared() {
        let a = intern(&String::from("widgets"));
        let b = intern("widgets");
        assert!(std::ptr::eq(a, b));
        let l = intern_list(&["w".to_owned()]);
        assert!(std::ptr::eq(l, intern_list(&["w".to_owned()])));
    }

    #[test]
    fn served_versions_become_types() {
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}},
                    {"name": "v1alpha1", "served": false, "storage": false},
                ],
            },
        }))
        .expect("crd");
        let types = resource_types(&crd);
        assert_eq!(types.len(), 2);
        let v1 = &types[0];
        assert_eq!((v1.version, v1.api_version), ("v1", "example.com/v1"));
        assert_eq!(
            (v1.kind, v1.list_kind, v1.singular.as_str()),
            ("Widget", "WidgetList", "widget")
        );
        assert_eq!(v1.short_names, ["wd"]);
        assert!(v1.namespaced && v1.has(Subresource::Scale) && v1.has(Subresource::Status));
        assert_eq!(v1.key(Some("t"), "a"), "/registry/example.com/widgets/t/a");
        assert!(types[1].subresources.is_empty());
        let custom = v1.custom.as_ref().expect("custom");
        assert_eq!(custom.columns[0].name, "Age");
    }
}
