//! PKCS#11 tokens (DESIGN.md §3, §6): keys generated on the token,
//! addressed by RFC 7512 `pkcs11:` URIs, used through `cryptoki`.
//!
//! What each entry point does on the token:
//!
//! - [`create`]: find the token the URI names, check it lists the
//!   mechanisms, `C_Login` with the PIN, `C_GenerateKeyPair` (P-256:
//!   `CKM_EC_KEY_PAIR_GEN` with the prime256v1 OID; Ed25519:
//!   `CKM_EC_EDWARDS_KEY_PAIR_GEN`, the RFC 8410 OID or else the
//!   `"edwards25519"` name), both halves on the token with one `CKA_ID` and
//!   `CKA_LABEL`, the private half `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//!   `CKA_EXTRACTABLE`, `CKA_SIGN` and no other usage; read back `CKA_SENSITIVE`,
//!   `CKA_EXTRACTABLE`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` and
//!   destroy both objects if the token says otherwise; `C_Logout`.
//! - [`open_uri`]: an existing key (e.g. from `pkcs11-tool --keypairgen`):
//!   read its public key object; with a PIN also check the private half is
//!   sensitive, not extractable, and signs for that public key.
//! - [`Pkcs11Signer::from_record`] (what [`crate::open`] calls at daemon
//!   start): no PIN, no login; if the token is present its public key
//!   object is compared with the record.
//! - [`Signer::unlock`]: token flags first (`CKF_USER_PIN_LOCKED`,
//!   `CKF_USER_PIN_FINAL_TRY`), then `C_OpenSession` + `C_Login`, find the
//!   private key, check it is the recorded one. [`Signer::lock`]:
//!   `C_Logout`, `C_CloseSession`, PIN wiped.
//! - [`Signer::sign`]: ES256 is `CKM_ECDSA` over a SHA-256 computed here
//!   (SoftHSM 2.6 has no `CKM_ECDSA_SHA256`), answer made low-S; Ed25519
//!   is plain `CKM_EDDSA`.
//! - [`list`]: every token and its usable public keys, without login.
//!
//! A token that disappears (`CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_REMOVED`,
//! `CKR_SESSION_HANDLE_INVALID`, …, or the key not found any more) gives
//! [`BackendError::TokenAbsent`]; the signer stays usable. While unlocked it
//! keeps the PIN (a `SecretString`, wiped at lock and drop) so that the next
//! request can find the token again, open a session and log in **once**; if
//! that login fails the PIN is forgotten and the error reported. There is
//! never a retry loop, and the last PIN attempt is never spent without the
//! caller saying so.
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
//! signature (details in `pkcs11/module.rs`).

mod module;
mod uri;

pub use uri::{ObjectType, Pkcs11Uri, Pkcs11UriError};

use crate::record::{BackendKind, KeyRecord};
use crate::{BackendError, Signer};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use keybridge_protocol::{Algorithm, Kid, PublicKey};
use module::{Module, failure, means_absent, rv};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use zeroize::Zeroizing;

/// The environment variable naming the PKCS#11 module when a URI has no
/// `module-path`.
pub const MODULE_ENV: &str = "KEYBRIDGE_PKCS11_MODULE";

/// DER OID 1.2.840.10045.3.1.7 (prime256v1): `CKA_EC_PARAMS` of P-256.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID 1.3.101.112 (RFC 8410 id-Ed25519).
const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519" (PKCS#11 3.0 curve name; what
/// `pkcs11-tool` writes).
const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// Length of a random `CKA_ID`.
const ID_LEN: usize = 16;
/// The largest PIN file read.
const MAX_PIN_FILE: u64 = 4096;
/// Signed (and verified) to prove a private key is the half of a public key
/// when the token shows no public key object for it.
const PROBE: &[u8] = b"keybridge pkcs11 key check";

/// The non-secret facts of a PKCS#11 key: the key record's `params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pkcs11Params {
    /// The module path.
    pub module: String,
    /// Token label (CK_TOKEN_INFO.label).
    pub token: String,
    /// Token serial number.
    pub serial: String,
    /// Token manufacturer.
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// `CKA_ID`, lower-case hex.
    pub id: String,
    /// `CKA_LABEL`.
    pub object: String,
    /// The signing mechanism: `"CKM_ECDSA"` (over a host-side SHA-256) or
    /// `"CKM_EDDSA"`.
    pub mechanism: String,
    /// True when keybridge generated the key on the token ([`create`]);
    /// false for a key opened with [`open_uri`].
    pub generated: bool,
    /// `CKA_LOCAL` of the private key (generated on the token), when read.
    #[serde(default)]
    pub local: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE` of the private key, when read.
    #[serde(default)]
    pub always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE` of the private key, when read.
    #[serde(default)]
    pub never_extractable: Option<bool>,
    /// The account the key was created for ([`create`] only).
    #[serde(default)]
    pub account: Option<String>,
    /// The agent the key was created for ([`create`] only).
    #[serde(default)]
    pub agent: Option<String>,
}

/// One token, as [`list`] sees it without logging in.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The slot id (changes between runs on some modules; not a reference).
    pub slot: u64,
    /// Token label.
    pub label: String,
    /// Token manufacturer.
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// Token serial number.
    pub serial: String,
    /// `CKF_LOGIN_REQUIRED`.
    pub login_required: bool,
    /// `CKF_USER_PIN_INITIALIZED`.
    pub user_pin_initialized: bool,
    /// `CKF_USER_PIN_COUNT_LOW`: a wrong PIN was entered since the last
    /// successful login.
    pub user_pin_count_low: bool,
    /// `CKF_USER_PIN_FINAL_TRY`: one attempt left.
    pub user_pin_final_try: bool,
    /// `CKF_USER_PIN_LOCKED`: the PIN is blocked.
    pub user_pin_locked: bool,
    /// `CKF_PROTECTED_AUTHENTICATION_PATH`: a PIN pad (keybridge does not
    /// use one).
    pub protected_authentication_path: bool,
    /// Whether [`create`] can make a P-256 key here (`CKM_EC_KEY_PAIR_GEN`
    /// and `CKM_ECDSA` listed).
    pub p256: bool,
    /// Whether [`create`] can make an Ed25519 key here
    /// (`CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA` listed).
    pub ed25519: bool,
    /// A URI naming this token (`token`, `serial`, `module-path`).
    pub uri: String,
    /// The P-256 and Ed25519 public keys visible without login.
    pub keys: Vec<KeyInfo>,
}

