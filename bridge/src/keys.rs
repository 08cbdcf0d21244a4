//! The daemon's keys: their records on disk, one worker per key, names
//! (labels and kid prefixes) that resolve to exactly one key, and the
//! unlock state of each ([`crate::unlock`]).
//!
//! An agent's keys in a preference order ([`Keys::of_agent`]) and whether
//! a key's token is there ([`KeyEntry::presence`], [`Keys::probe`]) serve
//! `sign --agent`, which signs with the first key at hand (`api::sign`).

use crate::clock::Clock;
use crate::paths::{self, Paths};
use crate::unlock::{PresenceEvent, Remember, Unlocker};
use keybridge_backends::{BackendError, BackendKind, KeyRecord, SecretString, Seen, Worker};
use keybridge_protocol::{Kid, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// What can go wrong with the daemon's keys; mapped once to problem codes
/// in `api::problem`.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key must be unlocked first.
    #[error("the key is locked; unlock it first (keybridge unlock KID)")]
    Locked,
    /// No key answers to the name.
    #[error("no key matches {0:?}")]
    Unknown(String),
    /// Several keys answer to the name.
    #[error("{0:?} names several keys; use more of the kid")]
    Ambiguous(String),
    /// The label is taken.
    #[error("{0}")]
    LabelTaken(String),
    /// Wrong secrets in a row: the next attempt must wait.
    #[error("too many wrong attempts in a row; try again in {retry_after} s (nothing was tried)")]
    TooManyAttempts {
        /// Seconds until the next attempt is taken.
        retry_after: u64,
    },
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The key's record could not be written, or does not match its backend.
    #[error("key storage: {0}")]
    Storage(String),
    /// No key of that agent (in that account) may be picked by agent.
    #[error("{0}")]
    NoAgentKey(String),
    /// The agent's name exists in several accounts and none was chosen.
    #[error(
        "agent {agent:?} has keys in several accounts ({}): say which with account (CLI: --account)",
        accounts.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
    )]
    AgentInSeveralAccounts {
        /// The agent asked for.
        agent: String,
        /// The accounts it has keys in.
        accounts: Vec<String>,
    },
}

/// Whether a key's token is there, as far as the bridge can tell without
/// a PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// There; or a key that cannot be taken away (passphrase, TPM); or it
    /// could not be told (taken as there: a key that may be present is
    /// never passed over silently).
    Present,
    /// Not there: why, for a person.
    Absent(String),
}

/// What the bridge stores per key: the backend's record plus who the key
/// speaks for. Public data only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The backend's record (URI, public key, parameters).
    pub record: KeyRecord,
    /// Account (the commands' `iss`).
    pub account: String,
    /// Agent (the commands' `sub`).
    pub agent: String,
    /// The prompt frequency chosen at creation, used when an unlock names
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember: Option<Remember>,
}

/// One key the daemon serves.
pub struct KeyEntry {
    /// Its stored description.
    pub stored: StoredKey,
    /// Its public key.
    pub public: PublicKey,
    /// The kid in hex, computed once: requests name keys by hex prefix.
    pub kid_hex: String,
    worker: Worker,
    /// Whether it may sign now (prompt frequency).
    unlock: Unlocker,
    /// A sweep of this key ([`Keys::expire_all`]) is under way.
    sweeping: std::sync::atomic::AtomicBool,
}

impl KeyEntry {
    /// The key id.
    pub fn kid(&self) -> Kid {
        self.public.kid()
    }

    /// The unlock state at boot-clock time `boot`: mode and wall-clock
    /// deadline, if unlocked.
    pub fn unlocked(&self, boot: i64) -> Option<(Remember, i64)> {
        self.unlock.unlocked(boot)
    }

