//! The containerd services an import needs, over its gRPC socket: content
//! (write, read, labels), images (the named record), snapshots and diff
//! (unpacking layers) and leases (so nothing written is garbage-collected
//! before the image record and its labels reference it).
//!
//! containerd 1.6 has no Transfer service, so this is what its Go client's
//! `Import` and `Unpack` do, step by step.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    snapshots_client::SnapshotsClient,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, Image, InfoRequest, ReadContentRequest, UpdateImageRequest,
    UpdateRequest, WriteAction, WriteContentRequest, content_client::ContentClient,
    diff_client::DiffClient, images_client::ImagesClient, leases_client::LeasesClient,
};
use containerd_client::types::{Descriptor, Mount};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::ImportError;

/// Bytes sent per content write message.
pub const CHUNK: usize = 1 << 20;

/// A connection to containerd in one namespace, under one lease.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

fn grpc(what: &'static str) -> impl Fn(Status) -> ImportError {
    move |status| ImportError::Containerd {
        what,
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

impl Containerd {
    /// Connects to the socket at `socket` (containerd must answer).
    pub async fn connect(
        socket: &std::path::Path,
        namespace: &str,
    ) -> Result<Containerd, ImportError> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|e| ImportError::Containerd {
                    what: "connecting",
                    message: format!("{}: {e}", socket.display()),
                })?;
        let mut version =
            containerd_client::services::v1::version_client::VersionClient::new(channel.clone());
        version.version(()).await.map_err(grpc("version"))?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_owned(),
            lease: None,
        })
    }

    /// A request carrying the namespace and, when held, the lease.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(ns) = self.namespace.parse() {
            metadata.insert("containerd-namespace", ns);
        }
        if let Some(lease) = self.lease.as_deref().and_then(|l| l.parse().ok()) {
            metadata.insert("containerd-lease", lease);
        }
        request
    }

    /// Takes a lease (expiring in an hour, should this process die) that
    /// keeps everything written until [`Containerd::release`].
    pub async fn lease(&mut self) -> Result<(), ImportError> {
        let id = format!("cairn-import-{}", uuid::Uuid::new_v4());
        let expire = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire.to_string())]);
        let request = self.request(containerd_client::services::v1::CreateRequest {
            id: id.clone(),
            labels,
        });
        LeasesClient::new(self.channel.clone())
            .create(request)
            .await
            .map_err(grpc("creating a lease"))?;
        self.lease = Some(id);
        Ok(())
    }

    /// Drops the lease: from now on only references keep content alive.
    pub async fn release(&mut self) {
        let Some(id) = self.lease.take() else { return };
        let request =
            self.request(containerd_client::services::v1::DeleteRequest { id, sync: false });
        if let Err(status) = LeasesClient::new(self.channel.clone())
            .delete(request)
            .await
        {
            tracing::warn!(
                message = status.message(),
                "import lease not released (it expires in an hour)"
            );
        }
    }

    /// Whether the content store has `digest`.
    pub async fn has(&self, digest: &str) -> Result<bool, ImportError> {
        let request = self.request(InfoRequest {
            digest: digest.to_owned(),
        });
        match ContentClient::new(self.channel.clone()).info(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(grpc("content info")(status)),
        }
    }

    /// Starts writing one blob; feed it chunks, then finish it with
    /// [`BlobWriter::commit`].
    pub async fn writer(&self) -> BlobWriter {
        let (tx, rx) = mpsc::channel(4);
        let reference = format!("cairn-import-{}", uuid::Uuid::new_v4());
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut client = ContentClient::new(self.channel.clone());
        // The server answers every message; the answers are drained here so
        // a long blob never stalls on flow control.
        let task = tokio::spawn(async move {
            let mut answers = client.write(request).await?.into_inner();
            while answers.message().await?.is_some() {}
            Ok(())
        });
        BlobWriter {
            tx,
            task,
            reference,
            offset: 0,
        }
    }

    /// The whole blob `digest` (for manifests and configs: small).
    pub async fn read(&self, digest: &str) -> Result<Vec<u8>, ImportError> {
        let request = self.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        });
        let mut stream = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(grpc("reading content"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(grpc("reading content"))? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// Sets labels on the blob `digest` (garbage-collection references,
    /// uncompressed digests), leaving its other labels alone.
    pub async fn label(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = self.request(UpdateRequest {
            info: Some(containerd_client::services::v1::Info {
                digest: digest.to_owned(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        ContentClient::new(self.channel.clone())
            .update(request)
            .await
            .map_err(grpc("labelling content"))?;
        Ok(())
    }

    /// Creates or repoints the image `name` at `target`.
    pub async fn set_image(&self, name: &str, target: Descriptor) -> Result<(), ImportError> {
        let image = Image {
            name: name.to_owned(),
            target: Some(target),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = self.request(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        });
        match images.create(create).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                let update = self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                });
                images
                    .update(update)
                    .await
                    .map_err(grpc("updating the image"))?;
                Ok(())
            }
            Err(status) => Err(grpc("creating the image")(status)),
        }
    }

    /// Whether `snapshotter` has the committed snapshot `name`.
    pub async fn has_snapshot(&self, snapshotter: &str, name: &str) -> Result<bool, ImportError> {
        let request = self.request(StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: name.to_owned(),
        });
        match SnapshotsClient::new(self.channel.clone())
            .stat(request)
            .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(grpc("snapshot stat")(status)),
        }
    }

    /// Unpacks one layer: a snapshot on `parent` (a chain ID, or empty for
    /// the first layer), the layer applied by the diff service, committed
    /// as `chain_id`.
    pub async fn unpack_layer(
        &self,
        snapshotter: &str,
        layer: &Descriptor,
        parent: &str,
        chain_id: &str,
    ) -> Result<(), ImportError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let key = format!("extract-{} {chain_id}", uuid::Uuid::new_v4());
        let prepare = self.request(PrepareSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.clone(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        });
        let mounts: Vec<Mount> = snapshots
            .prepare(prepare)
            .await
            .map_err(grpc("preparing a snapshot"))?
            .into_inner()
            .mounts;
        let apply = self.request(ApplyRequest {
            diff: Some(layer.clone()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: true,
        });
        let applied = DiffClient::new(self.channel.clone()).apply(apply).await;
        let committed = match applied {
            Ok(_) => {
                let commit = self.request(CommitSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    name: chain_id.to_owned(),
                    key: key.clone(),
                    labels: HashMap::new(),
                });
                match snapshots.commit(commit).await {
                    Ok(_) => return Ok(()),
                    // Unpacked meanwhile by someone else: as good.
                    Err(status) if status.code() == Code::AlreadyExists => Ok(()),
                    Err(status) => Err(grpc("committing a snapshot")(status)),
                }
            }
            Err(status) => Err(grpc("applying a layer")(status)),
        };
        let remove = self.request(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key,
        });
        if let Err(status) = snapshots.remove(remove).await {
            tracing::debug!(
                message = status.message(),
                "extraction snapshot not removed"
            );
        }
        committed
    }
}

