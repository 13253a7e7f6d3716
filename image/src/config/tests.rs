use super::*;
use std::net::Ipv4Addr;
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
    let err = Config::parse("version = 1\n[host]\nhostnme = \"x\"\n", "config.toml").unwrap_err();
    assert_eq!((err.line, err.column), (3, 1));
    assert!(err.message.contains("hostnme"), "{err}");
    assert!(err.to_string().starts_with("config.toml:3:1: "), "{err}");
}

#[test]
fn bad_values_say_what_is_expected() {
    let err =
        Config::parse("version = 1\n[host]\nhostname = \"-bad-\"\n", "config.toml").unwrap_err();
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
    assert!(err.message.contains("needs a static address"), "{err}");
}

#[test]
fn missing_version_is_an_error() {
    let err = Config::parse("[host]\n", "c").unwrap_err();
    assert!(err.message.contains("version"), "{err}");
}

// ---- the full schema: every key parses, every bad value names its key ----

use std::net::IpAddr;

/// Parses `body` after `version = 1`, expecting an error; returns it.
fn bad(body: &str) -> ConfigError {
    let text = format!("version = 1\n{body}");
    match Config::parse(&text, "c.toml") {
        Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
        Err(e) => e,
    }
}

fn good(body: &str) -> Config {
    let text = format!("version = 1\n{body}");
    Config::parse(&text, "c.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Asserts the error names `key`, sits on `line` and mentions `expect`.
fn assert_err(err: &ConfigError, key: &str, line: usize, expect: &str) {
    assert_eq!(err.key, key, "key of: {err}");
    assert_eq!(err.line, line, "line of: {err}");
    assert!(err.column >= 1, "column of: {err}");
    assert!(
        err.to_string().contains(expect),
        "{err:?} should mention {expect:?}"
    );
}

const FULL: &str = r#"version = 1

[host]
hostname = "edge-7.site"
timezone = "Europe/Berlin"
ntp = ["time.example.com", "10.0.0.1"]
modules = ["wireguard", "br_netfilter"]
log_level = "debug"
[host.sysctls]
"net.ipv4.ip_forward" = 1
"vm.swappiness" = "10"
"net.ipv6.conf.all.forwarding" = true

[network]
interface = "eth0"
dhcp = false
address = "192.168.1.50/24"
addresses = ["fd00::50/64", "192.168.1.51/24"]
gateway = "192.168.1.1"
gateway6 = "fd00::1"
dns = ["192.168.1.1", "fd00::1"]
[[network.interfaces]]
name = "eth1"
dhcp = false
addresses = ["10.0.0.5/24"]
[[network.interfaces]]
name = "eth2"
[[network.vlans]]
link = "eth0"
id = 100
[[network.vlans]]
link = "eth1"
id = 200
name = "storage"
dhcp = false
addresses = ["10.200.0.5/24"]
gateway = "10.200.0.1"
[network.wifi]
ssid = "site net"
psk = "correct horse battery"
country = "DE"
[network.proxy]
http = "http://user:pw@proxy.example:3128"
https = "http://proxy.example:3128"
no_proxy = ["localhost", "10.0.0.0/8", ".example.com"]

[cluster]
role = "server"
token = "0123456789abcdef0123"
datastore_endpoint = "postgres://cairn:pw@db:5432/cairn"
tls_san = ["cairn.example.com", "192.168.1.50"]
pod_cidr = "10.52.0.0/16"
service_cidr = "10.53.0.0/16"
cluster_domain = "edge.local"
node_taints = ["dedicated=edge:NoSchedule", "gpu:NoExecute"]
write_kubeconfig = true
[cluster.node_labels]
"example.com/site" = "north"
tier = ""
[cluster.registries.mirrors."docker.io"]
endpoints = ["https://mirror.example:5000"]
[cluster.registries.configs."mirror.example:5000"]
username = "puller"
password = "hunter22"
insecure_skip_verify = true

[update]
url = "https://updates.example.com/cairn"
channel = "beta"
poll_interval = "1h30m"
maintenance_window = "22:00-02:00"
public_keys = ["11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]

[debug]
serial_shell = true
"#;

#[test]
fn every_key_parses() {
    let c = Config::parse(FULL, "full.toml").unwrap();
    let h = &c.host;
    assert_eq!(h.hostname.as_str(), "edge-7.site");
    assert_eq!(h.timezone.as_str(), "Europe/Berlin");
    assert_eq!(h.ntp.len(), 2);
    assert_eq!(h.modules[1].as_str(), "br_netfilter");
    assert_eq!(h.log_level, LogLevel::Debug);
    let sysctls: Vec<_> = h
        .sysctls
        .iter()
        .map(|(k, v)| (k.proc_path(), v.0.clone()))
        .collect();
    assert_eq!(
        sysctls,
        [
            ("net/ipv4/ip_forward".to_string(), "1".to_string()),
            ("net/ipv6/conf/all/forwarding".into(), "1".into()),
            ("vm/swappiness".into(), "10".into())
        ]
    );

    let n = &c.network;
    assert_eq!(n.interface.as_deref(), Some("eth0"));
    assert!(!n.dhcp);
    let addrs: Vec<String> = n.static_addresses().iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["192.168.1.50/24", "fd00::50/64", "192.168.1.51/24"]);
    assert_eq!(n.gateway6, Some("fd00::1".parse().unwrap()));
    assert_eq!(n.dns[1], "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(n.interfaces.len(), 2);
    assert!(n.interfaces[1].dhcp, "DHCP by default");
    assert_eq!(n.vlans[0].interface_name(), "eth0.100");
    assert_eq!(n.vlans[1].interface_name(), "storage");
    let wifi = n.wifi.as_ref().unwrap();
    assert_eq!(
        (wifi.interface.as_str(), wifi.ssid.as_str()),
        ("wlan0", "site net")
    );
    assert_eq!(wifi.psk.as_ref().unwrap().expose(), "correct horse battery");
    let proxy = n.proxy.as_ref().unwrap();
    let env = proxy.env();
    assert!(env.contains(&("HTTPS_PROXY".into(), "http://proxy.example:3128".into())));
    assert!(env.contains(&(
        "no_proxy".into(),
        "localhost,10.0.0.0/8,.example.com".into()
    )));

    let k = &c.cluster;
    assert_eq!(k.role, Role::Server);
    assert_eq!(k.token.as_ref().unwrap().expose(), "0123456789abcdef0123");
    assert_eq!(k.pod_cidr.to_string(), "10.52.0.0/16");
    assert_eq!(k.service_cidr.to_string(), "10.53.0.0/16");
    assert_eq!(k.cluster_domain.as_str(), "edge.local");
    assert_eq!(k.tls_san[1].as_str(), "192.168.1.50");
    assert_eq!(k.node_taints[0].to_string(), "dedicated=edge:NoSchedule");
    assert_eq!(k.node_taints[1].to_string(), "gpu:NoExecute");
    assert_eq!(k.node_labels.len(), 2);
    assert!(k.write_kubeconfig);
    assert_eq!(
        k.registries.mirrors["docker.io"].endpoints[0].as_str(),
        "https://mirror.example:5000"
    );
    let reg = &k.registries.configs["mirror.example:5000"];
    assert_eq!(reg.password.as_ref().unwrap().expose(), "hunter22");
    assert!(reg.insecure_skip_verify);

    let u = &c.update;
    assert_eq!(
        u.url.as_ref().unwrap().as_str(),
        "https://updates.example.com/cairn"
    );
    assert_eq!(u.channel, "beta");
    assert_eq!(u.poll_interval.0.as_secs(), 5400);
    let w = u.maintenance_window.unwrap();
    assert!(w.contains(23 * 60) && w.contains(60) && !w.contains(12 * 60));
    assert_eq!(u.public_keys[0].0.len(), 32);
    assert!(c.debug.serial_shell);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::parse(FULL, "full.toml").unwrap();
    let debug = format!("{c:?}");
    for secret in [
        "0123456789abcdef0123",
        "correct horse battery",
        "hunter22",
        "cairn:pw@db",
        "user:pw@",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(debug.contains("<redacted>"));
    let pem = crate::config::values::Pem::try_from(test_key_pem()).unwrap();
    assert!(!format!("{pem:?}").contains("MIG"), "PEM body in Debug");
}

fn test_key_pem() -> String {
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n".into()
}

#[test]
fn host_errors() {
    assert_err(
        &bad("[host]\ntimezone = \"Europe/../etc\"\n"),
        "host.timezone",
        3,
        "IANA",
    );
    assert_err(
        &bad("[host]\nntp = [\"bad name!\"]\n"),
        "host.ntp",
        3,
        "host name",
    );
    assert_err(
        &bad("[host]\nntp = \"pool.ntp.org\"\n"),
        "host.ntp",
        3,
        "sequence",
    );
    assert_err(
        &bad("[host]\nmodules = [\"../evil\"]\n"),
        "host.modules",
        3,
        "invalid name",
    );
    assert_err(
        &bad("[host]\nlog_level = \"loud\"\n"),
        "host.log_level",
        3,
        "`debug`",
    );
    assert_err(
        &bad("[host.sysctls]\n\"noDots\" = 1\n"),
        "host.sysctls.noDots",
        3,
        "dotted name",
    );
    assert_err(
        &bad("[host.sysctls]\n\"net.core.x\" = 1.5\n"),
        "host.sysctls.\"net.core.x\"",
        3,
        "a string, an integer or a boolean",
    );
    assert_err(
        &bad("[host]\nhostname = \"a_b\"\n"),
        "host.hostname",
        3,
        "invalid hostname",
    );
}

#[test]
fn network_errors() {
    assert_err(
        &bad("[network]\ndhcp = false\naddress = \"fd00::1/64\"\n"),
        "network.address",
        4,
        "IPv4 address/prefix",
    );
    assert_err(
        &bad("[network]\ndhcp = false\naddresses = [\"10.0.0.1/33\"]\n"),
        "network.addresses",
        4,
        "address/prefix",
    );
    assert_err(
        &bad("[network]\ngateway6 = \"10.0.0.1\"\n"),
        "network.gateway6",
        3,
        "IPv6",
    );
    assert_err(
        &bad("[network]\naddress = \"10.0.0.2/24\"\n"),
        "network",
        2,
        "dhcp = false",
    );
    assert_err(
        &bad("[network]\ndhcp = false\naddresses = [\"fd00::2/64\"]\ngateway = \"10.0.0.1\"\n"),
        "network.gateway",
        5,
        "needs an IPv4 address",
    );
    // IPv6 statics beside DHCPv4 are fine (SLAAC/RA does the rest).
    let c = good("[network]\naddresses = [\"fd00::2/64\"]\ngateway6 = \"fd00::9\"\n");
    assert!(c.network.dhcp);
    assert_err(
        &bad("[network]\ngateway6 = \"fd00::9\"\n"),
        "network.gateway6",
        3,
        "needs an IPv6 address",
    );
    assert_err(
        &bad("[network]\ninterface = \"this-name-is-too-long\"\n"),
        "network.interface",
        3,
        "not an interface name",
    );
    assert_err(
        &bad("[[network.interfaces]]\ndhcp = false\n"),
        "network.interfaces[0]",
        2,
        "missing field `name`",
    );
    assert_err(
        &bad("[[network.interfaces]]\nname = \"eth1\"\ndhcp = false\n"),
        "network.interfaces[0]",
        2,
        "needs a static address",
    );
    assert_err(
        &bad("[[network.interfaces]]\nname = \"eth1\"\nmtu = 9000\n"),
        "network.interfaces[0].mtu",
        4,
        "unknown field `mtu`",
    );
    assert_err(
        &bad("[network]\ninterface = \"eth0\"\n[[network.interfaces]]\nname = \"eth0\"\n"),
        "network.interfaces[0].name",
        5,
        "configured twice",
    );
    assert_err(
        &bad("[[network.vlans]]\nlink = \"eth0\"\nid = 4095\n"),
        "network.vlans[0].id",
        4,
        "1 to 4094",
    );
    assert_err(
        &bad("[[network.vlans]]\nlink = \"eth0\"\nid = -1\n"),
        "network.vlans[0].id",
        4,
        "u16",
    );
    assert_err(
        &bad("[[network.vlans]]\nid = 5\n"),
        "network.vlans[0]",
        2,
        "missing field `link`",
    );
    assert_err(
        &bad("[network.wifi]\nssid = \"x\"\npsk = \"short\"\n"),
        "network.wifi.psk",
        4,
        "8-63",
    );
    assert!(
        !bad("[network.wifi]\nssid = \"x\"\npsk = \"short\"\n")
            .to_string()
            .contains("short"),
        "the PSK is not echoed"
    );
    assert_err(
        &bad("[network.wifi]\npsk = \"long enough\"\n"),
        "network.wifi",
        2,
        "missing field `ssid`",
    );
    assert_err(
        &bad("[network.wifi]\nssid = \"\"\n"),
        "network.wifi.ssid",
        3,
        "1-32 bytes",
    );
    assert_err(
        &bad("[network.wifi]\nssid = \"x\"\ncountry = \"germany\"\n"),
        "network.wifi.country",
        4,
        "two upper-case letters",
    );
    let raw = format!(
        "[network.wifi]\nssid = \"x\"\npsk = \"{}\"\n",
        "ab".repeat(32)
    );
    assert!(
        good(&raw).network.wifi.is_some(),
        "64 hex digits are a raw key"
    );
    assert_err(
        &bad("[network.proxy]\nhttp = \"proxy:3128\"\n"),
        "network.proxy.http",
        3,
        "http://host",
    );
    assert!(
        !bad("[network.proxy]\nhttp = \"ftp://u:secretpw@p\"\n")
            .to_string()
            .contains("secretpw"),
        "URLs are not echoed"
    );
    assert_err(
        &bad("[network.proxy]\nno_proxy = [\"a, b\"]\n"),
        "network.proxy.no_proxy[0]",
        3,
        "without spaces or commas",
    );
}

#[test]
fn cluster_keys_and_errors() {
    // An agent needs a server URL and a token.
    let agent = good(
        "[cluster]\nrole = \"agent\"\nserver = \"https://10.0.0.1:6443\"\ntoken = \"K10abcdef0123456789\"\n",
    );
    assert_eq!(agent.cluster.role, Role::Agent);
    assert_err(
        &bad("[cluster]\nrole = \"agent\"\ntoken = \"K10abcdef0123456789\"\n"),
        "cluster.role",
        3,
        "needs cluster.server",
    );
    assert_err(
        &bad("[cluster]\nrole = \"agent\"\nserver = \"https://s:6443\"\n"),
        "cluster.role",
        3,
        "needs cluster.token",
    );
    assert_err(
        &bad(
            "[cluster]\nrole = \"agent\"\nserver = \"http://s:6443\"\ntoken = \"K10abcdef0123456789\"\n",
        ),
        "cluster.server",
        4,
        "https://",
    );
    assert_err(
        &bad(
            "[cluster]\nrole = \"agent\"\nserver = \"https://s:6443\"\ntoken = \"K10abcdef0123456789\"\ndatastore_endpoint = \"postgres://x@y/z\"\n",
        ),
        "cluster.datastore_endpoint",
        6,
        "role = \"server\"",
    );
    assert_err(
        &bad("[cluster]\nserver = \"https://s:6443\"\n"),
        "cluster.server",
        3,
        "role = \"agent\"",
    );
    assert_err(
        &bad("[cluster]\nrole = \"master\"\n"),
        "cluster.role",
        3,
        "expected `server` or `agent`",
    );
    assert_err(
        &bad("[cluster]\ntoken = \"short\"\n"),
        "cluster.token",
        3,
        "at least 16",
    );
    assert_err(
        &bad("[cluster]\ndatastore_endpoint = \"mysql://x\"\n"),
        "cluster.datastore_endpoint",
        3,
        "postgres://",
    );
    assert_err(
        &bad("[cluster]\npod_cidr = \"10.42.0.0\"\n"),
        "cluster.pod_cidr",
        3,
        "address/prefix",
    );
    assert_err(
        &bad("[cluster]\nservice_cidr = \"10.43.0.0/31\"\n"),
        "cluster.service_cidr",
        3,
        "/12 to /28",
    );
    assert_err(
        &bad("[cluster]\npod_cidr = \"10.42.0.0/25\"\n"),
        "cluster.pod_cidr",
        3,
        "/8 to /24",
    );
    assert_err(
        &bad("[cluster]\npod_cidr = \"fd00:42::/56\"\n"),
        "cluster.pod_cidr",
        3,
        "expected an IPv4 network",
    );
    assert_err(
        &bad("[cluster]\ncluster_domain = \"bad domain\"\n"),
        "cluster.cluster_domain",
        3,
        "invalid hostname",
    );
    assert_err(
        &bad("[cluster]\ntls_san = [\"no spaces\"]\n"),
        "cluster.tls_san",
        3,
        "host name",
    );
    assert_err(
        &bad("[cluster]\nnode_taints = [\"k=v:Sometimes\"]\n"),
        "cluster.node_taints",
        3,
        "NoSchedule",
    );
    assert_err(
        &bad("[cluster.node_labels]\n\"-bad\" = \"x\"\n"),
        "cluster.node_labels.-bad",
        3,
        "label key",
    );
    assert_err(
        &bad("[cluster.node_labels]\nok = \"bad value!\"\n"),
        "cluster.node_labels.ok",
        3,
        "label value",
    );
    assert_err(
        &bad("[cluster]\nwrite_kubeconfig = \"yes\"\n"),
        "cluster.write_kubeconfig",
        3,
        "boolean",
    );
    assert_err(
        &bad("[cluster.registries.mirrors.\"docker.io\"]\nendpoints = [\"mirror\"]\n"),
        "cluster.registries.mirrors.\"docker.io\".endpoints",
        3,
        "http://host",
    );
    assert_err(
        &bad("[cluster.registries.mirrors.\"bad host!\"]\nendpoints = []\n"),
        "cluster.registries",
        2,
        "registry \"bad host!\"",
    );
    assert_err(
        &bad("[cluster.registries.configs.\"r:5000\"]\npassword = \"pw123\"\n"),
        "cluster.registries.configs.\"r:5000\".password",
        3,
        "needs",
    );
    assert_err(
        &bad("[cluster.registries.configs.\"r:5000\"]\nuser = \"u\"\n"),
        "cluster.registries.configs.\"r:5000\".user",
        3,
        "unknown field `user`",
    );
}

#[test]
fn pem_credentials() {
    let cert = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIU\n-----END CERTIFICATE-----";
    let key = test_key_pem();
    let ml = super::template::multiline;
    let ok = format!(
        "[cluster]\nca_cert = {}\nca_key = {}\nadmin_cert = {}\nadmin_key = {}\n",
        ml(cert),
        ml(&key),
        ml(cert),
        ml(&key)
    );
    let c = good(&ok);
    assert_eq!(c.cluster.ca_cert.as_ref().unwrap().label(), "CERTIFICATE");
    assert!(
        c.cluster
            .ca_key
            .as_ref()
            .unwrap()
            .as_str()
            .ends_with("-----END PRIVATE KEY-----\n")
    );

    let only_cert = format!("[cluster]\nca_cert = {}\n", ml(cert));
    assert_err(
        &bad(&only_cert),
        "cluster.ca_cert",
        3,
        "needs cluster.ca_key",
    );
    let swapped = format!("[cluster]\nca_cert = {}\nca_key = {}\n", ml(&key), ml(cert));
    assert_err(
        &bad(&swapped),
        "cluster.ca_cert",
        3,
        "expected \"CERTIFICATE\"",
    );
    let rsa = format!(
        "[cluster]\nca_cert = {}\nca_key = {}\n",
        ml(cert),
        ml("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----")
    );
    assert_err(&bad(&rsa), "cluster.ca_key", 8, "expected \"PRIVATE KEY\"");
    let admin_without_ca = format!(
        "[cluster]\nadmin_cert = {}\nadmin_key = {}\n",
        ml(cert),
        ml(&key)
    );
    assert_err(
        &bad(&admin_without_ca),
        "cluster.admin_cert",
        3,
        "needs cluster.ca_cert",
    );
    assert_err(
        &bad("[cluster]\nca_cert = \"not pem\"\n"),
        "cluster.ca_cert",
        3,
        "no BEGIN line",
    );
    assert_err(
        &bad(
            "[cluster]\nca_cert = \"-----BEGIN CERTIFICATE-----\\n!!!\\n-----END CERTIFICATE-----\"\n",
        ),
        "cluster.ca_cert",
        3,
        "not base64",
    );
    assert_err(
        &bad("[cluster]\nca_cert = \"-----BEGIN CERTIFICATE-----\\nAAAA\\n\"\n"),
        "cluster.ca_cert",
        3,
        "no matching END",
    );
}

#[test]
fn update_and_debug_errors() {
    assert_err(
        &bad("[update]\nurl = \"updates.example.com\"\n"),
        "update.url",
        3,
        "http://host",
    );
    assert_err(
        &bad("[update]\nchannel = \"Beta Channel\"\n"),
        "update.channel",
        3,
        "lower-case",
    );
    assert_err(
        &bad("[update]\npoll_interval = \"6 hours\"\n"),
        "update.poll_interval",
        3,
        "number and a unit",
    );
    assert_err(
        &bad("[update]\npoll_interval = \"10s\"\n"),
        "update.poll_interval",
        3,
        "at least 1m",
    );
    assert_err(
        &bad("[update]\nmaintenance_window = \"2am-4am\"\n"),
        "update.maintenance_window",
        3,
        "HH:MM-HH:MM",
    );
    assert_err(
        &bad("[update]\nmaintenance_window = \"25:00-04:00\"\n"),
        "update.maintenance_window",
        3,
        "HH:MM-HH:MM",
    );
    assert_err(
        &bad("[update]\npublic_keys = [\"AAAA\"]\n"),
        "update.public_keys",
        3,
        "32 bytes",
    );
    assert_err(
        &bad("[debug]\nserial_shell = 1\n"),
        "debug.serial_shell",
        3,
        "boolean",
    );
    assert_err(
        &bad("[debug]\nshell = true\n"),
        "debug.shell",
        3,
        "unknown field `shell`, expected `serial_shell`",
    );
    assert_err(
        &bad("[extras]\nx = 1\n"),
        "extras",
        2,
        "unknown field `extras`",
    );
    assert!(
        !good("").debug.serial_shell,
        "the serial shell is off by default"
    );
}

#[test]
fn durations_and_windows() {
    use crate::config::values::{HumanDuration, TimeOfDayWindow};
    let d = |s: &str| s.parse::<HumanDuration>().map(|d| d.0.as_secs());
    assert_eq!(d("90s"), Ok(90));
    assert_eq!(d("1d2h3m4s"), Ok(93784));
    assert!(d("").is_err() && d("5").is_err() && d("m5").is_err() && d("5w").is_err());
    assert!(d("99999999999999999999d").is_err());
    let w: TimeOfDayWindow = "02:00-04:30".parse().unwrap();
    assert!(w.contains(120) && w.contains(269) && !w.contains(270) && !w.contains(119));
    assert!("02:00-02:00".parse::<TimeOfDayWindow>().is_err());
    assert!("2:00-04:00".parse::<TimeOfDayWindow>().is_err());
}

#[test]
fn default_template_documents_every_table() {
    for table in ["[host]", "[network]", "[cluster]", "[update]", "[debug]"] {
        assert!(DEFAULT_TOML.contains(table), "{table}");
    }
    // Each commented key line in the template is a valid key: uncommenting
    // the examples of a table one by one must parse (within their table).
    let c = Config::default();
    assert_eq!(c.cluster.pod_cidr.to_string(), "10.42.0.0/16");
    assert_eq!(c.host.ntp[0].as_str(), "pool.ntp.org");
    assert_eq!(c.update.poll_interval.0.as_secs(), 6 * 3600);
}
