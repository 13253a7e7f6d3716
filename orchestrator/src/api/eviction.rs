//! Pod `eviction`: a delete that honours the pod's PodDisruptionBudget,
//! as upstream's `pkg/registry/core/pod/storage/eviction.go`.
//!
//! - A pod that disrupts nothing (Succeeded, Failed, Pending, or already
//!   being deleted) is deleted without looking at budgets.
//! - Otherwise the budgets of its namespace whose (non-empty) selector
//!   matches it are found: none, and it is deleted; more than one is a 500,
//!   as upstream does not decide between them.
//! - A pod that is not Ready is deleted without using the budget when the
//!   budget's `unhealthyPodEvictionPolicy` is `AlwaysAllow`, or (the default
//!   `IfHealthyBudget`) when the budget is healthy anyway; the delete then
//!   carries the pod's resourceVersion, so a pod that became Ready
//!   meanwhile is not deleted (429, to try again).
//! - Otherwise the budget must have seen its current generation and allow
//!   a disruption, else 429 `TooManyRequests` with a `DisruptionBudget`
//!   cause; `disruptionsAllowed` is decremented and the pod recorded in
//!   `status.disruptedPods` (compare-and-swap on the budget, retried on
//!   conflict), and the disruption controller
//!   ([`crate::controllers::disruption`]) recomputes from there.
//! - The delete itself is the ordinary one ([`super::delete::delete_named`],
//!   graceful for a pod on a node) with the eviction's `deleteOptions`,
//!   after the pod gets the `DisruptionTarget` condition as upstream adds it.
//!
//! `dryRun` (query or `deleteOptions`) checks everything and writes nothing.

use hyper::Response;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::delete;
use super::handlers::{Target, from_kv, to_value_bytes};
use super::options::DeleteOptions;
use super::query::Query;
use super::status::ApiError;
use super::{Api, Body, json_response};
use crate::store::{KeyValue, StoreError};

/// Conflicts tolerated while deleting the pod or updating its budget
/// (upstream retries 20 times, 500 ms apart; a local store needs no pause).
const ATTEMPTS: usize = 20;

/// Most pending evictions a budget may record before the controller has
/// seen them (upstream's `MaxDisruptedPodSize`).
const MAX_DISRUPTED_PODS: usize = 2000;

/// Upstream's message for an eviction a budget refuses.
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// POST `pods/<name>/eviction` with the (checked) `Eviction` body.
pub(super) async fn evict(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    query: &Query,
    eviction: &Value,
) -> Result<Response<Body>, ApiError> {
    let mut options = DeleteOptions::from_value(&eviction["deleteOptions"])?;
    if query.all("dryRun").contains(&"All") {
        options.dry_run = true;
    }
    let pinned = options.resource_version.is_some();
    let pod_key = target.rt.key(target.namespace.as_deref(), name);
    let mut attempt = 0;
    let pod = loop {
        attempt += 1;
        let pod = read(api, &pod_key, "pods", name).await?;
        if disrupts(&pod) {
            break pod;
        }
        // Nothing to guard: delete it, unless it changed meanwhile.
        let mut options = options.clone();
        if enforce_version(&pod) && !pinned {
            options.resource_version = version_of(&pod);
        }
        match delete_pod(api, target, name, &pod_key, &options).await {
            Ok(()) => return Ok(success()),
            Err(err) if err.code == 409 && !pinned && attempt < ATTEMPTS => {}
            Err(err) => return Err(err),
        }
    };
    let budgets = budgets_of(api, &pod).await?;
    if budgets.len() > 1 {
        return Ok(json_response(
            500,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                "code": 500,
            }),
        ));
    }
    let mut guard_readiness = false;
    let mut budget = None;
    if let Some(kv) = budgets.into_iter().next() {
        let pdb = from_kv(&kv)?;
        budget = pdb["metadata"]["name"].as_str().map(str::to_owned);
        let status = &pdb["status"];
        let count = |field: &str| status[field].as_i64().unwrap_or(0);
        let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        let healthy_anyway =
            count("currentHealthy") >= count("desiredHealthy") && count("desiredHealthy") > 0;
        if !pod_ready(&pod) && (always || healthy_anyway) {
            // Unhealthy: it does not count towards the budget.
            guard_readiness = true;
        } else {
            decrement(api, kv, name, options.dry_run).await?;
        }
    }
    let mut delete_options = options.clone();
    if guard_readiness {
        delete_options.resource_version = version_of(&pod);
    }
    match delete_pod(api, target, name, &pod_key, &delete_options).await {
        Ok(()) => Ok(success()),
        Err(err) if err.code == 409 && guard_readiness && !pinned => {
            Err(still_processing(budget.as_deref()))
        }
        Err(err) => Err(err),
    }
}

