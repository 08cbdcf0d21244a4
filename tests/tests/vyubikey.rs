//! The virtual YubiKey against the real stack: the `yubikey` crate through
//! pcsc-lite and vpcd, Debian's yubico-piv-tool and ykcs11, and openssl.
//!
//! Every test makes its own cards with serials no other test uses, so tests
//! run in parallel (threads or nextest processes) on the one shared pcscd.

use keybridge_tests::poll_until;
use keybridge_tests::vyubikey::{
    CardConfig, ChainShape, INS_VERIFY, KeySpec, ManagementKey, PinPolicy as VPin, SlotPublicKey,
    Touch, TouchPolicy as VTouch, VirtualYubiKey, insert_all, oid,
};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use x509_cert::der::{Decode as _, Encode as _};
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotId};
use yubikey::{Error, MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};

const DIGEST: [u8; 32] = [0x42; 32];

/// Opens the card in `card`'s reader only (open_by_serial would talk to
/// every card present, those of parallel tests too).
fn open(card: &VirtualYubiKey) -> YubiKey {
    let mut ctx = yubikey::reader::Context::open().expect("PC/SC context");
    let name = card.reader_name();
    let reader = ctx
        .iter()
        .expect("readers")
        .find(|r| r.name() == name)
        .unwrap_or_else(|| panic!("no reader {name}"));
    reader.open().expect("opening the card")
}

/// Two cards inserted together (the fixture has two readers).
fn two(a: CardConfig, b: CardConfig) -> Option<[VirtualYubiKey; 2]> {
    let cards = insert_all(vec![a, b])?;
    Some(cards.try_into().ok().expect("two cards"))
}

fn authenticate_default(yk: &mut YubiKey) {
    let key = MgmKey::get_default(yk).expect("the firmware's default key");
    yk.authenticate(&key).expect("default management key");
}

fn p256_verifies(spki_der: &[u8], digest: &[u8], der_sig: &[u8]) -> bool {
    use p256::pkcs8::DecodePublicKey as _;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der).expect("a P-256 key");
    let sig = p256::ecdsa::DerSignature::from_bytes(der_sig).expect("a DER signature");
    vk.verify_prehash(digest, &sig).is_ok()
}

#[test]
fn the_crate_opens_the_card_by_serial_and_reads_version_and_serial() {
    let Some(card) = CardConfig::new(19_000_001).firmware(5, 4, 3).insert() else {
        return;
    };
    let yk = YubiKey::open_by_serial(Serial(19_000_001)).expect("open by serial");
    assert_eq!(yk.serial(), Serial(19_000_001));
    assert_eq!(yk.version().to_string(), "5.4.3");
    assert_eq!(yk.name(), card.reader_name());
    assert!(card.reader_name().starts_with("Yubico"));
}

#[test]
fn a_wrong_pin_spends_exactly_one_retry_and_the_counter_shows_it() {
    let Some(card) = CardConfig::new(19_000_002).insert() else {
        return;
    };
    let mut yk = open(&card);
    assert_eq!(yk.get_pin_retries().unwrap(), 3);
    assert_eq!(yk.verify_pin(b"654321"), Err(Error::WrongPin { tries: 2 }));
    assert_eq!(card.pin_retries(), 2);
    assert_eq!(yk.get_pin_retries().unwrap(), 2);
    let md = piv::metadata(&mut yk, SlotId::Management(ManagementSlotId::Pin)).unwrap();
    let retries = md.retries.expect("PIN metadata has retries");
    assert_eq!((retries.retry_count, retries.remaining_count), (3, 2));
    assert_eq!(md.default, Some(true));

    yk.verify_pin(b"123456").expect("the right PIN");
    assert_eq!(card.pin_retries(), 3, "a right PIN restores the counter");

    // Three wrong PINs block it; then even the right one is refused.
    for left in [2, 1, 0] {
        assert_eq!(
            yk.verify_pin(b"000000"),
            Err(Error::WrongPin { tries: left })
        );
    }
    assert_eq!(yk.verify_pin(b"123456"), Err(Error::WrongPin { tries: 0 }));
    assert_eq!(card.pin_retries(), 0);
    // The PUK unblocks it.
    yk.unblock_pin(b"12345678", b"24681357")
        .expect("unblock with the PUK");
    yk.verify_pin(b"24681357").expect("the new PIN");
}

