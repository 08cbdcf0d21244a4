//! X.509 certificate paths for attestation evidence: the part a YubiKey's
//! attestation ([`crate::yubikey`]) and a TPM's attestation key or
//! endorsement key certificate ([`crate::tpm`]) share.
//!
//! Certificates come from key records and roots files: hostile input.
//! Every certificate is size-limited and parsed by `x509-cert`'s DER
//! decoder, which rejects anything that is not exactly one well-formed
//! certificate; the number of roots, the depth of a path and the signature
//! checks spent building it are bounded.
//!
//! What a path from a certificate (the "bottom": the f9 certificate, an EK
//! certificate, an AK certificate) to a root means here:
//! - every link chains by name (the issuer's subject is the subject's
//!   issuer, byte for byte) and by signature (RSA PKCS#1 v1.5 with
//!   SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384/512, Ed25519), and
//!   each certificate names the same signature algorithm inside and outside
//!   its signed part;
//! - every certificate above the bottom is a CA: basicConstraints CA=true,
//!   keyCertSign if it has a keyUsage, its pathLenConstraint respected, no
//!   critical extension we do not understand;
//! - the root is self-signed and is one of the caller's roots.
//!
//! The bottom certificate itself is the caller's to judge (a YubiKey's f9
//! certificate lacks basicConstraints; an EK certificate is an end entity
//! with a keyEncipherment key). Validity periods and revocation are not
//! checked: callers say so.

use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode as _, Encode as _, Reader as _, SliceReader};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

/// The largest certificate accepted. Yubico's are about 1 KiB (a card
/// refuses an f9 certificate over 3052 bytes), EK certificates 1–2 KiB; an
/// RSA-8192 root stays well under this.
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;
/// The most certificates a roots file may hold.
pub const MAX_ROOTS: usize = 64;
/// The most certificates above the bottom one (intermediates and the
/// root). Yubico's longest path today has three.
const MAX_DEPTH: usize = 5;
/// The most signature checks path building may spend.
const MAX_SIGNATURE_CHECKS: usize = 128;

/// id-ce-basicConstraints (RFC 5280 §4.2.1.9).
pub const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// id-ce-keyUsage (RFC 5280 §4.2.1.3).
pub const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// id-ecPublicKey (RFC 5480).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// id-Ed25519 (RFC 8410).
pub const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// rsaEncryption (RFC 8017).
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// secp256r1, the curve of P-256 keys.
pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1, the curve of P-384 keys.
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Why a certificate or a path does not verify. Each variant is one thing
/// a caller (or an attacker) can cause; the attestation modules map them
/// to their own errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The roots file holds more certificates than [`MAX_ROOTS`].
    #[error("the roots file holds {0} certificates, more than the {MAX_ROOTS} accepted")]
    TooManyRoots(usize),
    /// The roots file holds no self-signed certificate to end a path at.
    #[error("the roots file holds no root (self-signed) certificate")]
    NoRoots,
    /// A certificate that does not parse, is too large, or contradicts
    /// itself.
    #[error("{position} is not a well-formed certificate: {reason}")]
    Malformed {
        /// Which certificate (`the f9 certificate`, `certificate 2 of the
        /// roots file`).
        position: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature that does not verify.
    #[error(
        "the signature of \"{subject}\" by \"{issuer}\" does not verify: the certificate was altered or not issued by it"
    )]
    BadSignature {
        /// The certificate whose signature failed.
        subject: String,
        /// The certificate whose key was tried.
        issuer: String,
    },
    /// No certificate in the roots file issued the top of the chain.
    #[error(
        "no certificate in the roots file issued \"{subject}\" (issuer \"{issuer}\"): the attestation chains to a foreign root"
    )]
    ForeignRoot {
        /// The certificate left without an issuer.
        subject: String,
        /// The issuer it names.
        issuer: String,
    },
    /// A certificate in an issuing position that may not issue
    /// certificates.
    #[error("\"{subject}\" issues certificates but is not a CA: {reason}")]
    NotACa {
        /// The certificate.
        subject: String,
        /// basicConstraints, keyUsage or pathLenConstraint.
        reason: String,
    },
    /// A critical extension this verifier does not implement (RFC 5280
    /// §4.2: such a certificate must be refused).
    #[error("\"{subject}\" has a critical extension {oid} that keybridge does not understand")]
    UnknownCriticalExtension {
        /// The certificate.
        subject: String,
        /// The extension.
        oid: String,
    },
    /// A signature or key algorithm outside the supported set.
    #[error("\"{subject}\" is signed with {algorithm}, which keybridge does not verify")]
    UnsupportedAlgorithm {
        /// The certificate.
        subject: String,
        /// What it uses.
        algorithm: String,
    },
}

