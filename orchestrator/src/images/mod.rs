//! Air-gapped images: every `*.tar` in a directory — on a device, the
//! CAIRN partition's `images/` — imported into containerd's `k8s.io`
//! namespace, so that pods run them with `imagePullPolicy: Never` (or
//! `IfNotPresent`) and no network.
//!
//! An archive is an OCI image layout or a `docker save` archive
//! ([`archive`]). Importing one, through containerd's services
//! ([`containerd`]; containerd 1.6 has no Transfer service):
//! 1. its files are streamed into the content store, under a lease;
//! 2. each named image's manifest is found (in an index: the one for this
//!    machine's platform), and the garbage-collection labels containerd's
//!    own import sets are put on the index, manifest, config and layers;
//! 3. its layers are unpacked into the snapshotter CRI uses (`overlayfs`):
//!    a snapshot per layer, named by its chain ID, filled by the diff
//!    service;
//! 4. the image record is created (or repointed) under its normalised
//!    name (`busybox` → `docker.io/library/busybox:latest`, as CRI looks
//!    it up), which also tells CRI about it.
//!
//! A corrupt or unreadable archive is logged with its file name and
//! skipped; the others still import. An image already imported is
//! recognised by its digests and costs little more than reading its file.

pub mod archive;
pub mod containerd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::types::Descriptor;
use serde_json::Value;

use containerd::Containerd;

/// What stops an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A containerd call failed.
    #[error("containerd {what}: {message}")]
    Containerd {
        /// The step.
        what: &'static str,
        /// containerd's answer.
        message: String,
    },
    /// The archive is not a readable image archive.
    #[error("{0}")]
    Archive(String),
    /// The images directory could not be listed.
    #[error("{path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace (CRI's is `k8s.io`).
    pub namespace: String,
    /// The snapshotter layers are unpacked into (CRI's, `overlayfs`).
    pub snapshotter: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
        }
    }
}

/// The result of one archive: the names it imported.
pub type Imported = Result<Vec<String>, ImportError>;

/// Imports every `*.tar` of `dir`, in name order; one result per file.
/// A missing directory imports nothing.
pub async fn import_dir(
    dir: &Path,
    options: &Options,
) -> Result<Vec<(PathBuf, Imported)>, ImportError> {
    let files = match archive::archives(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImportError::Dir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let mut containerd = Containerd::connect(&options.socket, &options.namespace).await?;
    let mut results = Vec::new();
    for file in files {
        let result = import_file(&mut containerd, &file, options).await;
        match &result {
            Ok(names) => tracing::info!(file = %file.display(), images = ?names, "images imported"),
            Err(error) => tracing::warn!(file = %file.display(), %error, "image archive skipped"),
        }
        results.push((file, result));
    }
    Ok(results)
}

/// Waits (up to `patience`) for containerd to answer, then imports `dir`.
/// For `cairn server`: logs, never fails.
pub async fn import_at_start(dir: PathBuf, options: Options, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match Containerd::connect(&options.socket, &options.namespace).await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(dir = %dir.display(), %error, "images not imported: containerd does not answer");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    if let Err(error) = import_dir(&dir, &options).await {
        tracing::warn!(%error, "images not imported");
    }
}

/// Imports one archive; the normalised names of its images.
pub async fn import_file(containerd: &mut Containerd, file: &Path, options: &Options) -> Imported {
    containerd.lease().await?;
    let result = async {
        let contents = archive::store(file, containerd).await?;
        let named = archive::images(file, &contents, containerd).await?;
        let mut names = Vec::new();
        for image in named {
            let name = normalize(&image.name).ok_or_else(|| {
                ImportError::Archive(format!("{:?} is not an image name", image.name))
            })?;
            unpack(containerd, &image.target, &options.snapshotter).await?;
            containerd.set_image(&name, image.target).await?;
            names.push(name);
        }
        Ok(names)
    }
    .await;
    containerd.release().await;
    result
}

/// containerd's name for this machine's architecture.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

async fn read_json(containerd: &Containerd, digest: &str) -> Result<Value, ImportError> {
    let bytes = containerd.read(digest).await?;
    serde_json::from_slice(&bytes).map_err(|e| ImportError::Archive(format!("{digest}: {e}")))
}

/// Finds this platform's manifest under `target`, labels what it
/// references, and unpacks its layers.
async fn unpack(
    containerd: &Containerd,
    target: &Descriptor,
    snapshotter: &str,
) -> Result<(), ImportError> {
    let mut manifest = target.clone();
    while is_index(&manifest.media_type) {
        let index = read_json(containerd, &manifest.digest).await?;
        let entries: Vec<&Value> = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let labels = entries
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                Some((
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    m["digest"].as_str()?.to_owned(),
                ))
            })
            .collect();
        containerd.label(&manifest.digest, labels).await?;
        let ours = |m: &&&Value| {
            m["platform"]["os"].as_str() == Some("linux")
                && m["platform"]["architecture"].as_str() == Some(goarch())
        };
        let chosen = entries
            .iter()
            .find(ours)
            .or_else(|| entries.iter().find(|m| m["platform"].is_null()))
            .ok_or_else(|| {
                ImportError::Archive(format!(
                    "{}: no manifest for linux/{}",
                    manifest.digest,
                    goarch()
                ))
            })?;
        manifest = archive::descriptor(chosen)?;
    }
    let body = read_json(containerd, &manifest.digest).await?;
    let config = archive::descriptor(&body["config"])?;
    let layers = body["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(archive::descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels: HashMap<String, String> = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_owned(),
        config.digest.clone(),
    )]);
    for (i, layer) in layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    containerd.label(&manifest.digest, labels).await?;
    let image_config = read_json(containerd, &config.digest).await?;
    let diff_ids: Vec<&str> = image_config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if diff_ids.len() != layers.len() {
        return Err(ImportError::Archive(format!(
            "{}: {} layers but {} diff_ids in the config",
            manifest.digest,
            layers.len(),
            diff_ids.len()
        )));
    }
    let mut parent = String::new();
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let chain = chain_id(&parent, diff_id);
        if !containerd.has_snapshot(snapshotter, &chain).await? {
            containerd
                .unpack_layer(snapshotter, layer, &parent, &chain)
                .await?;
        }
        let uncompressed = HashMap::from([(
            "containerd.io/uncompressed".to_owned(),
            (*diff_id).to_owned(),
        )]);
        containerd.label(&layer.digest, uncompressed).await?;
        parent = chain;
    }
    if !parent.is_empty() {
        let snapshot = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            parent,
        )]);
        containerd.label(&config.digest, snapshot).await?;
    }
    Ok(())
}

