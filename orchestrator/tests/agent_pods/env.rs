//! The fixture every pods test shares: containerd with CRI and runc, the
//! API server and controllers in this process, a Ready node and the
//! agent's pods loop, with helpers to read pods, logs and CRI state.

use std::io::{Read, Write};
use std::time::Duration;

use cairn::agent::Config;
use serde_json::Value;

use crate::common::cluster::{Cluster, eventually};
use crate::common::cri::CriRuntime;

pub const NODE: &str = "node1";

/// containerd, the API, a Ready node and the agent's pods loop.
pub struct Env {
    pub runtime: CriRuntime,
    pub cluster: Cluster,
    agent: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Env {
    pub async fn start() -> Env {
        let runtime = CriRuntime::start().await;
        let cluster = Cluster::start(true).await;
        cluster.register_node(NODE).await;
        let mut env = Env {
            runtime,
            cluster,
            agent: None,
        };
        env.start_agent();
        env
    }

    pub fn config(&self) -> Config {
        let mut config = Config::new(NODE);
        config.runtime_endpoint = self.runtime.socket();
        config.pod_log_dir = self.runtime.pod_log_dir();
        config.root_dir = self.runtime.dir.path().join("agent");
        config.cni_conf_dir = self.runtime.cni_conf_dir();
        config.node_ip = Some("127.0.0.1".parse().expect("ip"));
        config.sandbox_image = self.runtime.sandbox_image.clone();
        config
    }

    pub fn start_agent(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cairn::agent::pods::run(
            self.config(),
            self.cluster.node_client(NODE),
            async {
                let _ = stopped.await;
            },
        ));
        self.agent = Some((stop, task));
    }

    pub async fn stop_agent(&mut self) {
        if let Some((stop, task)) = self.agent.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// kubectl, from a blocking section of this runtime.
    pub fn kubectl(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.cluster.kubectl(args))
    }

    pub fn apply(&self, manifest: &str) {
        tokio::task::block_in_place(|| self.cluster.apply(manifest));
    }

    /// Waits until pod `name` satisfies `check`; the pod.
    pub async fn pod_until(&self, name: &str, limit: u64, check: impl Fn(&Value) -> bool) -> Value {
        eventually(
            Duration::from_secs(limit),
            || {
                let pod = tokio::task::block_in_place(|| {
                    self.cluster
                        .try_kubectl(&["get", "pod", name, "-o", "json"])
                        .stdout
                });
                format!(
                    "pod {name}: {}\n{}",
                    String::from_utf8_lossy(&pod),
                    self.kubectl(&["get", "events", "-o", "wide"])
                )
            },
            || async {
                let pod = self.cluster.pod("default", name).await?;
                check(&pod).then_some(pod)
            },
        )
        .await
    }

    /// The log lines (text only) of `container` of `pod`, attempt `n`.
    pub fn log(&self, pod: &Value, container: &str, n: u32) -> Vec<String> {
        let meta = &pod["metadata"];
        let path = self.runtime.pod_log_dir().join(format!(
            "default_{}_{}/{container}/{n}.log",
            meta["name"].as_str().unwrap_or(""),
            meta["uid"].as_str().unwrap_or("")
        ));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // `<time> <stream> <F|P> <text>`
        text.lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_owned())
            .collect()
    }

    /// Sandboxes and containers of pod `uid` CRI still has.
    pub async fn in_cri(&self, uid: &str) -> usize {
        let of = |labels: &std::collections::HashMap<String, String>| {
            labels.get("io.kubernetes.pod.uid").map(String::as_str) == Some(uid)
        };
        let sandboxes = self.runtime.sandboxes().await;
        let containers = self.runtime.containers().await;
        sandboxes.iter().filter(|s| of(&s.labels)).count()
            + containers.iter().filter(|c| of(&c.labels)).count()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The agent first: it would make sandboxes while containerd is
        // being emptied.
        if let Some((_, task)) = self.agent.take() {
            task.abort();
        }
    }
}

pub fn container_state<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .map_or(&Value::Null, |c| c)
}

pub fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// An HTTP/1.0 GET of `/` on `ip:port`; the body.
pub fn http_get(ip: &str, port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("addr"),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
