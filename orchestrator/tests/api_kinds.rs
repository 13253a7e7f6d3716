//! Every built-in kind against the real `kubectl` (v1.32): a multi-document
//! manifest applied with default (Strict) validation, upstream defaults,
//! `kubectl get` tables with `-o wide`, `get all`, `api-resources`, the
//! scale and status subresources, generation bumps, Service ClusterIP and
//! NodePort allocation, pod binding and eviction, and 422s naming fields.
//!
//! kubectl is required: without it these tests fail, they do not skip.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use common::{Server, json, path_str};

/// One object of every built-in kind (and a CRD with a custom resource),
/// in one multi-document manifest.
const MANIFEST: &str = include_str!("api_kinds/every_kind.yaml");

fn apply_manifest(server: &Server) {
    let file = server.write("all.yaml", MANIFEST);
    let out = server.kubectl(&["apply", "-f", path_str(&file)]);
    for created in [
        "namespace/shop created",
        "deployment.apps/web created",
        "service/web created",
        "service/web-np created",
        "statefulset.apps/db created",
        "daemonset.apps/agent created",
        "job.batch/pi created",
        "cronjob.batch/tick created",
        "serviceaccount/robot created",
        "role.rbac.authorization.k8s.io/reader created",
        "rolebinding.rbac.authorization.k8s.io/robot-reads created",
        "lease.coordination.k8s.io/leader created",
        "storageclass.storage.k8s.io/local created",
        "persistentvolumeclaim/cache created",
    ] {
        assert!(out.contains(created), "{created} missing from:\n{out}");
    }
}

fn get_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-n", "shop", "get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    json(&server.kubectl(&all))
}

fn service_cidr_ip(value: &serde_json::Value) -> Ipv4Addr {
    let ip: Ipv4Addr = value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 address: {value}"));
    assert_eq!(ip.octets()[..2], [10, 43], "{ip} outside 10.43.0.0/16");
    ip
}

/// The header line of a table printed by kubectl, split into columns.
fn headers(table: &str, first: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(first))
        .unwrap_or_else(|| panic!("no header starting {first:?} in:\n{table}"));
    // Columns are separated by at least two spaces or one with single words.
    line.split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn manifest_gets_upstream_defaults() {
    let server = Server::start();
    apply_manifest(&server);

    let deploy = get_json(&server, &["deployment", "web"]);
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], "25%");
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        pod["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["schedulerName"], "default-scheduler");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(deploy["metadata"]["generation"], 1);

    let sts = get_json(&server, &["statefulset", "db"]);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
        0
    );
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    // No tag means :latest, which is always pulled.
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    let ds = get_json(&server, &["daemonset", "agent"]);
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );

    let job = get_json(&server, &["job", "pi"]);
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(job["spec"]["completionMode"], "NonIndexed");
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "pi"
    );
    let cron = get_json(&server, &["cronjob", "tick"]);
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cron["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cron["spec"]["failedJobsHistoryLimit"], 1);

    let svc = get_json(&server, &["service", "web"]);
    let ip = service_cidr_ip(&svc["spec"]["clusterIP"]);
    assert_ne!(ip, Ipv4Addr::new(10, 43, 0, 1), "reserved for kubernetes");
    assert_eq!(svc["spec"]["clusterIPs"][0], ip.to_string());
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(svc["spec"]["ipFamilies"][0], "IPv4");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    let np = get_json(&server, &["service", "web-np"]);
    let node_port = np["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort");
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");

    let pvc = get_json(&server, &["pvc", "cache"]);
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc["status"]["phase"], "Pending");
    let sc = json(&server.kubectl(&["get", "storageclass", "local", "-o", "json"]));
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "Immediate");
    let kubernetes = json(&server.kubectl(&["get", "svc", "kubernetes", "-o", "json"]));
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);
}

