//! `[cluster]`: what this node is in its cluster — a server (API server and
//! datastore, plus the node agent) or an agent joining a server — and the
//! settings `cairn` is started with.
//!
//! Credentials (`token`, `ca_key`, `admin_key`, the datastore URL, registry
//! passwords) are [`Secret`]s or PEM blocks whose `Debug` hides them.

use super::values::{
    Hostname, HttpUrl, IpCidr, LabelKey, LabelValue, NameOrAddress, Pem, Secret, Taint,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub role: Role,
    /// The server an agent joins (`https://server:6443`).
    #[serde(default)]
    pub server: Option<HttpUrl>,
    /// Join token: agents present it; a server accepts it.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Cluster CA certificate (PEM), used instead of generating one.
    #[serde(default)]
    pub ca_cert: Option<Pem>,
    /// Its private key (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`).
    #[serde(default)]
    pub ca_key: Option<Pem>,
    /// Admin client certificate (CN=cairn-admin, O=system:masters), PEM.
    #[serde(default)]
    pub admin_cert: Option<Pem>,
    #[serde(default)]
    pub admin_key: Option<Pem>,
    /// Datastore: none = embedded SQLite; `postgres://user:pass@host/db`.
    #[serde(default)]
    pub datastore_endpoint: Option<Secret>,
    /// Extra names and addresses for the serving certificate.
    #[serde(default)]
    pub tls_san: Vec<NameOrAddress>,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: IpCidr,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: IpCidr,
    #[serde(default = "default_domain")]
    pub cluster_domain: Hostname,
    /// The address this node reports (K3s' `node-ip`); default: the
    /// first non-loopback IPv4 address.
    #[serde(default)]
    pub node_ip: Option<std::net::IpAddr>,
    #[serde(default)]
    pub node_labels: BTreeMap<LabelKey, LabelValue>,
    #[serde(default)]
    pub node_taints: Vec<Taint>,
    #[serde(default)]
    pub registries: Registries,
    /// Write an admin kubeconfig back to the CAIRN partition
    /// (`kubeconfig.yaml`) once the API is up.
    #[serde(default)]
    pub write_kubeconfig: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            role: Role::Server,
            server: None,
            token: None,
            ca_cert: None,
            ca_key: None,
            admin_cert: None,
            admin_key: None,
            datastore_endpoint: None,
            tls_san: Vec::new(),
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            cluster_domain: default_domain(),
            node_ip: None,
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            registries: Registries::default(),
            write_kubeconfig: false,
        }
    }
}

// K3s' defaults, so addresses look familiar.
fn default_pod_cidr() -> IpCidr {
    "10.42.0.0/16".parse().expect("a valid literal CIDR")
}
fn default_service_cidr() -> IpCidr {
    "10.43.0.0/16".parse().expect("a valid literal CIDR")
}
fn default_domain() -> Hostname {
    "cluster.local".parse().expect("a valid literal name")
}

/// `cluster.role`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// `[cluster.registries]`, shaped like K3s' `registries.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Per registry host (`docker.io`), the mirrors to try first.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Per registry or mirror host, credentials and TLS settings.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// `[cluster.registries.mirrors."<host>"]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub endpoints: Vec<HttpUrl>,
}

/// `[cluster.registries.configs."<host>"]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A bearer/identity token instead of a password.
    #[serde(default)]
    pub token: Option<Secret>,
    /// CA certificate for the registry's TLS.
    #[serde(default)]
    pub ca_cert: Option<Pem>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn label_is(path: &str, pem: &Option<Pem>, want: &str) -> Result<(), (String, String)> {
    match pem {
        Some(p) if p.label() != want => Err((
            path.to_string(),
            format!("{path} is a PEM {:?} block: expected {want:?}", p.label()),
        )),
        _ => Ok(()),
    }
}

fn registry_host_ok(host: &str) -> bool {
    let name =
        host.rsplit_once(':').map_or(
            host,
            |(h, port)| {
                if port.parse::<u16>().is_ok() { h } else { host }
            },
        );
    name == "*" || name.parse::<NameOrAddress>().is_ok()
}

