//! The API server against the real `kubectl` (v1.32, from the PATH): the
//! built `cairn` binary runs `cairn server` on a free loopback port with a
//! temporary data dir, and kubectl uses the admin kubeconfig it writes.
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use common::{Server, create_namespace_t, json, path_str};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CONFIGMAP_X: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: x
  labels:
    app: web
data:
  a: \"1\"
  greeting: hello world
";

#[test]
fn version_and_discovery() {
    let server = Server::start();
    let out = server.try_kubectl(&["version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Server Version: v1.32.0-cairn"), "{stdout}");
    assert!(
        !stderr.contains("WARNING"),
        "version skew warning: {stderr}"
    );

    let resources = server.kubectl(&["api-resources"]);
    for line in ["configmaps", "cm", "namespaces", "ns", "secrets"] {
        assert!(resources.contains(line), "{resources}");
    }
    assert_eq!(server.kubectl(&["get", "--raw", "/healthz"]), "ok");
    assert_eq!(server.kubectl(&["get", "--raw", "/readyz"]), "ok");
}

#[test]
fn namespaces_and_configmaps_round_trip() {
    let server = Server::start();
    let ns = server.kubectl(&["get", "ns"]);
    assert!(ns.lines().any(|l| l.starts_with("default ")), "{ns}");

    create_namespace_t(&server);
    let ns = json(&server.kubectl(&["get", "ns", "t", "-o", "json"]));
    assert_eq!(ns["status"]["phase"], "Active");

    let cm = server.write("cm.yaml", CONFIGMAP_X);
    let out = server.kubectl(&["-n", "t", "apply", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");

    let got = json(&server.kubectl(&["-n", "t", "get", "cm", "x", "-o", "json"]));
    assert_eq!(got["data"]["a"], "1");
    assert_eq!(got["data"]["greeting"], "hello world");
    assert_eq!(got["metadata"]["namespace"], "t");
    assert!(
        got["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36),
        "{got}"
    );
    assert!(got["metadata"]["creationTimestamp"].is_string(), "{got}");
    assert!(
        got["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| rv.parse::<i64>().is_ok())
    );

    let list = server.kubectl(&["-n", "t", "get", "cm"]);
    assert!(list.lines().any(|l| l.starts_with("x ")), "{list}");
    let selected = server.kubectl(&["-n", "t", "get", "cm", "-l", "app=web", "-o", "name"]);
    assert_eq!(selected.trim(), "configmap/x");
    let none = server.kubectl(&["-n", "t", "get", "cm", "-l", "app=db", "-o", "name"]);
    assert_eq!(none.trim(), "");

    // Paging: three more objects read two at a time.
    for name in ["p1", "p2", "p3"] {
        let body =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
        let file = server.write(&format!("{name}.json"), &body);
        server.kubectl(&[
            "create",
            "--raw",
            "/api/v1/namespaces/t/configmaps",
            "-f",
            path_str(&file),
        ]);
    }
    let page = json(&server.kubectl(&["get", "--raw", "/api/v1/namespaces/t/configmaps?limit=2"]));
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue token");
    let rest = json(&server.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/t/configmaps?limit=2&continue={token}"),
    ]));
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(2));
    assert!(rest["metadata"]["continue"].is_null(), "{rest}");
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        page["metadata"]["resourceVersion"]
    );
    // kubectl pages with --chunk-size too.
    let all = server.kubectl(&["-n", "t", "get", "cm", "--chunk-size=1", "-o", "name"]);
    assert_eq!(all.lines().count(), 4, "{all}");

    let out = server.kubectl(&["-n", "t", "delete", "cm", "x"]);
    assert!(out.contains("configmap \"x\" deleted"), "{out}");
    let out = server.try_kubectl(&["-n", "t", "get", "cm", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(NotFound)") && stderr.contains("configmaps \"x\" not found"),
        "{stderr}"
    );
}