#[test]
fn tables_get_all_and_api_resources() {
    let server = Server::start();
    apply_manifest(&server);
    let wide = server.kubectl(&[
        "-n",
        "shop",
        "get",
        "deploy,svc,sts,ds,job,cronjob",
        "-o",
        "wide",
    ]);
    for (first, want) in [
        (
            "NAME                  READY",
            &[
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR",
            ][..],
        ),
        (
            "NAME             TYPE",
            &[
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "SELECTOR",
            ],
        ),
        (
            "NAME           STATUS",
            &[
                "NAME",
                "STATUS",
                "COMPLETIONS",
                "DURATION",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR",
            ],
        ),
    ] {
        assert_eq!(headers(&wide, first), want, "{wide}");
    }
    for line in [
        "deployment.apps/web",
        "statefulset.apps/db",
        "daemonset.apps/agent",
        "job.batch/pi",
        "cronjob.batch/tick",
        "app=web",
        "nginx:1.27",
        "80:3",
        "*/5 * * * *",
    ] {
        assert!(wide.contains(line), "{line} missing from:\n{wide}");
    }
    for header in ["NODE SELECTOR", "TIMEZONE", "LAST SCHEDULE", "UP-TO-DATE"] {
        assert!(wide.contains(header), "{header} missing from:\n{wide}");
    }
    let deploy_row = wide
        .lines()
        .find(|l| l.starts_with("deployment.apps/web"))
        .expect("deployment row");
    assert!(deploy_row.contains("0/1"), "{deploy_row}");

    let all = server.kubectl(&["get", "all", "-A"]);
    for line in [
        "service/kubernetes",
        "service/web",
        "deployment.apps/web",
        "daemonset.apps/agent",
        "statefulset.apps/db",
        "job.batch/pi",
        "cronjob.batch/tick",
    ] {
        assert!(all.contains(line), "{line} missing from get all:\n{all}");
    }
    assert!(!all.contains("lease"), "{all}");

    let others = server.kubectl(&["-n", "shop", "get", "sa,role,rolebinding,lease,pvc"]);
    for line in [
        "serviceaccount/robot",
        "CREATED AT",
        "Role/reader",
        "lease.coordination.k8s.io/leader   me",
    ] {
        assert!(others.contains(line), "{line} missing from:\n{others}");
    }
    // The StatefulSet controller adds claims (data-db-0), widening the column.
    let cache = others
        .lines()
        .find(|l| l.starts_with("persistentvolumeclaim/cache "))
        .unwrap_or_else(|| panic!("no cache claim in:\n{others}"));
    assert_eq!(cache.split_whitespace().nth(1), Some("Pending"), "{cache}");
    let sc = server.kubectl(&["get", "sc"]);
    // Columns are as wide as their widest cell: the controller manager's
    // own class `local-path` is listed too.
    assert!(
        sc.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .any(|l| l.starts_with("local (default) cairn.io/local Delete")),
        "{sc}"
    );

    let resources = server.kubectl(&["api-resources"]);
    let row = |name: &str| -> Vec<String> {
        resources
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{resources}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        row("deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(row("nodes"), ["nodes", "no", "v1", "false", "Node"]);
    assert_eq!(row("jobs"), ["jobs", "batch/v1", "true", "Job"]);
    assert_eq!(
        row("clusterroles"),
        [
            "clusterroles",
            "rbac.authorization.k8s.io/v1",
            "false",
            "ClusterRole"
        ]
    );
    for name in [
        "pods",
        "services",
        "endpoints",
        "serviceaccounts",
        "persistentvolumes",
        "persistentvolumeclaims",
        "limitranges",
        "resourcequotas",
        "replicasets",
        "daemonsets",
        "statefulsets",
        "cronjobs",
        "leases",
        "endpointslices",
        "storageclasses",
        "roles",
        "rolebindings",
        "clusterrolebindings",
        "poddisruptionbudgets",
    ] {
        row(name);
    }
    let categories = server.kubectl(&["api-resources", "--categories=all", "-o", "name"]);
    let mut names: Vec<&str> = categories.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cronjobs.batch",
            "daemonsets.apps",
            "deployments.apps",
            "jobs.batch",
            "pods",
            "replicasets.apps",
            "services",
            "statefulsets.apps"
        ]
    );
    // kubectl takes everything from the aggregated documents: no per-group-version requests.
    let cache = server.dir.path().join("discovery-cache");
    let (_, log) =
        server.kubectl_with_stderr(&["api-resources", "-v=8", "--cache-dir", path_str(&cache)]);
    assert!(
        log.contains(
            "Content-Type: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ),
        "{log}"
    );
    assert!(!log.contains("/apis/apps/v1"), "{log}");
    let explain = server.kubectl(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");
}

#[test]
fn scale_status_and_generation() {
    // Without controllers: the test writes the Deployment's status itself.
    let server = Server::start_with(&["--disable-controllers"]);
    apply_manifest(&server);
    let out = server.kubectl(&["-n", "shop", "scale", "deployment", "web", "--replicas=3"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let got = server.kubectl(&[
        "-n",
        "shop",
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]);
    assert_eq!(got, "3 2", "a spec change bumps the generation");
    let scale = get_json(&server, &["deploy", "web", "--subresource=scale"]);
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    server.kubectl(&["-n", "shop", "scale", "statefulset", "db", "--replicas=2"]);
    let sts = get_json(&server, &["sts", "db"]);
    assert_eq!(sts["spec"]["replicas"], 2);
    // DaemonSets have no scale subresource.
    let err = server.kubectl_fails(&["-n", "shop", "scale", "daemonset", "agent", "--replicas=2"]);
    assert!(!err.is_empty());

    // A status write changes status only: spec and generation stay.
    server.kubectl(&[
        "-n",
        "shop",
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3,"readyReplicas":2,"updatedReplicas":3,"availableReplicas":2},"spec":{"replicas":9}}"#,
    ]);
    let deploy = get_json(&server, &["deploy", "web"]);
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["status"]["readyReplicas"], 2);
    assert_eq!(deploy["metadata"]["generation"], 2);
    let table = server.kubectl(&["-n", "shop", "get", "deploy", "web"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(4).eq(["web", "2/3", "3", "2"])),
        "{table}"
    );

    // The main resource ignores status changes; metadata changes keep the generation.
    server.kubectl(&[
        "-n",
        "shop",
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":0},"metadata":{"labels":{"tier":"front"}}}"#,
    ]);
    let deploy = get_json(&server, &["deploy", "web"]);
    assert_eq!(deploy["status"]["readyReplicas"], 2);
    assert_eq!(deploy["metadata"]["labels"]["tier"], "front");
    assert_eq!(deploy["metadata"]["generation"], 2);
    server.kubectl(&[
        "-n",
        "shop",
        "set",
        "image",
        "deployment/web",
        "nginx=nginx:1.28",
    ]);
    let deploy = get_json(&server, &["deploy", "web"]);
    assert_eq!(deploy["metadata"]["generation"], 3);
}

fn service_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{extra}  ports:\n  - port: 80\n"
    )
}

