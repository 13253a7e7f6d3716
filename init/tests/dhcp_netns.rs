//! End to end for the DHCP client's real path (UDP socket on port 68,
//! netlink, resolv.conf) against dnsmasq, across a veth pair between two
//! network namespaces. The client half re-runs this test binary inside the
//! client namespace (`ip netns exec`), so no unsafe `setns` is needed.
//!
//! Needs root, `ip` and `dnsmasq` (Debian: dnsmasq-base); otherwise it
//! prints why and passes without running.

use cairn_image::config::Network;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INNER: &str = "CAIRN_DHCP_NETNS_INNER";
/// Set (to anything) to also wait through a renewal at T1 (~70 s more).
const RENEW: &str = "CAIRN_DHCP_TEST_RENEW";
const CLIENT_IF: &str = "cairn-c0";
const SERVER_IF: &str = "cairn-s0";

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "dnsmasq"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install iproute2 dnsmasq-base)"
            ));
        }
    }
    None
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Deletes the namespaces (and with them the veth pair) and stops dnsmasq.
struct Lab {
    server_ns: String,
    client_ns: String,
    dnsmasq: Option<Child>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    /// A veth pair per `(client, server, net)` (`net` = the first three
    /// octets), the server end at `.1/24`, and dnsmasq serving each net a
    /// 2-minute lease with router `.1`, DNS server `.53` and domain
    /// `cairn.test`.
    fn serve(&mut self, links: &[(&str, &str, &str)], leases: &Path) {
        let mut dnsmasq = Command::new("ip");
        dnsmasq
            .args([
                "netns",
                "exec",
                &self.server_ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
            ]);
        for (i, (client, server, net)) in links.iter().enumerate() {
            ip(&[
                "link",
                "add",
                client,
                "netns",
                &self.client_ns,
                "type",
                "veth",
                "peer",
                "name",
                server,
                "netns",
                &self.server_ns,
            ]);
            let addr = format!("{net}.1/24");
            ip(&["-n", &self.server_ns, "addr", "add", &addr, "dev", server]);
            ip(&["-n", &self.server_ns, "link", "set", server, "up"]);
            dnsmasq
                .arg(format!("--interface={server}"))
                .arg(format!(
                    "--dhcp-range=set:n{i},{net}.50,{net}.60,255.255.255.0,2m"
                ))
                .arg(format!("--dhcp-option=tag:n{i},option:router,{net}.1"))
                .arg(format!("--dhcp-option=tag:n{i},option:dns-server,{net}.53"));
        }
        let child = dnsmasq
            .args([
                "--domain=cairn.test",
                "--log-dhcp",
                "--log-facility=-",
                "--pid-file=",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .spawn()
            .expect("start dnsmasq");
        self.dnsmasq = Some(child);
    }

    /// Runs the ignored test `half` of this binary in the client namespace.
    fn run_half(&self, half: &str, dir: &Path) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client_ns])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", half, "--include-ignored", "--nocapture"])
            .env(INNER, dir)
            .env(RENEW, std::env::var_os(RENEW).unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .expect("run the client half");
        println!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "client half {half} failed");
    }
}

#[test]
fn dhcp_lease_from_dnsmasq_across_namespaces() {
    if std::env::var_os(INNER).is_some() {
        return;
    }
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("cairn-dhcp-{id}"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let mut lab = Lab {
        server_ns: format!("cairn-srv-{id}"),
        client_ns: format!("cairn-cli-{id}"),
        dnsmasq: None,
        dir: dir.clone(),
    };
    ip(&["netns", "add", &lab.server_ns]);
    ip(&["netns", "add", &lab.client_ns]);
    let leases = dir.join("leases");
    lab.serve(&[(CLIENT_IF, SERVER_IF, "10.99.0")], &leases);

    lab.run_half("client_in_namespace", &dir);
    let leases = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(
        leases.contains("10.99.0."),
        "dnsmasq recorded the lease: {leases:?}"
    );
}

#[test]
fn static_address_in_a_namespace() {
    if std::env::var_os(INNER).is_some() {
        return;
    }
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("cairn-static-{id}"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let lab = Lab {
        server_ns: format!("cairn-st1-{id}"),
        client_ns: format!("cairn-st2-{id}"),
        dnsmasq: None,
        dir: dir.clone(),
    };
    ip(&["netns", "add", &lab.client_ns]);
    ip(&[
        "-n",
        &lab.client_ns,
        "link",
        "add",
        CLIENT_IF,
        "type",
        "veth",
        "peer",
        "name",
        SERVER_IF,
    ]);
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "static_in_namespace",
            "--include-ignored",
            "--nocapture",
        ])
        .env(INNER, &dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the client half");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client half failed");
}

