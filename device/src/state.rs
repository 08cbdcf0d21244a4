//! The device's state folder: per account, the trusted key log, the replay
//! cache and the settings. Every write is atomic (temp file, fsync, rename,
//! fsync of the folder) and every read-modify-write holds an exclusive lock,
//! so two `verify` processes can never both accept the same command.

use keybridge_protocol::replay::{DEFAULT_CAPACITY, ReplayCache};
use keybridge_protocol::verify::DEFAULT_SKEW;
use keybridge_protocol::{KeyLog, LogError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Default state folder.
pub const DEFAULT_STATE: &str = "/var/lib/keybridge-device";

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
    /// hex-encoded, so no id can escape the state folder.
    fn account_dir(&self, account: &str) -> PathBuf {
        let plain = !account.is_empty()
            && account.len() <= 128
            && !account.starts_with('.')
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
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
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
        let log_bytes = fs::read(&log_path).map_err(io_err(&log_path))?;
        let log = KeyLog::from_bytes(&log_bytes).map_err(StateError::StoredLog)?;
        let replay_path = dir.join("replay.cbor");
        let replay = match fs::read(&replay_path) {
            Ok(b) => {
                ReplayCache::from_bytes(&b, DEFAULT_CAPACITY).map_err(|e| StateError::Corrupt {
                    path: replay_path.clone(),
                    what: e.to_string(),
                })?
            }
            Err(e) => return Err(io_err(&replay_path)(e)),
        };
        let settings_path = dir.join("settings.json");
        let settings = fs::read_to_string(&settings_path)
            .map_err(io_err(&settings_path))
            .and_then(|s| {
                Settings::from_json(&s).ok_or_else(|| StateError::Corrupt {
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
            if let Ok(bytes) = fs::read(&log_path) {
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
/// new one, never a mix, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}