#[test]
fn the_management_key_authenticates_with_3des_and_aes192_and_a_wrong_one_fails() {
    let Some([old, new]) = two(
        CardConfig::new(19_000_003).firmware(5, 4, 3),
        CardConfig::new(19_000_004).firmware(5, 7, 1),
    ) else {
        return;
    };
    let mut yk = open(&old);
    let key = MgmKey::get_default(&yk).unwrap();
    assert_eq!(key.algorithm_id(), yubikey::MgmAlgorithmId::ThreeDes);
    yk.authenticate(&key).expect("3DES default key");
    let wrong = MgmKey::from_bytes([9u8; 24], None).unwrap();
    assert_eq!(yk.authenticate(&wrong), Err(Error::AuthenticationError));

    let mut yk = open(&new);
    let key = MgmKey::get_default(&yk).unwrap();
    assert_eq!(key.algorithm_id(), yubikey::MgmAlgorithmId::Aes192);
    yk.authenticate(&key).expect("AES-192 default key");
    // A 3DES key on an AES card is refused (wrong algorithm).
    let tdes = MgmKey::from_bytes(yubikey_default(), None).unwrap();
    assert!(yk.authenticate(&tdes).is_err());
}

fn yubikey_default() -> [u8; 24] {
    keybridge_tests::vyubikey::DEFAULT_MANAGEMENT_KEY
}

#[test]
fn a_pin_protected_management_key_is_read_after_the_pin_and_authenticates() {
    let Some(card) = CardConfig::new(19_000_005)
        .firmware(5, 7, 1)
        .management_key(ManagementKey::aes192([0x5a; 24]).pin_protected())
        .insert()
    else {
        return;
    };
    let mut yk = open(&card);
    assert!(
        MgmKey::get_protected(&mut yk).is_err(),
        "the protected object needs the PIN"
    );
    yk.verify_pin(b"123456").unwrap();
    let key = MgmKey::get_protected(&mut yk).expect("the protected key");
    assert_eq!(key.as_ref(), &[0x5a; 24]);
    yk.authenticate(&key)
        .expect("the protected key authenticates");
}

#[test]
fn p256_generated_in_9c_on_a_5_4_card_signs_verifiably() {
    let Some(card) = CardConfig::new(19_000_006).firmware(5, 4, 3).insert() else {
        return;
    };
    let mut yk = open(&card);
    // Generating needs the management key.
    assert_eq!(
        piv::generate(
            &mut yk,
            SlotId::Signature,
            AlgorithmId::EccP256,
            PinPolicy::Once,
            TouchPolicy::Never
        )
        .err(),
        Some(Error::AuthenticationError)
    );
    authenticate_default(&mut yk);
    let spki = piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP256,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .expect("generate P-256");
    let spki_der = spki.to_der().unwrap();
    assert_eq!(
        card.public_key(0x9c).expect("a key in 9c").to_spki_der(),
        spki_der
    );

    // Signing needs the PIN (policy once).
    assert_eq!(
        piv::sign_data(&mut yk, &DIGEST, AlgorithmId::EccP256, SlotId::Signature).err(),
        Some(Error::AuthenticationError)
    );
    yk.verify_pin(b"123456").unwrap();
    let sig = piv::sign_data(&mut yk, &DIGEST, AlgorithmId::EccP256, SlotId::Signature).unwrap();
    assert!(p256_verifies(&spki_der, &DIGEST, &sig));
    assert!(!p256_verifies(&spki_der, &[0x43; 32], &sig));

    // The metadata reports the same key and its policies.
    let md = piv::metadata(&mut yk, SlotId::Signature).unwrap();
    assert_eq!(md.public.unwrap().to_der().unwrap(), spki_der);
    assert_eq!(md.policy, Some((PinPolicy::Once, TouchPolicy::Never)));
    assert_eq!(md.origin, Some(piv::Origin::Generated));
}

#[test]
fn ed25519_is_generated_on_a_5_7_card_and_refused_on_a_5_4_card() {
    let Some([new, old]) = two(
        CardConfig::new(19_000_007).firmware(5, 7, 1),
        CardConfig::new(19_000_008).firmware(5, 4, 3),
    ) else {
        return;
    };
    let mut yk = open(&old);
    authenticate_default(&mut yk);
    assert_eq!(
        piv::generate(
            &mut yk,
            SlotId::Signature,
            AlgorithmId::Ed25519,
            PinPolicy::Once,
            TouchPolicy::Never
        )
        .err(),
        Some(Error::AlgorithmError)
    );

    let mut yk = open(&new);
    authenticate_default(&mut yk);
    let spki = piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::Ed25519,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .expect("generate Ed25519");
    let SlotPublicKey::Ed25519(vk) = new.public_key(0x9c).unwrap() else {
        panic!("not an Ed25519 key");
    };
    assert_eq!(spki.to_der().unwrap(), vk.to_public_key_der_bytes());
    yk.verify_pin(b"123456").unwrap();
    let message = b"keybridge batch root";
    let sig = piv::sign_data(&mut yk, message, AlgorithmId::Ed25519, SlotId::Signature).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).expect("64 bytes");
    vk.verify_strict(message, &sig).expect("Ed25519 verifies");
}

