//! The `config.toml` schema: the one file a user edits on the `CAIRN`
//! partition. The same code validates it on a laptop (`cairn-image config
//! validate`), in `cairn-init` at boot, and in `cairn`.
//!
//! Fields validate while deserializing (hostnames, addresses), so a bad value
//! is reported with the exact line and column `toml` points at. Unknown keys
//! are errors: a typo must never silently change how a device boots.
//!
//! Current limitations: this is schema version 1's first part — `[host]`
//! hostname and one Ethernet interface in `[network]` (DHCP or static IPv4).
//! The rest of the schema (cluster, update, Wi-Fi, VLANs...) comes with the
//! configuration issue.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::str::FromStr;

/// The schema version this build understands.
pub const VERSION: u32 = 1;

/// The configuration written into a fresh image.
pub const DEFAULT_TOML: &str = r#"# Cairn device configuration (schema version 1).
# Edit this file on the CAIRN partition; check it with
#   cairn-image config validate config.toml
version = 1

[host]
# hostname = "cairn"

[network]
# The first Ethernet interface, unless named here.
# interface = "eth0"
# DHCP is the default. For a static address:
# dhcp = false
# address = "192.168.1.50/24"
# gateway = "192.168.1.1"
# dns = ["192.168.1.1"]
"#;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: SchemaVersion,
    #[serde(default)]
    pub host: Host,
    #[serde(default)]
    pub network: Network,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: SchemaVersion(VERSION),
            host: Host::default(),
            network: Network::default(),
        }
    }
}

/// `version`: must be one this build understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct SchemaVersion(pub u32);

impl TryFrom<i64> for SchemaVersion {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        if v == i64::from(VERSION) {
            Ok(SchemaVersion(VERSION))
        } else {
            Err(format!(
                "unsupported config version {v}: this Cairn reads version {VERSION}"
            ))
        }
    }
}

/// `[host]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Host {
    #[serde(default)]
    pub hostname: Hostname,
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

impl TryFrom<String> for Hostname {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.len() <= 253 && name.split('.').all(label_ok) {
            Ok(Hostname(name))
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

/// `[network]`: the first Ethernet interface (or the one named).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface name; `None` = the first Ethernet interface found.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Static address with prefix length, e.g. `192.168.1.50/24`.
    #[serde(default)]
    pub address: Option<Ipv4Cidr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

fn yes() -> bool {
    true
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: None,
            dhcp: true,
            address: None,
            gateway: None,
            dns: Vec::new(),
        }
    }
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid address {s:?}: expected IPv4 address/prefix, e.g. 192.168.1.50/24");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A configuration that could not be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line, 0 when the problem has no single place.
    pub line: usize,
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

impl Config {
    /// Parses and validates configuration text. `origin` names the file in
    /// errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_col(text, span.start));
            ConfigError {
                origin: origin.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.check().map_err(|(key, message)| {
            let (line, column) = key_position(text, key);
            ConfigError {
                origin: origin.to_string(),
                line,
                column,
                message,
            }
        })?;
        Ok(config)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Config::parse(&text, &path.display().to_string())?)
    }

    /// Checks that need more than one field. Returns the key and the problem.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let net = &self.network;
        if !net.dhcp && net.address.is_none() {
            return Err((
                "network",
                "network.dhcp = false needs network.address (e.g. \"192.168.1.50/24\")".into(),
            ));
        }
        if net.dhcp && (net.address.is_some() || net.gateway.is_some()) {
            return Err((
                "network",
                "network.address and network.gateway are for a static address: set network.dhcp = false".into(),
            ));
        }
        if let Some(name) = &net.interface
            && (name.is_empty() || name.len() > 15 || name.contains(['/', ' ']))
        {
            return Err((
                "interface",
                format!("network.interface {name:?} is not an interface name"),
            ));
        }
        Ok(())
    }
}

/// Where a table or key first appears, for errors that span fields.
fn key_position(text: &str, key: &str) -> (usize, usize) {
    let table = format!("[{key}]");
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(&table) || l.split('=').next().is_some_and(|k| k.trim() == key)
        })
        .map_or((0, 0), |i| (i + 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_parses_to_defaults() {
        let config = Config::parse(DEFAULT_TOML, "config.toml").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.host.hostname.as_str(), "cairn");
        assert!(config.network.dhcp);
    }

    #[test]
    fn static_network_parses() {
        let text = "version = 1\n[host]\nhostname = \"edge-1\"\n[network]\ndhcp = false\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n";
        let config = Config::parse(text, "c.toml").unwrap();
        assert_eq!(config.host.hostname.as_str(), "edge-1");
        let addr = config.network.address.unwrap();
        assert_eq!(addr.to_string(), "10.0.2.15/24");
        assert_eq!(config.network.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err =
            Config::parse("version = 1\n[host]\nhostnme = \"x\"\n", "config.toml").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1));
        assert!(err.message.contains("hostnme"), "{err}");
        assert!(err.to_string().starts_with("config.toml:3:1: "), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let err = Config::parse("version = 1\n[host]\nhostname = \"-bad-\"\n", "config.toml")
            .unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("invalid hostname"), "{err}");

        let err = Config::parse(
            "version = 1\n[network]\ndhcp = false\naddress = \"10.0.0.1\"\n",
            "c",
        )
        .unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("address/prefix"), "{err}");

        let err = Config::parse("version = 2\n", "c").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(
            err.message.contains("unsupported config version 2"),
            "{err}"
        );
    }

    #[test]
    fn invalid_toml_names_line() {
        let err = Config::parse("version = 1\n[host\nhostname = 1\n", "config.toml").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn cross_field_errors_point_at_the_table() {
        let err = Config::parse("version = 1\n\n[network]\ndhcp = false\n", "c").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("needs network.address"), "{err}");
    }

    #[test]
    fn missing_version_is_an_error() {
        let err = Config::parse("[host]\n", "c").unwrap_err();
        assert!(err.message.contains("version"), "{err}");
    }
}
