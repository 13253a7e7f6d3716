//! The commented `config.toml` text: [`DEFAULT_TOML`] goes into every fresh
//! image, and `cairn-image config init` renders the same text with a
//! generated `[cluster]` table ([`with_cluster`]). Every key is shown, most
//! commented out at its default, so the file documents itself.

macro_rules! head {
    () => {
        r#"# Cairn device configuration (schema version 1).
# Edit this file on the CAIRN partition; check it on a laptop with
#   cairn-image config validate config.toml
# A broken file never bricks the device: it boots with the last valid one
# and prints the error on the console.
version = 1

[host]
# hostname = "cairn"
# timezone = "UTC"                    # IANA name, for TZ; the clock is UTC
# ntp = ["pool.ntp.org"]              # SNTP servers asked at boot; [] = none
# modules = ["wireguard"]             # extra kernel modules (present in the image)
# log_level = "info"                  # console: error, warn, info, debug
# [host.sysctls]
# "net.ipv4.ip_forward" = 1

[network]
# The first Ethernet interface, unless named here.
# interface = "eth0"
# DHCP is the default. For a static address:
# dhcp = false
# address = "192.168.1.50/24"
# addresses = ["fd00::50/64"]         # more addresses, IPv4 or IPv6
# gateway = "192.168.1.1"
# gateway6 = "fd00::1"
# dns = ["192.168.1.1"]
#
# More interfaces, VLANs, Wi-Fi, proxy:
# [[network.interfaces]]
# name = "eth1"
# dhcp = false
# addresses = ["10.0.0.5/24"]
# [[network.vlans]]
# link = "eth0"
# id = 100
# [network.wifi]
# ssid = "my-network"
# psk = "passphrase"
# country = "DE"
# [network.proxy]
# http = "http://proxy.example:3128"
# https = "http://proxy.example:3128"
# no_proxy = ["localhost", "10.0.0.0/8", ".example.com"]

"#
    };
}

macro_rules! cluster_default {
    () => {
        r#"[cluster]
# role = "server"                     # or "agent" (needs server and token)
# server = "https://10.0.0.1:6443"    # agent: the server to join
# token = "..."                       # join token (cairn-image config init makes one)
# ca_cert = """-----BEGIN CERTIFICATE-----..."""   # supplied cluster CA
# ca_key = """-----BEGIN PRIVATE KEY-----..."""
# admin_cert = """..."""              # supplied admin client certificate
# admin_key = """..."""
# datastore_endpoint = "postgres://user:password@db:5432/cairn"  # default: embedded SQLite
# tls_san = ["cairn.example.com"]     # extra names for the API certificate
# pod_cidr = "10.42.0.0/16"
# service_cidr = "10.43.0.0/16"
# cluster_domain = "cluster.local"
# node_ip = "192.168.1.50"            # the address the node reports (default: first IPv4)
# node_taints = ["dedicated=edge:NoSchedule"]
# write_kubeconfig = false            # true: kubeconfig.yaml written back here
# [cluster.node_labels]
# "example.com/site" = "north"
# [cluster.registries.mirrors."docker.io"]
# endpoints = ["https://mirror.example:5000"]
# [cluster.registries.configs."mirror.example:5000"]
# username = "user"
# password = "secret"

"#
    };
}

macro_rules! tail {
    () => {
        r#"[update]
# url = "https://updates.example.com/cairn"
# channel = "stable"
# poll_interval = "6h"
# maintenance_window = "02:00-04:00"  # UTC
# public_keys = ["base64 Ed25519 key"]

[debug]
# serial_shell = false
"#
    };
}

/// The configuration written into a fresh image.
pub const DEFAULT_TOML: &str = concat!(head!(), cluster_default!(), tail!());

/// The commented template with `cluster` (a `[cluster]` table, its
/// header included) instead of the commented default one.
pub fn with_cluster(cluster: &str) -> String {
    let mut text = String::from(head!());
    text.push_str(cluster.trim_end());
    text.push_str("\n\n");
    text.push_str(tail!());
    text
}

/// A TOML multi-line basic string holding `text` (PEM: base64 and dashes,
/// nothing to escape).
pub fn multiline(text: &str) -> String {
    format!("\"\"\"\n{}\"\"\"", text.trim_end().to_string() + "\n")
}
