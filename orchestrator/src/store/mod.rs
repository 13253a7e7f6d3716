//! The datastore: a revisioned key-value log that the API server keeps
//! Kubernetes objects in, after kine (k3s' etcd shim).
//!
//! Keys are strings such as `/registry/configmaps/default/foo`; values are the
//! serialized objects. Every create, update and delete appends one row to a log
//! table, and that row's id is the write's *revision*: one global, monotonic
//! counter that the API server hands out as `resourceVersion`. The current
//! state is the latest row per key that is not a deletion marker; older rows
//! keep past states readable (`list` at a revision) and let watches resume
//! from any retained revision. [`Store::compact`] drops superseded rows and
//! deletion markers below a revision and remembers that revision, so older
//! reads fail with [`StoreError::Compacted`] (HTTP 410 `Expired` upstream).
//!
//! Two back ends share one SQL text and one decision logic (`sql`):
//! - `sqlite`: embedded, the default. One connection in WAL mode with
//!   `synchronous=FULL` (an acknowledged write is on disk: it survives a
//!   crash of the process and a power cut). A writer thread commits the
//!   writes queued at once as one transaction (one fsync) and publishes
//!   their events in revision order. Lease renewals (node heartbeats,
//!   leader election) are the one exception to "durable when
//!   acknowledged": they are kept in memory and written coalesced every few
//!   minutes and at [`Store::close`]; see the `sqlite` module for the
//!   contract.
//! - `postgres`: a real server shared by several `cairn server`s. Writes take
//!   a table lock so revisions commit in id order; a feed task reads the log
//!   (woken by `LISTEN`/`NOTIFY`, polling every 100 ms as a fallback) so that
//!   writes by other processes reach this process's watchers too.
//!
//! Watches (`watch`) replay the log from the requested revision and then
//! follow the back end's feed, without gaps or duplicates.
//!
//! The store is kind to SD cards: an update whose value equals the stored one
//! writes nothing, publishes no event and returns the current revision (as
//! upstream does for no-op updates). [`Store::spawn_compactor`] compacts old
//! history periodically, as kine does; SQLite then gives freed pages back.
//!
//! [`Endpoint`] is the `--datastore-endpoint` a server is started with.
//!
//! # Current limitations
//! - No leases/TTL; the API server decides what to write.
//! - A lost PostgreSQL connection is re-established on next use; until then
//!   operations fail with [`BackendError::Unavailable`]. Watches that were
//!   open resume; a watch started during the outage fails.
//! - On PostgreSQL, an id whose transaction commits more than a second after a
//!   later id was published is not delivered to watches (kine has the same
//!   window). Cairn's own writers cannot cause it: they commit in id order.
//! - SQLite reads wait for writes (one connection); fine at edge scale.
//! - Prefix ranges assume keys without the code point U+10FFFF.

mod postgres;
mod sql;
mod sqlite;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::broadcast;

pub use watch::Watch;

/// A global, monotonic revision: the id of a log row, Kubernetes' `resourceVersion`.
pub type Revision = i64;

/// Result of datastore operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One key's value at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/configmaps/default/foo`.
    pub key: String,
    /// The stored bytes (a serialized object).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (`create_revision` in etcd).
    pub create_revision: Revision,
    /// Revision of the write that produced this value.
    pub mod_revision: Revision,
}

/// A page of keys from [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Live keys under the prefix, sorted by key.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// True if more keys follow the last item (continue with `start_after`).
    pub more: bool,
}

/// A change delivered by [`Store::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created (`prev` is `None`) or updated.
    Put {
        /// The new value; `kv.mod_revision` is the event's revision.
        kv: KeyValue,
        /// The value it replaced, if the key existed.
        prev: Option<KeyValue>,
    },
    /// A key was deleted.
    Delete {
        /// The last value, with `mod_revision` set to the deletion's revision.
        kv: KeyValue,
    },
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv().mod_revision
    }

    /// The key-value the event carries.
    pub fn kv(&self) -> &KeyValue {
        match self {
            Event::Put { kv, .. } | Event::Delete { kv } => kv,
        }
    }
}

