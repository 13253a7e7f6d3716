//! Block-device and ext4 ioctls: device size, logical sector size, telling
//! the kernel a partition grew (`BLKPG_RESIZE_PARTITION`), and growing a
//! mounted ext4 filesystem (`EXT4_IOC_RESIZE_FS`), and freezing a busy
//! filesystem at shutdown (`FIFREEZE`). These have no safe
//! wrapper in nix, so the `unsafe` calls live here, each with its reasoning.

use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An ioctl that failed, naming the device or directory.
#[derive(Debug, thiserror::Error)]
#[error("{what} on {path}: {errno}")]
pub struct IoctlError {
    pub what: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> IoctlError {
    let path = path.to_path_buf();
    move |errno| IoctlError { what, path, errno }
}

mod raw {
    // <linux/fs.h>: BLKSSZGET _IO(0x12,104) writes an int; BLKGETSIZE64
    // _IOR(0x12,114,size_t); <linux/blkpg.h>: BLKPG _IO(0x12,105) takes a
    // struct blkpg_ioctl_arg *; <linux/ext4.h>: EXT4_IOC_RESIZE_FS
    // _IOW('f', 16, __u64).
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(
        blkpg,
        nix::request_code_none!(0x12, 105),
        super::BlkpgIoctlArg
    );
    nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
    // <linux/fs.h>: FIFREEZE _IOWR('X', 119, int).
    nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
}

/// `struct blkpg_ioctl_arg` from `<linux/blkpg.h>`.
#[repr(C)]
pub struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// Size of a block device in bytes.
pub fn size_bytes(dev: &File, path: &Path) -> Result<u64, IoctlError> {
    let mut size: u64 = 0;
    // SAFETY: `dev` is an open file descriptor for the whole call, and
    // BLKGETSIZE64 writes exactly one u64 through the pointer, which points
    // at a live, aligned local. A non-block file makes it fail with ENOTTY.
    unsafe { raw::blkgetsize64(dev.as_raw_fd(), &mut size) }.map_err(err("BLKGETSIZE64", path))?;
    Ok(size)
}

/// Logical sector size of a block device in bytes (512 or 4096).
pub fn logical_sector_size(dev: &File, path: &Path) -> Result<u32, IoctlError> {
    let mut size: libc::c_int = 0;
    // SAFETY: as above; BLKSSZGET writes one int into a live local.
    unsafe { raw::blksszget(dev.as_raw_fd(), &mut size) }.map_err(err("BLKSSZGET", path))?;
    u32::try_from(size).map_err(|_| IoctlError {
        what: "BLKSSZGET",
        path: path.to_path_buf(),
        errno: Errno::EINVAL,
    })
}

/// Tells the kernel that partition `number` of the disk open as `disk` now
/// spans `start..start+length` bytes (it must not overlap another).
pub fn resize_partition(
    disk: &File,
    path: &Path,
    number: u32,
    start: u64,
    length: u64,
) -> Result<(), IoctlError> {
    let invalid = || IoctlError {
        what: "BLKPG_RESIZE_PARTITION",
        path: path.to_path_buf(),
        errno: Errno::EINVAL,
    };
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| invalid())?,
        length: i64::try_from(length).map_err(|_| invalid())?,
        pno: i32::try_from(number).map_err(|_| invalid())?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: `arg` and the `part` it points to live on this stack frame
    // until the call returns; both are #[repr(C)] copies of the kernel's
    // structs and `datalen` is the size of `part`. The kernel only reads them.
    unsafe { raw::blkpg(disk.as_raw_fd(), &arg) }.map_err(err("BLKPG_RESIZE_PARTITION", path))?;
    Ok(())
}

/// Grows the ext4 filesystem mounted at the directory open as `mount_dir`
/// to `blocks` filesystem blocks, online.
pub fn ext4_resize(mount_dir: &File, path: &Path, blocks: u64) -> Result<(), IoctlError> {
    // SAFETY: `mount_dir` is an open descriptor; EXT4_IOC_RESIZE_FS reads one
    // u64 through the pointer, which points at a live local.
    unsafe { raw::ext4_resize_fs(mount_dir.as_raw_fd(), &blocks) }
        .map_err(err("EXT4_IOC_RESIZE_FS", path))?;
    Ok(())
}

/// Freezes the filesystem mounted at the directory open as `mount_dir`:
/// writes stop, the journal is flushed and (ext4) the superblock is marked
/// clean. The last resort at shutdown when a filesystem stays busy.
pub fn freeze(mount_dir: &File, path: &Path) -> Result<(), IoctlError> {
    let mut unused: libc::c_int = 0;
    // SAFETY: `mount_dir` is an open descriptor; FIFREEZE ignores its
    // argument, which points at a live local anyway.
    unsafe { raw::fifreeze(mount_dir.as_raw_fd(), &mut unused) }.map_err(err("FIFREEZE", path))?;
    Ok(())
}
