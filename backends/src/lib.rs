//! # keybridge-backends
//!
//! The signer abstraction the bridge uses, and one module per backend
//! (DESIGN.md §1, §3, §6). The bridge never names a backend beyond handing a
//! [`KeyRecord`] to [`open`] (or creating a key); after that it only sees a
//! [`Signer`], usually behind a [`Worker`] thread that owns it.
//!
//! - [`Signer`]: one private key in hardware or derived from a passphrase:
//!   unlock, lock, sign the exact COSE `Sig_structure` bytes.
//! - [`KeyRecord`]: what the bridge writes to disk per key (public key and
//!   reference only, never a secret).
//! - [`KeyUri`]: the key references of DESIGN.md §3.
//! - [`passphrase`]: the memorized key, Argon2id → Ed25519.
//! - [`pkcs11`]: keys on PKCS#11 tokens, RFC 7512 URIs (feature `pkcs11`).
//! - [`worker`]: one thread per key that owns its session; requests queue to it.
//!
//! No network, no async runtime: the only async piece is the `oneshot`
//! channel a [`Worker`] answers on.

use keybridge_protocol::PublicKey;

mod modules;
pub mod passphrase;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
mod record;
mod uri;
pub mod worker;

pub use modules::{DEFAULT_PKCS11_MODULES, ModuleAllowlist, set_module_allowlist};
pub use record::{BackendKind, KeyRecord, RecordError, UnknownBackend};
pub use secrecy::{ExposeSecret, SecretString};
pub use uri::{KeyUri, UriError, redact_uri};
pub use worker::Worker;

/// Hardware or software that holds one private key.
///
/// Implementations are driven from one thread at a time (a [`Worker`] owns
/// each signer), so methods take `&mut self` and may block: a PIN check or a
/// touch can take seconds.
pub trait Signer: Send + 'static {
    /// The public key of the key this signer holds. Known while locked.
    fn public_key(&self) -> &PublicKey;

    /// Checks the secret (PIN / passphrase) and makes signing possible until `lock`.
    ///
    /// `spend_last_attempt`: a hardware backend refuses with
    /// [`BackendError::LastAttempt`] instead of trying the final PIN attempt
    /// unless this is true. A wrong secret leaves the signer in the state it
    /// was in (locked stays locked, unlocked stays unlocked).
    fn unlock(
        &mut self,
        secret: &SecretString,
        spend_last_attempt: bool,
    ) -> Result<(), BackendError>;

    /// Forgets any cached secret or derived key (zeroized). Idempotent.
    fn lock(&mut self);

    /// Whether [`Signer::sign`] would be allowed now.
    fn is_unlocked(&self) -> bool;

    /// Signs the exact bytes `protocol` hands over (the COSE Sig_structure);
    /// returns the 64-byte signature (Ed25519, or P-256 r||s of ECDSA over
    /// SHA-256 of `tbs`). [`BackendError::Locked`] when locked.
    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError>;

    /// Evidence of hardware residency (attestation certificates etc.), if any.
    fn residency_evidence(&self) -> Option<Evidence> {
        None
    }

    /// True when `sign` and `lock` are quick and never block (a key in
    /// software): a [`Worker`] then runs a signature on the caller's thread
    /// whenever the signer is free, instead of handing it to its own thread
    /// and back. Hardware signers keep the default, `false`.
    fn signs_in_place(&self) -> bool {
        false
    }
}

/// Proof that a key lives in hardware, as the hardware gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// What kind of proof this is, e.g. `"yubikey-piv-attestation"` or
    /// `"tpm2-certify"`.
    pub kind: String,
    /// DER certificates (or statements), leaf first.
    pub der_chain: Vec<Vec<u8>>,
}

