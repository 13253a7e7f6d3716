//! The datastore contract, run against every back end (`store_sqlite.rs`,
//! `store_postgres.rs`). Each scenario uses its own key prefix so they can
//! share one store; compaction runs last because it affects the whole log.

// Helpers outside `#[test]` functions, where a failure must panic too.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use cairn::store::{Event, Revision, Store, StoreError, Watch};

pub const WAIT: Duration = Duration::from_secs(10);

/// Every scenario, in an order that keeps them independent.
pub async fn run_all(a: &Store, b: &Store) {
    crud(a).await;
    unchanged_update_writes_nothing(a).await;
    list_paging_and_past_revisions(a).await;
    watch_replay_then_live(a).await;
    concurrent_writers_watch_in_order(a, b).await;
    compaction(a).await;
}

pub async fn next(w: &mut Watch) -> Event {
    tokio::time::timeout(WAIT, w.recv())
        .await
        .expect("watch event within the timeout")
        .expect("watch still open")
        .expect("watch event, not an error")
}

pub async fn crud(s: &Store) {
    let key = "/t/crud/a";
    let r1 = s.create(key, b"1".to_vec()).await.unwrap();
    let err = s.create(key, b"again".to_vec()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains(key), "error names the key: {err}");

    let kv = s.get(key).await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"1"[..], r1, r1)
    );

    let r2 = s.update(key, b"2".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    match s.update(key, b"3".to_vec(), r1).await {
        Err(StoreError::Conflict { key: k, current }) => {
            assert_eq!((k.as_str(), current), (key, r2))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let kv = s.get(key).await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], r1, r2)
    );

    let missing = s
        .update("/t/crud/missing", b"x".to_vec(), 1)
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
    assert!(missing.to_string().contains("/t/crud/missing"));

    let conflict = s.delete(key, Some(r1)).await.unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { current, .. } if current == r2));
    let deleted = s.delete(key, Some(r2)).await.unwrap();
    assert_eq!(
        (deleted.value.as_slice(), deleted.create_revision),
        (&b"2"[..], r1)
    );
    assert!(
        deleted.mod_revision > r2,
        "a delete reports its own revision"
    );
    assert_eq!(deleted.mod_revision, s.current_revision().await.unwrap());
    assert_eq!(s.get(key).await.unwrap(), None);
    assert!(matches!(
        s.delete(key, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update(key, b"4".to_vec(), r2).await,
        Err(StoreError::NotFound { .. })
    ));

    // Re-creating after a delete starts a new life.
    let r3 = s.create(key, b"new".to_vec()).await.unwrap();
    let kv = s.get(key).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r3, r3));
    assert_eq!(s.delete(key, None).await.unwrap().value, b"new");

    assert!(matches!(
        s.create("", vec![]).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

pub async fn unchanged_update_writes_nothing(s: &Store) {
    let key = "/t/unchanged/a";
    let r = s.create(key, b"same".to_vec()).await.unwrap();
    let before = s.current_revision().await.unwrap();
    assert_eq!(s.update(key, b"same".to_vec(), r).await.unwrap(), r);
    assert_eq!(
        s.current_revision().await.unwrap(),
        before,
        "no row written"
    );
    assert_eq!(s.get(key).await.unwrap().unwrap().mod_revision, r);
}

pub async fn list_paging_and_past_revisions(s: &Store) {
    let prefix = "/t/list/";
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            s.create(&format!("{prefix}k{i:02}"), format!("v{i}").into_bytes())
                .await
                .unwrap(),
        );
    }
    // Neighbours that share the prefix's characters but are outside it.
    s.create("/t/list", b"parent".to_vec()).await.unwrap();
    s.create("/t/listx/k", b"sibling".to_vec()).await.unwrap();

    let all = s.list(prefix, None, None, None).await.unwrap();
    let keys: Vec<_> = all.items.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<_> = (0..10).map(|i| format!("{prefix}k{i:02}")).collect();
    assert_eq!(keys, expected);
    assert!(!all.more);
    assert_eq!(all.revision, s.current_revision().await.unwrap());

    // limit + start_after pages through the same keys at one revision.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list(prefix, after.as_deref(), Some(3), Some(all.revision))
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        paged.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = page.items.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(paged, expected);
    let exact = s.list(prefix, None, Some(10), None).await.unwrap();
    assert!(
        !exact.more,
        "a page that ends exactly at the last key has no more"
    );

    // The state as of a past revision.
    let before = all.revision;
    let k0 = format!("{prefix}k00");
    s.update(&k0, b"changed".to_vec(), revs[0]).await.unwrap();
    s.delete(&format!("{prefix}k01"), None).await.unwrap();
    s.create(&format!("{prefix}k10"), b"late".to_vec())
        .await
        .unwrap();
    let past = s.list(prefix, None, None, Some(before)).await.unwrap();
    assert_eq!(past.revision, before);
    assert_eq!(
        past.items
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(past.items[0].value, b"v0");
    let now = s.list(prefix, None, None, None).await.unwrap();
    let now_keys: Vec<_> = now.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(now_keys.len(), 10);
    assert!(!now_keys.contains(&"/t/list/k01"));
    assert_eq!(now_keys.last(), Some(&"/t/list/k10"));
    assert_eq!(now.items[0].value, b"changed");
    // Before the first key existed, the prefix was empty.
    let empty = s.list(prefix, None, None, Some(revs[0] - 1)).await.unwrap();
    assert!(empty.items.is_empty());

    let future = s
        .list(prefix, None, None, Some(now.revision + 1000))
        .await
        .unwrap_err();
    assert!(
        matches!(future, StoreError::FutureRevision { .. }),
        "{future}"
    );
}

pub async fn watch_replay_then_live(s: &Store) {
    let base = s.current_revision().await.unwrap();
    let r1 = s.create("/t/watch/a", b"a1".to_vec()).await.unwrap();
    s.create("/t/elsewhere/x", b"x".to_vec()).await.unwrap();
    let r2 = s.update("/t/watch/a", b"a2".to_vec(), r1).await.unwrap();
    let deleted = s.delete("/t/watch/a", None).await.unwrap();

    let mut w = s.watch("/t/watch/", base).await.unwrap();
    match next(&mut w).await {
        Event::Put { kv, prev: None } => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), ("/t/watch/a", r1))
        }
        other => panic!("expected the create, got {other:?}"),
    }
    match next(&mut w).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!(
                (kv.value.as_slice(), kv.mod_revision, kv.create_revision),
                (&b"a2"[..], r2, r1)
            );
            assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"a1"[..], r1));
        }
        other => panic!("expected the update, got {other:?}"),
    }
    let r3 = match next(&mut w).await {
        Event::Delete { kv } => {
            assert_eq!(kv.value, b"a2", "a delete carries the last value");
            assert_eq!(kv, deleted, "the event carries what delete returned");
            kv.mod_revision
        }
        other => panic!("expected the delete, got {other:?}"),
    };

    // Live events, in order, keys outside the prefix filtered out.
    let rb = s.create("/t/watch/b", b"b".to_vec()).await.unwrap();
    s.create("/t/elsewhere/y", b"y".to_vec()).await.unwrap();
    let rc = s.create("/t/watch/c", b"c".to_vec()).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), rb);
    let c = next(&mut w).await;
    assert_eq!((c.revision(), c.kv().key.as_str()), (rc, "/t/watch/c"));

    // Resuming from the middle replays only what came after.
    let mut resumed = s.watch("/t/watch/", r2).await.unwrap();
    assert_eq!(next(&mut resumed).await.revision(), r3);
    assert_eq!(next(&mut resumed).await.revision(), rb);
    assert_eq!(next(&mut resumed).await.revision(), rc);
}

