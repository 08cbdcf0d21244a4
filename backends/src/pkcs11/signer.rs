//! [`Pkcs11Signer`]: one key on a token, as a [`Signer`]. Unlock logs in
//! and finds the recorded private key; a signature is `CKM_ECDSA` over a
//! host-side SHA-256 (made low-S) or plain `CKM_EDDSA`; a session that went
//! away is repaired once per request with the cached PIN.

use super::errors::{describe, failure, means_absent, rv};
use super::login::{ContextLoginError, PinFlags, before_login, context_login, login};
use super::module::{self, Module};
use super::objects::{
    always_authenticate, describe_key, describe_token, find_private, public_keys, with_token,
};
use crate::record::{BackendKind, KeyRecord};
use crate::uri::KeyUri;
use crate::uri::pkcs11::Pkcs11Uri;
use crate::{BackendError, Signer, redact_uri};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use keybridge_protocol::{Algorithm, PublicKey};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Signed (and verified) to prove a private key is the half of a public key
/// when the token shows no public key object for it.
const PROBE: &[u8] = b"keybridge pkcs11 key check";

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
    slot: Slot,
    key: ObjectHandle,
    /// `CKA_ALWAYS_AUTHENTICATE`: every `C_Sign` needs a context-specific
    /// login with the PIN right before it.
    always_auth: bool,
}

/// Why one signature attempt did not give a signature.
enum SignFailure {
    /// The module was re-initialised: the session handle is not ours.
    Reinitialised,
    /// The token or session said no (gone, logged out, …).
    Token(CkError),
    /// The PIN rules or the PIN of a context-specific login: reported as is.
    Refused(BackendError),
}

