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

/// The managers of `obj`'s managedFields, as `manager/operation`, sorted.
fn managers(obj: &serde_json::Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}/{}",
                e["manager"].as_str().unwrap_or(""),
                e["operation"].as_str().unwrap_or("")
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    // Without controllers: the Deployment controller's own Update (the
    // revision annotation, status) would be a second manager.
    let server = Server::start_with(&["--disable-controllers"]);
    create_namespace_t(&server);
    let labelled = DEPLOYMENT.replace(
        "labels: {app: web}\nspec:",
        "labels: {app: web, tier: front}\nspec:",
    );
    let path = server.write("deploy.yaml", &labelled);
    let p = path_str(&path);
    let out = server.kubectl(&["apply", "--server-side", "-f", p]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let out = server.kubectl(&["apply", "--server-side", "-f", p]);
    assert!(out.contains("serverside-applied"), "{out}");
    let obj = json(&server.kubectl(&[
        "-n",
        "t",
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(managers(&obj), ["kubectl/Apply"]);
    let fields = &obj["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]
            .get("k:{\"name\":\"app\"}")
            .is_some(),
        "{fields}"
    );

    // A field omitted from the next apply is removed.
    let path = server.write("deploy.yaml", DEPLOYMENT);
    let p = path_str(&path);
    server.kubectl(&["apply", "--server-side", "-f", p]);
    let obj = json(&server.kubectl(&["-n", "t", "get", "deploy", "web", "-o", "json"]));
    assert!(
        obj["metadata"]["labels"].get("tier").is_none(),
        "{}",
        obj["metadata"]
    );
    assert_eq!(obj["metadata"]["labels"]["app"], "web");

    // Dry run changes nothing.
    let scaled = DEPLOYMENT.replace("replicas: 2", "replicas: 5");
    let scaled_path = server.write("scaled.yaml", &scaled);
    let sp = path_str(&scaled_path);
    let out = server.kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        sp,
        "-o",
        "json",
    ]);
    assert_eq!(json(&out)["spec"]["replicas"], 5);
    let obj = json(&server.kubectl(&["-n", "t", "get", "deploy", "web", "-o", "json"]));
    assert_eq!(obj["spec"]["replicas"], 2);

    // Another manager changing an owned field conflicts...
    let err = server.kubectl_fails(&["apply", "--server-side", "--field-manager=b", "-f", sp]);
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    assert!(err.contains(".spec.replicas"), "{err}");
    // ...the same values are shared...
    server.kubectl(&["apply", "--server-side", "--field-manager=b", "-f", p]);
    let obj = json(&server.kubectl(&[
        "-n",
        "t",
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(managers(&obj), ["b/Apply", "kubectl/Apply"]);
    // ...and --force-conflicts takes the field.
    server.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=b",
        "--force-conflicts",
        "-f",
        sp,
    ]);
    let obj = json(&server.kubectl(&[
        "-n",
        "t",
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(obj["spec"]["replicas"], 5);
    let entries = obj["metadata"]["managedFields"]
        .as_array()
        .expect("entries");
    let kubectl = entries
        .iter()
        .find(|e| e["manager"] == "kubectl")
        .expect("kubectl entry");
    assert!(
        kubectl["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{kubectl}"
    );
    let b = entries
        .iter()
        .find(|e| e["manager"] == "b")
        .expect("b entry");
    assert!(b["fieldsV1"]["f:spec"].get("f:replicas").is_some(), "{b}");
    // Now kubectl's own apply of its old value conflicts with b.
    let err = server.kubectl_fails(&["apply", "--server-side", "-f", p]);
    assert!(err.contains("conflict with \"b\""), "{err}");
}

#[test]
fn server_side_apply_after_client_side_apply_and_errors() {
    let server = Server::start();
    create_namespace_t(&server);
    let path = server.write("deploy.yaml", DEPLOYMENT);
    server.kubectl(&["apply", "-f", path_str(&path)]);
    let scaled = server.write(
        "scaled.yaml",
        &DEPLOYMENT.replace("replicas: 2", "replicas: 4"),
    );
    let err = server.kubectl_fails(&[
        "apply",
        "--server-side",
        "--field-manager=ssa",
        "-f",
        path_str(&scaled),
    ]);
    assert!(
        err.contains("conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"),
        "{err}"
    );

    // Raw requests: fieldManager is required, CBOR is not served, force is
    // only for apply, a missing object is created.
    let body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: raw}\ndata: {a: b}\n";
    let url = "/api/v1/namespaces/t/configmaps/raw";
    let (code, out) = server.curl("PATCH", url, "application/apply-patch+yaml", body);
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("fieldManager"), "{out}");
    let (code, _) = server.curl(
        "PATCH",
        &format!("{url}?fieldManager=m"),
        "application/apply-patch+cbor",
        body,
    );
    assert_eq!(code, 415);
    let (code, out) = server.curl(
        "PATCH",
        &format!("{url}?fieldManager=m"),
        "application/apply-patch+yaml",
        body,
    );
    assert_eq!(code, 201, "{out}");
    assert_eq!(json(&out)["data"]["a"], "b");
    let (code, _) = server.curl(
        "PATCH",
        &format!("{url}?force=true"),
        "application/merge-patch+json",
        b"{}",
    );
    assert_eq!(code, 422);
    let (code, _) = server.curl(
        "PATCH",
        &format!("{url}?fieldManager=m"),
        "application/apply-patch+yaml",
        b"kind: [",
    );
    assert_eq!(code, 400);
}

#[test]
fn diff_reports_changes() {
    let server = Server::start();
    create_namespace_t(&server);
    let path = server.write("deploy.yaml", DEPLOYMENT);
    let p = path_str(&path);
    server.kubectl(&["apply", "-f", p]);
    let same = server.try_kubectl(&["diff", "-f", p]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let changed = server.write(
        "changed.yaml",
        &DEPLOYMENT.replace("nginx:1.25", "nginx:1.27"),
    );
    let out = server.try_kubectl(&["diff", "-f", path_str(&changed)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("+        image: nginx:1.27"));
    // Server-side: diff through an apply dry run.
    let out = server.try_kubectl(&[
        "diff",
        "--server-side",
        "--force-conflicts",
        "-f",
        path_str(&changed),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nginx:1.27"));
    let obj = json(&server.kubectl(&["-n", "t", "get", "deploy", "web", "-o", "json"]));
    assert_eq!(container(&obj, "app")["image"], "nginx:1.25");
}

#[test]
fn server_side_apply_of_a_custom_resource() {
    let server = Server::start();
    create_namespace_t(&server);
    let crd = server.write(
        "crd.yaml",
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
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
            properties:
              size: {type: integer}
              tags: {type: array, items: {type: string}}
              parts:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    count: {type: integer}
"#,
    );
    server.kubectl(&["apply", "-f", path_str(&crd)]);
    server.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
    ]);
    let widget = |size: u32, parts: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w, namespace: t}}\nspec:\n  size: {size}\n  tags: [a, b]\n  parts: {parts}\n"
        )
    };
    let path = server.write(
        "w.yaml",
        &widget(1, "[{name: px, count: 1}, {name: py, count: 2}]"),
    );
    // The CRD's document may take a moment to be served.
    let mut out = server.try_kubectl(&["apply", "--server-side", "-f", path_str(&path)]);
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        out = server.try_kubectl(&["apply", "--server-side", "-f", path_str(&path)]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Manager b owns part pz; kubectl drops py: py goes, pz stays.
    let b = server.write("b.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: t}\nspec:\n  parts: [{name: pz, count: 9}]\n");
    server.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=b",
        "-f",
        path_str(&b),
    ]);
    let path = server.write("w.yaml", &widget(1, "[{name: px, count: 1}]"));
    server.kubectl(&["apply", "--server-side", "-f", path_str(&path)]);
    let obj = json(&server.kubectl(&[
        "-n",
        "t",
        "get",
        "widget",
        "w",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    let names: Vec<&str> = obj["spec"]["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["px", "pz"], "{obj}");
    assert_eq!(obj["spec"]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(managers(&obj), ["b/Apply", "kubectl/Apply"]);
    let err = server.kubectl_fails(&[
        "apply",
        "--server-side",
        "--field-manager=b",
        "-f",
        path_str(&server.write("c.yaml", &widget(3, "[]"))),
    ]);
    assert!(err.contains(".spec.size"), "{err}");
}
