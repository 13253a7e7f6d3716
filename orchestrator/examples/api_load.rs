//! The API load generator of `make bench` (`tests/bench_api.py` runs it; it
//! is not shipped). It drives a running `cairn server` from a second process
//! over HTTPS on loopback, with the admin certificate from the server's data
//! dir, and prints one JSON object of figures for the phase it ran:
//!
//! ```text
//! api_load --data-dir DIR --port PORT <get|list|writes|watch|fill|heartbeat> [--seconds S] ...
//! ```
//!
//! - `get` / `list`: closed-loop throughput of GET one ConfigMap / LIST 100,
//!   `--connections` workers, each on its own keep-alive HTTP/1.1 connection.
//! - `writes`: open-loop creates and merge patches at `--rate` per second;
//!   latency is measured from the scheduled start, so queueing counts.
//! - `watch`: `--watchers` watches on one namespace, then a burst of
//!   `--objects` creates; fan-out latency is event arrival minus the time
//!   the creating client sent the write (carried in the object).
//! - `fill`: creates `--objects` ConfigMaps (for the RSS-with-objects figure).
//! - `heartbeat`: renews one Lease every 10 s, as a node agent does, for
//!   `--seconds` (the driver measures bytes written meanwhile).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// The server's data dir (for its CA and admin certificate).
    #[arg(long)]
    data_dir: PathBuf,
    /// The server's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// What to measure.
    phase: Phase,
    /// Duration of the timed phases.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections of the throughput phases.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Writes per second of `writes`.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Watches of `watch`.
    #[arg(long, default_value_t = 500)]
    watchers: usize,
    /// Objects created by `watch` (the burst) and `fill`.
    #[arg(long, default_value_t = 100)]
    objects: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Phase {
    Get,
    List,
    Writes,
    Watch,
    Fill,
    Heartbeat,
}

type Sender = SendRequest<Full<Bytes>>;

/// How to reach the server.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    async fn connect(&self) -> Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await?;
        let (sender, connection) = handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn request(
    method: Method,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> Request<Full<Bytes>> {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("a request from constant parts")
}

/// Sends one request and reads the whole answer.
async fn call(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<(u16, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn post(sender: &mut Sender, path: &str, body: &Value) -> Result<u16> {
    Ok(call(
        sender,
        request(Method::POST, path, "application/json", Some(body)),
    )
    .await?
    .0)
}

/// Creates a namespace; one that exists is fine.
async fn namespace(sender: &mut Sender, name: &str) -> Result<()> {
    match post(
        sender,
        "/api/v1/namespaces",
        &json!({"metadata": {"name": name}}),
    )
    .await?
    {
        201 | 409 => Ok(()),
        code => bail!("creating namespace {name}: HTTP {code}"),
    }
}

fn configmap(name: &str, extra: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "data": {"payload": "x".repeat(200), "extra": extra.to_string()},
    })
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "count": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p90_ms": percentile(&ms, 90.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

/// `connections` workers sending `make()` requests for `seconds`.
async fn closed_loop(
    client: &Client,
    connections: usize,
    seconds: u64,
    make: impl Fn() -> Request<Full<Bytes>> + Clone + Send + 'static,
) -> Result<Value> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut sender = client.connect().await?;
        let (done, errors, make) = (done.clone(), errors.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match call(&mut sender, make()).await {
                    Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let n = done.load(Ordering::Relaxed);
    Ok(json!({
        "requests": n,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": seconds,
        "connections": connections,
        "per_second": n as f64 / seconds as f64,
    }))
}

async fn get(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "bench-get").await?;
    post(
        &mut s,
        "/api/v1/namespaces/bench-get/configmaps",
        &configmap("target", json!(0)),
    )
    .await?;
    closed_loop(client, args.connections, args.seconds, || {
        request(
            Method::GET,
            "/api/v1/namespaces/bench-get/configmaps/target",
            "application/json",
            None,
        )
    })
    .await
}

async fn list(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "bench-list").await?;
    for i in 0..100 {
        let path = "/api/v1/namespaces/bench-list/configmaps";
        post(&mut s, path, &configmap(&format!("cm-{i}"), json!(i))).await?;
    }
    let mut result = closed_loop(client, args.connections, args.seconds, || {
        request(
            Method::GET,
            "/api/v1/namespaces/bench-list/configmaps",
            "application/json",
            None,
        )
    })
    .await?;
    result["items_per_list"] = 100.into();
    Ok(result)
}

async fn writes(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "bench-writes").await?;
    let (pool_tx, mut pool_rx) = mpsc::unbounded_channel::<Sender>();
    for _ in 0..args.connections {
        pool_tx.send(client.connect().await?)?;
    }
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(bool, f64)>();
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now();
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        // A free connection; waiting for one is part of the latency.
        let mut sender = match pool_rx.try_recv() {
            Ok(sender) => sender,
            Err(_) => client.connect().await?,
        };
        let (pool_tx, lat_tx) = (pool_tx.clone(), lat_tx.clone());
        tokio::spawn(async move {
            // Even ops create a ConfigMap, odd ones patch the one before.
            let name = format!("w-{}", i / 2);
            let req = if i % 2 == 0 {
                let body = configmap(&name, json!(i));
                request(
                    Method::POST,
                    "/api/v1/namespaces/bench-writes/configmaps",
                    "application/json",
                    Some(&body),
                )
            } else {
                let body = json!({"data": {"extra": i.to_string()}});
                let path = format!("/api/v1/namespaces/bench-writes/configmaps/{name}");
                request(
                    Method::PATCH,
                    &path,
                    "application/merge-patch+json",
                    Some(&body),
                )
            };
            let ok = matches!(call(&mut sender, req).await, Ok((200 | 201, _)));
            let _ = lat_tx.send((ok, scheduled.elapsed().as_secs_f64() * 1000.0));
            let _ = pool_tx.send(sender);
        });
    }
    drop(lat_tx);
    let (mut ok, mut errors) = (Vec::new(), 0u64);
    while let Some((good, ms)) = lat_rx.recv().await {
        if good { ok.push(ms) } else { errors += 1 }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut summary = latency_summary(ok);
    summary["errors"] = errors.into();
    summary["target_per_second"] = args.rate.into();
    summary["achieved_per_second"] = (total as f64 / elapsed).into();
    Ok(summary)
}

