//! `cairn`: the cluster binary (`cairn server`; `cairn agent` comes with the
//! node agent). Thin: arguments, logging, then the library's `run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    Server {
        /// State directory: datastore, PKI and admin kubeconfig.
        #[arg(long, default_value = "/var/lib/cairn/server")]
        data_dir: PathBuf,
        /// HTTPS listen address.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// Run without the node agent (the only mode so far).
        #[arg(long)]
        disable_agent: bool,
    },
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("cairn {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
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
        Command::Server {
            data_dir,
            listen,
            disable_agent,
        } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            if !disable_agent {
                anyhow::bail!("the node agent is not implemented yet: pass --disable-agent");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let config = cairn::api::Config {
                data_dir: data_dir.clone(),
                listen,
            };
            runtime
                .block_on(cairn::api::run(config, shutdown_signal()))
                .with_context(|| format!("cairn server (data dir {})", data_dir.display()))
        }
    }
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
