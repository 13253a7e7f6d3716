//! The kernel command line: which slot GRUB booted (`cairn.slot=a`) and
//! init's own switches (`cairn.debug`).

use cairn_image::Slot;

/// The value of `key=value` on a kernel command line, last one wins (as
/// with the kernel's own parameters). Quoted values keep their spaces.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    words(cmdline)
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"'))
        .last()
}

/// Whether a bare flag (`cairn.debug`) or `flag=1` is present.
pub fn flag(cmdline: &str, key: &str) -> bool {
    words(cmdline).any(|w| w == key) || value(cmdline, key) == Some("1")
}

/// The booted slot from `cairn.slot=`; `None` if absent or not a slot.
pub fn slot(cmdline: &str) -> Option<Slot> {
    value(cmdline, "cairn.slot").and_then(|v| v.parse().ok())
}

/// Splits on whitespace outside double quotes.
fn words(cmdline: &str) -> impl Iterator<Item = &str> {
    let mut rest = cmdline.trim();
    std::iter::from_fn(move || {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c.is_whitespace() && !quoted
            })
            .map_or(rest.len(), |(i, _)| i);
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

/// Reads `/proc/cmdline` (empty if unreadable).
pub fn read() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "BOOT_IMAGE=/cairn/a/vmlinuz cairn.slot=b console=tty0 \
                        console=ttyS0,115200 panic=5 loglevel=4 foo=\"a b\" cairn.debug\n";

    #[test]
    fn slot_is_read() {
        assert_eq!(slot(LINE), Some(Slot::B));
        assert_eq!(slot("cairn.slot=a"), Some(Slot::A));
        assert_eq!(slot("cairn.slot=c"), None);
        assert_eq!(slot("quiet"), None);
        assert_eq!(slot(""), None);
    }

    #[test]
    fn values_quotes_and_flags() {
        assert_eq!(value(LINE, "console"), Some("ttyS0,115200"));
        assert_eq!(value(LINE, "foo"), Some("a b"));
        assert_eq!(value(LINE, "missing"), None);
        assert!(flag(LINE, "cairn.debug"));
        assert!(!flag(LINE, "quiet"));
    }
}
