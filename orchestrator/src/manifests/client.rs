//! A minimal HTTPS client of this server's own API, authenticated with the
//! admin certificate from its data dir ([`crate::probe::admin_tls_config`]),
//! so manifests go through authentication, validation, defaulting and CRDs
//! exactly as a `kubectl` request does. One connection per request: a few
//! manifests at start and on change do not need a pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A failed exchange: no answer, or an answer that is not 2xx.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, TLS or HTTP failed, or no answer in time.
    #[error("{method} {path}: {message}")]
    Transport {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: {code} {reason}: {message}")]
    Status {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// The HTTP status.
        code: u16,
        /// The `Status` reason (`NotFound`, `Invalid`, ...), if any.
        reason: String,
        /// The `Status` message, or the body.
        message: String,
    },
}

impl ClientError {
    /// The HTTP status, for an answer.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Transport { .. } => None,
        }
    }
}

/// The server at `addr`, spoken to as its admin.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    /// A client of the server at `addr` with the given TLS configuration.
    pub fn new(addr: SocketAddr, tls: rustls::ClientConfig) -> Client {
        Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        }
    }

    /// `GET path`, the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None, None).await
    }

    /// `method path` with a JSON body of the given content type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let transport = |message: String| ClientError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            message,
        };
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| transport(e.to_string())))
            .transpose()?
            .unwrap_or_default();
        let exchange = self.exchange(method.clone(), path, content_type, body);
        let (code, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {TIMEOUT:?}")))?
            .map_err(transport)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&code) {
            return Ok(value);
        }
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        Err(ClientError::Status {
            method,
            path: path.to_owned(),
            code,
            reason: text("reason").unwrap_or_default(),
            message: text("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned()),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        let tls = self
            .tls
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
            .map_err(|e| format!("tls handshake: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(?err, "api client connection ended");
            }
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((code, bytes))
    }
}
