//! The scheduler and controller load generator of `make bench`
//! (`tests/bench_controllers.py` runs it; it is not shipped). It drives a
//! running `cairn server --disable-agent` from a second process over HTTPS
//! on loopback, with the admin certificate from the server's data dir, and
//! prints JSON figures on stdout:
//!
//! ```text
//! ctl_load --data-dir DIR --port PORT <nodes|schedule|deployment> [--nodes N] ...
//! ```
//!
//! - `nodes`: registers `--nodes` Node objects (Ready, 64 cpus, 256 GiB)
//!   with their Leases, prints one line, then renews each Lease every
//!   10 s (an update, as the kubelet's), spread over the period as
//!   independent kubelets would, for
//!   `--seconds` (the driver pauses it with SIGSTOP for a quiet window
//!   and ends it with SIGTERM).
//! - `schedule`: creates `--pods` pods (100m cpu, 64 MiB each) on
//!   `--connections` connections and watches them; the figure is from the
//!   first create to the last binding seen on the watch.
//! - `deployment`: creates a `--replicas` Deployment, times until all its
//!   pods exist and are bound, then until it is available, then patches
//!   its template and times the rolling update until `updatedReplicas`
//!   and `availableReplicas` equal `replicas` for the new generation.
//!
//! No agent runs, so for `deployment` this process is the nodes' hollow
//! kubelets (as Kubernetes' kubemark): it marks each bound pod Running and
//! Ready through `pods/status` and finishes pods being deleted with the
//! final `gracePeriodSeconds: 0` delete a kubelet sends. No container
//! runs anywhere.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use cairn::controllers::client::Client;

#[derive(Parser)]
struct Args {
    /// The server's data dir (for its CA and admin certificate).
    #[arg(long)]
    data_dir: PathBuf,
    /// The server's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// What to do.
    phase: Phase,
    /// Nodes registered by `nodes`.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// How long `nodes` renews the Leases.
    #[arg(long, default_value_t = 3600)]
    seconds: u64,
    /// Pods created by `schedule`.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Replicas of the `deployment` Deployment.
    #[arg(long, default_value_t = 100)]
    replicas: usize,
    /// Concurrent connections creating pods.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Phase {
    Nodes,
    Schedule,
    Deployment,
}

/// How long a phase may take before it is reported as failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The kubelet's Lease renewal interval.
const RENEW: Duration = Duration::from_secs(10);

