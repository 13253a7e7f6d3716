//! `[network]`: the primary Ethernet interface (the keys directly in
//! `[network]`, as in the first schema), more interfaces
//! (`[[network.interfaces]]`), VLANs (`[[network.vlans]]`), Wi-Fi
//! (`[network.wifi]`) and an HTTP(S) proxy (`[network.proxy]`).
//!
//! Each interface is DHCP (IPv4; IPv6 by router advertisements) or static.
//! Cross-field rules live in [`Network::check`] and report the key path.

use super::values::{HttpUrl, IpCidr, Ipv4Cidr, Secret};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn yes() -> bool {
    true
}

/// `[network]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface name; `None` = the first Ethernet interface found.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Static IPv4 address with prefix length, e.g. `192.168.1.50/24`.
    #[serde(default)]
    pub address: Option<Ipv4Cidr>,
    /// More static addresses, IPv4 or IPv6 (`fd00::50/64`).
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// More Ethernet interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub vlans: Vec<Vlan>,
    #[serde(default)]
    pub wifi: Option<Wifi>,
    #[serde(default)]
    pub proxy: Option<Proxy>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: None,
            dhcp: true,
            address: None,
            addresses: Vec::new(),
            gateway: None,
            gateway6: None,
            dns: Vec::new(),
            interfaces: Vec::new(),
            vlans: Vec::new(),
            wifi: None,
            proxy: None,
        }
    }
}

/// `[[network.interfaces]]`: another Ethernet interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default = "yes")]
    pub dhcp: bool,
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

/// `[[network.vlans]]`: an 802.1Q VLAN on top of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    /// The parent interface.
    pub link: String,
    /// VLAN id, 1-4094.
    pub id: u16,
    /// The VLAN interface's name; default `<link>.<id>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub dhcp: bool,
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

impl Vlan {
    pub fn interface_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.link, self.id))
    }
}

/// `[network.wifi]`: one WPA2-PSK (or open) network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    #[serde(default = "default_wlan")]
    pub interface: String,
    pub ssid: String,
    /// Passphrase (8-63 characters) or raw key (64 hex digits); none = open.
    #[serde(default)]
    pub psk: Option<Secret>,
    /// Regulatory domain, two letters (`DE`, `US`).
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default = "yes")]
    pub dhcp: bool,
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

fn default_wlan() -> String {
    "wlan0".into()
}

/// `[network.proxy]`: used for image pulls and update downloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[serde(default)]
    pub http: Option<HttpUrl>,
    #[serde(default)]
    pub https: Option<HttpUrl>,
    /// Hosts, domains (`.example.com`) and CIDRs reached directly.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

impl Proxy {
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (and lower-case twins) for
    /// services' environments. The values may carry credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut push = |name: &str, value: String| {
            env.push((name.to_uppercase(), value.clone()));
            env.push((name.to_string(), value));
        };
        if let Some(u) = &self.http {
            push("http_proxy", u.as_str().to_string());
        }
        if let Some(u) = &self.https {
            push("https_proxy", u.as_str().to_string());
        }
        if !self.no_proxy.is_empty() {
            push("no_proxy", self.no_proxy.join(","));
        }
        env
    }
}

/// One interface's addressing, whichever table it came from.
struct Addressing {
    path: String,
    dhcp: bool,
    addresses: Vec<IpCidr>,
    gateway: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
}

impl Addressing {
    fn check(&self) -> Result<(), (String, String)> {
        let p = &self.path;
        let v4 = self.addresses.iter().any(|a| a.addr.is_ipv4());
        let v6 = self.addresses.iter().any(|a| a.addr.is_ipv6());
        if !self.dhcp && self.addresses.is_empty() {
            return Err((
                p.clone(),
                format!("{p}.dhcp = false needs a static address (e.g. \"192.168.1.50/24\")"),
            ));
        }
        if self.dhcp && (v4 || self.gateway.is_some()) {
            return Err((
                p.clone(),
                format!(
                    "static IPv4 addresses and gateway need {p}.dhcp = false (DHCP assigns them otherwise)"
                ),
            ));
        }
        if self.gateway.is_some() && !v4 {
            return Err((
                format!("{p}.gateway"),
                format!("{p}.gateway needs an IPv4 address on the interface"),
            ));
        }
        if self.gateway6.is_some() && !v6 {
            return Err((
                format!("{p}.gateway6"),
                format!("{p}.gateway6 needs an IPv6 address on the interface"),
            ));
        }
        Ok(())
    }
}

