//! The cluster PKI under `<data-dir>/pki`: a CA generated on first start,
//! the server's serving certificate and the admin client certificate
//! (`CN=cairn-admin, O=system:masters`), plus `<data-dir>/admin.kubeconfig`.
//!
//! Files that exist are reused, so clients keep trusting the server across
//! restarts. The CA's subject is fixed, so a missing leaf can be re-issued
//! from the CA key alone (rcgen's `Issuer` needs only the name and the key,
//! not a parsed certificate). Keys are ECDSA P-256 and written mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

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
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
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
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// A certificate/key pair on disk, issued by the CA if missing.
fn leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    params: impl FnOnce() -> Result<CertificateParams, rcgen::Error>,
) -> Result<(String, String), PkiError> {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
        return Ok((cert, key));
    }
    let key = KeyPair::generate().map_err(cert_err("leaf key"))?;
    let cert = params()
        .and_then(|p| p.signed_by(&key, issuer))
        .map_err(cert_err("leaf certificate"))?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    write(&key_path, &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    Ok((cert, key))
}

/// Loads or creates the PKI in `data_dir/pki` and writes the admin
/// kubeconfig for a server on `port`.
pub fn ensure(data_dir: &Path, port: u16) -> Result<Pki, PkiError> {
    let dir = data_dir.join("pki");
    fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
        path: dir.clone(),
        source,
    })?;

    let (ca_cert_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca_cert, ca_key) = match (read(&ca_cert_path)?, read(&ca_key_path)?) {
        (Some(cert), Some(key)) => (cert, KeyPair::from_pem(&key).map_err(cert_err("ca key"))?),
        _ => {
            let key = KeyPair::generate().map_err(cert_err("ca key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(cert_err("ca certificate"))?;
            write(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write(&ca_cert_path, &cert.pem(), 0o644)?;
            (cert.pem(), key)
        }
    };
    let issuer = Issuer::new(ca_params(), ca_key);

    let (server_cert, server_key) = leaf(&dir, "server", &issuer, || {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Some(host) = hostname() {
            names.push(host);
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn-server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok(params)
    })?;
    let (admin_cert, admin_key) = leaf(&dir, "admin", &issuer, || {
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

    let kubeconfig = data_dir.join("admin.kubeconfig");
    write(
        &kubeconfig,
        &kubeconfig_yaml(&ca_cert, port, &admin_cert, &admin_key),
        0o600,
    )?;
    Ok(Pki {
        ca_cert,
        server_cert,
        server_key,
        kubeconfig,
    })
}

/// The node's hostname, if it is a usable DNS name.
fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| name.to_owned())
}

/// An admin kubeconfig with every certificate inline.
fn kubeconfig_yaml(ca: &str, port: u16, cert: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: cairn
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: cairn-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: cairn
  context:
    cluster: cairn
    user: cairn-admin
current-context: cairn
",
        ca = b64(ca),
        cert = b64(cert),
        key = b64(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), 6443).expect("first");
        let second = ensure(dir.path(), 7443).expect("second");
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_eq!(first.server_cert, second.server_cert);
        let kubeconfig = fs::read_to_string(&second.kubeconfig).expect("kubeconfig");
        assert!(kubeconfig.contains("server: https://127.0.0.1:7443"));
    }

    #[test]
    fn missing_leaf_is_reissued_from_the_ca_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), 6443).expect("first");
        fs::remove_file(dir.path().join("pki/server.crt")).expect("rm");
        let second = ensure(dir.path(), 6443).expect("second");
        assert_eq!(first.ca_cert, second.ca_cert);
        assert_ne!(first.server_cert, second.server_cert);
    }
}