/// One usable public key on a token.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, lower-case hex.
    pub id: String,
    /// The key's algorithm.
    pub alg: Algorithm,
    /// The public key.
    pub public: PublicKey,
    /// A URI that opens this key with [`open_uri`].
    pub uri: String,
}

impl KeyInfo {
    /// The key id (RFC 9679 thumbprint).
    pub fn kid(&self) -> Kid {
        self.public.kid()
    }
}

/// Generates a key pair on the token `uri` names and returns its signer
/// (**locked**: logged out, PIN forgotten) and the record to store.
///
/// `uri` names the token (`token`, `serial`, …) and may give the new key's
/// `object` (its `CKA_LABEL`; else `label`, else `keybridge ACCOUNT/AGENT`)
/// and `id` (else 16 random bytes). Objects already using that id or label
/// are not touched: the call fails instead. The module is `module-path`, or
/// [`MODULE_ENV`]. The PIN is spent once; the last attempt never
/// ([`BackendError::LastAttempt`]).
///
/// Errors: [`BackendError::Unsupported`] when the token does not list the
/// mechanisms `alg` needs, [`BackendError::TokenAbsent`] when no token
/// matches, PIN errors as [`Signer::unlock`], [`BackendError::Failed`] for
/// a bad URI or a token that does not keep the key sensitive and
/// non-extractable (the new objects are destroyed).
pub fn create(
    uri: &str,
    account: &str,
    agent: &str,
    alg: Algorithm,
    pin: &SecretString,
    label: Option<String>,
    now: i64,
) -> Result<(Pkcs11Signer, KeyRecord), BackendError> {
    let parsed = parse_key_uri(uri)?;
    let module = module::load(&module_path(&parsed)?)?;
    let object = parsed
        .object
        .clone()
        .or_else(|| label.clone())
        .unwrap_or_else(|| format!("keybridge {account}/{agent}"));
    let id = match &parsed.id {
        Some(id) => id.clone(),
        None => random_id()?,
    };
    let ((public, attrs), token) = with_token(&module, &parsed, true, |ctx, _, slot, info| {
        check_mechanisms(ctx, slot, info, alg)?;
        before_login(PinFlags::of(info), false)?;
        let session = ctx
            .open_rw_session_no_drop(slot)
            .map_err(|e| failure("C_OpenSession", &e))?;
        let made = login(&session, ctx, slot, pin).and_then(|()| {
            refuse_existing(&session, &id, &object, info)?;
            generate(&session, alg, &id, &object, info)
        });
        let _ = session.logout();
        let _ = session.close();
        Ok((made?, info.clone()))
    })?;
    let canonical = canonical_uri(&module, &token, &id, &object);
    let params = Pkcs11Params {
        generated: true,
        account: Some(account.to_owned()),
        agent: Some(agent.to_owned()),
        ..params_for(&module, &token, &id, &object, alg, Some(attrs))
    };
    let record = record(&canonical, &public, label, now, &params)?;
    Ok((Pkcs11Signer::new(module, canonical, public), record))
}

/// Opens an existing key by URI (e.g. one made with `pkcs11-tool
/// --keypairgen`) and returns its signer (locked) and a record to store,
/// whose URI is canonical (token, serial, object, id, module-path).
///
/// The URI must match exactly one P-256 or Ed25519 key. Without a PIN
/// (`pin`, or the URI's `pin-source`) only public objects are searched and
/// the private half is checked at the first unlock. With a PIN, keybridge
/// logs in, also searches public-key objects marked `CKA_PRIVATE`, checks the private
/// key is sensitive and not extractable and that it signs for the public
/// key found, then logs out.
pub fn open_uri(
    uri: &str,
    pin: Option<&SecretString>,
    label: Option<String>,
    now: i64,
) -> Result<(Pkcs11Signer, KeyRecord), BackendError> {
    let parsed = parse_key_uri(uri)?;
    let module = module::load(&module_path(&parsed)?)?;
    let from_file = match (pin, &parsed.pin_source) {
        (None, Some(path)) => Some(read_pin_file(path)?),
        _ => None,
    };
    let pin = pin.or(from_file.as_ref());
    let (key, token, attrs) = with_token(&module, &parsed, true, |ctx, _, slot, info| {
        if pin.is_some() {
            before_login(PinFlags::of(info), false)?;
        }
        let session = ctx
            .open_ro_session_no_drop(slot)
            .map_err(|e| failure("C_OpenSession", &e))?;
        let found = inspect_key(&session, ctx, slot, info, &parsed, pin);
        if pin.is_some() {
            let _ = session.logout();
        }
        let _ = session.close();
        let (key, attrs) = found?;
        Ok((key, info.clone(), attrs))
    })?;
    if key.id.is_empty() && key.label.is_empty() {
        return Err(BackendError::Failed(
            "the key has neither CKA_ID nor CKA_LABEL: keybridge cannot name it; set an id with pkcs11-tool --set-id".into(),
        ));
    }
    let canonical = canonical_uri(&module, &token, &key.id, &key.label);
    let params = params_for(&module, &token, &key.id, &key.label, key.alg, attrs);
    let record = record(&canonical, &key.public, label, now, &params)?;
    Ok((Pkcs11Signer::new(module, canonical, key.public), record))
}

/// The PIN a URI's `pin-source` names, if it has one (for callers that
/// would otherwise prompt). The file must not be readable by group or
/// others; one trailing newline is dropped.
pub fn pin_from_uri(uri: &str) -> Result<Option<SecretString>, BackendError> {
    let parsed: Pkcs11Uri = uri.parse().map_err(uri_error)?;
    parsed.pin_source.as_deref().map(read_pin_file).transpose()
}

