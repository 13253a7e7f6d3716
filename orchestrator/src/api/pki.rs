//! The cluster PKI under `<data-dir>/pki`: a CA (generated on first start
//! unless `ca.crt`/`ca.key` were put there before), the server's serving
//! certificate, the admin client certificate (`CN=cairn-admin,
//! O=system:masters`) and the client certificate the API server shows node
//! agents (`CN=kube-apiserver-kubelet-client`), plus the admin kubeconfig.
//!
//! Files that exist are reused, so clients keep trusting the server across
//! restarts. Each leaf has a `<name>.issued` note: a digest of the CA and of
//! what the leaf says (its names). When that changes — a new `--tls-san`, a
//! new host address, another CA — the leaf is issued again from the same CA,
//! which is never replaced. Leaves name the CA by its subject as read from
//! `ca.crt` (`x509`), so a supplied CA with any subject works; its key must
//! be PKCS#8 PEM (`openssl genpkey`, `openssl req -newkey`). Keys Cairn
//! generates are ECDSA P-256; keys are written mode 0600.
//!
//! The host's addresses are read once, at start: an address that appears
//! later (DHCP after the server started) is in the certificate from the next
//! start on. Until then clients reach the server by another name (or
//! `--tls-san` the address).
//!
//! Several servers sharing one PostgreSQL trust each other's clients when
//! their data dirs hold the same `ca.crt` and `ca.key` (copy them before the
//! other servers' first start): every server's serving and admin
//! certificates then chain to that one CA.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use tracing::info;

