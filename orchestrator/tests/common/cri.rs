//! The node agent's host harness: a real containerd 1.6 with runc and its
//! CRI plugin ON ([`CriRuntime`]), each test with its own root, state,
//! socket, CNI configuration (a bridge and subnet of its own, so tests run
//! in parallel) and pod log directory; test images built here from the
//! machine's static busybox (Debian busybox-static) into OCI archives
//! ([`busybox_archive`]) and imported with the crate's own
//! [`cairn::images`] into the `k8s.io` namespace CRI reads.
//!
//! Needs root (containerd mounts overlayfs, CNI makes bridges), and
//! `containerd`, `runc`, the CNI plugins in `/usr/lib/cni` and
//! `/bin/busybox` (`make deps`); without them the tests fail.
//!
//! The API side is `cluster.rs`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cairn::agent::cri::{Cri, api};
use serde_json::{Value, json};

/// The busybox test image: `sh`, `sleep`, `httpd`, `cat`, `env`... and an
/// index page in `/www`.
pub const BUSYBOX: &str = "localhost/test/busybox:1";
/// The test sandbox image (busybox `sleep`ing) until Cairn's pause is
/// built by the lead; its name is [`CriRuntime::sandbox_image`].
pub const SANDBOX: &str = "localhost/test/pause:1";
/// The page `httpd` serves at `/` in the busybox image.
pub const INDEX_HTML: &str = "hello from cairn busybox\n";

/// A different bridge and /24 for every runtime, across the test
/// binaries running at once (pid) and the tests in one (counter).
fn network_slot() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(7).wrapping_add(n)) % 200 + 20
}

/// A containerd with CRI, killed (its pods removed first) on drop.
pub struct CriRuntime {
    child: Option<Child>,
    /// root, state, socket, `net.d/`, `logs/`, `cni/` (IPAM), the log.
    pub dir: tempfile::TempDir,
    /// The bridge CNI makes (`cbr<slot>`).
    pub bridge: String,
    /// The pod subnet (`10.<...>.0/24`).
    pub subnet: String,
    /// The sandbox image the CRI plugin runs.
    pub sandbox_image: String,
}

impl CriRuntime {
    /// Starts containerd with the test sandbox image, both test images
    /// imported.
    pub async fn start() -> CriRuntime {
        let runtime = CriRuntime::start_with(SANDBOX).await;
        runtime
            .import(&[
                (BUSYBOX, busybox_archive(BUSYBOX, &[])),
                (
                    SANDBOX,
                    busybox_archive(SANDBOX, &["/bin/sleep", "2147483647"]),
                ),
            ])
            .await;
        runtime
    }

