//! Value types of the schema that check themselves while deserializing, so
//! a bad value is reported at its own line and column with what was
//! expected (Bottlerocket's `SingleLineString` habit). Each parses from a
//! string; the error text names the value and the accepted form.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

/// Implements `TryFrom<String>` through `FromStr`, for `#[serde(try_from)]`.
macro_rules! try_from_string {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    )*};
}

try_from_string!(
    Ipv4Cidr,
    IpCidr,
    Hostname,
    HttpUrl,
    Pem,
    PublicKey,
    TimeOfDayWindow,
    Timezone,
    NameOrAddress,
    HumanDuration,
    KernelName,
    SysctlKey,
    Taint,
    LabelKey,
    LabelValue,
    Secret
);

/// A secret (token, key, password, PSK). Its `Debug` and `Display` never
/// show the value, so a whole `Config` can be logged safely; read it with
/// [`Secret::expose`] where it is needed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret value itself: for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err("empty secret: expected a value, or leave the key out".into())
        } else {
            Ok(Secret(s.to_string()))
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A hostname: dot-separated labels of letters, digits and '-', each 1-63
/// characters, not starting or ending with '-', 253 characters at most.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Hostname {
    fn default() -> Self {
        Hostname("cairn".to_string())
    }
}

fn dns_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl FromStr for Hostname {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.len() <= 253 && name.split('.').all(dns_label_ok) {
            Ok(Hostname(name.to_string()))
        } else {
            Err(format!(
                "invalid hostname {name:?}: expected letters, digits and '-' in dot-separated labels of 1-63 characters"
            ))
        }
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name or an IP address (NTP servers, TLS subject names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NameOrAddress(String);

impl NameOrAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NameOrAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.parse::<IpAddr>().is_ok() || s.parse::<Hostname>().is_ok() {
            Ok(NameOrAddress(s.to_string()))
        } else {
            Err(format!(
                "invalid name {s:?}: expected a host name (pool.ntp.org) or an IP address"
            ))
        }
    }
}

impl fmt::Display for NameOrAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 address with its prefix length (`192.168.1.50/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpCidr>() {
            Ok(IpCidr {
                addr: IpAddr::V4(addr),
                prefix,
            }) => Ok(Ipv4Cidr { addr, prefix }),
            _ => Err(format!(
                "invalid address {s:?}: expected IPv4 address/prefix, e.g. 192.168.1.50/24"
            )),
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4 or IPv6 address with its prefix length (`fd00::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid address {s:?}: expected address/prefix, e.g. 192.168.1.50/24 or fd00::50/64"
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(bad)?;
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<Ipv4Cidr> for IpCidr {
    fn from(c: Ipv4Cidr) -> IpCidr {
        IpCidr {
            addr: IpAddr::V4(c.addr),
            prefix: c.prefix,
        }
    }
}

/// An `http://` or `https://` URL with a host (no spaces). Checked for
/// shape only: whether it answers is the network's business.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
    /// The URL with any `user:password@` replaced, for logs.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
            None => self.0.clone(),
        }
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        let host_ok = rest.is_some_and(|r| {
            let authority = r.split('/').next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            !host.is_empty() && !host.starts_with(':')
        });
        if host_ok && !s.contains(char::is_whitespace) {
            Ok(HttpUrl(s.to_string()))
        } else {
            // Never echo the value: a URL can carry a password.
            Err("invalid URL: expected http://host[:port][/path] or https://...".into())
        }
    }
}

// A URL may carry credentials (a proxy's user:password): redact in Debug.
impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// One PEM block (`-----BEGIN <label>-----`, base64, `-----END <label>-----`),
/// kept as text. The label is checked by the field that holds it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pem {
    text: String,
    label: String,
}

impl Pem {
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// `CERTIFICATE`, `PRIVATE KEY`, ...
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl FromStr for Pem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use base64::Engine;
        let bad = |why: &str| {
            format!("invalid PEM ({why}): expected -----BEGIN ...----- base64 -----END ...-----")
        };
        let mut lines = s.trim().lines().map(str::trim);
        let first = lines.next().unwrap_or("");
        let label = first
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or_else(|| bad("no BEGIN line"))?;
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if line == format!("-----END {label}-----") {
                ended = true;
                break;
            }
            body.push_str(line);
        }
        if !ended {
            return Err(bad("no matching END line"));
        }
        if lines.next().is_some() {
            return Err(bad("text after the END line; one block only"));
        }
        match base64::engine::general_purpose::STANDARD.decode(&body) {
            Ok(der) if !der.is_empty() => Ok(Pem {
                text: format!("{}\n", s.trim()),
                label: label.to_string(),
            }),
            _ => Err(bad("the body is not base64")),
        }
    }
}

// Private keys are PEM too: never show the body.
impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pem({} <{} bytes>)", self.label, self.text.len())
    }
}

/// An Ed25519 public key: 32 bytes, written in base64 (44 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicKey(pub [u8; 32]);