    /// Unlocks for `mode` (see [`Unlocker::unlock`]); the wall-clock end.
    pub async fn unlock(
        &self,
        secret: SecretString,
        mode: Remember,
        spend_last_attempt: bool,
        clock: &Clock,
    ) -> Result<i64, KeyError> {
        self.unlock
            .unlock(&self.worker, secret, mode, spend_last_attempt, clock)
            .await
    }

    /// The hardware's residency evidence, if the key has any.
    pub fn evidence(&self) -> Option<keybridge_backends::Evidence> {
        self.worker.evidence()
    }

    /// Whether a signature waits for a touch on the token now.
    pub fn touch_pending(&self) -> bool {
        self.worker.touch_pending()
    }

    /// Locks now; the backend forgets its secret.
    pub async fn lock(&self) {
        self.unlock.lock(&self.worker).await;
    }

    /// Locks if the grant lapsed by boot-clock time `boot`; true if it did.
    pub async fn expire(&self, boot: i64) -> bool {
        self.unlock.expire(&self.worker, boot).await
    }

    /// Locks if the key's token was pulled out or has been unseen too long
    /// (see [`Unlocker::check_presence`]).
    pub async fn check_presence(&self, boot: i64) -> Option<PresenceEvent> {
        self.unlock.check_presence(&self.worker, boot).await
    }

    /// Signs `tbs` if the grant allows (see [`Unlocker::sign`]).
    pub async fn sign(&self, tbs: Vec<u8>, boot: i64) -> Result<Vec<u8>, KeyError> {
        self.unlock.sign(&self.worker, tbs, boot).await
    }

    /// The backend that holds the key.
    pub fn backend(&self) -> BackendKind {
        self.stored.record.backend
    }

    /// The key's label, if it has one.
    pub fn label(&self) -> Option<&str> {
        self.stored.record.label.as_deref()
    }

    /// The key for a person: `pkcs11 key "alice-token" (kid 3f2a9c01d4e5…)`.
    pub fn describe(&self) -> String {
        let kid = self.kid_hex.get(..12).unwrap_or(&self.kid_hex);
        match self.label() {
            Some(label) => format!("{} key {label:?} (kid {kid}…)", self.backend()),
            None => format!("{} key {kid}…", self.backend()),
        }
    }

    /// What the backend's own watch says, without asking the hardware: a
    /// YubiKey pulled out or not seen is absent; anything else (keys that
    /// are not watched, or not watched now because locked) is `Present`
    /// here and needs [`Keys::probe`] to know more.
    pub fn presence(&self) -> Presence {
        match self.worker.presence() {
            Seen::Present => Presence::Present,
            Seen::Removed => Presence::Absent(format!("{} was pulled out", self.token_name())),
            Seen::Unseen => Presence::Absent(format!(
                "{} cannot be seen (is the smart-card service, pcscd, running?)",
                self.token_name()
            )),
        }
    }

    /// The token, for messages (`YubiKey 12345678`, `the PKCS#11 token`).
    fn token_name(&self) -> String {
        match self.backend() {
            BackendKind::Yubikey => yubikey_serial(&self.stored.record)
                .map_or_else(|| "the YubiKey".to_owned(), |s| format!("YubiKey {s}")),
            BackendKind::Pkcs11 => "the PKCS#11 token".to_owned(),
            BackendKind::Tpm => "the TPM".to_owned(),
            BackendKind::Passphrase => "the passphrase key".to_owned(),
        }
    }
}

/// A YubiKey key's card serial, from its record.
fn yubikey_serial(record: &KeyRecord) -> Option<u32> {
    record.params.get("serial")?.as_u64()?.try_into().ok()
}

