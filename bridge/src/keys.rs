//! The daemon's keys: their records on disk, one worker per key, and the
//! unlock grant that implements prompt frequency.
//!
//! The bridge holds no key material: a backend's worker thread does. What
//! lives here is *whether* a key may sign right now — a grant with a mode
//! and a deadline. `each-task` grants are taken by the one signature they
//! allow (the worker signs and locks in one job, so nothing slips between);
//! timed grants lapse at their deadline, when the worker is told to lock and
//! the backend zeroizes what it cached.

use crate::api::problem::ApiError;
use crate::clock::Clock;
use crate::paths::{self, Paths};
use crate::policy::Remember;
use keybridge_backends::{BackendError, KeyRecord, SecretString, Worker};
use keybridge_protocol::{Kid, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

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

/// An unlock: its mode, when it ends on the boot clock (the deadline that
/// is enforced), and the same instant in wall-clock seconds (what is shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    mode: Remember,
    until_boot: i64,
    until: i64,
}

/// Consecutive wrong secrets, for backoff.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    last_boot: i64,
}

/// The wait after `count` consecutive wrong secrets: 1 s, 2 s, 4 s, … up to
/// a minute.
pub fn backoff(count: u32) -> i64 {
    if count == 0 {
        return 0;
    }
    1i64.checked_shl(count - 1).map_or(60, |d| d.min(60))
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
    /// The one source of truth for "unlocked". Changed only while
    /// `transition` is held, together with the worker's state, so that what
    /// the API shows is what a signature finds.
    grant: Mutex<Option<Grant>>,
    /// Serializes unlock, lock, expiry and `each-task` signatures: each
    /// changes the grant and the worker together.
    transition: tokio::sync::Mutex<()>,
    failures: Mutex<Failures>,
}

impl KeyEntry {
    /// The key id.
    pub fn kid(&self) -> Kid {
        self.public.kid()
    }

    fn grant(&self) -> std::sync::MutexGuard<'_, Option<Grant>> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unlock state at boot-clock time `boot`: mode and wall-clock
    /// deadline, if unlocked.
    pub fn unlocked(&self, boot: i64) -> Option<(Remember, i64)> {
        let g = *self.grant();
        g.filter(|g| g.until_boot > boot).map(|g| (g.mode, g.until))
    }

    /// Unlocks with `secret` for `mode`. On a wrong secret nothing changes:
    /// an existing grant stays, a locked key stays locked; consecutive wrong
    /// secrets make the next attempt wait ([`backoff`]), and an attempt
    /// that comes too early is not tried at all.
    pub async fn unlock(
        &self,
        secret: SecretString,
        mode: Remember,
        spend_last_attempt: bool,
        clock: &Clock,
    ) -> Result<i64, ApiError> {
        let _transition = self.transition.lock().await;
        let boot = clock.boot();
        let failures = *self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let next = failures.last_boot.saturating_add(backoff(failures.count));
        if failures.count > 0 && boot < next {
            return Err(ApiError::TooManyAttempts {
                retry_after: u64::try_from(next - boot).unwrap_or(1),
            });
        }
        let result = self.worker.unlock(secret, spend_last_attempt).await;
        {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(()) => *f = Failures::default(),
                Err(BackendError::WrongSecret { .. }) => {
                    *f = Failures {
                        count: f.count.saturating_add(1),
                        last_boot: clock.boot(),
                    }
                }
                Err(_) => {}
            }
        }
        result?;
        let until = clock.now().saturating_add(mode.lifetime());
        *self.grant() = Some(Grant {
            mode,
            until_boot: clock.boot().saturating_add(mode.lifetime()),
            until,
        });
        Ok(until)
    }

    /// Locks now; the backend forgets its secret.
    pub async fn lock(&self) {
        let _transition = self.transition.lock().await;
        self.grant().take();
        self.worker.lock().await;
    }

    /// Forgets the grant without waiting for the worker (shutdown: a
    /// worker stuck in a hardware operation must not keep the key usable).
    pub fn revoke_grant(&self) {
        self.grant().take();
    }

    /// Locks if the grant's deadline has passed. Returns true if it did.
    pub async fn expire(&self, boot: i64) -> bool {
        let current = *self.grant();
        if current.is_none_or(|g| g.until_boot > boot) {
            return false;
        }
        let _transition = self.transition.lock().await;
        let lapsed = {
            let mut g = self.grant();
            match *g {
                Some(grant) if grant.until_boot <= boot => {
                    *g = None;
                    true
                }
                _ => false,
            }
        };
        if lapsed {
            self.worker.lock().await;
        }
        lapsed
    }

    /// Signs `tbs` if the grant allows: an `each-task` grant is spent by
    /// this signature whatever its outcome.
    pub async fn sign(&self, tbs: Vec<u8>, boot: i64) -> Result<Vec<u8>, ApiError> {
        let current = *self.grant();
        let mode = match current {
            None => return Err(ApiError::Locked),
            Some(g) if g.until_boot <= boot => {
                self.expire(boot).await;
                return Err(ApiError::Locked);
            }
            Some(g) => g.mode,
        };
        if mode != Remember::EachTask {
            // A lock racing this signature wins: the worker answers Locked.
            return Ok(self.worker.sign(tbs).await?);
        }
        // Spending an each-task grant changes the key's state: under the
        // transition lock, and only if the grant is still the one we saw.
        let _transition = self.transition.lock().await;
        let grant = {
            let mut g = self.grant();
            match *g {
                Some(grant) if grant.mode == Remember::EachTask && grant.until_boot > boot => {
                    g.take()
                }
                _ => None,
            }
        };
        if grant.is_some() {
            return Ok(self.worker.sign_then_lock(tbs).await?);
        }
        // Another request spent it, or replaced it: a timed grant now
        // allows this signature, anything else does not.
        let current = *self.grant();
        if current.is_none_or(|g| g.until_boot <= boot) {
            return Err(ApiError::Locked);
        }
        drop(_transition);
        Ok(self.worker.sign(tbs).await?)
    }
}

