//! `[host]`: the machine itself — name, clock, kernel settings, logging.

use super::values::{Hostname, KernelName, NameOrAddress, SysctlKey, SysctlValue, Timezone};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[host]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// The node's name (and the Kubernetes node name).
    #[serde(default)]
    pub hostname: Hostname,
    /// IANA time zone for `TZ` and `/etc/timezone`; the clock itself is UTC.
    #[serde(default)]
    pub timezone: Timezone,
    /// SNTP servers, asked in order at boot; empty = leave the clock alone.
    #[serde(default = "default_ntp")]
    pub ntp: Vec<NameOrAddress>,
    /// Kernel parameters written to `/proc/sys` at boot.
    #[serde(default)]
    pub sysctls: BTreeMap<SysctlKey, SysctlValue>,
    /// Extra kernel modules to load at boot (they must be in the image).
    #[serde(default)]
    pub modules: Vec<KernelName>,
    /// How much init and the kernel print on the console.
    #[serde(default)]
    pub log_level: LogLevel,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            hostname: Hostname::default(),
            timezone: Timezone::default(),
            ntp: default_ntp(),
            sysctls: BTreeMap::new(),
            modules: Vec::new(),
            log_level: LogLevel::default(),
        }
    }
}

fn default_ntp() -> Vec<NameOrAddress> {
    vec![NameOrAddress::try_from("pool.ntp.org".to_string()).expect("a valid literal name")]
}

/// `host.log_level`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

impl LogLevel {
    /// The kernel's console log level (`/proc/sys/kernel/printk`, first
    /// field): messages more urgent than this reach the console.
    pub fn kernel_console_level(self) -> u8 {
        match self {
            LogLevel::Error => 3,
            LogLevel::Warn => 4,
            LogLevel::Info => 5,
            LogLevel::Debug => 8,
        }
    }
}
