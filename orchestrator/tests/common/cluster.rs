//! The API side of the agent's host tests: the crate's API server and
//! controllers in this process (so the agent's in-process `Client` can
//! reach them), serving HTTPS on a free loopback port for kubectl as
//! `cairn server` does, plus a Node registered as a client could and
//! [`eventually`], the tests' polling with a deadline.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn::api::Api;
use cairn::controllers::client::Client;
use serde_json::{Value, json};

/// The API server and controllers in this process, serving HTTPS on a
/// free loopback port (kubectl with [`Cluster::kubeconfig`]); stopped on drop.
pub struct Cluster {
    /// The API, for in-process clients (the agent's).
    pub api: Arc<Api>,
    /// Data dir: `admin.kubeconfig`, `pki/`, `state.db`.
    pub dir: tempfile::TempDir,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controllers_stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Starts the API server and (unless `controllers` is false) the
    /// controller manager and scheduler.
    pub async fn start(controllers: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("data dir");
        let store = cairn::store::Store::open_sqlite(dir.path().join("state.db"))
            .await
            .expect("store");
        let auth = cairn::api::auth::Authenticator::load(&dir.path().join("tokens.csv"), None)
            .expect("auth");
        let api = Arc::new(Api::new(store, auth));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        api.bootstrap(port).await.expect("bootstrap");
        api.serve_crds().await.expect("crds");
        let settings = cairn::api::pki::Settings {
            server_url: format!("https://127.0.0.1:{port}"),
            tls_sans: Vec::new(),
        };
        let pki = cairn::api::pki::ensure(dir.path(), &settings).expect("pki");
        let tls = cairn::api::server::tls_config(&pki).expect("tls");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut tasks = vec![tokio::spawn(cairn::api::server::serve(
            listener,
            tls,
            api.clone(),
            async {
                let _ = stopped.await;
            },
        ))];
        let mut controllers_stop = None;
        if controllers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            controllers_stop = Some(tx);
            tasks.push(tokio::spawn(cairn::controllers::run(
                api.clone(),
                Default::default(),
                rx,
            )));
        }
        Cluster {
            api,
            dir,
            port,
            stop: Some(stop),
            controllers_stop,
            tasks,
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Runs kubectl (blocking; call from `spawn_blocking` or accept the
    /// short stall), whatever its outcome.
    pub fn try_kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl (v1.32) on the PATH")
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) -> String {
        let path = self.dir.path().join(format!("m{}.yaml", uuid_like()));
        std::fs::write(&path, manifest).expect("manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")])
    }

    /// A client acting as the node `node` (`system:node:<node>`), the
    /// agent's identity.
    pub fn node_client(&self, node: &str) -> Client {
        Client::new(
            self.api.clone(),
            &format!("system:node:{node}"),
            "cairn-agent",
        )
    }

    /// An admin client.
    pub fn admin(&self) -> Client {
        Client::new(self.api.clone(), "admin", "kubectl")
    }

    /// Registers a Ready, schedulable Node `name` as a client could (until
    /// the agent's node part does it), so the scheduler binds pods to it.
    pub async fn register_node(&self, name: &str) {
        let client = self.node_client(name);
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        });
        client
            .post("/api/v1/nodes", &node)
            .await
            .expect("create node");
        let status = json!({"status": {
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "test node", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        }});
        client
            .merge_patch(&format!("/api/v1/nodes/{name}/status"), &status)
            .await
            .expect("node status");
    }

    /// The pod `ns/name` as the API has it (`None` once gone).
    pub async fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        match self
            .admin()
            .get(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
            .await
        {
            Ok(pod) => Some(pod),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("get pod {ns}/{name}: {e}"),
        }
    }

    /// Pods of `ns` matching `selector` (a label selector; "" for all).
    pub async fn pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        let list = self
            .admin()
            .get(&format!(
                "/api/v1/namespaces/{ns}/pods?labelSelector={selector}"
            ))
            .await
            .expect("list pods");
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.controllers_stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Now, RFC 3339 to the second (as the API writes timestamps).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn uuid_like() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Polls `check` every 100 ms until it gives `Some`, at most `limit`;
/// panics with `what()` (the state to show) when it does not.
pub async fn eventually<T, F, Fut>(limit: Duration, what: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