async fn read(api: &Api, key: &str, plural: &str, name: &str) -> Result<Value, ApiError> {
    match api.store.get(key).await {
        Ok(Some(kv)) => from_kv(&kv),
        Ok(None) => Err(ApiError::not_found(plural, name)),
        Err(err) => Err(ApiError::from_store(err, plural, name)),
    }
}

fn version_of(obj: &Value) -> Option<String> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn deleting(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_string()
}

/// Whether evicting `pod` is a disruption budgets guard against (not
/// upstream's `canIgnorePDB`).
fn disrupts(pod: &Value) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed" | "Pending") && !deleting(pod)
}

/// Upstream's `shouldEnforceResourceVersion`: a pod that may still become
/// Ready is deleted only as it was read.
fn enforce_version(pod: &Value) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !deleting(pod)
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether a budget's selector picks `labels`: an empty or missing
/// selector picks nothing here, as upstream's eviction has it.
fn selects(selector: &Value, labels: &Value) -> bool {
    let empty = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|e| e.is_empty());
    !empty && super::strategy::selector_matches(selector, labels)
}

/// The store entries of the budgets that select `pod`.
async fn budgets_of(api: &Api, pod: &Value) -> Result<Vec<KeyValue>, ApiError> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let prefix = budget_prefix(namespace);
    let page = api
        .store
        .list(&prefix, None, None, None)
        .await
        .map_err(|err| ApiError::from_store(err, "poddisruptionbudgets", ""))?;
    let mut out = Vec::new();
    for kv in page.items {
        let pdb = from_kv(&kv)?;
        if selects(&pdb["spec"]["selector"], &pod["metadata"]["labels"]) {
            out.push(kv);
        }
    }
    Ok(out)
}

fn budget_prefix(namespace: &str) -> String {
    format!("/registry/policy/poddisruptionbudgets/{namespace}/")
}

/// Upstream's `checkAndDecrement`, retried on conflict with the budget
/// read again.
async fn decrement(api: &Api, mut kv: KeyValue, pod: &str, dry_run: bool) -> Result<(), ApiError> {
    for _ in 0..ATTEMPTS {
        let mut pdb = from_kv(&kv)?;
        let name = pdb["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let status = &pdb["status"];
        let count = |field: &str| status[field].as_i64().unwrap_or(0);
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
        if count("observedGeneration") < generation {
            return Err(still_processing(Some(&name)));
        }
        let allowed = count("disruptionsAllowed");
        if allowed < 0 {
            return Err(forbidden(&name, "pdb disruptions allowed is negative"));
        }
        if status["disruptedPods"]
            .as_object()
            .is_some_and(|m| m.len() > MAX_DISRUPTED_PODS)
        {
            return Err(forbidden(
                &name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            let why = format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                count("desiredHealthy"),
                count("currentHealthy")
            );
            return Err(too_many_requests(0, why));
        }
        if dry_run {
            return Ok(());
        }
        pdb["status"]["disruptionsAllowed"] = (allowed - 1).into();
        if allowed == 1 {
            set_allowed_condition(&mut pdb["status"], Timestamp::now());
        }
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][pod] = stamp(Timestamp::now()).into();
        if let Some(meta) = pdb["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        match api
            .store
            .update(&kv.key, to_value_bytes(&pdb), kv.mod_revision)
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => {
                kv = match api.store.get(&kv.key).await {
                    Ok(Some(kv)) => kv,
                    Ok(None) => return Err(ApiError::not_found("poddisruptionbudgets", &name)),
                    Err(err) => {
                        return Err(ApiError::from_store(err, "poddisruptionbudgets", &name));
                    }
                };
            }
            Err(err) => return Err(ApiError::from_store(err, "poddisruptionbudgets", &name)),
        }
    }
    let mut err = ApiError::internal(format!(
        "couldn't update PodDisruptionBudget {:?} due to conflicts",
        kv.key.rsplit('/').next().unwrap_or("")
    ));
    err.code = 504;
    err.reason = "Timeout";
    Err(err)
}

/// Marks the pod as a disruption target (upstream's
/// `addConditionAndDeletePod`), then deletes it the ordinary way.
async fn delete_pod(
    api: &Api,
    target: &Target<'_>,
    name: &str,
    key: &str,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    let mut options = options.clone();
    if !options.dry_run {
        let kv = match api.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Err(ApiError::not_found("pods", name)),
            Err(err) => return Err(ApiError::from_store(err, "pods", name)),
        };
        let mut pod = from_kv(&kv)?;
        let stale = |want: &Option<String>, field: &str| {
            want.as_deref()
                .is_some_and(|w| pod["metadata"][field].as_str() != Some(w))
        };
        if stale(&options.uid, "uid") || stale(&options.resource_version, "resourceVersion") {
            return Err(ApiError::conflict("pods", name));
        }
        if !deleting(&pod) && mark_disruption_target(&mut pod) {
            if let Some(meta) = pod["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            let revision = api
                .store
                .update(key, to_value_bytes(&pod), kv.mod_revision)
                .await
                .map_err(|err| ApiError::from_store(err, "pods", name))?;
            if options.resource_version.is_some() {
                options.resource_version = Some(revision.to_string());
            }
        }
    }
    delete::delete_named(api, target.rt, key, name, &options).await?;
    Ok(())
}

/// Sets the pod's `DisruptionTarget` condition; false if it was set.
fn mark_disruption_target(pod: &mut Value) -> bool {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let Some(conditions) = pod["status"]["conditions"].as_array_mut() else {
        return false;
    };
    let fresh = json!({
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastProbeTime": null,
        "lastTransitionTime": stamp(Timestamp::now()),
    });
    match conditions
        .iter_mut()
        .find(|c| c["type"] == "DisruptionTarget")
    {
        Some(c) if c["status"] == "True" && c["reason"] == "EvictionByEvictionAPI" => false,
        Some(c) => {
            *c = fresh;
            true
        }
        None => {
            conditions.push(fresh);
            true
        }
    }
}

fn stamp(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn success() -> Response<Body> {
    json_response(
        201,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }),
    )
}

