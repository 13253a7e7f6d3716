//! OCI image archives made from files on the build machine: the pod
//! sandbox ("pause") image the root filesystem carries, and test images.
//!
//! The archive is an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) in a tar, the format `ctr import` and Cairn's
//! air-gapped import read, with one uncompressed layer (the root
//! filesystem's squashfs compresses it). Every timestamp is zero and every
//! owner root, so the same inputs give the same digests.

use crate::arch::Arch;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// A file of the image's single layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Path inside the image, without a leading `/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Contents, or the target when [`File::link`] is set.
    pub data: Vec<u8>,
    /// A symbolic link to this target instead of a regular file.
    pub link: Option<String>,
}

impl File {
    /// A regular file.
    pub fn regular(path: impl Into<String>, mode: u32, data: Vec<u8>) -> File {
        File {
            path: path.into(),
            mode,
            data,
            link: None,
        }
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> File {
        File {
            path: path.into(),
            mode: 0o777,
            data: Vec::new(),
            link: Some(target.into()),
        }
    }
}

/// A one-layer image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Full reference (`localhost/cairn/pause:1`), recorded as
    /// `io.containerd.image.name`.
    pub name: String,
    pub arch: Arch,
    /// The container's entrypoint.
    pub entrypoint: Vec<String>,
    pub files: Vec<File>,
}

/// Writes `image` as an OCI image layout tar to `out`.
pub fn write(image: &Image, out: impl Write) -> io::Result<()> {
    let layer = layer_tar(&image.files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": image.arch.debian(),
        "os": "linux",
        "config": { "Entrypoint": image.entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))?;
    let tag = image.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let mut manifest_descriptor =
        descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    manifest_descriptor["annotations"] = json!({
        "io.containerd.image.name": image.name,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_descriptor],
    }))?;

    let mut tar = tar::Builder::new(out);
    append(
        &mut tar,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append(&mut tar, "index.json", 0o644, &index)?;
    for blob in [&manifest, &config, &layer] {
        let path = format!("blobs/sha256/{}", hex(&Sha256::digest(blob)));
        append(&mut tar, &path, 0o644, blob)?;
    }
    tar.into_inner()?.flush()
}

/// The layer: the files, with the directories above them.
fn layer_tar(files: &[File]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let mut parent = std::path::Path::new(&file.path).parent();
        let mut chain = Vec::new();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            chain.push(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
        for dir in chain.into_iter().rev() {
            if dirs.insert(dir.clone()) {
                let mut header = header(0o755, 0);
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, format!("{dir}/"), io::empty())?;
            }
        }
        match &file.link {
            Some(target) => {
                let mut header = header(file.mode, 0);
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, &file.path, target)?;
            }
            None => append(&mut tar, &file.path, file.mode, &file.data)?,
        }
    }
    tar.into_inner()
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut header = header(mode, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn header(mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": sha256(blob), "size": blob.len() })
}

fn sha256(blob: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(blob)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            name: "localhost/cairn/pause:1".into(),
            arch: Arch::X86_64,
            entrypoint: vec!["/pause".into()],
            files: vec![
                File::regular("usr/bin/pause", 0o755, b"\x7fELF".to_vec()),
                File::symlink("usr/bin/sleep", "pause"),
            ],
        }
    }

    fn entries(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(archive);
        let mut out = std::collections::BTreeMap::new();
        for entry in tar.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).expect("read");
            out.insert(path, data);
        }
        out
    }

    #[test]
    fn layout_links_index_manifest_config_and_layer_by_digest() {
        let mut archive = Vec::new();
        write(&image(), &mut archive).expect("write");
        let files = entries(&archive);
        let blob = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            let data = files[&format!("blobs/sha256/{hex}")].clone();
            assert_eq!(sha256(&data), digest, "blob content matches its name");
            data
        };
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("index");
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/cairn/pause:1"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "1"
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(entry["digest"].as_str().expect("digest")))
                .expect("manifest");
        let config: serde_json::Value = serde_json::from_slice(&blob(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        ))
        .expect("config");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        let layer = blob(
            manifest["layers"][0]["digest"]
                .as_str()
                .expect("layer digest"),
        );
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&layer));
        let layer_files = entries(&layer);
        assert_eq!(layer_files["usr/bin/pause"], b"\x7fELF");
        assert!(
            layer_files.contains_key("usr/"),
            "parent directories are in the layer"
        );
    }

    #[test]
    fn same_inputs_same_bytes() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write(&image(), &mut a).expect("write");
        write(&image(), &mut b).expect("write");
        assert_eq!(a, b);
    }
}
