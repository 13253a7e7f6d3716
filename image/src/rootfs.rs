//! The slot root filesystem: staged as a directory tree, then packed into a
//! read-only squashfs.
//!
//! What goes in: `cairn-init` as `/sbin/init`, `cairn` as
//! `/usr/bin/cairn`, the pause image (`cairn-pause` in an OCI archive), containerd + shim, runc, the CNI plugins,
//! iptables for them ([`crate::iptables`]), wpa_supplicant ([`crate::wifi`]),
//! busybox for the debug shell ([`crate::shell`]), the
//! shared libraries they load (at Debian's paths, symlinks kept as
//! symlinks), the stage-2 kernel modules with `/etc/cairn/modules`, the
//! netfilter, VLAN and Wi-Fi ones with their own lists (loaded on demand), and a
//! small `/etc` whose machine-specific files are symlinks into `/run` and
//! `/var`, written by init at boot. squashfs is chosen over erofs because
//! GRUB 2.06 and every kernel Cairn targets read it; zstd because it
//! decompresses several times faster than xz under TCG for a few percent
//! more bytes.

use crate::arch::Arch;
use crate::components::{self, Components};
use crate::disk::{self, DiskError};
use crate::elf::{self, ElfError};
use crate::initramfs;
use crate::iptables;
use crate::layout;
use crate::modules::{self, ModuleSet, ModulesError};
use crate::shell;
use crate::wifi;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} not found in the component tree (is the package in the lock file?)")]
    MissingComponent(PathBuf),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(
        "root filesystem is {size} bytes ({} MiB) but a root slot holds {room} bytes ({} MiB)",
        size >> 20,
        room >> 20
    )]
    TooBig { size: u64, room: u64 },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

/// Modules stage 2 loads: networking, containers, input, plus stage 1's set
/// (already loaded then; listing them again is harmless and keeps the root
/// filesystem self-sufficient).
pub fn stage2_modules(arch: Arch) -> Vec<&'static str> {
    let mut wanted = vec![
        "virtio_net",
        "net_failover",
        "failover",
        "overlay",
        "bridge",
        "br_netfilter",
        "veth",
        "evdev",
        "af_packet",
    ];
    match arch {
        Arch::X86_64 => wanted.push("button"),
        Arch::Aarch64 => wanted.extend(["gpio_keys", "gpio_pl061"]),
    }
    wanted.extend(initramfs::stage1_modules(arch));
    wanted
}

/// Resolves `wanted` modules and warns about those the kernel lacks.
pub fn resolve_modules(
    modules_dir: &Path,
    wanted: &[&str],
    stage: &str,
) -> Result<ModuleSet, RootfsError> {
    let set = modules::resolve(modules_dir, wanted)?;
    for name in &set.missing {
        tracing::warn!(stage, module = %name, "wanted kernel module is neither a module nor built in");
    }
    tracing::debug!(
        stage,
        modules = set.ordered.len(),
        builtin = set.builtin.len(),
        "modules resolved"
    );
    Ok(set)
}

/// Inputs of a root filesystem.
#[derive(Debug)]
pub struct RootSpec<'a> {
    pub components: &'a Components,
    pub version: &'a str,
    pub init: &'a Path,
    pub cairn: &'a Path,
    /// The pod sandbox program, packed as the pause image.
    pub pause: &'a Path,
}

/// Writes the pause image (`cairn-pause` as `/pause`) into
/// [`layout::ROOT_IMAGES_DIR`].
fn pause_image(spec: &RootSpec, root: &Path) -> Result<(), RootfsError> {
    let data = fs::read(spec.pause)
        .map_err(|_| RootfsError::MissingComponent(spec.pause.to_path_buf()))?;
    let image = crate::oci::Image {
        name: layout::PAUSE_IMAGE.into(),
        arch: spec.components.arch,
        entrypoint: vec!["/pause".into()],
        files: vec![crate::oci::File::regular("pause", 0o755, data)],
    };
    let dir = root.join(layout::ROOT_IMAGES_DIR);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let path = dir.join("pause.tar");
    let file = fs::File::create(&path).map_err(io_err("create", &path))?;
    crate::oci::write(&image, io::BufWriter::new(file)).map_err(io_err("write", &path))
}

/// Copies one tree entry to the same relative path under `root`: symlinks
/// as symlinks, files with their permissions, directories as directories.
fn copy_entry(tree: &Path, root: &Path, rel: &Path) -> Result<(), RootfsError> {
    let src = tree.join(rel);
    let dst = root.join(rel);
    let meta = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    if fs::symlink_metadata(&dst).is_ok() {
        return Ok(());
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&src).map_err(io_err("read link", &src))?;
        symlink(&target, &dst).map_err(io_err("symlink", &dst))?;
    } else if meta.is_dir() {
        fs::create_dir_all(&dst).map_err(io_err("create", &dst))?;
    } else {
        fs::copy(&src, &dst).map_err(io_err("copy to", &dst))?;
    }
    Ok(())
}

