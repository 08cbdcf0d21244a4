//! [`TpmSigner`]: one P-256 key in a TPM.
//!
//! Every operation is one connection: load the key under its parent in a
//! salted session, use it, flush everything, disconnect (see
//! [`super::tpm`]). Unlocking checks the PIN with one signature over a
//! zero digest, under the dictionary-attack rules: nothing is tried while
//! the TPM is locked out, the last attempt before lockout only with
//! `spend_last_attempt`, and a PIN is never retried on the user's behalf.
//! The PIN stays in memory (zeroized on lock) for `daily`/`weekly`: a TPM
//! that went away and came back is simply used again with it.

use super::tpm::{Lockout, Tpm, tcti};
use super::{KeyBlobs, TpmParams};
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
}

impl TpmSigner {
    /// The signer of a recorded key, locked.
    pub(super) fn new(public: PublicKey, params: TpmParams, blobs: Option<KeyBlobs>) -> Self {
        TpmSigner {
            public,
            params,
            blobs,
            pin: None,
        }
    }

    /// Connects, loads the key (or finds it at its handle) in a salted
    /// session, and runs `f`; everything is flushed afterwards.
    fn with_key<T>(
        &self,
        f: impl FnOnce(&mut Tpm, KeyHandle, AuthSession) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut tpm = Tpm::open(&tcti(self.params.tcti.as_deref()))?;
        let parent = tpm.parent(self.params.parent)?;
        let session = tpm.salted_session(parent)?;
        let key = match (&self.blobs, self.params.handle) {
            (Some(blobs), _) => {
                tpm.load(parent, session, blobs.public.clone(), blobs.private.clone())?
            }
            (None, Some(handle)) => tpm.persistent(handle)?.into(),
            (None, None) => {
                return Err(BackendError::Failed(
                    "the key record names neither a key file nor a handle".into(),
                ));
            }
        };
        // The key must be the one recorded before a PIN goes to it.
        let found = super::public_key_of(&tpm.read_public(key)?)?;
        if found != self.public {
            return Err(BackendError::NotFound(
                "the TPM holds another key than the one recorded (the handle was reused?); no PIN was sent".into(),
            ));
        }
        f(&mut tpm, key, session)
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
        self.with_key(|tpm, key, session| try_pin(tpm, key, session, secret, spend_last_attempt))?;
        self.pin = Some(SecretString::from(secret.expose_secret().to_owned()));
        Ok(())
    }

    fn lock(&mut self) {
        self.pin = None;
    }

    fn is_unlocked(&self) -> bool {
        self.pin.is_some()
    }

    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        let pin = self.pin.as_ref().ok_or(BackendError::Locked)?;
        let digest: [u8; 32] = Sha256::digest(tbs).into();
        let result = self.with_key(|tpm, key, session| tpm.sign(key, session, pin, &digest));
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
