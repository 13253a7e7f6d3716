//! The image GC's decisions, as data: the kubelet's image GC policy
//! (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
//! `--image-minimum-gc-age`), what the collector remembers of each image
//! (first detected, last used, size, pinned), how many bytes a round must
//! free, and which images go, least recently used first. No I/O here: the
//! loop in [`super`] feeds it what CRI and `statvfs` report.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The thresholds, in percent of the image filesystem used, and the age
/// under which a newly seen image is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// At or above this usage a round frees space (100: never).
    pub high_percent: u8,
    /// A round frees down to this usage.
    pub low_percent: u8,
    /// Images first seen less than this ago are kept.
    pub min_age: Duration,
}

impl Default for Policy {
    /// The kubelet's defaults: 85 %, 80 %, 2 minutes.
    fn default() -> Policy {
        Policy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

impl Policy {
    /// A policy, checked as the kubelet checks its flags.
    pub fn new(high_percent: u8, low_percent: u8, min_age: Duration) -> Result<Policy, String> {
        if high_percent > 100 || low_percent > 100 {
            return Err("image GC thresholds must be between 0 and 100".into());
        }
        if low_percent > high_percent {
            return Err(format!(
                "--image-gc-low-threshold ({low_percent}) must not be greater than --image-gc-high-threshold ({high_percent})"
            ));
        }
        Ok(Policy {
            high_percent,
            low_percent,
            min_age,
        })
    }

    /// Image GC is off (the kubelet's high threshold of 100).
    pub fn disabled(&self) -> bool {
        self.high_percent >= 100
    }

    /// The bytes to free on a filesystem of `capacity` bytes with
    /// `available` free: `None` below the high threshold, else what brings
    /// usage down to the low one (the kubelet's arithmetic).
    pub fn bytes_to_free(&self, capacity: u64, available: u64) -> Option<u64> {
        if capacity == 0 || self.disabled() {
            return None;
        }
        let available = available.min(capacity);
        let usage = 100 - (u128::from(available) * 100 / u128::from(capacity)) as u64;
        if usage < u64::from(self.high_percent) {
            return None;
        }
        let target_free =
            u128::from(capacity) * u128::from(100 - u64::from(self.low_percent)) / 100;
        Some((target_free.saturating_sub(u128::from(available))) as u64)
    }
}

/// An image as the runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its id (`sha256:...`).
    pub id: String,
    /// Its size in bytes (as CRI reports it).
    pub size: u64,
    /// The runtime must keep it (CRI `pinned`, or the sandbox image).
    pub pinned: bool,
}

/// What the collector remembers of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the agent first saw it (at its start for images already there).
    pub first_detected: Instant,
    /// When last seen used by a container; `None`: never seen used.
    pub last_used: Option<Instant>,
    /// Its size.
    pub size: u64,
    /// Never removed.
    pub pinned: bool,
}

/// The records of every image the runtime has.
#[derive(Debug, Default)]
pub struct Records {
    images: HashMap<String, Record>,
}

