//! `cairn import-images` against a real containerd (1.6, from Debian, as
//! on the device) started by the test with its own root, state and socket:
//! an OCI image layout and a docker-save archive built here (a one-file
//! layer, no network) become named images in the `k8s.io` namespace,
//! unpacked into the overlayfs snapshotter, surviving a garbage
//! collection; a corrupt archive is skipped with its name in the error
//! while the others import; importing again changes nothing.
//!
//! Needs root (containerd mounts overlayfs) and `containerd`/`ctr` on the
//! PATH (`make deps` installs them); without them the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("containerd dir");
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{r}/containerd.sock\"\n",
            r = root.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt install containerd; make deps) must be on the PATH");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount whatever containerd left mounted under its root.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .stderr(Stdio::null())
            .status();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!(
        "sha256:{}",
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A tar of `(path, content)` files.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, *content)
            .expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A one-layer image: (layer, config) bytes.
fn image_parts() -> (Vec<u8>, Vec<u8>) {
    let layer = tar_of(&[("hello.txt", b"hello from an air-gapped layer\n")]);
    let config = serde_json::to_vec(&json!({
        "architecture": match std::env::consts::ARCH { "aarch64" => "arm64", _ => "amd64" },
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .expect("config");
    (layer, config)
}

fn oci_archive(name: &str) -> Vec<u8> {
    let (layer, config) = image_parts();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))
    .expect("index");
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha256(b)[7..]);
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#),
        ("index.json", &index),
        (&blob(&manifest), &manifest),
        (&blob(&config), &config),
        (&blob(&layer), &layer),
    ])
}

fn docker_archive(tags: &[&str]) -> Vec<u8> {
    let (layer, config) = image_parts();
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": ["0123abcd/layer.tar"],
    }]))
    .expect("manifest.json");
    tar_of(&[
        (&config_name, &config),
        ("0123abcd/layer.tar", &layer),
        ("manifest.json", &manifest),
    ])
}

fn import(containerd: &Containerd, paths: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("import-images")
        .arg("--container-runtime-endpoint")
        .arg(containerd.socket())
        .args(paths)
        .env("NO_COLOR", "1")
        .output()
        .expect("run cairn import-images")
}

#[test]
fn archives_become_unpacked_images() {
    let containerd = Containerd::start();
    let images = tempfile::tempdir().expect("images dir");
    let dir = images.path();
    std::fs::write(dir.join("app.tar"), oci_archive("1.0")).expect("oci");
    std::fs::write(
        dir.join("named.tar"),
        oci_archive("registry.local:5000/tools/hello:v2"),
    )
    .expect("oci");
    std::fs::write(
        dir.join("docker.tar"),
        docker_archive(&["hello:docker", "example.com/hello:spare"]),
    )
    .expect("docker");
    std::fs::write(dir.join("corrupt.tar"), b"this is not a tar archive at all").expect("corrupt");
    std::fs::write(dir.join("README.txt"), b"not an archive").expect("other");

    let out = import(&containerd, &[dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a corrupt archive is a failure: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("corrupt.tar") && l.contains("skipped")),
        "{stderr}"
    );
    let listed = containerd.ctr_ok(&["images", "ls", "-q"]);
    let names: Vec<&str> = listed.lines().collect();
    for name in [
        "docker.io/library/app:1.0",
        "registry.local:5000/tools/hello:v2",
        "docker.io/library/hello:docker",
        "example.com/hello:spare",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}\n{stderr}");
    }
    assert_eq!(names.len(), 4, "{names:?}");

    // Unpacked: the layer's chain ID (its diff ID: one layer) is a
    // committed overlayfs snapshot holding the file.
    let (layer, _) = image_parts();
    let chain = sha256(&layer);
    let snapshots = containerd.ctr_ok(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert!(
        snapshots
            .lines()
            .any(|l| l.starts_with(&chain) && l.contains("Committed")),
        "{snapshots}"
    );
    let found = walk(
        &containerd
            .dir
            .path()
            .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots"),
    )
    .into_iter()
    .any(|p| {
        p.ends_with("fs/hello.txt")
            && std::fs::read(&p).is_ok_and(|b| b == b"hello from an air-gapped layer\n")
    });
    assert!(found, "hello.txt not unpacked");

    // A synchronous garbage collection (removing a tag) keeps what the
    // remaining images reference: content complete, snapshot there, and
    // the import's lease is gone.
    containerd.ctr_ok(&["images", "rm", "--sync", "example.com/hello:spare"]);
    let check = containerd.ctr_ok(&["images", "check"]);
    for line in check.lines().skip(1) {
        assert!(line.contains("complete"), "{check}");
    }
    assert!(
        containerd
            .ctr_ok(&["snapshots", "--snapshotter", "overlayfs", "ls"])
            .contains(&chain)
    );
    assert_eq!(containerd.ctr_ok(&["leases", "ls", "-q"]).trim(), "");

    // Again: the same images, nothing fails.
    let out = import(
        &containerd,
        &[&dir.join("app.tar"), &dir.join("docker.tar")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = containerd.ctr_ok(&["images", "ls", "-q"]);
    assert_eq!(again.lines().count(), 4, "{again}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
