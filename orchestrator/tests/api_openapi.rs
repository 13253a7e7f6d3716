//! OpenAPI v3 and `fieldValidation` against the real `kubectl` (v1.32):
//! `apply`, `create -f` and `replace -f` with kubectl's default (strict)
//! validation, unknown fields refused or warned about, and `explain`.
//!
//! kubectl is required: without it these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `cairn server`, killed on drop (as in `api_kubectl.rs`).
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        assert!(
            Command::new("kubectl")
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "kubectl (v1.32) must be on the PATH for the API tests; `make deps` installs it"
        );
        let dir = tempfile::tempdir().expect("temp data dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["server", "--disable-agent", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("server log"))
            .spawn()
            .expect("spawn cairn server");
        let server = Server { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(server.kubeconfig().exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "cairn server did not start listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn try_kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout and stderr.
    fn kubectl(&self, args: &[&str]) -> (String, String) {
        let out = self.try_kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}{stderr}"
        );
        (stdout, stderr)
    }

    /// Runs kubectl, asserts failure, returns stderr.
    fn kubectl_fails(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write manifest");
        path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const NAMESPACE_T: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t\n";
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
    let (out, _) = server.kubectl(&["apply", "-f", path_str(&ns)]);
    assert!(out.contains("namespace/t created"), "{out}");

    let cm = server.write("cm.yaml", CONFIGMAP_X);
    let (out, _) = server.kubectl(&["apply", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");
    let (out, _) = server.kubectl(&["replace", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x replaced"), "{out}");
    server.kubectl(&["-n", "t", "delete", "cm", "x"]);
    let (out, _) = server.kubectl(&["create", "-f", path_str(&cm)]);
    assert!(out.contains("configmap/x created"), "{out}");

    let secret = server.write("secret.yaml", SECRET_S);
    let (out, _) = server.kubectl(&["create", "-f", path_str(&secret)]);
    assert!(out.contains("secret/s created"), "{out}");
    let (out, _) = server.kubectl(&[
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
    server.kubectl(&["apply", "-f", path_str(&ns)]);
    let bad = server.write("bad.yaml", CONFIGMAP_BAD);
    let expected =
        "strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec\"";
    for verb in ["apply", "create", "replace"] {
        let err = server.kubectl_fails(&[verb, "-f", path_str(&bad)]);
        assert!(err.contains("BadRequest"), "{verb}: {err}");
        assert!(err.contains(expected), "{verb}: {err}");
    }

    // Warn: accepted, one warning per field, the fields dropped.
    let (out, err) = server.kubectl(&["create", "--validate=warn", "-f", path_str(&bad)]);
    assert!(out.contains("configmap/bad created"), "{out}");
    assert!(
        err.contains("Warning: unknown field \"metadata.bogus\""),
        "{err}"
    );
    assert!(err.contains("Warning: unknown field \"spec\""), "{err}");
    let (out, _) = server.kubectl(&["-n", "t", "get", "cm", "bad", "-o", "json"]);
    let obj: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(obj.get("spec").is_none(), "{obj}");
    assert!(obj["metadata"].get("bogus").is_none(), "{obj}");
    assert_eq!(obj["data"]["a"], "1");

    // --validate=false sends Ignore: accepted without warnings.
    server.kubectl(&["-n", "t", "delete", "cm", "bad"]);
    let (out, err) = server.kubectl(&["apply", "--validate=false", "-f", path_str(&bad)]);
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
    let (out, _) = server.kubectl(&["apply", "-f", path_str(&clean)]);
    assert!(out.contains("configmap/bad configured"), "{out}");
}

#[test]
fn explain_reads_the_served_schemas() {
    let server = Server::start();
    let (out, _) = server.kubectl(&["explain", "configmap.data"]);
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    assert!(
        out.contains("Data contains the configuration data."),
        "{out}"
    );
    let (out, _) = server.kubectl(&["explain", "configmap"]);
    assert!(out.contains("KIND:       ConfigMap"), "{out}");
    assert!(out.contains("metadata\t<ObjectMeta> -required-"), "{out}");
    let (out, _) = server.kubectl(&["explain", "ns.spec.finalizers"]);
    assert!(out.contains("<[]string>"), "{out}");

    let (root, _) = server.kubectl(&["get", "--raw", "/openapi/v3"]);
    let root: serde_json::Value = serde_json::from_str(&root).expect("json");
    let url = root["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .expect("serverRelativeURL");
    assert!(url.starts_with("/openapi/v3/api/v1?hash="), "{url}");
    let (doc, _) = server.kubectl(&["get", "--raw", url]);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("json");
    assert_eq!(doc["openapi"], "3.0.0");
    assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.Secret"].is_object());
}
