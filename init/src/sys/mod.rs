//! The one wrapper layer between cairn-init and the kernel.
//!
//! Everything that talks to the kernel beyond plain files goes through here:
//! mounts (described as data, see [`mount`]), block-device and ext4 ioctls
//! ([`blk`]), module loading ([`kmod`]), power control ([`power`]) and the
//! boot clock ([`clock`]). This is the only module allowed to contain
//! `unsafe`; each block says why it is sound. Raw return codes become
//! `Result`s at once, with an error variant per step that names the path.

pub mod blk;
pub mod clock;
pub mod kmod;
pub mod mount;
pub mod power;
