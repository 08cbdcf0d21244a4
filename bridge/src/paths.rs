//! Where keybridge keeps its files (DESIGN.md §6).
//!
//! - config: `$XDG_CONFIG_HOME/keybridge/` (default `~/.config/keybridge/`)
//! - state: `$XDG_STATE_HOME/keybridge/` (default `~/.local/state/keybridge/`)
//! - socket: `$XDG_RUNTIME_DIR/keybridge/bridge.sock`
//!
//! `KEYBRIDGE_HOME` puts all three under one folder (`config/`, `state/`,
//! `run/`); the tests use it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The folders of one user's keybridge.
#[derive(Debug, Clone)]
pub struct Paths {
    /// User configuration (`config.toml`).
    pub config: PathBuf,
    /// Keys, audit log.
    pub state: PathBuf,
    /// The daemon's socket and lock.
    pub runtime: PathBuf,
}

impl Paths {
    /// From the environment, as described in the module docs.
    pub fn from_env() -> Self {
        Self::from_vars(
            |name| std::env::var_os(name),
            rustix::process::getuid().as_raw(),
        )
    }

    /// From the variables `var` gives, for user `uid`. The XDG Base
    /// Directory rules: an empty or relative value is invalid and ignored
    /// (the default applies). Written out rather than taken from a crate:
    /// the XDG crates have no `/tmp/keybridge-<uid>` runtime fallback and no
    /// `KEYBRIDGE_HOME`, which are most of this, and the rule is tested.
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>, uid: u32) -> Self {
        if let Some(home) = var("KEYBRIDGE_HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            return Paths {
                config: home.join("config"),
                state: home.join("state"),
                runtime: home.join("run"),
            };
        }
        let valid = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
        let user_home = valid("HOME").unwrap_or_else(|| PathBuf::from("/"));
        let xdg = |name: &str, default: &str| {
            valid(name)
                .unwrap_or_else(|| user_home.join(default))
                .join("keybridge")
        };
        Paths {
            config: xdg("XDG_CONFIG_HOME", ".config"),
            state: xdg("XDG_STATE_HOME", ".local/state"),
            runtime: valid("XDG_RUNTIME_DIR")
                .map(|d| d.join("keybridge"))
                .unwrap_or_else(|| PathBuf::from(format!("/tmp/keybridge-{uid}"))),
        }
    }

    /// The daemon's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime.join("bridge.sock")
    }

    /// One JSON file per key.
    pub fn keys_dir(&self) -> PathBuf {
        self.state.join("keys")
    }

    /// The audit log (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.jsonl")
    }

    /// The user's configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }
}

/// Creates `dir` (and parents) readable by the owner only, and checks that
/// it is what it must be: a real folder (not a symlink), owned by this
/// user, that no one else can write to. A folder planted by another user
/// (say `/tmp/keybridge-1000`, made by someone else first) is refused.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    check_private_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Checks that `dir` is a real folder owned by this user that no one else
/// can write to (see [`private_dir`]). Used by the daemon before it binds
/// and by every client before it connects.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::symlink_metadata(dir)?;
    let uid = rustix::process::getuid().as_raw();
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}; refusing to use it (another user may have made it to intercept keybridge: remove it, or set XDG_RUNTIME_DIR)",
                dir.display()
            ),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("is not a folder".into());
    }
    if meta.uid() != uid {
        return refuse(format!(
            "belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "can be written by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// How [`open_private`] opens a state file.
#[derive(Debug, Clone, Copy)]
pub enum Open {
    /// A lock file: created if missing, never truncated.
    Lock,
    /// An append-only log: created if missing.
    Append,
    /// Read only.
    Read,
}

/// Opens a state file without following a symlink at its name (`O_NOFOLLOW`:
/// a link planted in a state folder makes the open fail instead of
/// truncating or appending to its target), creating it owner-only (0600,
/// whatever the umask).
pub fn open_private(path: &Path, how: Open) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = fs::OpenOptions::new();
    match how {
        Open::Lock => o.write(true).create(true).truncate(false),
        Open::Append => o.append(true).create(true),
        Open::Read => o.read(true),
    };
    // The mode only applies at creation, and the umask can only remove bits.
    o.mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Writes `bytes` to `path` atomically (a fresh temp file in the same
/// folder — random name, `O_EXCL`, 0600 —, fsync, rename, fsync of the
/// folder): readers and crashes see the old file or the new one, never a
/// mix. The rename replaces a symlink at `path` rather than writing through
/// it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    use keybridge_protocol::crash;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    crash::point("write:created", path);
    if crash::armed("write:half", path) {
        tmp.write_all(&bytes[..bytes.len() / 2])?;
        crash::abort("write:half", path);
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    crash::point("write:synced", path);
    tmp.persist(path).map_err(|e| e.error)?;
    crash::point("write:renamed", path);
    fs::File::open(dir)?.sync_all()
}

/// [`write_atomic`]'s temp files: `.keybridge-RANDOM.tmp`.
const TEMP_PREFIX: &str = ".keybridge-";
const TEMP_SUFFIX: &str = ".tmp";

/// Removes the temp files a crash in [`write_atomic`] left in `dir` (only
/// regular files of that exact shape; a symbolic link is not followed);
/// returns how many. Run at start-up, when no write of ours is under way
/// (the daemon holds its state lock).
pub fn remove_leftover_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let shaped = name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
            && name.starts_with(TEMP_PREFIX)
            && name.ends_with(TEMP_SUFFIX);
        if shaped && e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn paths(vars: &[(&str, &str)]) -> Paths {
        let vars: HashMap<String, std::ffi::OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        Paths::from_vars(|name| vars.get(name).cloned(), 1000)
    }

    #[test]
    fn xdg_values_that_are_relative_or_empty_are_ignored() {
        let p = paths(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "relative/cfg"),
            ("XDG_STATE_HOME", ""),
            ("XDG_RUNTIME_DIR", "run"),
        ]);
        assert_eq!(p.config, Path::new("/home/u/.config/keybridge"));
        assert_eq!(p.state, Path::new("/home/u/.local/state/keybridge"));
        assert_eq!(p.runtime, Path::new("/tmp/keybridge-1000"));
        let p = paths(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/c"),
            ("XDG_STATE_HOME", "/s"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]);
        assert_eq!(p.config, Path::new("/c/keybridge"));
        assert_eq!(p.state, Path::new("/s/keybridge"));
        assert_eq!(
            p.socket(),
            Path::new("/run/user/1000/keybridge/bridge.sock")
        );
    }

    #[test]
    fn keybridge_home_puts_everything_under_one_folder() {
        let p = paths(&[("KEYBRIDGE_HOME", "/k"), ("XDG_STATE_HOME", "/s")]);
        assert_eq!(
            (p.config, p.state, p.runtime),
            ("/k/config".into(), "/k/state".into(), "/k/run".into())
        );
    }

    #[test]
    fn foreign_or_open_folders_are_refused_and_atomic_writes_replace_links() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("private");
        private_dir(&dir).unwrap();
        check_private_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_private_dir(&dir).is_err(), "world-writable");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check_private_dir(&link).is_err(), "a symlink");
        // write_atomic replaces a symlink at the path instead of writing
        // through it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let target = d.path().join("target");
        fs::write(&target, "precious").unwrap();
        let file = dir.join("state.json");
        std::os::unix::fs::symlink(&target, &file).unwrap();
        write_atomic(&file, b"new").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }
}
