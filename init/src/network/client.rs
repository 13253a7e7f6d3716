//! The DHCP task of one interface: waits for the interface (for a VLAN:
//! for its parent, then creates it), opens the UDP socket on port 68, and
//! runs [`dhcp::Client`] — feeding it packets and timer expiries and
//! carrying out its actions with netlink and the shared [`Resolver`]. Each
//! interface with `dhcp = true` has its own task, state machine and
//! renewal timers. It never gives up: if the socket fails it logs, waits
//! and starts over.

use super::dhcp::{Action, Client, Dest, Identity};
use super::lease::Lease;
use super::link::{Link, Netlink};
use super::plan::Plan;
use super::resolv::Resolver;
use super::{NetworkError, SYS_CLASS_NET};
use dhcproto::v4::{Decodable, Encodable, Message, MessageType};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tracing::{debug, error, info, warn};

/// How long to wait for the interface before saying so (then keep looking).
const IFACE_WAIT: Duration = Duration::from_secs(5);
/// How often to look for it after that.
const SLOW_POLL: Duration = Duration::from_secs(2);
/// Pause before starting over after a socket failure.
const RESTART_PAUSE: Duration = Duration::from_secs(10);

/// What the task needs from the config.
pub struct Settings {
    pub plan: Plan,
    /// Interfaces configured on their own, never picked as the primary.
    pub others: Vec<String>,
    pub resolver: Arc<Resolver>,
}

