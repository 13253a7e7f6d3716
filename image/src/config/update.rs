//! `[update]` (where over-the-air updates come from and when they may be
//! installed) and `[debug]` (switches for development, all off by default).

use super::values::{HttpUrl, HumanDuration, PublicKey, TimeOfDayWindow};
use serde::Deserialize;
use std::time::Duration;

/// `[update]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// The update server; none = no polling (bundles can still be pushed).
    #[serde(default)]
    pub url: Option<HttpUrl>,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
    /// When an update may be installed and the device rebooted; none = any time.
    #[serde(default)]
    pub maintenance_window: Option<TimeOfDayWindow>,
    /// Ed25519 keys trusted besides the ones built into the image.
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
}

impl Default for Update {
    fn default() -> Self {
        Update {
            url: None,
            channel: default_channel(),
            poll_interval: default_poll(),
            maintenance_window: None,
            public_keys: Vec::new(),
        }
    }
}

fn default_channel() -> String {
    "stable".into()
}

fn default_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(6 * 3600))
}

impl Update {
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let c = &self.channel;
        if c.is_empty()
            || c.len() > 63
            || !c
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        {
            return Err((
                "update.channel".into(),
                format!(
                    "update.channel {c:?}: expected lower-case letters, digits, '-', '_', '.' (e.g. stable)"
                ),
            ));
        }
        if self.poll_interval.0 < Duration::from_secs(60) {
            return Err((
                "update.poll_interval".into(),
                "update.poll_interval must be at least 1m".into(),
            ));
        }
        Ok(())
    }
}

/// `[debug]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debug {
    /// A root shell on the serial console. Off by default: anyone with the
    /// console would own the device.
    #[serde(default)]
    pub serial_shell: bool,
}
