//! The few rtnetlink requests networking needs, written by hand: set a link
//! up, create an 802.1Q VLAN link, add or remove an address (with a
//! lifetime, so the kernel drops a DHCP address on its own if we ever stop
//! renewing it), and set or remove a default route with its metric.
//!
//! Why not the `rtnetlink` crate: it links the parsers for every netlink
//! message and attribute (about 1 MB of a 3 MB budget) to send five
//! fixed-layout requests. Here each request is a header, a fixed struct and
//! two or three attributes, built as bytes and tested as bytes; the kernel's
//! only answer we read is the ACK (an `NLMSG_ERROR` with errno 0 or not).
//! Requests are synchronous: the kernel answers a route request at once.

use super::NetworkError;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VLAN_ID: u16 = 1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
/// Lifetime value meaning "forever" in `ifa_cacheinfo`.
const INFINITY_LIFE_TIME: u32 = u32::MAX;

/// An interface: its name (for errors) and index (for requests).
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub name: &'a str,
    pub index: u32,
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    sock: Socket,
    seq: AtomicU32,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetworkError> {
        let domain = Domain::from(libc::AF_NETLINK);
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::NETLINK_ROUTE)))
            .map_err(NetworkError::NetlinkSocket)?;
        // The kernel answers at once; this only bounds a kernel bug.
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(NetworkError::NetlinkSocket)?;
        Ok(Netlink {
            sock,
            seq: AtomicU32::new(1),
        })
    }

    /// Sets the interface up and returns it with its index.
    pub fn up<'a>(&self, name: &'a str) -> Result<Link<'a>, NetworkError> {
        let index = index(name)?;
        let link = Link { name, index };
        let body = link_up(index);
        self.request(link, "set link up", RTM_NEWLINK, 0, &body)?;
        Ok(link)
    }

    /// Creates the 802.1Q link `name` with VLAN `id` on `parent` (the
    /// `8021q` module must be loaded). One that already exists is fine:
    /// a restarted network setup finds it from the first run.
    pub fn create_vlan(&self, name: &str, parent: Link<'_>, id: u16) -> Result<(), NetworkError> {
        let link = Link { name, index: 0 };
        let body = vlan_link(name, parent.index, id);
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        match self.request(link, "create VLAN link", RTM_NEWLINK, flags, &body) {
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Adds (or refreshes) `addr/prefix`, IPv4 or IPv6. With `valid`, the
    /// kernel removes the address when that time has passed.
    pub fn set_address(
        &self,
        link: Link<'_>,
        addr: impl Into<IpAddr>,
        prefix: u8,
        valid: Option<Duration>,
    ) -> Result<(), NetworkError> {
        let body = address(link.index, addr.into(), prefix, Some(valid));
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(link, "add address", RTM_NEWADDR, flags, &body)
    }

    /// Removes `addr/prefix`; an address already gone (expired) is fine.
    pub fn remove_address(
        &self,
        link: Link<'_>,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let body = address(link.index, addr.into(), prefix, None);
        match self.request(link, "remove address", RTM_DELADDR, 0, &body) {
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Makes `gateway` (IPv4 or IPv6) a default route of its family through
    /// the interface, with `metric` (the kernel uses the lowest one; a
    /// route with the same metric is replaced, see [`super::plan`]).
    pub fn set_default_route(
        &self,
        link: Link<'_>,
        gateway: impl Into<IpAddr>,
        dhcp: bool,
        metric: u32,
    ) -> Result<(), NetworkError> {
        let body = default_route(link.index, gateway.into(), dhcp, metric);
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(link, "add default route", RTM_NEWROUTE, flags, &body)
    }

    /// Removes that default route; one already gone (the kernel flushes it
    /// with the address) is fine.
    pub fn remove_default_route(
        &self,
        link: Link<'_>,
        gateway: Ipv4Addr,
        metric: u32,
    ) -> Result<(), NetworkError> {
        let body = default_route(link.index, gateway.into(), true, metric);
        match self.request(link, "remove default route", RTM_DELROUTE, 0, &body) {
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Sends one request with NLM_F_ACK and waits for its ACK.
    fn request(
        &self,
        link: Link<'_>,
        step: &'static str,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> Result<(), NetworkError> {
        let err = |source| NetworkError::Netlink {
            interface: link.name.to_string(),
            step,
            source,
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let msg = message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body);
        (&self.sock).write_all(&msg).map_err(err)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let len = (&self.sock).read(&mut buf).map_err(err)?;
            if let Some(result) = ack(&buf[..len], seq) {
                return result.map_err(err);
            }
        }
    }
}

/// The interface index, from sysfs.
fn index(name: &str) -> Result<u32, NetworkError> {
    let missing = || NetworkError::NoSuchInterface {
        interface: name.to_string(),
    };
    if name.is_empty() || name.contains('/') {
        return Err(missing());
    }
    let text =
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).map_err(|_| missing())?;
    text.trim().parse().map_err(|_| missing())
}

/// `nlmsghdr` + body.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(body);
    m
}

/// Appends an `rtattr`, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// `ifinfomsg` changing only IFF_UP, to set.
fn link_up(index: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family, pad, type
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    b
}

/// `ifinfomsg` (no index: a new link) + name, parent and
/// linkinfo { kind "vlan", data { id } }, as `ip link add link PARENT name
/// NAME type vlan id ID` sends it.
fn vlan_link(name: &str, parent: u32, id: u16) -> Vec<u8> {
    let mut b = vec![0u8; 16]; // family, pad, type, index, flags, change
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    attr(&mut b, IFLA_IFNAME, &ifname);
    attr(&mut b, IFLA_LINK, &parent.to_ne_bytes());
    let mut data = Vec::new();
    attr(&mut data, IFLA_VLAN_ID, &id.to_ne_bytes());
    let mut info = Vec::new();
    attr(&mut info, IFLA_INFO_KIND, b"vlan");
    attr(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
    attr(&mut b, IFLA_LINKINFO | NLA_F_NESTED, &info);
    b
}

/// `ifaddrmsg` + local, address, broadcast (IPv4), and the lifetime when
/// `valid` is given (`Some(None)` = forever; `None` = no lifetime, for
/// deletes).
fn address(index: u32, addr: IpAddr, prefix: u8, valid: Option<Option<Duration>>) -> Vec<u8> {
    let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut b = vec![family, prefix, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    match addr {
        IpAddr::V4(addr) => {
            attr(&mut b, IFA_LOCAL, &addr.octets());
            attr(&mut b, IFA_ADDRESS, &addr.octets());
            if prefix < 31 {
                let brd = Ipv4Addr::from(u32::from(addr) | (u32::MAX >> prefix));
                attr(&mut b, IFA_BROADCAST, &brd.octets());
            }
        }
        IpAddr::V6(addr) => attr(&mut b, IFA_ADDRESS, &addr.octets()),
    }
    if let Some(valid) = valid {
        let secs = valid.map_or(INFINITY_LIFE_TIME, |v| {
            u32::try_from(v.as_secs()).unwrap_or(INFINITY_LIFE_TIME)
        });
        let mut info = Vec::with_capacity(16);
        for v in [secs, secs, 0, 0] {
            info.extend_from_slice(&v.to_ne_bytes()); // preferred, valid, cstamp, tstamp
        }
        attr(&mut b, IFA_CACHEINFO, &info);
    }
    b
}

/// `rtmsg` for 0.0.0.0/0 (or ::/0) in the main table + gateway, output
/// interface and metric.
fn default_route(index: u32, gateway: IpAddr, dhcp: bool, metric: u32) -> Vec<u8> {
    let proto = if dhcp { RTPROT_DHCP } else { RTPROT_STATIC };
    let (family, gw) = match gateway {
        IpAddr::V4(g) => (AF_INET, g.octets().to_vec()),
        IpAddr::V6(g) => (AF_INET6, g.octets().to_vec()),
    };
    let mut b = vec![
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        proto,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attr(&mut b, RTA_GATEWAY, &gw);
    attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    attr(&mut b, RTA_PRIORITY, &metric.to_ne_bytes());
    b
}

/// Finds the ACK for `seq` in a datagram: `Some(Ok)` for errno 0,
/// `Some(Err)` for a failure, `None` if it is not there.
fn ack(mut data: &[u8], seq: u32) -> Option<io::Result<()>> {
    let u16_at = |d: &[u8], i: usize| d.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |d: &[u8], i: usize| {
        d.get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    while let (Some(len), Some(kind), Some(got)) =
        (u32_at(data, 0), u16_at(data, 4), u32_at(data, 8))
    {
        let len = usize::try_from(len).ok()?;
        if len < 16 || len > data.len() {
            return None;
        }
        if kind == NLMSG_ERROR && got == seq {
            // nlmsgerr.error: 0 for an ACK, else a negative errno.
            let errno = i32::from_ne_bytes(data.get(16..20)?.try_into().ok()?).wrapping_neg();
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(errno))
            });
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn header_and_attributes_are_laid_out_and_padded() {
        let m = message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 7, &link_up(3));
        assert_eq!(m.len(), 32);
        assert_eq!(m[0..4], ne32(32));
        assert_eq!(m[4..6], RTM_NEWLINK.to_ne_bytes());
        assert_eq!(m[6..8], 5u16.to_ne_bytes());
        assert_eq!(m[8..12], ne32(7));
        assert_eq!(m[20..24], ne32(3), "ifi_index");
        assert_eq!(
            m[24..32],
            [ne32(1), ne32(1)].concat(),
            "IFF_UP in flags and change"
        );
        let mut b = Vec::new();
        attr(&mut b, 9, &[1, 2, 3]);
        assert_eq!(b, [[7, 0], 9u16.to_ne_bytes(), [1, 2], [3, 0]].concat());
    }

    #[test]
    fn address_carries_broadcast_and_lifetime() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        let a = IpAddr::V4(a);
        let b = address(2, a, 24, Some(Some(Duration::from_secs(86400))));
        assert_eq!(b[..4], [AF_INET, 24, 0, 0]);
        assert_eq!(b[4..8], ne32(2));
        // local, address, broadcast: 8 bytes each; cacheinfo: 4 + 16.
        assert_eq!(b.len(), 8 + 3 * 8 + 20);
        assert_eq!(b[12..16], [10, 0, 2, 15]);
        assert_eq!(b[28..32], [10, 0, 2, 255], "broadcast");
        assert_eq!(b[34..36], IFA_CACHEINFO.to_ne_bytes());
        assert_eq!(b[36..44], [ne32(86400), ne32(86400)].concat());
        let forever = address(2, a, 32, Some(None));
        assert_eq!(forever.len(), 8 + 2 * 8 + 20, "no broadcast for /32");
        assert_eq!(forever[28..32], ne32(u32::MAX));
        assert_eq!(
            address(2, a, 24, None).len(),
            8 + 3 * 8,
            "deletes carry no lifetime"
        );
    }

    #[test]
    fn default_route_layout() {
        let b = default_route(4, Ipv4Addr::new(10, 0, 2, 2).into(), true, 1025);
        assert_eq!(
            b[..8],
            [AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_DHCP, 0, RTN_UNICAST]
        );
        assert_eq!(b[12..14], 8u16.to_ne_bytes());
        assert_eq!(b[14..16], RTA_GATEWAY.to_ne_bytes());
        assert_eq!(b[16..20], [10, 0, 2, 2]);
        assert_eq!(b[22..24], RTA_OIF.to_ne_bytes());
        assert_eq!(b[24..28], ne32(4));
        assert_eq!(b[30..32], RTA_PRIORITY.to_ne_bytes());
        assert_eq!(b[32..36], ne32(1025), "metric");
        assert_eq!(b.len(), 36);
        assert_eq!(
            default_route(4, Ipv4Addr::new(10, 0, 2, 2).into(), false, 0)[5],
            RTPROT_STATIC
        );
    }

    #[test]
    fn ipv6_address_and_route() {
        let a: IpAddr = "fd00::5".parse().expect("ip");
        let b = address(3, a, 64, Some(None));
        assert_eq!(b[..4], [AF_INET6, 64, 0, 0]);
        // address (4 + 16), cacheinfo (4 + 16); no local, no broadcast.
        assert_eq!(b.len(), 8 + 20 + 20);
        assert_eq!(b[10..12], IFA_ADDRESS.to_ne_bytes());
        assert_eq!(b[12..28], a_octets(a));
        let r = default_route(3, "fd00::1".parse().expect("ip"), false, 0);
        assert_eq!(r[0], AF_INET6);
        assert_eq!(r[12..14], 20u16.to_ne_bytes());
        assert_eq!(r[16..32], a_octets("fd00::1".parse().expect("ip")));
    }

    fn a_octets(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V6(v6) => v6.octets(),
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        }
    }

    #[test]
    fn vlan_link_layout() {
        let b = vlan_link("eth2.42", 7, 42);
        assert_eq!(b[..16], [0; 16], "ifinfomsg: new link, no flags");
        // IFLA_IFNAME "eth2.42\0": 4 + 8.
        assert_eq!(b[16..18], 12u16.to_ne_bytes());
        assert_eq!(b[18..20], IFLA_IFNAME.to_ne_bytes());
        assert_eq!(&b[20..28], b"eth2.42\0");
        // IFLA_LINK: the parent's index.
        assert_eq!(b[28..30], 8u16.to_ne_bytes());
        assert_eq!(b[30..32], IFLA_LINK.to_ne_bytes());
        assert_eq!(b[32..36], ne32(7));
        // IFLA_LINKINFO (nested): kind "vlan" (4 + 4), data (4 + id 4 + 2 + 2 pad).
        assert_eq!(b[36..38], (4u16 + 8 + 12).to_ne_bytes());
        assert_eq!(b[38..40], (IFLA_LINKINFO | NLA_F_NESTED).to_ne_bytes());
        assert_eq!(b[40..42], 8u16.to_ne_bytes());
        assert_eq!(b[42..44], IFLA_INFO_KIND.to_ne_bytes());
        assert_eq!(&b[44..48], b"vlan");
        assert_eq!(b[48..50], 12u16.to_ne_bytes());
        assert_eq!(b[50..52], (IFLA_INFO_DATA | NLA_F_NESTED).to_ne_bytes());
        assert_eq!(b[52..54], 6u16.to_ne_bytes());
        assert_eq!(b[54..56], IFLA_VLAN_ID.to_ne_bytes());
        assert_eq!(b[56..58], 42u16.to_ne_bytes());
        assert_eq!(b[58..60], [0, 0], "padding");
        assert_eq!(b.len(), 60);
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]); // the echoed request header
        message(NLMSG_ERROR, 0, seq, &body)
    }

    #[test]
    fn acks_are_matched_by_sequence() {
        assert!(matches!(ack(&error_msg(5, 0), 5), Some(Ok(()))));
        let e = ack(&error_msg(5, libc::EEXIST), 5)
            .expect("found")
            .expect_err("error");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(ack(&error_msg(4, 0), 5).is_none(), "another request's ACK");
        let two = [error_msg(4, 0), error_msg(5, libc::ENODEV)].concat();
        let e = ack(&two, 5).expect("found").expect_err("error");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert!(ack(&[1, 2, 3], 5).is_none(), "short datagram");
        assert!(
            ack(&message(NLMSG_ERROR, 0, 5, &[]), 5).is_none(),
            "truncated error"
        );
    }
}
