//! The SQLite writer thread: group commit, heartbeat flushes, compaction.
//!
//! Callers queue requests on a channel. The thread takes the first one and
//! every write queued behind it (up to [`MAX_BATCH`]), runs them in one
//! transaction — each write in its own savepoint, so a failed statement
//! undoes that write only — and commits once: one fsync for the whole group.
//! Under load, the writes that arrive during one commit form the next group.
//! Planning errors (conflicts, missing keys) are found before anything is
//! written and fail only their write. If the commit itself fails, every
//! write of the group fails and nothing of it is visible.
//!
//! Heartbeat renewals in a group take their revision in order with the
//! others and are published with them, but write nothing; a group made of
//! renewals only commits nothing (unless revisions must be reserved).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::heartbeat::{self, Overlay};
use super::{Shared, State, latest};
use crate::store::sql::{self, LogRow, Plan, Range, Write, Written};
use crate::store::{BackendError, Event, KeyValue, Result, Revision, StoreError};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// How often an idle writer looks for heartbeats due to be flushed.
const FLUSH_CHECK: Duration = Duration::from_secs(30);
/// Compactions that would drop heartbeat renewals only are skipped until
/// the window reaches this many revisions.
const SKIP_MAX: Revision = 10_000;
/// Revisions reserved at once for heartbeats (one small write per block).
const RESERVE_BLOCK: Revision = 1000;
/// A compaction that leaves this share of the file free (and at least
/// `RECLAIM_MIN_PAGES`) gives the pages back to the file system.
const RECLAIM_FRACTION: i64 = 4;
const RECLAIM_MIN_PAGES: i64 = 256;

const INSERT: &str = "INSERT INTO cairn_log \
     (id, name, create_revision, prev_revision, deleted, value) VALUES (?, ?, ?, ?, ?, ?)";
const SET_META: &str = "INSERT INTO cairn_meta (name, value) VALUES (?, ?) \
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";

type Reply<T> = oneshot::Sender<Result<T>>;

/// What the writer thread is asked to do.
pub(super) enum Request {
    Write(Write, Reply<Written>),
    Compact(Revision, Reply<()>),
    Close(Reply<()>),
}

/// Starts the writer thread; it ends when every sender is gone.
pub(super) fn spawn(shared: Arc<Shared>) -> std::io::Result<mpsc::Sender<Request>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || run(&shared, &rx))?;
    Ok(tx)
}

fn run(shared: &Shared, rx: &Receiver<Request>) {
    loop {
        let first = match rx.recv_timeout(FLUSH_CHECK) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => {
                flush_if_due(&mut shared.lock());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The store was dropped without `close`: still keep the heartbeats.
                let mut st = shared.lock();
                if !st.closed
                    && let Err(error) = flush(&mut st, true)
                {
                    warn!(%error, "flushing heartbeats at close failed");
                }
                return;
            }
        };
        let mut writes = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Write(write, reply) => writes.push((write, reply)),
                Request::Compact(revision, reply) => {
                    group(shared, std::mem::take(&mut writes));
                    let _ = reply.send(compact(&mut shared.lock(), revision));
                }
                Request::Close(reply) => {
                    group(shared, std::mem::take(&mut writes));
                    let _ = reply.send(flush(&mut shared.lock(), true));
                }
            }
            if writes.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        group(shared, writes);
        flush_if_due(&mut shared.lock());
    }
}

fn flush_if_due(st: &mut MutexGuard<'_, State>) {
    if st.overlay.due()
        && let Err(error) = flush(st, false)
    {
        warn!(%error, "flushing heartbeats failed; retrying later");
    }
}

/// A copy of a SQLite error for each write of a failed group.
fn copy_error(e: &rusqlite::Error) -> StoreError {
    let code = e
        .sqlite_error()
        .copied()
        .unwrap_or_else(|| rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR));
    let copy = rusqlite::Error::SqliteFailure(code, Some(e.to_string()));
    StoreError::Backend(BackendError::Sqlite(copy))
}

