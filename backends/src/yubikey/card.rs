//! One YubiKey, found by serial, and what the backend asks of it: the
//! slot's public key and policies, the PIN with its retry rules, the
//! attestation certificates. Every `yubikey::Error` becomes a
//! [`BackendError`] here, once.

use crate::{BackendError, ExposeSecret as _, SecretString};
use base64::Engine as _;
use keybridge_protocol::PublicKey;
use yubikey::piv::{self, SlotId};
use yubikey::{PinPolicy, TouchPolicy, YubiKey};

/// Where the fix for a card held by another program is.
pub const HELD_BY_ANOTHER: &str = "the YubiKey is held exclusively by another program (most often gpg's scdaemon; also ykman, a browser or another agent): close it, or let scdaemon share the card (`disable-ccid` or `pcsc-shared` in ~/.gnupg/scdaemon.conf)";

/// What a card that cannot be reached because pcscd is away gets.
pub const SERVICE_AWAY: &str = "pcscd, the smart-card service, is not running (restarting, or the machine is waking up): the next request reconnects; if it stays away, start it (`systemctl start pcscd.socket`)";

/// An open connection to one card (shared mode; the crate takes a PC/SC
/// transaction per operation). Dropping it resets the card, which clears
/// its PIN state.
pub struct Card {
    yk: YubiKey,
}

