//! Watches: replay from the log, then follow the store's feed.
//!
//! A watch subscribes to the feed *before* it reads how far the feed has
//! published, then replays the log up to that revision. Everything above it
//! is then certain to arrive on the subscription, and anything at or below
//! the last revision delivered is dropped, so the stream has neither gaps nor
//! duplicates. A watcher that falls behind the feed's buffer does the same
//! again from its last revision, reading the log instead of holding memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;
use tracing::debug;

use super::sql::{self, Range};
use super::{BackendError, Event, FeedItem, Result, Revision, Store, StoreError};

/// Events of one watch, in revision order. Dropping it ends the watch.
///
/// Read it with [`Watch::recv`] or as a `Stream`. An `Err` item (for example
/// `Compacted` when the watcher fell behind a compaction) is the last one.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<Event>>,
    task: AbortHandle,
}

impl Watch {
    /// The next event; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core::Stream for Watch {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(super) async fn start(store: Store, prefix: String, after: Revision) -> Result<Watch> {
    let sub = store.feed().tx.subscribe();
    // Published before the subscription: replayed from the log. Everything
    // after is in `sub`, however late the task below first runs (renewals
    // coalesced meanwhile are gaps in the log, not in the feed).
    let published = store.feed().published();
    store.revisions().await?.check(after)?;
    let (tx, rx) = mpsc::channel(256);
    let range = Range::prefix(&prefix);
    let task = tokio::spawn(async move {
        if let Err(error) = run(&store, &range, after, published, sub, &tx).await {
            debug!(%error, prefix = %range.lo, "watch ended with an error");
            let _ = tx.send(Err(error)).await;
        }
    });
    Ok(Watch {
        rx,
        task: task.abort_handle(),
    })
}

/// Feeds `tx` until the receiver goes away (`Ok`) or the store fails:
/// replays the log from `last` up to `upto` (what was published before
/// `sub` subscribed), then follows `sub`.
async fn run(
    store: &Store,
    range: &Range,
    mut last: Revision,
    mut upto: Revision,
    mut sub: broadcast::Receiver<Arc<FeedItem>>,
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<()> {
    loop {
        // Only when there is something to replay: asking the log from a
        // revision below a coalesced heartbeat fails even for nothing.
        while upto > last {
            let events = store.events(range.clone(), last, upto).await?;
            let full = events.len() as i64 >= sql::EVENT_BATCH;
            for event in events {
                last = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        last = last.max(upto);

        // Follow the feed.
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return Ok(()),
                received = sub.recv() => received,
            };
            match received {
                Ok(item) => {
                    let event = match &*item {
                        FeedItem::Event(event) => event,
                        FeedItem::Compacted(revision) if *revision > last => {
                            // Replay, and fail there: the log lost what we missed.
                            upto = store.feed().published();
                            break;
                        }
                        FeedItem::Compacted(_) => continue,
                    };
                    let revision = event.revision();
                    if revision <= last {
                        continue;
                    }
                    last = revision;
                    if range.contains(&event.kv().key) && tx.send(Ok(event.clone())).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(
                        missed,
                        last, "watch fell behind the feed, replaying from the log"
                    );
                    sub = store.feed().tx.subscribe();
                    upto = store.feed().published();
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Backend(BackendError::FeedClosed));
                }
            }
        }
    }
}
