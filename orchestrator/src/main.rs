//! `cairn`: the cluster binary (`cairn server`, `cairn agent`). Thin:
//! arguments, logging, then the library's `run`.
//!
//! `cairn server` runs the API server, the controllers and the node agent
//! (this machine's kubelet) in one process; `cairn agent` runs only the
//! agent, joining a server over HTTPS with the server token (`--token`,
//! the server's `--token`) and the cluster CA (`--ca-file`, the server's
//! `<data-dir>/pki/ca.crt`) to verify it. With a `K10<hash>::` join token
//! the CA may be left out: the agent fetches it from the server's
//! `/cacerts` and keeps it only if its hash is the token's.
//!
//! Flags follow K3s' spelling. A bad flag value is a usage error (exit
//! status 2), reported before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cairn::api::{Compaction, Config};
use cairn::store::Endpoint;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn cluster: API server, datastore, controllers and node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and the node agent, unless --disable-agent).
    Server(Box<Server>),
    /// Run the node agent, joining a server.
    Agent(Box<Agent>),
    /// Ask the local server for a health endpoint (exit 0 when it answers 200).
    Healthz {
        /// The server's data dir (its `pki/` holds the CA and admin certificate).
        #[arg(long, default_value = "/var/lib/cairn/server")]
        data_dir: PathBuf,
        /// The server's HTTPS port on the loopback address.
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// The endpoint: /readyz, /livez or /healthz.
        #[arg(long, default_value = "/readyz", value_parser = ["/readyz", "/livez", "/healthz"])]
        path: String,
        /// Also require this Node to be Ready (its agent up, runtime and pod network ready).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Ask this server instead (an agent's), with the token in CAIRN_TOKEN
        /// and the CA in --ca-file, rather than the local server's admin credentials.
        #[arg(long, value_name = "URL", requires = "ca_file")]
        server: Option<String>,
        /// The cluster CA (PEM) to verify --server with.
        #[arg(long, value_name = "PATH", requires = "server")]
        ca_file: Option<PathBuf>,
    },
    /// Import image archives (OCI layout or docker-save *.tar) into containerd.
    ImportImages {
        /// containerd's socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        container_runtime_endpoint: PathBuf,
        /// containerd namespace (CRI's is k8s.io).
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
        /// Snapshotter to unpack into (CRI's is overlayfs).
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Archives, or directories whose *.tar files are imported.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Args)]
struct Server {
    /// State directory: datastore, PKI, admin kubeconfig, tokens.csv.
    #[arg(long, default_value = "/var/lib/cairn/server")]
    data_dir: PathBuf,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443, value_parser = clap::value_parser!(u16).range(1..))]
    https_listen_port: u16,
    /// Address to listen on (0.0.0.0: every IPv4 address).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Listen address as ADDR:PORT (overrides --bind-address and --https-listen-port; port 0 picks one).
    #[arg(long, hide = true, conflicts_with_all = ["https_listen_port", "bind_address"])]
    listen: Option<SocketAddr>,
    /// Also write the admin kubeconfig to this path (it is always in the data dir).
    #[arg(long, value_name = "PATH")]
    write_kubeconfig: Option<PathBuf>,
    /// Mode of the --write-kubeconfig file, in octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    write_kubeconfig_mode: u32,
    /// Run without the node agent (an API server only).
    #[arg(long)]
    disable_agent: bool,
    /// Datastore: empty for the embedded SQLite in the data dir, or
    /// postgres://user:pass@host:port/db for a PostgreSQL shared by several servers.
    #[arg(long, value_name = "URL", default_value = "")]
    datastore_endpoint: Endpoint,
    /// Extra hostname or IP address for the serving certificate (repeatable, or comma-separated).
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = parse_san)]
    tls_san: Vec<String>,
    /// Server token: a bearer token for user `node` (group system:nodes), as nodes will join with.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Time between datastore compactions ("5m", "30s"; "0s" disables them).
    #[arg(long, hide = true, default_value = "5m", value_parser = parse_duration)]
    datastore_compact_interval: Duration,
    /// Revisions kept by compaction below the current one.
    #[arg(long, hide = true, default_value_t = 1000)]
    datastore_compact_retain: u32,
    /// Run without the controller manager and scheduler (a quiet API server).
    #[arg(long)]
    disable_controllers: bool,
    /// Apply every *.yaml, *.yml and *.json file in this directory at start
    /// and whenever it changes (removing a file deletes nothing).
    #[arg(long, value_name = "DIR")]
    manifests_dir: Option<PathBuf>,
    /// How often the manifests directory is read for changes.
    #[arg(long, hide = true, default_value = "5s", value_parser = parse_duration)]
    manifests_interval: Duration,
    /// Import every *.tar image archive in this directory into containerd at start.
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// How long a node's Lease and status may go unrenewed before it is
    /// marked Unknown and tainted unreachable.
    #[arg(long, hide = true, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// The same for a node that never posted its status, from its creation.
    #[arg(long, hide = true, default_value = "60s", value_parser = parse_duration)]
    node_startup_grace_period: Duration,
    /// Finished (Succeeded or Failed) pods kept before the oldest are
    /// deleted; 0 keeps them all.
    #[arg(long, value_name = "N", default_value_t = cairn::controllers::podgc::TERMINATED_THRESHOLD)]
    terminated_pod_gc_threshold: usize,
    /// How long pods bound to a node missing from the controllers' cache wait
    /// before the node is looked up and, if gone, the pods deleted.
    #[arg(long, hide = true, default_value = "40s", value_parser = parse_duration)]
    pod_gc_quarantine: Duration,
    /// Seconds pods tolerate a not-ready node by default (the toleration added to pods without one).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// Seconds pods tolerate an unreachable node by default.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// The pod network (IPv4); each node gets a /24 of it.
    #[arg(long, value_name = "CIDR", default_value = "10.42.0.0/16", value_parser = parse_cluster_cidr)]
    cluster_cidr: cairn::controllers::nodeipam::Cidr,
    /// The Service network (IPv4, /12 to /28); ClusterIPs come from it.
    #[arg(long, value_name = "CIDR", default_value = "10.43.0.0/16")]
    service_cidr: cairn::api::strategy::ServiceNetwork,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args)]
