//! Image garbage collection against a real containerd with CRI and runc
//! (`common/cri.rs`), the API in this process and the agent's pods loop:
//! with the thresholds at 0 % (a round is forced whatever the disk's
//! usage), an image no container uses is removed, the image of a running
//! pod and the pod sandbox image stay, an unused image seen less than the
//! minimum age ago is kept, and the shortfall is
//! reported as the Node event `FreeDiskSpaceFailed`.
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static.

mod common;

use std::time::Duration;

use cairn::agent::Config;
use cairn::agent::cri::api;
use cairn::agent::imagegc::{GcError, ImageGc, Policy};
use common::cluster::{Cluster, eventually};
use common::cri::{BUSYBOX, CriRuntime, busybox_archive};

const NODE: &str = "gc-node";
const OLD: &str = "localhost/test/unused-old:1";
const NEW: &str = "localhost/test/unused-new:1";

fn config(runtime: &CriRuntime) -> Config {
    let mut config = Config::new(NODE);
    config.runtime_endpoint = runtime.socket();
    config.pod_log_dir = runtime.pod_log_dir();
    config.root_dir = runtime.dir.path().join("agent");
    config.cni_conf_dir = runtime.cni_conf_dir();
    config.node_ip = Some("127.0.0.1".parse().expect("ip"));
    config.sandbox_image = runtime.sandbox_image.clone();
    config
}

/// Whether CRI has image `name`.
async fn has(runtime: &CriRuntime, name: &str) -> bool {
    let mut cri = runtime.cri().await;
    cri.images
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: name.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unused_images_go_used_pinned_and_young_ones_stay() {
    let runtime = CriRuntime::start().await;
    runtime
        .import(&[(OLD, busybox_archive(OLD, &["/bin/true"]))])
        .await;
    let cluster = Cluster::start(false).await;
    cluster.register_node(NODE).await;
    let mut config = config(&runtime);
    let client = cluster.node_client(NODE);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(cairn::agent::pods::run(
        config.clone(),
        client.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    tokio::task::block_in_place(|| {
        cluster.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: user, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ))
    });
    eventually(
        Duration::from_secs(60),
        || tokio::task::block_in_place(|| cluster.kubectl(&["get", "pod", "user", "-o", "yaml"])),
        || async {
            let pod = cluster.pod("default", "user").await?;
            (pod["status"]["phase"] == "Running").then_some(())
        },
    )
    .await;

    // High and low thresholds at 0 %: every used byte is to free, more
    // than unused images hold, so a round always runs and always falls short.
    config.image_gc = Policy::new(0, 0, Duration::ZERO).expect("policy");
    let mut gc = ImageGc::new(runtime.cri().await, client.clone(), &config);
    let first = gc.collect().await;
    assert!(
        matches!(first, Err(GcError::NotEnough { found, .. }) if found > 0),
        "{first:?}"
    );
    assert!(!has(&runtime, OLD).await, "the unused image is removed");
    assert!(
        has(&runtime, BUSYBOX).await,
        "the running pod's image stays"
    );
    assert!(
        has(&runtime, &runtime.sandbox_image).await,
        "the sandbox image stays"
    );

    // With an hour's minimum age, an unused image just seen is kept.
    runtime
        .import(&[(NEW, busybox_archive(NEW, &["/bin/false"]))])
        .await;
    config.image_gc = Policy::new(0, 0, Duration::from_secs(3600)).expect("policy");
    let mut gc = ImageGc::new(runtime.cri().await, client, &config);
    let second = gc.collect().await;
    assert!(
        matches!(second, Err(GcError::NotEnough { found: 0, .. })),
        "{second:?}"
    );
    assert!(has(&runtime, NEW).await, "a young image stays");
    assert!(has(&runtime, BUSYBOX).await && has(&runtime, &runtime.sandbox_image).await);

    // The shortfall, as `kubectl describe node` shows it.
    let events = eventually(
        Duration::from_secs(10),
        || "no FreeDiskSpaceFailed event".into(),
        || async {
            let out = tokio::task::block_in_place(|| {
                cluster.kubectl(&[
                    "get",
                    "events",
                    "-n",
                    "default",
                    "--field-selector",
                    "reason=FreeDiskSpaceFailed",
                    "-o",
                    "json",
                ])
            });
            let list: serde_json::Value = serde_json::from_str(&out).ok()?;
            let items = list["items"].as_array()?.clone();
            (!items.is_empty()).then_some(items)
        },
    )
    .await;
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Node");
    assert_eq!(event["involvedObject"]["name"], NODE);
    let message = event["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("Failed to garbage collect required amount of images."),
        "{message}"
    );

    let _ = stop.send(());
    agent.abort();
    let _ = agent.await;
}
