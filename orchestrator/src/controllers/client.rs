//! The controllers' and the node agent's client: HTTP/2 to the API, with
//! objects as `serde_json::Value`s.
//!
//! Two transports behind the same calls:
//! - in-process ([`Client::new`], [`Client::with_user`]): HTTP/2 to the
//!   [`Api`] in this process over a Unix socket pair, without TLS. Every
//!   read and write goes through [`Api::handle`], the same entry point a
//!   kubectl request reaches after its TLS handshake, so validation,
//!   defaulting, admission of deletes, `managedFields` (the field manager
//!   is the controller's name) and watch semantics are exactly what
//!   clients get. The identity is passed as the certificate user the
//!   controller's client certificate would carry.
//! - remote ([`Client::remote`]): HTTP/2 over TLS to a server's URL, for
//!   `cairn agent` on another machine. The server's certificate is checked
//!   against the cluster CA given (not the system roots: the cluster signs
//!   its own), and every request carries the bearer token.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::sync::Mutex;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::api::{Api, User};

/// A failed request: the `Status` the server answered, or a transport error
/// (code 0).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ClientError {
    /// HTTP status code (0: the request did not complete).
    pub code: u16,
    /// The `Status` reason (`NotFound`, `Conflict`, `AlreadyExists`...).
    pub reason: String,
    /// The `Status` message.
    pub message: String,
}

impl ClientError {
    fn transport(message: impl std::fmt::Display) -> ClientError {
        ClientError {
            code: 0,
            reason: "Transport".into(),
            message: message.to_string(),
        }
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    /// 409 Conflict (stale resourceVersion) or AlreadyExists.
    pub fn is_conflict(&self) -> bool {
        self.code == 409
    }
}

/// How long a remote connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Ping interval of remote connections (they fail after half of it unanswered).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Result of client calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// A client of the API server, in this process or remote.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    manager: &'static str,
    conn: Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

/// Where requests go.
#[derive(Clone)]
enum Transport {
    /// The [`Api`] in this process, as `user`.
    InProcess { api: Arc<Api>, user: Arc<User> },
    /// A server over HTTPS.
    Remote(Arc<Remote>),
}

/// A remote server: its address, the TLS settings trusting its CA, and the
/// bearer token.
struct Remote {
    /// `host:port` of the URL (the `:authority` of requests).
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            Transport::InProcess { user, .. } => {
                f.debug_struct("Client").field("user", &user.name).finish()
            }
            Transport::Remote(remote) => f
                .debug_struct("Client")
                .field("server", &remote.authority)
                .finish(),
        }
    }
}

impl Client {
    /// A client acting as `user`, naming itself `manager` in managedFields.
    pub fn new(api: Arc<Api>, user: &str, manager: &'static str) -> Client {
        Client::with_user(api, User::internal(user), manager)
    }

    /// A client acting as `user` with its groups (the node agent's
    /// `system:node:<name>` in `system:nodes`).
    pub fn with_user(api: Arc<Api>, user: User, manager: &'static str) -> Client {
        Client {
            transport: Transport::InProcess {
                api,
                user: Arc::new(user),
            },
            manager,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// A client of the server at `url` (`https://host:port`), trusting the
    /// CA certificates in `ca_pem` and presenting `token`. Connects on
    /// first use.
    pub fn remote(
        url: &str,
        ca_pem: &[u8],
        token: &str,
        manager: &'static str,
    ) -> ClientResult<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| bad_config(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad_config(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad_config("the CA file holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client::remote_with(url, tls, token, manager)
    }

    /// A client of the server at `url` that does not verify the server's
    /// certificate: only for fetching what is then checked another way
    /// (the CA at `/cacerts`, against the hash in a join token).
    pub fn remote_unverified(url: &str, manager: &'static str) -> ClientResult<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::api::proxy::AnyServer(provider)))
            .with_no_client_auth();
        Client::remote_with(url, tls, "", manager)
    }

    /// A client of the server at `url` with a TLS configuration made
    /// elsewhere (one presenting the admin's client certificate from a
    /// server's data dir: tools and benchmarks on the server's machine).
    pub fn remote_tls(
        url: &str,
        tls: rustls::ClientConfig,
        manager: &'static str,
    ) -> ClientResult<Client> {
        Client::remote_with(url, tls, "", manager)
    }

    fn remote_with(
        url: &str,
        mut tls: rustls::ClientConfig,
        token: &str,
        manager: &'static str,
    ) -> ClientResult<Client> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| bad_config(format!("server URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_config(format!(
                "server URL {url:?}: must start with https://"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad_config(format!("server URL {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| bad_config(format!("server URL {url:?}: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| format!("{host}:{port}"));
        Ok(Client {
            transport: Transport::Remote(Arc::new(Remote {
                authority,
                host,
                port,
                server_name,
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                token: token.to_owned(),
            })),
            manager,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// An HTTP/2 connection to the Api, made on first use and after it closed.
    async fn sender(&self) -> ClientResult<SendRequest<Full<Bytes>>> {
        let mut conn = self.conn.lock().await;
        if let Some(sender) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = match &self.transport {
            Transport::InProcess { api, user } => in_process(api.clone(), user.clone()).await?,
            Transport::Remote(remote) => remote.connect().await?,
        };
        *conn = Some(sender.clone());
        Ok(sender)
    }
}

impl Remote {
    /// TCP, TLS (verifying the server against the CA), then HTTP/2 with
    /// keep-alive pings, so a connection to a vanished server fails its
    /// requests (and is made again) instead of hanging them.
    async fn connect(&self) -> ClientResult<SendRequest<Full<Bytes>>> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.handshake())
            .await
            .map_err(|_| {
                ClientError::transport(format!(
                    "connecting to {}: no answer within {CONNECT_TIMEOUT:?}",
                    self.authority
                ))
            })?
    }

    async fn handshake(&self) -> ClientResult<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                ClientError::transport(format!("connecting to {}: {e}", self.authority))
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::transport(format!("TLS with {}: {e}", self.authority)))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE / 2)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(ClientError::transport)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "API server connection ended");
            }
        });
        Ok(sender)
    }
}

