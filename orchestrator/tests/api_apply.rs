//! `kubectl apply` against the real server, both ways: client-side (a
//! three-way strategic merge patch kubectl computes from the merge keys the
//! OpenAPI documents declare) and server-side (`--server-side`, field
//! managers, conflicts, `--force-conflicts`), plus `kubectl diff`.
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use common::{Server, create_namespace_t, json, path_str};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: t
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: nginx:1.25
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
        ports:
        - {containerPort: 80}
        - {containerPort: 443}
      - name: side
        image: busybox:1
        args: ["sleep", "3600"]
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: t
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 80}
  - {name: https, port: 443, targetPort: 443}
"#;

const ROLE_BINDING: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: readers
  namespace: t
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: ServiceAccount, name: default, namespace: t}
"#;

fn container<'a>(deploy: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {deploy}"))
}

#[test]
fn client_side_apply_merges_lists_by_key() {
    let server = Server::start();
    create_namespace_t(&server);
    let manifest = format!("{DEPLOYMENT}---{SERVICE}---{ROLE_BINDING}");
    let path = server.write("app.yaml", &manifest);
    let out = server.kubectl(&["apply", "-f", path_str(&path)]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    // Applying the same manifest again changes nothing.
    let out = server.kubectl(&["apply", "-f", path_str(&path)]);
    for what in [
        "deployment.apps/web unchanged",
        "service/web unchanged",
        "rolebinding.rbac.authorization.k8s.io/readers unchanged",
    ] {
        assert!(out.contains(what), "{what} in {out}");
    }
    let before = json(&server.kubectl(&["-n", "t", "get", "deploy", "web", "-o", "json"]));

    // One image changed, one env var added, one port removed.
    let changed = DEPLOYMENT
        .replace("image: nginx:1.25", "image: nginx:1.26")
        .replace(
            "- {name: B, value: \"2\"}",
            "- {name: B, value: \"2\"}\n        - {name: C, value: \"3\"}",
        )
        .replace("        - {containerPort: 443}\n", "");
    let path = server.write("app.yaml", &changed);
    let out = server.kubectl(&["apply", "-f", path_str(&path)]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let after = json(&server.kubectl(&["-n", "t", "get", "deploy", "web", "-o", "json"]));
    let app = container(&after, "app");
    assert_eq!(app["image"], "nginx:1.26");
    let env: Vec<&str> = app["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(env, ["A", "B", "C"]);
    assert_eq!(app["ports"].as_array().map(Vec::len), Some(1), "{app}");
    assert_eq!(app["ports"][0]["containerPort"], 80);
    // Server defaults in the untouched parts stay.
    assert_eq!(
        app["imagePullPolicy"],
        container(&before, "app")["imagePullPolicy"]
    );
    let side = container(&after, "side");
    assert_eq!(side["image"], "busybox:1");
    assert_eq!(side["args"], serde_json::json!(["sleep", "3600"]));
    let containers = after["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "app");
}
