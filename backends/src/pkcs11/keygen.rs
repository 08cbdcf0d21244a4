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
    /// `CKA_ALWAYS_AUTHENTICATE`: a context-specific login before every
    /// signature.
    pub(super) always_authenticate: bool,
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
            refuse_security_officer_keygen(ctx)?;
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

/// What to do instead of generating through a module that needs the
/// security officer for it.
const SO_KEYGEN_ADVICE: &str = "create the key with `keybridge keys create --backend yubikey --uri 'yubikey:serial=N;slot=9c'` (it uses the card's PIN-protected or given management key), or generate it with the card's own tool (yubico-piv-tool -a generate -s 9c) and open it with `keybridge keys create --backend pkcs11 --existing`";

/// Refuses, before any PIN is sent, to generate through a module known to
/// generate keys only after a security-officer login: ykcs11 (Yubico's PIV
/// module) wants the card's management key as the SO PIN, and keybridge
/// does not pass management keys through PKCS#11.
fn refuse_security_officer_keygen(ctx: &Pkcs11) -> Result<(), BackendError> {
    let info = ctx
        .get_library_info()
        .map_err(|e| failure("C_GetInfo", &e))?;
    if info.manufacturer_id().starts_with("Yubico") {
        return Err(BackendError::Unsupported(format!(
            "Yubico's PKCS#11 module (ykcs11) generates keys only after a security-officer login with the card's management key, which keybridge does not send through PKCS#11: {SO_KEYGEN_ADVICE}"
        )));
    }
    Ok(())
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
    // No usage flags on the public half: tpm2-pkcs11 maps CKA_VERIFY and
    // CKA_ENCRYPT onto the TPM key's decrypt and sign bits and refuses a
    // template whose public half says otherwise than the private half
    // ("attr mismatch 0x10a", CKR_GENERAL_ERROR). An EC public key only
    // verifies, whatever its flags say.
    let public_template = |params: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(params.to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Label(object.as_bytes().to_vec()),
        ]
    };
    let mut last_error = None;
    let mut pair = None;
    for params in params_choices {
        match session.generate_key_pair(&mechanism, &public_template(params), &private_template) {
            Ok(handles) => {
                pair = Some(handles);
                break;
            }
            // A token that wants the other spelling of the Ed25519 curve,
            // or refuses something in the templates (tpm2-pkcs11 says so
            // with CKR_GENERAL_ERROR).
            Err(e) if rv(&e).is_some_and(refuses_template) => last_error = Some(e),
            // Logged in as the user, and still not allowed: a module that
            // generates only for the security officer (OpenSC's PIV driver
            // wants the card's management key for that).
            Err(e) if rv(&e) == Some(RvError::UserNotLoggedIn) => {
                return Err(BackendError::Unsupported(format!(
                    "token {:?} generates keys only after a security-officer login (CKR_USER_NOT_LOGGED_IN after the user's): {SO_KEYGEN_ADVICE}",
                    info.label()
                )));
            }
            Err(e) => return Err(failure("C_GenerateKeyPair", &e)),
        }
    }
    let Some((public_handle, private_handle)) = pair else {
        let e = last_error.expect("at least one attempt");
        // Which attribute? PKCS#11 does not say: try without each in turn.
        // A key made that way is destroyed at once; the user is told.
        let last = params_choices.last().expect("at least one choice");
        let found = find_refused(
            |public, private| session.generate_key_pair(&mechanism, public, private).ok(),
            &public_template(last),
            &private_template,
        );
        if let Some((half, attr, (public, private))) = found {
            let _ = session.destroy_object(private);
            let _ = session.destroy_object(public);
            return Err(BackendError::Unsupported(format!(
                "token {:?} refuses {} in the {half} key's template ({}; without it the token generates): keybridge asks for it to make a signing key and nothing else. Generate the key with the token's own tool and open it with `keybridge keys create --backend pkcs11 --existing`",
                info.label(),
                describe_attribute(&attr),
                super::errors::describe(&e)
            )));
        }
        if rv(&e) == Some(RvError::GeneralError) {
            return Err(failure("C_GenerateKeyPair", &e));
        }
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

/// Codes with which tokens refuse a key template (tpm2-pkcs11: any
/// mismatch is `CKR_GENERAL_ERROR`).
fn refuses_template(code: RvError) -> bool {
    matches!(
        code,
        RvError::CurveNotSupported
            | RvError::DomainParamsInvalid
            | RvError::AttributeValueInvalid
            | RvError::AttributeTypeInvalid
            | RvError::AttributeReadOnly
            | RvError::TemplateInconsistent
            | RvError::TemplateIncomplete
            | RvError::GeneralError
    )
}

/// The first attribute of `public`, then `private`, without which
/// `generate` succeeds: the one the token refuses, which half it is in,
/// and what `generate` made. The curve, id and label are never left out.
fn find_refused<P>(
    mut generate: impl FnMut(&[Attribute], &[Attribute]) -> Option<P>,
    public: &[Attribute],
    private: &[Attribute],
) -> Option<(&'static str, Attribute, P)> {
    let essential = |a: &Attribute| {
        matches!(
            a,
            Attribute::EcParams(_) | Attribute::Id(_) | Attribute::Label(_)
        )
    };
    let without = |template: &[Attribute], i: usize| -> Vec<Attribute> {
        let mut t = template.to_vec();
        t.remove(i);
        t
    };
    for (i, attr) in public.iter().enumerate() {
        if !essential(attr)
            && let Some(made) = generate(&without(public, i), private)
        {
            return Some(("public", attr.clone(), made));
        }
    }
    for (i, attr) in private.iter().enumerate() {
        if !essential(attr)
            && let Some(made) = generate(public, &without(private, i))
        {
            return Some(("private", attr.clone(), made));
        }
    }
    None
}

/// `CKA_SENSITIVE=true`: an attribute as PKCS#11 names it, with its value
/// (booleans only; other values are not shown).
fn describe_attribute(attr: &Attribute) -> String {
    let camel = format!("{:?}", attr.attribute_type());
    let mut name = String::from("CKA");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    let value = match attr {
        Attribute::Token(v)
        | Attribute::Private(v)
        | Attribute::Sensitive(v)
        | Attribute::Extractable(v)
        | Attribute::Sign(v)
        | Attribute::Verify(v)
        | Attribute::Encrypt(v)
        | Attribute::Decrypt(v)
        | Attribute::Wrap(v)
        | Attribute::Unwrap(v)
        | Attribute::Derive(v) => format!("={v}"),
        _ => String::new(),
    };
    format!("{name}{value}")
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
                AttributeType::AlwaysAuthenticate,
            ],
        )
        .map_err(|e| failure("C_GetAttributeValue", &e))?;
    let (mut sensitive, mut extractable, mut always, mut never, mut local, mut sign) =
        (false, true, false, false, false, false);
    let mut always_authenticate = false;
    for attr in attrs {
        match attr {
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::AlwaysSensitive(v) => always = v,
            Attribute::NeverExtractable(v) => never = v,
            Attribute::Local(v) => local = v,
            Attribute::Sign(v) => sign = v,
            Attribute::AlwaysAuthenticate(v) => always_authenticate = v,
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
            always_authenticate,
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

    /// tpm2-pkcs11 1.9's rule (src/lib/tpm.c, attrs.c): CKA_VERIFY and
    /// CKA_DECRYPT are one TPM bit, CKA_SIGN and CKA_ENCRYPT another; the
    /// public template is applied, then the private one, and any template
    /// value the resulting key does not have is refused.
    fn tpm2_pkcs11_generates(public: &[Attribute], private: &[Attribute]) -> Option<()> {
        let (mut sign, mut decrypt) = (false, false);
        for a in public.iter().chain(private) {
            match a {
                Attribute::Sign(v) | Attribute::Encrypt(v) => sign = *v,
                Attribute::Verify(v) | Attribute::Decrypt(v) => decrypt = *v,
                _ => {}
            }
        }
        let consistent = public.iter().chain(private).all(|a| match a {
            Attribute::Sign(v) | Attribute::Encrypt(v) => *v == sign,
            Attribute::Verify(v) | Attribute::Decrypt(v) => *v == decrypt,
            _ => true,
        });
        consistent.then_some(())
    }

    #[test]
    fn the_refused_attribute_is_found_and_named() {
        let public = [
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
        ];
        let private = [Attribute::Sign(true), Attribute::Decrypt(false)];
        assert!(tpm2_pkcs11_generates(&public, &private).is_none());
        let (half, attr, ()) = find_refused(tpm2_pkcs11_generates, &public, &private).unwrap();
        assert_eq!(half, "public");
        assert_eq!(describe_attribute(&attr), "CKA_VERIFY=true");
        // The template keybridge uses now passes as it is.
        let ours = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Wrap(false),
        ];
        assert!(tpm2_pkcs11_generates(&ours, &private).is_some());
        // Nothing helps: none found; the curve is never left out.
        let mut tried = vec![];
        let none = find_refused(
            |p: &[Attribute], _: &[Attribute]| -> Option<()> {
                tried.push(p.len());
                None
            },
            &public,
            &private,
        );
        assert!(none.is_none());
        assert_eq!(
            tried.len(),
            4,
            "two public attributes and two private ones tried"
        );
        assert_eq!(
            describe_attribute(&Attribute::Label(b"x".to_vec())),
            "CKA_LABEL"
        );
        assert_eq!(
            describe_attribute(&Attribute::EcParams(vec![])),
            "CKA_EC_PARAMS"
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