/// The tokens the module at `module_path` shows and their usable keys
/// (P-256 and Ed25519 public key objects), like `pkcs11-tool -L -O`.
/// Public objects only: no login, no PIN.
///
/// Tokens added after this process first loaded the module may not show on
/// modules that scan for tokens only at initialisation (SoftHSM2); opening
/// a key by URI re-initialises such a module when needed, `list` does not.
pub fn list(module_path: &Path) -> Result<Vec<TokenInfo>, BackendError> {
    let module = module::load(module_path)?;
    module.with(|ctx, _| {
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| failure("C_GetSlotList", &e))?;
        let mut tokens = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
            let has = |a: MechanismType, b: MechanismType| {
                mechanisms.contains(&a) && mechanisms.contains(&b)
            };
            let keys = match ctx.open_ro_session_no_drop(slot) {
                Ok(session) => {
                    let keys = public_keys(&session, &Pkcs11Uri::default());
                    let _ = session.close();
                    keys.unwrap_or_default()
                }
                Err(_) => Vec::new(),
            };
            let token_uri = Pkcs11Uri {
                token: Some(info.label().to_owned()),
                serial: Some(info.serial_number().to_owned()),
                module_path: Some(module.path().to_owned()),
                ..Default::default()
            };
            tokens.push(TokenInfo {
                slot: slot.id(),
                label: info.label().to_owned(),
                manufacturer: info.manufacturer_id().to_owned(),
                model: info.model().to_owned(),
                serial: info.serial_number().to_owned(),
                login_required: info.login_required(),
                user_pin_initialized: info.user_pin_initialized(),
                user_pin_count_low: info.user_pin_count_low(),
                user_pin_final_try: info.user_pin_final_try(),
                user_pin_locked: info.user_pin_locked(),
                protected_authentication_path: info.protected_authentication_path(),
                p256: has(MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA),
                ed25519: has(
                    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                    MechanismType::EDDSA,
                ),
                uri: token_uri.to_string(),
                keys: keys
                    .into_iter()
                    .map(|k| KeyInfo {
                        uri: canonical_uri(&module, &info, &k.id, &k.label).to_string(),
                        label: k.label,
                        id: hex::encode(&k.id),
                        alg: k.alg,
                        public: k.public,
                    })
                    .collect(),
            });
        }
        Ok(tokens)
    })
}

/// A key on a PKCS#11 token.
pub struct Pkcs11Signer {
    module: Arc<Module>,
    /// Canonical: token, serial, object, id, module-path.
    uri: Pkcs11Uri,
    public: PublicKey,
    /// Present while unlocked; wiped when dropped.
    pin: Option<SecretString>,
    /// The logged-in session, while unlocked and the token is reachable.
    session: Option<Active>,
    /// Serialises the keys of one token, which share its login state.
    token_lock: Arc<Mutex<()>>,
}

/// An open, logged-in session and the private key found in it.
struct Active {
    session: Session,
    /// The module generation that opened it: after a re-initialisation
    /// the handle is not ours any more.
    generation: u64,
    key: ObjectHandle,
}

impl Pkcs11Signer {
    fn new(module: Arc<Module>, uri: Pkcs11Uri, public: PublicKey) -> Self {
        Pkcs11Signer {
            token_lock: module.token_lock(&uri),
            module,
            uri,
            public,
            pin: None,
            session: None,
        }
    }

    /// The signer a PKCS#11 key record describes, locked. Needs no PIN and
    /// works while the token is absent. When the token is present, its
    /// public key object (if visible without login) must be the recorded
    /// key; otherwise that is checked at unlock.
    pub fn from_record(record: &KeyRecord) -> Result<Self, BackendError> {
        let bad = |why: String| BackendError::Failed(format!("pkcs11 key record: {why}"));
        if record.backend != BackendKind::Pkcs11 {
            return Err(bad(format!("backend is {}", record.backend)));
        }
        let public = record.public().map_err(|e| bad(e.to_string()))?;
        let uri = parse_key_uri(&record.uri)?;
        let module = module::load(&module_path(&uri)?)?;
        let signer = Pkcs11Signer::new(module, uri, public);
        let seen = with_token(&signer.module, &signer.uri, false, |ctx, _, slot, _| {
            let session = ctx
                .open_ro_session_no_drop(slot)
                .map_err(|e| failure("C_OpenSession", &e))?;
            let keys = public_keys(&session, &signer.uri);
            let _ = session.close();
            keys
        });
        match seen {
            Ok(keys) if !keys.is_empty() && !keys.iter().any(|k| k.public == signer.public) => {
                Err(signer.not_the_recorded_key())
            }
            _ => Ok(signer),
        }
    }

    /// The canonical URI of the key.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    fn alg(&self) -> Algorithm {
        self.public.algorithm()
    }

    fn not_the_recorded_key(&self) -> BackendError {
        BackendError::Failed(format!(
            "the key at {} is not the recorded key {}",
            self.uri,
            self.public.kid()
        ))
    }

    /// Finds the token, logs in with `pin`, finds the private key and
    /// checks it is ours.
    fn connect(&self, pin: &SecretString, spend_last: bool) -> Result<Active, BackendError> {
        with_token(
            &self.module,
            &self.uri,
            true,
            |ctx, generation, slot, info| {
                before_login(PinFlags::of(info), spend_last)?;
                let session = ctx
                    .open_ro_session_no_drop(slot)
                    .map_err(|e| failure("C_OpenSession", &e))?;
                let key = login(&session, ctx, slot, pin).and_then(|()| {
                    let key = find_private(&session, &self.uri, self.alg(), info)?;
                    self.check_identity(&session, key)?;
                    Ok(key)
                });
                match key {
                    Ok(key) => Ok(Active {
                        session,
                        generation,
                        key,
                    }),
                    Err(e) => {
                        let _ = session.logout();
                        let _ = session.close();
                        Err(e)
                    }
                }
            },
        )
    }

    /// The token's public key object for our id/label must be the recorded
    /// key; with no public object, a probe signature must verify.
    fn check_identity(&self, session: &Session, key: ObjectHandle) -> Result<(), BackendError> {
        let found = public_keys(session, &self.uri)?;
        if found.iter().any(|k| k.public == self.public) {
            return Ok(());
        }
        if !found.is_empty() {
            return Err(self.not_the_recorded_key());
        }
        if probe(session, key, &self.public)? {
            Ok(())
        } else {
            Err(self.not_the_recorded_key())
        }
    }

    /// Forgets the session; closes it only if its handle is still ours
    /// (same module generation, handle not reported invalid).
    fn drop_session(&mut self, close: bool, logout: bool) {
        if let Some(active) = self.session.take() {
            self.module.with(|_, generation| {
                if close && generation == active.generation {
                    if logout {
                        let _ = active.session.logout();
                    }
                    let _ = active.session.close();
                }
            });
        }
    }

    fn sign_with(&mut self, pin: &SecretString, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        let alg = self.alg();
        let message = token_input(alg, tbs);
        // At most one repair per call: a new session (token back, module
        // re-initialised, logged out by another key) with one login.
        let mut repaired = false;
        loop {
            if self.session.is_none() {
                self.session = Some(self.connect(pin, false)?);
                repaired = true;
            }
            let active = self.session.as_ref().expect("connected above");
            let outcome = self.module.with(|_, generation| {
                if generation != active.generation {
                    return Err(None);
                }
                active
                    .session
                    .sign(&mechanism(alg), active.key, &message)
                    .map_err(Some)
            });
            let error = match outcome {
                Ok(signature) => return finish_signature(alg, signature),
                Err(error) => error,
            };
            // What to do with the session, and whether the token is gone.
            let (close, absent) = match error.as_ref().map(|e| (e, rv(e))) {
                // The module was re-initialised: the handle is not ours.
                None => (false, true),
                Some((_, Some(RvError::SessionHandleInvalid | RvError::SessionClosed))) => {
                    (false, true)
                }
                Some((_, Some(code))) if means_absent(code) => (true, true),
                Some((
                    _,
                    Some(
                        RvError::UserNotLoggedIn
                        | RvError::KeyHandleInvalid
                        | RvError::ObjectHandleInvalid,
                    ),
                )) => (true, false),
                Some((e, _)) => return Err(failure("C_Sign", e)),
            };
            self.drop_session(close, false);
            if repaired {
                return Err(match &error {
                    Some(e) if !absent => failure("C_Sign", e),
                    Some(e) => BackendError::TokenAbsent(format!(
                        "{}: {}",
                        describe_token(&self.uri),
                        module::describe(e)
                    )),
                    None => BackendError::TokenAbsent(format!(
                        "{}: the module was re-initialised during the signature",
                        describe_token(&self.uri)
                    )),
                });
            }
        }
    }
}

