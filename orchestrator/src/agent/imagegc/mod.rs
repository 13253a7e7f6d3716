//! Image garbage collection, as the kubelet's image GC manager: every
//! [`PERIOD`] the agent lists the images CRI has and the containers using
//! them, and when the filesystem holding containerd's image store is used
//! at or above the high threshold, removes unused images, least recently
//! used first, until usage is back at the low threshold.
//!
//! - The filesystem is the one CRI `ImageFsInfo` names (containerd's
//!   snapshotter directory), measured with `statvfs`; the agent's root
//!   directory when CRI names none.
//! - In use: the image of every container CRI has, running or exited (an
//!   exited container may be restarted). Never removed: images CRI reports
//!   `pinned` and the pod sandbox image, in use or not.
//! - First-detected and last-used times live in memory ([`policy::Records`]);
//!   an image is kept for `--image-minimum-gc-age` (2 min) from when the
//!   agent first saw it, images already there at its start included (the
//!   kubelet counts those as old; here images imported at boot for
//!   air-gapped use stay until the pods wanting them had time to start).
//! - A round that cannot free enough records the Node warning
//!   `FreeDiskSpaceFailed`; a second failing round in a row also
//!   `ImageGCFailed`, as the kubelet does. Each removed image is logged.
//!
//! The decisions are [`policy`]'s, as data; this module does the I/O.
//!
//! # Current limitations
//! - No `--image-maximum-gc-age` (unused images are only removed under
//!   disk pressure).
//! - The records live in memory: after a restart every image waits the
//!   minimum age again and last-used times start over.
//! - Only the image filesystem is watched; container writable layers on
//!   the same filesystem are not counted apart (containerd 1.6 reports no
//!   separate container filesystem).

pub mod policy;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::cri::{Cri, CriError, api, call};
use crate::controllers::client::Client;
pub use policy::Policy;

/// How often images are looked at (the kubelet's `ImageGCPeriod`).
pub const PERIOD: Duration = Duration::from_secs(300);

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The bytes the round had to free (0: usage under the high mark).
    pub to_free: u64,
    /// The bytes the removed images held.
    pub freed: u64,
    /// The ids of the images removed.
    pub removed: Vec<String>,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The runtime did not answer.
    #[error(transparent)]
    Cri(#[from] CriError),
    /// Not enough unused images to get under the low threshold.
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {found} bytes eligible to free."
    )]
    NotEnough {
        /// The bytes to free.
        wanted: u64,
        /// The bytes of the images that could go.
        found: u64,
    },
}

/// The collector of one node.
#[derive(Debug)]
pub struct ImageGc {
    cri: Cri,
    client: Client,
    node: String,
    sandbox_image: String,
    fallback_fs: PathBuf,
    policy: Policy,
    records: policy::Records,
    /// Tags of each image id, as last listed (for the logs).
    tags: HashMap<String, Vec<String>>,
}

impl ImageGc {
    /// A collector for the agent of `config`.
    pub fn new(cri: Cri, client: Client, config: &super::Config) -> ImageGc {
        ImageGc {
            cri,
            client,
            node: config.node_name.clone(),
            sandbox_image: config.sandbox_image.clone(),
            fallback_fs: config.root_dir.clone(),
            policy: config.image_gc,
            records: policy::Records::default(),
            tags: HashMap::new(),
        }
    }

    /// Runs a round every [`PERIOD`], the first at once, forever (idle
    /// when image GC is off: high threshold 100).
    pub async fn run(mut self) {
        if self.policy.disabled() {
            info!("image garbage collection is off (high threshold 100)");
            return std::future::pending().await;
        }
        let mut failed_before = false;
        loop {
            match self.collect().await {
                Ok(_) => failed_before = false,
                Err(error) => {
                    if failed_before {
                        warn!(%error, "image garbage collection failed again");
                        super::node::event(
                            &self.client,
                            &self.node,
                            true,
                            "ImageGCFailed",
                            &error.to_string(),
                        )
                        .await;
                    } else {
                        warn!(%error, "image garbage collection failed");
                    }
                    failed_before = true;
                }
            }
            tokio::time::sleep(PERIOD).await;
        }
    }