/// Whether a PKCS#11 key's token is there: found by its URI (which makes a
/// module that scans for tokens only at start, SoftHSM2, look again when
/// none matches), else in the module's token list (a token whose key is
/// visible only after login). No login, no PIN. Blocking.
#[cfg(feature = "pkcs11")]
fn probe_pkcs11(record: &KeyRecord, kid_hex: &str) -> Presence {
    use keybridge_backends::KeyUri;
    let Ok(KeyUri::Pkcs11(mut uri)) = record.key_uri() else {
        return Presence::Present;
    };
    // A presence check reads public objects only: never a PIN from a file.
    uri.pin_source = None;
    match keybridge_backends::pkcs11::open_uri(&uri, None, None, 0) {
        Ok(_) => return Presence::Present,
        Err(BackendError::TokenAbsent(why)) => return Presence::Absent(why),
        // No token matches, or the key shows only after login: the list
        // below tells these apart.
        Err(BackendError::NotFound(_)) => {}
        Err(_) => return Presence::Present,
    }
    let module = match &uri.module_path {
        Some(p) => match p.to_str() {
            Some(p) => Some(p),
            None => return Presence::Present,
        },
        None => None,
    };
    let token = |t: &keybridge_backends::TokenListing| {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        (uri.token.is_some() || uri.serial.is_some())
            && same(&uri.token, &t.label)
            && same(&uri.serial, &t.serial)
            && same(&uri.manufacturer, &t.manufacturer)
            && same(&uri.model, &t.model)
    };
    match keybridge_backends::list(BackendKind::Pkcs11, module) {
        Ok(tokens)
            if tokens
                .iter()
                .any(|t| token(t) || t.keys.iter().any(|k| k.kid == kid_hex)) =>
        {
            Presence::Present
        }
        Ok(_) => Presence::Absent(format!(
            "no token {} is in the module",
            describe_token(&uri)
        )),
        Err(BackendError::TokenAbsent(why)) => Presence::Absent(why),
        Err(_) => Presence::Present,
    }
}

/// `"label" (serial S)`, from what a URI says of its token.
#[cfg(feature = "pkcs11")]
fn describe_token(uri: &keybridge_backends::Pkcs11Uri) -> String {
    match (&uri.token, &uri.serial) {
        (Some(t), Some(s)) => format!("{t:?} (serial {s})"),
        (Some(t), None) => format!("{t:?}"),
        (None, Some(s)) => format!("with serial {s}"),
        (None, None) => "for the key".to_owned(),
    }
}

/// Whether a YubiKey key's card is plugged in (the serials pcscd shows).
/// Blocking.
#[cfg(feature = "yubikey")]
fn probe_yubikey(record: &KeyRecord) -> Presence {
    let Some(serial) = yubikey_serial(record) else {
        return Presence::Present;
    };
    if keybridge_backends::yubikey::card::present_serials().contains(&serial) {
        Presence::Present
    } else {
        Presence::Absent(format!(
            "YubiKey {serial} is not plugged in (or the smart-card service, pcscd, is not running)"
        ))
    }
}

/// All keys, by kid.
pub struct Keys {
    paths: Paths,
    entries: RwLock<BTreeMap<Kid, Arc<KeyEntry>>>,
    /// Held from the label check to the insert, so that two creations
    /// cannot both take one label.
    adding: Mutex<()>,
    /// How long a hardware key's requests wait for its token
    /// ([`Worker::spawn_with_deadline`]; [`crate::server::Limits::token_answer`]).
    token_answer: std::time::Duration,
}

/// A key file that could not be used at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct LoadError {
    path: String,
    what: String,
}

