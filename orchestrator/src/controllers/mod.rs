//! The controller manager: the control loops that turn Deployments,
//! ReplicaSets, DaemonSets, StatefulSets, Jobs and CronJobs into pods, the
//! [`crate::scheduler`] that places them, and garbage collection by owner
//! references.
//!
//! # How controllers read and write
//! In-process, through the API: a [`client::Client`] speaks HTTP/2 to this
//! server's own [`Api::handle`](crate::api::Api::handle) over a Unix socket
//! pair, without TLS. A controller's writes therefore get exactly what a
//! kubectl write gets — validation, defaulting, generation and
//! `managedFields` (manager `kube-controller-manager` or
//! `default-scheduler`), finalizer and delete semantics, watch events —
//! and the controllers depend on nothing inside the API server but its
//! front door. A typed client over HTTPS loopback would add a TLS
//! handshake, certificates and a port for no gain inside one process;
//! reading the store directly would bypass the API's rules.
//!
//! # The runtime
//! - [`reflector`]: one per watched kind (pods, nodes, namespaces,
//!   services, replicasets, deployments, daemonsets, statefulsets, jobs,
//!   cronjobs, poddisruptionbudgets, and the Leases in `kube-node-lease`):
//!   list, watch from the list's resourceVersion with bookmarks, list
//!   again on 410, in-memory cache, change handlers.
//! - [`queue`]: per-controller work queues of object keys, de-duplicated,
//!   never handed to two workers at once, retried with per-key exponential
//!   back-off.
//! - [`leader`]: leader election through the Lease
//!   `kube-system/cairn-controller-manager`; only the leader runs the
//!   reflectors and loops, so servers sharing a PostgreSQL act once. A
//!   leader that cannot renew steps down and stops its loops.
//! - Controllers: [`replicaset`], [`deployment`], [`daemonset`] and
//!   [`statefulset`] (with their ControllerRevisions, [`history`]), [`job`], [`cronjob`], [`gc`], [`endpoints`],
//!   [`nodeipam`], [`nodelifecycle`] (nodes whose agent went quiet),
//!   [`tainteviction`] (pods on `NoExecute`-tainted nodes), [`podgc`]
//!   (pods of deleted nodes, old finished pods), [`localpath`]
//!   (PVCs of the default StorageClass `local-path`), [`disruption`]
//!   (PodDisruptionBudget status, which the API's eviction honours) and
//!   the scheduler.
//!
//! `cairn server` starts the manager unless `--disable-controllers`.
//!
//! # Current limitations
//! Namespace lifecycle beyond the API's own and ServiceAccount tokens
//! have no controller yet; garbage collection covers what the reflected
//! kinds own (see [`gc`]).

pub mod client;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod history;
pub mod job;
pub mod leader;
pub mod localpath;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod objects;
pub mod podgc;
pub mod queue;
pub mod reflector;
pub mod replicaset;
pub mod statefulset;
pub mod tainteviction;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::info;

use crate::api::Api;
use crate::scheduler::Scheduler;
use client::Client;
use reflector::{
    CONTROLLER_REVISIONS, CRONJOBS, DAEMONSETS, DEPLOYMENTS, JOBS, LEASES, NAMESPACES, NODES, PDBS,
    PODS, REPLICASETS, Reflector, SERVICES, STATEFULSETS,
};

/// Workers per controller.
const WORKERS: usize = 4;
/// The scheduler's workers: each awaits its binding's write, and the
/// store commits concurrent writes in one transaction, so more bindings in
/// flight cost less each (choosing a node is serialised anyway).
const SCHEDULER_WORKERS: usize = 16;

/// The controller manager's settings (kube-controller-manager's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `--node-monitor-grace-period`: how long a node's heartbeats may
    /// stand still before it is `Unknown`.
    pub node_monitor_grace_period: Duration,
    /// `--node-startup-grace-period`: the same for a node that never
    /// posted a Ready condition, from its creation.
    pub node_startup_grace_period: Duration,
    /// `--cluster-cidr`: the pod network node IPAM hands /24s out of.
    pub cluster_cidr: nodeipam::Cidr,
    /// `--terminated-pod-gc-threshold`: finished pods kept before [`podgc`]
    /// deletes the oldest (0: never).
    pub terminated_pod_gc_threshold: usize,
    /// How long [`podgc`] waits for a node missing from its cache to show
    /// up before it deletes the node's pods (upstream's fixed 40 s).
    pub pod_gc_quarantine: Duration,
}

impl Default for Settings {
    /// Upstream's defaults: 40 s and 60 s, 12,500 pods, 40 s.
    fn default() -> Settings {
        Settings {
            node_monitor_grace_period: Duration::from_secs(40),
            node_startup_grace_period: Duration::from_secs(60),
            cluster_cidr: nodeipam::default_cluster_cidr(),
            terminated_pod_gc_threshold: podgc::TERMINATED_THRESHOLD,
            pod_gc_quarantine: podgc::QUARANTINE,
        }
    }
}

