//! The agent's side of `kubectl logs`, `exec`, `attach` and
//! `port-forward`: finding the pod's sandbox and container in CRI, then
//! either reading the container's log file ([`logs`](super::logs)) or
//! asking CRI for a streaming URL (`Exec`, `Attach`, `PortForward`) on
//! containerd's stream server and proxying the client's upgrade request
//! to it ([`crate::api::proxy::forward`]). The protocol (WebSocket
//! `v4.channel.k8s.io` and older, or SPDY) is then negotiated between the
//! client and containerd; the agent only joins the bytes.
//!
//! Pods are found by their CRI sandbox metadata (namespace and name), not
//! by labels, so this works with whatever labels the pods part sets; the
//! newest ready sandbox wins. A container's attempts are its CRI
//! `metadata.attempt` (the restart count): the current log is the highest
//! attempt's, `previous` the one before.

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Response, StatusCode};

use super::cri::{Cri, CriError, api, call};
use super::logs::{self, LogOptions};
use crate::api::Body;
use crate::api::proxy;
use crate::api::query::Query;

/// Why a stream could not be served, with the HTTP status the kubelet
/// answers.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The request is wrong or the container cannot serve it yet (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such pod or container on this node (404).
    #[error("{0}")]
    NotFound(String),
    /// The runtime failed (500).
    #[error(transparent)]
    Cri(#[from] CriError),
    /// The runtime's stream server could not be reached (500).
    #[error("{0}")]
    Backend(String),
}

impl StreamError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            StreamError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StreamError::NotFound(_) => StatusCode::NOT_FOUND,
            StreamError::Cri(_) | StreamError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The newest sandbox of pod `namespace/name` (ready ones first).
async fn sandbox(
    cri: &mut Cri,
    namespace: &str,
    name: &str,
) -> Result<api::PodSandbox, StreamError> {
    let sandboxes = cri
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .map_err(call("ListPodSandbox"))?
        .into_inner()
        .items;
    sandboxes
        .into_iter()
        .filter(|s| {
            s.metadata
                .as_ref()
                .is_some_and(|m| m.namespace == namespace && m.name == name)
        })
        .max_by_key(|s| {
            (
                s.state == api::PodSandboxState::SandboxReady as i32,
                s.created_at,
            )
        })
        .ok_or_else(|| StreamError::NotFound(format!("pod \"{namespace}/{name}\" not found")))
}

/// The attempts of container `container` in `sandbox`, newest first.
async fn attempts(
    cri: &mut Cri,
    sandbox: &api::PodSandbox,
    container: &str,
) -> Result<Vec<api::Container>, StreamError> {
    let filter = api::ContainerFilter {
        pod_sandbox_id: sandbox.id.clone(),
        ..Default::default()
    };
    let mut found: Vec<api::Container> = cri
        .runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(call("ListContainers"))?
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == container))
        .collect();
    found.sort_by_key(|c| {
        let attempt = c.metadata.as_ref().map_or(0, |m| m.attempt);
        std::cmp::Reverse((attempt, c.created_at))
    });
    Ok(found)
}

/// The running container `container` of pod `namespace/name`.
async fn running(
    cri: &mut Cri,
    namespace: &str,
    name: &str,
    container: &str,
) -> Result<(api::PodSandbox, api::Container), StreamError> {
    let sandbox = sandbox(cri, namespace, name).await?;
    let current = attempts(cri, &sandbox, container)
        .await?
        .into_iter()
        .find(|c| c.state == api::ContainerState::ContainerRunning as i32)
        .ok_or_else(|| StreamError::NotFound(format!("container not found ({container:?})")))?;
    Ok((sandbox, current))
}

async fn status(cri: &mut Cri, id: &str) -> Result<api::ContainerStatus, StreamError> {
    cri.runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await
        .map_err(call("ContainerStatus"))?
        .into_inner()
        .status
        .ok_or_else(|| StreamError::NotFound(format!("container {id} has no status")))
}

