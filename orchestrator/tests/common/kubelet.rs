//! A stand-in for the node agent's last step, for tests whose server runs
//! with `--disable-agent` and binds pods to Node objects registered through
//! the API: such pods stay `Terminating` after a delete, as upstream's do
//! when no kubelet runs. [`FakeKubelet`] sends, for each of them, exactly
//! the final delete the real agent sends once a pod's containers stopped
//! (`gracePeriodSeconds: 0` with the pod's uid as precondition). The real
//! agent's termination is tested in `agent_pods.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

/// How often the terminating pods are looked for.
const PERIOD: Duration = Duration::from_millis(200);

/// Finishes terminating pods bound to a node until dropped.
#[must_use = "the stand-in stops when dropped"]
pub struct FakeKubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeKubelet {
    /// Starts watching the server on `port` (admin certificate in `pki`).
    pub fn start(pki: PathBuf, port: u16) -> FakeKubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                finish_terminating(&pki, port);
                std::thread::sleep(PERIOD);
            }
        });
        FakeKubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One pass: the final delete of every bound pod with a `deletionTimestamp`.
fn finish_terminating(pki: &std::path::Path, port: u16) {
    let Ok((200, body)) =
        super::try_curl_at(pki, port, "GET", "/api/v1/pods", "application/json", b"")
    else {
        return;
    };
    let Ok(list) = serde_json::from_str::<Value>(&body) else {
        return;
    };
    for pod in list["items"].as_array().into_iter().flatten() {
        let meta = &pod["metadata"];
        if meta["deletionTimestamp"].is_null()
            || pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty()
        {
            continue;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().unwrap_or("")
        );
        let options = json!({
            "kind": "DeleteOptions", "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        });
        // 404/409: gone or replaced meanwhile, as for the real agent.
        let _ = super::try_curl_at(
            pki,
            port,
            "DELETE",
            &path,
            "application/json",
            options.to_string().as_bytes(),
        );
    }
}
