//! The cluster service: `cairn server` (API server and datastore; the node
//! agent joins it in its own issue) under the supervisor, and the readiness
//! check that waits for its API.
//!
//! Readiness runs `cairn healthz` (a real HTTPS request to `/readyz` with
//! the admin certificate the server created in its data dir) rather than
//! speaking TLS from PID 1: init stays small and the check goes through the
//! same TLS, authentication and routing any client uses.

use crate::supervisor::{ServiceSpec, reaper};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cluster binary.
pub const PROGRAM: &str = "/usr/bin/cairn";
/// The server's state on the data partition: datastore, PKI, kubeconfig.
pub const DATA_DIR: &str = "/var/lib/cairn/server";
/// The API's HTTPS port.
pub const PORT: u16 = 6443;
/// Where `cairn.log` is written.
const LOG_DIR: &str = "/var/log/cairn";
/// How often readiness asks.
const POLL: Duration = Duration::from_millis(200);

/// Whether this root filesystem carries the cluster binary.
pub fn present() -> bool {
    Path::new(PROGRAM).exists()
}

/// The supervised `cairn server`.
pub fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "cairn".to_string(),
        program: PathBuf::from(PROGRAM),
        // The server's default address is the device's: every address, PORT.
        args: ["server", "--data-dir", DATA_DIR, "--disable-agent"]
            .map(String::from)
            .to_vec(),
        // Plain log lines on the console and in the log file.
        env: vec![("NO_COLOR".to_string(), "1".to_string())],
        log_dir: Some(PathBuf::from(LOG_DIR)),
    }
}

/// The readiness probe's command line.
fn probe() -> Command {
    let mut cmd = Command::new(PROGRAM);
    cmd.args(["healthz", "--data-dir", DATA_DIR, "--port"])
        .arg(PORT.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs `cairn healthz` until it succeeds; returns how many tries it took.
pub async fn wait_ready() -> u32 {
    let mut tries = 0;
    loop {
        tries += 1;
        match reaper::run(&mut probe()).await {
            Ok(exit) if exit.code() == Some(0) => return tries,
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "cannot run the API probe"),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_runs_on_the_data_partition() {
        let s = spec();
        assert_eq!(s.program, PathBuf::from("/usr/bin/cairn"));
        assert_eq!(
            s.args,
            [
                "server",
                "--data-dir",
                "/var/lib/cairn/server",
                "--disable-agent"
            ]
        );
        let probe = probe();
        let args: Vec<_> = probe.get_args().collect();
        assert_eq!(
            args,
            [
                "healthz",
                "--data-dir",
                "/var/lib/cairn/server",
                "--port",
                "6443"
            ]
        );
    }
}
