//! The embedded SQLite dialect: one connection, WAL, one writer thread.
//!
//! One connection behind a mutex serializes every statement, which is what
//! SQLite does with writers anyway and what keeps the feed simple. Writes go
//! to a writer thread (`writer`) that takes every write queued meanwhile and
//! commits them as one transaction with one fsync (group commit), then
//! publishes their events in revision order while it still holds the
//! connection. Each write keeps its own outcome: a conflict or a failed
//! statement fails that write only.
//!
//! Revisions come from a counter kept with the connection, and rows are
//! inserted with their revision as explicit id, so the log may have gaps
//! (a failed write, a coalesced heartbeat, a restart after a crash).
//!
//! # Durability contract
//! - Every write is on disk before it is acknowledged: WAL with
//!   `synchronous = FULL`, as etcd does. It survives `kill -9` of the server
//!   and a power cut (`NORMAL` would sync only at checkpoints: safe against
//!   a crashed process, not against a power cut, common on edge devices).
//! - Except Lease renewals (`heartbeat`): updates of a Lease (node
//!   heartbeats, leader election) that change only `spec.renewTime` are acknowledged
//!   from memory and written (the latest per Lease) every
//!   [`heartbeat::FLUSH_INTERVAL`] at the latest, at each compaction, before
//!   any other write of that key, and at shutdown ([`Sqlite::close`]). A
//!   crash loses at most the renewals since the last flush; the node renews
//!   again within seconds. Revisions handed out from memory are first
//!   reserved in `cairn_meta` (`rev_reserved`), so they are never handed out
//!   again after a crash.
//!
//! # Size on disk
//! New databases use `auto_vacuum = INCREMENTAL` (older files are converted
//! with one `VACUUM` when opened). A compaction that leaves a quarter of the
//! file free gives the pages back (`incremental_vacuum`) and truncates the
//! WAL; `journal_size_limit` caps the WAL after each checkpoint.

mod heartbeat;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::sql::{self, ListQuery, LogRow, Range, Revisions, Write, Written};
use super::{BackendError, Event, Feed, KeyValue, ListResult, Result, Revision, StoreError};
use heartbeat::Overlay;
use writer::Request;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cairn_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    deleted BOOLEAN NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cairn_log_name_prev ON cairn_log (name, prev_revision);
CREATE INDEX IF NOT EXISTS cairn_log_name_id ON cairn_log (name, id);
CREATE TABLE IF NOT EXISTS cairn_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Largest WAL kept after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 4 << 20;

/// The SQLite back end; clones share the connection and the feed.
#[derive(Clone)]
pub(crate) struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Requests to the writer thread; it flushes and ends when this drops.
    requests: mpsc::Sender<Request>,
}

/// What the writer thread and the readers share.
pub(super) struct Shared {
    state: Mutex<State>,
    feed: Arc<Feed>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves no half-done work: transactions roll
        // back on drop, so a poisoned connection is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection and what is kept in memory next to it.
pub(super) struct State {
    conn: Connection,
    overlay: Overlay,
    /// The next revision to hand out.
    next: Revision,
    /// Revisions up to this one may be handed out without a row: a crash
    /// cannot make them be handed out again.
    reserved: Revision,
    compacted: Revision,
    /// After [`Sqlite::close`], heartbeats are written like other updates.
    closed: bool,
}

impl State {
    fn revisions(&self) -> Revisions {
        Revisions::new(self.next - 1, self.compacted)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    Ok(LogRow::new(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
    ))
}

fn latest(conn: &Connection, key: &str) -> rusqlite::Result<Option<LogRow>> {
    conn.prepare_cached(sql::LATEST)?
        .query_row(params![key], row)
        .optional()
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Option<Revision>> {
    conn.prepare_cached("SELECT value FROM cairn_meta WHERE name = ?")?
        .query_row(params![name], |r| r.get(0))
        .optional()
}

/// Opens the file, converts it to incremental auto-vacuum if needed, and
/// reads the counters.
fn open_conn(path: &std::path::Path) -> rusqlite::Result<State> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // auto_vacuum must be chosen before the first table exists; an older
    // file without it is rebuilt once.
    let auto_vacuum: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if auto_vacuum != 2 {
        let has_tables: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')",
            [],
            |r| r.get(0),
        )?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        if has_tables {
            info!(path = %path.display(), "converting the datastore to incremental auto-vacuum");
            conn.execute_batch("VACUUM")?;
        }
    }
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update_and_check(None, "journal_size_limit", JOURNAL_SIZE_LIMIT, |r| {
        r.get::<_, i64>(0)
    })?;
    conn.execute_batch(SCHEMA)?;

