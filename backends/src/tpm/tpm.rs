//! One connection to a TPM for one operation, and what the backend asks
//! of it: the parent key, a salted session, loading, signing, the
//! dictionary-attack state, certification. Every `tss_esapi::Error`
//! becomes a [`BackendError`] here, once ([`map_error`]).
//!
//! A connection is opened per operation and dropped after it: a TPM
//! without a resource manager (swtpm, `/dev/tpm0`) serves one client at a
//! time, so holding it would block every other program (and every other
//! keybridge key on that TPM). Everything loaded is flushed before the
//! connection goes ([`Tpm`]'s `Drop`), so repeated use never fills the
//! TPM's object or session slots (`0x902`/`0x903`, the top complaint of
//! tpm2-pkcs11 and tpm2-tools users).

use crate::BackendError;
use crate::uri::tpm::{OWNER_HIERARCHY, PERSISTENT};
use secrecy::{ExposeSecret as _, SecretString};
use std::str::FromStr as _;
use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyDerivationFunctionScheme,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
pub use tss_esapi::utils::TpmsContext;
use tss_esapi::{TctiNameConf, constants::PropertyTag};

/// The TCTI when neither the URI nor the environment names one.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Shortest PIN keybridge accepts for a new TPM key.
pub const MIN_PIN_LEN: usize = 6;

/// The TCTI to use: the URI's, else `TPM2TOOLS_TCTI`, else `TCTI`, else
/// [`DEFAULT_TCTI`] (the tpm2-tools convention).
pub fn tcti(from_uri: Option<&str>) -> String {
    from_uri
        .map(str::to_owned)
        .or_else(|| std::env::var("TPM2TOOLS_TCTI").ok())
        .or_else(|| std::env::var("TCTI").ok())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// The dictionary-attack state (TPM_PT_LOCKOUT_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Failed authorizations counted now.
    pub counter: u32,
    /// How many the TPM allows before it locks out.
    pub max_tries: u32,
    /// Seconds after which one failure is forgiven.
    pub interval: u32,
    /// Seconds before the lockout authorization may be tried again.
    pub recovery: u32,
}

impl Lockout {
    /// Attempts left before lockout.
    pub fn left(&self) -> u32 {
        self.max_tries.saturating_sub(self.counter)
    }

    /// The error for a TPM that refuses authorizations now.
    pub fn blocked(&self) -> BackendError {
        BackendError::LockedOut(format!(
            "the TPM is in dictionary-attack lockout ({} failed authorizations of {} allowed); it forgives one every {} s, so the PIN can be tried again in about {} s — or an administrator clears it with the lockout authorization (`tpm2_dictionarylockout -c`)",
            self.counter, self.max_tries, self.interval, self.interval
        ))
    }
}

/// What TPM2_Certify gave, marshalled: TPMS_ATTEST, TPMT_SIGNATURE, and
/// the attestation key's TPMT_PUBLIC.
pub struct Certified {
    /// The attest structure (TPMS_ATTEST).
    pub attest: Vec<u8>,
    /// The AK's signature over it (TPMT_SIGNATURE).
    pub signature: Vec<u8>,
    /// The AK's public area (TPMT_PUBLIC).
    pub ak_public: Vec<u8>,
}

/// An open connection with what this operation loaded (flushed on drop).
pub struct Tpm {
    ctx: Context,
    loaded: Vec<ObjectHandle>,
    sessions: Vec<AuthSession>,
}

impl Drop for Tpm {
    fn drop(&mut self) {
        self.ctx.clear_sessions();
        for s in self.sessions.drain(..) {
            let _ = self
                .ctx
                .flush_context(tss_esapi::handles::SessionHandle::from(s).into());
        }
        for h in self.loaded.drain(..).rev() {
            let _ = self.ctx.flush_context(h);
        }
    }
}

