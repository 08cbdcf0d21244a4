//! `keybridge-device policy` end to end: an account whose key log adds a
//! YubiKey key with the attestation a virtual YubiKey gives (both of
//! Yubico's chain shapes, its test CA as the device's roots), a passphrase
//! key, and keys with evidence that must fail; the real `keybridge-device`
//! binary takes the log and verifies commands under a hardware policy.
//!
//! The attestation is made by the virtual card's own certificate code
//! (`vyubikey::offline_attestation`), without pcscd: the device checks
//! evidence, not the card. Serials 94_000_000 + n are this file's.

use keybridge_protocol::log::RequestEvidence;
use keybridge_protocol::{Claims, KeyLog, KeyRequest, Op, PublicKey, Role, Unsigned};
use keybridge_tests::vyubikey::{self, ChainShape, PinPolicy, TouchPolicy};
use keybridge_tests::{device, trust_device};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const NOW: i64 = 1_800_000_000;

/// A test's signing key: Ed25519 (a passphrase key) or P-256 (a YubiKey
/// slot's, whose scalar the test holds).
enum Key {
    Ed(ed25519_dalek::SigningKey),
    P256([u8; 32]),
}

impl Key {
    fn p256(seed: u8) -> Self {
        let mut scalar = [seed; 32];
        scalar[0] = 1; // well below the group order
        Key::P256(scalar)
    }

    fn public(&self) -> PublicKey {
        match self {
            Key::Ed(k) => PublicKey::ed25519(k.verifying_key().as_bytes()).unwrap(),
            Key::P256(s) => {
                let k = p256::ecdsa::SigningKey::from_slice(s).unwrap();
                PublicKey::p256_sec1(k.verifying_key().to_sec1_point(false).as_bytes()).unwrap()
            }
        }
    }

    fn finish(&self, u: Unsigned) -> Vec<u8> {
        let sig = self.sign(u.to_be_signed());
        u.into_bytes(&sig).unwrap()
    }

    /// A `run-script` command for `dev-1` from `agent`, nonce `n`.
    fn command(&self, agent: &str, n: u8) -> Vec<u8> {
        let claims = Claims {
            iss: "acme".into(),
            sub: agent.into(),
            aud: Some("dev-1".into()),
            exp: NOW + 300,
            nbf: NOW,
            iat: NOW,
            cti: [n; 16],
            cmd: "run-script".into(),
            args: BTreeMap::new(),
            body: None,
            devs: None,
        };
        let u = keybridge_protocol::UnsignedCommand::new(&claims, &self.public()).unwrap();
        let sig = self.sign(u.to_be_signed());
        u.into_envelope(&sig).unwrap()
    }

    /// Ed25519, or P-256 `r‖s` (low-S) over SHA-256 of `msg`.
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Key::Ed(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(msg).to_bytes().to_vec()
            }
            Key::P256(s) => {
                use p256::ecdsa::signature::Signer as _;
                let k = p256::ecdsa::SigningKey::from_slice(s).unwrap();
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_bytes().to_vec()
            }
        }
    }
}

/// An account "acme": alice (an Ed25519 admin, a passphrase key) and the
/// keys added after.
struct Account {
    alice: Key,
    log: KeyLog,
}

impl Account {
    fn new() -> Self {
        let alice = Key::Ed(ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
        let recovery = Key::Ed(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let genesis = alice.finish(KeyLog::genesis(
            "acme",
            NOW - 1000,
            &alice.public(),
            "alice",
            &recovery.public(),
        ));
        let log = KeyLog::from_bytes(&genesis).unwrap();
        Account { alice, log }
    }

    /// Adds `key` as a member of `agent`, approved by alice, its request
    /// carrying `evidence`.
    fn add(&mut self, key: &Key, agent: &str, evidence: Option<RequestEvidence>) {
        let req = key.finish(KeyRequest::unsigned_with(
            "acme",
            agent,
            Role::Member,
            &key.public(),
            NOW - 900,
            None,
            evidence.as_ref(),
        ));
        let op = Op::Add {
            key: key.public(),
            agent: agent.into(),
            role: Role::Member,
            req,
            replaces: None,
        };
        let ev = self
            .alice
            .finish(self.log.next_event(NOW - 800, &op, &self.alice.public()));
        self.log.append(&ev).unwrap();
    }
}

/// A virtual YubiKey's attestation of `key` in slot 9c: the evidence its
/// key request carries, and the card's test CA as a PEM roots file's text.
fn yubikey(
    key: &Key,
    shape: ChainShape,
    serial: u32,
    touch: TouchPolicy,
) -> (RequestEvidence, String) {
    let Key::P256(secret) = key else {
        panic!("a YubiKey key here is P-256")
    };
    let (chain, roots) =
        vyubikey::offline_attestation(shape, secret, 0x9c, serial, PinPolicy::Once, touch);
    let evidence = RequestEvidence {
        kind: "yubikey-piv-attestation".into(),
        chain,
    };
    (evidence, roots.concat())
}

/// A device folder in a temp dir.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new(a: &Account) -> Self {
        let d = Device {
            dir: tempfile::tempdir().unwrap(),
        };
        let log = d.file("log.cbor", &a.log.to_bytes());
        trust_device(&d.state(), &log, "dev-1");
        d
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        device(&self.state(), args)
    }