    let max_id: Revision =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM cairn_log", [], |r| {
            r.get(0)
        })?;
    let seq: Revision = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'cairn_log'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let compacted = meta(&conn, "compact_rev")?.unwrap_or(0);
    let mut coalesced = meta(&conn, "coalesced_rev")?.unwrap_or(0);
    // A reservation left behind means the server stopped without flushing:
    // heartbeats up to it may be lost, so replays of them are refused.
    let reserved = meta(&conn, "rev_reserved")?;
    if let Some(reserved) = reserved {
        warn!(
            reserved,
            "the datastore was not closed cleanly: node heartbeats since the last flush are lost"
        );
        coalesced = coalesced.max(reserved);
    }
    let last = max_id
        .max(seq)
        .max(compacted)
        .max(coalesced)
        .max(reserved.unwrap_or(0));
    Ok(State {
        conn,
        overlay: Overlay {
            coalesced,
            ..Overlay::default()
        },
        next: last + 1,
        reserved: reserved.unwrap_or(0),
        compacted,
        closed: false,
    })
}

impl Sqlite {
    pub(crate) async fn open(path: PathBuf) -> Result<Sqlite> {
        let state = tokio::task::spawn_blocking(move || {
            let state = open_conn(&path).map_err(|source| BackendError::SqliteOpen {
                path: path.display().to_string(),
                source,
            })?;
            info!(path = %path.display(), revision = state.next - 1, "opened sqlite datastore");
            Ok::<_, BackendError>(state)
        })
        .await??;
        let feed = Arc::new(Feed::new(state.next - 1));
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            feed,
        });
        let requests = writer::spawn(shared.clone())
            .map_err(|e| BackendError::Unavailable(format!("starting the sqlite writer: {e}")))?;
        Ok(Sqlite {
            inner: Arc::new(Inner { shared, requests }),
        })
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.inner.shared.feed
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.lock())).await?
    }

    /// Hands a request to the writer thread and waits for its answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let stopped =
            || StoreError::Backend(BackendError::Unavailable("sqlite writer stopped".into()));
        self.inner.requests.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub(crate) async fn write(&self, write: Write) -> Result<Written> {
        self.request(|reply| Request::Write(write, reply)).await
    }

    pub(crate) async fn compact(&self, revision: Revision) -> Result<()> {
        self.request(|reply| Request::Compact(revision, reply))
            .await
    }

    /// Writes the heartbeats kept in memory, marks the database closed
    /// cleanly, and writes later heartbeats at once.
    pub(crate) async fn close(&self) -> Result<()> {
        self.request(Request::Close).await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |st| {
            if let Some(p) = st.overlay.get(&key) {
                return Ok(Some(p.kv.clone()));
            }
            Ok(latest(&st.conn, &key)?
                .filter(|r| !r.deleted)
                .map(LogRow::kv))
        })
        .await
    }

    pub(crate) async fn list(&self, q: ListQuery) -> Result<ListResult> {
        self.read(move |st| {
            let at = q.read_at(st.revisions())?;
            let mut rows = st
                .conn
                .prepare_cached(sql::LIST)?
                .query_map(
                    params![q.range.lo, q.range.hi, q.start_after, at, at, q.fetch()],
                    row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // A pending heartbeat replaces the key's older row.
            for r in &mut rows {
                if let Some(p) = st.overlay.get(&r.name)
                    && p.kv.mod_revision <= at
                {
                    r.id = p.kv.mod_revision;
                    r.value = p.kv.value.clone();
                }
            }
            Ok(q.finish(rows, at))
        })
        .await
    }

    pub(crate) async fn events(
        &self,
        range: Range,
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<Event>> {
        self.read(move |st| {
            st.revisions().check_not_compacted(after)?;
            if after < st.overlay.coalesced && heartbeat::overlaps(&range) {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: st.overlay.coalesced,
                });
            }
            let mut events = st
                .conn
                .prepare_cached(sql::EVENTS)?
                .query_map(
                    params![after, upto, range.lo, range.hi, sql::EVENT_BATCH],
                    |r| {
                        let prev = match r.get::<_, Option<Revision>>(5)? {
                            Some(id) => Some((id, r.get(6)?, r.get(7)?)),
                            None => None,
                        };
                        Ok(row(r)?.event(prev))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // A full batch ends at its last row; pending heartbeats join
            // up to there, in revision order.
            let bound = match events.last() {
                Some(last) if events.len() as i64 >= sql::EVENT_BATCH => last.revision(),
                _ => upto,
            };
            let pending = st.overlay.events(&range, after, bound);
            if !pending.is_empty() {
                events.extend(pending);
                events.sort_by_key(Event::revision);
            }
            Ok(events)
        })
        .await
    }

    pub(crate) async fn revisions(&self) -> Result<Revisions> {
        self.read(|st| Ok(st.revisions())).await
    }
}
