//! The HTTPS listener: rustls (ring provider) with client certificates
//! verified against the cluster CA, hyper 1 (HTTP/1.1 and HTTP/2 by ALPN)
//! on each connection (HTTP/1.1 upgrades allowed: exec, attach and
//! port-forward streams), and a shutdown future that stops accepting.
//!
//! A client certificate is optional at the TLS layer so that a request
//! without one gets a proper 401 `Status` rather than a handshake failure;
//! a certificate that does not chain to the CA still fails the handshake.

use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::Api;
use super::auth::User;
use super::pki::Pki;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file did not parse.
    #[error("tls {what}: {source}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The rustls server configuration for `pki`.
pub fn tls_config(pki: &Pki) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = |what| move |source| TlsError::Pem { what, source };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(cert.map_err(pem("ca certificate"))?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain = CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("server certificate"))?;
    let key =
        PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).map_err(pem("server key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    api: Arc<Api>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(?err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => {
                info!("shutting down: no new connections");
                return;
            }
        };
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    debug!(%peer, ?err, "tls handshake failed");
                    return;
                }
            };
            // The verifier accepted any certificate presented, so it chains
            // to the CA: its subject is the connection's user.
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| User::from_certificate(cert))
                .map(Arc::new);
            let service = service_fn(move |req| {
                let (api, user) = (api.clone(), user.clone());
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, user.as_deref()).await) }
            });
            if let Err(err) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, ?err, "connection ended with an error");
            }
        });
    }
}
