//! The datastore contract on embedded SQLite (a temporary file).

mod store_suite;

use cairn::store::Store;

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
