//! The device's state folder: per account, the trusted key log and what
//! verifying it left behind, the replay cache, the settings and the
//! hardware policy. Every write is atomic (a fresh temp file with an
//! unpredictable name, fsync, rename, fsync of the folder) and every
//! read-modify-write holds an exclusive lock, so two `verify` processes can
//! never both accept the same command.
//!
//! Per account, `accounts/<account>/`:
//!
//! | file | what | read by |
//! |---|---|---|
//! | `log.cbor` | the key log as taken: the record; appended to by `trust update` | `trust update` (and a migration or a repair) |
//! | `trust.cbor` | the [`Trust`] the log leaves behind, without the keys that left ([`Trust::to_bytes`], [`Trust::take_revoked`]): active keys, recovery key, threshold, proposals | `trust update`, `trust show` |
//! | `keys.idx` | the active keys, and an index of the keys that left ([`keys_index`]) | `verify`, `trust update` (the keys that left its new events name) |
//! | `hardware.json` | the residency evidence of active keys and its verdicts ([`policy`]) | `verify` under a rule, `policy` |
//! | `policy.json` | the hardware policy ([`policy`]) | `verify`, `policy` |
//! | `replay.cbor`, `settings.json` | accepted commands; device id and skew | `verify` |
//!
//! The log is verified once, when it is taken (`trust init`, `trust
//! update`: only the new events); `verify` never reads it, so a device's
//! cost per command does not grow with the log. Nor does `trust update`'s
//! cost, but for one comparison: it reads the trusted history of the
//! offered log and of `log.cbor` piece by piece to compare them byte for
//! byte (1.3 ms for 4 MB), parses nothing of it, and reads from `keys.idx`
//! only the keys that left that the new events name.
//!
//! **What is committed, and the crash rule.** `trust update` writes, in
//! order: the new events appended to `log.cbor` (fsync), `hardware.json`,
//! `trust.cbor`, `keys.idx`. `keys.idx` is written last: it is what
//! `verify` reads, and it records the length of `log.cbor` and where its
//! last event starts. Before taking a log, `trust update` checks that the
//! files agree: `trust.cbor`, `keys.idx` and `hardware.json` name the same
//! length and head, and `log.cbor` has the recorded length and its last
//! event hashes to that head. When they do not (a crash between two of
//! those writes):
//!
//! - `log.cbor` longer than recorded, the rest agreeing: an append that was
//!   never committed: `log.cbor` is cut back to the recorded length;
//! - anything else: the state is rebuilt from `log.cbor`, verified whole
//!   once, provided it extends the trust state on record (same event at
//!   the trusted head: never a rollback); if it does not verify or does not
//!   extend it, nothing is changed and the update is refused (exit 32),
//!   saying so.
//!
//! Until then `verify` keeps using the last `keys.idx` written: the state
//! before the interrupted update. A folder written by an older version
//! (`log.cbor` without `trust.cbor`, `keys.idx`, `hardware.json`) is
//! migrated on its first open: the log is verified once and those files
//! are written.
//!
//! An account is trusted when `log.cbor` exists; `trust init` writes it
//! last.
//!
//! The lock file and the state files are opened without following symbolic
//! links (`O_NOFOLLOW`), are created mode 0600 whatever the umask, and are
//! read at most up to a size limit each ([`MAX_LOG_LEN`], [`MAX_TRUST_LEN`],
//! [`MAX_REPLAY_LEN`], [`MAX_SETTINGS_LEN`], [`policy::MAX_POLICY_LEN`],
//! [`policy::MAX_HARDWARE_LEN`]; `keys.idx` is read by its header's
//! lengths, checked against its size).

use crate::keys_index::{self, KeysIndex};
use crate::policy::{self, Hardware, Policy};
use keybridge_protocol::log::Event;
use keybridge_protocol::replay::{DEFAULT_CAPACITY, ReplayCache};
use keybridge_protocol::verify::DEFAULT_SKEW;
use keybridge_protocol::{KeyLog, LogError, MAX_ENVELOPE_LEN, Trust};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Default state folder.
pub const DEFAULT_STATE: &str = "/var/lib/keybridge-device";
/// Largest key log read, from a file given to `trust` or from the state
/// folder (16 MiB: tens of thousands of events).
pub const MAX_LOG_LEN: usize = 16 * 1024 * 1024;
/// Largest trust snapshot read (it grows with the keys that ever left).
pub const MAX_TRUST_LEN: usize = 16 * 1024 * 1024;
/// Largest replay cache file read (16 MiB; a full cache — 100,000 command
/// and 10,000 time-sync entries of ~60 bytes — is under 7 MB).
pub const MAX_REPLAY_LEN: usize = 16 * 1024 * 1024;
/// Largest settings file read.
pub const MAX_SETTINGS_LEN: usize = 64 * 1024;
/// Mode of every file the device creates in its state folder.
const FILE_MODE: u32 = 0o600;

