//! The test's own runtime: containerd 1.6 with CRI and runc in a
//! temporary directory, a busybox image built from the host's static
//! busybox, and pods started directly through CRI (a host-network
//! sandbox: no CNI) with the pods part's layout. To be replaced by the
//! shared harness (`tests/common/cri.rs`) and the pods loop once merged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn::agent::cri::{Cri, api};
use serde_json::json;

use super::{IMAGE, POD};

pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("containerd dir");
        let r = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("net.d")).expect("net.d");
        let config = format!(
            r#"version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{r}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/net.d"
"#
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd must be on the PATH");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first: their shims outlive containerd otherwise.
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "tasks", "ls", "-q"])
            .output()
            .map(|out| {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = Command::new("ctr")
                        .arg("--address")
                        .arg(self.socket())
                        .args(["-n", "k8s.io", "tasks", "kill", "-s", "KILL", id])
                        .output();
                }
            });
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o '{}[^ ]*' /proc/mounts | sort -r | xargs -r umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A layer with the host's static busybox as `/bin/busybox`, applet links
/// and the usual directories.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "www/", "proc/", "sys/", "dev/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, dir, &[][..]).expect("dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("busybox");
    let index = b"hello from httpd in the pod\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(index.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, "www/index.html", &index[..])
        .expect("index");
    for applet in [
        "sh", "cat", "wc", "tar", "httpd", "sleep", "echo", "ls", "mkdir", "hostname", "rm",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    tar.into_inner().expect("tar")
}

fn busybox_archive() -> Vec<u8> {
    let layer = busybox_layer();
    let config = serde_json::to_vec(&json!({
        "architecture": match std::env::consts::ARCH { "aarch64" => "arm64", _ => "amd64" },
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .expect("config");
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
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": IMAGE},
        }],
    }))
    .expect("index");
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha256(b)[7..]);
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in [
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index),
        (blob(&manifest), manifest.clone()),
        (blob(&config), config.clone()),
        (blob(&layer), layer.clone()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, path, &content[..]).expect("append");
    }
    tar.into_inner().expect("tar")
}

pub fn import_image(containerd: &Containerd) {
    let file = containerd.dir.path().join("busybox.tar");
    std::fs::write(&file, busybox_archive()).expect("archive");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("import-images")
        .arg("--container-runtime-endpoint")
        .arg(containerd.socket())
        .arg(&file)
        .output()
        .expect("cairn import-images");
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sandbox_config(uid: &str, log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: POD.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir
            .join(format!("default_{POD}_{uid}"))
            .display()
            .to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    // NODE: the host's network, so no CNI is needed.
                    network: api::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts container `name` (attempt `attempt`) running `script`.
pub async fn start_container(
    cri: &mut Cri,
    sandbox: &str,
    config: &api::PodSandboxConfig,
    name: &str,
    attempt: u32,
    script: &str,
) -> String {
    let created = cri
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: name.into(),
                    attempt,
                }),
                image: Some(api::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into(), "-c".into(), script.into()],
                envs: vec![api::KeyValue {
                    key: "PATH".into(),
                    value: "/bin".into(),
                }],
                log_path: format!("{name}/{attempt}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(api::StartContainerRequest {
            container_id: created.clone(),
        })
        .await
        .expect("StartContainer");
    created
}

pub async fn wait_exited(cri: &mut Cri, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = cri
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
            .state;
        if state == api::ContainerState::ContainerExited as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