/// What went wrong in a backend. Messages never contain a secret; the bridge
/// maps each variant once to a stable problem code (DESIGN.md §6).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The key must be unlocked first (`locked`).
    #[error("the key is locked: unlock it first")]
    Locked,
    /// The PIN or passphrase is wrong (`wrong_pin`); hardware says how many
    /// attempts remain, a passphrase has no counter.
    #[error("wrong PIN or passphrase{}", retries_note(*.retries_left))]
    WrongSecret {
        /// Attempts left before the PIN blocks, when the backend counts them.
        retries_left: Option<u32>,
    },
    /// Only the last PIN attempt is left and the caller did not allow
    /// spending it (`wrong_pin` with `retries_left`).
    #[error(
        "only {retries_left} PIN attempt left: not trying it unless the caller allows spending the last attempt"
    )]
    LastAttempt {
        /// Attempts left (normally 1).
        retries_left: u32,
    },
    /// The PIN is blocked (`pin_blocked`).
    #[error("the PIN is blocked after too many wrong attempts: unblock or reset the token")]
    PinBlocked,
    /// The token is not there (`token_absent`); the text says which.
    #[error("the token is not present: {0}")]
    TokenAbsent(String),
    /// The user did not touch the key in time (`touch_timeout`).
    #[error("the security key was not touched in time")]
    TouchTimeout,
    /// The secret is not acceptable for a new key, e.g. a passphrase that is
    /// too short (`bad_request`).
    #[error("unacceptable secret: {0}")]
    InvalidSecret(String),
    /// The backend or operation is not available in this build or on this
    /// hardware.
    #[error("{0}")]
    Unsupported(String),
    /// A PKCS#11 module that the allowlist does not name (`policy_denied`):
    /// it was not loaded.
    #[error(
        "the PKCS#11 module {path} is not allowed: it was not loaded. Allowed modules (pkcs11_modules in /etc/keybridge/policy.toml or ~/.config/keybridge/config.toml): {allowed}"
    )]
    ModuleNotAllowed {
        /// The module as named.
        path: String,
        /// The allowlist's patterns.
        allowed: String,
    },
    /// Anything else: a broken record, a library error, a worker that stopped.
    #[error("backend failure: {0}")]
    Failed(String),
}

fn retries_note(retries_left: Option<u32>) -> String {
    match retries_left {
        Some(1) => " (1 attempt left)".to_owned(),
        Some(n) => format!(" ({n} attempts left)"),
        None => String::new(),
    }
}

/// Opens the signer a key record describes, locked.
///
/// This is the one place that dispatches on the backend. Backends that are
/// not built yet (or not compiled in) answer [`BackendError::Unsupported`].
pub fn open(record: &KeyRecord) -> Result<Box<dyn Signer>, BackendError> {
    match record.backend {
        BackendKind::Passphrase => Ok(Box::new(passphrase::PassphraseSigner::from_record(record)?)),
        #[cfg(feature = "pkcs11")]
        BackendKind::Pkcs11 => Ok(Box::new(pkcs11::Pkcs11Signer::from_record(record)?)),
        #[cfg(not(feature = "pkcs11"))]
        BackendKind::Pkcs11 => Err(not_built(BackendKind::Pkcs11)),
        kind @ (BackendKind::Yubikey | BackendKind::Tpm) => Err(not_built(kind)),
    }
}

fn not_built(kind: BackendKind) -> BackendError {
    let compiled_in = match kind {
        BackendKind::Passphrase => true,
        BackendKind::Pkcs11 => cfg!(feature = "pkcs11"),
        BackendKind::Yubikey => cfg!(feature = "yubikey"),
        BackendKind::Tpm => cfg!(feature = "tpm"),
    };
    BackendError::Unsupported(if compiled_in {
        format!("the {kind} backend is not built yet")
    } else {
        format!("keybridge was built without the {kind} feature")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_backends_say_they_are_not_built_yet() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let public = PublicKey::ed25519(key.verifying_key().as_bytes()).unwrap();
        for (kind, uri) in [
            (BackendKind::Yubikey, "yubikey:serial=1;slot=9c"),
            (BackendKind::Tpm, "tpm:handle=0x81000101"),
        ] {
            let record =
                KeyRecord::new(uri.into(), kind, &public, None, 0, serde_json::Value::Null);
            let err = open(&record).err().expect("not built");
            assert!(matches!(err, BackendError::Unsupported(_)));
            assert_eq!(
                err.to_string(),
                format!("the {kind} backend is not built yet")
            );
        }
    }

    #[test]
    fn wrong_secret_message_counts_attempts() {
        let e = BackendError::WrongSecret {
            retries_left: Some(2),
        };
        assert_eq!(e.to_string(), "wrong PIN or passphrase (2 attempts left)");
        let e = BackendError::WrongSecret { retries_left: None };
        assert_eq!(e.to_string(), "wrong PIN or passphrase");
    }
}
