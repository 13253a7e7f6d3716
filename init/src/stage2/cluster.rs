//! The cluster service: `cairn server` (API server, datastore, controllers
//! and this machine's node agent, named after the host) or `cairn agent`
//! under the supervisor, started with the `[cluster]` settings, and the
//! readiness check that waits for the API and then for the Node to be
//! Ready.
//!
//! From `config.toml`, in K3s' flag spelling: `--tls-san` for the host name,
//! the static addresses and `cluster.tls_san`; `--datastore-endpoint`; the
//! join token through the environment (`CAIRN_TOKEN`), so it never shows in
//! a process list. A supplied CA and admin credentials are copied into the
//! server's `pki/` before it starts; the server uses them and never replaces
//! them, and a later, different CA in the file is reported, not installed
//! (a cluster's CA cannot change under its clients). The server may re-issue
//! its own admin certificate; any certificate the CA signed for
//! `cairn-admin`/`system:masters` authenticates the same, so the kubeconfig
//! from `cairn-image config init` stays valid.
//!
//! The config partition's `manifests/` and `images/` (read-only under
//! [`super::config::CONFIG_MOUNT`]) are handed to the server, which applies
//! the one through its API and imports the other into containerd, started
//! before it.
//!
//! Readiness runs `cairn healthz` (a real HTTPS request to `/readyz`, then
//! to the Node, with
//! the admin certificate the server created in its data dir) rather than
//! speaking TLS from PID 1: init stays small and the check goes through the
//! same TLS, authentication and routing any client uses.
//!
//! With `role = "agent"` the service is `cairn agent` joining
//! `cluster.server` with the join token (environment again) and the cluster
//! CA: `cluster.ca_cert` when supplied (written to [`AGENT_CA`]), else the
//! one the agent fetches from the server and checks against the hash a
//! `K10` token pins. Its readiness asks the joined server, with the token.
//! The node's address, labels and taints (`cluster.node_ip`,
//! `cluster.node_labels`, `cluster.node_taints`) become the agent's
//! `--node-ip`/`--node-label`/`--node-taint` in both roles.
//!
//! The pod and service networks become the server's `--cluster-cidr` and
//! `--service-cidr`, the cluster domain the agent's `--cluster-domain`.

use crate::supervisor::{ServiceSpec, reaper};
use cairn_image::config::{Config, Pem, Role};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cluster binary.
pub const PROGRAM: &str = "/usr/bin/cairn";
/// The server's state on the data partition: datastore, PKI, kubeconfig.
pub const DATA_DIR: &str = "/var/lib/cairn/server";
/// The config partition's manifests, applied by the server at start and on change.
pub const MANIFESTS_DIR: &str = "/run/cairn/config/manifests";
/// The config partition's image archives, imported into containerd at start.
pub const IMAGES_DIR: &str = "/run/cairn/config/images";
/// The API's HTTPS port.
pub const PORT: u16 = 6443;
/// The cluster CA an agent trusts: supplied in `config.toml` or fetched
/// by the agent (pinned by its join token).
pub const AGENT_CA: &str = "/var/lib/cairn/agent/ca.crt";
/// The kubeconfig written back to the config partition.
pub const KUBECONFIG_FILE: &str = "kubeconfig.yaml";
/// Where `cairn.log` is written.
const LOG_DIR: &str = "/var/log/cairn";
/// How often readiness asks.
const POLL: Duration = Duration::from_millis(200);

/// Whether this root filesystem carries the cluster binary.
pub fn present() -> bool {
    Path::new(PROGRAM).exists()
}

