//! Stage 2: `cairn-init` as `/sbin/init` on the root filesystem, PID 1 for
//! the life of the system.
//!
//! Boot steps, in order: mounts and cgroups, the root filesystem's modules,
//! the log file on `/var`, the config partition and `config.toml`, the
//! generated `/etc`, the machine id, the network, containerd and `cairn
//! server` under the supervisor. A readiness task waits for containerd to
//! answer and the API to report ready ([`cluster`]), marks the booted slot
//! good in `grubenv` and prints `cairn: ready`. Meanwhile the
//! main task waits for a shutdown request (signal or power button) and then
//! shuts down in order ([`shutdown`]).
//!
//! It runs on a current-thread tokio runtime: init's work is mostly waiting,
//! and one thread keeps PID 1 small. Child processes are reaped only by the
//! supervisor's reaper, so supervised exit statuses are never stolen.

pub mod bootok;
pub mod cluster;
pub mod config;
pub mod containerd;
pub mod etc;
pub mod host;
pub mod input;
pub mod mounts;
pub mod netfilter;
pub mod registries;
pub mod shutdown;
pub mod sntp;
pub mod stats;

use crate::network;
use crate::stage1::{cmdline, modules, partitions};
use crate::supervisor::{self, Supervisor};
use crate::sys::clock::boottime;
use crate::sys::power::{self, PowerAction};
use anyhow::{Context, Result};
use cairn_image::config::Role;
use cairn_image::{Slot, layout};
use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the system may take to become healthy before init reboots so
/// that the boot loader can fall back (`cairn.health_timeout=<seconds>`).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(600);

/// The module containerd needs before it starts (its overlayfs snapshotter
/// probes for it).
const CONTAINERD_MODULE: &str = "overlay";
/// How long the rest of the boot waits for containerd to answer first.
const CONTAINERD_FIRST: Duration = Duration::from_secs(20);

/// init's own log file on the data partition.
pub const INIT_LOG: &str = "/var/log/cairn/init.log";

/// Runs stage 2. Returns only on a fatal error.
pub fn run() -> Result<Infallible> {
    let cmdline = cmdline::read();
    crate::log::init(cmdline::flag(&cmdline, "cairn.debug"));
    tracing::info!("stage 2 started");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(boot(&cmdline))
}

