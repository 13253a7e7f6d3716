//! `cairn server` as an operator meets it, with the embedded SQLite: its
//! flags (bad values are usage errors), the serving certificate's names,
//! a CA supplied before the first start, `--write-kubeconfig`, bearer tokens
//! from `tokens.csv` and `--token` through real kubectl, and crash safety:
//! writes kubectl saw acknowledged survive `kill -9`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Server, acknowledged_writes, json, path_str, stored};

/// Runs `cairn server` with `args`, expecting it to exit at once.
fn server_exits(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--disable-agent", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let (code, err) = server_exits(&["--datastore-endpoint", "mysql://u:p@db/cairn"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unsupported datastore scheme \"mysql\""),
        "{err}"
    );
    let (code, err) = server_exits(&["--datastore-endpoint", "postgres://u@h:notaport/db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid postgresql endpoint"), "{err}");
    for bad in [
        &["--https-listen-port", "https"][..],
        &["--https-listen-port", "0"],
        &["--bind-address", "everywhere"],
        &["--tls-san", "not a name"],
        &["--write-kubeconfig-mode", "rw-r--r--"],
        &["--no-such-flag"],
        &["--service-cidr", "10.43.0.0/8"],
        &["--service-cidr", "fd00::/112"],
        &["--cluster-cidr", "10.42.0.0/25"],
        &["--cluster-cidr", "10.42.0.0"],
    ] {
        let (code, err) = server_exits(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("error:"), "{bad:?}: {err}");
    }
}

#[test]
fn a_broken_token_file_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tokens.csv"), "t1,jane,1\nt2,bob\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--disable-agent", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run cairn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tokens.csv line 2"), "{err}");
}

/// A kubeconfig that trusts the server's CA but carries no client
/// certificate: the identity comes from `--token`.
fn tokenless_kubeconfig(server: &Server) -> std::path::PathBuf {
    let ca = server.dir.path().join("pki/ca.crt");
    server.write(
        "token.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            server.url(),
            path_str(&ca)
        ),
    )
}

fn kubectl_with(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

#[test]
fn bearer_tokens_from_the_token_file_and_the_server_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tokens.csv"),
        "jane-secret,jane,1001,\"system:masters,dev\"\n",
    )
    .expect("write tokens");
    let server = Server::start_in_with(dir, &["--token", "join-secret"]);
    let kubeconfig = tokenless_kubeconfig(&server);

    let ok = kubectl_with(
        &kubeconfig,
        &[
            "--token=jane-secret",
            "get",
            "namespace",
            "default",
            "-o",
            "name",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "namespace/default"
    );

    let node = kubectl_with(
        &kubeconfig,
        &["--token=join-secret", "get", "ns", "-o", "name"],
    );
    assert!(
        node.status.success(),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );

    // An unknown token is refused. (Anonymous requests: api_kubectl.rs.)
    let out = kubectl_with(&kubeconfig, &["--token=wrong", "get", "ns"]);
    assert!(!out.status.success(), "a wrong token was let in");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized"), "{err}");
}

