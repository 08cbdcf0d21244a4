//! What a module shows ([`crate::list`] for PKCS#11): every token and its
//! usable public keys, without login, like `pkcs11-tool -L -O`.

use super::keygen::offers;
use super::module;
use super::objects::{
    FoundKey, always_authenticate, canonical_uri, private_half, public_keys, template,
};
use crate::record::BackendKind;
use crate::uri::pkcs11::Pkcs11Uri;
use crate::{BackendError, ListedKey, TokenListing};
use keybridge_protocol::Algorithm;

/// The tokens the module at `location` (else [`super::MODULE_ENV`]) shows
/// and their usable keys (P-256 and Ed25519 public key objects). Public
/// objects only: no login, no PIN.
///
/// Tokens added after this process first loaded the module may not show on
/// modules that scan for tokens only at initialisation (SoftHSM2); opening
/// a key by URI re-initialises such a module when needed, listing does not.
pub(crate) fn list(location: Option<&str>) -> Result<Vec<TokenListing>, BackendError> {
    let path = module::location_path(location, std::env::var_os(module::MODULE_ENV))?;
    let module = module::load(&path)?;
    module.with(|ctx, _| {
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| super::errors::failure("C_GetSlotList", &e))?;
        let mut tokens = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
            let keys = match ctx.open_ro_session_no_drop(slot) {
                Ok(session) => {
                    let keys = public_keys(&session, &Pkcs11Uri::default())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|k| {
                            let each = context_login_visible(&session, &k);
                            (k, each)
                        })
                        .collect();
                    let _ = session.close();
                    keys
                }
                Err(_) => Vec::new(),
            };
            let token_uri = Pkcs11Uri {
                token: Some(info.label().to_owned()),
                serial: Some(info.serial_number().to_owned()),
                module_path: Some(module.path().to_owned()),
                ..Default::default()
            };
            tokens.push(TokenListing {
                backend: BackendKind::Pkcs11,
                slot: Some(slot.id()),
                label: info.label().to_owned(),
                manufacturer: info.manufacturer_id().to_owned(),
                model: info.model().to_owned(),
                serial: info.serial_number().to_owned(),
                uri: token_uri.to_string(),
                login_required: info.login_required(),
                pin_count_low: info.user_pin_count_low(),
                pin_final_try: info.user_pin_final_try(),
                pin_locked: info.user_pin_locked(),
                algorithms: [Algorithm::Es256, Algorithm::Ed25519]
                    .into_iter()
                    .filter(|alg| offers(&mechanisms, *alg))
                    .map(|alg| alg.name().to_owned())
                    .collect(),
                keys: keys
                    .into_iter()
                    .map(|(k, login_each_signature)| ListedKey {
                        login_each_signature,
                        uri: canonical_uri(&module, &info, &k.id, &k.label).to_string(),
                        label: k.label,
                        id: hex::encode(&k.id),
                        alg: k.alg.name().to_owned(),
                        kid: k.public.kid().to_hex(),
                    })
                    .collect(),
            });
        }
        Ok(tokens)
    })
}

/// Whether the private half of `key` needs a context-specific login before
/// each signature, if that half is visible without login (OpenSC shows PIV
/// private key objects; ykcs11 and SoftHSM2 only after `C_Login`).
fn context_login_visible(session: &cryptoki::session::Session, key: &FoundKey) -> Option<bool> {
    let half = private_half(&Pkcs11Uri {
        id: Some(key.id.clone()),
        object: Some(key.label.clone()),
        ..Default::default()
    });
    let template = template(cryptoki::object::ObjectClass::PRIVATE_KEY, &half);
    match session.find_objects(&template).ok()?.as_slice() {
        [one] => Some(always_authenticate(session, *one)),
        _ => None,
    }
}
