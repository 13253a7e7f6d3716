//! Node heartbeats on the embedded SQLite store, through the real server
//! and kubectl: Lease renewals are acknowledged from memory, a SIGTERM
//! writes the latest one, and `kill -9` loses at most the renewals while
//! every other acknowledged write survives.

mod common;

use common::{Server, acknowledged_writes, json, path_str, stored};

const LEASE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: kube-node-lease
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: node-1
  namespace: kube-node-lease
spec:
  holderIdentity: node-1
  leaseDurationSeconds: 40
  renewTime: \"2026-01-01T00:00:00.000000Z\"
";

/// Renews the Lease (a merge patch of `spec.renewTime` only, as a kubelet
/// does with an update) and returns the new resourceVersion.
fn renew(server: &Server, second: u32) -> String {
    let patch = format!(r#"{{"spec":{{"renewTime":"2026-01-01T00:00:{second:02}.000000Z"}}}}"#);
    server.kubectl(&[
        "patch",
        "lease",
        "node-1",
        "-n",
        "kube-node-lease",
        "--type",
        "merge",
        "-p",
        &patch,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

fn lease(server: &Server) -> (String, String) {
    let lease = json(&server.kubectl(&[
        "get",
        "lease",
        "node-1",
        "-n",
        "kube-node-lease",
        "-o",
        "json",
    ]));
    (
        lease["spec"]["renewTime"]
            .as_str()
            .expect("renewTime")
            .to_owned(),
        lease["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_owned(),
    )
}

fn start_with_lease() -> Server {
    let server = Server::start();
    let manifest = server.write("lease.yaml", LEASE);
    server.kubectl(&["apply", "-f", path_str(&manifest)]);
    server
}

#[test]
fn sigterm_keeps_the_latest_renewal() {
    let server = start_with_lease();
    renew(&server, 10);
    let rv = renew(&server, 20);
    assert_eq!(
        lease(&server),
        ("2026-01-01T00:00:20.000000Z".to_owned(), rv.clone())
    );
    let dir = server.terminate();
    let server = Server::start_in(dir);
    assert_eq!(
        lease(&server),
        ("2026-01-01T00:00:20.000000Z".to_owned(), rv)
    );
}

#[test]
fn kill_9_loses_only_renewals() {
    let server = start_with_lease();
    // The first patch adds kubectl-patch's managedFields entry: a real
    // change, written at once. Later ones change only the times.
    let renewed = renew(&server, 10);
    let kept = lease(&server);
    assert_eq!(kept.1, renewed);
    let written = acknowledged_writes(&server, 8);
    assert_eq!(written.len(), 6);
    let last = renew(&server, 20);
    let dir = server.stop(); // SIGKILL: no flush
    let server = Server::start_in(dir);
    assert_eq!(stored(&server), written, "every other write survives");
    assert_eq!(
        lease(&server),
        kept,
        "the renewals since the last flush are lost"
    );
    // Revisions handed out before the crash are not handed out again.
    let after = renew(&server, 30);
    let n = |rv: &str| rv.parse::<i64>().expect("numeric resourceVersion");
    assert!(
        n(&after) > n(&last) && n(&last) > n(&renewed),
        "{renewed} {last} {after}"
    );
}
