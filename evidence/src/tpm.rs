//! Checking the TPM2_Certify evidence of a key: the TPM's attestation key
//! (AK) signed a statement that the key, named by its public area, lives in
//! that TPM and was certified for this key record.
//!
//! The evidence (kind [`crate::TPM2_CERTIFY`]) is, in order:
//!
//! | # | blob | as `tss-esapi` writes it |
//! |---|---|---|
//! | 0 | the TPMS_ATTEST TPM2_Certify returned (the TPM2B_ATTEST's buffer) | `Attest::marshall` |
//! | 1 | its TPMT_SIGNATURE by the AK: ECDSA P-256 with SHA-256 | `Signature::marshall` |
//! | 2 | the AK's TPMT_PUBLIC | `Public::marshall` |
//! | 3 | the key's TPMT_PUBLIC | `Public::marshall` |
//! | 4 | optional: the AK certificate (DER), or else the EK certificate (DER) from the TPM's NV | — |
//!
//! and TPM2_Certify's qualifyingData is the key's kid (32 bytes).
//!
//! Blob 4 is an AK certificate when its subjectPublicKeyInfo is the AK's
//! key (an EC P-256 key with the same point as the AK's public area), an
//! EK certificate otherwise. keybridge's AK is a primary in the endorsement
//! hierarchy made from a fixed template: the same key for every
//! certification on one TPM, so one AK certificate serves all its keys.
//!
//! Everything here is hostile input (it comes from the key record). The
//! TPM structures are read by [`wire`] (bounded, strict, see below): each
//! must be exactly one structure, with no trailing bytes and no second
//! reading of the same bytes. Certificates go through [`crate::x509`].
//!
//! What is checked:
//! - the statement is one the TPM made (magic TPM_GENERATED_VALUE) about
//!   TPM2_Certify (TPM_ST_ATTEST_CERTIFY), and the AK's signature over it
//!   verifies;
//! - the AK is a restricted ECC P-256 signing key, fixedTPM and
//!   fixedParent: a key that signs only what the TPM itself produced and
//!   cannot have been imported — *if* it is a TPM key at all: these are
//!   bits in a public area that anyone can write (see below);
//! - the certified name is the name of the key's public area (nameAlg and
//!   its digest: SHA-256, SHA-384 or SHA-512), that public area holds
//!   exactly `key`, and the statement's qualifying data is `key`'s kid;
//! - the key is an ECC P-256 signing key with fixedTPM, fixedParent,
//!   sensitiveDataOrigin and userWithAuth, neither restricted nor a
//!   decryption key;
//! - with roots, an AK certificate ([`Report::ak_certified`]): it is an end
//!   entity (not a CA), its keyUsage (if any) allows digitalSignature, it
//!   has no critical extension beyond basicConstraints, keyUsage,
//!   extendedKeyUsage, subjectAltName and subjectDirectoryAttributes, and
//!   it chains to the roots through CA certificates (see `check_ak_cert`);
//! - with roots and an EK certificate instead: it is an EK certificate and
//!   chains to them (see `check_ek`);
//! - with roots and neither: refused ([`CertifyError::NoEkCertificate`]).
//!
//! What binds the AK to genuine hardware is an **AK certificate** from a
//! CA the verifier trusts: an IAK certificate from the TPM's or the
//! computer's maker, or an AK certificate ("LAK") from the organization's
//! CA, issued after its own enrollment with credential activation (TCG,
//! "TPM 2.0 Keys for Device Identity and Attestation"). With one, the
//! statement is the word of a key that CA vouches is in a TPM. Any
//! certificate from the roots for the AK's key counts, so the roots given
//! must be CAs that certify only TPM attestation keys.
//!
//! What is not:
//! - an **EK certificate does not bind the AK**. It shows the TPM's maker
//!   and model, but EK certificates are public (read from any TPM's NV,
//!   published by vendors) and can be copied: anyone can write a software
//!   "AK" public area with the restricted and fixedTPM bits, sign a
//!   TPMS_ATTEST with it and attach a genuine EK certificate. Nothing here
//!   ties the AK to that EK (that needs TPM2_MakeCredential /
//!   TPM2_ActivateCredential with the EK, which keybridge does not do;
//!   [`Report::ak_bound_to_ek`] is always false). A verifier that requires
//!   hardware must require [`Report::ak_certified`];
//! - without roots, nothing: the AK is trusted on first use (most firmware
//!   TPMs have no EK certificate, and few computers come with an IAK
//!   certificate); blob 4 is only parsed as a certificate;
//! - the certificates' validity dates and revocation, and the statement's
//!   clock and reset counts: reported or ignored, not judged.
//!
//! # Why the TPM structures are read by hand
//!
//! `keybridge-backends` used to unmarshal them with `tss-esapi`, that is
//! with tpm2-tss's C unmarshallers (`Tss2_MU_*`), and the device verifier
//! must not link tpm2-tss. No maintained pure-Rust crate fitted:
//! `tss-esapi` wraps the C stack; `tpm2-protocol` is pure Rust (no_std,
//! no dependencies, no panics by design) and the one real candidate, but
//! young, its interface reworked across its 2025 releases (0.10 to 1.2),
//! and what it accepts (reserved bits, sizes, selectors) would still have
//! to be pinned down and cross-checked here for the three structures we
//! need, while pulling a fast-moving dependency into the device.
//! So [`wire`] is a small big-endian reader for exactly those (TPM 2.0
//! Library Part 2): TPMS_ATTEST of TPM2_Certify, TPMT_SIGNATURE and
//! TPMT_PUBLIC. Every read is bounded (the whole blob by
//! [`MAX_STRUCTURE_LEN`], each TPM2B by the size tpm2-tss gives its
//! buffer), sizes are added with checked arithmetic, unknown algorithm
//! identifiers and trailing bytes are refused, and it never panics.
//!
//! It accepts what tpm2-tss 3.2 with `tss-esapi` 7 accepted (unmarshal, and
//! marshal back to the same bytes), with one deliberate difference:
//! TPMA_OBJECT's reserved bits must be clear (tss-esapi keeps them and
//! marshals them back). The differential test in `keybridge-backends`
//! (`tpm::attestation::tests::differential`) runs both readers on the
//! swtpm fixtures and on every one-byte change and truncation of them, and
//! asserts that they agree, field by field.

use crate::x509::{
    ChainError, ID_EC_PUBLIC_KEY, Parsed, Roots, SECP256R1, curve_of, refuse_unknown_critical,
};
use keybridge_protocol::key::hex;
use keybridge_protocol::{Algorithm, PublicKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use wire::{HashAlg, ObjectAttributes, Public, PublicParameters, Signature, SignatureScheme};
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
    /// More blobs than the format has (the four and an AK or EK
    /// certificate).
    #[error(
        "the evidence holds {0} blobs; a TPM2_Certify statement has four and an optional AK or EK certificate"
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
    /// Roots were given, but there is no certificate (AK or EK) to check.
    #[error(
        "roots were given but the evidence holds no AK certificate (have the AK certified and pass its certificate with `keybridge keys request --ak-cert FILE`) and no EK certificate (the TPM had none in its NV, as most firmware TPMs); without roots the AK is trusted on first use"
    )]
    NoEkCertificate,
    /// The certificate in blob 4 is not for the AK's key, so it is taken
    /// for an EK certificate, and it is not one either.
    #[error("\"{subject}\" is not an EK certificate: {reason}")]
    NotAnEkCertificate {
        /// The certificate.
        subject: String,
        /// What gives it away.
        reason: String,
    },
    /// A certificate for the AK's key that may not vouch for it: a CA
    /// certificate, or one whose keyUsage excludes signatures.
    #[error("\"{subject}\" certifies the AK's key but is not an AK certificate: {reason}")]
    NotAnAkCertificate {
        /// The certificate.
        subject: String,
        /// What gives it away.
        reason: String,
    },
    /// The AK or EK certificate does not parse or does not chain to the
    /// roots.
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
    /// An EK certificate names the TPM's maker and model but does not bind
    /// the AK: see [`Report::ak_certified`].
    pub ek_certificate: Option<EkReport>,
    /// Whether an EK certificate (blob 4, for another key than the AK's)
    /// was in the evidence, checked or not.
    pub ek_certificate_present: bool,
    /// Always false: nothing ties the AK to the EK (keybridge does no
    /// credential activation). Kept for the report's readers; what binds
    /// the AK is [`Report::ak_certified`].
    pub ak_bound_to_ek: bool,
    /// Always false: the certificates' validity periods are not checked.
    pub validity_checked: bool,
    /// The AK certificate, when roots were given and it chained to them.
    pub ak_certificate: Option<AkReport>,
    /// Whether an AK certificate (blob 4, for the AK's key) was in the
    /// evidence, checked or not.
    pub ak_certificate_present: bool,
    /// Whether the AK is certified by the roots given: an AK certificate
    /// chained to them ([`Report::ak_certificate`]). The only thing here
    /// that binds the statement to a TPM the verifier trusts; without it,
    /// the statement could come from any key that claims a TPM AK's
    /// attributes.
    pub ak_certified: bool,
}

/// A verified AK certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AkReport {
    /// Its subject.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// The subject of the root the chain ends at.
    pub root: String,
    /// Subjects from the AK certificate to the root.
    pub chain: Vec<String>,
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
/// roots file, which the AK certificate or the EK certificate in the
/// evidence must chain to; empty = no certificate check, the AK is trusted
/// on first use. Nothing is fetched and the clock is not read.
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
    let certificate = rest.first();

    // The statement: what the TPM says, and that the TPM says it.
    let attest = wire::parse_attest(attest_bytes)?;
    let signature = wire::parse_signature(signature_bytes)?;
    let (ak, ak_name) = read_ak(ak_bytes)?;
    check_signature(attest_bytes, &signature, &ak)?;

    // The key: the one asked about, the object certified, this record's.
    let key_public = wire::parse_public(key_bytes, wire::KEY_PUBLIC)?;
    let point = p256_point(&key_public).map_err(|what| CertifyError::KeyMismatch(what.into()))?;
    if key.algorithm() != Algorithm::Es256 || point.as_slice() != key.raw_bytes().as_slice() {
        let other = PublicKey::p256_sec1(&point)
            .map(|k| format!("P-256 key {}", k.kid()))
            .unwrap_or_else(|_| "an invalid P-256 point".into());
        return Err(CertifyError::KeyMismatch(other));
    }
    let name_alg = key_public.name_alg;
    let key_name = name(key_bytes, name_alg)
        .ok_or_else(|| CertifyError::UnsupportedNameAlgorithm(format!("{name_alg:?}")))?;
    if attest.certified.name != key_name {
        return Err(CertifyError::NameMismatch {
            certified: hex(&attest.certified.name),
            computed: hex(&key_name),
        });
    }
    let kid = key.kid();
    if attest.extra_data.as_slice() != kid.0.as_slice() {
        return Err(CertifyError::WrongRecord {
            found: hex(&attest.extra_data),
            expected: kid.to_hex(),
        });
    }
    let attributes = key_public.attributes;
    check_key_attributes(attributes)?;

    // The AK's or the endorsement key's certificate: parsed in any case
    // (the format has nothing else in that position), checked when the
    // caller has roots for it.
    let certificate = match certificate {
        Some(der) => {
            let parsed = Parsed::new(der, CERTIFICATE)?;
            let for_ak = certifies(&parsed, &ak);
            Some((der, parsed, for_ak))
        }
        None => None,
    };
    let ak_certificate_present = matches!(certificate, Some((_, _, true)));
    let ek_certificate_present = matches!(certificate, Some((_, _, false)));
    let (ak_certificate, ek_certificate) = match certificate {
        _ if roots.is_empty() => (None, None),
        None => return Err(CertifyError::NoEkCertificate),
        Some((_, parsed, true)) => (Some(check_ak_cert(&parsed, roots)?), None),
        Some((der, _, false)) => {
            let ek = check_ek(der, roots).map_err(|e| match e {
                CertifyError::NotAnEkCertificate { subject, reason } => {
                    CertifyError::NotAnEkCertificate {
                        subject,
                        reason: format!(
                            "{reason} (nor is it an AK certificate: its key is not this AK's)"
                        ),
                    }
                }
                e => e,
            })?;
            (None, Some(ek))
        }
    };

    Ok(Report {
        ak_name: hex(&ak_name),
        qualified_signer: hex(&attest.qualified_signer),
        key_name: hex(&key_name),
        key_attributes: attribute_names(attributes),
        firmware: firmware_version(attest.firmware_version),
        ek_certificate,
        ek_certificate_present,
        ak_bound_to_ek: false,
        validity_checked: false,
        ak_certified: ak_certificate.is_some(),
        ak_certificate,
        ak_certificate_present,
    })
}

