//! The memorized key (DESIGN.md §3): nothing secret is stored; the Ed25519
//! key is derived again from the passphrase at every unlock.
//!
//! ```text
//! salt = SHA-256("keybridge/passphrase/v1" ‖ account ‖ 0x00 ‖ agent)
//! seed = Argon2id v0x13 (passphrase, salt, m = 64 MiB, t = 3, p = 1, 32 bytes)
//! key  = Ed25519 signing key with secret seed `seed`
//! ```
//!
//! The costs and the salt context are written into the key record's
//! `params`, so a later version can raise the costs for new keys and still
//! open old ones. The derived key lives only while unlocked: in a
//! `SigningKey` that wipes itself when dropped, which [`Signer::lock`] and
//! dropping the signer do. Argon2's 64 MiB working memory is ours and is
//! wiped after each derivation too (it holds enough to recompute the seed).

use crate::record::{BackendKind, KeyRecord};
use crate::uri::KeyUri;
use crate::{BackendError, CreateSpec, Signer};
use ed25519_dalek::SigningKey;
use keybridge_protocol::{Algorithm, PublicKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Domain-separation prefix of the salt, and the record's `params.salt`.
pub const SALT_DOMAIN: &str = "keybridge/passphrase/v1";
/// The shortest passphrase [`create`] accepts, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// Argon2id memory cost for new keys, KiB (64 MiB).
pub const M_COST_KIB: u32 = 64 * 1024;
/// Argon2id passes for new keys.
pub const T_COST: u32 = 3;
/// Argon2id lanes for new keys.
pub const P_COST: u32 = 1;

/// The record's `kdf` name.
const KDF: &str = "argon2id";
/// Argon2 version 1.3 (RFC 9106).
const ARGON2_VERSION: u32 = 0x13;
// A record is a local file; these bounds keep an edited record from making
// keys weaker than new ones or from asking for gigabytes at unlock.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

// The derived key must wipe itself when dropped: that needs ed25519-dalek's
// `zeroize` feature. Fail the build, not the promise, if it is ever off.
const _: fn() = || {
    fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wipes_on_drop::<SigningKey>();
};

/// How a passphrase key is derived: the record's `params`. Public data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassphraseParams {
    /// Always `"argon2id"`.
    pub kdf: String,
    /// Argon2 version, 19 (0x13).
    pub version: u32,
    /// Memory cost, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// The salt's domain prefix, [`SALT_DOMAIN`].
    pub salt: String,
    /// Account id in the salt.
    pub account: String,
    /// Agent id in the salt.
    pub agent: String,
}

impl PassphraseParams {
    /// The parameters new keys get.
    pub fn new(account: &str, agent: &str) -> Self {
        PassphraseParams {
            kdf: KDF.to_owned(),
            version: ARGON2_VERSION,
            m_kib: M_COST_KIB,
            t: T_COST,
            p: P_COST,
            salt: SALT_DOMAIN.to_owned(),
            account: account.to_owned(),
            agent: agent.to_owned(),
        }
    }

    /// Checks that keybridge knows this derivation and that its costs are at
    /// least those of new keys and within sane bounds.
    fn check(&self) -> Result<(), BackendError> {
        let bad = |why: &str| {
            Err(BackendError::Failed(format!(
                "passphrase key record: {why}"
            )))
        };
        if self.kdf != KDF || self.version != ARGON2_VERSION {
            return bad("only Argon2id version 0x13 is known");
        }
        if self.salt != SALT_DOMAIN {
            return bad("unknown salt scheme");
        }
        if !(M_COST_KIB..=MAX_M_COST_KIB).contains(&self.m_kib)
            || !(T_COST..=MAX_T_COST).contains(&self.t)
            || !(P_COST..=MAX_P_COST).contains(&self.p)
        {
            return bad("Argon2 costs out of bounds");
        }
        Ok(())
    }
}

/// `SHA-256("keybridge/passphrase/v1" ‖ account ‖ 0x00 ‖ agent)`.
pub fn salt(account: &str, agent: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(SALT_DOMAIN)
        .chain_update(account)
        .chain_update([0u8])
        .chain_update(agent)
        .finalize()
        .into()
}