impl Tpm {
    /// Connects to the TPM `tcti` names.
    pub fn open(tcti: &str) -> Result<Self, BackendError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|_| BackendError::InvalidUri(format!("TCTI {tcti:?} is not a TCTI configuration keybridge knows (device:, swtpm:, mssim:, tabrmd:)")))?;
        let ctx = Context::new(conf).map_err(|e| {
            BackendError::TokenAbsent(format!(
                "no TPM answers at {tcti} ({}); is the device there and are you in the `tss` group?",
                describe(e)
            ))
        })?;
        Ok(Tpm {
            ctx,
            loaded: vec![],
            sessions: vec![],
        })
    }

    /// The parent of a key: the owner-hierarchy primary rebuilt from
    /// tpm2-openssl's template, or a persistent key.
    pub fn parent(&mut self, parent: u32) -> Result<KeyHandle, BackendError> {
        if parent == OWNER_HIERARCHY {
            let template = template(Role::StoragePrimary)?;
            let primary = self
                .ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
                })
                .map_err(map_error)?;
            self.loaded.push(primary.key_handle.into());
            Ok(primary.key_handle)
        } else if PERSISTENT.contains(&parent) {
            Ok(self.persistent(parent)?.into())
        } else {
            Err(BackendError::InvalidUri(format!(
                "parent {parent:#010x} is neither 0x40000001 nor a persistent handle"
            )))
        }
    }

    /// The object at persistent `handle` (not flushed: it stays).
    pub fn persistent(&mut self, handle: u32) -> Result<ObjectHandle, BackendError> {
        // Asked first: a missing handle would make the TSS libraries log.
        if !self.persistent_taken(handle)? {
            return Err(BackendError::NotFound(format!(
                "no key at persistent handle {handle:#010x}"
            )));
        }
        let h = PersistentTpmHandle::new(handle).map_err(map_error)?;
        self.ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::Persistent(h)))
            .map_err(|e| match kind(&e) {
                Some(Kind::Handle) => {
                    BackendError::NotFound(format!("no key at persistent handle {handle:#010x}"))
                }
                _ => map_error(e),
            })
    }

    /// Whether persistent `handle` is taken.
    pub fn persistent_taken(&mut self, handle: u32) -> Result<bool, BackendError> {
        use tss_esapi::constants::CapabilityType;
        use tss_esapi::structures::CapabilityData;
        let (data, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, handle, 1))
            .map_err(map_error)?;
        Ok(match data {
            CapabilityData::Handles(list) => {
                list.into_inner().iter().any(|h| u32::from(*h) == handle)
            }
            _ => false,
        })
    }

    /// A salted HMAC session (salt encrypted to `tpm_key`): the PIN never
    /// crosses the bus, and the HMACs that prove it are keyed with the
    /// secret salt too, so a bus observer cannot test PINs offline. With
    /// `encrypt`, also AES-128-CFB parameter encryption both ways — needed
    /// where a secret is a parameter (a new key's auth value); loading and
    /// signing carry none (the private blob is already encrypted by the
    /// parent) and skip its cost.
    pub fn salted_session(
        &mut self,
        tpm_key: KeyHandle,
        encrypt: bool,
    ) -> Result<AuthSession, BackendError> {
        let session = self
            .ctx
            .start_auth_session(
                Some(tpm_key),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(map_error)?
            .ok_or_else(|| BackendError::Failed("the TPM started no session".into()))?;
        self.sessions.push(session);
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(encrypt)
            .with_encrypt(encrypt)
            .with_continue_session(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attrs, mask)
            .map_err(map_error)?;
        Ok(session)
    }

    /// Creates a P-256 signing key under `parent` with `pin` as its auth
    /// value; returns its public and private parts.
    pub fn create_key(
        &mut self,
        parent: KeyHandle,
        session: AuthSession,
        pin: &SecretString,
    ) -> Result<(Public, Private), BackendError> {
        let auth = auth(pin)?;
        let template = template(Role::SigningKey)?;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(parent, template, Some(auth), None, None, None)
            })
            .map_err(map_error)?;
        Ok((created.out_public, created.out_private))
    }

    /// Loads a key under `parent` (flushed when this connection goes). The
    /// parent's auth is empty, so a password session authorizes it: no
    /// secret travels, and an HMAC session would cost ~2 ms of host CPU per
    /// command in tpm2-tss 3.2's OpenSSL code.
    pub fn load(
        &mut self,
        parent: KeyHandle,
        public: Public,
        private: Private,
    ) -> Result<KeyHandle, BackendError> {
        let key = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(parent, private, public)
            })
            .map_err(map_error)?;
        self.loaded.push(key.into());
        Ok(key)
    }

    /// The public area of a loaded or persistent object.
    pub fn read_public(&mut self, key: KeyHandle) -> Result<Public, BackendError> {
        let (public, _, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(key))
            .map_err(map_error)?;
        Ok(public)
    }

    /// ECDSA-SHA256 over `digest` with `key`, authorized by `pin` in
    /// `session`; the signature as `r‖s` (32 bytes each, low-S). The scheme
    /// is always given: keys made by tpm2-openssl carry none.
    pub fn sign(
        &mut self,
        key: KeyHandle,
        session: AuthSession,
        pin: &SecretString,
        digest: &[u8; 32],
    ) -> Result<[u8; 64], BackendError> {
        self.ctx
            .tr_set_auth(key.into(), auth(pin)?)
            .map_err(map_error)?;
        let digest = Digest::try_from(digest.to_vec()).map_err(map_error)?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let result = self.ctx.execute_with_session(Some(session), |ctx| {
            ctx.sign(key, digest, scheme, null_ticket()?)
        });
        // The auth value leaves the ESYS context at once.
        let _ = self.ctx.tr_set_auth(key.into(), Auth::default());
        match result.map_err(map_error)? {
            Signature::EcDsa(sig) => rs(sig.signature_r().value(), sig.signature_s().value()),
            _ => Err(BackendError::Failed(
                "the TPM returned another kind of signature than ECDSA".into(),
            )),
        }
    }

    /// The dictionary-attack state.
    pub fn lockout(&mut self) -> Result<Lockout, BackendError> {
        let mut get = |tag: PropertyTag| -> Result<u32, BackendError> {
            Ok(self
                .ctx
                .get_tpm_property(tag)
                .map_err(map_error)?
                .unwrap_or(0))
        };
        Ok(Lockout {
            counter: get(PropertyTag::LockoutCounter)?,
            max_tries: get(PropertyTag::MaxAuthFail)?,
            interval: get(PropertyTag::LockoutInterval)?,
            recovery: get(PropertyTag::LockoutRecovery)?,
        })
    }

    /// Makes `key` persistent at `handle` (owner authorization, empty).
    pub fn persist(&mut self, key: KeyHandle, handle: u32) -> Result<(), BackendError> {
        use tss_esapi::interface_types::dynamic_handles::Persistent;
        use tss_esapi::interface_types::resource_handles::Provision;
        let h = PersistentTpmHandle::new(handle).map_err(map_error)?;
        self.ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.evict_control(Provision::Owner, key.into(), Persistent::Persistent(h))
            })
            .map_err(map_error)?;
        Ok(())
    }

    /// Saves `object`'s context (it stays loaded until this connection
    /// goes; the saved blob can be loaded again, in another connection,
    /// until the TPM restarts).
    pub fn save(&mut self, object: ObjectHandle) -> Result<TpmsContext, BackendError> {
        self.ctx
            .execute_without_session(|ctx| ctx.context_save(object))
            .map_err(map_error)
    }

    /// Loads a saved object context (flushed when this connection goes).
    pub fn load_saved(&mut self, saved: TpmsContext) -> Result<ObjectHandle, BackendError> {
        let h = self
            .ctx
            .execute_without_session(|ctx| ctx.context_load(saved))
            .map_err(map_error)?;
        self.loaded.push(h);
        Ok(h)
    }

    /// TPM2_Certify of `key` (authorized by `pin` in `session`) by the
    /// attestation key: a restricted ECC P-256 signing primary in the
    /// endorsement hierarchy (rebuilt from its template: the same key each
    /// time on one TPM). Returns the attest structure (TPMS_ATTEST), the
    /// signature (TPMT_SIGNATURE) and the AK's public area (TPMT_PUBLIC).
    pub fn certify(
        &mut self,
        key: KeyHandle,
        session: AuthSession,
        pin: &SecretString,
        qualifying: &[u8],
    ) -> Result<Certified, BackendError> {
        use tss_esapi::structures::Data;
        use tss_esapi::traits::Marshall as _;
        let template = template(Role::AttestationKey)?;
        let ak = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(map_error)?;
        self.loaded.push(ak.key_handle.into());
        self.ctx
            .tr_set_auth(key.into(), auth(pin)?)
            .map_err(map_error)?;
        let data = Data::try_from(qualifying.to_vec()).map_err(map_error)?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let result = self
            .ctx
            .execute_with_sessions((Some(session), Some(AuthSession::Password), None), |ctx| {
                ctx.certify(key.into(), ak.key_handle, data, scheme)
            });
        let _ = self.ctx.tr_set_auth(key.into(), Auth::default());
        let (attest, signature) = result.map_err(map_error)?;
        Ok(Certified {
            attest: attest.marshall().map_err(map_error)?,
            signature: signature.marshall().map_err(map_error)?,
            ak_public: ak.out_public.marshall().map_err(map_error)?,
        })
    }

    /// The endorsement key's certificate (DER) from the TPM's NV, when it
    /// has one: RSA 2048 (0x01c00002), ECC P-256 (0x01c0000a), ECC P-384
    /// (0x01c00016), in that order. Most firmware TPMs have none.
    pub fn ek_certificate(&mut self) -> Option<Vec<u8>> {
        use tss_esapi::abstraction::nv;
        use tss_esapi::constants::CapabilityType;
        use tss_esapi::handles::NvIndexTpmHandle;
        use tss_esapi::interface_types::resource_handles::NvAuth;
        use tss_esapi::structures::CapabilityData;
        // Only indexes that exist are read: asking for a missing one makes
        // the TSS libraries log errors.
        let present: Vec<u32> = match self.ctx.execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::Handles, 0x01c0_0000, 64)
        }) {
            Ok((CapabilityData::Handles(list), _)) => {
                list.into_inner().iter().map(|h| u32::from(*h)).collect()
            }
            _ => return None,
        };
        for index in [0x01c0_0002u32, 0x01c0_000a, 0x01c0_0016] {
            if !present.contains(&index) {
                continue;
            }
            let Ok(nv_handle) = NvIndexTpmHandle::new(index) else {
                continue;
            };
            let auth_handle = match self.ctx.execute_without_session(|ctx| {
                ctx.tr_from_tpm_public(TpmHandle::NvIndex(nv_handle))
            }) {
                Ok(h) => h,
                Err(_) => continue,
            };
            let read = self.ctx.execute_with_nullauth_session(|ctx| {
                nv::read_full(ctx, NvAuth::NvIndex(auth_handle.into()), nv_handle)
            });
            let _ = self.ctx.tr_close(&mut auth_handle.clone());
            if let Ok(der) = read
                && !der.is_empty()
            {
                return Some(der);
            }
        }
        None
    }
}

