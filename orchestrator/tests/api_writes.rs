//! Writes and queries through the real kubectl (v1.32) and raw requests:
//! protobuf and YAML bodies, delete options and finalizers, namespace
//! termination, deletecollection, dry runs, managedFields, selectors and
//! watch bookmarks.

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_namespace_t, json};

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exists(server: &Server, args: &[&str]) -> bool {
    server.try_kubectl(args).status.success()
}

/// kubectl's typed `create` sub-commands POST protobuf: they must decode
/// to the same objects the JSON path stores.
#[test]
fn create_subcommands_send_protobuf() {
    let server = Server::start();
    create_namespace_t(&server);
    let out = server.kubectl(&[
        "create",
        "configmap",
        "c",
        "-n",
        "t",
        "--from-literal=a=b",
        "--from-literal=e=",
    ]);
    assert!(out.contains("configmap/c created"), "{out}");
    let cm = json(&server.kubectl(&["get", "cm", "c", "-n", "t", "-o", "json"]));
    assert_eq!(cm["data"], serde_json::json!({"a": "b", "e": ""}));
    assert!(cm["metadata"].get("generation").is_none(), "{cm}");
    server.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "t",
        "--from-literal=k=v",
    ]);
    let secret = json(&server.kubectl(&["get", "secret", "s", "-n", "t", "-o", "json"]));
    assert_eq!(secret["data"]["k"], "dg==");
    assert_eq!(secret["type"], "Opaque");
    let ns = json(&server.kubectl(&["get", "ns", "t", "-o", "json"]));
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));

    // YAML bodies, and bad bodies of each type.
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n";
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/t/configmaps",
        "application/yaml",
        yaml,
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["data"]["k"], "v");
    for (content_type, bad, words) in [
        (
            "application/vnd.kubernetes.protobuf",
            &b"{}"[..],
            "k8s\\0 magic",
        ),
        (
            "application/vnd.kubernetes.protobuf",
            b"k8s\0\x0a\x05",
            "protobuf",
        ),
        ("application/yaml", b"metadata: [", "YAML"),
        ("application/json", b"{\"metadata\":", "JSON"),
    ] {
        let (code, body) =
            server.curl("POST", "/api/v1/namespaces/t/configmaps", content_type, bad);
        assert_eq!(code, 400, "{content_type}: {body}");
        let status = json(&body);
        assert_eq!(status["kind"], "Status");
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains(words)),
            "{content_type}: {body}"
        );
    }
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/t/configmaps",
        "text/csv",
        b"a,b",
    );
    assert_eq!(code, 415, "{body}");
}

/// Deployments, services and jobs from kubectl's typed sub-commands.
#[test]
fn workload_create_subcommands_send_protobuf() {
    let server = Server::start();
    server.kubectl(&["create", "deployment", "d", "--image=nginx", "--replicas=2"]);
    let d = json(&server.kubectl(&["get", "deployment", "d", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx"
    );
    server.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let svc = json(&server.kubectl(&["get", "service", "web", "-o", "json"]));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    server.kubectl(&["create", "job", "j", "--image=busybox", "--", "echo", "hi"]);
    let job = json(&server.kubectl(&["get", "job", "j", "-o", "json"]));
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["echo", "hi"])
    );
}

