//! Checking a YubiKey PIV attestation: the slot's attestation certificate
//! (the leaf), the f9 certificate that signed it, and a path from the f9
//! certificate to a root the caller holds.
//!
//! The chain comes from a key record or a key request (hence from the card,
//! or from anyone who could write them): it is hostile input. Certificates
//! are parsed and paths built by the code the TPM's EK certificate check
//! shares ([`crate::x509`]: size limits, strict DER, bounded path
//! building).
//!
//! What is checked:
//! - the leaf certifies exactly the key (P-256 or Ed25519 SubjectPublicKeyInfo);
//! - every link (leaf ← f9 ← intermediates ← root) chains by name (the
//!   issuer's subject is the subject's issuer, byte for byte) and by
//!   signature (RSA PKCS#1 v1.5 with SHA-256/384/512, ECDSA P-256/P-384 with
//!   SHA-256/384/512, Ed25519), and each certificate names the same
//!   signature algorithm inside and outside its signed part;
//! - every certificate above the f9 certificate is a CA: basicConstraints
//!   CA=true, keyCertSign if it has a keyUsage, its pathLenConstraint
//!   respected, no critical extension we do not understand;
//! - the root is self-signed and is one of the caller's roots.
//!
//! What is not: validity periods (old cards' attestation certificates
//! outlive their dates, and a proof that a key was made on a card does not
//! expire; callers say so), revocation (Yubico publishes none for these).

use crate::x509::{
    ChainError, ID_EC_PUBLIC_KEY, ID_ED25519, Parsed, Roots, SECP256R1, check_key_cert_sign,
    check_signature, curve_of, refuse_unknown_critical,
};
pub use crate::x509::{MAX_CERTIFICATE_LEN, MAX_ROOTS};
use keybridge_protocol::PublicKey;
use serde::Serialize;
use x509_cert::der::Decode as _;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::BasicConstraints;

/// Yubico's PIV attestation extensions (1.3.6.1.4.1.41482.3.x).
pub mod oid {
    use super::ObjectIdentifier;
    /// Firmware version: three raw bytes (major, minor, patch).
    pub const FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
    /// The card's serial number: a DER INTEGER.
    pub const SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
    /// PIN policy and touch policy: two raw bytes.
    pub const POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
    /// Form factor: one raw byte (low bits the model, high bits flags).
    pub const FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
}

/// Why an attestation does not verify. Each variant is one thing a caller
/// (or an attacker) can cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// No certificate at all.
    #[error("the key carries no attestation certificate")]
    NoAttestation,
    /// The leaf without the f9 certificate that signed it.
    #[error(
        "the evidence holds the slot's attestation certificate but not the f9 certificate that signed it"
    )]
    MissingF9,
    /// More certificates than the evidence format has (leaf and f9).
    #[error(
        "the evidence holds {0} certificates; a YubiKey attestation is the leaf and the f9 certificate"
    )]
    UnexpectedChainLength(usize),
    /// The leaf certifies a key other than the one asked about.
    #[error("the attestation certificate certifies another key ({0}), not this one")]
    KeyMismatch(String),
    /// The leaf names another issuer than the f9 certificate's subject.
    #[error(
        "the attestation certificate was issued by \"{issuer}\", not by the f9 certificate \"{f9}\""
    )]
    IssuerMismatch {
        /// The leaf's issuer.
        issuer: String,
        /// The f9 certificate's subject.
        f9: String,
    },
    /// A certificate that does not parse, a signature that does not verify
    /// (the leaf's by the f9 certificate, or any above it), a foreign root
    /// (the card belongs to another PKI: another vendor, a test CA, a
    /// forgery), a certificate that may not issue certificates, a critical
    /// extension or an algorithm keybridge does not implement, or an
    /// unusable roots file. Its message is the [`ChainError`]'s.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A Yubico extension with the wrong shape.
    #[error("the attestation extension {oid} is malformed: {reason}")]
    BadExtension {
        /// The extension.
        oid: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a verified attestation says about the card and the key. The
/// certificates' validity periods were not checked ([`Report::validity_checked`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The card's serial number (extension .7).
    pub serial: Option<u32>,
    /// Firmware, `5.4.3` (extension .3).
    pub firmware: Option<String>,
    /// PIN policy of the slot: `never`, `once`, `always`, `match-once`,
    /// `match-always` (extension .8).
    pub pin_policy: Option<String>,
    /// Touch policy of the slot: `never`, `always`, `cached` (extension .8).
    pub touch_policy: Option<String>,
    /// Form factor (extension .9).
    pub form_factor: Option<FormFactor>,
    /// The subject of the root the chain ends at.
    pub root: String,
    /// Subjects from the leaf to the root.
    pub chain: Vec<String>,
    /// Always false: validity periods are deliberately not checked.
    pub validity_checked: bool,
}

/// The form factor byte of extension .9.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormFactor {
    /// The byte as the card reports it.
    pub code: u8,
    /// `USB-A keychain`, … or `unknown (0x..)`.
    pub name: String,
    /// Flag 0x80: a FIPS model.
    pub fips: bool,
    /// Flag 0x40: a CSPN model.
    pub cspn: bool,
}

/// What the Yubico extensions of a leaf say (no chain needed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attested {
    /// Extension .7.
    pub serial: Option<u32>,
    /// Extension .3: major, minor, patch.
    pub firmware: Option<[u8; 3]>,
    /// Extension .8: PIN policy byte, touch policy byte.
    pub policy: Option<[u8; 2]>,
    /// Extension .9.
    pub form_factor: Option<u8>,
}

