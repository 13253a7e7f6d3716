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
    // As upstream: metadata is never required.
    assert!(out.contains("metadata\t<ObjectMeta>\n"), "{out}");
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

const ACCESS_REVIEW: &str = "apiVersion: authorization.k8s.io/v1
kind: SelfSubjectAccessReview
spec:
  resourceAttributes:
    verb: create
    resource: pods
    namespace: t
";
const TOKEN_REVIEW: &str = "apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec:
  token: not-a-token
";
/// An unknown field inside `spec`.
const ACCESS_REVIEW_BAD: &str = "apiVersion: authorization.k8s.io/v1
kind: SelfSubjectAccessReview
spec:
  resourceAttributes:
    verb: get
    resource: pods
  bogus: 1
";

/// A CRD whose schema says what Swagger 2.0 cannot (nullable, anyOf,
/// int-or-string, preserved unknown fields): converted, not refused.
const GADGET_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, kind: Gadget}
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
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              note: {type: string, nullable: true}
              port:
                x-kubernetes-int-or-string: true
                anyOf: [{type: integer}, {type: string}]
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
              tags:
                type: array
                items: {type: string}
";

/// The review kinds are only created (no `patch` in their v3 documents),
/// so kubectl cannot leave Strict validation to the server: it validates
/// them itself against `/openapi/v2`, fetched as protobuf.
#[test]
fn review_kinds_are_validated_by_kubectl_from_openapi_v2() {
    let server = Server::start();
    // A served CRD's definition is part of the document kubectl parses.
    let crd = server.write("crd.yaml", GADGET_CRD);
    server.kubectl(&["apply", "-f", path_str(&crd)]);
    let review = server.write("ssar.yaml", ACCESS_REVIEW);
    let (out, err) =
        server.kubectl_with_stderr(&["create", "-v=6", "-f", path_str(&review), "-o", "yaml"]);
    assert!(
        err.lines().any(|l| l.contains("GET https://")
            && l.contains("/openapi/v2?")
            && l.contains("200 OK")),
        "validated from /openapi/v2: {err}"
    );
    assert!(out.contains("kind: SelfSubjectAccessReview"), "{out}");
    assert!(
        out.contains("status:\n  allowed: true\n"),
        "the answer is printed: {out}"
    );
    // Without -o: upstream's line for an object without a name.
    assert_eq!(
        server.kubectl(&["create", "-f", path_str(&review)]).trim(),
        "selfsubjectaccessreview.authorization.k8s.io/<unknown> created"
    );
    let token = server.write("tokenreview.yaml", TOKEN_REVIEW);
    let reviewed = common::json(&server.kubectl(&["create", "-f", path_str(&token), "-o", "json"]));
    assert_eq!(reviewed["kind"], "TokenReview", "{reviewed}");
    assert!(reviewed["status"].is_object(), "{reviewed}");
    assert_ne!(reviewed["status"]["authenticated"], true, "{reviewed}");

    // An unknown field: refused by kubectl itself, naming it and its type.
    let bad = server.write("ssar-bad.yaml", ACCESS_REVIEW_BAD);
    let err = server.kubectl_fails(&["create", "-f", path_str(&bad)]);
    assert!(
        err.contains("unknown field \"bogus\"")
            && err.contains("io.k8s.api.authorization.v1.SelfSubjectAccessReviewSpec")
            && err.contains("--validate=false"),
        "{err}"
    );
    // ... and sent as it is with --validate=false (the server drops it).
    let out = server.kubectl(&[
        "create",
        "--validate=false",
        "-f",
        path_str(&bad),
        "-o",
        "yaml",
    ]);
    assert!(out.contains("allowed: true"), "{out}");

    // The same document as JSON.
    let doc = common::json(&server.kubectl(&["get", "--raw", "/openapi/v2"]));
    assert_eq!(doc["swagger"], "2.0");
    let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod",
        "{pod}"
    );
    assert_eq!(
        pod["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );
    assert!(
        doc["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]["post"].is_object()
    );
    let gadget = &doc["definitions"]["com.example.v1.Gadget"];
    assert_eq!(
        gadget["properties"]["spec"]["properties"]["size"],
        serde_json::json!({"type": "integer", "minimum": 1.0}),
        "{gadget}"
    );
    assert_eq!(
        gadget["properties"]["spec"]["properties"]["port"],
        serde_json::json!({"x-kubernetes-int-or-string": true}),
        "{gadget}"
    );
}
