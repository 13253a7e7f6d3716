//! The manifests directory (`cairn server --manifests-dir`), against the
//! real server and kubectl: the initial apply, an update when a file
//! changes, nothing deleted when a file goes, a bad file isolated from the
//! good ones, and a CRD with its custom resources in one file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, json};

const APP_V1: &str = "\
# The ConfigMap comes before its Namespace: Namespaces are applied first.
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: demo
data:
  greeting: hello
  colour: blue
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
";

const APP_V2: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: demo
data:
  greeting: bonjour
";

const BAD_YAML: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: never\n";

/// A 422 first, then a good document in the same file.
const INVALID_THEN_GOOD: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: Not_A_Valid_Name
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: after-invalid
data:
  ok: \"yes\"
";

const UNKNOWN_KIND: &str =
    "apiVersion: gadgets.example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n";

/// The custom resource comes before its CRD in the file.
const CRD_AND_CR: &str = "\
apiVersion: example.com/v1
kind: Widget
metadata:
  name: first
spec:
  size: 3
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
";

fn wait_for(what: &str, server: &Server, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; server log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_json(server: &Server, args: &[&str]) -> Option<serde_json::Value> {
    let mut argv = vec!["get", "-o", "json"];
    argv.extend_from_slice(args);
    let out = server.try_kubectl(&argv);
    out.status
        .success()
        .then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write manifest");
}

#[test]
fn manifests_are_applied_updated_kept_and_isolated() {
    let manifests = tempfile::tempdir().expect("manifests dir");
    let dir = manifests.path();
    write(dir, "10-app.yaml", APP_V1);
    write(dir, "20-bad.yaml", BAD_YAML);
    write(dir, "30-invalid.yml", INVALID_THEN_GOOD);
    write(dir, "40-unknown.yaml", UNKNOWN_KIND);
    write(dir, "50-widgets.yaml", CRD_AND_CR);
    write(
        dir,
        "notes.txt",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n",
    );
    let server = Server::start_with(&[
        "--manifests-dir",
        common::path_str(dir),
        "--manifests-interval",
        "300ms",
    ]);

    // Initial apply.
    wait_for("the ConfigMap demo/app", &server, || {
        get_json(&server, &["configmap", "app", "-n", "demo"]).is_some()
    });
    let app = get_json(&server, &["configmap", "app", "-n", "demo"]).expect("app");
    assert_eq!(
        app["data"],
        serde_json::json!({"greeting": "hello", "colour": "blue"})
    );
    assert!(
        app["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{app}"
    );
    wait_for("the Widget from the same file as its CRD", &server, || {
        get_json(&server, &["widgets.example.com", "first"]).is_some()
    });
    let widget = get_json(&server, &["widgets.example.com", "first"]).expect("widget");
    assert_eq!(widget["spec"]["size"], 3);
    assert_eq!(widget["metadata"]["namespace"], "default");

    // The bad documents are reported by file and document; the rest applied.
    wait_for("the good document after a 422", &server, || {
        get_json(&server, &["configmap", "after-invalid"]).is_some()
    });
    assert!(get_json(&server, &["configmap", "never"]).is_none());
    assert!(get_json(&server, &["configmap", "ignored"]).is_none());
    wait_for("the error lines", &server, || {
        let log = server.log();
        log.contains("20-bad.yaml") && log.contains("40-unknown.yaml")
    });
    let log = server.log();
    let line = |file: &str| {
        log.lines()
            .find(|l| l.contains(file) && l.contains("not applied"))
            .unwrap_or_else(|| panic!("no error line for {file}:\n{log}"))
            .to_owned()
    };
    assert!(line("20-bad.yaml").contains("document 1"), "{log}");
    let invalid = line("30-invalid.yml");
    assert!(
        invalid.contains("document 1") && invalid.contains("422"),
        "{invalid}"
    );
    assert!(line("40-unknown.yaml").contains("Gadget"), "{log}");

    // A change updates: fields dropped from the manifest go, fields set by
    // others stay.
    server.kubectl(&["label", "configmap", "app", "-n", "demo", "owner=ops"]);
    write(dir, "10-app.yaml", APP_V2);
    wait_for("the updated ConfigMap", &server, || {
        get_json(&server, &["configmap", "app", "-n", "demo"])
            .is_some_and(|a| a["data"]["greeting"] == "bonjour")
    });
    let app = get_json(&server, &["configmap", "app", "-n", "demo"]).expect("app");
    assert_eq!(app["data"], serde_json::json!({"greeting": "bonjour"}));
    assert_eq!(app["metadata"]["labels"]["owner"], "ops");

    // Removing the file deletes nothing.
    std::fs::remove_file(dir.join("10-app.yaml")).expect("remove");
    std::thread::sleep(Duration::from_secs(2));
    assert!(get_json(&server, &["configmap", "app", "-n", "demo"]).is_some());
    assert!(get_json(&server, &["namespace", "demo"]).is_some());

    // A fixed file is applied on the next poll.
    write(
        dir,
        "20-bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed}\n",
    );
    wait_for("the fixed file", &server, || {
        get_json(&server, &["configmap", "fixed"]).is_some()
    });
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