async fn boot(cmdline: &str) -> Result<Infallible> {
    // First: nothing may be reaped by anyone else, and no signal lost.
    let _reaper = supervisor::reaper::spawn().context("starting the reaper")?;
    let (tx, mut requests) = mpsc::unbounded_channel();
    if let Err(error) = power::disable_cad() {
        tracing::warn!(%error, "cannot turn Ctrl-Alt-Del into SIGINT");
    }
    shutdown::listen_signals(tx.clone());

    crate::prefetch::start(Path::new("/"));
    mounts::mount_all();
    mounts::enable_controllers();
    if let Err(error) = crate::log::attach_file(Path::new(INIT_LOG)) {
        tracing::warn!(%error, path = INIT_LOG, "no init log file");
    }
    // containerd is the long pole of the boot: it starts as soon as the one
    // module it checks for at start (overlay) is in; the rest load while it
    // initialises.
    let (_, later) = modules::load(modules::read_list(Path::new(modules::LIST)), |m| {
        modules::module_name(m).as_deref() != Some(CONTAINERD_MODULE)
    });

    let slot = cmdline::slot(cmdline);
    let boot_disk = slot
        .and_then(|s| partitions::find(s.partition_name(), None))
        .and_then(|p| p.disk);
    let config_part = partitions::find(layout::PART_CONFIG, boot_disk.as_deref());
    let loaded = config::load(config_part.as_ref());
    let config = loaded.config;

    let hostname = config.host.hostname.as_str();
    if let Err(error) = etc::write_run_etc(hostname, &config.network.dns) {
        tracing::error!(error = format!("{error:#}"), "generated /etc incomplete");
    }
    if let Err(error) = etc::ensure_machine_id(Path::new(etc::MACHINE_ID)) {
        tracing::error!(error = format!("{error:#}"), "no machine id");
    }
    network::wifi::load_modules(&config.network);
    host::apply(&config, Path::new(etc::RUN_ETC));
    let service_env = host::service_env(&config);

    let supervisor = Supervisor::new();
    match containerd::prepare(&config.cluster.registries) {
        Ok(()) => {
            let mut spec = containerd::spec();
            spec.env.extend(service_env.iter().cloned());
            supervisor.start(spec);
            tracing::info!("containerd started");
        }
        Err(error) => tracing::error!(error = format!("{error:#}"), "containerd not started"),
    }
    // Watched from its start, so the moment it answers is seen at once (the
    // cluster start and readiness below wait on it).
    let containerd_up = containerd::watch_ready();
    // A clock that was never set (no RTC) makes every certificate the
    // server issues or checks wrong: then the server waits for SNTP.
    let ntp: Vec<String> = config.host.ntp.iter().map(|s| s.to_string()).collect();
    let clock_first = sntp::clock_unset() && !ntp.is_empty();
    let cluster_spec = if cluster::present() {
        Some(cluster::spec(&config, service_env.clone()))
    } else {
        tracing::warn!(
            program = cluster::PROGRAM,
            "no cluster binary in this image"
        );
        None
    };
    // What readiness waits for besides containerd: this node in the
    // cluster, asked of the local server or of the one an agent joined.
    let cluster = cluster_spec.is_some().then(|| {
        (
            config.host.hostname.to_string(),
            cluster::Readiness::of(&config),
        )
    });
    let start_cluster = move |supervisor: &Supervisor, config: &cairn_image::config::Config| {
        if let Some(spec) = cluster_spec {
            let installed = match config.cluster.role {
                Role::Server => cluster::install_credentials(config, Path::new(cluster::DATA_DIR))
                    .map(|files| files.len()),
                Role::Agent => cluster::install_agent_ca(config).map(usize::from),
            };
            match installed {
                Ok(0) => {}
                Ok(files) => tracing::info!(files, "supplied cluster credentials installed"),
                Err(error) => tracing::error!(%error, "supplied cluster credentials not installed"),
            }
            supervisor.start(spec);
            tracing::info!(
                role = config.cluster.role.as_str(),
                "cluster service started"
            );
        }
    };
    let mut start_cluster = Some(start_cluster);
    // containerd first: under emulation, or on a board with few cores,
    // whatever starts beside it (the cluster binary, the network drivers,
    // DHCP) takes the CPU its start needs, and the cluster's node agent
    // waits for it anyway. So the rest of the boot waits until it answers.
    containerd_first(containerd_up.clone()).await;
    if !clock_first && let Some(start) = start_cluster.take() {
        start(&supervisor, &config);
    }

    // Disk drivers stage 1 did not need wait until the system is ready.
    let disk_drivers =
        tokio::task::spawn_blocking(move || modules::load(later, modules::is_disk_driver).1)
            .await
            .unwrap_or_default();
    netfilter::load_in_background();
    let button = tx.clone();
    input::watch(move || {
        let _ = button.send(PowerAction::PowerOff);
    });

    let resolv = Path::new(etc::RUN_ETC).join("resolv.conf");
    if let Err(error) = network::start(&config.network, &resolv).await {
        tracing::error!(%error, "network not configured");
    }
    network::wifi::start(&config.network, &supervisor);
    if clock_first {
        tracing::info!("clock not set: waiting for SNTP before the cluster starts");
        sntp::run(ntp, 5, Duration::from_secs(3)).await;
        if let Some(start) = start_cluster.take() {
            start(&supervisor, &config);
        }
    } else if !ntp.is_empty() {
        tokio::spawn(sntp::run(ntp, 6, Duration::from_secs(10)));
    }
    if config.debug.serial_shell {
        serial_shell(&supervisor);
    }
    let health_timeout = cmdline::value(cmdline, "cairn.health_timeout")
        .and_then(|v| v.parse().ok())
        .map_or(HEALTH_TIMEOUT, Duration::from_secs);
    let unhealthy = tx.clone();
    tokio::spawn(async move {
        let write_kubeconfig = config.cluster.write_kubeconfig
            && config.cluster.role == Role::Server
            && cluster.is_some();
        // An agent's slot is judged on this machine alone (containerd): a
        // server that is down must not roll agents back to the other slot.
        // Its `cairn: ready` still waits until the server has it Ready.
        let (gate, joined) = match cluster {
            Some((node, cluster::Readiness::Local)) => {
                (Some((node, cluster::Readiness::Local)), None)
            }
            other => (None, other),
        };
        if tokio::time::timeout(
            health_timeout,
            healthy(slot, boot_disk, containerd_up, gate),
        )
        .await
        .is_err()
        {
            // The slot stays unconfirmed: rebooting lets GRUB count the try
            // and fall back to the other slot once this one has used them.
            tracing::error!(
                timeout_s = health_timeout.as_secs(),
                "system not healthy in time; rebooting"
            );
            let _ = unhealthy.send(PowerAction::Reboot);
            return;
        }
        if let Some((node, readiness)) = &joined {
            node_ready(node, readiness).await;
        }
        announce_ready();
        if write_kubeconfig {
            let written =
                tokio::task::spawn_blocking(move || cluster::write_kubeconfig(&config)).await;
            match written {
                Ok(Ok(true)) => {
                    crate::log::console("cairn: kubeconfig.yaml written to the CAIRN partition")
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::error!(error = format!("{error:#}"), "kubeconfig.yaml not written")
                }
                Err(error) => tracing::error!(%error, "kubeconfig.yaml not written"),
            }
        }
        // Disk drivers stage 1 did not need: loaded once the system is up,
        // so their probing (ahci: ~0.5 s under emulation) never delays it.
        if !disk_drivers.is_empty() {
            let _ =
                tokio::task::spawn_blocking(move || modules::load(disk_drivers, |_| false)).await;
        }
    });

    loop {
        if let Some(action) = requests.recv().await {
            shutdown::shutdown(&supervisor, action).await;
        }
    }
}