/// Errors of the datastore.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// `update`/`delete` of a key that does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The expected revision is stale.
    #[error("key {key} was modified: its current revision is {current}")]
    Conflict {
        /// The key.
        key: String,
        /// The key's current `mod_revision`.
        current: Revision,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} is compacted: the oldest retained revision is {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compacted revision.
        compacted: Revision,
    },
    /// The requested revision has not been written yet.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// Keys are non-empty and contain no NUL.
    #[error("invalid key {key:?}: keys are non-empty and contain no NUL")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// The database failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A failure of the database underneath the store.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// SQLite failed.
    #[error("sqlite datastore: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Opening the SQLite file failed.
    #[error("sqlite datastore {path}: {source}")]
    SqliteOpen {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed.
    #[error("postgresql datastore: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A blocking database task died.
    #[error("datastore task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The store's feed ended (its connection closed).
    #[error("datastore feed closed")]
    FeedClosed,
    /// The database server cannot be reached (connection lost or refused);
    /// the store reconnects on the next operation.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(BackendError::Sqlite(e))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Connection failures (I/O, a closed connection, SQLSTATE classes 08
    /// "connection exception" and 57P "operator intervention", as when the
    /// server shuts down) are `Unavailable`; the rest are query errors.
    fn from(e: tokio_postgres::Error) -> Self {
        let code = e.code().map(|c| c.code());
        let lost = e.is_closed()
            || (e.as_db_error().is_none()
                && std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()))
            || code.is_some_and(|c| c.starts_with("08") || c.starts_with("57P"));
        if lost {
            StoreError::Backend(BackendError::Unavailable(format!("postgresql: {e}")))
        } else {
            StoreError::Backend(BackendError::Postgres(e))
        }
    }
}

impl StoreError {
    /// True if the database could not be reached (a retry may succeed).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Backend(BackendError::Unavailable(_)))
    }
}

/// Where the datastore lives: `--datastore-endpoint`, in K3s' spelling.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Empty endpoint: embedded SQLite in the data dir.
    Sqlite,
    /// `postgres://user:pass@host:port/db` (or `postgresql://`); also
    /// libpq's `host=... dbname=...` form. No TLS.
    Postgres(String),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Sqlite => f.write_str("Sqlite"),
            // The password stays out of logs.
            Endpoint::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// A `--datastore-endpoint` Cairn cannot use.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A scheme other than `postgres`/`postgresql`.
    #[error(
        "unsupported datastore scheme {0:?}: use postgres://user:pass@host:port/db, or leave --datastore-endpoint empty for the embedded SQLite"
    )]
    Scheme(String),
    /// The PostgreSQL endpoint does not parse.
    #[error("invalid postgresql endpoint: {0}")]
    Postgres(tokio_postgres::Error),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Endpoint, EndpointError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Endpoint::Sqlite);
        }
        let scheme = match s.split_once("://") {
            Some((scheme, _)) => scheme.to_ascii_lowercase(),
            // libpq's key=value form has no scheme.
            None if s.contains('=') => "postgres".to_owned(),
            None => return Err(EndpointError::Scheme(s.to_owned())),
        };
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(EndpointError::Scheme(scheme));
        }
        postgres::config(s).map_err(EndpointError::Postgres)?;
        Ok(Endpoint::Postgres(s.to_owned()))
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Backend(BackendError::Task(e))
    }
}

/// What the feed sends to watchers.
#[derive(Debug)]
pub(crate) enum FeedItem {
    /// The next event in revision order.
    Event(Event),
    /// The feed fell behind a compaction (by another server) and skipped to
    /// this revision: watchers behind it must replay from the log, which
    /// tells them `Compacted`.
    Compacted(Revision),
}

/// The published, gap-free sequence of events of one store handle.
///
/// `published` is the highest revision sent; every revision at or below it is
/// settled in the log. A watcher subscribes first, then reads `published`, then
/// replays the log up to it: events above it are guaranteed to arrive on the
/// channel.
pub(crate) struct Feed {
    pub(crate) tx: broadcast::Sender<Arc<FeedItem>>,
    published: AtomicI64,
}

impl Feed {
    fn new(published: Revision) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Feed {
            tx,
            published: AtomicI64::new(published),
        }
    }

    /// Publishes the next event; callers publish in revision order.
    pub(crate) fn publish(&self, event: Event) {
        self.published.store(event.revision(), Ordering::SeqCst);
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(FeedItem::Event(event)));
    }

    /// Skips to a compacted revision whose history is gone.
    pub(crate) fn skip_compacted(&self, revision: Revision) {
        self.published.fetch_max(revision, Ordering::SeqCst);
        let _ = self.tx.send(Arc::new(FeedItem::Compacted(revision)));
    }

    pub(crate) fn published(&self) -> Revision {
        self.published.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// A handle on the datastore; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store").field("backend", &kind).finish()
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $call,
            Backend::Postgres($b) => $call,
        }
    };
}

