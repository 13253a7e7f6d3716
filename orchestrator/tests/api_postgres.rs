//! `cairn server` on PostgreSQL (`--datastore-endpoint postgres://...`),
//! driven by real kubectl: two servers on one database serve one cluster
//! (each accepts the other's admin kubeconfig since their data dirs share
//! the CA; a write through one reaches a GET and a `kubectl get -w` on the
//! other), a PostgreSQL restart turns requests into 503s and then heals
//! (the open watch misses nothing), and acknowledged writes survive
//! `kill -9` of the server.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use common::{Server, acknowledged_writes, path_str, stored};

fn configmap(server: &Server, name: &str, value: &str) -> String {
    let manifest = server.write(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  v: \"{value}\"\n"
        ),
    );
    server.kubectl(&[
        "apply",
        "-f",
        path_str(&manifest),
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

/// `kubectl get configmaps -w` on `server`, its output lines on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(server: &Server) -> Watcher {
        let mut child = server
            .kubectl_cmd(&[
                "get",
                "configmaps",
                "--watch",
                "-o",
                "custom-columns=NAME:.metadata.name,V:.data.v,RV:.metadata.resourceVersion",
                "--no-headers",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get -w");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// Waits for a line containing every one of `words`.
    fn expect(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if words.iter().all(|w| line.contains(w)) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("the watch never printed {words:?}; it printed {seen:?}");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_servers_one_postgresql() {
    let pg = PgServer::start();
    let url = pg.database_url("shared");
    let a = Server::start_with(&["--datastore-endpoint", &url]);
    let b = Server::start_in_with(a.dir_sharing_ca(), &["--datastore-endpoint", &url]);

    // One cluster: each server accepts the other's admin kubeconfig.
    let b_url = b.url();
    a.kubectl(&["--server", &b_url, "get", "namespace", "default"]);
    b.kubectl(&["--server", &a.url(), "get", "namespace", "default"]);

    // A write through A reaches a watch and a GET on B.
    let watch = Watcher::start(&b);
    std::thread::sleep(Duration::from_millis(500));
    let rv = configmap(&a, "via-a", "one");
    watch.expect(&["via-a", "one", &rv]);
    let got = b.kubectl(&[
        "get",
        "configmap",
        "via-a",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(got, rv);
    // And the other way round.
    let rv2 = configmap(&b, "via-a", "two");
    watch.expect(&["via-a", "two", &rv2]);

    // PostgreSQL goes away: requests fail with 503 and /readyz says why, then heal.
    let ready = a.kubectl(&["get", "--raw", "/readyz?verbose"]);
    assert!(ready.contains("[+]etcd ok"), "{ready}");
    pg.stop();
    let not_ready = a.try_kubectl(&["get", "--raw", "/readyz?verbose"]);
    assert!(
        !not_ready.status.success(),
        "/readyz passed without a datastore"
    );
    assert!(
        a.kubectl(&["get", "--raw", "/livez"]) == "ok",
        "/livez must not depend on the datastore"
    );
    let down = a.try_kubectl(&["get", "configmaps"]);
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("ServiceUnavailable"), "{err}");
    let down = a.try_kubectl(&["delete", "configmap", "via-a"]);
    assert!(!down.status.success());
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.try_kubectl(&["get", "configmaps"]).status.success() {
        assert!(Instant::now() < deadline, "server A did not reconnect");
        std::thread::sleep(Duration::from_millis(200));
    }
    // B's watch, open across the outage, sees writes made after it.
    let rv3 = configmap(&a, "after-restart", "three");
    watch.expect(&["after-restart", "three", &rv3]);
    let rv4 = configmap(&a, "via-a", "four");
    watch.expect(&["via-a", "four", &rv4]);
    assert_eq!(
        b.kubectl(&["get", "configmap", "via-a", "-o", "jsonpath={.data.v}"]),
        "four"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_on_postgresql() {
    let pg = PgServer::start();
    let url = pg.database_url("crash");
    let server = Server::start_with(&["--datastore-endpoint", &url]);
    let written = acknowledged_writes(&server, 12);
    let dir = server.stop();
    let server = Server::start_in_with(dir, &["--datastore-endpoint", &url]);
    assert_eq!(stored(&server), written);
}
