//! `cairn`: the cluster binary (`cairn server`; `cairn agent` comes with the
//! node agent). Thin: arguments, logging, then the library's `run`.
//!
//! `cairn server`'s flags follow K3s' spelling. A bad flag value is a usage
//! error (exit status 2), reported before anything starts.

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
    about = "Cairn cluster: API server and datastore"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server.
    Server(Server),
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
    /// Run without the node agent (the only mode so far).
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
        Command::Server(args) => server(args),
        Command::Healthz {
            data_dir,
            port,
            path,
        } => {
            let mut probe = cairn::probe::Probe::readyz(&data_dir, port);
            probe.path = path;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let body = runtime.block_on(probe.run())?;
            println!("{body}");
            Ok(())
        }
    }
}

fn server(args: Server) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    if !args.disable_agent {
        anyhow::bail!("the node agent is not implemented yet: pass --disable-agent");
    }
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
    runtime
        .block_on(cairn::api::run(config, shutdown_signal()))
        .with_context(|| format!("cairn server (data dir {})", data_dir.display()))
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
}