const LOG: &str = "log.cbor";
const TRUST: &str = "trust.cbor";
const KEYS: &str = "keys.idx";
const HARDWARE: &str = "hardware.json";
const POLICY: &str = "policy.json";
const REPLAY: &str = "replay.cbor";
const SETTINGS: &str = "settings.json";

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
    /// The stored log does not verify (tampered or damaged disk), when it
    /// had to be read: a migration, or a repair after an interrupted
    /// update.
    #[error(
        "the stored key log {path} is invalid: {source}; nothing was changed (commands still verify against the trust state on record) — restore that file from a backup, or re-deploy the account (remove its folder, then `trust init`)"
    )]
    StoredLog {
        /// `log.cbor`.
        path: PathBuf,
        /// Why it does not verify.
        source: LogError,
    },
    /// The stored log verifies but is not the log the trust state was made
    /// from (it does not reach the trusted head).
    #[error(
        "the stored key log {path} does not match this device's trust state ({what}); nothing was changed (commands still verify against the trust state on record) — restore that file from a backup, or re-deploy the account (remove its folder, then `trust init`)"
    )]
    StoredLogMismatch {
        /// `log.cbor`.
        path: PathBuf,
        /// How.
        what: String,
    },
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

/// Why `trust update` did not take a log.
#[derive(Debug)]
pub enum UpdateError {
    /// The state folder.
    State(StateError),
    /// The offered log: a rollback, a fork, or events that do not verify.
    Log(LogError),
}

