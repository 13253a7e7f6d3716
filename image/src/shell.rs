//! The debug shell: Debian 12's `busybox-static` as `/bin/busybox`, with
//! `/bin/sh` and a few applets linked to it, for `[debug] serial_shell`
//! (init runs `/bin/sh` on the console when it is on; off by default).
//!
//! A static binary (no library closure), about 1 MB in the compressed
//! root. Nothing in Cairn runs it otherwise: services are Rust, containerd,
//! runc and the CNI plugins; containers bring their own userland.

use std::path::PathBuf;

/// busybox, relative to the component tree and the root.
pub const PROGRAM: &str = "bin/busybox";

/// Applets linked in `/bin` (the shell first): enough to look around a
/// running device.
pub const APPLETS: [&str; 22] = [
    "sh", "cat", "df", "dmesg", "du", "free", "grep", "head", "ip", "kill", "less", "ls", "mount",
    "netstat", "nslookup", "ping", "ps", "tail", "top", "umount", "uptime", "vi",
];

/// ELF files to copy (busybox is static: no libraries follow).
pub fn elf_files() -> Vec<PathBuf> {
    vec![PathBuf::from(PROGRAM)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_is_an_applet() {
        assert_eq!(format!("/bin/{}", APPLETS[0]), crate::layout::SHELL);
        assert!(PROGRAM.starts_with("bin/"));
    }
}
