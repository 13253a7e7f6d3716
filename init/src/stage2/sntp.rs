//! Setting the clock by SNTP (RFC 4330) from `host.ntp`, so that TLS
//! certificates made and checked at boot have a sane time on boards
//! without a real-time clock.
//!
//! One request per server, in order, until one answers: a 48-byte client
//! packet whose transmit timestamp is a random cookie, and an answer that
//! must echo the cookie as its originate timestamp, be in server mode and
//! have a non-zero stratum. The clock is set to the server's transmit time
//! plus half the round trip. No drift discipline: a device that runs for
//! months re-syncs at its next boot (or through a later NTP service).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;

/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// How long one server gets to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Before this (2025-01-01), the clock was never set: no RTC.
pub const CLOCK_FLOOR_UNIX: u64 = 1_735_689_600;

/// Why a server's answer was not used.
#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    #[error("no address for the name")]
    NoAddress,
    #[error("bad answer: {0}")]
    Bad(&'static str),
    #[error("setting the clock: {0}")]
    SetClock(nix::Error),
}

/// Whether the clock looks never set (before [`CLOCK_FLOOR_UNIX`]).
pub fn clock_unset() -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(true, |d| d.as_secs() < CLOCK_FLOOR_UNIX)
}

/// The client request: LI 0, version 4, mode 3, and `cookie` as the
/// transmit timestamp.
pub fn request(cookie: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0b00_100_011;
    p[40..48].copy_from_slice(&cookie.to_be_bytes());
    p
}

/// The server's transmit time (since the Unix epoch) from an answer to
/// the request carrying `cookie`.
pub fn parse_answer(answer: &[u8], cookie: u64) -> Result<Duration, SntpError> {
    if answer.len() < 48 {
        return Err(SntpError::Bad("shorter than 48 bytes"));
    }
    let mode = answer[0] & 0x7;
    if mode != 4 {
        return Err(SntpError::Bad("not a server answer"));
    }
    if answer[1] == 0 {
        return Err(SntpError::Bad("kiss-o'-death (stratum 0)"));
    }
    let be64 = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&answer[i..i + 8]);
        u64::from_be_bytes(b)
    };
    if be64(24) != cookie {
        return Err(SntpError::Bad(
            "originate timestamp does not echo the request",
        ));
    }
    let transmit = be64(40);
    let secs = transmit >> 32;
    let frac = transmit & 0xffff_ffff;
    if secs < NTP_UNIX_OFFSET {
        return Err(SntpError::Bad("transmit time before 1970"));
    }
    let nanos = (frac * 1_000_000_000) >> 32;
    Ok(Duration::new(secs - NTP_UNIX_OFFSET, nanos as u32))
}

/// Asks one server (name or address, port 123); returns the time it says
/// it is now.
pub async fn query(server: &str) -> Result<Duration, SntpError> {
    let addr: SocketAddr = tokio::net::lookup_host((server, 123))
        .await?
        .next()
        .ok_or(SntpError::NoAddress)?;
    query_addr(addr).await
}

/// [`query`] of one socket address.
pub async fn query_addr(addr: SocketAddr) -> Result<Duration, SntpError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| SntpError::NoAddress)?;
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(addr).await?;
    let cookie = cookie();
    let sent = Instant::now();
    socket.send(&request(cookie)).await?;
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| SntpError::Timeout(TIMEOUT))??;
    let server_time = parse_answer(&buf[..n], cookie)?;
    Ok(server_time + sent.elapsed() / 2)
}

/// Not secret: unpredictable enough that a stray packet cannot match.
fn cookie() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ u64::from(std::process::id()).rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15
}

/// Sets the clock from the first server that answers. Returns the server
/// and how far the clock moved (seconds, signed).
pub async fn sync(servers: &[String]) -> Option<(String, i64)> {
    for server in servers {
        match query(server).await {
            Ok(time) => {
                let before = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let spec = nix::sys::time::TimeSpec::from_duration(time);
                match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec) {
                    Ok(()) => {
                        let step = time.as_secs() as i64 - before.as_secs() as i64;
                        return Some((server.clone(), step));
                    }
                    Err(e) => {
                        tracing::warn!(server, error = %SntpError::SetClock(e), "sntp");
                        return None;
                    }
                }
            }
            Err(error) => tracing::debug!(server, %error, "sntp: server did not answer"),
        }
    }
    None
}

/// Tries `rounds` times, `pause` apart (the network may still be coming
/// up), logging the outcome.
pub async fn run(servers: Vec<String>, rounds: u32, pause: Duration) -> bool {
    if servers.is_empty() {
        return false;
    }
    for round in 1..=rounds {
        if let Some((server, step)) = sync(&servers).await {
            tracing::info!(server, step_s = step, "clock set by SNTP");
            return true;
        }
        if round < rounds {
            tokio::time::sleep(pause).await;
        }
    }
    tracing::warn!(servers = ?servers, "clock not set: no SNTP server answered");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cookie: u64, transmit: u64) -> [u8; 48] {
        let mut a = [0u8; 48];
        a[0] = 0b00_100_100; // version 4, server
        a[1] = 2;
        a[24..32].copy_from_slice(&cookie.to_be_bytes());
        a[40..48].copy_from_slice(&transmit.to_be_bytes());
        a
    }

    #[test]
    fn request_layout() {
        let r = request(0x0102_0304_0506_0708);
        assert_eq!(r[0], 0x23);
        assert_eq!(r[40..48], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(r[1..40].iter().all(|&b| b == 0));
    }

    #[test]
    fn answers_are_checked_and_decoded() {
        // 2025-01-01T00:00:00.5Z in NTP time.
        let secs = NTP_UNIX_OFFSET + CLOCK_FLOOR_UNIX;
        let t = (secs << 32) | 0x8000_0000;
        let d = parse_answer(&answer(7, t), 7).expect("valid");
        assert_eq!(d, Duration::new(CLOCK_FLOOR_UNIX, 500_000_000));
        assert!(
            matches!(parse_answer(&answer(8, t), 7), Err(SntpError::Bad(_))),
            "cookie"
        );
        let mut kod = answer(7, t);
        kod[1] = 0;
        assert!(parse_answer(&kod, 7).is_err(), "stratum 0");
        let mut client = answer(7, t);
        client[0] = 0x23;
        assert!(parse_answer(&client, 7).is_err(), "mode 3");
        assert!(parse_answer(&answer(7, t)[..47], 7).is_err(), "short");
        assert!(parse_answer(&answer(7, 5 << 32), 7).is_err(), "before 1970");
    }

    #[tokio::test]
    async fn query_against_a_local_server() {
        // A one-shot SNTP server on the loopback: echoes the cookie.
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = server.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 48];
            let (_, from) = server.recv_from(&mut buf).await.expect("recv");
            let cookie = u64::from_be_bytes(buf[40..48].try_into().expect("8 bytes"));
            let t = (NTP_UNIX_OFFSET + CLOCK_FLOOR_UNIX + 42) << 32;
            server
                .send_to(&answer(cookie, t), from)
                .await
                .expect("send");
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let d = query_addr(addr).await.expect("answer");
        assert_eq!(d.as_secs(), CLOCK_FLOOR_UNIX + 42);
        task.await.expect("server");
        // Nobody there: a timeout, not a hang.
        let quiet = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = quiet.local_addr().expect("addr");
        assert!(matches!(query_addr(addr).await, Err(SntpError::Timeout(_))));
    }
}