/// One blob being written to the content store.
pub struct BlobWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    task: tokio::task::JoinHandle<Result<(), Status>>,
    reference: String,
    offset: i64,
}

impl BlobWriter {
    /// Appends `data`.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), ImportError> {
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let message = WriteContentRequest {
            action: WriteAction::Write.into(),
            r#ref: self.reference.clone(),
            offset: self.offset,
            data,
            ..Default::default()
        };
        self.offset += len;
        if self.tx.send(message).await.is_err() {
            // The stream ended early: its error says why.
            return Err(self
                .finish()
                .await
                .err()
                .unwrap_or(ImportError::Containerd {
                    what: "writing content",
                    message: "the write stream closed".into(),
                }));
        }
        Ok(())
    }

    /// Commits what was written as `digest` (verified by containerd).
    pub async fn commit(mut self, digest: &str) -> Result<(), ImportError> {
        let message = WriteContentRequest {
            action: WriteAction::Commit.into(),
            r#ref: self.reference.clone(),
            total: self.offset,
            offset: self.offset,
            expected: digest.to_owned(),
            ..Default::default()
        };
        let _ = self.tx.send(message).await;
        self.finish().await
    }

    async fn finish(&mut self) -> Result<(), ImportError> {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) if status.code() == Code::AlreadyExists => Ok(()),
            Ok(Err(status)) => Err(grpc("writing content")(status)),
            Err(e) => Err(ImportError::Containerd {
                what: "writing content",
                message: e.to_string(),
            }),
        }
    }
}
