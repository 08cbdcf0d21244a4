//! Checking the TPM2_Certify evidence of a key: the TPM's attestation key
//! (AK) signed a statement that the key, named by its public area, lives in
//! that TPM and was certified for this key record.
//!
//! The evidence ([`crate::Evidence`], kind [`super::EVIDENCE_KIND`]) is,
//! in order:
//!
//! | # | blob | as `tss-esapi` writes it |
//! |---|---|---|
//! | 0 | the TPMS_ATTEST TPM2_Certify returned (the TPM2B_ATTEST's buffer) | `Attest::marshall` |
//! | 1 | its TPMT_SIGNATURE by the AK: ECDSA P-256 with SHA-256 | `Signature::marshall` |
//! | 2 | the AK's TPMT_PUBLIC | `Public::marshall` |
//! | 3 | the key's TPMT_PUBLIC | `Public::marshall` |
//! | 4 | optional: the EK certificate (DER) from the TPM's NV | — |
//!
//! and TPM2_Certify's qualifyingData is the key's kid (32 bytes).
//!
//! Everything here is hostile input (it comes from the key record). The
//! TPM structures are parsed by `tss-esapi` (the TSS's bounds-checked
//! unmarshalling), and each must re-marshal to exactly the bytes given: no
//! trailing bytes, no second reading of the same bytes. Certificates go
//! through [`crate::x509`].
//!
//! What is checked:
//! - the statement is one the TPM made (magic TPM_GENERATED_VALUE) about
//!   TPM2_Certify (TPM_ST_ATTEST_CERTIFY), and the AK's signature over it
//!   verifies;
//! - the AK is a restricted ECC P-256 signing key, fixedTPM and
//!   fixedParent: a key that signs only what the TPM itself produced and
//!   cannot have been imported;
//! - the certified name is the name of the key's public area (nameAlg and
//!   its digest: SHA-256, SHA-384 or SHA-512), that public area holds
//!   exactly `key`, and the statement's qualifying data is `key`'s kid;
//! - the key is an ECC P-256 signing key with fixedTPM, fixedParent,
//!   sensitiveDataOrigin and userWithAuth, neither restricted nor a
//!   decryption key;
//! - with roots: an EK certificate is present and chains to them (the EK
//!   certificate is an end entity with a decryption key; see `check_ek`).
//!
//! What is not: that the AK belongs to a genuine TPM. Without roots the AK
//! is trusted on first use (most firmware TPMs have no EK certificate);
//! with them the EK certificate is genuine, but nothing here proves the AK
//! is on the same TPM as that EK — that needs TPM2_MakeCredential /
//! TPM2_ActivateCredential with the EK, which keybridge does not do. The
//! statement's clock, reset counts and the EK certificates' validity dates
//! are reported or ignored, not judged.

use crate::BackendError;
use crate::x509::{ChainError, Parsed, Roots, refuse_unknown_critical};
use keybridge_protocol::{Algorithm, PublicKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{Attest, AttestInfo, Public, Signature};
use tss_esapi::traits::{Marshall, UnMarshall};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};

/// TPM_GENERATED_VALUE: the first four bytes of every structure a TPM
/// signs with a restricted key. A restricted key refuses to sign anything
/// else that starts with them, so they prove the TPM made the statement.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY: the statement of a TPM2_Certify.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
/// The largest TPM structure accepted (a TPMS_ATTEST is at most about
/// 2 KiB, a TPMT_PUBLIC under 1 KiB; keybridge's are a few hundred bytes).
pub const MAX_STRUCTURE_LEN: usize = 4096;

const ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.5.29.9");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// tcg-kp-EKCertificate (TCG EK Credential Profile §3.2.16).
const TCG_KP_EK_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.1");
/// tcg-at-tpmManufacturer, -tpmModel, -tpmVersion: the directoryName of an
/// EK certificate's subjectAltName.
const TCG_AT_TPM_MANUFACTURER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.1");
const TCG_AT_TPM_MODEL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.2");
const TCG_AT_TPM_VERSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.3");

/// Why TPM2_Certify evidence does not verify. Each variant is one thing a
/// caller (or an attacker) can cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertifyError {
    /// Fewer blobs than attest, signature, AK public and key public.
    #[error(
        "the evidence holds {0} blobs; a TPM2_Certify statement is the attestation, its signature, the AK's public area and the key's public area"
    )]
    Incomplete(usize),
    /// More blobs than the format has (the four and an EK certificate).
    #[error(
        "the evidence holds {0} blobs; a TPM2_Certify statement has four and an optional EK certificate"
    )]
    UnexpectedLength(usize),
    /// A TPM structure that does not parse, is too large, has trailing
    /// bytes, or holds a value out of range.
    #[error("{part} is malformed: {reason}")]
    Malformed {
        /// Which blob (`the attestation (TPMS_ATTEST)`).
        part: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The statement does not start with TPM_GENERATED_VALUE.
    #[error(
        "the attestation starts with {0:#010x}, not TPM_GENERATED_VALUE (0xff544347): a TPM did not make it"
    )]
    NotTpmGenerated(u32),
    /// A statement of another command (a quote, a creation ticket, …).
    #[error("the attestation is of type {0:#06x}, not TPM_ST_ATTEST_CERTIFY (0x8017)")]
    NotCertify(u16),
    /// A signature scheme other than ECDSA with SHA-256.
    #[error("the attestation is signed with {0}, not ECDSA with SHA-256")]
    UnsupportedSignature(String),
    /// The AK cannot vouch for anything: not a restricted, non-duplicable
    /// P-256 signing key.
    #[error("the attestation key cannot vouch for the statement: {0}")]
    UnsuitableAk(String),
    /// The AK's signature does not verify.
    #[error(
        "the AK's signature over the attestation does not verify: the statement was altered or signed by another key"
    )]
    BadSignature,
    /// The key's public area holds another key than the one asked about.
    #[error("the evidence certifies another key ({0}), not this one")]
    KeyMismatch(String),
    /// The key's public area uses a name algorithm keybridge does not
    /// compute.
    #[error(
        "the key's name algorithm is {0}; keybridge checks names made with SHA-256, SHA-384 or SHA-512"
    )]
    UnsupportedNameAlgorithm(String),
    /// The certified name is not the name of the key's public area.
    #[error(
        "the TPM certified the object named {certified}, but the key's public area is named {computed}: the statement is about another object"
    )]
    NameMismatch {
        /// The name in the statement (hex).
        certified: String,
        /// The name of the public area in the evidence (hex).
        computed: String,
    },
    /// The statement's qualifying data is not the key's kid.
    #[error(
        "the statement was made for key id {found}, not for this key's {expected}: it belongs to another key record"
    )]
    WrongRecord {
        /// The qualifying data in the statement (hex).
        found: String,
        /// This key's kid.
        expected: String,
    },
    /// The key is not one keybridge would have made: it may leave the TPM,
    /// or cannot sign with its PIN.
    #[error("the certified key is not a TPM-bound signing key: {0}")]
    KeyAttributes(String),
    /// Roots were given, but there is no EK certificate to check.
    #[error(
        "roots were given but the evidence holds no EK certificate (the TPM had none in its NV, as most firmware TPMs): check it without roots, trusting the AK on first use"
    )]
    NoEkCertificate,
    /// The certificate in the EK position is not an EK certificate.
    #[error("\"{subject}\" is not an EK certificate: {reason}")]
    NotAnEkCertificate {
        /// The certificate.
        subject: String,
        /// What gives it away.
        reason: String,
    },
    /// The EK certificate does not parse or does not chain to the roots.
    #[error("{0}")]
    Chain(#[from] ChainError),
}