#[test]
fn services_get_unique_addresses_and_ports() {
    let server = Server::start();
    apply_manifest(&server);
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for i in 0..6 {
        let file = server.write(
            &format!("s{i}.yaml"),
            &service_yaml(&format!("s{i}"), "  type: NodePort\n"),
        );
        server.kubectl(&["apply", "-f", path_str(&file)]);
        let svc = get_json(&server, &["svc", &format!("s{i}")]);
        assert!(
            ips.insert(service_cidr_ip(&svc["spec"]["clusterIP"])),
            "{svc}"
        );
        assert!(ports.insert(svc["spec"]["ports"][0]["nodePort"].as_i64().expect("port")));
    }
    // An explicit address that is taken is refused; a free one is honoured.
    let taken = get_json(&server, &["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .to_owned();
    let file = server.write(
        "taken.yaml",
        &service_yaml("taken", &format!("  clusterIP: {taken}\n")),
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&file)]);
    assert!(
        err.contains(&format!(
            "spec.clusterIPs: Invalid value: []string{{\"{taken}\"}}: failed to allocate IP {taken}: provided IP is already allocated"
        )),
        "{err}"
    );
    let file = server.write(
        "free.yaml",
        &service_yaml("free", "  clusterIP: 10.43.0.77\n"),
    );
    server.kubectl(&["apply", "-f", path_str(&file)]);
    assert_eq!(
        get_json(&server, &["svc", "free"])["spec"]["clusterIP"],
        "10.43.0.77"
    );
    let file = server.write(
        "out.yaml",
        &service_yaml("out", "  clusterIP: 192.168.9.9\n"),
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&file)]);
    assert!(err.contains("is not in the valid range"), "{err}");
    // A released address can be asked for again.
    server.kubectl(&["-n", "shop", "delete", "svc", "free"]);
    let file = server.write(
        "again.yaml",
        &service_yaml("again", "  clusterIP: 10.43.0.77\n"),
    );
    server.kubectl(&["apply", "-f", path_str(&file)]);
    // A taken NodePort is refused.
    let used = ports.iter().next().copied().expect("a port");
    let file = server.write(
        "np.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\n  namespace: shop\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {used}\n"
        ),
    );
    let err = server.kubectl_fails(&["apply", "-f", path_str(&file)]);
    assert!(err.contains("provided port is already allocated"), "{err}");
    // Headless stays headless.
    let file = server.write(
        "headless.yaml",
        &service_yaml("headless", "  clusterIP: None\n"),
    );
    server.kubectl(&["apply", "-f", path_str(&file)]);
    let headless = get_json(&server, &["svc", "headless"]);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["clusterIPs"][0], "None");
    // Re-applying keeps the allocated values.
    let before = get_json(&server, &["svc", "web-np"])["spec"].clone();
    server.kubectl(&["apply", "-f", path_str(&server.write("all.yaml", MANIFEST))]);
    let after = get_json(&server, &["svc", "web-np"])["spec"].clone();
    assert_eq!(after["clusterIP"], before["clusterIP"]);
    assert_eq!(
        after["ports"][0]["nodePort"],
        before["ports"][0]["nodePort"]
    );
}

