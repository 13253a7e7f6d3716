//! A work queue of object keys, as client-go's rate-limited queue:
//! a key added while queued is queued once; a key added while a worker
//! processes it is queued again when the worker is done (never processed
//! by two workers at once); a failed key comes back after an exponential
//! back-off of its own (5 ms doubling up to 30 s), reset by success.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::reflector::Reflector;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Added while processing: queue again when done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A de-duplicating, rate-limited queue of keys.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).finish()
    }
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Queues the key of every object of `reflector` that changes.
    pub fn follow(&self, reflector: &super::reflector::Reflector) {
        let q = self.clone();
        reflector.on_change(Box::new(move |old, new| {
            if let Some(obj) = new.or(old) {
                q.add(super::reflector::key_of(obj));
            }
        }));
    }

    /// Queues the owner (`<namespace>/<name>`) of every object of
    /// `reflector` that changes and whose controller is a `kind`.
    pub fn follow_owned(&self, reflector: &super::reflector::Reflector, kind: &'static str) {
        let q = self.clone();
        reflector.on_change(Box::new(move |old, new| {
            for obj in [old, new].into_iter().flatten() {
                if let Some(r) = super::objects::controller_ref(obj).filter(|r| r["kind"] == kind)
                    && let Some(owner) = r["name"].as_str()
                {
                    q.add(format!("{}/{owner}", super::objects::namespace(obj)));
                }
            }
        }));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `key` unless it is queued already.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut state = self.lock();
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let (queue, key) = (self.clone(), key.into());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Queues `key` again after its back-off, which doubles each time.
    pub fn retry(&self, key: &str) {
        let failures = {
            let mut state = self.lock();
            let n = state.failures.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, backoff(failures));
    }

    /// Forgets `key`'s failures (it succeeded).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// The next key; the caller must call [`Queue::done`] with it.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    if !state.queue.is_empty() {
                        // Wake another worker for the rest.
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends the processing of `key`; queues it again if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let again = {
            let mut state = self.lock();
            state.processing.remove(key);
            state.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }

    /// The start every controller shares: waits until each of `caches` has
    /// listed, then [`run`](Queue::run)s `workers` that hand each key to
    /// `sync` along with a clone of `controller`.
    pub async fn run_synced<C, F, Fut>(
        &self,
        caches: &[&Arc<Reflector>],
        workers: usize,
        controller: C,
        sync: F,
    ) where
        C: Clone + Send + Sync + 'static,
        F: Fn(C, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        for cache in caches {
            cache.synced().await;
        }
        self.run(workers, move |key| sync(controller.clone(), key))
            .await;
    }

    /// Runs `workers` tasks that process keys with `sync` until aborted;
    /// an `Err` retries the key with back-off.
    pub async fn run<F, Fut>(&self, workers: usize, sync: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let sync = Arc::new(sync);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let (queue, sync) = (self.clone(), sync.clone());
            tasks.spawn(async move {
                loop {
                    let key = queue.next().await;
                    match sync(key.clone()).await {
                        Ok(()) => queue.forget(&key),
                        Err(err) => {
                            tracing::debug!(%key, %err, "sync failed; retrying");
                            queue.retry(&key);
                        }
                    }
                    queue.done(&key);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The delay after `failures` failures.
fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    BASE_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(100), MAX_DELAY);
    }

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_dirty() {
        let q = Queue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.next().await;
        assert_eq!(a, "a");
        // Added while processing: not handed out twice at once.
        q.add("a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.next().await, "a");
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }
}