/// One watch: counts events and records their fan-out latencies.
async fn watcher(
    client: Client,
    rv: String,
    expect: usize,
    out: mpsc::UnboundedSender<f64>,
) -> Result<()> {
    let mut sender = client.connect().await?;
    let path = format!("/api/v1/namespaces/bench-watch/configmaps?watch=true&resourceVersion={rv}");
    sender.ready().await?;
    let response = sender
        .send_request(request(Method::GET, &path, "application/json", None))
        .await?;
    if response.status() != 200 {
        bail!("watch answered {}", response.status());
    }
    let mut body = response.into_body();
    let (mut buf, mut seen) = (Vec::new(), 0);
    while seen < expect {
        let Some(frame) = body.frame().await else {
            bail!("watch ended early")
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)?;
            if let Some(sent) = event["object"]["data"]["extra"]
                .as_str()
                .and_then(|t| t.parse::<u64>().ok())
            {
                let _ = out.send(unix_micros().saturating_sub(sent) as f64 / 1000.0);
                seen += 1;
            }
        }
    }
    Ok(())
}

async fn watch(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "bench-watch").await?;
    let (_, list) = call(
        &mut s,
        request(
            Method::GET,
            "/api/v1/namespaces/bench-watch/configmaps",
            "application/json",
            None,
        ),
    )
    .await?;
    let list: Value = serde_json::from_slice(&list)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list without resourceVersion")?
        .to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..args.watchers {
        tasks.push(tokio::spawn(watcher(
            client.clone(),
            rv.clone(),
            args.objects,
            tx.clone(),
        )));
    }
    drop(tx);
    // Let every watch reach the server before the burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut sender = client.connect().await?;
        let objects = args.objects;
        writers.push(tokio::spawn(async move {
            for i in (w..objects).step_by(4) {
                // The watchers' latency source: `extra` = the send time.
                let mut body = configmap(&format!("burst-{i}"), json!(0));
                body["data"]["extra"] = unix_micros().to_string().into();
                let _ = post(
                    &mut sender,
                    "/api/v1/namespaces/bench-watch/configmaps",
                    &body,
                )
                .await;
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    let burst_s = burst.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let collect = async {
        while let Some(ms) = rx.recv().await {
            latencies.push(ms);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(120), collect).await;
    let failed = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| !matches!(r, Ok(Ok(()))))
        .count();
    let mut summary = latency_summary(latencies);
    summary["watchers"] = args.watchers.into();
    summary["objects"] = args.objects.into();
    summary["expected_deliveries"] = (args.watchers * args.objects).into();
    summary["failed_watchers"] = failed.into();
    summary["burst_write_seconds"] = burst_s.into();
    Ok(summary)
}

async fn fill(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "bench-fill").await?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let mut sender = client.connect().await?;
        let (next, objects) = (next.clone(), args.objects as u64);
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= objects {
                    return errors;
                }
                let body = configmap(&format!("fill-{i}"), json!(i));
                if !matches!(
                    post(
                        &mut sender,
                        "/api/v1/namespaces/bench-fill/configmaps",
                        &body
                    )
                    .await,
                    Ok(201)
                ) {
                    errors += 1;
                }
            }
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(
        json!({"objects": args.objects, "errors": errors, "seconds": seconds,
              "per_second": args.objects as f64 / seconds}),
    )
}

async fn heartbeat(client: &Client, args: &Args) -> Result<Value> {
    let mut s = client.connect().await?;
    namespace(&mut s, "kube-node-lease").await?;
    let lease = |time: String| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "bench-node"},
            "spec": {"holderIdentity": "bench-node", "leaseDurationSeconds": 40, "renewTime": time},
        })
    };
    let now = || {
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    let base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    match post(&mut s, base, &lease(now())).await? {
        201 | 409 => {}
        code => bail!("creating the lease: HTTP {code} (are leases served?)"),
    }
    let (mut renewals, mut errors) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(
            Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
        let patch = json!({"spec": {"renewTime": now()}});
        let req = request(
            Method::PATCH,
            &format!("{base}/bench-node"),
            "application/merge-patch+json",
            Some(&patch),
        );
        match call(&mut s, req).await {
            Ok((200, _)) => renewals += 1,
            _ => errors += 1,
        }
    }
    Ok(json!({"renewals": renewals, "errors": errors, "seconds": args.seconds}))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tls = cairn::probe::admin_tls_config(&args.data_dir)?;
    let client = Client {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let (name, figures) = match args.phase {
        Phase::Get => ("get", get(&client, &args).await?),
        Phase::List => ("list", list(&client, &args).await?),
        Phase::Writes => ("writes", writes(&client, &args).await?),
        Phase::Watch => ("watch", watch(&client, &args).await?),
        Phase::Fill => ("fill", fill(&client, &args).await?),
        Phase::Heartbeat => ("heartbeat", heartbeat(&client, &args).await?),
    };
    let mut out = figures;
    out["phase"] = name.into();
    println!("{out}");
    Ok(())
}