impl Signer for Pkcs11Signer {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Reads the token flags, then `C_Login` once. A wrong PIN leaves the
    /// signer as it was (an earlier unlock stays valid).
    fn unlock(
        &mut self,
        secret: &SecretString,
        spend_last_attempt: bool,
    ) -> Result<(), BackendError> {
        let token = Arc::clone(&self.token_lock);
        let _one_at_a_time = token.lock().unwrap_or_else(PoisonError::into_inner);
        let active = self.connect(secret, spend_last_attempt)?;
        if let Some(old) = self.session.replace(active) {
            // The token is logged in now: close the old session, no logout.
            self.module.with(|_, generation| {
                if generation == old.generation {
                    let _ = old.session.close();
                }
            });
        }
        self.pin = Some(secret.clone());
        Ok(())
    }

    /// `C_Logout` and `C_CloseSession`; the cached PIN is wiped.
    fn lock(&mut self) {
        let token = Arc::clone(&self.token_lock);
        let _one_at_a_time = token.lock().unwrap_or_else(PoisonError::into_inner);
        self.drop_session(true, true);
        self.pin = None;
    }

    fn is_unlocked(&self) -> bool {
        self.pin.is_some()
    }

    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        let Some(pin) = self.pin.take() else {
            return Err(BackendError::Locked);
        };
        let token = Arc::clone(&self.token_lock);
        let _one_at_a_time = token.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.sign_with(&pin, tbs);
        match &result {
            // The re-login failed: forget the PIN (dropped here), stay locked.
            Err(
                BackendError::WrongSecret { .. }
                | BackendError::PinBlocked
                | BackendError::LastAttempt { .. },
            ) => self.drop_session(true, true),
            _ => self.pin = Some(pin),
        }
        result
    }
}

impl Drop for Pkcs11Signer {
    fn drop(&mut self) {
        self.lock();
    }
}

/// Shows which key and whether it is unlocked; never the PIN.
impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("kid", &self.public.kid())
            .field("uri", &self.uri.to_string())
            .field("unlocked", &self.pin.is_some())
            .field("session", &self.session.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// URIs, module paths, PIN files

fn uri_error(e: Pkcs11UriError) -> BackendError {
    BackendError::Failed(e.to_string())
}

fn parse_key_uri(uri: &str) -> Result<Pkcs11Uri, BackendError> {
    let parsed: Pkcs11Uri = uri.parse().map_err(uri_error)?;
    if !parsed.names_a_key() {
        return Err(BackendError::Failed(format!(
            "the URI names a {} object, not a key",
            parsed.object_type.map_or("", ObjectType::name)
        )));
    }
    Ok(parsed)
}

fn module_path(uri: &Pkcs11Uri) -> Result<PathBuf, BackendError> {
    if let Some(path) = &uri.module_path {
        return Ok(path.clone());
    }
    match std::env::var_os(MODULE_ENV) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(BackendError::Failed(format!(
            "which PKCS#11 module? add ?module-path=/path/to/module.so to the pkcs11 URI or set {MODULE_ENV} (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
        ))),
    }
}

fn read_pin_file(path: &Path) -> Result<SecretString, BackendError> {
    let fail = |why: String| BackendError::Failed(format!("PIN file {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .map_err(|e| fail(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "readable by group or others (mode {:o}): chmod 600 it",
                mode & 0o777
            )));
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_PIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PIN_FILE {
        return Err(fail("too large for a PIN".into()));
    }
    for ending in [&b"\r\n"[..], b"\n"] {
        if bytes.ends_with(ending) {
            let len = bytes.len() - ending.len();
            bytes.truncate(len);
            break;
        }
    }
    if bytes.is_empty() {
        return Err(fail("empty".into()));
    }
    match std::str::from_utf8(&bytes) {
        Ok(pin) => Ok(SecretString::from(pin)),
        Err(_) => Err(fail("not UTF-8".into())),
    }
}

fn random_id() -> Result<Vec<u8>, BackendError> {
    let mut id = vec![0u8; ID_LEN];
    getrandom::fill(&mut id)
        .map_err(|e| BackendError::Failed(format!("no randomness for a key id: {e}")))?;
    Ok(id)
}

fn canonical_uri(module: &Module, token: &CkTokenInfo, id: &[u8], object: &str) -> Pkcs11Uri {
    Pkcs11Uri {
        token: Some(token.label().to_owned()),
        serial: Some(token.serial_number().to_owned()),
        object: (!object.is_empty()).then(|| object.to_owned()),
        id: (!id.is_empty()).then(|| id.to_vec()),
        module_path: Some(module.path().to_owned()),
        ..Default::default()
    }
}

