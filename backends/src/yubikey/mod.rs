//! Keys in a YubiKey's PIV applet, through the `yubikey` crate (feature
//! `yubikey`).
//!
//! The crate is pinned to `=0.9.0-rc.0`: it is the line that speaks the
//! AES-192 default management key of firmware 5.7+ and Ed25519; 0.8 speaks
//! only 3DES, a recurring failure of yubikey-agent, piv-go, cosign and
//! age-plugin-yubikey users.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | creating a key: find the card, check the slot, PIN, management key, generate, attest |
//! | [`card`] | finding a card by serial, PIN checks with their retry rules, errors → [`BackendError`] |
//! | [`signer`] | [`YubikeySigner`]: unlock, sign (ES256 over SHA-256, Ed25519 over the bytes), lock |
//! | [`attestation`] | checking a slot's attestation chain against roots the user holds |
//!
//! The PIN is never tried on the user's behalf: no default PIN, no retry,
//! and the last attempt only with `spend_last_attempt`. Before a PIN is sent
//! the card is checked to be the one the key record names (serial, and the
//! slot's public key where the firmware reports it).

pub mod attestation;
pub mod card;
pub mod signer;
mod watch;

use crate::dispatch::CreateSpec;
use crate::record::{BackendKind, KeyRecord};
use crate::uri::KeyUri;
use crate::uri::yubikey::YubikeyUri;
use crate::{BackendError, ExposeSecret as _};
use card::{Card, verify_pin};
use keybridge_protocol::{Algorithm, PublicKey};
pub use signer::YubikeySigner;
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotAlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, TouchPolicy};

/// What the key record keeps besides the public key (never secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct YubikeyParams {
    /// The card's serial number.
    pub serial: u32,
    /// The slot, hex (`9c`).
    pub slot: String,
    /// `once`, `always` or `never` (the card's default for the slot when
    /// not chosen).
    pub pin_policy: String,
    /// `never`, `always` or `cached`.
    pub touch_policy: String,
    /// Firmware when the key was made, `5.7.1`.
    pub firmware: String,
    /// The slot's attestation certificate and the f9 certificate (DER,
    /// base64), leaf first; empty when the card gave none.
    #[serde(default)]
    pub attestation: Vec<String>,
    /// True when the key was made with the card's factory management key
    /// (the card still had factory credentials).
    #[serde(default)]
    pub factory_management_key: bool,
}

/// The PIN policy by name.
pub fn pin_policy(name: Option<&str>) -> Result<PinPolicy, BackendError> {
    Ok(match name {
        None => PinPolicy::Default,
        Some("once") => PinPolicy::Once,
        Some("always") => PinPolicy::Always,
        Some("never") => PinPolicy::Never,
        Some(other) => {
            return Err(BackendError::InvalidSecret(format!(
                "PIN policy {other:?} is not once, always or never"
            )));
        }
    })
}

/// The touch policy by name.
pub fn touch_policy(name: Option<&str>) -> Result<TouchPolicy, BackendError> {
    Ok(match name {
        None => TouchPolicy::Default,
        Some("never") => TouchPolicy::Never,
        Some("always") => TouchPolicy::Always,
        Some("cached") => TouchPolicy::Cached,
        Some(other) => {
            return Err(BackendError::InvalidSecret(format!(
                "touch policy {other:?} is not never, always or cached"
            )));
        }
    })
}

fn policy_names(pin: PinPolicy, touch: TouchPolicy) -> (&'static str, &'static str) {
    let pin = match pin {
        PinPolicy::Always => "always",
        PinPolicy::Never => "never",
        // The card's default for the signing slots is "once" (9c: always);
        // the slot metadata says which, read back after generation.
        _ => "once",
    };
    let touch = match touch {
        TouchPolicy::Always => "always",
        TouchPolicy::Cached => "cached",
        _ => "never",
    };
    (pin, touch)
}

