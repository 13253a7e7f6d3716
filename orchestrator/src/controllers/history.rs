//! ControllerRevisions: the template history of DaemonSets and
//! StatefulSets, as upstream's `pkg/controller/history` and the two
//! controllers' use of it.
//!
//! - A set's revision for template hash `h` is the ControllerRevision
//!   `<set>-<h>`: labels the template's plus `controller-revision-hash`
//!   (so the set's selector finds it, as `kubectl rollout history` lists
//!   them), a controller owner reference to the set, `data` the strategic
//!   merge patch that puts the template back
//!   (`{"spec": {"template": {..., "$patch": "replace"}}}`, what
//!   `kubectl rollout undo` sends) and `revision` a number.
//! - [`record`] makes the current template's revision the newest: created
//!   with the highest number plus one, or, when the template went back to
//!   an earlier one (an undo), that revision renumbered to the top.
//! - Then the history is trimmed to `spec.revisionHistoryLimit` (default
//!   10), oldest first, never removing the current revision nor one that a
//!   live pod still runs.
//!
//! Revisions of a deleted set go with it through the garbage collector
//! (their owner reference).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::client::Client;
use super::objects::{controlled_by, name, namespace, owner_ref, uid};
use super::reflector::{CONTROLLER_REVISIONS, Reflector, key_of, rv_of};

/// The label naming a pod's (and a revision's) template hash.
pub const HASH_LABEL: &str = "controller-revision-hash";
const DEFAULT_HISTORY_LIMIT: i64 = 10;

/// The name of `set`'s revision for template hash `hash`.
pub fn revision_name(set: &Value, hash: &str) -> String {
    // Upstream keeps the prefix short enough for a DNS subdomain.
    let prefix: String = name(set).chars().take(223).collect();
    format!("{prefix}-{hash}")
}

/// The revision data of `set`: a strategic merge patch replacing its
/// pod template.
pub fn patch_of(set: &Value) -> Value {
    let mut template = set["spec"]["template"].clone();
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".into(), "replace".into());
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision holds.
pub fn template_of(revision: &Value) -> Value {
    let mut template = revision["data"]["spec"]["template"].clone();
    if let Some(t) = template.as_object_mut() {
        t.remove("$patch");
    }
    template
}

/// The revisions `set` controls, oldest (lowest number) first.
pub fn owned(revisions: &Reflector, set: &Value) -> Vec<Arc<Value>> {
    let mut out: Vec<Arc<Value>> = revisions
        .in_namespace(namespace(set))
        .into_iter()
        .filter(|r| controlled_by(r, uid(set)))
        .collect();
    out.sort_by_key(|r| (r["revision"].as_i64().unwrap_or(0), name(r).to_owned()));
    out
}

/// A new revision object for `set`'s current template.
fn new_revision(set: &Value, kind: &str, hash: &str, number: i64) -> Value {
    let mut labels = set["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[HASH_LABEL] = hash.into();
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision_name(set, hash),
            "namespace": namespace(set),
            "labels": labels,
            "ownerReferences": [owner_ref("apps/v1", kind, set)],
        },
        "data": patch_of(set),
        "revision": number,
    })
}

/// Makes `set`'s revision for template hash `hash` the newest, then trims
/// the history, keeping revisions named in `in_use`. Returns the highest
/// resourceVersion written (0 if nothing was), for the caller to wait on.
pub async fn record(
    client: &Client,
    revisions: &Reflector,
    set: &Value,
    kind: &str,
    hash: &str,
    in_use: &HashSet<String>,
) -> Result<i64, String> {
    let history = owned(revisions, set);
    let current = revision_name(set, hash);
    let top = history
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .max()
        .unwrap_or(0);
    let mut last_rv = 0;
    match history.iter().find(|r| name(r) == current) {
        Some(r) if r["revision"].as_i64() == Some(top) => {}
        Some(r) => {
            // Back to an earlier template: that revision becomes the newest.
            let path = CONTROLLER_REVISIONS.path(&key_of(r));
            let patch = json!({"revision": top + 1});
            let renumbered = client
                .merge_patch(&path, &patch)
                .await
                .map_err(|e| format!("renumbering revision {current}: {e}"))?;
            last_rv = rv_of(&renumbered);
        }
        None => {
            let path = CONTROLLER_REVISIONS.collection(Some(namespace(set)));
            let revision = new_revision(set, kind, hash, top + 1);
            match client.post(&path, &revision).await {
                Ok(created) => last_rv = rv_of(&created),
                // Another worker made it meanwhile; the next sync sees it.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(format!("creating revision {current}: {e}")),
            }
        }
    }
    let limit = set["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0) as usize;
    let old: Vec<&Arc<Value>> = history
        .iter()
        .filter(|r| name(r) != current && !in_use.contains(name(r)))
        .collect();
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        match client
            .delete(&CONTROLLER_REVISIONS.path(&key_of(r)), &Value::Null)
            .await
        {
            Ok(deleted) => last_rv = last_rv.max(rv_of(&deleted)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(format!("deleting revision {}: {e}", name(r))),
        }
    }
    Ok(last_rv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Value {
        json!({"metadata": {"name": "web", "namespace": "t", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
    }

    #[test]
    fn a_revision_holds_a_patch_that_replaces_the_template() {
        let r = new_revision(&set(), "DaemonSet", "abc", 3);
        assert_eq!(name(&r), "web-abc");
        assert_eq!(r["revision"], 3);
        assert_eq!(r["metadata"]["labels"]["app"], "web");
        assert_eq!(r["metadata"]["labels"][HASH_LABEL], "abc");
        assert_eq!(r["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        assert_eq!(r["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(r["data"]["spec"]["template"]["$patch"], "replace");
        assert_eq!(template_of(&r), set()["spec"]["template"]);
    }

    #[test]
    fn long_names_keep_a_dns_sized_prefix() {
        let mut s = set();
        s["metadata"]["name"] = "x".repeat(300).into();
        assert_eq!(revision_name(&s, "h").len(), 225);
    }
}