/// All keys, by kid.
pub struct Keys {
    paths: Paths,
    entries: RwLock<BTreeMap<Kid, Arc<KeyEntry>>>,
    /// Held from the label check to the insert, so that two creations
    /// cannot both take one label.
    adding: Mutex<()>,
}

/// A key file that could not be used at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct LoadError {
    path: String,
    what: String,
}

impl Keys {
    /// Loads every key in the state folder and starts its worker.
    pub fn load(paths: &Paths) -> Result<Self, LoadError> {
        let keys = Keys {
            paths: paths.clone(),
            entries: RwLock::new(BTreeMap::new()),
            adding: Mutex::new(()),
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
            match keybridge_backends::open(&stored.record) {
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
    ) -> Result<Arc<KeyEntry>, ApiError> {
        let public = stored
            .record
            .public()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if signer.public_key() != &public {
            return Err(ApiError::Internal(
                "the backend's key is not the recorded key".into(),
            ));
        }
        let kid_hex = public.kid().to_hex();
        let worker = Worker::spawn(kid_hex[..12].to_owned(), signer);
        let entry = Arc::new(KeyEntry {
            stored,
            public,
            kid_hex,
            worker,
            grant: Mutex::new(None),
            transition: tokio::sync::Mutex::new(()),
            failures: Mutex::new(Failures::default()),
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
    ) -> Result<(Arc<KeyEntry>, bool), ApiError> {
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
            return Err(ApiError::AlreadyExists(format!(
                "the label {label:?} already names key {} ({}/{}); choose another label",
                other.kid_hex, other.stored.account, other.stored.agent
            )));
        }
        let dir = self.paths.keys_dir();
        paths::private_dir(&dir).map_err(|e| ApiError::Internal(e.to_string()))?;
        let json = serde_json::to_vec_pretty(&stored).expect("a key record serializes");
        paths::write_atomic(&dir.join(format!("{}.json", kid.to_hex())), &json)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((self.start(stored, signer)?, true))
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
    pub fn resolve(&self, selector: &str) -> Result<Arc<KeyEntry>, ApiError> {
        let all = self.all();
        let mut labelled = all
            .iter()
            .filter(|e| e.stored.record.label.as_deref() == Some(selector));
        match (labelled.next(), labelled.next()) {
            (Some(e), None) => return Ok(e.clone()),
            (Some(_), Some(_)) => return Err(ApiError::Ambiguous(selector.to_owned())),
            (None, _) => {}
        }
        let sel = selector.to_ascii_lowercase();
        if sel.is_empty() || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::UnknownKey(selector.to_owned()));
        }
        let mut matches = all.iter().filter(|e| e.kid_hex.starts_with(&sel));
        match (matches.next(), matches.next()) {
            (Some(e), None) => Ok(e.clone()),
            (None, _) => Err(ApiError::UnknownKey(selector.to_owned())),
            (Some(_), Some(_)) => Err(ApiError::Ambiguous(selector.to_owned())),
        }
    }

    /// Locks every key (at shutdown): no grant survives this call, and
    /// the backends zeroize what they cached, each within `deadline` (a
    /// worker stuck in a hardware operation is not waited for longer).
    pub async fn lock_all(&self, deadline: std::time::Duration) {
        let all = self.all();
        all.iter().for_each(|e| e.revoke_grant());
        let locks = async {
            for e in &all {
                e.worker.lock().await;
            }
        };
        if tokio::time::timeout(deadline, locks).await.is_err() {
            tracing::warn!("a key's backend did not lock in time; exiting anyway");
        }
    }

    /// Locks the keys whose grant lapsed (boot-clock time `boot`).
    pub async fn expire_all(&self, boot: i64) {
        for e in self.all() {
            if e.expire(boot).await {
                tracing::info!(kid = %e.kid(), "unlock expired; key locked");
            }
        }
    }
}
