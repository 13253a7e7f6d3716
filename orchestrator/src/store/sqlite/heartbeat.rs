//! Node heartbeats kept in memory: the lease overlay of the SQLite store.
//!
//! A kubelet renews its node's Lease in `kube-node-lease` every 10 s, and
//! the controller manager its leader Lease every 2 s (see [`PREFIX`]). Each
//! renewal written as its own SQLite transaction costs an fsync and a few
//! pages of WAL — about 150 MB a day per node on an SD card for a value
//! nobody reads after the next renewal. So a renewal (an update of such a
//! Lease whose only change is `spec.renewTime`) is acknowledged from memory:
//! it takes its revision from the same global counter as every other write,
//! is published to watchers in order with them, and `get`/`list`/`watch` see
//! it at once through this overlay. Only the latest renewal per Lease is
//! written to SQLite, with the revision it was acknowledged with, when the
//! writer flushes: every [`FLUSH_INTERVAL`], at every compaction, before any
//! other write to the same key, and at shutdown. (A periodic compaction
//! that would drop nothing but renewals is skipped, so at idle a flush every
//! `FLUSH_INTERVAL` is the only write: about 50 KB, 7 MB a day.)
//!
//! Renewals replaced before a flush are *coalesced away*: their revisions
//! are gaps in the log. A watch on a range that holds heartbeat Leases
//! cannot be replayed from below the highest coalesced revision, so such a
//! replay fails with `Compacted` (410 upstream; the client lists again), as
//! if those revisions had been compacted. A `list` at a past revision shows
//! a heartbeat Lease at its latest renewal at or below that revision that
//! still exists (its last flushed or pending value).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::store::sql::{LogRow, Range};
use crate::store::{Event, KeyValue, Revision};

/// Keys of the Leases whose renewals stay in memory (the API server's key
/// layout): every Lease — node heartbeats in `kube-node-lease` and
/// leader-election Leases such as `kube-system/cairn-controller-manager`,
/// which the controller manager renews every 2 s. On SQLite there is only
/// one server, so its leadership needs no durable renewals either.
pub(crate) const PREFIX: &str = "/registry/coordination.k8s.io/leases/";

/// Longest time a renewal stays in memory only.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(600);

/// A renewal acknowledged but not written to SQLite yet.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The acknowledged value; `mod_revision` is the renewal's revision.
    pub(crate) kv: KeyValue,
    /// The value it replaced (the event's `prev`).
    pub(crate) prev: KeyValue,
    /// The key's latest row in SQLite: the flushed row's `prev_revision`.
    pub(crate) base: Revision,
    /// When the oldest unflushed renewal of this key was acknowledged.
    pub(crate) since: Instant,
}

impl Pending {
    pub(crate) fn row(&self) -> LogRow {
        LogRow::new(
            self.kv.mod_revision,
            self.kv.key.clone(),
            self.kv.create_revision,
            false,
            self.kv.value.clone(),
        )
    }

    pub(crate) fn event(&self) -> Event {
        Event::Put {
            kv: self.kv.clone(),
            prev: Some(self.prev.clone()),
        }
    }
}

/// The pending renewals and the highest revision coalesced away.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    pub(crate) pending: BTreeMap<String, Pending>,
    /// Replays of heartbeat keys from below this revision are refused.
    pub(crate) coalesced: Revision,
}

impl Overlay {
    pub(crate) fn get(&self, key: &str) -> Option<&Pending> {
        self.pending.get(key)
    }

    /// Records a renewal acknowledged as `kv.mod_revision`, over `cur` (the
    /// key's latest value, pending or in SQLite).
    pub(crate) fn renew(&mut self, kv: KeyValue, cur: &LogRow) {
        let (base, since) = match self.pending.remove(&kv.key) {
            Some(old) => {
                self.coalesced = self.coalesced.max(old.kv.mod_revision);
                (old.base, old.since)
            }
            None => (cur.id, Instant::now()),
        };
        let prev = cur.clone().kv();
        self.pending.insert(
            kv.key.clone(),
            Pending {
                kv,
                prev,
                base,
                since,
            },
        );
    }