impl Pkcs11Signer {
    pub(super) fn new(module: Arc<Module>, uri: Pkcs11Uri, public: PublicKey) -> Self {
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
        let uri = match record.key_uri() {
            Ok(KeyUri::Pkcs11(uri)) if uri.names_a_key() => uri,
            Ok(_) => {
                return Err(bad(format!(
                    "uri {} is not a pkcs11 key",
                    redact_uri(&record.uri)
                )));
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let module = module::load(&module::module_path(
            &uri,
            std::env::var_os(module::MODULE_ENV),
        )?)?;
        let signer = Pkcs11Signer::new(module, uri, public);
        let seen = with_token(
            &signer.module,
            &signer.uri,
            false,
            BackendError::TokenAbsent,
            |ctx, _, slot, _| {
                let session = ctx
                    .open_ro_session_no_drop(slot)
                    .map_err(|e| failure("C_OpenSession", &e))?;
                let keys = public_keys(&session, &signer.uri);
                let _ = session.close();
                keys
            },
        );
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

    /// The token under this key's URI holds another key (replaced objects,
    /// a token re-created with the same serial).
    fn not_the_recorded_key(&self) -> BackendError {
        BackendError::NotFound(format!(
            "the key at {} is not the recorded key {}",
            redact_uri(&self.uri.to_string()),
            self.public.kid()
        ))
    }

    /// Finds the token, logs in with `pin`, finds the private key (smart-card
    /// modules show it only now) and checks it is ours.
    fn connect(&self, pin: &SecretString, spend_last: bool) -> Result<Active, BackendError> {
        with_token(
            &self.module,
            &self.uri,
            true,
            BackendError::TokenAbsent,
            |ctx, generation, slot, info| {
                before_login(PinFlags::of(info), spend_last)?;
                let session = ctx
                    .open_ro_session_no_drop(slot)
                    .map_err(|e| failure("C_OpenSession", &e))?;
                let key = login(&session, ctx, slot, pin).and_then(|()| {
                    // The token is here and logged in: a key not on it was
                    // deleted or replaced — not an absent token.
                    let key = find_private(&session, &self.uri, self.alg(), info).map_err(
                        |e| match e {
                            BackendError::NotFound(_) => BackendError::NotFound(format!(
                                "token {:?} is present and logged in, but has no private {} key {} any more (deleted or replaced?): the key record {} cannot sign",
                                info.label(),
                                self.alg(),
                                describe_key(&super::objects::private_half(&self.uri)),
                                self.public.kid()
                            )),
                            e => e,
                        },
                    )?;
                    let always_auth = always_authenticate(&session, key);
                    self.check_identity(ctx, slot, &session, key, always_auth.then_some(pin))?;
                    Ok((key, always_auth))
                });
                match key {
                    Ok((key, always_auth)) => Ok(Active {
                        session,
                        generation,
                        slot,
                        key,
                        always_auth,
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
    /// key; with no public object, a probe signature must verify (with a
    /// context-specific login first when `context_pin` is given).
    fn check_identity(
        &self,
        ctx: &Pkcs11,
        slot: Slot,
        session: &Session,
        key: ObjectHandle,
        context_pin: Option<&SecretString>,
    ) -> Result<(), BackendError> {
        let found = public_keys(session, &self.uri)?;
        if found.iter().any(|k| k.public == self.public) {
            return Ok(());
        }
        if !found.is_empty() {
            return Err(self.not_the_recorded_key());
        }
        if probe(ctx, slot, session, key, &self.public, context_pin)? {
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
            let outcome = self.module.with(|ctx, generation| {
                if generation != active.generation {
                    return Err(SignFailure::Reinitialised);
                }
                token_sign(
                    ctx,
                    active.slot,
                    &active.session,
                    active.key,
                    alg,
                    &message,
                    active.always_auth.then_some(pin),
                )
            });
            let error = match outcome {
                Ok(signature) => return finish_signature(alg, signature),
                Err(SignFailure::Refused(e)) => return Err(e),
                Err(SignFailure::Reinitialised) => None,
                Err(SignFailure::Token(e)) => Some(e),
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
                // Anything else: reported. The session goes (an operation
                // left active in it would refuse the next one); the next
                // signature opens one and logs in with the cached PIN.
                Some((e, _)) => {
                    let error = failure("C_Sign", e);
                    self.drop_session(true, false);
                    return Err(error);
                }
            };
            self.drop_session(close, false);
            if repaired {
                return Err(match &error {
                    Some(e) if !absent => failure("C_Sign", e),
                    Some(e) => BackendError::TokenAbsent(format!(
                        "{}: {}",
                        describe_token(&self.uri),
                        describe(e)
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

/// One signature of `message` (already [`token_input`]) by `key`: `C_Sign`;
/// for a key that needs a login per signature (`context_pin`),
/// `C_SignInit`, `C_Login(CKU_CONTEXT_SPECIFIC)` right after it (the
/// spec's order: ykcs11 refuses the login while no operation is active),
/// then `C_SignUpdate` + `C_SignFinal` — cryptoki has no single-part
/// `C_Sign` after a separate `C_SignInit`, and ykcs11 and OpenSC buffer a
/// raw `CKM_ECDSA` input across parts.
fn token_sign(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    key: ObjectHandle,
    alg: Algorithm,
    message: &[u8],
    context_pin: Option<&SecretString>,
) -> Result<Vec<u8>, SignFailure> {
    let Some(pin) = context_pin else {
        return session
            .sign(&mechanism(alg), key, message)
            .map_err(SignFailure::Token);
    };
    session
        .sign_init(&mechanism(alg), key)
        .map_err(SignFailure::Token)?;
    // On a refusal the operation stays active: the caller closes the
    // session (PIN errors and token errors both drop it).
    context_login(session, ctx, slot, pin).map_err(|e| match e {
        ContextLoginError::Refused(e) => SignFailure::Refused(e),
        ContextLoginError::Token(e) => SignFailure::Token(e),
    })?;
    session.sign_update(message).map_err(SignFailure::Token)?;
    session.sign_final().map_err(SignFailure::Token)
}

/// Whether `key` signs (a fixed probe message) for `public`; with
/// `context_pin`, after the context-specific login such a key needs.
pub(super) fn probe(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    key: ObjectHandle,
    public: &PublicKey,
    context_pin: Option<&SecretString>,
) -> Result<bool, BackendError> {
    let alg = public.algorithm();
    let signature = token_sign(
        ctx,
        slot,
        session,
        key,
        alg,
        &token_input(alg, PROBE),
        context_pin,
    )
    .map_err(|e| match e {
        SignFailure::Refused(e) => e,
        SignFailure::Token(e) => failure("C_Sign", &e),
        SignFailure::Reinitialised => {
            BackendError::TokenAbsent("the module was re-initialised during the key check".into())
        }
    })?;
    let signature = finish_signature(alg, signature)?;
    Ok(public.verify(alg, PROBE, &signature).is_ok())
}