impl Cluster {
    /// Rules across keys. Returns the key path and the problem.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        label_is("cluster.ca_cert", &self.ca_cert, "CERTIFICATE")?;
        label_is("cluster.admin_cert", &self.admin_cert, "CERTIFICATE")?;
        label_is("cluster.ca_key", &self.ca_key, "PRIVATE KEY")?;
        label_is("cluster.admin_key", &self.admin_key, "PRIVATE KEY")?;
        let pair = |a: &str, has_a: bool, b: &str, has_b: bool| {
            if has_a && !has_b {
                Err((
                    format!("cluster.{a}"),
                    format!("cluster.{a} needs cluster.{b}"),
                ))
            } else {
                Ok(())
            }
        };
        pair(
            "ca_cert",
            self.ca_cert.is_some(),
            "ca_key",
            self.ca_key.is_some(),
        )?;
        pair(
            "ca_key",
            self.ca_key.is_some(),
            "ca_cert",
            self.ca_cert.is_some(),
        )?;
        pair(
            "admin_cert",
            self.admin_cert.is_some(),
            "admin_key",
            self.admin_key.is_some(),
        )?;
        pair(
            "admin_key",
            self.admin_key.is_some(),
            "admin_cert",
            self.admin_cert.is_some(),
        )?;
        pair(
            "admin_cert",
            self.admin_cert.is_some(),
            "ca_cert",
            self.ca_cert.is_some(),
        )?;
        if let Some(token) = &self.token
            && (token.expose().len() < 16 || token.expose().contains(char::is_whitespace))
        {
            return Err((
                "cluster.token".into(),
                "cluster.token must be at least 16 characters without spaces (cairn-image config init makes one)".into(),
            ));
        }
        if let Some(ds) = &self.datastore_endpoint {
            let ok =
                ds.expose().starts_with("postgres://") || ds.expose().starts_with("postgresql://");
            if !ok {
                return Err((
                    "cluster.datastore_endpoint".into(),
                    "cluster.datastore_endpoint: expected postgres://user:password@host:port/database (leave it out for the embedded SQLite)".into(),
                ));
            }
        }
        match self.role {
            Role::Agent => {
                match &self.server {
                    None => {
                        return Err((
                            "cluster.role".into(),
                            "cluster.role = \"agent\" needs cluster.server (https://server:6443) and cluster.token".into(),
                        ));
                    }
                    Some(url) if !url.is_https() => {
                        return Err((
                            "cluster.server".into(),
                            "cluster.server must be an https:// URL".into(),
                        ));
                    }
                    Some(_) => {}
                }
                if self.token.is_none() {
                    return Err((
                        "cluster.role".into(),
                        "cluster.role = \"agent\" needs cluster.token (the server's join token)"
                            .into(),
                    ));
                }
                for key in ["ca_key", "admin_cert", "datastore_endpoint"] {
                    let set = match key {
                        "ca_key" => self.ca_key.is_some(),
                        "admin_cert" => self.admin_cert.is_some(),
                        _ => self.datastore_endpoint.is_some(),
                    };
                    if set {
                        return Err((
                            format!("cluster.{key}"),
                            format!(
                                "cluster.{key} is for role = \"server\"; an agent does not use it"
                            ),
                        ));
                    }
                }
            }
            Role::Server => {
                if self.server.is_some() {
                    return Err((
                        "cluster.server".into(),
                        "cluster.server is the server an agent joins: set cluster.role = \"agent\" or remove it".into(),
                    ));
                }
            }
        }
        // Each node gets a /24 of the pod network; the service network is
        // at most a /12 (upstream's limit) and leaves room for Services.
        for (name, cidr, min, max) in [
            ("pod_cidr", self.pod_cidr, 8, 24),
            ("service_cidr", self.service_cidr, 12, 28),
        ] {
            if !cidr.addr.is_ipv4() {
                return Err((
                    format!("cluster.{name}"),
                    format!(
                        "cluster.{name} = \"{cidr}\": expected an IPv4 network (IPv6 pod and service networks are not supported yet)"
                    ),
                ));
            }
            if cidr.prefix > max || cidr.prefix < min {
                return Err((
                    format!("cluster.{name}"),
                    format!(
                        "cluster.{name} = \"{cidr}\": expected a network of prefix /{min} to /{max}"
                    ),
                ));
            }
        }
        for host in self
            .registries
            .mirrors
            .keys()
            .chain(self.registries.configs.keys())
        {
            if !registry_host_ok(host) {
                return Err((
                    "cluster.registries".into(),
                    format!(
                        "registry {host:?}: expected a host name or address, optionally with :port (or \"*\")"
                    ),
                ));
            }
        }
        for (host, c) in &self.registries.configs {
            let path = format!("cluster.registries.configs.\"{host}\"");
            if c.password.is_some() && c.username.is_none() {
                return Err((
                    format!("{path}.password"),
                    format!("{path}.password needs {path}.username"),
                ));
            }
            label_is(&format!("{path}.ca_cert"), &c.ca_cert, "CERTIFICATE")?;
        }
        Ok(())
    }
}