#[test]
fn tls_sans_are_served_and_a_change_reissues_from_the_same_ca() {
    let server = Server::start_with(&["--tls-san", "api.cairn.test", "--tls-san", "10.11.12.13"]);
    let names = |server: &Server, name: &str| {
        server.try_kubectl(&["--tls-server-name", name, "get", "ns", "-o", "name"])
    };
    assert!(names(&server, "api.cairn.test").status.success());
    assert!(names(&server, "localhost").status.success());
    let refused = names(&server, "other.cairn.test");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("x509"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca");

    let dir = server.stop();
    let server = Server::start_in_with(dir, &["--tls-san", "other.cairn.test"]);
    assert!(names(&server, "other.cairn.test").status.success());
    assert!(!names(&server, "api.cairn.test").status.success());
    assert_eq!(
        std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca"),
        ca,
        "the CA is kept"
    );
}

#[test]
fn write_kubeconfig_with_a_mode() {
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("etc/cairn/cairn.yaml");
    let server = Server::start_with(&[
        "--write-kubeconfig",
        path_str(&path),
        "--write-kubeconfig-mode",
        "0644",
    ]);
    let mode = std::fs::metadata(&path)
        .expect("kubeconfig")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let listed = kubectl_with(&path, &["get", "ns", "default", "-o", "name"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    drop(server);
}

#[test]
fn a_ca_supplied_before_the_first_start_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/C=FR/O=Acme Edge/CN=Acme Root CA",
        ])
        .arg("-keyout")
        .arg(pki.join("ca.key"))
        .arg("-out")
        .arg(pki.join("ca.crt"))
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ca = std::fs::read(pki.join("ca.crt")).expect("ca");
    let server = Server::start_in(dir);
    assert_eq!(
        std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca"),
        ca
    );
    // kubectl verifies the serving certificate against this CA, and the
    // server verifies the admin certificate it issued from it.
    server.kubectl(&["get", "ns", "default"]);
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(server.dir.path().join("pki/ca.crt"))
        .arg(server.dir.path().join("pki/server.crt"))
        .output()
        .expect("openssl verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let server = Server::start();
    let written = acknowledged_writes(&server, 12);
    assert_eq!(written.len(), 10);
    let dir = server.stop(); // SIGKILL: no shutdown, no checkpoint
    let server = Server::start_in(dir);
    assert_eq!(stored(&server), written);
}

/// `kubectl create token`: a signed service account token that
/// authenticates, too short a duration refused, a token bound to a pod, and
/// tokens that stop working when their service account or pod is deleted
/// or when they are tampered with.
#[test]
fn service_account_tokens_from_kubectl_create_token() {
    let server = Server::start();
    let kubeconfig = tokenless_kubeconfig(&server);
    server.kubectl(&["create", "serviceaccount", "builder"]);
    let token = server.kubectl(&["create", "token", "builder"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let works = |token: &str| {
        let out = kubectl_with(
            &kubeconfig,
            &[&format!("--token={token}"), "get", "ns", "-o", "name"],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), err)
    };
    let (ok, err) = works(token);
    assert!(ok, "a fresh token authenticates: {err}");
    // Who the token is: `kubectl auth whoami` (SelfSubjectReview) and a TokenReview.
    let whoami = kubectl_with(
        &kubeconfig,
        &[
            &format!("--token={token}"),
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    let whoami = String::from_utf8_lossy(&whoami.stdout).into_owned();
    assert!(
        whoami.starts_with("system:serviceaccount:default:builder "),
        "{whoami}"
    );
    assert!(
        whoami.contains("system:serviceaccounts:default"),
        "{whoami}"
    );
    let review = server.write(
        "review.json",
        &format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}"}}}}"#
        ),
    );
    // kubectl validates a review kind itself, from /openapi/v2.
    let reviewed = json(&server.kubectl(&["create", "-f", path_str(&review), "-o", "json"]));
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(
        reviewed["status"]["user"]["username"],
        "system:serviceaccount:default:builder"
    );
    let bogus = server.write(
        "bogus.json",
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"nope"}}"#,
    );
    let reviewed = json(&server.kubectl(&["create", "-f", path_str(&bogus), "-o", "json"]));
    assert_eq!(reviewed["status"]["authenticated"], false, "{reviewed}");
    // Access reviews answer what the server enforces today: everything.
    assert_eq!(
        server.kubectl(&["auth", "can-i", "create", "pods"]).trim(),
        "yes"
    );
    let listed = server.kubectl(&["auth", "can-i", "--list"]);
    assert!(listed.contains("*.*"), "{listed}");
    assert_eq!(
        server.kubectl(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        "cairn-admin"
    );
    // A changed payload breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1].insert(4, 'x');
    let (ok, err) = works(&parts.join("."));
    assert!(!ok && err.contains("Unauthorized"), "tampered token: {err}");

    let err = server.kubectl_fails(&["create", "token", "builder", "--duration=5m"]);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = server.kubectl_fails(&["create", "token", "nobody"]);
    assert!(
        err.contains("serviceaccounts \"nobody\" not found"),
        "{err}"
    );

    // Bound to a pod: dies with the pod.
    server.kubectl(&["run", "holder", "--image=busybox", "--restart=Never"]);
    let bound = server.kubectl(&[
        "create",
        "token",
        "builder",
        "--bound-object-kind=Pod",
        "--bound-object-name=holder",
    ]);
    assert!(works(bound.trim()).0, "a pod-bound token authenticates");
    server.kubectl(&[
        "delete",
        "pod",
        "holder",
        "--wait=false",
        "--grace-period=0",
        "--force",
    ]);
    let (ok, err) = works(bound.trim());
    assert!(
        !ok && err.contains("Unauthorized"),
        "token of a deleted pod: {err}"
    );

    // Dies with its service account, even one re-created under the same name.
    server.kubectl(&["delete", "serviceaccount", "builder"]);
    server.kubectl(&["create", "serviceaccount", "builder"]);
    let (ok, err) = works(token);
    assert!(
        !ok && err.contains("Unauthorized"),
        "token of a deleted account: {err}"
    );
    assert!(works(server.kubectl(&["create", "token", "builder"]).trim()).0);
}

#[test]
fn the_pod_and_service_networks_are_the_flags() {
    let server = Server::start_with(&[
        "--service-cidr",
        "10.96.0.0/12",
        "--cluster-cidr",
        "10.50.0.0/16",
    ]);
    let ip = server.kubectl(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip, "10.96.0.1");
    let node = server.dir.path().join("node.yaml");
    std::fs::write(&node, "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n").expect("write");
    server.kubectl(&["create", "-f", common::path_str(&node)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let cidr = server.kubectl(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"]);
        if !cidr.is_empty() {
            assert!(
                cidr.starts_with("10.50.") && cidr.ends_with(".0/24"),
                "{cidr}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no podCIDR from node IPAM"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let svc = server.dir.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n",
    )
    .expect("write");
    server.kubectl(&["create", "-f", common::path_str(&svc)]);
    let ip = server.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let addr: std::net::Ipv4Addr = ip.parse().expect("an IPv4 ClusterIP");
    // In 10.96.0.0/12.
    assert_eq!(
        u32::from(addr) >> 20,
        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20,
        "{ip}"
    );
}