/// Generates a key in the slot `spec.uri` names (see the module docs).
pub fn create_from_spec(spec: CreateSpec) -> Result<(YubikeySigner, KeyRecord), BackendError> {
    let uri = match &spec.uri {
        Some(KeyUri::Yubikey(u)) => *u,
        _ => {
            return Err(BackendError::InvalidUri(
                "a YubiKey key needs --uri yubikey:serial=N;slot=9c".into(),
            ));
        }
    };
    if spec.existing {
        return Err(BackendError::Unsupported(
            "adopting a key already in a YubiKey slot is not supported yet; generate one".into(),
        ));
    }
    let pin = spec.secret.as_ref().ok_or_else(|| {
        BackendError::InvalidSecret("generating a key on a YubiKey needs its PIN".into())
    })?;
    let pin_policy = pin_policy(spec.options.pin_policy.as_deref())?;
    let touch_policy = touch_policy(spec.options.touch_policy.as_deref())?;
    let mut card = Card::open(uri.serial)?;
    let version = card.yk().version();
    let alg = match spec.alg.unwrap_or(Algorithm::Es256) {
        Algorithm::Es256 => AlgorithmId::EccP256,
        Algorithm::Ed25519 if (version.major, version.minor) >= (5, 7) => AlgorithmId::Ed25519,
        Algorithm::Ed25519 => {
            return Err(BackendError::UnsupportedMechanism(format!(
                "Ed25519 needs YubiKey firmware 5.7 or newer; this card has {version}"
            )));
        }
    };
    let slot = SlotId::try_from(uri.slot)
        .map_err(|_| BackendError::InvalidUri(format!("slot {:02x}", uri.slot)))?;
    if !spec.options.overwrite && card.slot_public_key(slot)?.is_some() {
        return Err(BackendError::AlreadyExists(format!(
            "YubiKey {} slot {:02x} already holds a key; keybridge will not overwrite it without --overwrite",
            card.serial(),
            uri.slot
        )));
    }
    verify_pin(&mut card, pin, spec.options.spend_last_attempt)?;
    let factory = authenticate(&mut card, &spec)?;
    let spki =
        piv::generate(card.yk(), slot, alg, pin_policy, touch_policy).map_err(card::map_error)?;
    let public = card::public_key_of(&spki)?;
    let attestation = card.attestation(slot);
    let (pin_name, touch_name) = policy_names(pin_policy, touch_policy);
    let params = YubikeyParams {
        serial: card.serial(),
        slot: format!("{:02x}", uri.slot),
        pin_policy: card
            .slot_policies(slot)
            .map_or(pin_name.to_owned(), |(p, _)| p.to_owned()),
        touch_policy: touch_name.to_owned(),
        firmware: version.to_string(),
        attestation,
        factory_management_key: factory,
    };
    let canonical = YubikeyUri {
        serial: Some(card.serial()),
        slot: uri.slot,
    };
    let record = KeyRecord::new(
        canonical.to_string(),
        BackendKind::Yubikey,
        &public,
        spec.label,
        spec.now,
        serde_json::to_value(&params).expect("params serialize"),
    );
    drop(card);
    Ok((YubikeySigner::new(public, params)?, record))
}

/// Authenticates with the management key: the one the user gave, else the
/// PIN-protected one (as `ykman` stores it), else the factory default only
/// when the user said so. Returns whether the factory key was used.
fn authenticate(card: &mut Card, spec: &CreateSpec) -> Result<bool, BackendError> {
    let alg = match piv::metadata(card.yk(), SlotId::Management(ManagementSlotId::Management)) {
        Ok(m) => match m.algorithm {
            SlotAlgorithmId::Management(alg) => alg,
            _ => yubikey::MgmAlgorithmId::ThreeDes,
        },
        // Firmware without GET METADATA speaks 3DES only.
        Err(_) => yubikey::MgmAlgorithmId::ThreeDes,
    };
    let wrong = |e: yubikey::Error| match e {
        yubikey::Error::AuthenticationError => BackendError::InvalidSecret(
            "the management key is not this card's: nothing was changed".into(),
        ),
        e => card::map_error(e),
    };
    if let Some(given) = &spec.options.management_key {
        let bytes =
            keybridge_protocol::key::unhex(given.expose_secret().trim()).ok_or_else(|| {
                BackendError::InvalidSecret("the management key is hex (48 digits)".into())
            })?;
        let key = MgmKey::from_bytes(&bytes, Some(alg))
            .map_err(|_| BackendError::InvalidSecret("the management key is 24 bytes".into()))?;
        card.yk().authenticate(&key).map_err(wrong)?;
        return Ok(false);
    }
    if let Ok(key) = MgmKey::get_protected(card.yk()) {
        card.yk().authenticate(&key).map_err(wrong)?;
        return Ok(false);
    }
    if spec.options.default_management_key {
        let key = MgmKey::get_default(card.yk()).map_err(card::map_error)?;
        card.yk().authenticate(&key).map_err(|e| match e {
            yubikey::Error::AuthenticationError => BackendError::InvalidSecret(
                "the card does not have the factory management key: give its key with --management-key-stdin".into(),
            ),
            e => card::map_error(e),
        })?;
        return Ok(true);
    }
    Err(BackendError::InvalidSecret(
        "generating a key needs the card's management key: it is not PIN-protected on this card; give it with --management-key-stdin, or --default-management-key if the card still has the factory key".into(),
    ))
}

