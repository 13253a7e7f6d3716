//! CustomResourceDefinitions and custom resources against the real
//! `kubectl` (v1.32): a CRD and a custom resource in one manifest, tables
//! with printer columns, short names and categories, `explain`, schema
//! validation (422 naming fields), Strict unknown fields, merge/JSON
//! patches (strategic merge refused), the status and scale subresources,
//! watches, CRD deletion, and a cluster-scoped CRD.
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, json, path_str};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    kind: Widget
    shortNames: [wd]
    categories: [gadgets]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Ready
      type: string
      jsonPath: .status.conditions[?(@.type=="Ready")].status
    - name: Size
      type: string
      priority: 1
      jsonPath: .spec.size
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        description: A Widget is a test kind.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [color]
            properties:
              color:
                type: string
                description: The colour of the widget.
                enum: [red, green, blue]
              replicas:
                type: integer
                minimum: 0
                default: 1
              size:
                type: string
                default: small
                pattern: '^(small|large)$'
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

const WIDGET: &str = "apiVersion: example.com/v1
kind: Widget
metadata:
  name: first
  namespace: default
spec:
  color: red
";

fn get(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    json(&server.kubectl(&all))
}

/// Applies the CRD and a Widget from one file. kubectl maps every
/// document before it sends any, and the Widget's kind does not exist yet:
/// like against kube-apiserver, the first apply creates the CRD and fails
/// for the Widget; once the CRD is established the same apply succeeds.
fn install(server: &Server) {
    let manifest = server.write("widgets.yaml", &format!("{CRD}---\n{WIDGET}"));
    let first = server.try_kubectl(&["apply", "-f", path_str(&manifest)]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout
            .contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{stdout}"
    );
    assert!(
        !first.status.success(),
        "kubectl 1.32 maps the Widget before the CRD exists"
    );
    server.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    let again = server.kubectl(&["apply", "-f", path_str(&manifest)]);
    assert!(
        again.contains("widget.example.com/first created"),
        "{again}"
    );
}

