//! OpenAPI v3 and `fieldValidation` against the real `kubectl` (v1.32):
//! `apply`, `create -f` and `replace -f` with kubectl's default (strict)
//! validation, unknown fields refused or warned about, and `explain`.
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use common::{NAMESPACE_T, Server, path_str};

const CONFIGMAP_X: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: x
  namespace: t
data:
  a: \"1\"
";
const SECRET_S: &str = "apiVersion: v1
kind: Secret
metadata:
  name: s
  namespace: t
stringData:
  password: hunter2
";
/// Unknown fields at the top level and in `metadata`.
const CONFIGMAP_BAD: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: bad
  namespace: t
  bogus: 1
data:
  a: \"1\"
spec:
  foo: 1
";

#[test]
fn apply_create_and_replace_with_default_validation() {
    let server = Server::start();
    let ns = server.write("ns.yaml", NAMESPACE_T);
    let (out, _) = server.kubectl_with_stderr(&["apply", "-f", path_str(&ns)]);
    assert!(out.contains("namespace/t created"), "{out}");

    let cm = server.write("cm.yaml", CONFIGMAP_X);
    let (out, _) = server.kubectl_with_stderr(&["apply", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");
    let (out, _) = server.kubectl_with_stderr(&["replace", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x replaced"), "{out}");
    server.kubectl_with_stderr(&["-n", "t", "delete", "cm", "x"]);
    let (out, _) = server.kubectl_with_stderr(&["create", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");

    let secret = server.write("secret.yaml", SECRET_S);
    let (out, _) = server.kubectl_with_stderr(&["create", "-f", path_str(&secret)]);
    assert!(out.contains("secret/s created"), "{out}");
    let (out, _) = server.kubectl_with_stderr(&[
        "-n",
        "t",
        "get",
        "secret",
        "s",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(out, "aHVudGVyMg==");
}

#[test]
fn unknown_fields_are_refused_by_default_and_named() {
    let server = Server::start();
    let ns = server.write("ns.yaml", NAMESPACE_T);
    server.kubectl_with_stderr(&["apply", "-f", path_str(&ns)]);
    let bad = server.write("bad.yaml", CONFIGMAP_BAD);
    let expected =
        "strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec\"";
    for verb in ["apply", "create", "replace"] {
        let err = server.kubectl_fails(&[verb, "-f", path_str(&bad)]);
        assert!(err.contains("BadRequest"), "{verb}: {err}");
        assert!(err.contains(expected), "{verb}: {err}");
    }

    // Warn: accepted, one warning per field, the fields dropped.
    let (out, err) =
        server.kubectl_with_stderr(&["create", "--validate=warn", "-f", path_str(&bad)]);
    assert!(out.contains("configmap/bad created"), "{out}");
    assert!(
        err.contains("Warning: unknown field \"metadata.bogus\""),
        "{err}"
    );
    assert!(err.contains("Warning: unknown field \"spec\""), "{err}");
    let (out, _) = server.kubectl_with_stderr(&["-n", "t", "get", "cm", "bad", "-o", "json"]);
    let obj: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(obj.get("spec").is_none(), "{obj}");
    assert!(obj["metadata"].get("bogus").is_none(), "{obj}");
    assert_eq!(obj["data"]["a"], "1");

    // --validate=false sends Ignore: accepted without warnings.
    server.kubectl_with_stderr(&["-n", "t", "delete", "cm", "bad"]);
    let (out, err) =
        server.kubectl_with_stderr(&["apply", "--validate=false", "-f", path_str(&bad)]);
    assert!(out.contains("configmap/bad created"), "{out}");
    assert!(!err.contains("unknown field"), "{err}");

    // An existing object: apply patches it, and the patched object is checked.
    let again = server.write("again.yaml", &CONFIGMAP_BAD.replace("bogus: 1", "bogus: 2"));
    let err = server.kubectl_fails(&["apply", "-f", path_str(&again)]);
    assert!(err.contains(expected), "{err}");
    let clean = server.write(
        "clean.yaml",
        &CONFIGMAP_BAD
            .replace("  bogus: 1\n", "")
            .replace("spec:\n  foo: 1\n", "")
            .replace("\"1\"", "\"2\""),
    );
    let (out, _) = server.kubectl_with_stderr(&["apply", "-f", path_str(&clean)]);
    assert!(out.contains("configmap/bad configured"), "{out}");
}

#[test]
fn explain_reads_the_served_schemas() {
    let server = Server::start();
    let (out, _) = server.kubectl_with_stderr(&["explain", "configmap.data"]);
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    assert!(
        out.contains("Data contains the configuration data."),
        "{out}"
    );
    let (out, _) = server.kubectl_with_stderr(&["explain", "configmap"]);
    assert!(out.contains("KIND:       ConfigMap"), "{out}");
    assert!(out.contains("metadata\t<ObjectMeta> -required-"), "{out}");
    let (out, _) = server.kubectl_with_stderr(&["explain", "ns.spec.finalizers"]);
    assert!(out.contains("<[]string>"), "{out}");

    let (root, _) = server.kubectl_with_stderr(&["get", "--raw", "/openapi/v3"]);
    let root: serde_json::Value = serde_json::from_str(&root).expect("json");
    let url = root["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .expect("serverRelativeURL");
    assert!(url.starts_with("/openapi/v3/api/v1?hash="), "{url}");
    let (doc, _) = server.kubectl_with_stderr(&["get", "--raw", url]);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("json");
    assert_eq!(doc["openapi"], "3.0.0");
    assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.Secret"].is_object());
}
