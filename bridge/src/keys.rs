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
use crate::paths::{self, Paths};
use crate::policy::Remember;
use keybridge_backends::{KeyRecord, SecretString, Worker};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    mode: Remember,
    until: i64,
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
    grant: Mutex<Option<Grant>>,
}

impl KeyEntry {
    /// The key id.
    pub fn kid(&self) -> Kid {
        self.public.kid()
    }

    /// The unlock state at `now`: mode and deadline, if unlocked.
    pub fn unlocked(&self, now: i64) -> Option<(Remember, i64)> {
        let g = *self.grant.lock().unwrap_or_else(|p| p.into_inner());
        g.filter(|g| g.until > now).map(|g| (g.mode, g.until))
    }

    /// Unlocks with `secret` for `mode`. On a wrong secret nothing changes:
    /// an existing grant stays, a locked key stays locked.
    pub async fn unlock(
        &self,
        secret: SecretString,
        mode: Remember,
        spend_last_attempt: bool,
        now: i64,
    ) -> Result<i64, ApiError> {
        self.worker.unlock(secret, spend_last_attempt).await?;
        let until = now + mode.lifetime();
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = Some(Grant { mode, until });
        Ok(until)
    }

    /// Locks now; the backend forgets its secret.
    pub async fn lock(&self) {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.worker.lock().await;
    }

    /// Locks if the grant's deadline has passed. Returns true if it did.
    pub async fn expire(&self, now: i64) -> bool {
        let lapsed = {
            let mut g = self.grant.lock().unwrap_or_else(|p| p.into_inner());
            match *g {
                Some(grant) if grant.until <= now => {
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
    pub async fn sign(&self, tbs: Vec<u8>, now: i64) -> Result<Vec<u8>, ApiError> {
        let grant = {
            let mut g = self.grant.lock().unwrap_or_else(|p| p.into_inner());
            match *g {
                None => return Err(ApiError::Locked),
                Some(grant) if grant.until <= now => {
                    *g = None;
                    None
                }
                Some(grant) if grant.mode == Remember::EachTask => g.take(),
                Some(grant) => Some(grant),
            }
        };
        let Some(grant) = grant else {
            self.worker.lock().await;
            return Err(ApiError::Locked);
        };
        let sig = if grant.mode == Remember::EachTask {
            self.worker.sign_then_lock(tbs).await?
        } else {
            self.worker.sign(tbs).await?
        };
        Ok(sig)
    }
}

/// All keys, by kid.
pub struct Keys {
    paths: Paths,
    entries: RwLock<BTreeMap<Kid, Arc<KeyEntry>>>,
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
            let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
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
        let kid = signer.public_key().kid();
        if let Some(existing) = self.get(&kid) {
            return Ok((existing, false));
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
    pub fn resolve(&self, selector: &str) -> Result<Arc<KeyEntry>, ApiError> {
        let all = self.all();
        if let Some(e) = all
            .iter()
            .find(|e| e.stored.record.label.as_deref() == Some(selector))
        {
            return Ok(e.clone());
        }
        let sel = selector.to_ascii_lowercase();
        if sel.is_empty() || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::UnknownKey(selector.to_owned()));
        }
        let mut matches = all.iter().filter(|e| e.kid_hex.starts_with(&sel));
        match (matches.next(), matches.next()) {
            (Some(e), None) => Ok(e.clone()),
            (None, _) => Err(ApiError::UnknownKey(selector.to_owned())),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
                "{selector:?} matches several keys; give more of the kid"
            ))),
        }
    }

    /// Locks every key (at shutdown): backends zeroize.
    pub async fn lock_all(&self) {
        for e in self.all() {
            e.lock().await;
        }
    }

    /// Locks the keys whose grant lapsed.
    pub async fn expire_all(&self, now: i64) {
        for e in self.all() {
            if e.expire(now).await {
                tracing::info!(kid = %e.kid(), "unlock expired; key locked");
            }
        }
    }
}
