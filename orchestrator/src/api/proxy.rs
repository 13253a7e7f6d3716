//! Pod `log`, `exec`, `attach` and `portforward`: proxied to the node
//! agent of the pod's node, as kube-apiserver proxies them to the kubelet.
//!
//! The API server checks what it can know (the pod, its node, the
//! container name with upstream's defaulting and messages, a completed
//! pod), then opens HTTPS to the node's agent (`status.addresses`
//! InternalIP, `status.daemonEndpoints.kubeletEndpoint.Port`) with the
//! client certificate `CN=kube-apiserver-kubelet-client` the PKI issues,
//! and sends the kubelet's URL (`/containerLogs/...`, `/exec/...`,
//! `/attach/...`, `/portForward/...`). Like kube-apiserver by default, it
//! does not verify the agent's serving certificate.
//!
//! Streams are an upgrade proxy ([`forward`], upstream's
//! `UpgradeAwareHandler`): the client's upgrade request (WebSocket or
//! SPDY) goes on as it is, the backend's answer comes back as it is, and
//! after a `101` the two connections are joined byte for byte. So the
//! protocol is negotiated end to end between kubectl and the runtime's
//! stream server: kubectl 1.32 asks for WebSocket `v5.channel.k8s.io`
//! first and, refused (containerd 1.6 speaks v4 and older), falls back to
//! SPDY by itself. The agent uses [`forward`] too, towards containerd.
//!
//! WebSocket-only clients that speak `v4.channel.k8s.io` (the official
//! Python client's `stream` for exec and `portforward`, tested in
//! `tests/agent_streams.rs`) need nothing more: containerd 1.6 serves v4
//! for exec, attach and port-forward, and the Python client's exit code
//! comes back as the Status on channel 3. Its `ports=80,8080` is split
//! into the kubelet's `port=` parameters, as upstream's query conversion
//! does.
//!
//! # Current limitations
//! - No translation of WebSocket v5 to SPDY (upstream's
//!   `TranslateStreamCloseWebsocketRequests`), nor of the
//!   `portforward.k8s.io` WebSocket subprotocol: a client that speaks
//!   only those (and cannot fall back to SPDY or to v4) cannot reach
//!   containerd 1.6. kubectl falls back; the Python client speaks v4.
//! - No `pods/proxy`, `services/proxy` or `nodes/proxy`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::handlers::{Target, from_kv};
use super::query::Query;
use super::resources::Subresource;
use super::status::ApiError;
use super::{Api, Body};

/// The common name of the API server's client certificate towards agents
/// (upstream's kubeadm name), which agents accept.
pub const KUBELET_CLIENT_NAME: &str = "kube-apiserver-kubelet-client";

/// The agent's port when the Node does not say (the kubelet's).
const DEFAULT_AGENT_PORT: u16 = 10250;

/// A failed proxy step.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The HTTP exchange with the backend failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
}

