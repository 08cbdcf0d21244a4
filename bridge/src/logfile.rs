//! A key log as a file that admins pass around or keep on a share.
//!
//! Reading is bounded ([`MAX_LOG_LEN`]) and verifies the whole log: a log
//! that does not verify is an error, never shown or extended as if fine.
//! Writing is a compare-and-swap on the bytes that were read: under an
//! exclusive lock on a lock file next to the log (`.NAME.lock`), the file
//! is read again and replaced (atomically: temp file, fsync, rename, fsync
//! of the folder) only if it is still exactly what the command read and
//! the new log extends it. Two admins approving at once therefore never
//! fork the log: the second is told that the log changed and that nothing
//! was written. A crash mid-write leaves the previous log.

use crate::paths;
use keybridge_protocol::{KeyLog, LogError};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Largest key log read (the device's limit too).
pub const MAX_LOG_LEN: usize = 16 * 1024 * 1024;

/// Why a log file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Larger than [`MAX_LOG_LEN`].
    #[error("{0}: larger than {MAX_LOG_LEN} bytes; not read")]
    TooLarge(PathBuf),
    /// The log does not verify.
    #[error("the key log {path} does not verify: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        source: LogError,
    },
    /// Someone wrote the file since it was read.
    #[error(
        "the key log {0} changed since it was read (another admin wrote it); nothing was written — run the command again"
    )]
    Changed(PathBuf),
    /// The new log does not extend the one read (a bug, or a daemon that
    /// answered with another log).
    #[error("the new key log does not extend {0}; nothing was written")]
    NotAnExtension(PathBuf),
}

/// A key log as read from its file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    bytes: Vec<u8>,
    log: KeyLog,
}

/// Reads at most [`MAX_LOG_LEN`] bytes of `path`, not through a symbolic
/// link at its last component.
fn read_bounded(path: &Path) -> Result<Vec<u8>, LogFileError> {
    let io = |source| LogFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io)?;
    let mut bytes = vec![];
    file.take(MAX_LOG_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_LOG_LEN {
        return Err(LogFileError::TooLarge(path.to_owned()));
    }
    Ok(bytes)
}

impl LogFile {
    /// Reads and verifies the log at `path`.
    pub fn read(path: &Path) -> Result<Self, LogFileError> {
        let bytes = read_bounded(path)?;
        let log = KeyLog::from_bytes(&bytes).map_err(|source| LogFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(LogFile {
            path: path.to_owned(),
            bytes,
            log,
        })
    }

    /// The verified log.
    pub fn log(&self) -> &KeyLog {
        &self.log
    }

    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Replaces the file with `new` if it still holds exactly what was
    /// read and `new` extends it (see the module's documentation).
    pub fn replace(&self, new: &[u8]) -> Result<KeyLog, LogFileError> {
        let extended = self
            .log
            .verify_extension(new)
            .map_err(|_| LogFileError::NotAnExtension(self.path.clone()))?;
        let _lock = lock(&self.path)?;
        if read_bounded(&self.path)? != self.bytes {
            return Err(LogFileError::Changed(self.path.clone()));
        }
        paths::write_atomic(&self.path, new).map_err(|source| LogFileError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(extended)
    }
}

/// Takes the exclusive lock of the log at `path`: `.NAME.lock` in its
/// folder, held until the returned file drops.
fn lock(path: &Path) -> Result<File, LogFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    let lock_path = path.with_file_name(format!(".{name}.lock"));
    let io = |source| LogFileError::Io {
        path: lock_path.clone(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    Ok(f)
}

/// Writes a new log at `path`, which must not exist yet.
pub fn create(path: &Path, bytes: &[u8]) -> Result<(), LogFileError> {
    let io = |source| LogFileError::Io {
        path: path.to_owned(),
        source,
    };
    let _lock = lock(path)?;
    if path.symlink_metadata().is_ok() {
        return Err(io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists; refusing to overwrite it",
        )));
    }
    paths::write_atomic(path, bytes).map_err(io)
}
