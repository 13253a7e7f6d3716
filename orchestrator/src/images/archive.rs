//! Reading an image archive — an OCI image layout or a `docker save`
//! archive, as a tar file — in one pass: a blocking thread walks the tar
//! (hashing each file) and hands its files to the async side, which
//! streams blobs into the content store; the small metadata files
//! (`index.json`, `manifest.json`, `oci-layout`) are kept in memory.
//!
//! Then [`images`] says which named images the archive holds:
//! - OCI layout: each descriptor of `index.json`, named by its
//!   `io.containerd.image.name` annotation, else its
//!   `org.opencontainers.image.ref.name` (a bare tag such as `1.0` is put
//!   after the archive's file name: `app.tar` → `app:1.0`);
//! - docker archive (`manifest.json` without an `index.json`): a Docker
//!   schema 2 manifest is written for each entry, named by its `RepoTags`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use containerd_client::types::Descriptor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::ImportError;
use super::containerd::{CHUNK, Containerd};

/// Metadata files kept in memory rather than stored as blobs.
const METADATA: [&str; 4] = ["index.json", "manifest.json", "oci-layout", "repositories"];
/// The largest metadata file read.
const METADATA_MAX: u64 = 16 << 20;

/// What the reading thread sends.
enum Item {
    /// A metadata file, whole.
    Metadata(String, Vec<u8>),
    /// A blob starts: its path in the archive.
    Start(String),
    /// The next bytes of the current blob.
    Data(Vec<u8>),
    /// The current blob ends: its `sha256:` digest and size.
    End(String, u64),
    /// The archive could not be read.
    Failed(String),
}

/// What an archive put into the content store.
pub struct Contents {
    /// Metadata files by name.
    pub metadata: HashMap<String, Vec<u8>>,
    /// Every other file: its digest and size, by path in the archive.
    pub blobs: HashMap<String, (String, i64)>,
}

/// Reads `path` and writes each of its files into the content store.
pub async fn store(path: &Path, containerd: &Containerd) -> Result<Contents, ImportError> {
    let (tx, mut rx) = mpsc::channel(8);
    let file = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        if let Err(message) = walk(&file, &tx) {
            let _ = tx.blocking_send(Item::Failed(message));
        }
    });
    let mut contents = Contents {
        metadata: HashMap::new(),
        blobs: HashMap::new(),
    };
    let mut current: Option<(String, Option<super::containerd::BlobWriter>)> = None;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Metadata(name, bytes) => {
                contents.metadata.insert(name, bytes);
            }
            Item::Start(entry) => {
                // An OCI blob's name is its digest: skip what is stored.
                let known = oci_digest(&entry);
                let skip = match &known {
                    Some(digest) => containerd.has(digest).await?,
                    None => false,
                };
                let writer = if skip {
                    None
                } else {
                    Some(containerd.writer().await)
                };
                current = Some((entry, writer));
            }
            Item::Data(data) => {
                if let Some((_, Some(writer))) = &mut current {
                    writer.write(data).await?;
                }
            }
            Item::End(digest, size) => {
                let Some((entry, writer)) = current.take() else {
                    continue;
                };
                if let Some(named) = oci_digest(&entry).filter(|d| *d != digest) {
                    return Err(ImportError::Archive(format!(
                        "{entry}: content digest is {digest}, not {named}"
                    )));
                }
                if let Some(writer) = writer {
                    writer.commit(&digest).await?;
                }
                let size = i64::try_from(size).unwrap_or(i64::MAX);
                contents.blobs.insert(entry, (digest, size));
            }
            Item::Failed(message) => return Err(ImportError::Archive(message)),
        }
    }
    reader
        .await
        .map_err(|e| ImportError::Archive(format!("reading thread: {e}")))?;
    Ok(contents)
}