    /// One round: records what the runtime has, and when usage is at or
    /// above the high threshold removes images until it is at the low one.
    pub async fn collect(&mut self) -> Result<Outcome, GcError> {
        let now = Instant::now();
        let (images, in_use) = self.observe().await?;
        self.records.detect(&images, &in_use, now);
        let fs = self.image_fs().await;
        let probe = fs.clone();
        let (capacity, available) =
            tokio::task::spawn_blocking(move || super::node::machine::disk(&probe))
                .await
                .unwrap_or((0, 0));
        let Some(to_free) = self.policy.bytes_to_free(capacity, available) else {
            debug!(fs = %fs.display(), capacity, available, "image filesystem under the high threshold");
            return Ok(Outcome::default());
        };
        info!(
            fs = %fs.display(), capacity, available, to_free,
            high = self.policy.high_percent, low = self.policy.low_percent,
            "image filesystem over the high threshold: removing unused images"
        );
        let (chosen, _) = self
            .records
            .choose(to_free, &in_use, now, self.policy.min_age);
        let mut outcome = Outcome {
            to_free,
            ..Outcome::default()
        };
        let mut failure = None;
        for id in chosen {
            let size = self.records.get(&id).map_or(0, |r| r.size);
            match self.remove(&id).await {
                Ok(()) => {
                    let tags = self.tags.get(&id).cloned().unwrap_or_default();
                    info!(image = %id, ?tags, size, "removed an unused image");
                    outcome.freed = outcome.freed.saturating_add(size);
                    outcome.removed.push(id);
                }
                Err(error) => {
                    warn!(image = %id, %error, "an unused image could not be removed");
                    failure.get_or_insert(error);
                }
            }
            if outcome.freed >= to_free {
                break;
            }
        }
        if outcome.freed < to_free {
            let error = GcError::NotEnough {
                wanted: to_free,
                found: outcome.freed,
            };
            super::node::event(
                &self.client,
                &self.node,
                true,
                "FreeDiskSpaceFailed",
                &error.to_string(),
            )
            .await;
            return Err(failure.map_or(error, GcError::Cri));
        }
        Ok(outcome)
    }

    /// The images CRI has (the sandbox image pinned) and the ids in use by
    /// a container.
    async fn observe(&mut self) -> Result<(Vec<policy::Seen>, HashSet<String>), CriError> {
        let images = self
            .cri
            .images
            .list_images(api::ListImagesRequest { filter: None })
            .await
            .map_err(call("ListImages"))?
            .into_inner()
            .images;
        let containers = self
            .cri
            .runtime
            .list_containers(api::ListContainersRequest { filter: None })
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers;
        // Containers name their image by id (`imageRef`) and as created
        // (tag or digest): both count, mapped to the image's id.
        let mut refs: HashSet<String> = HashSet::new();
        for c in containers {
            refs.insert(c.image_ref);
            refs.extend(c.image.map(|spec| spec.image));
        }
        let sandbox_id = self.sandbox_image_id().await?;
        let mut in_use = HashSet::new();
        self.tags = images
            .iter()
            .map(|i| (i.id.clone(), i.repo_tags.clone()))
            .collect();
        let seen = images
            .into_iter()
            .map(|image| {
                let names = || image.repo_tags.iter().chain(&image.repo_digests);
                if refs.contains(&image.id) || names().any(|n| refs.contains(n)) {
                    in_use.insert(image.id.clone());
                }
                let sandbox = sandbox_id.as_deref() == Some(image.id.as_str())
                    || names().any(|n| n == &self.sandbox_image);
                policy::Seen {
                    pinned: image.pinned || sandbox,
                    size: image.size,
                    id: image.id,
                }
            })
            .collect();
        Ok((seen, in_use))
    }

    /// The id of the sandbox image, as CRI resolves its name (an error
    /// stops the round: the sandbox image must never go).
    async fn sandbox_image_id(&mut self) -> Result<Option<String>, CriError> {
        Ok(self
            .cri
            .images
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: self.sandbox_image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(call("ImageStatus"))?
            .into_inner()
            .image
            .map(|image| image.id))
    }

    /// The mount point of containerd's image filesystem.
    async fn image_fs(&mut self) -> PathBuf {
        let info = self
            .cri
            .images
            .image_fs_info(api::ImageFsInfoRequest {})
            .await;
        match info {
            Ok(info) => info
                .into_inner()
                .image_filesystems
                .into_iter()
                .find_map(|fs| fs.fs_id.map(|id| PathBuf::from(id.mountpoint)))
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| self.fallback_fs.clone()),
            Err(status) => {
                debug!(%status, "ImageFsInfo failed; measuring the agent's root directory");
                self.fallback_fs.clone()
            }
        }
    }

    async fn remove(&mut self, id: &str) -> Result<(), CriError> {
        let result = self
            .cri
            .images
            .remove_image(api::RemoveImageRequest {
                image: Some(api::ImageSpec {
                    image: id.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(call("RemoveImage"));
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
