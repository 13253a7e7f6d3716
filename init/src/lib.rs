//! cairn-init: Cairn's PID 1, as a library so its parts can be tested on the host.
//!
//! # Layout
//! - [`sys`]: the only place with `unsafe`: thin wrappers over syscalls and ioctls.
//! - [`log`]: console logging with kernel-clock timestamps.
//! - [`stage1`]: initramfs: modules, find and mount the slot root and data, switch root.
//! - [`stage2`]: the system: mounts, /etc, config, containerd, readiness, shutdown.
//! - [`network`]: loopback and the first Ethernet interface, by DHCP or static.
//! - [`supervisor`]: supervised services, back-off restarts, reaping, service logs.

pub mod log;
pub mod network;
pub mod prefetch;
pub mod stage1;
pub mod stage2;
pub mod supervisor;
pub mod sys;