impl Store {
    /// Opens (or creates) the embedded SQLite datastore at `path`.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Store> {
        let backend = sqlite::Sqlite::open(path.as_ref().to_path_buf()).await?;
        Ok(Store {
            backend: Backend::Sqlite(backend),
        })
    }

    /// Connects to PostgreSQL (`host=... user=... dbname=...` or a URL) and
    /// creates the schema if needed. Uses no TLS.
    pub async fn open_postgres(conn_str: &str) -> Result<Store> {
        let backend = postgres::Postgres::open(conn_str).await?;
        Ok(Store {
            backend: Backend::Postgres(backend),
        })
    }

    /// Creates `key`; fails with `AlreadyExists` if it is live.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        sql::check_key(key)?;
        dispatch!(self, b => b.write(sql::Write::Create { key: key.to_owned(), value }).await)
            .map(|w| w.revision)
    }

    /// Reads the current value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        sql::check_key(key)?;
        dispatch!(self, b => b.get(key).await)
    }

    /// Replaces the value of `key` if its `mod_revision` is still
    /// `expected_mod_revision`. An unchanged value writes nothing and returns
    /// the current revision.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> Result<Revision> {
        sql::check_key(key)?;
        let write = sql::Write::Update {
            key: key.to_owned(),
            value,
            expected: expected_mod_revision,
        };
        dispatch!(self, b => b.write(write).await).map(|w| w.revision)
    }

    /// Deletes `key` (if its `mod_revision` is `expected_mod_revision`, when
    /// given) and returns its last value with the deletion's revision as
    /// `mod_revision`, the way Kubernetes reports a deleted object.
    pub async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue> {
        sql::check_key(key)?;
        let write = sql::Write::Delete {
            key: key.to_owned(),
            expected: expected_mod_revision,
        };
        let done = dispatch!(self, b => b.write(write).await)?;
        done.deleted.ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })
    }

    /// Lists live keys under `prefix`, sorted, after `start_after` (exclusive),
    /// at most `limit` of them, as of `revision` (default: now).
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> Result<ListResult> {
        let query = sql::ListQuery::new(prefix, start_after, limit, revision);
        dispatch!(self, b => b.list(query).await)
    }

    /// Watches keys under `prefix`: replays every event after `after_revision`
    /// from the log, then follows new writes in revision order.
    pub async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<Watch> {
        watch::start(self.clone(), prefix.to_owned(), after_revision).await
    }

    /// Writes what is kept only in memory (SQLite's node heartbeats) and
    /// makes later writes durable at once; call at shutdown. PostgreSQL
    /// keeps nothing in memory.
    pub async fn close(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(b) => b.close().await,
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// The latest revision written.
    pub async fn current_revision(&self) -> Result<Revision> {
        self.revisions().await.map(|r| r.current)
    }

    /// The compacted revision: reads below it fail with `Compacted`.
    pub async fn compacted_revision(&self) -> Result<Revision> {
        self.revisions().await.map(|r| r.compacted)
    }

    /// Drops history below `revision`: superseded rows and deletion markers at
    /// or below it. The state at `revision` and later stays readable.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        dispatch!(self, b => b.compact(revision).await)
    }

    /// Compacts every `interval` to `retain` revisions below the current
    /// one (kine's compactor). Several servers sharing a database may all run
    /// one: compacting to a revision already compacted does nothing.
    pub fn spawn_compactor(
        &self,
        interval: std::time::Duration,
        retain: Revision,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let target = match store.revisions().await {
                    Ok(revs) => revs.current.saturating_sub(retain.max(0)),
                    Err(error) => {
                        tracing::warn!(%error, "compactor cannot read the revisions");
                        continue;
                    }
                };
                if let Err(error) = store.compact(target).await {
                    tracing::warn!(%error, target, "compaction failed");
                }
            }
        })
    }

    async fn revisions(&self) -> Result<sql::Revisions> {
        dispatch!(self, b => b.revisions().await)
    }

    fn feed(&self) -> &Arc<Feed> {
        match &self.backend {
            Backend::Sqlite(b) => b.feed(),
            Backend::Postgres(b) => b.feed(),
        }
    }

    /// Events after `after` up to `upto` in the key range, at most one batch.
    async fn events(
        &self,
        range: sql::Range,
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<Event>> {
        dispatch!(self, b => b.events(range, after, upto).await)
    }
}
