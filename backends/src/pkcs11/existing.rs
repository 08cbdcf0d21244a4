//! Adopting a key that is already on a token ([`open_uri`]), e.g. one made
//! with `pkcs11-tool --keypairgen`: find its public key object and, with a
//! PIN, check its private half.

use super::errors::failure;
use super::keygen::{PrivateAttrs, private_attrs};
use super::login::{PinFlags, before_login, login, pin_from_uri};
use super::module;
use super::objects::{
    FoundKey, canonical_uri, check_names_a_key, describe_key, find_private, one_key, public_keys,
    with_token,
};
use super::params::{params_for, record};
use super::signer::{Pkcs11Signer, probe};
use crate::BackendError;
use crate::record::KeyRecord;
use crate::uri::pkcs11::Pkcs11Uri;
use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use secrecy::SecretString;

/// Opens an existing key by URI (e.g. one made with `pkcs11-tool
/// --keypairgen`) and returns its signer (locked) and a record to store,
/// whose URI is canonical (token, serial, object, id, module-path).
///
/// The URI must match exactly one P-256 or Ed25519 key
/// ([`BackendError::NotFound`] for none, [`BackendError::Ambiguous`] for
/// several). Without a PIN (`pin`, or the URI's `pin-source`) only public
/// objects are searched and the private half is checked at the first
/// unlock. With a PIN, keybridge logs in, also searches public-key objects
/// marked `CKA_PRIVATE`, checks the private key is sensitive and not
/// extractable and that it signs for the public key found, then logs out.
pub fn open_uri(
    uri: &Pkcs11Uri,
    pin: Option<&SecretString>,
    label: Option<String>,
    now: i64,
) -> Result<(Pkcs11Signer, KeyRecord), BackendError> {
    check_names_a_key(uri)?;
    let module = module::load(&module::module_path(
        uri,
        std::env::var_os(module::MODULE_ENV),
    )?)?;
    let from_file = match pin {
        None => pin_from_uri(uri)?,
        Some(_) => None,
    };
    let pin = pin.or(from_file.as_ref());
    let (key, token, attrs) = with_token(
        &module,
        uri,
        true,
        BackendError::NotFound,
        |ctx, _, slot, info| {
            if pin.is_some() {
                before_login(PinFlags::of(info), false)?;
            }
            let session = ctx
                .open_ro_session_no_drop(slot)
                .map_err(|e| failure("C_OpenSession", &e))?;
            let found = inspect_key(&session, ctx, slot, info, uri, pin);
            if pin.is_some() {
                let _ = session.logout();
            }
            let _ = session.close();
            let (key, attrs) = found?;
            Ok((key, info.clone(), attrs))
        },
    )?;
    if key.id.is_empty() && key.label.is_empty() {
        return Err(BackendError::Unsupported(
            "the key has neither CKA_ID nor CKA_LABEL: keybridge cannot name it; set an id with pkcs11-tool --set-id".into(),
        ));
    }
    let canonical = canonical_uri(&module, &token, &key.id, &key.label);
    let params = params_for(&module, &token, &key.id, &key.label, key.alg, attrs);
    let record = record(&canonical, &key.public, label, now, &params)?;
    Ok((Pkcs11Signer::new(module, canonical, key.public), record))
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
    let hint = if pin.is_none() && info.login_required() {
        " (only public objects were searched: give the PIN to search private ones too)"
    } else {
        ""
    };
    let key = one_key(public_keys(session, uri)?, uri, info.label(), hint)?;
    let Some(pin) = pin else {
        return Ok((key, None));
    };
    let exact = Pkcs11Uri {
        id: Some(key.id.clone()),
        object: (!key.label.is_empty()).then(|| key.label.clone()),
        ..Default::default()
    };
    let private = find_private(session, &exact, key.alg, info)?;
    let attrs = private_attrs(session, private, false)?;
    // Prove the pair: the private key signs for this public key (after a
    // context-specific login, for a key that needs one per signature).
    let context_pin = attrs.always_authenticate.then_some(pin);
    if !probe(ctx, slot, session, private, &key.public, context_pin)? {
        return Err(BackendError::NotFound(format!(
            "the private key {} on token {:?} does not sign for its public key object: no matching key pair",
            describe_key(&exact),
            info.label()
        )));
    }
    Ok((key, Some(attrs)))
}