/// Runs forever.
pub async fn run(nl: Netlink, settings: Settings) {
    let name = match (&settings.plan.vlan, &settings.plan.name) {
        (Some(vlan), Some(name)) => {
            let parent = appear(Some(&vlan.parent), &[]).await;
            while let Err(err) = super::create_vlan(&nl, &parent, vlan.id, name) {
                error!(interface = %name, %err, "dhcp: cannot create the VLAN; trying again");
                tokio::time::sleep(RESTART_PAUSE).await;
            }
            name.clone()
        }
        (_, wanted) => appear(wanted.as_deref(), &settings.others).await,
    };
    loop {
        if let Err(err) = session(&nl, &name, &settings).await {
            error!(interface = %name, %err, "dhcp: client failed; starting over");
        }
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// The interface's name once it exists (`wanted`), or the primary's once
/// one is there (`None`).
async fn appear(wanted: Option<&str>, others: &[String]) -> String {
    let sys = Path::new(SYS_CLASS_NET);
    match super::iface::wait(sys, wanted, others, IFACE_WAIT).await {
        Ok(name) => name,
        Err(seen) => {
            warn!(
                ?wanted,
                ?seen,
                "dhcp: no such Ethernet interface yet; still looking"
            );
            // A NIC may still be hot-plugged (USB); look now and then.
            loop {
                tokio::time::sleep(SLOW_POLL).await;
                if let Some(name) = super::iface::scan(sys, wanted, others).chosen {
                    info!(interface = %name, "dhcp: interface appeared");
                    break name;
                }
            }
        }
    }
}

/// One client lifetime: returns only on a socket or interface error.
async fn session(nl: &Netlink, name: &str, settings: &Settings) -> Result<(), NetworkError> {
    let link = nl.up(name)?;
    let mac =
        super::iface::mac(Path::new(SYS_CLASS_NET), name).ok_or_else(|| NetworkError::NoMac {
            interface: name.to_string(),
        })?;
    let sock = open_socket(name)?;
    let id = Identity {
        mac,
        hostname: read_hostname(),
    };
    let mut client = Client::new(id, seed(&mac), Instant::now());
    let mut held: Option<Lease> = None;
    let mut buf = vec![0u8; 1500];
    info!(interface = %name, "dhcp: client started");
    loop {
        let deadline = client.deadline();
        let actions = tokio::select! {
            got = sock.recv_from(&mut buf) => {
                let (len, from) = got.map_err(sock_err(name, "recv"))?;
                let from = match from { SocketAddr::V4(a) => *a.ip(), SocketAddr::V6(_) => continue };
                match Message::from_bytes(&buf[..len]) {
                    Ok(msg) => client.on_packet(Instant::now(), &msg, from),
                    Err(err) => { debug!(%from, %err, "dhcp: undecodable packet"); continue; }
                }
            }
            () = sleep_until(deadline) => client.on_timeout(Instant::now()),
        };
        for action in actions {
            match action {
                Action::Send { msg, dest } => send(&sock, name, &msg, dest, client.state()).await,
                Action::Bind { lease, previous } => {
                    bind(nl, link, &lease, previous.as_ref(), settings);
                    held = Some(lease);
                }
                Action::Unbind(lease) => {
                    warn!(interface = %name, address = %lease.addr, "dhcp: lease lost");
                    unbind(nl, link, &lease, settings.plan.metric());
                    if let Err(err) =
                        settings
                            .resolver
                            .set_lease(settings.plan.rank, Vec::new(), None)
                    {
                        error!(interface = %name, %err, "dhcp: rewriting resolv.conf failed");
                    }
                    held = None;
                }
            }
        }
        debug!(interface = %name, state = client.state(), bound = held.is_some(), "dhcp: step");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// UDP 0.0.0.0:68 on this interface only, allowed to broadcast. Broadcast
/// replies reach it before the interface has an address, so no packet
/// socket (and no af_packet module) is needed.
fn open_socket(name: &str) -> Result<UdpSocket, NetworkError> {
    let err = |step| sock_err(name, step);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
    s.bind_device(Some(name.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcproto::v4::CLIENT_PORT);
    s.bind(&addr.into()).map_err(err("bind 0.0.0.0:68"))?;
    UdpSocket::from_std(s.into()).map_err(err("register with tokio"))
}

async fn send(sock: &UdpSocket, name: &str, msg: &Message, dest: Dest, state: &str) {
    let to = match dest {
        Dest::Broadcast => Ipv4Addr::BROADCAST,
        Dest::Unicast(server) => server,
    };
    let kind = match msg.opts().msg_type() {
        Some(MessageType::Discover) => "DISCOVER",
        Some(MessageType::Request) => "REQUEST",
        _ => "other",
    };
    info!(interface = %name, kind, %to, xid = msg.xid(), state, "dhcp: sending");
    let bytes = match msg.to_vec() {
        Ok(bytes) => bytes,
        Err(err) => return error!(%err, "dhcp: cannot encode packet"),
    };
    let addr = SocketAddrV4::new(to, dhcproto::v4::SERVER_PORT);
    // A failed send is retried by the state machine's timer.
    if let Err(err) = sock.send_to(&bytes, addr).await {
        warn!(interface = %name, %to, %err, "dhcp: send failed");
    }
}

fn bind(nl: &Netlink, link: Link<'_>, lease: &Lease, previous: Option<&Lease>, s: &Settings) {
    let name = link.name;
    let metric = s.plan.metric();
    if let Some(old) = previous.filter(|old| (old.addr, old.prefix) != (lease.addr, lease.prefix)) {
        unbind(nl, link, old, metric);
    }
    let mut steps = vec![nl.set_address(link, lease.addr, lease.prefix, lease.valid_for())];
    if let Some(router) = lease.router {
        steps.push(nl.set_default_route(link, router, true, metric));
    }
    let leased: Vec<IpAddr> = lease.dns.iter().copied().map(IpAddr::V4).collect();
    let dns = match s
        .resolver
        .set_lease(s.plan.rank, leased, lease.domain.clone())
    {
        Ok(dns) => dns,
        Err(source) => {
            steps.push(Err(NetworkError::ResolvConf {
                path: s.resolver.path().to_path_buf(),
                source,
            }));
            Vec::new()
        }
    };
    for err in steps.into_iter().filter_map(Result::err) {
        error!(interface = %name, %err, "dhcp: applying the lease failed");
    }
    let dns_list: Vec<String> = dns.iter().map(ToString::to_string).collect();
    let lease_secs = lease
        .lease_secs
        .map_or_else(|| "infinite".to_string(), |s| s.to_string());
    let router = lease.router.map(|r| r.to_string());
    if previous.is_none() {
        info!(interface = %name, address = %format_args!("{}/{}", lease.addr, lease.prefix),
            router = ?router, metric, dns = ?dns_list, lease_secs = %lease_secs, "dhcp: lease acquired");
    } else {
        info!(interface = %name, address = %lease.addr, lease_secs = %lease_secs, "dhcp: lease renewed");
    }
}

fn unbind(nl: &Netlink, link: Link<'_>, lease: &Lease, metric: u32) {
    if let Some(router) = lease.router
        && let Err(err) = nl.remove_default_route(link, router, metric)
    {
        warn!(%err, "dhcp: removing the default route failed");
    }
    if let Err(err) = nl.remove_address(link, lease.addr, lease.prefix) {
        warn!(%err, "dhcp: removing the address failed");
    }
}

/// Our hostname for option 12, if /etc/hostname holds a valid one.
fn read_hostname() -> Option<String> {
    let text = std::fs::read_to_string("/etc/hostname").ok()?;
    cairn_image::config::Hostname::try_from(text.trim().to_string())
        .ok()
        .map(|h| h.as_str().to_string())
}

/// Not secret, just different per boot and per machine.
fn seed(mac: &[u8; 6]) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mac = mac.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    nanos ^ mac.rotate_left(17) ^ u64::from(std::process::id()).rotate_left(48)
}

fn sock_err(interface: &str, step: &'static str) -> impl FnOnce(std::io::Error) -> NetworkError {
    let interface = interface.to_string();
    move |source| NetworkError::Socket {
        interface,
        step,
        source,
    }
}