/// Verifies that `chain` (DER, leaf first: the slot's attestation
/// certificate and the f9 certificate) attests `key`, and chains to one of
/// `roots` (DER certificates from the user's roots file: the self-signed
/// ones are the trust anchors, the others may serve as intermediates).
/// Nothing is fetched and the clock is not read.
pub fn verify(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    key: &PublicKey,
) -> Result<Report, AttestationError> {
    let leaf = chain.first().ok_or(AttestationError::NoAttestation)?;
    let f9 = chain.get(1).ok_or(AttestationError::MissingF9)?;
    if chain.len() > 2 {
        return Err(AttestationError::UnexpectedChainLength(chain.len()));
    }
    if roots.len() > MAX_ROOTS {
        return Err(ChainError::TooManyRoots(roots.len()).into());
    }
    let leaf = Parsed::new(leaf, "the attestation certificate")?;
    let f9 = Parsed::new(f9, "the f9 certificate")?;

    // The key first: a chain for another key is the likeliest mix-up.
    let certified = leaf_key(&leaf)?;
    if &certified != key {
        return Err(AttestationError::KeyMismatch(format!(
            "{} key {}",
            certified.algorithm(),
            certified.kid()
        )));
    }
    let attested = read_extensions(leaf.extensions())?;
    refuse_unknown_critical(&leaf, &[])?;

    // leaf ← f9
    if leaf.issuer != f9.subject {
        return Err(AttestationError::IssuerMismatch {
            issuer: leaf.issuer_name(),
            f9: f9.subject_name(),
        });
    }
    check_signature(&leaf, &f9)?;
    // The f9 certificate signs the leaf, so it acts as a CA, yet on real
    // cards it has no basicConstraints at all (yubikey-manager issue 522: a
    // firmware defect Yubico will not fix in the field). It is accepted
    // here, in this one position only, as the issuer of the leaf: an f9
    // certificate that says CA=false, or a keyUsage without keyCertSign,
    // is still refused, and every certificate above it must be a proper CA.
    check_f9(&f9)?;

    // f9 ← intermediates ← root
    let roots = Roots::new(roots)?;
    let path = roots.path_from(&f9)?;

    let top = path.last().expect("a found path ends at a root");
    let mut subjects = vec![leaf.subject_name(), f9.subject_name()];
    subjects.extend(path.iter().map(|c| c.subject_name()));
    Ok(Report {
        serial: attested.serial,
        firmware: attested.firmware.map(|[a, b, c]| format!("{a}.{b}.{c}")),
        pin_policy: attested.policy.map(|[p, _]| pin_policy_name(p)),
        touch_policy: attested.policy.map(|[_, t]| touch_policy_name(t)),
        form_factor: attested.form_factor.map(form_factor),
        root: top.subject_name(),
        chain: subjects,
        validity_checked: false,
    })
}

/// The DER certificates of a PEM file (`-----BEGIN CERTIFICATE-----`
/// blocks; text around them is ignored, other block types are refused).
pub fn certificates_from_pem(text: &str) -> Result<Vec<Vec<u8>>, AttestationError> {
    Ok(crate::x509::certificates_from_pem(text)?)
}