/// `[debug] serial_shell`: a root shell on the console, when the image
/// has one.
/// It reads the console (no job control: the console is not its
/// controlling terminal) and is started again when it exits.
fn serial_shell(supervisor: &Supervisor) {
    let shell = cairn_image::layout::SHELL;
    crate::log::console("cairn: warning: debug.serial_shell is on: a root shell on the console");
    if Path::new(shell).exists() {
        let mut spec = supervisor::ServiceSpec::new("shell", shell);
        spec.on_console = true;
        spec.env = vec![
            ("HOME".into(), "/root".into()),
            ("PS1".into(), "cairn# ".into()),
        ];
        supervisor.start(spec);
    } else {
        crate::log::console(&format!(
            "cairn: warning: debug.serial_shell: this image has no {shell}"
        ));
    }
}

/// Waits until containerd has answered, or [`CONTAINERD_FIRST`] has passed
/// (a broken containerd must not also keep the network and the API down).
async fn containerd_first(mut up: watch::Receiver<bool>) {
    let answered = tokio::time::timeout(CONTAINERD_FIRST, up.wait_for(|up| *up)).await;
    if !matches!(answered, Ok(Ok(_))) {
        tracing::warn!(
            waited_s = CONTAINERD_FIRST.as_secs(),
            "containerd has not answered; starting the rest of the system anyway"
        );
    }
}

/// Waits for the API and then for this node's Ready condition in it.
async fn node_ready(node: &str, readiness: &cluster::Readiness) {
    let probes = readiness.wait(None).await;
    tracing::info!(probes, "API answered");
    let probes = readiness.wait(Some(node)).await;
    tracing::info!(probes, node, "node Ready");
}

/// Waits for containerd and (when `cluster` names this node and how to
/// ask) the API and the Node's Ready condition, then marks the slot good.
async fn healthy(
    slot: Option<Slot>,
    boot_disk: Option<String>,
    mut containerd_up: watch::Receiver<bool>,
    cluster: Option<(String, cluster::Readiness)>,
) {
    let containerd = async {
        // The watcher polls until containerd answers; it never gives up.
        let _ = containerd_up.wait_for(|up| *up).await;
    };
    let api = async {
        if let Some((node, readiness)) = &cluster {
            node_ready(node, readiness).await;
        }
    };
    tokio::join!(containerd, api);
    match slot {
        Some(slot) => {
            let marked = tokio::task::spawn_blocking(move || {
                let esp = partitions::find(layout::PART_ESP, boot_disk.as_deref())
                    .context("no ESP partition")?;
                bootok::mark_good(&esp, slot)
            })
            .await;
            match marked {
                Ok(Ok(changed)) => tracing::info!(slot = %slot, changed, "slot marked good"),
                Ok(Err(error)) => {
                    tracing::error!(error = format!("{error:#}"), "could not mark the slot good")
                }
                Err(error) => tracing::error!(%error, "could not mark the slot good"),
            }
        }
        None => tracing::warn!("no cairn.slot= on the command line; grubenv left alone"),
    }
}

/// The ready figures in the log, and `cairn: ready` on the console.
fn announce_ready() {
    let up = boottime();
    let (mem_used_kib, init_rss_kib, containerd_rss_kib) = stats::at_ready();
    tracing::info!(
        uptime = format!("{}.{:03}", up.as_secs(), up.subsec_millis()),
        mem_used_kib,
        init_rss_kib,
        containerd_rss_kib,
        cairn_rss_kib = stats::process_rss_kib("cairn").unwrap_or(0),
        "ready"
    );
    tracing::info!(kib = stats::meminfo_now(), "memory at ready");
    crate::log::console("cairn: ready");
}