impl FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(PublicKey)
            .ok_or_else(|| {
                format!("invalid public key {s:?}: expected 32 bytes of Ed25519 key in base64 (44 characters)")
            })
    }
}

/// A duration written as a number and a unit, combinable: `90s`, `15m`,
/// `6h`, `1d`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number and a unit (s, m, h, d), e.g. 30s, 15m, 6h, 1h30m"
            )
        };
        let mut total = 0u64;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            digits.clear();
        }
        if !digits.is_empty() || s.is_empty() {
            return Err(bad());
        }
        Ok(HumanDuration(Duration::from_secs(total)))
    }
}

/// A daily window in UTC, `HH:MM-HH:MM`; it may wrap past midnight
/// (`22:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TimeOfDayWindow {
    /// Minutes after midnight UTC.
    pub start: u16,
    pub end: u16,
}

impl TimeOfDayWindow {
    /// Whether `minute` (after midnight UTC) is inside the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl FromStr for TimeOfDayWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid window {s:?}: expected HH:MM-HH:MM in UTC, e.g. 02:00-04:00");
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("invalid window {s:?}: start and end are the same"));
        }
        Ok(TimeOfDayWindow { start, end })
    }
}

/// An IANA time zone name (`UTC`, `Europe/Berlin`, `America/Argentina/Salta`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Timezone(String);

impl Timezone {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Timezone {
    fn default() -> Self {
        Timezone("UTC".into())
    }
}

impl FromStr for Timezone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-+".contains(&b))
        };
        if s.len() <= 64 && s.split('/').all(part_ok) {
            Ok(Timezone(s.to_string()))
        } else {
            Err(format!(
                "invalid time zone {s:?}: expected an IANA name such as UTC or Europe/Berlin"
            ))
        }
    }
}

/// A kernel object name: a module (`wireguard`, `br_netfilter`) or an
/// interface (`eth0`, at most 15 characters).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct KernelName(String);

impl KernelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KernelName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty()
            && s.len() <= 56
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            && !s.starts_with('.')
        {
            Ok(KernelName(s.to_string()))
        } else {
            Err(format!(
                "invalid name {s:?}: expected letters, digits, '_', '-' and '.'"
            ))
        }
    }
}

impl fmt::Display for KernelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sysctl name in dotted form (`net.ipv4.ip_forward`), which is its path
/// under `/proc/sys` with dots for slashes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SysctlKey(String);

impl SysctlKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `net/ipv4/ip_forward`, relative to `/proc/sys`.
    pub fn proc_path(&self) -> String {
        self.0.replace('.', "/")
    }
}

impl FromStr for SysctlKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        };
        if s.split('.').count() >= 2 && s.split('.').all(part_ok) {
            Ok(SysctlKey(s.to_string()))
        } else {
            Err(format!(
                "invalid sysctl {s:?}: expected a dotted name such as net.ipv4.ip_forward"
            ))
        }
    }
}

/// A sysctl value: TOML string, integer or boolean (written as 1/0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a string, an integer or a boolean")]
        enum Raw {
            S(String),
            I(i64),
            B(bool),
        }
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::B(b) => u8::from(b).to_string(),
        };
        if text.contains('\n') {
            return Err(serde::de::Error::custom("a sysctl value is one line"));
        }
        Ok(SysctlValue(text))
    }
}

/// A Kubernetes label key: optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters (alphanumerics, `-`, `_`, `.`; alphanumeric
/// at both ends).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelKey(String);

fn k8s_name_ok(n: &str) -> bool {
    n.len() <= 63
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl LabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = match s.split_once('/') {
            Some((prefix, name)) => {
                prefix.len() <= 253
                    && prefix
                        .split('.')
                        .all(|l| dns_label_ok(l) && !l.bytes().any(|b| b.is_ascii_uppercase()))
                    && k8s_name_ok(name)
            }
            None => k8s_name_ok(s),
        };
        if ok {
            Ok(LabelKey(s.to_string()))
        } else {
            Err(format!(
                "invalid label key {s:?}: expected [prefix/]name, the name at most 63 characters of letters, digits, '-', '_', '.'"
            ))
        }
    }
}

/// A Kubernetes label value: empty, or like a label name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelValue(String);

impl LabelValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || k8s_name_ok(s) {
            Ok(LabelValue(s.to_string()))
        } else {
            Err(format!(
                "invalid label value {s:?}: expected at most 63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit"
            ))
        }
    }
}

/// A node taint, as kubectl writes it: `key[=value]:Effect`, the effect one
/// of NoSchedule, PreferNoSchedule, NoExecute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl FromStr for Taint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid taint {s:?}: expected key[=value]:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute"
            )
        };
        let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err(bad());
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.parse::<LabelKey>().is_err() || value.parse::<LabelValue>().is_err() {
            return Err(bad());
        }
        Ok(Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}
