//! `yubikey:serial=N;slot=9c` (DESIGN.md §3): which YubiKey (by serial;
//! optional when only one is plugged in) and which PIV slot (any signing
//! slot: 9a, 9c, 9d, 9e, or a retired slot 82–95).

use std::fmt;
use std::str::FromStr;

/// A parsed `yubikey:` reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct YubikeyUri {
    /// The card's serial number; `None` means "the one YubiKey present".
    pub serial: Option<u32>,
    /// The PIV slot, as its one-byte id (0x9a, 0x9c, 0x9d, 0x9e, 0x82–0x95).
    pub slot: u8,
}

/// Why a `yubikey:` reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YubikeyUriError {
    /// Not `name=value` pairs separated by `;`, or an unknown attribute.
    #[error("yubikey URI: {0} (expected yubikey:serial=N;slot=9c)")]
    Syntax(String),
    /// The slot is not one a signing key can live in.
    #[error("yubikey URI: slot {0:?} is not a PIV signing slot (9a, 9c, 9d, 9e, or retired 82–95)")]
    Slot(String),
}

/// Whether `slot` holds signing keys (not f9, the attestation slot, nor
/// the management key).
pub fn is_signing_slot(slot: u8) -> bool {
    matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
}

impl FromStr for YubikeyUri {
    type Err = YubikeyUriError;

    fn from_str(s: &str) -> Result<Self, YubikeyUriError> {
        let syntax = |m: &str| YubikeyUriError::Syntax(m.to_owned());
        let rest = s
            .split_once(':')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("yubikey"))
            .map(|(_, rest)| rest)
            .ok_or_else(|| syntax("not a yubikey: URI"))?;
        if rest.contains(['?', '#']) {
            return Err(syntax("no query or fragment"));
        }
        let (mut serial, mut slot) = (None, None);
        for attr in rest.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| syntax("attributes are name=value"))?;
            match name {
                "serial" if serial.is_none() => {
                    serial = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| syntax("serial is a decimal number"))?,
                    )
                }
                "slot" if slot.is_none() => {
                    let v = u8::from_str_radix(value, 16)
                        .ok()
                        .filter(|v| value.len() == 2 && is_signing_slot(*v))
                        .ok_or_else(|| YubikeyUriError::Slot(value.to_owned()))?;
                    slot = Some(v)
                }
                "serial" | "slot" => return Err(syntax("repeated attribute")),
                _ => return Err(syntax("only the serial and slot attributes")),
            }
        }
        Ok(YubikeyUri {
            serial,
            slot: slot.ok_or_else(|| syntax("slot= is required"))?,
        })
    }
}

impl fmt::Display for YubikeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("yubikey:")?;
        if let Some(serial) = self.serial {
            write!(f, "serial={serial};")?;
        }
        write!(f, "slot={:02x}", self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_and_slot_round_trip_canonically() {
        let u: YubikeyUri = "yubikey:serial=12345678;slot=9C".parse().unwrap();
        assert_eq!(
            u,
            YubikeyUri {
                serial: Some(12345678),
                slot: 0x9c
            }
        );
        assert_eq!(u.to_string(), "yubikey:serial=12345678;slot=9c");
        let u: YubikeyUri = "YubiKey:slot=82".parse().unwrap();
        assert_eq!((u.serial, u.slot), (None, 0x82));
        assert_eq!(u.to_string(), "yubikey:slot=82");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "yubikey:serial=1",
            "yubikey:serial=x;slot=9c",
            "yubikey:slot=f9",
            "yubikey:slot=9b",
            "yubikey:slot=96",
            "yubikey:slot=9",
            "yubikey:slot=9c;slot=9a",
            "yubikey:slot=9c;pin=123456",
            "yubikey:slot=9c?pin-value=1",
            "pkcs11:slot=9c",
        ] {
            assert!(bad.parse::<YubikeyUri>().is_err(), "{bad}");
        }
    }
}