impl Records {
    /// Takes in the images the runtime has now and the ids in use by a
    /// container: new images are recorded as detected `now`, used ones
    /// marked used `now`, gone ones forgotten.
    ///
    /// Unlike the kubelet, which counts images there at its first look as
    /// old, every image gets the minimum age from when the agent first saw
    /// it: images imported at boot for air-gapped use are not removed
    /// before the pods that want them had time to start.
    pub fn detect(&mut self, images: &[Seen], in_use: &HashSet<String>, now: Instant) {
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.images.retain(|id, _| present.contains(id.as_str()));
        for image in images {
            let record = self.images.entry(image.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: None,
                size: 0,
                pinned: false,
            });
            record.size = image.size;
            record.pinned = image.pinned;
            if in_use.contains(&image.id) {
                record.last_used = Some(now);
            }
        }
    }

    /// The record of image `id`.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.images.get(id)
    }

    /// The images to remove to free `bytes`, in order (least recently
    /// used first, then first detected), and the bytes they add up to
    /// (less than `bytes` when not enough may go). Kept: images in use,
    /// pinned, used at or after `now` (the round's start) or first seen
    /// less than `min_age` before it.
    pub fn choose(
        &self,
        bytes: u64,
        in_use: &HashSet<String>,
        now: Instant,
        min_age: Duration,
    ) -> (Vec<String>, u64) {
        let mut candidates: Vec<(&String, &Record)> = self
            .images
            .iter()
            .filter(|(id, r)| {
                !in_use.contains(*id)
                    && !r.pinned
                    && r.last_used.is_none_or(|t| t < now)
                    && now.saturating_duration_since(r.first_detected) >= min_age
            })
            .collect();
        candidates.sort_by(|(a_id, a), (b_id, b)| {
            (a.last_used, a.first_detected, a_id).cmp(&(b.last_used, b.first_detected, b_id))
        });
        let mut freed = 0u64;
        let mut chosen = Vec::new();
        for (id, record) in candidates {
            if freed >= bytes {
                break;
            }
            chosen.push(id.clone());
            freed = freed.saturating_add(record.size);
        }
        (chosen, freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    #[test]
    fn thresholds() {
        let p = Policy::default();
        // 100 GiB, 20 GiB free: 80 % used, under 85 %.
        assert_eq!(p.bytes_to_free(100 * GI, 20 * GI), None);
        // 10 GiB free: 90 % used; down to 80 % used = 20 GiB free.
        assert_eq!(p.bytes_to_free(100 * GI, 10 * GI), Some(10 * GI));
        // Exactly at the high mark.
        assert_eq!(p.bytes_to_free(100 * GI, 15 * GI), Some(5 * GI));
        assert_eq!(p.bytes_to_free(0, 0), None, "no figures: nothing");
        let off = Policy::new(100, 80, Duration::ZERO).expect("valid");
        assert!(off.disabled());
        assert_eq!(off.bytes_to_free(100 * GI, 0), None);
        // 0/0 (the tests' way to force a round): everything used is to free.
        let all = Policy::new(0, 0, Duration::ZERO).expect("valid");
        assert_eq!(all.bytes_to_free(100, 40), Some(60));
        assert_eq!(all.bytes_to_free(100, 100), Some(0));
        assert!(Policy::new(80, 85, Duration::ZERO).is_err());
        assert!(Policy::new(101, 85, Duration::ZERO).is_err());
    }

    fn seen(id: &str, size: u64) -> Seen {
        Seen {
            id: id.into(),
            size,
            pinned: false,
        }
    }

    #[test]
    fn least_recently_used_first_and_never_what_is_kept() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut records = Records::default();
        let images = [
            seen("old", 10),
            seen("used-early", 20),
            Seen {
                pinned: true,
                ..seen("pause", 1)
            },
            seen("running", 30),
        ];
        let none = HashSet::new();
        let running: HashSet<String> = ["running".to_owned()].into();
        let early: HashSet<String> = ["used-early".to_owned(), "running".to_owned()].into();
        records.detect(&images, &early, at(0));
        assert_eq!(records.get("old").expect("old").first_detected, at(0));
        let min_age = Duration::from_secs(120);
        // Everything is younger than the minimum age at first.
        assert!(
            records
                .choose(u64::MAX, &none, at(60), min_age)
                .0
                .is_empty()
        );
        records.detect(&images, &running, at(100));
        // A new image, seen later, too young for a while.
        let mut later = images.to_vec();
        later.push(seen("fresh", 40));
        records.detect(&later, &running, at(200));
        assert_eq!(records.get("fresh").expect("fresh").first_detected, at(200));
        // Never used goes before used long ago; running, pinned and fresh stay.
        let (chosen, freed) = records.choose(u64::MAX, &running, at(250), min_age);
        assert_eq!(chosen, ["old", "used-early"]);
        assert_eq!(freed, 30);
        // Only what is needed.
        let (chosen, freed) = records.choose(5, &running, at(250), min_age);
        assert_eq!((chosen.as_slice(), freed), (&["old".to_owned()][..], 10));
        assert_eq!(records.choose(0, &running, at(250), min_age).0.len(), 0);
        // Later, with nothing running: never used first (then by first
        // detection), then by last use.
        let (chosen, _) = records.choose(u64::MAX, &none, at(400), min_age);
        assert_eq!(chosen, ["old", "fresh", "used-early", "running"]);
        // An image gone from the runtime is forgotten.
        records.detect(&images[..1], &none, at(500));
        assert!(records.get("fresh").is_none());
    }
}
