//! The memorized key (DESIGN.md §3): nothing secret is stored; the Ed25519
//! key is derived again from the passphrase at every unlock.
//!
//! ```text
//! salt = SHA-256("keybridge/passphrase/v1" ‖ account ‖ 0x00 ‖ agent)
//! seed = Argon2id v0x13 (passphrase, salt, m, t, p, 32 bytes)
//! key  = Ed25519 signing key with secret seed `seed`
//! ```
//!
//! The costs `m`, `t`, `p` are 64 MiB, 3 passes, 1 lane unless the user
//! raises them ([`KdfCosts`]): they are part of the derivation, so the same
//! passphrase, account, agent **and costs** give the same key again, and
//! other costs give another key. The costs and the salt context are written
//! into the key record's `params` (public: the key is recreated elsewhere
//! only with the same costs, so the user notes them with the passphrase).
//! A record is opened only with costs within [`KdfCosts::DEFAULT`] ..=
//! [`KdfCosts::MAX`]: an edited record can make a key neither weaker than
//! new ones nor ask for gigabytes at unlock. The derived key lives only while unlocked: in a
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

/// The most Argon2id memory a key may ask for, KiB (1 GiB): the daemon
/// holds it for the time of an unlock.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// The most Argon2id passes a key may ask for.
pub const MAX_T_COST: u32 = 64;
/// The most Argon2id lanes a key may ask for.
pub const MAX_P_COST: u32 = 16;

/// The record's `kdf` name.
const KDF: &str = "argon2id";
/// Argon2 version 1.3 (RFC 9106).
const ARGON2_VERSION: u32 = 0x13;

/// The Argon2id costs of a passphrase key: memory (KiB), passes, lanes.
///
/// They are an input of the derivation like the passphrase: the same
/// passphrase, account, agent and costs give the same key (kid) on any
/// machine, other costs another key. Raising them makes every offline
/// guess at the passphrase (the public key is in the account's key log)
/// cost that much more, and every unlock too. Lanes do not make a guess
/// dearer (keybridge runs them one after the other); they exist so that a
/// key made elsewhere with several lanes can be recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCosts {
    /// Memory cost, KiB.
    pub m_kib: u32,
    /// Passes (time cost).
    pub t: u32,
    /// Lanes (parallelism).
    pub p: u32,
}

impl KdfCosts {
    /// What new keys get unless the user asks for more: 64 MiB, 3 passes,
    /// 1 lane. Also the least a key may have.
    pub const DEFAULT: KdfCosts = KdfCosts {
        m_kib: M_COST_KIB,
        t: T_COST,
        p: P_COST,
    };
    /// The most a key may ask for: 1 GiB, 64 passes, 16 lanes.
    pub const MAX: KdfCosts = KdfCosts {
        m_kib: MAX_M_COST_KIB,
        t: MAX_T_COST,
        p: MAX_P_COST,
    };

    /// Whether every cost is within [`KdfCosts::DEFAULT`] ..=
    /// [`KdfCosts::MAX`]; else what is out of range and the allowed range,
    /// for a person.
    pub fn check(&self) -> Result<(), String> {
        let (min, max) = (Self::DEFAULT, Self::MAX);
        if !(min.m_kib..=max.m_kib).contains(&self.m_kib) {
            return Err(format!(
                "Argon2id memory {} is out of range: allowed {} to {}",
                memory_text(self.m_kib),
                memory_text(min.m_kib),
                memory_text(max.m_kib)
            ));
        }
        if !(min.t..=max.t).contains(&self.t) {
            return Err(format!(
                "Argon2id passes {} is out of range: allowed {} to {}",
                self.t, min.t, max.t
            ));
        }
        if !(min.p..=max.p).contains(&self.p) {
            return Err(format!(
                "Argon2id lanes {} is out of range: allowed {} to {}",
                self.p, min.p, max.p
            ));
        }
        Ok(())
    }
}

impl fmt::Display for KdfCosts {
    /// `256 MiB, 4 passes, 1 lane`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} pass{}, {} lane{}",
            memory_text(self.m_kib),
            self.t,
            if self.t == 1 { "" } else { "es" },
            self.p,
            if self.p == 1 { "" } else { "s" }
        )
    }
}