/// Runs Argon2id. The seed and the working memory are wiped when dropped.
fn derive_seed(
    passphrase: &[u8],
    params: &PassphraseParams,
) -> Result<Zeroizing<[u8; 32]>, BackendError> {
    let fail = |e: argon2::Error| BackendError::Failed(format!("argon2: {e}"));
    let costs = argon2::Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(fail)?;
    let mut memory = Zeroizing::new(vec![argon2::Block::default(); costs.block_count()]);
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, costs);
    let mut seed = Zeroizing::new([0u8; 32]);
    argon2
        .hash_password_into_with_memory(
            passphrase,
            &salt(&params.account, &params.agent),
            seed.as_mut_slice(),
            memory.as_mut_slice(),
        )
        .map_err(fail)?;
    Ok(seed)
}

/// Derives the signing key; boxed so it is not moved (and copied) again.
fn derive_key(
    passphrase: &SecretString,
    params: &PassphraseParams,
) -> Result<Box<SigningKey>, BackendError> {
    let seed = derive_seed(passphrase.expose_secret().as_bytes(), params)?;
    Ok(Box::new(SigningKey::from_bytes(&seed)))
}

/// Creates the passphrase key of `agent` in `account`.
///
/// The passphrase needs at least [`MIN_PASSPHRASE_CHARS`] characters
/// ([`BackendError::InvalidSecret`] otherwise); account and agent must be
/// non-empty and free of NUL. Returns the signer **unlocked** (the key was
/// just derived; lock it if the unlock policy says so) and the record to
/// store, which holds no secret.
pub fn create(
    account: &str,
    agent: &str,
    passphrase: &SecretString,
    label: Option<String>,
    now: i64,
) -> Result<(PassphraseSigner, KeyRecord), BackendError> {
    if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(BackendError::InvalidSecret(format!(
            "a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    let uri = KeyUri::passphrase(account, agent)
        .map_err(|e| BackendError::InvalidUri(format!("cannot name the key: {e}")))?;
    let params = PassphraseParams::new(account, agent);
    let key = derive_key(passphrase, &params)?;
    let public = PublicKey::ed25519(key.verifying_key().as_bytes())
        .map_err(|e| BackendError::Failed(e.to_string()))?;
    let record = KeyRecord::new(
        uri.to_string(),
        BackendKind::Passphrase,
        &public,
        label,
        now,
        serde_json::to_value(&params).map_err(|e| BackendError::Failed(e.to_string()))?,
    );
    let signer = PassphraseSigner {
        public,
        params,
        key: Some(key),
    };
    Ok((signer, record))
}

/// What [`crate::create`] does for a passphrase key: the checks on `spec`
/// (the URI, if given, is the key's own; Ed25519 only, never `existing`; a
/// passphrase is needed), then [`create`].
pub(crate) fn create_from_spec(
    spec: CreateSpec,
) -> Result<(PassphraseSigner, KeyRecord), BackendError> {
    if let Some(given) = &spec.uri {
        let expected = KeyUri::passphrase(&spec.account, &spec.agent)
            .map_err(|e| BackendError::InvalidUri(e.to_string()))?;
        if given != &expected {
            return Err(BackendError::InvalidUri(format!(
                "a passphrase key's URI is {expected}; it names the account and agent"
            )));
        }
    }
    if spec.existing || spec.alg.is_some_and(|a| a != Algorithm::Ed25519) {
        return Err(BackendError::Unsupported(
            "a passphrase key is always a derived Ed25519 key".into(),
        ));
    }
    let secret = spec.secret.ok_or_else(|| {
        BackendError::InvalidSecret("a passphrase key needs its passphrase".into())
    })?;
    create(&spec.account, &spec.agent, &secret, spec.label, spec.now)
}

/// The memorized Ed25519 key of one agent.
pub struct PassphraseSigner {
    public: PublicKey,
    params: PassphraseParams,
    /// Present only while unlocked; wiped when dropped.
    key: Option<Box<SigningKey>>,
}

impl PassphraseSigner {
    /// The signer a passphrase key record describes, locked. Fails with
    /// [`BackendError::Failed`] when the record is not a consistent
    /// passphrase record (backend, alg, params, URI) keybridge can derive.
    pub fn from_record(record: &KeyRecord) -> Result<Self, BackendError> {
        let bad = |why: String| BackendError::Failed(format!("passphrase key record: {why}"));
        if record.backend != BackendKind::Passphrase {
            return Err(bad(format!("backend is {}", record.backend)));
        }
        let public = record.public().map_err(|e| bad(e.to_string()))?;
        if public.algorithm() != Algorithm::Ed25519 {
            return Err(bad("a passphrase key is Ed25519".into()));
        }
        let params: PassphraseParams =
            serde_json::from_value(record.params.clone()).map_err(|e| bad(e.to_string()))?;
        params.check()?;
        let uri = record.key_uri().map_err(|e| bad(e.to_string()))?;
        let salted = KeyUri::passphrase(&params.account, &params.agent);
        if salted.as_ref() != Ok(&uri) {
            return Err(bad("uri and params name different agents".into()));
        }
        Ok(PassphraseSigner {
            public,
            params,
            key: None,
        })
    }

    /// The derivation parameters (public).
    pub fn params(&self) -> &PassphraseParams {
        &self.params
    }
}

impl Signer for PassphraseSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Derives the key (≈ 0.1–0.3 s, 64 MiB) and keeps it only if its public
    /// key is the recorded one. There is no attempt counter, so
    /// `spend_last_attempt` has no effect.
    fn unlock(
        &mut self,
        secret: &SecretString,
        _spend_last_attempt: bool,
    ) -> Result<(), BackendError> {
        let key = derive_key(secret, &self.params)?;
        if key.verifying_key().as_bytes()[..] != self.public.raw_bytes()[..] {
            // `key` is dropped (and wiped) here; the current state stays.
            return Err(BackendError::WrongSecret { retries_left: None });
        }
        self.key = Some(key);
        Ok(())
    }

    fn lock(&mut self) {
        self.key = None;
    }

    fn is_unlocked(&self) -> bool {
        self.key.is_some()
    }

    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        let key = self.key.as_ref().ok_or(BackendError::Locked)?;
        Ok(ed25519_dalek::Signer::sign(key.as_ref(), tbs)
            .to_bytes()
            .to_vec())
    }

    /// A signature is ~20 µs of arithmetic; only unlock (Argon2) is slow.
    fn signs_in_place(&self) -> bool {
        true
    }
}

/// The RustCrypto signing interface, for code that speaks it. Fails (with an
/// opaque error) while locked.
impl ed25519_dalek::Signer<ed25519_dalek::Signature> for PassphraseSigner {
    fn try_sign(
        &self,
        msg: &[u8],
    ) -> Result<ed25519_dalek::Signature, ed25519_dalek::SignatureError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(ed25519_dalek::SignatureError::new)?;
        key.try_sign(msg)
    }
}

