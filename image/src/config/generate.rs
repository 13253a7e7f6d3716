//! `cairn-image config init`: a ready-to-flash `config.toml` with fresh
//! cluster credentials, and the matching admin `kubeconfig.yaml` for the
//! user's laptop — the way `talosctl gen config` does it — so kubectl works
//! the moment the device is up.
//!
//! The CA and admin certificate have the shape `cairn server` itself
//! generates (ECDSA P-256, CA `CN=cairn-ca`; admin `CN=cairn-admin,
//! O=system:masters`, client auth; keys PKCS#8 PEM). The server copies them
//! into its `pki/` before its first start and never replaces them, so the
//! kubeconfig made here stays valid for the life of the cluster.
//!
//! The join token is K3s-shaped, `K10<sha256 of ca.crt>::server:<secret>`:
//! an agent holding it can pin the server's CA.

use super::template::{multiline, with_cluster};
use super::{Config, ConfigError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::io::Read;

/// Errors generating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generating {what}: {source}")]
    Cert {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("reading random bytes from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    #[error("the generated configuration does not validate (a bug): {0}")]
    Invalid(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
}

/// What `config init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub role: super::Role,
    /// The API server URL: written into the kubeconfig (server) or the
    /// config's `cluster.server` (agent).
    pub server: Option<String>,
    /// An agent's join token (from the server's `config init`).
    pub token: Option<String>,
}

/// The generated files' contents. Every field but `config` is secret
/// material: no `Debug`.
pub struct Generated {
    /// `config.toml`, commented.
    pub config: String,
    /// The admin kubeconfig (servers only).
    pub kubeconfig: Option<String>,
    /// The join token agents need (servers only).
    pub token: Option<String>,
}

/// The default API URL in the kubeconfig: a port forwarded to the device's
/// 6443 on the laptop, or the device itself when `--server` says so.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> GenerateError {
    move |source| GenerateError::Cert { what, source }
}

fn random_hex(bytes: usize) -> Result<String, GenerateError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(GenerateError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cluster CA's parameters, as `cairn server` makes them.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cairn-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn admin_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cairn-admin");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A K3s-style full token pinning `ca_pem`.
pub fn join_token(ca_pem: &str, secret: &str) -> String {
    let hash: String = Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("K10{hash}::server:{secret}")
}

/// Generates the files for `opts`. The config text is validated with the
/// schema before it is returned.
pub fn generate(opts: &InitOptions) -> Result<Generated, GenerateError> {
    let generated = match opts.role {
        super::Role::Server => server(opts)?,
        super::Role::Agent => agent(opts)?,
    };
    Config::parse(&generated.config, "generated config.toml")?;
    Ok(generated)
}

fn server(opts: &InitOptions) -> Result<Generated, GenerateError> {
    if opts.token.is_some() {
        return Err(GenerateError::Usage(
            "--token is for --role agent; a server's token is generated".into(),
        ));
    }
    let url = opts.server.as_deref().unwrap_or(DEFAULT_SERVER);
    url.parse::<super::values::HttpUrl>()
        .ok()
        .filter(|u| u.is_https())
        .ok_or_else(|| {
            GenerateError::Usage(format!("--server {url:?}: expected https://host:port"))
        })?;

    let ca_key = KeyPair::generate().map_err(cert_err("the CA key"))?;
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .map_err(cert_err("the CA certificate"))?
        .pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params(), ca_key);
    let admin_key = KeyPair::generate().map_err(cert_err("the admin key"))?;
    let admin_cert = admin_params()
        .signed_by(&admin_key, &issuer)
        .map_err(cert_err("the admin certificate"))?
        .pem();
    let admin_key_pem = admin_key.serialize_pem();
    let token = join_token(&ca_cert, &random_hex(16)?);

    let cluster = format!(
        r#"[cluster]
role = "server"
# Agents join with this token (it also pins the CA below).
token = "{token}"
# The cluster CA and the admin credentials of kubeconfig.yaml, generated by
# cairn-image config init. The server keeps them from its first start on.
ca_cert = {ca_cert}
ca_key = {ca_key}
admin_cert = {admin_cert}
admin_key = {admin_key}
# datastore_endpoint = "postgres://user:password@db:5432/cairn"  # default: embedded SQLite
# tls_san = ["cairn.example.com"]     # extra names for the API certificate
# pod_cidr = "10.42.0.0/16"
# service_cidr = "10.43.0.0/16"
# cluster_domain = "cluster.local"
# node_ip = "192.168.1.50"            # the address the node reports (default: first IPv4)
# node_taints = ["dedicated=edge:NoSchedule"]
# write_kubeconfig = false            # true: kubeconfig.yaml written back here
# [cluster.node_labels]
# "example.com/site" = "north"
"#,
        ca_cert = multiline(&ca_cert),
        ca_key = multiline(&ca_key_pem),
        admin_cert = multiline(&admin_cert),
        admin_key = multiline(&admin_key_pem),
    );
    Ok(Generated {
        config: with_cluster(&cluster),
        kubeconfig: Some(super::kubeconfig::admin_yaml(
            url,
            &ca_cert,
            &admin_cert,
            &admin_key_pem,
        )),
        token: Some(token),
    })
}

fn agent(opts: &InitOptions) -> Result<Generated, GenerateError> {
    let (Some(server), Some(token)) = (&opts.server, &opts.token) else {
        return Err(GenerateError::Usage(
            "--role agent needs --server https://SERVER:6443 and --token (the server's join-token file)".into(),
        ));
    };
    let quote = |s: &str| toml_string(s);
    let cluster = format!(
        "[cluster]\nrole = \"agent\"\nserver = {}\ntoken = {}\n",
        quote(server),
        quote(token.trim())
    );
    let generated = Generated {
        config: with_cluster(&cluster),
        kubeconfig: None,
        token: None,
    };
    Ok(generated)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use crate::config::Role;
    use base64::Engine;

    fn server_opts() -> InitOptions {
        InitOptions {
            role: Role::Server,
            server: None,
            token: None,
        }
    }

    #[test]
    fn server_round_trip() {
        let g = generate(&server_opts()).unwrap();
        let config = Config::parse(&g.config, "config.toml").unwrap();
        let c = &config.cluster;
        assert_eq!(c.role, Role::Server);
        let ca = c.ca_cert.as_ref().unwrap().as_str();
        let token = c.token.as_ref().unwrap().expose();
        assert_eq!(Some(token), g.token.as_deref());
        assert!(token.starts_with(&format!("K10{:x}::server:", Sha256::digest(ca.as_bytes()))));
        // The keys are PKCS#8 and load back; the admin cert is the CA's.
        KeyPair::from_pem(c.ca_key.as_ref().unwrap().as_str()).unwrap();
        KeyPair::from_pem(c.admin_key.as_ref().unwrap().as_str()).unwrap();
        let admin = c.admin_cert.as_ref().unwrap().as_str();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
        std::fs::write(dir.path().join("admin.crt"), admin).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (Debian: apt-get install openssl)");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        openssl(&["verify", "-CAfile", "ca.crt", "admin.crt"]);
        let subject = openssl(&["x509", "-in", "admin.crt", "-noout", "-subject"]);
        assert!(
            subject.contains("CN=cairn-admin") || subject.contains("CN = cairn-admin"),
            "{subject}"
        );
        assert!(subject.contains("system:masters"), "{subject}");
        // The kubeconfig carries the same CA and admin cert, for 127.0.0.1.
        let kube = g.kubeconfig.unwrap();
        assert!(kube.contains("server: https://127.0.0.1:6443\n"));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(kube.contains(&b64(ca)));
        assert!(kube.contains(&b64(c.admin_cert.as_ref().unwrap().as_str())));
        // Everything else of the template is still there, commented.
        assert!(g.config.contains("[update]") && g.config.contains("# hostname = \"cairn\""));
        // Fresh every time.
        let again = generate(&server_opts()).unwrap();
        assert_ne!(again.config, g.config);
    }

    #[test]
    fn server_url_and_agent() {
        let g = generate(&InitOptions {
            server: Some("https://127.0.0.1:16443".into()),
            ..server_opts()
        })
        .unwrap();
        assert!(
            g.kubeconfig
                .unwrap()
                .contains("server: https://127.0.0.1:16443\n")
        );
        assert!(
            generate(&InitOptions {
                server: Some("http://x".into()),
                ..server_opts()
            })
            .is_err()
        );

        let token = g.token.unwrap();
        let agent = generate(&InitOptions {
            role: Role::Agent,
            server: Some("https://10.0.0.1:6443".into()),
            token: Some(format!("{token}\n")),
        })
        .unwrap();
        let config = Config::parse(&agent.config, "agent.toml").unwrap();
        assert_eq!(config.cluster.role, Role::Agent);
        assert_eq!(config.cluster.token.unwrap().expose(), token);
        assert!(agent.kubeconfig.is_none());
        let missing = generate(&InitOptions {
            role: Role::Agent,
            server: None,
            token: None,
        });
        assert!(matches!(missing, Err(GenerateError::Usage(_))));
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
