//! A DHCP lease as data: what an ACK grants (address, prefix, router, DNS,
//! search domain) and when it must be renewed, rebound or given up.
//!
//! Parsing is separate from the state machine so it can be tested on bare
//! packets, and the timers are plain durations from the moment the ACK
//! arrived (the caller keeps the `Instant`).

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use std::net::Ipv4Addr;
use std::time::Duration;

/// RFC 2131's "infinite" lease time.
const INFINITE: u32 = u32::MAX;

/// What a server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// The server that granted it (renewals are unicast there).
    pub server: Ipv4Addr,
    /// Lease length in seconds; `None` = infinite.
    pub lease_secs: Option<u32>,
    /// Renewal (T1) and rebinding (T2) times, from the ACK or the RFC
    /// defaults of 0.5 and 0.875 of the lease.
    pub t1: Duration,
    pub t2: Duration,
}

impl Lease {
    /// The lease an ACK grants, or `None` when it grants no usable address.
    /// `server` is used when the ACK lacks a server identifier (the
    /// datagram's source, or the one we requested from).
    pub fn from_ack(ack: &Message, server: Ipv4Addr) -> Option<Lease> {
        let addr = ack.yiaddr();
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return None;
        }
        let opts = ack.opts();
        let prefix = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => mask_to_prefix(*mask),
            _ => None,
        }
        .unwrap_or_else(|| classful_prefix(addr));
        let router = match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(list)) => list.iter().copied().find(|r| !r.is_unspecified()),
            _ => None,
        };
        let dns = match opts.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(list)) => list.clone(),
            _ => Vec::new(),
        };
        let domain = match opts.get(OptionCode::DomainName) {
            Some(DhcpOption::DomainName(d)) => Some(d.trim_end_matches(['\0', '.']).to_string())
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_graphic())),
            _ => None,
        };
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => server,
        };
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(INFINITE)) | None => None,
            Some(DhcpOption::AddressLeaseTime(secs)) => Some(*secs),
            Some(_) => None,
        };
        let t1_opt = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(s)) => Some(*s),
            _ => None,
        };
        let t2_opt = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(s)) => Some(*s),
            _ => None,
        };
        let (t1, t2) = timers(lease_secs, t1_opt, t2_opt);
        Some(Lease {
            addr,
            prefix,
            router,
            dns,
            domain,
            server,
            lease_secs,
            t1,
            t2,
        })
    }

    /// How long the lease lasts from the ACK; `None` = forever.
    pub fn valid_for(&self) -> Option<Duration> {
        self.lease_secs.map(|s| Duration::from_secs(u64::from(s)))
    }
}

/// T1 and T2 for a lease: the server's values when they are sane
/// (0 < T1 <= T2 <= lease), else 0.5 and 0.875 of the lease.
/// An infinite lease never renews (both are `Duration::MAX`).
fn timers(lease: Option<u32>, t1: Option<u32>, t2: Option<u32>) -> (Duration, Duration) {
    let Some(lease) = lease else {
        return (Duration::MAX, Duration::MAX);
    };
    let lease_ms = u64::from(lease) * 1000;
    let t2 = t2
        .map(|s| u64::from(s) * 1000)
        .filter(|t| *t > 0 && *t <= lease_ms)
        .unwrap_or(lease_ms * 7 / 8);
    let t1 = t1
        .map(|s| u64::from(s) * 1000)
        .filter(|t| *t > 0 && *t <= t2)
        .unwrap_or((lease_ms / 2).min(t2));
    (Duration::from_millis(t1), Duration::from_millis(t2))
}

/// The prefix length of a contiguous subnet mask (255.255.255.0 -> 24).
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    // Contiguous: everything after the leading ones is zero.
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The old class A/B/C prefix, for servers that send no subnet mask.
fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::MessageType;

    fn ack(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn parses_a_slirp_like_ack() {
        let m = ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::DomainName("example.lan".into()),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::AddressLeaseTime(86400),
        ]);
        let l = Lease::from_ack(&m, Ipv4Addr::UNSPECIFIED).expect("lease");
        assert_eq!(l.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(l.domain.as_deref(), Some("example.lan"));
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(l.lease_secs, Some(86400));
        assert_eq!(l.t1, Duration::from_secs(43200));
        assert_eq!(l.t2, Duration::from_secs(75600));
    }

    #[test]
    fn server_timers_win_when_sane() {
        assert_eq!(
            timers(Some(100), Some(30), Some(60)),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        // T1 > T2 or T2 > lease are ignored.
        assert_eq!(
            timers(Some(100), Some(90), Some(200)),
            (Duration::from_secs(50), Duration::from_millis(87500))
        );
        assert_eq!(
            timers(None, Some(1), Some(2)),
            (Duration::MAX, Duration::MAX)
        );
    }

    #[test]
    fn infinite_lease_and_missing_mask() {
        let m = ack(vec![DhcpOption::AddressLeaseTime(u32::MAX)]);
        let l = Lease::from_ack(&m, Ipv4Addr::new(10, 0, 2, 2)).expect("lease");
        assert_eq!(l.lease_secs, None);
        assert_eq!(l.valid_for(), None);
        assert_eq!(l.prefix, 8, "classful default for 10/8");
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 2, 2), "fallback server");
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn no_address_no_lease() {
        let mut m = ack(vec![]);
        m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert_eq!(Lease::from_ack(&m, Ipv4Addr::UNSPECIFIED), None);
    }
}