/// Opens the signer a YubiKey key record describes, locked.
pub fn open_record(record: &KeyRecord) -> Result<YubikeySigner, BackendError> {
    let public = record
        .public()
        .map_err(|e| BackendError::Failed(e.to_string()))?;
    let params: YubikeyParams = serde_json::from_value(record.params.clone())
        .map_err(|e| BackendError::Failed(format!("YubiKey key record: {e}")))?;
    YubikeySigner::new(public, params)
}

/// The public key of a key record (for [`YubikeySigner`]).
pub(crate) fn slot_of(params: &YubikeyParams) -> Result<SlotId, BackendError> {
    u8::from_str_radix(&params.slot, 16)
        .ok()
        .and_then(|s| SlotId::try_from(s).ok())
        .ok_or_else(|| BackendError::Failed(format!("YubiKey key record: slot {}", params.slot)))
}

/// The algorithm of a public key as the card names it.
pub(crate) fn card_algorithm(public: &PublicKey) -> AlgorithmId {
    match public.algorithm() {
        Algorithm::Es256 => AlgorithmId::EccP256,
        Algorithm::Ed25519 => AlgorithmId::Ed25519,
    }
}

/// Every YubiKey present: serial, firmware, PIN state and the keys in its
/// signing slots (public data only: no PIN, no management key).
pub fn list() -> Result<Vec<crate::TokenListing>, BackendError> {
    let mut out = vec![];
    for serial in card::present_serials() {
        let mut card = Card::open(Some(serial))?;
        let version = card.yk().version();
        let retries = card.yk().get_pin_retries().ok();
        let mut algorithms = vec![Algorithm::Es256.name().to_owned()];
        if (version.major, version.minor) >= (5, 7) {
            algorithms.push(Algorithm::Ed25519.name().to_owned());
        }
        let mut keys = vec![];
        for slot in (0x82..=0x95u8).chain([0x9a, 0x9c, 0x9d, 0x9e]) {
            let Ok(id) = SlotId::try_from(slot) else {
                continue;
            };
            if let Ok(Some(public)) = card.slot_public_key(id) {
                keys.push(crate::ListedKey {
                    label: format!("slot {slot:02x}"),
                    id: format!("{slot:02x}"),
                    alg: public.algorithm().name().to_owned(),
                    kid: public.kid().to_hex(),
                    uri: YubikeyUri {
                        serial: Some(serial),
                        slot,
                    }
                    .to_string(),
                    // The PIN policy is in the slot's metadata or attestation,
                    // not read here: `keys show` has it.
                    login_each_signature: None,
                });
            }
        }
        out.push(crate::TokenListing {
            backend: BackendKind::Yubikey,
            slot: None,
            label: format!("YubiKey {serial}"),
            manufacturer: "Yubico".into(),
            model: format!("YubiKey {version}"),
            serial: serial.to_string(),
            uri: format!("yubikey:serial={serial}"),
            login_required: true,
            pin_count_low: retries.is_some_and(|r| r < 3),
            pin_final_try: retries == Some(1),
            pin_locked: retries == Some(0),
            algorithms,
            keys,
        });
    }
    Ok(out)
}