/// `blobs/sha256/<hex>` → `sha256:<hex>`.
fn oci_digest(entry: &str) -> Option<String> {
    let hex = entry.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// The blocking walk over the tar file.
fn walk(path: &Path, tx: &mpsc::Sender<Item>) -> Result<(), String> {
    let send = |item| {
        tx.blocking_send(item)
            .map_err(|_| "import cancelled".to_owned())
    };
    let file = std::fs::File::open(path).map_err(|e| format!("opening: {e}"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(CHUNK, file));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let mut any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        any = true;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("entry name: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let size = entry.size();
        if METADATA.contains(&name.as_str()) {
            if size > METADATA_MAX {
                return Err(format!("{name}: {size} bytes is too large"));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            send(Item::Metadata(name, bytes))?;
            continue;
        }
        send(Item::Start(name.clone()))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut total = 0u64;
        loop {
            let mut chunk = vec![0; CHUNK];
            let n = read_full(&mut entry, &mut chunk).map_err(|e| format!("{name}: {e}"))?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            hash.update(&chunk);
            total += n as u64;
            send(Item::Data(chunk))?;
        }
        send(Item::End(
            format!("sha256:{}", hex(hash.finish().as_ref())),
            total,
        ))?;
    }
    if !any {
        return Err("empty or not a tar archive".into());
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A named image of the archive.
#[derive(Debug)]
pub struct Named {
    /// The image name as given (normalised later).
    pub name: String,
    /// Its manifest or index.
    pub target: Descriptor,
}

/// The named images in `contents`; docker archives get their manifests
/// written to the content store here.
pub async fn images(
    archive: &Path,
    contents: &Contents,
    containerd: &Containerd,
) -> Result<Vec<Named>, ImportError> {
    let bad = |what: &str, e: serde_json::Error| ImportError::Archive(format!("{what}: {e}"));
    if let Some(index) = contents.metadata.get("index.json") {
        let index: Value = serde_json::from_slice(index).map_err(|e| bad("index.json", e))?;
        let stem = archive
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut named = Vec::new();
        for manifest in index["manifests"].as_array().into_iter().flatten() {
            let annotations = &manifest["annotations"];
            let name = annotations["io.containerd.image.name"]
                .as_str()
                .or(annotations["org.opencontainers.image.ref.name"].as_str());
            let Some(name) = name else { continue };
            // A bare tag names an image after the archive.
            let name = if name.contains(['/', ':', '@']) {
                name.to_owned()
            } else {
                format!("{stem}:{name}")
            };
            named.push(Named {
                name,
                target: descriptor(manifest)?,
            });
        }
        if named.is_empty() {
            return Err(ImportError::Archive(
                "index.json names no image (no io.containerd.image.name or org.opencontainers.image.ref.name annotation)".into(),
            ));
        }
        return Ok(named);
    }
    let Some(manifest) = contents.metadata.get("manifest.json") else {
        return Err(ImportError::Archive(
            "neither an OCI image layout (index.json) nor a docker archive (manifest.json)".into(),
        ));
    };
    let entries: Value = serde_json::from_slice(manifest).map_err(|e| bad("manifest.json", e))?;
    let mut named = Vec::new();
    for entry in entries.as_array().into_iter().flatten() {
        let blob = |path: &str| {
            contents
                .blobs
                .get(path.trim_start_matches("./"))
                .cloned()
                .ok_or_else(|| {
                    ImportError::Archive(format!(
                        "manifest.json names {path}, which the archive lacks"
                    ))
                })
        };
        let config = blob(entry["Config"].as_str().unwrap_or_default())?;
        let mut layers = Vec::new();
        for layer in entry["Layers"].as_array().into_iter().flatten() {
            let (digest, size) = blob(layer.as_str().unwrap_or_default())?;
            // Docker's layer type: containerd detects a compressed one.
            layers.push(json!({"mediaType": DOCKER_LAYER, "digest": digest, "size": size}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config.0, "size": config.1},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| bad("manifest", e))?;
        let digest = format!(
            "sha256:{}",
            hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
        );
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if !containerd.has(&digest).await? {
            let mut writer = containerd.writer().await;
            writer.write(bytes).await?;
            writer.commit(&digest).await?;
            tracing::debug!(%digest, size, "docker manifest written");
        }
        let target = Descriptor {
            media_type: DOCKER_MANIFEST.into(),
            digest,
            size,
            annotations: HashMap::new(),
        };
        for tag in entry["RepoTags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str() {
                named.push(Named {
                    name: tag.to_owned(),
                    target: target.clone(),
                });
            }
        }
    }
    if named.is_empty() {
        return Err(ImportError::Archive(
            "manifest.json names no image (no RepoTags)".into(),
        ));
    }
    Ok(named)
}

/// Docker schema 2 media types.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// A descriptor from its JSON form.
pub fn descriptor(value: &Value) -> Result<Descriptor, ImportError> {
    let (Some(media_type), Some(digest), Some(size)) = (
        value["mediaType"].as_str(),
        value["digest"].as_str(),
        value["size"].as_i64(),
    ) else {
        return Err(ImportError::Archive(format!(
            "descriptor without mediaType, digest or size: {value}"
        )));
    };
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size,
        annotations: HashMap::new(),
    })
}

/// The archives in `dir`: `*.tar` files, sorted.
pub fn archives(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
        })
        .collect();
    files.sort();
    Ok(files)
}