/// The SPKI DER of an Ed25519 key (helper trait for the assertion above).
trait SpkiBytes {
    fn to_public_key_der_bytes(&self) -> Vec<u8>;
}

impl SpkiBytes for ed25519_dalek::VerifyingKey {
    fn to_public_key_der_bytes(&self) -> Vec<u8> {
        SlotPublicKey::Ed25519(*self).to_spki_der()
    }
}

/// Runs `openssl verify` with `args`; returns (success, its output).
fn openssl_verify(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn pem(der: &[u8]) -> String {
    use x509_cert::der::EncodePem as _;
    x509_cert::Certificate::from_der(der)
        .unwrap()
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .unwrap()
}

fn attestation_chain_verifies_with_openssl(serial: u32, firmware: [u8; 3], shape: ChainShape) {
    let Some(card) = CardConfig::new(serial)
        .firmware(firmware[0], firmware[1], firmware[2])
        .attestation_chain(shape)
        .insert()
    else {
        return;
    };
    let mut yk = open(&card);
    authenticate_default(&mut yk);
    piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP256,
        PinPolicy::Always,
        TouchPolicy::Cached,
    )
    .unwrap();
    let leaf = piv::attest(&mut yk, SlotId::Signature).expect("attest 9c");
    assert_eq!(
        leaf.to_vec(),
        card.attestation_certificate(0x9c).unwrap(),
        "the card returns the fixture's certificate"
    );
    let f9 = yubikey::certificate::Certificate::read(&mut yk, SlotId::Attestation)
        .expect("the f9 certificate");
    let f9_der = f9.cert.to_der().unwrap();
    assert_eq!(f9_der, card.f9_certificate());

    // The Yubico extensions say what the card is.
    let cert = x509_cert::Certificate::from_der(&leaf).unwrap();
    let ext = |o| {
        cert.tbs_certificate()
            .extensions()
            .unwrap()
            .iter()
            .find(|e| e.extn_id == o)
            .map(|e| e.extn_value.as_bytes().to_vec())
            .unwrap_or_else(|| panic!("extension {o} missing"))
    };
    assert_eq!(ext(oid::FIRMWARE), firmware);
    assert_eq!(
        ext(oid::SERIAL),
        x509_cert::der::asn1::Uint::new(&serial.to_be_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    );
    assert_eq!(ext(oid::POLICY), [3, 3], "PIN always, touch cached");
    assert_eq!(ext(oid::FORM_FACTOR), [1]);
    // The f9 certificate has no basicConstraints, as on real cards.
    let f9_cert = x509_cert::Certificate::from_der(&f9_der).unwrap();
    assert!(
        f9_cert
            .tbs_certificate()
            .extensions()
            .is_none_or(|e| e.iter().all(|e| e.extn_id.to_string() != "2.5.29.19"))
    );

    let dir = tempfile::tempdir().unwrap();
    let chain = card.attestation_chain_pem();
    std::fs::write(dir.path().join("root.pem"), &chain[0]).unwrap();
    std::fs::write(dir.path().join("intermediates.pem"), chain[1..].concat()).unwrap();
    std::fs::write(dir.path().join("f9.pem"), pem(&f9_der)).unwrap();
    std::fs::write(
        dir.path().join("untrusted.pem"),
        format!("{}{}", chain[1..].concat(), pem(&f9_der)),
    )
    .unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem(&leaf)).unwrap();

    // f9 chains to the test root (through the intermediate for 5.7.4+).
    let mut args = vec!["-CAfile", "root.pem"];
    if chain.len() > 1 {
        args.extend(["-untrusted", "intermediates.pem"]);
    }
    args.push("f9.pem");
    let (ok, out) = openssl_verify(dir.path(), &args);
    assert!(ok, "f9 does not chain to the root: {out}");
    // The whole chain: openssl checks every signature and reports one error
    // only, the f9 certificate not being a CA (no basicConstraints). A
    // verifier must handle exactly that, deliberately.
    let (ok, out) = openssl_verify(
        dir.path(),
        &[
            "-CAfile",
            "root.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
    );
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("error")).collect();
    assert!(!ok);
    assert_eq!(errors.len(), 2, "{out}");
    assert!(
        errors[0].contains("at 1 depth lookup: invalid CA certificate"),
        "{out}"
    );
    assert!(errors[1].contains("leaf.pem: verification failed"), "{out}");
    // A tampered attestation certificate fails for more than that.
    let mut tampered = leaf.to_vec();
    let n = tampered.len();
    tampered[n - 1] ^= 1;
    std::fs::write(dir.path().join("tampered.pem"), pem(&tampered)).unwrap();
    let (_, out) = openssl_verify(
        dir.path(),
        &[
            "-CAfile",
            "root.pem",
            "-untrusted",
            "untrusted.pem",
            "tampered.pem",
        ],
    );
    assert!(out.contains("certificate signature failure"), "{out}");
}

