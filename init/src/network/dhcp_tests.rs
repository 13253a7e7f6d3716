//! Tests of the DHCP state machine: every transition, fed packets built
//! the way a server (QEMU's slirp, dnsmasq) builds them.

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn client(now: Instant) -> Client {
    let id = Identity {
        mac: MAC,
        hostname: Some("edge-1".into()),
    };
    Client::new(id, 42, now)
}

fn sent(actions: &[Action]) -> (&Message, Dest) {
    match actions {
        [Action::Send { msg, dest }] => (msg, *dest),
        other => panic!("expected one packet, got {other:?}"),
    }
}

fn reply(to: &Message, kind: MessageType, lease_secs: Option<u32>) -> Message {
    let mut m = Message::new_with_id(
        to.xid(),
        Ipv4Addr::UNSPECIFIED,
        OFFERED,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
        10, 0, 2, 3,
    )]));
    if let Some(secs) = lease_secs {
        o.insert(DhcpOption::AddressLeaseTime(secs));
    }
    m
}

/// Runs DISCOVER -> OFFER -> REQUEST -> ACK; returns the client (bound at
/// `t0`) and the lease.
fn bound(t0: Instant, lease_secs: u32) -> (Client, Lease) {
    let mut c = client(t0);
    let discover = sent(&c.on_timeout(t0)).0.clone();
    let request = sent(&c.on_packet(t0, &reply(&discover, MessageType::Offer, None), SERVER))
        .0
        .clone();
    let actions = c.on_packet(
        t0,
        &reply(&request, MessageType::Ack, Some(lease_secs)),
        SERVER,
    );
    match actions.as_slice() {
        [
            Action::Bind {
                lease,
                previous: None,
            },
        ] => (c, lease.clone()),
        other => panic!("expected bind, got {other:?}"),
    }
}

#[test]
fn discover_is_broadcast_with_our_identity() {
    let t0 = Instant::now();
    let mut c = client(t0);
    assert_eq!(c.deadline(), Some(t0), "discovers at once");
    let actions = c.on_timeout(t0);
    let (msg, dest) = sent(&actions);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(msg.opcode(), Opcode::BootRequest);
    assert!(
        msg.flags().broadcast(),
        "servers must broadcast replies: we have no address yet"
    );
    assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
    assert_eq!(&msg.chaddr()[..6], &MAC);
    assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
    let mut cid = vec![1];
    cid.extend_from_slice(&MAC);
    assert_eq!(
        msg.opts().get(OptionCode::ClientIdentifier),
        Some(&DhcpOption::ClientIdentifier(cid))
    );
    assert_eq!(
        msg.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("edge-1".into()))
    );
    match msg.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(list)) => {
            for code in [
                OptionCode::SubnetMask,
                OptionCode::Router,
                OptionCode::DomainNameServer,
            ] {
                assert!(list.contains(&code), "{code:?} requested");
            }
        }
        other => panic!("no parameter request list: {other:?}"),
    }
    // Encodes into a valid packet and back.
    let bytes = dhcproto::v4::Encodable::to_vec(msg).expect("encode");
    let back: Message = dhcproto::v4::Decodable::from_bytes(&bytes).expect("decode");
    assert_eq!(&back, msg);
    assert_eq!(c.state(), "selecting");
}

#[test]
fn discover_backs_off_exponentially_with_jitter_and_keeps_going() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let mut now = t0;
    let first = sent(&c.on_timeout(now)).0.xid();
    for expected in [4u64, 8, 16, 32, 64, 64, 64] {
        let wait = c.deadline().expect("deadline") - now;
        let ms = wait.as_millis() as u64;
        assert!(
            ms >= expected * 1000 - 1000 && ms <= expected * 1000 + 1000,
            "{ms} ms vs {expected} s"
        );
        now += wait;
        let actions = c.on_timeout(now);
        let (msg, _) = sent(&actions);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(msg.xid(), first, "same transaction while selecting");
    }
    assert!(
        sent(&c.on_timeout(now)).0.secs() > 200,
        "secs counts from the first DISCOVER"
    );
}

#[test]
fn offer_leads_to_broadcast_request_for_that_address() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let discover = sent(&c.on_timeout(t0)).0.clone();
    let actions = c.on_packet(t0, &reply(&discover, MessageType::Offer, None), SERVER);
    let (req, dest) = sent(&actions);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
    assert_eq!(req.xid(), discover.xid());
    assert!(req.flags().broadcast());
    assert_eq!(req.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        req.opts().get(OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(OFFERED))
    );
    assert_eq!(
        req.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(c.state(), "requesting");
}

#[test]
fn foreign_packets_are_ignored() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let discover = sent(&c.on_timeout(t0)).0.clone();
    let mut other_xid = reply(&discover, MessageType::Offer, None);
    other_xid.set_xid(discover.xid().wrapping_add(1));
    assert!(c.on_packet(t0, &other_xid, SERVER).is_empty());
    let mut other_mac = reply(&discover, MessageType::Offer, None);
    other_mac.set_chaddr(&[1, 2, 3, 4, 5, 6]);
    assert!(c.on_packet(t0, &other_mac, SERVER).is_empty());
    let mut request = discover.clone();
    request
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Offer));
    assert!(
        c.on_packet(t0, &request, SERVER).is_empty(),
        "BOOTREQUESTs are not answers"
    );
    // An ACK while selecting is not ours to take.
    assert!(
        c.on_packet(t0, &reply(&discover, MessageType::Ack, Some(60)), SERVER)
            .is_empty()
    );
    assert_eq!(c.state(), "selecting");
}