fn check_ifname(path: &str, name: &str) -> Result<(), (String, String)> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err((
            path.to_string(),
            format!(
                "{path} {name:?} is not an interface name (1-15 letters, digits, '-', '_', '.')"
            ),
        ))
    }
}

impl Network {
    /// Every static address of the primary interface: `address` first.
    pub fn static_addresses(&self) -> Vec<IpCidr> {
        self.address
            .map(IpCidr::from)
            .into_iter()
            .chain(self.addresses.iter().copied())
            .collect()
    }

    /// Rules across keys. Returns the key path and the problem.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        if let Some(name) = &self.interface {
            check_ifname("network.interface", name)?;
        }
        Addressing {
            path: "network".into(),
            dhcp: self.dhcp,
            addresses: self.static_addresses(),
            gateway: self.gateway,
            gateway6: self.gateway6,
        }
        .check()?;
        let mut names: Vec<(String, String)> = Vec::new();
        if let Some(name) = &self.interface {
            names.push(("network.interface".into(), name.clone()));
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            let path = format!("network.interfaces[{i}]");
            check_ifname(&format!("{path}.name"), &iface.name)?;
            Addressing {
                path: path.clone(),
                dhcp: iface.dhcp,
                addresses: iface.addresses.clone(),
                gateway: iface.gateway,
                gateway6: iface.gateway6,
            }
            .check()?;
            names.push((format!("{path}.name"), iface.name.clone()));
        }
        for (i, vlan) in self.vlans.iter().enumerate() {
            let path = format!("network.vlans[{i}]");
            check_ifname(&format!("{path}.link"), &vlan.link)?;
            if !(1..=4094).contains(&vlan.id) {
                return Err((
                    format!("{path}.id"),
                    format!("{path}.id = {}: expected a VLAN id from 1 to 4094", vlan.id),
                ));
            }
            let name = vlan.interface_name();
            check_ifname(&format!("{path}.name"), &name)?;
            Addressing {
                path: path.clone(),
                dhcp: vlan.dhcp,
                addresses: vlan.addresses.clone(),
                gateway: vlan.gateway,
                gateway6: vlan.gateway6,
            }
            .check()?;
            names.push((format!("{path}.name"), name));
        }
        if let Some(wifi) = &self.wifi {
            wifi.check()?;
            names.push(("network.wifi.interface".into(), wifi.interface.clone()));
        }
        for (i, (path, name)) in names.iter().enumerate() {
            if let Some((first, _)) = names[..i].iter().find(|(_, n)| n == name) {
                return Err((
                    path.clone(),
                    format!("interface {name:?} is configured twice ({first} and {path})"),
                ));
            }
        }
        if let Some(proxy) = &self.proxy {
            for (i, entry) in proxy.no_proxy.iter().enumerate() {
                if entry.is_empty() || entry.contains([',', ' ', '\t']) {
                    return Err((
                        format!("network.proxy.no_proxy[{i}]"),
                        "a no_proxy entry is one host, domain or CIDR without spaces or commas"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Wifi {
    fn check(&self) -> Result<(), (String, String)> {
        check_ifname("network.wifi.interface", &self.interface)?;
        if self.ssid.is_empty() || self.ssid.len() > 32 {
            return Err((
                "network.wifi.ssid".into(),
                "network.wifi.ssid must be 1-32 bytes".into(),
            ));
        }
        if let Some(psk) = &self.psk {
            let k = psk.expose();
            let passphrase =
                (8..=63).contains(&k.len()) && k.bytes().all(|b| (32..127).contains(&b));
            let raw = k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
            if !passphrase && !raw {
                // The value is secret: say what is wrong, never what it is.
                return Err((
                    "network.wifi.psk".into(),
                    format!(
                        "network.wifi.psk ({} characters) must be a passphrase of 8-63 printable ASCII characters or 64 hex digits",
                        k.chars().count()
                    ),
                ));
            }
        }
        if let Some(c) = &self.country
            && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err((
                "network.wifi.country".into(),
                format!(
                    "network.wifi.country {c:?}: expected two upper-case letters (ISO 3166-1, e.g. DE)"
                ),
            ));
        }
        Addressing {
            path: "network.wifi".into(),
            dhcp: self.dhcp,
            addresses: self.addresses.clone(),
            gateway: self.gateway,
            gateway6: self.gateway6,
        }
        .check()
    }
}
