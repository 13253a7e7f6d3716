//! CRI: the runtime and image services of containerd's CRI plugin, on
//! containerd's own socket (`runtime.v1`, which containerd 1.6 serves).
//!
//! A [`Cri`] is cheap to clone (one HTTP/2 channel underneath); every
//! concern of the agent holds one.

use std::path::Path;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub use k8s_cri::v1 as api;

/// A CRI call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be reached.
    #[error("connecting to the container runtime at {socket}: {message}")]
    Connect { socket: String, message: String },
    /// The runtime answered with an error.
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

impl CriError {
    /// The runtime's own message (what users see in pod status).
    pub fn message(&self) -> String {
        match self {
            CriError::Connect { message, .. } => message.clone(),
            CriError::Call { status, .. } => status.message().to_string(),
        }
    }

    /// The runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// Clients of the runtime and image services.
#[derive(Debug, Clone)]
pub struct Cri {
    /// Sandboxes, containers, exec, attach, port-forward, stats.
    pub runtime: RuntimeServiceClient<Channel>,
    /// Pulls, image status, removal, filesystem usage.
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime on `socket` and checks that it answers
    /// `Version`.
    pub async fn connect(socket: &Path) -> Result<Cri, CriError> {
        let connect_error = |message: String| CriError::Connect {
            socket: socket.display().to_string(),
            message,
        };
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut cri = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        };
        cri.version().await?;
        Ok(cri)
    }

    /// The runtime's name and version (`containerd`, `v1.6.20`).
    pub async fn version(&mut self) -> Result<api::VersionResponse, CriError> {
        self.runtime
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Call {
                call: "Version",
                status,
            })
    }
}

/// Maps a failed call to a [`CriError`] naming it:
/// `cri.runtime.list_containers(req).await.map_err(call("ListContainers"))`.
pub fn call(name: &'static str) -> impl Fn(tonic::Status) -> CriError {
    move |status| CriError::Call { call: name, status }
}
