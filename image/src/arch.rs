//! The target architectures Cairn images are built for, and the names each
//! one has in the tools around it (Debian, Rust, UEFI, the kernel console).

use std::fmt;
use std::str::FromStr;

/// A target architecture of a Cairn image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name used on the command line and in `out/<arch>/`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture name (`apt-get -o APT::Architecture=...`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target the device binaries are built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The multiarch triplet Debian installs shared libraries under.
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// GRUB's platform name (`grub-mkstandalone -O`).
    pub fn grub_platform(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-efi",
            Arch::Aarch64 => "arm64-efi",
        }
    }

    /// The removable-media boot path the firmware looks for on the ESP.
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// The serial console the kernel writes to on QEMU and most boards.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0,115200",
            Arch::Aarch64 => "ttyAMA0,115200",
        }
    }

    /// The architecture this program runs on, if Cairn supports it.
    pub fn host() -> Option<Arch> {
        std::env::consts::ARCH.parse().ok()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An architecture name that is not one Cairn supports.
#[derive(Debug, thiserror::Error)]
#[error("unknown architecture {0:?}: expected x86_64 or aarch64")]
pub struct UnknownArch(String);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().ok(), Some(arch));
            assert_eq!(arch.debian().parse::<Arch>().ok(), Some(arch));
        }
        assert!("riscv64".parse::<Arch>().is_err());
    }
}
