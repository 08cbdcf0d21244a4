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
        let xdg = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| user_home.join(default))
                .join("keybridge")
        };
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
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

/// Creates `dir` (and parents) readable by the owner only.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync,
/// rename, fsync of the folder): readers and crashes see the old file or the
/// new one, never a mix. The file is created owner-only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut nonce = [0u8; 6];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        keybridge_protocol::key::hex(&nonce)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
