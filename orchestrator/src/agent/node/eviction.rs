//! Hard eviction thresholds: below them the node reports memory, disk or
//! process-id pressure, and allocatable is capacity less them. The
//! kubelet's `--eviction-hard` flag and spelling
//! (`memory.available<100Mi,nodefs.available<10%,pid.available<10%`, its
//! defaults); a signal the flag does not name keeps its default.
//!
//! Cairn evicts nothing yet: the thresholds only drive the conditions (and
//! through them the node controller's NoSchedule taints).

use std::str::FromStr;

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// `memory.available`, in KiB.
    pub memory_kib: u64,
    /// `nodefs.available`, in percent of the filesystem holding the root dir.
    pub nodefs_percent: u64,
    /// `pid.available`, in percent of `kernel.pid_max`.
    pub pid_percent: u64,
}

impl Default for Thresholds {
    /// The kubelet's defaults.
    fn default() -> Thresholds {
        Thresholds {
            memory_kib: 100 * 1024,
            nodefs_percent: 10,
            pid_percent: 10,
        }
    }
}

/// `10%` → 10.
fn percent(signal: &str, value: &str) -> Result<u64, String> {
    value
        .strip_suffix('%')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= 100)
        .ok_or_else(|| format!("{signal}<{value}: expected a percentage such as 10%"))
}

/// `100Mi`, `1Gi`, `512Ki`, `100M`, or bytes → KiB.
fn quantity_kib(signal: &str, value: &str) -> Result<u64, String> {
    quantity_bytes(value)
        .map(|b| b / 1024)
        .ok_or_else(|| format!("{signal}<{value}: expected a quantity such as 100Mi"))
}

/// A byte quantity as Kubernetes writes it (`100Mi`, `1Gi`, `512Ki`,
/// `100M`, `1k`, or plain bytes); `None` when it is not one.
pub fn quantity_bytes(value: &str) -> Option<u64> {
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let bytes: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(bytes)
}

impl FromStr for Thresholds {
    type Err = String;

    fn from_str(s: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?}: expected signal<value"))?;
            match signal {
                "memory.available" => t.memory_kib = quantity_kib(signal, value)?,
                "nodefs.available" => t.nodefs_percent = percent(signal, value)?,
                "pid.available" => t.pid_percent = percent(signal, value)?,
                _ => {
                    return Err(format!(
                        "{signal}: unknown signal (memory.available, nodefs.available, pid.available)"
                    ));
                }
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_spelling() {
        assert_eq!(
            "memory.available<100Mi,nodefs.available<10%,pid.available<10%".parse::<Thresholds>(),
            Ok(Thresholds::default())
        );
        let t: Thresholds = "nodefs.available<1%".parse().expect("one signal");
        assert_eq!(t.nodefs_percent, 1);
        assert_eq!(t.memory_kib, 100 * 1024, "the others keep their defaults");
        assert_eq!(
            "memory.available<1Gi"
                .parse::<Thresholds>()
                .map(|t| t.memory_kib),
            Ok(1024 * 1024)
        );
        for bad in [
            "nodefs.available<10",
            "nodefs.available<101%",
            "memory.available<lots",
            "imagefs.available<15%",
            "memory.available",
        ] {
            assert!(bad.parse::<Thresholds>().is_err(), "{bad}");
        }
    }
}