#[test]
fn custom_resources_behave_like_built_in_ones() {
    let server = Server::start();
    install(&server);

    // The CRD's status is set by the server.
    let crd = get(&server, &["crd", "widgets.example.com"]);
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));

    // Tables: printer columns, -o wide, short name, category, defaults.
    let table = server.kubectl(&["get", "wd"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "COLOR", "REPLICAS", "READY", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["first", "red", "1"], "{table}");
    let wide = server.kubectl(&["get", "widgets", "-o", "wide"]);
    assert!(wide.lines().next().unwrap_or("").contains("SIZE"), "{wide}");
    assert!(wide.contains("small"), "{wide}");
    let category = server.kubectl(&["get", "gadgets"]);
    assert!(category.contains("first"), "{category}");
    let resources = server.kubectl(&["api-resources", "--api-group=example.com"]);
    let line = resources
        .lines()
        .find(|l| l.starts_with("widgets"))
        .unwrap_or_default();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        ["widgets", "wd", "example.com/v1", "true", "Widget"],
        "{resources}"
    );
    let described = server.kubectl(&["describe", "widget", "first"]);
    assert!(described.contains("Kind:         Widget"), "{described}");
    assert!(described.contains("Color:"), "{described}");

    // explain reads the CRD's schema from /openapi/v3.
    let explained = server.kubectl(&["explain", "widget.spec"]);
    assert!(
        explained.contains("What the widget should be."),
        "{explained}"
    );
    assert!(
        explained.contains("color\t<string> -required-"),
        "{explained}"
    );
    assert!(
        explained.contains("The colour of the widget."),
        "{explained}"
    );

    // Schema validation: 422 with every field named.
    let bad = server.write(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  color: pink\n  replicas: -2\n  size: huge\n",
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&bad)]);
    assert!(err.contains("The Widget \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.color: Unsupported value: \"pink\": supported values: \"red\", \"green\", \"blue\""), "{err}");
    assert!(err.contains("spec.replicas: Invalid value: -2: spec.replicas in body should be greater than or equal to 0"), "{err}");
    assert!(
        err.contains("spec.size in body should match '^(small|large)$'"),
        "{err}"
    );
    let missing = server.write(
        "missing.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec: {}\n",
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&missing)]);
    assert!(err.contains("spec.color: Required value"), "{err}");

    // Unknown fields: refused under kubectl's default Strict validation,
    // pruned when validation is off.
    let unknown = server.write(
        "unknown.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: unk\nspec:\n  color: red\n  bogus: 1\n",
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&unknown)]);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    server.kubectl(&["apply", "--validate=false", "-f", path_str(&unknown)]);
    let pruned = get(&server, &["widget", "unk"]);
    assert!(pruned["spec"].get("bogus").is_none(), "{pruned}");

    // Patches: merge and JSON; strategic merge is 415 for custom kinds.
    server.kubectl(&[
        "patch",
        "widget",
        "first",
        "--type=merge",
        "-p",
        r#"{"spec":{"color":"blue"}}"#,
    ]);
    let w = get(&server, &["widget", "first"]);
    assert_eq!(w["spec"]["color"], "blue");
    assert_eq!(w["metadata"]["generation"], 2);
    let err = server.kubectl_fails(&[
        "patch",
        "widget",
        "first",
        "-p",
        r#"{"spec":{"color":"green"}}"#,
    ]);
    assert!(
        err.contains("application/strategic-merge-patch+json is not supported"),
        "{err}"
    );
    server.kubectl(&[
        "patch",
        "widget",
        "first",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/color","value":"green"}]"#,
    ]);

    // status: the subresource writes only status, the main resource never.
    server.kubectl(&[
        "patch", "widget", "first", "--subresource=status", "--type=merge", "-p",
        r#"{"spec":{"color":"red"},"status":{"replicas":2,"selector":"app=w","conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    server.kubectl(&[
        "patch",
        "widget",
        "first",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    let w = get(&server, &["widget", "first"]);
    assert_eq!(w["spec"]["color"], "green");
    assert_eq!(w["status"]["replicas"], 2);
    assert_eq!(w["metadata"]["generation"], 3);
    let err = server.kubectl_fails(&[
        "patch",
        "widget",
        "first",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":"two"}}"#,
    ]);
    assert!(err.contains("status.replicas"), "{err}");
    let ready = server.kubectl(&["get", "wd", "first", "--no-headers"]);
    assert!(ready.split_whitespace().nth(3) == Some("True"), "{ready}");

    // scale: through the CRD's paths.
    let out = server.kubectl(&["scale", "widget", "first", "--replicas=4"]);
    assert!(out.contains("widget.example.com/first scaled"), "{out}");
    let scale = json(&server.kubectl(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/widgets/first/scale",
    ]));
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(
        scale["status"],
        serde_json::json!({"replicas": 2, "selector": "app=w"})
    );
    assert_eq!(get(&server, &["widget", "first"])["spec"]["replicas"], 4);

    // Selectors and watches.
    server.kubectl(&["label", "widget", "first", "tier=gold"]);
    let selected = server.kubectl(&["get", "wd", "-l", "tier=gold", "-o", "name"]);
    assert_eq!(selected.trim(), "widget.example.com/first");
    watch_sees_a_patch(&server);

    // Deleting the CRD removes the kind and its objects.
    server.kubectl(&["delete", "crd", "widgets.example.com"]);
    let resources = server.kubectl(&["api-resources"]);
    assert!(!resources.contains("example.com"), "{resources}");
    let err = server.kubectl_fails(&["get", "wd"]);
    assert!(
        err.contains("the server doesn't have a resource type \"wd\""),
        "{err}"
    );
    let crd_only = server.write("crd.yaml", CRD);
    server.kubectl(&["apply", "-f", path_str(&crd_only)]);
    let list = get(&server, &["widgets", "-A"]);
    assert_eq!(
        list["items"],
        serde_json::json!([]),
        "objects outlived their CRD"
    );
}

