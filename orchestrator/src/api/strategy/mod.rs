//! What upstream's REST strategies and defaulting functions do to an
//! object on its way into the store, per kind: defaults
//! (`pkg/apis/<group>/v1/defaults.go`), create- and update-time
//! preparation (`pkg/registry/<group>/<kind>/strategy.go`: status reset,
//! `metadata.generation`, the Job selector, the Pod's phase and QoS class),
//! the validation users commonly hit (422 `Invalid` with a cause per field),
//! and Service ClusterIP/NodePort allocation.
//!
//! The generic handlers call four hooks and stay kind-agnostic:
//! [`before_create`], [`before_update`] (with the [`Write`] saying whether
//! the main resource or its `status` subresource is written), then
//! [`after_write`] once the store has answered, and [`after_delete`].
//!
//! # Layout
//! - `pod`: pod specs (pods and every pod template): container defaults,
//!   probes, volumes, validation, QoS class.
//! - `workloads`: apps/v1, batch/v1 (and the initial status of policy/v1);
//!   `policy`: PodDisruptionBudget validation.
//! - `service`: Service defaults, validation and allocation; `alloc`: the
//!   allocator (a store key per allocated IP/port).
//! - `core_v1`: the other core kinds, storage and RBAC.
//!
//! # Current limitations
//! - Validation covers what users commonly hit, not all of upstream's.
//! - No admission plugins beyond what is folded in here (priority 0 and
//!   the default not-ready/unreachable tolerations on pods); the
//!   ServiceAccount admission (default SA, token volume) is not done.
//! - `metadata.generation` is tracked for the kinds upstream tracks it for
//!   (apps, batch, PodDisruptionBudget), not for Services, Pods or Nodes.

mod alloc;
mod core_v1;
mod pod;
mod policy;
mod service;
mod workloads;

pub use pod::DefaultTolerations;
pub use service::ServiceNetwork;

use serde_json::{Value, json};

use super::Api;
use super::crd;
use super::resources::{ResourceType, Subresource};
use super::status::{ApiError, Cause};

/// Which endpoint an update comes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The object itself: `status` changes are ignored for kinds with a
    /// `status` subresource.
    Main,
    /// The `status` subresource: only `status` (and annotations) change.
    Status,
}

impl Write {
    /// The write a request path's subresource makes.
    pub fn of(subresource: Option<Subresource>) -> Write {
        match subresource {
            Some(Subresource::Status) => Write::Status,
            _ => Write::Main,
        }
    }
}

/// Field errors of one object, reported together as upstream does.
#[derive(Debug, Default)]
pub struct Errors(Vec<Cause>);

fn body(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}

/// A value the way upstream's messages quote it (`"x"`, `3`).
pub fn repr(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Object(map) if map.values().all(Value::is_string) => {
            // Go's %#v of a map[string]string, which label errors print.
            let pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k:?}:{}", repr(v)))
                .collect();
            format!("map[string]string{{{}}}", pairs.join(", "))
        }
        other => other.to_string(),
    }
}

impl Errors {
    fn push(&mut self, reason: &'static str, field: String, message: String) {
        self.0.push(Cause {
            reason,
            message,
            field,
        });
    }

    /// `field: Required value[: detail]`.
    pub fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message = body("Required value".into(), detail);
        self.push("FieldValueRequired", field.into(), message);
    }

    /// `field: Invalid value: <value>[: detail]`.
    pub fn invalid(&mut self, field: impl Into<String>, value: &Value, detail: &str) {
        let message = body(format!("Invalid value: {}", repr(value)), detail);
        self.push("FieldValueInvalid", field.into(), message);
    }

    /// `field: Invalid value: <repr>[: detail]` with the value already
    /// rendered (e.g. `[]string{"10.43.0.1"}`).
    pub fn invalid_repr(&mut self, field: impl Into<String>, repr: &str, detail: &str) {
        let message = body(format!("Invalid value: {repr}"), detail);
        self.push("FieldValueInvalid", field.into(), message);
    }

    /// `field: Unsupported value: <value>: supported values: "a", "b"`.
    pub fn unsupported(&mut self, field: impl Into<String>, value: &Value, supported: &[&str]) {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        let message = format!(
            "Unsupported value: {}: supported values: {}",
            repr(value),
            quoted.join(", ")
        );
        self.push("FieldValueNotSupported", field.into(), message);
    }

    /// `field: Duplicate value: <value>`.
    pub fn duplicate(&mut self, field: impl Into<String>, value: &Value) {
        let message = format!("Duplicate value: {}", repr(value));
        self.push("FieldValueDuplicate", field.into(), message);
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        let message = body("Forbidden".into(), detail);
        self.push("FieldValueForbidden", field.into(), message);
    }

    /// A cause with its own reason (`FieldValueTooLong`...) and message.
    pub fn other(&mut self, reason: &'static str, field: impl Into<String>, message: String) {
        self.push(reason, field.into(), message);
    }

    /// The causes reported so far.
    pub fn causes(&self) -> &[Cause] {
        &self.0
    }

    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The 422 for the object `name` of `group`/`kind`.
    pub fn into_error(self, group: &str, kind: &str, name: &str) -> ApiError {
        ApiError::invalid_fields(group, kind, name, self.0)
    }

    /// `Ok` if nothing was reported, else the 422 for `rt`'s object `name`.
    pub fn into_result(self, rt: &ResourceType, name: &str) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error(rt.group, rt.kind, name))
        }
    }
}