/// The DER certificates of a PEM file (`-----BEGIN CERTIFICATE-----`
/// blocks; text around them is ignored, other block types are refused).
pub fn certificates_from_pem(text: &str) -> Result<Vec<Vec<u8>>, ChainError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let position = format!("PEM block {} of the roots file", out.len() + 1);
        let malformed = |reason: String| ChainError::Malformed {
            position: position.clone(),
            reason,
        };
        let block = &rest[start..];
        // The end line: "-----END LABEL-----".
        let end = block
            .find(END)
            .and_then(|e| {
                block[e + END.len()..]
                    .find("-----")
                    .map(|t| e + END.len() + t + 5)
            })
            .ok_or_else(|| malformed("no END line".into()))?;
        let (label, der) = x509_cert::der::pem::decode_vec(&block.as_bytes()[..end])
            .map_err(|e| malformed(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(malformed(format!("a {label} block, not a CERTIFICATE")));
        }
        if out.len() == MAX_ROOTS {
            return Err(ChainError::TooManyRoots(MAX_ROOTS + 1));
        }
        out.push(der);
        rest = &block[end..];
    }
    Ok(out)
}

/// A certificate parsed once, with the exact bytes its signature covers.
pub struct Parsed<'a> {
    /// The decoded certificate.
    pub cert: Certificate,
    /// The TBSCertificate as it appears in the input (never re-encoded).
    pub tbs: &'a [u8],
    /// The subject Name, DER.
    pub subject: Vec<u8>,
    /// The issuer Name, DER.
    pub issuer: Vec<u8>,
}

impl<'a> Parsed<'a> {
    /// Parses `der`; `position` names it in errors (`the f9 certificate`).
    pub fn new(der: &'a [u8], position: &str) -> Result<Self, ChainError> {
        let malformed = |reason: String| ChainError::Malformed {
            position: position.to_owned(),
            reason,
        };
        if der.len() > MAX_CERTIFICATE_LEN {
            return Err(malformed(format!(
                "{} bytes, more than the {MAX_CERTIFICATE_LEN} accepted",
                der.len()
            )));
        }
        // `from_der` refuses trailing bytes and non-DER encodings.
        let cert = Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
        let tbs = SliceReader::new(der)
            .and_then(|mut r| {
                r.sequence(|r| {
                    let tbs = r.tlv_bytes()?;
                    r.tlv_bytes()?; // signatureAlgorithm
                    r.tlv_bytes()?; // signatureValue
                    Ok(tbs)
                })
            })
            .map_err(|e| malformed(e.to_string()))?;
        let t = cert.tbs_certificate();
        // RFC 5280 §4.1.1.2: the algorithm outside the signed part must be
        // the one inside it, or the signature could be reinterpreted.
        if t.signature() != cert.signature_algorithm() {
            return Err(malformed(
                "its signature algorithm differs inside and outside the signed part".into(),
            ));
        }
        let name = |n: &x509_cert::name::Name| n.to_der().map_err(|e| malformed(e.to_string()));
        Ok(Parsed {
            subject: name(t.subject())?,
            issuer: name(t.issuer())?,
            tbs,
            cert,
        })
    }

