//! Networking for stage 2: loopback and one Ethernet interface.
pub mod dhcp;
pub mod lease;
pub mod resolv;