fn params_for(
    module: &Module,
    token: &CkTokenInfo,
    id: &[u8],
    object: &str,
    alg: Algorithm,
    attrs: Option<PrivateAttrs>,
) -> Pkcs11Params {
    Pkcs11Params {
        module: module.path().to_string_lossy().into_owned(),
        token: token.label().to_owned(),
        serial: token.serial_number().to_owned(),
        manufacturer: token.manufacturer_id().to_owned(),
        model: token.model().to_owned(),
        id: hex::encode(id),
        object: object.to_owned(),
        mechanism: match alg {
            Algorithm::Es256 => "CKM_ECDSA",
            Algorithm::Ed25519 => "CKM_EDDSA",
        }
        .to_owned(),
        generated: false,
        local: attrs.map(|a| a.local),
        always_sensitive: attrs.map(|a| a.always_sensitive),
        never_extractable: attrs.map(|a| a.never_extractable),
        account: None,
        agent: None,
    }
}

fn record(
    uri: &Pkcs11Uri,
    public: &PublicKey,
    label: Option<String>,
    now: i64,
    params: &Pkcs11Params,
) -> Result<KeyRecord, BackendError> {
    Ok(KeyRecord::new(
        uri.to_string(),
        BackendKind::Pkcs11,
        public,
        label,
        now,
        serde_json::to_value(params).map_err(|e| BackendError::Failed(e.to_string()))?,
    ))
}

fn describe_token(uri: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("token", &uri.token),
        ("serial", &uri.serial),
        ("manufacturer", &uri.manufacturer),
        ("model", &uri.model),
    ] {
        if let Some(v) = value {
            parts.push(format!("{name}={v:?}"));
        }
    }
    if parts.is_empty() {
        "any token".into()
    } else {
        parts.join(" ")
    }
}

fn describe_key(uri: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    if let Some(object) = &uri.object {
        parts.push(format!("object={object:?}"));
    }
    if let Some(id) = &uri.id {
        parts.push(format!("id={}", hex::encode(id)));
    }
    if parts.is_empty() {
        "any key".into()
    } else {
        parts.join(" ")
    }
}

// ---------------------------------------------------------------------------
// Tokens, login

/// Runs `f` on the one token `uri` names, under the module's read lock.
/// When no token matches and `reinit` is set, the module is re-initialised
/// once (rate-limited) and the search repeated.
fn with_token<T>(
    module: &Module,
    uri: &Pkcs11Uri,
    reinit: bool,
    mut f: impl FnMut(&Pkcs11, u64, Slot, &CkTokenInfo) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    for attempt in 0..2 {
        let (found, generation) = module.with(|ctx, generation| {
            module::check_library(ctx, uri, module.path())?;
            let mut slots = module::matching_slots(ctx, uri)?;
            match slots.len() {
                0 => Ok((None, generation)),
                1 => {
                    let (slot, info) = slots.remove(0);
                    Ok((Some(f(ctx, generation, slot, &info)?), generation))
                }
                n => Err(BackendError::Failed(format!(
                    "{n} tokens match {}: add serial= to the URI to choose one",
                    describe_token(uri)
                ))),
            }
        })?;
        if let Some(found) = found {
            return Ok(found);
        }
        if !reinit || attempt > 0 {
            break;
        }
        module.reinitialize(generation)?;
    }
    Err(BackendError::TokenAbsent(format!(
        "no token matches {} in {}",
        describe_token(uri),
        module.path().display()
    )))
}

fn check_mechanisms(
    ctx: &Pkcs11,
    slot: Slot,
    info: &CkTokenInfo,
    alg: Algorithm,
) -> Result<(), BackendError> {
    let listed = ctx
        .get_mechanism_list(slot)
        .map_err(|e| failure("C_GetMechanismList", &e))?;
    let needed: &[(MechanismType, &str)] = match alg {
        Algorithm::Es256 => &[
            (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
            (MechanismType::ECDSA, "CKM_ECDSA"),
        ],
        Algorithm::Ed25519 => &[
            (
                MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                "CKM_EC_EDWARDS_KEY_PAIR_GEN",
            ),
            (MechanismType::EDDSA, "CKM_EDDSA"),
        ],
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(m, _)| !listed.contains(m))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Unsupported(format!(
            "token {:?} does not offer {}: it cannot hold an {alg} key",
            info.label(),
            missing.join(" and ")
        )))
    }
}

/// The PIN state flags of a token.
#[derive(Debug, Clone, Copy, Default)]
struct PinFlags {
    locked: bool,
    final_try: bool,
}

impl PinFlags {
    fn of(info: &CkTokenInfo) -> Self {
        PinFlags {
            locked: info.user_pin_locked(),
            final_try: info.user_pin_final_try(),
        }
    }
}

/// Before `C_Login`: a blocked PIN is not tried, the last attempt only if
/// the caller allows it.
fn before_login(flags: PinFlags, spend_last: bool) -> Result<(), BackendError> {
    if flags.locked {
        Err(BackendError::PinBlocked)
    } else if flags.final_try && !spend_last {
        Err(BackendError::LastAttempt { retries_left: 1 })
    } else {
        Ok(())
    }
}

/// After `CKR_PIN_INCORRECT`, from the flags read again. Tokens only say
/// "final try" or "count low" (a wrong PIN since the last good one, which
/// is all SoftHSM2 reports): only the first gives a number.
fn after_wrong_pin(flags: Option<PinFlags>) -> BackendError {
    match flags {
        Some(f) if f.locked => BackendError::PinBlocked,
        Some(f) if f.final_try => BackendError::WrongSecret {
            retries_left: Some(1),
        },
        _ => BackendError::WrongSecret { retries_left: None },
    }
}

/// `C_Login` as the user with `pin`. If the token is already logged in
/// (another key of this process on the same token), log out and in again so
/// the PIN given is still checked.
fn login(
    session: &Session,
    ctx: &Pkcs11,
    slot: Slot,
    pin: &SecretString,
) -> Result<(), BackendError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => Ok(()),
        Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {
            let _ = session.logout();
            session
                .login(UserType::User, Some(pin))
                .map_err(|e| login_error(ctx, slot, &e))
        }
        Err(e) => Err(login_error(ctx, slot, &e)),
    }
}

