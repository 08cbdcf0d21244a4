//! Key requests from hardware keys (README, "Adding people and keys"): a
//! key on a (virtual) YubiKey and one in a TPM (swtpm) ask to join; the
//! request carries the key's residency evidence; `keys approve` shows the
//! approver what it proves before the code is typed; devices accept the
//! new keys' commands. Serials 96_000_00n are this file's.

use keybridge_tests::swtpm::Swtpm;
use keybridge_tests::vyubikey::CardConfig;
use keybridge_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const NOW: i64 = 1_800_000_000;
const PIN: &str = "123456";
const TPM_PIN: &str = "tpm-pin-1234";

use keybridge_tests::{output_text as text, path_str as s};

/// An admin daemon with a passphrase key and the account's log, and a
/// device's state folder trusting it.
struct Admin {
    b: Bridge,
    log: PathBuf,
    dev: PathBuf,
}

fn admin() -> Admin {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    let log = b.account_log("acme", "alice");
    let dev = b.home().join("dev-1");
    trust_device(&dev, &log, "dev-1");
    Admin { b, log, dev }
}

/// `keys request` on `b` for `key`; (file, code, answer).
fn request(b: &Bridge, key: &str) -> (PathBuf, String, Value) {
    let out = b.home().join(format!("{key}.req"));
    let v: Value = serde_json::from_str(&b.ok(
        &["--json", "keys", "request", "--key", key, "--out", s(&out)],
        None,
    ))
    .unwrap();
    (out, v["code"].as_str().unwrap().to_owned(), v)
}

/// `keys create --backend tpm` of agent bob's key `label` on `b`, unlocked
/// for the day.
fn tpm_key(b: &Bridge, label: &str) {
    let r = b.cli(
        &[
            "--json",
            "keys",
            "create",
            "--backend",
            "tpm",
            "--account",
            "acme",
            "--agent",
            "bob",
            "--label",
            label,
            "--secret-stdin",
        ],
        Some(TPM_PIN),
    );
    assert!(r.status.success(), "{}", text(&r));
    b.ok(
        &["unlock", label, "--remember", "daily", "--secret-stdin"],
        Some(TPM_PIN),
    );
}

impl Admin {
    /// Approves `req`, updates the device, signs with `key` on `member`
    /// and has the device verify it; what `approve` printed.
    fn approve_and_use(
        &self,
        member: &Bridge,
        key: &str,
        (req, code): (&Path, &str),
        roots: Option<&Path>,
    ) -> String {
        let mut args = vec![
            "keys",
            "approve",
            s(req),
            "--code",
            code,
            "--key",
            "alice",
            "--log",
            s(&self.log),
        ];
        if let Some(r) = roots {
            args.extend(["--roots", s(r)]);
        }
        let o = self.b.cli(&args, None);
        assert!(o.status.success(), "{}", text(&o));
        let u = device(&self.dev, &["trust", "update", s(&self.log)]);
        assert!(u.status.success(), "{}", text(&u));
        let r = member.sign_for(key, "dev-1");
        assert!(r.status.success(), "{}", text(&r));
        let cmd = member.home().join(format!("{key}.cose"));
        let v = device(&self.dev, &["verify", s(&cmd), "--now", &NOW.to_string()]);
        assert!(v.status.success(), "{}", text(&v));
        text(&o)
    }
}

#[test]
fn a_yubikey_key_request_carries_its_attestation_and_the_approver_sees_the_card() {
    let Some(card) = CardConfig::new(96_000_001).insert() else {
        return;
    };
    let alice = admin();
    let log = alice.log.clone();
    let bob = Bridge::start(NOW);
    let uri = format!("yubikey:serial={};slot=9c", card.serial());
    let r = bob.create_yubikey_key(
        "bob-yk",
        &uri,
        &[
            "--default-management-key",
            "--pin-policy",
            "once",
            "--touch-policy",
            "never",
        ],
        PIN,
    );
    assert!(r.status.success(), "{}", text(&r));
    bob.ok(
        &["unlock", "bob-yk", "--remember", "daily", "--secret-stdin"],
        Some(PIN),
    );
    let (req, code, v) = request(&bob, "bob-yk");
    assert_eq!(v["evidence"], "yubikey-piv-attestation");

    // Without roots the approver is told it was not checked.
    let o = alice.b.cli(
        &[
            "keys",
            "approve",
            s(&req),
            "--code",
            "000000",
            "--key",
            "alice",
            "--log",
            s(&log),
        ],
        None,
    );
    assert!(
        text(&o).contains("not checked: give --roots"),
        "{}",
        text(&o)
    );
    // With the CA that issued the card's attestation: verified, with the
    // card's serial, and the key's policies.
    let roots = alice.b.home().join("roots.pem");
    std::fs::write(&roots, card.attestation_chain_pem().concat()).unwrap();
    let shown = alice.approve_and_use(&bob, "bob-yk", (&req, &code), Some(&roots));
    assert!(
        shown.contains("yubikey-piv-attestation — verified"),
        "{shown}"
    );
    assert!(shown.contains("96000001"), "the card's serial: {shown}");
    assert!(shown.to_lowercase().contains("touch"), "{shown}");
    // The add event keeps the evidence: the history says so.
    let h = alice.b.ok(&["history", "--log", s(&log)], None);
    assert!(h.contains("[evidence: yubikey-piv-attestation]"), "{h}");
}