/// Commits a group of writes in one transaction and answers each.
fn group(shared: &Shared, writes: Vec<(Write, Reply<Written>)>) {
    if writes.is_empty() {
        return;
    }
    let mut guard = shared.lock();
    let st = &mut *guard;
    let saved = st.overlay.clone();
    let tx = match st
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
    {
        Ok(tx) => tx,
        Err(e) => {
            for (_, reply) in writes {
                let _ = reply.send(Err(copy_error(&e)));
            }
            return;
        }
    };
    let mut g = Group {
        tx: &tx,
        overlay: &mut st.overlay,
        next: &mut st.next,
        heartbeats: !st.closed,
        dirty: false,
        unwritten: 0,
    };
    let results: Vec<Result<Written>> = writes.iter().map(|(w, _)| g.apply(w)).collect();
    let (dirty, unwritten) = (g.dirty, g.unwritten);
    let mut reserve = None;
    let mut outcome = Ok(());
    if unwritten > st.reserved {
        let mark = unwritten + RESERVE_BLOCK;
        outcome = tx
            .execute(SET_META, params!["rev_reserved", mark])
            .map(drop);
        reserve = Some(mark);
    }
    if outcome.is_ok() && (dirty || reserve.is_some()) {
        outcome = tx.commit();
    } else {
        drop(tx);
    }
    match outcome {
        Ok(()) => {
            if let Some(mark) = reserve {
                st.reserved = mark;
            }
            for ((_, reply), mut result) in writes.into_iter().zip(results) {
                if let Ok(written) = &mut result
                    && let Some(event) = written.event.take()
                {
                    shared.feed.publish(event);
                }
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            st.overlay = saved;
            for (_, reply) in writes {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// One group's transaction and the counters it moves.
struct Group<'a> {
    tx: &'a Transaction<'a>,
    overlay: &'a mut Overlay,
    next: &'a mut Revision,
    /// Renewals may stay in memory (not after `close`).
    heartbeats: bool,
    /// Something was written.
    dirty: bool,
    /// The highest revision handed out without a row.
    unwritten: Revision,
}

impl Group<'_> {
    fn revision(&mut self) -> Revision {
        let id = *self.next;
        *self.next += 1;
        id
    }

    fn apply(&mut self, write: &Write) -> Result<Written> {
        let key = write.key();
        let pending = self.overlay.get(key).cloned();
        let latest = match &pending {
            Some(p) => Some(p.row()),
            None => latest(self.tx, key)?,
        };
        let new = match sql::plan(write, latest.as_ref())? {
            Plan::Unchanged(revision) => {
                debug!(key, revision, "unchanged value, nothing written");
                return Ok(Written::unchanged(revision));
            }
            Plan::Append(new) => new,
        };
        if let (true, Write::Update { value, .. }, Some(cur)) = (self.heartbeats, write, &latest)
            && heartbeat::is_renewal(key, &cur.value, value)
        {
            let id = self.revision();
            let kv = KeyValue {
                key: key.to_owned(),
                value: value.clone(),
                create_revision: cur.create_revision,
                mod_revision: id,
            };
            self.overlay.renew(kv.clone(), cur);
            self.unwritten = id;
            return Ok(Written {
                revision: id,
                deleted: None,
                event: Some(Event::Put {
                    kv,
                    prev: Some(cur.clone().kv()),
                }),
            });
        }
        // Anything else is written, after the key's pending heartbeat.
        self.tx.execute_batch("SAVEPOINT w")?;
        let inserted = (|| {
            if let Some(p) = &pending {
                insert_pending(self.tx, p)?;
            }
            let id = self.revision();
            self.tx.prepare_cached(INSERT)?.execute(params![
                id,
                key,
                new.create_revision,
                new.prev_revision,
                new.deleted,
                new.value
            ])?;
            self.tx.execute_batch("RELEASE w")?;
            Ok::<_, rusqlite::Error>(id)
        })();
        match inserted {
            Ok(id) => {
                if pending.is_some() {
                    self.overlay.pending.remove(key);
                }
                self.dirty = true;
                Ok(Written::appended(write, latest, new, id))
            }
            Err(e) => {
                if let Err(undo) = self.tx.execute_batch("ROLLBACK TO w; RELEASE w") {
                    warn!(error = %undo, "rolling back a failed write");
                }
                Err(e.into())
            }
        }
    }
}

/// Writes a pending heartbeat as a row with its own revision.
fn insert_pending(conn: &Connection, p: &heartbeat::Pending) -> rusqlite::Result<()> {
    let row: LogRow = p.row();
    conn.prepare_cached(INSERT)?.execute(params![
        row.id,
        row.name,
        row.create_revision,
        p.base,
        false,
        row.value
    ])?;
    Ok(())
}

/// Writes every pending heartbeat. The coalesced revision is written at
/// close only: after a crash, the reservation stands in for it.
fn write_pending(tx: &Transaction<'_>, overlay: &Overlay) -> rusqlite::Result<()> {
    for p in overlay.pending.values() {
        insert_pending(tx, p)?;
    }
    Ok(())
}

/// Writes the pending heartbeats in one transaction. `close` also drops
/// the reservation (a clean stop) and writes later heartbeats at once.
fn flush(st: &mut State, close: bool) -> Result<()> {
    if st.overlay.pending.is_empty() && !close {
        return Ok(());
    }
    let tx = st
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    write_pending(&tx, &st.overlay)?;
    if close {
        tx.execute("DELETE FROM cairn_meta WHERE name = 'rev_reserved'", [])?;
        if st.overlay.coalesced > 0 {
            tx.execute(SET_META, params!["coalesced_rev", st.overlay.coalesced])?;
        }
    }
    tx.commit()?;
    let flushed = st.overlay.pending.len();
    st.overlay.pending.clear();
    if close {
        st.closed = true;
        st.reserved = 0;
        info!(flushed, "closed sqlite datastore");
    } else {
        debug!(flushed, "flushed heartbeats");
    }
    Ok(())
}

/// Flushes heartbeats and drops history below `revision` in one
/// transaction, then gives free pages back if many were freed.
fn compact(st: &mut State, revision: Revision) -> Result<()> {
    let revs = st.revisions();
    if revision <= revs.compacted {
        return Ok(());
    }
    revs.check(revision)?;
    if heartbeats_only(&st.conn, revs.compacted, revision)? {
        debug!(
            revision,
            "only heartbeats since the last compaction: skipped"
        );
        return Ok(());
    }
    let tx = st
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    write_pending(&tx, &st.overlay)?;
    let removed = tx.execute(sql::COMPACT, params![revision, revision])?;
    tx.execute(sql::SET_COMPACTED, params![revision])?;
    tx.commit()?;
    st.overlay.pending.clear();
    st.compacted = revision;
    info!(revision, removed, "compacted sqlite datastore");
    if removed > 0
        && let Err(error) = reclaim(&st.conn)
    {
        warn!(%error, "reclaiming free pages failed");
    }
    Ok(())
}

/// True if every row in `(compacted, revision]` is a heartbeat Lease and
/// that window is under [`SKIP_MAX`]: compacting would only drop a few
/// renewals, not worth a write every few minutes at idle.
fn heartbeats_only(conn: &Connection, compacted: Revision, revision: Revision) -> Result<bool> {
    if revision - compacted >= SKIP_MAX {
        return Ok(false);
    }
    let hb = Range::prefix(heartbeat::PREFIX);
    let other: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM cairn_log WHERE id > ? AND id <= ? \
             AND NOT (name >= ? AND name < ?))",
        )?
        .query_row(params![compacted, revision, hb.lo, hb.hi], |r| r.get(0))?;
    Ok(!other)
}

/// Returns free pages to the file system and truncates the WAL when a
/// good share of the file is free.
fn reclaim(conn: &Connection) -> rusqlite::Result<()> {
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    if free < RECLAIM_MIN_PAGES || free * RECLAIM_FRACTION < pages {
        return Ok(());
    }
    // Each step of the pragma frees one page: run it to the end.
    let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut steps = vacuum.query([])?;
    while steps.next()?.is_some() {}
    drop(steps);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    info!(free_pages = free, pages, "gave free datastore pages back");
    Ok(())
}
