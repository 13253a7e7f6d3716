//! Host test: a crashing service is restarted with a growing back-off, and shutdown
//! escalates from SIGTERM to SIGKILL on a service that ignores SIGTERM.
//!
//! The reaper waits for *every* child of the process, so this test must be the only
//! one in its binary (one file = one binary). It makes itself a child subreaper so
//! that orphans of the services come back to it, as they would to PID 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_init::supervisor::{Backoff, Config, Event, Exit, ServiceSpec, Supervisor, reaper};
use nix::sys::signal::Signal;
use tokio::sync::broadcast;
use tokio::time::timeout;

const BASE: Duration = Duration::from_millis(100);
const STARTS: usize = 5;

fn sh(name: &str, script: &str, log_dir: &Path) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        log_dir: Some(log_dir.to_path_buf()),
        on_console: false,
    }
}

async fn next_event(events: &mut broadcast::Receiver<Event>) -> Event {
    timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event within 30 s")
        .expect("event stream open and not lagging")
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count_lines(path: &Path, line: &str) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}

/// Pids of live processes (not zombies) in process group `pgrp`.
fn live_in_group(pgrp: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let pid = head.split_whitespace().next().and_then(|p| p.parse().ok());
        let group = fields.get(2).and_then(|g| g.parse::<i32>().ok());
        if let (Some(pid), Some(&state), Some(group)) = (pid, fields.first(), group)
            && group == pgrp
            && state != "Z"
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn restarts_with_backoff_and_shutdown_escalates_to_kill() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    // Supervisor logs (exits, reaped orphans) are shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_test_writer()
        .try_init();
    let logs =
        std::env::temp_dir().join(format!("cairn-supervisor-restart-{}", std::process::id()));
    let _ = fs::remove_dir_all(&logs);

    reaper::spawn().expect("start the reaper");
    let supervisor = Supervisor::with_config(Config {
        backoff: Backoff {
            base: BASE,
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        },
        ..Config::default()
    });
    let mut events = supervisor.subscribe();

    // 1. A service that crashes at once is restarted after 100, 200, 400, 800 ms.
    supervisor.start(sh("crasher", "echo started; exit 3", &logs));
    let mut starts = Vec::new();
    let mut delays = Vec::new();
    while starts.len() < STARTS {
        match next_event(&mut events).await {
            Event::Started { at, .. } => starts.push(at),
            Event::Exited {
                exit, restart_in, ..
            } => {
                assert_eq!(
                    exit,
                    Some(Exit::Code(3)),
                    "the crash status reaches the supervisor"
                );
                delays.push(restart_in.expect("restarting while not stopping"));
            }
        }
    }
    let expected: Vec<Duration> = [1, 2, 4, 8].iter().map(|&k| BASE * k).collect();
    assert_eq!(delays, expected, "exponential back-off schedule");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, delay) in gaps.iter().zip(&expected) {
        assert!(
            gap >= delay,
            "a restart came before its back-off: gaps {gaps:?}"
        );
    }
    assert!(gaps[STARTS - 2] > gaps[0] * 3, "gaps grow: {gaps:?}");
    let crasher_log = logs.join("crasher.log");
    eventually("one log line per start", || {
        count_lines(&crasher_log, "started") >= STARTS
    })
    .await;

    // 2. A service that ignores SIGTERM is killed, with its whole process group,
    //    once the grace period is over.
    supervisor.start(sh("stubborn", "trap '' TERM; echo ready; sleep 100", &logs));
    let stubborn_pid = loop {
        if let Event::Started { service, pid, .. } = next_event(&mut events).await
            && &*service == "stubborn"
        {
            break pid;
        }
    };
    let stubborn_log = logs.join("stubborn.log");
    eventually("the TERM trap to be set", || {
        count_lines(&stubborn_log, "ready") == 1
    })
    .await;
    assert!(!live_in_group(stubborn_pid).is_empty());

    let grace = Duration::from_millis(500);
    let began = Instant::now();
    supervisor.shutdown(grace).await;
    let took = began.elapsed();
    assert!(
        took >= grace,
        "SIGTERM was ignored, so shutdown waited the grace: {took:?}"
    );
    assert!(
        took < grace + Duration::from_secs(8),
        "SIGKILL ended it promptly: {took:?}"
    );

    let mut stubborn_exit = None;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Exited {
                service,
                exit,
                restart_in,
                ..
            } => {
                assert_eq!(restart_in, None, "no restart while stopping");
                if &*service == "stubborn" {
                    stubborn_exit = Some(exit);
                }
            }
            Event::Started { service, .. } => {
                assert_ne!(&*service, "stubborn", "no restart after shutdown");
            }
        }
    }
    assert_eq!(stubborn_exit, Some(Some(Exit::Signal(Signal::SIGKILL))));
    // `sleep 100` was in the group too; once it is killed and reaped, nothing is left.
    eventually("the stubborn process group to be gone", || {
        live_in_group(stubborn_pid).is_empty()
    })
    .await;

    let _ = fs::remove_dir_all(&logs);
}