impl From<StateError> for UpdateError {
    fn from(e: StateError) -> Self {
        UpdateError::State(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> StateError {
    StateError::Corrupt {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// Whether `path` exists, without following a symbolic link (a link is
/// there: reading it is then refused).
fn present(path: &Path) -> Result<bool, StateError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
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

/// One account's state, under its lock: the settings and the replay cache
/// loaded, the rest read on demand.
pub struct Account {
    dir: PathBuf,
    _lock: File,
    /// Commands already accepted.
    pub replay: ReplayCache,
    /// Device settings.
    pub settings: Settings,
}

/// What `trust update` did.
#[derive(Debug)]
pub struct Updated {
    /// Events taken.
    pub added: u64,
    /// Events trusted now.
    pub len: u64,
    /// A repair of an interrupted earlier update, done first.
    pub repaired: Option<String>,
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

    /// Deployment: `log` (verified) becomes this device's trust for its
    /// account.
    pub fn init(&self, log: &KeyLog, settings: &Settings) -> Result<(), StateError> {
        let dir = self.account_dir(log.account());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = Self::lock(&dir)?;
        if present(&dir.join(LOG))? {
            return Err(StateError::AlreadyTrusted(log.account().to_owned()));
        }
        let policy = read_policy(&dir)?;
        write_atomic(&dir.join(SETTINGS), settings.to_json().as_bytes())?;
        write_atomic(&dir.join(REPLAY), &ReplayCache::default().to_bytes())?;
        let bytes = log.to_bytes();
        write_derived(&dir, log, &bytes, &policy)?;
        // The log last: its presence is what makes the account trusted.
        write_atomic(&dir.join(LOG), &bytes)
    }

    /// Loads `account` and holds its lock until the returned value drops.
    /// A folder of an older version (no trust state next to its log) is
    /// migrated first.
    pub fn open(&self, account: &str) -> Result<Account, StateError> {
        let dir = self.account_dir(account);
        if !present(&dir.join(LOG))? {
            return Err(StateError::NotTrusted(account.to_owned()));
        }
        let lock = Self::lock(&dir)?;
        let mut missing = false;
        for name in [TRUST, KEYS, HARDWARE] {
            missing |= !present(&dir.join(name))?;
        }
        if missing {
            migrate(&dir)?;
        }
        let replay_path = dir.join(REPLAY);
        let replay = ReplayCache::from_bytes(
            &read_state_file(&replay_path, MAX_REPLAY_LEN)?,
            DEFAULT_CAPACITY,
        )
        .map_err(|e| corrupt(&replay_path, e.to_string()))?;
        let settings_path = dir.join(SETTINGS);
        let settings = read_state_file(&settings_path, MAX_SETTINGS_LEN).and_then(|s| {
            std::str::from_utf8(&s)
                .ok()
                .and_then(Settings::from_json)
                .ok_or_else(|| corrupt(&settings_path, "not valid settings JSON"))
        })?;
        Ok(Account {
            dir,
            _lock: lock,
            replay,
            settings,
        })
    }

    /// Every trusted account id: from each folder's `keys.idx`, or for a
    /// folder not migrated yet from the first event of its log (read, not
    /// verified: the account's own open verifies it).
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
            let folder = entry.path();
            if !present(&folder.join(LOG))? {
                continue;
            }
            let name = match read_keys(&folder) {
                Ok(keys) => keys.view.account().to_owned(),
                Err(_) => {
                    let path = folder.join(LOG);
                    let file = open_nofollow(&path, OpenOptions::new().read(true))
                        .map_err(io_err(&path))?;
                    let mut first = Vec::new();
                    file.take(MAX_ENVELOPE_LEN as u64 + 1)
                        .read_to_end(&mut first)
                        .map_err(io_err(&path))?;
                    KeyLog::peek_account(&first).map_err(|source| StateError::StoredLog {
                        path: path.clone(),
                        source,
                    })?
                }
            };
            out.push(name);
        }
        out.sort();
        Ok(out)
    }
}

/// The verified `log` (whose bytes are `bytes`) of the account in `dir`:
/// its evidence judged against `policy`, its trust snapshot (without the
/// keys that left) and its keys index (with them), written in that order.
fn write_derived(
    dir: &Path,
    log: &KeyLog,
    bytes: &[u8],
    policy: &Policy,
) -> Result<(), StateError> {
    let last = log.events().last().expect("a log has its genesis");
    let hardware = Hardware::build(
        log.trust(),
        None,
        &policy::requests_of(log.events(), None),
        policy,
    );
    let mut trust = log.trust().clone();
    let gone = trust.take_revoked();
    let index = keys_index::encode(
        &trust,
        &gone,
        bytes.len() as u64,
        (bytes.len() - last.bytes().len()) as u64,
    )
    .map_err(|e| corrupt(&dir.join(KEYS), e))?;
    write_state(dir, &hardware, &trust, &index)
}

/// Writes what a trust update commits, `keys.idx` last (see the module
/// documentation): `hardware.json`, `trust.cbor` (`trust`, without the
/// keys that left) and `keys.idx` (`index`, which holds them).
fn write_state(
    dir: &Path,
    hardware: &Hardware,
    trust: &Trust,
    index: &[u8],
) -> Result<(), StateError> {
    write_atomic(&dir.join(HARDWARE), &hardware.to_json())?;
    write_atomic(&dir.join(TRUST), &trust.to_bytes())?;
    write_atomic(&dir.join(KEYS), index)
}

/// A folder of an older version: its log verified once, the files that
/// keep what it left written.
fn migrate(dir: &Path) -> Result<(), StateError> {
    let path = dir.join(LOG);
    let bytes = read_state_file(&path, MAX_LOG_LEN)?;
    let log = KeyLog::from_bytes(&bytes).map_err(|source| StateError::StoredLog {
        path: path.clone(),
        source,
    })?;
    write_derived(dir, &log, &bytes, &read_policy(dir)?)
}

fn read_keys(dir: &Path) -> Result<KeysIndex, StateError> {
    let path = dir.join(KEYS);
    let file = open_nofollow(&path, OpenOptions::new().read(true)).map_err(io_err(&path))?;
    KeysIndex::read(file).map_err(|e| {
        corrupt(
            &path,
            format!(
                "{e}; `keybridge-device trust update LOG` with the account's log rebuilds it from log.cbor"
            ),
        )
    })
}

/// `trust.cbor`: the trust without the keys that left (a snapshot of an
/// older version that still holds them has them dropped: `keys.idx` is
/// where they are kept).
fn read_trust(dir: &Path) -> Result<Trust, StateError> {
    let path = dir.join(TRUST);
    let mut trust = Trust::from_bytes(&read_state_file(&path, MAX_TRUST_LEN)?)
        .map_err(|e| corrupt(&path, e.to_string()))?;
    trust.take_revoked();
    Ok(trust)
}

fn read_hardware(dir: &Path) -> Result<Hardware, StateError> {
    let path = dir.join(HARDWARE);
    Hardware::from_json(&read_state_file(&path, policy::MAX_HARDWARE_LEN)?).map_err(|e| {
        corrupt(
            &path,
            format!(
                "{e}; `keybridge-device trust update LOG` with the account's log rebuilds it from log.cbor"
            ),
        )
    })
}

/// The account's policy; none (no file): no rule.
fn read_policy(dir: &Path) -> Result<Policy, StateError> {
    let path = dir.join(POLICY);
    if !present(&path)? {
        return Ok(Policy::default());
    }
    Policy::from_json(&read_state_file(&path, policy::MAX_POLICY_LEN)?).map_err(|e| {
        corrupt(
            &path,
            format!(
                "{e}; the policy is refused whole (every command of this account is refused until it is fixed): remove the file and set the policy again"
            ),
        )
    })
}

/// What the last complete update committed, when its files agree with each
/// other.
struct Committed {
    trust: Trust,
    hardware: Hardware,
    keys: KeysIndex,
}

/// Whether the event at `last..end` of the open `log.cbor` hashes to
/// `head` (one read of that event, bounded by the largest event there is).
fn ends_at(log: &File, last: u64, end: u64, head: [u8; 32]) -> io::Result<bool> {
    let Some(len) = end
        .checked_sub(last)
        .filter(|n| (1..=MAX_ENVELOPE_LEN as u64).contains(n))
    else {
        return Ok(false);
    };
    let mut event = vec![0; len as usize];
    match log.read_exact_at(&mut event, last) {
        Ok(()) => Ok(Sha256::digest(&event).as_slice() == head),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// A key log offered to `trust update`. A regular file is read where
/// needed (its size checked against [`MAX_LOG_LEN`] first); anything else
/// (a pipe) is read whole, at most [`MAX_LOG_LEN`] bytes.
pub struct OfferedLog {
    path: PathBuf,
    source: Offered,
    len: u64,
}

enum Offered {
    File(File),
    Bytes(Vec<u8>),
}

impl OfferedLog {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let (source, len) = if meta.is_file() {
            if meta.len() > MAX_LOG_LEN as u64 {
                return Err(ReadError::TooLarge { limit: MAX_LOG_LEN });
            }
            (Offered::File(file), meta.len())
        } else {
            let bytes = read_bounded(file, MAX_LOG_LEN)?;
            let len = bytes.len() as u64;
            (Offered::Bytes(bytes), len)
        };
        Ok(OfferedLog {
            path: path.to_owned(),
            source,
            len,
        })
    }

    /// Its length, bytes (when it was opened).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes `from..to` (`to` at most [`OfferedLog::len`]). A file that
    /// shrank since it was opened is an error.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        if from > to || to > self.len {
            return Err(io::Error::other("a read past the end of the offered log"));
        }
        // In range: `to` ≤ len ≤ MAX_LOG_LEN.
        let (from, to) = (from as usize, to as usize);
        match &self.source {
            Offered::Bytes(b) => Ok(b[from..to].to_vec()),
            Offered::File(f) => {
                let mut out = vec![0; to - from];
                f.read_exact_at(&mut out, from as u64)?;
                Ok(out)
            }
        }
    }

    /// Whether it starts with the first `len` bytes of `log` (a state
    /// file), compared piece by piece.
    fn starts_with_log(&self, log: &Path, len: u64) -> io::Result<bool> {
        const PIECE: u64 = 256 * 1024;
        let log = open_nofollow(log, OpenOptions::new().read(true))?;
        let mut ours = vec![0; PIECE.min(len) as usize];
        let mut at = 0;
        while at < len {
            let n = PIECE.min(len - at);
            let theirs = self.read(at, at + n)?;
            let ours = &mut ours[..n as usize];
            log.read_exact_at(ours, at)?;
            if *ours != theirs[..] {
                return Ok(false);
            }
            at += n;
        }
        Ok(true)
    }

    /// Its first event, or at most that many bytes: enough to name its
    /// account ([`KeyLog::peek_account`]).
    pub fn first_event(&self) -> io::Result<Vec<u8>> {
        self.read(0, self.len.min(MAX_ENVELOPE_LEN as u64 + 1))
    }
}

impl Account {
    /// The active keys and the index of the others: what `verify` checks a
    /// command against.
    pub fn keys(&self) -> Result<KeysIndex, StateError> {
        read_keys(&self.dir)
    }

    /// The whole trust state (`trust.cbor`).
    pub fn trust(&self) -> Result<Trust, StateError> {
        read_trust(&self.dir)
    }

    /// The hardware policy (no rule when there is none).
    pub fn policy(&self) -> Result<Policy, StateError> {
        read_policy(&self.dir)
    }

    /// The residency evidence of the active keys.
    pub fn hardware(&self) -> Result<Hardware, StateError> {
        read_hardware(&self.dir)
    }

    /// Persists the replay cache (before the device acts on a command).
    pub fn save_replay(&self) -> Result<(), StateError> {
        write_atomic(&self.dir.join(REPLAY), &self.replay.to_bytes())
    }

    /// Persists a new policy with the verdicts it needs: the verdicts
    /// first, so that the policy never names roots the keys were not judged
    /// against (and if it does after a crash, `verify` judges on the spot).
    pub fn save_policy(&self, policy: &Policy, hardware: &Hardware) -> Result<(), StateError> {
        write_atomic(&self.dir.join(HARDWARE), &hardware.to_json())?;
        write_atomic(&self.dir.join(POLICY), &policy.to_json())
    }

    /// Takes `offered` if it extends the trusted log. Of a regular file,
    /// only the trusted head event (at the offset the device's copy has
    /// it) and the new events after it are read; only the new events are
    /// verified (against the trust state, never re-reading the history),
    /// with the keys that left and that they name put back from
    /// `keys.idx`. A rollback, a fork or an invalid event changes nothing;
    /// those are refused on a slower path that compares the whole logs to
    /// say which it is. An interrupted earlier update is repaired first
    /// (see the module documentation).
    pub fn update(&mut self, offered: &OfferedLog) -> Result<Updated, UpdateError> {
        let policy = self.policy()?;
        let log_path = self.dir.join(LOG);
        let keys_path = self.dir.join(KEYS);
        let (committed, repaired) = self.committed()?;
        let Committed {
            mut trust,
            hardware,
            keys,
        } = committed;
        let read = |from, to| offered.read(from, to).map_err(io_err(&offered.path));
        let extends = offered.len() >= keys.log_bytes
            && Sha256::digest(read(keys.log_last, keys.log_bytes)?).as_slice() == trust.head()
            && offered
                .starts_with_log(&log_path, keys.log_bytes)
                .map_err(io_err(&log_path))?;
        if !extends {
            // Not an extension: the protocol's check names why (rollback,
            // fork, …), with both logs read whole, on this path only.
            let stored = read_state_file(&log_path, MAX_LOG_LEN)?;
            let whole = read(0, offered.len())?;
            trust
                .restore_revoked(keys.revoked().map_err(io_err(&keys_path))?)
                .map_err(|e| corrupt(&keys_path, e.to_string()))?;
            return Err(match trust.verify_extension(&stored, &whole) {
                Err(e) => UpdateError::Log(e),
                Ok(_) => UpdateError::State(corrupt(
                    &log_path,
                    "the offered log extends it event by event but not byte for byte",
                )),
            });
        }
        let rest = read(keys.log_bytes, offered.len())?;
        if rest.is_empty() {
            return Ok(Updated {
                added: 0,
                len: trust.len(),
                repaired,
            });
        }
        // The keys that left and that the new events (or the proposals
        // they may confirm) name, back in the state: an extension that
        // brings one back must be refused as the whole state would.
        let mut back = vec![];
        for kid in trust.kids_named(&rest).map_err(UpdateError::Log)? {
            if let Some(gone) = keys.lookup(&kid).map_err(io_err(&keys_path))? {
                back.push((kid, gone.into()));
            }
        }
        trust
            .restore_revoked(back)
            .map_err(|e| corrupt(&keys_path, e.to_string()))?;
        // The adds waiting as proposals before the update: their evidence
        // comes from the state, the others' from the new events.
        let mut requests = policy::requests_of(&[], Some(&trust));
        let mut next = trust;
        // Only the new events are verified; on error nothing changed.
        let events = next.extend(&rest).map_err(UpdateError::Log)?;
        let last = events.last().expect("a non-empty extension has events");
        requests.extend(policy::requests_of(&events, None));
        let hardware = Hardware::build(&next, Some(&hardware), &requests, &policy);
        let total = offered.len();
        let gone = next.take_revoked();
        let index = keys_index::encode_update(
            &next,
            &keys,
            &gone,
            total,
            total - last.bytes().len() as u64,
        )
        .map_err(|e| corrupt(&keys_path, e))?;
        append(&log_path, &rest)?;
        write_state(&self.dir, &hardware, &next, &index)?;
        Ok(Updated {
            added: events.len() as u64,
            len: next.len(),
            repaired,
        })
    }

    /// The committed state, after making `log.cbor` agree with it: cut back
    /// after an uncommitted append, or everything rebuilt from the log
    /// after a crash between the other files. What was repaired, if
    /// anything. When the files agree, the log is not read: its size and
    /// its last event are checked.
    fn committed(&self) -> Result<(Committed, Option<String>), StateError> {
        let trust = read_trust(&self.dir);
        let keys = read_keys(&self.dir);
        let hardware = read_hardware(&self.dir);
        let on_record = match (&trust, &keys) {
            (Ok(t), _) => Some((t.len(), t.head())),
            (_, Ok(k)) => Some((k.view.len(), k.view.head())),
            _ => None,
        };
        let path = self.dir.join(LOG);
        if let (Ok(t), Ok(k), Ok(h)) = (trust, keys, hardware)
            && k.view.len() == t.len()
            && k.view.head() == t.head()
            && h.is_for(&t)
        {
            let file = open_nofollow(&path, OpenOptions::new().read(true).write(true))
                .map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            let recorded = k.log_bytes;
            if len >= recorded
                && ends_at(&file, k.log_last, recorded, t.head()).map_err(io_err(&path))?
            {
                let committed = Committed {
                    trust: t,
                    hardware: h,
                    keys: k,
                };
                if len == recorded {
                    return Ok((committed, None));
                }
                // An append that was never committed (perhaps torn).
                file.set_len(recorded)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&path))?;
                let dropped = len - recorded;
                return Ok((
                    committed,
                    Some(format!(
                        "dropped {dropped} bytes an interrupted update had appended to log.cbor"
                    )),
                ));
            }
        }
        // The files disagree (or one is unreadable): rebuild from the log,
        // verified whole, if it reaches the head on record.
        let log = read_state_file(&path, MAX_LOG_LEN)?;
        let rebuilt = KeyLog::from_bytes(&log).map_err(|source| StateError::StoredLog {
            path: path.clone(),
            source,
        })?;
        if let Some((len, head)) = on_record {
            let reaches = usize::try_from(len - 1)
                .ok()
                .and_then(|i| rebuilt.events().get(i))
                .is_some_and(|e: &Event| e.digest() == head);
            if !reaches {
                return Err(StateError::StoredLogMismatch {
                    path,
                    what: format!(
                        "it has {} events and does not contain the trusted head, event {} of {len}",
                        rebuilt.events().len(),
                        len - 1
                    ),
                });
            }
        }
        let policy = read_policy(&self.dir)?;
        write_derived(&self.dir, &rebuilt, &log, &policy)?;
        Ok((
            Committed {
                trust: read_trust(&self.dir)?,
                hardware: read_hardware(&self.dir)?,
                keys: read_keys(&self.dir)?,
            },
            Some(format!(
                "rebuilt the trust state from log.cbor ({} events, verified whole) after an interrupted update",
                rebuilt.events().len()
            )),
        ))
    }
}

/// Appends `bytes` to the state file `path` and syncs it.
fn append(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use keybridge_protocol::crash;
    let mut file = open_nofollow(path, OpenOptions::new().append(true)).map_err(io_err(path))?;
    if crash::armed("append:half", path) {
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        crash::abort("append:half", path);
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))?;
    crash::point("append:written", path);
    Ok(())
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a mix, even across a crash. The temp file is created
/// afresh (`O_EXCL`, so never through a planted symbolic link) under an
/// unpredictable name in the same folder, mode 0600; on failure it is
/// removed. The rename replaces a symbolic link at `path` itself, never
/// writing through it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use keybridge_protocol::crash;
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
