//! The `config.toml` schema: the one file a user edits on the `CAIRN`
//! partition. The same code validates it on a laptop (`cairn-image config
//! validate`), in `cairn-init` at boot, and in `cairn`.
//!
//! Fields validate while deserializing ([`values`]: hostnames, addresses,
//! URLs, PEM blocks, durations), so a bad value is reported at its own line
//! and column. Unknown keys are errors: a typo must never silently change
//! how a device boots. Rules across keys ("a static address needs
//! `dhcp = false`") run after parsing and report the key they are about.
//! Every error names the key path ([`spans`]), the line and column, and what
//! is expected.
//!
//! Secrets (join token, private keys, the datastore URL, Wi-Fi PSK,
//! registry passwords) are [`Secret`]s or [`Pem`]s: their `Debug` output
//! never shows them, so logging a `Config` is safe.
//!
//! # Layout
//! - [`values`]: self-checking value types.
//! - [`host`], [`network`], [`cluster`], [`update`]: one module per table.
//! - [`spans`]: offsets to key paths and back.
//! - [`template`]: the commented `config.toml` text (default and generated).
//! - `generate` (host tool): `config init`'s fresh credentials.
//! - [`kubeconfig`]: the admin kubeconfig text (`config init` and the server).
//!
//! Compatibility: schema version 1 grew in place; every key of its first
//! part (`host.hostname`, `network.interface/dhcp/address/gateway/dns`)
//! keeps its meaning.

pub mod cluster;
#[cfg(feature = "host")]
pub mod generate;
pub mod host;
pub mod kubeconfig;
pub mod network;
pub mod spans;
pub mod template;
pub mod update;
pub mod values;

pub use cluster::{Cluster, Role};
pub use host::{Host, LogLevel};
pub use network::Network;
pub use template::DEFAULT_TOML;
pub use update::{Debug, Update};
pub use values::{Hostname, IpCidr, Ipv4Cidr, Pem, Secret};

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// The schema version this build understands.
pub const VERSION: u32 = 1;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: SchemaVersion,
    #[serde(default)]
    pub host: Host,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub update: Update,
    #[serde(default)]
    pub debug: Debug,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: SchemaVersion(VERSION),
            host: Host::default(),
            network: Network::default(),
            cluster: Cluster::default(),
            update: Update::default(),
            debug: Debug::default(),
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

/// A configuration that could not be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line, 0 when the problem has no single place.
    pub line: usize,
    pub column: usize,
    /// The key path (`network.interfaces[0].gateway`); empty for syntax errors.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if !self.key.is_empty() && !self.message.starts_with(&self.key) {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
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
        let error = |offset: Option<usize>, key: String, message: String| {
            let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
            ConfigError {
                origin: origin.to_string(),
                line,
                column,
                key,
                message,
            }
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let key = offset.map(|o| spans::path_at(text, o)).unwrap_or_default();
            error(offset, key, e.message().trim().to_string())
        })?;
        config
            .check()
            .map_err(|(key, message)| error(spans::offset_of(text, &key), key, message))?;
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

    /// Rules across keys. Returns the key path and the problem.
    fn check(&self) -> Result<(), (String, String)> {
        self.network.check()?;
        self.cluster.check()?;
        self.update.check()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests;
