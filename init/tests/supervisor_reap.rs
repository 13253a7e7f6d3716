//! Host test: orphans left by a service are reaped, and the service's own exit
//! status still reaches the supervisor.
//!
//! The reaper waits for *every* child of the process, so this test must be the only
//! one in its binary (one file = one binary). It makes itself a child subreaper so
//! that orphans of the services come back to it, as they would to PID 1.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_init::supervisor::{Backoff, Config, Event, Exit, ServiceSpec, Supervisor, reaper};
use nix::sys::signal::Signal;
use tokio::sync::broadcast;
use tokio::time::timeout;

struct Proc {
    pid: i32,
    comm: String,
    state: String,
}

/// The children of this process (zombies included), from /proc.
fn children() -> Vec<Proc> {
    let me = i32::try_from(std::process::id()).expect("pid fits in i32");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let pid = head.split_whitespace().next().and_then(|p| p.parse().ok());
        let ppid = fields.get(1).and_then(|p| p.parse::<i32>().ok());
        if let (Some(pid), Some(ppid), Some(state)) = (pid, ppid, fields.first())
            && ppid == me
        {
            found.push(Proc {
                pid,
                comm: stat[open + 1..head.len()].to_string(),
                state: (*state).to_string(),
            });
        }
    }
    found
}

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        log_dir: None,
        on_console: false,
    }
}

/// The next `Exited` event of `name`: its pid and status.
async fn exited(
    events: &mut broadcast::Receiver<Event>,
    name: &str,
) -> (Option<i32>, Option<Exit>) {
    loop {
        let event = timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("an event within 30 s")
            .expect("event stream open and not lagging");
        if let Event::Exited {
            service, pid, exit, ..
        } = event
            && &*service == name
        {
            return (pid, exit);
        }
    }
}

#[tokio::test]
async fn reaps_orphans_without_stealing_service_status() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    // Supervisor logs (exits, reaped orphans) are shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_test_writer()
        .try_init();
    reaper::spawn().expect("start the reaper");
    // A long back-off: each service runs once during the test.
    let supervisor = Supervisor::with_config(Config {
        backoff: Backoff {
            base: Duration::from_secs(60),
            ..Backoff::default()
        },
        ..Config::default()
    });
    let mut events = supervisor.subscribe();

    // The shell exits at once with 7, leaving two sleeps behind; they are
    // re-parented to us (the subreaper) and the reaper must collect them.
    supervisor.start(sh("orphans", "sleep 1 & sleep 1.5 & exit 7"));
    let (pid, exit) = exited(&mut events, "orphans").await;
    assert!(pid.is_some());
    assert_eq!(
        exit,
        Some(Exit::Code(7)),
        "the service's own status was delivered"
    );
    let orphans: Vec<i32> = children()
        .into_iter()
        .filter(|p| p.comm == "sleep")
        .map(|p| p.pid)
        .collect();
    assert_eq!(
        orphans.len(),
        2,
        "the sleeps were re-parented to the test process"
    );

    // A service killed by a signal reports the signal.
    supervisor.start(sh("killed", "kill -KILL $$"));
    let (_, exit) = exited(&mut events, "killed").await;
    assert_eq!(exit, Some(Exit::Signal(Signal::SIGKILL)));

    // A one-shot helper gets its status through the reaper too.
    let mut helper = std::process::Command::new("/bin/sh");
    helper.args(["-c", "exit 5"]);
    let exit = reaper::run(&mut helper).await.expect("run a helper");
    assert_eq!(exit, Exit::Code(5));

    // Once the sleeps end they are reaped: gone from /proc, no zombie left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while orphans
        .iter()
        .any(|pid| fs::metadata(format!("/proc/{pid}")).is_ok())
    {
        assert!(Instant::now() < deadline, "orphans were not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let zombies: Vec<String> = children()
        .into_iter()
        .filter(|p| p.state == "Z")
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    assert!(zombies.is_empty(), "zombie children left: {zombies:?}");

    supervisor.shutdown(Duration::from_secs(1)).await;
}
