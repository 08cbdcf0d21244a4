//! Checking the TPM2_Certify evidence of a key: the TPM's attestation key
//! (AK) signed a statement that the key, named by its public area, lives in
//! that TPM and was certified for this key record.
//!
//! The verifier itself lives in the pure-Rust `keybridge-evidence` crate
//! ([`keybridge_evidence::tpm`]: the evidence format, what is checked and
//! what is not are documented there), shared with the device verifier,
//! which must not link tpm2-tss; it is re-exported here so that
//! `keybridge_backends::tpm::attestation::…` keeps naming the same items.
//! What stays here is [`verify_report`], the backend-neutral shape of its
//! result ([`crate::verify_evidence`]), and the differential test of its
//! TPM structure reader ([`wire`]) against `tss-esapi`, which this crate
//! links anyway.

pub use keybridge_evidence::tpm::*;

use crate::BackendError;
use keybridge_protocol::PublicKey;

/// [`verify`] with the roots as PEM text (empty: no certificate check, the
/// AK is trusted on first use), in the backend-neutral shape
/// ([`crate::verify_evidence`]).
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
    const STATEMENT: &str = "the TPM attestation key named above certified that this key was made inside its TPM, cannot leave it, and belongs to this key record";
    let (proved, not_checked) = match (&r.ak_certificate, &r.ek_certificate) {
        (Some(ak), _) if r.ak_certified => {
            facts.extend([
                ("AK certificate".into(), ak.subject.clone()),
                ("AK certificate issuer".into(), ak.issuer.clone()),
                ("root".into(), ak.root.clone()),
                ("chain".into(), ak.chain.join(" ← ")),
            ]);
            (
                format!(
                    "{STATEMENT}; the AK itself is certified by a root you gave (its AK certificate chains to it), so the key is in a TPM that CA vouches for"
                ),
                "the certificates' validity dates and revocation, and the statement's clock, were not checked".to_owned(),
            )
        }
        (_, Some(ek)) => {
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
                ("AK certificate".into(), "none".into()),
            ]);
            (
                "the attestation key (AK) named above signed a statement that this key was made inside its TPM, cannot leave it, and belongs to this key record; the EK certificate in the evidence chains to a root you gave and names a genuine TPM's maker and model, but it does not bind the AK to that TPM (see what was not checked)".to_owned(),
                "an EK (endorsement key) certificate does not bind the AK: EK certificates are public and can be copied, and nothing ties the AK to that EK (no credential activation), so this statement could come from any key that claims a TPM AK's attributes, in a TPM or not; a verifier that requires hardware (keybridge-device's policy) refuses it. To bind the AK, have it certified (an IAK certificate from the TPM's or the computer's maker, or an AK certificate from your organization's CA) and pass that certificate with `keybridge keys request --ak-cert FILE`, and its CA as the roots. Validity dates, revocation and the statement's clock were not checked".to_owned(),
            )
        }
        _ => {
            let (ak_fact, ek_fact) = if r.ak_certificate_present {
                ("present, not checked (no roots given)", "none")
            } else if r.ek_certificate_present {
                ("none", "present, not checked (no roots given)")
            } else {
                ("none", "none")
            };
            facts.push(("AK certificate".into(), ak_fact.into()));
            facts.push(("EK certificate".into(), ek_fact.into()));
            (
                STATEMENT.to_owned(),
                "the AK is not bound to a TPM: trust on first use (no roots given; most firmware TPMs have no EK certificate, and an EK certificate would not bind the AK anyway; compare the AK name with the one other keys on this TPM show). To bind it, pass its AK certificate (IAK, or from your organization's CA) with `keybridge keys request --ak-cert FILE` and check with that CA as the roots; the statement's clock was not judged".to_owned(),
            )
        }
    };
    Ok(crate::EvidenceReport {
        kind: super::EVIDENCE_KIND.into(),
        proved,
        not_checked,
        facts,
        report: serde_json::to_value(&r).expect("a report serializes"),
    })
}

#[cfg(test)]
mod tests {
    //! The fixtures are real TPM2_Certify statements from swtpm, made by
    //! `keybridge-evidence`'s `src/testdata/tpm/make.sh` and read from there.
    //! The verifier's own tests are in that crate; here are the report's
    //! shape and the differential test of its reader against tss-esapi.
    use super::*;
    use crate::x509::ChainError;

