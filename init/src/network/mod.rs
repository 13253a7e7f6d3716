//! Networking for stage 2: loopback and one Ethernet interface, configured
//! statically or by DHCP, with `resolv.conf` to match.
//!
//! # Layout
//! - [`iface`]: which interface (config name, else the first Ethernet NIC).
//! - [`link`]: the rtnetlink requests (link up, address, default route).
//! - [`dhcp`]: the DHCPv4 client state machine, pure and host-tested.
//! - [`lease`]: what an ACK grants, and its T1/T2/expiry times.
//! - `client`: the tokio task running the state machine over UDP port 68.
//! - [`resolv`]: rendering and atomically replacing `resolv.conf`.
//!
//! Static configuration is complete when [`start`] returns. DHCP runs in a
//! background task so boot never waits for a lease: containerd starts
//! anyway and the address appears when a server answers.
//!
//! Static addresses may be IPv4 and IPv6 (with an IPv6 default route);
//! DHCP is IPv4 (IPv6 comes from router advertisements).
//!
//! Current limitations: static IPv6 addresses are applied only with
//! `dhcp = false`; one interface; no link-state tracking
//! (a cable pulled and replugged is noticed only at renewal); routers
//! outside the leased subnet (on-link /32 leases) are not supported.

mod client;
pub mod dhcp;
pub mod iface;
pub mod lease;
pub mod link;
pub mod resolv;

use cairn_image::config::Network;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::info;

const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long a static configuration waits for its interface's driver.
const STATIC_IFACE_WAIT: Duration = Duration::from_secs(5);

/// Why networking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open a netlink socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("netlink {step} on {interface} failed: {source}")]
    Netlink {
        interface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface} does not exist")]
    NoSuchInterface { interface: String },
    #[error("no interface {wanted} after {waited:?}; interfaces present: {seen:?}")]
    NoInterface {
        wanted: String,
        waited: Duration,
        seen: Vec<String>,
    },
    #[error("static network on {interface} needs network.address")]
    NoStaticAddress { interface: String },
    #[error("cannot read the MAC address of {interface}")]
    NoMac { interface: String },
    #[error("DHCP socket on {interface}: {step} failed: {source}")]
    Socket {
        interface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Brings `lo` up, then the configured interface: statically (done when this
/// returns) or by DHCP (a spawned task; this returns at once). Needs a tokio
/// runtime.
pub async fn start(config: &Network, resolv_conf: &Path) -> Result<(), NetworkError> {
    let nl = link::Netlink::connect()?;
    nl.up("lo")?;
    if config.dhcp {
        let settings = client::Settings {
            interface: config.interface.clone(),
            dns: config.dns.clone(),
            resolv_conf: resolv_conf.to_path_buf(),
        };
        tokio::spawn(client::run(nl, settings));
        info!(interface = ?config.interface, "network: DHCP started in the background");
        return Ok(());
    }
    let wanted = config.interface.as_deref();
    let name = iface::wait(Path::new(SYS_CLASS_NET), wanted, STATIC_IFACE_WAIT)
        .await
        .map_err(|seen| NetworkError::NoInterface {
            wanted: wanted.unwrap_or("Ethernet").to_string(),
            waited: STATIC_IFACE_WAIT,
            seen,
        })?;
    configure_static(&nl, &name, config, resolv_conf)
}

fn configure_static(
    nl: &link::Netlink,
    name: &str,
    config: &Network,
    resolv_conf: &Path,
) -> Result<(), NetworkError> {
    let addresses = config.static_addresses();
    if addresses.is_empty() {
        return Err(NetworkError::NoStaticAddress {
            interface: name.to_string(),
        });
    }
    let link = nl.up(name)?;
    for cidr in &addresses {
        nl.set_address(link, cidr.addr, cidr.prefix, None)?;
    }
    if let Some(gateway) = config.gateway {
        nl.set_default_route(link, gateway, false)?;
    }
    if let Some(gateway) = config.gateway6 {
        nl.set_default_route(link, gateway, false)?;
    }
    let dns: &[IpAddr] = &config.dns;
    resolv::write_atomic(resolv_conf, &resolv::render(dns, None)).map_err(|source| {
        NetworkError::ResolvConf {
            path: resolv_conf.to_path_buf(),
            source,
        }
    })?;
    let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    info!(interface = %name, address = %shown.join(","), gateway = ?config.gateway,
        gateway6 = ?config.gateway6, dns = ?config.dns, "network: static address set");
    Ok(())
}