// ---- JSON helpers shared by the kind modules -------------------------------

/// The object at `keys` under `v`, creating empty objects where missing
/// or null; `None` if something on the way is not an object.
fn object_path<'a>(mut v: &'a mut Value, keys: &[&str]) -> Option<&'a mut Value> {
    for key in keys {
        let entry = v.as_object_mut()?.entry(*key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = json!({});
        }
        v = entry;
    }
    v.is_object().then_some(v)
}

/// Sets `v[key]` when it is missing or null (a nil Go pointer).
fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(map) = v.as_object_mut() {
        let entry = map.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = value;
        }
    }
}

/// Sets `v[key]` when it is missing, null or `""` (an unset Go string).
fn default_str(v: &mut Value, key: &str, value: &str) {
    if v.get(key).is_some_and(|s| s == "") {
        v[key] = value.into();
    }
    default(v, key, value.into());
}

/// The elements of the array `v[key]`, if it is one.
fn each_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// `v` at a JSON pointer, if it is an object.
fn object_mut<'a>(v: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    v.pointer_mut(pointer).filter(|o| o.is_object())
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects
/// `labels`. An empty selector selects everything.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or("") {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

// ---- the hooks -------------------------------------------------------------

/// Kinds whose `metadata.generation` upstream bumps on spec changes.
fn tracks_generation(rt: &ResourceType) -> bool {
    matches!(
        rt.kind,
        "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "CronJob"
            | "PodDisruptionBudget"
    )
}

/// Defaults of `rt`'s objects (create and update alike, as upstream
/// defaults every decoded object).
fn apply_defaults(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    match rt.group {
        "" => core_v1::defaults(rt, obj)?,
        "apps" | "batch" => workloads::defaults(rt.kind, obj),
        "storage.k8s.io" | "rbac.authorization.k8s.io" | "discovery.k8s.io" => {
            core_v1::defaults(rt, obj)?;
        }
        _ => {}
    }
    Ok(())
}

/// The mutating admission plugins with settings of their own
/// (DefaultTolerationSeconds on Pods), on create and update as upstream.
fn admit(api: &Api, rt: &ResourceType, obj: &mut Value) {
    if rt.group.is_empty() && rt.kind == "Pod" {
        pod::default_toleration_seconds(obj, api.default_tolerations);
    }
}

fn validate(rt: &ResourceType, old: Option<&Value>, obj: &Value) -> Result<(), ApiError> {
    let mut errors = Errors::default();
    match rt.group {
        "apps" | "batch" => workloads::validate(rt.kind, old, obj, &mut errors),
        "policy" if rt.kind == "PodDisruptionBudget" => policy::validate(obj, &mut errors),
        "" if rt.kind == "Service" => service::validate(old, obj, &mut errors),
        _ => core_v1::validate(rt, old, obj, &mut errors),
    }
    errors.into_result(rt, name_of(obj))
}

/// Prepares a new object (its name, namespace, uid and creationTimestamp
/// already set): defaults, status reset, generation 1, the kind's own
/// preparation, validation, then allocations. On error nothing is held.
pub async fn before_create(api: &Api, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if let Some(custom) = &rt.custom {
        return crd::resource::before_create(rt, custom, obj);
    }
    if is_crd(rt) {
        return crd::definition::prepare(None, obj, Write::Main);
    }
    apply_defaults(rt, obj)?;
    admit(api, rt, obj);
    if let Some(meta) = obj["metadata"].as_object_mut() {
        if tracks_generation(rt) {
            meta.insert("generation".into(), 1.into());
        } else {
            meta.remove("generation");
        }
    }
    // Upstream clears client-set status on create (a Node registers with its own).
    if rt.has(Subresource::Status)
        && rt.kind != "Node"
        && let Some(map) = obj.as_object_mut()
    {
        map.insert("status".into(), json!({}));
    }
    match rt.kind {
        "Pod" => pod::prepare_create(obj),
        "Job" => workloads::prepare_job_create(obj),
        kind => core_v1::prepare_create(kind, obj),
    }
    workloads::initial_status(rt.kind, obj);
    validate(rt, None, obj)?;
    if rt.kind == "Service" && rt.group.is_empty() {
        service::allocate(api, None, obj).await?;
    }
    Ok(())
}

