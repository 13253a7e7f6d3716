//! Auto-deployed manifests (K3s' manifests directory): every `*.yaml`,
//! `*.yml` and `*.json` file in a directory — on a device, the CAIRN
//! partition's `manifests/` — is applied once the server answers, and again
//! whenever its content changes.
//!
//! - The directory is polled (content hashes every few seconds): simple, and it
//!   works on FAT, whose timestamps are coarse and which has no inotify for
//!   changes made by another machine.
//! - Documents go through the server's own HTTPS API as its admin
//!   ([`client`]), so authentication, validation, defaulting and CRDs apply
//!   exactly as for kubectl; [`apply`] creates or patches each object.
//! - A file may hold several YAML documents and `List`s. Within a round,
//!   CustomResourceDefinitions go first, then Namespaces, then the rest; a
//!   document whose kind is not served yet (its CRD was just created, or is
//!   still to come) is retried.
//! - A bad file (YAML error, unknown kind, a 422 from validation) gives one
//!   log line naming the file and the document; the other files and
//!   documents are still applied, and a file that failed for a reason that
//!   may pass (unknown kind, server busy) is retried on every poll.
//! - Removing a file deletes nothing; what was applied is logged and kept
//!   in each object's `kubectl.kubernetes.io/last-applied-configuration`.
//!
//! Current limitations: no `generateName`; lists inside objects are
//! replaced whole on update (a merge patch, not server-side apply, which
//! this server does not serve yet).

pub mod apply;
pub mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use apply::{Applier, ApplyError, Outcome};
use client::Client;

/// How long a round waits for the kinds of CRDs it has just created.
const ESTABLISH: Duration = Duration::from_secs(10);

/// One document of a file, ready to apply.
#[derive(Debug)]
pub struct Document {
    /// 1-based position in its file (`List` items share their list's).
    pub index: usize,
    /// The object.
    pub object: Value,
}

/// The documents of one manifest file, `List`s expanded and empty
/// documents skipped. A YAML error rejects the whole file, so that a file
/// is applied entirely or not at all when it does not parse.
pub fn parse(text: &str) -> Result<Vec<Document>, String> {
    let mut documents = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(doc).map_err(|e| format!("document {index}: {e}"))?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map.get("kind").and_then(Value::as_str) == Some("List")
                    && map.get("items").is_some_and(Value::is_array) =>
            {
                let items = map["items"].as_array().into_iter().flatten();
                documents.extend(items.map(|item| Document {
                    index,
                    object: item.clone(),
                }));
            }
            Value::Object(_) => documents.push(Document {
                index,
                object: value,
            }),
            other => {
                return Err(format!(
                    "document {index}: expected a mapping (a Kubernetes object), found {}",
                    kind_of(&other)
                ));
            }
        }
    }
    Ok(documents)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "a sequence",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        _ => "something else",
    }
}

/// What is known of one file.
#[derive(Debug, Default)]
struct FileState {
    /// SHA-256 of the content last applied (or tried).
    hash: Vec<u8>,
    /// Whether the last round left something that may pass later.
    retry: bool,
    /// The errors the last round logged, so a retry repeats none.
    errors: Vec<String>,
}

/// The manifest files in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json")
                })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Watches `dir` and applies its manifests to the server at `addr`, whose