struct Agent {
    /// The server to join (https://HOST:6443).
    #[arg(long, env = "CAIRN_URL", value_name = "URL")]
    server: String,
    /// The server token (the server's --token).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: String,
    /// The cluster CA certificate (PEM) to verify the server with: the
    /// server's <data-dir>/pki/ca.crt. When the file is missing and the
    /// token is a K10<hash>:: join token, the CA is fetched from the server,
    /// checked against the hash and written there [default: <root-dir>/ca.crt].
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Import every *.tar image archive in this directory into containerd at start.
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// The node agent's settings, in `cairn server` and `cairn agent`.
#[derive(Args)]
struct NodeArgs {
    /// This node's name [default: the host name].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// The address to report for this node [default: the first non-loopback IPv4 address].
    #[arg(long, value_name = "IP")]
    node_ip: Option<IpAddr>,
    /// containerd's socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    container_runtime_endpoint: PathBuf,
    /// The agent's state directory [default: /var/lib/cairn/agent].
    #[arg(long, value_name = "DIR")]
    root_dir: Option<PathBuf>,
    /// Where the agent writes the CNI configuration containerd reads [default: /run/cairn/cni/net.d].
    #[arg(long, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Port of the agent API the API server reaches for logs, exec, attach
    /// and port-forward (0: any free port, reported in the Node's status).
    #[arg(long, value_name = "PORT", default_value_t = 10250)]
    agent_port: u16,
    /// Where container logs go [default: /var/log/pods].
    #[arg(long, hide = true, value_name = "DIR")]
    pod_log_dir: Option<PathBuf>,
    /// The pod network's bridge [default: cni0].
    #[arg(long, hide = true, value_name = "NAME")]
    cni_bridge: Option<String>,
    /// Image archives imported at every start (the pause image).
    #[arg(long, hide = true, value_name = "DIR")]
    system_images_dir: Option<PathBuf>,
    /// How often the node's status is checked (written only when it changed).
    #[arg(long, hide = true, default_value = "10s", value_parser = parse_duration)]
    node_status_update_frequency: Duration,
    /// How often the node's Lease is renewed.
    #[arg(long, hide = true, default_value = "10s", value_parser = parse_duration)]
    node_lease_renew_interval: Duration,
    /// cairn-init's config status file, reported as the Node condition InvalidConfig.
    #[arg(long, hide = true, value_name = "FILE")]
    config_status_file: Option<PathBuf>,
    /// Hard eviction thresholds, the kubelet's spelling: below them the node
    /// reports pressure (signals not named keep their defaults).
    #[arg(
        long,
        value_name = "SIGNAL<VALUE,...",
        default_value = "memory.available<100Mi,nodefs.available<10%,pid.available<10%"
    )]
    eviction_hard: cairn::agent::node::eviction::Thresholds,
    /// The cluster's DNS domain, in pods' resolv.conf search list.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// A label for this node, key=value (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    node_label: Vec<(String, String)>,
    /// A taint for this node, key[=value]:Effect (repeatable).
    #[arg(long, value_name = "TAINT", value_parser = parse_taint)]
    node_taint: Vec<cairn_image::config::values::Taint>,
    /// Usage of the image filesystem (percent) at which unused images are
    /// removed, least recently used first (100: never).
    #[arg(long, value_name = "PERCENT", default_value_t = 85,
        value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Usage of the image filesystem (percent) image garbage collection frees down to.
    #[arg(long, value_name = "PERCENT", default_value_t = 80,
        value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// Unused images younger than this (since the agent first saw them) are kept.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    image_minimum_gc_age: Duration,
    /// A container's log file larger than this is rotated (quantity: 10Mi, 512Ki).
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = parse_size)]
    container_log_max_size: u64,
    /// Log files kept per container, the current one included (at least 2).
    #[arg(long, value_name = "N", default_value_t = 5)]
    container_log_max_files: usize,
}

