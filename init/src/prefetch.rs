//! Reading the programs the boot waits on into the page cache ahead of
//! their start.
//!
//! containerd's start is mostly the kernel decompressing its ~48 MB from
//! the squashfs root as the program faults its pages in, one block at a
//! time, on the CPU that runs it. Reading the file ahead, on a thread of
//! its own, does that work on the other CPU and earlier: stage 1 starts it
//! the moment the root is mounted (while the data filesystem's modules
//! still load), and stage 2 starts it again at once. The exec into stage 2
//! ends stage 1's thread; what it read stays cached, so stage 2's pass goes
//! through that part at memory speed and carries on from there.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The programs to read ahead, relative to the root: containerd first (the
/// readiness path), then the cluster binary that starts next to it.
pub const PROGRAMS: [&str; 2] = ["usr/bin/containerd", "usr/bin/cairn"];

/// Reads [`PROGRAMS`] under `root` on a background thread. Best effort:
/// a missing file or a failed thread only costs the head start.
pub fn start(root: &Path) {
    let files: Vec<PathBuf> = PROGRAMS.iter().map(|p| root.join(p)).collect();
    let spawned = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            for file in files {
                read_through(&file);
            }
        });
    if let Err(error) = spawned {
        tracing::debug!(%error, "no prefetch thread");
    }
}

/// Reads `file` to its end, discarding the bytes.
fn read_through(file: &Path) {
    let started = Instant::now();
    match std::fs::File::open(file) {
        Ok(mut f) => {
            let bytes = std::io::copy(&mut f, &mut std::io::sink()).unwrap_or(0);
            tracing::info!(
                file = %file.display(),
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "read ahead"
            );
        }
        Err(error) => tracing::debug!(file = %file.display(), %error, "not read ahead"),
    }
}
