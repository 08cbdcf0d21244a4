//! [`TpmSigner`]: one P-256 key in a TPM.
//!
//! Every operation is one connection: load the key under its parent in a
//! salted session, use it, flush everything, disconnect (see
//! [`super::tpm`]). While unlocked, the owner primary is kept as a *saved
//! context* between operations — it takes no TPM slot while saved and
//! spares each signature rebuilding the primary (~10 ms on swtpm) — and
//! dropped on lock; after a TPM restart it no longer loads and is simply
//! made again. The salted session is made per operation: ESYS (tpm2-tss
//! 3.2) cannot carry a saved session from one connection to the next
//! cleanly, and a connection cannot be held (see [`super::tpm`]). Unlocking checks the PIN with one signature over a
//! zero digest, under the dictionary-attack rules: nothing is tried while
//! the TPM is locked out, the last attempt before lockout only with
//! `spend_last_attempt`, and a PIN is never retried on the user's behalf.
//! The PIN stays in memory (zeroized on lock) for `daily`/`weekly`: a TPM
//! that went away and came back is simply used again with it.

use super::tpm::{Lockout, Tpm, TpmsContext, tcti};
use super::{KeyBlobs, TpmParams};
use crate::uri::tpm::OWNER_HIERARCHY;
use crate::{BackendError, ExposeSecret as _, SecretString, Signer};
use keybridge_protocol::PublicKey;
use sha2::{Digest as _, Sha256};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::session_handles::AuthSession;

/// A key in a TPM.
pub struct TpmSigner {
    public: PublicKey,
    params: TpmParams,
    /// The key file's blobs (`None` for a key at a persistent handle).
    blobs: Option<KeyBlobs>,
    pin: Option<SecretString>,
    /// While unlocked: the owner primary's saved context.
    saved_primary: Option<TpmsContext>,
}

impl TpmSigner {
    /// The signer of a recorded key, locked.
    pub(super) fn new(public: PublicKey, params: TpmParams, blobs: Option<KeyBlobs>) -> Self {
        TpmSigner {
            public,
            params,
            blobs,
            pin: None,
            saved_primary: None,
        }
    }

    /// Connects, loads the key (or finds it at its handle), starts a salted
    /// session, and runs `f`; everything is flushed afterwards. The owner
    /// primary's context is saved for the next operation when `keep` says
    /// so and `f` succeeded.
    fn with_key<T>(
        &mut self,
        keep: bool,
        f: impl FnOnce(&mut Tpm, KeyHandle, AuthSession) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut tpm = Tpm::open(&tcti(self.params.tcti.as_deref()))?;
        // Taken: whatever happens, no stale context stays behind.
        let saved = self.saved_primary.take();
        let reloaded = saved.clone().and_then(|p| tpm.load_saved(p).ok());
        let (parent, primary) = match reloaded {
            Some(h) => (KeyHandle::from(h), saved),
            None => {
                let p = tpm.parent(self.params.parent)?;
                let owner = self.params.parent == OWNER_HIERARCHY;
                (p, if owner { tpm.save(p.into()).ok() } else { None })
            }
        };
        let session = tpm.salted_session(parent, false)?;
        let key = match (&self.blobs, self.params.handle) {
            // The blobs were checked against the record when it was opened.
            (Some(blobs), _) => tpm.load(parent, blobs.public.clone(), blobs.private.clone())?,
            (None, Some(handle)) => {
                let key: KeyHandle = tpm.persistent(handle)?.into();
                // The handle must still hold the recorded key before a PIN
                // goes to it.
                if super::public_key_of(&tpm.read_public(key)?)? != self.public {
                    return Err(BackendError::NotFound(format!(
                        "persistent handle {handle:#010x} holds another key than the one recorded; no PIN was sent"
                    )));
                }
                key
            }
            (None, None) => {
                return Err(BackendError::Failed(
                    "the key record names neither a key file nor a handle".into(),
                ));
            }
        };
        let result = f(&mut tpm, key, session);
        if keep && result.is_ok() {
            self.saved_primary = primary;
        }
        result
    }
}

/// Tries `pin` once under the dictionary-attack rules.
pub(super) fn try_pin(
    tpm: &mut Tpm,
    key: KeyHandle,
    session: AuthSession,
    pin: &SecretString,
    spend_last_attempt: bool,
) -> Result<(), BackendError> {
    let before = tpm.lockout()?;
    if before.left() == 0 {
        return Err(before.blocked());
    }
    if before.left() == 1 && !spend_last_attempt {
        return Err(BackendError::LastAttempt { retries_left: 1 });
    }
    match tpm.sign(key, session, pin, &[0u8; 32]) {
        Ok(_) => Ok(()),
        Err(BackendError::WrongSecret { .. }) => Err(after_failure(before, tpm.lockout()?)),
        Err(BackendError::LockedOut(_)) => Err(tpm.lockout()?.blocked()),
        Err(e) => Err(e),
    }
}

/// The error after one failed attempt: the attempts left are one fewer
/// than before (the TPM may report its counter a moment late), or fewer
/// if the TPM says so.
fn after_failure(before: Lockout, after: Lockout) -> BackendError {
    let state = Lockout {
        counter: after.counter.max(before.counter.saturating_add(1)),
        ..after
    };
    match state.left() {
        0 => state.blocked(),
        left => BackendError::WrongSecret {
            retries_left: Some(left),
        },
    }
}

impl Signer for TpmSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn unlock(
        &mut self,
        secret: &SecretString,
        spend_last_attempt: bool,
    ) -> Result<(), BackendError> {
        self.saved_primary = None;
        self.with_key(true, |tpm, key, session| {
            try_pin(tpm, key, session, secret, spend_last_attempt)
        })?;
        self.pin = Some(SecretString::from(secret.expose_secret().to_owned()));
        Ok(())
    }

    fn lock(&mut self) {
        self.pin = None;
        self.saved_primary = None;
    }

    fn is_unlocked(&self) -> bool {
        self.pin.is_some()
    }

    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        // A copy for this operation (zeroized when it goes).
        let pin = SecretString::from(
            self.pin
                .as_ref()
                .ok_or(BackendError::Locked)?
                .expose_secret()
                .to_owned(),
        );
        let digest: [u8; 32] = Sha256::digest(tbs).into();
        let result = self.with_key(true, |tpm, key, session| {
            tpm.sign(key, session, &pin, &digest)
        });
        match result {
            Ok(sig) => Ok(sig.to_vec()),
            // Right at unlock, wrong now (the key's auth was changed):
            // forget it and ask again, never retry.
            Err(e @ BackendError::WrongSecret { .. }) => {
                self.lock();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn residency_evidence(&self) -> Option<crate::Evidence> {
        self.params.evidence()
    }
}
