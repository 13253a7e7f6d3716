//! The DHCPv4 client state machine (RFC 2131 §4.4), as a pure struct: it is
//! fed received packets and timer expiries and answers with actions
//! (packets to send, a lease to apply or remove). It does no I/O and reads
//! no clock, so every transition is tested on the host; `client.rs` is the
//! thin loop around it that owns the socket and netlink.
//!
//! Current limitations: no INIT-REBOOT (leases are not kept across boots),
//! no DECLINE after ARP probing, no DHCPRELEASE at shutdown.

use super::lease::Lease;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// First retransmission delay; doubles up to [`MAX_BACKOFF`] (RFC 2131 §4.1).
const FIRST_BACKOFF: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Uniform jitter of ±1 s on every retransmission.
const JITTER_MS: u64 = 1000;
/// REQUESTs sent for one offer before going back to DISCOVER.
const MAX_REQUESTS: u32 = 4;
/// Pause after a NAK before discovering again, so a server that NAKs
/// everything does not make us loop at full speed.
const NAK_PAUSE: Duration = Duration::from_secs(2);
/// Shortest retransmission interval while renewing or rebinding (§4.4.5).
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);

/// Who we are on the wire.
#[derive(Debug, Clone)]
pub struct Identity {
    pub mac: [u8; 6],
    /// Sent as option 12 so the server can register us (optional).
    pub hostname: Option<String>,
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:67.
    Broadcast,
    /// The leasing server, port 67 (renewal).
    Unicast(Ipv4Addr),
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send {
        msg: Message,
        dest: Dest,
    },
    /// Configure this lease (new or extended); remove `previous`' address if
    /// it differs.
    Bind {
        lease: Lease,
        previous: Option<Lease>,
    },
    /// The lease is gone (expired or refused): remove its address and route.
    Unbind(Lease),
}

#[derive(Debug, Clone)]
enum State {
    /// Discover when the deadline comes.
    Init,
    Selecting {
        xid: u32,
        started: Instant,
        attempt: u32,
    },
    Requesting {
        xid: u32,
        started: Instant,
        attempt: u32,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    },
    Bound {
        lease: Lease,
        at: Instant,
    },
    Renewing {
        lease: Lease,
        at: Instant,
        xid: u32,
    },
    Rebinding {
        lease: Lease,
        at: Instant,
        xid: u32,
    },
}

/// One interface's DHCP client.
#[derive(Debug)]
pub struct Client {
    id: Identity,
    state: State,
    deadline: Option<Instant>,
    rng: u64,
}

impl Client {
    /// A client that will DISCOVER on its first timeout (at `now`).
    /// `seed` feeds transaction ids and jitter; it need not be secret.
    pub fn new(id: Identity, seed: u64, now: Instant) -> Client {
        Client {
            id,
            state: State::Init,
            deadline: Some(now),
            rng: seed | 1,
        }
    }

    /// When [`Client::on_timeout`] must be called next; `None` = never
    /// (an infinite lease).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The state's name, for logs.
    pub fn state(&self) -> &'static str {
        match self.state {
            State::Init => "init",
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }

    /// The deadline passed: send, retransmit, or move on.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        match self.state.clone() {
            State::Init => {
                let xid = self.next_u32();
                vec![self.discover(now, xid, now, 0)]
            }
            State::Selecting {
                xid,
                started,
                attempt,
            } => {
                vec![self.discover(now, xid, started, attempt + 1)]
            }
            State::Requesting { attempt, .. } if attempt + 1 >= MAX_REQUESTS => {
                let xid = self.next_u32();
                vec![self.discover(now, xid, now, 0)]
            }
            State::Requesting {
                xid,
                started,
                attempt,
                offered,
                server,
            } => {
                vec![self.request(now, xid, started, attempt + 1, offered, server)]
            }
            State::Bound { lease, at } => self.renew(now, lease, at, false),
            State::Renewing { lease, at, .. } if now >= at + lease.t2 => {
                self.renew(now, lease, at, true)
            }
            State::Renewing { lease, at, .. } => self.renew(now, lease, at, false),
            State::Rebinding { lease, at, .. } => match lease.valid_for() {
                Some(valid) if now >= at + valid => {
                    let xid = self.next_u32();
                    vec![Action::Unbind(lease), self.discover(now, xid, now, 0)]
                }
                _ => self.renew(now, lease, at, true),
            },
        }
    }

    /// A packet arrived from `from` (its IP source). Packets that are not
    /// answers to our current transaction are ignored.
    pub fn on_packet(&mut self, now: Instant, msg: &Message, from: Ipv4Addr) -> Vec<Action> {
        let Some(kind) = self.answer_kind(msg) else {
            return Vec::new();
        };
        match (self.state.clone(), kind) {
            (State::Selecting { xid, started, .. }, MessageType::Offer) => {
                let offered = msg.yiaddr();
                if offered.is_unspecified() {
                    return Vec::new();
                }
                let server = match msg.opts().get(OptionCode::ServerIdentifier) {
                    Some(DhcpOption::ServerIdentifier(s)) => *s,
                    _ => from,
                };
                vec![self.request(now, xid, started, 0, offered, server)]
            }
            (State::Requesting { server, .. }, MessageType::Ack) => {
                match Lease::from_ack(msg, server) {
                    Some(lease) => self.bind(now, lease, None),
                    None => self.restart(now, None),
                }
            }
            (
                State::Renewing { lease: old, .. } | State::Rebinding { lease: old, .. },
                MessageType::Ack,
            ) => match Lease::from_ack(msg, old.server) {
                Some(lease) => self.bind(now, lease, Some(old)),
                None => Vec::new(),
            },
            (State::Requesting { .. }, MessageType::Nak) => self.restart(now, None),
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, MessageType::Nak) => {
                self.restart(now, Some(lease))
            }
            _ => Vec::new(),
        }
    }

    /// The message type of `msg` if it is a server reply to our current
    /// transaction (our xid and hardware address).
    fn answer_kind(&self, msg: &Message) -> Option<MessageType> {
        let xid = match self.state {
            State::Selecting { xid, .. }
            | State::Requesting { xid, .. }
            | State::Renewing { xid, .. }
            | State::Rebinding { xid, .. } => xid,
            State::Init | State::Bound { .. } => return None,
        };
        let ours = msg.opcode() == Opcode::BootReply
            && msg.xid() == xid
            && msg.chaddr().get(..6) == Some(&self.id.mac[..]);
        if ours { msg.opts().msg_type() } else { None }
    }

    fn discover(&mut self, now: Instant, xid: u32, started: Instant, attempt: u32) -> Action {
        let mut msg = self.base(
            MessageType::Discover,
            xid,
            now - started,
            Ipv4Addr::UNSPECIFIED,
        );
        msg.set_flags(Flags::default().set_broadcast());
        self.state = State::Selecting {
            xid,
            started,
            attempt,
        };
        self.deadline = Some(now + self.backoff(attempt));
        Action::Send {
            msg,
            dest: Dest::Broadcast,
        }
    }

    fn request(
        &mut self,
        now: Instant,
        xid: u32,
        started: Instant,
        attempt: u32,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Action {
        let mut msg = self.base(
            MessageType::Request,
            xid,
            now - started,
            Ipv4Addr::UNSPECIFIED,
        );
        msg.set_flags(Flags::default().set_broadcast());
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offered));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        self.state = State::Requesting {
            xid,
            started,
            attempt,
            offered,
            server,
        };
        self.deadline = Some(now + self.backoff(attempt));
        Action::Send {
            msg,
            dest: Dest::Broadcast,
        }
    }

    /// A REQUEST for the lease we hold: unicast to its server while
    /// renewing, broadcast to any server while rebinding (§4.4.5).
    fn renew(&mut self, now: Instant, lease: Lease, at: Instant, rebinding: bool) -> Vec<Action> {
        let xid = self.next_u32();
        let msg = self.base(MessageType::Request, xid, Duration::ZERO, lease.addr);
        let (dest, until) = if rebinding {
            (Dest::Broadcast, lease.valid_for().map(|v| at + v))
        } else {
            (Dest::Unicast(lease.server), Some(at + lease.t2))
        };
        // Retry after half the time left, at least a minute, never past the
        // next phase.
        self.deadline = until.map(|until| {
            let half = until.saturating_duration_since(now) / 2;
            (now + half.max(MIN_RENEW_RETRY)).min(until)
        });
        self.state = if rebinding {
            State::Rebinding { lease, at, xid }
        } else {
            State::Renewing { lease, at, xid }
        };
        vec![Action::Send { msg, dest }]
    }

    fn bind(&mut self, now: Instant, lease: Lease, previous: Option<Lease>) -> Vec<Action> {
        self.deadline = now.checked_add(lease.t1);
        self.state = State::Bound {
            lease: lease.clone(),
            at: now,
        };
        vec![Action::Bind { lease, previous }]
    }

    fn restart(&mut self, now: Instant, held: Option<Lease>) -> Vec<Action> {
        self.state = State::Init;
        self.deadline = Some(now + NAK_PAUSE);
        held.map(Action::Unbind).into_iter().collect()
    }

    /// A BOOTREQUEST with the options every message of ours carries.
    fn base(&self, kind: MessageType, xid: u32, elapsed: Duration, ciaddr: Ipv4Addr) -> Message {
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(xid, ciaddr, zero, zero, zero, &self.id.mac);
        msg.set_secs(u16::try_from(elapsed.as_secs()).unwrap_or(u16::MAX));
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1u8]; // hardware type: Ethernet
        client_id.extend_from_slice(&self.id.mac);
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        opts.insert(DhcpOption::MaxMessageSize(1500));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        if let Some(name) = &self.id.hostname {
            opts.insert(DhcpOption::Hostname(name.clone()));
        }
        msg
    }

    /// 4 s, 8 s, ... 64 s for `attempt` 0, 1, ... with ±1 s of jitter.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = FIRST_BACKOFF
            .saturating_mul(1 << attempt.min(4))
            .min(MAX_BACKOFF);
        let jitter = self.next_u64() % (2 * JITTER_MS + 1);
        base + Duration::from_millis(jitter) - Duration::from_millis(JITTER_MS)
    }

    /// xorshift64*: enough for transaction ids and jitter.
    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

#[cfg(test)]
#[path = "dhcp_tests.rs"]
mod tests;