    fn policy(&self, require: &str, roots: &str) -> Output {
        let roots = self.file("roots.pem", roots.as_bytes());
        self.run(&[
            "policy",
            "set",
            "--command",
            "run-script",
            "--require",
            require,
            "--roots",
            s(&roots),
        ])
    }

    fn verify(&self, envelope: &[u8]) -> Output {
        let cmd = self.file("cmd.cose", envelope);
        self.run(&["verify", s(&cmd), "--now", &NOW.to_string()])
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn accepted(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn refused(o: &Output, code: i32, words: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(stderr(o).contains(words), "{}", stderr(o));
    assert!(o.stdout.is_empty());
}

#[test]
fn a_yubikey_key_of_either_chain_shape_passes_a_touch_policy_and_a_passphrase_key_does_not() {
    for (n, shape) in [(1u32, ChainShape::Legacy), (2, ChainShape::Root1)] {
        let mut a = Account::new();
        let carol = Key::p256(9);
        let (evidence, roots) = yubikey(&carol, shape, 94_000_000 + n, TouchPolicy::Always);
        a.add(&carol, "carol", Some(evidence));
        let d = Device::new(&a);
        let out = d.policy("touch", &roots);
        assert!(out.status.success(), "{shape:?}: {}", stderr(&out));

        let v = accepted(&d.verify(&carol.command("carol", 1)));
        assert_eq!(v["hardware"]["serial"], 94_000_000 + n);
        assert_eq!(v["hardware"]["touch_policy"], "always");
        assert_eq!(v["hardware"]["firmware"], "5.7.4");
        let root = match shape {
            ChainShape::Legacy => "CN=vyubikey Test PIV Root CA Serial 263751",
            ChainShape::Root1 => "CN=vyubikey Test Attestation Root 1",
        };
        assert_eq!(v["hardware"]["root"], root);
        // alice signs with a passphrase key: no evidence.
        refused(
            &d.verify(&a.alice.command("alice", 2)),
            40,
            "hardware key required",
        );
    }
}

#[test]
fn evidence_from_another_card_vendor_or_for_another_key_is_refused() {
    let mut a = Account::new();
    let (carol, dan) = (Key::p256(9), Key::p256(10));
    let (evidence, roots) = yubikey(&carol, ChainShape::Legacy, 94_000_010, TouchPolicy::Always);
    a.add(&carol, "carol", Some(evidence.clone()));
    // dan's request carries carol's attestation: it certifies another key.
    a.add(&dan, "dan", Some(evidence));
    let d = Device::new(&a);
    // The device holds another card's CA: carol's chain is foreign.
    let (_, other_roots) = yubikey(&carol, ChainShape::Legacy, 94_000_011, TouchPolicy::Always);
    assert!(d.policy("hardware", &other_roots).status.success());
    refused(
        &d.verify(&carol.command("carol", 1)),
        41,
        "does not verify against this device's roots",
    );
    // With carol's CA: carol passes, dan's borrowed chain does not.
    assert!(d.policy("hardware", &roots).status.success());
    accepted(&d.verify(&carol.command("carol", 2)));
    refused(
        &d.verify(&dan.command("dan", 3)),
        41,
        "certifies another key",
    );
    // The policy's view of each key says the same.
    let show = device(&d.state(), &["policy", "show", "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let keys = show[0]["rules"][0]["keys"].as_array().unwrap();
    let code =
        |agent: &str| keys.iter().find(|k| k["agent"] == agent).unwrap()["exit_code"].clone();
    assert_eq!(code("carol"), serde_json::Value::Null);
    assert_eq!(code("dan"), 41);
    assert_eq!(code("alice"), 40);
}

#[test]
fn touch_never_fails_a_touch_policy_and_cached_passes() {
    let mut a = Account::new();
    let (carol, erin) = (Key::p256(9), Key::p256(11));
    let (ev_never, roots) = yubikey(&carol, ChainShape::Root1, 94_000_020, TouchPolicy::Never);
    a.add(&carol, "carol", Some(ev_never));
    let d = Device::new(&a);
    assert!(d.policy("touch", &roots).status.success());
    refused(
        &d.verify(&carol.command("carol", 1)),
        42,
        "attested touch policy is never",
    );
    // A later key, a later log, another card of another CA: its roots
    // added in a second file for the same command keep both CAs.
    let (ev_cached, roots2) = yubikey(&erin, ChainShape::Legacy, 94_000_021, TouchPolicy::Cached);
    a.add(&erin, "erin", Some(ev_cached));
    let log = d.file("log2.cbor", &a.log.to_bytes());
    let out = d.run(&["trust", "update", s(&log)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (r1, r2) = (
        d.file("r1.pem", roots.as_bytes()),
        d.file("r2.pem", roots2.as_bytes()),
    );
    let out = d.run(&[
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "touch",
        "--roots",
        s(&r1),
        "--roots",
        s(&r2),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = accepted(&d.verify(&erin.command("erin", 2)));
    assert_eq!(v["hardware"]["touch_policy"], "cached");
    refused(
        &d.verify(&carol.command("carol", 3)),
        42,
        "touch policy required",
    );
}