/// The static half: run inside a namespace by the test above. Everything
/// must be in place when `start` returns.
#[test]
#[ignore = "run inside a network namespace by static_address_in_a_namespace"]
fn static_in_namespace() {
    let Some(dir) = std::env::var_os(INNER).map(PathBuf::from) else {
        return;
    };
    let resolv = dir.join("resolv.conf");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = Network {
            interface: Some(CLIENT_IF.into()),
            dhcp: false,
            address: Some("10.98.0.9/24".parse().expect("cidr")),
            gateway: Some("10.98.0.1".parse().expect("ip")),
            dns: vec!["10.98.0.53".parse().expect("ip")],
            addresses: vec!["fd98::9/64".parse().expect("cidr")],
            gateway6: Some("fd98::1".parse().expect("ip")),
            ..Network::default()
        };
        cairn_init::network::start(&config, &resolv)
            .await
            .expect("start");
        // Twice: a restart must not fail on what is already there.
        cairn_init::network::start(&config, &resolv)
            .await
            .expect("start again");
    });
    let text = std::fs::read_to_string(&resolv).expect("resolv.conf");
    assert!(text.contains("nameserver 10.98.0.53"), "{text}");
    let addr = Command::new("ip")
        .args(["-4", "addr", "show", "dev", CLIENT_IF])
        .output()
        .expect("ip addr");
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(
        addr.contains("inet 10.98.0.9/24") && addr.contains("valid_lft forever"),
        "{addr}"
    );
    let route = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .expect("ip route");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("via 10.98.0.1") && route.contains(CLIENT_IF),
        "{route}"
    );
    let addr6 = Command::new("ip")
        .args(["-6", "addr", "show", "dev", CLIENT_IF])
        .output()
        .expect("ip addr");
    let addr6 = String::from_utf8_lossy(&addr6.stdout);
    assert!(addr6.contains("inet6 fd98::9/64"), "{addr6}");
    let route6 = Command::new("ip")
        .args(["-6", "route", "show", "default"])
        .output()
        .expect("ip route");
    let route6 = String::from_utf8_lossy(&route6.stdout);
    assert!(
        route6.contains("via fd98::1") && route6.contains(CLIENT_IF),
        "{route6}"
    );
    // A missing interface is an error naming it.
    let missing = Network {
        interface: Some("nosuch0".into()),
        ..Network::default()
    };
    let missing = Network {
        dhcp: false,
        address: Some("10.98.1.1/24".parse().expect("cidr")),
        ..missing
    };
    let err = rt
        .block_on(cairn_init::network::start(&missing, &resolv))
        .expect_err("no such interface");
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

/// The client half: run inside the client namespace by the test above.
#[test]
#[ignore = "run inside a network namespace by dhcp_lease_from_dnsmasq_across_namespaces"]
fn client_in_namespace() {
    let Some(dir) = std::env::var_os(INNER).map(PathBuf::from) else {
        return;
    };
    let resolv = dir.join("resolv.conf");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = Network {
            interface: Some(CLIENT_IF.into()),
            ..Network::default()
        };
        let started = Instant::now();
        cairn_init::network::start(&config, &resolv)
            .await
            .expect("start");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "DHCP must not block start()"
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let text = std::fs::read_to_string(&resolv).unwrap_or_default();
            if text.contains("nameserver 10.99.0.53") {
                assert!(text.contains("search cairn.test"), "{text}");
                break;
            }
            assert!(Instant::now() < deadline, "no lease in 40 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let addr = Command::new("ip")
            .args(["-4", "addr", "show", "dev", CLIENT_IF])
            .output()
            .expect("ip addr");
        let addr = String::from_utf8_lossy(&addr.stdout);
        println!("{addr}");
        assert!(
            addr.contains("inet 10.99.0.") && addr.contains("/24"),
            "{addr}"
        );
        assert!(
            addr.contains("valid_lft 1"),
            "lease lifetime set on the address: {addr}"
        );
        let route = Command::new("ip")
            .args(["-4", "route", "show", "default"])
            .output()
            .expect("ip route");
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(
            route.contains("via 10.99.0.1") && route.contains(CLIENT_IF),
            "{route}"
        );
        if std::env::var_os(RENEW).is_some_and(|v| !v.is_empty()) {
            // dnsmasq's 2 min lease has T1 = 60 s; a renewal resets the lifetime.
            tokio::time::sleep(Duration::from_secs(70)).await;
            let addr = Command::new("ip")
                .args(["-4", "addr", "show", "dev", CLIENT_IF])
                .output()
                .expect("ip addr");
            let addr = String::from_utf8_lossy(&addr.stdout);
            println!("after T1: {addr}");
            let valid: u32 = addr
                .split("valid_lft ")
                .nth(1)
                .and_then(|r| r.split("sec").next())
                .and_then(|n| n.parse().ok())
                .expect("valid_lft");
            assert!(valid > 100, "renewed at T1: {addr}");
        }
        let lo = Command::new("ip")
            .args(["link", "show", "lo"])
            .output()
            .expect("ip link");
        assert!(
            String::from_utf8_lossy(&lo.stdout).contains("UP"),
            "lo is up"
        );
    });
}