impl Card {
    /// The card with `serial`, or the only YubiKey present when `None`
    /// (several → [`BackendError::Ambiguous`] listing their serials).
    pub fn open(serial: Option<u32>) -> Result<Self, BackendError> {
        let yk = match serial {
            Some(s) => YubiKey::open_by_serial(yubikey::Serial(s)).map_err(|e| match e {
                yubikey::Error::NotFound => BackendError::TokenAbsent(format!(
                    "no YubiKey with serial {s} is plugged in{}",
                    present_note()
                )),
                e => map_error(e),
            })?,
            None => {
                let serials = present_serials();
                match serials.as_slice() {
                    [] => {
                        return Err(BackendError::TokenAbsent("no YubiKey is plugged in".into()));
                    }
                    [one] => YubiKey::open_by_serial(yubikey::Serial(*one)).map_err(map_error)?,
                    many => {
                        return Err(BackendError::Ambiguous(format!(
                            "several YubiKeys are plugged in (serials {}): name one with yubikey:serial=N;slot=…",
                            many.iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        Ok(Card { yk })
    }

    /// The crate's handle.
    pub fn yk(&mut self) -> &mut YubiKey {
        &mut self.yk
    }

    /// The PC/SC name of the reader the card is in.
    pub fn reader_name(&self) -> &str {
        self.yk.name()
    }

    /// The card's serial number.
    pub fn serial(&self) -> u32 {
        self.yk.serial().0
    }

    /// The public key in `slot`, when the card reports it (GET METADATA,
    /// firmware 5.3+); `None` for an empty slot. Needs no PIN.
    pub fn slot_public_key(&mut self, slot: SlotId) -> Result<Option<PublicKey>, BackendError> {
        match piv::metadata(&mut self.yk, slot) {
            Ok(m) => m.public.as_ref().map(public_key_of).transpose(),
            Err(yubikey::Error::NotFound) | Err(yubikey::Error::GenericError) => Ok(None),
            Err(yubikey::Error::NotSupported) => Ok(None),
            Err(e) => Err(map_error(e)),
        }
    }

    /// The slot's PIN and touch policy names, when the card reports them.
    pub fn slot_policies(&mut self, slot: SlotId) -> Option<(&'static str, &'static str)> {
        let m = piv::metadata(&mut self.yk, slot).ok()?;
        let (pin, touch) = m.policy?;
        Some((
            match pin {
                PinPolicy::Always => "always",
                PinPolicy::Never => "never",
                _ => "once",
            },
            match touch {
                TouchPolicy::Always => "always",
                TouchPolicy::Cached => "cached",
                _ => "never",
            },
        ))
    }

    /// The slot's attestation certificate and the f9 certificate (DER,
    /// base64), leaf first; empty when the card gives none.
    pub fn attestation(&mut self, slot: SlotId) -> Vec<String> {
        let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        let Ok(leaf) = piv::attest(&mut self.yk, slot) else {
            return vec![];
        };
        let mut chain = vec![b64(&leaf)];
        // The f9 certificate object: a TLV 0x70 (certificate) inside.
        if let Ok(obj) = self.yk.fetch_object(0x005f_ff01)
            && let Some(der) = certificate_in_object(&obj)
        {
            chain.push(b64(der));
        }
        chain
    }
}

/// The DER certificate inside a PIV certificate object (`70 LEN DER 71 01
/// 00 …`), bounds-checked.
fn certificate_in_object(obj: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = obj.split_first()?;
    if tag != 0x70 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n @ 0..=0x7f => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    rest.get(..len)
}

/// The serials of the YubiKeys present (readers that open as one).
pub fn present_serials() -> Vec<u32> {
    let Ok(mut ctx) = yubikey::reader::Context::open() else {
        return vec![];
    };
    let Ok(readers) = ctx.iter() else {
        return vec![];
    };
    let mut serials: Vec<u32> = readers
        .filter_map(|r| r.open().ok())
        .map(|yk| yk.serial().0)
        .collect();
    serials.sort_unstable();
    serials
}

fn present_note() -> String {
    match present_serials().as_slice() {
        [] => String::new(),
        s => format!(
            " (present: {})",
            s.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Verifies `pin` on `card`, following the rules: never on a blocked PIN,
/// never the last attempt without `spend_last_attempt`, never twice.
pub fn verify_pin(
    card: &mut Card,
    pin: &SecretString,
    spend_last_attempt: bool,
) -> Result<(), BackendError> {
    let left = card.yk.get_pin_retries().map_err(map_error)?;
    match left {
        0 => return Err(pin_blocked()),
        1 if !spend_last_attempt => return Err(BackendError::LastAttempt { retries_left: 1 }),
        _ => {}
    }
    card.yk
        .verify_pin(pin.expose_secret().as_bytes())
        .map_err(map_error)
}

fn pin_blocked() -> BackendError {
    BackendError::PinBlocked
}

/// The public key in a SubjectPublicKeyInfo from the card.
pub fn public_key_of(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<PublicKey, BackendError> {
    let bits = spki.subject_public_key.raw_bytes();
    let bad = |e: keybridge_protocol::key::KeyError| {
        BackendError::Failed(format!("the card returned an unusable public key: {e}"))
    };
    match spki.algorithm.oid.to_string().as_str() {
        // id-Ed25519
        "1.3.101.112" => {
            let raw: [u8; 32] = bits
                .try_into()
                .map_err(|_| BackendError::Failed("Ed25519 key of the wrong size".into()))?;
            PublicKey::ed25519(&raw).map_err(bad)
        }
        // id-ecPublicKey (P-256 is the only curve keybridge generates)
        "1.2.840.10045.2.1" => PublicKey::p256_sec1(bits).map_err(bad),
        other => Err(BackendError::UnsupportedMechanism(format!(
            "the slot holds a key of algorithm {other}, not P-256 or Ed25519"
        ))),
    }
}

/// The one mapping of the crate's errors.
pub fn map_error(e: yubikey::Error) -> BackendError {
    use yubikey::Error as E;
    match e {
        E::WrongPin { tries: 0 } | E::PinLocked => BackendError::PinBlocked,
        E::WrongPin { tries } => BackendError::WrongSecret {
            retries_left: Some(u32::from(tries)),
        },
        E::NotFound => BackendError::TokenAbsent("no YubiKey is plugged in".into()),
        E::PcscError {
            inner: Some(pcsc::Error::SharingViolation),
        } => BackendError::TokenAbsent(HELD_BY_ANOTHER.into()),
        E::PcscError {
            inner:
                Some(
                    pcsc::Error::NoService
                    | pcsc::Error::ServiceStopped
                    | pcsc::Error::CommError
                    | pcsc::Error::InvalidHandle,
                ),
        } => BackendError::TokenAbsent(SERVICE_AWAY.into()),
        E::PcscError { inner } => BackendError::TokenAbsent(format!(
            "the YubiKey went away ({}); plug it in again: the next request reconnects",
            inner.map_or_else(|| "PC/SC error".to_owned(), |e| e.to_string())
        )),
        E::AppletNotFound { .. } => BackendError::TokenAbsent(
            "the card in the reader has no PIV applet: is it a YubiKey?".into(),
        ),
        E::NotSupported => BackendError::UnsupportedMechanism(
            "this YubiKey does not support the operation (firmware too old?)".into(),
        ),
        other => BackendError::Failed(format!("YubiKey: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_found_inside_piv_objects_with_bounds_checked() {
        assert_eq!(
            certificate_in_object(&[0x70, 2, 0x30, 0, 0x71, 1, 0]),
            Some(&[0x30, 0][..])
        );
        assert_eq!(
            certificate_in_object(&[0x70, 0x81, 1, 0x30]),
            Some(&[0x30][..])
        );
        assert_eq!(certificate_in_object(&[0x70, 5, 0x30]), None, "short");
        assert_eq!(certificate_in_object(&[0x71, 1, 0]), None);
        assert_eq!(certificate_in_object(&[]), None);
        assert_eq!(certificate_in_object(&[0x70, 0x83, 0, 0, 1]), None);
    }

    #[test]
    fn pin_errors_map_to_their_codes() {
        assert!(matches!(
            map_error(yubikey::Error::WrongPin { tries: 2 }),
            BackendError::WrongSecret {
                retries_left: Some(2)
            }
        ));
        assert!(matches!(
            map_error(yubikey::Error::WrongPin { tries: 0 }),
            BackendError::PinBlocked
        ));
        let held = map_error(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::SharingViolation),
        });
        assert!(held.to_string().contains("scdaemon"), "{held}");
        for away in [pcsc::Error::NoService, pcsc::Error::ServiceStopped] {
            let e = map_error(yubikey::Error::PcscError { inner: Some(away) });
            assert!(e.to_string().contains("pcscd"), "{e}");
        }
    }
}