fn forbidden(budget: &str, why: &str) -> ApiError {
    let mut err = ApiError::forbidden(format!(
        "poddisruptionbudgets.policy \"{budget}\" is forbidden: {why}"
    ));
    err.details = Some(("poddisruptionbudgets".into(), budget.to_owned()));
    err
}

/// 429 while the controller has not processed the budget's generation.
fn still_processing(budget: Option<&str>) -> ApiError {
    let why = format!(
        "The disruption budget {} is still being processed by the server.",
        budget.unwrap_or("")
    );
    too_many_requests(10, why)
}

/// Upstream's `NewTooManyRequests` with a `DisruptionBudget` cause.
fn too_many_requests(retry_after: u32, cause: String) -> ApiError {
    let mut err = ApiError::too_many_requests(REFUSED, retry_after);
    err.push_cause("DisruptionBudget", cause);
    err
}

/// `DisruptionAllowed` from `disruptionsAllowed`, as upstream's
/// `UpdateDisruptionAllowedCondition` (the disruption controller keeps it
/// the same way).
pub fn set_allowed_condition(status: &mut Value, now: Timestamp) {
    let (value, reason) = if status["disruptionsAllowed"].as_i64().unwrap_or(0) > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(status, value, reason, "", now);
}

/// `meta.SetStatusCondition` of a budget's `DisruptionAllowed`: the
/// transition time moves only when the status does; the condition's
/// `observedGeneration` is the status'.
pub fn set_condition(status: &mut Value, value: &str, reason: &str, message: &str, now: Timestamp) {
    let mut condition = json!({
        "type": "DisruptionAllowed",
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp(now),
    });
    let generation = &status["observedGeneration"];
    if !generation.is_null() {
        condition["observedGeneration"] = generation.clone();
    }
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    match conditions
        .iter_mut()
        .find(|c| c["type"] == "DisruptionAllowed")
    {
        Some(old) => {
            if old["status"] == value {
                condition["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = condition;
        }
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pods_budgets_guard() {
        let pod = |phase: &str, deleting: bool| {
            let mut p = json!({"metadata": {"name": "p"}, "status": {"phase": phase}});
            if deleting {
                p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            p
        };
        assert!(disrupts(&pod("Running", false)));
        assert!(disrupts(&pod("Unknown", false)));
        for ignored in [
            pod("Pending", false),
            pod("Succeeded", false),
            pod("Failed", false),
            pod("Running", true),
        ] {
            assert!(!disrupts(&ignored), "{ignored}");
        }
        assert!(enforce_version(&pod("Pending", false)));
        assert!(!enforce_version(&pod("Failed", false)));
    }

    #[test]
    fn empty_selectors_select_nothing() {
        let labels = json!({"app": "web"});
        assert!(selects(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"app": "db"}}), &labels));
        assert!(!selects(&json!({}), &labels));
        assert!(!selects(&Value::Null, &labels));
    }

    #[test]
    fn refusals_carry_the_budget_cause() {
        let err = too_many_requests(
            0,
            "The disruption budget b needs 2 healthy pods and has 2 currently".into(),
        );
        assert_eq!((err.code, err.reason), (429, "TooManyRequests"));
        assert_eq!(err.message, REFUSED);
        let status = serde_json::to_value(err.to_status()).expect("status");
        assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert!(status["details"]["causes"][0].get("field").is_none());
        let status = serde_json::to_value(still_processing(Some("b")).to_status()).expect("status");
        assert_eq!(status["details"]["retryAfterSeconds"], 10);
    }

    #[test]
    fn the_disruption_target_is_marked_once() {
        let mut pod = json!({"status": {"phase": "Running"}});
        assert!(mark_disruption_target(&mut pod));
        assert!(!mark_disruption_target(&mut pod));
        assert_eq!(
            pod["status"]["conditions"][0]["reason"],
            "EvictionByEvictionAPI"
        );
    }
}
