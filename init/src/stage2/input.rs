//! The power button, read from the kernel's input devices without udev.
//!
//! QEMU's `system_powerdown` presses the ACPI power button on x86 (the
//! "Power Button" device of the ACPI button driver) and a GPIO key on arm64
//! `virt` (gpio-keys). Both show up as `/dev/input/eventN` (evdev) whose
//! `capabilities/key` bitmap has `KEY_POWER`. Each found device gets a small
//! thread that reads `struct input_event` records and reports a press.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `EV_KEY` from `<linux/input-event-codes.h>`.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER`.
pub const KEY_POWER: u16 = 116;
/// Size of `struct input_event` on 64-bit kernels: timeval (16), type, code, value.
pub const EVENT_SIZE: usize = 24;
const SYS_INPUT: &str = "/sys/class/input";

/// One input event: type, code, value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// Decodes one `struct input_event` (native endian).
    pub fn decode(rec: &[u8; EVENT_SIZE]) -> InputEvent {
        InputEvent {
            kind: u16::from_ne_bytes([rec[16], rec[17]]),
            code: u16::from_ne_bytes([rec[18], rec[19]]),
            value: i32::from_ne_bytes([rec[20], rec[21], rec[22], rec[23]]),
        }
    }

    /// A press (not release or repeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Whether a sysfs `capabilities/key` bitmap (hex words of the kernel's
/// `long` size, most significant first) has `code` set.
pub fn has_key(bitmap: &str, code: u16) -> bool {
    let bits = usize::BITS as usize;
    let word = usize::from(code) / bits;
    bitmap
        .split_whitespace()
        .rev()
        .nth(word)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .is_some_and(|w| w >> (usize::from(code) % bits) & 1 == 1)
}

/// The `/dev/input/eventN` devices that have a power key.
pub fn power_buttons(sys_input: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(sys_input) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") {
                return None;
            }
            let device = e.path().join("device");
            let caps = std::fs::read_to_string(device.join("capabilities/key")).unwrap_or_default();
            let label = std::fs::read_to_string(device.join("name")).unwrap_or_default();
            let label = label.trim().to_string();
            (has_key(&caps, KEY_POWER) || label.contains("Power Button"))
                .then(|| (Path::new("/dev/input").join(&name), label))
        })
        .collect();
    found.sort();
    found
}

/// Looks for power buttons now and for a few seconds more (devices can
/// appear late), calling `on_press` from a reader thread per device.
pub fn watch(on_press: impl Fn() + Send + Sync + Clone + 'static) {
    let spawn = std::thread::Builder::new()
        .name("input-scan".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut watching = HashSet::new();
            for _ in 0..10 {
                for (dev, label) in power_buttons(Path::new(SYS_INPUT)) {
                    if watching.insert(dev.clone()) {
                        tracing::info!(dev = %dev.display(), name = %label, "watching power button");
                        let on_press = on_press.clone();
                        let _ = std::thread::Builder::new()
                            .name("power-button".into())
                            .stack_size(64 * 1024)
                            .spawn(move || read_events(&dev, on_press));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            if watching.is_empty() {
                tracing::warn!("no power button found");
            }
        });
    if let Err(error) = spawn {
        tracing::warn!(%error, "cannot watch for the power button");
    }
}

fn read_events(dev: &Path, on_press: impl Fn()) {
    let mut file = match std::fs::File::open(dev) {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(dev = %dev.display(), %error, "cannot open input device");
            return;
        }
    };
    let mut rec = [0u8; EVENT_SIZE];
    while file.read_exact(&mut rec).is_ok() {
        if InputEvent::decode(&rec).is_power_press() {
            tracing::info!(dev = %dev.display(), "power button pressed");
            on_press();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut rec = [0u8; EVENT_SIZE];
        rec[..8].copy_from_slice(&7u64.to_ne_bytes());
        rec[16..18].copy_from_slice(&kind.to_ne_bytes());
        rec[18..20].copy_from_slice(&code.to_ne_bytes());
        rec[20..24].copy_from_slice(&value.to_ne_bytes());
        rec
    }

    #[test]
    fn decodes_power_press_only() {
        assert!(InputEvent::decode(&record(EV_KEY, KEY_POWER, 1)).is_power_press());
        assert!(!InputEvent::decode(&record(EV_KEY, KEY_POWER, 0)).is_power_press());
        assert!(!InputEvent::decode(&record(0, 0, 0)).is_power_press());
        assert_eq!(
            InputEvent::decode(&record(EV_KEY, 30, 2)),
            InputEvent {
                kind: 1,
                code: 30,
                value: 2
            }
        );
    }

    #[test]
    fn key_bitmap() {
        // ACPI power button: only KEY_POWER (word 1, bit 52).
        assert!(has_key("10000000000000 0", KEY_POWER));
        assert!(!has_key("10000000000000 0", 115));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        // A keyboard-like bitmap with many words.
        assert!(has_key("fff 0 10000000000000 fffffffffffffffe", KEY_POWER));
    }

    #[test]
    fn scan_fake_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (ev, name, caps) in [
            ("event0", "Power Button", "10000000000000 0"),
            ("event1", "AT Translated Set 2 keyboard", "1 0"),
            ("event2", "gpio-keys", "10000000000000 0"),
        ] {
            let d = dir.path().join(ev).join("device/capabilities");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("key"), caps).expect("write");
            std::fs::write(dir.path().join(ev).join("device/name"), format!("{name}\n"))
                .expect("write");
        }
        let found = power_buttons(dir.path());
        let devs: Vec<_> = found.iter().map(|(d, _)| d.display().to_string()).collect();
        assert_eq!(devs, ["/dev/input/event0", "/dev/input/event2"]);
    }
}