fn login_error(ctx: &Pkcs11, slot: Slot, e: &CkError) -> BackendError {
    match rv(e) {
        Some(RvError::PinIncorrect) => {
            after_wrong_pin(ctx.get_token_info(slot).ok().map(|i| PinFlags::of(&i)))
        }
        Some(RvError::PinLocked) => BackendError::PinBlocked,
        // Not counted by the token: the PIN cannot be right.
        Some(RvError::PinLenRange | RvError::PinInvalid) => {
            BackendError::WrongSecret { retries_left: None }
        }
        Some(RvError::PinExpired) => BackendError::Failed(
            "the token's user PIN has expired: change it with the token's tools".into(),
        ),
        Some(RvError::UserPinNotInitialized) => BackendError::Failed(
            "the token has no user PIN yet: initialise it with the token's tools".into(),
        ),
        _ => failure("C_Login", e),
    }
}

// ---------------------------------------------------------------------------
// Objects

/// A usable public key object.
#[derive(Debug, Clone)]
struct FoundKey {
    id: Vec<u8>,
    label: String,
    alg: Algorithm,
    public: PublicKey,
}

/// The residency attributes of a private key.
#[derive(Debug, Clone, Copy)]
struct PrivateAttrs {
    local: bool,
    always_sensitive: bool,
    never_extractable: bool,
}

/// The search template for the objects of class `class` that `uri` names.
fn template(class: ObjectClass, uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    if let Some(object) = &uri.object {
        template.push(Attribute::Label(object.as_bytes().to_vec()));
    }
    template
}

fn algorithm_of(key_type: KeyType, params: &[u8]) -> Option<Algorithm> {
    if key_type == KeyType::EC && params == P256_PARAMS {
        Some(Algorithm::Es256)
    } else if key_type == KeyType::EC_EDWARDS
        && (params == ED25519_OID_PARAMS || params == ED25519_NAME_PARAMS)
    {
        Some(Algorithm::Ed25519)
    } else {
        None
    }
}

/// `CKA_EC_POINT` → public key. PKCS#11 says the point is a DER OCTET
/// STRING; some tokens give it raw. Both are taken, told apart by length
/// (the only lengths either form can have), nothing else.
fn public_from_ec_point(alg: Algorithm, point: &[u8]) -> Result<PublicKey, String> {
    let raw = match (alg, point.len(), point.first(), point.get(1)) {
        (Algorithm::Es256, 67, Some(0x04), Some(0x41))
        | (Algorithm::Es256, 35, Some(0x04), Some(0x21))
        | (Algorithm::Ed25519, 34, Some(0x04), Some(0x20)) => &point[2..],
        (Algorithm::Es256, 65 | 33, ..) | (Algorithm::Ed25519, 32, ..) => point,
        _ => {
            return Err(format!(
                "CKA_EC_POINT of {} bytes is not an {alg} point",
                point.len()
            ));
        }
    };
    match alg {
        Algorithm::Es256 => PublicKey::p256_sec1(raw),
        Algorithm::Ed25519 => PublicKey::ed25519(raw.try_into().expect("32 bytes by the match")),
    }
    .map_err(|e| e.to_string())
}

/// The usable public keys (P-256, Ed25519) `uri` names in this session.
/// Objects of other types, curves or with unreadable points are skipped.
fn public_keys(session: &Session, uri: &Pkcs11Uri) -> Result<Vec<FoundKey>, BackendError> {
    let handles = session
        .find_objects(&template(ObjectClass::PUBLIC_KEY, uri))
        .map_err(|e| failure("C_FindObjects", &e))?;
    let mut keys = Vec::new();
    for handle in handles {
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .map_err(|e| failure("C_GetAttributeValue", &e))?;
        let (mut key_type, mut params, mut point, mut id, mut label) =
            (None, None, None, None, None);
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::Id(i) => id = Some(i),
                Attribute::Label(l) => label = Some(l),
                _ => {}
            }
        }
        let (Some(key_type), Some(params), Some(point)) = (key_type, params, point) else {
            continue;
        };
        let Some(alg) = algorithm_of(key_type, &params) else {
            continue;
        };
        let Ok(public) = public_from_ec_point(alg, &point) else {
            continue;
        };
        keys.push(FoundKey {
            id: id.unwrap_or_default(),
            label: String::from_utf8_lossy(&label.unwrap_or_default()).into_owned(),
            alg,
            public,
        });
    }
    Ok(keys)
}

/// The one private key of type `alg` that `uri` names (logged in).
fn find_private(
    session: &Session,
    uri: &Pkcs11Uri,
    alg: Algorithm,
    info: &CkTokenInfo,
) -> Result<ObjectHandle, BackendError> {
    let mut template = template(ObjectClass::PRIVATE_KEY, uri);
    template.push(Attribute::KeyType(match alg {
        Algorithm::Es256 => KeyType::EC,
        Algorithm::Ed25519 => KeyType::EC_EDWARDS,
    }));
    let mut found = session
        .find_objects(&template)
        .map_err(|e| failure("C_FindObjects", &e))?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(BackendError::TokenAbsent(format!(
            "token {:?} has no private {alg} key {} any more",
            info.label(),
            describe_key(uri)
        ))),
        n => Err(BackendError::Failed(format!(
            "{n} private keys match {} on token {:?}: add id= to the URI",
            describe_key(uri),
            info.label()
        ))),
    }
}

/// Reads the private key's residency attributes and refuses a key the
/// token does not keep sensitive and non-extractable (and, with `strict`,
/// one that ever was extractable or not sensitive).
fn private_attrs(
    session: &Session,
    key: ObjectHandle,
    strict: bool,
) -> Result<PrivateAttrs, BackendError> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Local,
                AttributeType::Sign,
            ],
        )
        .map_err(|e| failure("C_GetAttributeValue", &e))?;
    let (mut sensitive, mut extractable, mut always, mut never, mut local, mut sign) =
        (false, true, false, false, false, false);
    for attr in attrs {
        match attr {
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::AlwaysSensitive(v) => always = v,
            Attribute::NeverExtractable(v) => never = v,
            Attribute::Local(v) => local = v,
            Attribute::Sign(v) => sign = v,
            _ => {}
        }
    }
    let mut problems = Vec::new();
    if !sensitive {
        problems.push("not sensitive");
    }
    if extractable {
        problems.push("extractable");
    }
    if strict && !always {
        problems.push("not always sensitive");
    }
    if strict && !never {
        problems.push("not never-extractable");
    }
    if !sign {
        problems.push("not allowed to sign");
    }
    if problems.is_empty() {
        Ok(PrivateAttrs {
            local,
            always_sensitive: always,
            never_extractable: never,
        })
    } else {
        Err(BackendError::Failed(format!(
            "the token reports the private key as {}: keybridge only uses keys that never leave the token",
            problems.join(", ")
        )))
    }
}

