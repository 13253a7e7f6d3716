//! Networking for stage 2: loopback, the primary Ethernet interface, the
//! further `[[network.interfaces]]` and the `[[network.vlans]]`, each
//! configured statically or by DHCP, with `resolv.conf` to match.
//!
//! # Layout
//! - [`plan`]: the interfaces to configure, in rank order, and why rank
//!   decides default-route metrics and DNS order.
//! - [`iface`]: which interface (config name, else the first Ethernet NIC).
//! - [`link`]: the rtnetlink requests (link up, VLAN link, address, default
//!   route).
//! - [`dhcp`]: the DHCPv4 client state machine, pure and host-tested.
//! - [`lease`]: what an ACK grants, and its T1/T2/expiry times.
//! - `client`: one tokio task per DHCP interface, running the state machine
//!   over UDP port 68 on that interface.
//! - [`resolv`]: merging every interface's servers, rendering and
//!   atomically replacing `resolv.conf`.
//!
//! Static configuration is complete when [`start`] returns. DHCP runs in
//! background tasks, one per interface, so boot never waits for a lease:
//! containerd starts anyway and each address appears when a server
//! answers. Each task renews its own lease; each lease adds its default
//! route with its interface's metric (the primary's wins) and its DNS
//! servers to `resolv.conf` in rank order (see [`plan`]).
//!
//! A VLAN is created over rtnetlink once its parent exists; the parent is
//! set up first, with or without an address of its own, then the VLAN is
//! configured like any interface. The `8021q` module has its own list in
//! the image ([`cairn_image::layout::VLAN_MODULES_LIST`]), loaded here only
//! when the config has VLANs: other boots do not pay for it.
//!
//! Static addresses may be IPv4 and IPv6 (with an IPv6 default route);
//! DHCP is IPv4 (IPv6 comes from router advertisements). A further
//! interface or VLAN that cannot be configured is reported on the console
//! and the rest goes on; only the primary's failure is an error.
//!
//! Current limitations: static IPv6 addresses are applied only with
//! `dhcp = false`; Wi-Fi is validated, not configured; no link-state
//! tracking (a cable pulled and replugged is noticed only at renewal);
//! routers outside the leased subnet (on-link /32 leases) are not
//! supported; a static interface (or VLAN parent) whose driver is not there
//! within 5 s is given up, a DHCP one is waited for.

mod client;
pub mod dhcp;
pub mod iface;
pub mod lease;
pub mod link;
pub mod plan;
pub mod resolv;

use cairn_image::config::Network;
use plan::Plan;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Brings `lo` up, then every configured interface: statically (done when
/// this returns) or by DHCP (a spawned task each; this does not wait for
/// them). Needs a tokio runtime.
pub async fn start(config: &Network, resolv_conf: &Path) -> Result<(), NetworkError> {
    let nl = link::Netlink::connect()?;
    nl.up("lo")?;
    let plans = plan::plans(config);
    let others = plan::named_others(&plans);
    let configured = plans.iter().map(|p| p.dns.clone()).collect();
    let resolver = Arc::new(resolv::Resolver::new(resolv_conf.to_path_buf(), configured));
    let dns = resolver
        .write()
        .map_err(|source| NetworkError::ResolvConf {
            path: resolv_conf.to_path_buf(),
            source,
        })?;
    info!(dns = ?dns, "network: resolv.conf written");
    if plans.iter().any(|p| p.vlan.is_some()) {
        load_vlan_modules().await;
    }
    let mut primary = Ok(());
    for plan in plans {
        let (rank, key) = (plan.rank, plan.key());
        let done = if plan.dhcp {
            link::Netlink::connect().map(|own| {
                info!(interface = ?plan.name, rank, "network: DHCP started in the background");
                let settings = client::Settings {
                    plan,
                    others: others.clone(),
                    resolver: resolver.clone(),
                };
                tokio::spawn(client::run(own, settings));
            })
        } else {
            configure_static(&nl, &plan, &others).await
        };
        match done {
            Err(err) if rank == 0 => primary = Err(err),
            Err(err) => crate::log::console(&format!("cairn: network error: {key}: {err}")),
            Ok(()) => {}
        }
    }
    primary
}

/// Waits (a little) for the interface, or creates the VLAN once its parent
/// is there, then applies the static settings.
async fn configure_static(
    nl: &link::Netlink,
    plan: &Plan,
    others: &[String],
) -> Result<(), NetworkError> {
    let wait = |wanted: Option<String>, others: Vec<String>| async move {
        iface::wait(
            Path::new(SYS_CLASS_NET),
            wanted.as_deref(),
            &others,
            STATIC_IFACE_WAIT,
        )
        .await
        .map_err(|seen| NetworkError::NoInterface {
            wanted: wanted.unwrap_or_else(|| "Ethernet".to_string()),
            waited: STATIC_IFACE_WAIT,
            seen,
        })
    };
    let name = match (&plan.vlan, &plan.name) {
        (Some(vlan), Some(name)) => {
            let parent = wait(Some(vlan.parent.clone()), Vec::new()).await?;
            create_vlan(nl, &parent, vlan.id, name)?;
            name.clone()
        }
        (_, wanted) => wait(wanted.clone(), others.to_vec()).await?,
    };
    let settings = Static {
        addresses: plan.addresses.clone(),
        gateway: plan.gateway,
        gateway6: plan.gateway6,
        metric: plan.metric(),
    };
    settings.apply(nl, &name)
}

/// Loads the image's VLAN module list, if it has one (a host test has not);
/// the loader logs what it did.
async fn load_vlan_modules() {
    let list = Path::new(cairn_image::layout::VLAN_MODULES_LIST);
    if list.exists() {
        let _ = tokio::task::spawn_blocking(|| crate::stage1::modules::load_list(list)).await;
    }
}

/// Brings `parent` up (it may have no address of its own: a trunk port)
/// and creates the VLAN link `name` with `id` on it.
fn create_vlan(nl: &link::Netlink, parent: &str, id: u16, name: &str) -> Result<(), NetworkError> {
    let parent = nl.up(parent)?;
    nl.create_vlan(name, parent, id)?;
    info!(interface = %name, parent = %parent.name, id, "network: VLAN link created");
    Ok(())
}

/// One interface's static settings.
struct Static {
    addresses: Vec<cairn_image::config::IpCidr>,
    gateway: Option<std::net::Ipv4Addr>,
    gateway6: Option<std::net::Ipv6Addr>,
    /// Of the default routes, see [`plan`].
    metric: u32,
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
            nl.set_default_route(link, gateway, false, self.metric)?;
        }
        if let Some(gateway) = self.gateway6 {
            nl.set_default_route(link, gateway, false, self.metric)?;
        }
        let shown: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        info!(interface = %name, address = %shown.join(","), gateway = ?self.gateway,
            gateway6 = ?self.gateway6, metric = self.metric, "network: static address set");
        Ok(())
    }
}