impl NodeArgs {
    /// The agent's configuration; `control_plane` inside a server.
    fn config(&self, control_plane: bool) -> anyhow::Result<cairn::agent::Config> {
        let name = self
            .node_name
            .clone()
            .unwrap_or_else(cairn::agent::node::machine::hostname);
        let mut config = cairn::agent::Config::new(name);
        config.runtime_endpoint = self.container_runtime_endpoint.clone();
        if let Some(dir) = &self.root_dir {
            config.root_dir = dir.clone();
        }
        if let Some(dir) = &self.cni_conf_dir {
            config.cni_conf_dir = dir.clone();
        }
        config.node_ip = self.node_ip;
        config.agent_port = self.agent_port;
        if let Some(dir) = &self.pod_log_dir {
            config.pod_log_dir = dir.clone();
        }
        if let Some(bridge) = &self.cni_bridge {
            config.cni_bridge = bridge.clone();
        }
        if let Some(dir) = &self.system_images_dir {
            config.system_images_dir = dir.clone();
        }
        config.control_plane = control_plane;
        let floor = Duration::from_millis(100);
        config.status_interval = self.node_status_update_frequency.max(floor);
        config.lease_interval = self.node_lease_renew_interval.max(floor);
        config.node_labels = self.node_label.iter().cloned().collect();
        config.node_taints = self.node_taint.clone();
        config.config_status_file = self.config_status_file.clone();
        config.cluster_domain = self.cluster_domain.clone();
        config.eviction_hard = self.eviction_hard;
        config.image_gc = cairn::agent::imagegc::Policy::new(
            self.image_gc_high_threshold,
            self.image_gc_low_threshold,
            self.image_minimum_gc_age,
        )
        .map_err(anyhow::Error::msg)?;
        config.log_rotation = cairn::agent::logrotate::Policy::new(
            self.container_log_max_size,
            self.container_log_max_files,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 0644"))
}

fn parse_san(s: &str) -> Result<String, String> {
    cairn::api::pki::check_san(s).map_err(|e| e.to_string())
}

fn parse_cluster_cidr(s: &str) -> Result<cairn::controllers::nodeipam::Cidr, String> {
    let cidr: cairn::controllers::nodeipam::Cidr = s.parse()?;
    if cidr.prefix() > 24 {
        return Err(format!(
            "{s:?}: each node gets a /24, so the network must be /24 or larger"
        ));
    }
    Ok(cidr)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    use cairn_image::config::values::{LabelKey, LabelValue};
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    key.parse::<LabelKey>().map_err(|e| format!("{s:?}: {e}"))?;
    value
        .parse::<LabelValue>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_taint(s: &str) -> Result<cairn_image::config::values::Taint, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<u64, String> {
    cairn::agent::node::eviction::quantity_bytes(s)
        .ok_or_else(|| format!("{s:?} is not a size such as 10Mi, 512Ki or 1000000"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration such as 5m or 30s: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("cairn {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server(args) => server(*args),
        Command::Agent(args) => agent(*args),
        Command::ImportImages {
            container_runtime_endpoint,
            namespace,
            snapshotter,
            paths,
        } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            let options = cairn::images::Options {
                socket: container_runtime_endpoint,
                namespace,
                snapshotter,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(import_images(paths, options))
        }
        Command::Healthz {
            data_dir,
            port,
            path,
            node,
            server,
            ca_file,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            if let (Some(server), Some(ca_file)) = (server, ca_file) {
                let token = std::env::var("CAIRN_TOKEN").unwrap_or_default();
                let ca = std::fs::read(&ca_file)
                    .with_context(|| format!("reading the CA file {}", ca_file.display()))?;
                let remote = cairn::probe::Remote::new(&server, &ca, &token)?;
                let body = runtime.block_on(remote.run(&path, node.as_deref()))?;
                println!("{body}");
                return Ok(());
            }
            let mut probe = cairn::probe::Probe::readyz(&data_dir, port);
            probe.path = path;
            let body = runtime.block_on(probe.run())?;
            println!("{body}");
            if let Some(node) = node {
                println!("{}", runtime.block_on(probe.node_ready(&node))?);
            }
            Ok(())
        }
    }
}

fn server(args: Server) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let data_dir = args.data_dir.clone();
    let mut config = Config::new(args.data_dir);
    config.listen = args
        .listen
        .unwrap_or(SocketAddr::new(args.bind_address, args.https_listen_port));
    config.datastore = args.datastore_endpoint;
    config.tls_sans = args.tls_san;
    config.write_kubeconfig = args
        .write_kubeconfig
        .map(|path| (path, args.write_kubeconfig_mode));
    config.token = args.token;
    config.compaction = Compaction {
        interval: args.datastore_compact_interval,
        retain: i64::from(args.datastore_compact_retain),
    };
    config.controllers = !args.disable_controllers;
    config.controller_settings = cairn::controllers::Settings {
        node_monitor_grace_period: args.node_monitor_grace_period,
        node_startup_grace_period: args.node_startup_grace_period,
        cluster_cidr: args.cluster_cidr,
        terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
        pod_gc_quarantine: args.pod_gc_quarantine,
    };
    config.service_network = args.service_cidr;
    config.default_tolerations = cairn::api::strategy::DefaultTolerations {
        not_ready_seconds: args.default_not_ready_toleration_seconds,
        unreachable_seconds: args.default_unreachable_toleration_seconds,
    };
    config.agent = if args.disable_agent {
        None
    } else {
        let mut agent = args.node.config(true)?;
        agent.cluster_cidr = args.cluster_cidr.to_string();
        // The API server's kubelet-client certificate is signed by this CA.
        agent.client_ca_file = Some(data_dir.join("pki").join("ca.crt"));
        Some(agent)
    };
    if let Some(dir) = args.images_dir {
        let options = cairn::images::Options {
            socket: args.node.container_runtime_endpoint.clone(),
            ..Default::default()
        };
        runtime.spawn(cairn::images::import_at_start(
            dir,
            options,
            Duration::from_secs(120),
        ));
    }
    if let Some(dir) = args.manifests_dir {
        let addr = loopback(config.listen);
        let poll = args.manifests_interval.max(Duration::from_millis(100));
        runtime.spawn(cairn::manifests::run(dir, data_dir.clone(), addr, poll));
    }
    runtime
        .block_on(cairn::api::run(config, shutdown_signal()))
        .with_context(|| format!("cairn server (data dir {})", data_dir.display()))
}

/// `cairn agent`: the node agent alone, joining `--server`.
fn agent(args: Agent) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut config = args.node.config(false)?;
    let ca_file = args
        .ca_file
        .clone()
        .unwrap_or_else(|| config.root_dir.join("ca.crt"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let ca = runtime.block_on(cairn::agent::join::cluster_ca(
        &args.server,
        &args.token,
        &ca_file,
    ))?;
    let client = cairn::controllers::client::Client::remote(
        &args.server,
        &ca,
        &args.token,
        cairn::agent::MANAGER,
    )
    .with_context(|| format!("server {}", args.server))?;
    config.client_ca_file = Some(ca_file);
    if let Some(dir) = args.images_dir {
        let options = cairn::images::Options {
            socket: args.node.container_runtime_endpoint.clone(),
            ..Default::default()
        };
        runtime.spawn(cairn::images::import_at_start(
            dir,
            options,
            Duration::from_secs(120),
        ));
    }
    runtime.block_on(cairn::agent::run(config, client, shutdown_signal()));
    Ok(())
}

/// `cairn import-images`: every archive named or in a named directory;
/// fails when any did not import.
async fn import_images(paths: Vec<PathBuf>, options: cairn::images::Options) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut containerd = None;
    for path in paths {
        if path.is_dir() {
            let results = cairn::images::import_dir(&path, &options).await?;
            failed += results.iter().filter(|(_, r)| r.is_err()).count();
            continue;
        }
        let client = match &mut containerd {
            Some(client) => client,
            None => containerd.insert(
                cairn::images::containerd::Containerd::connect(&options.socket, &options.namespace)
                    .await?,
            ),
        };
        match cairn::images::import_file(client, &path, &options).await {
            Ok(names) => println!("{}: {}", path.display(), names.join(", ")),
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} archive(s) not imported");
    Ok(())
}

/// Where this machine reaches a server listening on `listen`: loopback
/// when it listens on every address.
fn loopback(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_durations() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("888").is_err());
        assert!(parse_mode("1777").is_err());
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "cairn",
            "server",
            "--https-listen-port",
            "7443",
            "--tls-san",
            "a.example,10.0.0.1",
            "--tls-san",
            "b.example",
            "--datastore-endpoint",
            "postgres://u:p@db:5432/cairn",
        ])
        .expect("parse");
        let Command::Server(s) = cli.command else {
            panic!("not server")
        };
        assert_eq!(s.https_listen_port, 7443);
        assert_eq!(s.tls_san, ["a.example", "10.0.0.1", "b.example"]);
        assert!(matches!(s.datastore_endpoint, Endpoint::Postgres(_)));
        let cli = Cli::try_parse_from([
            "cairn",
            "agent",
            "--server",
            "https://10.0.0.1:6443",
            "--token",
            "t",
            "--ca-file",
            "/ca.crt",
            "--node-ip",
            "10.0.0.2",
        ])
        .expect("parse");
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        let config = a.node.config(false).expect("config");
        assert_eq!(config.node_ip, Some("10.0.0.2".parse().expect("ip")));
        assert!(!config.control_plane);
        assert_eq!(config.status_interval, Duration::from_secs(10));
        // Without --ca-file the CA comes from the server, pinned by a K10 token.
        let cli = Cli::try_parse_from(["cairn", "agent", "--server", "https://s", "--token", "t"])
            .expect("no --ca-file");
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert!(a.ca_file.is_none());
        for bad in [
            &[
                "--server",
                "https://s",
                "--token",
                "t",
                "--ca-file",
                "c",
                "--node-ip",
                "x",
            ][..],
            &[
                "--server",
                "https://s",
                "--token",
                "t",
                "--node-label",
                "no-equals",
            ],
            &[
                "--server",
                "https://s",
                "--token",
                "t",
                "--node-taint",
                "k=v:Sometimes",
            ],
            &["--token", "t", "--ca-file", "c"],
        ] {
            let mut argv = vec!["cairn", "agent"];
            argv.extend_from_slice(bad);
            // CAIRN_URL and CAIRN_TOKEN could fill in the missing flags.
            if std::env::var_os("CAIRN_URL").is_none() {
                assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
            }
        }
        for bad in [
            &["--datastore-endpoint", "mysql://u@h/db"][..],
            &["--https-listen-port", "0"],
            &["--https-listen-port", "70000"],
            &["--bind-address", "localhost"],
            &["--tls-san", "a b"],
            &["--write-kubeconfig-mode", "9"],
        ] {
            let mut argv = vec!["cairn", "server"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn housekeeping_flags() {
        let agent = |extra: &[&str]| {
            let mut args = vec!["cairn", "agent", "--server", "https://s", "--token", "t"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(Command::Agent(a)) => a.node.config(false).map_err(|e| e.to_string()),
                Ok(_) => panic!("not agent"),
                Err(e) => Err(e.to_string()),
            }
        };
        let config = agent(&[]).expect("defaults");
        assert_eq!(config.image_gc, cairn::agent::imagegc::Policy::default());
        assert_eq!(
            config.log_rotation,
            cairn::agent::logrotate::Policy::default()
        );
        let config = agent(&[
            "--image-gc-high-threshold=90",
            "--image-gc-low-threshold=70",
            "--image-minimum-gc-age=0s",
            "--container-log-max-size=2Ki",
            "--container-log-max-files=2",
        ])
        .expect("set");
        assert_eq!(
            (config.image_gc.high_percent, config.image_gc.low_percent),
            (90, 70)
        );
        assert_eq!(config.image_gc.min_age, Duration::ZERO);
        assert_eq!(config.log_rotation.max_size, 2048);
        assert_eq!(config.log_rotation.max_files, 2);
        for bad in [
            &["--image-gc-high-threshold=101"][..],
            &[
                "--image-gc-high-threshold=70",
                "--image-gc-low-threshold=80",
            ],
            &["--container-log-max-size=ten"],
            &["--container-log-max-files=1"],
        ] {
            assert!(agent(bad).is_err(), "{bad:?}");
        }
    }
}
