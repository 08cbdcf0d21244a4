//! Finding things on a module: the one token a URI names, the public and
//! private key objects it names, their algorithms (from `CKA_KEY_TYPE` and
//! `CKA_EC_PARAMS`) and public keys (from `CKA_EC_POINT`, DER-wrapped or
//! raw), and the canonical URI keybridge writes for a key.

use super::errors::failure;
use super::module::Module;
use crate::BackendError;
use crate::uri::pkcs11::{ObjectType, Pkcs11Uri};
use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use keybridge_protocol::{Algorithm, PublicKey};
use std::path::Path;

/// DER OID 1.2.840.10045.3.1.7 (prime256v1): `CKA_EC_PARAMS` of P-256.
pub(super) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID 1.3.101.112 (RFC 8410 id-Ed25519).
pub(super) const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519" (PKCS#11 3.0 curve name; what
/// `pkcs11-tool` writes).
pub(super) const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";

/// A usable public key object.
#[derive(Debug, Clone)]
pub(super) struct FoundKey {
    pub(super) id: Vec<u8>,
    pub(super) label: String,
    pub(super) alg: Algorithm,
    pub(super) public: PublicKey,
}

/// Refuses a URI that names something other than a key (`type=cert`,
/// `type=data`, `type=secret-key`).
pub(super) fn check_names_a_key(uri: &Pkcs11Uri) -> Result<(), BackendError> {
    if uri.names_a_key() {
        Ok(())
    } else {
        Err(BackendError::InvalidUri(format!(
            "the URI names a {} object, not a key",
            uri.object_type.map_or("", ObjectType::name)
        )))
    }
}

// ---------------------------------------------------------------------------
// Tokens

