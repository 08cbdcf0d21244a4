//! PKCS#11 tokens (DESIGN.md §3, §6): keys generated on the token,
//! addressed by RFC 7512 `pkcs11:` URIs ([`Pkcs11Uri`]), used through
//! `cryptoki`.
//!
//! What each entry point does on the token, and where it lives:
//!
//! - [`create`] (`keygen.rs`): find the token the URI names, check it lists
//!   the mechanisms, `C_Login` with the PIN, `C_GenerateKeyPair` (P-256:
//!   `CKM_EC_KEY_PAIR_GEN` with the prime256v1 OID; Ed25519:
//!   `CKM_EC_EDWARDS_KEY_PAIR_GEN`, the RFC 8410 OID or else the
//!   `"edwards25519"` name), both halves on the token with one `CKA_ID` and
//!   `CKA_LABEL`, the private half `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//!   `CKA_EXTRACTABLE`, `CKA_SIGN` and no other usage; read back `CKA_SENSITIVE`,
//!   `CKA_EXTRACTABLE`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` and
//!   destroy both objects if the token says otherwise; `C_Logout`.
//! - [`open_uri`] (`existing.rs`): an existing key (e.g. from `pkcs11-tool
//!   --keypairgen`): read its public key object; with a PIN also check the
//!   private half is sensitive, not extractable, and signs for that public key.
//! - [`Pkcs11Signer::from_record`] (`signer.rs`, what [`crate::open`] calls
//!   at daemon start): no PIN, no login; if the token is present its public
//!   key object is compared with the record.
//! - [`Signer::unlock`](crate::Signer::unlock) (`signer.rs`, `login.rs`):
//!   token flags first (`CKF_USER_PIN_LOCKED`, `CKF_USER_PIN_FINAL_TRY`),
//!   then `C_OpenSession` + `C_Login`, find the private key, check it is the
//!   recorded one. [`Signer::lock`](crate::Signer::lock): `C_Logout`,
//!   `C_CloseSession`, PIN wiped.
//! - [`Signer::sign`](crate::Signer::sign) (`signer.rs`): ES256 is
//!   `CKM_ECDSA` over a SHA-256 computed here (SoftHSM 2.6 has no
//!   `CKM_ECDSA_SHA256`), answer made low-S; Ed25519 is plain `CKM_EDDSA`.
//! - [`crate::list`] (`list.rs`): every token and its usable public keys,
//!   without login.
//! - [`crate::create`] (`spec.rs`): the PIN from the request or the URI's
//!   `pin-source` (`login.rs`), then [`create`] or [`open_uri`].
//!
//! The other files: `objects.rs` finds tokens and keys and reads their
//! public keys (`CKA_EC_POINT`, DER-wrapped or raw); `login.rs` spends PINs
//! and reads their flags (retries left, blocked, last attempt); `errors.rs`
//! maps `CKR_*` codes to [`BackendError`](crate::BackendError); `module.rs`
//! keeps the loaded modules; `params.rs` is what a key record keeps.
//!
//! A token that disappears (`CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_REMOVED`,
//! `CKR_SESSION_HANDLE_INVALID`, …, or the key not found any more) gives
//! [`BackendError::TokenAbsent`](crate::BackendError::TokenAbsent); the
//! signer stays usable. A reference the user just gave that matches no
//! token or key gives [`BackendError::NotFound`](crate::BackendError::NotFound)
//! instead. While unlocked the signer keeps the PIN (a `SecretString`, wiped
//! at lock and drop) so that the next request can find the token again,
//! open a session and log in **once**; if that login fails the PIN is
//! forgotten and the error reported. There is never a retry loop, and the
//! last PIN attempt is never spent without the caller saying so.
//!
//! PKCS#11 login state belongs to the token, not to a session: two keys on
//! one token share it. Locking one key logs the token out; the other key,
//! if unlocked, logs in again with its own cached PIN at its next signature.
//! Unlocking always checks the PIN given, even if the token is already
//! logged in for another key.
//!
//! A module is loaded and `C_Initialize`d once per process, and shared by
//! every key on it. Some modules (SoftHSM2) look for tokens only at
//! `C_Initialize`, so when no slot matches a key's URI keybridge finalizes
//! and initialises that module again, at most once per lookup and once a
//! second. The price: every session of every key on that module closes;
//! unlocked keys log in again with their cached PIN at their next
//! signature (details in `module.rs`).

mod errors;
mod existing;
mod keygen;
mod list;
mod login;
mod module;
mod objects;
mod params;
mod signer;
mod spec;

pub use crate::uri::pkcs11::{ObjectType, Pkcs11Uri, Pkcs11UriError};
pub use existing::open_uri;
pub use keygen::create;
pub(crate) use list::list;
pub use login::pin_from_uri;
pub use module::MODULE_ENV;
pub use params::Pkcs11Params;
pub use signer::Pkcs11Signer;
pub(crate) use spec::create_from_spec;