/// Runs the controller manager until `shutdown` fires: elects a leader
/// and, while this server leads, runs the loops. On shutdown a leader
/// stops its loops and gives the Lease up, so another server takes over
/// at once rather than after the lease duration.
pub async fn run(api: Arc<Api>, settings: Settings, shutdown: tokio::sync::oneshot::Receiver<()>) {
    let client = Client::new(
        api.clone(),
        "system:kube-controller-manager",
        "kube-controller-manager",
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "cairn".to_owned());
    let identity = format!("{host}_{}", uuid::Uuid::new_v4());
    let mut elector = leader::Elector::new(client, identity);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            _ = &mut shutdown => return,
        }
        let mut loops = start(api.clone(), settings);
        let stop = tokio::select! {
            () = elector.hold() => false,
            // A loop ended: it should not; start over.
            _ = loops.join_next() => false,
            _ = &mut shutdown => true,
        };
        info!(identity = elector.identity(), "stopping the controllers");
        loops.abort_all();
        while loops.join_next().await.is_some() {}
        if stop {
            elector.release().await;
            return;
        }
    }
}

/// The reflectors and loops of one leadership term.
fn start(api: Arc<Api>, settings: Settings) -> JoinSet<()> {
    let client = Client::new(
        api.clone(),
        "system:kube-controller-manager",
        "kube-controller-manager",
    );
    let scheduler_client = Client::new(api, "system:kube-scheduler", "default-scheduler");
    let pods = Reflector::new(PODS);
    let nodes = Reflector::new(NODES);
    let sets = Reflector::new(REPLICASETS);
    let deployments = Reflector::new(DEPLOYMENTS);
    let namespaces = Reflector::new(NAMESPACES);
    let services = Reflector::new(SERVICES);
    let jobs = Reflector::new(JOBS);
    let cronjobs = Reflector::new(CRONJOBS);
    let daemonsets = Reflector::new(DAEMONSETS);
    let statefulsets = Reflector::new(STATEFULSETS);
    let revisions = Reflector::new(CONTROLLER_REVISIONS);
    let leases = Reflector::with_field_selector(
        LEASES,
        Some("metadata.namespace=kube-node-lease".to_owned()),
    );
    let pdbs = Reflector::new(PDBS);
    let mut loops = JoinSet::new();
    let rs = replicaset::ReplicaSets::new(client.clone(), sets.clone(), pods.clone());
    loops.spawn(rs.run(WORKERS));
    let ds = deployment::Deployments::new(client.clone(), deployments.clone(), sets.clone());
    loops.spawn(ds.run(WORKERS));
    loops.spawn(job::Jobs::new(client.clone(), jobs.clone(), pods.clone()).run(WORKERS));
    let cj = cronjob::CronJobs::new(client.clone(), cronjobs.clone(), jobs.clone());
    loops.spawn(cj.run(WORKERS));
    let dss = daemonset::DaemonSets::new(
        client.clone(),
        daemonsets.clone(),
        pods.clone(),
        nodes.clone(),
        revisions.clone(),
    );
    loops.spawn(dss.run(WORKERS));
    let sts = statefulset::StatefulSets::new(
        client.clone(),
        statefulsets.clone(),
        pods.clone(),
        revisions.clone(),
    );
    loops.spawn(sts.run(WORKERS));
    let disruption = disruption::Disruption::new(
        client.clone(),
        pdbs.clone(),
        pods.clone(),
        disruption::Controllers {
            sets: sets.clone(),
            deployments: deployments.clone(),
            statefulsets: statefulsets.clone(),
        },
    );
    loops.spawn(disruption.run(WORKERS));
    let scheduler = Scheduler::new(
        scheduler_client,
        pods.clone(),
        nodes.clone(),
        namespaces.clone(),
    );
    loops.spawn(scheduler.run(SCHEDULER_WORKERS));
    let collector = gc::Collector::new(
        client.clone(),
        vec![
            deployments.clone(),
            sets.clone(),
            daemonsets.clone(),
            statefulsets.clone(),
            cronjobs.clone(),
            jobs.clone(),
            pods.clone(),
            revisions.clone(),
        ],
        namespaces.clone(),
    );
    loops.spawn(collector.run());
    let endpoints = endpoints::Endpoints::new(client.clone(), services.clone(), pods.clone());
    loops.spawn(endpoints.run(WORKERS));
    loops
        .spawn(nodeipam::NodeIpam::new(client.clone(), nodes.clone(), settings.cluster_cidr).run());
    loops.spawn(
        nodelifecycle::NodeLifecycle::new(
            client.clone(),
            nodes.clone(),
            leases.clone(),
            pods.clone(),
            settings,
        )
        .run(),
    );
    loops.spawn(
        podgc::PodGc::new(
            client.clone(),
            pods.clone(),
            nodes.clone(),
            settings.terminated_pod_gc_threshold,
            settings.pod_gc_quarantine,
        )
        .run(),
    );
    let evictions = tainteviction::TaintEviction::new(client.clone(), pods.clone(), nodes.clone());
    loops.spawn(evictions.run(WORKERS));
    loops.spawn(localpath::run(client.clone(), WORKERS));
    for reflector in [
        pods,
        nodes,
        sets,
        deployments,
        namespaces,
        services,
        jobs,
        cronjobs,
        daemonsets,
        statefulsets,
        revisions,
        leases,
        pdbs,
    ] {
        loops.spawn(reflector.run(client.clone()));
    }
    info!("controllers started");
    loops
}
