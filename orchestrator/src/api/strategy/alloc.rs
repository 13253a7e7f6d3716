//! Allocations that must be unique across the cluster (Service ClusterIPs
//! and NodePorts), kept as one store key per allocated item:
//! `/cairn/allocations/<pool>/<item>`, whose value names the holder
//! (namespace/name and uid of the Service).
//!
//! A create of that key is the atomic "take it" (the store refuses a
//! second create), so two concurrent writes can never hand out the same
//! item, whichever server they go through (the store is the arbiter, also
//! on PostgreSQL). Allocations are released when the holder lets go
//! (delete, update, failed write). A release can be missed (a crash
//! between the object's write and the release), so an allocation whose
//! holder no longer exists or no longer uses it is reclaimed when someone
//! asks for it — but only once it is a minute old, so an allocation
//! made for a create still in flight is never taken away.
//!
//! Upstream keeps a bitmap per range (`/registry/ranges/serviceips`); one
//! key per item avoids a read-modify-write of a shared bitmap and is as
//! cheap at edge scale.

use std::collections::HashSet;

use serde_json::{Value, json};
use tracing::debug;

use super::super::Api;
use super::super::status::ApiError;
use crate::store::StoreError;

/// How long a fresh allocation is safe from reclaiming, in seconds.
const GRACE_SECONDS: i64 = 60;

const PREFIX: &str = "/cairn/allocations/";

/// Who holds an allocation.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// `namespace/name` of the Service.
    pub name: &'a str,
    /// Its uid.
    pub uid: &'a str,
}

/// Whether the stored Service `svc` still uses `item` of `pool`.
pub type Uses = fn(svc: &Value, pool: &str, item: &str) -> bool;

fn key(pool: &str, item: &str) -> String {
    format!("{PREFIX}{pool}/{item}")
}

fn internal(err: StoreError) -> ApiError {
    ApiError::internal(format!("allocations: {err}"))
}

/// The items of `pool` allocated now.
pub async fn taken(api: &Api, pool: &str) -> Result<HashSet<String>, ApiError> {
    let prefix = format!("{PREFIX}{pool}/");
    let page = api
        .store
        .list(&prefix, None, None, None)
        .await
        .map_err(internal)?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_owned))
        .collect())
}

/// Whether the allocation `current` may be taken over.
async fn stale(api: &Api, current: &Value, pool: &str, item: &str, uses: Uses) -> bool {
    let age = jiff::Timestamp::now().as_second() - current["at"].as_i64().unwrap_or(0);
    if age < GRACE_SECONDS {
        return false;
    }
    let holder = current["holder"].as_str().unwrap_or("");
    match api.store.get(&format!("/registry/services/{holder}")).await {
        Ok(Some(kv)) => match serde_json::from_slice::<Value>(&kv.value) {
            Ok(svc) => svc["metadata"]["uid"] != current["uid"] || !uses(&svc, pool, item),
            Err(_) => false,
        },
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Takes `item` of `pool` for `holder`: `Ok(true)` when it is now (or
/// already was) the holder's, `Ok(false)` when someone else holds it.
pub async fn reserve(
    api: &Api,
    pool: &str,
    item: &str,
    holder: Holder<'_>,
    uses: Uses,
) -> Result<bool, ApiError> {
    let key = key(pool, item);
    let value = json!({
        "holder": holder.name,
        "uid": holder.uid,
        "at": jiff::Timestamp::now().as_second(),
    });
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    for _ in 0..3 {
        match api.store.create(&key, bytes.clone()).await {
            Ok(_) => return Ok(true),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(internal(err)),
        }
        let Some(kv) = api.store.get(&key).await.map_err(internal)? else {
            continue;
        };
        let current: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if current["uid"] == holder.uid {
            return Ok(true);
        }
        if !stale(api, &current, pool, item, uses).await {
            return Ok(false);
        }
        debug!(%key, previous = %current["holder"], "reclaiming a stale allocation");
        match api.store.update(&key, bytes.clone(), kv.mod_revision).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(err) => return Err(internal(err)),
        }
    }
    Ok(false)
}

/// Releases `item` of `pool` if `uid` holds it.
pub async fn release(api: &Api, pool: &str, item: &str, uid: &str) {
    let key = key(pool, item);
    let Ok(Some(kv)) = api.store.get(&key).await else {
        return;
    };
    let current: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    if current["uid"] == uid
        && let Err(err) = api.store.delete(&key, Some(kv.mod_revision)).await
    {
        debug!(%key, ?err, "releasing an allocation");
    }
}

/// Offsets `0..size` in allocation order: the upper band `[offset, size)`
/// from a random start first, then the lower band (kept for explicit
/// requests, as upstream's static subrange), wrapping within each band.
pub fn scan(size: u32, offset: u32, seed: u32) -> impl Iterator<Item = u32> {
    let offset = offset.min(size);
    let band = |lo: u32, hi: u32| {
        let len = hi - lo;
        let start = if len == 0 { 0 } else { seed % len };
        (0..len).map(move |i| lo + (start + i) % len)
    };
    band(offset, size).chain(band(0, offset))
}

/// A random 32-bit seed (from a v4 UUID, so no extra crate).
pub fn seed() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Upstream's static-subrange size: `min(max(16, size/step), max)`.
pub fn static_band(size: u32, step: u32, max: u32) -> u32 {
    (size / step).clamp(16, max).min(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_cover_every_offset_once_upper_band_first() {
        let order: Vec<u32> = scan(10, 4, 7).collect();
        assert_eq!(order.len(), 10);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert!(order[..6].iter().all(|o| *o >= 4), "{order:?}");
        assert!(scan(0, 0, 1).next().is_none());
        assert_eq!(scan(3, 5, 1).count(), 3);
    }

    #[test]
    fn static_bands_match_upstream() {
        // 10.43.0.0/16: 65534 addresses, 256 kept for explicit requests.
        assert_eq!(static_band(65534, 16, 256), 256);
        // 30000-32767: 2768 ports, 86 kept.
        assert_eq!(static_band(2768, 32, 128), 86);
        assert_eq!(static_band(6, 16, 256), 6);
    }
}