/// A new HTTP/2 connection to `api` in this process, serving requests as `user`.
async fn in_process(api: Arc<Api>, user: Arc<User>) -> ClientResult<SendRequest<Full<Bytes>>> {
    let (ours, theirs) = tokio::net::UnixStream::pair().map_err(ClientError::transport)?;
    tokio::spawn(async move {
        let service = service_fn(move |req: Request<Incoming>| {
            let (api, user) = (api.clone(), user.clone());
            async move { Ok::<_, std::convert::Infallible>(api.handle(req, Some(&user)).await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.max_concurrent_streams(1000);
        if let Err(err) = builder
            .serve_connection(TokioIo::new(theirs), service)
            .await
        {
            tracing::debug!(%err, "in-process API connection ended");
        }
    });
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(ours))
            .await
            .map_err(ClientError::transport)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "in-process client connection ended");
        }
    });
    Ok(sender)
}

impl Client {
    /// Sends one request; the response body is left unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> ClientResult<hyper::Response<Incoming>> {
        let mut sender = self.sender().await?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let base = match &self.transport {
            Transport::InProcess { .. } => "http://cairn".to_owned(),
            Transport::Remote(remote) => format!("https://{}", remote.authority),
        };
        let uri = match method {
            Method::POST | Method::PUT | Method::PATCH => {
                format!("{base}{path}{sep}fieldManager={}", self.manager)
            }
            _ => format!("{base}{path}"),
        };
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::ACCEPT, "application/json");
        if let Transport::Remote(remote) = &self.transport
            && !remote.token.is_empty()
        {
            req = req.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", remote.token),
            );
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(ClientError::transport)?;
        sender.ready().await.map_err(ClientError::transport)?;
        sender
            .send_request(req)
            .await
            .map_err(ClientError::transport)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> ClientResult<Value> {
        let response = self.send(method, path, content_type, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::transport)?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(error_of(status, &value))
    }

    /// GET.
    pub async fn get(&self, path: &str) -> ClientResult<Value> {
        self.call(Method::GET, path, "application/json", None).await
    }

    /// POST `body` (a create, a binding).
    pub async fn post(&self, path: &str, body: &Value) -> ClientResult<Value> {
        self.call(Method::POST, path, "application/json", Some(body))
            .await
    }

    /// PUT `body` (an update with optimistic concurrency).
    pub async fn put(&self, path: &str, body: &Value) -> ClientResult<Value> {
        self.call(Method::PUT, path, "application/json", Some(body))
            .await
    }

    /// A JSON merge patch.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> ClientResult<Value> {
        self.call(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    /// DELETE with `options` (a `DeleteOptions` body, or `Null`).
    pub async fn delete(&self, path: &str, options: &Value) -> ClientResult<Value> {
        let body = (!options.is_null()).then_some(options);
        self.call(Method::DELETE, path, "application/json", body)
            .await
    }
}

/// A client that cannot be made from its settings.
fn bad_config(message: String) -> ClientError {
    ClientError {
        code: 0,
        reason: "BadConfiguration".into(),
        message,
    }
}

/// The error a non-2xx answer carries.
pub fn error_of(status: StatusCode, body: &Value) -> ClientError {
    ClientError {
        code: status.as_u16(),
        reason: body["reason"].as_str().unwrap_or("Unknown").to_owned(),
        message: body["message"].as_str().unwrap_or("").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_settings_are_checked_before_connecting() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("certificate")
            .cert
            .pem();
        assert!(Client::remote("https://127.0.0.1:6443", ca.as_bytes(), "t", "m").is_ok());
        assert!(Client::remote("https://[::1]:6443", ca.as_bytes(), "t", "m").is_ok());
        for (url, pem, why) in [
            ("http://127.0.0.1:6443", ca.as_str(), "https://"),
            ("127.0.0.1:6443", ca.as_str(), "https://"),
            (
                "https://127.0.0.1:6443",
                "not a certificate",
                "no certificate",
            ),
            ("https://:6443", ca.as_str(), "server URL"),
        ] {
            let err = Client::remote(url, pem.as_bytes(), "t", "m").expect_err(url);
            assert!(err.message.contains(why), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transport_error() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("certificate")
            .cert
            .pem();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let client = Client::remote(
            &format!("https://127.0.0.1:{port}"),
            ca.as_bytes(),
            "t",
            "m",
        )
        .expect("client");
        let err = client.get("/api").await.expect_err("nobody listens");
        assert_eq!(err.code, 0);
        assert!(err.message.contains("connecting"), "{err}");
    }
}