fn connect(args: &Args) -> Result<Client> {
    let tls = cairn::probe::admin_tls_config(&args.data_dir)?;
    let url = format!("https://127.0.0.1:{}", args.port);
    Ok(Client::remote_tls(&url, tls, "ctl-load")?)
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A `MicroTime`, as Lease times are.
fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Creates a namespace; one that exists is fine.
async fn namespace(client: &Client, name: &str) -> Result<()> {
    match client
        .post("/api/v1/namespaces", &json!({"metadata": {"name": name}}))
        .await
    {
        Err(err) if !err.is_conflict() => Err(err).context(format!("namespace {name}")),
        _ => Ok(()),
    }
}

/// A watch of `path` from the resourceVersion of a list of it: the events'
/// objects, in order, on a channel (closed when the watch ends).
async fn watch(client: &Client, path: &str) -> Result<mpsc::UnboundedReceiver<(String, Value)>> {
    let list = client.get(path).await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("a list without resourceVersion")?;
    let url = format!("{path}?watch=true&resourceVersion={rv}");
    let response = client
        .send(Method::GET, &url, "application/json", None)
        .await?;
    if response.status() != 200 {
        bail!("watch of {path} answered {}", response.status());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut body = response.into_body();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(mut event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                if tx.send((kind, event["object"].take())).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

fn node(name: &str) -> Value {
    let resources = json!({"cpu": "64", "memory": "256Gi", "pods": "110"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "bench": "hollow"}},
        "spec": {},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "hollow kubelet", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
        },
    })
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

/// Registers the nodes, says so, then renews their Leases.
async fn nodes(args: &Args) -> Result<()> {
    let client = connect(args)?;
    namespace(&client, "kube-node-lease").await?;
    let names: Vec<String> = (0..args.nodes).map(|i| format!("hollow-{i:03}")).collect();
    let start = Instant::now();
    let creates = names.iter().map(|name| {
        let client = client.clone();
        async move {
            client.post("/api/v1/nodes", &node(name)).await?;
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                         "renewTime": micro_now()},
            });
            client.post(LEASES, &lease).await
        }
    });
    let mut leases = Vec::new();
    for created in futures_util::future::join_all(creates).await {
        leases.push(created.context("registering a node")?);
    }
    println!(
        "{}",
        json!({"phase": "nodes", "nodes": args.nodes, "seconds": start.elapsed().as_secs_f64()})
    );
    std::io::stdout().flush()?;
    // One renewal every RENEW / nodes, round robin: each Lease every
    // RENEW. As the kubelet, an update (PUT) of the Lease it last wrote.
    let mut tick = tokio::time::interval(RENEW / args.nodes.max(1) as u32);
    // Stopped and continued by the driver (SIGSTOP/SIGCONT): no catching up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let (mut renewals, mut errors) = (0u64, 0u64);
    for i in (0..leases.len()).cycle() {
        tick.tick().await;
        if Instant::now() > deadline {
            break;
        }
        let lease = &mut leases[i];
        lease["spec"]["renewTime"] = micro_now().into();
        let path = format!("{LEASES}/{}", names[i]);
        match client.put(&path, lease).await {
            Ok(renewed) => {
                *lease = renewed;
                renewals += 1;
            }
            Err(_) => {
                errors += 1;
                if let Ok(current) = client.get(&path).await {
                    *lease = current;
                }
            }
        }
    }
    println!(
        "{}",
        json!({"phase": "heartbeat", "renewals": renewals, "errors": errors})
    );
    Ok(())
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

/// Creates the pods on several connections and waits for every binding.
async fn schedule(args: &Args) -> Result<Value> {
    let client = connect(args)?;
    let ns = "bench-sched";
    namespace(&client, ns).await?;
    let path = format!("/api/v1/namespaces/{ns}/pods");
    let mut events = watch(&client, &path).await?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = args.pods as u64;
    let start = Instant::now();
    let mut creators = Vec::new();
    for _ in 0..args.connections {
        let (client, next, errors, path) =
            (connect(args)?, next.clone(), errors.clone(), path.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return start.elapsed().as_secs_f64();
                }
                if client.post(&path, &pod(&format!("p{i:05}"))).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut placed: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while placed.len() < args.pods {
        let event = tokio::time::timeout_at(deadline.into(), events.recv()).await;
        let Ok(Some((_, pod))) = event else {
            bail!(
                "{} of {} pods bound when the watch ended or timed out",
                placed.len(),
                args.pods
            );
        };
        if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            placed.insert(name.to_owned(), node.to_owned());
        }
    }
    let bound = start.elapsed().as_secs_f64();
    let mut created: f64 = 0.0;
    for creator in creators {
        created = created.max(creator.await?);
    }
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in placed.values() {
        *per_node.entry(node).or_default() += 1;
    }
    Ok(json!({
        "pods": args.pods,
        "create_errors": errors.load(Ordering::Relaxed),
        "create_seconds": created,
        "bind_seconds": bound,
        "per_second": args.pods as f64 / bound,
        "nodes_used": per_node.len(),
        "max_pods_per_node": per_node.values().max(),
        "min_pods_per_node": per_node.values().min(),
    }))
}

/// What the hollow kubelets and the timers know of the Deployment's pods.
#[derive(Default)]
struct Pods {
    /// Live pods (no deletionTimestamp) → bound?
    live: HashMap<String, bool>,
    /// Uids already marked Ready / already finished.
    readied: HashSet<String>,
    finished: HashSet<String>,
    status_patches: u64,
    final_deletes: u64,
}

