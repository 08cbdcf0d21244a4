//! The audit log: one JSON line per signature (DESIGN.md §6).
//!
//! Each line is written with a single `write` on a file opened `O_APPEND`,
//! under a mutex, so concurrent signatures never interleave and a crash
//! leaves at most one incomplete last line, which the reader reports and
//! skips.
//!
//! A line says which key signed (`kid`, `backend`); a signature by agent
//! that fell back to a later key also has `"fallback": true` and the kids
//! of the keys passed over (`skipped`). Lines written before these fields
//! existed read with `backend` empty and no fallback.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The Merkle root (hex) a batch command signed, with its size: the
    /// set of devices it is for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_root: Option<String>,
    /// The command's nonce (hex); with the kid, what a device's replay cache
    /// remembers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cti: Option<String>,
    /// The signing key's backend (`passphrase`, `pkcs11`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backend: Option<String>,
    /// Signed by agent with a later key than the agent's first.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub fallback: bool,
    /// Hex kids of the keys passed over (their tokens were not there), in
    /// the order they were tried.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub skipped: Vec<String>,
}

/// The append side, shared by the daemon's handlers.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, owner-only) the log at `path`. A last line without
    /// its newline (a crash mid-append: that signature was never handed
    /// out) is ended here, kept as the unreadable line it is, so that the
    /// next entry starts a line of its own.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = crate::paths::open_private(path, crate::paths::Open::Append)?;
        if ends_torn(path)? {
            file.write_all(b"\n")?;
            file.sync_all()?;
            tracing::warn!(path = %path.display(), "the audit log's last line was cut short by a crash; ended it");
        }
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends one entry. A signature whose entry cannot be written is not
    /// handed out: the caller fails the request. A write that fails part
    /// way (the disk full) is cut back off, so the log stays whole lines.
    pub fn append(&self, entry: &Entry) -> io::Result<()> {
        use keybridge_protocol::crash;
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let before = f.metadata()?.len();
        if crash::armed("audit:half", &self.path) {
            let _ = f.write_all(&line[..line.len() / 2]);
            crash::abort("audit:half", &self.path);
        }
        if let Err(e) = f.write_all(&line) {
            if f.metadata().is_ok_and(|m| m.len() > before) && f.set_len(before).is_err() {
                tracing::error!(path = %self.path.display(), "a failed audit write could not be cut back");
            }
            return Err(e);
        }
        crash::point("audit:written", &self.path);
        Ok(())
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the file at `path` is non-empty and does not end with a newline.
fn ends_torn(path: &Path) -> io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = crate::paths::open_private(path, crate::paths::Open::Read)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_short_by_a_crash_is_ended_at_open_and_the_next_one_reads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.jsonl");
        let entry = |cti: &str| Entry {
            time: 1,
            kid: "ab".into(),
            cti: Some(cti.into()),
            ..Entry::default()
        };
        AuditLog::open(&path).unwrap().append(&entry("01")).unwrap();
        // A crash half way through the second line.
        let second = serde_json::to_vec(&entry("02")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&second[..second.len() / 2]).unwrap();
        drop(f);

        let log = AuditLog::open(&path).unwrap();
        log.append(&entry("03")).unwrap();
        let (entries, bad) = read(&path).unwrap();
        let ctis: Vec<_> = entries.iter().map(|e| e.cti.clone().unwrap()).collect();
        assert_eq!(ctis, ["01", "03"]);
        assert_eq!(bad, 1, "the cut line stays, as an unreadable line");
        // Opening again changes nothing more.
        drop(log);
        let before = std::fs::read(&path).unwrap();
        AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn fallback_lines_say_which_key_and_old_lines_still_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let plain = Entry {
            time: 1,
            kid: "aa".into(),
            account: "acme".into(),
            agent: "alice".into(),
            cmd: "create-alert".into(),
            audience: Some("d".into()),
            backend: Some("pkcs11".into()),
            ..Entry::default()
        };
        let fell_back = Entry {
            kid: "bb".into(),
            backend: Some("passphrase".into()),
            fallback: true,
            skipped: vec!["aa".into()],
            ..plain.clone()
        };
        log.append(&plain).unwrap();
        log.append(&fell_back).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines[0].contains("fallback") && !lines[0].contains("skipped"));
        assert!(
            lines[1].contains(r#""fallback":true"#) && lines[1].contains(r#""skipped":["aa"]"#)
        );
        // A line of an older version.
        std::fs::write(
            &path,
            format!(
                "{text}{}\n",
                r#"{"time":1,"kid":"cc","account":"acme","agent":"alice","cmd":"run-script","audience":"d","cti":"00"}"#
            ),
        )
        .unwrap();
        let (entries, bad) = read(&path).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(entries[..2], [plain, fell_back]);
        assert_eq!(entries[2].backend, None);
        assert!(!entries[2].fallback && entries[2].skipped.is_empty());
    }
}