#[test]
fn dhcp_on_two_interfaces() {
    if std::env::var_os(INNER).is_some() {
        return;
    }
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("cairn-dhcp2-{id}"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let mut lab = Lab {
        server_ns: format!("cairn-srv2-{id}"),
        client_ns: format!("cairn-cli2-{id}"),
        dnsmasq: None,
        dir: dir.clone(),
    };
    ip(&["netns", "add", &lab.server_ns]);
    ip(&["netns", "add", &lab.client_ns]);
    let leases = dir.join("leases");
    lab.serve(
        &[
            (CLIENT_IF, SERVER_IF, "10.99.0"),
            ("cairn-c1", "cairn-s1", "10.97.0"),
        ],
        &leases,
    );
    lab.run_half("two_clients_in_namespace", &dir);
}

/// The client half of `dhcp_on_two_interfaces`: a DHCP primary and a DHCP
/// further interface, each with its own lease, the primary's router as the
/// default route and the other's as the fallback (a higher metric), DNS in
/// rank order.
#[test]
#[ignore = "run inside a network namespace by dhcp_on_two_interfaces"]
fn two_clients_in_namespace() {
    let Some(dir) = std::env::var_os(INNER).map(PathBuf::from) else {
        return;
    };
    let resolv = dir.join("resolv.conf");
    let config = cairn_image::config::Config::parse(
        &format!(
            "version = 1\n[network]\ninterface = \"{CLIENT_IF}\"\n\
             [[network.interfaces]]\nname = \"cairn-c1\"\n"
        ),
        "test",
    )
    .expect("valid config")
    .network;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        cairn_init::network::start(&config, &resolv)
            .await
            .expect("start");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let text = std::fs::read_to_string(&resolv).unwrap_or_default();
            if text.contains("10.99.0.53") && text.contains("10.97.0.53") {
                assert!(
                    text.contains(
                        "search cairn.test\nnameserver 10.99.0.53\nnameserver 10.97.0.53\n"
                    ),
                    "one search domain, the primary's server first: {text}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "no two leases in 40 s: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a1 = show(&["-4", "addr", "show", "dev", "cairn-c1"]);
    assert!(a1.contains("inet 10.97.0."), "{a1}");
    let routes = show(&["-4", "route", "show", "default"]);
    println!("{routes}");
    let primary = routes
        .lines()
        .find(|l| l.contains("via 10.99.0.1"))
        .unwrap_or_else(|| panic!("the primary's default route: {routes}"));
    assert!(
        primary.contains(CLIENT_IF) && !primary.contains("metric"),
        "metric 0 on the primary: {primary}"
    );
    let further = routes
        .lines()
        .find(|l| l.contains("via 10.97.0.1"))
        .unwrap_or_else(|| panic!("the further interface's default route: {routes}"));
    assert!(
        further.contains("cairn-c1") && further.contains("metric 1025"),
        "{further}"
    );
    let chosen = show(&["-4", "route", "get", "192.0.2.1"]);
    assert!(
        chosen.contains("via 10.99.0.1"),
        "the primary's wins: {chosen}"
    );
}
