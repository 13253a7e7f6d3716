//! `kubectl logs`, `exec` (with stdin, with a terminal), `attach`,
//! `port-forward` and `cp`
//! end to end: the real kubectl (v1.32) → the real `cairn server` binary →
//! the agent's HTTPS API (in this process, `cairn::agent::server`) →
//! containerd 1.6 with its CRI plugin and runc, started here as root.
//!
//! Until the pods loop runs them, the test starts the pod itself through
//! CRI (a host-network sandbox, so no CNI is involved) with the layout
//! the pods part uses (sandbox metadata = the Pod's namespace, name and
//! uid; logs in `<ns>_<name>_<uid>/<container>/<attempt>.log`), and writes
//! the matching Pod and Node objects (status included) through the API.
//! The image is built here from the host's static busybox. A second test
//! runs the agent's log rotation on a chatty container and reads the
//! logs back across the rotated files.
//!
//! The official Python client (WebSocket-only exec and port-forward) runs
//! against the same pod (`agent_streams/python_client.py`).
//!
//! Needs root, `containerd`, `runc`, `ctr`, `kubectl`, `curl`,
//! `/bin/busybox` (a static one) and the venv with the Python client
//! (`$CAIRN_VENV`); without them the test fails.

mod common;
#[path = "agent_streams/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn::agent::cri::{Cri, api};
use cairn::agent::server::AgentServer;
use common::Server;
use harness::{Containerd, import_image, sandbox_config, start_container, wait_exited};
use serde_json::json;

const IMAGE: &str = "localhost/streams/busybox:1";
const NODE: &str = "streams-node";
const POD: &str = "streamer";
const HTTP_PORT: u16 = 18089;