/// What a verified TPM2_Certify statement says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The AK's name (nameAlg and digest of its public area, hex): the
    /// identity to compare across keys when the AK is trusted on first use.
    pub ak_name: String,
    /// The statement's qualifiedSigner (hex), as the TPM states it: the AK's
    /// name qualified by its parents; not recomputed.
    pub qualified_signer: String,
    /// The certified key's name (hex).
    pub key_name: String,
    /// The key's object attributes that are set, by their TPM names.
    pub key_attributes: Vec<String>,
    /// The statement's firmwareVersion, see [`firmware_version`].
    pub firmware: String,
    /// The EK certificate, when roots were given (and it chained to them).
    pub ek_certificate: Option<EkReport>,
    /// Whether an EK certificate was in the evidence, checked or not.
    pub ek_certificate_present: bool,
    /// Always false: nothing ties the AK to the EK (no credential
    /// activation).
    pub ak_bound_to_ek: bool,
    /// Always false: the EK certificates' validity periods are not checked.
    pub validity_checked: bool,
}

/// A verified EK certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EkReport {
    /// Its subject (often empty or a placeholder on EK certificates).
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// The TPM manufacturer, model and version from its subjectAltName,
    /// when stated (`id:49465800`, …).
    pub manufacturer: Option<String>,
    /// See `manufacturer`.
    pub model: Option<String>,
    /// See `manufacturer`.
    pub version: Option<String>,
    /// The subject of the root the chain ends at.
    pub root: String,
    /// Subjects from the EK certificate to the root.
    pub chain: Vec<String>,
}

/// Verifies TPM2_Certify evidence (`chain`, in the order of the module
/// documentation) for `key`. `roots`: DER certificates from the user's
/// roots file; empty = no EK check, the AK is trusted on first use.
/// Nothing is fetched and the clock is not read.
pub fn verify(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    key: &PublicKey,
) -> Result<Report, CertifyError> {
    let [
        attest_bytes,
        signature_bytes,
        ak_bytes,
        key_bytes,
        rest @ ..,
    ] = chain
    else {
        return Err(CertifyError::Incomplete(chain.len()));
    };
    if rest.len() > 1 {
        return Err(CertifyError::UnexpectedLength(chain.len()));
    }
    let ek_der = rest.first();

    // The statement: what the TPM says, and that the TPM says it.
    let attest = parse_attest(attest_bytes)?;
    let AttestInfo::Certify { info } = attest.attested() else {
        // parse_attest checked the type; tss-esapi reads by it.
        return Err(CertifyError::Malformed {
            part: "the attestation (TPMS_ATTEST)",
            reason: "its attested part is not a TPMS_CERTIFY_INFO".into(),
        });
    };
    let signature = parse::<Signature>(signature_bytes, "the signature (TPMT_SIGNATURE)")?;
    let ak_public = parse::<Public>(ak_bytes, "the AK's public area (TPMT_PUBLIC)")?;
    let ak = check_ak(&ak_public)?;
    let ak_name = name(ak_bytes, ak_public.name_hashing_algorithm())
        .ok_or_else(|| CertifyError::UnsuitableAk("its name algorithm is not SHA-2".into()))?;
    check_signature(attest_bytes, &signature, &ak)?;

    // The key: the one asked about, the object certified, this record's.
    let key_public = parse::<Public>(key_bytes, "the key's public area (TPMT_PUBLIC)")?;
    let point = p256_point(&key_public).map_err(|what| CertifyError::KeyMismatch(what.into()))?;
    if key.algorithm() != Algorithm::Es256 || point.as_slice() != key.raw_bytes().as_slice() {
        let other = PublicKey::p256_sec1(&point)
            .map(|k| format!("P-256 key {}", k.kid()))
            .unwrap_or_else(|_| "an invalid P-256 point".into());
        return Err(CertifyError::KeyMismatch(other));
    }
    let name_alg = key_public.name_hashing_algorithm();
    let key_name = name(key_bytes, name_alg)
        .ok_or_else(|| CertifyError::UnsupportedNameAlgorithm(format!("{name_alg:?}")))?;
    if info.name().value() != key_name.as_slice() {
        return Err(CertifyError::NameMismatch {
            certified: hex::encode(info.name().value()),
            computed: hex::encode(&key_name),
        });
    }
    let kid = key.kid();
    if attest.extra_data().value() != kid.0.as_slice() {
        return Err(CertifyError::WrongRecord {
            found: hex::encode(attest.extra_data().value()),
            expected: kid.to_hex(),
        });
    }
    let attributes = key_public.object_attributes();
    check_key_attributes(attributes)?;

    // The endorsement key's certificate, when the caller has roots for it.
    let ek_certificate = match (ek_der, roots.is_empty()) {
        (_, true) => {
            // Not checked, but a blob in that position must be a
            // certificate: the format has nothing else there.
            if let Some(der) = ek_der {
                Parsed::new(der, "the EK certificate")?;
            }
            None
        }
        (None, false) => return Err(CertifyError::NoEkCertificate),
        (Some(der), false) => Some(check_ek(der, roots)?),
    };

    Ok(Report {
        ak_name: hex::encode(ak_name),
        qualified_signer: hex::encode(attest.qualified_signer().value()),
        key_name: hex::encode(key_name),
        key_attributes: attribute_names(attributes),
        firmware: firmware_version(attest.firmware_version()),
        ek_certificate,
        ek_certificate_present: ek_der.is_some(),
        ak_bound_to_ek: false,
        validity_checked: false,
    })
}

