//! The device's state folder: per account, the trusted key log, the replay
//! cache and the settings. Every write is atomic (a fresh temp file with an
//! unpredictable name, fsync, rename, fsync of the folder) and every
//! read-modify-write holds an exclusive lock, so two `verify` processes can
//! never both accept the same command.
//!
//! The lock file and the state files are opened without following symbolic
//! links (`O_NOFOLLOW`), are created mode 0600 whatever the umask, and are
//! read at most up to a size limit each ([`MAX_LOG_LEN`],
//! [`MAX_REPLAY_LEN`], [`MAX_SETTINGS_LEN`]).

use keybridge_protocol::replay::{DEFAULT_CAPACITY, ReplayCache};
use keybridge_protocol::verify::DEFAULT_SKEW;
use keybridge_protocol::{KeyLog, LogError};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Default state folder.
pub const DEFAULT_STATE: &str = "/var/lib/keybridge-device";
/// Largest key log read, from a file given to `trust` or from the state
/// folder (16 MiB: tens of thousands of events).
pub const MAX_LOG_LEN: usize = 16 * 1024 * 1024;
/// Largest replay cache file read (16 MiB; a full cache — 100,000 command
/// and 10,000 time-sync entries of ~60 bytes — is under 7 MB).
pub const MAX_REPLAY_LEN: usize = 16 * 1024 * 1024;
/// Largest settings file read.
pub const MAX_SETTINGS_LEN: usize = 64 * 1024;
/// Mode of every file the device creates in its state folder.
const FILE_MODE: u32 = 0o600;

/// Why a size-limited read failed.
#[derive(Debug)]
pub enum ReadError {
    /// The file is larger than the limit; it was not read past it.
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// Opening or reading failed.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge { limit } => {
                write!(f, "larger than the {limit}-byte limit; not read")
            }
            ReadError::Io(e) => e.fmt(f),
        }
    }
}

/// Reads all of `file`, but never more than `limit` bytes: a larger file
/// (by its size, or by what it yields, for pipes and devices) is refused
/// having read at most `limit + 1` bytes.
pub fn read_bounded(mut file: File, limit: usize) -> Result<Vec<u8>, ReadError> {
    let size = file.metadata()?.len();
    if size > limit as u64 {
        return Err(ReadError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(size as usize);
    (&mut file).take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(out)
}

/// Opens `path` with `options`, never following a symbolic link at its
/// last component (`O_NOFOLLOW`).
fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    options.custom_flags(nofollow).open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            io::Error::other("is a symbolic link; refusing to follow it")
        } else {
            e
        }
    })
}

/// Reads the state file `path` (no symbolic link) up to `limit` bytes.
fn read_state_file(path: &Path, limit: usize) -> Result<Vec<u8>, StateError> {
    let file = open_nofollow(path, OpenOptions::new().read(true)).map_err(io_err(path))?;
    read_bounded(file, limit).map_err(|e| match e {
        ReadError::Io(source) => StateError::Io {
            path: path.to_owned(),
            source,
        },
        too_large => StateError::Corrupt {
            path: path.to_owned(),
            what: too_large.to_string(),
        },
    })
}

/// State errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No account is trusted under that name.
    #[error(
        "this device trusts no account {0:?}; deploy it with `keybridge-device trust init LOG --device-id ID`"
    )]
    NotTrusted(String),
    /// `trust init` for an account already trusted.
    #[error(
        "account {0:?} is already trusted here; use `trust update` to take a newer log (a different log for the same account is refused)"
    )]
    AlreadyTrusted(String),
    /// The stored log no longer verifies (tampered disk).
    #[error("the stored key log is invalid: {0}")]
    StoredLog(LogError),
    /// A state file is unreadable.
    #[error("state file {path}: {what}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Settings of one trusted account on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This device's id, as commands name it in `aud` or a batch.
    pub device_id: String,
    /// Clock skew tolerance, seconds.
    pub skew: i64,
}

impl Settings {
    fn to_json(&self) -> String {
        serde_json::json!({"device_id": self.device_id, "skew": self.skew}).to_string() + "\n"
    }

    fn from_json(s: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        Some(Settings {
            device_id: v.get("device_id")?.as_str()?.to_owned(),
            skew: v
                .get("skew")
                .and_then(|s| s.as_i64())
                .unwrap_or(DEFAULT_SKEW),
        })
    }
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct State {
    root: PathBuf,
}

/// One account's state, loaded under its lock.
pub struct Account {
    dir: PathBuf,
    _lock: File,
    /// The trusted log.
    pub log: KeyLog,
    /// Commands already accepted.
    pub replay: ReplayCache,
    /// Device settings.
    pub settings: Settings,
}

impl State {
    /// The state under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        State { root: root.into() }
    }