/// Waits until `cond` holds on kubectl's output, or fails with it.
fn eventually(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cond() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn write_objects(server: &Server, agent_port: u16) -> String {
    let node = server.write(
        "node.yaml",
        &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"),
    );
    server.kubectl(&["apply", "-f", common::path_str(&node)]);
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    server.kubectl(&[
        "patch",
        "node",
        NODE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let pod = server.write(
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {POD}\n  namespace: default\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: app\n    image: {IMAGE}\n  - name: ticker\n    image: {IMAGE}\n"
        ),
    );
    server.kubectl(&["apply", "-f", common::path_str(&pod)]);
    server
        .kubectl(&["get", "pod", POD, "-o", "jsonpath={.metadata.uid}"])
        .trim()
        .to_owned()
}

fn set_pod_running(server: &Server, ids: &[(&str, &str, u32)]) {
    let statuses: Vec<_> = ids
        .iter()
        .map(|(name, id, restarts)| {
            json!({"name": name, "ready": true, "restartCount": restarts, "image": IMAGE,
                "imageID": "", "containerID": format!("containerd://{id}"),
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})
        })
        .collect();
    let status = json!({"status": {"phase": "Running", "hostIP": "127.0.0.1",
        "containerStatuses": statuses}});
    server.kubectl(&[
        "patch",
        "pod",
        POD,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn run(cmd: &mut Command, stdin: &[u8]) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What both tests start: containerd with the test image and its CRI
/// connection, an API server without controllers, and the agent's API
/// server on a free port (stopped through `stop_agent`).
struct Fixture {
    containerd: Containerd,
    cri: Cri,
    server: Server,
    agent_port: u16,
    stop_agent: tokio::sync::oneshot::Sender<()>,
    agent_task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start() -> Fixture {
        let containerd = Containerd::start();
        import_image(&containerd);
        let cri = {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match Cri::connect(&containerd.socket()).await {
                    Ok(cri) => break cri,
                    Err(err) => {
                        assert!(Instant::now() < deadline, "{err}\n{}", containerd.log());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        let server = Server::start_with(&["--disable-controllers"]);
        let ca = std::fs::read_to_string(server.dir.path().join("pki/ca.crt")).expect("ca");
        let mut config = cairn::agent::Config::new(NODE);
        config.agent_port = 0;
        config.node_ip = Some("127.0.0.1".parse().expect("ip"));
        config.pod_log_dir = containerd.log_dir();
        let agent = AgentServer::bind(&config, cri.clone(), &ca)
            .await
            .expect("agent api");
        let agent_port = agent.local_addr().expect("addr").port();
        let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent_task = tokio::spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        Fixture {
            containerd,
            cri,
            server,
            agent_port,
            stop_agent,
            agent_task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_exec_port_forward_and_cp_through_the_agent() {
    let Fixture {
        containerd,
        mut cri,
        server,
        agent_port,
        stop_agent,
        agent_task,
    } = Fixture::start().await;

    let uid = write_objects(&server, agent_port);
    let sandbox_cfg = sandbox_config(&uid, &containerd.log_dir());
    let sandbox = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log()))
        .into_inner()
        .pod_sandbox_id;
    // app: a first attempt that ran and exited, then the current one.
    let first = start_container(&mut cri, &sandbox, &sandbox_cfg, "app", 0, "echo first-run").await;
    wait_exited(&mut cri, &first).await;
    let app = start_container(
        &mut cri,
        &sandbox,
        &sandbox_cfg,
        "app",
        1,
        &format!(
            "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exec httpd -f -p 127.0.0.1:{HTTP_PORT} -h /www"
        ),
    )
    .await;
    let ticker = start_container(
        &mut cri,
        &sandbox,
        &sandbox_cfg,
        "ticker",
        0,
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done",
    )
    .await;
    set_pod_running(&server, &[("app", &app, 1), ("ticker", &ticker, 0)]);

    // logs: the container named, partial output waited for.
    eventually("kubectl logs -c app", || {
        let out = server.try_kubectl(&["logs", POD, "-c", "app"]);
        let text = String::from_utf8_lossy(&out.stdout);
        (text == "one\ntwo\nthree\n")
            .then_some(())
            .ok_or_else(|| format!("{text:?} {}", String::from_utf8_lossy(&out.stderr)))
    });
    // kubectl picks the first container itself; the API wants one named.
    let (out, err) = server.kubectl_with_stderr(&["logs", POD]);
    assert_eq!(out, "one\ntwo\nthree\n", "{err}");
    let (code, body) = server.curl(
        "GET",
        &format!("/api/v1/namespaces/default/pods/{POD}/log"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(&format!(
            "a container name must be specified for pod {POD}, choose one of: [app ticker]"
        )),
        "{body}"
    );
    let err = server.kubectl_fails(&["logs", POD, "-c", "nope"]);
    assert!(
        err.contains(&format!("container nope is not valid for pod {POD}")),
        "{err}"
    );
    assert_eq!(
        server.kubectl(&["logs", POD, "-c", "app", "--tail=1"]),
        "three\n"
    );
    assert_eq!(
        server.kubectl(&["logs", POD, "-c", "app", "--previous"]),
        "first-run\n"
    );
    assert_eq!(
        server.kubectl(&["logs", POD, "-c", "app", "--limit-bytes=6"]),
        "one\ntw"
    );
    let stamped = server.kubectl(&["logs", POD, "-c", "app", "--timestamps"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 3, "{stamped}");
    for (line, text) in lines.iter().zip(["one", "two", "three"]) {
        let (time, rest) = line.split_once(' ').expect("timestamp");
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{line}");
        assert_eq!(rest, text);
    }
    assert_eq!(
        server.kubectl(&["logs", POD, "-c", "app", "--since=1h"]),
        "one\ntwo\nthree\n"
    );
    let future = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .expect("time")
        .to_string();
    assert_eq!(
        server.kubectl(&["logs", POD, "-c", "app", &format!("--since-time={future}")]),
        ""
    );
    // The ticker's first attempt has no previous one.
    let err = server.kubectl_fails(&["logs", POD, "-c", "ticker", "--previous"]);
    assert!(
        err.contains("previous terminated container \"ticker\" in pod \"streamer\" not found"),
        "{err}"
    );

    // exec: output, stdin, exit codes.
    // A host-network pod has the host's name.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        server
            .kubectl(&["exec", POD, "-c", "app", "--", "cat", "/etc/hostname"])
            .trim(),
        host.trim()
    );
    let (code, out, err) = run(
        &mut server.kubectl_cmd(&[
            "exec",
            "-i",
            POD,
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "cat > /tmp/in; wc -c < /tmp/in; cat /tmp/in",
        ]),
        b"hello through stdin\n",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "20\nhello through stdin\n"),
        "{err}"
    );
    let (code, _, err) = run(
        &mut server.kubectl_cmd(&[
            "exec",
            POD,
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "echo to-stderr >&2; exit 3",
        ]),
        b"",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("to-stderr"), "{err}");
    let err = server.kubectl_fails(&["exec", POD, "-c", "nope", "--", "true"]);
    assert!(
        err.contains(&format!("container nope is not valid for pod {POD}")),
        "{err}"
    );

    // kubectl asked for WebSocket v5 first; containerd 1.6 refused it and
    // kubectl fell back to SPDY, through the API server and the agent.
    let (code, out, verbose) = run(
        &mut server.kubectl_cmd(&["exec", "-v=6", POD, "-c", "app", "--", "echo", "spdy"]),
        b"",
    );
    assert_eq!((code, out.as_str()), (0, "spdy\n"), "{verbose}");
    assert!(
        verbose.contains("RemoteCommand fallback") && verbose.contains("101 Switching Protocols"),
        "{verbose}"
    );
    // exec -it: a terminal (kubectl under `script`, which gives it one).
    let kubeconfig = server.kubeconfig();
    let (code, out, err) = run(
        Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "kubectl --kubeconfig {} exec -it {POD} -c app -- sh",
                kubeconfig.display()
            ))
            .arg("/dev/null"),
        b"tty; exit 7\n",
    );
    assert_eq!(code, 7, "{out}{err}");
    assert!(out.contains("/dev/pts/"), "{out}{err}");

    // attach: the running container's own output.
    let mut attach = server
        .kubectl_cmd(&["attach", POD, "-c", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach");
    let mut attached = BufReader::new(attach.stdout.take().expect("stdout"));
    let mut line = String::new();
    attached.read_line(&mut line).expect("attach output");
    assert!(line.starts_with("tick "), "{line:?}");
    let _ = attach.kill();
    let _ = attach.wait();

    // cp: into the pod and back out (busybox tar).
    let local = server.dir.path().join("payload.txt");
    let payload: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&local, &payload).expect("payload");
    server.kubectl(&[
        "cp",
        common::path_str(&local),
        &format!("default/{POD}:/tmp/payload.txt"),
        "-c",
        "app",
    ]);
    assert_eq!(
        server.kubectl(&["exec", POD, "-c", "app", "--", "cat", "/tmp/payload.txt"]),
        payload
    );
    let back = server.dir.path().join("back.txt");
    server.kubectl(&[
        "cp",
        &format!("default/{POD}:/tmp/payload.txt"),
        common::path_str(&back),
        "-c",
        "app",
    ]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied back"),
        payload
    );

    // port-forward: busybox httpd in the pod, fetched from the host.
    let local_port = free_port();
    let mut forward = server
        .kubectl_cmd(&[
            "port-forward",
            "-v=6",
            &format!("pod/{POD}"),
            &format!("{local_port}:{HTTP_PORT}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("port-forward");
    // Keep kubectl's stdout open: it prints a line per address.
    let mut forward_out = BufReader::new(forward.stdout.take().expect("stdout"));
    let mut ready = String::new();
    forward_out.read_line(&mut ready).expect("read");
    assert!(ready.contains("Forwarding from"), "{ready}");
    for _ in 0..2 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{local_port}/index.html"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from httpd in the pod\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = forward.kill();
    let mut verbose = String::new();
    let _ = forward
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut verbose));
    let _ = forward.wait();
    // WebSocket tunneling first, SPDY after containerd refused it.
    assert!(
        verbose.contains("fallback to secondary dialer")
            && verbose.contains("portforward 101 Switching Protocols"),
        "{verbose}"
    );

    // The official Python client speaks WebSocket only (v4.channel.k8s.io
    // for exec and port-forward alike, no SPDY to fall back to).
    let seen = python_client(&server);
    assert_eq!(seen["exec"], "out-line\n", "{seen}");
    assert_eq!(seen["stdout"], "got hello\n", "{seen}");
    assert_eq!(seen["stderr"], "to-stderr\n", "{seen}");
    assert_eq!(seen["returncode"], 3, "{seen}");
    let forwarded = seen["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.starts_with("HTTP/1.")
            && forwarded.ends_with("\r\n\r\nhello from httpd in the pod\n"),
        "{seen}"
    );
    assert_eq!(seen["forward_error"], serde_json::Value::Null, "{seen}");
    assert!(
        seen["closed_error"]
            .as_str()
            .is_some_and(|e| e.contains("connection refused")),
        "{seen}"
    );

    // follow: new lines arrive; the stream ends when the container stops.
    let mut follow = server
        .kubectl_cmd(&["logs", "-f", POD, "-c", "ticker", "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let tick = |line: Option<std::io::Result<String>>| -> u64 {
        let line = line.expect("a line").expect("read");
        line.strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    let a = tick(lines.next());
    let b = tick(lines.next());
    let c = tick(lines.next());
    assert!(a < b && b < c, "{a} {b} {c}");
    cri.runtime
        .stop_container(api::StopContainerRequest {
            container_id: ticker.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = follow.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "kubectl logs -f did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");

    // A pod whose container has not started: the kubelet's 400.
    let waiting = server.write(
        "waiting.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: waiting\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: c\n    image: {IMAGE}\n"
        ),
    );
    server.kubectl(&["apply", "-f", common::path_str(&waiting)]);
    let status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "c",
        "ready": false, "restartCount": 0, "image": IMAGE, "imageID": "",
        "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
    server.kubectl(&[
        "patch",
        "pod",
        "waiting",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let err = server.kubectl_fails(&["logs", "waiting"]);
    assert!(
        err.contains("container \"c\" in pod \"waiting\" is waiting to start: ContainerCreating"),
        "{err}"
    );
    // A completed pod cannot be exec'd into.
    let status = json!({"status": {"phase": "Succeeded"}});
    server.kubectl(&[
        "patch",
        "pod",
        "waiting",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    // (kubectl checks this itself; the API server too, for other clients.)
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/pods/waiting/exec?command=sh&stdout=true",
        "text/plain",
        b"",
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(
            "cannot exec into a container in a completed pod; current phase is Succeeded"
        ),
        "{body}"
    );
    // The agent API wants a client certificate from the cluster CA.
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "5"])
        .arg(format!("https://127.0.0.1:{agent_port}/healthz"))
        .output()
        .expect("curl");
    assert!(!out.status.success(), "no client certificate, yet: {out:?}");
    let pki = server.dir.path().join("pki");
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "5", "--cert"])
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:{agent_port}/healthz"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{out:?}");

    let _ = stop_agent.send(());
    let _ = agent_task.await;
    let _ = cri
        .runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await;
    let _ = cri
        .runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await;
}

/// Runs `agent_streams/python_client.py` (exec and port-forward with the
/// official Python client, from the venv at `$CAIRN_VENV`, else the
/// repository's `.cache/venv`, else /var/cache/cairn/venv) against the
/// pod's `app` container and returns what it saw.
fn python_client(server: &Server) -> serde_json::Value {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("CAIRN_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(repo.join(".cache/venv")).filter(|v| v.exists()))
        .unwrap_or_else(|| "/var/cache/cairn/venv".into());
    let script = repo.join("orchestrator/tests/agent_streams/python_client.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg(venv.join("bin/python"))
        .arg(script)
        .arg(server.kubeconfig())
        .args([POD, "app", &HTTP_PORT.to_string(), &free_port().to_string()])
        .output()
        .expect("the venv's python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// The files in the log directory of container `app` of the pod `uid`.
fn app_log_files(log_dir: &std::path::Path, uid: &str) -> Vec<String> {
    let dir = log_dir.join(format!("default_{POD}_{uid}/app"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Log rotation (`cairn::agent::logrotate`, a 1 KiB maximum size, 3
/// files, checked every second) of a container printing ~14 KB: files are
/// rotated and their number stays at 3 at most; `kubectl logs` reads the
/// current file, `--tail` and `--since` read back across the rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_are_rotated_and_read_back_across_rotations() {
    let Fixture {
        containerd,
        mut cri,
        server,
        agent_port,
        stop_agent,
        agent_task,
    } = Fixture::start().await;
    let policy = cairn::agent::logrotate::Policy::new(1024, 3).expect("policy");
    let rotation = tokio::spawn(cairn::agent::logrotate::run(
        cri.clone(),
        policy,
        Duration::from_secs(1),
    ));

    let uid = write_objects(&server, agent_port);
    let sandbox_cfg = sandbox_config(&uid, &containerd.log_dir());
    let sandbox = cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log()))
        .into_inner()
        .pod_sandbox_id;
    // ~48 bytes a line, 300 lines over 6 s or more, then two last lines.
    let app = start_container(
        &mut cri,
        &sandbox,
        &sandbox_cfg,
        "app",
        0,
        "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; sleep 0.02; done; \
         sleep 2; echo last-a; echo last-b; exec sleep 3600",
    )
    .await;
    set_pod_running(&server, &[("app", &app, 0)]);

    // Rotated while it prints; never more than 3 files.
    let mut most = 0;
    let mut rotated_seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = app_log_files(&containerd.log_dir(), &uid);
        most = most.max(files.len());
        rotated_seen |= files.iter().any(|f| f.starts_with("0.log."));
        let current = std::fs::read_to_string(
            containerd
                .log_dir()
                .join(format!("default_{POD}_{uid}/app/0.log")),
        )
        .unwrap_or_default();
        if current.contains("last-b") && current.len() <= 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no end: {files:?}\n{}",
            containerd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated_seen, "the log was never rotated");
    assert!(most <= 3, "{most} files at once");
    // Let another round pass: the current file is under the size, kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let files = app_log_files(&containerd.log_dir(), &uid);
    assert!(
        (2..=3).contains(&files.len()) && files.iter().any(|f| f.starts_with("0.log.")),
        "{files:?}"
    );

    let expected = |n: usize| -> Vec<String> {
        let mut all: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
        all.extend(["last-a".to_owned(), "last-b".to_owned()]);
        all.split_off(all.len() - n)
    };
    // Plain: the current file only (as the kubelet), under 1 KiB: < 22 lines.
    let current = tokio::task::block_in_place(|| server.kubectl(&["logs", POD, "-c", "app"]));
    let current: Vec<String> = current.lines().map(str::to_owned).collect();
    assert!(
        !current.is_empty() && current.len() < 22,
        "current file: {current:?}"
    );
    assert_eq!(current, expected(current.len()));
    // --tail beyond the current file reads back across the rotation.
    let tail =
        tokio::task::block_in_place(|| server.kubectl(&["logs", POD, "-c", "app", "--tail=40"]));
    let tail: Vec<String> = tail.lines().map(str::to_owned).collect();
    assert_eq!(tail, expected(40));
    // --since an hour: everything the kept files hold, in order.
    let since =
        tokio::task::block_in_place(|| server.kubectl(&["logs", POD, "-c", "app", "--since=1h"]));
    let since: Vec<String> = since.lines().map(str::to_owned).collect();
    assert!(since.len() > 40, "{}", since.len());
    assert_eq!(since, expected(since.len()));

    rotation.abort();
    let _ = stop_agent.send(());
    let _ = agent_task.await;
    let _ = cri
        .runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await;
    let _ = cri
        .runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await;
}
