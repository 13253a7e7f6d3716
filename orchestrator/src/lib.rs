//! `cairn`: Cairn's cluster software — API server, datastore, controllers and
//! node agent — as a library under one binary (`cairn server`, `cairn agent`).
//!
//! The binary stays thin; everything it runs lives here, one module per
//! concern, so each can be tested on the host without booting an image.
//!
//! # Layout
//! - [`store`]: the datastore, a revisioned key-value log after kine, on
//!   embedded SQLite (default) or a shared PostgreSQL server. Its revisions
//!   are the API's `resourceVersion`s; watches resume from them.
//! - [`api`]: the Kubernetes API server (HTTPS, discovery, generic CRUD and watch).
//! - [`images`]: air-gapped image archives (the CAIRN partition's
//!   `images/`) imported into containerd.
//! - [`manifests`]: the manifests directory (the CAIRN partition's
//!   `manifests/`), applied through the API at start and on change.
//! - [`probe`]: `cairn healthz`, a client of the server's health endpoints.
//! - [`controllers`]: the controller manager (leader election, reflectors,
//!   work queues; ReplicaSet, Deployment, garbage collection, Endpoints) and
//!   [`scheduler`], run inside `cairn server` through the API in-process.
//! - [`agent`]: the node agent (Cairn's kubelet): Node, Lease, pods on containerd through CRI.
//!
//! Still to come (their own issues): `proxy`, `dns`.

pub mod agent;
pub mod api;
pub mod controllers;
pub mod images;
pub mod manifests;
pub mod probe;
pub mod scheduler;
pub mod store;
