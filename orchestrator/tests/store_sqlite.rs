//! The datastore contract on embedded SQLite (a temporary file).

mod store_suite;

use std::path::Path;

use cairn::store::{Event, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path().join("state.db"))
        .await
        .unwrap();
    store_suite::run_all(&store, &store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    let r1 = store.create("/k", b"v".to_vec()).await.unwrap();
    store.delete("/k", None).await.unwrap();
    store
        .compact(store.current_revision().await.unwrap())
        .await
        .unwrap();
    drop(store);

    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.get("/k").await.unwrap(), None);
    // Revisions never go back, even after the newest row was compacted away.
    assert!(store.current_revision().await.unwrap() > r1);
    let r2 = store.create("/k", b"w".to_vec()).await.unwrap();
    assert!(r2 > r1 + 1);
}

#[tokio::test]
async fn sqlite_open_error_names_the_path() {
    let err = Store::open_sqlite("/nonexistent-dir/state.db")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/state.db"),
        "{err}"
    );
}

/// A watcher that falls far behind (more events than the feed buffers)
/// catches up from the log without gaps or duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path().join("state.db"))
        .await
        .unwrap();
    let mut w = store.watch("/lag/", 0).await.unwrap();
    let mut written = Vec::new();
    for i in 0..3000 {
        written.push(
            store
                .create(&format!("/lag/{i:04}"), vec![1])
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        seen.push(store_suite::next(&mut w).await.revision());
    }
    assert_eq!(seen, written);
}

const LEASE: &str = "/registry/coordination.k8s.io/leases/kube-node-lease/node-1";

fn lease(holder: &str, renew: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40,
                 "renewTime": format!("2026-01-01T00:00:{renew:02}.000000Z")},
    }))
    .expect("json")
}

/// Revisions of the rows of `key` in the file, read by a second connection.
fn rows_on_disk(path: &Path, key: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).expect("second connection");
    let mut stmt = conn
        .prepare("SELECT id FROM cairn_log WHERE name = ? ORDER BY id")
        .expect("prepare");
    stmt.query_map([key], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Lease renewals are acknowledged from memory: get, list and watch see them
/// at once, nothing is written until a flush, and the latest survives close
/// and reopen with the revision it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_stay_in_memory_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    let created = store.create(LEASE, lease("node-1", 0)).await.unwrap();
    let mut live = store
        .watch("/registry/coordination.k8s.io/leases/", created)
        .await
        .unwrap();

    let r1 = store
        .update(LEASE, lease("node-1", 10), created)
        .await
        .unwrap();
    let cm = store
        .create("/registry/configmaps/default/a", b"x".to_vec())
        .await
        .unwrap();
    let r2 = store.update(LEASE, lease("node-1", 20), r1).await.unwrap();
    assert!(created < r1 && r1 < cm && cm < r2, "one revision counter");
    assert_eq!(store.current_revision().await.unwrap(), r2);

    // Visible at once...
    let kv = store.get(LEASE).await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.mod_revision, kv.create_revision),
        (lease("node-1", 20), r2, created)
    );
    let list = store
        .list("/registry/coordination.k8s.io/", None, None, None)
        .await
        .unwrap();
    assert_eq!(list.items[0].mod_revision, r2);
    let at_r1 = store
        .list("/registry/coordination.k8s.io/", None, None, Some(r1))
        .await
        .unwrap();
    assert_eq!(
        at_r1.items[0].mod_revision, created,
        "r1 was coalesced away"
    );
    for (expected, value) in [(r1, lease("node-1", 10)), (r2, lease("node-1", 20))] {
        match store_suite::next(&mut live).await {
            Event::Put { kv, prev: Some(_) } => {
                assert_eq!((kv.mod_revision, kv.value), (expected, value))
            }
            other => panic!("expected a renewal, got {other:?}"),
        }
    }
    // ...a watch replaying from after the coalesced renewal sees the pending one...
    let mut replay = store
        .watch("/registry/coordination.k8s.io/leases/", r1)
        .await
        .unwrap();
    assert_eq!(store_suite::next(&mut replay).await.revision(), r2);
    // ...one from before it cannot be replayed exactly: 410, like compaction.
    let mut old = store
        .watch("/registry/coordination.k8s.io/leases/", created)
        .await
        .unwrap();
    let err = tokio::time::timeout(store_suite::WAIT, old.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { compacted, .. } if compacted == r1),
        "{err}"
    );
    // Other ranges replay from anywhere.
    let mut cms = store.watch("/registry/configmaps/", created).await.unwrap();
    assert_eq!(store_suite::next(&mut cms).await.revision(), cm);

    // ...and not on disk (the ConfigMap in between is).
    assert_eq!(rows_on_disk(&path, LEASE), [created]);
    assert_eq!(rows_on_disk(&path, "/registry/configmaps/default/a"), [cm]);

    store.close().await.unwrap();
    assert_eq!(rows_on_disk(&path, LEASE), [created, r2]);
    drop((store, live, replay, old, cms));

    let store = Store::open_sqlite(&path).await.unwrap();
    let kv = store.get(LEASE).await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (lease("node-1", 20), r2));
    assert_eq!(
        store.current_revision().await.unwrap(),
        r2,
        "a clean stop leaves no gap"
    );
    // Replays from a flushed revision work, from a coalesced one give 410.
    let mut from = store
        .watch("/registry/coordination.k8s.io/leases/", r1)
        .await
        .unwrap();
    let r3 = store.update(LEASE, lease("node-1", 30), r2).await.unwrap();
    assert_eq!(store_suite::next(&mut from).await.revision(), r2);
    assert_eq!(store_suite::next(&mut from).await.revision(), r3);
    let mut old = store
        .watch("/registry/coordination.k8s.io/leases/", created)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(store_suite::WAIT, old.recv())
            .await
            .unwrap()
            .unwrap()
            .is_err()
    );
}