#[test]
fn finalizers_hold_a_deleted_object_until_removed() {
    let server = Server::start();
    server.kubectl(&["create", "cm", "held", "--from-literal=a=b"]);
    server.kubectl(&[
        "patch",
        "cm",
        "held",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    let out = server.kubectl(&["delete", "cm", "held", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
    let cm = json(&server.kubectl(&["get", "cm", "held", "-o", "json"]));
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "{cm}");
    assert_eq!(cm["metadata"]["deletionGracePeriodSeconds"], 0);
    // No new finalizers while being deleted.
    let err = server.kubectl_fails(&[
        "patch",
        "cm",
        "held",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#,
    ]);
    assert!(err.contains("invalid") || err.contains("Invalid"), "{err}");
    // Other changes are fine; deleting again changes nothing.
    server.kubectl(&["label", "cm", "held", "x=y"]);
    server.kubectl(&["delete", "cm", "held", "--wait=false"]);
    assert!(exists(&server, &["get", "cm", "held"]));
    // Removing the last finalizer deletes it.
    server.kubectl(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let err = server.kubectl_fails(&["get", "cm", "held"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    // Propagation policies add the garbage collector's finalizers.
    server.kubectl(&["create", "cm", "orphaned"]);
    server.kubectl(&[
        "delete",
        "cm",
        "orphaned",
        "--cascade=orphan",
        "--wait=false",
    ]);
    let cm = json(&server.kubectl(&["get", "cm", "orphaned", "-o", "json"]));
    assert_eq!(cm["metadata"]["finalizers"], serde_json::json!(["orphan"]));
    server.kubectl(&["create", "cm", "fg"]);
    server.kubectl(&["delete", "cm", "fg", "--cascade=foreground", "--wait=false"]);
    let cm = json(&server.kubectl(&["get", "cm", "fg", "-o", "json"]));
    assert_eq!(
        cm["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"])
    );
}

#[test]
fn preconditions_and_delete_responses() {
    let server = Server::start();
    server.kubectl(&["create", "cm", "p"]);
    let cm = json(&server.kubectl(&["get", "cm", "p", "-o", "json"]));
    let uid = cm["metadata"]["uid"].as_str().expect("uid").to_owned();
    let path = "/api/v1/namespaces/default/configmaps/p";
    let options = |preconditions: &str| {
        format!(r#"{{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{preconditions}}}"#)
    };
    let (code, body) = server.curl(
        "DELETE",
        path,
        "application/json",
        options(r#"{"uid":"stale"}"#).as_bytes(),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("Precondition failed: UID in precondition: stale"),
        "{body}"
    );
    let (code, body) = server.curl(
        "DELETE",
        path,
        "application/json",
        options(r#"{"resourceVersion":"1"}"#).as_bytes(),
    );
    assert_eq!(code, 409, "{body}");
    assert!(exists(&server, &["get", "cm", "p"]));
    let (code, body) = server.curl(
        "DELETE",
        path,
        "application/json",
        options(&format!(r#"{{"uid":"{uid}"}}"#)).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let status = json(&body);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["uid"], uid.as_str());
    let (code, body) = server.curl("DELETE", path, "application/json", b"");
    assert_eq!(code, 404, "{body}");
    let (code, body) = server.curl(
        "DELETE",
        &format!("{path}?propagationPolicy=Sideways"),
        "application/json",
        b"",
    );
    assert_eq!(code, 422, "{body}");
}

#[test]
fn delete_by_selector_all_and_collection() {
    let server = Server::start();
    create_namespace_t(&server);
    for (name, labels) in [("a1", "a=b"), ("a2", "a=b"), ("c1", "a=c"), ("n1", "z=1")] {
        server.kubectl(&["create", "cm", name, "-n", "t"]);
        server.kubectl(&["label", "cm", name, "-n", "t", labels]);
    }
    let out = server.kubectl(&["delete", "cm", "-n", "t", "-l", "a=b"]);
    assert!(
        out.contains("\"a1\" deleted") && out.contains("\"a2\" deleted"),
        "{out}"
    );
    let left = server.kubectl(&["get", "cm", "-n", "t", "-o", "name"]);
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        ["configmap/c1", "configmap/n1"]
    );

    // deletecollection: one DELETE on the collection path.
    let (code, body) = server.curl(
        "DELETE",
        "/api/v1/namespaces/t/configmaps?labelSelector=a%3Dc",
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let list = json(&body);
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"][0]["metadata"]["name"], "c1");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let left = server.kubectl(&["get", "cm", "-n", "t", "-o", "name"]);
    assert_eq!(left.trim(), "configmap/n1");

    let out = server.kubectl(&["delete", "cm", "-n", "t", "--all"]);
    assert!(out.contains("\"n1\" deleted"), "{out}");
    let (_, err) = server.kubectl_with_stderr(&["get", "cm", "-n", "t"]);
    assert!(err.contains("No resources found"), "{err}");
}

#[test]
fn server_dry_runs_write_nothing() {
    let server = Server::start();
    let out = server.kubectl(&[
        "create",
        "cm",
        "dry",
        "--from-literal=a=b",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    let cm = json(&out);
    assert_eq!(cm["data"]["a"], "b");
    assert!(cm["metadata"]["uid"].is_string(), "{cm}");
    assert!(!exists(&server, &["get", "cm", "dry"]));
    let manifest = server.write(
        "dry.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  a: b\n",
    );
    let manifest = common::path_str(&manifest);
    server.kubectl(&["apply", "-f", manifest, "--dry-run=server"]);
    assert!(!exists(&server, &["get", "cm", "applied"]));
    server.kubectl(&["apply", "-f", manifest]);
    let before = json(&server.kubectl(&["get", "cm", "applied", "-o", "json"]));
    server.kubectl(&["label", "cm", "applied", "x=y", "--dry-run=server"]);
    server.kubectl(&["delete", "cm", "applied", "--dry-run=server"]);
    let after = json(&server.kubectl(&["get", "cm", "applied", "-o", "json"]));
    assert_eq!(before, after);
    // A dry-run create of an existing object still conflicts.
    let err = server.kubectl_fails(&["create", "cm", "applied", "--dry-run=server"]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn managed_fields_record_who_set_what() {
    let server = Server::start();
    server.kubectl(&["create", "cm", "m", "--from-literal=a=b"]);
    server.kubectl(&["label", "cm", "m", "app=web"]);
    let plain = server.kubectl(&["get", "cm", "m", "-o", "yaml"]);
    assert!(!plain.contains("managedFields"), "{plain}");
    let cm = json(&server.kubectl(&["get", "cm", "m", "-o", "json", "--show-managed-fields"]));
    let entries = cm["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    assert_eq!(entries.len(), 2, "{cm}");
    assert_eq!(entries[0]["manager"], "kubectl-create");
    assert_eq!(entries[0]["operation"], "Update");
    assert_eq!(entries[0]["fieldsType"], "FieldsV1");
    assert_eq!(
        entries[0]["fieldsV1"],
        serde_json::json!({"f:data": {".": {}, "f:a": {}}})
    );
    assert_eq!(entries[1]["manager"], "kubectl-label");
    assert_eq!(
        entries[1]["fieldsV1"],
        serde_json::json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
    );
}

#[test]
fn namespace_deletion_terminates_then_removes() {
    let server = Server::start();
    server.kubectl(&["create", "ns", "gone"]);
    server.kubectl(&["create", "cm", "plain", "-n", "gone"]);
    server.kubectl(&["create", "cm", "held", "-n", "gone"]);
    server.kubectl(&[
        "patch",
        "cm",
        "held",
        "-n",
        "gone",
        "-p",
        r#"{"metadata":{"finalizers":["x.io/y"]}}"#,
    ]);
    server.kubectl(&["delete", "ns", "gone", "--wait=false"]);
    let ns = json(&server.kubectl(&["get", "ns", "gone", "-o", "json"]));
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    let err = server.kubectl_fails(&["create", "cm", "new", "-n", "gone"]);
    assert!(err.contains("because it is being terminated"), "{err}");
    // Updates keep it terminating.
    server.kubectl(&["label", "ns", "gone", "x=y"]);
    let ns = json(&server.kubectl(&["get", "ns", "gone", "-o", "json"]));
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    eventually("the plain configmap to go", || {
        !exists(&server, &["get", "cm", "plain", "-n", "gone"])
    });
    assert!(exists(&server, &["get", "ns", "gone"]));
    server.kubectl(&[
        "patch",
        "cm",
        "held",
        "-n",
        "gone",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    eventually("the namespace to go", || {
        !exists(&server, &["get", "ns", "gone"])
    });
}

#[test]
fn label_and_field_selectors() {
    let server = Server::start();
    for (name, labels) in [("x", "a=x"), ("y", "a=y"), ("yb", "a=y,b=1"), ("z", "a=z")] {
        server.kubectl(&["create", "cm", name]);
        let labels: Vec<&str> = labels.split(',').collect();
        let mut args = vec!["label", "cm", name];
        args.extend(labels);
        server.kubectl(&args);
    }
    let names = |selector: &[&str]| {
        let mut args = vec!["get", "cm", "-o", "name"];
        args.extend(selector);
        server
            .kubectl(&args)
            .lines()
            .map(|l| l.trim_start_matches("configmap/").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&["-l", "a in (x,y),!b"]), ["x", "y"]);
    assert_eq!(names(&["-l", "a notin (x,y)"]), ["z"]);
    assert_eq!(names(&["-l", "a!=x,b"]), ["yb"]);
    assert_eq!(names(&["-l", "a==z"]), ["z"]);
    assert_eq!(names(&["--field-selector", "metadata.name=yb"]), ["yb"]);
    assert_eq!(
        names(&[
            "-l",
            "a=y",
            "--field-selector",
            "metadata.name!=yb,metadata.namespace=default"
        ]),
        ["y"]
    );
    let err = server.kubectl_fails(&["get", "cm", "--field-selector", "spec.nodeName=n"]);
    assert!(
        err.contains("field label not supported: spec.nodeName"),
        "{err}"
    );
    let err = server.kubectl_fails(&["get", "cm", "-l", "a in (x"]);
    assert!(err.contains("unable to parse requirement"), "{err}");

    // resourceVersionMatch rules of lists.
    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?resourceVersionMatch=Exact",
        "application/json",
        b"",
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("forbidden unless resourceVersion is provided"),
        "{body}"
    );
    let (_, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        b"",
    );
    let list = json(&body);
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    server.kubectl(&["delete", "cm", "z"]);
    let (code, body) = server.curl(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["items"].as_array().map(Vec::len),
        Some(4),
        "{body}"
    );
}

#[test]
fn watch_bookmarks_and_initial_events() {
    let server = Server::start();
    server.kubectl(&["create", "cm", "w"]);
    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=2",
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let events: Vec<serde_json::Value> = body.lines().map(json).collect();
    assert_eq!(events[0]["type"], "ADDED");
    let last = events.last().expect("events");
    assert_eq!(last["type"], "BOOKMARK", "{body}");
    assert_eq!(last["object"]["kind"], "ConfigMap");
    assert!(
        last["object"]["metadata"]["resourceVersion"].is_string(),
        "{body}"
    );

    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let events: Vec<serde_json::Value> = body.lines().map(json).collect();
    assert_eq!(events[0]["type"], "ADDED", "{body}");
    assert_eq!(events[1]["type"], "BOOKMARK", "{body}");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
        "application/json",
        b"",
    );
    assert_eq!(code, 422, "{body}");
}