/// Reads Yubico's extensions from a leaf's extensions. Absent ones are
/// `None` (older firmware lacks some); present ones must have their exact
/// shape, and each may appear once.
pub fn read_extensions(extensions: &[Extension]) -> Result<Attested, AttestationError> {
    let mut out = Attested::default();
    for ext in extensions {
        let value = ext.extn_value.as_bytes();
        let bad = |reason: &str| AttestationError::BadExtension {
            oid: ext.extn_id.to_string(),
            reason: reason.to_owned(),
        };
        let duplicate = || bad("it appears twice");
        match ext.extn_id {
            oid::SERIAL => {
                let serial = u32::from_der(value)
                    .map_err(|_| bad("not a DER INTEGER between 0 and 2^32-1"))?;
                if out.serial.replace(serial).is_some() {
                    return Err(duplicate());
                }
            }
            oid::FIRMWARE => {
                let v: [u8; 3] = value.try_into().map_err(|_| bad("not three bytes"))?;
                if out.firmware.replace(v).is_some() {
                    return Err(duplicate());
                }
            }
            oid::POLICY => {
                let v: [u8; 2] = value.try_into().map_err(|_| bad("not two bytes"))?;
                if out.policy.replace(v).is_some() {
                    return Err(duplicate());
                }
            }
            oid::FORM_FACTOR => {
                let [v]: [u8; 1] = value.try_into().map_err(|_| bad("not one byte"))?;
                if out.form_factor.replace(v).is_some() {
                    return Err(duplicate());
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The PIN policy byte by name.
pub fn pin_policy_name(byte: u8) -> String {
    match byte {
        1 => "never".into(),
        2 => "once".into(),
        3 => "always".into(),
        // YubiKey Bio: a fingerprint match stands in for the PIN.
        4 => "match-once".into(),
        5 => "match-always".into(),
        other => format!("unknown ({other:#04x})"),
    }
}

/// The touch policy byte by name.
pub fn touch_policy_name(byte: u8) -> String {
    match byte {
        1 => "never".into(),
        2 => "always".into(),
        3 => "cached".into(),
        other => format!("unknown ({other:#04x})"),
    }
}

/// The form factor byte: the low six bits the model, 0x80 FIPS, 0x40 CSPN.
pub fn form_factor(code: u8) -> FormFactor {
    let name = match code & 0x3f {
        0x01 => "USB-A keychain".to_owned(),
        0x02 => "USB-A nano".to_owned(),
        0x03 => "USB-C keychain".to_owned(),
        0x04 => "USB-C nano".to_owned(),
        0x05 => "USB-C Lightning".to_owned(),
        0x06 => "USB-A bio".to_owned(),
        0x07 => "USB-C bio".to_owned(),
        _ => format!("unknown ({code:#04x})"),
    };
    FormFactor {
        code,
        name,
        fips: code & 0x80 != 0,
        cspn: code & 0x40 != 0,
    }
}

/// The f9 certificate: no basicConstraints is accepted (see [`verify`]);
/// anything that says it may not sign certificates is not.
fn check_f9(f9: &Parsed<'_>) -> Result<(), AttestationError> {
    if let Some(BasicConstraints { ca: false, .. }) = f9.basic_constraints()? {
        return Err(ChainError::NotACa {
            subject: f9.subject_name(),
            reason: "the f9 certificate's basicConstraints says CA=false".into(),
        }
        .into());
    }
    check_key_cert_sign(f9)?;
    Ok(refuse_unknown_critical(f9, &[])?)
}

/// The key a leaf certifies, as keybridge knows keys.
fn leaf_key(leaf: &Parsed<'_>) -> Result<PublicKey, AttestationError> {
    let spki = leaf.cert.tbs_certificate().subject_public_key_info();
    let bits = spki.subject_public_key.as_bytes().unwrap_or_default();
    let other = |what: &str| AttestationError::KeyMismatch(what.to_owned());
    match spki.algorithm.oid {
        ID_ED25519 => {
            let raw: [u8; 32] = bits
                .try_into()
                .map_err(|_| other("an Ed25519 key of the wrong size"))?;
            PublicKey::ed25519(&raw).map_err(|_| other("an invalid Ed25519 key"))
        }
        ID_EC_PUBLIC_KEY => match curve_of(spki) {
            Some(SECP256R1) => {
                PublicKey::p256_sec1(bits).map_err(|_| other("an invalid P-256 key"))
            }
            Some(c) => Err(other(&format!("an EC key on curve {c}"))),
            None => Err(other("an EC key without a named curve")),
        },
        o => Err(other(&format!("a key of algorithm {o}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::test_pki::{self, basic_constraints, ext};
    use crate::x509::{ID_CE_KEY_USAGE, check_ca};
    use sha2::{Digest as _, Sha256};
    use std::str::FromStr as _;
    use x509_cert::Certificate;
    use x509_cert::der::Encode as _;
    use x509_cert::der::{EncodePem as _, pem::LineEnding};
    use x509_cert::ext::pkix::KeyUsage;
    use x509_cert::ext::pkix::KeyUsages;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;

    /// A throwaway RSA-2048 key (made with `openssl genpkey` for these
    /// tests only): Yubico's older roots and f9 certificates are RSA.
    const RSA_TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCykmRbgLRRfg5U\n\
FzetB5lJxz+WxldleYbFkYJxd0+QgznngmWWz9gZ00MOo9RKWo5Dj1s+Likcl/eP\n\
TUhFoS9iKHZvTTAwGuOWG38o5dh3B2WYQ+OMl467x+jCuRIBzMJpfByI05qB7Vr/\n\
/ccFma4khmEGw1nolj/UT3v1I/dI2Q9SJko+AP37CzXQ/rBhQnc96j9pImhrHYAG\n\
FBFCMVuD4madgvjnaR4rSzGs+Rhsu9inDiTpMQua8aKGaxADddT4HyT7jqB9CFUZ\n\
93MoYzlSVPX8l+wvX7w+eVoEIwRs8wM1C4H4bA4+HwJaXcHGrJEShyIDX2QOyRdZ\n\
M9rJj84ZAgMBAAECggEAJvv9q9pLw3S9JQ+SiJRdmzVEBSMU5mLjENPFAgd1l8uG\n\
Qyv9CLEkcPLls1cB3B+r6kTsOwVx1Tu6AI9zJTxcr1W9EWxtBjuAjv8+wgt3t/il\n\
7dl4XnOh5g3tG0GzFDCDCutdAWQM2aubT8K0Bd14nqG1offY84WFttCJc8mfzUe0\n\
UHzT/1GNWu2qcFpmgDb5r3mbRQKlKpT3Nk/UGWBunn8noMk5Ts0LRPMJTaVGXVDr\n\
0wDfHP1rsNAdtK93M8soVHVBUFO1Vvcg6XFXgFLCGxCcImx2Uu3p/N3jUaN/Ncp0\n\
/kItKibklUITNq1rBY8PtQlvCxIy4xhjSg4nEwB0XwKBgQDllFjIZca1vGVaCsKi\n\
ebtFNBtFod28NNPbF2PFj2xz0d0qt4OeLRFUjxYlkm4V8jQvpMwNG2lYRD4kWkBl\n\
brzNWr1jVjKyohsUm2gSFCxixY12kLwbmxOonWGtcpHI6GsQHJ7sa1YY3HpkLYvn\n\
k2C7OW3nGRUDmMiMUnptWc0EAwKBgQDHH056aFf42J1Db3nHILIc6GymnrKzZp9a\n\
owmb2FWYNVI7qG5prUQYaOmLYVfT0BQtmF2XjSRdGb5/HY3f3qhw5Lf1asKTnn6k\n\
MPkEz+5UQiLPRFdC2Bah86tpMXEnT8oO3reVNteEh4TiuftgtZJT7604JpNhO+iT\n\
7c0CPRIAswKBgHs3YWc86KeFk8f92nSlbRM5YiG/PGjU2ZfPN+dCkOygiFly4Rs2\n\
CQUfPr2vl5IDymp/wlyOh72t8sREBCfshTyaJOd5zf/97RbkSbjaRvBEIyati6gt\n\
VSG8Rj53LTNtOnkNQ2aUPUNeofm+UEZb3SDfM9NCrPqfN5PIeJjUB6rNAoGAF/zO\n\
gHKHfoPh1hjcy79FlbPuOthNYM1RDyMq6ipSjWaHBIbS3kowNNyWneLZKLwdYizD\n\
wZkQM2MBjuCpkbmKAyeafachz5S9XtxDc2/1HxNkjCGIfZX4jAQFt0NshTbYeZgc\n\
943GwsFsob+T59+XxCLQdD45bPJBn2h7VPS0cX8CgYA+GKWj7ev6DvgMk/N9BpeU\n\
+BEN/4A/jPEGHqI834LLDXhcmhgtaggeFv8rUYhsceLi/ImA/IxdoTUT2agOLHpy\n\
PzTMYSvzmwxj3yv+a9RTLcgLNCf8N9DDiEFC8adqss0TnLNZmaSWhLxY63T3bENW\n\
ND9D9fddV9Yh5HVnVelJgg==\n\
-----END PRIVATE KEY-----\n\
";

    /// The issuing side of a test certificate.
    enum Signer {
        P256(p256::ecdsa::SigningKey),
        P384(p384::ecdsa::SigningKey),
        Rsa(rsa::pkcs1v15::SigningKey<Sha256>),
    }

    impl Signer {
        fn p256(seed: u8) -> Self {
            Signer::P256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
        }
        fn p384(seed: u8) -> Self {
            Signer::P384(p384::ecdsa::SigningKey::from_slice(&[seed; 48]).unwrap())
        }
        fn rsa() -> Self {
            use rsa::pkcs8::DecodePrivateKey as _;
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_TEST_KEY).unwrap();
            Signer::Rsa(rsa::pkcs1v15::SigningKey::new(key))
        }
        fn spki(&self) -> SubjectPublicKeyInfoOwned {
            match self {
                Signer::P256(k) => test_pki::spki(k.verifying_key()),
                Signer::P384(k) => test_pki::spki(k.verifying_key()),
                Signer::Rsa(k) => {
                    use rsa::signature::Keypair as _;
                    test_pki::spki(&k.verifying_key())
                }
            }
        }
    }

    /// A certificate with the serial derived from its subject's name.
    fn issue(
        signer: &Signer,
        issuer: &str,
        subject: &str,
        spki: &SubjectPublicKeyInfoOwned,
        extensions: Vec<Extension>,
    ) -> Vec<u8> {
        let serial = SerialNumber::new(&Sha256::digest(subject.as_bytes())[..8]).unwrap();
        let (issuer, subject) = (
            Name::from_str(issuer).unwrap(),
            Name::from_str(subject).unwrap(),
        );
        let spki = spki.clone();
        match signer {
            Signer::P256(k) => test_pki::issue::<_, p256::ecdsa::DerSignature>(
                k, issuer, subject, serial, spki, extensions,
            ),
            Signer::P384(k) => test_pki::issue::<_, p384::ecdsa::DerSignature>(
                k, issuer, subject, serial, spki, extensions,
            ),
            Signer::Rsa(k) => test_pki::issue::<_, rsa::pkcs1v15::Signature>(
                k, issuer, subject, serial, spki, extensions,
            ),
        }
    }

    fn ca_extensions() -> Vec<Extension> {
        let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        vec![
            basic_constraints(true, None),
            ext(ID_CE_KEY_USAGE, true, &ku.to_der().unwrap()),
        ]
    }

    fn yubico_extensions(serial: u32) -> Vec<Extension> {
        vec![
            ext(oid::FIRMWARE, false, &[5, 4, 3]),
            ext(oid::SERIAL, false, &serial.to_der().unwrap()),
            ext(oid::POLICY, false, &[2, 3]),
            ext(oid::FORM_FACTOR, false, &[0x83]),
        ]
    }

    const ROOT: &str = "CN=Test PIV Root CA Serial 263751";
    const F9: &str = "CN=Yubico PIV Attestation";
    const LEAF: &str = "CN=YubiKey PIV Attestation 9c";

    /// A card's attestation: its chain, the roots file, and the key.
    struct Pki {
        chain: Vec<Vec<u8>>,
        roots: Vec<Vec<u8>>,
        key: PublicKey,
    }

    /// root → f9 (no basicConstraints, as on real cards) → leaf for a
    /// P-256 key.
    fn legacy(root: &Signer, f9: &Signer, slot_seed: u8) -> Pki {
        let root_der = issue(root, ROOT, ROOT, &root.spki(), ca_extensions());
        let f9_der = issue(root, ROOT, F9, &f9.spki(), vec![]);
        let slot = Signer::p256(slot_seed);
        let leaf = issue(f9, F9, LEAF, &slot.spki(), yubico_extensions(93_000_001));
        let Signer::P256(k) = &slot else {
            unreachable!()
        };
        Pki {
            chain: vec![leaf, f9_der],
            roots: vec![root_der],
            key: PublicKey::p256_sec1(&k.verifying_key().to_sec1_bytes()).unwrap(),
        }
    }

    fn p256_legacy() -> Pki {
        legacy(&Signer::p256(1), &Signer::p256(2), 3)
    }

    #[test]
    fn the_test_pki_attestation_verifies_and_says_what_it_was_given() {
        let slot = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let key = PublicKey::p256_sec1(&slot.verifying_key().to_sec1_bytes()).unwrap();
        let (chain, root) =
            test_pki::yubikey_attestation(1, test_pki::spki(slot.verifying_key()), 42, 2, 3);
        let r = verify(&chain, std::slice::from_ref(&root), &key).unwrap();
        assert_eq!(r.serial, Some(42));
        assert_eq!(r.touch_policy.as_deref(), Some("cached"));
        assert_eq!(r.pin_policy.as_deref(), Some("once"));
        let roots = certificates_from_pem(&test_pki::pem(&root)).unwrap();
        assert_eq!(roots, [root]);
        // Another CA's root of the same name: foreign.
        let (_, other) =
            test_pki::yubikey_attestation(2, test_pki::spki(slot.verifying_key()), 42, 2, 3);
        let e = verify(&chain, &[other], &key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::ForeignRoot { .. })),
            "{e}"
        );
    }

    #[test]
    fn extensions_are_read_as_yubico_defines_them() {
        let got = read_extensions(&yubico_extensions(93_000_001)).unwrap();
        assert_eq!(
            got,
            Attested {
                serial: Some(93_000_001),
                firmware: Some([5, 4, 3]),
                policy: Some([2, 3]),
                form_factor: Some(0x83),
            }
        );
        assert_eq!(read_extensions(&[]).unwrap(), Attested::default());
        let names: Vec<_> = (1..=3).map(pin_policy_name).collect();
        assert_eq!(names, ["never", "once", "always"]);
        let names: Vec<_> = (1..=3).map(touch_policy_name).collect();
        assert_eq!(names, ["never", "always", "cached"]);
        assert_eq!(touch_policy_name(9), "unknown (0x09)");
        let ff = form_factor(0x83);
        assert_eq!(
            (ff.name.as_str(), ff.fips, ff.cspn),
            ("USB-C keychain", true, false)
        );
        let ff = form_factor(0x47);
        assert_eq!(
            (ff.name.as_str(), ff.fips, ff.cspn),
            ("USB-C bio", false, true)
        );
        assert_eq!(form_factor(0x01).name, "USB-A keychain");
        assert_eq!(form_factor(0x05).name, "USB-C Lightning");
        assert!(form_factor(0x3f).name.starts_with("unknown"));
    }

    #[test]
    fn malformed_yubico_extensions_have_their_own_error() {
        let cases = [
            vec![ext(oid::SERIAL, false, &[0x04, 0x01, 0x07])], // an OCTET STRING
            vec![ext(oid::SERIAL, false, &(-1i32).to_der().unwrap())],
            vec![ext(oid::SERIAL, false, &u64::MAX.to_der().unwrap())],
            vec![ext(oid::FIRMWARE, false, &[5, 4])],
            vec![ext(oid::POLICY, false, &[1, 1, 1])],
            vec![ext(oid::FORM_FACTOR, false, &[])],
            vec![
                ext(oid::FIRMWARE, false, &[5, 4, 3]),
                ext(oid::FIRMWARE, false, &[5, 7, 4]),
            ],
        ];
        for exts in cases {
            let e = read_extensions(&exts).unwrap_err();
            assert!(matches!(e, AttestationError::BadExtension { .. }), "{e}");
        }
    }

    #[test]
    fn a_legacy_chain_verifies_and_reports_the_card() {
        let pki = p256_legacy();
        let r = verify(&pki.chain, &pki.roots, &pki.key).unwrap();
        assert_eq!(r.serial, Some(93_000_001));
        assert_eq!(r.firmware.as_deref(), Some("5.4.3"));
        assert_eq!(r.pin_policy.as_deref(), Some("once"));
        assert_eq!(r.touch_policy.as_deref(), Some("cached"));
        assert_eq!(r.form_factor.unwrap().name, "USB-C keychain");
        assert_eq!(r.root, ROOT);
        assert_eq!(r.chain, [LEAF, F9, ROOT]);
        assert!(!r.validity_checked);
    }

    #[test]
    fn a_chain_through_intermediates_verifies_whatever_their_order_in_the_file() {
        const MID: &str = "CN=Test PIV Attestation B 1";
        let (root, mid, f9, slot) = (
            Signer::p384(1),
            Signer::p256(2),
            Signer::p256(3),
            Signer::p256(4),
        );
        let root_der = issue(&root, ROOT, ROOT, &root.spki(), {
            let mut e = ca_extensions();
            e[0] = basic_constraints(true, Some(1));
            e
        });
        let mut mid_ext = ca_extensions();
        // pathLen 0 under the f9 position: the f9 certificate is not counted.
        mid_ext[0] = basic_constraints(true, Some(0));
        let mid_der = issue(&root, ROOT, MID, &mid.spki(), mid_ext);
        let f9_der = issue(&mid, MID, F9, &f9.spki(), vec![]);
        let leaf = issue(&f9, F9, LEAF, &slot.spki(), yubico_extensions(7));
        let Signer::P256(k) = &slot else {
            unreachable!()
        };
        let key = PublicKey::p256_sec1(&k.verifying_key().to_sec1_bytes()).unwrap();
        let chain = vec![leaf, f9_der];
        for roots in [
            vec![root_der.clone(), mid_der.clone()],
            vec![mid_der.clone(), root_der.clone()],
        ] {
            let r = verify(&chain, &roots, &key).unwrap();
            assert_eq!(r.chain, [LEAF, F9, MID, ROOT]);
        }
        // Without the intermediate the path stops short.
        let e = verify(&chain, &[root_der], &key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::ForeignRoot { .. })),
            "{e}"
        );
        // A root whose pathLenConstraint 0 leaves no room for the
        // intermediate.
        let mut tight = ca_extensions();
        tight[0] = basic_constraints(true, Some(0));
        let tight_root = issue(&root, ROOT, ROOT, &root.spki(), tight);
        let e = verify(&chain, &[tight_root, mid_der], &key).unwrap_err();
        assert!(
            matches!(&e, AttestationError::Chain(ChainError::NotACa { reason, .. }) if reason.contains("pathLenConstraint")),
            "{e}"
        );
    }

    #[test]
    fn rsa_issuers_verify_as_on_older_cards() {
        // RSA root → RSA f9 → leaf, all sha256WithRSAEncryption.
        let pki = legacy(&Signer::rsa(), &Signer::rsa(), 5);
        verify(&pki.chain, &pki.roots, &pki.key).unwrap();
        // RSA root → P-384 f9 → leaf signed ecdsa-with-SHA384.
        let pki = legacy(&Signer::rsa(), &Signer::p384(6), 7);
        verify(&pki.chain, &pki.roots, &pki.key).unwrap();
    }

    #[test]
    fn an_ed25519_slot_key_is_matched() {
        let (root, f9) = (Signer::p256(1), Signer::p256(2));
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let spki = {
            use ed25519_dalek::pkcs8::EncodePublicKey as _;
            let der = ed.verifying_key().to_public_key_der().unwrap();
            SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap()
        };
        let root_der = issue(&root, ROOT, ROOT, &root.spki(), ca_extensions());
        let f9_der = issue(&root, ROOT, F9, &f9.spki(), vec![]);
        let leaf = issue(&f9, F9, LEAF, &spki, yubico_extensions(1));
        let key = PublicKey::ed25519(ed.verifying_key().as_bytes()).unwrap();
        verify(&[leaf, f9_der], &[root_der], &key).unwrap();
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let pki = p256_legacy();
        let other = p256_legacy_with_slot(8);
        let e = verify(&pki.chain, &pki.roots, &other).unwrap_err();
        assert!(matches!(e, AttestationError::KeyMismatch(_)), "{e}");
    }

    fn p256_legacy_with_slot(seed: u8) -> PublicKey {
        legacy(&Signer::p256(1), &Signer::p256(2), seed).key
    }

    #[test]
    fn a_tampered_extension_breaks_the_signature() {
        let mut pki = p256_legacy();
        // The firmware extension's value, OCTET STRING 05 04 03: 5.4.3 → 5.7.3.
        let leaf = &mut pki.chain[0];
        let at = leaf
            .windows(5)
            .position(|w| w == [0x04, 0x03, 5, 4, 3])
            .unwrap();
        leaf[at + 3] = 7;
        let e = verify(&pki.chain, &pki.roots, &pki.key).unwrap_err();
        assert!(
            matches!(&e, AttestationError::Chain(ChainError::BadSignature { subject, .. }) if subject == LEAF),
            "{e}"
        );
    }

    #[test]
    fn a_foreign_root_of_the_same_name_is_refused() {
        let pki = p256_legacy();
        let foreign = legacy(&Signer::p256(11), &Signer::p256(12), 3);
        let e = verify(&pki.chain, &foreign.roots, &pki.key).unwrap_err();
        assert!(
            matches!(&e, AttestationError::Chain(ChainError::ForeignRoot { subject, issuer }) if subject == F9 && issuer == ROOT),
            "{e}"
        );
        // Another card's f9 under the right root: the leaf's signature fails.
        let mut mixed = pki.chain.clone();
        mixed[1] = foreign.chain[1].clone();
        let e = verify(&mixed, &pki.roots, &pki.key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::BadSignature { .. })),
            "{e}"
        );
    }

    #[test]
    fn a_missing_f9_is_refused() {
        let pki = p256_legacy();
        let e = verify(&pki.chain[..1], &pki.roots, &pki.key).unwrap_err();
        assert_eq!(e, AttestationError::MissingF9);
        let e = verify(&[], &pki.roots, &pki.key).unwrap_err();
        assert_eq!(e, AttestationError::NoAttestation);
        let mut long = pki.chain.clone();
        long.push(pki.roots[0].clone());
        let e = verify(&long, &pki.roots, &pki.key).unwrap_err();
        assert_eq!(e, AttestationError::UnexpectedChainLength(3));
    }

    #[test]
    fn malformed_certificates_are_refused_wherever_they_are() {
        let pki = p256_legacy();
        let good = &pki.chain[0];
        let mut trailing = good.clone();
        trailing.push(0);
        let mut long_length = good.clone();
        long_length[2] = 0xff; // the outer SEQUENCE's length, beyond the input
        let bad_inputs = [
            good[..good.len() - 1].to_vec(),
            trailing,
            long_length,
            vec![],
            vec![0x30, 0x80, 0, 0], // indefinite length (BER, not DER)
            vec![0x30; MAX_CERTIFICATE_LEN + 1],
        ];
        for bad in bad_inputs {
            for position in 0..3 {
                let mut chain = pki.chain.clone();
                let mut roots = pki.roots.clone();
                match position {
                    0 | 1 => chain[position] = bad.clone(),
                    _ => roots[0] = bad.clone(),
                }
                let e = verify(&chain, &roots, &pki.key).unwrap_err();
                assert!(
                    matches!(e, AttestationError::Chain(ChainError::Malformed { .. })),
                    "position {position}: {e}"
                );
            }
        }
    }

    #[test]
    fn only_the_f9_position_may_lack_basic_constraints() {
        let (root, mid, f9, slot) = (
            Signer::p256(1),
            Signer::p256(2),
            Signer::p256(3),
            Signer::p256(4),
        );
        const MID: &str = "CN=Not A CA";
        let root_der = issue(&root, ROOT, ROOT, &root.spki(), ca_extensions());
        let leaf = issue(&f9, F9, LEAF, &slot.spki(), yubico_extensions(1));
        let Signer::P256(k) = &slot else {
            unreachable!()
        };
        let key = PublicKey::p256_sec1(&k.verifying_key().to_sec1_bytes()).unwrap();
        let f9_der = issue(&mid, MID, F9, &f9.spki(), vec![]);
        // An intermediate without basicConstraints, or with CA=false.
        for mid_ext in [vec![], vec![basic_constraints(false, None)]] {
            let mid_der = issue(&root, ROOT, MID, &mid.spki(), mid_ext);
            let e = verify(
                &[leaf.clone(), f9_der.clone()],
                &[root_der.clone(), mid_der],
                &key,
            )
            .unwrap_err();
            assert!(
                matches!(e, AttestationError::Chain(ChainError::NotACa { .. })),
                "{e}"
            );
        }
        // An f9 certificate that says CA=false is not excused.
        let f9_der = issue(
            &root,
            ROOT,
            F9,
            &f9.spki(),
            vec![basic_constraints(false, None)],
        );
        let e = verify(
            &[leaf.clone(), f9_der],
            std::slice::from_ref(&root_der),
            &key,
        )
        .unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::NotACa { .. })),
            "{e}"
        );
        // A root without basicConstraints is no CA either.
        let bare_root = issue(&root, ROOT, ROOT, &root.spki(), vec![]);
        let f9_der = issue(&root, ROOT, F9, &f9.spki(), vec![]);
        let e = verify(&[leaf, f9_der], &[bare_root], &key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::NotACa { .. })),
            "{e}"
        );
    }

    #[test]
    fn unknown_critical_extensions_and_key_usage_are_enforced() {
        let (root, f9, slot) = (Signer::p256(1), Signer::p256(2), Signer::p256(3));
        let leaf = issue(&f9, F9, LEAF, &slot.spki(), yubico_extensions(1));
        let Signer::P256(k) = &slot else {
            unreachable!()
        };
        let key = PublicKey::p256_sec1(&k.verifying_key().to_sec1_bytes()).unwrap();
        let f9_der = issue(&root, ROOT, F9, &f9.spki(), vec![]);
        let mut exts = ca_extensions();
        // nameConstraints, critical: not implemented, so refused.
        exts.push(ext(
            ObjectIdentifier::new_unwrap("2.5.29.30"),
            true,
            &[0x30, 0x00],
        ));
        let root_der = issue(&root, ROOT, ROOT, &root.spki(), exts);
        let e = verify(&[leaf.clone(), f9_der.clone()], &[root_der], &key).unwrap_err();
        assert!(
            matches!(
                e,
                AttestationError::Chain(ChainError::UnknownCriticalExtension { .. })
            ),
            "{e}"
        );
        // keyUsage without keyCertSign.
        let mut exts = ca_extensions();
        exts[1] = ext(
            ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into())
                .to_der()
                .unwrap(),
        );
        let root_der = issue(&root, ROOT, ROOT, &root.spki(), exts);
        let e = verify(&[leaf, f9_der], &[root_der], &key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::NotACa { .. })),
            "{e}"
        );
    }

    #[test]
    fn the_leaf_must_name_the_f9_certificate_as_issuer() {
        let pki = p256_legacy();
        let (root, f9, slot) = (Signer::p256(1), Signer::p256(2), Signer::p256(3));
        let _ = root;
        let leaf = issue(&f9, "CN=Someone Else", LEAF, &slot.spki(), vec![]);
        let e = verify(&[leaf, pki.chain[1].clone()], &pki.roots, &pki.key).unwrap_err();
        assert!(matches!(e, AttestationError::IssuerMismatch { .. }), "{e}");
    }

    #[test]
    fn a_roots_file_needs_a_self_signed_root() {
        let pki = p256_legacy();
        // The f9 certificate itself as the only "root".
        let e = verify(&pki.chain, &pki.chain[1..], &pki.key).unwrap_err();
        assert_eq!(e, AttestationError::Chain(ChainError::NoRoots));
        // The path's errors read as they did before they were shared.
        assert_eq!(
            e.to_string(),
            "the roots file holds no root (self-signed) certificate"
        );
        let e = verify(&pki.chain, &[], &pki.key).unwrap_err();
        assert_eq!(e, AttestationError::Chain(ChainError::NoRoots));
        let many = vec![pki.roots[0].clone(); MAX_ROOTS + 1];
        let e = verify(&pki.chain, &many, &pki.key).unwrap_err();
        assert_eq!(
            e,
            AttestationError::Chain(ChainError::TooManyRoots(MAX_ROOTS + 1))
        );
    }

    /// Yubico's published PIV root (2016, sha256WithRSAEncryption) and
    /// Attestation Root 1 (2024, sha512WithRSAEncryption), from
    /// https://developers.yubico.com/PKI/yubico-ca-certs.txt.
    const YUBICO_ROOTS: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDFzCCAf+gAwIBAgIDBAZHMA0GCSqGSIb3DQEBCwUAMCsxKTAnBgNVBAMMIFl1\n\
