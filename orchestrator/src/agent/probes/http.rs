//! The HTTP check of `httpGet` probes: one HTTP/1.1 GET with hyper over
//! TCP, or over TLS without certificate verification (the kubelet does not
//! verify probe targets either); 200–399 is success. Headers are the
//! probe's `httpHeaders`, plus `Host`, `User-Agent: kube-probe/1.32` and
//! `Accept: */*` unless given.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{join_host_port, plain_io_error};

/// An httpGet probe's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `scheme://host:port/path`.
    pub url: String,
    pub path: String,
    /// Headers in order; `Host`, `User-Agent` and `Accept` unless given.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The request of `httpGet` to `host:port`.
    pub fn of(get: &Value, host: &str, port: u16) -> HttpRequest {
        let https = get["scheme"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let mut path = get["path"].as_str().unwrap_or("/").to_owned();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let authority = join_host_port(host, port);
        let url = format!(
            "{}://{authority}{path}",
            if https { "https" } else { "http" }
        );
        let mut headers: Vec<(String, String)> = get["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let name = h["name"].as_str().unwrap_or("").to_owned();
                (name, h["value"].as_str().unwrap_or("").to_owned())
            })
            .filter(|(n, _)| !n.is_empty())
            .collect();
        let has = |headers: &[(String, String)], name: &str| {
            headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        for (name, value) in [
            ("Host", authority.clone()),
            ("User-Agent", "kube-probe/1.32".to_owned()),
            ("Accept", "*/*".to_owned()),
        ] {
            if !has(&headers, name) {
                headers.push((name.to_owned(), value));
            }
        }
        HttpRequest {
            https,
            host: host.to_owned(),
            port,
            url,
            path,
            headers,
        }
    }
}

/// One GET: `Ok` for 200–399.
pub async fn http_get(request: &HttpRequest) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("Get \"{}\": {e}", request.url);
    let addr = join_host_port(&request.host, request.port);
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| fail(&format!("dial tcp {addr}: connect: {}", plain_io_error(&e))))?;
    let status = if request.https {
        let connector = tokio_rustls::TlsConnector::from(insecure_tls());
        let name =
            rustls::pki_types::ServerName::try_from(request.host.clone()).map_err(|e| fail(&e))?;
        let tls = connector.connect(name, tcp).await.map_err(|e| fail(&e))?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
    .map_err(|e| fail(&e))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn send<IO>(io: IO, request: &HttpRequest) -> Result<u16, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let mut builder = hyper::Request::get(request.path.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read (at most) a little of the body, as upstream does, then drop it.
            let mut body = response.into_body();
            let mut read = 0usize;
            while read < 10 * 1024 {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            Ok(status)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// A TLS client that accepts any server certificate (the kubelet does not
/// verify probe targets either).
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(crate::api::proxy::AnyServer(
                            provider,
                        )))
                        .with_no_client_auth()
                });
            // The ring provider supports the default versions.
            Arc::new(config.unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn http_request_shape() {
        let get = json!({"path": "healthz", "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-A", "value": "1"}, {"name": "host", "value": "h.example"}]});
        let r = HttpRequest::of(&get, "10.0.0.2", 8443);
        assert_eq!(r.url, "https://10.0.0.2:8443/healthz");
        assert!(r.headers.contains(&("host".into(), "h.example".into())));
        assert!(!r.headers.iter().any(|(n, _)| n == "Host"));
        assert!(
            r.headers
                .contains(&("User-Agent".into(), "kube-probe/1.32".into()))
        );
    }
}