    /// The subject, as text (`CN=…`), for messages.
    pub fn subject_name(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// The issuer, as text, for messages.
    pub fn issuer_name(&self) -> String {
        self.cert.tbs_certificate().issuer().to_string()
    }

    /// The certificate's extensions (none: empty).
    pub fn extensions(&self) -> &[Extension] {
        self.cert
            .tbs_certificate()
            .extensions()
            .map_or(&[][..], |e| e.as_slice())
    }

    /// The extension with `oid`, if present once; twice is malformed
    /// (RFC 5280 §4.2).
    pub fn extension(&self, oid: ObjectIdentifier) -> Result<Option<&Extension>, ChainError> {
        let mut found = self.extensions().iter().filter(|e| e.extn_id == oid);
        let first = found.next();
        if found.next().is_some() {
            return Err(ChainError::Malformed {
                position: format!("\"{}\"", self.subject_name()),
                reason: format!("extension {oid} appears twice"),
            });
        }
        Ok(first)
    }

    /// The basicConstraints extension, if present (once).
    pub fn basic_constraints(&self) -> Result<Option<BasicConstraints>, ChainError> {
        self.decode_extension(ID_CE_BASIC_CONSTRAINTS)
    }

    /// The keyUsage extension, if present (once).
    pub fn key_usage(&self) -> Result<Option<KeyUsage>, ChainError> {
        self.decode_extension(ID_CE_KEY_USAGE)
    }

    /// The extension with `oid` decoded as `T`, if present (once).
    pub fn decode_extension<T: for<'b> x509_cert::der::Decode<'b>>(
        &self,
        oid: ObjectIdentifier,
    ) -> Result<Option<T>, ChainError> {
        self.extension(oid)?
            .map(|e| {
                T::from_der(e.extn_value.as_bytes()).map_err(|_| ChainError::Malformed {
                    position: format!("\"{}\"", self.subject_name()),
                    reason: format!("extension {oid} does not decode"),
                })
            })
            .transpose()
    }
}

/// The certificates of a roots file, parsed, each marked as an anchor (a
/// self-signed certificate) or not (an intermediate).
pub struct Roots<'a> {
    pool: Vec<Candidate<'a>>,
}

/// A certificate from the roots file, and whether it is an anchor.
struct Candidate<'a> {
    cert: Parsed<'a>,
    root: bool,
}

impl<'a> Roots<'a> {
    /// Parses the roots file's certificates (DER). At least one must be a
    /// root: self-signed, and its own signature verifies.
    pub fn new(roots: &'a [Vec<u8>]) -> Result<Self, ChainError> {
        if roots.len() > MAX_ROOTS {
            return Err(ChainError::TooManyRoots(roots.len()));
        }
        let pool = roots
            .iter()
            .enumerate()
            .map(|(i, der)| {
                let cert = Parsed::new(der, &format!("certificate {} of the roots file", i + 1))?;
                // A self-issued certificate is an anchor only if its own
                // signature verifies; otherwise it is merely unusable.
                let root = cert.subject == cert.issuer && check_signature(&cert, &cert).is_ok();
                Ok(Candidate { cert, root })
            })
            .collect::<Result<Vec<_>, ChainError>>()?;
        if !pool.iter().any(|c| c.root) {
            return Err(ChainError::NoRoots);
        }
        Ok(Roots { pool })
    }