/// Any other change of a heartbeat Lease is written at once, after the
/// pending renewal; compaction writes pending renewals first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_lease_writes_are_durable_and_flush_the_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    let created = store.create(LEASE, lease("node-1", 0)).await.unwrap();
    let r1 = store
        .update(LEASE, lease("node-1", 10), created)
        .await
        .unwrap();
    let r2 = store.update(LEASE, lease("node-2", 20), r1).await.unwrap();
    assert_eq!(rows_on_disk(&path, LEASE), [created, r1, r2]);
    // An unchanged update writes nothing and keeps the revision.
    assert_eq!(
        store.update(LEASE, lease("node-2", 20), r2).await.unwrap(),
        r2
    );

    let r3 = store.update(LEASE, lease("node-2", 30), r2).await.unwrap();
    assert_eq!(rows_on_disk(&path, LEASE), [created, r1, r2]);
    // A compaction that would drop only heartbeat rows is skipped (no write).
    store.compact(r3).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    assert_eq!(rows_on_disk(&path, LEASE), [created, r1, r2]);
    let cm = store
        .create("/registry/configmaps/default/a", vec![])
        .await
        .unwrap();
    store.compact(cm).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), cm);
    assert_eq!(
        rows_on_disk(&path, LEASE),
        [r3],
        "flushed, then older rows compacted"
    );
    let kv = store.get(LEASE).await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (lease("node-2", 30), r3));
    // A deletion of a lease with a pending renewal records both.
    let r4 = store.update(LEASE, lease("node-2", 40), r3).await.unwrap();
    let gone = store.delete(LEASE, Some(r4)).await.unwrap();
    assert_eq!(gone.value, lease("node-2", 40));
    assert_eq!(rows_on_disk(&path, LEASE), [r3, r4, gone.mod_revision]);
}

/// A crash (the store is never closed) loses at most the pending renewals:
/// every other acknowledged write is there, revisions handed out are never
/// handed out again, and lease watches cannot resume across the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loses_only_pending_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    let created = store.create(LEASE, lease("node-1", 0)).await.unwrap();
    let r1 = store
        .update(LEASE, lease("node-1", 10), created)
        .await
        .unwrap();
    let mut cms = Vec::new();
    for i in 0..20 {
        cms.push(
            store
                .create(&format!("/registry/configmaps/default/c{i}"), vec![i])
                .await
                .unwrap(),
        );
    }
    let r2 = store.update(LEASE, lease("node-1", 20), r1).await.unwrap();
    // `kill -9`: the writer thread never flushes (it keeps its connection).
    std::mem::forget(store);

    let store = Store::open_sqlite(&path).await.unwrap();
    let list = store
        .list("/registry/configmaps/", None, None, None)
        .await
        .unwrap();
    let revs: Vec<_> = list.items.iter().map(|kv| kv.mod_revision).collect();
    let mut sorted = cms.clone();
    sorted.sort_by_key(|r| {
        format!(
            "/registry/configmaps/default/c{}",
            cms.iter().position(|c| c == r).unwrap()
        )
    });
    assert_eq!(revs, sorted, "every durable write survives");
    let kv = store.get(LEASE).await.unwrap().unwrap();
    assert_eq!(kv.mod_revision, created, "the unflushed renewals are gone");
    let next = store
        .create("/registry/configmaps/default/after", vec![])
        .await
        .unwrap();
    assert!(next > r2, "revision {next} was handed out before the crash");
    let mut w = store
        .watch("/registry/coordination.k8s.io/leases/", r1)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(store_suite::WAIT, w.recv())
            .await
            .unwrap()
            .unwrap()
            .is_err()
    );
}

