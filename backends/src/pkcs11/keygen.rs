//! Generating a key pair on a token ([`create`]), and the checks that a
//! private key never leaves it: sensitive, not extractable, and (for keys
//! keybridge made) always so.

use super::errors::{failure, rv};
use super::login::{PinFlags, before_login, login};
use super::module;
use super::objects::{
    ED25519_NAME_PARAMS, ED25519_OID_PARAMS, P256_PARAMS, canonical_uri, check_names_a_key,
    public_keys, with_token,
};
use super::params::{Pkcs11Params, params_for, record};
use super::signer::Pkcs11Signer;
use crate::BackendError;
use crate::record::KeyRecord;
use crate::uri::pkcs11::Pkcs11Uri;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use keybridge_protocol::{Algorithm, PublicKey};
use secrecy::SecretString;

/// Length of a random `CKA_ID`.
const ID_LEN: usize = 16;

/// The residency attributes of a private key.
#[derive(Debug, Clone, Copy)]
pub(super) struct PrivateAttrs {
    pub(super) local: bool,
    pub(super) always_sensitive: bool,
    pub(super) never_extractable: bool,
}

/// Generates a key pair on the token `uri` names and returns its signer
/// (**locked**: logged out, PIN forgotten) and the record to store.
///
/// `uri` names the token (`token`, `serial`, …) and may give the new key's
/// `object` (its `CKA_LABEL`; else `label`, else `keybridge ACCOUNT/AGENT`)
/// and `id` (else 16 random bytes). Objects already using that id or label
/// are not touched: the call fails instead. The module is `module-path`, or
/// [`MODULE_ENV`](super::MODULE_ENV). The PIN is spent once; the last attempt never
/// ([`BackendError::LastAttempt`]).
///
/// Errors: [`BackendError::InvalidUri`] for a URI without a module or
/// naming a non-key object, [`BackendError::NotFound`] when no token
/// matches (or the module file is missing), [`BackendError::Ambiguous`]
/// when several do, [`BackendError::UnsupportedMechanism`] when the token
/// does not list the mechanisms `alg` needs, [`BackendError::AlreadyExists`]
/// for a key with that id or label, PIN errors as
/// [`crate::Signer::unlock`], [`BackendError::Unsupported`] for a token
/// that does not keep the key sensitive and non-extractable (the new
/// objects are destroyed).
pub fn create(
    uri: &Pkcs11Uri,
    account: &str,
    agent: &str,
    alg: Algorithm,
    pin: &SecretString,
    label: Option<String>,
    now: i64,
) -> Result<(Pkcs11Signer, KeyRecord), BackendError> {
    check_names_a_key(uri)?;
    let module = module::load(&module::module_path(
        uri,
        std::env::var_os(module::MODULE_ENV),
    )?)?;
    let object = uri
        .object
        .clone()
        .or_else(|| label.clone())
        .unwrap_or_else(|| format!("keybridge {account}/{agent}"));
    let id = match &uri.id {
        Some(id) => id.clone(),
        None => random_id()?,
    };
    let ((public, attrs), token) = with_token(
        &module,
        uri,
        true,
        BackendError::NotFound,
        |ctx, _, slot, info| {
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
        },
    )?;
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

fn random_id() -> Result<Vec<u8>, BackendError> {
    let mut id = vec![0u8; ID_LEN];
    getrandom::fill(&mut id)
        .map_err(|e| BackendError::Failed(format!("no randomness for a key id: {e}")))?;
    Ok(id)
}

/// The mechanisms a key of `alg` needs, with their names for messages.
fn needed_mechanisms(alg: Algorithm) -> &'static [(MechanismType, &'static str)] {
    match alg {
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
    }
}

/// Whether a token that lists `listed` can generate and use a key of `alg`.
pub(super) fn offers(listed: &[MechanismType], alg: Algorithm) -> bool {
    needed_mechanisms(alg)
        .iter()
        .all(|(m, _)| listed.contains(m))
}

/// [`BackendError::UnsupportedMechanism`], naming what is missing, unless
/// `listed` has every mechanism a key of `alg` needs.
fn require_mechanisms(
    listed: &[MechanismType],
    alg: Algorithm,
    token: &str,
) -> Result<(), BackendError> {
    let missing: Vec<&str> = needed_mechanisms(alg)
        .iter()
        .filter(|(m, _)| !listed.contains(m))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BackendError::UnsupportedMechanism(format!(
            "token {token:?} does not offer {}: it cannot hold an {alg} key",
            missing.join(" and ")
        )))
    }
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
    require_mechanisms(&listed, alg, info.label())
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
    conflict(info.label(), id, object, !same_id.is_empty(), false)?;
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let same_label = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(object.as_bytes().to_vec()),
            ])
            .map_err(|e| failure("C_FindObjects", &e))?;
        conflict(info.label(), id, object, false, !same_label.is_empty())?;
    }
    Ok(())
}

/// [`BackendError::AlreadyExists`] when the token already has objects with
/// the new key's id, or keys with its label.
fn conflict(
    token: &str,
    id: &[u8],
    object: &str,
    id_taken: bool,
    label_taken: bool,
) -> Result<(), BackendError> {
    if id_taken {
        Err(BackendError::AlreadyExists(format!(
            "token {token:?} already has objects with id {}: choose another id= or leave it out",
            hex::encode(id)
        )))
    } else if label_taken {
        Err(BackendError::AlreadyExists(format!(
            "token {token:?} already has a key labelled {object:?}: choose another object= name"
        )))
    } else {
        Ok(())
    }
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
        return Err(BackendError::UnsupportedMechanism(format!(
            "token {:?} cannot generate an {alg} key: {}",
            info.label(),
            super::errors::describe(&e)
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

/// Reads the private key's residency attributes and refuses a key the
/// token does not keep sensitive and non-extractable (and, with `strict`,
/// one that ever was extractable or not sensitive).
pub(super) fn private_attrs(
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
        Err(BackendError::Unsupported(format!(
            "the token reports the private key as {}: keybridge only uses keys that never leave the token",
            problems.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_without_the_mechanisms_is_an_unsupported_mechanism() {
        let ecdsa_only = [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA];
        assert!(require_mechanisms(&ecdsa_only, Algorithm::Es256, "t").is_ok());
        assert!(offers(&ecdsa_only, Algorithm::Es256));
        assert!(!offers(&ecdsa_only, Algorithm::Ed25519));
        let err = require_mechanisms(&ecdsa_only, Algorithm::Ed25519, "t").unwrap_err();
        assert!(
            matches!(&err, BackendError::UnsupportedMechanism(m)
                if m.contains("CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA")),
            "{err:?}"
        );
        let no_eddsa = [MechanismType::ECC_EDWARDS_KEY_PAIR_GEN];
        let err = require_mechanisms(&no_eddsa, Algorithm::Ed25519, "t").unwrap_err();
        assert!(
            matches!(&err, BackendError::UnsupportedMechanism(m)
                if m.contains("CKM_EDDSA") && !m.contains("PAIR_GEN")),
            "{err:?}"
        );
    }

    #[test]
    fn a_taken_id_or_label_is_already_exists() {
        assert!(conflict("t", &[1], "k", false, false).is_ok());
        let err = conflict("t", &[1], "k", true, false).unwrap_err();
        assert!(
            matches!(&err, BackendError::AlreadyExists(m) if m.contains("already has objects with id 01")),
            "{err:?}"
        );
        let err = conflict("t", &[1], "k", false, true).unwrap_err();
        assert!(
            matches!(&err, BackendError::AlreadyExists(m) if m.contains("already has a key labelled \"k\"")),
            "{err:?}"
        );
    }
}