impl Keys {
    /// Loads every key in the state folder and starts its worker; a
    /// hardware key's requests wait at most `token_answer` for its token.
    pub fn load(paths: &Paths, token_answer: std::time::Duration) -> Result<Self, LoadError> {
        let keys = Keys {
            paths: paths.clone(),
            entries: RwLock::new(BTreeMap::new()),
            adding: Mutex::new(()),
            token_answer,
        };
        let dir = paths.keys_dir();
        let err = |path: &std::path::Path, what: String| LoadError {
            path: path.display().to_string(),
            what,
        };
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(err(&dir, e.to_string())),
        };
        files.sort();
        for path in files {
            let mut text = String::new();
            paths::open_private(&path, paths::Open::Read)
                .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
                .map_err(|e| err(&path, e.to_string()))?;
            let stored: StoredKey =
                serde_json::from_str(&text).map_err(|e| err(&path, e.to_string()))?;
            match keybridge_backends::open(&stored.record, &dir) {
                Ok(signer) => {
                    keys.start(stored, signer)
                        .map_err(|e| err(&path, e.to_string()))?;
                }
                // A key whose backend is not built in stays listed in the
                // file but is not served; say so rather than refuse to start.
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "key not served"),
            }
        }
        Ok(keys)
    }

    fn start(
        &self,
        stored: StoredKey,
        signer: Box<dyn keybridge_backends::Signer>,
    ) -> Result<Arc<KeyEntry>, KeyError> {
        let public = stored
            .record
            .public()
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        if signer.public_key() != &public {
            return Err(KeyError::Storage(
                "the backend's key is not the recorded key".into(),
            ));
        }
        let kid_hex = public.kid().to_hex();
        // A passphrase key's unlock is a costly derivation, not a token
        // that may hang: no deadline.
        let deadline =
            (stored.record.backend != BackendKind::Passphrase).then_some(self.token_answer);
        let name = match &stored.record.label {
            Some(label) => format!("{label:?} ({}…)", &kid_hex[..12]),
            None => kid_hex[..12].to_owned(),
        };
        let worker = Worker::spawn_with_deadline(name, signer, deadline);
        let entry = Arc::new(KeyEntry {
            stored,
            public,
            kid_hex,
            worker,
            unlock: Unlocker::default(),
            sweeping: std::sync::atomic::AtomicBool::new(false),
        });
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.kid(), entry.clone());
        Ok(entry)
    }

    /// Records a new key (file first, atomically) and starts serving it.
    /// A key that already exists is returned as it is (`false`).
    pub fn add(
        &self,
        stored: StoredKey,
        signer: Box<dyn keybridge_backends::Signer>,
    ) -> Result<(Arc<KeyEntry>, bool), KeyError> {
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let kid = signer.public_key().kid();
        if let Some(existing) = self.get(&kid) {
            return Ok((existing, false));
        }
        // A label names one key, whatever its account: `sign --key alice`
        // must never find another account's alice.
        if let Some(label) = &stored.record.label
            && let Some(other) = self
                .all()
                .iter()
                .find(|e| e.stored.record.label.as_ref() == Some(label))
        {
            return Err(KeyError::LabelTaken(format!(
                "the label {label:?} already names key {} ({}/{}); choose another label",
                other.kid_hex, other.stored.account, other.stored.agent
            )));
        }
        let dir = self.paths.keys_dir();
        paths::private_dir(&dir).map_err(|e| KeyError::Storage(e.to_string()))?;
        let json = serde_json::to_vec_pretty(&stored).expect("a key record serializes");
        paths::write_atomic(&dir.join(format!("{}.json", kid.to_hex())), &json)
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        Ok((self.start(stored, signer)?, true))
    }

    /// The private folder key records and key files live in (made if
    /// missing); `None` if it cannot be made safely.
    pub fn keys_dir(&self) -> Option<std::path::PathBuf> {
        let dir = self.paths.keys_dir();
        paths::private_dir(&dir).ok().map(|()| dir)
    }

    fn get(&self, kid: &Kid) -> Option<Arc<KeyEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// Every key, by kid.
    pub fn all(&self) -> Vec<Arc<KeyEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Finds a key by its label, or by a unique prefix of its hex kid.
    /// Never ambiguous: labels cannot look like hex, and a name that
    /// several keys answer to (labels written by an older version) is
    /// refused rather than resolved to one of them.
    pub fn resolve(&self, selector: &str) -> Result<Arc<KeyEntry>, KeyError> {
        let all = self.all();
        let mut labelled = all
            .iter()
            .filter(|e| e.stored.record.label.as_deref() == Some(selector));
        match (labelled.next(), labelled.next()) {
            (Some(e), None) => return Ok(e.clone()),
            (Some(_), Some(_)) => return Err(KeyError::Ambiguous(selector.to_owned())),
            (None, _) => {}
        }
        let sel = selector.to_ascii_lowercase();
        if sel.is_empty() || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::Unknown(selector.to_owned()));
        }
        let mut matches = all.iter().filter(|e| e.kid_hex.starts_with(&sel));
        match (matches.next(), matches.next()) {
            (Some(e), None) => Ok(e.clone()),
            (None, _) => Err(KeyError::Unknown(selector.to_owned())),
            (Some(_), Some(_)) => Err(KeyError::Ambiguous(selector.to_owned())),
        }
    }

    /// The keys of `agent` in `account` (needed only when the agent has keys
    /// in several accounts) that `sign --agent` may use, in the order it
    /// tries them: by backend as `order` lists them (keys of a backend not
    /// listed are left out), then oldest first, then by kid.
    pub fn of_agent(
        &self,
        account: Option<&str>,
        agent: &str,
        order: &[BackendKind],
    ) -> Result<Vec<Arc<KeyEntry>>, KeyError> {
        let all = self.all();
        let mut mine: Vec<Arc<KeyEntry>> = all
            .into_iter()
            .filter(|e| e.stored.agent == agent)
            .filter(|e| account.is_none_or(|a| e.stored.account == a))
            .collect();
        let whose = match account {
            Some(a) => format!("agent {agent:?} in account {a:?}"),
            None => format!("agent {agent:?}"),
        };
        if mine.is_empty() {
            return Err(KeyError::NoAgentKey(format!(
                "no key belongs to {whose} (keybridge keys list shows each key's account/agent)"
            )));
        }
        let accounts: std::collections::BTreeSet<&str> =
            mine.iter().map(|e| e.stored.account.as_str()).collect();
        if accounts.len() > 1 {
            return Err(KeyError::AgentInSeveralAccounts {
                agent: agent.to_owned(),
                accounts: accounts.into_iter().map(str::to_owned).collect(),
            });
        }
        let rank = |e: &KeyEntry| order.iter().position(|b| *b == e.backend());
        let left_out: Vec<String> = mine
            .iter()
            .filter(|e| rank(e).is_none())
            .map(|e| e.describe())
            .collect();
        mine.retain(|e| rank(e).is_some());
        if mine.is_empty() {
            return Err(KeyError::NoAgentKey(format!(
                "{whose} has no key of a backend in fallback_order ({}): {} (add its backend to fallback_order in config.toml, or name the key)",
                order
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                left_out.join(", ")
            )));
        }
        mine.sort_by(|a, b| {
            (rank(a), a.stored.record.created, &a.kid_hex).cmp(&(
                rank(b),
                b.stored.record.created,
                &b.kid_hex,
            ))
        });
        Ok(mine)
    }

    /// Whether `entry`'s token is there, asking the hardware (without a
    /// PIN) where the backend's watch cannot tell ([`KeyEntry::presence`]
    /// first). A passphrase key is always there; a TPM is a chip of this
    /// machine, taken as there (its unlock says otherwise). A YubiKey
    /// another key of ours is unlocked on, and watched, is there without
    /// asking pcscd.
    pub async fn probe(&self, entry: &Arc<KeyEntry>, boot: i64) -> Presence {
        if let absent @ Presence::Absent(_) = entry.presence() {
            return absent;
        }
        match entry.backend() {
            BackendKind::Passphrase | BackendKind::Tpm => Presence::Present,
            #[cfg(feature = "yubikey")]
            BackendKind::Yubikey => {
                let serial = yubikey_serial(&entry.stored.record);
                let watched = self.all().into_iter().any(|e| {
                    e.backend() == BackendKind::Yubikey
                        && yubikey_serial(&e.stored.record) == serial
                        && e.unlocked(boot).is_some()
                        && e.worker.presence() == Seen::Present
                });
                if watched {
                    return Presence::Present;
                }
                let e = Arc::clone(entry);
                self.bounded_probe(entry, move || probe_yubikey(&e.stored.record))
                    .await
            }
            #[cfg(feature = "pkcs11")]
            BackendKind::Pkcs11 => {
                let e = Arc::clone(entry);
                self.bounded_probe(entry, move || probe_pkcs11(&e.stored.record, &e.kid_hex))
                    .await
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = boot;
                Presence::Present
            }
        }
    }

    /// A blocking presence check of `entry`'s token, given up after the
    /// token deadline: a token that hangs is not there for this request
    /// (an agent's next key is tried).
    #[allow(dead_code)] // without hardware backends built in
    async fn bounded_probe(
        &self,
        entry: &KeyEntry,
        probe: impl FnOnce() -> Presence + Send + 'static,
    ) -> Presence {
        match tokio::time::timeout(self.token_answer, tokio::task::spawn_blocking(probe)).await {
            Ok(presence) => presence.unwrap_or(Presence::Present),
            Err(_) => Presence::Absent(format!(
                "{} did not answer within {} s",
                entry.token_name(),
                self.token_answer.as_secs()
            )),
        }
    }

    /// Locks every key (at shutdown): no grant survives this call, and
    /// the backends zeroize what they cached, each within `deadline` (a
    /// worker stuck in a hardware operation is not waited for longer).
    pub async fn lock_all(&self, deadline: std::time::Duration) {
        let all = self.all();
        all.iter().for_each(|e| e.unlock.revoke());
        let locks = async {
            for e in &all {
                e.worker.lock().await;
            }
        };
        if tokio::time::timeout(deadline, locks).await.is_err() {
            tracing::warn!("a key's backend did not lock in time; exiting anyway");
        }
    }

    /// Locks the keys whose grant lapsed, or whose token went (boot-clock
    /// time `boot`).
    pub async fn expire_all(&self, boot: i64) {
        // Every key on a task of its own, one sweep in flight per key: a
        // key whose token hangs (its transition held by a request waiting
        // for the token) delays no other key, and its sweep finishes (and
        // logs what it did) whenever the token answers. This call waits
        // a moment for them, never for a stuck one.
        use std::sync::atomic::Ordering;
        const STEP: std::time::Duration = std::time::Duration::from_millis(900);
        let mut running = vec![];
        for e in self.all() {
            if e.sweeping.swap(true, Ordering::AcqRel) {
                continue;
            }
            running.push(tokio::spawn(async move {
                // Cleared however the sweep ends.
                struct Done<'a>(&'a std::sync::atomic::AtomicBool);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _done = Done(&e.sweeping);
                Self::sweep(&e, boot).await;
            }));
        }
        let _ = tokio::time::timeout(STEP, futures_util::future::join_all(running)).await;
    }

    async fn sweep(e: &KeyEntry, boot: i64) {
        if e.expire(boot).await {
            tracing::info!(kid = %e.kid(), "unlock expired; key locked");
        }
        let kid = e.kid();
        let limit = keybridge_backends::UNSEEN_LIMIT_SECS;
        match e.check_presence(boot).await {
            Some(PresenceEvent::Removed) => {
                tracing::info!(%kid, "token pulled out: PIN forgotten, key locked");
            }
            Some(PresenceEvent::Unseen) => tracing::info!(
                %kid,
                "token not seen (pcscd away?); the PIN is forgotten if it stays away {limit} s"
            ),
            Some(PresenceEvent::Back) => tracing::info!(%kid, "token seen again"),
            Some(PresenceEvent::UnseenTooLong) => tracing::info!(
                %kid,
                "token not seen for {limit} s: PIN forgotten, key locked"
            ),
            None => {}
        }
    }
}