use super::x509;

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("pki file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("pki {what}: {source}")]
    Cert {
        /// Which certificate or key.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// Only one of `ca.crt` and `ca.key` exists.
    #[error("pki: {present} exists but {missing} does not; supply both or neither")]
    HalfCa {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// The supplied CA cannot be used.
    #[error("pki ca {path}: {message}")]
    BadCa {
        /// `ca.crt`.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A `--tls-san` is neither an IP address nor a DNS name.
    #[error("tls san {0:?} is not an IP address or a DNS name")]
    BadSan(String),
}

/// The PEM material the server needs.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The cluster CA certificate.
    pub ca_cert: String,
    /// The serving certificate.
    pub server_cert: String,
    /// The serving key.
    pub server_key: String,
    /// Path of the admin kubeconfig in the data dir.
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig's text.
    pub kubeconfig_yaml: String,
    /// The names in the serving certificate.
    pub server_names: Vec<String>,
    /// The client certificate the API server shows node agents
    /// (`CN=kube-apiserver-kubelet-client`, no group: agents accept it by
    /// name, and it grants nothing more on the API).
    pub kubelet_client_cert: String,
    /// Its key.
    pub kubelet_client_key: String,
}

/// What the PKI is built for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API server URL written into the admin kubeconfig.
    pub server_url: String,
    /// Extra names for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
}

const CA_NAME: &str = "cairn-ca";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `contents` to `path` with `mode`, through a temporary file and a
/// rename so a crash never leaves half a key.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // An existing file keeps its mode on open, and the umask masks a new
    // one's: set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Checks a `--tls-san`: an IP address or a DNS name (a wildcard label
/// first is allowed, as in `*.example.com`).
pub fn check_san(name: &str) -> Result<String, PkiError> {
    let name = name.trim();
    if name.parse::<IpAddr>().is_ok() {
        return Ok(name.to_owned());
    }
    let label_ok = |(i, label): (usize, &str)| {
        (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-'))
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').enumerate().all(label_ok) {
        return Err(PkiError::BadSan(name.to_owned()));
    }
    Ok(name.to_ascii_lowercase())
}

/// The serving certificate's names: loopback, `localhost`, the hostname,
/// the host's other addresses (IPv6 link-local ones excluded: they need a
/// zone), then `extra`; without duplicates.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(hostname());
    names.extend(host_addresses().iter().map(IpAddr::to_string));
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The host's non-loopback addresses.
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local()
            }
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The CA: loaded from `ca.crt`/`ca.key` if present, generated otherwise.
struct Ca {
    cert: String,
    issuer: Issuer<'static, KeyPair>,
}

fn load_or_create_ca(dir: &Path) -> Result<Ca, PkiError> {
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert), Some(key)) => {
            let bad = |message: String| PkiError::BadCa {
                path: cert_path.clone(),
                message,
            };
            let key = KeyPair::from_pem(&key).map_err(|e| PkiError::BadCa {
                path: key_path.clone(),
                message: format!("not a PKCS#8 PEM private key rcgen can sign with: {e}"),
            })?;
            let der = CertificateDer::from_pem_slice(cert.as_bytes())
                .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
            let parsed = x509::Certificate::parse(&der).map_err(|e| bad(e.to_string()))?;
            if parsed.public_key_info != key.subject_public_key_info() {
                return Err(bad(format!(
                    "does not match the key in {}",
                    key_path.display()
                )));
            }
            let mut params = ca_params();
            params.distinguished_name = parsed.subject_name().map_err(|e| bad(e.to_string()))?;
            let issuer = Issuer::new(params, key);
            // Leaves must name the CA exactly as its certificate does.
            let probe = CertificateParams::default()
                .signed_by(
                    &KeyPair::generate().map_err(cert_err("probe key"))?,
                    &issuer,
                )
                .map_err(cert_err("probe certificate"))?;
            let probe = x509::Certificate::parse(probe.der()).map_err(|e| bad(e.to_string()))?;
            if probe.issuer != parsed.subject {
                return Err(bad(
                    "its subject cannot be reproduced (repeated attribute types?)".to_owned(),
                ));
            }
            Ok(Ca { cert, issuer })
        }
        (None, None) => {
            let key = KeyPair::generate().map_err(cert_err("ca key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(cert_err("ca certificate"))?
                .pem();
            write(&key_path, &key.serialize_pem(), 0o600)?;
            write(&cert_path, &cert, 0o644)?;
            Ok(Ca {
                cert,
                issuer: Issuer::new(ca_params(), key),
            })
        }
        (Some(_), None) => Err(PkiError::HalfCa {
            present: cert_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(PkiError::HalfCa {
            present: key_path,
            missing: cert_path,
        }),
    }
}

/// A certificate/key pair on disk, issued by the CA if missing or if its
/// `.issued` note (a digest of the CA and of `what`) differs.
fn leaf(
    dir: &Path,
    name: &str,
    ca: &Ca,
    what: &str,
    params: impl FnOnce() -> Result<CertificateParams, rcgen::Error>,
) -> Result<(String, String), PkiError> {
    let (cert_path, key_path, note_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.issued")),
    );
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(ca.cert.as_bytes());
    digest.update(b"\0");
    digest.update(what.as_bytes());
    let note = base64::engine::general_purpose::STANDARD.encode(digest.finish()) + "\n";
    if let (Some(cert), Some(key), Some(old)) =
        (read(&cert_path)?, read(&key_path)?, read(&note_path)?)
        && old == note
    {
        return Ok((cert, key));
    }
    let key = KeyPair::generate().map_err(cert_err("leaf key"))?;
    let cert = params()
        .and_then(|p| p.signed_by(&key, &ca.issuer))
        .map_err(cert_err("leaf certificate"))?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    write(&key_path, &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    write(&note_path, &note, 0o644)?;
    info!(name, "issued certificate");
    Ok((cert, key))
}

/// Loads or creates the PKI in `data_dir/pki` and writes the admin
/// kubeconfig `data_dir/admin.kubeconfig` for `settings.server_url`.
pub fn ensure(data_dir: &Path, settings: &Settings) -> Result<Pki, PkiError> {
    let dir = data_dir.join("pki");
    fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
        path: dir.clone(),
        source,
    })?;
    let ca = load_or_create_ca(&dir)?;

    let server_names = server_names(&settings.tls_sans);
    let mut sorted = server_names.clone();
    sorted.sort();
    let (server_cert, server_key) = leaf(&dir, "server", &ca, &sorted.join(","), || {
        let mut params = CertificateParams::new(server_names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn-server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok(params)
    })?;
    let (admin_cert, admin_key) = leaf(&dir, "admin", &ca, "cairn-admin/system:masters", || {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn-admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params)
    })?;

    let (kubelet_client_cert, kubelet_client_key) = leaf(
        &dir,
        "kubelet-client",
        &ca,
        "kube-apiserver-kubelet-client",
        || {
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-apiserver-kubelet-client");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            Ok(params)
        },
    )?;

    let kubeconfig = data_dir.join("admin.kubeconfig");
    let kubeconfig_yaml = cairn_image::config::kubeconfig::admin_yaml(
        &settings.server_url,
        &ca.cert,
        &admin_cert,
        &admin_key,
    );
    write(&kubeconfig, &kubeconfig_yaml, 0o600)?;
    Ok(Pki {
        ca_cert: ca.cert,
        server_cert,
        server_key,
        kubeconfig,
        kubeconfig_yaml,
        server_names,
        kubelet_client_cert,
        kubelet_client_key,
    })
}

/// Writes the admin kubeconfig to `path` with `mode` (`--write-kubeconfig`).
pub fn write_kubeconfig(pki: &Pki, path: &Path, mode: u32) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| PkiError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    write(path, &pki.kubeconfig_yaml, mode)
}

