//! One supervised service: start it, forward its output, await its exit, restart
//! it after a back-off, until the supervisor stops.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout;
use tracing::{error, info, warn};

use super::logfile::Output;
use super::{Event, ServiceSpec, Shared, output, reaper};

/// The PATH a service gets unless its spec sets one.
pub(crate) const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long, after an exit, the output of the ended process may still drain.
const DRAIN: Duration = Duration::from_millis(200);

/// The command for `spec`: clean environment, stdin from /dev/null, output piped
/// (or all three on the console, for [`ServiceSpec::on_console`]), its own
/// process group (so signals aimed at it, and at init, don't leak across).
pub(crate) fn command(spec: &ServiceSpec) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    match spec.on_console.then(console_stdio).flatten() {
        Some([stdin, stdout, stderr]) => cmd.stdin(stdin).stdout(stdout).stderr(stderr),
        None => cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    };
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// `/dev/console`, opened read-write three times (stdin, stdout, stderr);
/// `None` (and a warning) if it cannot be opened.
fn console_stdio() -> Option<[Stdio; 3]> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .map(Stdio::from)
    };
    match (open(), open(), open()) {
        (Ok(a), Ok(b), Ok(c)) => Some([a, b, c]),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            warn!(error = %e, "opening /dev/console for a service");
            None
        }
    }
}

/// The life of service number `index`: runs until the supervisor is stopping.
pub(crate) async fn run(shared: Arc<Shared>, index: usize, spec: ServiceSpec) {
    let name: Arc<str> = spec.name.as_str().into();
    let out = Arc::new(Output::new(&spec.name, spec.log_dir.as_deref()));
    let mut schedule = shared.config.backoff.schedule();
    let mut stopping = shared.stop.subscribe();
    let mut cmd = command(&spec);
    if !reaper::is_running() {
        error!(
            service = &*name,
            "reaper not running: exits of this service will never be seen"
        );
    }

    loop {
        let started = Instant::now();
        // Spawn under the state lock: shutdown either sees this pid or stops us first.
        let spawned = {
            let mut state = shared.state();
            if state.stopping {
                break;
            }
            let spawned = reaper::spawn_child(&mut cmd);
            if let Ok((child, _)) = &spawned {
                state.services[index].pid = Some(reaper::raw_pid(child));
            }
            spawned
        };

        let (pid, exit, uptime) = match spawned {
            Ok((mut child, exited)) => {
                let pid = reaper::raw_pid(&child);
                info!(service = &*name, pid, "service started");
                shared.emit(Event::Started {
                    service: Arc::clone(&name),
                    pid,
                    at: started,
                });
                let readers = [
                    child.stdout.take().and_then(|p| {
                        output::forward(&name, p, Arc::clone(&out), shared.sink.clone())
                    }),
                    child.stderr.take().and_then(|p| {
                        output::forward(&name, p, Arc::clone(&out), shared.sink.clone())
                    }),
                ];
                // The reaper owns the status; `child` is only dropped, never waited on.
                drop(child);
                let exit = exited.await.ok();
                let uptime = started.elapsed();
                shared.state().services[index].pid = None;
                // Let the last lines of this run reach the log before the exit line.
                let _ = timeout(DRAIN, async {
                    for reader in readers.into_iter().flatten() {
                        let _ = reader.await;
                    }
                })
                .await;
                (Some(pid), exit, uptime)
            }
            Err(err) => {
                error!(service = &*name, program = %spec.program.display(), %err, "cannot start service");
                (None, None, started.elapsed())
            }
        };

        let restart_in = (!shared.state().stopping).then(|| schedule.after_exit(uptime));
        log_exit(&name, pid, exit, uptime, restart_in);
        shared.emit(Event::Exited {
            service: Arc::clone(&name),
            pid,
            exit,
            uptime,
            restart_in,
            at: Instant::now(),
        });
        let Some(delay) = restart_in else { break };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|stop| *stop) => break,
        }
    }
}

fn log_exit(
    name: &str,
    pid: Option<i32>,
    exit: Option<reaper::Exit>,
    uptime: Duration,
    restart_in: Option<Duration>,
) {
    let code = exit.and_then(reaper::Exit::code);
    let signal = exit.and_then(reaper::Exit::signal).map(|s| s.as_str());
    let uptime_ms = u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX);
    match restart_in {
        Some(delay) => {
            let restart_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            warn!(
                service = name,
                pid, code, signal, uptime_ms, restart_in_ms, "service exited"
            );
        }
        None => info!(
            service = name,
            pid, code, signal, uptime_ms, "service stopped"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    #[test]
    fn command_has_clean_env_and_default_path() {
        let spec = ServiceSpec {
            name: "svc".into(),
            program: PathBuf::from("/usr/bin/svc"),
            args: vec!["--flag".into()],
            env: vec![("A".into(), "1".into())],
            log_dir: None,
            on_console: false,
        };
        let cmd = command(&spec);
        assert_eq!(cmd.get_program(), OsStr::new("/usr/bin/svc"));
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), [OsStr::new("--flag")]);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("PATH"), Some(OsStr::new(DEFAULT_PATH)))));
        assert!(envs.contains(&(OsStr::new("A"), Some(OsStr::new("1")))));
    }

    #[test]
    fn spec_can_override_path() {
        let spec = ServiceSpec {
            name: "svc".into(),
            program: PathBuf::from("svc"),
            args: vec![],
            env: vec![("PATH".into(), "/opt/bin".into())],
            log_dir: None,
            on_console: false,
        };
        let cmd = command(&spec);
        let path = cmd.get_envs().find(|(k, _)| *k == OsStr::new("PATH"));
        assert_eq!(
            path,
            Some((OsStr::new("PATH"), Some(OsStr::new("/opt/bin"))))
        );
    }
}
