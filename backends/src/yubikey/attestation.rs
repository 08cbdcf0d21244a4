//! Checking a YubiKey PIV attestation: the slot's attestation certificate
//! (the leaf), the f9 certificate that signed it, and a path from the f9
//! certificate to a root the caller holds.
//!
//! The verifier itself lives in the pure-Rust `keybridge-evidence` crate
//! ([`keybridge_evidence::yubikey`]: what is checked and what is not is
//! documented there), shared with the device verifier, which must not link
//! pcsc-lite; it is re-exported here so that
//! `keybridge_backends::yubikey::attestation::…` keeps naming the same
//! items. What stays here is [`verify_report`], the backend-neutral shape
//! of its result ([`crate::verify_evidence`]).

pub use keybridge_evidence::yubikey::*;

use crate::BackendError;
use keybridge_protocol::PublicKey;

/// [`verify`] with the roots as PEM text, in the backend-neutral shape
/// ([`crate::verify_evidence`]).
pub fn verify_report(
    chain: &[Vec<u8>],
    roots_pem: &str,
    key: &PublicKey,
) -> Result<crate::EvidenceReport, BackendError> {
    let roots = certificates_from_pem(roots_pem)
        .map_err(|e| BackendError::InvalidSecret(format!("the roots file: {e}")))?;
    if roots.is_empty() {
        return Err(BackendError::InvalidSecret(
            "the roots file holds no PEM certificate".into(),
        ));
    }
    let r = verify(chain, &roots, key)
        .map_err(|e| BackendError::NotFound(format!("the attestation does not verify: {e}")))?;
    let unknown = || "(not stated)".to_owned();
    let form_factor = r.form_factor.as_ref().map_or_else(unknown, |f| {
        let mut s = f.name.clone();
        if f.fips {
            s.push_str(", FIPS");
        }
        if f.cspn {
            s.push_str(", CSPN");
        }
        s
    });
    Ok(crate::EvidenceReport {
        kind: "yubikey-piv-attestation".into(),
        proved: "the key was generated on this YubiKey (its attestation chains to a root you gave)"
            .into(),
        not_checked:
            "validity dates were not checked (attestation certificates of older cards may have expired), nor revocation"
                .into(),
        facts: vec![
            (
                "serial".into(),
                r.serial.map_or_else(unknown, |s| s.to_string()),
            ),
            (
                "firmware".into(),
                r.firmware.clone().unwrap_or_else(unknown),
            ),
            ("form factor".into(), form_factor),
            (
                "PIN policy".into(),
                r.pin_policy.clone().unwrap_or_else(unknown),
            ),
            (
                "touch policy".into(),
                r.touch_policy.clone().unwrap_or_else(unknown),
            ),
            ("root".into(), r.root.clone()),
            ("chain".into(), r.chain.join(" ← ")),
        ],
        report: serde_json::to_value(&r).expect("a report serializes"),
    })
}