/// The rustls client configuration the API server reaches agents with:
/// its kubelet-client certificate; the agent's serving certificate is not
/// verified (kube-apiserver's default without `--kubelet-certificate-authority`).
pub fn agent_tls(cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(format!("kubelet client certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(format!("kubelet client key: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)?;
    // Upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any serving certificate (signatures are still checked, so the
/// session is with whoever holds the certificate's key): for agents here,
/// and for the agent's HTTPS probes (the kubelet verifies neither).
#[derive(Debug)]
pub struct AnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Is `sub` one of the subresources proxied to the node?
pub fn proxied(sub: Subresource) -> bool {
    matches!(
        sub,
        Subresource::Log | Subresource::Exec | Subresource::Attach | Subresource::PortForward
    )
}

/// Serves pod `log`, `exec`, `attach` or `portforward`.
pub async fn serve(
    api: &Api,
    target: &Target<'_>,
    sub: Subresource,
    query: &Query,
    mut parts: Parts,
) -> Result<Response<Body>, ApiError> {
    let method = parts.method.clone();
    let allowed = match sub {
        Subresource::Log => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    let (Some(namespace), Some(name), true) =
        (target.namespace.as_deref(), target.name.as_deref(), allowed)
    else {
        return Err(ApiError::method_not_allowed(method.as_str()));
    };
    let pod = get(api, target.rt.key(Some(namespace), name), "pods", name).await?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let path = match sub {
        Subresource::Log => {
            let container = container(&pod, name, query.get("container"))?;
            if !query.flag("previous")? {
                waiting(&pod, name, &container)?;
            }
            let mut url = format!("/containerLogs/{namespace}/{name}/{container}");
            let keys = [
                "follow",
                "previous",
                "timestamps",
                "tailLines",
                "sinceSeconds",
                "sinceTime",
                "limitBytes",
            ];
            push_query(
                &mut url,
                keys.iter().filter_map(|k| Some((*k, query.get(k)?))),
            );
            url
        }
        Subresource::Exec | Subresource::Attach => {
            let exec = sub == Subresource::Exec;
            if matches!(phase, "Succeeded" | "Failed") {
                let verb = if exec { "exec into" } else { "attach to" };
                return Err(ApiError::bad_request(format!(
                    "cannot {verb} a container in a completed pod; current phase is {phase}"
                )));
            }
            let container = container(&pod, name, query.get("container"))?;
            let (stdin, stdout, stderr, tty) = (
                query.flag("stdin")?,
                query.flag("stdout")?,
                query.flag("stderr")?,
                query.flag("tty")?,
            );
            if !(stdin || stdout || stderr) {
                return Err(ApiError::bad_request(
                    "you must specify at least 1 of stdin, stdout, stderr",
                ));
            }
            let command = query.all("command");
            if exec && command.is_empty() {
                return Err(ApiError::bad_request(
                    "you must specify at least one command for the container",
                ));
            }
            let verb = if exec { "exec" } else { "attach" };
            let mut url = format!("/{verb}/{namespace}/{name}/{container}");
            let flags = [
                ("input", stdin),
                ("output", stdout),
                ("error", stderr),
                ("tty", tty),
            ];
            let pairs = command.into_iter().map(|c| ("command", c)).chain(
                flags
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(k, _)| (k, "1")),
            );
            push_query(&mut url, pairs);
            url
        }
        _ => {
            let mut url = format!("/portForward/{namespace}/{name}");
            // `ports=80&ports=8080` or `ports=80,8080` (the Python
            // client's), as upstream's query conversion reads it.
            let ports = query.all("ports").into_iter().flat_map(|p| p.split(','));
            push_query(&mut url, ports.map(|p| ("port", p.trim())));
            url
        }
    };
    let (host, port) = node_endpoint(api, node).await?;
    let Some(tls) = api.agent_tls.get() else {
        return Err(ApiError::internal("no client certificate for node agents"));
    };
    let dial_error =
        |err: &dyn std::fmt::Display| ApiError::internal(format!("error dialing backend: {err}"));
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| dial_error(&e))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| dial_error(&e))?
        .to_owned();
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| dial_error(&e))?;
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let upgrading = sub != Subresource::Log;
    let headers = if upgrading {
        parts.headers
    } else {
        HeaderMap::new()
    };
    let response = forward(
        stream,
        method,
        &path,
        &format!("{host}:{port}"),
        &headers,
        upgrade.filter(|_| upgrading),
    )
    .await
    .map_err(|e| dial_error(&e))?;
    if sub == Subresource::Log && response.status() != StatusCode::OK {
        return Err(backend_error(response).await);
    }
    Ok(response)
}

async fn get(api: &Api, key: String, resource: &str, name: &str) -> Result<Value, ApiError> {
    match api.store.get(&key).await {
        Ok(Some(kv)) => from_kv(&kv),
        Ok(None) => Err(ApiError::not_found(resource, name)),
        Err(err) => Err(ApiError::from_store(err, resource, name)),
    }
}

/// The container a request names, or the pod's only one; upstream's errors.
fn container(pod: &Value, pod_name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    let ephemeral = names("ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c)
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c) =>
        {
            Ok(c.to_owned())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message += &format!(" or one of the init containers: [{}]", init.join(" "));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// 400 when the pod's status says the container has not started yet and
/// never ran (the kubelet's wording), so there is no log to read.
fn waiting(pod: &Value, pod_name: &str, container: &str) -> Result<(), ApiError> {
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .into_iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten();
    let Some(status) = statuses
        .into_iter()
        .find(|s| s["name"].as_str() == Some(container))
    else {
        return Ok(());
    };
    let ran = status["containerID"]
        .as_str()
        .is_some_and(|id| !id.is_empty())
        || status["lastState"]["terminated"].is_object();
    let Some(waiting) = status["state"]["waiting"].as_object().filter(|_| !ran) else {
        return Ok(());
    };
    let why = match waiting.get("reason").and_then(Value::as_str) {
        Some("ErrImagePull") => "image can't be pulled".to_owned(),
        Some("ImagePullBackOff") => "trying and failing to pull image".to_owned(),
        Some(reason) => reason.to_owned(),
        None => "ContainerCreating".to_owned(),
    };
    Err(ApiError::bad_request(format!(
        "container {container:?} in pod {pod_name:?} is waiting to start: {why}"
    )))
}

/// The address and port of `node`'s agent.
async fn node_endpoint(api: &Api, node: &str) -> Result<(String, u16), ApiError> {
    let snapshot = api.snapshot();
    let nodes = snapshot
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let obj = get(api, nodes.key(None, node), "nodes", node).await?;
    let addresses = obj["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a["type"].as_str() == Some(kind))
                .and_then(|a| a["address"].as_str())
        })
        .ok_or_else(|| ApiError::internal(format!("node {node} has no address")))?;
    let port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_AGENT_PORT);
    Ok((host.to_owned(), port))
}

