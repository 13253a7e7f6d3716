//! The PostgreSQL dialect: several `cairn server`s share one database.
//!
//! Writes run in a transaction that first takes `LOCK TABLE cairn_log IN
//! EXCLUSIVE MODE` (plain reads still proceed). Revisions then commit in id
//! order across every process, so a reader that sees revision N committed
//! knows every lower id is committed or gone for good — which lets `list`
//! return a revision a watch can resume from without missing a late commit.
//!
//! Each handle runs a feed task that reads the log past the last revision it
//! published and hands events to this process's watchers. Writers `NOTIFY
//! cairn_log` on commit and the feed `LISTEN`s, so other servers' writes
//! arrive at once; a 100 ms poll covers lost notifications. A gap in the ids
//! (a transaction that took an id and did not commit) is waited for a short
//! time and then skipped, the way kine fills gaps.
//!
//! # Lost connections
//! Each handle keeps two connections (writes; reads, `LISTEN` and the feed).
//! A connection found closed is opened again on the next use, so the server
//! outlives a PostgreSQL restart: meanwhile operations fail with
//! [`BackendError::Unavailable`] (HTTP 503 upstream), and the feed retries
//! with backoff. Once it reconnects it reads the log from the last revision it
//! published, so watches that were open resume without missing an event. A
//! write whose commit was in flight when the connection broke reports an
//! error although it may have committed (as with etcd); its event is still
//! delivered.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};
use tracing::{debug, info, warn};

use super::sql::{self, ListQuery, LogRow, Plan, Range, Revisions, Write, Written};
use super::{BackendError, Event, Feed, KeyValue, ListResult, Result, Revision, StoreError};

const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7306916424634638445);
CREATE TABLE IF NOT EXISTS cairn_log (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE \"C\" NOT NULL,
    create_revision BIGINT NOT NULL,
    prev_revision BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    value BYTEA NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cairn_log_name_prev ON cairn_log (name, prev_revision);
CREATE INDEX IF NOT EXISTS cairn_log_name_id ON cairn_log (name, id);
CREATE TABLE IF NOT EXISTS cairn_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
";

/// How often the feed reads the log when no notification arrives.
const POLL: Duration = Duration::from_millis(100);
/// How long the feed waits for a missing id before skipping it.
const GAP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between the feed's attempts to reach a lost server.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Connection timeout unless the endpoint sets one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive idle time unless the endpoint sets one: a server that
/// vanished without closing the socket is noticed in about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The shared statements with numbered placeholders.
struct Statements {
    latest: String,
    insert: String,
    list: String,
    events: String,
    compact: String,
    set_compacted: String,
}

static PG: LazyLock<Statements> = LazyLock::new(|| Statements {
    latest: sql::numbered(sql::LATEST),
    insert: sql::numbered(sql::INSERT),
    list: sql::numbered(sql::LIST),
    events: sql::numbered(sql::EVENTS),
    compact: sql::numbered(sql::COMPACT),
    set_compacted: sql::numbered(sql::SET_COMPACTED),
});

/// The PostgreSQL back end; clones share connections and the feed.
#[derive(Clone)]
pub(crate) struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Arc<Connections>,
    feed: Arc<Feed>,
    feed_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.feed_task.abort();
    }
}

/// The two connections of a handle, each opened again when found closed.
struct Connections {
    config: tokio_postgres::Config,
    /// Writes need `&mut` for transactions; one at a time per process.
    writer: Mutex<Option<Client>>,
    /// Reads, pipelined; shared with the feed task. Listens on `cairn_log`.
    reader: Mutex<Option<Arc<Client>>>,
    /// Wakes the feed after a local write or a notification.
    wake: Arc<Notify>,
}

impl Connections {
    /// The read connection, reconnected (and listening) if it was lost.
    async fn reader(&self) -> Result<Arc<Client>> {
        let mut slot = self.reader.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        let client = connect(&self.config, Some(self.wake.clone())).await?;
        client.batch_execute("LISTEN cairn_log").await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        // Notifications sent while it was away are lost: let the feed look.
        self.wake.notify_one();
        Ok(client)
    }

    /// Runs a read; a lost connection is dropped so the next read reconnects.
    async fn read<T>(&self, f: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
        let client = self.reader().await?;
        let result = f(&client).await;
        if is_unavailable(&result) {
            let mut slot = self.reader.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
        }
        result
    }

