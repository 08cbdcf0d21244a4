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
    let r = bob.cli(
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
            "bob-tpm",
            "--secret-stdin",
        ],
        Some(TPM_PIN),
    );
    assert!(r.status.success(), "{}", text(&r));
    bob.ok(
        &["unlock", "bob-tpm", "--remember", "daily", "--secret-stdin"],
        Some(TPM_PIN),
    );
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
