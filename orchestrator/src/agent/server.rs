//! The agent's HTTPS API (the kubelet's port, 10250): what the API server
//! proxies `kubectl logs`, `exec`, `attach` and `port-forward` to.
//!
//! Routes (the kubelet's):
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//!   `previous`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`,
//!   `limitBytes`;
//! - `GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}?command=...&input=1&output=1&error=1&tty=1`;
//! - `GET|POST /attach/{namespace}/{pod}[/{uid}]/{container}?input=1...`;
//! - `GET|POST /portForward/{namespace}/{pod}[/{uid}]`;
//! - `GET /healthz`.
//!
//! TLS: the serving certificate is self-signed, generated at each start
//! (kube-apiserver does not verify kubelet serving certificates unless
//! told to, and Cairn's does not). Clients must present a certificate
//! signed by the cluster CA (verified in the handshake) whose subject is
//! the API server's kubelet client (`CN=kube-apiserver-kubelet-client`)
//! or in group `system:masters`; anyone else gets 403. There is no
//! finer authorization (the kubelet's SubjectAccessReview).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Config;
use super::cri::Cri;
use super::streams::{self, Kind, StreamError, StreamRequest};
use crate::api::query::Query;
use crate::api::{Body, User};

/// Groups besides the kubelet client name that may use the agent API.
const ADMIN_GROUP: &str = "system:masters";

/// Errors starting the agent API.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The serving certificate could not be generated.
    #[error("agent serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The cluster CA or the TLS setup is unusable.
    #[error("agent tls: {0}")]
    Tls(String),
    /// The port could not be bound.
    #[error("agent api listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The agent API, bound and ready to serve.
pub struct AgentServer {
    listener: TcpListener,
    tls: TlsAcceptor,
    cri: Cri,
}

impl AgentServer {
    /// Binds `0.0.0.0:<config.agent_port>` (port 0: any) with a fresh
    /// self-signed serving certificate for the node's names, accepting
    /// clients whose certificates `client_ca_pem` (the cluster CA) signed.
    pub async fn bind(
        config: &Config,
        cri: Cri,
        client_ca_pem: &str,
    ) -> Result<AgentServer, ServerError> {
        let tls = tls_config(config, client_ca_pem)?;
        let addr = SocketAddr::from(([0, 0, 0, 0], config.agent_port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })?;
        Ok(AgentServer {
            listener,
            tls: TlsAcceptor::from(Arc::new(tls)),
            cri,
        })
    }

    /// The bound address (the port to report in the Node's
    /// `status.daemonEndpoints.kubeletEndpoint.Port`).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes (open streams go on until they end).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        if let Ok(addr) = self.local_addr() {
            info!(%addr, "serving the agent API");
        }
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        warn!(?err, "agent api accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let (tls, cri) = (self.tls.clone(), self.cri.clone());
            tokio::spawn(async move {
                let stream = match tls.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        debug!(%peer, ?err, "agent api tls handshake failed");
                        return;
                    }
                };
                let user = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| User::from_certificate(cert));
                let allowed = user.as_ref().is_some_and(|u| {
                    u.name == crate::api::proxy::KUBELET_CLIENT_NAME
                        || u.groups.iter().any(|g| g == ADMIN_GROUP)
                });
                let name = user.map(|u| u.name).unwrap_or_default();
                let service = service_fn(move |req: Request<Incoming>| {
                    let (cri, name) = (cri.clone(), name.clone());
                    async move {
                        let span = info_span!("agent request", method = %req.method(), path = %req.uri().path());
                        let response = if allowed {
                            route(&cri, req).instrument(span).await
                        } else {
                            text(
                                StatusCode::FORBIDDEN,
                                format!(
                                    "Forbidden (user={name}, verb=get, resource=nodes, subresource=proxy)"
                                ),
                            )
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                if let Err(err) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, ?err, "agent api connection ended with an error");
                }
            });
        }
    }
}

fn tls_config(config: &Config, client_ca_pem: &str) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut names = vec![
        config.node_name.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    names.extend(config.node_ip.map(|ip| ip.to_string()));
    names.dedup();
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{}@cairn-agent", config.node_name),
    );
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(message.into()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn failure(err: StreamError) -> Response<Body> {
    debug!(%err, "agent request failed");
    text(err.status(), err.to_string())
}

async fn route(cri: &Cri, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().map(str::to_owned);
    let query = Query::parse(raw_query.as_deref());
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let get = method == Method::GET;
    let stream = get || method == Method::POST;
    let (kind, namespace, name, container) = match segments.as_slice() {
        ["healthz"] if get => return text(StatusCode::OK, "ok"),
        ["containerLogs", ns, pod, container] if get => {
            return streams::container_logs(cri, ns, pod, container, &query)
                .await
                .unwrap_or_else(failure);
        }
        ["exec", ns, pod, container] | ["exec", ns, pod, _, container] if stream => {
            (Kind::Exec, *ns, *pod, *container)
        }
        ["attach", ns, pod, container] | ["attach", ns, pod, _, container] if stream => {
            (Kind::Attach, *ns, *pod, *container)
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] if stream => {
            (Kind::PortForward, *ns, *pod, "")
        }
        _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    let upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let request = StreamRequest {
        kind,
        namespace,
        name,
        container,
        query: &query,
        raw_query: raw_query.as_deref(),
        method,
        headers: req.headers(),
        upgrade,
    };
    streams::serve(cri, request).await.unwrap_or_else(failure)
}
