//! Networking for stage 2: loopback and the primary Ethernet interface,
//! configured statically or by DHCP, with `resolv.conf` to match, and the
//! static `[[network.interfaces]]` beside it.
//!
//! # Layout
//! - [`iface`]: which interface (config name, else the first Ethernet NIC).
//! - [`link`]: the rtnetlink requests (link up, address, default route).
//! - [`dhcp`]: the DHCPv4 client state machine, pure and host-tested.
//! - [`lease`]: what an ACK grants, and its T1/T2/expiry times.
//! - `client`: the tokio task running the state machine over UDP port 68.
//! - [`resolv`]: rendering and atomically replacing `resolv.conf`.
//! - [`wifi`]: `[network.wifi]`: the supervised `wpa_supplicant`.
//!
//! Static configuration is complete when [`start`] returns. DHCP runs in a
//! background task so boot never waits for a lease: containerd starts
//! anyway and the address appears when a server answers.
//!
//! Static addresses may be IPv4 and IPv6 (with an IPv6 default route);
//! DHCP is IPv4 (IPv6 comes from router advertisements).
//!
//! Current limitations: static IPv6 addresses are applied only with
//! `dhcp = false`; DHCP on the primary interface only (a further interface
//! with `dhcp = true` is reported and left down), and a further
//! interface's `dns` is used only when the primary one is static; VLANs
//! are validated, not configured; no link-state tracking
//! (a cable pulled and replugged is noticed only at renewal); routers
//! outside the leased subnet (on-link /32 leases) are not supported.

mod client;
pub mod dhcp;
pub mod iface;
pub mod lease;
pub mod link;
pub mod resolv;
pub mod wifi;

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
    let others: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
    // The further interfaces first: a static primary returns early below.
    for iface in &config.interfaces {
        if iface.dhcp {
            crate::log::console(&format!(
                "cairn: config warning: network.interfaces {}: DHCP runs on the primary interface only; {} left down",
                iface.name, iface.name
            ));
            continue;
        }
        let name = iface::wait(
            Path::new(SYS_CLASS_NET),
            Some(&iface.name),
            &[],
            STATIC_IFACE_WAIT,
        )
        .await
        .map_err(|seen| NetworkError::NoInterface {
            wanted: iface.name.clone(),
            waited: STATIC_IFACE_WAIT,
            seen,
        })?;
        let settings = Static {
            addresses: iface.addresses.clone(),
            gateway: iface.gateway,
            gateway6: iface.gateway6,
        };
        settings.apply(&nl, &name)?;
    }
    if config.dhcp {
        let settings = client::Settings {
            interface: config.interface.clone(),
            others: others.clone(),
            dns: config.dns.clone(),
            resolv_conf: resolv_conf.to_path_buf(),
        };
        tokio::spawn(client::run(nl, settings));
        info!(interface = ?config.interface, "network: DHCP started in the background");
        return Ok(());
    }
    let wanted = config.interface.as_deref();
    let name = iface::wait(Path::new(SYS_CLASS_NET), wanted, &others, STATIC_IFACE_WAIT)
        .await
        .map_err(|seen| NetworkError::NoInterface {
            wanted: wanted.unwrap_or("Ethernet").to_string(),
            waited: STATIC_IFACE_WAIT,
            seen,
        })?;
    let settings = Static {
        addresses: config.static_addresses(),
        gateway: config.gateway,
        gateway6: config.gateway6,
    };
    settings.apply(&nl, &name)?;
    let mut dns: Vec<IpAddr> = config.dns.clone();
    for iface in config.interfaces.iter().filter(|i| !i.dhcp) {
        dns.extend(iface.dns.iter().filter(|d| !config.dns.contains(d)));
    }
    resolv::write_atomic(resolv_conf, &resolv::render(&dns, None)).map_err(|source| {
        NetworkError::ResolvConf {
            path: resolv_conf.to_path_buf(),
            source,
        }
    })?;
    info!(dns = ?dns, "network: resolv.conf written");
    Ok(())
}

/// One interface's static settings.
struct Static {
    addresses: Vec<cairn_image::config::IpCidr>,
    gateway: Option<std::net::Ipv4Addr>,
    gateway6: Option<std::net::Ipv6Addr>,
}

impl Static {
    /// Brings `name` up with these addresses and default routes.
    fn apply(&self, nl: &link::Netlink, name: &str) -> Result<(), NetworkError> {
        if self.addresses.is_empty() {
            return Err(NetworkError::NoStaticAddress {
                interface: name.to_string(),
            });
        }
        let link = nl.up(name)?;
        for cidr in &self.addresses {
            nl.set_address(link, cidr.addr, cidr.prefix, None)?;
        }
        if let Some(gateway) = self.gateway {
            nl.set_default_route(link, gateway, false)?;
        }
        if let Some(gateway) = self.gateway6 {
            nl.set_default_route(link, gateway, false)?;
        }
        let shown: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        info!(interface = %name, address = %shown.join(","), gateway = ?self.gateway,
            gateway6 = ?self.gateway6, "network: static address set");
        Ok(())
    }
}