    /// Folder of `account`. Account ids that are not plain file names are
    /// hex-encoded, so no id can escape the state folder. A plain name never
    /// starts with `hex-`, so that no two ids share a folder (the name
    /// `hex-412042` is itself hex-encoded rather than taking the folder of
    /// `A B`).
    fn account_dir(&self, account: &str) -> PathBuf {
        let plain = !account.is_empty()
            && account.len() <= 128
            && !account.starts_with('.')
            && !account.starts_with("hex-")
            && account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        let name = if plain {
            account.to_owned()
        } else {
            format!("hex-{}", keybridge_protocol::key::hex(account.as_bytes()))
        };
        self.root.join("accounts").join(name)
    }

    fn lock(dir: &Path) -> Result<File, StateError> {
        let path = dir.join(".lock");
        let f = open_nofollow(
            &path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(FILE_MODE),
        )
        .map_err(io_err(&path))?;
        // Exactly 0600, whatever the umask took away or an older version
        // left.
        f.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    /// Deployment: `log` becomes this device's trust for its account.
    pub fn init(&self, log: &KeyLog, settings: &Settings) -> Result<(), StateError> {
        let dir = self.account_dir(log.account());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = Self::lock(&dir)?;
        if dir.join("log.cbor").exists() {
            return Err(StateError::AlreadyTrusted(log.account().to_owned()));
        }
        write_atomic(&dir.join("settings.json"), settings.to_json().as_bytes())?;
        write_atomic(&dir.join("replay.cbor"), &ReplayCache::default().to_bytes())?;
        // The log last: its presence is what makes the account trusted.
        write_atomic(&dir.join("log.cbor"), &log.to_bytes())
    }

    /// Loads `account` and holds its lock until the returned value drops.
    pub fn open(&self, account: &str) -> Result<Account, StateError> {
        let dir = self.account_dir(account);
        let log_path = dir.join("log.cbor");
        if !log_path.exists() {
            return Err(StateError::NotTrusted(account.to_owned()));
        }
        let lock = Self::lock(&dir)?;
        let log_bytes = read_state_file(&log_path, MAX_LOG_LEN)?;
        let log = KeyLog::from_bytes(&log_bytes).map_err(StateError::StoredLog)?;
        let replay_path = dir.join("replay.cbor");
        let replay = ReplayCache::from_bytes(
            &read_state_file(&replay_path, MAX_REPLAY_LEN)?,
            DEFAULT_CAPACITY,
        )
        .map_err(|e| StateError::Corrupt {
            path: replay_path.clone(),
            what: e.to_string(),
        })?;
        let settings_path = dir.join("settings.json");
        let settings = read_state_file(&settings_path, MAX_SETTINGS_LEN).and_then(|s| {
            std::str::from_utf8(&s)
                .ok()
                .and_then(Settings::from_json)
                .ok_or_else(|| StateError::Corrupt {
                    path: settings_path.clone(),
                    what: "not valid settings JSON".into(),
                })
        })?;
        Ok(Account {
            dir,
            _lock: lock,
            log,
            replay,
            settings,
        })
    }

    /// Every trusted account id.
    pub fn accounts(&self) -> Result<Vec<String>, StateError> {
        let dir = self.root.join("accounts");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = vec![];
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let log_path = entry.path().join("log.cbor");
            if let Ok(bytes) = read_state_file(&log_path, MAX_LOG_LEN) {
                let log = KeyLog::from_bytes(&bytes).map_err(StateError::StoredLog)?;
                out.push(log.account().to_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Account {
    /// Persists the replay cache (before the device acts on a command).
    pub fn save_replay(&self) -> Result<(), StateError> {
        write_atomic(&self.dir.join("replay.cbor"), &self.replay.to_bytes())
    }

    /// Replaces the trusted log (the caller has verified the extension).
    pub fn save_log(&mut self, log: KeyLog) -> Result<(), StateError> {
        write_atomic(&self.dir.join("log.cbor"), &log.to_bytes())?;
        self.log = log;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a mix, even across a crash. The temp file is created
/// afresh (`O_EXCL`, so never through a planted symbolic link) under an
/// unpredictable name in the same folder, mode 0600; on failure it is
/// removed. The rename replaces a symbolic link at `path` itself, never
/// writing through it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let write = || -> io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(Permissions::from_mode(FILE_MODE))
            .tempfile_in(dir)?;
        tmp.as_file()
            .set_permissions(Permissions::from_mode(FILE_MODE))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn write_atomic_does_not_write_through_a_symlink_at_a_temp_path() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("replay.cbor");
        // The temp name earlier versions used, predictable from the pid.
        let planted = dir
            .path()
            .join(format!(".replay.cbor.tmp{}", std::process::id()));
        symlink(&victim, &planted).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&target).unwrap(), b"new");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, FILE_MODE);
        // A link at the target itself is replaced, never written through.
        fs::remove_file(&target).unwrap();
        symlink(&victim, &target).unwrap();
        write_atomic(&target, b"newer").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&target).unwrap().file_type().is_file());
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        // No temp file is left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn state_files_are_not_read_through_symlinks_nor_past_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"0123456789").unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let e = read_state_file(&link, 100).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(read_state_file(&real, 10).unwrap(), b"0123456789");
        let e = read_state_file(&real, 9).unwrap_err();
        assert!(e.to_string().contains("9-byte limit"), "{e}");
    }
}
