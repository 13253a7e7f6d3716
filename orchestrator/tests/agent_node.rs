//! The node agent's Node, against real parts: the `cairn server` binary
//! with its agent on, a real containerd 1.6 with its CRI plugin (own root,
//! state, socket; CNI configuration directory a temp dir the agent writes
//! to, plugins from /usr/lib/cni), and the real kubectl.
//!
//! - the node registers Ready (once the agent wrote the CNI configuration
//!   for the pod CIDR the node IPAM controller gave it, containerd reports
//!   the network ready), with the figures `kubectl get nodes -o wide`
//!   prints; its Lease is renewed while the Node is not rewritten;
//! - labels and taints users add survive the agent, also across a restart;
//! - `cairn agent` joins a separate `cairn server --disable-agent` over
//!   HTTPS with the server token and the cluster CA, and registers a
//!   second node; a wrong token or CA registers nothing.
//!
//! Heartbeats are shortened to a second with the hidden
//! `--node-status-update-frequency` and `--node-lease-renew-interval`.
//! Needs root, `containerd`, the CNI plugins and kubectl (`make deps`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, json};
use serde_json::Value;

/// A containerd with its CRI plugin on, killed on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("containerd dir");
        let r = dir.path();
        std::fs::create_dir_all(r.join("net.d")).expect("net.d");
        let config = format!(
            r#"version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{r}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/net.d"
"#,
            r = r.display()
        );
        std::fs::write(r.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(r.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(r.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (make deps) must be on the PATH");
        let mut c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket().exists() {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited with {status}:\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The agent flags pointing at this runtime, its CNI directory and
    /// `root` for the agent's state, with one-second heartbeats.
    fn agent_args(&self, root: &Path) -> Vec<String> {
        vec![
            "--container-runtime-endpoint".into(),
            self.socket().display().to_string(),
            "--cni-conf-dir".into(),
            self.cni_conf_dir().display().to_string(),
            "--root-dir".into(),
            root.display().to_string(),
            "--node-status-update-frequency".into(),
            "1s".into(),
            "--node-lease-renew-interval".into(),
            "1s".into(),
            // Tests run side by side: any free port for the agent API.
            "--agent-port".into(),
            "0".into(),
            // The host's disk may be nearly full (shared build caches): no
            // disk pressure, and so no disk-pressure taint, for these tests.
            "--eviction-hard".into(),
            "nodefs.available<1%".into(),
        ]
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .stderr(Stdio::null())
            .status();
    }
}

/// A `cairn server` with its agent on (the common [`Server`] always
/// passes `--disable-agent`), killed on drop.
struct AgentServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl AgentServer {
    fn start(dir: tempfile::TempDir, args: &[String]) -> AgentServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        AgentServer::start_on(dir, port, args)
    }

    fn start_on(dir: tempfile::TempDir, port: u16, args: &[String]) -> AgentServer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["server", "--bind-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn server");
        let mut server = AgentServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(server.kubeconfig().exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("cairn server exited with {status}:\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "no server:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&self.kubeconfig(), args)
    }

    /// SIGTERM, wait, and hand the data dir back.
    fn terminate(mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "cairn server: {exit}\n{}", self.log());
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("placeholder"))
    }
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl (v1.32) on the PATH");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The node, or `None` while it does not exist.
fn node(kubeconfig: &Path, name: &str) -> Option<Value> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(["get", "node", name, "-o", "json"])
        .output()
        .expect("kubectl");
    out.status
        .success()
        .then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

fn condition<'a>(node: &'a Value, kind: &str) -> &'a Value {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .unwrap_or(&Value::Null)
}