/// The subject names the serving certificate needs besides what the
/// server adds itself (localhost, 127.0.0.1): host name, static
/// addresses (of every interface), `cluster.tls_san`.
pub fn tls_sans(config: &Config) -> Vec<String> {
    let mut sans = vec![config.host.hostname.to_string()];
    let further = config.network.interfaces.iter().filter(|i| !i.dhcp);
    sans.extend(
        config
            .network
            .static_addresses()
            .iter()
            .chain(further.flat_map(|i| i.addresses.iter()))
            .map(|a| a.addr.to_string()),
    );
    sans.extend(config.cluster.tls_san.iter().map(|s| s.to_string()));
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

/// The supervised cluster service: `cairn server` or, for
/// `role = "agent"`, `cairn agent` joining `cluster.server`. `env` is the
/// host's service environment (TZ, proxy).
pub fn spec(config: &Config, env: Vec<(String, String)>) -> ServiceSpec {
    let mut args: Vec<String> = match config.cluster.role {
        Role::Server => {
            let mut args: Vec<String> = [
                "server",
                "--data-dir",
                DATA_DIR,
                "--manifests-dir",
                MANIFESTS_DIR,
            ]
            .map(String::from)
            .to_vec();
            for san in tls_sans(config) {
                args.push("--tls-san".into());
                args.push(san);
            }
            if let Some(endpoint) = &config.cluster.datastore_endpoint {
                args.push("--datastore-endpoint".into());
                args.push(endpoint.expose().to_string());
            }
            let c = &config.cluster;
            args.extend([
                "--cluster-cidr".into(),
                c.pod_cidr.to_string(),
                "--service-cidr".into(),
                c.service_cidr.to_string(),
            ]);
            args
        }
        Role::Agent => {
            let server = config
                .cluster
                .server
                .as_ref()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default();
            ["agent", "--server", &server, "--ca-file", AGENT_CA]
                .map(String::from)
                .to_vec()
        }
    };
    args.extend(["--images-dir".into(), IMAGES_DIR.into()]);
    args.extend(node_flags(config));
    // Plain log lines on the console and in the log file.
    let mut env_all = vec![("NO_COLOR".to_string(), "1".to_string())];
    env_all.extend(env);
    if let Some(token) = &config.cluster.token {
        env_all.push(("CAIRN_TOKEN".into(), token.expose().to_string()));
    }
    ServiceSpec {
        name: "cairn".to_string(),
        program: PathBuf::from(PROGRAM),
        args,
        env: env_all,
        log_dir: Some(PathBuf::from(LOG_DIR)),
        on_console: false,
    }
}

/// The node agent's flags, in either role: the node's name, address,
/// labels and taints.
fn node_flags(config: &Config) -> Vec<String> {
    let mut args = vec![
        "--node-name".to_string(),
        config.host.hostname.to_string(),
        "--config-status-file".to_string(),
        super::config::STATUS_FILE.to_string(),
        "--cluster-domain".to_string(),
        config.cluster.cluster_domain.to_string(),
    ];
    if let Some(ip) = config.cluster.node_ip {
        args.push("--node-ip".into());
        args.push(ip.to_string());
    }
    for (key, value) in &config.cluster.node_labels {
        args.push("--node-label".into());
        args.push(format!("{}={}", key.as_str(), value.as_str()));
    }
    for taint in &config.cluster.node_taints {
        args.push("--node-taint".into());
        args.push(taint.to_string());
    }
    args
}

/// An agent's supplied cluster CA (`cluster.ca_cert`), written where the
/// agent reads it; without one the agent fetches the CA its join token
/// pins. Returns whether the file was (re)written.
pub fn install_agent_ca(config: &Config) -> std::io::Result<bool> {
    let Some(ca) = &config.cluster.ca_cert else {
        return Ok(false);
    };
    let path = Path::new(AGENT_CA);
    if std::fs::read_to_string(path).is_ok_and(|old| old == ca.as_str()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    super::config::write_atomic(path, ca.as_str().as_bytes(), 0o644)?;
    Ok(true)
}

/// Copies the supplied CA and admin credentials into `data_dir/pki` where
/// they are missing. Returns the files written; a supplied pair that
/// differs from the one in place is reported on the console.
pub fn install_credentials(config: &Config, data_dir: &Path) -> std::io::Result<Vec<String>> {
    let pki = data_dir.join("pki");
    let c = &config.cluster;
    let pairs: [(&str, &Option<Pem>, &Option<Pem>); 2] = [
        ("ca", &c.ca_cert, &c.ca_key),
        ("admin", &c.admin_cert, &c.admin_key),
    ];
    let mut written = Vec::new();
    for (name, cert, key) in pairs {
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        let (cert_path, key_path) = (
            pki.join(format!("{name}.crt")),
            pki.join(format!("{name}.key")),
        );
        match std::fs::read_to_string(&cert_path) {
            Ok(existing) if existing.trim() == cert.as_str().trim() => continue,
            // The server may re-issue its admin certificate; any one the CA
            // signed is as good. A different CA is worth saying.
            Ok(_) if name == "ca" => {
                crate::log::console(
                    "cairn: config warning: cluster.ca_cert differs from the CA the server has used since its first start; keeping the server's",
                );
                continue;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Key first: the server takes a certificate without its key as
        // "generate a new one".
        super::config::write_atomic(&key_path, key.as_str().as_bytes(), 0o600)?;
        super::config::write_atomic(&cert_path, cert.as_str().as_bytes(), 0o644)?;
        written.push(format!("{name}.crt"));
    }
    Ok(written)
}

/// The server's admin kubeconfig, pointed at this device (its first static
/// address, else its host name) instead of 127.0.0.1, for the user's laptop.
pub fn kubeconfig_for_user(server_kubeconfig: &str, config: &Config) -> String {
    let host = config
        .network
        .static_addresses()
        .first()
        .map(|a| match a.addr {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        })
        .unwrap_or_else(|| config.host.hostname.to_string());
    server_kubeconfig
        .lines()
        .map(|line| match line.trim_start().strip_prefix("server: ") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}server: https://{host}:{PORT}")
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `cluster.write_kubeconfig`: the admin kubeconfig onto the config
/// partition as `kubeconfig.yaml`, when it changed.
pub fn write_kubeconfig(config: &Config) -> anyhow::Result<bool> {
    use anyhow::Context;
    let source = Path::new(DATA_DIR).join("admin.kubeconfig");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let text = kubeconfig_for_user(&text, config);
    let target = Path::new(super::config::CONFIG_MOUNT).join(KUBECONFIG_FILE);
    if std::fs::read_to_string(&target).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    super::config::write_back(KUBECONFIG_FILE, text.as_bytes())?;
    Ok(true)
}

/// What readiness asks, and whom.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// The server on this machine, with its admin credentials.
    Local,
    /// The server an agent joined, with its token and CA.
    Joined {
        /// `cluster.server`.
        server: String,
        /// The join token (passed in the environment).
        token: String,
    },
}

impl Readiness {
    /// How this configuration's readiness is asked.
    pub fn of(config: &Config) -> Readiness {
        match (config.cluster.role, &config.cluster.server) {
            (Role::Agent, Some(server)) => Readiness::Joined {
                server: server.as_str().to_owned(),
                token: config
                    .cluster
                    .token
                    .as_ref()
                    .map(|t| t.expose().to_string())
                    .unwrap_or_default(),
            },
            _ => Readiness::Local,
        }
    }

    /// The probe's command line: the API's `/readyz`, and with `node`
    /// that Node's `Ready` condition too.
    fn probe(&self, node: Option<&str>) -> Command {
        let mut cmd = Command::new(PROGRAM);
        cmd.env_clear();
        match self {
            Readiness::Local => {
                cmd.args(["healthz", "--data-dir", DATA_DIR, "--port"])
                    .arg(PORT.to_string());
            }
            Readiness::Joined { server, token } => {
                cmd.args(["healthz", "--server", server, "--ca-file", AGENT_CA])
                    .env("CAIRN_TOKEN", token);
            }
        }
        if let Some(node) = node {
            cmd.args(["--node", node]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs `cairn healthz` until it succeeds (with `node`: until that
    /// Node is Ready as well); returns how many tries it took.
    pub async fn wait(&self, node: Option<&str>) -> u32 {
        let mut tries = 0;
        loop {
            tries += 1;
            match reaper::run(&mut self.probe(node)).await {
                Ok(exit) if exit.code() == Some(0) => return tries,
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "cannot run the API probe"),
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "c").expect("valid")
    }

    #[test]
    fn default_server_runs_on_the_data_partition() {
        let s = spec(&Config::default(), vec![]);
        assert_eq!(s.program, PathBuf::from("/usr/bin/cairn"));
        assert_eq!(
            s.args,
            [
                "server",
                "--data-dir",
                "/var/lib/cairn/server",
                "--manifests-dir",
                "/run/cairn/config/manifests",
                "--tls-san",
                "cairn",
                "--cluster-cidr",
                "10.42.0.0/16",
                "--service-cidr",
                "10.43.0.0/16",
                "--images-dir",
                "/run/cairn/config/images",
                "--node-name",
                "cairn",
                "--config-status-file",
                "/run/cairn/config-status",
                "--cluster-domain",
                "cluster.local",
            ]
        );
        assert!(!s.env.iter().any(|(k, _)| k == "CAIRN_TOKEN"));
        let probe = Readiness::of(&Config::default()).probe(Some("cairn"));
        let args: Vec<_> = probe.get_args().collect();
        assert_eq!(
            args,
            [
                "healthz",
                "--data-dir",
                "/var/lib/cairn/server",
                "--port",
                "6443",
                "--node",
                "cairn"
            ]
        );
    }

    #[test]
    fn an_agent_joins_its_server_and_asks_it_for_readiness() {
        let token = "K10aaaa::server:0123456789abcdef0123";
        let c = parse(&format!(
            "version = 1\n[host]\nhostname = \"edge2\"\n[cluster]\nrole = \"agent\"\nserver = \"https://10.0.0.1:6443\"\ntoken = \"{token}\"\nnode_ip = \"10.0.0.2\"\nnode_taints = [\"dedicated=edge:NoSchedule\"]\n[cluster.node_labels]\n\"example.com/site\" = \"north\"\n"
        ));
        let s = spec(&c, vec![]);
        assert_eq!(
            s.args,
            [
                "agent",
                "--server",
                "https://10.0.0.1:6443",
                "--ca-file",
                AGENT_CA,
                "--images-dir",
                IMAGES_DIR,
                "--node-name",
                "edge2",
                "--config-status-file",
                "/run/cairn/config-status",
                "--cluster-domain",
                "cluster.local",
                "--node-ip",
                "10.0.0.2",
                "--node-label",
                "example.com/site=north",
                "--node-taint",
                "dedicated=edge:NoSchedule",
            ]
        );
        assert!(s.env.contains(&("CAIRN_TOKEN".into(), token.into())));
        assert!(
            !s.args.join(" ").contains(token),
            "the token is not an argument"
        );
        let probe = Readiness::of(&c).probe(Some("edge2"));
        let args: Vec<_> = probe.get_args().collect();
        assert_eq!(
            args,
            [
                "healthz",
                "--server",
                "https://10.0.0.1:6443",
                "--ca-file",
                AGENT_CA,
                "--node",
                "edge2"
            ]
        );
        assert!(
            probe
                .get_envs()
                .any(|(k, v)| k == "CAIRN_TOKEN" && v == Some(std::ffi::OsStr::new(token)))
        );
    }

    #[test]
    fn cluster_settings_become_flags_and_environment() {
        let c = parse(
            "version = 1\n[host]\nhostname = \"edge1\"\n[network]\ndhcp = false\naddress = \"10.0.2.15/24\"\naddresses = [\"fd00::15/64\"]\n[cluster]\ntoken = \"0123456789abcdef0123\"\ndatastore_endpoint = \"postgres://u:p@db/cairn\"\ntls_san = [\"edge1.example.com\", \"edge1\"]\n",
        );
        let s = spec(&c, vec![("TZ".into(), "UTC".into())]);
        let args = s.args.join(" ");
        assert!(args.contains("--tls-san edge1 --tls-san 10.0.2.15 --tls-san fd00::15 --tls-san edge1.example.com --datastore-endpoint postgres://u:p@db/cairn"), "{args}");
        assert_eq!(args.matches("--tls-san edge1 ").count(), 1, "no duplicates");
        assert!(
            !args.contains("0123456789abcdef0123"),
            "the token is not an argument"
        );
        assert!(
            s.env
                .contains(&("CAIRN_TOKEN".into(), "0123456789abcdef0123".into()))
        );
        assert!(s.env.contains(&("TZ".into(), "UTC".into())));
    }

    #[test]
    fn credentials_are_installed_once() {
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let key = "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----";
        let ml = |s: &str| format!("\"\"\"\n{s}\n\"\"\"");
        let text = format!(
            "version = 1\n[cluster]\nca_cert = {}\nca_key = {}\nadmin_cert = {}\nadmin_key = {}\n",
            ml(cert),
            ml(key),
            ml(cert),
            ml(key)
        );
        let c = parse(&text);
        let dir = tempfile::tempdir().expect("tempdir");
        let written = install_credentials(&c, dir.path()).expect("install");
        assert_eq!(written, ["ca.crt", "admin.crt"]);
        let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).expect("ca");
        assert_eq!(ca.trim(), cert);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Present and equal: nothing to do. Different: kept, not replaced.
        assert!(
            install_credentials(&c, dir.path())
                .expect("again")
                .is_empty()
        );
        std::fs::write(dir.path().join("pki/ca.crt"), "other").expect("write");
        assert!(
            install_credentials(&c, dir.path())
                .expect("differs")
                .is_empty()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pki/ca.crt")).expect("ca"),
            "other"
        );
        // Nothing supplied: nothing written.
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(
            install_credentials(&Config::default(), empty.path())
                .expect("none")
                .is_empty()
        );
        assert!(!empty.path().join("pki").exists());
    }

    #[test]
    fn user_kubeconfig_points_at_the_device() {
        let server = "apiVersion: v1\nclusters:\n- name: cairn\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: AAA\n";
        let stat = parse("version = 1\n[network]\ndhcp = false\naddress = \"192.168.1.50/24\"\n");
        let k = kubeconfig_for_user(server, &stat);
        assert!(k.contains("    server: https://192.168.1.50:6443\n"), "{k}");
        assert!(k.contains("certificate-authority-data: AAA"));
        let dhcp = parse("version = 1\n[host]\nhostname = \"edge3\"\n");
        assert!(kubeconfig_for_user(server, &dhcp).contains("server: https://edge3:6443\n"));
    }
}