fn watch_sees_a_patch(server: &Server) {
    let mut watcher = server
        .kubectl_cmd(&[
            "get",
            "widgets",
            "--watch",
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
        // One event per line.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    server.kubectl(&[
        "patch",
        "widget",
        "first",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":"large"}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => {
                let e = json(&event);
                if e["type"] == "MODIFIED" && e["object"]["spec"]["size"] == "large" {
                    break;
                }
                seen.push(event);
            }
            Err(_) => {
                let _ = watcher.kill();
                panic!("no MODIFIED event from kubectl get -w; saw: {seen:?}");
            }
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
}

const CLUSTER_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: regions.infra.example.org
spec:
  group: infra.example.org
  scope: Cluster
  names:
    plural: regions
    kind: Region
  versions:
  - name: v1alpha1
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

#[test]
fn cluster_scoped_crds_and_invalid_crds() {
    let server = Server::start();
    let crd = server.write("region-crd.yaml", CLUSTER_CRD);
    server.kubectl(&["apply", "-f", path_str(&crd)]);
    let region = server.write(
        "region.yaml",
        "apiVersion: infra.example.org/v1alpha1\nkind: Region\nmetadata:\n  name: north\nspec:\n  anything: {goes: [1, 2]}\n",
    );
    let out = server.kubectl(&["apply", "-f", path_str(&region)]);
    assert!(
        out.contains("region.infra.example.org/north created"),
        "{out}"
    );
    let got = get(&server, &["region", "north"]);
    assert_eq!(got["spec"]["anything"]["goes"], serde_json::json!([1, 2]));
    assert!(got["metadata"].get("namespace").is_none(), "{got}");
    let table = server.kubectl(&["get", "regions"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "AGE"], "{table}");
    let resources = server.kubectl(&["api-resources", "--namespaced=false"]);
    assert!(
        resources.lines().any(|l| l.starts_with("regions ")),
        "{resources}"
    );
    server.kubectl(&["delete", "region", "north"]);
    assert_eq!(get(&server, &["regions"])["items"], serde_json::json!([]));

    // An invalid CRD is a 422 naming each field.
    let bad = server.write(
        "bad-crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: things.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: stuff, kind: Thing}
  versions:
  - name: v1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            properties:
              a: {type: string}
",
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&bad)]);
    assert!(
        err.contains("The CustomResourceDefinition \"things.example.com\" is invalid"),
        "{err}"
    );
    assert!(err.contains("metadata.name: Invalid value: \"things.example.com\": must be spec.names.plural+\".\"+spec.group"), "{err}");
    assert!(
        err.contains("must have exactly one version marked as storage version"),
        "{err}"
    );
    assert!(
        err.contains(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value"
        ),
        "{err}"
    );
}

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn crds_reach_every_server_on_one_postgresql() {
    let pg = common::postgres::PgServer::start();
    let url = pg.database_url("crds");
    let a = Server::start_with(&["--datastore-endpoint", &url]);
    let b = Server::start_in_with(a.dir_sharing_ca(), &["--datastore-endpoint", &url]);
    let crd = a.write("region-crd.yaml", CLUSTER_CRD);
    a.kubectl(&["apply", "-f", path_str(&crd)]);
    // b learns about the CRD from its watch on the shared store.
    eventually("server b serves regions", || {
        b.try_kubectl(&["get", "regions"]).status.success()
    });
    let region = b.write(
        "region.yaml",
        "apiVersion: infra.example.org/v1alpha1\nkind: Region\nmetadata:\n  name: south\nspec: {}\n",
    );
    b.kubectl(&["apply", "-f", path_str(&region)]);
    assert_eq!(get(&a, &["region", "south"])["metadata"]["name"], "south");
    b.kubectl(&["delete", "crd", "regions.infra.example.org"]);
    eventually("server a stops serving regions", || {
        !a.kubectl(&["api-resources"]).contains("infra.example.org")
    });
}