#[test]
fn ack_binds_with_default_timers() {
    let t0 = Instant::now();
    let (c, lease) = bound(t0, 86400);
    assert_eq!(lease.addr, OFFERED);
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router, Some(SERVER));
    assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!(lease.t1, Duration::from_secs(43200));
    assert_eq!(lease.t2, Duration::from_secs(75600));
    assert_eq!(c.state(), "bound");
    assert_eq!(
        c.deadline(),
        Some(t0 + Duration::from_secs(43200)),
        "renews at T1"
    );
}

#[test]
fn requests_give_up_and_rediscover() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let discover = sent(&c.on_timeout(t0)).0.clone();
    c.on_packet(t0, &reply(&discover, MessageType::Offer, None), SERVER);
    for _ in 1..MAX_REQUESTS {
        let now = c.deadline().expect("deadline");
        let actions = c.on_timeout(now);
        assert_eq!(
            sent(&actions).0.opts().msg_type(),
            Some(MessageType::Request)
        );
    }
    let now = c.deadline().expect("deadline");
    let actions = c.on_timeout(now);
    assert_eq!(
        sent(&actions).0.opts().msg_type(),
        Some(MessageType::Discover)
    );
}

#[test]
fn nak_while_requesting_restarts() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let discover = sent(&c.on_timeout(t0)).0.clone();
    let request = sent(&c.on_packet(t0, &reply(&discover, MessageType::Offer, None), SERVER))
        .0
        .clone();
    assert!(
        c.on_packet(t0, &reply(&request, MessageType::Nak, None), SERVER)
            .is_empty()
    );
    assert_eq!(c.state(), "init");
    assert_eq!(c.deadline(), Some(t0 + NAK_PAUSE));
    let again = sent(&c.on_timeout(t0 + NAK_PAUSE)).0.clone();
    assert_eq!(again.opts().msg_type(), Some(MessageType::Discover));
    assert_ne!(again.xid(), discover.xid(), "a new transaction");
}

#[test]
fn renews_by_unicast_at_t1_then_rebinds_at_t2() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(t0, 1000);
    let t1 = t0 + Duration::from_secs(500);
    let t2 = t0 + Duration::from_secs(875);
    let actions = c.on_timeout(t1);
    let (renew, dest) = sent(&actions);
    assert_eq!(dest, Dest::Unicast(SERVER));
    assert_eq!(renew.ciaddr(), lease.addr);
    assert!(!renew.flags().broadcast());
    assert!(
        renew.opts().get(OptionCode::RequestedIpAddress).is_none(),
        "§4.3.2: not while renewing"
    );
    assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
    assert_eq!(c.state(), "renewing");
    // Half of the 375 s left to T2.
    assert_eq!(c.deadline(), Some(t1 + Duration::from_millis(187_500)));
    // Retries stop at T2, where rebinding broadcasts.
    let mut now = c.deadline().expect("deadline");
    while now < t2 {
        c.on_timeout(now);
        now = c.deadline().expect("deadline");
    }
    assert_eq!(now, t2);
    let actions = c.on_timeout(t2);
    let (rebind, dest) = sent(&actions);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(rebind.ciaddr(), lease.addr);
    assert_eq!(c.state(), "rebinding");
    // Half of the 125 s left to expiry, then (at 62.5 s left) a minute.
    assert_eq!(c.deadline(), Some(t2 + Duration::from_millis(62_500)));
    let now = t2 + Duration::from_millis(62_500);
    c.on_timeout(now);
    assert_eq!(
        c.deadline(),
        Some(now + MIN_RENEW_RETRY),
        "at least a minute between retries"
    );
}

#[test]
fn ack_while_renewing_extends_the_lease() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(t0, 1000);
    let t1 = t0 + Duration::from_secs(500);
    let renew = sent(&c.on_timeout(t1)).0.clone();
    let actions = c.on_packet(t1, &reply(&renew, MessageType::Ack, Some(1000)), SERVER);
    assert_eq!(
        actions,
        vec![Action::Bind {
            lease: lease.clone(),
            previous: Some(lease)
        }]
    );
    assert_eq!(c.state(), "bound");
    assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(500)));
}

#[test]
fn nak_while_renewing_drops_the_address_and_restarts() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(t0, 1000);
    let t1 = t0 + Duration::from_secs(500);
    let renew = sent(&c.on_timeout(t1)).0.clone();
    let actions = c.on_packet(t1, &reply(&renew, MessageType::Nak, None), SERVER);
    assert_eq!(actions, vec![Action::Unbind(lease)]);
    assert_eq!(c.state(), "init");
}

#[test]
fn expiry_drops_the_address_and_rediscovers() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(t0, 100);
    let mut now = t0;
    let expiry = t0 + Duration::from_secs(100);
    let mut seen_unbind = false;
    for _ in 0..10 {
        now = c.deadline().expect("deadline");
        assert!(now <= expiry);
        let actions = c.on_timeout(now);
        if let [
            Action::Unbind(l),
            Action::Send {
                msg,
                dest: Dest::Broadcast,
            },
        ] = actions.as_slice()
        {
            assert_eq!(l, &lease);
            assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
            seen_unbind = true;
            break;
        }
    }
    assert!(seen_unbind, "lease expired");
    assert_eq!(now, expiry);
    assert_eq!(c.state(), "selecting");
}

#[test]
fn infinite_lease_never_renews() {
    let t0 = Instant::now();
    let (c, lease) = bound(t0, u32::MAX);
    assert_eq!(lease.lease_secs, None);
    assert_eq!(c.deadline(), None);
}
