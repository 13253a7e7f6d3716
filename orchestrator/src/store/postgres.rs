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

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};
use tracing::{debug, info, warn};

use super::sql::{self, ListQuery, LogRow, Plan, Range, Revisions, Write, Written};
use super::{Event, Feed, KeyValue, ListResult, Result, Revision, StoreError};

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
    /// Writes need `&mut` for transactions; one at a time per process.
    writer: Mutex<Client>,
    /// Reads, pipelined; shared with the feed task.
    reader: Arc<Client>,
    feed: Arc<Feed>,
    /// Wakes the feed after a local write.
    wake: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
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

/// Connects and drives the connection on a task; notifications wake `wake`.
async fn connect(conn_str: &str, wake: Option<Arc<Notify>>) -> Result<(Client, JoinHandle<()>)> {
    let (client, mut connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    let task = tokio::spawn(async move {
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
                    warn!(%error, "postgresql connection failed");
                    break;
                }
            }
        }
    });
    Ok((client, task))
}

impl Postgres {
    pub(crate) async fn open(conn_str: &str) -> Result<Postgres> {
        let wake = Arc::new(Notify::new());
        let (mut writer, writer_task) = connect(conn_str, None).await?;
        let (reader, reader_task) = connect(conn_str, Some(wake.clone())).await?;
        let tx = writer.transaction().await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        reader.batch_execute("LISTEN cairn_log").await?;
        let revs = revisions(&reader).await?;
        info!(revision = revs.current, "opened postgresql datastore");

        let reader = Arc::new(reader);
        let feed = Arc::new(Feed::new(revs.current));
        let feed_task = tokio::spawn(run_feed(reader.clone(), feed.clone(), wake.clone()));
        Ok(Postgres {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader,
                feed,
                wake,
                tasks: vec![writer_task, reader_task, feed_task],
            }),
        })
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.inner.feed
    }

    pub(crate) async fn write(&self, write: Write) -> Result<Written> {
        let mut client = self.inner.writer.lock().await;
        let tx = client.transaction().await?;
        // Serializes writers of every server, so ids commit in order.
        tx.batch_execute("LOCK TABLE cairn_log IN EXCLUSIVE MODE")
            .await?;
        let latest = match tx.query_opt(&PG.latest, &[&write.key()]).await? {
            Some(r) => Some(row(&r)?),
            None => None,
        };
        let new = match sql::plan(&write, latest.as_ref())? {
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
        drop(client);
        self.inner.wake.notify_one();
        let mut written = Written::appended(&write, latest, new, id);
        // The feed publishes the event once it reads it back.
        written.event = None;
        Ok(written)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self.inner.reader.query_opt(&PG.latest, &[&key]).await?;
        Ok(match r {
            Some(r) => Some(row(&r)?).filter(|r| !r.deleted).map(LogRow::kv),
            None => None,
        })
    }

    pub(crate) async fn list(&self, q: ListQuery) -> Result<ListResult> {
        let client = &self.inner.reader;
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

    pub(crate) async fn events(
        &self,
        range: Range,
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<Event>> {
        read_events(&self.inner.reader, &range, after, upto).await
    }

    pub(crate) async fn revisions(&self) -> Result<Revisions> {
        revisions(&self.inner.reader).await
    }

    pub(crate) async fn compact(&self, revision: Revision) -> Result<()> {
        let mut client = self.inner.writer.lock().await;
        let revs = revisions(&client).await?;
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
async fn run_feed(client: Arc<Client>, feed: Arc<Feed>, wake: Arc<Notify>) {
    let all = Range::prefix("");
    let mut gap_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        loop {
            let last = feed.published();
            let events = match read_events(&client, &all, last, Revision::MAX).await {
                Ok(events) => events,
                Err(StoreError::Compacted { compacted, .. }) => {
                    // This process fell behind a compaction by another server;
                    // its watchers replay and get `Compacted` themselves.
                    warn!(last, compacted, "feed fell behind compaction");
                    feed.skip_compacted(compacted);
                    continue;
                }
                Err(error) => {
                    warn!(%error, "datastore feed cannot read the log");
                    if client.is_closed() {
                        return;
                    }
                    break;
                }
            };
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