/// Waits until the node is Ready and has a pod CIDR; returns it.
fn wait_ready(kubeconfig: &Path, name: &str, logs: &dyn Fn() -> String) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = node(kubeconfig, name);
        if let Some(n) = &seen
            && condition(n, "Ready")["status"] == "True"
            && n["spec"]["podCIDR"].is_string()
        {
            return n.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node {name} not Ready with a pod CIDR: {seen:#?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lease(kubeconfig: &Path, name: &str) -> Value {
    json(&kubectl(
        kubeconfig,
        &["get", "lease", "-n", "kube-node-lease", name, "-o", "json"],
    ))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .expect("readable")
        .trim()
        .to_owned()
}

#[test]
fn node_registers_ready_and_heartbeats_without_rewriting() {
    let runtime = Containerd::start();
    let agent_root = tempfile::tempdir().expect("agent root");
    let mut args = runtime.agent_args(agent_root.path());
    args.extend(["--node-ip".into(), "192.0.2.10".into()]);
    let server = AgentServer::start(tempfile::tempdir().expect("dir"), &args);
    // The node is named after the host.
    let host = read_trimmed("/proc/sys/kernel/hostname").to_lowercase();
    let logs = || format!("{}\n{}", server.log(), runtime.log());
    let ready = wait_ready(&server.kubeconfig(), &host, &logs);

    // What `kubectl get nodes -o wide` prints.
    let wide = server.kubectl(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let row: Vec<&str> = wide.split_whitespace().collect();
    assert_eq!(row[0], host, "{wide}");
    assert_eq!(row[1], "Ready", "{wide}");
    assert_eq!(row[2], "control-plane", "{wide}");
    assert_eq!(row[4], "v1.32.0-cairn", "{wide}");
    assert_eq!(row[5], "192.0.2.10", "{wide}");
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("PRETTY_NAME on this machine");
    assert!(wide.contains(&pretty), "{pretty:?} in {wide}");
    let kernel = read_trimmed("/proc/sys/kernel/osrelease");
    assert!(wide.contains(&kernel), "{kernel} in {wide}");
    assert!(
        row.last().expect("runtime").starts_with("containerd://"),
        "{wide}"
    );

    let status = &ready["status"];
    assert_eq!(ready["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(ready["metadata"]["labels"]["kubernetes.io/hostname"], host);
    let arch = ready["metadata"]["labels"]["kubernetes.io/arch"].clone();
    assert!(arch == "amd64" || arch == "arm64", "{arch}");
    assert_eq!(status["nodeInfo"]["architecture"], arch);
    assert_eq!(status["capacity"]["pods"], "110");
    let cpus: usize = status["capacity"]["cpu"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("cpu");
    assert_eq!(
        cpus,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    assert!(
        status["capacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki")),
        "{status}"
    );
    assert!(status["allocatable"]["ephemeral-storage"].is_string());
    // The agent API's port as bound (the tests ask for any free one).
    let port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64();
    assert!(port.is_some_and(|p| p > 0 && p != 10250), "{status}");
    for kind in ["MemoryPressure", "PIDPressure"] {
        assert_eq!(condition(&ready, kind)["status"], "False", "{kind}");
    }
    // Disk pressure is real on a test machine whose disk is over 99% full
    // (the tests' `--eviction-hard nodefs.available<1%`).
    let df = Command::new("df")
        .args(["-B1", "--output=size,avail"])
        .arg(agent_root.path())
        .output()
        .expect("df");
    let df = String::from_utf8_lossy(&df.stdout);
    let figures: Vec<u64> = df
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let pressure = figures[1] < figures[0] / 100;
    assert_eq!(
        condition(&ready, "DiskPressure")["status"],
        if pressure { "True" } else { "False" },
        "{df}"
    );
    assert_eq!(condition(&ready, "Ready")["reason"], "KubeletReady");

    // The pod CIDR from the node IPAM controller, and the CNI configuration for it.
    let cidr = ready["spec"]["podCIDR"].as_str().expect("podCIDR");
    assert!(
        cidr.starts_with("10.42.") && cidr.ends_with(".0/24"),
        "{cidr}"
    );
    assert_eq!(ready["spec"]["podCIDRs"], serde_json::json!([cidr]));
    let conflist = json(
        &std::fs::read_to_string(runtime.cni_conf_dir().join("10-cairn.conflist"))
            .expect("the agent wrote the CNI configuration"),
    );
    assert_eq!(conflist["plugins"][0]["type"], "bridge");
    assert_eq!(
        conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        cidr
    );
    assert_eq!(conflist["plugins"][1]["type"], "portmap");

    // Events as the kubelet records them, where `kubectl describe node` finds them.
    let describe = server.kubectl(&["describe", "node", &host]);
    for reason in [
        "Starting",
        "NodeNotReady",
        "NodeReady",
        "NodeHasSufficientMemory",
    ] {
        assert!(describe.contains(reason), "{reason} in {describe}");
    }
    assert!(describe.contains(cidr), "{describe}");

    // The Lease, owned by the Node.
    let first = lease(&server.kubeconfig(), &host);
    assert_eq!(first["spec"]["holderIdentity"], host);
    assert_eq!(first["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(
        first["metadata"]["ownerReferences"][0]["uid"],
        ready["metadata"]["uid"]
    );
    // Let a write after Ready land, then: heartbeats move the Lease, not the Node.
    std::thread::sleep(Duration::from_millis(1500));
    let before = node(&server.kubeconfig(), &host).expect("node");
    let renewed = lease(&server.kubeconfig(), &host);
    std::thread::sleep(Duration::from_millis(3200));
    let after = node(&server.kubeconfig(), &host).expect("node");
    let later = lease(&server.kubeconfig(), &host);
    assert_ne!(
        renewed["spec"]["renewTime"], later["spec"]["renewTime"],
        "the Lease is renewed"
    );
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "an unchanged Node is not rewritten by heartbeats: {before:#}\n{after:#}"
    );
    drop(server);
}

/// The node's taints but the node lifecycle controller's
/// (`node.kubernetes.io/*`, which follow the node's conditions).
fn users_taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            !t["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("node.kubernetes.io/"))
        })
        .cloned()
        .collect()
}

#[test]
fn labels_and_taints_survive_the_agent() {
    let runtime = Containerd::start();
    let agent_root = tempfile::tempdir().expect("agent root");
    let mut args = runtime.agent_args(agent_root.path());
    args.extend(["--node-name".into(), "edge-1".into()]);
    let server = AgentServer::start(tempfile::tempdir().expect("dir"), &args);
    let logs = || server.log();
    let first = wait_ready(&server.kubeconfig(), "edge-1", &logs);
    server.kubectl(&["label", "node", "edge-1", "team=edge"]);
    server.kubectl(&["taint", "node", "edge-1", "dedicated=edge:NoSchedule"]);
    // An owned label removed by hand comes back when the agent starts again.
    server.kubectl(&["label", "node", "edge-1", "kubernetes.io/os-"]);
    std::thread::sleep(Duration::from_millis(2500));
    let kept = node(&server.kubeconfig(), "edge-1").expect("node");
    assert_eq!(kept["metadata"]["labels"]["team"], "edge");
    assert_eq!(
        users_taints(&kept),
        [serde_json::json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})]
    );
    let dir = server.terminate();
    let server = AgentServer::start(dir, &args);
    let logs = || server.log();
    wait_ready(&server.kubeconfig(), "edge-1", &logs);
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let n = node(&server.kubeconfig(), "edge-1").expect("node");
        if n["metadata"]["labels"]["kubernetes.io/os"] == "linux" {
            break n;
        }
        assert!(Instant::now() < deadline, "label not restored: {n:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(again["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(again["metadata"]["labels"]["team"], "edge");
    assert_eq!(
        again["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
        "true"
    );
    assert_eq!(
        users_taints(&again),
        [serde_json::json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})]
    );
    assert_eq!(again["spec"]["podCIDR"], first["spec"]["podCIDR"]);

    // A Node deleted under the agent is registered again, its Lease owned by the new one.
    server.kubectl(&["delete", "node", "edge-1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let reborn = loop {
        if let Some(n) = node(&server.kubeconfig(), "edge-1")
            && n["metadata"]["uid"] != first["metadata"]["uid"]
            && condition(&n, "Ready")["status"] == "True"
        {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "not registered again:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease(&server.kubeconfig(), "edge-1")["metadata"]["ownerReferences"][0]["uid"]
        != reborn["metadata"]["uid"]
    {
        assert!(Instant::now() < deadline, "the Lease keeps the old owner");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cairn agent` with the given server URL, token and CA file.
fn spawn_agent(
    runtime: &Containerd,
    root: &Path,
    url: &str,
    token: &str,
    ca: &Path,
    name: &str,
) -> (Child, PathBuf) {
    let log_path = root.join("agent.log");
    let log = std::fs::File::create(&log_path).expect("agent log");
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["agent", "--server", url, "--token", token, "--ca-file"])
        .arg(ca)
        .args(["--node-name", name, "--node-ip", "192.0.2.20"])
        .args(runtime.agent_args(&root.join("state")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cairn agent");
    (child, log_path)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cairn_agent_joins_a_server_over_https() {
    let args: Vec<String> = ["--disable-agent", "--token", "join-secret"]
        .map(String::from)
        .into();
    let server = AgentServer::start(tempfile::tempdir().expect("dir"), &args);
    let runtime = Containerd::start();
    let root = tempfile::tempdir().expect("agent dir");
    let ca = server.dir.path().join("pki/ca.crt");

    // A wrong token, and a CA that did not sign the server: nothing registers.
    let other_ca = tempfile::tempdir().expect("other");
    let other = Server::start_in(other_ca);
    let (bad_token, bad_token_log) = spawn_agent(
        &runtime,
        root.path(),
        &server.url(),
        "nope",
        &ca,
        "intruder",
    );
    let bad_token = Killed(bad_token);
    std::fs::create_dir_all(root.path().join("ca")).expect("dir");
    let (bad_ca, _) = spawn_agent(
        &runtime,
        &root.path().join("ca"),
        &server.url(),
        "join-secret",
        &other.dir.path().join("pki/ca.crt"),
        "impostor",
    );
    let bad_ca = Killed(bad_ca);

    // Node IPAM: a Node that brought its own range keeps it, and no range
    // is handed out twice.
    let fixed = server.write(
        "fixed.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: fixed\nspec:\n  podCIDR: 10.42.0.0/24\n  podCIDRs: [10.42.0.0/24]\n",
    );
    server.kubectl(&["create", "-f", common::path_str(&fixed)]);
    let spare = server.write(
        "spare.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: spare\n",
    );
    server.kubectl(&["create", "-f", common::path_str(&spare)]);

    let (good, good_log) = spawn_agent(
        &runtime,
        root.path(),
        &server.url(),
        "join-secret",
        &ca,
        "edge-2",
    );
    let _good = Killed(good);
    let logs = || std::fs::read_to_string(&good_log).unwrap_or_default() + &server.log();
    let joined = wait_ready(&server.kubeconfig(), "edge-2", &logs);
    assert_eq!(joined["status"]["addresses"][0]["address"], "192.0.2.20");
    assert!(
        joined["metadata"]["labels"]["node-role.kubernetes.io/control-plane"].is_null(),
        "{joined:#}"
    );
    let row = server.kubectl(&["get", "node", "edge-2", "-o", "wide", "--no-headers"]);
    let row: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&row[..3], ["edge-2", "Ready", "<none>"], "{row:?}");
    assert_eq!(
        lease(&server.kubeconfig(), "edge-2")["spec"]["holderIdentity"],
        "edge-2"
    );
    // The managed fields name the agent.
    let joined = json(&server.kubectl(&[
        "get",
        "node",
        "edge-2",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert!(
        joined["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["manager"] == "cairn-agent"),
        "{joined:#}"
    );

    let names = server.kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(
        names.split_whitespace().collect::<Vec<_>>(),
        ["node/edge-2", "node/fixed", "node/spare"],
        "{names}"
    );
    let cidrs = server.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.spec.podCIDR} {end}",
    ]);
    let mut cidrs: Vec<&str> = cidrs.split_whitespace().collect();
    assert_eq!(cidrs.len(), 3, "{cidrs:?}");
    assert_eq!(cidrs[1], "10.42.0.0/24", "{cidrs:?}");
    cidrs.sort_unstable();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 3, "a range handed out twice: {cidrs:?}");
    let refused = std::fs::read_to_string(&bad_token_log).unwrap_or_default();
    assert!(refused.contains("401"), "{refused}");
    drop((bad_token, bad_ca));

    // The server restarts: the agent connects again and keeps renewing.
    let port = server.port;
    let before = lease(&server.kubeconfig(), "edge-2")["spec"]["renewTime"].clone();
    let server = AgentServer::start_on(server.terminate(), port, &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let renewed = lease(&server.kubeconfig(), "edge-2")["spec"]["renewTime"].clone();
        if renewed.as_str() > before.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal after the restart:\n{}",
            std::fs::read_to_string(&good_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ca_log = std::fs::read_to_string(root.path().join("ca/agent.log")).unwrap_or_default();
    assert!(
        ca_log.contains("TLS") || ca_log.contains("certificate"),
        "{ca_log}"
    );
}

/// SHA-256 of `bytes`, lower-case hex (a join token's CA hash).
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_k10_token_pins_the_ca_the_agent_fetches() {
    // The CA exists once the server ran; its token then pins it.
    let first = AgentServer::start(tempfile::tempdir().expect("dir"), &[]);
    let port = first.port;
    let dir = first.terminate();
    let ca = std::fs::read(dir.path().join("pki/ca.crt")).expect("ca");
    let token = format!("K10{}::server:0123456789abcdef", sha256_hex(&ca));
    let args: Vec<String> = vec!["--disable-agent".into(), "--token".into(), token.clone()];
    let server = AgentServer::start_on(dir, port, &args);
    let runtime = Containerd::start();
    let root = tempfile::tempdir().expect("agent dir");

    // A token pinning another CA: the agent refuses the server's at start.
    let wrong = format!("K10{}::server:0123456789abcdef", "00".repeat(32));
    let wrong_ca = root.path().join("wrong/ca.crt");
    let exit = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "agent",
            "--server",
            &server.url(),
            "--token",
            &wrong,
            "--ca-file",
        ])
        .arg(&wrong_ca)
        .args(runtime.agent_args(&root.path().join("wrong")))
        .output()
        .expect("cairn agent");
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(!exit.status.success(), "{stderr}");
    assert!(stderr.contains("different clusters"), "{stderr}");
    assert!(!wrong_ca.exists(), "a CA that does not match is not kept");

    // The right token, no CA file: fetched from /cacerts, checked, kept;
    // the flags' labels and taint are on the Node.
    let state = root.path().join("state");
    let log_path = root.path().join("agent.log");
    let agent = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["agent", "--server", &server.url(), "--node-name", "pinned"])
        .args([
            "--node-ip",
            "192.0.2.21",
            "--node-label",
            "example.com/site=north",
        ])
        .args(["--node-taint", "dedicated=edge:NoSchedule"])
        .args(runtime.agent_args(&state))
        .env("CAIRN_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn cairn agent");
    let _agent = Killed(agent);
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default() + &server.log();
    let node = wait_ready(&server.kubeconfig(), "pinned", &logs);
    assert_eq!(
        std::fs::read(state.join("ca.crt")).expect("the CA kept in the root dir"),
        ca
    );
    assert_eq!(
        node["metadata"]["labels"]["example.com/site"], "north",
        "{node:#}"
    );
    assert_eq!(
        users_taints(&node),
        [serde_json::json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})],
        "{node:#}"
    );
}
