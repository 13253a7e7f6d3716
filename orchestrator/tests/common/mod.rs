//! Shared helpers for the API tests that drive the real `kubectl` (v1.32,
//! from the PATH): [`Server`] runs the built `cairn server` binary on a free
//! loopback port with a temporary data dir (killed on drop), and its methods
//! run kubectl with the admin kubeconfig the server writes. Also small
//! helpers for manifests and output: [`json`], [`path_str`], [`NAMESPACE_T`]
//! and [`create_namespace_t`]; [`Server::curl`] sends raw requests (curl
//! with the admin certificate) where kubectl cannot say what a test needs;
//! [`Server::fake_kubelet`] finishes pods deleted on registered Nodes.
//!
//! kubectl is required: without it these tests fail, they do not skip.

// Each file under tests/ is its own crate and uses only some of these helpers;
// the rest would be reported as dead code in that crate.
#![allow(dead_code)]

pub mod cluster;
pub mod cri;
pub mod kubelet;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `cairn server`, killed on drop.
pub struct Server {
    child: Child,
    /// The server's data dir: kubeconfig, `pki/`, `server.log`, and the
    /// manifests written by [`Server::write`].
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp data dir");
        Server::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Server {
        Server::start_in_with(dir, &[])
    }

    /// Starts with extra `cairn server` flags (besides the port and data dir).
    pub fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp data dir");
        Server::start_in_with(dir, args)
    }

    /// A data dir holding this server's CA, for a second server of the
    /// same cluster.
    pub fn dir_sharing_ca(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("pki")).expect("mkdir");
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(
                self.dir.path().join("pki").join(file),
                dir.path().join("pki").join(file),
            )
            .expect("copy the CA");
        }
        dir
    }

    pub fn start_in_with(dir: tempfile::TempDir, args: &[&str]) -> Server {
        assert!(
            Command::new("kubectl")
                .arg("version")
                .arg("--client")
                .output()
                .is_ok_and(|o| o.status.success()),
            "kubectl (v1.32) must be on the PATH for the API tests; `make deps` installs it"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn server");
        let mut server = Server { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if server.kubeconfig().exists()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("cairn server exited with {status}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "cairn server did not start listening on {port}:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubectl command with the admin kubeconfig, not yet run.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig()).args(args);
        cmd
    }

    /// Runs kubectl, whatever its outcome.
    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs kubectl, asserts success, returns stdout and stderr.
    pub fn kubectl_with_stderr(&self, args: &[&str]) -> (String, String) {
        let out = self.try_kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}{stderr}"
        );
        (stdout, stderr)
    }

    /// Runs kubectl, asserts failure, returns stderr.
    pub fn kubectl_fails(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes `contents` to `name` in the data dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write manifest");
        path
    }

    /// Writes `manifest` to `name` in the data dir and `kubectl create -f`s it.
    pub fn create_file(&self, name: &str, manifest: &str) -> String {
        let file = self.write(name, manifest);
        self.kubectl(&["create", "-f", path_str(&file)])
    }

    /// Registers Node manifests (JSON) as a client could, with one
    /// `kubectl create` of a multi-document file.
    pub fn register_nodes(&self, nodes: &[String]) {
        // A leading `---` makes kubectl read YAML documents (JSON is YAML).
        let list = format!("---\n{}", nodes.join("\n---\n"));
        self.create_file(&format!("nodes-{}.yaml", nodes.len()), &list);
    }

    /// One HTTPS request with curl and the admin client certificate:
    /// `(status code, body)`. `body` is sent as is with `content_type`.
    pub fn curl(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        curl_at(
            &self.dir.path().join("pki"),
            self.port,
            method,
            path,
            content_type,
            body,
        )
    }

    /// Finishes pods being deleted on the Node objects tests register (no
    /// agent runs with `--disable-agent`), as long as the handle lives.
    pub fn fake_kubelet(&self) -> kubelet::FakeKubelet {
        kubelet::FakeKubelet::start(self.dir.path().join("pki"), self.port)
    }

    /// Kills the server (SIGKILL, as `kill -9`) and hands back its data
    /// dir, for [`Server::start_in`].
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Server {
    /// Stops the server with SIGTERM, as an init system does, waits for it
    /// to exit (successfully) and hands back its data dir.
    pub fn terminate(mut self) -> tempfile::TempDir {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for cairn server");
        assert!(
            exit.success(),
            "cairn server exited with {exit}:\n{}",
            self.log()
        );
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`Server::curl`] against the server on `port` whose `pki` dir holds the
/// CA and admin certificate.
pub fn curl_at(
    pki: &Path,
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    try_curl_at(pki, port, method, path, content_type, body)
        .unwrap_or_else(|err| panic!("curl {method} {path}: {err}"))
}

/// [`curl_at`], with curl's failure (no server...) as an error.
pub fn try_curl_at(
    pki: &Path,
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    use std::io::Write;
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-X", method, "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", "@-", "-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl must be on the PATH");
    let written = child.stdin.take().expect("stdin").write_all(body);
    let out = child.wait_with_output().map_err(|err| err.to_string())?;
    written.map_err(|err| err.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status line")?;
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("http code {code:?}"))?;
    Ok((code, body.to_owned()))
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `secs`;
/// a timeout fails the test with the server log's last lines.
pub fn wait_for<T>(
    secs: u64,
    what: &str,
    server: &Server,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|err| panic!("not JSON ({err}): {s}"))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub const NAMESPACE_T: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t\n";

/// Creates namespace `t` (kubectl sends it as protobuf).
pub fn create_namespace_t(server: &Server) {
    let out = server.kubectl(&["create", "namespace", "t"]);
    assert!(out.contains("namespace/t created"), "{out}");
}

/// Creates `n` configmaps one kubectl call each (each acknowledged),
/// deletes the first two, and returns name → resourceVersion of the rest.
pub fn acknowledged_writes(server: &Server, n: usize) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for i in 0..n {
        let name = format!("crash-{i}");
        let manifest = server.write(
            "cm.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  i: \"{i}\"\n"
            ),
        );
        let rv = server.kubectl(&[
            "create",
            "-f",
            path_str(&manifest),
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ]);
        written.push((name, rv));
    }
    for (name, _) in written.drain(..2) {
        server.kubectl(&["delete", "configmap", &name]);
    }
    written
}

/// The configmaps named `crash-*` with their resourceVersions.
pub fn stored(server: &Server) -> Vec<(String, String)> {
    let list = json(&server.kubectl(&["get", "configmaps", "-o", "json"]));
    let mut items: Vec<(String, String)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|cm| {
            (
                cm["metadata"]["name"].as_str().expect("name").to_owned(),
                cm["metadata"]["resourceVersion"]
                    .as_str()
                    .expect("rv")
                    .to_owned(),
            )
        })
        .filter(|(name, _)| name.starts_with("crash-"))
        .collect();
    items.sort_by_key(|(name, _)| name[6..].parse::<usize>().unwrap_or(0));
    items
}