#[test]
fn a_tpm_key_request_carries_its_certification_and_the_approver_sees_it_verified() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let alice = admin();

    let tcti = PathBuf::from(tpm.tcti());
    let bob = Bridge::start_with_env(NOW, None, &[("TPM2TOOLS_TCTI", &tcti)]);
    tpm_key(&bob, "bob-tpm");
    let (req, code, v) = request(&bob, "bob-tpm");
    assert_eq!(v["evidence"], "tpm2-certify");
    let shown = alice.approve_and_use(&bob, "bob-tpm", (&req, &code), None);
    assert!(shown.contains("tpm2-certify — verified"), "{shown}");
    // A passphrase request carries none, and says so.
    let carol = Bridge::start(NOW);
    carol.passphrase_key("acme", "carol");
    carol.ok(
        &["unlock", "carol", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    let (req, code, v) = request(&carol, "carol");
    assert!(v.get("evidence").is_none(), "{v}");
    let shown = alice.approve_and_use(&carol, "carol", (&req, &code), None);
    assert!(shown.contains("evidence:  none"), "{shown}");
}

/// A P-256 CA (`CN=Acme TPM AK CA`, self-signed) that certifies the AK
/// whose public key `ak_pem` is: the root and the AK certificate, PEM.
fn certify_ak(ak_pem: &str, seed: u8) -> (String, String) {
    use keybridge_evidence::x509::test_pki::{basic_constraints, issue, pem, spki};
    use p256::pkcs8::DecodePublicKey as _;
    use std::str::FromStr as _;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    let ca = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let ca_name = Name::from_str("CN=Acme TPM AK CA").unwrap();
    let root = issue::<_, p256::ecdsa::DerSignature>(
        &ca,
        ca_name.clone(),
        ca_name.clone(),
        SerialNumber::from(1u32),
        spki(ca.verifying_key()),
        vec![basic_constraints(true, None)],
    );
    let ak = p256::PublicKey::from_public_key_pem(ak_pem).unwrap();
    let cert = issue::<_, p256::ecdsa::DerSignature>(
        &ca,
        ca_name,
        Name::from_str("CN=AK of workstation 7").unwrap(),
        SerialNumber::from(2u32),
        spki(&ak),
        vec![basic_constraints(false, None)],
    );
    (pem(&root), pem(&cert))
}

#[test]
fn a_tpm_key_passes_a_device_hardware_policy_only_with_an_ak_certificate() {
    let Some(tpm) = Swtpm::start_with_ek_cert() else {
        return;
    };
    let alice = admin();
    let tcti = PathBuf::from(tpm.tcti());
    let bob = Bridge::start_with_env(NOW, None, &[("TPM2TOOLS_TCTI", &tcti)]);
    for label in ["bob-ek", "bob-ak"] {
        tpm_key(&bob, label);
    }
    // One AK for both keys of this TPM: a CA certifies it once.
    let ak_pem = bob.ok(&["keys", "ak-public", "bob-ek"], None);
    assert_eq!(bob.ok(&["keys", "ak-public", "bob-ak"], None), ak_pem);
    assert!(ak_pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{ak_pem}");
    // tpm2-tools makes the same primary from the same template (keybridge's
    // AK template, DESIGN: restricted ECDSA-SHA256 P-256, noDA, empty
    // unique): the public key it reads is the one keybridge prints.
    let ctx = tpm.work_dir().join("ak.ctx");
    let tools_pem = tpm.work_dir().join("ak-tools.pem");
    tpm.tpm2_ok(
        "createprimary",
        &[
            "-C",
            "e",
            "-g",
            "sha256",
            "-G",
            "ecc256:ecdsa-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign",
            "-c",
            s(&ctx),
        ],
    );
    tpm.tpm2_ok(
        "readpublic",
        &["-c", s(&ctx), "-f", "pem", "-o", s(&tools_pem)],
    );
    assert_eq!(std::fs::read_to_string(&tools_pem).unwrap(), ak_pem);
    let (ak_root, ak_cert) = certify_ak(&ak_pem, 7);
    let write = |name: &str, text: &str| {
        let p = bob.home().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ak_cert_file = write("ak.pem", &ak_cert);
    // openssl reads the AK's key out of the certificate the CA made.
    let o = std::process::Command::new("openssl")
        .args(["x509", "-in", s(&ak_cert_file), "-pubkey", "-noout"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), ak_pem);

    // The attacker's view: a certificate for another key, or an AK
    // certificate on a key without a TPM certification, is refused and no
    // request is written.
    let (_, other) = certify_ak(
        &{
            use p256::pkcs8::{EncodePublicKey as _, LineEnding};
            p256::ecdsa::SigningKey::from_slice(&[9; 32])
                .unwrap()
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        },
        7,
    );
    let other = write("other.pem", &other);
    let out = bob.home().join("refused.req");
    for (b, key, cert, why) in [
        (&bob, "bob-ak", &other, "not for this TPM's attestation key"),
        (
            &alice.b,
            "alice",
            &ak_cert_file,
            "goes with a TPM key's certification",
        ),
    ] {
        let args = [
            "keys",
            "request",
            "--key",
            key,
            "--ak-cert",
            s(cert),
            "--out",
            s(&out),
        ];
        let r = b.cli(&args, None);
        assert!(!r.status.success());
        assert!(text(&r).contains(why), "{}", text(&r));
        assert!(!out.exists());
    }

    // bob-ek asks with the EK certificate only, bob-ak with the AK's.
    let (req, code, _) = request(&bob, "bob-ek");
    alice.approve_and_use(&bob, "bob-ek", (&req, &code), None);
    let req = bob.home().join("bob-ak.req");
    let v: Value = serde_json::from_str(&bob.ok(
        &[
            "--json",
            "keys",
            "request",
            "--key",
            "bob-ak",
            "--ak-cert",
            s(&ak_cert_file),
            "--out",
            s(&req),
        ],
        None,
    ))
    .unwrap();
    let code = v["code"].as_str().unwrap().to_owned();
    // The approver sees the AK certificate verified against the AK CA.
    let ak_root_file = write("ak-root.pem", &ak_root);
    let shown = alice.approve_and_use(&bob, "bob-ak", (&req, &code), Some(ak_root_file.as_path()));
    assert!(shown.contains("tpm2-certify — verified"), "{shown}");
    assert!(shown.contains("Acme TPM AK CA"), "{shown}");

    let verify = |key: &str| {
        let r = bob.sign_for(key, "dev-1");
        assert!(r.status.success(), "{}", text(&r));
        let cmd = bob.home().join(format!("{key}.cose"));
        device(&alice.dev, &["verify", s(&cmd), "--now", &NOW.to_string()])
    };
    let policy = |roots: &Path, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "set",
            "--command",
            "remote-control",
            "--require",
            "hardware",
            "--roots",
            s(roots),
        ];
        args.extend(extra);
        let o = device(&alice.dev, &args);
        assert!(o.status.success(), "{}", text(&o));
    };
    // Under the AK CA: the certified AK passes, the EK-only key does not.
    policy(&ak_root_file, &[]);
    let o = verify("bob-ak");
    assert!(o.status.success(), "{}", text(&o));
    // policy show names what the AK certificate attests.
    let show = device(&alice.dev, &["policy", "show"]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(
        text(&show).contains("accepted (TPM, AK certificate CN=AK of workstation 7)"),
        "{}",
        text(&show)
    );
    let o = verify("bob-ek");
    assert_eq!(o.status.code(), Some(41), "{}", text(&o));
    assert!(
        text(&o).contains("does not verify against this device's roots"),
        "{}",
        text(&o)
    );
    // Under the EK's CA: an EK certificate that chains is still refused,
    // saying why; the AK certificate does not chain there.
    let ek_roots = write("ek-roots.pem", &tpm.ek_ca_pem().unwrap());
    policy(&ek_roots, &[]);
    let o = verify("bob-ek");
    assert_eq!(o.status.code(), Some(41), "{}", text(&o));
    assert!(
        text(&o).contains("an EK certificate is public"),
        "{}",
        text(&o)
    );
    let o = verify("bob-ak");
    assert_eq!(o.status.code(), Some(41), "{}", text(&o));
    // A TPM has no touch.
    policy(&ak_root_file, &["--require", "touch"]);
    let o = verify("bob-ak");
    assert_eq!(o.status.code(), Some(42), "{}", text(&o));
    assert!(text(&o).contains("a TPM has no touch"), "{}", text(&o));
}
