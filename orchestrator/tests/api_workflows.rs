//! Everyday kubectl habits against the real server, the ones the other API
//! tests do not cover: `describe` of built-in kinds, `label` and
//! `annotate` (add, overwrite, remove), `edit` through `KUBE_EDITOR`, and a
//! strategic patch that would delete the whole object (refused, the object
//! kept).

mod common;

use common::Server;

const MANIFEST: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: slow
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
";

#[test]
fn describe_label_annotate_edit() {
    let server = Server::start();
    let manifest = server.write("workflow.yaml", MANIFEST);
    server.kubectl(&["apply", "-f", common::path_str(&manifest)]);

    // describe reads the object and then events and related objects.
    let text = server.kubectl(&["describe", "deployment", "web"]);
    for expected in [
        "Name:",
        "web",
        "Replicas:",
        "2 desired",
        "nginx:1.27",
        "RollingUpdate",
    ] {
        assert!(
            text.contains(expected),
            "describe deployment lacks {expected:?}:\n{text}"
        );
    }
    let text = server.kubectl(&["describe", "configmap", "settings"]);
    assert!(text.contains("mode") && text.contains("slow"), "{text}");
    let text = server.kubectl(&["describe", "namespace", "default"]);
    assert!(text.contains("Active"), "{text}");

    // label / annotate: add, refuse to overwrite without --overwrite, overwrite, remove.
    server.kubectl(&["label", "configmap", "settings", "tier=backend"]);
    let refused = server.kubectl_fails(&["label", "configmap", "settings", "tier=frontend"]);
    assert!(refused.contains("already has a value"), "{refused}");
    server.kubectl(&[
        "label",
        "configmap",
        "settings",
        "tier=frontend",
        "--overwrite",
    ]);
    let labelled = server.kubectl(&["get", "configmaps", "-l", "tier=frontend", "-o", "name"]);
    assert_eq!(labelled.trim(), "configmap/settings");
    server.kubectl(&["annotate", "configmap", "settings", "owner=ops"]);
    let got = server.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(got, "ops");
    server.kubectl(&["annotate", "configmap", "settings", "owner-"]);
    server.kubectl(&["label", "configmap", "settings", "tier-"]);
    let meta = common::json(&server.kubectl(&["get", "configmap", "settings", "-o", "json"]));
    assert!(
        meta["metadata"]["annotations"].get("owner").is_none(),
        "{meta}"
    );
    assert!(meta["metadata"]["labels"].get("tier").is_none(), "{meta}");

    // edit: kubectl runs the editor on a temporary file and sends a patch.
    let edited = server
        .kubectl_cmd(&["edit", "configmap", "settings"])
        .env("KUBE_EDITOR", "sed -i s/slow/fast/")
        .output()
        .expect("kubectl edit");
    assert!(
        edited.status.success(),
        "kubectl edit: {}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let mode = server.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ]);
    assert_eq!(mode, "fast");

    // A strategic patch deleting the whole object is refused; nothing is lost.
    let err = server.kubectl_fails(&[
        "patch",
        "configmap",
        "settings",
        "--type=strategic",
        "-p",
        r#"{"$patch":"delete"}"#,
    ]);
    assert!(err.contains("Error") || err.contains("error"), "{err}");
    let mode = server.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ]);
    assert_eq!(mode, "fast");
}