/// The node's hostname, if it is a usable DNS name.
fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    check_san(&name)
        .ok()
        .filter(|n| n.parse::<IpAddr>().is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(port: u16, sans: &[&str]) -> Settings {
        Settings {
            server_url: format!("https://127.0.0.1:{port}"),
            tls_sans: sans.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn issuer_of(pem: &str) -> Vec<u8> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        x509::Certificate::parse(&der).expect("parse").issuer
    }

    fn subject_of(pem: &str) -> Vec<u8> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        x509::Certificate::parse(&der).expect("parse").subject
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), &settings(6443, &[])).expect("first");
        let second = ensure(dir.path(), &settings(7443, &[])).expect("second");
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_eq!(first.server_cert, second.server_cert);
        let kubeconfig = fs::read_to_string(&second.kubeconfig).expect("kubeconfig");
        assert!(kubeconfig.contains("server: https://127.0.0.1:7443"));
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(first.server_names.iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn missing_leaf_is_reissued_from_the_ca_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), &settings(6443, &[])).expect("first");
        fs::remove_file(dir.path().join("pki/server.crt")).expect("rm");
        let second = ensure(dir.path(), &settings(6443, &[])).expect("second");
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_ne!(first.server_cert, second.server_cert);
    }

    #[test]
    fn new_san_reissues_the_serving_cert_from_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), &settings(6443, &[])).expect("first");
        let second =
            ensure(dir.path(), &settings(6443, &["cairn.example", "10.9.8.7"])).expect("second");
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_ne!(first.server_cert, second.server_cert);
        assert!(second.server_names.iter().any(|n| n == "cairn.example"));
        assert!(second.server_names.iter().any(|n| n == "10.9.8.7"));
        // The admin certificate did not change.
        let kc = |p: &Pki| p.kubeconfig_yaml.clone();
        assert_eq!(kc(&first), kc(&second));
        let third =
            ensure(dir.path(), &settings(6443, &["cairn.example", "10.9.8.7"])).expect("third");
        assert_eq!(second.server_cert, third.server_cert);
    }

    #[test]
    fn supplied_ca_is_used_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        fs::create_dir_all(&pki).expect("mkdir");
        let key = KeyPair::generate().expect("key");
        let mut params = ca_params();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            rcgen::DnValue::PrintableString("Acme Root".try_into().expect("printable")),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        let ca = params.self_signed(&key).expect("ca").pem();
        fs::write(pki.join("ca.crt"), &ca).expect("write");
        fs::write(pki.join("ca.key"), key.serialize_pem()).expect("write");
        let got = ensure(dir.path(), &settings(6443, &[])).expect("ensure");
        assert_eq!(got.ca_cert, ca);
        assert_eq!(fs::read_to_string(pki.join("ca.crt")).expect("read"), ca);
        assert_eq!(issuer_of(&got.server_cert), subject_of(&ca));
    }

    #[test]
    fn half_a_ca_or_a_mismatched_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure(dir.path(), &settings(6443, &[])).expect("first");
        let key = dir.path().join("pki/ca.key");
        let other = KeyPair::generate().expect("key").serialize_pem();
        fs::write(&key, other).expect("write");
        let err = ensure(dir.path(), &settings(6443, &[])).expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
        fs::remove_file(&key).expect("rm");
        let err = ensure(dir.path(), &settings(6443, &[])).expect_err("half");
        assert!(matches!(err, PkiError::HalfCa { .. }), "{err}");
    }

    #[test]
    fn sans_are_checked() {
        assert_eq!(check_san("Node-1.Example").expect("dns"), "node-1.example");
        assert_eq!(check_san("fd00::1").expect("ip"), "fd00::1");
        assert!(check_san("*.apps.example").is_ok());
        for bad in ["", "a b", "-x", "x..y", "caf\u{e9}", "a*.b"] {
            assert!(check_san(bad).is_err(), "{bad}");
        }
    }
}