#[test]
fn the_attestation_chain_of_a_pre_5_7_4_card_verifies_with_openssl() {
    attestation_chain_verifies_with_openssl(19_000_009, [5, 4, 3], ChainShape::Legacy);
}

#[test]
fn the_attestation_chain_of_a_5_7_4_card_verifies_through_its_intermediate() {
    attestation_chain_verifies_with_openssl(19_000_010, [5, 7, 4], ChainShape::Root1);
}

#[test]
fn two_cards_at_once_are_chosen_by_serial() {
    let spec = KeySpec::p256().pin_policy(VPin::Never);
    let Some([a, b]) = two(
        CardConfig::new(19_000_011).key(0x9a, spec),
        CardConfig::new(19_000_012).key(0x9a, spec),
    ) else {
        return;
    };
    assert_ne!(a.reader_name(), b.reader_name());
    for (card, other) in [(&a, &b), (&b, &a)] {
        let mut yk = YubiKey::open_by_serial(Serial(card.serial())).unwrap();
        assert_eq!(yk.name(), card.reader_name());
        let sig = piv::sign_data(
            &mut yk,
            &DIGEST,
            AlgorithmId::EccP256,
            SlotId::Authentication,
        )
        .unwrap();
        let mine = card.public_key(0x9a).unwrap().to_spki_der();
        let theirs = other.public_key(0x9a).unwrap().to_spki_der();
        assert!(p256_verifies(&mine, &DIGEST, &sig));
        assert!(!p256_verifies(&theirs, &DIGEST, &sig));
    }
}

#[test]
fn a_removed_card_gives_an_error_and_works_again_when_reinserted() {
    let Some(mut card) = CardConfig::new(19_000_013).insert() else {
        return;
    };
    let mut yk = open(&card);
    yk.verify_pin(b"123456").unwrap();
    card.remove();
    assert!(!card.is_inserted());
    assert!(matches!(
        yk.verify_pin(b"123456"),
        Err(Error::PcscError { .. })
    ));
    assert_eq!(
        YubiKey::open_by_serial(Serial(19_000_013)).err(),
        Some(Error::NotFound)
    );
    card.reinsert();
    let mut yk = YubiKey::open_by_serial(Serial(19_000_013)).expect("back in its reader");
    yk.verify_pin(b"123456").expect("works again");
}

#[test]
fn a_withheld_touch_times_out_and_a_given_touch_signs() {
    let spec = KeySpec::p256()
        .pin_policy(VPin::Never)
        .touch_policy(VTouch::Always);
    let Some(card) = CardConfig::new(19_000_014)
        .touch_timeout(Duration::from_millis(400))
        .key(0x9c, spec)
        .insert()
    else {
        return;
    };
    let spki = card.public_key(0x9c).unwrap().to_spki_der();
    card.set_touch(Touch::Manual);
    let mut yk = open(&card);

    // Nobody touches: the card answers 69 82 after its timeout.
    let start = Instant::now();
    assert_eq!(
        piv::sign_data(&mut yk, &DIGEST, AlgorithmId::EccP256, SlotId::Signature).err(),
        Some(Error::AuthenticationError)
    );
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(!card.touch_pending());

    // A touch while the card waits lets the signature through.
    let signer = std::thread::spawn(move || {
        piv::sign_data(&mut yk, &DIGEST, AlgorithmId::EccP256, SlotId::Signature)
    });
    assert!(poll_until(Duration::from_secs(5), || card.touch_pending()));
    assert!(card.touch());
    let sig = signer.join().unwrap().expect("signed after the touch");
    assert!(p256_verifies(&spki, &DIGEST, &sig));
    assert!(!card.touch(), "nothing waits any more");
}