/// Two writers × 50 creates; a watcher sees each of the 100 revisions once,
/// in increasing order.
pub async fn concurrent_writers_watch_in_order(a: &Store, b: &Store) {
    let base = a.current_revision().await.unwrap();
    let mut w = a.watch("/t/concurrent/", base).await.unwrap();
    let mut writers = Vec::new();
    for (n, s) in [a.clone(), b.clone()].into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                revs.push(
                    s.create(&format!("/t/concurrent/w{n}-{i:02}"), vec![n as u8])
                        .await
                        .unwrap(),
                );
            }
            revs
        }));
    }
    let mut written = BTreeSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), 100);

    let mut seen: Vec<Revision> = Vec::new();
    while seen.len() < 100 {
        let ev = next(&mut w).await;
        if let Some(last) = seen.last() {
            assert!(
                ev.revision() > *last,
                "revision {} after {last}",
                ev.revision()
            );
        }
        seen.push(ev.revision());
    }
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), written);
}

pub async fn compaction(s: &Store) {
    let key = "/t/compact/a";
    let c1 = s.create(key, b"1".to_vec()).await.unwrap();
    let c2 = s.update(key, b"2".to_vec(), c1).await.unwrap();
    let c3 = s.update(key, b"3".to_vec(), c2).await.unwrap();
    s.create("/t/compact/gone", b"g".to_vec()).await.unwrap();
    s.delete("/t/compact/gone", None).await.unwrap();
    let current = s.current_revision().await.unwrap();

    s.compact(c2).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), c2);
    let err = s
        .list("/t/compact/", None, None, Some(c1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested, compacted } if requested == c1 && compacted == c2),
        "{err}"
    );
    let at_c2 = s.list("/t/compact/", None, None, Some(c2)).await.unwrap();
    assert_eq!(at_c2.items.len(), 1);
    assert_eq!(
        at_c2.items[0].value, b"2",
        "the state at the compacted revision stays"
    );
    assert!(matches!(
        s.watch("/t/compact/", c1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut w = s.watch("/t/compact/", c2).await.unwrap();
    match next(&mut w).await {
        Event::Put {
            kv,
            prev: Some(prev),
        } => assert_eq!((kv.mod_revision, prev.mod_revision), (c3, c2)),
        other => panic!("expected the update to 3, got {other:?}"),
    }

    // Compacting everything keeps the current state and the revision.
    s.compact(current).await.unwrap();
    assert_eq!(s.current_revision().await.unwrap(), current);
    let kv = s.get(key).await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"3"[..], c1, c3)
    );
    assert_eq!(s.get("/t/compact/gone").await.unwrap(), None);
    let list = s.list("/t/", None, None, None).await.unwrap();
    assert_eq!(list.revision, current);
    assert!(list.items.iter().any(|kv| kv.key == key));
    // Compacting backwards is a no-op; writes continue above.
    s.compact(c1).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), current);
    assert!(s.create("/t/compact/after", vec![]).await.unwrap() > current);
    assert!(s.compact(current + 1000).await.is_err());
}