    /// Starts containerd (nothing imported) whose CRI runs `sandbox_image`.
    pub async fn start_with(sandbox_image: &str) -> CriRuntime {
        let dir = tempfile::tempdir().expect("containerd dir");
        let slot = network_slot();
        let bridge = format!("cbr{}x{slot}", std::process::id() % 1000);
        let subnet = format!("10.{}.{slot}.0/24", 100 + std::process::id() % 50);
        let r = dir.path().to_owned();
        let r = r.as_path();
        for sub in ["net.d", "logs", "cni"] {
            std::fs::create_dir_all(r.join(sub)).expect("dirs");
        }
        let config = format!(
            r#"version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{r}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/net.d"
"#,
            r = r.display(),
            runc = std::env::var("CAIRN_TEST_RUNC").unwrap_or_else(|_| "runc".into()),
        );
        std::fs::write(r.join("config.toml"), config).expect("config");
        let runtime = CriRuntime {
            child: None,
            dir,
            bridge,
            subnet,
            sandbox_image: sandbox_image.to_owned(),
        };
        runtime.write_cni_conf();
        let log = std::fs::File::create(r.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(r.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt install containerd; make deps) must be on the PATH");
        let mut runtime = runtime;
        runtime.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if runtime.socket().exists()
                && let Ok(mut cri) = Cri::connect(&runtime.socket()).await
                && cri.version().await.is_ok()
            {
                break;
            }
            if let Some(Ok(Some(status))) = runtime.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited with {status}:\n{}", runtime.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                runtime.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runtime
    }

    /// The bridge + host-local conflist of this runtime's network (until
    /// the agent's network part writes its own).
    pub fn write_cni_conf(&self) {
        let conf = json!({
            "cniVersion": "0.4.0",
            "name": self.bridge,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "dataDir": self.dir.path().join("cni"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            self.cni_conf_dir().join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).expect("conflist"),
        )
        .expect("write conflist");
    }

    /// containerd's socket (CRI and containerd services).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The CNI configuration directory CRI reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// A pod log directory for the agent.
    pub fn pod_log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A CRI client.
    pub async fn cri(&self) -> Cri {
        Cri::connect(&self.socket()).await.expect("CRI connect")
    }

    /// Imports `(name, archive)` pairs through [`cairn::images`].
    pub async fn import(&self, archives: &[(&str, Vec<u8>)]) {
        let dir = tempfile::tempdir().expect("archives dir");
        for (i, (_, bytes)) in archives.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{i}.tar")), bytes).expect("archive");
        }
        let options = cairn::images::Options {
            socket: self.socket(),
            ..Default::default()
        };
        let results = cairn::images::import_dir(dir.path(), &options)
            .await
            .expect("import");
        for (file, result) in results {
            let names = result.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(!names.is_empty(), "{}: no image", file.display());
        }
        // CRI learns of images from containerd's events: wait for it.
        let mut cri = self.cri().await;
        for (name, _) in archives {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = cri
                    .images
                    .image_status(api::ImageStatusRequest {
                        image: Some(api::ImageSpec {
                            image: (*name).to_owned(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .expect("ImageStatus");
                if status.into_inner().image.is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "CRI does not see {name}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Every sandbox CRI knows (ready or not).
    pub async fn sandboxes(&self) -> Vec<api::PodSandbox> {
        let mut cri = self.cri().await;
        cri.runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    /// Every container CRI knows.
    pub async fn containers(&self) -> Vec<api::Container> {
        let mut cri = self.cri().await;
        cri.runtime
            .list_containers(api::ListContainersRequest { filter: None })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    /// Stops and removes every sandbox (and so its containers); how many
    /// there were.
    async fn remove_all(socket: PathBuf) -> usize {
        let Ok(mut cri) = Cri::connect(&socket).await else {
            return 0;
        };
        let Ok(list) = cri
            .runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
        else {
            return 0;
        };
        let items = list.into_inner().items;
        let count = items.len();
        for sandbox in items {
            let id = sandbox.id;
            let _ = cri
                .runtime
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = cri
                .runtime
                .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        }
        count
    }
}

impl Drop for CriRuntime {
    fn drop(&mut self) {
        // Pods first (their shims outlive containerd otherwise), from a
        // thread of its own: a test's runtime may be dropping us.
        let socket = self.socket();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    // Again while some remain: an agent stopping meanwhile
                    // may have just made one.
                    for _ in 0..5 {
                        let left = tokio::time::timeout(
                            Duration::from_secs(30),
                            CriRuntime::remove_all(socket.clone()),
                        )
                        .await
                        .unwrap_or(0);
                        if left == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
            }
        })
        .join();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in ["state", "root"] {
            let _ = Command::new("umount")
                .arg("-R")
                .arg(self.dir.path().join(dir))
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An entry of a layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("dir");
            }
            Entry::File(path, content, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, path, *content)
                    .expect("file");
            }
            Entry::Link(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, target)
                    .expect("symlink");
            }
        }
    }
    builder.into_inner().expect("tar")
}

/// The applets linked in the busybox image.
const APPLETS: &[&str] = &[
    "sh", "sleep", "httpd", "cat", "env", "ls", "tar", "echo", "pwd", "id", "wget", "mkdir", "rm",
    "touch", "true", "false", "kill", "ps", "head", "tail", "grep", "dd", "printf", "test", "nc",
    "hostname", "date", "mount", "ip", "sync", "stat", "tr", "seq", "wc",
];

/// An OCI image-layout archive of one image named `name`: `/bin/busybox`
/// (this machine's static one) with its applets, `/www/index.html`
/// ([`INDEX_HTML`]), `/tmp`, `/etc/passwd`; `entrypoint` is the image's
/// Entrypoint (none: `Cmd ["sh"]`).
pub fn busybox_archive(name: &str, entrypoint: &[&str]) -> Vec<u8> {
    let ImageParts {
        layer,
        config,
        manifest,
    } = busybox_parts(entrypoint);
    oci_layout(name, &layer, &config, &manifest)
}

/// The blobs of an image.
pub struct ImageParts {
    /// The one layer (an uncompressed tar).
    pub layer: Vec<u8>,
    /// The image config.
    pub config: Vec<u8>,
    /// The OCI manifest.
    pub manifest: Vec<u8>,
}

/// The busybox image's blobs (see [`busybox_archive`]).
pub fn busybox_parts(entrypoint: &[&str]) -> ImageParts {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (apt install busybox-static; make deps)");
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        Entry::Dir("bin"),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644),
        Entry::Dir("tmp"),
        Entry::Dir("root"),
        Entry::Dir("www"),
        Entry::File("www/index.html", INDEX_HTML.as_bytes(), 0o644),
    ];
    entries.extend(links.iter().map(|l| Entry::Link(l, "busybox")));
    let layer = layer_tar(&entries);
    let mut config = json!({
        "architecture": match std::env::consts::ARCH { "aarch64" => "arm64", _ => "amd64" },
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    });
    if !entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(entrypoint);
        config["config"]["Cmd"] = Value::Null;
    }
    let config = serde_json::to_vec(&config).expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("manifest");
    ImageParts {
        layer,
        config,
        manifest,
    }
}

/// An OCI image-layout archive of the blobs, the manifest named `name`.
fn oci_layout(name: &str, layer: &[u8], config: &[u8], manifest: &[u8]) -> Vec<u8> {
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))
    .expect("index");
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha256(b)[7..]);
    let (m, c, l) = (blob(manifest), blob(config), blob(layer));
    layer_tar(&[
        Entry::File("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#, 0o644),
        Entry::File("index.json", &index, 0o644),
        Entry::Dir("blobs"),
        Entry::Dir("blobs/sha256"),
        Entry::File(&m, manifest, 0o644),
        Entry::File(&c, config, 0o644),
        Entry::File(&l, layer, 0o644),
    ])
}

