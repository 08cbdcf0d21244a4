//! `keybridge keys verify-attestation` end to end: keys generated on a
//! virtual YubiKey through the real daemon, their attestation checked by the
//! CLI against the fixture's test CA, the must-fail cases, and `openssl`
//! checking the chain keybridge kept. Serials 93_000_000 + n are this file's.

use base64::Engine as _;
use keybridge_backends::x509::ChainError;
use keybridge_backends::yubikey::attestation::{self, AttestationError};
use keybridge_protocol::PublicKey;
use keybridge_tests::vyubikey::{CardConfig, ChainShape, KeySpec, VirtualYubiKey, insert_all};
use keybridge_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOW: i64 = 1_800_000_000;
const PIN: &str = "123456";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A key in slot 9c of `card`, generated through the daemon; `extra` are
/// more `keys create` arguments (algorithm, policies).
fn create(b: &Bridge, label: &str, card: &VirtualYubiKey, extra: &[&str]) {
    let uri = format!("yubikey:serial={};slot=9c", card.serial());
    let mut args = vec!["--default-management-key"];
    args.extend_from_slice(extra);
    let r = b.create_yubikey_key(label, &uri, &args, PIN);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Writes `card`'s test CA (root first, then any intermediate) to a PEM
/// file in the daemon's home, as a user would save Yubico's.
fn roots_file(b: &Bridge, name: &str, card: &VirtualYubiKey) -> PathBuf {
    let path = b.home().join(format!("{name}.pem"));
    std::fs::write(&path, card.attestation_chain_pem().concat()).unwrap();
    path
}

fn verify_attestation(b: &Bridge, key: &str, roots: &Path, json: bool) -> Output {
    let mut args = vec![];
    if json {
        args.push("--json");
    }
    args.extend([
        "keys",
        "verify-attestation",
        key,
        "--roots",
        roots.to_str().unwrap(),
    ]);
    b.cli(&args, None)
}

fn report(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The chain (DER, leaf first) and public key the daemon gives for `key`.
fn evidence(b: &Bridge, key: &str) -> (Vec<Vec<u8>>, PublicKey) {
    let shown: Value = serde_json::from_str(&b.ok(&["--json", "keys", "show", key], None)).unwrap();
    assert_eq!(shown["evidence"]["kind"], "yubikey-piv-attestation");
    let chain = shown["evidence"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    let cose = keybridge_protocol::key::unhex(shown["public_key"]["cose"].as_str().unwrap());
    let public = PublicKey::from_cose_key_bytes(&cose.unwrap()).unwrap();
    (chain, public)
}

/// The DER certificates of `card`'s test CA.
fn roots_der(card: &VirtualYubiKey) -> Vec<Vec<u8>> {
    attestation::certificates_from_pem(&card.attestation_chain_pem().concat()).unwrap()
}

#[test]
fn both_chain_shapes_verify_with_their_roots_and_report_the_card() {
    let Some(cards) = insert_all(vec![
        CardConfig::new(93_000_001),
        CardConfig::new(93_000_002)
            .firmware(5, 7, 4)
            .attestation_chain(ChainShape::Root1)
            .form_factor(0x83),
    ]) else {
        return;
    };
    let (legacy, root1) = (&cards[0], &cards[1]);
    let b = Bridge::start(NOW);
    create(
        &b,
        "old",
        legacy,
        &["--pin-policy", "always", "--touch-policy", "cached"],
    );
    create(
        &b,
        "new",
        root1,
        &[
            "--alg",
            "ed25519",
            "--pin-policy",
            "once",
            "--touch-policy",
            "never",
        ],
    );

    let r = report(&verify_attestation(
        &b,
        "old",
        &roots_file(&b, "legacy-ca", legacy),
        true,
    ));
    assert_eq!(r["serial"], 93_000_001);
    assert_eq!(r["firmware"], "5.4.3");
    assert_eq!(r["pin_policy"], "always");
    assert_eq!(r["touch_policy"], "cached");
    assert_eq!(r["form_factor"]["name"], "USB-A keychain");
    assert_eq!(r["root"], "CN=vyubikey Test PIV Root CA Serial 263751");
    assert_eq!(
        r["chain"].as_array().unwrap().len(),
        3,
        "leaf, f9, root: {r}"
    );
    assert_eq!(r["validity_checked"], false);

    let roots = roots_file(&b, "root1-ca", root1);
    let r = report(&verify_attestation(&b, "new", &roots, true));
    assert_eq!(r["serial"], 93_000_002);
    assert_eq!(r["firmware"], "5.7.4");
    assert_eq!(r["pin_policy"], "once");
    assert_eq!(r["touch_policy"], "never");
    assert_eq!(r["form_factor"]["name"], "USB-C keychain");
    assert_eq!(r["form_factor"]["fips"], true);
    assert_eq!(r["root"], "CN=vyubikey Test Attestation Root 1");
    assert_eq!(
        r["chain"].as_array().unwrap().len(),
        4,
        "leaf, f9, intermediate, root: {r}"
    );

    // The human report says the same, and that dates were not checked.
    let out = verify_attestation(&b, "new", &roots, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "serial:       93000002",
        "firmware:     5.7.4",
        "USB-C keychain, FIPS",
        "PIN policy:   once",
        "touch policy: never",
        "vyubikey Test Attestation Root 1",
        "validity dates were not checked",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    // Each card's roots are foreign to the other's chain.
    let out = verify_attestation(&b, "old", &roots, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("foreign root"), "{}", stderr(&out));
}

#[test]
fn a_foreign_root_of_the_same_name_is_refused() {
    // Two legacy test CAs: same root name, different keys (as a forger's
    // would be).
    let Some(cards) = insert_all(vec![
        CardConfig::new(93_000_003),
        CardConfig::new(93_000_004),
    ]) else {
        return;
    };
    let b = Bridge::start(NOW);
    create(&b, "fr", &cards[0], &[]);
    let out = verify_attestation(&b, "fr", &roots_file(&b, "other-ca", &cards[1]), false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("does not verify") && err.contains("foreign root"),
        "{err}"
    );
    let (chain, key) = evidence(&b, "fr");
    let e = attestation::verify(&chain, &roots_der(&cards[1]), &key).unwrap_err();
    assert!(
        matches!(e, AttestationError::Chain(ChainError::ForeignRoot { .. })),
        "{e}"
    );
    // The card's own roots file: fine.
    let out = verify_attestation(&b, "fr", &roots_file(&b, "own-ca", &cards[0]), false);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let Some(cards) = insert_all(vec![
        CardConfig::new(93_000_005),
        CardConfig::new(93_000_006),
    ]) else {
        return;
    };
    let b = Bridge::start(NOW);
    create(&b, "ak", &cards[0], &[]);
    create(&b, "ak2", &cards[1], &[]);
    let (chain, key) = evidence(&b, "ak");
    let roots = roots_der(&cards[0]);
    assert!(attestation::verify(&chain, &roots, &key).is_ok());
    // Another slot of the same card: same f9, same root, another key.
    cards[0].generate(0x9a, KeySpec::p256());
    let other_slot = vec![
        cards[0].attestation_certificate(0x9a).unwrap(),
        chain[1].clone(),
    ];
    let e = attestation::verify(&other_slot, &roots, &key).unwrap_err();
    assert!(matches!(e, AttestationError::KeyMismatch(_)), "{e}");
    // Another card's whole chain with this key.
    let (other_chain, _) = evidence(&b, "ak2");
    let e = attestation::verify(&other_chain, &roots_der(&cards[1]), &key).unwrap_err();
    assert!(matches!(e, AttestationError::KeyMismatch(_)), "{e}");
}

#[test]
fn a_tampered_extension_is_refused() {
    let Some(card) = CardConfig::new(93_000_007).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    create(&b, "tx", &card, &["--touch-policy", "always"]);
    let (mut chain, key) = evidence(&b, "tx");
    let roots = roots_der(&card);
    attestation::verify(&chain, &roots, &key).unwrap();
    // The policy extension's value, OCTET STRING 04 02 <PIN> <touch>: claim
    // touch "never" (1) instead of "always" (2).
    let leaf = &mut chain[0];
    let at = leaf
        .windows(4)
        .position(|w| w[..2] == [0x04, 0x02] && w[3] == 2)
        .expect("the policy extension");
    leaf[at + 3] = 1;
    let e = attestation::verify(&chain, &roots, &key).unwrap_err();
    assert!(
        matches!(e, AttestationError::Chain(ChainError::BadSignature { .. })),
        "{e}"
    );
}

#[test]
fn a_key_without_attestation_gets_a_clear_error() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "pat");
    let roots = b.home().join("roots.pem");
    std::fs::write(&roots, "").unwrap();
    let out = verify_attestation(&b, "pat", &roots, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("carries no attestation"),
        "{}",
        stderr(&out)
    );
    // A roots file that is not there is named.
    let out = verify_attestation(&b, "pat", &b.home().join("absent.pem"), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("absent.pem"), "{}", stderr(&out));
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (cargo xtask deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The offset of the element at `depth` on `asn1parse`'s last line with
/// `what` (e.g. the signature BIT STRING), or its first (the TBS).
fn asn1_offset(listing: &str, depth: &str, what: &str, last: bool) -> String {
    let mut lines = listing
        .lines()
        .filter(|l| l.contains(depth) && l.contains(what));
    let line = if last {
        lines.next_back()
    } else {
        lines.next()
    };
    line.and_then(|l| l.split(':').next())
        .map(|o| o.trim().to_owned())
        .unwrap_or_else(|| panic!("no {what} at {depth} in:\n{listing}"))
}

#[test]
fn openssl_verifies_the_chain_keybridge_kept() {
    let Some(cards) = insert_all(vec![
        CardConfig::new(93_000_008),
        CardConfig::new(93_000_009)
            .firmware(5, 7, 4)
            .attestation_chain(ChainShape::Root1),
    ]) else {
        return;
    };
    let b = Bridge::start(NOW);
    for (i, card) in cards.iter().enumerate() {
        let label = format!("os{i}");
        create(&b, &label, card, &[]);
        let (chain, _) = evidence(&b, &label);
        let dir = tempfile::tempdir().unwrap();
        let ca = card.attestation_chain_pem();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("root.pem", &ca[0]);
        write("intermediates.pem", &ca[1..].concat());
        write("leaf.pem", &pem(&chain[0]));
        write("f9.pem", &pem(&chain[1]));
        write(
            "untrusted.pem",
            &format!("{}{}", ca[1..].concat(), pem(&chain[1])),
        );

        // Every link but the last, by `openssl verify`: f9 → (intermediate
        // →) root, with CA checks on everything above the f9 certificate.
        let mut args = vec!["verify", "-CAfile", "root.pem"];
        if ca.len() > 1 {
            args.extend(["-untrusted", "intermediates.pem"]);
        }
        args.push("f9.pem");
        let (ok, out) = openssl(dir.path(), &args);
        assert!(ok, "openssl: f9 does not chain to the root: {out}");

        // leaf → f9. No `openssl verify` invocation accepts this link
        // (OpenSSL 3.0, Debian): the f9 certificate has no basicConstraints
        // (yubikey-manager issue 522), and check_chain_extensions demands
        // CA-ness of every issuer — with or without -x509_strict (off by
        // default), and with -partial_chain -trusted f9.pem too, since the
        // trust anchor is checked as well. So openssl checks the leaf's
        // signature itself: the TBSCertificate and the signature out of
        // leaf.pem (asn1parse -strparse), the key out of f9.pem, then
        //   openssl dgst -sha256 -verify f9-key.pem -signature sig.der tbs.der
        let (ok, listing) = openssl(dir.path(), &["asn1parse", "-in", "leaf.pem"]);
        assert!(ok, "{listing}");
        let tbs_at = asn1_offset(&listing, "d=1", "SEQUENCE", false);
        let sig_at = asn1_offset(&listing, "d=1", "BIT STRING", true);
        for (at, out) in [(&tbs_at, "tbs.der"), (&sig_at, "sig.der")] {
            let (ok, text) = openssl(
                dir.path(),
                &[
                    "asn1parse",
                    "-in",
                    "leaf.pem",
                    "-strparse",
                    at,
                    "-out",
                    out,
                    "-noout",
                ],
            );
            assert!(ok, "{text}");
        }
        let (ok, key) = openssl(dir.path(), &["x509", "-in", "f9.pem", "-noout", "-pubkey"]);
        assert!(ok, "{key}");
        write("f9-key.pem", &key);
        let dgst = [
            "dgst",
            "-sha256",
            "-verify",
            "f9-key.pem",
            "-signature",
            "sig.der",
            "tbs.der",
        ];
        let (ok, out) = openssl(dir.path(), &dgst);
        assert!(
            ok && out.contains("Verified OK"),
            "openssl: leaf → f9: {out}"
        );

        // The one-shot chain check fails for exactly the f9's missing
        // basicConstraints and nothing else (every signature checked).
        let (ok, out) = openssl(
            dir.path(),
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "untrusted.pem",
                "leaf.pem",
            ],
        );
        assert!(!ok);
        let errors: Vec<&str> = out.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 2, "{out}");
        assert!(
            errors[0].contains("at 1 depth lookup: invalid CA certificate"),
            "{out}"
        );

        // -partial_chain with the f9 certificate as the trust anchor does not
        // help either (the comment above): the anchor is checked as a CA too.
        let (ok, out) = openssl(
            dir.path(),
            &["verify", "-partial_chain", "-trusted", "f9.pem", "leaf.pem"],
        );
        assert!(!ok && out.contains("invalid CA certificate"), "{out}");

        // And a tampered TBS fails openssl's check as it fails ours.
        let mut tbs = std::fs::read(dir.path().join("tbs.der")).unwrap();
        let n = tbs.len();
        tbs[n - 1] ^= 1;
        std::fs::write(dir.path().join("tbs.der"), tbs).unwrap();
        let (ok, out) = openssl(dir.path(), &dgst);
        assert!(!ok, "openssl accepted a tampered certificate: {out}");

        // keybridge agrees with openssl on the untampered chain.
        let out = verify_attestation(&b, &label, &dir.path().join("root.pem"), true);
        if ca.len() == 1 {
            report(&out);
        } else {
            // The root alone does not reach the f9 certificate: the
            // intermediate must be in the roots file.
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            let roots = roots_file(&b, &format!("ca{i}"), card);
            report(&verify_attestation(&b, &label, &roots, true));
        }
    }
}