/// A memory size in KiB for a person: `1 GiB`, `256 MiB`, `65537 KiB`.
pub fn memory_text(kib: u32) -> String {
    if kib != 0 && kib.is_multiple_of(1024 * 1024) {
        format!("{} GiB", kib / (1024 * 1024))
    } else if kib != 0 && kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

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
    /// The parameters new keys get by default ([`KdfCosts::DEFAULT`]).
    pub fn new(account: &str, agent: &str) -> Self {
        Self::with_costs(account, agent, KdfCosts::DEFAULT)
    }

    /// The parameters of a key with `costs` (not checked here: see
    /// [`KdfCosts::check`]).
    pub fn with_costs(account: &str, agent: &str, costs: KdfCosts) -> Self {
        PassphraseParams {
            kdf: KDF.to_owned(),
            version: ARGON2_VERSION,
            m_kib: costs.m_kib,
            t: costs.t,
            p: costs.p,
            salt: SALT_DOMAIN.to_owned(),
            account: account.to_owned(),
            agent: agent.to_owned(),
        }
    }

    /// The Argon2id costs.
    pub fn costs(&self) -> KdfCosts {
        KdfCosts {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
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
        if let Err(why) = self.costs().check() {
            // No version of keybridge writes such a record: it was edited.
            return bad(&format!(
                "{why} (keybridge never writes such a record: it was edited; the key is not served)"
            ));
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

/// Creates the passphrase key of `agent` in `account` with the default
/// costs: [`create_with_costs`] with [`KdfCosts::DEFAULT`].
pub fn create(
    account: &str,
    agent: &str,
    passphrase: &SecretString,
    label: Option<String>,
    now: i64,
) -> Result<(PassphraseSigner, KeyRecord), BackendError> {
    create_with_costs(account, agent, passphrase, KdfCosts::DEFAULT, label, now)
}

/// Creates the passphrase key of `agent` in `account` with Argon2id
/// `costs`.
///
/// The costs must be within [`KdfCosts::DEFAULT`] ..= [`KdfCosts::MAX`]
/// ([`BackendError::KdfCosts`] otherwise, before anything is derived). The
/// passphrase needs at least [`MIN_PASSPHRASE_CHARS`] characters
/// ([`BackendError::InvalidSecret`] otherwise); account and agent must be
/// non-empty and free of NUL. Returns the signer **unlocked** (the key was
/// just derived; lock it if the unlock policy says so) and the record to
/// store, which holds no secret.
pub fn create_with_costs(
    account: &str,
    agent: &str,
    passphrase: &SecretString,
    costs: KdfCosts,
    label: Option<String>,
    now: i64,
) -> Result<(PassphraseSigner, KeyRecord), BackendError> {
    costs.check().map_err(BackendError::KdfCosts)?;
    if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(BackendError::InvalidSecret(format!(
            "a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    let uri = KeyUri::passphrase(account, agent)
        .map_err(|e| BackendError::InvalidUri(format!("cannot name the key: {e}")))?;
    let params = PassphraseParams::with_costs(account, agent, costs);
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
/// passphrase is needed), then [`create_with_costs`] with the costs of
/// `spec.options.kdf` (default [`KdfCosts::DEFAULT`]).
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
    let costs = spec.options.kdf.unwrap_or(KdfCosts::DEFAULT);
    create_with_costs(
        &spec.account,
        &spec.agent,
        &secret,
        costs,
        spec.label,
        spec.now,
    )
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

    /// Derives the key (≈ 0.1–0.3 s at the default 64 MiB, 3 passes; in
    /// proportion to memory × passes above) and keeps it only if its public
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

    // Non-default costs, computed the same independent way (OpenSSL's
    // Argon2id through Python's `cryptography`, and its Ed25519).
    const ALICE_4_PASSES_2_LANES_SEED: &str =
        "84361e282e64de5f4a047a7214c526e8f84c2b3c108b2bf8813e0de7b1d8d815";
    const ALICE_4_PASSES_2_LANES_PUBLIC: &str =
        "0f77ad8ec30c7dbcfd11be412d7add5a1877b2dcf51ebc902ac3b7354270c785";
    const ALICE_96_MIB_SEED: &str =
        "74974b503f4c0bc511d56e926a96f25f51172ac20c25ab59894bcc017cf81dab";
    const ALICE_96_MIB_PUBLIC: &str =
        "d3aa375484cefc1e17f94c52adad2cc5bb519efca6186b785604fb37b627aeb8";

    fn costs(m_kib: u32, t: u32, p: u32) -> KdfCosts {
        KdfCosts { m_kib, t, p }
    }

    #[test]
    fn raised_costs_match_independent_argon2id_known_answers_and_give_other_keys() {
        for (c, seed_hex, public_hex) in [
            (
                costs(65536, 4, 2),
                ALICE_4_PASSES_2_LANES_SEED,
                ALICE_4_PASSES_2_LANES_PUBLIC,
            ),
            (
                costs(96 * 1024, 3, 1),
                ALICE_96_MIB_SEED,
                ALICE_96_MIB_PUBLIC,
            ),
        ] {
            let params = PassphraseParams::with_costs("ACME", "alice", c);
            let seed = derive_seed(PASSPHRASE.as_bytes(), &params).unwrap();
            assert_eq!(hex::encode(*seed), seed_hex, "{c}");

            // The argon2 crate's plain entry point, salt built by hand.
            let salt: [u8; 32] = Sha256::digest(b"keybridge/passphrase/v1ACME\0alice").into();
            let mut direct = [0u8; 32];
            argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                argon2::Params::new(c.m_kib, c.t, c.p, Some(32)).unwrap(),
            )
            .hash_password_into(PASSPHRASE.as_bytes(), &salt, &mut direct)
            .unwrap();
            assert_eq!(direct, *seed, "{c}");

            let (signer, record) =
                create_with_costs("ACME", "alice", &secret(PASSPHRASE), c, None, 0).unwrap();
            assert_eq!(hex::encode(signer.public_key().raw_bytes()), public_hex);
            // Another key than the default costs give, for the same
            // passphrase, account and agent.
            assert_ne!(public_hex, ALICE_PUBLIC);
            assert_eq!(record.params["m_kib"], c.m_kib);
            assert_eq!(record.params["t"], c.t);
            assert_eq!(record.params["p"], c.p);

            // The record opens with its costs, and the passphrase unlocks it.
            let mut opened = PassphraseSigner::from_record(&record).unwrap();
            assert_eq!(opened.params().costs(), c);
            opened.unlock(&secret(PASSPHRASE), false).unwrap();
            assert_eq!(opened.public_key(), signer.public_key());
        }
    }

    #[test]
    fn costs_below_the_defaults_or_above_the_bounds_are_refused_naming_the_range() {
        assert_eq!(KdfCosts::DEFAULT, costs(64 * 1024, 3, 1));
        assert_eq!(KdfCosts::MAX, costs(1024 * 1024, 64, 16));
        assert!(KdfCosts::DEFAULT.check().is_ok());
        assert!(KdfCosts::MAX.check().is_ok());
        for (bad, says) in [
            (
                costs(32 * 1024, 3, 1),
                "Argon2id memory 32 MiB is out of range: allowed 64 MiB to 1 GiB",
            ),
            (
                costs(64 * 1024 - 1, 3, 1),
                "Argon2id memory 65535 KiB is out of range: allowed 64 MiB to 1 GiB",
            ),
            (
                costs(2 * 1024 * 1024, 3, 1),
                "Argon2id memory 2 GiB is out of range: allowed 64 MiB to 1 GiB",
            ),
            (
                costs(65536, 2, 1),
                "Argon2id passes 2 is out of range: allowed 3 to 64",
            ),
            (
                costs(65536, 65, 1),
                "Argon2id passes 65 is out of range: allowed 3 to 64",
            ),
            (
                costs(65536, 3, 0),
                "Argon2id lanes 0 is out of range: allowed 1 to 16",
            ),
            (
                costs(65536, 3, 17),
                "Argon2id lanes 17 is out of range: allowed 1 to 16",
            ),
        ] {
            assert_eq!(bad.check().unwrap_err(), says);
            // Refused before deriving: the out-of-range 2 GiB is never
            // allocated, and the passphrase is not even looked at.
            let err = create_with_costs("ACME", "alice", &secret("short"), bad, None, 0)
                .expect_err("refused");
            assert!(
                matches!(&err, BackendError::KdfCosts(m) if m == says),
                "{err:?}"
            );
        }
    }

    #[test]
    fn costs_read_as_a_person_writes_them_down() {
        assert_eq!(KdfCosts::DEFAULT.to_string(), "64 MiB, 3 passes, 1 lane");
        assert_eq!(
            costs(1024 * 1024, 1, 4).to_string(),
            "1 GiB, 1 pass, 4 lanes"
        );
        assert_eq!(memory_text(65537), "65537 KiB");
    }

    #[test]
    fn a_record_edited_to_tiny_costs_is_refused_with_the_reason() {
        let (_, record) = alice();
        for (field, value, says) in [
            ("m_kib", 8, "Argon2id memory 8 KiB is out of range"),
            ("t", 1, "Argon2id passes 1 is out of range"),
            ("p", 0, "Argon2id lanes 0 is out of range"),
        ] {
            let mut edited = record.clone();
            edited.params[field] = value.into();
            let err = PassphraseSigner::from_record(&edited).expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, BackendError::Failed(_)), "{text}");
            assert!(text.contains(says), "{text}");
            assert!(text.contains("it was edited"), "{text}");
        }
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