/// A local registry (`docker-registry` from Debian) on a free loopback
/// port, plain HTTP (containerd talks HTTP to loopback registries);
/// killed on drop.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub host: String,
}

impl Registry {
    /// Starts the registry and waits until it answers `/v2/`.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("registry dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt install docker-registry; make deps)");
        let registry = Registry {
            child,
            _dir: dir,
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while registry
            .curl(&["-f", &format!("http://{}/v2/", registry.host)])
            .is_err()
        {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn curl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Pushes `parts` as `<host>/<repo>:<tag>` (the registry's blob
    /// upload and manifest API).
    pub fn push(&self, repo: &str, tag: &str, parts: &ImageParts) {
        let dir = tempfile::tempdir().expect("blobs");
        for blob in [&parts.layer, &parts.config] {
            let started = self
                .curl(&[
                    "-f",
                    "-X",
                    "POST",
                    &format!("http://{}/v2/{repo}/blobs/uploads/", self.host),
                ])
                .expect("start upload");
            let location = started
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("location")
                        .then(|| v.trim().to_owned())
                })
                .expect("Location");
            let url = if location.starts_with("http") {
                location
            } else {
                format!("http://{}{location}", self.host)
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let file = dir.path().join("blob");
            std::fs::write(&file, blob).expect("blob file");
            self.curl(&[
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("{url}{sep}digest={}", sha256(blob)),
            ])
            .expect("upload blob");
        }
        let file = dir.path().join("manifest");
        std::fs::write(&file, &parts.manifest).expect("manifest file");
        self.curl(&[
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{}/v2/{repo}/manifests/{tag}", self.host),
        ])
        .expect("put manifest");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