impl Pods {
    /// Applies one watch event and acts on it as the pod's kubelet would.
    fn apply(&mut self, client: &Client, kind: &str, pod: &Value) {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
        if kind == "DELETED" || terminating {
            self.live.remove(&name);
        } else {
            self.live.insert(name.clone(), !node.is_empty());
        }
        if node.is_empty() || kind == "DELETED" {
            return;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{name}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default()
        );
        let client = client.clone();
        if terminating {
            if self.finished.insert(uid.clone()) {
                self.final_deletes += 1;
                let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
                tokio::spawn(async move { client.delete(&path, &options).await });
            }
        } else if self.readied.insert(uid) {
            self.status_patches += 1;
            tokio::spawn(async move {
                client
                    .merge_patch(&format!("{path}/status"), &running())
                    .await
            });
        }
    }

    fn bound(&self) -> usize {
        self.live.values().filter(|b| **b).count()
    }
}

/// The status a kubelet reports once the pod's one container runs and is ready.
fn running() -> Value {
    let t = now();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": t});
    json!({"status": {
        "phase": "Running",
        "startTime": t,
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
        "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": true,
                               "started": true, "restartCount": 0,
                               "containerID": "hollow://c", "state": {"running": {"startedAt": t}}}],
    }})
}

/// Whether the Deployment's status says its generation `generation` rolled out.
fn rolled_out(d: &Value, generation: i64, replicas: usize) -> bool {
    let status = &d["status"];
    let n = replicas as u64;
    status["observedGeneration"].as_i64() >= Some(generation)
        && status["updatedReplicas"].as_u64() == Some(n)
        && status["availableReplicas"].as_u64() == Some(n)
        && status["replicas"].as_u64() == Some(n)
}

async fn deployment(args: &Args) -> Result<Value> {
    let client = connect(args)?;
    let ns = "bench-deploy";
    namespace(&client, ns).await?;
    let mut pod_events = watch(&client, &format!("/api/v1/namespaces/{ns}/pods")).await?;
    let deployments = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let mut deployment_events = watch(&client, &deployments).await?;
    let mut pods = Pods::default();
    let mut latest = Value::Null;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    // Runs the hollow kubelets until `done` holds.
    macro_rules! until {
        ($what:expr, $done:expr) => {
            while !($done)(&pods, &latest) {
                let next = tokio::time::timeout_at(deadline.into(), async {
                    tokio::select! {
                        e = pod_events.recv() => e.map(|e| (true, e)),
                        e = deployment_events.recv() => e.map(|e| (false, e)),
                    }
                });
                match next.await {
                    Ok(Some((true, (kind, pod)))) => pods.apply(&client, &kind, &pod),
                    Ok(Some((false, (_, d)))) => latest = d,
                    _ => bail!(
                        "{}: timed out or a watch ended ({} pods bound)",
                        $what,
                        pods.bound()
                    ),
                }
            }
        };
    }
    let n = args.replicas;
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": n,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                         "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
        },
    });
    let start = Instant::now();
    let created = client.post(&deployments, &manifest).await?;
    let generation = created["metadata"]["generation"].as_i64().unwrap_or(1);
    until!("all pods bound", |p: &Pods, _: &Value| p.bound() >= n);
    let all_bound = start.elapsed().as_secs_f64();
    until!("available", |_: &Pods, d: &Value| rolled_out(
        d, generation, n
    ));
    let available = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let patch =
        json!({"spec": {"template": {"metadata": {"annotations": {"bench/revision": "2"}}}}});
    let patched = client
        .merge_patch(&format!("{deployments}/web"), &patch)
        .await?;
    let generation = patched["metadata"]["generation"].as_i64().unwrap_or(2);
    until!("rolling update", |_: &Pods, d: &Value| rolled_out(
        d, generation, n
    ));
    let rollout = start.elapsed().as_secs_f64();
    Ok(json!({
        "replicas": n,
        "all_bound_seconds": all_bound,
        "available_seconds": available,
        "rollout_seconds": rollout,
        "status_patches": pods.status_patches,
        "final_deletes": pods.final_deletes,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (name, figures) = match args.phase {
        Phase::Nodes => return nodes(&args).await,
        Phase::Schedule => ("schedule", schedule(&args).await?),
        Phase::Deployment => ("deployment", deployment(&args).await?),
    };
    let mut out = figures;
    out["phase"] = name.into();
    println!("{out}");
    Ok(())
}
