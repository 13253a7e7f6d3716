//! The node agent's probes: HTTP, HTTPS and TCP checks against listeners
//! the tests open on 127.0.0.1 (success, failure after
//! `failureThreshold`, recovery after `successThreshold`, startup gating,
//! a new container replacing the old one's workers), and exec checks in a
//! busybox container of a real containerd with CRI (`common/cri.rs`).
//!
//! Runs as root (containerd), as `.ci/run` does.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use cairn::agent::cri::api;
use cairn::agent::probes::Probes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on 127.0.0.1 answering every request with `status`.
async fn http_server(status: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test server");
    let port = listener.local_addr().expect("test server").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

async fn wait_probe(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_thresholds_and_recovery() {
    let status = Arc::new(AtomicU16::new(200));
    let port = http_server(status.clone()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c", "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2}});
    probes.ensure("default/p", "127.0.0.1", "c", "id1", &spec);
    assert!(!probes.ready("id1"), "not ready before the probe passes");
    assert!(probes.started("id1"), "no startup probe");
    wait_probe("ready", || probes.ready("id1")).await;
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));
    let t = Instant::now();
    status.store(503, Ordering::SeqCst);
    wait_probe("not ready after 2 failures", || !probes.ready("id1")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "one failure is not enough"
    );
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));
    status.store(302, Ordering::SeqCst);
    wait_probe("ready again after 2 successes", || probes.ready("id1")).await;
    assert_eq!(probes.liveness_failure("id1"), None);
    probes.forget("default/p");
    assert!(!probes.ready("id1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_liveness_fails_after_threshold_and_startup_gates() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c",
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 2}});
    probes.ensure("default/p", "127.0.0.1", "c", "id1", &spec);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(probes.liveness_failure("id1"), None, "the port is open");
    assert!(probes.ready("id1"), "no readiness probe");
    drop(listener);
    wait_probe("liveness failure", || {
        probes.liveness_failure("id1").is_some()
    })
    .await;
    assert_eq!(
        probes.liveness_failure("id1").unwrap(),
        format!("Liveness probe failed: dial tcp 127.0.0.1:{port}: connect: connection refused")
    );
    assert_eq!(rx.recv().await.as_deref(), Some("default/p"));

    // A new container of the same name replaces the old one's workers.
    // Its startup probe holds readiness and liveness back until it passes.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let status = Arc::new(AtomicU16::new(200));
    let http = http_server(status).await;
    let spec = json!({"name": "c",
        "startupProbe": {"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"port": http}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 1}});
    probes.ensure("default/p", "127.0.0.1", "c", "id2", &spec);
    assert_eq!(
        probes.liveness_failure("id1"),
        None,
        "old container forgotten"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!probes.started("id2"));
    assert!(!probes.ready("id2"), "readiness waits for startup");
    assert_eq!(
        probes.liveness_failure("id2"),
        None,
        "liveness waits for startup"
    );
    let _open = std::net::TcpListener::bind(("127.0.0.1", closed)).expect("rebind the port");
    wait_probe("started", || probes.started("id2")).await;
    wait_probe("ready", || probes.ready("id2")).await;
    assert_eq!(probes.liveness_failure("id2"), None);
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate, answering 200.
async fn https_server() -> u16 {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("test server");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("test server")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("test server");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test server");
    let port = listener.local_addr().expect("test server").port();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_does_not_verify_the_certificate() {
    let port = https_server().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::without_runtime(tx);
    let spec = json!({"name": "c",
        "readinessProbe": {"httpGet": {"port": port, "scheme": "HTTPS", "path": "/healthz"},
            "periodSeconds": 1}});
    probes.ensure("default/s", "127.0.0.1", "c", "tls", &spec);
    wait_probe("ready over HTTPS", || probes.ready("tls")).await;
    // The same server spoken to in plain HTTP does not pass.
    let plain = json!({"name": "c",
        "readinessProbe": {"httpGet": {"port": port}, "periodSeconds": 1, "timeoutSeconds": 1}});
    probes.ensure("default/s2", "127.0.0.1", "c", "plain", &plain);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!probes.ready("plain"));
}

/// A running busybox container (`sleep`) in a sandbox: its ID.
async fn busybox_container(runtime: &common::cri::CriRuntime) -> String {
    let mut cri = runtime.cri().await;
    let sandbox = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "probed".into(),
            namespace: "default".into(),
            uid: "probed-uid".into(),
            attempt: 0,
        }),
        hostname: "probed".into(),
        log_directory: runtime.pod_log_dir().display().to_string(),
        ..Default::default()
    };
    let sandbox_id = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", runtime.log()))
        .into_inner()
        .pod_sandbox_id;
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: common::cri::BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    let id = cri
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id,
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", runtime.log()))
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", runtime.log()));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_in_a_container() {
    let runtime = common::cri::CriRuntime::start().await;
    let id = busybox_container(&runtime).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = Probes::new(runtime.cri().await, tx);
    let spec = json!({"name": "c",
        "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/ready"]},
            "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["sh", "-c", "echo slow; sleep 10"]},
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}});
    probes.ensure("default/probed", "", "c", &id, &spec);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!probes.ready(&id), "/tmp/ready is not there yet");
    let mut cri = runtime.cri().await;
    let touched = cri
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["touch".into(), "/tmp/ready".into()],
            timeout: 5,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(touched.exit_code, 0);
    wait_probe("ready once the file exists", || probes.ready(&id)).await;
    assert_eq!(rx.recv().await.as_deref(), Some("default/probed"));
    // The liveness command outlives its timeout twice.
    wait_probe("liveness failure", || {
        probes.liveness_failure(&id).is_some()
    })
    .await;
    let failure = probes.liveness_failure(&id).unwrap();
    assert_eq!(
        failure,
        "Liveness probe failed: command \"sh -c echo slow; sleep 10\" timed out"
    );
}