#[test]
fn watch_sees_a_later_create() {
    let server = Server::start();
    create_namespace_t(&server);
    let mut watcher = server
        .kubectl_cmd(&[
            "-n",
            "t",
            "get",
            "cm",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give kubectl time to list (empty) and open its watch.
    std::thread::sleep(Duration::from_secs(2));
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    server.kubectl(&["-n", "t", "apply", "-f", path_str(&cm)]);

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let added_x = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "x")
    };
    while !seen.lines().any(added_x) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = watcher.kill();
                panic!("no ADDED event for x from kubectl get -w; saw:\n{seen}");
            }
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();

    // A raw watch resumes from a resourceVersion and ends at timeoutSeconds.
    let got = json(&server.kubectl(&["-n", "t", "get", "cm", "x", "-o", "json"]));
    let rv: i64 = got["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("rv");
    server.kubectl(&["-n", "t", "delete", "cm", "x"]);
    let events = server.kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/t/configmaps?watch=true&resourceVersion={}&timeoutSeconds=1",
            rv - 1
        ),
    ]);
    let types: Vec<String> = events
        .lines()
        .map(|l| json(l)["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(types, ["ADDED", "DELETED"], "{events}");
}

#[test]
fn stale_replace_conflicts() {
    let server = Server::start();
    create_namespace_t(&server);
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    server.kubectl(&["-n", "t", "apply", "-f", path_str(&cm)]);
    let stale = server.kubectl(&["-n", "t", "get", "cm", "x", "-o", "json"]);

    let mut fresh = json(&stale);
    fresh["data"]["a"] = "2".into();
    let fresh_file = server.write("fresh.json", &fresh.to_string());
    server.kubectl(&["-n", "t", "replace", "-f", path_str(&fresh_file)]);
    let got = json(&server.kubectl(&["-n", "t", "get", "cm", "x", "-o", "json"]));
    assert_eq!(got["data"]["a"], "2");
    assert_eq!(got["metadata"]["uid"], fresh["metadata"]["uid"]);

    let mut old = json(&stale);
    old["data"]["a"] = "3".into();
    let old_file = server.write("stale.json", &old.to_string());
    let out = server.try_kubectl(&["-n", "t", "replace", "-f", path_str(&old_file)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(Conflict)") && stderr.contains("the object has been modified"),
        "{stderr}"
    );
}

#[test]
fn hostile_input_gets_status_errors() {
    let server = Server::start();
    create_namespace_t(&server);
    let post = |name: &str, body: &str, path: &str| {
        let file = server.write(name, body);
        let out = server.try_kubectl(&["create", "--raw", path, "-f", path_str(&file)]);
        assert!(!out.status.success(), "{name} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cms = "/api/v1/namespaces/t/configmaps";
    assert!(post("bad.json", "{bad", cms).contains("(BadRequest)"));
    let wrong_kind = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#;
    assert!(post("kind.json", wrong_kind, cms).contains("(BadRequest)"));
    let bad_name = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#;
    let invalid = post("name.json", bad_name, cms);
    assert!(
        invalid.contains("The ConfigMap \"Bad_Name\" is invalid"),
        "{invalid}"
    );
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    assert!(post("big.json", &big, cms).contains("(RequestEntityTooLarge)"));
    let ok = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"y"}}"#;
    let missing_ns = post("ns.json", ok, "/api/v1/namespaces/nope/configmaps");
    assert!(
        missing_ns.contains("(NotFound)") && missing_ns.contains("namespaces \"nope\" not found"),
        "{missing_ns}"
    );
    server.kubectl(&[
        "create",
        "--raw",
        cms,
        "-f",
        path_str(&server.write("y.json", ok)),
    ]);
    assert!(post("again.json", ok, cms).contains("(AlreadyExists)"));
    let generated = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"gen-"}}"#;
    let file = server.write("gen.json", generated);
    let created = json(&server.kubectl(&["create", "--raw", cms, "-f", path_str(&file)]));
    assert!(
        created["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
    );
    // The server is still up and well.
    assert_eq!(server.kubectl(&["get", "--raw", "/livez"]), "ok");
}

#[test]
fn requests_without_a_client_certificate_are_refused() {
    let server = Server::start();
    let admin = std::fs::read_to_string(server.kubeconfig()).expect("kubeconfig");
    let anonymous: String = admin
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    // Without any credentials kubectl would prompt for a password on 401;
    // a bearer token nobody issued makes it report the 401 instead.
    let anonymous = anonymous.replace("  user:\n", "  user:\n    token: not-a-credential\n");
    let anon = server.write("anonymous.kubeconfig", &anonymous);
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &anon)
        .args(["get", "ns"])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // kubectl words a 401 either way, depending on the Status message.
    assert!(
        stderr.contains("You must be logged in to the server (Unauthorized)")
            || stderr.contains("the server has asked for the client to provide credentials"),
        "{stderr}"
    );

    // The raw answer: a 401 Status over a TLS connection without a client certificate.
    let response = https_get_without_client_cert(&server, "/api/v1/namespaces");
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    let status = json(body);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert_eq!(status["code"], 401);
}

/// One HTTP/1.1 GET over TLS, trusting the cluster CA, with no client certificate.
fn https_get_without_client_cert(server: &Server, path: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("ca root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    // The server may close without close_notify; what was read is the answer.
    let _ = tls.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn restart_reuses_the_pki_and_keeps_objects() {
    let server = Server::start();
    create_namespace_t(&server);
    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca");
    let dir = server.stop();
    let server = Server::start_in(dir);
    assert_eq!(
        std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca"),
        ca
    );
    let ns = server.kubectl(&["get", "ns", "-o", "name"]);
    assert!(
        ns.contains("namespace/default") && ns.contains("namespace/t"),
        "{ns}"
    );
}