fn install(src: &Path, root: &Path, rel: &str, mode: u32) -> Result<(), RootfsError> {
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    if !src.is_file() {
        return Err(RootfsError::MissingComponent(src.to_path_buf()));
    }
    fs::copy(src, &dst).map_err(io_err("copy to", &dst))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &dst))
}

fn write(root: &Path, rel: &str, text: &str) -> Result<(), RootfsError> {
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    fs::write(&dst, text).map_err(io_err("write", &dst))
}

fn link(root: &Path, rel: &str, target: &str) -> Result<(), RootfsError> {
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    symlink(target, &dst).map_err(io_err("symlink", &dst))
}

/// The `/etc` files every image carries.
fn etc(root: &Path, arch: Arch, v: &str) -> Result<(), RootfsError> {
    let os_release =
        format!("ID=cairn\nNAME=Cairn\nVERSION={v}\nVERSION_ID={v}\nPRETTY_NAME=\"Cairn {v}\"\n");
    write(root, "etc/os-release", &os_release)?;
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")?;
    write(root, "etc/group", "root:x:0:\n")?;
    write(root, "etc/cairn/arch", &format!("{}\n", arch.name()))?;
    for (rel, target) in [
        ("etc/hostname", "/run/cairn/etc/hostname"),
        ("etc/hosts", "/run/cairn/etc/hosts"),
        ("etc/resolv.conf", "/run/cairn/etc/resolv.conf"),
        ("etc/timezone", "/run/cairn/etc/timezone"),
        ("etc/machine-id", "/var/lib/cairn/machine-id"),
        ("etc/cni/net.d", "/run/cairn/cni/net.d"),
    ] {
        link(root, rel, target)?;
    }
    Ok(())
}

/// Stages the root tree for `spec` in `root` (emptied first).
pub fn stage(spec: &RootSpec, root: &Path) -> Result<(), RootfsError> {
    if root.exists() {
        fs::remove_dir_all(root).map_err(io_err("remove", root))?;
    }
    for dir in ["proc", "sys", "dev", "run", "tmp", "var", "root"] {
        fs::create_dir_all(root.join(dir)).map_err(io_err("create", root))?;
    }
    install(spec.init, root, "sbin/init", 0o755)?;
    install(spec.cairn, root, "usr/bin/cairn", 0o755)?;
    pause_image(spec, root)?;

    let c = spec.components;
    let userland = components::elf_binaries(c.arch);
    for rel in &userland {
        if !c.tree.join(rel).exists() {
            return Err(RootfsError::MissingComponent(rel.clone()));
        }
    }
    let libs = elf::closure(&c.tree, c.arch, &userland)?;
    for rel in userland.iter().chain(&libs) {
        copy_entry(&c.tree, root, rel)?;
    }
    iptables_links(c, root)?;
    for applet in shell::APPLETS {
        link(root, &format!("bin/{applet}"), "busybox")?;
    }
    tracing::info!(
        binaries = userland.len(),
        libraries = libs.len(),
        "userland staged"
    );

    let set = resolve_modules(&c.modules_dir(), &stage2_modules(c.arch), "stage 2")?;
    copy_modules(c, root, &set.ordered)?;
    write(
        root,
        "etc/cairn/modules",
        &initramfs::module_list(&c.kernel_version, &set.ordered),
    )?;
    let netfilter = (&iptables::MODULES[..], layout::NETFILTER_MODULES_LIST);
    listed_modules(c, root, &set.ordered, netfilter, "netfilter")?;
    let vlan = (&VLAN_MODULES[..], layout::VLAN_MODULES_LIST);
    listed_modules(c, root, &set.ordered, vlan, "vlan")?;
    let wifi = (&wifi::MODULES[..], layout::WIFI_MODULES_LIST);
    listed_modules(c, root, &set.ordered, wifi, "wifi")?;
    wifi_test_modules(c, root, &set.ordered)?;
    etc(root, c.arch, spec.version)
}

/// Copies `modules` (relative to the modules dir) into the root's modules dir.
fn copy_modules(c: &Components, root: &Path, modules: &[PathBuf]) -> Result<(), RootfsError> {
    let from = c.modules_dir();
    let dest = root.join("lib/modules").join(&c.kernel_version);
    for module in modules {
        let to = dest.join(module);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::copy(from.join(module), &to).map_err(io_err("copy to", &to))?;
    }
    Ok(())
}

/// iptables' names: the extension symlinks from the tree, and the command
/// names dpkg's alternatives would have made, all linked to the one binary.
fn iptables_links(c: &Components, root: &Path) -> Result<(), RootfsError> {
    for rel in iptables::links(c.arch) {
        if fs::symlink_metadata(c.tree.join(&rel)).is_err() {
            return Err(RootfsError::MissingComponent(rel));
        }
        copy_entry(&c.tree, root, &rel)?;
    }
    let program = Path::new(iptables::PROGRAM);
    let (dir, target) = (
        program.parent().unwrap_or(Path::new("")),
        program.file_name().unwrap_or_default(),
    );
    for name in iptables::COMMANDS {
        let rel = dir.join(name);
        link(root, &rel.to_string_lossy(), &target.to_string_lossy())?;
    }
    Ok(())
}