/// `GET /containerLogs/{namespace}/{name}/{container}`: the log, streamed.
pub async fn container_logs(
    cri: &Cri,
    namespace: &str,
    name: &str,
    container: &str,
    query: &Query,
) -> Result<Response<Body>, StreamError> {
    let options = LogOptions::from_query(query).map_err(StreamError::BadRequest)?;
    let mut cri = cri.clone();
    let sandbox = sandbox(&mut cri, namespace, name).await?;
    let attempts = attempts(&mut cri, &sandbox, container).await?;
    let chosen = if options.previous {
        attempts.get(1).ok_or_else(|| {
            StreamError::BadRequest(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            ))
        })?
    } else {
        attempts.first().ok_or_else(|| {
            StreamError::BadRequest(format!(
                "container {container:?} in pod {name:?} is waiting to start: ContainerCreating"
            ))
        })?
    };
    let log_path = status(&mut cri, &chosen.id).await?.log_path;
    let path = std::path::PathBuf::from(&log_path);
    if !path.is_file() {
        return Err(StreamError::NotFound(format!(
            "log of container {container:?} in pod {name:?} not found: {}",
            path.display()
        )));
    }
    let id = chosen.id.clone();
    let handle = tokio::runtime::Handle::current();
    let alive = move || {
        let (mut cri, id) = (cri.clone(), id.clone());
        handle.block_on(async move {
            // An unanswered runtime counts as running: the client decides
            // when to stop following.
            status(&mut cri, &id).await.map_or(true, |s| {
                s.state == api::ContainerState::ContainerRunning as i32
            })
        })
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || {
        if let Err(err) = logs::stream(path.clone(), options, tx, alive) {
            tracing::warn!(%err, path = %path.display(), "reading a container log failed");
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok(hyper::body::Frame::data(b)), rx))
    });
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

/// What kind of stream a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/exec/{ns}/{pod}/{container}?command=...&input=1&output=1&error=1&tty=1`.
    Exec,
    /// `/attach/{ns}/{pod}/{container}?input=1...`.
    Attach,
    /// `/portForward/{ns}/{pod}`.
    PortForward,
}

/// A stream request's parts the runtime needs.
pub struct StreamRequest<'a> {
    /// Exec, attach or port-forward.
    pub kind: Kind,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub name: &'a str,
    /// The container (exec and attach).
    pub container: &'a str,
    /// The query (command, streams, ports).
    pub query: &'a Query,
    /// The raw query string, passed on to the stream server.
    pub raw_query: Option<&'a str>,
    /// Method and headers of the client's upgrade request.
    pub method: Method,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// The client connection's upgrade.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Serves exec, attach or port-forward: a streaming URL from CRI, then the
/// upgrade proxied to it.
pub async fn serve(cri: &Cri, req: StreamRequest<'_>) -> Result<Response<Body>, StreamError> {
    let mut cri = cri.clone();
    let flag = |k: &str| {
        req.query
            .flag(k)
            .map_err(|e| StreamError::BadRequest(e.message))
    };
    let url = match req.kind {
        Kind::Exec | Kind::Attach => {
            let (_, container) = running(&mut cri, req.namespace, req.name, req.container).await?;
            let (stdin, stdout, tty) = (flag("input")?, flag("output")?, flag("tty")?);
            // A terminal merges stderr into stdout; CRI refuses both.
            let stderr = flag("error")? && !tty;
            if req.kind == Kind::Exec {
                let cmd: Vec<String> = req
                    .query
                    .all("command")
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if cmd.is_empty() {
                    return Err(StreamError::BadRequest("missing command".into()));
                }
                cri.runtime
                    .exec(api::ExecRequest {
                        container_id: container.id,
                        cmd,
                        tty,
                        stdin,
                        stdout,
                        stderr,
                    })
                    .await
                    .map_err(call("Exec"))?
                    .into_inner()
                    .url
            } else {
                cri.runtime
                    .attach(api::AttachRequest {
                        container_id: container.id,
                        stdin,
                        tty,
                        stdout,
                        stderr,
                    })
                    .await
                    .map_err(call("Attach"))?
                    .into_inner()
                    .url
            }
        }
        Kind::PortForward => {
            let sandbox = sandbox(&mut cri, req.namespace, req.name).await?;
            let port = req
                .query
                .all("port")
                .into_iter()
                .map(|p| {
                    p.parse::<u16>()
                        .map(i32::from)
                        .map_err(|_| StreamError::BadRequest(format!("invalid port {p:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            cri.runtime
                .port_forward(api::PortForwardRequest {
                    pod_sandbox_id: sandbox.id,
                    port,
                })
                .await
                .map_err(call("PortForward"))?
                .into_inner()
                .url
        }
    };
    let (authority, path) = split_url(&url)
        .ok_or_else(|| StreamError::Backend(format!("unusable stream URL {url:?}")))?;
    let path = match req.raw_query {
        Some(q) if !q.is_empty() && !path.contains('?') => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| StreamError::Backend(format!("stream server {authority}: {e}")))?;
    proxy::forward(tcp, req.method, &path, authority, req.headers, req.upgrade)
        .await
        .map_err(|e| StreamError::Backend(format!("stream server {authority}: {e}")))
}

/// `http://host:port/path` → (`host:port`, `/path`). containerd's stream
/// server is plain HTTP on loopback unless configured otherwise.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    Some((&rest[..slash], &rest[slash..]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_urls() {
        assert_eq!(
            super::split_url("http://127.0.0.1:4321/exec/abcd"),
            Some(("127.0.0.1:4321", "/exec/abcd"))
        );
        assert_eq!(super::split_url("https://x/exec"), None);
        assert_eq!(super::split_url("http://x"), None);
    }
}