/// The TPMS_ATTEST, its magic and type checked first so that a statement
/// of the wrong kind is named as such.
fn parse_attest(bytes: &[u8]) -> Result<Attest, CertifyError> {
    const PART: &str = "the attestation (TPMS_ATTEST)";
    check_size(bytes, PART)?;
    let header = bytes.get(..6).ok_or_else(|| CertifyError::Malformed {
        part: PART,
        reason: format!("{} bytes, shorter than its header", bytes.len()),
    })?;
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != TPM_GENERATED_VALUE {
        return Err(CertifyError::NotTpmGenerated(magic));
    }
    let kind = u16::from_be_bytes([header[4], header[5]]);
    if kind != TPM_ST_ATTEST_CERTIFY {
        return Err(CertifyError::NotCertify(kind));
    }
    parse::<Attest>(bytes, PART)
}

fn check_size(bytes: &[u8], part: &'static str) -> Result<(), CertifyError> {
    if bytes.len() > MAX_STRUCTURE_LEN {
        return Err(CertifyError::Malformed {
            part,
            reason: format!(
                "{} bytes, more than the {MAX_STRUCTURE_LEN} accepted",
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// Unmarshals `bytes` as a `T` that must marshal back to exactly `bytes`.
fn parse<T: UnMarshall + Marshall>(bytes: &[u8], part: &'static str) -> Result<T, CertifyError> {
    let malformed = |reason: String| CertifyError::Malformed { part, reason };
    check_size(bytes, part)?;
    let value = T::unmarshall(bytes).map_err(|e| malformed(e.to_string()))?;
    // The TSS's unmarshalling stops where the structure ends and ignores
    // the rest; the name and the signature cover all of the bytes.
    match value.marshall() {
        Ok(again) if again == bytes => Ok(value),
        Ok(again) if bytes.starts_with(&again) => Err(malformed(format!(
            "{} bytes after the end of the structure",
            bytes.len() - again.len()
        ))),
        _ => Err(malformed("it is not encoded as a TPM encodes it".into())),
    }
}

/// The AK's key, when it is one that can vouch for a statement.
fn check_ak(ak: &Public) -> Result<p256::ecdsa::VerifyingKey, CertifyError> {
    let unsuitable = |what: &str| CertifyError::UnsuitableAk(what.to_owned());
    let a = ak.object_attributes();
    let mut missing = Vec::new();
    if !a.restricted() {
        missing.push("restricted");
    }
    if !a.sign_encrypt() {
        missing.push("sign");
    }
    if !a.fixed_tpm() {
        missing.push("fixedTPM");
    }
    if !a.fixed_parent() {
        missing.push("fixedParent");
    }
    if !missing.is_empty() {
        return Err(CertifyError::UnsuitableAk(format!(
            "it is not {}",
            missing.join(", ")
        )));
    }
    let point = p256_point(ak).map_err(unsuitable)?;
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|_| unsuitable("its point is not on P-256"))
}

/// The uncompressed SEC1 point (65 bytes) of an ECC P-256 public area;
/// the TPM's coordinates may come without their leading zero bytes.
fn p256_point(public: &Public) -> Result<Vec<u8>, &'static str> {
    let Public::Ecc {
        parameters, unique, ..
    } = public
    else {
        return Err("not an ECC key");
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err("an ECC key on another curve than P-256");
    }
    let (x, y) = (unique.x().value(), unique.y().value());
    if x.len() > 32 || y.len() > 32 {
        return Err("a P-256 point with coordinates longer than 32 bytes");
    }
    let mut point = vec![0u8; 65];
    point[0] = 0x04;
    point[33 - x.len()..33].copy_from_slice(x);
    point[65 - y.len()..].copy_from_slice(y);
    Ok(point)
}

/// Checks the AK's ECDSA-SHA256 signature over the attestation bytes.
fn check_signature(
    attest: &[u8],
    signature: &Signature,
    ak: &p256::ecdsa::VerifyingKey,
) -> Result<(), CertifyError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let Signature::EcDsa(ecc) = signature else {
        return Err(CertifyError::UnsupportedSignature(format!(
            "{:?}",
            signature.algorithm()
        )));
    };
    if ecc.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(CertifyError::UnsupportedSignature(format!(
            "ECDSA with {:?}",
            ecc.hashing_algorithm()
        )));
    }
    // r and s are TPM2B sizes: a TPM may drop leading zero bytes, never add
    // any (a P-256 scalar is 32 bytes).
    let mut rs = [0u8; 64];
    for (half, scalar, at) in [
        ("r", ecc.signature_r().value(), 0),
        ("s", ecc.signature_s().value(), 32),
    ] {
        if scalar.len() > 32 {
            return Err(CertifyError::Malformed {
                part: "the signature (TPMT_SIGNATURE)",
                reason: format!(
                    "its {half} is {} bytes, longer than a P-256 scalar's 32",
                    scalar.len()
                ),
            });
        }
        rs[at + 32 - scalar.len()..at + 32].copy_from_slice(scalar);
    }
    // Zero or out-of-range scalars are refused here. A high s is accepted:
    // TPMs do not normalize it, and it proves as much.
    let sig = p256::ecdsa::Signature::from_slice(&rs).map_err(|_| CertifyError::BadSignature)?;
    ak.verify_prehash(&Sha256::digest(attest), &sig)
        .map_err(|_| CertifyError::BadSignature)
}

/// A TPM object's name: nameAlg (2 bytes) and the nameAlg digest of its
/// marshalled TPMT_PUBLIC. `None` for algorithms other than SHA-2.
fn name(public: &[u8], alg: HashingAlgorithm) -> Option<Vec<u8>> {
    let (id, digest): (u16, Vec<u8>) = match alg {
        HashingAlgorithm::Sha256 => (0x000b, Sha256::digest(public).to_vec()),
        HashingAlgorithm::Sha384 => (0x000c, Sha384::digest(public).to_vec()),
        HashingAlgorithm::Sha512 => (0x000d, Sha512::digest(public).to_vec()),
        _ => return None,
    };
    let mut out = id.to_be_bytes().to_vec();
    out.extend(digest);
    Some(out)
}

/// The attributes of a key keybridge makes: it cannot leave the TPM, the
/// TPM made its private key, its PIN authorizes it, and it signs anything
/// (not only TPM-made digests) and decrypts nothing.
fn check_key_attributes(a: ObjectAttributes) -> Result<(), CertifyError> {
    let mut wrong = Vec::new();
    if !a.fixed_tpm() {
        wrong.push("not fixedTPM (it may be duplicated to another TPM, or out of any)");
    }
    if !a.fixed_parent() {
        wrong.push("not fixedParent (it may be duplicated under another parent)");
    }
    if !a.sensitive_data_origin() {
        wrong
            .push("not sensitiveDataOrigin (its private key was given to the TPM, not made by it)");
    }
    if !a.user_with_auth() {
        wrong.push("not userWithAuth (its PIN alone does not authorize it)");
    }
    if !a.sign_encrypt() {
        wrong.push("not a signing key");
    }
    if a.restricted() {
        wrong.push("restricted (it signs only digests the TPM made)");
    }
    if a.decrypt() {
        wrong.push("also a decryption key");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(CertifyError::KeyAttributes(wrong.join("; ")))
    }
}

/// The names (TPM 2.0 Part 2 §8.3) of the attributes that are set.
fn attribute_names(a: ObjectAttributes) -> Vec<String> {
    [
        (a.fixed_tpm(), "fixedTPM"),
        (a.st_clear(), "stClear"),
        (a.fixed_parent(), "fixedParent"),
        (a.sensitive_data_origin(), "sensitiveDataOrigin"),
        (a.user_with_auth(), "userWithAuth"),
        (a.admin_with_policy(), "adminWithPolicy"),
        (a.no_da(), "noDA"),
        (a.encrypted_duplication(), "encryptedDuplication"),
        (a.restricted(), "restricted"),
        (a.decrypt(), "decrypt"),
        (a.sign_encrypt(), "sign"),
        (a.x509_sign(), "x509sign"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_owned())
    .collect()
}

/// The statement's firmwareVersion: vendor-defined; most vendors (and
/// `tpm2_getcap`'s TPM2_PT_FIRMWARE_VERSION_1/2) read it as four 16-bit
/// parts, major first. Shown both ways: `7.85.4555.0 (0x0007005511cb0000)`.
pub fn firmware_version(v: u64) -> String {
    format!(
        "{}.{}.{}.{} ({v:#018x})",
        v >> 48,
        (v >> 32) & 0xffff,
        (v >> 16) & 0xffff,
        v & 0xffff
    )
}

/// Checks the EK certificate and its path to `roots`.
///
/// An EK certificate is an end entity whose key decrypts (an RSA EK's
/// keyUsage is keyEncipherment, an ECC EK's keyAgreement): its keyUsage is
/// not judged, and it need not allow digitalSignature. What is required of
/// it: not a CA; an extendedKeyUsage, if any, that includes
/// tcg-kp-EKCertificate (so a TLS certificate from the same vendor CA does
/// not pass for one); no critical extension beyond basicConstraints,
/// keyUsage, extendedKeyUsage, subjectDirectoryAttributes and
/// subjectAltName, which EK certificates mark critical when their subject
/// is empty (TCG EK Credential Profile §3.2) and whose TPM manufacturer,
/// model and version are reported. Every certificate above it must be a
/// CA ([`crate::x509`]).
fn check_ek(der: &[u8], roots: &[Vec<u8>]) -> Result<EkReport, CertifyError> {
    let ek = Parsed::new(der, "the EK certificate")?;
    let not_an_ek = |reason: &str| CertifyError::NotAnEkCertificate {
        subject: ek.subject_name(),
        reason: reason.to_owned(),
    };
    if let Some(BasicConstraints { ca: true, .. }) = ek.basic_constraints()? {
        return Err(not_an_ek("it is a CA certificate"));
    }
    if let Some(eku) = ek.decode_extension::<ExtendedKeyUsage>(ID_CE_EXT_KEY_USAGE)?
        && !eku.0.contains(&TCG_KP_EK_CERTIFICATE)
    {
        return Err(not_an_ek(
            "its extendedKeyUsage does not include tcg-kp-EKCertificate (2.23.133.8.1)",
        ));
    }
    refuse_unknown_critical(
        &ek,
        &[
            ID_CE_SUBJECT_ALT_NAME,
            ID_CE_EXT_KEY_USAGE,
            ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES,
        ],
    )?;
    let (mut manufacturer, mut model, mut version) = (None, None, None);
    if let Some(san) = ek.decode_extension::<SubjectAltName>(ID_CE_SUBJECT_ALT_NAME)? {
        for general_name in &san.0 {
            let GeneralName::DirectoryName(name) = general_name else {
                continue;
            };
            for attribute in name.iter() {
                let slot = match attribute.oid {
                    TCG_AT_TPM_MANUFACTURER => &mut manufacturer,
                    TCG_AT_TPM_MODEL => &mut model,
                    TCG_AT_TPM_VERSION => &mut version,
                    _ => continue,
                };
                *slot = Some(directory_string(&attribute.value));
            }
        }
    }

    let roots = Roots::new(roots)?;
    let path = roots.path_from(&ek)?;
    let top = path.last().expect("a found path ends at a root");
    let mut chain = vec![ek.subject_name()];
    chain.extend(path.iter().map(|c| c.subject_name()));
    Ok(EkReport {
        subject: ek.subject_name(),
        issuer: ek.issuer_name(),
        manufacturer,
        model,
        version,
        root: top.subject_name(),
        chain,
    })
}

/// A directoryName attribute's text (a DirectoryString; TCG uses
/// UTF8String), or its DER in hex when it is not one.
fn directory_string(value: &x509_cert::attr::AttributeValue) -> String {
    match value.decode_as::<DirectoryString>() {
        Ok(s) => s.value().into_owned(),
        Err(_) => hex::encode(value.value()),
    }
}

/// [`verify`] with the roots as PEM text (empty: no EK check), in the
/// backend-neutral shape ([`crate::verify_evidence`]).
pub fn verify_report(
    chain: &[Vec<u8>],
    roots_pem: &str,
    key: &PublicKey,
) -> Result<crate::EvidenceReport, BackendError> {
    let roots = crate::x509::certificates_from_pem(roots_pem)
        .map_err(|e| BackendError::InvalidSecret(format!("the roots file: {e}")))?;
    if roots.is_empty() && !roots_pem.trim().is_empty() {
        return Err(BackendError::InvalidSecret(
            "the roots file holds no PEM certificate".into(),
        ));
    }
    let r = verify(chain, &roots, key)
        .map_err(|e| BackendError::NotFound(format!("the attestation does not verify: {e}")))?;
    let mut facts = vec![
        ("AK name".to_owned(), r.ak_name.clone()),
        ("qualified signer".to_owned(), r.qualified_signer.clone()),
        ("key name".to_owned(), r.key_name.clone()),
        ("key attributes".to_owned(), r.key_attributes.join(", ")),
        ("firmware".to_owned(), r.firmware.clone()),
    ];
    let (proved, not_checked) = match &r.ek_certificate {
        None => {
            facts.push((
                "EK certificate".into(),
                if r.ek_certificate_present {
                    "present, not checked (no roots given)".into()
                } else {
                    "none".into()
                },
            ));
            (
                "the TPM attestation key named above certified that this key was made inside its TPM, cannot leave it, and belongs to this key record",
                "the AK is not bound to an endorsement key certificate: trust on first use (most firmware TPMs have no EK certificate; compare the AK name with the one other keys on this TPM show); the statement's clock was not judged",
            )
        }
        Some(ek) => {
            let unknown = || "(not stated)".to_owned();
            facts.extend([
                ("EK certificate".into(), ek.subject.clone()),
                ("EK issuer".into(), ek.issuer.clone()),
                (
                    "TPM manufacturer".into(),
                    ek.manufacturer.clone().unwrap_or_else(unknown),
                ),
                ("TPM model".into(), ek.model.clone().unwrap_or_else(unknown)),
                (
                    "TPM version".into(),
                    ek.version.clone().unwrap_or_else(unknown),
                ),
                ("root".into(), ek.root.clone()),
                ("chain".into(), ek.chain.join(" ← ")),
            ]);
            (
                "the TPM attestation key named above certified that this key was made inside its TPM, cannot leave it, and belongs to this key record; the EK certificate in the evidence chains to a root you gave",
                "the EK certificate proves an endorsement key, but nothing here proves the AK is on the same TPM as that EK (that needs TPM2_MakeCredential / TPM2_ActivateCredential with the EK, not done), so the AK is still trusted on first use; validity dates, revocation and the statement's clock were not checked",
            )
        }
    };
    Ok(crate::EvidenceReport {
        kind: super::EVIDENCE_KIND.into(),
        proved: proved.into(),
        not_checked: not_checked.into(),
        facts,
        report: serde_json::to_value(&r).expect("a report serializes"),
    })
}

#[cfg(test)]
mod tests {
    //! The fixtures are real TPM2_Certify statements from swtpm, made by
    //! `testdata/attest/make.sh`.
    use super::*;

    macro_rules! fixture {
        ($path:literal) => {
            include_bytes!(concat!("testdata/attest/", $path)).to_vec()
        };
    }

    /// A statement, and the key it is about.
    struct Case {
        chain: Vec<Vec<u8>>,
        key: PublicKey,
    }

    impl Case {
        /// The evidence `chain`, about the key in its public area (blob 3).
        fn new(chain: Vec<Vec<u8>>) -> Self {
            let public = Public::unmarshall(&chain[3]).unwrap();
            let key = PublicKey::p256_sec1(&p256_point(&public).unwrap()).unwrap();
            Case { chain, key }
        }
    }

    /// The TPM without an EK certificate.
    fn plain() -> Case {
        Case::new(vec![
            fixture!("plain/attest.bin"),
            fixture!("plain/signature.bin"),
            fixture!("plain/ak-public.bin"),
            fixture!("plain/key-public.bin"),
        ])
    }

    /// The plain TPM's key that may be duplicated.
    fn movable() -> Case {
        Case::new(vec![
            fixture!("plain/movable-attest.bin"),
            fixture!("plain/movable-signature.bin"),
            fixture!("plain/ak-public.bin"),
            fixture!("plain/movable-public.bin"),
        ])
    }

    /// The TPM with EK certificates, with its RSA EK certificate (the one
    /// keybridge reads first).
    fn with_ek() -> Case {
        Case::new(vec![
            fixture!("ek/attest.bin"),
            fixture!("ek/signature.bin"),
            fixture!("ek/ak-public.bin"),
            fixture!("ek/key-public.bin"),
            fixture!("ek/ek-rsa.der"),
        ])
    }

    fn roots() -> Vec<Vec<u8>> {
        crate::x509::certificates_from_pem(include_str!("testdata/attest/ek/roots.pem")).unwrap()
    }

    const ROOT: &str = "CN=swtpm-localca-rootca";
    const ISSUER: &str = "CN=swtpm-localca";

    #[test]
    fn a_statement_without_ek_verifies_with_the_ak_trusted_on_first_use() {
        let case = plain();
        let r = verify(&case.chain, &[], &case.key).unwrap();
        // The AK's name as tpm2_readpublic computed it.
        assert_eq!(r.ak_name, hex::encode(fixture!("plain/ak.name")));
        assert_eq!(
            r.key_attributes,
            [
                "fixedTPM",
                "fixedParent",
                "sensitiveDataOrigin",
                "userWithAuth",
                "sign"
            ]
        );
        // swtpm 0.7: TPM2_PT_FIRMWARE_VERSION_1 0x20191023, _2 0x00163636.
        assert_eq!(r.firmware, "8217.4131.22.13878 (0x2019102300163636)");
        assert!(r.key_name.starts_with("000b") && r.key_name.len() == 68);
        assert!(r.qualified_signer.starts_with("000b"));
        assert_eq!(r.ek_certificate, None);
        assert!(!r.ek_certificate_present && !r.ak_bound_to_ek && !r.validity_checked);

        let report = verify_report(&case.chain, "", &case.key).unwrap();
        assert_eq!(report.kind, "tpm2-certify");
        assert!(
            report.not_checked.starts_with(
                "the AK is not bound to an endorsement key certificate: trust on first use"
            ),
            "{}",
            report.not_checked
        );
        assert!(
            report
                .not_checked
                .contains("most firmware TPMs have no EK certificate")
        );
        let fact = |name: &str| {
            report
                .facts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(fact("AK name"), Some(r.ak_name.clone()));
        assert_eq!(fact("EK certificate").as_deref(), Some("none"));
        assert_eq!(report.report["ak_bound_to_ek"], false);
        // Whitespace is no roots file.
        verify_report(&case.chain, " \n", &case.key).unwrap();
    }

    #[test]
    fn an_ek_certificate_chains_to_the_roots_given() {
        let case = with_ek();
        let r = verify(&case.chain, &roots(), &case.key).unwrap();
        assert_eq!(r.ak_name, hex::encode(fixture!("ek/ak.name")));
        let ek = r.ek_certificate.unwrap();
        assert_eq!(ek.subject, "CN=unknown");
        assert_eq!(ek.issuer, ISSUER);
        assert_eq!(ek.chain, ["CN=unknown", ISSUER, ROOT]);
        assert_eq!(ek.root, ROOT);
        assert_eq!(ek.manufacturer.as_deref(), Some("id:00001014"));
        assert_eq!(ek.model.as_deref(), Some("swtpm"));
        assert_eq!(ek.version.as_deref(), Some("id:20191023"));
        assert!(!r.ak_bound_to_ek);

        // The ECC P-384 EK certificate of the same TPM does as well.
        let mut chain = case.chain.clone();
        chain[4] = fixture!("ek/ek-ecc384.der");
        verify(&chain, &roots(), &case.key).unwrap();

        let pem = include_str!("testdata/attest/ek/roots.pem");
        let report = verify_report(&case.chain, pem, &case.key).unwrap();
        assert!(
            report.not_checked.contains(
                "nothing here proves the AK is on the same TPM as that EK (that needs TPM2_MakeCredential / TPM2_ActivateCredential"
            ),
            "{}",
            report.not_checked
        );
        assert!(report.proved.contains("chains to a root you gave"));
        assert!(report.facts.contains(&("TPM model".into(), "swtpm".into())));
    }

    #[test]
    fn without_roots_an_ek_certificate_is_present_but_not_checked() {
        let case = with_ek();
        let r = verify(&case.chain, &[], &case.key).unwrap();
        assert_eq!(r.ek_certificate, None);
        assert!(r.ek_certificate_present);
        let report = verify_report(&case.chain, "", &case.key).unwrap();
        assert!(report.facts.contains(&(
            "EK certificate".into(),
            "present, not checked (no roots given)".into()
        )));
        assert!(report.not_checked.contains("trust on first use"));
        // Even unchecked, the EK position holds a certificate or nothing.
        let mut chain = case.chain.clone();
        chain[4] = b"not a certificate".to_vec();
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert!(
            matches!(e, CertifyError::Chain(ChainError::Malformed { .. })),
            "{e}"
        );
    }

    #[test]
    fn roots_without_an_ek_certificate_are_refused() {
        let case = plain();
        let e = verify(&case.chain, &roots(), &case.key).unwrap_err();
        assert_eq!(e, CertifyError::NoEkCertificate);
        let pem = include_str!("testdata/attest/ek/roots.pem");
        let e = verify_report(&case.chain, pem, &case.key).unwrap_err();
        assert!(matches!(e, BackendError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("no EK certificate"), "{e}");
        // A roots file without a certificate is not "no roots".
        let e = verify_report(&case.chain, "my roots", &case.key).unwrap_err();
        assert!(matches!(e, BackendError::InvalidSecret(_)), "{e}");
    }

    #[test]
    fn an_ek_certificate_under_a_foreign_root_of_the_same_names_is_refused() {
        let case = with_ek();
        let foreign = crate::x509::certificates_from_pem(include_str!(
            "testdata/attest/ek/foreign-roots.pem"
        ))
        .unwrap();
        let e = verify(&case.chain, &foreign, &case.key).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Chain(ChainError::ForeignRoot { subject, issuer })
                if subject == "CN=unknown" && issuer == ISSUER),
            "{e}"
        );
        // Only the root, without the intermediate that issued the EK
        // certificate: no path.
        let e = verify(&case.chain, &roots()[..1], &case.key).unwrap_err();
        assert!(
            matches!(e, CertifyError::Chain(ChainError::ForeignRoot { .. })),
            "{e}"
        );
        // Only the intermediate: no anchor.
        let e = verify(&case.chain, &roots()[1..], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::Chain(ChainError::NoRoots));
    }

    #[test]
    fn a_statement_about_another_key_is_refused() {
        let (case, other) = (plain(), movable());
        // Asked about another key.
        let e = verify(&case.chain, &[], &other.key).unwrap_err();
        assert!(matches!(e, CertifyError::KeyMismatch(_)), "{e}");
        // Another key's public area in place of the certified one.
        let mut chain = case.chain.clone();
        chain[3] = other.chain[3].clone();
        let e = verify(&chain, &[], &other.key).unwrap_err();
        assert!(matches!(e, CertifyError::NameMismatch { .. }), "{e}");
        // The other TPM's statement about its own key, asked about this one.
        let e = verify(&with_ek().chain, &[], &case.key).unwrap_err();
        assert!(matches!(e, CertifyError::KeyMismatch(_)), "{e}");
        // An Ed25519 key is never in a TPM.
        let ed = PublicKey::ed25519(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ])
        .unwrap();
        let e = verify(&case.chain, &[], &ed).unwrap_err();
        assert!(matches!(e, CertifyError::KeyMismatch(_)), "{e}");
    }

    #[test]
    fn a_statement_for_another_key_record_is_refused() {
        // The right key, certified with another key's kid as qualifying data.
        let mut case = plain();
        case.chain[0] = fixture!("plain/other-kid-attest.bin");
        case.chain[1] = fixture!("plain/other-kid-signature.bin");
        let e = verify(&case.chain, &[], &case.key).unwrap_err();
        assert_eq!(
            e,
            CertifyError::WrongRecord {
                found: movable().key.kid().to_hex(),
                expected: case.key.kid().to_hex(),
            }
        );
    }

    #[test]
    fn a_key_that_may_leave_the_tpm_is_refused() {
        let case = movable();
        let e = verify(&case.chain, &[], &case.key).unwrap_err();
        let CertifyError::KeyAttributes(reason) = &e else {
            panic!("{e}")
        };
        assert!(reason.starts_with("not fixedTPM"), "{reason}");
        assert!(reason.contains("not fixedParent"), "{reason}");
    }

    #[test]
    fn key_attributes_must_be_those_of_a_keybridge_key() {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        let good = || {
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_sign_encrypt(true)
        };
        check_key_attributes(good().build().unwrap()).unwrap();
        // noDA is reported, not refused.
        let no_da = good().with_no_da(true).build().unwrap();
        check_key_attributes(no_da).unwrap();
        assert!(attribute_names(no_da).contains(&"noDA".to_owned()));
        for (attributes, expected) in [
            (good().with_fixed_tpm(false), "not fixedTPM"),
            (good().with_fixed_parent(false), "not fixedParent"),
            (
                good().with_sensitive_data_origin(false),
                "not sensitiveDataOrigin",
            ),
            (good().with_user_with_auth(false), "not userWithAuth"),
            (good().with_sign_encrypt(false), "not a signing key"),
            (good().with_restricted(true), "restricted"),
            (good().with_decrypt(true), "also a decryption key"),
        ] {
            // The builder checks consistency; the TPM's bits need not be.
            let bits = tss_esapi::tss2_esys::TPMA_OBJECT::from(
                attributes.build().unwrap_or_else(|_| unreachable!()),
            );
            let e = check_key_attributes(ObjectAttributes::from(bits)).unwrap_err();
            assert!(
                matches!(&e, CertifyError::KeyAttributes(r) if r.starts_with(expected)),
                "{e}"
            );
        }
    }

    #[test]
    fn any_altered_byte_of_the_statement_is_refused() {
        let case = plain();
        for at in 0..case.chain[0].len() {
            for bit in [0x01, 0x80] {
                let mut chain = case.chain.clone();
                chain[0][at] ^= bit;
                let e = verify(&chain, &[], &case.key).unwrap_err();
                // The header names itself; a size that no longer fits is
                // malformed; anything else breaks the signature.
                assert!(
                    matches!(
                        e,
                        CertifyError::NotTpmGenerated(_)
                            | CertifyError::NotCertify(_)
                            | CertifyError::Malformed { .. }
                            | CertifyError::BadSignature
                    ),
                    "byte {at}: {e}"
                );
                if at >= 6 + 2 + 34 + 2 {
                    // Past the header, qualifiedSigner and extraData's size:
                    // extraData, clock, firmware and the certified names.
                    assert!(
                        matches!(
                            e,
                            CertifyError::BadSignature | CertifyError::Malformed { .. }
                        ),
                        "byte {at}: {e}"
                    );
                }
            }
        }
        // The qualifying data, altered: the signature, not the kid, fails.
        let mut chain = case.chain.clone();
        chain[0][6 + 2 + 34 + 2] ^= 1;
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::BadSignature);
    }

    #[test]
    fn a_wrong_magic_or_type_is_named() {
        let case = plain();
        let mut chain = case.chain.clone();
        chain[0][..4].copy_from_slice(&0xff54_4348u32.to_be_bytes());
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::NotTpmGenerated(0xff54_4348));
        assert!(e.to_string().contains("0xff544348"), "{e}");
        let mut chain = case.chain.clone();
        chain[0][4..6].copy_from_slice(&0x8018u16.to_be_bytes()); // a quote
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::NotCertify(0x8018));
    }

    #[test]
    fn another_aks_public_area_fails_the_signature() {
        let mut case = plain();
        case.chain[2] = fixture!("ek/ak-public.bin");
        let e = verify(&case.chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::BadSignature);
    }

    #[test]
    fn an_ak_that_cannot_vouch_is_refused() {
        // TPMT_PUBLIC: type (2), nameAlg (2), objectAttributes (4, big-endian).
        for (byte, bit, what) in [
            (5, 0x01, "restricted"),
            (5, 0x04, "sign"),
            (7, 0x02, "fixedTPM"),
            (7, 0x10, "fixedParent"),
        ] {
            let mut case = plain();
            assert_ne!(case.chain[2][byte] & bit, 0);
            case.chain[2][byte] &= !bit;
            let e = verify(&case.chain, &[], &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::UnsuitableAk(r) if r.contains(what)),
                "{what}: {e}"
            );
        }
        // A key on another curve: P-384 (curveID 0x0004).
        let mut case = plain();
        let ak = &mut case.chain[2];
        let curve = ak.len() - 2 * 34 - 2 - 2; // before kdf (scheme null) and unique
        assert_eq!(ak[curve..curve + 2], [0x00, 0x03]);
        ak[curve + 1] = 0x04;
        let e = verify(&case.chain, &[], &case.key).unwrap_err();
        assert!(
            matches!(&e, CertifyError::UnsuitableAk(r) if r.contains("P-256")),
            "{e}"
        );
    }

    /// TPMT_SIGNATURE: sigAlg, hash, r and s as TPM2Bs.
    fn tpmt_signature(alg: u16, hash: u16, r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut out = [alg.to_be_bytes(), hash.to_be_bytes()].concat();
        for part in [r, s] {
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    /// The fixture's r and s.
    fn r_and_s(signature: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let Signature::EcDsa(ecc) = Signature::unmarshall(signature).unwrap() else {
            unreachable!()
        };
        (
            ecc.signature_r().value().to_vec(),
            ecc.signature_s().value().to_vec(),
        )
    }

    #[test]
    fn only_ecdsa_sha256_signatures_with_32_byte_scalars_are_accepted() {
        let case = plain();
        let (r, s) = r_and_s(&case.chain[1]);
        assert_eq!(tpmt_signature(0x0018, 0x000b, &r, &s), case.chain[1]);
        let with_signature = |signature: Vec<u8>| {
            let mut chain = case.chain.clone();
            chain[1] = signature;
            verify(&chain, &[], &case.key)
        };
        // 33 bytes, even with a leading zero that keeps the value.
        let long_r = [&[0u8][..], &r].concat();
        let e = with_signature(tpmt_signature(0x0018, 0x000b, &long_r, &s)).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("its r is 33 bytes")),
            "{e}"
        );
        let long_s = [&[0u8][..], &s].concat();
        let e = with_signature(tpmt_signature(0x0018, 0x000b, &r, &long_s)).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("its s is 33 bytes")),
            "{e}"
        );
        // ECDSA with SHA-384, ECSchnorr, SM2: other schemes.
        for (alg, hash) in [(0x0018, 0x000c), (0x001c, 0x000b), (0x001b, 0x000b)] {
            let e = with_signature(tpmt_signature(alg, hash, &r, &s)).unwrap_err();
            assert!(
                matches!(e, CertifyError::UnsupportedSignature(_)),
                "{alg:#x}: {e}"
            );
        }
        // Zero scalars: not a signature at all.
        let e = with_signature(tpmt_signature(0x0018, 0x000b, &[], &s)).unwrap_err();
        assert_eq!(e, CertifyError::BadSignature);
    }

    #[test]
    fn a_high_s_verifies_as_tpms_do_not_normalize_it() {
        use p256::elliptic_curve::ff::PrimeField as _;
        let case = plain();
        let (r, s) = r_and_s(&case.chain[1]);
        let mut padded = [0u8; 32];
        padded[32 - s.len()..].copy_from_slice(&s);
        let s = p256::Scalar::from_repr(padded.into()).unwrap();
        let negated = (-s).to_bytes();
        let mut chain = case.chain.clone();
        chain[1] = tpmt_signature(0x0018, 0x000b, &r, negated.as_slice());
        verify(&chain, &[], &case.key).unwrap();
    }

    #[test]
    fn truncated_padded_or_missing_blobs_are_refused() {
        let case = with_ek();
        for blob in 0..4 {
            let whole = case.chain[blob].clone();
            for len in 0..whole.len() {
                let mut chain = case.chain.clone();
                chain[blob].truncate(len);
                let e = verify(&chain, &roots(), &case.key).unwrap_err();
                // A shorter key public area can still parse (a shorter
                // unique point) and then names another key.
                assert!(
                    matches!(
                        e,
                        CertifyError::Malformed { .. } | CertifyError::KeyMismatch(_)
                    ),
                    "blob {blob}, {len} bytes: {e}"
                );
            }
            let mut chain = case.chain.clone();
            chain[blob].push(0);
            let e = verify(&chain, &roots(), &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("1 bytes after")),
                "blob {blob}: {e}"
            );
            let mut chain = case.chain.clone();
            chain[blob] = vec![0; MAX_STRUCTURE_LEN + 1];
            let e = verify(&chain, &roots(), &case.key).unwrap_err();
            assert!(matches!(e, CertifyError::Malformed { .. }), "{e}");
        }
        for n in 0..4 {
            let e = verify(&case.chain[..n], &[], &case.key).unwrap_err();
            assert_eq!(e, CertifyError::Incomplete(n));
        }
        let mut long = case.chain.clone();
        long.push(roots()[0].clone());
        let e = verify(&long, &roots(), &case.key).unwrap_err();
        assert_eq!(e, CertifyError::UnexpectedLength(6));
    }

    #[test]
    fn a_name_algorithm_other_than_sha2_is_refused() {
        let mut case = plain();
        // TPMT_PUBLIC's nameAlg: SHA-1.
        case.chain[3][2..4].copy_from_slice(&0x0004u16.to_be_bytes());
        let e = verify(&case.chain, &[], &case.key).unwrap_err();
        assert!(
            matches!(&e, CertifyError::UnsupportedNameAlgorithm(a) if a == "Sha1"),
            "{e}"
        );
        assert_eq!(name(b"", HashingAlgorithm::Sm3_256), None);
        assert_eq!(name(b"", HashingAlgorithm::Sha384).unwrap().len(), 2 + 48);
    }

    #[test]
    fn firmware_versions_read_as_four_parts() {
        assert_eq!(
            firmware_version(0x0007_0055_11cb_0000),
            "7.85.4555.0 (0x0007005511cb0000)"
        );
        assert_eq!(firmware_version(0), "0.0.0.0 (0x0000000000000000)");
    }

    mod ek_position {
        //! EK certificates as vendors make them, and certificates that are
        //! not EK certificates, from a small test PKI.
        use super::super::*;
        use crate::x509::test_pki::{self, basic_constraints, ext};
        use std::str::FromStr as _;
        use x509_cert::der::asn1::{Any, SetOfVec, Utf8StringRef};
        use x509_cert::der::{Decode as _, Encode as _, Tag};
        use x509_cert::ext::Extension;
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages};
        use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::spki::SubjectPublicKeyInfoOwned;

        fn signer(seed: u8) -> p256::ecdsa::SigningKey {
            p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
        }

        fn spki(key: &p256::ecdsa::SigningKey) -> SubjectPublicKeyInfoOwned {
            test_pki::spki(key.verifying_key())
        }

        fn issue(
            by: &p256::ecdsa::SigningKey,
            issuer: Name,
            subject: Name,
            spki: SubjectPublicKeyInfoOwned,
            extensions: Vec<Extension>,
        ) -> Vec<u8> {
            test_pki::issue::<_, p256::ecdsa::DerSignature>(
                by,
                issuer,
                subject,
                SerialNumber::from(7u32),
                spki,
                extensions,
            )
        }

        fn name(s: &str) -> Name {
            Name::from_str(s).unwrap()
        }

        /// An EK certificate's extensions: an empty subject, so a critical
        /// subjectAltName naming the TPM (UTF8Strings, as TCG writes them);
        /// keyEncipherment only; tcg-kp-EKCertificate.
        fn ek_extensions() -> Vec<Extension> {
            let mut rdns = RdnSequence::default();
            for (oid, value) in [
                (TCG_AT_TPM_MANUFACTURER, "id:49465800"),
                (TCG_AT_TPM_MODEL, "SLB9672"),
                (TCG_AT_TPM_VERSION, "id:001A0004"),
            ] {
                let value = Any::new(
                    Tag::Utf8String,
                    Utf8StringRef::new(value).unwrap().as_bytes(),
                )
                .unwrap();
                let mut set = SetOfVec::new();
                set.insert(x509_cert::attr::AttributeTypeAndValue { oid, value })
                    .unwrap();
                rdns.push(RelativeDistinguishedName::from(set));
            }
            let dir = Name::from_der(&rdns.to_der().unwrap()).unwrap();
            let san = SubjectAltName(vec![GeneralName::DirectoryName(dir)]);
            vec![
                ext(ID_CE_SUBJECT_ALT_NAME, true, &san.to_der().unwrap()),
                ext(
                    crate::x509::ID_CE_KEY_USAGE,
                    true,
                    &KeyUsage(KeyUsages::KeyEncipherment.into())
                        .to_der()
                        .unwrap(),
                ),
                ext(
                    ID_CE_EXT_KEY_USAGE,
                    false,
                    &ExtendedKeyUsage(vec![TCG_KP_EK_CERTIFICATE])
                        .to_der()
                        .unwrap(),
                ),
            ]
        }

        const CA: &str = "CN=Test TPM EK Root";

        fn ca() -> (p256::ecdsa::SigningKey, Vec<u8>) {
            let key = signer(1);
            let extensions = vec![basic_constraints(true, None)];
            let der = issue(&key, name(CA), name(CA), spki(&key), extensions);
            (key, der)
        }

        fn check(extensions: Vec<Extension>) -> Result<EkReport, CertifyError> {
            let (ca_key, ca_der) = ca();
            let ek = issue(
                &ca_key,
                name(CA),
                Name::default(),
                spki(&signer(2)),
                extensions,
            );
            check_ek(&ek, &[ca_der])
        }

        #[test]
        fn a_vendor_style_ek_certificate_passes_and_names_the_tpm() {
            let r = check(ek_extensions()).unwrap();
            assert_eq!(r.subject, "");
            assert_eq!(r.root, CA);
            assert_eq!(r.manufacturer.as_deref(), Some("id:49465800"));
            assert_eq!(r.model.as_deref(), Some("SLB9672"));
            assert_eq!(r.version.as_deref(), Some("id:001A0004"));
            // Without an extendedKeyUsage at all (older EK certificates).
            let mut exts = ek_extensions();
            exts.pop();
            check(exts).unwrap();
        }

        #[test]
        fn a_certificate_for_another_purpose_is_not_an_ek_certificate() {
            let server_auth = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
            let mut exts = ek_extensions();
            exts[2] = ext(
                ID_CE_EXT_KEY_USAGE,
                false,
                &ExtendedKeyUsage(vec![server_auth]).to_der().unwrap(),
            );
            let e = check(exts).unwrap_err();
            assert!(
                matches!(&e, CertifyError::NotAnEkCertificate { reason, .. } if reason.contains("tcg-kp-EKCertificate")),
                "{e}"
            );
            // A CA certificate in the EK position.
            let mut exts = ek_extensions();
            exts.push(basic_constraints(true, None));
            let e = check(exts).unwrap_err();
            assert!(
                matches!(&e, CertifyError::NotAnEkCertificate { reason, .. } if reason.contains("CA")),
                "{e}"
            );
        }

        #[test]
        fn an_unknown_critical_extension_on_the_ek_certificate_is_refused() {
            let mut exts = ek_extensions();
            // nameConstraints, critical.
            exts.push(ext(
                ObjectIdentifier::new_unwrap("2.5.29.30"),
                true,
                &[0x30, 0x00],
            ));
            let e = check(exts).unwrap_err();
            assert!(
                matches!(
                    e,
                    CertifyError::Chain(ChainError::UnknownCriticalExtension { .. })
                ),
                "{e}"
            );
            // A subjectAltName that does not decode.
            let mut exts = ek_extensions();
            exts[0] = ext(ID_CE_SUBJECT_ALT_NAME, true, &[0x04, 0x00]);
            let e = check(exts).unwrap_err();
            assert!(
                matches!(e, CertifyError::Chain(ChainError::Malformed { .. })),
                "{e}"
            );
        }
    }
}