/// Shows which key and whether it is unlocked; never key material.
impl fmt::Debug for PassphraseSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassphraseSigner")
            .field("kid", &self.public.kid())
            .field("account", &self.params.account)
            .field("agent", &self.params.agent)
            .field("unlocked", &self.key.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_protocol::{Claims, UnsignedCommand};
    use std::sync::{Mutex, OnceLock};

    const PASSPHRASE: &str = "correct horse battery staple";
    // Computed independently with the reference Argon2id of OpenSSL (through
    // Python's `cryptography`: Argon2id(salt, length=32, iterations=3,
    // lanes=1, memory_cost=65536)) and its Ed25519.
    const ALICE_SALT: &str = "226ec07ceac7f813150c6a272c687ed5b3ed8759394b29a112179072824ed7bf";
    const ALICE_SEED: &str = "80ce051b63e7582388edb8887872c7978f9d2efdb2803aa42e654900f24adf4f";
    const ALICE_PUBLIC: &str = "6e1d18114abdeef36988c3b8bac539a2b568923637be4cfad30f80a417597e34";
    const BOB_PUBLIC: &str = "88144247c5332bae4e2fed3b30457bbefc61c491b3e75b8e8ee9ad0bc700c5c0";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    /// Alice's key, created once for all tests (one derivation).
    fn alice() -> &'static (Mutex<PassphraseSigner>, KeyRecord) {
        static ALICE: OnceLock<(Mutex<PassphraseSigner>, KeyRecord)> = OnceLock::new();
        ALICE.get_or_init(|| {
            let (signer, record) = create(
                "ACME",
                "alice",
                &secret(PASSPHRASE),
                Some("laptop".into()),
                1_700_000_000,
            )
            .expect("create");
            (Mutex::new(signer), record)
        })
    }

    #[test]
    fn salt_is_sha256_of_domain_account_nul_agent() {
        let mut input = b"keybridge/passphrase/v1".to_vec();
        input.extend_from_slice(b"ACME");
        input.push(0);
        input.extend_from_slice(b"alice");
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(salt("ACME", "alice"), expected);
        assert_eq!(hex::encode(expected), ALICE_SALT);
        // The NUL separator keeps (account, agent) pairs apart.
        assert_ne!(salt("AC", "MEalice"), salt("ACME", "alice"));
    }

    #[test]
    fn derivation_matches_an_independent_argon2id_known_answer() {
        let params = PassphraseParams::new("ACME", "alice");
        let seed = derive_seed(PASSPHRASE.as_bytes(), &params).unwrap();
        assert_eq!(hex::encode(*seed), ALICE_SEED);

        // The same through the argon2 crate's plain entry point, salt built by hand.
        let salt: [u8; 32] = Sha256::digest(b"keybridge/passphrase/v1ACME\0alice").into();
        let mut direct = [0u8; 32];
        argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(65536, 3, 1, Some(32)).unwrap(),
        )
        .hash_password_into(PASSPHRASE.as_bytes(), &salt, &mut direct)
        .unwrap();
        assert_eq!(direct, *seed);

        let (_, record) = alice();
        let public = record.public().unwrap();
        assert_eq!(hex::encode(public.raw_bytes()), ALICE_PUBLIC);
        assert_eq!(record.uri, "passphrase:account=ACME;agent=alice");
    }

    #[test]
    fn another_agent_with_the_same_passphrase_gets_another_key() {
        let (bob, _) = create("ACME", "bob", &secret(PASSPHRASE), None, 0).unwrap();
        assert_eq!(hex::encode(bob.public_key().raw_bytes()), BOB_PUBLIC);
        assert_ne!(bob.public_key(), &alice().1.public().unwrap());
    }

    #[test]
    fn record_holds_the_parameters_and_no_secret() {
        let (_, record) = alice();
        assert_eq!(
            record.params,
            serde_json::json!({
                "kdf": "argon2id", "version": 19, "m_kib": 65536, "t": 3, "p": 1,
                "salt": "keybridge/passphrase/v1", "account": "ACME", "agent": "alice",
            })
        );
        let json = serde_json::to_string(record).unwrap();
        assert!(!json.contains(PASSPHRASE));
        assert!(!json.contains(ALICE_SEED));
        assert_eq!(record.label.as_deref(), Some("laptop"));
        assert_eq!(record.created, 1_700_000_000);
        assert_eq!(record.alg, Algorithm::Ed25519);
    }

    #[test]
    fn short_passphrase_is_refused_counting_characters() {
        for short in ["", "1234567", "ééééééé"] {
            let err = create("ACME", "alice", &secret(short), None, 0).unwrap_err();
            assert!(matches!(err, BackendError::InvalidSecret(_)), "{short:?}");
        }
    }

    #[test]
    fn bad_account_or_agent_is_refused_before_deriving() {
        for (account, agent) in [("", "alice"), ("ACME", ""), ("AC\0ME", "alice")] {
            let err = create(account, agent, &secret(PASSPHRASE), None, 0).unwrap_err();
            assert!(matches!(err, BackendError::InvalidUri(_)), "{err:?}");
        }
    }

    #[test]
    fn unlock_is_deterministic_and_a_wrong_passphrase_changes_nothing() {
        let (_, record) = alice();
        let mut signer = crate::open(record, std::path::Path::new("/nonexistent")).unwrap();
        assert!(!signer.is_unlocked());
        assert!(matches!(signer.sign(b"x"), Err(BackendError::Locked)));

        let wrong = secret("correct horse battery stapler");
        assert!(matches!(
            signer.unlock(&wrong, false),
            Err(BackendError::WrongSecret { retries_left: None })
        ));
        assert!(!signer.is_unlocked(), "a wrong passphrase leaves it locked");

        signer.unlock(&secret(PASSPHRASE), false).unwrap();
        assert!(signer.is_unlocked());

        assert!(matches!(
            signer.unlock(&wrong, true),
            Err(BackendError::WrongSecret { retries_left: None })
        ));
        assert!(
            signer.is_unlocked(),
            "a wrong passphrase leaves it unlocked"
        );
        let sig = signer.sign(b"still works").unwrap();
        let public = record.public().unwrap();
        public
            .verify(Algorithm::Ed25519, b"still works", &sig)
            .unwrap();
    }

    #[test]
    fn signatures_verify_with_the_recorded_key_and_assemble_into_a_command() {
        let (signer, record) = alice();
        let mut signer = signer.lock().unwrap();
        if !signer.is_unlocked() {
            signer.unlock(&secret(PASSPHRASE), false).unwrap();
        }
        let public = record.public().unwrap();
        let sig = Signer::sign(&mut *signer, b"some bytes").unwrap();
        assert_eq!(sig.len(), 64);
        public
            .verify(Algorithm::Ed25519, b"some bytes", &sig)
            .unwrap();
        assert!(
            public
                .verify(Algorithm::Ed25519, b"other bytes", &sig)
                .is_err()
        );

        let claims = Claims {
            iss: "ACME".into(),
            sub: "alice".into(),
            aud: Some("device-1".into()),
            exp: 1_700_000_300,
            nbf: 1_700_000_000,
            iat: 1_700_000_000,
            cti: [7; 16],
            cmd: "remote-control".into(),
            args: Default::default(),
            body: None,
            devs: None,
        };
        let unsigned = UnsignedCommand::new(&claims, &public).unwrap();
        let sig = Signer::sign(&mut *signer, unsigned.to_be_signed()).unwrap();
        unsigned
            .into_envelope(&sig)
            .expect("protocol accepts the signature");
    }

    #[test]
    fn lock_forgets_the_key_and_is_idempotent() {
        let (signer, _) = alice();
        let mut signer = signer.lock().unwrap();
        if !signer.is_unlocked() {
            signer.unlock(&secret(PASSPHRASE), false).unwrap();
        }
        signer.lock();
        assert!(!signer.is_unlocked());
        assert!(signer.key.is_none());
        assert!(matches!(
            Signer::sign(&mut *signer, b"x"),
            Err(BackendError::Locked)
        ));
        assert!(ed25519_dalek::Signer::try_sign(&*signer, b"x").is_err());
        signer.lock();
        assert!(!signer.is_unlocked());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (signer, record) = alice();
        let mut signer = signer.lock().unwrap();
        if !signer.is_unlocked() {
            signer.unlock(&secret(PASSPHRASE), false).unwrap();
        }
        let seed: [u8; 32] = hex::decode(ALICE_SEED).unwrap().try_into().unwrap();
        assert_eq!(signer.key.as_ref().unwrap().to_bytes(), seed);
        let shown = format!("{:?} {:#?}", *signer, *signer);
        assert!(!shown.contains(ALICE_SEED));
        assert!(!shown.contains(&ALICE_SEED.to_uppercase()));
        assert!(!shown.contains(&format!("{seed:?}")[1..20]));
        assert!(!shown.contains(PASSPHRASE));
        assert!(shown.contains(&record.kid().unwrap().to_hex()));
        assert!(shown.contains("unlocked: true"));
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let (_, record) = alice();
        let mut weak = record.clone();
        weak.params["m_kib"] = 1024.into();
        let mut other_agent = record.clone();
        other_agent.uri = "passphrase:account=ACME;agent=mallory".into();
        let mut extra = record.clone();
        extra.params["pepper"] = "x".into();
        let mut huge = record.clone();
        huge.params["m_kib"] = (4u64 << 20).into();
        let mut wrong_backend = record.clone();
        wrong_backend.backend = BackendKind::Tpm;
        for bad in [weak, other_agent, extra, huge, wrong_backend] {
            assert!(matches!(
                PassphraseSigner::from_record(&bad),
                Err(BackendError::Failed(_))
            ));
        }
        let opened = PassphraseSigner::from_record(record).unwrap();
        assert_eq!(opened.params(), &PassphraseParams::new("ACME", "alice"));
    }
}