/// The TPM's auth value for `pin`.
fn auth(pin: &SecretString) -> Result<Auth, BackendError> {
    Auth::try_from(pin.expose_secret().as_bytes().to_vec()).map_err(|_| {
        BackendError::InvalidSecret("the PIN is longer than the TPM accepts (32 bytes)".into())
    })
}

/// No hash-check ticket: our keys are not restricted.
pub fn null_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

/// `r‖s`, each left-padded to 32 bytes, low-S.
fn rs(r: &[u8], s: &[u8]) -> Result<[u8; 64], BackendError> {
    let bad = || BackendError::Failed("the TPM returned a malformed ECDSA signature".into());
    let (r, s) = (strip_zeros(r), strip_zeros(s));
    if r.len() > 32 || s.len() > 32 {
        return Err(bad());
    }
    let mut out = [0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    let sig = p256::ecdsa::Signature::from_slice(&out).map_err(|_| bad())?;
    Ok(sig.normalize_s().to_bytes().into())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Which ECC P-256 object a template makes.
#[derive(Clone, Copy)]
enum Role {
    /// The owner-hierarchy primary tpm2-openssl (and tpm2-tss-engine,
    /// ssh-tpm-agent) rebuild for keys whose parent is `0x40000001`:
    /// restricted decryption (storage) key, AES-128-CFB, lockout-exempt
    /// (noDA).
    StoragePrimary,
    /// A keybridge key: ECDSA-SHA256 signing, not restricted, under
    /// dictionary-attack protection (no noDA).
    SigningKey,
    /// The attestation key: restricted ECDSA-SHA256 signing, noDA.
    AttestationKey,
}

/// The template of a P-256 object in `role`: fixedTPM, fixedParent,
/// sensitiveDataOrigin, userWithAuth, SHA-256 names, and an **empty**
/// `unique` (for a primary, 32 zero bytes would make a different key:
/// loading tpm2-openssl's files then fails with `TPM_RC_INTEGRITY`).
fn template(role: Role) -> Result<Public, BackendError> {
    let (restricted, signing, no_da) = match role {
        Role::StoragePrimary => (true, false, true),
        Role::SigningKey => (false, true, false),
        Role::AttestationKey => (true, true, true),
    };
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(no_da)
        .with_restricted(restricted)
        .with_decrypt(!signing)
        .with_sign_encrypt(signing)
        .build()
        .map_err(map_error)?;
    let (symmetric, scheme) = if signing {
        (
            SymmetricDefinitionObject::Null,
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        )
    } else {
        (SymmetricDefinitionObject::AES_128_CFB, EccScheme::Null)
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(symmetric)
                .with_ecc_scheme(scheme)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(signing)
                .with_is_decryption_key(!signing)
                .with_restricted(restricted)
                .build()
                .map_err(map_error)?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(map_error)
}

/// tpm2-openssl's owner primary (see [`Role::StoragePrimary`]); public for
/// the benchmark's raw loop, which must rebuild the same parent.
pub fn primary_template() -> Result<Public, BackendError> {
    template(Role::StoragePrimary)
}

/// The P-256 point of an ECC public area, as `04‖x‖y`.
pub fn ecc_point(public: &Public) -> Result<Vec<u8>, BackendError> {
    match public {
        Public::Ecc { unique, .. } => {
            let (x, y) = (unique.x().value(), unique.y().value());
            if x.len() > 32 || y.len() > 32 {
                return Err(BackendError::UnsupportedMechanism(
                    "the TPM key is not on P-256".into(),
                ));
            }
            let mut point = vec![0u8; 65];
            point[0] = 4;
            point[33 - x.len()..33].copy_from_slice(x);
            point[65 - y.len()..].copy_from_slice(y);
            Ok(point)
        }
        _ => Err(BackendError::UnsupportedMechanism(
            "the TPM key is not an ECC key; keybridge signs with P-256".into(),
        )),
    }
}

/// TPM response codes keybridge tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Wrong authorization (TPM_RC_AUTH_FAIL, counted; TPM_RC_BAD_AUTH).
    AuthFail,
    /// TPM_RC_LOCKOUT: the dictionary-attack lockout is on.
    Lockout,
    /// TPM_RC_HANDLE / TPM_RC_REFERENCE_*: no such object.
    Handle,
    /// TPM_RC_INTEGRITY: a blob that does not belong to this parent/TPM.
    Integrity,
    /// TPM_RC_OBJECT_MEMORY / SESSION_MEMORY.
    Memory,
    /// The TPM could not be reached (TCTI or ESYS I/O).
    Unreachable,
}

/// The raw TSS2_RC of an error, if it has one.
pub fn raw_code(e: &tss_esapi::Error) -> Option<u32> {
    use std::error::Error as _;
    match e {
        // The crate hides the number but prints it: "Response code value: 0x…".
        tss_esapi::Error::Tss2Error(rc) => {
            rc.source().map(|inner| inner.to_string()).and_then(|text| {
                text.rsplit_once("0x")
                    .and_then(|(_, hex)| u32::from_str_radix(hex.trim(), 16).ok())
            })
        }
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// What an error means, where keybridge cares.
pub fn kind(e: &tss_esapi::Error) -> Option<Kind> {
    classify(raw_code(e)?)
}

/// Classifies a TSS2_RC: the layer (bits 16–23), then the TPM's format.
pub fn classify(rc: u32) -> Option<Kind> {
    let layer = (rc >> 16) & 0xff;
    let base = rc & 0xffff;
    match layer {
        0 => {
            if rc & 0x80 != 0 {
                // Format one: the error number is bits 0–5, + 0x80.
                match (rc & 0x3f) | 0x80 {
                    0x8e | 0xa2 => Some(Kind::AuthFail),
                    0x8b | 0x90 => Some(Kind::Handle),
                    0x9f => Some(Kind::Integrity),
                    _ => None,
                }
            } else {
                match base & 0xfff {
                    0x921 => Some(Kind::Lockout),
                    0x902 | 0x903 => Some(Kind::Memory),
                    0x910..=0x917 => Some(Kind::Handle),
                    _ => None,
                }
            }
        }
        // TCTI (0x0A), ESYS (0x07), SYS (0x08), MU/RESMGR, tctildr (0x0C):
        // base error 10 is I/O, 11 "try again", 9 "no connection"... any
        // failure below the TPM to reach it.
        _ => matches!(base, 9 | 10 | 11 | 15 | 16 | 29).then_some(Kind::Unreachable),
    }
}

/// A short description of an error for messages.
pub fn describe(e: tss_esapi::Error) -> String {
    match raw_code(&e) {
        Some(rc) => format!("{e} [{rc:#x}]"),
        None => e.to_string(),
    }
}

/// The one mapping of the crate's errors (wrong PIN and lockout are read
/// together with the dictionary-attack state by the callers).
pub fn map_error(e: tss_esapi::Error) -> BackendError {
    match kind(&e) {
        Some(Kind::Unreachable) => BackendError::TokenAbsent(format!(
            "the TPM went away ({}); the next request reconnects",
            describe(e)
        )),
        Some(Kind::AuthFail) => BackendError::WrongSecret { retries_left: None },
        Some(Kind::Lockout) => BackendError::LockedOut(
            "the TPM is in dictionary-attack lockout; wait, or clear it with `tpm2_dictionarylockout -c`".into(),
        ),
        Some(Kind::Integrity) => BackendError::NotFound(format!(
            "the TPM refuses this key blob ({}): it was made by another TPM, under another parent, or the TPM was cleared",
            describe(e)
        )),
        Some(Kind::Memory) => BackendError::Failed(format!(
            "the TPM is out of object or session memory ({}); another program holds loaded objects (run `tpm2_flushcontext -t`)",
            describe(e)
        )),
        _ => BackendError::Failed(format!("TPM: {}", describe(e))),
    }
}

/// Checks a new PIN: at least [`MIN_PIN_LEN`] characters, at most 32 bytes.
pub fn check_new_pin(pin: &SecretString) -> Result<(), BackendError> {
    let p = pin.expose_secret();
    if p.chars().count() < MIN_PIN_LEN {
        return Err(BackendError::InvalidSecret(format!(
            "a TPM key's PIN has at least {MIN_PIN_LEN} characters"
        )));
    }
    if p.len() > 32 {
        return Err(BackendError::InvalidSecret(
            "a TPM key's PIN is at most 32 bytes".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_are_told_apart_by_layer_and_format() {
        assert_eq!(
            classify(0x98e),
            Some(Kind::AuthFail),
            "AUTH_FAIL, session 1"
        );
        assert_eq!(classify(0x9a2), Some(Kind::AuthFail), "BAD_AUTH, session 1");
        assert_eq!(classify(0x921), Some(Kind::Lockout));
        assert_eq!(classify(0x902), Some(Kind::Memory));
        assert_eq!(classify(0x18b), Some(Kind::Handle), "HANDLE, handle 1");
        assert_eq!(classify(0x1df), Some(Kind::Integrity), "INTEGRITY, param 1");
        assert_eq!(classify(0xa000a), Some(Kind::Unreachable), "TCTI I/O");
        assert_eq!(classify(0x7000a), Some(Kind::Unreachable), "ESYS I/O");
        assert_eq!(classify(0x084), None, "VALUE");
    }

    #[test]
    fn signatures_are_padded_and_low_s() {
        let r = [1u8; 31];
        let s = [2u8; 32];
        let sig = rs(&r, &s).unwrap();
        assert_eq!(sig[0], 0);
        assert_eq!(&sig[1..32], &r[..]);
        assert!(rs(&[1u8; 33], &s).is_err(), "r too long");
        let mut leading = vec![0u8];
        leading.extend_from_slice(&s);
        assert_eq!(
            rs(&r, &leading).unwrap(),
            sig,
            "a leading zero is no length"
        );
    }

    #[test]
    fn short_and_long_pins_are_refused() {
        assert!(check_new_pin(&SecretString::from("12345")).is_err());
        assert!(check_new_pin(&SecretString::from("123456")).is_ok());
        assert!(check_new_pin(&SecretString::from("x".repeat(33))).is_err());
    }
}
