//! The node agent's pods part against a real containerd with CRI (see
//! `common/cri.rs`) and the API server in this process.

mod common;

use std::time::Duration;

use cairn::agent::cri::api;
use common::cri::{BUSYBOX, CriRuntime};

/// The harness itself: containerd with CRI answers, both test images are
/// there, and a sandbox gets an address on the test's bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_runs_a_sandbox() {
    let runtime = CriRuntime::start().await;
    let mut cri = runtime.cri().await;
    let status = cri
        .images
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    assert!(status.image.is_some(), "{BUSYBOX} not imported");
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "harness".into(),
            namespace: "default".into(),
            uid: "harness-uid".into(),
            attempt: 0,
        }),
        hostname: "harness".into(),
        log_directory: runtime.pod_log_dir().display().to_string(),
        ..Default::default()
    };
    let id = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", runtime.log()))
        .into_inner()
        .pod_sandbox_id;
    let status = cri
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id,
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    let ip = status.network.expect("network").ip;
    let prefix = runtime.subnet.rsplit_once('.').expect("subnet").0;
    assert!(ip.starts_with(prefix), "{ip} not in {}", runtime.subnet);
    let _ = Duration::ZERO;
}