/// Prepares `new` to replace `old` through `write`.
pub async fn before_update(
    api: &Api,
    rt: &ResourceType,
    write: Write,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    if write == Write::Status {
        status_only(old, new);
        if let Some(custom) = &rt.custom {
            return crd::resource::after_status_write(rt, custom, new);
        }
        if is_crd(rt) {
            return crd::definition::prepare(Some(old), new, write);
        }
        return Ok(());
    }
    if let Some(custom) = &rt.custom {
        return crd::resource::before_update(rt, custom, old, new);
    }
    if is_crd(rt) {
        return crd::definition::prepare(Some(old), new, write);
    }
    apply_defaults(rt, new)?;
    admit(api, rt, new);
    if rt.has(Subresource::Status)
        && let Some(map) = new.as_object_mut()
    {
        match old.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    let generation = old["metadata"]["generation"].as_i64();
    let bump = tracks_generation(rt) && new.get("spec") != old.get("spec");
    if let Some(meta) = new["metadata"].as_object_mut() {
        match generation {
            Some(g) => meta.insert("generation".into(), (g + i64::from(bump)).into()),
            None => meta.remove("generation"),
        };
    }
    if rt.kind == "Namespace" {
        core_v1::prepare_create("Namespace", new);
    }
    validate(rt, Some(old), new)?;
    if rt.kind == "Service" && rt.group.is_empty() {
        service::allocate(api, Some(old), new).await?;
    }
    Ok(())
}

/// `status` subresource writes: everything but `status` (and
/// annotations, which upstream's status strategies let through) stays.
fn status_only(old: &Value, new: &mut Value) {
    let mut merged = old.clone();
    if let Some(map) = merged.as_object_mut() {
        match new.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    if let Some(meta) = merged["metadata"].as_object_mut() {
        match new["metadata"].get("annotations") {
            Some(a) => meta.insert("annotations".into(), a.clone()),
            None => meta.remove("annotations"),
        };
        // The caller's precondition, if any.
        if let Some(rv) = new["metadata"].get("resourceVersion") {
            meta.insert("resourceVersion".into(), rv.clone());
        } else {
            meta.remove("resourceVersion");
        }
    }
    *new = merged;
}

/// Whether `rt` is `CustomResourceDefinition`.
fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition"
}

/// After the store answered a create (`old` is `None`) or an update:
/// releases what the losing side of the write held (`stored`: whether the
/// write happened).
pub async fn after_write(
    api: &Api,
    rt: &ResourceType,
    old: Option<&Value>,
    new: &Value,
    stored: bool,
) {
    if is_crd(rt) && stored {
        api.crds_changed().await;
    }
    if rt.kind == "Service" && rt.group.is_empty() {
        match (stored, old) {
            (true, Some(old)) => service::release_unused(api, old, new).await,
            (false, Some(old)) => service::release_unused(api, new, old).await,
            (false, None) => service::release_unused(api, new, &json!({})).await,
            (true, None) => {}
        }
    }
}

/// After an object was deleted from the store.
pub async fn after_delete(api: &Api, rt: &ResourceType, obj: &Value) {
    if is_crd(rt) {
        api.crds_changed().await;
        crd::delete_objects(api, obj).await;
    }
    if rt.kind == "Service" && rt.group.is_empty() {
        service::release_unused(api, obj, &json!({})).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_like_upstream() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selector_matches(&json!({}), &labels));
        assert!(selector_matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        let exprs = json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "env", "operator": "DoesNotExist"},
            {"key": "app", "operator": "NotIn", "values": ["db"]},
            {"key": "app", "operator": "Exists"},
        ]});
        assert!(selector_matches(&exprs, &labels));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}),
            &labels
        ));
    }

    #[test]
    fn defaults_do_not_overwrite() {
        let mut v = json!({"a": "", "b": null, "c": "keep"});
        default_str(&mut v, "a", "x");
        default_str(&mut v, "b", "y");
        default_str(&mut v, "c", "z");
        default(&mut v, "d", json!(1));
        assert_eq!(v, json!({"a": "x", "b": "y", "c": "keep", "d": 1}));
    }

    #[test]
    fn status_writes_keep_everything_else() {
        let old = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let mut new = json!({"metadata": {"name": "x", "labels": {"a": "2"}, "resourceVersion": "7"}, "spec": {"replicas": 5}, "status": {"replicas": 3}});
        status_only(&old, &mut new);
        assert_eq!(new["spec"]["replicas"], 1);
        assert_eq!(new["status"]["replicas"], 3);
        assert_eq!(new["metadata"]["labels"]["a"], "1");
        assert_eq!(new["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn values_are_quoted_like_go() {
        assert_eq!(repr(&json!("a")), "\"a\"");
        assert_eq!(repr(&json!(3)), "3");
        assert_eq!(
            repr(&json!({"app": "web"})),
            "map[string]string{\"app\":\"web\"}"
        );
    }
}