/// 802.1Q VLANs (`[[network.vlans]]`): loaded only when the config has
/// some, so other boots do not pay for them.
const VLAN_MODULES: [&str; 1] = ["8021q"];

/// Modules loaded on demand — the netfilter modules iptables needs
/// ([`layout::NETFILTER_MODULES_LIST`]), VLAN support
/// ([`layout::VLAN_MODULES_LIST`]), Wi-Fi ([`layout::WIFI_MODULES_LIST`])
/// — besides those stage 2 loads anyway
/// (`stage2`), with their own list (`wanted`, list path).
fn listed_modules(
    c: &Components,
    root: &Path,
    stage2: &[PathBuf],
    (wanted, list): (&[&str], &str),
    stage: &str,
) -> Result<(), RootfsError> {
    let set = resolve_modules(&c.modules_dir(), wanted, stage)?;
    let own: Vec<PathBuf> = set
        .ordered
        .into_iter()
        .filter(|m| !stage2.contains(m))
        .collect();
    copy_modules(c, root, &own)?;
    write(
        root,
        list.trim_start_matches('/'),
        &initramfs::module_list(&c.kernel_version, &own),
    )
}

/// [`wifi::TEST_MODULES`] with what they need beyond stage 2's modules, in
/// no list (the Wi-Fi list's modules among them are copied again: the same
/// files).
fn wifi_test_modules(c: &Components, root: &Path, stage2: &[PathBuf]) -> Result<(), RootfsError> {
    let set = resolve_modules(&c.modules_dir(), &wifi::TEST_MODULES, "wifi test")?;
    let own: Vec<PathBuf> = set
        .ordered
        .into_iter()
        .filter(|m| !stage2.contains(m))
        .collect();
    copy_modules(c, root, &own)
}

/// Packs the staged `root` into squashfs at `out` (zstd on both arches:
/// LZ4 read containerd ahead ~0.1 s sooner under emulation on x86_64, but
/// with Wi-Fi carried it put the slot over 64 MB) and checks it fits a root slot of `room` bytes. Returns the image size.
pub fn pack(root: &Path, out: &Path, room: u64) -> Result<u64, RootfsError> {
    if out.exists() {
        fs::remove_file(out).map_err(io_err("remove", out))?;
    }
    disk::tools::mksquashfs(root, out)?;
    let size = fs::metadata(out).map_err(io_err("stat", out))?.len();
    if size > room {
        return Err(RootfsError::TooBig { size, room });
    }
    tracing::info!(path = %out.display(), size, "root filesystem packed");
    Ok(size)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;

    #[test]
    fn etc_has_release_links_and_arch() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        etc(&root, Arch::Aarch64, "1.2.3").unwrap();
        let release = fs::read_to_string(root.join("etc/os-release")).unwrap();
        assert!(release.contains("ID=cairn\n"));
        assert!(release.contains("PRETTY_NAME=\"Cairn 1.2.3\"\n"));
        assert_eq!(
            fs::read_to_string(root.join("etc/cairn/arch")).unwrap(),
            "aarch64\n"
        );
        assert_eq!(
            fs::read_link(root.join("etc/resolv.conf")).unwrap(),
            Path::new("/run/cairn/etc/resolv.conf")
        );
        assert_eq!(
            fs::read_link(root.join("etc/cni/net.d")).unwrap(),
            Path::new("/run/cairn/cni/net.d")
        );
        assert!(stage2_modules(Arch::Aarch64).contains(&"gpio_pl061"));
        assert!(stage2_modules(Arch::X86_64).contains(&"virtio_blk"));
    }

    #[test]
    fn iptables_names_link_to_the_multi_call_binary() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let xtables = tree.join("usr/lib/x86_64-linux-gnu/xtables");
        fs::create_dir_all(&xtables).unwrap();
        for alias in iptables::EXTENSION_LINKS {
            symlink("libxt_NAT.so", xtables.join(alias)).unwrap();
        }
        let c = Components {
            arch: Arch::X86_64,
            kernel_version: "6.1.0-56-amd64".into(),
            vmlinuz: tree.join("boot/vmlinuz-6.1.0-56-amd64"),
            grub_modules: tree.join("usr/lib/grub/x86_64-efi"),
            tree: tree.clone(),
        };
        let root = dir.path().join("root");
        iptables_links(&c, &root).unwrap();
        for name in ["iptables", "ip6tables", "iptables-save"] {
            assert_eq!(
                fs::read_link(root.join("usr/sbin").join(name)).unwrap(),
                Path::new("xtables-nft-multi"),
                "{name}"
            );
        }
        assert_eq!(
            fs::read_link(root.join("usr/lib/x86_64-linux-gnu/xtables/libxt_MASQUERADE.so"))
                .unwrap(),
            Path::new("libxt_NAT.so")
        );
        // A tree without the extension links is an incomplete lock, not a silent gap.
        fs::remove_file(xtables.join("libxt_DNAT.so")).unwrap();
        let err = iptables_links(&c, &dir.path().join("root2")).unwrap_err();
        assert!(matches!(err, RootfsError::MissingComponent(_)), "{err}");
    }
}
