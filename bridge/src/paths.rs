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
        if let Some(home) = std::env::var_os("KEYBRIDGE_HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            return Paths {
                config: home.join("config"),
                state: home.join("state"),
                runtime: home.join("run"),
            };
        }
        let user_home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        // The XDG spec: a relative value is invalid and must be ignored.
        let absolute = |v: &std::ffi::OsString| Path::new(v).is_absolute();
        let xdg = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(absolute)
                .map(PathBuf::from)
                .unwrap_or_else(|| user_home.join(default))
                .join("keybridge")
        };
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(absolute)
            .map(|d| PathBuf::from(d).join("keybridge"))
            .unwrap_or_else(|| {
                PathBuf::from(format!(
                    "/tmp/keybridge-{}",
                    rustix::process::getuid().as_raw()
                ))
            });
        Paths {
            config: xdg("XDG_CONFIG_HOME", ".config"),
            state: xdg("XDG_STATE_HOME", ".local/state"),
            runtime,
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
    let mut tmp = tempfile::Builder::new()
        .prefix(".keybridge-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}
