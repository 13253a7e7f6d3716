//! `cairn healthz`: asks a running `cairn server` on this machine for one of
//! its health endpoints (`/readyz` by default) over HTTPS, the way a client
//! would: the server's certificate is verified against the cluster CA and
//! the request carries the admin client certificate, both read from the
//! server's data dir (`pki/ca.crt`, `pki/admin.crt`, `pki/admin.key`).
//!
//! `cairn-init` runs it to decide that the device is ready: a real request
//! through TLS, authentication and the router, not just an open port, and
//! init itself stays free of a TLS stack.
//!
//! On an agent ([`Remote`]) the question goes to the server it joined,
//! with the agent's join token and cluster CA: is the API there, and is
//! this node Ready in it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A PKI file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file did not parse.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting, the handshake or the exchange failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered, but not with 200.
    #[error("{path} answered {code}: {body}")]
    Status {
        /// The endpoint.
        path: String,
        /// The HTTP status.
        code: u16,
        /// The body, for the message.
        body: String,
    },
    /// The node exists but its `Ready` condition is not `True`.
    #[error("node {node} is not ready: {reason}")]
    NodeNotReady {
        /// The node's name.
        node: String,
        /// The condition's status, reason and message.
        reason: String,
    },
}

/// What to ask.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The server's data dir (its `pki/`).
    pub data_dir: PathBuf,
    /// The server's address.
    pub addr: SocketAddr,
    /// The endpoint, e.g. `/readyz`.
    pub path: String,
    /// How long the whole exchange may take.
    pub timeout: Duration,
}

impl Probe {
    /// `/readyz` of the server on the loopback port `port`.
    pub fn readyz(data_dir: &Path, port: u16) -> Probe {
        Probe {
            data_dir: data_dir.to_owned(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            path: "/readyz".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Asks for the Node `name` and succeeds only when its `Ready`
    /// condition is `True` (the node agent is up and containerd's runtime
    /// and pod network are ready).
    pub async fn node_ready(&self, name: &str) -> Result<String, ProbeError> {
        let probe = Probe {
            path: format!("/api/v1/nodes/{name}"),
            ..self.clone()
        };
        let body = probe.run().await?;
        check_node_ready(name, &body)?;
        Ok(format!("node {name} Ready"))
    }

    /// Runs the probe; the body of a 200 answer on success.
    pub async fn run(&self) -> Result<String, ProbeError> {
        tokio::time::timeout(self.timeout, self.exchange())
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))?
    }

    async fn exchange(&self) -> Result<String, ProbeError> {
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(admin_tls_config(&self.data_dir)?));
        let io = |what| move |source| ProbeError::Io { what, source };
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(io("connecting"))?;
        let tls = connector
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
            .map_err(io("tls handshake"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(?err, "probe connection ended");
            }
        });
        let request = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|err| ProbeError::Io {
                what: "building the request",
                source: std::io::Error::other(err),
            })?;
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if code == 200 {
            Ok(body)
        } else {
            Err(ProbeError::Status {
                path: self.path.clone(),
                code,
                body,
            })
        }
    }
}

/// A probe of a remote server (an agent's), with its token and CA.
#[derive(Debug)]
pub struct Remote {
    client: crate::controllers::client::Client,
}

impl Remote {
    /// A probe of `server` trusting `ca_pem`, presenting `token`.
    pub fn new(server: &str, ca_pem: &[u8], token: &str) -> Result<Remote, ProbeError> {
        let client =
            crate::controllers::client::Client::remote(server, ca_pem, token, "cairn-healthz")
                .map_err(|e| ProbeError::Io {
                    what: "configuring the client",
                    source: std::io::Error::other(e.message),
                })?;
        Ok(Remote { client })
    }

    /// Asks for `path` (`/readyz`), then with `node` for that Node's
    /// `Ready` condition; a line per answer on success.
    pub async fn run(&self, path: &str, node: Option<&str>) -> Result<String, ProbeError> {
        let timeout = Duration::from_secs(5);
        tokio::time::timeout(timeout, self.exchange(path, node))
            .await
            .map_err(|_| ProbeError::Timeout(timeout))?
    }

    async fn exchange(&self, path: &str, node: Option<&str>) -> Result<String, ProbeError> {
        let failed = |path: &str, e: crate::controllers::client::ClientError| ProbeError::Status {
            path: path.to_owned(),
            code: e.code,
            body: e.message,
        };
        let response = self
            .client
            .send(hyper::Method::GET, path, "text/plain", None)
            .await
            .map_err(|e| failed(path, e))?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if code != 200 {
            return Err(ProbeError::Status {
                path: path.to_owned(),
                code,
                body,
            });
        }
        let Some(name) = node else {
            return Ok(body);
        };
        let node_path = format!("/api/v1/nodes/{name}");
        let object = self
            .client
            .get(&node_path)
            .await
            .map_err(|e| failed(&node_path, e))?;
        check_node_ready(name, &object.to_string())?;
        Ok(format!("{body}\nnode {name} Ready"))
    }
}

/// `Ok` when the Node object in `body` has `Ready=True`.
fn check_node_ready(name: &str, body: &str) -> Result<(), ProbeError> {
    let not_ready = |reason: String| ProbeError::NodeNotReady {
        node: name.to_owned(),
        reason,
    };
    let node: serde_json::Value =
        serde_json::from_str(body).map_err(|e| not_ready(format!("unreadable answer: {e}")))?;
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .ok_or_else(|| not_ready("no Ready condition yet".into()))?;
    if ready["status"] == "True" {
        Ok(())
    } else {
        Err(not_ready(format!(
            "Ready={} {}: {}",
            ready["status"].as_str().unwrap_or("?"),
            ready["reason"].as_str().unwrap_or(""),
            ready["message"].as_str().unwrap_or("")
        )))
    }
}

/// A TLS client configuration trusting the cluster CA of the server whose
/// data dir is `data_dir` and presenting its admin certificate.
pub fn admin_tls_config(data_dir: &Path) -> Result<rustls::ClientConfig, ProbeError> {
    let pki = data_dir.join("pki");
    let read = |name: &str| {
        let path = pki.join(name);
        std::fs::read(&path)
            .map(|bytes| (path.clone(), bytes))
            .map_err(|source| ProbeError::Read { path, source })
    };
    let pem = |path: &PathBuf| {
        let path = path.clone();
        move |source| ProbeError::Pem { path, source }
    };
    let mut roots = rustls::RootCertStore::empty();
    let (ca_path, ca) = read("ca.crt")?;
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.map_err(pem(&ca_path))?)?;
    }
    let (cert_path, cert) = read("admin.crt")?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(&cert_path))?;
    let (key_path, key) = read("admin.key")?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(pem(&key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_pki_names_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let err = Probe::readyz(dir.path(), 1)
            .run()
            .await
            .expect_err("no pki");
        assert!(err.to_string().contains("pki/ca.crt"), "{err}");
    }

    #[test]
    fn node_ready_reads_the_condition() {
        let node = |status: &str| {
            serde_json::json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": status, "reason": "KubeletNotReady", "message": "cni config uninitialized"},
            ]}})
            .to_string()
        };
        assert!(check_node_ready("n", &node("True")).is_ok());
        let err = check_node_ready("n", &node("False")).expect_err("not ready");
        assert!(
            err.to_string().contains("cni config uninitialized"),
            "{err}"
        );
        let err = check_node_ready("n", "{}").expect_err("no conditions");
        assert!(err.to_string().contains("no Ready condition"), "{err}");
    }
}