/// How blob 4 is named in errors before it is known to be an AK or an EK
/// certificate.
const CERTIFICATE: &str = "the certificate in the evidence (AK or EK certificate)";

/// The uncompressed SEC1 point (65 bytes) of an AK's public area (a
/// TPMT_PUBLIC, as blob 2 of the evidence), read and checked as
/// [`verify`] does: one well-formed structure, a restricted, fixedTPM,
/// fixedParent ECC P-256 signing key with a SHA-2 name algorithm. The
/// point's coordinates are padded to 32 bytes when the TPM dropped their
/// leading zeros.
pub fn ak_point(ak_public: &[u8]) -> Result<Vec<u8>, CertifyError> {
    let (ak, _) = read_ak(ak_public)?;
    Ok(ak.to_sec1_point(false).as_bytes().to_vec())
}

/// Whether the certificate `der` certifies the key of the AK whose public
/// area is `ak_public` (see [`ak_point`]): its subjectPublicKeyInfo is an
/// EC P-256 key with the same point. Only the key is compared: nothing
/// about the certificate is judged (its issuer, extensions and signature
/// are [`verify`]'s, with roots). Errors: an AK that [`verify`] would
/// refuse, or bytes that are not one certificate.
pub fn is_ak_certificate(der: &[u8], ak_public: &[u8]) -> Result<bool, CertifyError> {
    let (ak, _) = read_ak(ak_public)?;
    let parsed = Parsed::new(der, "the AK certificate")?;
    Ok(certifies(&parsed, &ak))
}

/// The AK's key and its name, from its public area as [`verify`] reads it.
fn read_ak(ak_bytes: &[u8]) -> Result<(p256::ecdsa::VerifyingKey, Vec<u8>), CertifyError> {
    let ak_public = wire::parse_public(ak_bytes, wire::AK_PUBLIC)?;
    let ak = check_ak(&ak_public)?;
    let ak_name = name(ak_bytes, ak_public.name_alg)
        .ok_or_else(|| CertifyError::UnsuitableAk("its name algorithm is not SHA-2".into()))?;
    Ok((ak, ak_name))
}

/// Whether `cert`'s subjectPublicKeyInfo is the AK's key: id-ecPublicKey
/// on secp256r1 with the AK's point (compared uncompressed; a compressed
/// point, which RFC 5480 allows, is decompressed first).
fn certifies(cert: &Parsed<'_>, ak: &p256::ecdsa::VerifyingKey) -> bool {
    let spki = cert.cert.tbs_certificate().subject_public_key_info();
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve_of(spki) != Some(SECP256R1) {
        return false;
    }
    let Some(bits) = spki.subject_public_key.as_bytes() else {
        return false;
    };
    p256::ecdsa::VerifyingKey::from_sec1_bytes(bits).is_ok_and(|key| key == *ak)
}