/// Concurrent writes (committed in groups) each get their own outcome, in
/// one revision order that watchers see too; a conflict fails one write only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_their_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path().join("state.db"))
        .await
        .unwrap();
    let base = store.create("/g/shared", b"0".to_vec()).await.unwrap();
    let mut w = store.watch("/g/", base).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                // Every one of these races for the same expected revision.
                0 => (
                    "update",
                    s.update("/g/shared", i.to_be_bytes().to_vec(), base).await,
                ),
                // Duplicates: half of these collide.
                1 => (
                    "create",
                    s.create(&format!("/g/dup/{}", i / 8), vec![1]).await,
                ),
                _ => ("create", s.create(&format!("/g/k/{i}"), vec![2]).await),
            }
        }));
    }
    let mut ok = Vec::new();
    let (mut conflicts, mut exists) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(rev)) => ok.push(rev),
            ("update", Err(StoreError::Conflict { .. })) => conflicts += 1,
            ("create", Err(StoreError::AlreadyExists { .. })) => exists += 1,
            (what, Err(e)) => panic!("{what}: {e}"),
        }
    }
    assert_eq!(conflicts, 49, "exactly one update of 50 wins");
    assert_eq!(exists, 25, "one create per duplicated key wins");
    assert_eq!(ok.len(), 200 - 49 - 25);
    let mut seen = Vec::new();
    while seen.len() < ok.len() {
        seen.push(store_suite::next(&mut w).await.revision());
    }
    ok.sort();
    assert_eq!(
        seen, ok,
        "watchers see each acknowledged write once, in order"
    );
}

/// After churn and compaction the files give their space back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_shrink_after_churn_and_compaction() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open_sqlite(&path).await.unwrap();
    let size = || {
        ["state.db", "state.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let empty = size();
    let value = vec![7u8; 4000];
    for round in 0..3u8 {
        for i in 0..500 {
            let key = format!("/churn/{i}");
            match store.get(&key).await.unwrap() {
                Some(kv) => store
                    .update(&key, [&value[..], &[round]].concat(), kv.mod_revision)
                    .await
                    .unwrap(),
                None => store.create(&key, value.clone()).await.unwrap(),
            };
        }
    }
    let full = size();
    assert!(full > 6_000_000, "{full} bytes after churn");
    for i in 0..500 {
        store.delete(&format!("/churn/{i}"), None).await.unwrap();
    }
    store
        .compact(store.current_revision().await.unwrap())
        .await
        .unwrap();
    let after = size();
    assert!(
        after < empty + 1_000_000,
        "{after} bytes after compaction (empty: {empty}, full: {full})"
    );
}

/// A database made before incremental auto-vacuum is converted on open and
/// keeps its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_database_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE cairn_log (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                create_revision INTEGER NOT NULL, prev_revision INTEGER NOT NULL,
                deleted BOOLEAN NOT NULL, value BLOB NOT NULL);
             CREATE UNIQUE INDEX cairn_log_name_prev ON cairn_log (name, prev_revision);
             CREATE INDEX cairn_log_name_id ON cairn_log (name, id);
             CREATE TABLE cairn_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO cairn_log (name, create_revision, prev_revision, deleted, value)
                VALUES ('/old', 0, 0, FALSE, x'6f6c64');",
        )
        .unwrap();
    }
    let store = Store::open_sqlite(&path).await.unwrap();
    let kv = store.get("/old").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"old"[..], 1));
    assert_eq!(store.create("/new", vec![]).await.unwrap(), 2);
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2, "incremental");
}
