//! The virtual card's attestation PKI: a test CA (one of the two chain shapes
//! Yubico ships), the card's f9 key and certificate, and the attestation
//! certificates `ATTEST` returns.
//!
//! Like a real YubiKey, the f9 certificate carries no basicConstraints
//! (yubikey-manager issue 522), so a verifier that insists on it refuses the
//! chain: code under test must handle that deliberately. Attestation
//! certificates are deterministic (serial from the key, RFC 6979 signatures),
//! so a test can compare what any tool fetched with [`Attestation::certify`].

use super::{PinPolicy, SlotKey, TouchPolicy};
use p256::ecdsa::{DerSignature, SigningKey};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use x509_cert::builder::{Builder, CertificateBuilder, profile::BuilderProfile};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{DateTime, Encode, EncodePem, pem::LineEnding};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// Yubico's PIV attestation extensions (1.3.6.1.4.1.41482.3.x).
pub mod oid {
    use super::ObjectIdentifier;
    /// Firmware version: three raw bytes (major, minor, patch).
    pub const FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
    /// Serial number: a DER INTEGER.
    pub const SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
    /// PIN and touch policy: two raw bytes (PIN policy, touch policy).
    pub const POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
    /// Form factor: one raw byte (1 = USB-A keychain, …).
    pub const FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
}

/// Which chain the card's f9 certificate hangs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChainShape {
    /// Cards before 5.7.4: test root ("… PIV Root CA Serial 263751") → f9 →
    /// attestation certificate.
    #[default]
    Legacy,
    /// Firmware 5.7.4 and later: test root ("… Attestation Root 1") →
    /// intermediate ("… PIV Attestation B 1") → f9 → attestation certificate.
    Root1,
}

/// A test CA and the f9 key and certificate it issued for one card.
pub(crate) struct Attestation {
    /// Root first, then any intermediate (not the f9 certificate).
    chain: Vec<Certificate>,
    f9_key: SigningKey,
    f9_cert: Certificate,
}

/// Subject of every f9 certificate (as on real cards).
const F9_SUBJECT: &str = "CN=Yubico PIV Attestation";

impl Attestation {
    /// A fresh CA of shape `shape`, and an f9 certificate for it.
    pub(crate) fn new(shape: ChainShape) -> Self {
        let root_key = random_p256();
        let (root_name, intermediate_name) = match shape {
            ChainShape::Legacy => ("CN=vyubikey Test PIV Root CA Serial 263751", None),
            ChainShape::Root1 => (
                "CN=vyubikey Test Attestation Root 1",
                Some("CN=vyubikey Test PIV Attestation B 1"),
            ),
        };
        let root = issue(
            &root_key,
            root_name,
            root_name,
            &spki_p256(&root_key),
            &serial(b"root", root_name.as_bytes()),
            ca_extensions(),
        );
        let mut chain = vec![root];
        let mut issuer_key = root_key;
        let mut issuer_name = root_name;
        if let Some(name) = intermediate_name {
            let key = random_p256();
            chain.push(issue(
                &issuer_key,
                issuer_name,
                name,
                &spki_p256(&key),
                &serial(b"intermediate", name.as_bytes()),
                ca_extensions(),
            ));
            issuer_key = key;
            issuer_name = name;
        }
        let f9_key = random_p256();
        // No extensions at all: in particular no basicConstraints.
        let f9_cert = issue(
            &issuer_key,
            issuer_name,
            F9_SUBJECT,
            &spki_p256(&f9_key),
            &serial(b"f9", &f9_key.verifying_key().to_sec1_bytes()),
            Vec::new(),
        );
        Attestation {
            chain,
            f9_key,
            f9_cert,
        }
    }