/// The AK's key, when it is one that can vouch for a statement.
fn check_ak(ak: &Public) -> Result<p256::ecdsa::VerifyingKey, CertifyError> {
    let unsuitable = |what: &str| CertifyError::UnsuitableAk(what.to_owned());
    let a = ak.attributes;
    let mut missing = Vec::new();
    if !a.restricted() {
        missing.push("restricted");
    }
    if !a.sign() {
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
    let PublicParameters::Ecc { curve, x, y, .. } = &public.parameters else {
        return Err("not an ECC key");
    };
    if *curve != wire::curve::NIST_P256 {
        return Err("an ECC key on another curve than P-256");
    }
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
    let Signature::Ecc {
        scheme: SignatureScheme::EcDsa,
        hash,
        r,
        s,
    } = signature
    else {
        return Err(CertifyError::UnsupportedSignature(format!(
            "{:?}",
            signature.scheme()
        )));
    };
    if *hash != HashAlg::Sha256 {
        return Err(CertifyError::UnsupportedSignature(format!(
            "ECDSA with {hash:?}"
        )));
    }
    // r and s are TPM2B sizes: a TPM may drop leading zero bytes, never add
    // any (a P-256 scalar is 32 bytes).
    let mut rs = [0u8; 64];
    for (half, scalar, at) in [("r", r, 0), ("s", s, 32)] {
        if scalar.len() > 32 {
            return Err(CertifyError::Malformed {
                part: wire::SIGNATURE,
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
fn name(public: &[u8], alg: HashAlg) -> Option<Vec<u8>> {
    let digest: Vec<u8> = match alg {
        HashAlg::Sha256 => Sha256::digest(public).to_vec(),
        HashAlg::Sha384 => Sha384::digest(public).to_vec(),
        HashAlg::Sha512 => Sha512::digest(public).to_vec(),
        _ => return None,
    };
    let mut out = alg.id().to_be_bytes().to_vec();
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
    if !a.sign() {
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
        (a.sign(), "sign"),
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

/// Checks an AK certificate (one whose key is the AK's, see `certifies`)
/// and its path to `roots`.
///
/// An AK certificate is an end entity: not a CA (basicConstraints cA false
/// or absent), a keyUsage, if any, that allows digitalSignature (the AK
/// signs), and no critical extension beyond basicConstraints, keyUsage,
/// extendedKeyUsage, subjectAltName and subjectDirectoryAttributes (TCG's
/// IAK certificates name the device in a subjectAltName, critical when
/// their subject is empty). Every certificate above it must be a CA
/// ([`crate::x509`]). Its extendedKeyUsage is not required to be
/// tcg-kp-AIKCertificate: organizations' AK certificates vary, and the
/// roots given are CAs that certify TPM keys.
fn check_ak_cert(ak: &Parsed<'_>, roots: &[Vec<u8>]) -> Result<AkReport, CertifyError> {
    let not_an_ak = |reason: &str| CertifyError::NotAnAkCertificate {
        subject: ak.subject_name(),
        reason: reason.to_owned(),
    };
    if let Some(BasicConstraints { ca: true, .. }) = ak.basic_constraints()? {
        return Err(not_an_ak("it is a CA certificate"));
    }
    if let Some(ku) = ak.key_usage()?
        && !ku.digital_signature()
    {
        return Err(not_an_ak(
            "its keyUsage does not allow digitalSignature, and the AK signs",
        ));
    }
    refuse_unknown_critical(
        ak,
        &[
            ID_CE_SUBJECT_ALT_NAME,
            ID_CE_EXT_KEY_USAGE,
            ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES,
        ],
    )?;
    let roots = Roots::new(roots)?;
    let path = roots.path_from(ak)?;
    let top = path.last().expect("a found path ends at a root");
    let mut chain = vec![ak.subject_name()];
    chain.extend(path.iter().map(|c| c.subject_name()));
    Ok(AkReport {
        subject: ak.subject_name(),
        issuer: ak.issuer_name(),
        root: top.subject_name(),
        chain,
    })
}

/// A directoryName attribute's text (a DirectoryString; TCG uses
/// UTF8String), or its DER in hex when it is not one.
fn directory_string(value: &x509_cert::attr::AttributeValue) -> String {
    match value.decode_as::<DirectoryString>() {
        Ok(s) => s.value().into_owned(),
        Err(_) => hex(value.value()),
    }
}

pub mod wire {
    //! The TPM 2.0 structures of TPM2_Certify evidence (TPM 2.0 Library
    //! Part 2, "Structures"), read from their canonical big-endian
    //! marshalling: [`parse_attest`] (TPMS_ATTEST of TPM_ST_ATTEST_CERTIFY),
    //! [`parse_signature`] (TPMT_SIGNATURE) and [`parse_public`]
    //! (TPMT_PUBLIC).
    //!
    //! Each reader takes the whole blob: at most [`MAX_STRUCTURE_LEN`]
    //! bytes, exactly one structure (bytes after it are refused, so nothing
    //! outside what was read can be covered by a name or a signature).
    //! Every TPM2B is bounded by the size tpm2-tss 3.2 gives its buffer (a
    //! TPM never marshals more), selectors must be algorithms the structure
    //! can hold, and values with a closed set of meanings (hash algorithms,
    //! curves, key sizes, modes, TPMI_YES_NO) must be one of them. Errors
    //! are [`CertifyError::Malformed`], naming the field, except for a
    //! signature algorithm whose layout is unknown here:
    //! [`CertifyError::UnsupportedSignature`].
    //!
    //! What tpm2-tss/tss-esapi accept and this refuses: TPMA_OBJECT
    //! reserved bits. What both accept although Part 2 forbids it (it
    //! changes nothing keybridge checks): TPM_ALG_NULL as the hash of a
    //! TPMS_SCHEME_HASH. What both refuse although Part 2 allows it: KDF2
    //! as a TPMT_KDF_SCHEME, SHA-3 in a TPMT_HA (tpm2-tss 3.2 has no
    //! layout for either), extraData longer than 64 bytes (tpm2-tss's
    //! TPM2B_DATA is sizeof(TPMU_HA), not sizeof(TPMT_HA)).

    use super::{CertifyError, MAX_STRUCTURE_LEN, TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY};

    /// The blob names used in [`CertifyError::Malformed`].
    pub const ATTEST: &str = "the attestation (TPMS_ATTEST)";
    /// See [`ATTEST`].
    pub const SIGNATURE: &str = "the signature (TPMT_SIGNATURE)";
    /// See [`ATTEST`].
    pub const AK_PUBLIC: &str = "the AK's public area (TPMT_PUBLIC)";
    /// See [`ATTEST`].
    pub const KEY_PUBLIC: &str = "the key's public area (TPMT_PUBLIC)";

    /// TPM2B_NAME's buffer: sizeof(TPMU_NAME) in tpm2-tss (a TPMT_HA of
    /// 2 + 64 bytes or a 4-byte handle, padded).
    pub const MAX_NAME: usize = 68;
    /// TPM2B_DATA's buffer in tpm2-tss: sizeof(TPMU_HA).
    pub const MAX_DATA: usize = 64;
    /// TPM2B_DIGEST's buffer: sizeof(TPMU_HA).
    pub const MAX_DIGEST: usize = 64;
    /// TPM2B_ECC_PARAMETER's buffer: MAX_ECC_KEY_BYTES.
    pub const MAX_ECC_KEY_BYTES: usize = 128;
    /// TPM2B_PUBLIC_KEY_RSA's buffer: MAX_RSA_KEY_BYTES.
    pub const MAX_RSA_KEY_BYTES: usize = 512;

    /// Algorithm identifiers (TCG Algorithm Registry; Part 2 §6.3).
    pub mod alg {
        #![allow(missing_docs)]
        pub const RSA: u16 = 0x0001;
        pub const SHA1: u16 = 0x0004;
        pub const HMAC: u16 = 0x0005;
        pub const AES: u16 = 0x0006;
        pub const MGF1: u16 = 0x0007;
        pub const KEYEDHASH: u16 = 0x0008;
        pub const XOR: u16 = 0x000a;
        pub const SHA256: u16 = 0x000b;
        pub const SHA384: u16 = 0x000c;
        pub const SHA512: u16 = 0x000d;
        pub const NULL: u16 = 0x0010;
        pub const SM3_256: u16 = 0x0012;
        pub const SM4: u16 = 0x0013;
        pub const RSASSA: u16 = 0x0014;
        pub const RSAES: u16 = 0x0015;
        pub const RSAPSS: u16 = 0x0016;
        pub const OAEP: u16 = 0x0017;
        pub const ECDSA: u16 = 0x0018;
        pub const ECDH: u16 = 0x0019;
        pub const ECDAA: u16 = 0x001a;
        pub const SM2: u16 = 0x001b;
        pub const ECSCHNORR: u16 = 0x001c;
        pub const ECMQV: u16 = 0x001d;
        pub const KDF1_SP800_56A: u16 = 0x0020;
        pub const KDF2: u16 = 0x0021;
        pub const KDF1_SP800_108: u16 = 0x0022;
        pub const ECC: u16 = 0x0023;
        pub const SYMCIPHER: u16 = 0x0025;
        pub const CAMELLIA: u16 = 0x0026;
        pub const SHA3_256: u16 = 0x0027;
        pub const SHA3_384: u16 = 0x0028;
        pub const SHA3_512: u16 = 0x0029;
        pub const CTR: u16 = 0x0040;
        pub const OFB: u16 = 0x0041;
        pub const CBC: u16 = 0x0042;
        pub const CFB: u16 = 0x0043;
        pub const ECB: u16 = 0x0044;
    }

    /// TPM_ECC_CURVE values (Part 2 §6.4).
    pub mod curve {
        #![allow(missing_docs)]
        pub const NIST_P192: u16 = 0x0001;
        pub const NIST_P224: u16 = 0x0002;
        pub const NIST_P256: u16 = 0x0003;
        pub const NIST_P384: u16 = 0x0004;
        pub const NIST_P521: u16 = 0x0005;
        pub const BN_P256: u16 = 0x0010;
        pub const BN_P638: u16 = 0x0011;
        pub const SM2_P256: u16 = 0x0020;
        /// The curves a TPMS_ECC_PARMS may name.
        pub const ALL: [u16; 8] = [
            NIST_P192, NIST_P224, NIST_P256, NIST_P384, NIST_P521, BN_P256, BN_P638, SM2_P256,
        ];
    }

    /// A TPMI_ALG_HASH (with TPM_ALG_NULL where the field allows it). The
    /// names are tss-esapi's `HashingAlgorithm`'s, which error messages
    /// show (`Sha1`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[allow(missing_docs)]
    pub enum HashAlg {
        Sha1,
        Sha256,
        Sha384,
        Sha512,
        Sm3_256,
        Sha3_256,
        Sha3_384,
        Sha3_512,
        Null,
    }

    impl HashAlg {
        /// The hash algorithm of a TPM_ALG_ID, if it is one.
        pub fn from_id(id: u16) -> Option<Self> {
            Some(match id {
                alg::SHA1 => HashAlg::Sha1,
                alg::SHA256 => HashAlg::Sha256,
                alg::SHA384 => HashAlg::Sha384,
                alg::SHA512 => HashAlg::Sha512,
                alg::SM3_256 => HashAlg::Sm3_256,
                alg::SHA3_256 => HashAlg::Sha3_256,
                alg::SHA3_384 => HashAlg::Sha3_384,
                alg::SHA3_512 => HashAlg::Sha3_512,
                alg::NULL => HashAlg::Null,
                _ => return None,
            })
        }

        /// Its TPM_ALG_ID.
        pub fn id(self) -> u16 {
            match self {
                HashAlg::Sha1 => alg::SHA1,
                HashAlg::Sha256 => alg::SHA256,
                HashAlg::Sha384 => alg::SHA384,
                HashAlg::Sha512 => alg::SHA512,
                HashAlg::Sm3_256 => alg::SM3_256,
                HashAlg::Sha3_256 => alg::SHA3_256,
                HashAlg::Sha3_384 => alg::SHA3_384,
                HashAlg::Sha3_512 => alg::SHA3_512,
                HashAlg::Null => alg::NULL,
            }
        }
    }

    /// A TPMI_ALG_SIG_SCHEME. The names are tss-esapi's
    /// `SignatureSchemeAlgorithm`'s, which error messages show
    /// (`EcSchnorr`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[allow(missing_docs)]
    pub enum SignatureScheme {
        RsaSsa,
        RsaPss,
        EcDsa,
        EcDaa,
        Sm2,
        EcSchnorr,
        Hmac,
        Null,
    }

    /// TPMA_OBJECT (Part 2 §8.3), the raw bits. [`parse_public`] refuses
    /// reserved bits, so only the named ones can be set.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ObjectAttributes(pub u32);

    impl ObjectAttributes {
        /// Bit 1: the object cannot be duplicated.
        pub const FIXED_TPM: u32 = 1 << 1;
        /// Bit 2: flushed at TPM Reset and Restart.
        pub const ST_CLEAR: u32 = 1 << 2;
        /// Bit 4: the object's parent cannot change.
        pub const FIXED_PARENT: u32 = 1 << 4;
        /// Bit 5: the TPM made the sensitive data.
        pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
        /// Bit 6: the auth value authorizes the user role.
        pub const USER_WITH_AUTH: u32 = 1 << 6;
        /// Bit 7: the admin role needs a policy session.
        pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
        /// Bit 10: not subject to dictionary-attack protection.
        pub const NO_DA: u32 = 1 << 10;
        /// Bit 11: duplication needs an inner wrapper.
        pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
        /// Bit 16: signs or decrypts only TPM-made structures.
        pub const RESTRICTED: u32 = 1 << 16;
        /// Bit 17: a decryption key.
        pub const DECRYPT: u32 = 1 << 17;
        /// Bit 18: a signing (or encryption) key.
        pub const SIGN: u32 = 1 << 18;
        /// Bit 19: may sign X.509 certificates (TPM2_CertifyX509 only).
        pub const X509_SIGN: u32 = 1 << 19;
        /// Every defined bit; the others are reserved and must be clear.
        pub const DEFINED: u32 = Self::FIXED_TPM
            | Self::ST_CLEAR
            | Self::FIXED_PARENT
            | Self::SENSITIVE_DATA_ORIGIN
            | Self::USER_WITH_AUTH
            | Self::ADMIN_WITH_POLICY
            | Self::NO_DA
            | Self::ENCRYPTED_DUPLICATION
            | Self::RESTRICTED
            | Self::DECRYPT
            | Self::SIGN
            | Self::X509_SIGN;

        fn has(self, bit: u32) -> bool {
            self.0 & bit != 0
        }
        /// fixedTPM.
        pub fn fixed_tpm(self) -> bool {
            self.has(Self::FIXED_TPM)
        }
        /// stClear.
        pub fn st_clear(self) -> bool {
            self.has(Self::ST_CLEAR)
        }
        /// fixedParent.
        pub fn fixed_parent(self) -> bool {
            self.has(Self::FIXED_PARENT)
        }
        /// sensitiveDataOrigin.
        pub fn sensitive_data_origin(self) -> bool {
            self.has(Self::SENSITIVE_DATA_ORIGIN)
        }
        /// userWithAuth.
        pub fn user_with_auth(self) -> bool {
            self.has(Self::USER_WITH_AUTH)
        }
        /// adminWithPolicy.
        pub fn admin_with_policy(self) -> bool {
            self.has(Self::ADMIN_WITH_POLICY)
        }
        /// noDA.
        pub fn no_da(self) -> bool {
            self.has(Self::NO_DA)
        }
        /// encryptedDuplication.
        pub fn encrypted_duplication(self) -> bool {
            self.has(Self::ENCRYPTED_DUPLICATION)
        }
        /// restricted.
        pub fn restricted(self) -> bool {
            self.has(Self::RESTRICTED)
        }
        /// decrypt.
        pub fn decrypt(self) -> bool {
            self.has(Self::DECRYPT)
        }
        /// sign (sign/encrypt).
        pub fn sign(self) -> bool {
            self.has(Self::SIGN)
        }
        /// x509sign.
        pub fn x509_sign(self) -> bool {
            self.has(Self::X509_SIGN)
        }
    }

    /// A TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY (its magic and type are
    /// those constants, checked by [`parse_attest`]).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Attest {
        /// qualifiedSigner (TPM2B_NAME).
        pub qualified_signer: Vec<u8>,
        /// extraData (TPM2B_DATA): TPM2_Certify's qualifyingData.
        pub extra_data: Vec<u8>,
        /// clockInfo.
        pub clock_info: ClockInfo,
        /// firmwareVersion.
        pub firmware_version: u64,
        /// attested.certify.
        pub certified: CertifyInfo,
    }

    /// TPMS_CLOCK_INFO.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ClockInfo {
        /// clock (milliseconds).
        pub clock: u64,
        /// resetCount.
        pub reset_count: u32,
        /// restartCount.
        pub restart_count: u32,
        /// safe (TPMI_YES_NO).
        pub safe: bool,
    }

    /// TPMS_CERTIFY_INFO.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CertifyInfo {
        /// name (TPM2B_NAME): the certified object's name.
        pub name: Vec<u8>,
        /// qualifiedName (TPM2B_NAME).
        pub qualified_name: Vec<u8>,
    }

    /// A TPMT_SIGNATURE.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Signature {
        /// ECDSA, ECDAA, SM2 or ECSchnorr: TPMS_SIGNATURE_ECC.
        Ecc {
            /// sigAlg.
            scheme: SignatureScheme,
            /// hash.
            hash: HashAlg,
            /// signatureR (TPM2B_ECC_PARAMETER).
            r: Vec<u8>,
            /// signatureS (TPM2B_ECC_PARAMETER).
            s: Vec<u8>,
        },
        /// RSASSA or RSAPSS: TPMS_SIGNATURE_RSA.
        Rsa {
            /// sigAlg.
            scheme: SignatureScheme,
            /// hash.
            hash: HashAlg,
            /// sig (TPM2B_PUBLIC_KEY_RSA).
            sig: Vec<u8>,
        },
        /// HMAC: a TPMT_HA.
        Hmac {
            /// hashAlg.
            hash: HashAlg,
            /// The digest, of that algorithm's size.
            digest: Vec<u8>,
        },
        /// TPM_ALG_NULL: no signature.
        Null,
    }

    impl Signature {
        /// Its sigAlg.
        pub fn scheme(&self) -> SignatureScheme {
            match self {
                Signature::Ecc { scheme, .. } | Signature::Rsa { scheme, .. } => *scheme,
                Signature::Hmac { .. } => SignatureScheme::Hmac,
                Signature::Null => SignatureScheme::Null,
            }
        }
    }

    /// A TPMT_PUBLIC.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Public {
        /// nameAlg (TPM_ALG_NULL is allowed).
        pub name_alg: HashAlg,
        /// objectAttributes.
        pub attributes: ObjectAttributes,
        /// authPolicy (TPM2B_DIGEST).
        pub auth_policy: Vec<u8>,
        /// type, parameters and unique.
        pub parameters: PublicParameters,
    }

    impl Public {
        /// Its type (TPM_ALG_ECC, …).
        pub fn type_id(&self) -> u16 {
            match self.parameters {
                PublicParameters::Ecc { .. } => alg::ECC,
                PublicParameters::Rsa { .. } => alg::RSA,
                PublicParameters::KeyedHash { .. } => alg::KEYEDHASH,
                PublicParameters::SymCipher { .. } => alg::SYMCIPHER,
            }
        }
    }

    /// TPMT_PUBLIC's parameters (TPMU_PUBLIC_PARMS) and unique
    /// (TPMU_PUBLIC_ID), by its type.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PublicParameters {
        /// TPM_ALG_ECC: TPMS_ECC_PARMS and a TPMS_ECC_POINT.
        Ecc {
            /// symmetric (`None`: TPM_ALG_NULL).
            symmetric: Option<SymmetricObject>,
            /// scheme (`None`: TPM_ALG_NULL).
            scheme: Option<AsymScheme>,
            /// curveID.
            curve: u16,
            /// kdf (`None`: TPM_ALG_NULL).
            kdf: Option<KdfScheme>,
            /// unique.x.
            x: Vec<u8>,
            /// unique.y.
            y: Vec<u8>,
        },
        /// TPM_ALG_RSA: TPMS_RSA_PARMS and the modulus.
        Rsa {
            /// symmetric (`None`: TPM_ALG_NULL).
            symmetric: Option<SymmetricObject>,
            /// scheme (`None`: TPM_ALG_NULL).
            scheme: Option<AsymScheme>,
            /// keyBits.
            key_bits: u16,
            /// exponent (0: 2^16 + 1).
            exponent: u32,
            /// unique (TPM2B_PUBLIC_KEY_RSA).
            modulus: Vec<u8>,
        },
        /// TPM_ALG_KEYEDHASH: TPMS_KEYEDHASH_PARMS and a TPM2B_DIGEST.
        KeyedHash {
            /// scheme (`None`: TPM_ALG_NULL).
            scheme: Option<KeyedHashScheme>,
            /// unique.
            unique: Vec<u8>,
        },
        /// TPM_ALG_SYMCIPHER: TPMS_SYMCIPHER_PARMS and a TPM2B_DIGEST.
        SymCipher {
            /// sym (`None`: TPM_ALG_NULL).
            symmetric: Option<SymmetricObject>,
            /// unique.
            unique: Vec<u8>,
        },
    }

    /// A TPMT_SYM_DEF_OBJECT other than TPM_ALG_NULL: AES, SM4 or
    /// Camellia.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SymmetricObject {
        /// algorithm.
        pub algorithm: u16,
        /// keyBits (128, 192 or 256; SM4: 128).
        pub key_bits: u16,
        /// mode (TPM_ALG_CTR … TPM_ALG_ECB, or TPM_ALG_NULL).
        pub mode: u16,
    }

    /// A TPMT_ECC_SCHEME or TPMT_RSA_SCHEME other than TPM_ALG_NULL.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AsymScheme {
        /// scheme.
        pub scheme: u16,
        /// details.hashAlg (`None` for RSAES, which has no details).
        pub hash: Option<HashAlg>,
        /// details.count (ECDAA only).
        pub count: Option<u16>,
    }

    /// A TPMT_KDF_SCHEME other than TPM_ALG_NULL.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct KdfScheme {
        /// scheme (MGF1, KDF1_SP800_56A or KDF1_SP800_108).
        pub scheme: u16,
        /// details.hashAlg.
        pub hash: HashAlg,
    }

    /// A TPMT_KEYEDHASH_SCHEME other than TPM_ALG_NULL.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum KeyedHashScheme {
        /// TPM_ALG_HMAC: TPMS_SCHEME_HMAC.
        Hmac {
            /// hashAlg.
            hash: HashAlg,
        },
        /// TPM_ALG_XOR: TPMS_SCHEME_XOR.
        Xor {
            /// hashAlg.
            hash: HashAlg,
            /// kdf (a TPMI_ALG_KDF).
            kdf: u16,
        },
    }

    /// Refuses a blob over [`MAX_STRUCTURE_LEN`].
    pub(super) fn check_size(bytes: &[u8], part: &'static str) -> Result<(), CertifyError> {
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

    /// Reads a TPMS_ATTEST of TPM2_Certify, its magic and type checked
    /// first so that a statement of the wrong kind is named as such
    /// ([`CertifyError::NotTpmGenerated`], [`CertifyError::NotCertify`]).
    pub fn parse_attest(bytes: &[u8]) -> Result<Attest, CertifyError> {
        check_size(bytes, ATTEST)?;
        let mut r = Reader::new(bytes, ATTEST);
        if bytes.len() < 6 {
            return Err(r.malformed(format!("{} bytes, shorter than its header", bytes.len())));
        }
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(CertifyError::NotTpmGenerated(magic));
        }
        let kind = r.u16("type")?;
        if kind != TPM_ST_ATTEST_CERTIFY {
            return Err(CertifyError::NotCertify(kind));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?;
        let extra_data = r.tpm2b("extraData", MAX_DATA)?;
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            other => {
                return Err(r.malformed(format!(
                    "its clockInfo.safe is {other}, neither NO (0) nor YES (1)"
                )));
            }
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let name = r.tpm2b("attested.name", MAX_NAME)?;
        let qualified_name = r.tpm2b("attested.qualifiedName", MAX_NAME)?;
        r.finish()?;
        Ok(Attest {
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            certified: CertifyInfo {
                name,
                qualified_name,
            },
        })
    }

    /// Reads a TPMT_SIGNATURE of any scheme TPMU_SIGNATURE holds; another
    /// sigAlg is [`CertifyError::UnsupportedSignature`], its layout unknown.
    pub fn parse_signature(bytes: &[u8]) -> Result<Signature, CertifyError> {
        check_size(bytes, SIGNATURE)?;
        let mut r = Reader::new(bytes, SIGNATURE);
        let sig_alg = r.u16("sigAlg")?;
        let signature = match sig_alg {
            alg::ECDSA | alg::ECDAA | alg::SM2 | alg::ECSCHNORR => {
                let scheme = match sig_alg {
                    alg::ECDSA => SignatureScheme::EcDsa,
                    alg::ECDAA => SignatureScheme::EcDaa,
                    alg::SM2 => SignatureScheme::Sm2,
                    _ => SignatureScheme::EcSchnorr,
                };
                let hash = r.hash("hash", false)?;
                let sig_r = r.tpm2b("signatureR", MAX_ECC_KEY_BYTES)?;
                let sig_s = r.tpm2b("signatureS", MAX_ECC_KEY_BYTES)?;
                Signature::Ecc {
                    scheme,
                    hash,
                    r: sig_r,
                    s: sig_s,
                }
            }
            alg::RSASSA | alg::RSAPSS => {
                let scheme = if sig_alg == alg::RSASSA {
                    SignatureScheme::RsaSsa
                } else {
                    SignatureScheme::RsaPss
                };
                let hash = r.hash("hash", false)?;
                let sig = r.tpm2b("sig", MAX_RSA_KEY_BYTES)?;
                Signature::Rsa { scheme, hash, sig }
            }
            alg::HMAC => {
                let hash = r.hash("hmac.hashAlg", false)?;
                let len = match hash {
                    HashAlg::Sha1 => 20,
                    HashAlg::Sha256 | HashAlg::Sm3_256 => 32,
                    HashAlg::Sha384 => 48,
                    HashAlg::Sha512 => 64,
                    other => {
                        return Err(r.malformed(format!(
                            "its hmac.hashAlg is {other:?}, which a TPMT_HA here does not hold"
                        )));
                    }
                };
                let digest = r.take(len, "hmac.digest")?.to_vec();
                Signature::Hmac { hash, digest }
            }
            alg::NULL => Signature::Null,
            other => {
                return Err(CertifyError::UnsupportedSignature(format!(
                    "algorithm {other:#06x}"
                )));
            }
        };
        r.finish()?;
        Ok(signature)
    }

    /// Reads a TPMT_PUBLIC (`part` names it in errors: [`AK_PUBLIC`] or
    /// [`KEY_PUBLIC`]).
    pub fn parse_public(bytes: &[u8], part: &'static str) -> Result<Public, CertifyError> {
        check_size(bytes, part)?;
        let mut r = Reader::new(bytes, part);
        let kind = r.u16("type")?;
        let name_alg = r.hash("nameAlg", true)?;
        let attributes = ObjectAttributes(r.u32("objectAttributes")?);
        let reserved = attributes.0 & !ObjectAttributes::DEFINED;
        if reserved != 0 {
            return Err(r.malformed(format!(
                "its objectAttributes set reserved bits ({reserved:#010x})"
            )));
        }
        let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?;
        let parameters = match kind {
            alg::ECC => {
                let symmetric = r.symmetric("parameters.symmetric")?;
                let scheme = r.asym_scheme("parameters.scheme", false)?;
                let curve = r.u16("parameters.curveID")?;
                if !curve::ALL.contains(&curve) {
                    return Err(r.malformed(format!(
                        "its parameters.curveID is {curve:#06x}, not a TPM_ECC_CURVE"
                    )));
                }
                let kdf = r.kdf("parameters.kdf")?;
                let x = r.tpm2b("unique.x", MAX_ECC_KEY_BYTES)?;
                let y = r.tpm2b("unique.y", MAX_ECC_KEY_BYTES)?;
                PublicParameters::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            alg::RSA => {
                let symmetric = r.symmetric("parameters.symmetric")?;
                let scheme = r.asym_scheme("parameters.scheme", true)?;
                let key_bits = r.u16("parameters.keyBits")?;
                if !matches!(key_bits, 1024 | 2048 | 3072 | 4096) {
                    return Err(r.malformed(format!(
                        "its parameters.keyBits is {key_bits}, not an RSA key size"
                    )));
                }
                let exponent = r.u32("parameters.exponent")?;
                let modulus = r.tpm2b("unique", MAX_RSA_KEY_BYTES)?;
                PublicParameters::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            alg::KEYEDHASH => {
                let what = "parameters.scheme";
                let scheme = match r.u16(what)? {
                    alg::NULL => None,
                    alg::HMAC => Some(KeyedHashScheme::Hmac {
                        hash: r.hash("parameters.scheme.hashAlg", true)?,
                    }),
                    alg::XOR => {
                        let hash = r.hash("parameters.scheme.hashAlg", true)?;
                        let kdf = r.u16("parameters.scheme.kdf")?;
                        if !matches!(
                            kdf,
                            alg::MGF1
                                | alg::KDF1_SP800_56A
                                | alg::KDF2
                                | alg::KDF1_SP800_108
                                | alg::NULL
                        ) {
                            return Err(r.malformed(format!(
                                "its parameters.scheme.kdf is {kdf:#06x}, not a key derivation function"
                            )));
                        }
                        Some(KeyedHashScheme::Xor { hash, kdf })
                    }
                    other => return Err(r.unknown(what, other)),
                };
                let unique = r.tpm2b("unique", MAX_DIGEST)?;
                PublicParameters::KeyedHash { scheme, unique }
            }
            alg::SYMCIPHER => {
                let symmetric = r.symmetric("parameters.sym")?;
                let unique = r.tpm2b("unique", MAX_DIGEST)?;
                PublicParameters::SymCipher { symmetric, unique }
            }
            other => {
                return Err(r.malformed(format!(
                    "its type is {other:#06x}, not RSA, ECC, KEYEDHASH or SYMCIPHER"
                )));
            }
        };
        r.finish()?;
        Ok(Public {
            name_alg,
            attributes,
            auth_policy,
            parameters,
        })
    }

    /// A cursor over one blob. Every read is bounds-checked: running out
    /// of bytes is an error naming the field, never a panic.
    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
        part: &'static str,
    }

    impl<'a> Reader<'a> {
        fn new(bytes: &'a [u8], part: &'static str) -> Self {
            Reader { bytes, at: 0, part }
        }

        fn malformed(&self, reason: String) -> CertifyError {
            CertifyError::Malformed {
                part: self.part,
                reason,
            }
        }

        fn unknown(&self, what: &str, id: u16) -> CertifyError {
            self.malformed(format!(
                "its {what} is {id:#06x}, not an algorithm it may hold"
            ))
        }

        /// The next `n` bytes.
        fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CertifyError> {
            let next = self
                .at
                .checked_add(n)
                .and_then(|end| Some((end, self.bytes.get(self.at..end)?)));
            match next {
                Some((end, taken)) => {
                    self.at = end;
                    Ok(taken)
                }
                None => {
                    Err(self.malformed(format!("{} bytes end inside its {what}", self.bytes.len())))
                }
            }
        }

        fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CertifyError> {
            let taken = self.take(N, what)?;
            <[u8; N]>::try_from(taken).map_err(|_| self.malformed(format!("its {what} is cut")))
        }

        fn u8(&mut self, what: &str) -> Result<u8, CertifyError> {
            Ok(u8::from_be_bytes(self.array(what)?))
        }

        fn u16(&mut self, what: &str) -> Result<u16, CertifyError> {
            Ok(u16::from_be_bytes(self.array(what)?))
        }

        fn u32(&mut self, what: &str) -> Result<u32, CertifyError> {
            Ok(u32::from_be_bytes(self.array(what)?))
        }

        fn u64(&mut self, what: &str) -> Result<u64, CertifyError> {
            Ok(u64::from_be_bytes(self.array(what)?))
        }

        /// A TPM2B: a 16-bit size, at most `max`, then that many bytes.
        fn tpm2b(&mut self, what: &str, max: usize) -> Result<Vec<u8>, CertifyError> {
            let size = usize::from(self.u16(what)?);
            if size > max {
                return Err(self.malformed(format!(
                    "its {what} is {size} bytes, more than the {max} it may hold"
                )));
            }
            Ok(self.take(size, what)?.to_vec())
        }

        /// A TPMI_ALG_HASH, with TPM_ALG_NULL when `null` allows it.
        fn hash(&mut self, what: &str, null: bool) -> Result<HashAlg, CertifyError> {
            let id = self.u16(what)?;
            match HashAlg::from_id(id) {
                Some(HashAlg::Null) if !null => Err(self.malformed(format!(
                    "its {what} is TPM_ALG_NULL, where a hash algorithm is required"
                ))),
                Some(hash) => Ok(hash),
                None => {
                    Err(self.malformed(format!("its {what} is {id:#06x}, not a hash algorithm")))
                }
            }
        }

        /// A TPMT_SYM_DEF_OBJECT: AES, SM4, Camellia or TPM_ALG_NULL.
        fn symmetric(&mut self, what: &str) -> Result<Option<SymmetricObject>, CertifyError> {
            let algorithm = self.u16(what)?;
            let sizes: &[u16] = match algorithm {
                alg::NULL => return Ok(None),
                alg::AES | alg::CAMELLIA => &[128, 192, 256],
                alg::SM4 => &[128],
                other => return Err(self.unknown(what, other)),
            };
            let key_bits = self.u16(&format!("{what}.keyBits"))?;
            if !sizes.contains(&key_bits) {
                return Err(self.malformed(format!(
                    "its {what}.keyBits is {key_bits}, not a key size of {algorithm:#06x}"
                )));
            }
            let mode = self.u16(&format!("{what}.mode"))?;
            if !matches!(
                mode,
                alg::CTR | alg::OFB | alg::CBC | alg::CFB | alg::ECB | alg::NULL
            ) {
                return Err(self.malformed(format!(
                    "its {what}.mode is {mode:#06x}, not a block cipher mode"
                )));
            }
            Ok(Some(SymmetricObject {
                algorithm,
                key_bits,
                mode,
            }))
        }

        /// A TPMT_ECC_SCHEME (`rsa` false) or TPMT_RSA_SCHEME (`rsa`
        /// true). Their hashAlg may be TPM_ALG_NULL, as tss-esapi reads it.
        fn asym_scheme(
            &mut self,
            what: &str,
            rsa: bool,
        ) -> Result<Option<AsymScheme>, CertifyError> {
            let scheme = self.u16(what)?;
            let hash_what = &format!("{what}.details.hashAlg");
            let (hash, count) = match (scheme, rsa) {
                (alg::NULL, _) => return Ok(None),
                (alg::ECDSA | alg::ECDH | alg::SM2 | alg::ECSCHNORR | alg::ECMQV, false)
                | (alg::RSASSA | alg::RSAPSS | alg::OAEP, true) => {
                    (Some(self.hash(hash_what, true)?), None)
                }
                (alg::ECDAA, false) => {
                    let hash = self.hash(hash_what, true)?;
                    (
                        Some(hash),
                        Some(self.u16(&format!("{what}.details.count"))?),
                    )
                }
                (alg::RSAES, true) => (None, None),
                (other, _) => return Err(self.unknown(what, other)),
            };
            Ok(Some(AsymScheme {
                scheme,
                hash,
                count,
            }))
        }

        /// A TPMT_KDF_SCHEME: MGF1, KDF1_SP800_56A, KDF1_SP800_108 or
        /// TPM_ALG_NULL (tpm2-tss 3.2 has no layout for KDF2).
        fn kdf(&mut self, what: &str) -> Result<Option<KdfScheme>, CertifyError> {
            let scheme = self.u16(what)?;
            match scheme {
                alg::NULL => Ok(None),
                alg::MGF1 | alg::KDF1_SP800_56A | alg::KDF1_SP800_108 => Ok(Some(KdfScheme {
                    scheme,
                    hash: self.hash(&format!("{what}.details.hashAlg"), true)?,
                })),
                other => Err(self.unknown(what, other)),
            }
        }

        /// Refuses bytes after the structure.
        fn finish(self) -> Result<(), CertifyError> {
            let left = self.bytes.len().saturating_sub(self.at);
            if left > 0 {
                return Err(self.malformed(format!("{left} bytes after the end of the structure")));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures are real TPM2_Certify statements from swtpm, made by
    //! `testdata/tpm/make.sh`.
    use super::wire::{
        AK_PUBLIC, AsymScheme, KEY_PUBLIC, KdfScheme, KeyedHashScheme, SymmetricObject, alg, curve,
        parse_attest, parse_public, parse_signature,
    };
    use super::*;

    macro_rules! fixture {
        ($path:literal) => {
            include_bytes!(concat!("testdata/tpm/", $path)).to_vec()
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
            let public = parse_public(&chain[3], KEY_PUBLIC).unwrap();
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
        crate::x509::certificates_from_pem(include_str!("testdata/tpm/ek/roots.pem")).unwrap()
    }

    /// Every TPM structure among the fixtures, with its reader's part.
    fn structures() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (wire::ATTEST, fixture!("plain/attest.bin")),
            (wire::ATTEST, fixture!("plain/movable-attest.bin")),
            (wire::ATTEST, fixture!("plain/other-kid-attest.bin")),
            (wire::ATTEST, fixture!("ek/attest.bin")),
            (wire::SIGNATURE, fixture!("plain/signature.bin")),
            (wire::SIGNATURE, fixture!("plain/movable-signature.bin")),
            (wire::SIGNATURE, fixture!("plain/other-kid-signature.bin")),
            (wire::SIGNATURE, fixture!("ek/signature.bin")),
            (AK_PUBLIC, fixture!("plain/ak-public.bin")),
            (AK_PUBLIC, fixture!("ek/ak-public.bin")),
            (KEY_PUBLIC, fixture!("plain/key-public.bin")),
            (KEY_PUBLIC, fixture!("plain/movable-public.bin")),
            (KEY_PUBLIC, fixture!("ek/key-public.bin")),
        ]
    }

    /// `bytes` through the reader of `part`: whether it read them.
    fn read(part: &'static str, bytes: &[u8]) -> Result<(), CertifyError> {
        match part {
            wire::ATTEST => parse_attest(bytes).map(drop),
            wire::SIGNATURE => parse_signature(bytes).map(drop),
            _ => parse_public(bytes, part).map(drop),
        }
    }

    const ROOT: &str = "CN=swtpm-localca-rootca";
    const ISSUER: &str = "CN=swtpm-localca";

    #[test]
    fn a_statement_without_ek_verifies_with_the_ak_trusted_on_first_use() {
        let case = plain();
        let r = verify(&case.chain, &[], &case.key).unwrap();
        // The AK's name as tpm2_readpublic computed it.
        assert_eq!(r.ak_name, hex(&fixture!("plain/ak.name")));
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
        assert_eq!(r.ak_certificate, None);
        assert!(!r.ak_certificate_present && !r.ak_certified);
    }

    #[test]
    fn an_ek_certificate_chains_to_the_roots_given() {
        let case = with_ek();
        let r = verify(&case.chain, &roots(), &case.key).unwrap();
        assert_eq!(r.ak_name, hex(&fixture!("ek/ak.name")));
        let ek = r.ek_certificate.unwrap();
        assert_eq!(ek.subject, "CN=unknown");
        assert_eq!(ek.issuer, ISSUER);
        assert_eq!(ek.chain, ["CN=unknown", ISSUER, ROOT]);
        assert_eq!(ek.root, ROOT);
        assert_eq!(ek.manufacturer.as_deref(), Some("id:00001014"));
        assert_eq!(ek.model.as_deref(), Some("swtpm"));
        assert_eq!(ek.version.as_deref(), Some("id:20191023"));
        // A genuine EK certificate, but it does not bind the AK.
        assert!(!r.ak_bound_to_ek && !r.ak_certified);
        assert!(r.ek_certificate_present && !r.ak_certificate_present);
        assert_eq!(r.ak_certificate, None);

        // The ECC P-384 EK certificate of the same TPM does as well.
        let mut chain = case.chain.clone();
        chain[4] = fixture!("ek/ek-ecc384.der");
        verify(&chain, &roots(), &case.key).unwrap();
    }

    #[test]
    fn without_roots_an_ek_certificate_is_present_but_not_checked() {
        let case = with_ek();
        let r = verify(&case.chain, &[], &case.key).unwrap();
        assert_eq!(r.ek_certificate, None);
        assert!(r.ek_certificate_present);
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
        assert!(e.to_string().contains("no EK certificate"), "{e}");
        assert!(e.to_string().contains("no AK certificate"), "{e}");
        assert!(e.to_string().contains("--ak-cert FILE"), "{e}");
    }

    #[test]
    fn an_ek_certificate_under_a_foreign_root_of_the_same_names_is_refused() {
        let case = with_ek();
        let foreign =
            crate::x509::certificates_from_pem(include_str!("testdata/tpm/ek/foreign-roots.pem"))
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
        use ObjectAttributes as A;
        let good =
            A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::USER_WITH_AUTH | A::SIGN;
        check_key_attributes(A(good)).unwrap();
        // noDA is reported, not refused.
        let no_da = A(good | A::NO_DA);
        check_key_attributes(no_da).unwrap();
        assert!(attribute_names(no_da).contains(&"noDA".to_owned()));
        for (bits, expected) in [
            (good & !A::FIXED_TPM, "not fixedTPM"),
            (good & !A::FIXED_PARENT, "not fixedParent"),
            (good & !A::SENSITIVE_DATA_ORIGIN, "not sensitiveDataOrigin"),
            (good & !A::USER_WITH_AUTH, "not userWithAuth"),
            (good & !A::SIGN, "not a signing key"),
            (good | A::RESTRICTED, "restricted"),
            (good | A::DECRYPT, "also a decryption key"),
        ] {
            let e = check_key_attributes(A(bits)).unwrap_err();
            assert!(
                matches!(&e, CertifyError::KeyAttributes(r) if r.starts_with(expected)),
                "{e}"
            );
        }
        // Every defined bit has its name.
        assert_eq!(attribute_names(A(A::DEFINED)).len(), 12);
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
        [alg.to_be_bytes(), hash.to_be_bytes()]
            .concat()
            .into_iter()
            .chain(tpm2b(r))
            .chain(tpm2b(s))
            .collect()
    }

    /// A TPM2B of `bytes`.
    fn tpm2b(bytes: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        out.extend(bytes);
        out
    }

    /// The fixture's r and s.
    fn r_and_s(signature: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let Signature::Ecc { r, s, .. } = parse_signature(signature).unwrap() else {
            unreachable!()
        };
        (r, s)
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
        // ECDSA with SHA-384, ECSchnorr, SM2, ECDAA: other schemes, named
        // as before.
        for (alg, hash, named) in [
            (0x0018, 0x000c, "ECDSA with Sha384"),
            (0x001c, 0x000b, "EcSchnorr"),
            (0x001b, 0x000b, "Sm2"),
            (0x001a, 0x000b, "EcDaa"),
        ] {
            let e = with_signature(tpmt_signature(alg, hash, &r, &s)).unwrap_err();
            assert_eq!(e, CertifyError::UnsupportedSignature(named.into()));
        }
        // RSASSA, HMAC and no signature at all.
        let rsassa = [
            &0x0014u16.to_be_bytes()[..],
            &0x000bu16.to_be_bytes(),
            &tpm2b(&[7; 256]),
        ]
        .concat();
        let hmac = [
            &0x0005u16.to_be_bytes()[..],
            &0x000bu16.to_be_bytes(),
            &[9; 32],
        ]
        .concat();
        for (signature, named) in [
            (rsassa, "RsaSsa"),
            (hmac, "Hmac"),
            (vec![0x00, 0x10], "Null"),
        ] {
            let e = with_signature(signature).unwrap_err();
            assert_eq!(e, CertifyError::UnsupportedSignature(named.into()));
        }
        // An algorithm without a TPMU_SIGNATURE layout: named by number,
        // whatever follows.
        let e = with_signature(tpmt_signature(0x0023, 0x000b, &r, &s)).unwrap_err();
        assert_eq!(
            e,
            CertifyError::UnsupportedSignature("algorithm 0x0023".into())
        );
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
                matches!(&e, CertifyError::Malformed { reason, .. } if reason == "1 bytes after the end of the structure"),
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
        assert_eq!(name(b"", HashAlg::Sm3_256), None);
        assert_eq!(name(b"", HashAlg::Sha384).unwrap().len(), 2 + 48);
        assert_eq!(name(b"", HashAlg::Sha512).unwrap()[..2], [0x00, 0x0d]);
    }

    #[test]
    fn firmware_versions_read_as_four_parts() {
        assert_eq!(
            firmware_version(0x0007_0055_11cb_0000),
            "7.85.4555.0 (0x0007005511cb0000)"
        );
        assert_eq!(firmware_version(0), "0.0.0.0 (0x0000000000000000)");
    }

    #[test]
    fn the_reader_reads_the_fixtures_field_by_field() {
        let case = plain();
        let attest = parse_attest(&case.chain[0]).unwrap();
        assert_eq!(attest.extra_data, case.key.kid().0.to_vec());
        assert_eq!(attest.firmware_version, 0x2019_1023_0016_3636);
        assert_eq!(attest.qualified_signer.len(), 34);
        assert_eq!(attest.certified.name.len(), 34);
        assert_eq!(attest.certified.qualified_name.len(), 34);
        assert!(attest.clock_info.safe);
        assert_eq!(
            name(&case.chain[3], HashAlg::Sha256).unwrap(),
            attest.certified.name
        );

        let Signature::Ecc {
            scheme: SignatureScheme::EcDsa,
            hash: HashAlg::Sha256,
            r,
            s,
        } = parse_signature(&case.chain[1]).unwrap()
        else {
            panic!("not ECDSA-SHA256")
        };
        assert!(r.len() <= 32 && s.len() <= 32);

        // The AK: tpm2_createprimary -G ecc256:ecdsa-sha256:null with
        // fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign.
        let ak = parse_public(&case.chain[2], AK_PUBLIC).unwrap();
        assert_eq!(ak.type_id(), alg::ECC);
        assert_eq!(ak.name_alg, HashAlg::Sha256);
        assert_eq!(ak.auth_policy, b"");
        assert_eq!(ak.attributes.0, 0x0005_0472);
        let PublicParameters::Ecc {
            symmetric,
            scheme,
            curve: c,
            kdf,
            x,
            y,
        } = &ak.parameters
        else {
            panic!("not ECC")
        };
        assert_eq!(*symmetric, None);
        assert_eq!(
            *scheme,
            Some(AsymScheme {
                scheme: alg::ECDSA,
                hash: Some(HashAlg::Sha256),
                count: None
            })
        );
        assert_eq!((*c, *kdf), (curve::NIST_P256, None));
        assert_eq!((x.len(), y.len()), (32, 32));

        let key = parse_public(&case.chain[3], KEY_PUBLIC).unwrap();
        assert_eq!(key.attributes.0, 0x0004_0072);
        assert_eq!(
            p256_point(&key).unwrap(),
            case.key.raw_bytes().as_slice().to_vec()
        );
    }

    /// A TPMT_PUBLIC: type, nameAlg, objectAttributes, authPolicy, then
    /// `rest` (parameters and unique) as given.
    fn tpmt_public(kind: u16, attributes: u32, policy: &[u8], rest: &[u8]) -> Vec<u8> {
        [
            &kind.to_be_bytes()[..],
            &alg::SHA256.to_be_bytes(),
            &attributes.to_be_bytes(),
            &tpm2b(policy),
            rest,
        ]
        .concat()
    }

    fn be(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    #[test]
    fn the_reader_reads_every_public_layout_and_refuses_what_is_not_one() {
        use ObjectAttributes as A;
        let signer = A::FIXED_TPM | A::FIXED_PARENT | A::RESTRICTED | A::SIGN;
        // An ECC storage key: AES-128-CFB, ECDAA with a count, a KDF.
        let ecc = [
            be(&[
                alg::AES,
                128,
                alg::CFB,
                alg::ECDAA,
                alg::SHA256,
                7,
                curve::BN_P256,
            ]),
            be(&[alg::KDF1_SP800_108, alg::SHA384]),
            tpm2b(&[1; 32]),
            tpm2b(&[2; 32]),
        ]
        .concat();
        let public =
            parse_public(&tpmt_public(alg::ECC, signer, &[3; 32], &ecc), AK_PUBLIC).unwrap();
        assert_eq!(public.auth_policy, [3; 32]);
        assert_eq!(
            public.parameters,
            PublicParameters::Ecc {
                symmetric: Some(SymmetricObject {
                    algorithm: alg::AES,
                    key_bits: 128,
                    mode: alg::CFB
                }),
                scheme: Some(AsymScheme {
                    scheme: alg::ECDAA,
                    hash: Some(HashAlg::Sha256),
                    count: Some(7)
                }),
                curve: curve::BN_P256,
                kdf: Some(KdfScheme {
                    scheme: alg::KDF1_SP800_108,
                    hash: HashAlg::Sha384
                }),
                x: vec![1; 32],
                y: vec![2; 32],
            }
        );
        // RSA 2048, RSAES (no details), exponent 0.
        let rsa = [
            be(&[alg::NULL, alg::RSAES, 2048]),
            0u32.to_be_bytes().to_vec(),
            tpm2b(&[5; 256]),
        ]
        .concat();
        let rsa_public = tpmt_public(alg::RSA, signer, &[], &rsa);
        let public = parse_public(&rsa_public, AK_PUBLIC).unwrap();
        assert!(matches!(
            &public.parameters,
            PublicParameters::Rsa { key_bits: 2048, exponent: 0, modulus, scheme: Some(AsymScheme { scheme: alg::RSAES, hash: None, count: None }), .. } if modulus.len() == 256
        ));
        // A keyed hash (XOR with a KDF) and a symmetric cipher.
        let keyed = [be(&[alg::XOR, alg::SHA256, alg::KDF2]), tpm2b(&[4; 32])].concat();
        let public =
            parse_public(&tpmt_public(alg::KEYEDHASH, 0, &[], &keyed), KEY_PUBLIC).unwrap();
        assert_eq!(
            public.parameters,
            PublicParameters::KeyedHash {
                scheme: Some(KeyedHashScheme::Xor {
                    hash: HashAlg::Sha256,
                    kdf: alg::KDF2
                }),
                unique: vec![4; 32],
            }
        );
        let sym = [be(&[alg::SM4, 128, alg::NULL]), tpm2b(&[])].concat();
        parse_public(&tpmt_public(alg::SYMCIPHER, 0, &[], &sym), KEY_PUBLIC).unwrap();

        // A non-ECC key as the AK or as the key: not an ECC key, as before.
        let case = plain();
        let mut chain = case.chain.clone();
        chain[2] = rsa_public.clone();
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::UnsuitableAk("not an ECC key".into()));
        let mut chain = case.chain.clone();
        chain[3] = rsa_public;
        let e = verify(&chain, &[], &case.key).unwrap_err();
        assert_eq!(e, CertifyError::KeyMismatch("not an ECC key".into()));

        // Values out of their sets, each named.
        let malformed = |bytes: &[u8], what: &str| {
            let e = parse_public(bytes, KEY_PUBLIC).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Malformed { part: KEY_PUBLIC, reason } if reason.contains(what)),
                "{what}: {e}"
            );
        };
        let key = fixture!("plain/key-public.bin");
        let with = |at: usize, value: u16| {
            let mut bytes = key.clone();
            bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
            bytes
        };
        malformed(&with(0, 0x0024), "its type is 0x0024");
        malformed(&with(2, 0x0005), "nameAlg is 0x0005, not a hash algorithm");
        // objectAttributes: reserved bits 0, 3, 8, 9, 12-15, 20-31.
        for bit in [0, 3, 8, 9, 12, 13, 14, 15, 20, 24, 31] {
            let mut bytes = key.clone();
            bytes[4..8].copy_from_slice(&(0x0004_0072u32 | 1 << bit).to_be_bytes());
            malformed(&bytes, "reserved bits");
        }
        // parameters: symmetric (10), scheme (12), its hash (14), curve
        // (16), kdf (18).
        malformed(&with(10, 0x000a), "parameters.symmetric is 0x000a"); // XOR
        malformed(&with(10, 0x0003), "parameters.symmetric is 0x0003"); // TDES
        malformed(&with(12, alg::RSASSA), "parameters.scheme is 0x0014");
        malformed(
            &with(14, 0x0099),
            "parameters.scheme.details.hashAlg is 0x0099",
        );
        malformed(&with(16, 0x0006), "curveID is 0x0006");
        malformed(&with(18, alg::KDF2), "parameters.kdf is 0x0021");
        let sym =
            |bits: u16, mode: u16| [&key[..10], &be(&[alg::AES, bits, mode]), &key[12..]].concat();
        parse_public(&sym(256, alg::CTR), KEY_PUBLIC).unwrap();
        malformed(&sym(512, alg::CFB), "keyBits is 512");
        malformed(&sym(128, alg::AES), "mode is 0x0006");
        // A TPM2B longer than its buffer, even if the bytes are there.
        let x_at = 20;
        let mut long = key[..x_at].to_vec();
        long.extend(tpm2b(&[1; 129]));
        long.extend(tpm2b(&[1; 32]));
        malformed(&long, "unique.x is 129 bytes, more than the 128");
        // A TPM_ALG_NULL hash is refused in a signature, not in a scheme
        // (as tss-esapi reads them).
        parse_public(&with(14, alg::NULL), KEY_PUBLIC).unwrap();
        let e = parse_signature(&tpmt_signature(alg::ECDSA, alg::NULL, &[1], &[1])).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("TPM_ALG_NULL")),
            "{e}"
        );
    }

    #[test]
    fn the_reader_refuses_an_unsafe_flag_and_oversized_names() {
        let attest = fixture!("plain/attest.bin");
        // clockInfo.safe: after header (6), qualifiedSigner (36),
        // extraData (34), clock (8), resetCount and restartCount (8).
        let safe = 6 + 36 + 34 + 8 + 8;
        assert_eq!(attest[safe], 1);
        let mut unsafe_ = attest.clone();
        unsafe_[safe] = 0;
        assert!(!parse_attest(&unsafe_).unwrap().clock_info.safe);
        unsafe_[safe] = 2;
        let e = parse_attest(&unsafe_).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("clockInfo.safe is 2")),
            "{e}"
        );
        // A qualifiedSigner of 69 bytes, the rest shifted: too long for a
        // TPM2B_NAME.
        let mut long = attest[..6].to_vec();
        long.extend(tpm2b(&[0; 69]));
        long.extend(&attest[6 + 36..]);
        let e = parse_attest(&long).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason.contains("qualifiedSigner is 69 bytes")),
            "{e}"
        );
        // Short of its header.
        let e = parse_attest(&attest[..5]).unwrap_err();
        assert!(
            matches!(&e, CertifyError::Malformed { reason, .. } if reason == "5 bytes, shorter than its header"),
            "{e}"
        );
    }

    /// A small deterministic generator (xorshift64*), for inputs.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u8 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    #[test]
    fn no_input_makes_the_readers_or_the_verifier_panic() {
        let case = plain();
        let check = |bytes: &[u8]| {
            for part in [wire::ATTEST, wire::SIGNATURE, AK_PUBLIC] {
                let _ = read(part, bytes);
            }
            for blob in 0..4 {
                let mut chain = case.chain.clone();
                chain[blob] = bytes.to_vec();
                let _ = verify(&chain, &[], &case.key);
            }
        };
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        // Random-ish inputs of 0 to 64 bytes; some start like a TPMS_ATTEST
        // or name a known type, so that more than the first field is read.
        for len in 0..=64 {
            for _ in 0..300 {
                let mut bytes = noise.bytes(len);
                match noise.next() % 4 {
                    0 if len >= 6 => {
                        bytes[..6].copy_from_slice(&[0xff, 0x54, 0x43, 0x47, 0x80, 0x17])
                    }
                    1 if len >= 2 => bytes[..2].copy_from_slice(&alg::ECC.to_be_bytes()),
                    2 if len >= 2 => bytes[..2].copy_from_slice(&alg::ECDSA.to_be_bytes()),
                    _ => {}
                }
                check(&bytes);
            }
        }
        // Every prefix of every fixture, alone and with a random tail.
        for (_, whole) in structures() {
            for len in 0..=whole.len() {
                check(&whole[..len]);
                let mut bytes = whole[..len].to_vec();
                bytes.extend(noise.bytes(whole.len() - len));
                check(&bytes);
            }
        }
    }

    #[test]
    fn every_fixture_reads_and_no_change_of_one_byte_panics() {
        // Each fixture reads; every one-byte change of it (to each other
        // value) reads or is refused without panicking (the differential
        // test in keybridge-backends checks which); no truncation reads.
        for (part, whole) in structures() {
            read(part, &whole).unwrap();
            for at in 0..whole.len() {
                for value in 0..=255u8 {
                    if value == whole[at] {
                        continue;
                    }
                    let mut bytes = whole.clone();
                    bytes[at] = value;
                    let _ = read(part, &bytes);
                }
            }
            for len in 0..whole.len() {
                assert!(read(part, &whole[..len]).is_err(), "{part}: {len} bytes");
            }
        }
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

    mod ak_position {
        //! AK certificates (blob 4 for the AK's own key) from a small test
        //! PKI: keybridge's swtpm AK (`plain/`) certified by a test CA, and
        //! software "AKs" that claim a TPM AK's attributes.
        use super::*;
        use crate::x509::test_pki::{self, basic_constraints, ext};
        use p256::ecdsa::signature::hazmat::PrehashSigner as _;
        use std::str::FromStr as _;
        use x509_cert::der::Encode as _;
        use x509_cert::der::asn1::BitString;
        use x509_cert::ext::Extension;
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages};
        use x509_cert::name::Name;
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::spki::SubjectPublicKeyInfoOwned;

        /// tcg-kp-AIKCertificate: the extendedKeyUsage of TCG's AK (IAK)
        /// certificates.
        const TCG_KP_AIK_CERTIFICATE: ObjectIdentifier =
            ObjectIdentifier::new_unwrap("2.23.133.8.3");
        const ROOT: &str = "CN=Test AK Root";
        const ISSUING: &str = "CN=Test AK Issuing CA";
        const SUBJECT: &str = "CN=AK of test-device";
        const ROOT_SEED: u8 = 21;
        const ISSUING_SEED: u8 = 22;

        fn signer(seed: u8) -> p256::ecdsa::SigningKey {
            p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
        }

        fn name(s: &str) -> Name {
            Name::from_str(s).unwrap()
        }

        fn issue(
            by: &p256::ecdsa::SigningKey,
            issuer: &str,
            subject: &str,
            spki: SubjectPublicKeyInfoOwned,
            extensions: Vec<Extension>,
        ) -> Vec<u8> {
            test_pki::issue::<_, p256::ecdsa::DerSignature>(
                by,
                name(issuer),
                name(subject),
                SerialNumber::from(9u32),
                spki,
                extensions,
            )
        }

        fn key_usage(usages: KeyUsages) -> Extension {
            ext(
                crate::x509::ID_CE_KEY_USAGE,
                true,
                &KeyUsage(usages.into()).to_der().unwrap(),
            )
        }

        /// A CA certificate's extensions.
        fn ca_extensions(path_len: Option<u8>) -> Vec<Extension> {
            vec![
                basic_constraints(true, path_len),
                key_usage(KeyUsages::KeyCertSign),
            ]
        }

        /// A test PKI: a root and an issuing CA under it (their keys from
        /// the seeds), named ROOT and ISSUING.
        fn pki(root_seed: u8, issuing_seed: u8) -> Vec<Vec<u8>> {
            let root = signer(root_seed);
            let root_der = issue(
                &root,
                ROOT,
                ROOT,
                test_pki::spki(root.verifying_key()),
                ca_extensions(None),
            );
            let issuing = issue(
                &root,
                ROOT,
                ISSUING,
                test_pki::spki(signer(issuing_seed).verifying_key()),
                ca_extensions(Some(0)),
            );
            vec![root_der, issuing]
        }

        fn ak_roots() -> Vec<Vec<u8>> {
            pki(ROOT_SEED, ISSUING_SEED)
        }

        /// The SubjectPublicKeyInfo of the AK whose public area is
        /// `ak_public`.
        fn ak_spki(ak_public: &[u8]) -> SubjectPublicKeyInfoOwned {
            let point = ak_point(ak_public).unwrap();
            test_pki::spki(&p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap())
        }

        /// An AK certificate's extensions, as an IAK certificate has them:
        /// an end entity, digitalSignature, tcg-kp-AIKCertificate.
        fn ak_extensions() -> Vec<Extension> {
            vec![
                basic_constraints(false, None),
                key_usage(KeyUsages::DigitalSignature),
                ext(
                    ID_CE_EXT_KEY_USAGE,
                    false,
                    &ExtendedKeyUsage(vec![TCG_KP_AIK_CERTIFICATE])
                        .to_der()
                        .unwrap(),
                ),
            ]
        }

        /// A certificate for the plain AK from the issuing CA.
        fn ak_cert(extensions: Vec<Extension>) -> Vec<u8> {
            let spki = ak_spki(&fixture!("plain/ak-public.bin"));
            issue(&signer(ISSUING_SEED), ISSUING, SUBJECT, spki, extensions)
        }

        /// The plain statement with `certificate` as blob 4.
        fn with_certificate(certificate: Vec<u8>) -> Case {
            let mut case = plain();
            case.chain.push(certificate);
            case
        }

        /// The plain statement with an AK certificate of `extensions`,
        /// against the test PKI.
        fn certified(extensions: Vec<Extension>) -> Result<Report, CertifyError> {
            let case = with_certificate(ak_cert(extensions));
            verify(&case.chain, &ak_roots(), &case.key)
        }

        /// A software "AK": `key` in a public area copied from the swtpm
        /// AK's (restricted, fixedTPM, fixedParent, sign, P-256), its x
        /// coordinate without its leading zero bytes if `strip`, and the
        /// plain statement signed by it. Anyone can make one: these are
        /// bits in a structure, not properties of a key.
        fn software_ak(key: &p256::ecdsa::SigningKey, strip: bool) -> Case {
            let template = fixture!("plain/ak-public.bin");
            let unique = template.len() - 2 * 34;
            assert_eq!(template[unique..unique + 2], [0, 32]);
            assert_eq!(template[unique + 34..unique + 36], [0, 32]);
            let point = key.verifying_key().to_sec1_point(false);
            let (x, y) = (&point.as_bytes()[1..33], &point.as_bytes()[33..]);
            let x = if strip {
                let zeros = x.iter().take_while(|b| **b == 0).count();
                &x[zeros..]
            } else {
                x
            };
            let public = [&template[..unique], &tpm2b(x), &tpm2b(y)].concat();
            let attest = fixture!("plain/attest.bin");
            let signature: p256::ecdsa::Signature =
                key.sign_prehash(&Sha256::digest(&attest)).unwrap();
            let (r, s) = signature.split_bytes();
            let signature = tpmt_signature(alg::ECDSA, alg::SHA256, &r, &s);
            let mut case = plain();
            case.chain[0] = attest;
            case.chain[1] = signature;
            case.chain[2] = public;
            case
        }

        #[test]
        fn an_ak_certificate_from_the_roots_certifies_the_ak() {
            let r = certified(ak_extensions()).unwrap();
            assert!(r.ak_certified);
            assert_eq!(
                r.ak_certificate,
                Some(AkReport {
                    subject: SUBJECT.into(),
                    issuer: ISSUING.into(),
                    root: ROOT.into(),
                    chain: vec![SUBJECT.into(), ISSUING.into(), ROOT.into()],
                })
            );
            assert!(r.ak_certificate_present && !r.ek_certificate_present);
            assert_eq!(r.ek_certificate, None);
            assert!(!r.ak_bound_to_ek && !r.validity_checked);
            assert_eq!(r.ak_name, hex(&fixture!("plain/ak.name")));

            // Issued by the root itself, with no extensions at all (an
            // absent basicConstraints is an end entity's).
            let ak = fixture!("plain/ak-public.bin");
            let bare = issue(&signer(ROOT_SEED), ROOT, "CN=bare", ak_spki(&ak), vec![]);
            let case = with_certificate(bare);
            let r = verify(&case.chain, &ak_roots(), &case.key).unwrap();
            let report = r.ak_certificate.unwrap();
            assert!(r.ak_certified);
            assert_eq!((report.root.as_str(), report.issuer.as_str()), (ROOT, ROOT));
            assert_eq!(report.chain, ["CN=bare", ROOT]);

            // The AK's point compressed in the certificate (RFC 5480
            // allows it): the same key.
            let mut spki = ak_spki(&ak);
            let compressed = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ak_point(&ak).unwrap())
                .unwrap()
                .to_sec1_point(true);
            spki.subject_public_key = BitString::from_bytes(compressed.as_bytes()).unwrap();
            let cert = issue(
                &signer(ISSUING_SEED),
                ISSUING,
                SUBJECT,
                spki,
                ak_extensions(),
            );
            assert!(is_ak_certificate(&cert, &ak).unwrap());
            let case = with_certificate(cert);
            assert!(
                verify(&case.chain, &ak_roots(), &case.key)
                    .unwrap()
                    .ak_certified
            );
        }

        #[test]
        fn without_roots_an_ak_certificate_is_present_but_not_checked() {
            let case = with_certificate(ak_cert(ak_extensions()));
            let r = verify(&case.chain, &[], &case.key).unwrap();
            assert!(r.ak_certificate_present && !r.ek_certificate_present);
            assert_eq!((r.ak_certificate, r.ek_certificate), (None, None));
            assert!(!r.ak_certified);
            // Not judged without roots: a CA certificate for the AK passes
            // as well (it is only parsed).
            let case = with_certificate(ak_cert(ca_extensions(None)));
            let r = verify(&case.chain, &[], &case.key).unwrap();
            assert!(r.ak_certificate_present && !r.ak_certified);
        }

        #[test]
        fn an_ak_certificate_under_other_roots_is_refused() {
            let case = with_certificate(ak_cert(ak_extensions()));
            // swtpm's EK CA.
            let e = verify(&case.chain, &roots(), &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Chain(ChainError::ForeignRoot { subject, issuer })
                    if subject == SUBJECT && issuer == ISSUING),
                "{e}"
            );
            // A PKI of the same names with other keys.
            let other = pki(ROOT_SEED + 10, ISSUING_SEED + 10);
            let e = verify(&case.chain, &other, &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Chain(ChainError::ForeignRoot { subject, .. }) if subject == SUBJECT),
                "{e}"
            );
            // The right issuing CA under a root of the same name with
            // another key: no path either (reported from the bottom).
            let mut other = pki(ROOT_SEED + 10, ISSUING_SEED);
            other[1] = ak_roots()[1].clone();
            let e = verify(&case.chain, &other, &case.key).unwrap_err();
            assert!(
                matches!(e, CertifyError::Chain(ChainError::ForeignRoot { .. })),
                "{e}"
            );
            // The root without the issuing CA: no path.
            let e = verify(&case.chain, &ak_roots()[..1], &case.key).unwrap_err();
            assert!(
                matches!(e, CertifyError::Chain(ChainError::ForeignRoot { .. })),
                "{e}"
            );
            // The issuing CA alone: no anchor.
            let e = verify(&case.chain, &ak_roots()[1..], &case.key).unwrap_err();
            assert_eq!(e, CertifyError::Chain(ChainError::NoRoots));
            // An issuing certificate that is not a CA's.
            let mut roots = ak_roots();
            roots[1] = issue(
                &signer(ROOT_SEED),
                ROOT,
                ISSUING,
                test_pki::spki(signer(ISSUING_SEED).verifying_key()),
                vec![basic_constraints(false, None)],
            );
            let e = verify(&case.chain, &roots, &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Chain(ChainError::NotACa { subject, .. }) if subject == ISSUING),
                "{e}"
            );
        }

        #[test]
        fn a_ca_certificate_for_the_ak_is_refused() {
            for extensions in [ca_extensions(None), vec![basic_constraints(true, None)]] {
                let e = certified(extensions).unwrap_err();
                assert!(
                    matches!(&e, CertifyError::NotAnAkCertificate { subject, reason }
                        if subject == SUBJECT && reason.contains("CA certificate")),
                    "{e}"
                );
                assert!(e.to_string().contains("certifies the AK's key"), "{e}");
            }
        }

        #[test]
        fn an_unknown_critical_extension_on_the_ak_certificate_is_refused() {
            let mut exts = ak_extensions();
            // nameConstraints, critical.
            exts.push(ext(
                ObjectIdentifier::new_unwrap("2.5.29.30"),
                true,
                &[0x30, 0x00],
            ));
            let e = certified(exts).unwrap_err();
            assert_eq!(
                e,
                CertifyError::Chain(ChainError::UnknownCriticalExtension {
                    subject: SUBJECT.into(),
                    oid: "2.5.29.30".into(),
                })
            );
            // The same, not critical: ignored.
            let mut exts = ak_extensions();
            exts.push(ext(
                ObjectIdentifier::new_unwrap("2.5.29.30"),
                false,
                &[0x30, 0x00],
            ));
            assert!(certified(exts).unwrap().ak_certified);
            // Critical subjectAltName, extendedKeyUsage and
            // subjectDirectoryAttributes are understood.
            let san = SubjectAltName(vec![GeneralName::DirectoryName(name("CN=test-device"))]);
            let mut exts = ak_extensions();
            exts[2].critical = true;
            exts.push(ext(ID_CE_SUBJECT_ALT_NAME, true, &san.to_der().unwrap()));
            exts.push(ext(ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES, true, &[0x30, 0x00]));
            assert!(certified(exts).unwrap().ak_certified);
            // A basicConstraints that does not decode.
            let mut exts = ak_extensions();
            exts[0] = ext(crate::x509::ID_CE_BASIC_CONSTRAINTS, true, &[0x04, 0x00]);
            let e = certified(exts).unwrap_err();
            assert!(
                matches!(e, CertifyError::Chain(ChainError::Malformed { .. })),
                "{e}"
            );
        }

        #[test]
        fn a_key_usage_without_digital_signature_is_refused() {
            for usages in [
                KeyUsages::KeyCertSign.into(),
                KeyUsages::KeyEncipherment | KeyUsages::KeyAgreement,
                KeyUsages::NonRepudiation.into(),
            ] {
                let mut exts = ak_extensions();
                exts[1] = ext(
                    crate::x509::ID_CE_KEY_USAGE,
                    true,
                    &KeyUsage(usages).to_der().unwrap(),
                );
                let e = certified(exts).unwrap_err();
                assert!(
                    matches!(&e, CertifyError::NotAnAkCertificate { reason, .. } if reason.contains("digitalSignature")),
                    "{e}"
                );
            }
            // digitalSignature among others; no keyUsage at all.
            let mut exts = ak_extensions();
            exts[1] = ext(
                crate::x509::ID_CE_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation)
                    .to_der()
                    .unwrap(),
            );
            assert!(certified(exts).unwrap().ak_certified);
            let mut exts = ak_extensions();
            exts.remove(1);
            assert!(certified(exts).unwrap().ak_certified);
        }

        #[test]
        fn a_certificate_for_another_key_is_taken_for_an_ek_certificate() {
            // The AK certificate of another TPM's AK (`ek/`), in the plain
            // TPM's evidence: not this AK's, so an EK certificate, which
            // it is not.
            let other_ak = issue(
                &signer(ISSUING_SEED),
                ISSUING,
                SUBJECT,
                ak_spki(&fixture!("ek/ak-public.bin")),
                ak_extensions(),
            );
            let case = with_certificate(other_ak);
            let r = verify(&case.chain, &[], &case.key).unwrap();
            assert!(r.ek_certificate_present && !r.ak_certificate_present);
            let e = verify(&case.chain, &ak_roots(), &case.key).unwrap_err();
            let CertifyError::NotAnEkCertificate { subject, reason } = &e else {
                panic!("{e}")
            };
            assert_eq!(subject, SUBJECT);
            assert_eq!(
                reason,
                "its extendedKeyUsage does not include tcg-kp-EKCertificate (2.23.133.8.1) (nor is it an AK certificate: its key is not this AK's)"
            );
            // A CA certificate for another key: refused as an EK
            // certificate, not as an AK certificate.
            let ca = issue(
                &signer(ISSUING_SEED),
                ISSUING,
                SUBJECT,
                test_pki::spki(signer(5).verifying_key()),
                ca_extensions(None),
            );
            let case = with_certificate(ca);
            let e = verify(&case.chain, &ak_roots(), &case.key).unwrap_err();
            assert!(
                matches!(&e, CertifyError::NotAnEkCertificate { reason, .. }
                    if reason.starts_with("it is a CA certificate") && reason.contains("not this AK's")),
                "{e}"
            );
            // Another key's end-entity certificate with nothing that rules
            // out an EK certificate: taken for one. It names no TPM and
            // certifies nothing about the AK.
            let other = issue(
                &signer(ISSUING_SEED),
                ISSUING,
                "CN=another key",
                test_pki::spki(signer(5).verifying_key()),
                vec![basic_constraints(false, None)],
            );
            let case = with_certificate(other);
            let r = verify(&case.chain, &ak_roots(), &case.key).unwrap();
            assert_eq!(r.ek_certificate.unwrap().subject, "CN=another key");
            assert!(!r.ak_certified && r.ak_certificate.is_none());
            // swtpm's genuine EK certificate with the other (plain) TPM's
            // statement: chains, and binds nothing.
            let case = with_certificate(fixture!("ek/ek-rsa.der"));
            let r = verify(&case.chain, &roots(), &case.key).unwrap();
            assert!(r.ek_certificate.is_some() && !r.ak_certified);
        }

        #[test]
        fn a_software_ak_with_a_copied_ek_certificate_is_not_certified() {
            // What an EK certificate cannot rule out: a key outside any TPM
            // whose public area claims an AK's attributes signs a statement
            // about the key...
            let fake = software_ak(&signer(42), false);
            let r = verify(&fake.chain, &[], &fake.key).unwrap();
            assert_ne!(r.ak_name, hex(&fixture!("plain/ak.name")));
            // ... and carries a genuine TPM's EK certificate, copied: it
            // verifies, with the EK certificate, and is not certified.
            let mut chain = fake.chain.clone();
            chain.push(fixture!("ek/ek-rsa.der"));
            let r = verify(&chain, &roots(), &fake.key).unwrap();
            assert_eq!(r.ek_certificate.unwrap().model.as_deref(), Some("swtpm"));
            assert!(!r.ak_certified && !r.ak_bound_to_ek);
            // Only a certificate for that AK from the roots would certify
            // it; one from a CA outside them does not chain.
            let own_ca = issue(
                &signer(43),
                ISSUING,
                SUBJECT,
                ak_spki(&fake.chain[2]),
                ak_extensions(),
            );
            let mut chain = fake.chain.clone();
            chain.push(own_ca);
            let e = verify(&chain, &ak_roots(), &fake.key).unwrap_err();
            assert!(
                matches!(e, CertifyError::Chain(ChainError::ForeignRoot { .. })),
                "{e}"
            );
        }

        #[test]
        fn ak_coordinates_without_leading_zeros_are_padded() {
            // A key whose x coordinate starts with a zero byte, which a TPM
            // may drop.
            let key = (1u16..)
                .map(|i| {
                    let mut scalar = [1u8; 32];
                    scalar[..2].copy_from_slice(&i.to_be_bytes());
                    p256::ecdsa::SigningKey::from_slice(&scalar).unwrap()
                })
                .find(|k| k.verifying_key().to_sec1_point(false).as_bytes()[1] == 0)
                .unwrap();
            let point = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
            let case = software_ak(&key, true);
            let ak = &case.chain[2];
            assert_eq!(ak[ak.len() - 34 - 33..][..2], [0, 31], "x is 31 bytes");
            assert_eq!(ak_point(ak).unwrap(), point);
            let cert = issue(
                &signer(ISSUING_SEED),
                ISSUING,
                SUBJECT,
                test_pki::spki(key.verifying_key()),
                ak_extensions(),
            );
            assert!(is_ak_certificate(&cert, ak).unwrap());
            let mut chain = case.chain.clone();
            chain.push(cert);
            assert!(verify(&chain, &ak_roots(), &case.key).unwrap().ak_certified);
        }

        #[test]
        fn ak_point_reads_an_ak_as_verify_does() {
            let ak = fixture!("plain/ak-public.bin");
            let point = ak_point(&ak).unwrap();
            assert_eq!(point.len(), 65);
            assert_eq!(point[0], 0x04);
            let public = parse_public(&ak, AK_PUBLIC).unwrap();
            assert_eq!(point, p256_point(&public).unwrap());
            let other = ak_point(&fixture!("ek/ak-public.bin")).unwrap();
            assert_ne!(point, other);
            // The key's public area: not an AK.
            let e = ak_point(&fixture!("plain/key-public.bin")).unwrap_err();
            assert!(
                matches!(&e, CertifyError::UnsuitableAk(r) if r.contains("restricted")),
                "{e}"
            );
            // Not one TPMT_PUBLIC.
            for bytes in [&[][..], b"garbage", &[ak.clone(), vec![0]].concat()] {
                let e = ak_point(bytes).unwrap_err();
                assert!(
                    matches!(
                        e,
                        CertifyError::Malformed {
                            part: AK_PUBLIC,
                            ..
                        }
                    ),
                    "{e}"
                );
            }
            // A point off the curve.
            let mut off = ak.clone();
            let last = off.len() - 1;
            off[last] ^= 1;
            let e = ak_point(&off).unwrap_err();
            assert_eq!(
                e,
                CertifyError::UnsuitableAk("its point is not on P-256".into())
            );
        }

        #[test]
        fn is_ak_certificate_compares_the_certified_key_with_the_ak() {
            let (plain_ak, ek_ak) = (
                fixture!("plain/ak-public.bin"),
                fixture!("ek/ak-public.bin"),
            );
            let cert = ak_cert(ak_extensions());
            assert!(is_ak_certificate(&cert, &plain_ak).unwrap());
            assert!(!is_ak_certificate(&cert, &ek_ak).unwrap());
            // Not judged: a CA certificate for the AK is for its key.
            assert!(is_ak_certificate(&ak_cert(ca_extensions(None)), &plain_ak).unwrap());
            // EK certificates (RSA, P-384), a CA's P-256 key.
            for other in [
                fixture!("ek/ek-rsa.der"),
                fixture!("ek/ek-ecc384.der"),
                ak_roots()[0].clone(),
            ] {
                assert!(!is_ak_certificate(&other, &plain_ak).unwrap());
                assert!(!is_ak_certificate(&other, &ek_ak).unwrap());
            }
            // A P-384 key, and a P-256 key whose point is not on the
            // curve.
            let p384 = p384::ecdsa::SigningKey::from_slice(&[3; 48]).unwrap();
            let spki = test_pki::spki(p384.verifying_key());
            let cert = issue(&signer(ISSUING_SEED), ISSUING, SUBJECT, spki, vec![]);
            assert!(!is_ak_certificate(&cert, &plain_ak).unwrap());
            let mut spki = ak_spki(&plain_ak);
            let mut bad = ak_point(&plain_ak).unwrap();
            bad[64] ^= 1;
            spki.subject_public_key = BitString::from_bytes(&bad).unwrap();
            let cert = issue(&signer(ISSUING_SEED), ISSUING, SUBJECT, spki, vec![]);
            assert!(!is_ak_certificate(&cert, &plain_ak).unwrap());
            // Not a certificate; not an AK.
            let e = is_ak_certificate(b"garbage", &plain_ak).unwrap_err();
            assert!(
                matches!(&e, CertifyError::Chain(ChainError::Malformed { position, .. }) if position == "the AK certificate"),
                "{e}"
            );
            let e = is_ak_certificate(&ak_cert(ak_extensions()), &fixture!("plain/key-public.bin"))
                .unwrap_err();
            assert!(matches!(e, CertifyError::UnsuitableAk(_)), "{e}");
            let e = is_ak_certificate(&ak_cert(ak_extensions()), b"").unwrap_err();
            assert!(matches!(e, CertifyError::Malformed { .. }), "{e}");
        }

        #[test]
        fn no_input_makes_the_certificate_checks_panic() {
            let (case, ak) = (plain(), fixture!("plain/ak-public.bin"));
            let cert = ak_cert(ak_extensions());
            let roots = ak_roots();
            let check = |bytes: &[u8]| {
                let _ = ak_point(bytes);
                let _ = is_ak_certificate(bytes, &ak);
                let _ = is_ak_certificate(&cert, bytes);
                let mut chain = case.chain.clone();
                chain.push(bytes.to_vec());
                for roots in [&roots[..], &[]] {
                    let _ = verify(&chain, roots, &case.key);
                }
            };
            let mut noise = Noise(0x0123_4567_89ab_cdef);
            for len in 0..=96 {
                for _ in 0..50 {
                    let mut bytes = noise.bytes(len);
                    // Some start like a DER SEQUENCE of their length.
                    if len >= 2 && noise.next() & 1 == 0 {
                        bytes[0] = 0x30;
                        bytes[1] = (len - 2) as u8;
                    }
                    check(&bytes);
                }
            }
            // Every truncation of the AK certificate, and every one-byte
            // change of it: none verifies.
            for len in 0..cert.len() {
                check(&cert[..len]);
            }
            for at in 0..cert.len() {
                for bit in [0x01, 0x80] {
                    let mut bytes = cert.clone();
                    bytes[at] ^= bit;
                    let _ = is_ak_certificate(&bytes, &ak);
                    let mut chain = case.chain.clone();
                    chain.push(bytes);
                    let r = verify(&chain, &roots, &case.key);
                    assert!(r.is_err(), "byte {at} ^ {bit:#04x}: {r:?}");
                }
            }
        }
    }
}
