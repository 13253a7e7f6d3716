//! A cursor over a kind's OpenAPI schema, for the code that merges
//! objects: strategic merge patch (`patch`), field sets and server-side
//! apply (`fieldset`, `apply`). It follows `$ref`s and single `allOf`s
//! into the component schemas and reads the list extensions that
//! [`lists`](super::lists) writes for built-in kinds and CRD schemas carry
//! themselves. An unknown field (or a kind without a schema) has an empty
//! shape: its lists are atomic and replaced whole, as upstream treats
//! untyped lists.

use serde_json::{Map, Value, json};

use super::openapi::Documents;
use super::resources::ResourceType;

const REF_PREFIX: &str = "#/components/schemas/";

/// The root schema of `rt`'s objects, to build a [`Shape`] on: a `$ref`
/// to the built-in definition, or the CRD's `openAPIV3Schema` with
/// `metadata` as `ObjectMeta`.
pub fn root_of(docs: &Documents, rt: &ResourceType) -> Value {
    if let Some(custom) = &rt.custom {
        let mut schema = serde_json::to_value(&custom.schema).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut schema {
            let props = map.entry("properties").or_insert_with(|| json!({}));
            if let Value::Object(props) = props {
                props.insert(
                    "metadata".into(),
                    json!({"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}),
                );
            }
        }
        return schema;
    }
    match docs.schema_name(rt.api_version, rt.kind) {
        Some(name) => json!({"$ref": format!("{REF_PREFIX}{name}")}),
        None => json!({}),
    }
}

/// How a list merges, from its schema's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Objects identified by the values of these keys.
    Map(Vec<String>),
}

/// A position in a schema.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    schemas: &'a Map<String, Value>,
    /// The schema as written at this position (extensions live here).
    node: Option<&'a Value>,
}

impl<'a> Shape<'a> {
    /// The shape of `root` with `$ref`s into `schemas`.
    pub fn new(schemas: &'a Map<String, Value>, root: &'a Value) -> Shape<'a> {
        Shape {
            schemas,
            node: Some(root),
        }
    }

    /// A shape that knows nothing: maps merge, lists are atomic.
    pub fn unknown(schemas: &'a Map<String, Value>) -> Shape<'a> {
        Shape {
            schemas,
            node: None,
        }
    }

    fn at(&self, node: Option<&'a Value>) -> Shape<'a> {
        Shape {
            schemas: self.schemas,
            node,
        }
    }

    /// The schema with `$ref`s and one-element `allOf`s followed.
    fn resolved(&self) -> Option<&'a Value> {
        let mut node = self.node?;
        for _ in 0..16 {
            if let Some(target) = node.get("$ref").and_then(Value::as_str) {
                node = self.schemas.get(target.strip_prefix(REF_PREFIX)?)?;
            } else if let Some([only]) = node
                .get("allOf")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                node = only;
            } else {
                return Some(node);
            }
        }
        None
    }

    /// The shape of field `key` of this object (or of its map values).
    pub fn field(&self, key: &str) -> Shape<'a> {
        let Some(schema) = self.resolved() else {
            return self.at(None);
        };
        if let Some(prop) = schema.get("properties").and_then(|p| p.get(key)) {
            return self.at(Some(prop));
        }
        match schema.get("additionalProperties") {
            Some(values @ Value::Object(_)) => self.at(Some(values)),
            _ => self.at(None),
        }
    }

    /// The shape of this list's items.
    pub fn items(&self) -> Shape<'a> {
        self.at(self.resolved().and_then(|s| s.get("items")))
    }

    /// A string extension, on the written or the resolved schema.
    fn extension(&self, name: &str) -> Option<&'a Value> {
        self.node
            .and_then(|n| n.get(name))
            .or_else(|| self.resolved().and_then(|s| s.get(name)))
    }

    /// `x-kubernetes-patch-strategy` split at commas.
    pub fn patch_strategies(&self) -> Vec<&'a str> {
        self.extension("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .map(|s| s.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// `x-kubernetes-patch-merge-key`.
    pub fn merge_key(&self) -> Option<&'a str> {
        self.extension("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    }

    /// How server-side apply merges this list (`x-kubernetes-list-type`;
    /// without it, a strategic `merge` list is associative by its merge
    /// key, or a set without one, as upstream converts its schemas).
    pub fn list_kind(&self) -> ListKind {
        match self
            .extension("x-kubernetes-list-type")
            .and_then(Value::as_str)
        {
            Some("set") => ListKind::Set,
            Some("map") => {
                let keys: Vec<String> = self
                    .extension("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                if keys.is_empty() {
                    ListKind::Atomic
                } else {
                    ListKind::Map(keys)
                }
            }
            Some(_) => ListKind::Atomic,
            None if self.patch_strategies().contains(&"merge") => match self.merge_key() {
                Some(key) => ListKind::Map(vec![key.to_owned()]),
                None => ListKind::Set,
            },
            None => ListKind::Atomic,
        }
    }

    /// A map with free keys (labels, data): `additionalProperties` and no
    /// `properties`.
    pub fn free_keys(&self) -> bool {
        self.resolved().is_some_and(|s| {
            s.get("properties").is_none()
                && s.get("additionalProperties").is_some_and(Value::is_object)
        })
    }

    /// `x-kubernetes-map-type: atomic` or a struct whose patch strategy is
    /// `replace`: applied and patched whole.
    pub fn atomic_map(&self) -> bool {
        self.extension("x-kubernetes-map-type")
            .and_then(Value::as_str)
            == Some("atomic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;

    #[test]
    fn follows_refs_to_list_extensions() {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        let rt = registry
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let root = root_of(&docs, rt);
        let shape = Shape::new(docs.schemas(), &root);
        let pod = shape.field("spec").field("template").field("spec");
        let containers = pod.field("containers");
        assert_eq!(containers.list_kind(), ListKind::Map(vec!["name".into()]));
        assert_eq!(containers.merge_key(), Some("name"));
        let ports = containers.items().field("ports");
        assert_eq!(
            ports.list_kind(),
            ListKind::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(
            containers.items().field("args").list_kind(),
            ListKind::Atomic
        );
        assert_eq!(pod.field("tolerations").list_kind(), ListKind::Atomic);
        assert_eq!(
            shape.field("metadata").field("finalizers").list_kind(),
            ListKind::Set
        );
        assert_eq!(
            shape.field("spec").field("strategy").patch_strategies(),
            vec!["retainKeys"]
        );
        // Map values (labels) and unknown fields.
        assert_eq!(
            shape
                .field("metadata")
                .field("labels")
                .field("app")
                .list_kind(),
            ListKind::Atomic
        );
        assert_eq!(shape.field("nope").field("x").list_kind(), ListKind::Atomic);
    }
}
