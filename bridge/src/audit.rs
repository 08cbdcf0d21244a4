//! The audit log: one JSON line per signature (DESIGN.md §6).
//!
//! Each line is written with a single `write` on a file opened `O_APPEND`,
//! under a mutex, so concurrent signatures never interleave and a crash
//! leaves at most one incomplete last line, which the reader reports and
//! skips.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds when signed.
    pub time: i64,
    /// The signing key.
    pub kid: String,
    /// Account (iss).
    pub account: String,
    /// Agent (sub).
    pub agent: String,
    /// Command kind, or `key-log:<op>` for key-log events.
    pub cmd: String,
    /// Target device of a single-device command.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub audience: Option<String>,
    /// Number of devices of a batch command.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_size: Option<usize>,
    /// The command's nonce (hex); with the kid, what a device's replay cache
    /// remembers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cti: Option<String>,
}

/// The append side, shared by the daemon's handlers.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, owner-only) the log at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = crate::paths::open_private(path, crate::paths::Open::Append)?;
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends one entry. A signature whose entry cannot be written is not
    /// handed out: the caller fails the request.
    pub fn append(&self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every complete entry; the count of unreadable lines comes second.
pub fn read(path: &Path) -> io::Result<(Vec<Entry>, usize)> {
    let f = match crate::paths::open_private(path, crate::paths::Open::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], 0)),
        Err(e) => return Err(e),
    };
    let mut entries = vec![];
    let mut bad = 0;
    for line in io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(e) => entries.push(e),
            Err(_) => bad += 1,
        }
    }
    Ok((entries, bad))
}
