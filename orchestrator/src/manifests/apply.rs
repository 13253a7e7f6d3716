//! Applying one object the way `kubectl apply` (client side) does, through
//! the API: the kind's resource found by discovery (`/api/v1`,
//! `/apis/GROUP/VERSION`, so CRDs count once established), then create when
//! the object is missing, or a JSON merge patch when it exists.
//!
//! The manifest as applied is kept in the object's
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, as kubectl
//! keeps it: an unchanged manifest sends no write (the SD card is spared on
//! every boot), a field dropped from the manifest is removed from the object
//! (three-way merge: the patch sets it to null), fields others set are
//! kept, and a later `kubectl apply` of the same object agrees with it.

use std::collections::HashMap;

use hyper::Method;
use serde_json::{Map, Value, json};

use super::client::{Client, ClientError};

/// kubectl's annotation for the configuration last applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What applying an object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed and was patched.
    Updated,
    /// It existed as last applied from the same manifest: nothing sent.
    Unchanged,
}

/// Why an object was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is not a Kubernetes object.
    #[error("{0}")]
    Malformed(String),
    /// Discovery does not serve this kind (yet: a CRD may still come).
    #[error("no resource of kind {kind} is served in {api_version}")]
    UnknownKind {
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
    /// The API refused the request or did not answer.
    #[error(transparent)]
    Api(#[from] ClientError),
}

impl ApplyError {
    /// Whether trying again later may succeed without the file changing:
    /// the kind may be defined later, the server may be busy or away, a
    /// namespace may still be created.
    pub fn retryable(&self) -> bool {
        match self {
            ApplyError::Malformed(_) => false,
            ApplyError::UnknownKind { .. } => true,
            ApplyError::Api(e) => match e.code() {
                None => true,
                Some(code) => code == 404 || code == 409 || code == 429 || code >= 500,
            },
        }
    }
}

/// A served resource: its plural and scope.
#[derive(Debug, Clone)]
struct Resource {
    kind: String,
    plural: String,
    namespaced: bool,
}

/// Applies objects; caches discovery per `apiVersion`.
pub struct Applier {
    client: Client,
    discovery: HashMap<String, Vec<Resource>>,
}

impl Applier {
    /// An applier speaking to the API through `client`.
    pub fn new(client: Client) -> Applier {
        Applier {
            client,
            discovery: HashMap::new(),
        }
    }

    /// Forgets discovery (a CRD was applied: new kinds may be served).
    pub fn forget_discovery(&mut self) {
        self.discovery.clear();
    }

    /// Creates or updates `object`; returns what it did and a
    /// `kind/namespace/name` label for logs.
    pub async fn apply(&mut self, object: &Value) -> Result<(Outcome, String), ApplyError> {
        let text = |key: &str| object.get(key).and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            return Err(ApplyError::Malformed(
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
        };
        let meta = object.get("metadata");
        let Some(name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str) else {
            return Err(ApplyError::Malformed(format!(
                "{kind}: metadata.name is required (generateName is not supported here)"
            )));
        };
        let resource = self.resource(api_version, kind).await?;
        let base = match api_version.split_once('/') {
            None => format!("/api/{api_version}"),
            Some(_) => format!("/apis/{api_version}"),
        };
        let mut object = object.clone();
        let (collection, label) = if resource.namespaced {
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            object["metadata"]["namespace"] = json!(ns);
            (
                format!("{base}/namespaces/{ns}/{}", resource.plural),
                format!("{kind} {ns}/{name}"),
            )
        } else {
            (
                format!("{base}/{}", resource.plural),
                format!("{kind} {name}"),
            )
        };
        let applied = serde_json::to_string(&object)
            .map_err(|e| ApplyError::Malformed(format!("{label}: {e}")))?;
        object["metadata"]["annotations"][LAST_APPLIED] = json!(applied);
        let path = format!("{collection}/{name}");
        let existing = match self.client.get(&path).await {
            Ok(existing) => existing,
            Err(e) if e.code() == Some(404) => {
                self.client
                    .send(Method::POST, &collection, Some(JSON), Some(&object))
                    .await?;
                return Ok((Outcome::Created, label));
            }
            Err(e) => return Err(e.into()),
        };
        let last = existing["metadata"]["annotations"][LAST_APPLIED].as_str();
        if last == Some(applied.as_str()) {
            return Ok((Outcome::Unchanged, label));
        }
        let last: Value = last
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let patch = three_way(&last, &object);
        self.client
            .send(Method::PATCH, &path, Some(MERGE_PATCH), Some(&patch))
            .await?;
        Ok((Outcome::Updated, label))
    }

    async fn resource(&mut self, api_version: &str, kind: &str) -> Result<Resource, ApplyError> {
        let unknown = || ApplyError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        };
        let find = |list: &Vec<Resource>| list.iter().find(|r| r.kind == kind).cloned();
        if let Some(found) = self.discovery.get(api_version).and_then(find) {
            return Ok(found);
        }
        let path = match api_version.split_once('/') {
            None => format!("/api/{api_version}"),
            Some(_) => format!("/apis/{api_version}"),
        };
        let list = match self.client.get(&path).await {
            Ok(list) => list,
            Err(e) if e.code() == Some(404) => return Err(unknown()),
            Err(e) => return Err(e.into()),
        };
        let resources: Vec<Resource> = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let plural = r["name"].as_str()?;
                // Subresources (`deployments/scale`) share the kind.
                (!plural.contains('/')).then(|| Resource {
                    kind: r["kind"].as_str().unwrap_or_default().to_owned(),
                    plural: plural.to_owned(),
                    namespaced: r["namespaced"].as_bool().unwrap_or(false),
                })
            })
            .collect();
        let found = find(&resources);
        self.discovery.insert(api_version.to_owned(), resources);
        found.ok_or_else(unknown)
    }
}

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// A JSON merge patch that makes an object last applied as `last` look
/// like `new` in every field the manifests own: `new` itself, plus `null`
/// for each field `last` had and `new` dropped. Lists are replaced whole,
/// as merge patches do.
pub fn three_way(last: &Value, new: &Value) -> Value {
    match (last, new) {
        (Value::Object(last), Value::Object(new)) => {
            let mut patch = Map::new();
            for (key, value) in new {
                let old = last.get(key).unwrap_or(&Value::Null);
                patch.insert(key.clone(), three_way(old, value));
            }
            for key in last.keys() {
                if !new.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_fields_become_null() {
        let last = json!({"data": {"a": "1", "b": "2"}, "metadata": {"labels": {"x": "y"}}});
        let new = json!({"data": {"a": "3"}, "metadata": {"name": "n"}});
        assert_eq!(
            three_way(&last, &new),
            json!({"data": {"a": "3", "b": null}, "metadata": {"name": "n", "labels": null}})
        );
        // Nothing last applied: the manifest itself.
        assert_eq!(three_way(&Value::Null, &new), new);
    }
}
