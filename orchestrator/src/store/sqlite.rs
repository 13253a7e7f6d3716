//! The embedded SQLite dialect: one connection, WAL, on tokio's blocking pool.
//!
//! A single connection behind a mutex serializes every statement, which is
//! what SQLite does with writers anyway and what keeps the feed simple: a
//! write publishes its event to watchers while it still holds the connection,
//! right after its commit, so events leave in revision order.
//!
//! Durability: WAL with `synchronous = FULL`, so each commit syncs the WAL
//! before the write is acknowledged — what etcd does, and what kine gets from
//! SQLite's default. An acknowledged write then survives `kill -9` of the
//! server and a power cut. `NORMAL` would sync only at checkpoints: still
//! safe against a crashed process (the WAL is in the page cache), but a power
//! cut — common on edge devices — could drop acknowledged writes that
//! controllers have already acted on. The cost is one fsync per write, which
//! batching commits under load will amortize.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tracing::{debug, info};

use super::sql::{self, ListQuery, LogRow, Plan, Range, Revisions, Write, Written};
use super::{BackendError, Event, Feed, KeyValue, ListResult, Result, Revision};

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

/// The SQLite back end; clones share the connection and the feed.
#[derive(Clone)]
pub(crate) struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    feed: Arc<Feed>,
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

fn revisions(conn: &Connection) -> rusqlite::Result<Revisions> {
    conn.prepare_cached(sql::REVISIONS)?
        .query_row([], |r| Ok(Revisions::new(r.get(0)?, r.get(1)?)))
}

impl Sqlite {
    pub(crate) async fn open(path: PathBuf) -> Result<Sqlite> {
        let (conn, revs) = tokio::task::spawn_blocking(move || {
            let open_err = |source| BackendError::SqliteOpen {
                path: path.display().to_string(),
                source,
            };
            let conn = Connection::open(&path).map_err(open_err)?;
            let setup = || -> rusqlite::Result<Revisions> {
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| {
                    r.get::<_, String>(0)
                })?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.busy_timeout(Duration::from_secs(10))?;
                conn.execute_batch(SCHEMA)?;
                revisions(&conn)
            };
            let revs = setup().map_err(open_err)?;
            info!(path = %path.display(), revision = revs.current, "opened sqlite datastore");
            Ok::<_, BackendError>((conn, revs))
        })
        .await??;
        Ok(Sqlite {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                feed: Arc::new(Feed::new(revs.current)),
            }),
        })
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.inner.feed
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Feed) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic elsewhere leaves no half-done work: transactions roll
            // back on drop, so a poisoned connection is still consistent.
            let mut conn = inner.conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &inner.feed)
        })
        .await?
    }

    pub(crate) async fn write(&self, write: Write) -> Result<Written> {
        self.run(move |conn, feed| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let latest = latest(&tx, write.key())?;
            let new = match sql::plan(&write, latest.as_ref())? {
                Plan::Unchanged(revision) => {
                    debug!(
                        key = write.key(),
                        revision, "unchanged value, nothing written"
                    );
                    return Ok(Written::unchanged(revision));
                }
                Plan::Append(new) => new,
            };
            let id: Revision = tx.prepare_cached(sql::INSERT)?.query_row(
                params![
                    write.key(),
                    new.create_revision,
                    new.prev_revision,
                    new.deleted,
                    new.value
                ],
                |r| r.get(0),
            )?;
            tx.commit()?;
            let mut written = Written::appended(&write, latest, new, id);
            if let Some(event) = written.event.take() {
                feed.publish(event);
            }
            Ok(written)
        })
        .await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.run(move |conn, _| Ok(latest(conn, &key)?.filter(|r| !r.deleted).map(LogRow::kv)))
            .await
    }

    pub(crate) async fn list(&self, q: ListQuery) -> Result<ListResult> {
        self.run(move |conn, _| {
            let at = q.read_at(revisions(conn)?)?;
            let rows = conn
                .prepare_cached(sql::LIST)?
                .query_map(
                    params![q.range.lo, q.range.hi, q.start_after, at, at, q.fetch()],
                    row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
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
        self.run(move |conn, _| {
            let events = conn
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
            // Checked after reading: a compaction that ran first is seen here.
            revisions(conn)?.check_not_compacted(after)?;
            Ok(events)
        })
        .await
    }

    pub(crate) async fn revisions(&self) -> Result<Revisions> {
        self.run(|conn, _| Ok(revisions(conn)?)).await
    }

    pub(crate) async fn compact(&self, revision: Revision) -> Result<()> {
        self.run(move |conn, _| {
            let revs = revisions(conn)?;
            if revision <= revs.compacted {
                return Ok(());
            }
            revs.check(revision)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute(sql::COMPACT, params![revision, revision])?;
            tx.execute(sql::SET_COMPACTED, params![revision])?;
            tx.commit()?;
            info!(revision, removed, "compacted sqlite datastore");
            Ok(())
        })
        .await
    }
}