    /// A path from `bottom` up to a root: the certificates above `bottom`,
    /// nearest first, the root last. Each one is a CA (see the module
    /// documentation); `bottom` itself is not judged here.
    pub fn path_from(&self, bottom: &Parsed<'_>) -> Result<Vec<&Parsed<'a>>, ChainError> {
        let mut path = Vec::new();
        let mut budget = MAX_SIGNATURE_CHECKS;
        self.find_path(bottom, &mut path, &mut budget)?;
        Ok(path.into_iter().map(|i| &self.pool[i].cert).collect())
    }

    /// Extends `path` (indexes into the pool, nearest `bottom` first) from
    /// `current` up to a root: depth-first over the certificates whose
    /// subject is `current`'s issuer and whose key verifies its signature.
    fn find_path(
        &self,
        current: &Parsed<'_>,
        path: &mut Vec<usize>,
        budget: &mut usize,
    ) -> Result<(), ChainError> {
        // The most telling reason a candidate was refused, if any was.
        let mut refused: Option<ChainError> = None;
        for (i, candidate) in self.pool.iter().enumerate() {
            if path.contains(&i) || candidate.cert.subject != current.issuer {
                continue;
            }
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            match check_signature(current, &candidate.cert) {
                Ok(()) => {}
                // Same name, another key: another PKI's root (or an
                // impostor). Keep looking; it is reported as foreign below.
                Err(ChainError::BadSignature { .. }) => continue,
                Err(e) => {
                    refused = Some(e);
                    continue;
                }
            }
            // `path.len()` CA certificates lie between this candidate and
            // the bottom certificate, which is not counted: it is the
            // end entity (or, on a YubiKey, the card's issuing key, which
            // acts as one).
            if let Err(e) = check_ca(&candidate.cert, path.len()) {
                refused = Some(e);
                continue;
            }
            path.push(i);
            if candidate.root {
                return Ok(());
            }
            if path.len() < MAX_DEPTH {
                match self.find_path(&candidate.cert, path, budget) {
                    Ok(()) => return Ok(()),
                    Err(ChainError::ForeignRoot { .. }) => {}
                    Err(e) => refused = Some(e),
                }
            }
            path.pop();
        }
        Err(refused.unwrap_or_else(|| ChainError::ForeignRoot {
            subject: current.subject_name(),
            issuer: current.issuer_name(),
        }))
    }
}

/// A certificate that issues others: it must be a CA, allowed to sign
/// certificates, with room for `below` CA certificates under it.
pub fn check_ca(cert: &Parsed<'_>, below: usize) -> Result<(), ChainError> {
    let not_a_ca = |reason: String| ChainError::NotACa {
        subject: cert.subject_name(),
        reason,
    };
    match cert.basic_constraints()? {
        Some(BasicConstraints {
            ca: true,
            path_len_constraint,
        }) => {
            if let Some(limit) = path_len_constraint
                && usize::from(limit) < below
            {
                return Err(not_a_ca(format!(
                    "its pathLenConstraint {limit} allows fewer than the {below} CA certificates below it"
                )));
            }
        }
        Some(_) => return Err(not_a_ca("basicConstraints says CA=false".into())),
        None => return Err(not_a_ca("it has no basicConstraints".into())),
    }
    check_key_cert_sign(cert)?;
    refuse_unknown_critical(cert, &[])
}

/// A keyUsage, if present, must allow keyCertSign.
pub fn check_key_cert_sign(cert: &Parsed<'_>) -> Result<(), ChainError> {
    match cert.key_usage()? {
        Some(ku) if !ku.key_cert_sign() => Err(ChainError::NotACa {
            subject: cert.subject_name(),
            reason: "its keyUsage does not allow keyCertSign".into(),
        }),
        _ => Ok(()),
    }
}

/// Refuses a critical extension other than basicConstraints, keyUsage and
/// the caller's `understood` ones.
pub fn refuse_unknown_critical(
    cert: &Parsed<'_>,
    understood: &[ObjectIdentifier],
) -> Result<(), ChainError> {
    match cert.extensions().iter().find(|e| {
        e.critical
            && e.extn_id != ID_CE_BASIC_CONSTRAINTS
            && e.extn_id != ID_CE_KEY_USAGE
            && !understood.contains(&e.extn_id)
    }) {
        Some(e) => Err(ChainError::UnknownCriticalExtension {
            subject: cert.subject_name(),
            oid: e.extn_id.to_string(),
        }),
        None => Ok(()),
    }
}

/// The named curve of an EC SubjectPublicKeyInfo.
pub fn curve_of(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Option<ObjectIdentifier> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Checks that `issuer`'s key signed `subject`.
pub fn check_signature(subject: &Parsed<'_>, issuer: &Parsed<'_>) -> Result<(), ChainError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    enum Kind {
        Rsa,
        Ecdsa,
        Ed25519,
    }
    let alg = &subject.cert.signature_algorithm().oid;
    let (kind, hash) = match alg.to_string().as_str() {
        "1.2.840.113549.1.1.11" => (Kind::Rsa, Hash::Sha256),
        "1.2.840.113549.1.1.12" => (Kind::Rsa, Hash::Sha384),
        "1.2.840.113549.1.1.13" => (Kind::Rsa, Hash::Sha512),
        "1.2.840.10045.4.3.2" => (Kind::Ecdsa, Hash::Sha256),
        "1.2.840.10045.4.3.3" => (Kind::Ecdsa, Hash::Sha384),
        "1.2.840.10045.4.3.4" => (Kind::Ecdsa, Hash::Sha512),
        "1.3.101.112" => (Kind::Ed25519, Hash::Sha512),
        other => {
            return Err(ChainError::UnsupportedAlgorithm {
                subject: subject.subject_name(),
                algorithm: other.to_owned(),
            });
        }
    };
    let bad = || ChainError::BadSignature {
        subject: subject.subject_name(),
        issuer: issuer.subject_name(),
    };
    let unsupported_key = |what: String| ChainError::UnsupportedAlgorithm {
        subject: issuer.subject_name(),
        algorithm: what,
    };
    let signature = subject.cert.signature().as_bytes().ok_or_else(bad)?;
    let spki = issuer.cert.tbs_certificate().subject_public_key_info();
    let key_bits = spki.subject_public_key.as_bytes().ok_or_else(bad)?;
    let ok = match kind {
        Kind::Rsa => {
            use rsa::pkcs1v15::Pkcs1v15Sign;
            use rsa::pkcs8::DecodePublicKey as _;
            if spki.algorithm.oid != RSA_ENCRYPTION {
                return Err(bad());
            }
            // Refuses moduli over 8192 bits (a bounded cost).
            let der = spki.to_der().map_err(|_| bad())?;
            let key = rsa::RsaPublicKey::from_public_key_der(&der).map_err(|_| bad())?;
            let scheme = match hash {
                Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
                Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
                Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
            };
            key.verify(scheme, &hash.digest(subject.tbs), signature)
                .is_ok()
        }
        Kind::Ecdsa => {
            if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
                return Err(bad());
            }
            let prehash = hash.digest(subject.tbs);
            match curve_of(spki) {
                Some(SECP256R1) => {
                    let key =
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bits).map_err(|_| bad())?;
                    let sig = p256::ecdsa::DerSignature::try_from(signature).map_err(|_| bad())?;
                    key.verify_prehash(&prehash, &sig).is_ok()
                }
                Some(SECP384R1) => {
                    let key =
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bits).map_err(|_| bad())?;
                    let sig = p384::ecdsa::DerSignature::try_from(signature).map_err(|_| bad())?;
                    key.verify_prehash(&prehash, &sig).is_ok()
                }
                other => {
                    return Err(unsupported_key(format!(
                        "an EC key on curve {}",
                        other.map_or_else(|| "(unnamed)".to_owned(), |c| c.to_string())
                    )));
                }
            }
        }
        Kind::Ed25519 => {
            if spki.algorithm.oid != ID_ED25519 {
                return Err(bad());
            }
            let raw: [u8; 32] = key_bits.try_into().map_err(|_| bad())?;
            let sig: [u8; 64] = signature.try_into().map_err(|_| bad())?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| bad())?;
            key.verify_strict(subject.tbs, &ed25519_dalek::Signature::from_bytes(&sig))
                .is_ok()
        }
    };
    if ok { Ok(()) } else { Err(bad()) }
}

