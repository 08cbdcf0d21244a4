//! The account's recovery key (DESIGN.md §5): generated where the recovery
//! file is written (the CLI process), sealed in an age file under a
//! passphrase (scrypt recipient), and never sent to the daemon — only its
//! public COSE_Key is. It is the only signer of a key log's `reset`.
//!
//! The file's plaintext is JSON:
//! `{"keybridge_recovery": 1, "account", "recovery_kid", "recovery_seed": HEX}`.
//! Every buffer that holds the seed is zeroized.

use keybridge_protocol::PublicKey;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use std::io::Write as _;
use zeroize::Zeroizing;

/// Why a recovery key could not be made or sealed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The passphrase is too short to protect the file.
    #[error("the recovery passphrase must have at least {0} characters")]
    WeakPassphrase(usize),
    /// No randomness from the system.
    #[error("no randomness from the system: {0}")]
    Random(String),
    /// age failed.
    #[error("sealing the recovery file: {0}")]
    Seal(String),
    /// The file does not open with this passphrase, or is not an age file.
    #[error("the recovery file does not open with this passphrase (or is not an age file)")]
    WrongPassphrase,
    /// It opened, but is not a keybridge recovery file.
    #[error("the recovery file opened but is not a keybridge recovery file: {0}")]
    NotRecovery(&'static str),
}

/// Shortest recovery passphrase.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Largest recovery file read.
pub const MAX_FILE_LEN: usize = 64 * 1024;

/// A fresh recovery key; its seed is wiped on drop.
pub struct RecoveryKey {
    seed: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("kid", &self.public.kid())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Plaintext<'a> {
    keybridge_recovery: u8,
    account: &'a str,
    recovery_kid: String,
    recovery_seed: &'a str,
}

/// The plaintext as read back: the seed borrowed from the (zeroized)
/// buffer, never copied into a `String`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Opened<'a> {
    keybridge_recovery: u8,
    account: String,
    recovery_kid: String,
    recovery_seed: &'a str,
}

impl RecoveryKey {
    /// Generates a recovery key from the system's randomness.
    pub fn generate() -> Result<Self, RecoveryError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| RecoveryError::Random(e.to_string()))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey::ed25519(signing.verifying_key().as_bytes())
            .expect("an Ed25519 public key from dalek is valid");
        Ok(RecoveryKey { seed, public })
    }

    /// Opens a recovery file sealed by [`RecoveryKey::seal`]: the key and
    /// the account it was made for. Every buffer with the seed is wiped.
    pub fn open(sealed: &[u8], passphrase: &SecretString) -> Result<(Self, String), RecoveryError> {
        let identity = age::scrypt::Identity::new(passphrase.clone());
        let plain = Zeroizing::new(
            age::decrypt(&identity, sealed).map_err(|_| RecoveryError::WrongPassphrase)?,
        );
        let p: Opened<'_> = serde_json::from_slice(&plain)
            .map_err(|_| RecoveryError::NotRecovery("not its JSON"))?;
        if p.keybridge_recovery != 1 {
            return Err(RecoveryError::NotRecovery("unknown version"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        let raw = Zeroizing::new(
            keybridge_protocol::key::unhex(p.recovery_seed)
                .ok_or(RecoveryError::NotRecovery("recovery_seed"))?,
        );
        if raw.len() != 32 {
            return Err(RecoveryError::NotRecovery("recovery_seed"));
        }
        seed.copy_from_slice(&raw);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey::ed25519(signing.verifying_key().as_bytes())
            .expect("an Ed25519 public key from dalek is valid");
        if public.kid().to_hex() != p.recovery_kid {
            return Err(RecoveryError::NotRecovery("its kid is not its seed's"));
        }
        Ok((RecoveryKey { seed, public }, p.account))
    }

    /// Signs `msg` (a `reset` event's to-be-signed bytes) with the
    /// recovery key.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&self.seed);
        signing.sign(msg).to_bytes().to_vec()
    }

    /// The public half, which goes into the key log's genesis event.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The age file for `account`, sealed under `passphrase`.
    pub fn seal(&self, account: &str, passphrase: &SecretString) -> Result<Vec<u8>, RecoveryError> {
        if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(RecoveryError::WeakPassphrase(MIN_PASSPHRASE_CHARS));
        }
        let seed_hex = Zeroizing::new(keybridge_protocol::key::hex(self.seed.as_ref()));
        // Written into a buffer large enough never to reallocate (a
        // reallocation would leave a copy of the seed behind).
        let mut plaintext = Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer_pretty(
            &mut *plaintext,
            &Plaintext {
                keybridge_recovery: 1,
                account,
                recovery_kid: self.public.kid().to_hex(),
                recovery_seed: &seed_hex,
            },
        )
        .map_err(|e| RecoveryError::Seal(e.to_string()))?;
        plaintext
            .write_all(b"\n")
            .map_err(|e| RecoveryError::Seal(e.to_string()))?;
        let recipient = age::scrypt::Recipient::new(passphrase.clone());
        age::encrypt(&recipient, &plaintext).map_err(|e| RecoveryError::Seal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_file_opens_with_age_and_holds_the_seed_of_the_public_key() {
        let key = RecoveryKey::generate().unwrap();
        let pass = SecretString::from("a recovery passphrase".to_owned());
        let sealed = key.seal("acme", &pass).unwrap();
        let identity = age::scrypt::Identity::new(pass);
        let plain = age::decrypt(&identity, &sealed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["account"], "acme");
        assert_eq!(v["recovery_kid"], key.public().kid().to_hex());
        let seed = keybridge_protocol::key::unhex(v["recovery_seed"].as_str().unwrap()).unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap());
        assert_eq!(
            &signing.verifying_key().as_bytes()[..],
            &key.public().raw_bytes()[..]
        );
        assert!(!format!("{key:?}").contains(v["recovery_seed"].as_str().unwrap()));
    }

    #[test]
    fn a_short_passphrase_is_refused() {
        let key = RecoveryKey::generate().unwrap();
        let e = key
            .seal("acme", &SecretString::from("short".to_owned()))
            .unwrap_err();
        assert!(matches!(e, RecoveryError::WeakPassphrase(12)));
    }

    #[test]
    fn a_sealed_file_opens_with_its_passphrase_only_and_signs_as_its_key() {
        let key = RecoveryKey::generate().unwrap();
        let pass = SecretString::from("a recovery passphrase".to_owned());
        let sealed = key.seal("acme", &pass).unwrap();
        let (opened, account) = RecoveryKey::open(&sealed, &pass).unwrap();
        assert_eq!(account, "acme");
        assert_eq!(opened.public(), key.public());
        let sig = opened.sign(b"msg");
        key.public()
            .verify(keybridge_protocol::Algorithm::Ed25519, b"msg", &sig)
            .unwrap();
        let wrong = SecretString::from("another passphrase".to_owned());
        assert!(matches!(
            RecoveryKey::open(&sealed, &wrong),
            Err(RecoveryError::WrongPassphrase)
        ));
        let mut damaged = sealed.clone();
        let n = damaged.len() - 3;
        damaged[n] ^= 1;
        assert!(RecoveryKey::open(&damaged, &pass).is_err());
        assert!(RecoveryKey::open(b"not age", &pass).is_err());
    }
}