/// data dir `data_dir` holds the admin certificate, reading it every
/// `poll`. Runs until dropped.
pub async fn run(dir: PathBuf, data_dir: PathBuf, addr: SocketAddr, poll: Duration) {
    let client = loop {
        // The PKI appears when the server starts; its absence is transient.
        match crate::probe::admin_tls_config(&data_dir) {
            Ok(tls) => break Client::new(addr, tls),
            Err(error) => tracing::debug!(%error, "manifests: waiting for the admin certificate"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    while let Err(error) = client.get("/readyz").await {
        tracing::debug!(%error, "manifests: waiting for the API");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::info!(dir = %dir.display(), "applying manifests");
    let mut applier = Applier::new(client);
    let mut state: HashMap<PathBuf, FileState> = HashMap::new();
    let mut missing_logged = false;
    loop {
        match manifest_files(&dir) {
            Ok(files) => {
                missing_logged = false;
                round(&mut applier, &mut state, files).await;
            }
            Err(error) if !missing_logged => {
                missing_logged = true;
                tracing::info!(dir = %dir.display(), %error, "no manifests directory");
            }
            Err(_) => {}
        }
        tokio::time::sleep(poll).await;
    }
}

/// One poll: reads every file, applies the changed and the retryable ones.
async fn round(
    applier: &mut Applier,
    state: &mut HashMap<PathBuf, FileState>,
    files: Vec<PathBuf>,
) {
    // (file, document index, object), for the files to apply this round.
    let mut batch: Vec<(PathBuf, usize, Value)> = Vec::new();
    let mut touched: Vec<PathBuf> = Vec::new();
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "manifest not read");
                continue;
            }
        };
        let hash = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        let entry = state.entry(file.clone()).or_default();
        if entry.hash == hash && !entry.retry {
            continue;
        }
        let changed = entry.hash != hash;
        entry.hash = hash;
        entry.retry = false;
        if changed {
            entry.errors.clear();
        }
        let text = String::from_utf8_lossy(&bytes);
        match parse(&text) {
            Ok(docs) => {
                touched.push(file.clone());
                batch.extend(docs.into_iter().map(|d| (file.clone(), d.index, d.object)));
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "manifest not applied: invalid YAML");
            }
        }
    }
    if batch.is_empty() {
        return;
    }
    // CRDs first, then Namespaces, then the rest; stable within a class.
    let order = |object: &Value| match object.get("kind").and_then(Value::as_str) {
        Some("CustomResourceDefinition") => 0,
        Some("Namespace") => 1,
        _ => 2,
    };
    batch.sort_by_key(|(_, _, object)| order(object));
    let mut crd_applied = false;
    let mut errors: HashMap<PathBuf, Vec<(String, bool)>> = HashMap::new();
    for (file, index, object) in &batch {
        if order(object) > 0 && crd_applied {
            applier.forget_discovery();
            crd_applied = false;
        }
        let result = apply_waiting(
            applier,
            object,
            order(object) > 0 && batch.iter().any(|(_, _, o)| order(o) == 0),
        )
        .await;
        match result {
            Ok((outcome, label)) => {
                if order(object) == 0 && outcome != Outcome::Unchanged {
                    crd_applied = true;
                }
                let action = match outcome {
                    Outcome::Created => "created",
                    Outcome::Updated => "updated",
                    Outcome::Unchanged => "unchanged",
                };
                tracing::info!(file = %file.display(), document = index, object = %label, action, "manifest applied");
            }
            Err(error) => {
                let message = format!("document {index}: {error}");
                errors
                    .entry(file.clone())
                    .or_default()
                    .push((message, error.retryable()));
            }
        }
    }
    for file in touched {
        let Some(entry) = state.get_mut(&file) else {
            continue;
        };
        let failed = errors.remove(&file).unwrap_or_default();
        entry.retry = failed.iter().any(|(_, retry)| *retry);
        let messages: Vec<String> = failed.into_iter().map(|(m, _)| m).collect();
        for message in &messages {
            if entry.errors.contains(message) {
                tracing::debug!(file = %file.display(), error = %message, "manifest still not applied");
            } else {
                tracing::warn!(file = %file.display(), error = %message, "manifest not applied");
            }
        }
        entry.errors = messages;
    }
}

/// Applies `object`; when `crds_in_round`, waits up to [`ESTABLISH`] for
/// its kind to be served (a CRD of the same round defines it).
async fn apply_waiting(
    applier: &mut Applier,
    object: &Value,
    crds_in_round: bool,
) -> Result<(Outcome, String), ApplyError> {
    let deadline = tokio::time::Instant::now() + ESTABLISH;
    loop {
        match applier.apply(object).await {
            Err(ApplyError::UnknownKind { .. })
                if crds_in_round && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
                applier.forget_discovery();
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_errors() {
        let docs = parse(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n",
        )
        .expect("parses");
        let names: Vec<_> = docs
            .iter()
            .map(|d| (d.index, d.object["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(names, [(1, "a"), (3, "b"), (3, "c")]);
        let json = parse(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}"#)
            .expect("json is yaml");
        assert_eq!(json.len(), 1);
        let err =
            parse("apiVersion: v1\nkind: ConfigMap\n---\nkind: [unclosed\n").expect_err("bad");
        assert!(err.starts_with("document 2:"), "{err}");
        assert!(err.contains("line"), "{err}");
        let err = parse("- a\n- b\n").expect_err("a sequence");
        assert!(err.contains("expected a mapping"), "{err}");
    }
}