YmljbyBQSVYgUm9vdCBDQSBTZXJpYWwgMjYzNzUxMCAXDTE2MDMxNDAwMDAwMFoY\n\
DzIwNTIwNDE3MDAwMDAwWjArMSkwJwYDVQQDDCBZdWJpY28gUElWIFJvb3QgQ0Eg\n\
U2VyaWFsIDI2Mzc1MTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAMN2\n\
cMTNR6YCdcTFRxuPy31PabRn5m6pJ+nSE0HRWpoaM8fc8wHC+Tmb98jmNvhWNE2E\n\
ilU85uYKfEFP9d6Q2GmytqBnxZsAa3KqZiCCx2LwQ4iYEOb1llgotVr/whEpdVOq\n\
joU0P5e1j1y7OfwOvky/+AXIN/9Xp0VFlYRk2tQ9GcdYKDmqU+db9iKwpAzid4oH\n\
BVLIhmD3pvkWaRA2H3DA9t7H/HNq5v3OiO1jyLZeKqZoMbPObrxqDg+9fOdShzgf\n\
wCqgT3XVmTeiwvBSTctyi9mHQfYd2DwkaqxRnLbNVyK9zl+DzjSGp9IhVPiVtGet\n\
X02dxhQnGS7K6BO0Qe8CAwEAAaNCMEAwHQYDVR0OBBYEFMpfyvLEojGc6SJf8ez0\n\
1d8Cv4O/MA8GA1UdEwQIMAYBAf8CAQEwDgYDVR0PAQH/BAQDAgEGMA0GCSqGSIb3\n\
DQEBCwUAA4IBAQBc7Ih8Bc1fkC+FyN1fhjWioBCMr3vjneh7MLbA6kSoyWF70N3s\n\
XhbXvT4eRh0hvxqvMZNjPU/VlRn6gLVtoEikDLrYFXN6Hh6Wmyy1GTnspnOvMvz2\n\
lLKuym9KYdYLDgnj3BeAvzIhVzzYSeU77/Cupofj093OuAswW0jYvXsGTyix6B3d\n\
bW5yWvyS9zNXaqGaUmP3U9/b6DlHdDogMLu3VLpBB9bm5bjaKWWJYgWltCVgUbFq\n\
Fqyi4+JE014cSgR57Jcu3dZiehB6UtAPgad9L5cNvua/IWRmm+ANy3O2LH++Pyl8\n\
SREzU8onbBsjMg9QDiSf5oJLKvd/Ren+zGY7\n\
-----END CERTIFICATE-----\n\
-----BEGIN CERTIFICATE-----\n\
MIIDPjCCAiagAwIBAgIUXzeiEDJEOTt14F5n0o6Zf/bBwiUwDQYJKoZIhvcNAQEN\n\
BQAwJDEiMCAGA1UEAwwZWXViaWNvIEF0dGVzdGF0aW9uIFJvb3QgMTAgFw0yNDEy\n\
MDEwMDAwMDBaGA85OTk5MTIzMTIzNTk1OVowJDEiMCAGA1UEAwwZWXViaWNvIEF0\n\
dGVzdGF0aW9uIFJvb3QgMTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEB\n\
AMZ6/TxM8rIT+EaoPvG81ontMOo/2mQ2RBwJHS0QZcxVaNXvl12LUhBZ5LmiBScI\n\
Zd1Rnx1od585h+/dhK7hEm7JAALkKKts1fO53KGNLZujz5h3wGncr4hyKF0G74b/\n\
U3K9hE5mGND6zqYchCRAHfrYMYRDF4YL0X4D5nGdxvppAy6nkEmtWmMnwO3i0TAu\n\
csrbE485HvGM4r0VpgVdJpvgQjiTJCTIq+D35hwtT8QDIv+nGvpcyi5wcIfCkzyC\n\
imJukhYy6KoqNMKQEdpNiSOvWyDMTMt1bwCvEzpw91u+msUt4rj0efnO9s0ZOwdw\n\
MRDnH4xgUl5ZLwrrPkfC1/0CAwEAAaNmMGQwHQYDVR0OBBYEFNLu71oijTptXCOX\n\
PfKF1SbxJXuSMB8GA1UdIwQYMBaAFNLu71oijTptXCOXPfKF1SbxJXuSMBIGA1Ud\n\
EwEB/wQIMAYBAf8CAQMwDgYDVR0PAQH/BAQDAgGGMA0GCSqGSIb3DQEBDQUAA4IB\n\
AQC3IW/sgB9pZ8apJNjxuGoX+FkILks0wMNrdXL/coUvsrhzsvl6mePMrbGJByJ1\n\
XnquB5sgcRENFxdQFma3mio8Upf1owM1ZreXrJ0mADG2BplqbJnxiyYa+R11reIF\n\
TWeIhMNcZKsDZrFAyPuFjCWSQvJmNWe9mFRYFgNhXJKkXIb5H1XgEDlwiedYRM7V\n\
olBNlld6pRFKlX8ust6OTMOeADl2xNF0m1LThSdeuXvDyC1g9+ILfz3S6OIYgc3i\n\
roRcFD354g7rKfu67qFAw9gC4yi0xBTPrY95rh4/HqaUYCA/L8ldRk6H7Xk35D+W\n\
Vpmq2Sh/xT5HiFuhf4wJb0bK\n\
-----END CERTIFICATE-----\n";

    #[test]
    fn yubicos_published_roots_parse_and_are_anchors() {
        let roots = certificates_from_pem(YUBICO_ROOTS).unwrap();
        let names: Vec<String> = roots
            .iter()
            .map(|der| {
                let cert = Parsed::new(der, "a Yubico root").unwrap();
                check_signature(&cert, &cert).expect("self-signed");
                check_ca(&cert, 0).expect("a CA");
                cert.subject_name()
            })
            .collect();
        assert_eq!(
            names,
            [
                "CN=Yubico PIV Root CA Serial 263751",
                "CN=Yubico Attestation Root 1"
            ]
        );
        // Not our card's: a chain from the test PKI is foreign to them.
        let pki = p256_legacy();
        let e = verify(&pki.chain, &roots, &pki.key).unwrap_err();
        assert!(
            matches!(e, AttestationError::Chain(ChainError::ForeignRoot { .. })),
            "{e}"
        );
    }

    #[test]
    fn pem_files_give_their_certificates() {
        let pki = p256_legacy();
        let pem = |der: &[u8]| {
            Certificate::from_der(der)
                .unwrap()
                .to_pem(LineEnding::LF)
                .unwrap()
        };
        let text = format!(
            "Name: a root\n{}\nsome text\n{}",
            pem(&pki.roots[0]),
            pem(&pki.chain[1])
        );
        let certs = certificates_from_pem(&text).unwrap();
        assert_eq!(certs, [pki.roots[0].clone(), pki.chain[1].clone()]);
        assert_eq!(
            certificates_from_pem("no PEM here").unwrap(),
            Vec::<Vec<u8>>::new()
        );
        let key = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            certificates_from_pem(key),
            Err(AttestationError::Chain(ChainError::Malformed { .. }))
        ));
        assert!(matches!(
            certificates_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"),
            Err(AttestationError::Chain(ChainError::Malformed { .. }))
        ));
        assert!(matches!(
            certificates_from_pem("-----BEGIN CERTIFICATE-----\nAAAA"),
            Err(AttestationError::Chain(ChainError::Malformed { .. }))
        ));
    }
}