/// Refuses to create over existing objects with the same id or label.
fn refuse_existing(
    session: &Session,
    id: &[u8],
    object: &str,
    info: &CkTokenInfo,
) -> Result<(), BackendError> {
    let same_id = session
        .find_objects(&[Attribute::Id(id.to_vec())])
        .map_err(|e| failure("C_FindObjects", &e))?;
    if !same_id.is_empty() {
        return Err(BackendError::Failed(format!(
            "token {:?} already has objects with id {}: choose another id= or leave it out",
            info.label(),
            hex::encode(id)
        )));
    }
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let same_label = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(object.as_bytes().to_vec()),
            ])
            .map_err(|e| failure("C_FindObjects", &e))?;
        if !same_label.is_empty() {
            return Err(BackendError::Failed(format!(
                "token {:?} already has a key labelled {object:?}: choose another object= name",
                info.label()
            )));
        }
    }
    Ok(())
}

/// `C_GenerateKeyPair`, then the read-back checks; on any failure after
/// generation both objects are destroyed.
fn generate(
    session: &Session,
    alg: Algorithm,
    id: &[u8],
    object: &str,
    info: &CkTokenInfo,
) -> Result<(PublicKey, PrivateAttrs), BackendError> {
    let (mechanism, params_choices): (Mechanism, &[&[u8]]) = match alg {
        Algorithm::Es256 => (Mechanism::EccKeyPairGen, &[P256_PARAMS]),
        Algorithm::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            &[ED25519_OID_PARAMS, ED25519_NAME_PARAMS],
        ),
    };
    // A signing key and nothing else: tokens default some of the other
    // usages to true (SoftHSM2: decrypt, unwrap, encrypt, wrap).
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(object.as_bytes().to_vec()),
    ];
    let mut last_error = None;
    let mut pair = None;
    for params in params_choices {
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(params.to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Label(object.as_bytes().to_vec()),
        ];
        match session.generate_key_pair(&mechanism, &public_template, &private_template) {
            Ok(handles) => {
                pair = Some(handles);
                break;
            }
            // A token that wants the other spelling of the Ed25519 curve.
            Err(e)
                if matches!(
                    rv(&e),
                    Some(
                        RvError::CurveNotSupported
                            | RvError::DomainParamsInvalid
                            | RvError::AttributeValueInvalid
                            | RvError::TemplateInconsistent
                    )
                ) =>
            {
                last_error = Some(e)
            }
            Err(e) => return Err(failure("C_GenerateKeyPair", &e)),
        }
    }
    let Some((public_handle, private_handle)) = pair else {
        let e = last_error.expect("at least one attempt");
        return Err(BackendError::Unsupported(format!(
            "token {:?} cannot generate an {alg} key: {}",
            info.label(),
            module::describe(&e)
        )));
    };
    let checked = private_attrs(session, private_handle, true).and_then(|attrs| {
        let uri = Pkcs11Uri {
            id: Some(id.to_vec()),
            object: Some(object.to_owned()),
            ..Default::default()
        };
        let keys = public_keys(session, &uri)?;
        match keys.as_slice() {
            [key] if key.alg == alg => Ok((key.public.clone(), attrs)),
            _ => Err(BackendError::Failed(format!(
                "token {:?} did not give back the new {alg} public key",
                info.label()
            ))),
        }
    });
    if checked.is_err() {
        let _ = session.destroy_object(private_handle);
        let _ = session.destroy_object(public_handle);
    }
    checked
}

/// [`open_uri`]'s look at the key: public object, and with a PIN the
/// private half.
fn inspect_key(
    session: &Session,
    ctx: &Pkcs11,
    slot: Slot,
    info: &CkTokenInfo,
    uri: &Pkcs11Uri,
    pin: Option<&SecretString>,
) -> Result<(FoundKey, Option<PrivateAttrs>), BackendError> {
    if let Some(pin) = pin {
        login(session, ctx, slot, pin)?;
    }
    let mut keys = public_keys(session, uri)?;
    let key = match keys.len() {
        1 => keys.remove(0),
        0 => {
            let hint = if pin.is_none() && info.login_required() {
                " (only public objects were searched: give the PIN to search private ones too)"
            } else {
                ""
            };
            return Err(BackendError::Failed(format!(
                "no P-256 or Ed25519 public key matches {} on token {:?}{hint}",
                describe_key(uri),
                info.label()
            )));
        }
        n => {
            return Err(BackendError::Failed(format!(
                "{n} keys match {} on token {:?}: add id= or object= to the URI",
                describe_key(uri),
                info.label()
            )));
        }
    };
    if pin.is_none() {
        return Ok((key, None));
    }
    let exact = Pkcs11Uri {
        id: Some(key.id.clone()),
        object: (!key.label.is_empty()).then(|| key.label.clone()),
        ..Default::default()
    };
    let private = find_private(session, &exact, key.alg, info)?;
    let attrs = private_attrs(session, private, false)?;
    // Prove the pair: the private key signs for this public key.
    if !probe(session, private, &key.public)? {
        return Err(BackendError::Failed(format!(
            "the private key {} on token {:?} does not sign for its public key object",
            describe_key(&exact),
            info.label()
        )));
    }
    Ok((key, Some(attrs)))
}

// ---------------------------------------------------------------------------
// Signatures

fn mechanism(alg: Algorithm) -> Mechanism<'static> {
    match alg {
        Algorithm::Es256 => Mechanism::Ecdsa,
        Algorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

/// What the token signs: SHA-256 of `tbs` for `CKM_ECDSA`, `tbs` itself for
/// `CKM_EDDSA`.
fn token_input(alg: Algorithm, tbs: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::Es256 => Sha256::digest(tbs).to_vec(),
        Algorithm::Ed25519 => tbs.to_vec(),
    }
}