    /// The root and intermediates (PEM, root first).
    pub(crate) fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(pem).collect()
    }

    /// The f9 key's public point (uncompressed SEC1).
    pub(crate) fn f9_public_bytes(&self) -> Vec<u8> {
        self.f9_key
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }

    /// The f9 certificate (DER).
    pub(crate) fn f9_der(&self) -> Vec<u8> {
        self.f9_cert.to_der().expect("encoding a certificate")
    }

    /// The attestation certificate (DER) for `key` in `slot` on a card with
    /// `serial`, `firmware` and `form_factor`.
    pub(crate) fn certify(
        &self,
        slot: u8,
        key: &SlotKey,
        serial: u32,
        firmware: [u8; 3],
        form_factor: u8,
    ) -> Vec<u8> {
        let spki = key.spki();
        let spki_der = spki.to_der().expect("encoding a public key");
        let extensions = vec![
            raw_extension(oid::FIRMWARE, &firmware),
            raw_extension(
                oid::SERIAL,
                &x509_cert::der::asn1::Uint::new(&serial.to_be_bytes())
                    .and_then(|u| u.to_der())
                    .expect("encoding the serial"),
            ),
            raw_extension(
                oid::POLICY,
                &[
                    pin_policy_byte(key.pin_policy),
                    touch_policy_byte(key.touch_policy),
                ],
            ),
            raw_extension(oid::FORM_FACTOR, &[form_factor]),
        ];
        let cert = issue(
            &self.f9_key,
            F9_SUBJECT,
            &format!("CN=YubiKey PIV Attestation {slot:02x}"),
            &spki,
            &serial_of(&[&[slot], &spki_der, &serial.to_be_bytes()]),
            extensions,
        );
        cert.to_der().expect("encoding a certificate")
    }
}

/// The byte the card reports for a PIN policy.
pub(crate) fn pin_policy_byte(p: PinPolicy) -> u8 {
    match p {
        PinPolicy::Never => 1,
        PinPolicy::Once => 2,
        PinPolicy::Always => 3,
    }
}

/// The byte the card reports for a touch policy.
pub(crate) fn touch_policy_byte(t: TouchPolicy) -> u8 {
    match t {
        TouchPolicy::Never => 1,
        TouchPolicy::Always => 2,
        TouchPolicy::Cached => 3,
    }
}

/// PEM of a certificate.
pub(crate) fn pem(cert: &Certificate) -> String {
    cert.to_pem(LineEnding::LF).expect("encoding a certificate")
}

/// A random P-256 key (the card's and the test CA's).
pub(crate) fn random_p256() -> SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("system randomness");
        // Out of range with probability ~2^-32: draw again.
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

fn spki_p256(key: &SigningKey) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).expect("encoding a public key")
}

fn serial(kind: &[u8], data: &[u8]) -> SerialNumber {
    serial_of(&[kind, data])
}

/// A positive 16-byte serial derived from `parts`.
fn serial_of(parts: &[&[u8]]) -> SerialNumber {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let mut bytes: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::new(&bytes).expect("a valid serial")
}

fn ca_extensions() -> Vec<Extension> {
    vec![
        Extension {
            extn_id: ObjectIdentifier::new_unwrap("2.5.29.19"),
            critical: true,
            extn_value: OctetString::new(
                BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                }
                .to_der()
                .expect("encoding basicConstraints"),
            )
            .expect("an octet string"),
        },
        Extension {
            extn_id: ObjectIdentifier::new_unwrap("2.5.29.15"),
            critical: true,
            extn_value: OctetString::new(
                KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
                    .to_der()
                    .expect("encoding keyUsage"),
            )
            .expect("an octet string"),
        },
    ]
}

fn raw_extension(oid: ObjectIdentifier, value: &[u8]) -> Extension {
    Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value).expect("an octet string"),
    }
}

/// The builder profile of every certificate here: names and extensions as
/// given, nothing added (no key identifiers: real attestation certificates
/// have none either).
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
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

fn issue(
    signer: &SigningKey,
    issuer: &str,
    subject: &str,
    spki: &SubjectPublicKeyInfoOwned,
    serial: &SerialNumber,
    extensions: Vec<Extension>,
) -> Certificate {
    // Fixed dates keep the certificates deterministic; like real ones they
    // last for decades.
    let not_before = DateTime::new(2024, 1, 1, 0, 0, 0).expect("a date");
    let not_after = DateTime::new(2064, 1, 1, 0, 0, 0).expect("a date");
    let profile = Fixed {
        issuer: Name::from_str(issuer).expect("a name"),
        subject: Name::from_str(subject).expect("a name"),
        extensions,
    };
    CertificateBuilder::new(
        profile,
        serial.clone(),
        Validity::new(Time::from(not_before), Time::from(not_after)),
        spki.clone(),
    )
    .expect("a certificate builder")
    .build::<_, DerSignature>(signer)
    .expect("signing a certificate")
}
