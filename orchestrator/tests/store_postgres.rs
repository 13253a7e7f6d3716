//! The datastore contract on a real PostgreSQL server that the test starts
//! itself (unix socket only, in a temporary directory), plus what only a
//! shared database can show: writes through one server reach another's watch.
//!
//! Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`; Debian package
//! `postgresql`, installed by `.ci/deps`). Without them the test fails.

// The server harness runs outside `#[test]` functions; failures must panic.
#![allow(clippy::unwrap_used)]

mod common;
mod store_suite;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn::store::{Event, Store};
use common::postgres::PgServer;

fn socket_dir(server: &PgServer) -> &Path {
    server.socket_dir()
}

/// One server for every scenario (starting one costs about a second); each
/// scenario gets its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store() {
    let server = PgServer::start();
    assert!(socket_dir(&server).join(".s.PGSQL.5432").exists());

    // The shared contract, with two handles (two "servers") as the writers.
    let db = server.database("contract").await;
    let a = Store::open_postgres(&db).await.unwrap();
    let b = Store::open_postgres(&db).await.unwrap();
    store_suite::run_all(&a, &b).await;

    // A write through one handle reaches a watch on the other.
    let db = server.database("shared").await;
    let one = Store::open_postgres(&db).await.unwrap();
    let two = Store::open_postgres(&db).await.unwrap();
    let mut w = two
        .watch("/shared/", two.current_revision().await.unwrap())
        .await
        .unwrap();
    let r1 = one.create("/shared/a", b"1".to_vec()).await.unwrap();
    let r2 = one.update("/shared/a", b"2".to_vec(), r1).await.unwrap();
    assert_eq!(store_suite::next(&mut w).await.revision(), r1);
    match store_suite::next(&mut w).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!((kv.mod_revision, kv.value.as_slice()), (r2, &b"2"[..]));
            assert_eq!(prev.mod_revision, r1);
        }
        other => panic!("expected the update, got {other:?}"),
    }
    assert_eq!(
        two.get("/shared/a").await.unwrap().unwrap().mod_revision,
        r2
    );
    // A stale write through the other handle conflicts.
    assert!(two.update("/shared/a", b"3".to_vec(), r1).await.is_err());

    // A second open of an existing schema works (servers restart).
    let again = Store::open_postgres(&db).await.unwrap();
    assert_eq!(again.current_revision().await.unwrap(), r2);

    id_gaps(&server).await;
}

/// Ids taken by transactions that commit late (or never) do not make the
/// feed skip or reorder events.
async fn id_gaps(server: &PgServer) {
    let db = server.database("gaps").await;
    let store = Store::open_postgres(&db).await.unwrap();
    let (mut raw, driver) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    let mut w = store
        .watch("/gap/", store.current_revision().await.unwrap())
        .await
        .unwrap();

    // Another writer reserves an id, a newer revision commits first, then
    // the reserved id commits: the watch still sees them in id order.
    let tx = raw.transaction().await.unwrap();
    let late: i64 = tx
        .query_one("SELECT nextval('cairn_log_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    let newer = store.create("/gap/newer", b"n".to_vec()).await.unwrap();
    assert_eq!(newer, late + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.execute(
        "INSERT INTO cairn_log (id, name, create_revision, prev_revision, deleted, value) \
         VALUES ($1, '/gap/late', 0, 0, FALSE, '\\x6c')",
        &[&late],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let first = store_suite::next(&mut w).await;
    assert_eq!(
        (first.revision(), first.kv().key.as_str()),
        (late, "/gap/late")
    );
    assert_eq!(store_suite::next(&mut w).await.revision(), newer);

    // An id that never commits is skipped after a short wait.
    let lost: i64 = raw
        .query_one("SELECT nextval('cairn_log_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    let started = Instant::now();
    let after = store.create("/gap/after", b"a".to_vec()).await.unwrap();
    assert_eq!(after, lost + 1);
    assert_eq!(store_suite::next(&mut w).await.revision(), after);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the feed waited for the gap"
    );
}

#[tokio::test]
async fn postgres_connect_error_is_reported() {
    let err = Store::open_postgres("host=/nonexistent-socket-dir user=postgres")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("postgresql"), "{err}");
}

/// The store outlives a PostgreSQL restart: operations fail as
/// `Unavailable` while it is down, succeed once it is back, and a watch
/// opened before the outage delivers every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_is_survived() {
    let server = PgServer::start();
    let db = server.database("restart").await;
    let store = Store::open_postgres(&db).await.unwrap();
    let mut w = store
        .watch("/r/", store.current_revision().await.unwrap())
        .await
        .unwrap();
    let before = store.create("/r/before", b"b".to_vec()).await.unwrap();
    assert_eq!(store_suite::next(&mut w).await.revision(), before);

    server.stop();
    let err = store.create("/r/down", b"d".to_vec()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(store.get("/r/before").await.unwrap_err().is_unavailable());
    server.start_again();

    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match store.create("/r/after", b"a".to_vec()).await {
            Ok(revision) => break revision,
            Err(err) if err.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("no reconnect: {err:?}"),
        }
    };
    // Another handle writes too; the feed reads both from the log.
    let other = Store::open_postgres(&db).await.unwrap();
    let second = other
        .update("/r/after", b"a2".to_vec(), first)
        .await
        .unwrap();
    assert_eq!(store_suite::next(&mut w).await.revision(), first);
    assert_eq!(store_suite::next(&mut w).await.revision(), second);
    assert_eq!(
        store.get("/r/after").await.unwrap().unwrap().value,
        b"a2".to_vec()
    );
}