/// The OCI chain ID of a layer: its diff ID on top of its parent's chain.
pub fn chain_id(parent: &str, diff_id: &str) -> String {
    if parent.is_empty() {
        return diff_id.to_owned();
    }
    let text = format!("{parent} {diff_id}");
    format!(
        "sha256:{}",
        archive::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
    )
}

/// A reference in the form CRI looks images up by: a registry domain
/// (`docker.io` when the first component is not one), `library/` for
/// official Docker Hub images, and `:latest` when there is neither tag
/// nor digest. `None` for what is not a reference.
pub fn normalize(name: &str) -> Option<String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "._-/:@+".contains(c);
    if name.is_empty()
        || !name.chars().all(valid)
        || name.starts_with('/')
        || name.ends_with(['/', ':'])
    {
        return None;
    }
    let (path, digest) = match name.split_once('@') {
        Some((path, digest)) => (path, Some(digest)),
        None => (name, None),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (path, None),
    };
    let (domain, rest) = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_owned())
        }
        Some(_) => ("docker.io", repo.to_owned()),
        None => ("docker.io", format!("library/{repo}")),
    };
    if rest.is_empty() || rest.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = format!("{domain}/{rest}");
    match (tag, digest) {
        (Some(tag), _) => out = format!("{out}:{tag}"),
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out = format!("{out}@{digest}");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_as_cri_looks_them_up() {
        let n = |s| normalize(s);
        assert_eq!(
            n("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            n("busybox:1.36").as_deref(),
            Some("docker.io/library/busybox:1.36")
        );
        assert_eq!(n("me/app:v1").as_deref(), Some("docker.io/me/app:v1"));
        assert_eq!(
            n("registry.local:5000/app").as_deref(),
            Some("registry.local:5000/app:latest")
        );
        assert_eq!(n("localhost/app:2").as_deref(), Some("localhost/app:2"));
        assert_eq!(
            n("ghcr.io/a/b@sha256:abc").as_deref(),
            Some("ghcr.io/a/b@sha256:abc")
        );
        for bad in ["", "Upper/Case", "a b", "app:", "/x"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        assert_eq!(chain_id("", "sha256:a"), "sha256:a");
        // sha256("sha256:a sha256:b")
        let expected = archive::hex(
            ring::digest::digest(&ring::digest::SHA256, b"sha256:a sha256:b").as_ref(),
        );
        assert_eq!(
            chain_id("sha256:a", "sha256:b"),
            format!("sha256:{expected}")
        );
    }
}