    /// True if the oldest pending renewal has waited `FLUSH_INTERVAL`.
    pub(crate) fn due(&self) -> bool {
        self.pending
            .values()
            .any(|p| p.since.elapsed() >= FLUSH_INTERVAL)
    }

    /// Pending renewals in `range` with a revision in `(after, upto]`.
    pub(crate) fn events(&self, range: &Range, after: Revision, upto: Revision) -> Vec<Event> {
        self.pending
            .range(range.lo.clone()..range.hi.clone())
            .map(|(_, p)| p)
            .filter(|p| p.kv.mod_revision > after && p.kv.mod_revision <= upto)
            .map(Pending::event)
            .collect()
    }
}

/// True if a range of keys holds heartbeat Leases.
pub(crate) fn overlaps(range: &Range) -> bool {
    let hb = Range::prefix(PREFIX);
    range.lo < hb.hi && hb.lo < range.hi
}

/// True if replacing `old` by `new` at `key` is a heartbeat: a Lease in
/// `kube-node-lease` whose only change is `spec.renewTime` (holder and
/// duration unchanged).
pub(crate) fn is_renewal(key: &str, old: &[u8], new: &[u8]) -> bool {
    if !key.starts_with(PREFIX) {
        return false;
    }
    let parse = |bytes: &[u8]| -> Option<Value> {
        let mut v: Value = serde_json::from_slice(bytes).ok()?;
        v.get_mut("spec")?.as_object_mut()?.remove("renewTime")?;
        // The API server stamps the writer's managedFields entry with the
        // time of each update: part of the same renewal.
        if let Some(Value::Array(entries)) = v.pointer_mut("/metadata/managedFields") {
            for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                entry.remove("time");
            }
        }
        Some(v)
    };
    match (parse(old), parse(new)) {
        (Some(old), Some(new)) => old == new,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/registry/coordination.k8s.io/leases/kube-node-lease/n1";

    fn lease(holder: &str, renew: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "Lease",
            "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40, "renewTime": renew},
        }))
        .unwrap()
    }

    #[test]
    fn only_renew_time_changes_are_renewals() {
        let a = lease("n1", "2025-01-01T00:00:00.000000Z");
        let b = lease("n1", "2025-01-01T00:00:10.000000Z");
        assert!(is_renewal(KEY, &a, &b));
        assert!(!is_renewal(
            KEY,
            &a,
            &lease("n2", "2025-01-01T00:00:10.000000Z")
        ));
        // Leader-election Leases in any namespace renew the same way.
        let other_ns = "/registry/coordination.k8s.io/leases/kube-system/n1";
        assert!(is_renewal(other_ns, &a, &b));
        assert!(!is_renewal("/registry/configmaps/default/n1", &a, &b));
        assert!(!is_renewal(KEY, b"not json", &b));
    }

    #[test]
    fn managed_fields_time_is_part_of_a_renewal() {
        let with = |renew: &str, time: &str, manager: &str| {
            let mut v: Value = serde_json::from_slice(&lease("n1", renew)).unwrap();
            v["metadata"]["managedFields"] = serde_json::json!([
                {"manager": manager, "operation": "Update", "time": time}
            ]);
            serde_json::to_vec(&v).unwrap()
        };
        let a = with("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "kubelet");
        let b = with("2025-01-01T00:00:10Z", "2025-01-01T00:00:10Z", "kubelet");
        assert!(is_renewal(KEY, &a, &b));
        let c = with("2025-01-01T00:00:10Z", "2025-01-01T00:00:10Z", "other");
        assert!(!is_renewal(KEY, &a, &c));
    }

    #[test]
    fn heartbeat_ranges() {
        assert!(overlaps(&Range::prefix(
            "/registry/coordination.k8s.io/leases/"
        )));
        assert!(overlaps(&Range::prefix(PREFIX)));
        assert!(overlaps(&Range::prefix(&format!("{PREFIX}n1"))));
        assert!(overlaps(&Range::prefix(
            "/registry/coordination.k8s.io/leases/kube-system/"
        )));
        assert!(overlaps(&Range::prefix("/registry/coordination.k8s.io/")));
        assert!(!overlaps(&Range::prefix("/registry/configmaps/")));
    }
}
