//! Table output and PATCH against the real `kubectl` (v1.32, from the
//! PATH): `kubectl get` columns as upstream prints them, `get -w` rows,
//! `kubectl patch` with each patch type, and `kubectl apply` of a changed
//! manifest (a strategic merge patch computed by kubectl).
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use common::{Server, create_namespace_t, json, path_str};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The words of the header line of `kubectl get` output.
fn header(out: &str) -> Vec<&str> {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// The cells of the row whose first column is `name`.
fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{out}"))
}

/// An `AGE` cell of something created moments ago.
fn is_recent_age(age: &str) -> bool {
    age.strip_suffix('s')
        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n < 120))
}

const CONFIGMAP_X: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: x
data:
  a: \"1\"
  b: \"2\"
";

const SECRET_S: &str = "apiVersion: v1
kind: Secret
metadata:
  name: s
type: kubernetes.io/basic-auth
stringData:
  username: admin
  password: hunter2
";

#[test]
fn get_prints_upstream_columns() {
    let server = Server::start();
    create_namespace_t(&server);
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);
    let secret = server.write("secret.yaml", SECRET_S);
    server.kubectl(&[
        "-n",
        "t",
        "apply",
        "--validate=false",
        "-f",
        path_str(&secret),
    ]);

    let ns = server.kubectl(&["get", "ns"]);
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"], "{ns}");
    let t = row(&ns, "t");
    assert_eq!(t[1], "Active", "{ns}");
    assert!(is_recent_age(t[2]), "{ns}");

    let cms = server.kubectl(&["-n", "t", "get", "cm"]);
    assert_eq!(header(&cms), ["NAME", "DATA", "AGE"], "{cms}");
    let x = row(&cms, "x");
    assert_eq!(x[1], "2", "{cms}");
    assert!(is_recent_age(x[2]), "{cms}");
    // One object is a one-row table too.
    let one = server.kubectl(&["-n", "t", "get", "cm", "x"]);
    assert_eq!(header(&one), ["NAME", "DATA", "AGE"], "{one}");
    assert_eq!(one.lines().count(), 2, "{one}");
    // Upstream has no wide columns for ConfigMaps: -o wide prints the same.
    let wide = server.kubectl(&["-n", "t", "get", "cm", "-o", "wide"]);
    assert_eq!(header(&wide), ["NAME", "DATA", "AGE"], "{wide}");

    let secrets = server.kubectl(&["-n", "t", "get", "secrets"]);
    assert_eq!(
        header(&secrets),
        ["NAME", "TYPE", "DATA", "AGE"],
        "{secrets}"
    );
    let s = row(&secrets, "s");
    assert_eq!(&s[1..3], ["kubernetes.io/basic-auth", "2"], "{secrets}");

    // All namespaces adds kubectl's NAMESPACE column in front.
    let all = server.kubectl(&["get", "cm", "-A"]);
    assert_eq!(header(&all), ["NAMESPACE", "NAME", "DATA", "AGE"], "{all}");
    // -o json asks for the object, not a Table.
    let table = json(&server.kubectl(&["-n", "t", "get", "cm", "x", "-o", "json"]));
    assert_eq!(table["kind"], "ConfigMap", "{table}");
}

#[test]
fn watch_prints_rows() {
    let server = Server::start();
    create_namespace_t(&server);
    let mut watcher = server
        .kubectl_cmd(&["-n", "t", "get", "cm", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    std::thread::sleep(Duration::from_secs(2));
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let row_x = |line: &str| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells.len() == 3 && cells[0] == "x" && cells[1] == "2" && is_recent_age(cells[2])
    };
    while !seen.lines().any(row_x) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = watcher.kill();
                let _ = watcher.wait();
                panic!("no row for x from kubectl get -w; saw:\n{seen}");
            }
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(header(&seen), ["NAME", "DATA", "AGE"], "{seen}");
}

fn get_cm(server: &Server, name: &str) -> serde_json::Value {
    json(&server.kubectl(&["-n", "t", "get", "cm", name, "-o", "json"]))
}

#[test]
fn kubectl_patch_with_each_type() {
    let server = Server::start();
    create_namespace_t(&server);
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);

    let out = server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"20","a":null}}"#,
    ]);
    assert!(out.contains("configmap/x patched"), "{out}");
    assert_eq!(get_cm(&server, "x")["data"], serde_json::json!({"b": "20"}));

    server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
    ]);
    assert_eq!(
        get_cm(&server, "x")["data"],
        serde_json::json!({"b": "20", "c": "3"})
    );

    server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=strategic",
        "-p",
        r#"{"data":{"d":"4"},"metadata":{"labels":{"app":"web"}}}"#,
    ]);
    let got = get_cm(&server, "x");
    assert_eq!(
        got["data"],
        serde_json::json!({"b": "20", "c": "3", "d": "4"})
    );
    assert_eq!(got["metadata"]["labels"]["app"], "web");
    // The default type is strategic.
    server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "-p",
        r#"{"data":{"$patch":"replace","only":"1"}}"#,
    ]);
    assert_eq!(
        get_cm(&server, "x")["data"],
        serde_json::json!({"only": "1"})
    );

    // A patch that changes nothing writes nothing.
    let rv = get_cm(&server, "x")["metadata"]["resourceVersion"].clone();
    let out = server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=merge",
        "-p",
        r#"{"data":{"only":"1"}}"#,
    ]);
    assert!(out.contains("(no change)"), "{out}");
    assert_eq!(get_cm(&server, "x")["metadata"]["resourceVersion"], rv);

    // Refusals name the failing operation.
    let bad = server.try_kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=json",
        "-p",
        r#"[{"op":"frob","path":"/data/only"}]"#,
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("operation 0 (frob)"), "{stderr}");
    let failed = server.try_kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/only","value":"2"}]"#,
    ]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(stderr.contains("operation 0 (test) failed"), "{stderr}");
    let failed = server.try_kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/missing"}]"#,
    ]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("/data/missing"), "{stderr}");

    // A stale resourceVersion in the patch conflicts; a current one applies.
    let stale = r#"{"metadata":{"resourceVersion":"1"},"data":{"k":"v"}}"#;
    let conflict =
        server.try_kubectl(&["-n", "t", "patch", "cm", "x", "--type=merge", "-p", stale]);
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("Conflict") || stderr.contains("the object has been modified"),
        "{stderr}"
    );
    let current = format!(r#"{{"metadata":{{"resourceVersion":{rv}}},"data":{{"k":"v"}}}}"#);
    server.kubectl(&[
        "-n",
        "t",
        "patch",
        "cm",
        "x",
        "--type=merge",
        "-p",
        &current,
    ]);
    assert_eq!(get_cm(&server, "x")["data"]["k"], "v");

    let missing =
        server.try_kubectl(&["-n", "t", "patch", "cm", "nope", "--type=merge", "-p", "{}"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("configmaps \"nope\" not found"), "{stderr}");
}

#[test]
fn apply_twice_updates_and_removes_keys() {
    let server = Server::start();
    create_namespace_t(&server);
    let cm = server.write("cm.yaml", CONFIGMAP_X);
    let out = server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");

    // b changes, a goes away, c is new.
    let changed =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  b: \"22\"\n  c: \"3\"\n";
    let cm = server.write("cm.yaml", changed);
    let out = server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x configured"), "{out}");
    assert_eq!(
        get_cm(&server, "x")["data"],
        serde_json::json!({"b": "22", "c": "3"})
    );

    let out = server.kubectl(&["-n", "t", "apply", "--validate=false", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x unchanged"), "{out}");
}