#[test]
fn a_card_held_exclusively_by_another_program_is_refused_until_released() {
    let Some(card) = CardConfig::new(19_000_015).insert() else {
        return;
    };
    let hold = card.hold_exclusive().expect("exclusive hold");
    assert_eq!(
        YubiKey::open_by_serial(Serial(19_000_015)).err(),
        Some(Error::PcscError {
            inner: Some(pcsc::Error::SharingViolation)
        })
    );
    drop(hold);
    YubiKey::open_by_serial(Serial(19_000_015)).expect("free again");
}

#[test]
fn the_apdu_log_shows_that_no_verify_arrived() {
    let Some(card) = CardConfig::new(19_000_016)
        .key(0x9c, KeySpec::p256().pin_policy(VPin::Never))
        .insert()
    else {
        return;
    };
    card.clear_log();
    let mut yk = open(&card);
    // VERIFYs carrying a PIN: an empty VERIFY only reads the counter, and
    // other tests' processes listing every card present send those.
    let pins = || {
        card.apdu_log()
            .iter()
            .filter(|a| a.ins == INS_VERIFY && !a.data.is_empty())
            .count()
    };
    piv::sign_data(&mut yk, &DIGEST, AlgorithmId::EccP256, SlotId::Signature).unwrap();
    assert_eq!(pins(), 0);
    yk.verify_pin(b"123456").unwrap();
    assert_eq!(pins(), 1);
}

/// True when `program` is on PATH; otherwise SKIP (outside CI) or fail.
fn tool_present(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !keybridge_tests::in_ci(),
            "{program} missing under CI (Debian package {package}; run cargo xtask deps)"
        );
        eprintln!("SKIP: {program} missing (Debian package {package}); run `cargo xtask deps`");
    }
    found
}

#[test]
fn yubico_piv_tool_lists_the_card_and_attests_the_fixtures_certificate() {
    if !tool_present("yubico-piv-tool", "yubico-piv-tool") {
        return;
    }
    // yubico-piv-tool 2.2.0 predates firmware 5.7.
    let Some(card) = CardConfig::new(19_000_017)
        .firmware(5, 4, 3)
        .key(0x9c, KeySpec::p256())
        .insert()
    else {
        return;
    };
    let run = |args: &[&str]| {
        let out = Command::new("yubico-piv-tool")
            .arg("--reader")
            .arg(card.reader_name())
            .args(args)
            .output()
            .expect("running yubico-piv-tool");
        assert!(
            out.status.success(),
            "yubico-piv-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status = run(&["-a", "status"]);
    assert!(status.contains("Version:\t5.4.3"), "{status}");
    assert!(status.contains("Serial Number:\t19000017"), "{status}");
    assert!(status.contains("PIN tries left:\t3"), "{status}");

    let attested = run(&["-a", "attest", "-s", "9c"]);
    assert_eq!(
        attested.trim(),
        pem(&card.attestation_certificate(0x9c).unwrap()).trim()
    );
}

#[test]
fn ykcs11_reads_the_same_public_key() {
    const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
    if !tool_present("pkcs11-tool", "opensc") {
        return;
    }
    if !Path::new(YKCS11).exists() {
        assert!(
            !keybridge_tests::in_ci(),
            "{YKCS11} missing under CI (Debian package ykcs11)"
        );
        eprintln!("SKIP: {YKCS11} missing (Debian package ykcs11)");
        return;
    }
    let Some(card) = CardConfig::new(19_000_018)
        .firmware(5, 4, 3)
        .key(0x9c, KeySpec::p256())
        .insert()
    else {
        return;
    };
    let SlotPublicKey::P256(vk) = card.public_key(0x9c).unwrap() else {
        unreachable!()
    };
    let point = hex::encode(vk.to_sec1_point(false).as_bytes());
    let out = Command::new("pkcs11-tool")
        .args(["--module", YKCS11, "--token-label"])
        .arg(format!("YubiKey PIV #{}", card.serial()))
        .arg("-O")
        .output()
        .expect("running pkcs11-tool");
    let text = String::from_utf8_lossy(&out.stdout).replace([' ', '\n'], "");
    assert!(
        out.status.success(),
        "pkcs11-tool -O: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&point),
        "ykcs11 does not show the key {point}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
