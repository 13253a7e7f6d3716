//! Kernel module loading with `finit_module(2)`.

use nix::errno::Errno;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("opening module {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading module {path}: {source}")]
    Load { path: PathBuf, source: Errno },
}

/// What loading a module did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// The module is now in the kernel.
    New,
    /// It was already loaded (or built in): `EEXIST`.
    Already,
}

/// Loads the module file at `path` with no parameters.
pub fn load(path: &Path) -> Result<Loaded, KmodError> {
    let file = File::open(path).map_err(|source| KmodError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::default();
    match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::New),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(source) => Err(KmodError::Load {
            path: path.to_path_buf(),
            source,
        }),
    }
}