/// A non-200 answer of an agent to a log request, as a `Status` (upstream's
/// generic server response: the agent's text is the message).
async fn backend_error(response: Response<Body>) -> ApiError {
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)])
        .trim()
        .to_owned();
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    ApiError {
        code,
        reason,
        message: text,
        details: None,
        fields: None,
    }
}

/// Appends `?k=v&...` (percent-encoded) to `url`.
pub fn push_query<'a>(url: &mut String, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode(key));
        url.push('=');
        url.push_str(&encode(value));
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Request headers that never travel to the backend: the client's
/// credentials and what describes this hop's body.
const DROPPED: [HeaderName; 4] = [
    header::HOST,
    header::AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// Sends `method path` with `headers` over `io` (HTTP/1.1) and returns
/// the backend's response. When it is `101 Switching Protocols` and the
/// client's connection can be upgraded (`upgrade`), the two upgraded
/// connections are joined in a task until either side closes; any other
/// response is given back with its body streamed.
pub async fn forward<IO>(
    io: IO,
    method: Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Body>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(%err, "backend connection ended");
        }
    });
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        if !DROPPED.contains(name) && !name.as_str().starts_with("impersonate-") {
            request = request.header(name, value);
        }
    }
    let request = request
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let mut response = sender.send_request(request).await?;
    let status = response.status();
    let mut out = Response::builder().status(status);
    for (name, value) in response.headers() {
        out = out.header(name, value);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade else {
            // Nothing to join: the backend's answer is all there is.
            return Ok(out.body(Body::new(Empty::new()))?);
        };
        let backend = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client, backend) {
                Ok((client, backend)) => {
                    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                        Ok((up, down)) => tracing::debug!(up, down, "stream closed"),
                        Err(err) => tracing::debug!(%err, "stream ended"),
                    }
                }
                Err(err) => tracing::debug!(%err, "upgrade failed"),
            }
        });
        return Ok(out.body(Body::new(Empty::new()))?);
    }
    Ok(out.body(relay(response.into_body()))?)
}

/// A backend's body as a response body; a read error ends it.
pub fn relay(body: Incoming) -> Body {
    let frames = futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.is_data() => {
                    let data = frame.into_data().unwrap_or_default();
                    return Some((Ok(Frame::data(data)), Some(body)));
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => {
                    tracing::debug!(%err, "backend body ended");
                    return None;
                }
                None => return None,
            }
        }
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaulting_and_messages() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "init"}]}});
        let err = container(&pod, "p", None).expect_err("two");
        assert_eq!(
            err.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [init]"
        );
        assert_eq!(err.code, 400);
        assert_eq!(container(&pod, "p", Some("b")).expect("b"), "b");
        assert_eq!(container(&pod, "p", Some("init")).expect("init"), "init");
        let err = container(&pod, "p", Some("c")).expect_err("c");
        assert_eq!(err.message, "container c is not valid for pod p");
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container(&one, "p", None).expect("only"), "only");
    }

    #[test]
    fn waiting_containers_have_no_log() {
        let pod = |state: Value| json!({"status": {"containerStatuses": [{"name": "c", "state": state, "containerID": ""}]}});
        let err = waiting(
            &pod(json!({"waiting": {"reason": "ContainerCreating"}})),
            "p",
            "c",
        )
        .expect_err("waiting");
        assert_eq!(
            err.message,
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        let err = waiting(
            &pod(json!({"waiting": {"reason": "ImagePullBackOff"}})),
            "p",
            "c",
        )
        .expect_err("backoff");
        assert!(err.message.ends_with("trying and failing to pull image"));
        assert!(waiting(&pod(json!({"running": {}})), "p", "c").is_ok());
        assert!(waiting(&json!({}), "p", "c").is_ok());
    }

    #[test]
    fn queries_are_encoded() {
        let mut url = "/exec/ns/p/c".to_owned();
        push_query(
            &mut url,
            [
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo a&b=c"),
            ],
        );
        assert_eq!(
            url,
            "/exec/ns/p/c?command=sh&command=-c&command=echo%20a%26b%3Dc"
        );
        let q = Query::parse(url.split_once('?').map(|(_, q)| q));
        assert_eq!(q.all("command"), ["sh", "-c", "echo a&b=c"]);
    }
}