#[test]
fn pods_bind_once_and_evict() {
    let server = Server::start();
    apply_manifest(&server);
    let pod = server.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n",
    );
    server.kubectl(&["apply", "-f", path_str(&pod)]);
    let created = get_json(&server, &["pod", "p"]);
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["status"]["qosClass"], "Guaranteed");
    assert_eq!(created["spec"]["enableServiceLinks"], true);
    assert_eq!(
        created["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );

    let binding = server.write(
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"node-1"}}"#,
    );
    let path = "/api/v1/namespaces/shop/pods/p/binding";
    let out = server.kubectl(&["create", "--raw", path, "-f", path_str(&binding)]);
    assert!(out.contains("Success"), "{out}");
    let bound = get_json(&server, &["pod", "p"]);
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
    let err = server.kubectl_fails(&["create", "--raw", path, "-f", path_str(&binding)]);
    assert!(err.contains("already assigned to node \"node-1\""), "{err}");
    let wide = server.kubectl(&["-n", "shop", "get", "pod", "p", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.starts_with("p ") && l.contains("Pending") && l.contains("node-1")),
        "{wide}"
    );
    // The main resource may not move a pod.
    let err = server.kubectl_fails(&[
        "-n",
        "shop",
        "patch",
        "pod",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"nodeName":"node-2"}}"#,
    ]);
    assert!(err.contains("pod updates may not change fields"), "{err}");

    let eviction = server.write(
        "eviction.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p","namespace":"shop"}}"#,
    );
    server.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/shop/pods/p/eviction",
        "-f",
        path_str(&eviction),
    ]);
    // Evicted as deleted: Terminating with the pod's grace period until
    // its node's agent (here the tests' stand-in) sends the final delete.
    let evicted = get_json(&server, &["pod", "p"]);
    assert!(
        evicted["metadata"]["deletionTimestamp"].is_string(),
        "{evicted}"
    );
    assert_eq!(evicted["metadata"]["deletionGracePeriodSeconds"], 30);
    let _kubelet = server.fake_kubelet();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = server.try_kubectl(&["-n", "shop", "get", "pod", "p"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            assert!(err.contains("not found"), "{err}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "evicted pod not removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn invalid_objects_name_the_field() {
    let server = Server::start();
    apply_manifest(&server);
    let cases = [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: other}\n    spec:\n      containers:\n      - name: c\n        image: nginx\n",
            "The Deployment \"bad\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: noimage\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: x}\n  template:\n    metadata:\n      labels: {app: x}\n    spec:\n      containers:\n      - name: c\n",
            "spec.template.spec.containers[0].image: Required value",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: noports\n  namespace: shop\nspec:\n  selector: {app: x}\n",
            "The Service \"noports\" is invalid: spec.ports: Required value",
        ),
        (
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: always\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: busybox\n",
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
        ),
    ];
    for (i, (manifest, want)) in cases.iter().enumerate() {
        let file = server.write(&format!("bad{i}.yaml"), manifest);
        let err = server.kubectl_fails(&["apply", "-f", path_str(&file)]);
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
    // The selector of a Deployment may not change.
    let err = server.kubectl_fails(&[
        "-n",
        "shop",
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"web","v":"2"}},"template":{"metadata":{"labels":{"v":"2"}}}}}"#,
    ]);
    assert!(err.contains("spec.selector: Invalid value"), "{err}");
    assert!(err.contains("field is immutable"), "{err}");
}