    /// Runs `f` on the write connection (reconnected if it was lost).
    async fn write<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut slot = self.writer.lock().await;
        let client = match slot.as_mut().filter(|c| !c.is_closed()) {
            Some(client) => client,
            None => slot.insert(connect(&self.config, None).await?),
        };
        let result = f(client).await;
        if is_unavailable(&result) {
            *slot = None;
        }
        result
    }
}

fn is_unavailable<T>(result: &Result<T>) -> bool {
    matches!(
        result,
        Err(StoreError::Backend(BackendError::Unavailable(_)))
    )
}

fn row(r: &Row) -> Result<LogRow> {
    Ok(LogRow::new(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
    ))
}

fn event(r: &Row) -> Result<Event> {
    let prev = match r.try_get::<_, Option<Revision>>(5)? {
        Some(id) => Some((id, r.try_get(6)?, r.try_get(7)?)),
        None => None,
    };
    Ok(row(r)?.event(prev))
}

async fn revisions(client: &Client) -> Result<Revisions> {
    let r = client.query_one(sql::REVISIONS, &[]).await?;
    Ok(Revisions::new(r.try_get(0)?, r.try_get(1)?))
}

/// Connects and drives the connection on a task, which ends with the
/// connection; notifications wake `wake`.
async fn connect(config: &tokio_postgres::Config, wake: Option<Arc<Notify>>) -> Result<Client> {
    let (client, mut connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(wake) = &wake {
                        wake.notify_one();
                    }
                }
                Ok(AsyncMessage::Notice(notice)) => debug!(%notice, "postgresql notice"),
                Ok(_) => {}
                Err(error) => {
                    warn!(%error, "postgresql connection lost");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// The connection settings of `conn_str` (`host=... dbname=...` or a
/// `postgres://` URL), with Cairn's timeouts where it sets none.
pub(crate) fn config(conn_str: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = conn_str.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    Ok(config)
}

impl Postgres {
    pub(crate) async fn open(conn_str: &str) -> Result<Postgres> {
        let conns = Arc::new(Connections {
            config: config(conn_str)?,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
            wake: Arc::new(Notify::new()),
        });
        conns
            .write(async |client| {
                let tx = client.transaction().await?;
                tx.batch_execute(SCHEMA).await?;
                tx.commit().await?;
                Ok(())
            })
            .await?;
        let revs = conns.read(async |client| revisions(client).await).await?;
        info!(revision = revs.current, "opened postgresql datastore");

        let feed = Arc::new(Feed::new(revs.current));
        let feed_task = tokio::spawn(run_feed(conns.clone(), feed.clone()));
        Ok(Postgres {
            inner: Arc::new(Inner {
                conns,
                feed,
                feed_task,
            }),
        })
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.inner.feed
    }

    pub(crate) async fn write(&self, write: Write) -> Result<Written> {
        let conns = &self.inner.conns;
        let written = conns
            .write(async |client| write_in(client, &write).await)
            .await?;
        conns.wake.notify_one();
        Ok(written)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self
            .inner
            .conns
            .read(async |client| Ok(client.query_opt(&PG.latest, &[&key]).await?))
            .await?;
        Ok(match r {
            Some(r) => Some(row(&r)?).filter(|r| !r.deleted).map(LogRow::kv),
            None => None,
        })
    }

    pub(crate) async fn list(&self, q: ListQuery) -> Result<ListResult> {
        self.inner
            .conns
            .read(async |client| list_in(client, q).await)
            .await
    }

    pub(crate) async fn events(
        &self,
        range: Range,
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<Event>> {
        self.inner
            .conns
            .read(async |client| read_events(client, &range, after, upto).await)
            .await
    }

    pub(crate) async fn revisions(&self) -> Result<Revisions> {
        self.inner
            .conns
            .read(async |client| revisions(client).await)
            .await
    }

    pub(crate) async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner
            .conns
            .write(async |client| compact_in(client, revision).await)
            .await
    }
}

/// One write in a transaction on `client`.
async fn write_in(client: &mut Client, write: &Write) -> Result<Written> {
    let tx = client.transaction().await?;
    // Serializes writers of every server, so ids commit in order.
    tx.batch_execute("LOCK TABLE cairn_log IN EXCLUSIVE MODE")
        .await?;
    let latest = match tx.query_opt(&PG.latest, &[&write.key()]).await? {
        Some(r) => Some(row(&r)?),
        None => None,
    };
    let new = match sql::plan(write, latest.as_ref())? {
        Plan::Unchanged(revision) => {
            tx.rollback().await?;
            debug!(
                key = write.key(),
                revision, "unchanged value, nothing written"
            );
            return Ok(Written::unchanged(revision));
        }
        Plan::Append(new) => new,
    };
    let id: Revision = tx
        .query_one(
            &PG.insert,
            &[
                &write.key(),
                &new.create_revision,
                &new.prev_revision,
                &new.deleted,
                &new.value,
            ],
        )
        .await?
        .try_get(0)?;
    tx.batch_execute("NOTIFY cairn_log").await?;
    tx.commit().await?;
    let mut written = Written::appended(write, latest, new, id);
    // The feed publishes the event once it reads it back.
    written.event = None;
    Ok(written)
}

async fn list_in(client: &Client, q: ListQuery) -> Result<ListResult> {
    let at = q.read_at(revisions(client).await?)?;
    let rows = client
        .query(
            &PG.list,
            &[
                &q.range.lo,
                &q.range.hi,
                &q.start_after,
                &at,
                &at,
                &q.fetch(),
            ],
        )
        .await?;
    // A compaction past `at` during the read may have removed rows.
    revisions(client).await?.check_not_compacted(at)?;
    let rows = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
    Ok(q.finish(rows, at))
}

async fn compact_in(client: &mut Client, revision: Revision) -> Result<()> {
    let revs = revisions(client).await?;
    if revision <= revs.compacted {
        return Ok(());
    }
    revs.check(revision)?;
    let tx = client.transaction().await?;
    let removed = tx.execute(&PG.compact, &[&revision, &revision]).await?;
    tx.execute(&PG.set_compacted, &[&revision]).await?;
    tx.commit().await?;
    info!(revision, removed, "compacted postgresql datastore");
    Ok(())
}

/// Events in `(after, upto]`, failing if `after` is compacted.
async fn read_events(
    client: &Client,
    range: &Range,
    after: Revision,
    upto: Revision,
) -> Result<Vec<Event>> {
    let rows = client
        .query(
            &PG.events,
            &[&after, &upto, &range.lo, &range.hi, &sql::EVENT_BATCH],
        )
        .await?;
    // Checked after reading: a compaction that ran first is seen here.
    revisions(client).await?.check_not_compacted(after)?;
    rows.iter().map(event).collect()
}

/// Reads the log past the last published revision and publishes it in order.
/// While the server is unreachable it retries with a growing backoff.
async fn run_feed(conns: Arc<Connections>, feed: Arc<Feed>) {
    let all = Range::prefix("");
    let mut gap_since: Option<Instant> = None;
    let mut backoff: Option<Duration> = None;
    loop {
        match backoff {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                tokio::select! {
                    _ = conns.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        loop {
            let last = feed.published();
            let read = conns
                .read(async |client| read_events(client, &all, last, Revision::MAX).await)
                .await;
            let events = match read {
                Ok(events) => events,
                Err(StoreError::Compacted { compacted, .. }) => {
                    // This process fell behind a compaction by another server;
                    // its watchers replay and get `Compacted` themselves.
                    warn!(last, compacted, "feed fell behind compaction");
                    feed.skip_compacted(compacted);
                    continue;
                }
                Err(error) => {
                    let delay = backoff.map_or(POLL, |d| (d * 2).min(MAX_BACKOFF));
                    warn!(%error, retry_in = ?delay, "datastore feed cannot read the log");
                    backoff = Some(delay);
                    break;
                }
            };
            if backoff.take().is_some() {
                info!(last, "datastore feed reading the log again");
            }
            let full = events.len() as i64 >= sql::EVENT_BATCH;
            let mut stalled = false;
            for event in events {
                let revision = event.revision();
                let expected = feed.published() + 1;
                if revision > expected {
                    let since = *gap_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < GAP_TIMEOUT {
                        stalled = true;
                        break;
                    }
                    warn!(
                        from = expected,
                        to = revision - 1,
                        "skipping revisions that never committed"
                    );
                }
                gap_since = None;
                feed.publish(event);
            }
            if stalled || !full {
                break;
            }
        }
    }
}
