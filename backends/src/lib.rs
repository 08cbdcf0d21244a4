//! # keybridge-backends
//!
//! The signer abstraction the bridge uses, and one module per backend
//! (DESIGN.md §1, §3, §6). The bridge never names a backend: it creates
//! keys with [`create`], lists what a backend shows with [`list`], hands a
//! stored [`KeyRecord`] to [`open`], and after that only sees a [`Signer`],
//! usually behind a [`Worker`] thread that owns it.
//!
//! - [`Signer`]: one private key in hardware or derived from a passphrase:
//!   unlock, lock, sign the exact COSE `Sig_structure` bytes.
//! - [`create`], [`needs_secret`], [`list`], [`open`]: the backend-neutral
//!   entry points, the one place that dispatches on a [`BackendKind`].
//! - [`KeyRecord`]: what the bridge writes to disk per key (public key and
//!   reference only, never a secret).
//! - [`KeyUri`]: the key references of DESIGN.md §3, parsed once.
//! - [`BackendError`]: one variant per cause a caller must tell apart.
//! - [`passphrase`]: the memorized key, Argon2id → Ed25519.
//! - [`pkcs11`]: keys on PKCS#11 tokens, RFC 7512 URIs (feature `pkcs11`).
//! - [`worker`]: one thread per key that owns its session; requests queue to it.
//! - [`presence`]: whether a removable token is there, from its watch.
//!
//! No network, no async runtime: the only async piece is the `oneshot`
//! channel a [`Worker`] answers on.

use keybridge_protocol::PublicKey;

mod dispatch;
mod error;
pub mod health;
mod modules;
pub mod passphrase;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod presence;
mod record;
#[cfg(feature = "tpm")]
pub mod tpm;
mod uri;
pub mod worker;
#[cfg(any(feature = "yubikey", feature = "tpm"))]
pub mod x509;
#[cfg(feature = "yubikey")]
pub mod yubikey;

pub use dispatch::{
    CreateOptions, CreateSpec, EvidenceReport, ListedKey, TokenListing, create, list, needs_secret,
    open, verify_evidence,
};
pub use error::BackendError;
pub use modules::{DEFAULT_PKCS11_MODULES, ModuleAllowlist, set_module_allowlist};
pub use presence::{Presence, Seen, UNSEEN_LIMIT_SECS};
pub use record::{BackendKind, KeyRecord, RecordError, UnknownBackend};
pub use secrecy::{ExposeSecret, SecretString};
pub use uri::pkcs11::{ObjectType, Pkcs11Uri, Pkcs11UriError};
pub use uri::{KeyUri, UriError, redact_uri};
pub use worker::Worker;

/// `tracing` filter directives that silence the backends' libraries where
/// they are noisy (cryptoki logs every mechanism id it has no name for as
/// an error while listing a token's mechanisms: noise, not news). A binary
/// adds them to its default filter.
pub const LOG_QUIET: &str = "cryptoki::mechanism=off";

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

    /// A flag the signer raises while a signature waits for the user to
    /// touch the token, readable from other threads (the signer itself is
    /// busy then). `None` for signers that never wait for a touch.
    fn touch_indicator(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        None
    }

    /// Whether the token is there, as the backend's own watch sees it while
    /// unlocked (see [`presence`]). `None` for keys that cannot be pulled
    /// out.
    fn presence(&self) -> Option<std::sync::Arc<Presence>> {
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