    macro_rules! fixture {
        ($path:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../evidence/src/testdata/tpm/",
                $path
            ))
            .to_vec()
        };
    }

    macro_rules! fixture_str {
        ($path:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../evidence/src/testdata/tpm/",
                $path
            ))
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
            let public = wire::parse_public(&chain[3], wire::KEY_PUBLIC).unwrap();
            let wire::PublicParameters::Ecc { x, y, .. } = public.parameters else {
                panic!("not an ECC key")
            };
            let mut point = vec![0x04];
            for coordinate in [x, y] {
                point.extend(vec![0; 32 - coordinate.len()]);
                point.extend(coordinate);
            }
            let key = PublicKey::p256_sec1(&point).unwrap();
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
        crate::x509::certificates_from_pem(fixture_str!("ek/roots.pem")).unwrap()
    }

    const ROOT: &str = "CN=swtpm-localca-rootca";
    const ISSUER: &str = "CN=swtpm-localca";

    #[test]
    fn a_statement_without_ek_verifies_with_the_ak_trusted_on_first_use() {
        let case = plain();
        let r = verify(&case.chain, &[], &case.key).unwrap();
        // The AK's name as tpm2_readpublic computed it.
        assert_eq!(r.ak_name, hex::encode(fixture!("plain/ak.name")));
        assert_eq!(r.firmware, "8217.4131.22.13878 (0x2019102300163636)");
        assert_eq!(r.ek_certificate, None);

        let report = verify_report(&case.chain, "", &case.key).unwrap();
        assert_eq!(report.kind, "tpm2-certify");
        assert!(
            report
                .not_checked
                .starts_with("the AK is not bound to a TPM: trust on first use"),
            "{}",
            report.not_checked
        );
        for said in [
            "most firmware TPMs have no EK certificate",
            "an EK certificate would not bind the AK",
            "`keybridge keys request --ak-cert FILE`",
        ] {
            assert!(report.not_checked.contains(said), "{said}");
        }
        let fact = |name: &str| {
            report
                .facts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(fact("AK name"), Some(r.ak_name.clone()));
        assert_eq!(fact("qualified signer"), Some(r.qualified_signer.clone()));
        assert_eq!(fact("key name"), Some(r.key_name.clone()));
        assert_eq!(
            fact("key attributes").as_deref(),
            Some("fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign")
        );
        assert_eq!(fact("firmware"), Some(r.firmware.clone()));
        assert_eq!(fact("EK certificate").as_deref(), Some("none"));
        assert_eq!(fact("AK certificate").as_deref(), Some("none"));
        assert_eq!(report.report["ak_bound_to_ek"], false);
        assert_eq!(report.report["ak_certified"], false);
        assert_eq!(report.report, serde_json::to_value(&r).unwrap());
        // Whitespace is no roots file.
        verify_report(&case.chain, " \n", &case.key).unwrap();
    }

    #[test]
    fn an_ek_certificate_chains_to_the_roots_given() {
        let case = with_ek();
        let r = verify(&case.chain, &roots(), &case.key).unwrap();
        assert_eq!(r.ak_name, hex::encode(fixture!("ek/ak.name")));
        let ek = r.ek_certificate.unwrap();
        assert_eq!(ek.chain, ["CN=unknown", ISSUER, ROOT]);

        let pem = fixture_str!("ek/roots.pem");
        let report = verify_report(&case.chain, pem, &case.key).unwrap();
        // It says, in both sentences, that an EK certificate does not bind
        // the AK, what follows, and how to fix it.
        assert!(
            report.proved.contains("chains to a root you gave")
                && report
                    .proved
                    .contains("it does not bind the AK to that TPM"),
            "{}",
            report.proved
        );
        for said in [
            "an EK (endorsement key) certificate does not bind the AK: EK certificates are public and can be copied",
            "this statement could come from any key that claims a TPM AK's attributes",
            "a verifier that requires hardware (keybridge-device's policy) refuses it",
            "have it certified (an IAK certificate",
            "`keybridge keys request --ak-cert FILE`",
            "Validity dates, revocation and the statement's clock were not checked",
        ] {
            assert!(
                report.not_checked.contains(said),
                "{said}: {}",
                report.not_checked
            );
        }
        assert_eq!(report.report["ak_certified"], false);
        assert!(
            report
                .facts
                .contains(&("AK certificate".into(), "none".into()))
        );
        for fact in [
            ("EK certificate", "CN=unknown"),
            ("EK issuer", ISSUER),
            ("TPM manufacturer", "id:00001014"),
            ("TPM model", "swtpm"),
            ("TPM version", "id:20191023"),
            ("root", ROOT),
            (
                "chain",
                "CN=unknown ← CN=swtpm-localca ← CN=swtpm-localca-rootca",
            ),
        ] {
            assert!(
                report.facts.contains(&(fact.0.into(), fact.1.into())),
                "{fact:?}"
            );
        }
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
        assert!(
            report
                .facts
                .contains(&("AK certificate".into(), "none".into()))
        );
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
        let pem = fixture_str!("ek/roots.pem");
        let e = verify_report(&case.chain, pem, &case.key).unwrap_err();
        assert!(matches!(e, BackendError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("no EK certificate"), "{e}");
        assert!(e.to_string().contains("no AK certificate"), "{e}");
        // A roots file without a certificate is not "no roots".
        let e = verify_report(&case.chain, "my roots", &case.key).unwrap_err();
        assert!(matches!(e, BackendError::InvalidSecret(_)), "{e}");
    }

    mod ak_certificate {
        //! An AK certificate for the swtpm AK (`plain/`), from a test CA.
        use super::*;
        use crate::x509::test_pki::{self, basic_constraints};
        use std::str::FromStr as _;
        use x509_cert::name::Name;
        use x509_cert::serial_number::SerialNumber;

        const ROOT: &str = "CN=Test AK Root";
        const SUBJECT: &str = "CN=AK of test-device";

        fn signer(seed: u8) -> p256::ecdsa::SigningKey {
            p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
        }

        /// A root (from `seed`) as PEM, and the plain TPM's evidence with
        /// a certificate from it for the AK.
        fn certified(seed: u8) -> (String, Case) {
            let root = signer(seed);
            let name = |s: &str| Name::from_str(s).unwrap();
            let issue = |subject: &str, spki, extensions| {
                test_pki::issue::<_, p256::ecdsa::DerSignature>(
                    &root,
                    name(ROOT),
                    name(subject),
                    SerialNumber::from(3u32),
                    spki,
                    extensions,
                )
            };
            let root_der = issue(
                ROOT,
                test_pki::spki(root.verifying_key()),
                vec![basic_constraints(true, None)],
            );
            let ak = fixture!("plain/ak-public.bin");
            let point = ak_point(&ak).unwrap();
            let ak_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
            let cert = issue(
                SUBJECT,
                test_pki::spki(&ak_key),
                vec![basic_constraints(false, None)],
            );
            assert!(is_ak_certificate(&cert, &ak).unwrap());
            let mut case = plain();
            case.chain.push(cert);
            (test_pki::pem(&root_der), case)
        }

        #[test]
        fn an_ak_certificate_from_the_roots_is_reported_as_binding_the_ak() {
            let (pem, case) = certified(21);
            let report = verify_report(&case.chain, &pem, &case.key).unwrap();
            assert!(
                report.proved.ends_with(
                    "; the AK itself is certified by a root you gave (its AK certificate chains to it), so the key is in a TPM that CA vouches for"
                ),
                "{}",
                report.proved
            );
            assert_eq!(
                report.not_checked,
                "the certificates' validity dates and revocation, and the statement's clock, were not checked"
            );
            for fact in [
                ("AK certificate", SUBJECT),
                ("AK certificate issuer", ROOT),
                ("root", ROOT),
                ("chain", "CN=AK of test-device ← CN=Test AK Root"),
            ] {
                assert!(
                    report.facts.contains(&(fact.0.into(), fact.1.into())),
                    "{fact:?}"
                );
            }
            assert!(!report.facts.iter().any(|(n, _)| n == "EK certificate"));
            assert_eq!(report.report["ak_certified"], true);
            assert_eq!(report.report["ak_certificate"]["subject"], SUBJECT);
            assert_eq!(report.report["ek_certificate"], serde_json::Value::Null);
            assert_eq!(report.report["ak_bound_to_ek"], false);
        }

        #[test]
        fn without_roots_or_under_other_roots_the_ak_certificate_binds_nothing() {
            let (_, case) = certified(21);
            let report = verify_report(&case.chain, "", &case.key).unwrap();
            assert!(report.facts.contains(&(
                "AK certificate".into(),
                "present, not checked (no roots given)".into()
            )));
            assert!(
                report
                    .facts
                    .contains(&("EK certificate".into(), "none".into()))
            );
            assert!(report.not_checked.contains("trust on first use"));
            assert_eq!(report.report["ak_certified"], false);
            // Another root of the same name.
            let (other, _) = certified(22);
            let e = verify_report(&case.chain, &other, &case.key).unwrap_err();
            assert!(matches!(e, BackendError::NotFound(_)), "{e}");
            assert!(e.to_string().contains("foreign root"), "{e}");
        }
    }

    mod differential {
        //! keybridge-evidence reads the TPM structures with its own reader
        //! ([`wire`]); before, this crate read them with `tss-esapi` (that
        //! is tpm2-tss's `Tss2_MU_*` unmarshallers) and took only what
        //! marshalled back to exactly the bytes given. Here both readers
        //! get the same inputs: the swtpm fixtures, the public areas of
        //! tpm2-openssl's key files (`../testdata/`), tss-esapi's EK
        //! templates, and hand-made structures of the layouts those lack
        //! (RSA, KEYEDHASH and SYMCIPHER objects, ECDAA, KDFs, the other
        //! signature schemes); and every change of one byte of each to each
        //! of the 255 other values, every truncation, and one byte
        //! appended. Both must read an input, or both refuse it; what both
        //! read must be the same, field by field ([`wire`]'s types built
        //! from tss-esapi's).
        //!
        //! One class of disagreement is deliberate, and asserted as such:
        //! - reserved TPMA_OBJECT bits (0, 3, 8, 9, 12–15, 20–31; Part 2
        //!   §8.3): tss-esapi keeps and marshals them back, so it reads
        //!   such a public area; keybridge-evidence refuses it ("its
        //!   objectAttributes set reserved bits (0x…)"). A TPM refuses to
        //!   create or load such an object, so no genuine public area has
        //!   them.
        //!
        //! Differences that are not disagreements (both refuse, with other
        //! errors): a sigAlg without a TPMU_SIGNATURE layout is
        //! UnsupportedSignature here, a tpm2-tss error there. Both accept a
        //! TPM_ALG_NULL hash in a TPMS_SCHEME_HASH (Part 2 forbids it;
        //! nothing keybridge checks depends on it) and both refuse KDF2, an
        //! HMAC with SHA-3 and extraData over 64 bytes (tpm2-tss 3.2 has no
        //! layout or room for them).
        use super::super::*;
        use crate::tpm::keyfile::KeyFile;
        use std::fmt::Debug;
        use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ek};
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, KeyDerivationFunction};
        use tss_esapi::interface_types::ecc::EccCurve;
        use tss_esapi::interface_types::key_bits::RsaKeyBits;
        use tss_esapi::structures::{
            Attest as TssAttest, AttestInfo, Digest, EccScheme, EccSignature, HashAgile,
            HashScheme, HmacScheme, KeyDerivationFunctionScheme, KeyedHashScheme,
            Public as TssPublic, PublicKeyedHashParameters, RsaScheme, RsaSignature,
            Signature as TssSignature, SymmetricDefinitionObject, XorScheme,
        };
        use tss_esapi::traits::{Marshall, UnMarshall};
        use tss_esapi::tss2_esys::TPMA_OBJECT;
        use wire::{SignatureScheme, alg, curve};

        /// What the verifier read with tss-esapi: at most
        /// MAX_STRUCTURE_LEN bytes that unmarshal and marshal back to the
        /// same bytes.
        fn tss_read<T: UnMarshall + Marshall>(bytes: &[u8]) -> Option<T> {
            if bytes.len() > MAX_STRUCTURE_LEN {
                return None;
            }
            let value = T::unmarshall(bytes).ok()?;
            (value.marshall().ok()? == bytes).then_some(value)
        }

        /// A TPMS_ATTEST as the verifier read it with tss-esapi: its magic
        /// and type checked first.
        fn tss_attest(bytes: &[u8]) -> Option<TssAttest> {
            let header = bytes.get(..6)?;
            (header[..4] == TPM_GENERATED_VALUE.to_be_bytes()
                && header[4..] == TPM_ST_ATTEST_CERTIFY.to_be_bytes())
            .then(|| tss_read(bytes))
            .flatten()
        }

        fn hash(h: HashingAlgorithm) -> wire::HashAlg {
            wire::HashAlg::from_id(u16::from(h)).expect("a TPM hash algorithm")
        }

        fn tss_hash(h: wire::HashAlg) -> HashingAlgorithm {
            HashingAlgorithm::try_from(h.id()).unwrap()
        }

        fn attest_of(t: &TssAttest) -> wire::Attest {
            let AttestInfo::Certify { info } = t.attested() else {
                panic!(
                    "tss-esapi read a TPM_ST_ATTEST_CERTIFY as {:?}",
                    t.attested()
                )
            };
            let clock = t.clock_info();
            wire::Attest {
                qualified_signer: t.qualified_signer().value().to_vec(),
                extra_data: t.extra_data().value().to_vec(),
                clock_info: wire::ClockInfo {
                    clock: clock.clock(),
                    reset_count: clock.reset_count(),
                    restart_count: clock.restart_count(),
                    safe: clock.safe(),
                },
                firmware_version: t.firmware_version(),
                certified: wire::CertifyInfo {
                    name: info.name().value().to_vec(),
                    qualified_name: info.qualified_name().value().to_vec(),
                },
            }
        }

        /// tss-esapi's signature as [`wire::Signature`] (`ours` for what
        /// tss-esapi has no getter for: an HMAC's digest is compared by
        /// building ours into a `HashAgile`).
        fn signature_of(t: &TssSignature, ours: &wire::Signature) -> wire::Signature {
            assert_eq!(
                format!("{:?}", ours.scheme()),
                format!("{:?}", t.algorithm()),
                "the scheme's name, as error messages show it"
            );
            let ecc = |scheme, e: &EccSignature| wire::Signature::Ecc {
                scheme,
                hash: hash(e.hashing_algorithm()),
                r: e.signature_r().value().to_vec(),
                s: e.signature_s().value().to_vec(),
            };
            let rsa = |scheme, r: &RsaSignature| wire::Signature::Rsa {
                scheme,
                hash: hash(r.hashing_algorithm()),
                sig: r.signature().value().to_vec(),
            };
            match t {
                TssSignature::EcDsa(e) => ecc(SignatureScheme::EcDsa, e),
                TssSignature::EcDaa(e) => ecc(SignatureScheme::EcDaa, e),
                TssSignature::Sm2(e) => ecc(SignatureScheme::Sm2, e),
                TssSignature::EcSchnorr(e) => ecc(SignatureScheme::EcSchnorr, e),
                TssSignature::RsaSsa(r) => rsa(SignatureScheme::RsaSsa, r),
                TssSignature::RsaPss(r) => rsa(SignatureScheme::RsaPss, r),
                TssSignature::Hmac(agile) => {
                    let wire::Signature::Hmac { hash: h, digest } = ours else {
                        panic!("tss-esapi read an HMAC, keybridge-evidence {ours:?}")
                    };
                    let digest = Digest::try_from(digest.clone()).unwrap();
                    assert_eq!(HashAgile::new(tss_hash(*h), digest), *agile);
                    ours.clone()
                }
                TssSignature::Null => wire::Signature::Null,
            }
        }

        fn symmetric_of(s: SymmetricDefinitionObject) -> Option<wire::SymmetricObject> {
            let (algorithm, key_bits, mode) = match s {
                SymmetricDefinitionObject::Aes { key_bits, mode } => {
                    (alg::AES, u16::from(key_bits), mode)
                }
                SymmetricDefinitionObject::Sm4 { key_bits, mode } => {
                    (alg::SM4, u16::from(key_bits), mode)
                }
                SymmetricDefinitionObject::Camellia { key_bits, mode } => {
                    (alg::CAMELLIA, u16::from(key_bits), mode)
                }
                SymmetricDefinitionObject::Null => return None,
            };
            Some(wire::SymmetricObject {
                algorithm,
                key_bits,
                mode: u16::from(mode),
            })
        }

        fn with_hash(scheme: u16, h: HashScheme) -> Option<wire::AsymScheme> {
            Some(wire::AsymScheme {
                scheme,
                hash: Some(hash(h.hashing_algorithm())),
                count: None,
            })
        }

        fn ecc_scheme_of(s: EccScheme) -> Option<wire::AsymScheme> {
            match s {
                EccScheme::EcDsa(h) => with_hash(alg::ECDSA, h),
                EccScheme::EcDh(h) => with_hash(alg::ECDH, h),
                EccScheme::Sm2(h) => with_hash(alg::SM2, h),
                EccScheme::EcSchnorr(h) => with_hash(alg::ECSCHNORR, h),
                EccScheme::EcMqv(h) => with_hash(alg::ECMQV, h),
                EccScheme::EcDaa(d) => Some(wire::AsymScheme {
                    scheme: alg::ECDAA,
                    hash: Some(hash(d.hashing_algorithm())),
                    count: Some(d.count()),
                }),
                EccScheme::Null => None,
            }
        }

        fn rsa_scheme_of(s: RsaScheme) -> Option<wire::AsymScheme> {
            match s {
                RsaScheme::RsaSsa(h) => with_hash(alg::RSASSA, h),
                RsaScheme::RsaPss(h) => with_hash(alg::RSAPSS, h),
                RsaScheme::Oaep(h) => with_hash(alg::OAEP, h),
                RsaScheme::RsaEs => Some(wire::AsymScheme {
                    scheme: alg::RSAES,
                    hash: None,
                    count: None,
                }),
                RsaScheme::Null => None,
            }
        }

        fn kdf_of(s: KeyDerivationFunctionScheme) -> Option<wire::KdfScheme> {
            let (scheme, h) = match s {
                KeyDerivationFunctionScheme::Kdf1Sp800_56a(h) => (alg::KDF1_SP800_56A, h),
                KeyDerivationFunctionScheme::Kdf2(h) => (alg::KDF2, h),
                KeyDerivationFunctionScheme::Kdf1Sp800_108(h) => (alg::KDF1_SP800_108, h),
                KeyDerivationFunctionScheme::Mgf1(h) => (alg::MGF1, h),
                KeyDerivationFunctionScheme::Null => return None,
            };
            Some(wire::KdfScheme {
                scheme,
                hash: hash(h.hashing_algorithm()),
            })
        }

        /// tss-esapi's public area as [`wire::Public`] (`ours` for what
        /// tss-esapi has no getter for: a KEYEDHASH scheme is compared by
        /// building ours into its parameters).
        fn public_of(t: &TssPublic, ours: &wire::Public) -> wire::Public {
            let parameters = match t {
                TssPublic::Ecc {
                    parameters: p,
                    unique,
                    ..
                } => wire::PublicParameters::Ecc {
                    symmetric: symmetric_of(p.symmetric_definition_object()),
                    scheme: ecc_scheme_of(p.ecc_scheme()),
                    curve: u16::from(p.ecc_curve()),
                    kdf: kdf_of(p.key_derivation_function_scheme()),
                    x: unique.x().value().to_vec(),
                    y: unique.y().value().to_vec(),
                },
                TssPublic::Rsa {
                    parameters: p,
                    unique,
                    ..
                } => wire::PublicParameters::Rsa {
                    symmetric: symmetric_of(p.symmetric_definition_object()),
                    scheme: rsa_scheme_of(p.rsa_scheme()),
                    key_bits: u16::from(p.key_bits()),
                    exponent: p.exponent().value(),
                    modulus: unique.value().to_vec(),
                },
                TssPublic::KeyedHash {
                    parameters: p,
                    unique,
                    ..
                } => {
                    let wire::PublicParameters::KeyedHash { scheme, .. } = &ours.parameters else {
                        panic!("tss-esapi read a KEYEDHASH object, keybridge-evidence {ours:?}")
                    };
                    let built = match *scheme {
                        None => KeyedHashScheme::Null,
                        Some(wire::KeyedHashScheme::Hmac { hash }) => KeyedHashScheme::Hmac {
                            hmac_scheme: HmacScheme::new(tss_hash(hash)),
                        },
                        Some(wire::KeyedHashScheme::Xor { hash, kdf }) => KeyedHashScheme::Xor {
                            xor_scheme: XorScheme::new(
                                tss_hash(hash),
                                KeyDerivationFunction::try_from(kdf).unwrap(),
                            ),
                        },
                    };
                    assert_eq!(PublicKeyedHashParameters::new(built), *p);
                    wire::PublicParameters::KeyedHash {
                        scheme: *scheme,
                        unique: unique.value().to_vec(),
                    }
                }
                TssPublic::SymCipher {
                    parameters: p,
                    unique,
                    ..
                } => wire::PublicParameters::SymCipher {
                    symmetric: symmetric_of(p.symmetric_definition_object()),
                    unique: unique.value().to_vec(),
                },
            };
            wire::Public {
                name_alg: hash(t.name_hashing_algorithm()),
                attributes: wire::ObjectAttributes(TPMA_OBJECT::from(t.object_attributes())),
                auth_policy: t.auth_policy().value().to_vec(),
                parameters,
            }
        }

        /// How the inputs went.
        #[derive(Debug, Default)]
        struct Tally {
            inputs: usize,
            both_read: usize,
            both_refused: usize,
            /// tss-esapi read them, keybridge-evidence refused their
            /// reserved TPMA_OBJECT bits.
            reserved_bits: usize,
            /// Which reserved bits those were.
            reserved_seen: u32,
        }

        /// One input to both readers: they agree, or `deliberate` says
        /// why not; what both read is `same`.
        fn judge<O: Debug, T>(
            part: &str,
            bytes: &[u8],
            (ours, theirs): (Result<O, CertifyError>, Option<T>),
            tally: &mut Tally,
            same: impl FnOnce(&O, &T),
            deliberate: impl FnOnce(&CertifyError, &T) -> Option<u32>,
        ) {
            tally.inputs += 1;
            match (ours, theirs) {
                (Ok(o), Some(t)) => {
                    same(&o, &t);
                    tally.both_read += 1;
                }
                (Err(_), None) => tally.both_refused += 1,
                (Err(e), Some(t)) => match deliberate(&e, &t) {
                    Some(reserved) => {
                        tally.reserved_bits += 1;
                        tally.reserved_seen |= reserved;
                    }
                    None => panic!(
                        "{part} {}: tss-esapi reads it, keybridge-evidence refuses it: {e}",
                        hex::encode(bytes)
                    ),
                },
                (Ok(o), None) => panic!(
                    "{part} {}: keybridge-evidence reads it ({o:?}), tss-esapi refuses it",
                    hex::encode(bytes)
                ),
            }
        }

        /// `bytes` as the blob `part`, through both readers.
        fn compare(part: &'static str, bytes: &[u8], tally: &mut Tally) {
            let context = || format!("{part} {}", hex::encode(bytes));
            match part {
                wire::ATTEST => judge(
                    part,
                    bytes,
                    (wire::parse_attest(bytes), tss_attest(bytes)),
                    tally,
                    |o, t| assert_eq!(*o, attest_of(t), "{}", context()),
                    |_, _| None,
                ),
                wire::SIGNATURE => judge(
                    part,
                    bytes,
                    (wire::parse_signature(bytes), tss_read(bytes)),
                    tally,
                    |o, t| assert_eq!(*o, signature_of(t, o), "{}", context()),
                    |_, _| None,
                ),
                _ => judge(
                    part,
                    bytes,
                    (
                        wire::parse_public(bytes, part),
                        tss_read::<TssPublic>(bytes),
                    ),
                    tally,
                    |o, t| {
                        assert_eq!(*o, public_of(t, o), "{}", context());
                        assert_eq!(o.attributes.0 & !wire::ObjectAttributes::DEFINED, 0);
                    },
                    |e, t| {
                        let bits = TPMA_OBJECT::from(t.object_attributes());
                        let reserved = bits & !wire::ObjectAttributes::DEFINED;
                        let refused = CertifyError::Malformed {
                            part,
                            reason: format!(
                                "its objectAttributes set reserved bits ({reserved:#010x})"
                            ),
                        };
                        (reserved != 0 && *e == refused).then_some(reserved)
                    },
                ),
            }
        }

        fn tpm2b(bytes: &[u8]) -> Vec<u8> {
            let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
            out.extend(bytes);
            out
        }

        fn be(values: &[u16]) -> Vec<u8> {
            values.iter().flat_map(|v| v.to_be_bytes()).collect()
        }

        /// A TPMT_PUBLIC with nameAlg SHA-256: type, objectAttributes,
        /// authPolicy, then `rest` (parameters and unique).
        fn public(kind: u16, attributes: u32, policy: &[u8], rest: &[&[u8]]) -> Vec<u8> {
            [
                &kind.to_be_bytes()[..],
                &alg::SHA256.to_be_bytes(),
                &attributes.to_be_bytes(),
                &tpm2b(policy),
                &rest.concat(),
            ]
            .concat()
        }

        /// The inputs, before their changes.
        fn corpus() -> Vec<(&'static str, Vec<u8>)> {
            use wire::ObjectAttributes as A;
            let mut corpus = vec![
                (wire::ATTEST, fixture!("plain/attest.bin")),
                (wire::ATTEST, fixture!("plain/movable-attest.bin")),
                (wire::ATTEST, fixture!("plain/other-kid-attest.bin")),
                (wire::ATTEST, fixture!("ek/attest.bin")),
                (wire::SIGNATURE, fixture!("plain/signature.bin")),
                (wire::SIGNATURE, fixture!("plain/movable-signature.bin")),
                (wire::SIGNATURE, fixture!("plain/other-kid-signature.bin")),
                (wire::SIGNATURE, fixture!("ek/signature.bin")),
                (wire::AK_PUBLIC, fixture!("plain/ak-public.bin")),
                (wire::AK_PUBLIC, fixture!("ek/ak-public.bin")),
                (wire::KEY_PUBLIC, fixture!("plain/key-public.bin")),
                (wire::KEY_PUBLIC, fixture!("plain/movable-public.bin")),
                (wire::KEY_PUBLIC, fixture!("ek/key-public.bin")),
            ];
            // tpm2-openssl's keys: P-256 ones, and an RSA 2048 one.
            for pem in [
                include_str!("testdata/tpm2-openssl-p256-empty-auth.pem"),
                include_str!("testdata/tpm2-openssl-p256-password.pem"),
                include_str!("testdata/tpm2-openssl-p256-persistent-parent.pem"),
                include_str!("testdata/tpm2-openssl-rsa2048.pem"),
            ] {
                let file = KeyFile::from_pem(pem).unwrap();
                corpus.push((wire::KEY_PUBLIC, file.public_area().unwrap().to_vec()));
            }
            // EK templates: RSA 2048 and ECC P-256 (AES-128-CFB, a policy),
            // ECC P-384 (AES-256-CFB, SHA-384).
            for selection in [
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
            ] {
                let template =
                    ek::create_ek_public_from_default_template_2(selection, None::<DefaultKey>)
                        .unwrap();
                corpus.push((wire::AK_PUBLIC, template.marshall().unwrap()));
            }
            // The other layouts, by hand.
            let key = A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::USER_WITH_AUTH;
            let storage = key | A::RESTRICTED | A::DECRYPT;
            let points = [tpm2b(&[1; 32]), tpm2b(&[2; 32])].concat();
            corpus.extend(
                [
                    // ECDAA with a count, on a BN curve, a KDF; Camellia-192-CBC.
                    public(
                        alg::ECC,
                        key | A::SIGN,
                        &[3; 48],
                        &[
                            &be(&[alg::CAMELLIA, 192, alg::CBC, alg::ECDAA, alg::SHA256, 9]),
                            &be(&[curve::BN_P256, alg::KDF1_SP800_108, alg::SHA384]),
                            &points,
                        ],
                    ),
                    // ECDH, MGF1, SM4 storage parent on SM2's curve.
                    public(
                        alg::ECC,
                        storage,
                        &[],
                        &[
                            &be(&[alg::SM4, 128, alg::CFB, alg::ECDH, alg::SM3_256]),
                            &be(&[curve::SM2_P256, alg::MGF1, alg::SHA512]),
                            &points,
                        ],
                    ),
                    // RSASSA-SHA256 2048, exponent 65537; OAEP 3072.
                    public(
                        alg::RSA,
                        key | A::SIGN,
                        &[],
                        &[
                            &be(&[alg::NULL, alg::RSASSA, alg::SHA256, 2048]),
                            &65537u32.to_be_bytes(),
                            &tpm2b(&[0xc5; 256]),
                        ],
                    ),
                    public(
                        alg::RSA,
                        key | A::DECRYPT,
                        &[],
                        &[
                            &be(&[alg::NULL, alg::OAEP, alg::SHA384, 3072]),
                            &0u32.to_be_bytes(),
                            &tpm2b(&[0xc5; 384]),
                        ],
                    ),
                    // A sealed blob, an HMAC key, an XOR key, an AES key.
                    public(
                        alg::KEYEDHASH,
                        A::FIXED_TPM | A::FIXED_PARENT | A::USER_WITH_AUTH,
                        &[],
                        &[&be(&[alg::NULL]), &tpm2b(&[6; 32])],
                    ),
                    public(
                        alg::KEYEDHASH,
                        key | A::SIGN,
                        &[],
                        &[&be(&[alg::HMAC, alg::SHA256]), &tpm2b(&[6; 32])],
                    ),
                    public(
                        alg::KEYEDHASH,
                        key | A::SIGN,
                        &[],
                        &[
                            &be(&[alg::XOR, alg::SHA256, alg::KDF1_SP800_108]),
                            &tpm2b(&[6; 32]),
                        ],
                    ),
                    public(
                        alg::SYMCIPHER,
                        key | A::DECRYPT | A::SIGN,
                        &[],
                        &[&be(&[alg::AES, 256, alg::CFB]), &tpm2b(&[7; 32])],
                    ),
                ]
                .into_iter()
                .map(|bytes| (wire::KEY_PUBLIC, bytes)),
            );
            // Signatures of the other schemes.
            let ecc = |sig_alg: u16, hash: u16| {
                [be(&[sig_alg, hash]), tpm2b(&[8; 32]), tpm2b(&[9; 31])].concat()
            };
            let rsa = |sig_alg: u16| [be(&[sig_alg, alg::SHA256]), tpm2b(&[8; 256])].concat();
            corpus.extend(
                [
                    ecc(alg::ECDSA, alg::SHA384),
                    ecc(alg::ECDAA, alg::SHA256),
                    ecc(alg::SM2, alg::SM3_256),
                    ecc(alg::ECSCHNORR, alg::SHA512),
                    rsa(alg::RSASSA),
                    rsa(alg::RSAPSS),
                    [be(&[alg::HMAC, alg::SHA1]), vec![5; 20]].concat(),
                    [be(&[alg::HMAC, alg::SHA384]), vec![5; 48]].concat(),
                    be(&[alg::NULL]),
                ]
                .into_iter()
                .map(|bytes| (wire::SIGNATURE, bytes)),
            );
            // A statement whose clock is not safe, and one with empty
            // names and data.
            let mut unsafe_clock = fixture!("plain/attest.bin");
            unsafe_clock[6 + 36 + 34 + 16] = 0;
            let empty = [
                &fixture!("plain/attest.bin")[..6],
                &be(&[0, 0])[..],
                &[0; 17],
                &0x0102_0304_0506_0708u64.to_be_bytes(),
                &be(&[0, 0]),
            ]
            .concat();
            corpus.extend([(wire::ATTEST, unsafe_clock), (wire::ATTEST, empty)]);
            corpus
        }

        /// Inputs at the edges of the TPM2B buffers: each field at its
        /// largest size and one byte over (extraData also at the 66 bytes
        /// of Part 2's sizeof(TPMT_HA)). Compared, not all read.
        fn edges() -> Vec<(&'static str, Vec<u8>)> {
            let attest = |signer: usize, data: usize, name: usize, qualified: usize| {
                [
                    &fixture!("plain/attest.bin")[..6],
                    &tpm2b(&vec![1; signer]),
                    &tpm2b(&vec![2; data]),
                    &[0; 17],
                    &[0; 8],
                    &tpm2b(&vec![3; name]),
                    &tpm2b(&vec![4; qualified]),
                ]
                .concat()
            };
            let ecc_signature = |r: usize| {
                [
                    be(&[alg::ECDSA, alg::SHA256]),
                    tpm2b(&vec![8; r]),
                    tpm2b(&[9; 32]),
                ]
                .concat()
            };
            let rsa_signature =
                |n: usize| [be(&[alg::RSASSA, alg::SHA256]), tpm2b(&vec![8; n])].concat();
            let ecc = |policy: usize, x: usize| {
                public(
                    alg::ECC,
                    0x0004_0072,
                    &vec![3; policy],
                    &[
                        &be(&[alg::NULL, alg::NULL, curve::NIST_P256, alg::NULL]),
                        &tpm2b(&vec![1; x]),
                        &tpm2b(&[2; 32]),
                    ],
                )
            };
            let rsa = |n: usize| {
                public(
                    alg::RSA,
                    0x0004_0072,
                    &[],
                    &[
                        &be(&[alg::NULL, alg::NULL, 4096]),
                        &[0; 4],
                        &tpm2b(&vec![5; n]),
                    ],
                )
            };
            let keyed = |n: usize| {
                public(
                    alg::KEYEDHASH,
                    0x0004_0072,
                    &[],
                    &[&be(&[alg::NULL]), &tpm2b(&vec![6; n])],
                )
            };
            let mut edges = Vec::new();
            for n in [68, 69] {
                edges.push((wire::ATTEST, attest(n, 32, 34, 34)));
                edges.push((wire::ATTEST, attest(34, 32, n, 34)));
                edges.push((wire::ATTEST, attest(34, 32, 34, n)));
            }
            for n in [64, 65, 66] {
                edges.push((wire::ATTEST, attest(34, n, 34, 34)));
            }
            for n in [128, 129] {
                edges.push((wire::SIGNATURE, ecc_signature(n)));
                edges.push((wire::KEY_PUBLIC, ecc(0, n)));
            }
            for n in [512, 513] {
                edges.push((wire::SIGNATURE, rsa_signature(n)));
                edges.push((wire::KEY_PUBLIC, rsa(n)));
            }
            for n in [64, 65] {
                edges.push((wire::KEY_PUBLIC, ecc(n, 32)));
                edges.push((wire::KEY_PUBLIC, keyed(n)));
            }
            edges
        }

        #[test]
        fn tss_esapi_and_keybridge_evidence_read_the_same_structures() {
            let mut tally = Tally::default();
            for (part, whole) in corpus() {
                // Every input of the corpus reads, in both.
                let before = tally.both_read;
                compare(part, &whole, &mut tally);
                assert_eq!(
                    tally.both_read,
                    before + 1,
                    "{part} {}",
                    hex::encode(&whole)
                );
                for at in 0..whole.len() {
                    for value in 0..=255u8 {
                        if value != whole[at] {
                            let mut bytes = whole.clone();
                            bytes[at] = value;
                            compare(part, &bytes, &mut tally);
                        }
                    }
                }
                for len in 0..whole.len() {
                    compare(part, &whole[..len], &mut tally);
                }
                let mut longer = whole.clone();
                longer.push(0);
                compare(part, &longer, &mut tally);
            }
            let read = tally.both_read;
            for (part, bytes) in edges() {
                compare(part, &bytes, &mut tally);
            }
            // The largest sizes read, one byte more does not (66-byte
            // extraData neither).
            assert_eq!(tally.both_read - read, 10, "{tally:?}");
            println!("{tally:?}");
            // The deliberate class was met, for every reserved bit (each
            // attribute byte took every value), and many changed inputs
            // still read in both.
            assert_eq!(
                tally.reserved_seen,
                !wire::ObjectAttributes::DEFINED,
                "{tally:?}"
            );
            assert!(tally.reserved_bits > 1000, "{tally:?}");
            assert!(tally.both_read > 10 * tally.reserved_bits, "{tally:?}");
        }
    }
}