/// Small certificate hierarchies built in memory, for the tests of the
/// attestation modules: certificates with exactly the names, serial and
/// extensions given (as vendors' certificates are, with no key identifiers
/// added), valid from 2024 to 2064. Only in this crate's tests and with the
/// `test-pki` feature (other crates' tests), never in a shipped build.
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki {
    use super::ID_CE_BASIC_CONSTRAINTS;
    use p256::ecdsa::signature::{Keypair, Signer};
    use x509_cert::builder::{Builder as _, CertificateBuilder, profile::BuilderProfile};
    use x509_cert::der::asn1::{ObjectIdentifier, OctetString};
    use x509_cert::der::{DateTime, Decode as _, Encode as _};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::BasicConstraints;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::{
        DynSignatureAlgorithmIdentifier, EncodePublicKey, SignatureBitStringEncoding,
        SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef,
    };
    use x509_cert::time::{Time, Validity};

    /// Names and extensions exactly as given.
    struct Fixed {
        issuer: Name,
        subject: Name,
        extensions: Vec<Extension>,
    }

    impl BuilderProfile for Fixed {
        fn get_issuer(&self, _subject: &Name) -> Name {
            self.issuer.clone()
        }
        fn get_subject(&self) -> Name {
            self.subject.clone()
        }
        fn build_extensions(
            &self,
            _spk: SubjectPublicKeyInfoRef<'_>,
            _issuer_spk: SubjectPublicKeyInfoRef<'_>,
            _tbs: &x509_cert::TbsCertificate,
        ) -> x509_cert::builder::Result<Vec<Extension>> {
            Ok(self.extensions.clone())
        }
    }

    /// A certificate (DER) for `spki`, signed by `key` with signatures of
    /// type `S`.
    pub fn issue<K, S>(
        key: &K,
        issuer: Name,
        subject: Name,
        serial: SerialNumber,
        spki: SubjectPublicKeyInfoOwned,
        extensions: Vec<Extension>,
    ) -> Vec<u8>
    where
        K: Signer<S> + Keypair + DynSignatureAlgorithmIdentifier,
        K::VerifyingKey: EncodePublicKey,
        S: SignatureBitStringEncoding,
    {
        let profile = Fixed {
            issuer,
            subject,
            extensions,
        };
        let validity = Validity::new(
            Time::from(DateTime::new(2024, 1, 1, 0, 0, 0).unwrap()),
            Time::from(DateTime::new(2064, 1, 1, 0, 0, 0).unwrap()),
        );
        CertificateBuilder::new(profile, serial, validity, spki)
            .unwrap()
            .build::<_, S>(key)
            .unwrap()
            .to_der()
            .unwrap()
    }

    /// The SubjectPublicKeyInfo of a public key.
    pub fn spki(key: &impl EncodePublicKey) -> SubjectPublicKeyInfoOwned {
        let der = key.to_public_key_der().unwrap();
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap()
    }

    /// An extension with `value` (DER) as its extnValue.
    pub fn ext(oid: ObjectIdentifier, critical: bool, value: &[u8]) -> Extension {
        Extension {
            extn_id: oid,
            critical,
            extn_value: OctetString::new(value).unwrap(),
        }
    }

    /// A critical basicConstraints.
    pub fn basic_constraints(ca: bool, path_len: Option<u8>) -> Extension {
        let bc = BasicConstraints {
            ca,
            path_len_constraint: path_len,
        };
        ext(ID_CE_BASIC_CONSTRAINTS, true, &bc.to_der().unwrap())
    }

    /// A certificate (DER) as PEM text.
    pub fn pem(der: &[u8]) -> String {
        x509_cert::der::pem::encode_string("CERTIFICATE", x509_cert::der::pem::LineEnding::LF, der)
            .unwrap()
    }

    /// A YubiKey-shaped PIV attestation of the P-256 or Ed25519 key `spki`,
    /// under a test CA made from `ca_seed`: a P-256 root ("CN=Test PIV Root
    /// CA Serial 263751", CA, keyCertSign) → an f9 certificate with no
    /// extensions (as on real cards) → the slot's attestation certificate
    /// with Yubico's extensions: firmware 5.4.3, `serial`, the `pin` and
    /// `touch` policy bytes (touch: 1 never, 2 always, 3 cached), form
    /// factor USB-A keychain. The chain (leaf, then f9) and the root, DER.
    pub fn yubikey_attestation(
        ca_seed: u8,
        spki: SubjectPublicKeyInfoOwned,
        serial: u32,
        pin: u8,
        touch: u8,
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        use crate::yubikey::oid;
        use std::str::FromStr as _;
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages};
        let key = |seed: u8| p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32]).unwrap();
        let (root, f9) = (key(ca_seed), key(ca_seed.wrapping_add(100)));
        let name = |s: &str| Name::from_str(s).unwrap();
        const ROOT: &str = "CN=Test PIV Root CA Serial 263751";
        const F9: &str = "CN=Yubico PIV Attestation";
        let serial_of = |n: u32| SerialNumber::new(&(n | 0x0100_0000).to_be_bytes()).unwrap();
        let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        let root_der = issue::<_, p256::ecdsa::DerSignature>(
            &root,
            name(ROOT),
            name(ROOT),
            serial_of(1),
            spki_of(&root),
            vec![
                basic_constraints(true, None),
                ext(super::ID_CE_KEY_USAGE, true, &ku.to_der().unwrap()),
            ],
        );
        let f9_der = issue::<_, p256::ecdsa::DerSignature>(
            &root,
            name(ROOT),
            name(F9),
            serial_of(2),
            spki_of(&f9),
            vec![],
        );
        let leaf = issue::<_, p256::ecdsa::DerSignature>(
            &f9,
            name(F9),
            name("CN=YubiKey PIV Attestation 9c"),
            serial_of(serial),
            spki,
            vec![
                ext(oid::FIRMWARE, false, &[5, 4, 3]),
                ext(oid::SERIAL, false, &serial.to_der().unwrap()),
                ext(oid::POLICY, false, &[pin, touch]),
                ext(oid::FORM_FACTOR, false, &[0x01]),
            ],
        );
        (vec![leaf, f9_der], root_der)
    }

    fn spki_of(key: &p256::ecdsa::SigningKey) -> SubjectPublicKeyInfoOwned {
        spki(key.verifying_key())
    }
}
