//! Supervised services: run them, restart them with back-off, reap every child,
//! send their output to the console and to rotated log files.
//!
//! # Layout
//! - [`reaper`]: the only code that waits for children (PID 1 reaps orphans too);
//!   every child must be spawned through [`reaper::spawn_child`].
//! - `service`: the life of one service (spawn, await exit, back off, restart).
//! - [`backoff`]: the restart schedule (1 s doubling to 30 s, reset after 60 s up).
//! - `output`: pipe readers cutting output into bounded lines.
//! - `logfile`: the writer thread: console lines `[name] …` and `<log_dir>/<name>.log`
//!   rotated at 1 MiB, two old files kept.
//!
//! # Use
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_init::supervisor::{ServiceSpec, Supervisor, reaper};
//! reaper::spawn()?; // once, before any child is started
//! let supervisor = Supervisor::new();
//! supervisor.start(ServiceSpec::new("containerd", "/usr/bin/containerd"));
//! // ... later, on power-off:
//! supervisor.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! # Current limitations
//! - Stopping is sequential in reverse start order, each service with its own grace.
//! - Lines are dropped (and the count reported) when the log writer falls 256
//!   lines behind, so that a service never blocks on its output.

pub mod backoff;
mod logfile;
mod output;
pub mod reaper;
mod service;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{error, info, warn};

pub use backoff::Backoff;
pub use logfile::Rotation;
pub use reaper::Exit;

/// How long a service may take to die after SIGKILL before shutdown gives up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last output lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// What to run as a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Short name: console prefix `[name] `, log file `<name>.log`, log fields.
    pub name: String,
    /// The executable (absolute, or looked up in the service's PATH).
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment; the service gets only this plus a default PATH.
    pub env: Vec<(String, String)>,
    /// Where `<name>.log` is written (created if missing); `None`: console only.
    pub log_dir: Option<PathBuf>,
    /// stdin, stdout and stderr on `/dev/console` itself (an interactive
    /// program, the debug shell) instead of /dev/null and the log pipes.
    pub on_console: bool,
}

impl ServiceSpec {
    /// A service with no arguments, no extra environment and no log file.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log_dir: None,
            on_console: false,
        }
    }
}

/// Tunables of a [`Supervisor`]. `Default` is what the device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Restart schedule of every service.
    pub backoff: Backoff,
    /// Log file size limit and old files kept.
    pub rotation: Rotation,
    /// Print service output on the console (stdout of init).
    pub console: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backoff: Backoff::default(),
            rotation: Rotation::default(),
            console: true,
        }
    }
}

/// What happened to a service, for whoever [subscribed](Supervisor::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A process of the service was started.
    Started {
        service: Arc<str>,
        pid: i32,
        at: Instant,
    },
    /// A process ended (`pid` and `exit` are `None` when it could not be started,
    /// `exit` alone when its status was lost). `restart_in` is `None` when stopping.
    Exited {
        service: Arc<str>,
        pid: Option<i32>,
        exit: Option<Exit>,
        uptime: Duration,
        restart_in: Option<Duration>,
        at: Instant,
    },
}

/// Runs services and restarts them; cheap to clone (all clones share the services).
#[derive(Clone, Debug)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    state: Mutex<State>,
    /// Flips to true once, on shutdown; wakes services sleeping in back-off.
    stop: watch::Sender<bool>,
    events: broadcast::Sender<Event>,
    sink: logfile::LogSink,
}

#[derive(Debug, Default)]
struct State {
    stopping: bool,
    services: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    /// The running process, if any.
    pid: Option<i32>,
    task: Option<JoinHandle<()>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a single field write: still consistent after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// A supervisor with the device defaults.
    pub fn new() -> Supervisor {
        Supervisor::with_config(Config::default())
    }

    /// A supervisor with other tunables (tests shorten the back-off).
    pub fn with_config(config: Config) -> Supervisor {
        let sink = logfile::LogSink::start(config.console, config.rotation);
        let (events, _) = broadcast::channel(64);
        Supervisor {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                stop: watch::Sender::new(false),
                events,
                sink,
            }),
        }
    }

    /// Events of all services from now on (lagging receivers lose the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Starts `spec` in a new task: run it, restart it with back-off whenever it
    /// exits, until [`shutdown`](Self::shutdown). Must be called inside the tokio
    /// runtime, after [`reaper::spawn`]. Ignored once shutdown has begun.
    pub fn start(&self, spec: ServiceSpec) {
        let mut state = self.shared.state();
        if state.stopping {
            warn!(service = %spec.name, "not starting service: shutting down");
            return;
        }
        let index = state.services.len();
        state.services.push(Slot {
            name: spec.name.as_str().into(),
            pid: None,
            task: None,
        });
        let task = tokio::spawn(service::run(Arc::clone(&self.shared), index, spec));
        state.services[index].task = Some(task);
    }

    /// Stops every service, newest first: no more restarts; SIGTERM to the service's
    /// main process, up to `grace` for it to exit, then SIGKILL to its whole process
    /// group. Returns when all are gone (or ignored SIGKILL for 5 s, which is logged).
    pub async fn shutdown(&self, grace: Duration) {
        let services: Vec<(usize, Arc<str>, JoinHandle<()>)> = {
            let mut state = self.shared.state();
            state.stopping = true;
            self.shared.stop.send_replace(true);
            state
                .services
                .iter_mut()
                .enumerate()
                .rev()
                .filter_map(|(i, slot)| Some((i, Arc::clone(&slot.name), slot.task.take()?)))
                .collect()
        };
        for (index, name, mut task) in services {
            if let Some(pid) = self.pid(index) {
                info!(service = &*name, pid, "stopping service");
                reaper::signal(pid, Signal::SIGTERM, false);
            }
            if timeout(grace, &mut task).await.is_ok() {
                continue;
            }
            if let Some(pid) = self.pid(index) {
                let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
                warn!(
                    service = &*name,
                    pid, grace_ms, "service still running: killing its process group"
                );
                reaper::signal(pid, Signal::SIGKILL, true);
            }
            if timeout(KILL_WAIT, &mut task).await.is_err() {
                error!(service = &*name, "service did not exit after SIGKILL");
            }
        }
        self.shared.sink.flush(FLUSH_WAIT).await;
    }

    fn pid(&self, index: usize) -> Option<i32> {
        self.shared
            .state()
            .services
            .get(index)
            .and_then(|slot| slot.pid)
    }
}
