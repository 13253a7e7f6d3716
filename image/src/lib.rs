//! Cairn's shared model and host tool library.
//!
//! Everything that more than one Cairn binary needs to agree on lives here, so
//! nothing is parsed twice: the A/B slot model and its `grubenv` encoding,
//! the disk layout (partition names, ESP paths), the `config.toml` schema,
//! and target architectures. `cairn-init` and `cairn` depend on this crate
//! with `default-features = false`; the host-only parts (image assembly,
//! component download) sit behind the `host` feature.
//!
//! # Layout
//! - [`arch`]: the two target architectures and their per-arch names.
//! - [`slot`]: slots `a`/`b` and the boot-control state machine (RAUC scheme).
//! - [`grubenv`]: the 1024-byte GRUB environment block, read and written.
//! - [`layout`]: partition names, sizes and the files on the ESP.
//! - [`config`]: the versioned `config.toml` schema and its validation.

pub mod arch;
pub mod config;
pub mod grubenv;
pub mod layout;
pub mod slot;

// Host-only: building and inspecting images.
#[cfg(feature = "host")]
pub mod build;
#[cfg(feature = "host")]
pub mod components;
#[cfg(feature = "host")]
pub mod disk;
#[cfg(feature = "host")]
pub mod elf;
#[cfg(feature = "host")]
pub mod grub;
#[cfg(feature = "host")]
pub mod initramfs;
#[cfg(feature = "host")]
pub mod inspect;
#[cfg(feature = "host")]
pub mod iptables;
#[cfg(feature = "host")]
pub mod modules;
#[cfg(feature = "host")]
pub mod oci;
#[cfg(feature = "host")]
pub mod rootfs;
#[cfg(feature = "host")]
pub mod shell;
#[cfg(feature = "host")]
pub mod wifi;

pub use arch::Arch;
pub use slot::Slot;