/// Checks the token's answer: 64 bytes (P-256 `r‖s`, made low-S).
fn finish_signature(alg: Algorithm, signature: Vec<u8>) -> Result<Vec<u8>, BackendError> {
    let bad = || {
        BackendError::Failed(format!(
            "the token returned a {}-byte signature, not a 64-byte {alg} signature",
            signature.len()
        ))
    };
    match alg {
        Algorithm::Es256 => {
            let sig = p256::ecdsa::Signature::from_slice(&signature).map_err(|_| bad())?;
            Ok(sig.normalize_s().to_bytes().to_vec())
        }
        Algorithm::Ed25519 if signature.len() == 64 => Ok(signature),
        Algorithm::Ed25519 => Err(bad()),
    }
}

/// Whether `key` signs (a fixed probe message) for `public`.
fn probe(session: &Session, key: ObjectHandle, public: &PublicKey) -> Result<bool, BackendError> {
    let alg = public.algorithm();
    let signature = session
        .sign(&mechanism(alg), key, &token_input(alg, PROBE))
        .map_err(|e| failure("C_Sign", &e))?;
    let signature = finish_signature(alg, signature)?;
    Ok(public.verify(alg, PROBE, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_taken_der_wrapped_or_raw_and_nothing_else() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let point = sk.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        let expected = PublicKey::p256_sec1(&point).unwrap();
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&point);
        assert_eq!(
            public_from_ec_point(Algorithm::Es256, &der).unwrap(),
            expected
        );
        assert_eq!(
            public_from_ec_point(Algorithm::Es256, &point).unwrap(),
            expected
        );
        let compressed = sk.verifying_key().to_sec1_point(true).as_bytes().to_vec();
        let mut der_c = vec![0x04, 0x21];
        der_c.extend_from_slice(&compressed);
        assert_eq!(
            public_from_ec_point(Algorithm::Es256, &der_c).unwrap(),
            expected
        );
        assert_eq!(
            public_from_ec_point(Algorithm::Es256, &compressed).unwrap(),
            expected
        );
        // Wrong DER header, wrong length, trailing byte, wrong curve.
        let mut bad = der.clone();
        bad[1] = 0x40;
        assert!(public_from_ec_point(Algorithm::Es256, &bad).is_err());
        assert!(public_from_ec_point(Algorithm::Es256, &der[..66]).is_err());
        let mut long = der.clone();
        long.push(0);
        assert!(public_from_ec_point(Algorithm::Es256, &long).is_err());
        assert!(public_from_ec_point(Algorithm::Ed25519, &der).is_err());

        let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let raw = ed.verifying_key().to_bytes();
        let expected = PublicKey::ed25519(&raw).unwrap();
        let mut der = vec![0x04, 0x20];
        der.extend_from_slice(&raw);
        assert_eq!(
            public_from_ec_point(Algorithm::Ed25519, &der).unwrap(),
            expected
        );
        assert_eq!(
            public_from_ec_point(Algorithm::Ed25519, &raw).unwrap(),
            expected
        );
        assert!(public_from_ec_point(Algorithm::Ed25519, &der[..33]).is_err());
        der[0] = 0x03;
        assert!(public_from_ec_point(Algorithm::Ed25519, &der).is_err());
    }

    #[test]
    fn key_types_and_curves_map_to_algorithms() {
        assert_eq!(
            algorithm_of(KeyType::EC, P256_PARAMS),
            Some(Algorithm::Es256)
        );
        assert_eq!(
            algorithm_of(KeyType::EC_EDWARDS, ED25519_OID_PARAMS),
            Some(Algorithm::Ed25519)
        );
        assert_eq!(
            algorithm_of(KeyType::EC_EDWARDS, ED25519_NAME_PARAMS),
            Some(Algorithm::Ed25519)
        );
        // P-384, Ed448, and an Ed25519 OID on a plain EC key are not ours.
        let p384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        assert_eq!(algorithm_of(KeyType::EC, &p384), None);
        assert_eq!(
            algorithm_of(KeyType::EC_EDWARDS, &[0x06, 0x03, 0x2b, 0x65, 0x71]),
            None
        );
        assert_eq!(algorithm_of(KeyType::EC, ED25519_OID_PARAMS), None);
        assert_eq!(algorithm_of(KeyType::RSA, P256_PARAMS), None);
    }

    #[test]
    fn blocked_pins_and_the_last_attempt_are_not_tried() {
        let flags = |locked, final_try| PinFlags { locked, final_try };
        assert!(before_login(flags(false, false), false).is_ok());
        assert!(matches!(
            before_login(flags(true, false), true),
            Err(BackendError::PinBlocked)
        ));
        assert!(matches!(
            before_login(flags(false, true), false),
            Err(BackendError::LastAttempt { retries_left: 1 })
        ));
        assert!(before_login(flags(false, true), true).is_ok());
    }

    #[test]
    fn a_wrong_pin_reports_what_the_token_flags_say() {
        let flags = |locked, final_try| Some(PinFlags { locked, final_try });
        assert!(matches!(
            after_wrong_pin(flags(false, false)),
            BackendError::WrongSecret { retries_left: None }
        ));
        assert!(matches!(
            after_wrong_pin(flags(false, true)),
            BackendError::WrongSecret {
                retries_left: Some(1)
            }
        ));
        assert!(matches!(
            after_wrong_pin(flags(true, false)),
            BackendError::PinBlocked
        ));
        assert!(matches!(
            after_wrong_pin(None),
            BackendError::WrongSecret { retries_left: None }
        ));
    }

    #[test]
    fn a_missing_module_path_is_explained() {
        let uri: Pkcs11Uri = "pkcs11:token=t".parse().unwrap();
        if std::env::var_os(MODULE_ENV).is_none() {
            let err = module_path(&uri).unwrap_err().to_string();
            assert!(
                err.contains("module-path") && err.contains(MODULE_ENV),
                "{err}"
            );
        }
        let uri: Pkcs11Uri = "pkcs11:token=t?module-path=/opt/m.so".parse().unwrap();
        assert_eq!(module_path(&uri).unwrap(), PathBuf::from("/opt/m.so"));
    }

    #[test]
    fn uris_naming_certificates_or_data_are_not_keys() {
        for uri in [
            "pkcs11:type=cert",
            "pkcs11:type=data",
            "pkcs11:type=secret-key",
        ] {
            assert!(
                matches!(parse_key_uri(uri), Err(BackendError::Failed(_))),
                "{uri}"
            );
        }
        assert!(parse_key_uri("pkcs11:type=private").is_ok());
    }
}