/// Runs `f` on the one token `uri` names, under the module's read lock.
/// When no token matches and `reinit` is set, the module is re-initialised
/// once (rate-limited) and the search repeated; if still none matches, the
/// answer is `missing(text)`: [`BackendError::NotFound`] for a reference
/// the user just gave, [`BackendError::TokenAbsent`] for a recorded key's.
/// Several matching tokens are [`BackendError::Ambiguous`].
pub(super) fn with_token<T>(
    module: &Module,
    uri: &Pkcs11Uri,
    reinit: bool,
    missing: fn(String) -> BackendError,
    mut f: impl FnMut(&Pkcs11, u64, Slot, &CkTokenInfo) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    for attempt in 0..2 {
        let (found, generation) = module.with(|ctx, generation| {
            check_library(ctx, uri, module.path())?;
            let mut slots = matching_slots(ctx, uri)?;
            match slots.len() {
                0 => Ok((None, generation)),
                1 => {
                    let (slot, info) = slots.remove(0);
                    Ok((Some(f(ctx, generation, slot, &info)?), generation))
                }
                n => Err(BackendError::Ambiguous(format!(
                    "{n} tokens match {}: {}; add serial= to the URI to choose one",
                    describe_token(uri),
                    slots
                        .iter()
                        .map(|(_, info)| format!(
                            "{:?} serial {}",
                            info.label(),
                            info.serial_number()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
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
    Err(missing(format!(
        "no token matches {} in {}",
        describe_token(uri),
        module.path().display()
    )))
}

/// Whether a token's description matches the token attributes of `uri`.
fn token_matches(uri: &Pkcs11Uri, info: &CkTokenInfo) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    info.token_initialized()
        && eq(&uri.token, info.label())
        && eq(&uri.manufacturer, info.manufacturer_id())
        && eq(&uri.serial, info.serial_number())
        && eq(&uri.model, info.model())
}

/// Checks the `library-*` attributes of `uri` against the module: another
/// library is [`BackendError::NotFound`].
fn check_library(ctx: &Pkcs11, uri: &Pkcs11Uri, path: &Path) -> Result<(), BackendError> {
    if uri.library_manufacturer.is_none()
        && uri.library_description.is_none()
        && uri.library_version.is_none()
    {
        return Ok(());
    }
    let info = ctx
        .get_library_info()
        .map_err(|e| failure("C_GetInfo", &e))?;
    let version = info.library_version();
    let ok = uri
        .library_manufacturer
        .as_deref()
        .is_none_or(|m| m == info.manufacturer_id())
        && uri
            .library_description
            .as_deref()
            .is_none_or(|d| d == info.library_description())
        && uri
            .library_version
            .is_none_or(|(major, minor)| (major, minor) == (version.major(), version.minor()));
    if ok {
        Ok(())
    } else {
        Err(BackendError::NotFound(format!(
            "the PKCS#11 module {} is \"{}\" \"{}\" {}.{}, not the library the URI names",
            path.display(),
            info.manufacturer_id(),
            info.library_description(),
            version.major(),
            version.minor()
        )))
    }
}

/// The slots whose token matches `uri`. Slots that fail to answer (a token
/// pulled out right now) are skipped.
fn matching_slots(ctx: &Pkcs11, uri: &Pkcs11Uri) -> Result<Vec<(Slot, CkTokenInfo)>, BackendError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| failure("C_GetSlotList", &e))?;
    Ok(slots
        .into_iter()
        .filter_map(|slot| ctx.get_token_info(slot).ok().map(|info| (slot, info)))
        .filter(|(_, info)| token_matches(uri, info))
        .collect())
}

/// `token="kb" serial="…"`: the token attributes of `uri`, for messages.
pub(super) fn describe_token(uri: &Pkcs11Uri) -> String {
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

/// `object="alice" id=01`: the key attributes of `uri`, for messages.
pub(super) fn describe_key(uri: &Pkcs11Uri) -> String {
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

/// The URI keybridge records for a key: token, serial, object, id,
/// module-path.
pub(super) fn canonical_uri(
    module: &Module,
    token: &CkTokenInfo,
    id: &[u8],
    object: &str,
) -> Pkcs11Uri {
    Pkcs11Uri {
        token: Some(token.label().to_owned()),
        serial: Some(token.serial_number().to_owned()),
        object: (!object.is_empty()).then(|| object.to_owned()),
        id: (!id.is_empty()).then(|| id.to_vec()),
        module_path: Some(module.path().to_owned()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Keys

/// The search template for the objects of class `class` that `uri` names.
pub(super) fn template(class: ObjectClass, uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    if let Some(object) = &uri.object {
        template.push(Attribute::Label(object.as_bytes().to_vec()));
    }
    template
}

pub(super) fn algorithm_of(key_type: KeyType, params: &[u8]) -> Option<Algorithm> {
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
pub(super) fn public_from_ec_point(alg: Algorithm, point: &[u8]) -> Result<PublicKey, String> {
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
pub(super) fn public_keys(
    session: &Session,
    uri: &Pkcs11Uri,
) -> Result<Vec<FoundKey>, BackendError> {
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

/// The one key of `keys` (those `uri` names on `token`):
/// [`BackendError::NotFound`] for none (`hint` says what else to try),
/// [`BackendError::Ambiguous`] for several, listed.
pub(super) fn one_key(
    mut keys: Vec<FoundKey>,
    uri: &Pkcs11Uri,
    token: &str,
    hint: &str,
) -> Result<FoundKey, BackendError> {
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(BackendError::NotFound(format!(
            "no P-256 or Ed25519 public key matches {} on token {token:?}{hint}",
            describe_key(uri)
        ))),
        n => Err(BackendError::Ambiguous(format!(
            "{n} keys match {} on token {token:?}: {}; add id= or object= to the URI",
            describe_key(uri),
            keys.iter()
                .map(|k| format!("{} {:?} id {}", k.alg, k.label, hex::encode(&k.id)))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What names the private half of the key `uri` names: its `CKA_ID` alone
/// when it has one (the id is what links the halves of a pair in PKCS#11;
/// labels often differ: ykcs11 calls slot 9c's halves "Private key for
/// Digital Signature" and "Public key for Digital Signature", OpenSC "SIGN
/// key" and "SIGN pubkey"), else its label.
pub(super) fn private_half(uri: &Pkcs11Uri) -> Pkcs11Uri {
    match &uri.id {
        Some(id) if !id.is_empty() => Pkcs11Uri {
            id: Some(id.clone()),
            ..Default::default()
        },
        _ => Pkcs11Uri {
            object: uri.object.clone(),
            ..Default::default()
        },
    }
}

/// The one private key of type `alg` that is the other half of the key
/// `uri` names ([`private_half`]), found while logged in (smart-card
/// modules show private objects only then): [`BackendError::NotFound`] for
/// none, [`BackendError::Ambiguous`] for several.
pub(super) fn find_private(
    session: &Session,
    uri: &Pkcs11Uri,
    alg: Algorithm,
    info: &CkTokenInfo,
) -> Result<ObjectHandle, BackendError> {
    let uri = &private_half(uri);
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
        0 => Err(BackendError::NotFound(format!(
            "token {:?} has no private {alg} key {}",
            info.label(),
            describe_key(uri)
        ))),
        n => Err(BackendError::Ambiguous(format!(
            "{n} private keys match {} on token {:?}: add id= to the URI",
            describe_key(uri),
            info.label()
        ))),
    }
}

/// `CKA_ALWAYS_AUTHENTICATE` of a private key: whether every `C_Sign`
/// needs a `C_Login(CKU_CONTEXT_SPECIFIC)` right before it (PIV slot 9c).
/// A token that cannot say is taken at its word: false.
pub(super) fn always_authenticate(session: &Session, key: ObjectHandle) -> bool {
    session
        .get_attributes(key, &[AttributeType::AlwaysAuthenticate])
        .ok()
        .and_then(|attrs| {
            attrs.into_iter().find_map(|a| match a {
                Attribute::AlwaysAuthenticate(v) => Some(v),
                _ => None,
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_half_is_found_by_id_and_by_label_only_without_one() {
        let both: Pkcs11Uri =
            "pkcs11:token=t;object=Public%20key%20for%20Digital%20Signature;id=%02"
                .parse()
                .unwrap();
        let half = private_half(&both);
        assert_eq!(half.id.as_deref(), Some(&[2u8][..]));
        assert_eq!(half.object, None);
        assert_eq!(half.token, None);
        let label: Pkcs11Uri = "pkcs11:object=k".parse().unwrap();
        assert_eq!(private_half(&label).object.as_deref(), Some("k"));
        assert_eq!(private_half(&label).id, None);
    }

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
    fn uris_naming_certificates_or_data_are_not_keys() {
        for uri in [
            "pkcs11:type=cert",
            "pkcs11:type=data",
            "pkcs11:type=secret-key",
        ] {
            let parsed: Pkcs11Uri = uri.parse().unwrap();
            assert!(
                matches!(check_names_a_key(&parsed), Err(BackendError::InvalidUri(_))),
                "{uri}"
            );
        }
        let private: Pkcs11Uri = "pkcs11:type=private".parse().unwrap();
        assert!(check_names_a_key(&private).is_ok());
    }

    fn key(label: &str, id: u8) -> FoundKey {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[id; 32]);
        FoundKey {
            id: vec![id],
            label: label.into(),
            alg: Algorithm::Ed25519,
            public: PublicKey::ed25519(ed.verifying_key().as_bytes()).unwrap(),
        }
    }

    #[test]
    fn no_matching_key_is_not_found_and_several_are_ambiguous_and_listed() {
        let uri: Pkcs11Uri = "pkcs11:object=k".parse().unwrap();
        let err = one_key(vec![], &uri, "kb", "").unwrap_err();
        assert!(
            matches!(&err, BackendError::NotFound(m) if m.contains("object=\"k\"") && m.contains("\"kb\"")),
            "{err:?}"
        );
        let err = one_key(vec![key("k", 1), key("k", 2)], &uri, "kb", "").unwrap_err();
        assert!(
            matches!(&err, BackendError::Ambiguous(m)
                if m.starts_with("2 keys match") && m.contains("id 01") && m.contains("id 02")),
            "{err:?}"
        );
        assert_eq!(one_key(vec![key("k", 3)], &uri, "kb", "").unwrap().id, [3]);
    }
}
