//! The controllers' client: HTTP/2 to the [`Api`] in this process over a
//! Unix socket pair, without TLS.
//!
//! Every read and write goes through [`Api::handle`], the same entry point
//! a kubectl request reaches after its TLS handshake, so validation,
//! defaulting, admission of deletes, `managedFields` (the field manager is
//! the controller's name) and watch semantics are exactly what clients
//! get. The identity is passed as the certificate user the controller's
//! client certificate would carry. Objects are `serde_json::Value`s.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::Mutex;

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

/// Result of client calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// A client of the in-process API server acting as `user`.
#[derive(Clone)]
pub struct Client {
    api: Arc<Api>,
    user: Arc<User>,
    manager: &'static str,
    conn: Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user.name)
            .finish()
    }
}

impl Client {
    /// A client acting as `user`, naming itself `manager` in managedFields.
    pub fn new(api: Arc<Api>, user: &str, manager: &'static str) -> Client {
        Client {
            api,
            user: Arc::new(User::internal(user)),
            manager,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// An HTTP/2 connection to the Api, made on first use and after it closed.
    async fn sender(&self) -> ClientResult<SendRequest<Full<Bytes>>> {
        let mut conn = self.conn.lock().await;
        if let Some(sender) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let (ours, theirs) = tokio::net::UnixStream::pair().map_err(ClientError::transport)?;
        let (api, user) = (self.api.clone(), self.user.clone());
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
        *conn = Some(sender.clone());
        Ok(sender)
    }

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
        let uri = match method {
            Method::POST | Method::PUT | Method::PATCH => {
                format!("http://cairn{path}{sep}fieldManager={}", self.manager)
            }
            _ => format!("http://cairn{path}"),
        };
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::ACCEPT, "application/json")
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

/// The error a non-2xx answer carries.
pub fn error_of(status: StatusCode, body: &Value) -> ClientError {
    ClientError {
        code: status.as_u16(),
        reason: body["reason"].as_str().unwrap_or("Unknown").to_owned(),
        message: body["message"].as_str().unwrap_or("").to_owned(),
    }
}
