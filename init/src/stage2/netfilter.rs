//! The netfilter modules `iptables` needs (nf_tables, NAT, the xtables
//! matches the CNI plugins' rules use), from their own list
//! ([`layout::NETFILTER_MODULES_LIST`], written by the image builder).
//!
//! Nothing before `cairn: ready` needs them: only the CNI plugins do, when
//! the first pod's sandbox is set up (masquerading, host ports). So they
//! load on a blocking thread while the boot goes on, instead of in the
//! module group the network waits for. The device has no modprobe, so the
//! kernel cannot load them on demand later.

use crate::stage1::modules;
use cairn_image::layout;
use std::path::Path;

/// Starts loading the netfilter module list in the background.
pub fn load_in_background() {
    tokio::task::spawn_blocking(|| {
        let list = Path::new(layout::NETFILTER_MODULES_LIST);
        if list.exists() {
            tracing::info!(list = %list.display(), "loading the netfilter modules");
            modules::load_list(list);
        }
    });
}
