//! `keybridge-device` as a device runs it: a real binary, a real state
//! folder, commands made by the protocol crate.
//!
//! Most tests set the device clock with `verify --now`, which exists only
//! in builds with the `test-hooks` feature: run them with
//! `cargo test -p keybridge-device --features keybridge-device/test-hooks`.

#[path = "../../protocol/tests/common/mod.rs"]
mod common;
// The device's own exit-code table: the codes the refusal test must
// produce, all of them.
#[path = "../src/exit_code.rs"]
#[allow(dead_code)]
mod exit_code;

use ciborium::value::Value;
use common::*;
use keybridge_evidence::x509::test_pki;
use keybridge_protocol::command::CONTENT_TYPE;
use keybridge_protocol::log::RequestEvidence;
use keybridge_protocol::replay::{DEFAULT_TIME_SYNC_CAPACITY, ReplayCache};
use keybridge_protocol::{Batch, InclusionProof, KeyLog, KeyRequest, Op, Role, UnsignedCommand};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DAY: i64 = 24 * 3600;

struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Self {
        Device {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_keybridge-device"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            !(args.contains(&"--now") && stderr(&out).contains("unexpected argument '--now'")),
            "this test needs `verify --now`: run with --features keybridge-device/test-hooks"
        );
        out
    }

    /// `run` in a shell that first sets `setup` (`ulimit …`, `umask …`).
    fn run_in_shell(&self, setup: &str, args: &[&str]) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{setup} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_keybridge-device"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .args(args)
            .output()
            .unwrap()
    }

    fn account_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("state/accounts").join(name)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn trust(&self, a: &Account, device: &str) {
        let log = self.file("log.cbor", &a.log.to_bytes());
        let out = self.run(&["trust", "init", s(&log), "--device-id", device]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn verify_at(&self, env: &[u8], now: i64) -> Output {
        let p = self.file("cmd.cose", env);
        self.run(&["verify", s(&p), "--now", &now.to_string()])
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn accepts_a_command_and_prints_its_claims() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let out = d.verify_at(&sign_command(&a.bob, &claims("bob", "dev-1")), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["agent"], "bob");
    assert_eq!(v["command"], "run-script");
    assert_eq!(v["alg"], "p256");
    assert_eq!(v["kid"], a.bob.public().kid().to_hex());
}

#[test]
fn body_is_checked_against_the_signed_hash() {
    use sha2::Digest;
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let mut c = claims("alice", "dev-1");
    c.body = Some(sha2::Sha256::digest(b"echo hi\n").into());
    let cmd = d.file("c.cose", &sign_command(&a.alice, &c));
    let good = d.file("good.sh", b"echo hi\n");
    let bad = d.file("bad.sh", b"rm -rf /\n");
    let now = NOW.to_string();
    let out = d.run(&["verify", s(&cmd), "--body", s(&bad), "--now", &now]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    let out = d.run(&["verify", s(&cmd), "--body", s(&good), "--now", &now]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The touch policy bytes of a YubiKey attestation.
const TOUCH_NEVER: u8 = 1;
const TOUCH_ALWAYS: u8 = 2;
const TOUCH_CACHED: u8 = 3;

/// A YubiKey-shaped attestation of the P-256 `key` under test CA `ca`,
/// with touch policy byte `touch` (PIN policy once, serial 12345678): the
/// chain (leaf, f9) and the CA's root, DER.
fn attestation(key: &Signer, ca: u8, touch: u8) -> (Vec<Vec<u8>>, Vec<u8>) {
    let Signer::P256(sk) = key else {
        panic!("a YubiKey slot key here is P-256")
    };
    test_pki::yubikey_attestation(ca, test_pki::spki(sk.verifying_key()), 12_345_678, 2, touch)
}

fn yubikey_evidence(chain: Vec<Vec<u8>>) -> RequestEvidence {
    RequestEvidence {
        kind: "yubikey-piv-attestation".into(),
        chain,
    }
}

/// An `add` event for `new` (agent `agent`, `role`), approved by
/// `approver`, its request carrying `evidence`.
fn add_event_with(
    log: &KeyLog,
    approver: &Signer,
    new: &Signer,
    agent: &str,
    role: Role,
    evidence: Option<&RequestEvidence>,
) -> Vec<u8> {
    approver.finish(log.next_event(
        NOW - 800,
        &add_op(log, new, agent, role, evidence),
        &approver.public(),
    ))
}

fn add_op(
    log: &KeyLog,
    new: &Signer,
    agent: &str,
    role: Role,
    evidence: Option<&RequestEvidence>,
) -> Op {
    let req = new.finish(KeyRequest::unsigned_with(
        log.account(),
        agent,
        role,
        &new.public(),
        NOW - 900,
        None,
        evidence,
    ));
    Op::Add {
        key: new.public(),
        agent: agent.into(),
        role,
        req,
        replaces: None,
    }
}

/// `a`'s log with `new` (a member of agent `agent`) added by alice, its
/// request carrying `evidence`, taken by `d`.
fn add_with_evidence(
    d: &Device,
    a: &Account,
    new: &Signer,
    agent: &str,
    evidence: Option<RequestEvidence>,
) -> KeyLog {
    let mut log = a.log.clone();
    let ev = add_event_with(&log, &a.alice, new, agent, Role::Member, evidence.as_ref());
    log.append(&ev).unwrap();
    take(d, &log);
    log
}

/// `trust update` with `log`, which must succeed.
fn take(d: &Device, log: &KeyLog) -> Output {
    let update = d.file("update.cbor", &log.to_bytes());
    let out = d.run(&["trust", "update", s(&update)]);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// `policy set --command run-script` with `require`, the roots given as one
/// PEM file; it must succeed.
fn set_policy(d: &Device, require: &[&str], roots: &[&Vec<u8>]) -> Output {
    let pem: String = roots.iter().map(|r| test_pki::pem(r)).collect();
    let path = d.file("roots.pem", pem.as_bytes());
    let mut args = vec!["policy", "set", "--command", "run-script"];
    args.extend_from_slice(require);
    args.extend(["--roots", s(&path)]);
    let out = d.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// Every file of the account folder, by name, with its bytes.
fn snapshot(d: &Device, account: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(d.account_dir(account))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// One refusal produced through the binary: its exit code, words its
/// reason must contain, and how to provoke it on a device that trusts
/// `acme` as `dev-1`.
type Refusal = (i32, &'static str, fn(&Device, &Account) -> Output);

/// Every refusal, in exit-code order.
fn refusals() -> Vec<Refusal> {
    vec![
        (10, "malformed", |d, _| d.verify_at(b"not cose", NOW)),
        (11, "not deterministically encoded", |d, a| {
            // The COSE_Sign1 tag, 18, on two bytes.
            let env = sign_command(&a.alice, &claims("alice", "dev-1"));
            let mut bad = vec![0xd8, 0x12];
            bad.extend_from_slice(&env[1..]);
            d.verify_at(&bad, NOW)
        }),
        (12, "unknown key", |d, _| {
            let stranger = Signer::ed25519(77);
            d.verify_at(&sign_command(&stranger, &claims("alice", "dev-1")), NOW)
        }),
        (13, "revoked", |d, a| {
            let mut log = a.log.clone();
            let revoke = Op::Revoke {
                kid: a.bob.public().kid(),
            };
            let ev = a
                .alice
                .finish(log.next_event(NOW, &revoke, &a.alice.public()));
            log.append(&ev).unwrap();
            let update = d.file("update.cbor", &log.to_bytes());
            let out = d.run(&["trust", "update", s(&update)]);
            assert!(out.status.success(), "{}", stderr(&out));
            d.verify_at(&sign_command(&a.bob, &claims("bob", "dev-1")), NOW)
        }),
        (14, "does not match the ed25519 key", |d, a| {
            // Alice's Ed25519 key, an ES256 header.
            let payload = claims("alice", "dev-1").to_payload();
            let env = raw_envelope(&a.alice, -7, CONTENT_TYPE, payload, Default::default());
            d.verify_at(&env, NOW)
        }),
        (15, "signature", |d, a| {
            let mut env = sign_command(&a.alice, &claims("alice", "dev-1"));
            *env.last_mut().unwrap() ^= 1;
            d.verify_at(&env, NOW)
        }),
        (16, "account", |d, a| {
            let mut c = claims("alice", "dev-1");
            c.iss = "globex".into();
            d.verify_at(&sign_command(&a.alice, &c), NOW)
        }),
        (17, "agent", |d, a| {
            d.verify_at(&sign_command(&a.bob, &claims("alice", "dev-1")), NOW)
        }),
        (18, "device", |d, a| {
            d.verify_at(&sign_command(&a.alice, &claims("alice", "dev-9")), NOW)
        }),
        (19, "batch proof", |d, a| {
            let batch = Batch::new(["dev-2", "dev-3"]).unwrap();
            let mut c = claims("alice", "x");
            c.aud = None;
            c.devs = Some(batch.signed_root());
            let u = UnsignedCommand::new(&c, &a.alice.public()).unwrap();
            let sig = a.alice.sign(u.to_be_signed());
            let envs = u.into_batch_envelopes(&sig, &batch).unwrap();
            d.verify_at(&envs[0].1, NOW)
        }),
        (20, "time-sync", |d, a| {
            d.verify_at(
                &sign_command(&a.alice, &claims("alice", "dev-1")),
                NOW + 7200,
            )
        }),
        (21, "behind", |d, a| {
            d.verify_at(
                &sign_command(&a.alice, &claims("alice", "dev-1")),
                NOW - 7200,
            )
        }),
        (22, "longer than 24 h", |d, a| {
            let mut c = claims("alice", "dev-1");
            c.exp = c.nbf + DAY + 1;
            d.verify_at(&signed_raw(&a.alice, &c), NOW)
        }),
        (23, "body mismatch", |d, a| {
            use sha2::Digest;
            let mut c = claims("alice", "dev-1");
            c.body = Some(sha2::Sha256::digest(b"echo hi\n").into());
            let cmd = d.file("c.cose", &sign_command(&a.alice, &c));
            let other = d.file("other.sh", b"rm -rf /\n");
            let now = NOW.to_string();
            d.run(&["verify", s(&cmd), "--body", s(&other), "--now", &now])
        }),
        (24, "replay", |d, a| {
            let env = sign_command(&a.alice, &claims("alice", "dev-1"));
            let first = d.verify_at(&env, NOW);
            assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
            d.verify_at(&env, NOW + 1)
        }),
        (25, "replay cache is full", |d, a| {
            // The replay cache of a device that took a time-sync a day for
            // 27 years, each remembered for a year more: its time-sync set
            // is full of live entries.
            let kid = a.alice.public().kid();
            let mut cache = ReplayCache::default();
            for i in 0..DEFAULT_TIME_SYNC_CAPACITY as u64 {
                let mut cti = [0xff; 16];
                cti[..8].copy_from_slice(&i.to_be_bytes());
                cache
                    .insert_time_sync(kid, cti, NOW + 400 * DAY, NOW)
                    .unwrap();
            }
            let replay = d.account_dir("acme").join("replay.cbor");
            std::fs::write(&replay, cache.to_bytes()).unwrap();
            let mut c = claims("alice", "dev-1");
            c.cmd = "time-sync".into();
            d.verify_at(&sign_command(&a.alice, &c), NOW)
        }),
        (26, "rotated out", |d, a| {
            // Bob rotates to a new key that names his old one in its
            // request and its add event.
            let bob2 = Signer::p256(12);
            let mut log = a.log.clone();
            let ev = add_event(
                &log,
                &a.alice,
                &bob2,
                "bob",
                Role::Member,
                Some(a.bob.public().kid()),
            );
            log.append(&ev).unwrap();
            let update = d.file("update.cbor", &log.to_bytes());
            let out = d.run(&["trust", "update", s(&update)]);
            assert!(out.status.success(), "{}", stderr(&out));
            let mut c = claims("bob", "dev-1");
            c.cti = [2; 16];
            let fresh = d.verify_at(&sign_command(&bob2, &c), NOW);
            assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
            d.verify_at(&sign_command(&a.bob, &claims("bob", "dev-1")), NOW)
        }),
        (30, "rollback", |d, a| {
            let short = d.file("short.cbor", &a.log.to_bytes());
            let mut log = a.log.clone();
            let revoke = Op::Revoke {
                kid: a.bob.public().kid(),
            };
            let ev = a
                .alice
                .finish(log.next_event(NOW, &revoke, &a.alice.public()));
            log.append(&ev).unwrap();
            let longer = d.file("longer.cbor", &log.to_bytes());
            let out = d.run(&["trust", "update", s(&longer)]);
            assert!(out.status.success(), "{}", stderr(&out));
            d.run(&["trust", "update", s(&short)])
        }),
        (31, "fork", |d, a| {
            // The trusted log has seq 0 and 1; this one another seq 1.
            let genesis = &a.log.events()[0];
            let mut fork = KeyLog::from_bytes(genesis.bytes()).unwrap();
            let carol = Signer::ed25519(9);
            let ev = add_event(&fork, &a.alice, &carol, "carol", Role::Member, None);
            fork.append(&ev).unwrap();
            let forked = d.file("fork.cbor", &fork.to_bytes());
            d.run(&["trust", "update", s(&forked)])
        }),
        (32, "key log refused", |d, a| {
            // The trusted log and one more event, its signature altered
            // (only new events are verified: an altered old one is a fork).
            let mut log = a.log.clone();
            let revoke = Op::Revoke {
                kid: a.bob.public().kid(),
            };
            let mut ev = a
                .alice
                .finish(log.next_event(NOW, &revoke, &a.alice.public()));
            *ev.last_mut().unwrap() ^= 1;
            let mut bytes = log.to_bytes();
            bytes.extend_from_slice(&ev);
            assert!(log.append(&ev).is_err());
            let tampered = d.file("tampered.cbor", &bytes);
            d.run(&["trust", "update", s(&tampered)])
        }),
        (40, "hardware key required", |d, a| {
            // Bob's key has no residency evidence.
            let (_, root) = attestation(&a.bob, 1, TOUCH_ALWAYS);
            set_policy(d, &["--require", "hardware"], &[&root]);
            d.verify_at(&sign_command(&a.bob, &claims("bob", "dev-1")), NOW)
        }),
        (41, "does not verify against this device's roots", |d, a| {
            // Carol's YubiKey chains to test CA 1; the device holds CA 2.
            let carol = Signer::p256(9);
            let (chain, _) = attestation(&carol, 1, TOUCH_ALWAYS);
            add_with_evidence(d, a, &carol, "carol", Some(yubikey_evidence(chain)));
            let (_, other_root) = attestation(&carol, 2, TOUCH_ALWAYS);
            set_policy(d, &["--require", "hardware"], &[&other_root]);
            d.verify_at(&sign_command(&carol, &claims("carol", "dev-1")), NOW)
        }),
        (42, "touch policy required", |d, a| {
            let carol = Signer::p256(9);
            let (chain, root) = attestation(&carol, 1, TOUCH_NEVER);
            add_with_evidence(d, a, &carol, "carol", Some(yubikey_evidence(chain)));
            set_policy(d, &["--require", "touch"], &[&root]);
            d.verify_at(&sign_command(&carol, &claims("carol", "dev-1")), NOW)
        }),
        (43, "cannot check \"sgx-quote\" evidence", |d, a| {
            let carol = Signer::p256(9);
            let evidence = RequestEvidence {
                kind: "sgx-quote".into(),
                chain: vec![b"TPMS_ATTEST".to_vec(), b"TPMT_SIGNATURE".to_vec()],
            };
            add_with_evidence(d, a, &carol, "carol", Some(evidence));
            let (_, root) = attestation(&carol, 1, TOUCH_ALWAYS);
            set_policy(d, &["--require", "hardware"], &[&root]);
            d.verify_at(&sign_command(&carol, &claims("carol", "dev-1")), NOW)
        }),
    ]
}

#[test]
fn every_refusal_exits_with_its_own_code_and_says_why() {
    let mut produced = BTreeSet::new();
    for (code, words, provoke) in refusals() {
        let (d, a) = (Device::new(), Account::new());
        d.trust(&a, "dev-1");
        let out = provoke(&d, &a);
        assert_eq!(
            out.status.code(),
            Some(code),
            "expected {code} ({words}): {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(words), "{code}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{code}: printed {:?}", out.stdout);
        assert!(produced.insert(code), "{code} listed twice");
    }
    // Every code the device can exit with for a refusal was produced: a
    // refusal added to the device's table fails here until it is above.
    let table: BTreeSet<i32> = exit_code::refusals()
        .iter()
        .map(|(code, _)| i32::from(*code))
        .collect();
    assert_eq!(
        produced, table,
        "produced (left), the device's table (right)"
    );
    // And each refusal has a code of its own.
    assert_eq!(table.len(), exit_code::refusals().len());
}

#[test]
fn help_lists_every_exit_code() {
    let out = Device::new().run(&["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8(out.stdout).unwrap();
    let table = exit_code::refusals().into_iter().chain([
        (0, "accepted (verify) / done"),
        (2, "usage error"),
        (3, "state or file problem"),
    ]);
    for (code, what) in table {
        assert!(help.contains(&format!("{code}  {what}")), "{code}: {help}");
    }
}

#[test]
fn replay_is_refused_across_restarts_and_the_cache_stays_bounded() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    assert_eq!(d.verify_at(&env, NOW).status.code(), Some(0));
    let again = d.verify_at(&env, NOW + 1);
    assert_eq!(again.status.code(), Some(24), "{}", stderr(&again));
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["replay_entries"], 1);
    // Later, a new command: the old entry (exp + skew passed) is dropped.
    let mut c = claims("alice", "dev-1");
    c.cti = [1; 16];
    c.nbf = NOW + 3600;
    c.iat = NOW + 3600;
    c.exp = NOW + 3900;
    assert_eq!(
        d.verify_at(&sign_command(&a.alice, &c), NOW + 3600)
            .status
            .code(),
        Some(0)
    );
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["replay_entries"], 1);
}

#[test]
fn concurrent_verifiers_accept_a_command_exactly_once() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let p = d.file(
        "cmd.cose",
        &sign_command(&a.alice, &claims("alice", "dev-1")),
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_keybridge-device"))
                .arg("--state")
                .arg(d.dir.path().join("state"))
                .args(["verify", s(&p), "--now", &NOW.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 24).count(), 7, "{codes:?}");
}

#[test]
fn time_sync_is_accepted_outside_the_window_once() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let mut c = claims("alice", "dev-1");
    c.cmd = "time-sync".into();
    let env = sign_command(&a.alice, &c);
    let out = d.verify_at(&env, NOW + 86400 * 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["clock_offset"], 86400 * 30);
    assert_eq!(d.verify_at(&env, NOW).status.code(), Some(24));
}

#[test]
fn batch_command_verifies_on_every_device_in_it() {
    let a = Account::new();
    let batch = Batch::new(["dev-1", "dev-2", "dev-3"]).unwrap();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let u = UnsignedCommand::new(&c, &a.alice.public()).unwrap();
    let sig = a.alice.sign(u.to_be_signed());
    for (id, env) in u.into_batch_envelopes(&sig, &batch).unwrap() {
        let d = Device::new();
        d.trust(&a, &id);
        let out = d.verify_at(&env, NOW);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(json(&out)["batch_size"], 3);
        // The same envelope on a device outside the batch.
        let outsider = Device::new();
        outsider.trust(&a, "dev-4");
        assert_eq!(outsider.verify_at(&env, NOW).status.code(), Some(19));
    }
}

#[test]
fn trust_update_takes_extensions_and_refuses_rollback_and_fork() {
    let d = Device::new();
    let mut a = Account::new();
    let short = a.log.clone();
    d.trust(&a, "dev-1");
    // Extension: bob is revoked.
    let revoke = Op::Revoke {
        kid: a.bob.public().kid(),
    };
    let ev = a
        .alice
        .finish(a.log.next_event(NOW, &revoke, &a.alice.public()));
    a.log.append(&ev).unwrap();
    let longer = d.file("longer.cbor", &a.log.to_bytes());
    let out = d.run(&["trust", "update", s(&longer)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bob_cmd = sign_command(&a.bob, &claims("bob", "dev-1"));
    assert_eq!(d.verify_at(&bob_cmd, NOW).status.code(), Some(13));

    let before = snapshot(&d, "acme");
    let shown = d.run(&["trust", "show", "--json"]).stdout;
    // Rollback to the log where bob was active.
    let old = d.file("old.cbor", &short.to_bytes());
    let out = d.run(&["trust", "update", s(&old)]);
    assert_eq!(out.status.code(), Some(30), "{}", stderr(&out));
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));
    // Fork: a different third event (alice adds carol instead).
    let mut fork = short.clone();
    let ev = add_event(
        &fork,
        &a.alice,
        &Signer::ed25519(9),
        "carol",
        Role::Member,
        None,
    );
    fork.append(&ev).unwrap();
    let forked = d.file("fork.cbor", &fork.to_bytes());
    let out = d.run(&["trust", "update", s(&forked)]);
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    assert!(stderr(&out).contains("fork"), "{}", stderr(&out));
    // The trusted history with one old event altered (a signature byte):
    // it differs from the trusted log, a fork at that event — the old
    // events are compared, never verified again.
    let mut altered = a.log.to_bytes();
    let first = a.log.events()[0].bytes().len();
    altered[first - 1] ^= 1;
    let altered = d.file("altered.cbor", &altered);
    let out = d.run(&["trust", "update", s(&altered)]);
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    assert!(stderr(&out).contains("at event 0"), "{}", stderr(&out));
    // An extension whose new event does not verify.
    let mut bad = a.log.to_bytes();
    let mut ev = add_event(
        &a.log,
        &a.alice,
        &Signer::ed25519(9),
        "carol",
        Role::Member,
        None,
    );
    *ev.last_mut().unwrap() ^= 1;
    bad.extend_from_slice(&ev);
    let bad = d.file("bad.cbor", &bad);
    let out = d.run(&["trust", "update", s(&bad)]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(stderr(&out).contains("event 3"), "{}", stderr(&out));
    // Garbage, and an empty file.
    for junk in [&b"not a log"[..], b""] {
        let junk = d.file("junk.cbor", junk);
        let out = d.run(&["trust", "update", s(&junk)]);
        assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    }
    // None changed anything, byte for byte.
    assert_eq!(snapshot(&d, "acme"), before);
    assert_eq!(d.run(&["trust", "show", "--json"]).stdout, shown);
    assert_eq!(d.verify_at(&bob_cmd, NOW).status.code(), Some(13));
}

#[test]
fn trust_init_refuses_a_second_log_for_the_same_account() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let log = d.file("log2.cbor", &a.log.to_bytes());
    let out = d.run(&["trust", "init", s(&log), "--device-id", "dev-1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("already trusted"));
}

#[test]
fn verify_without_trust_says_how_to_deploy() {
    let (d, a) = (Device::new(), Account::new());
    let out = d.verify_at(&sign_command(&a.alice, &claims("alice", "dev-1")), NOW);
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
}

/// An envelope signed by `signer` over `claims` as an attacker with a
/// trusted key would make it: no check of ours on the way.
fn signed_raw(signer: &Signer, claims: &keybridge_protocol::Claims) -> Vec<u8> {
    let alg = match signer {
        Signer::Ed(_) => -8,
        Signer::P256(_) => -7,
    };
    raw_envelope(
        signer,
        alg,
        CONTENT_TYPE,
        claims.to_payload(),
        Default::default(),
    )
}

// --- 1. times are checked, never wrapped -------------------------------------

#[test]
fn overflowing_validity_windows_are_refused_as_too_long_for_commands_and_time_sync() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let windows = [(-1, i64::MAX), (-(1i64 << 62), 1i64 << 62)];
    for (i, (nbf, exp)) in windows.into_iter().enumerate() {
        for cmd in ["run-script", "time-sync"] {
            let mut c = claims("alice", "dev-1");
            (c.nbf, c.exp, c.iat) = (nbf, exp, NOW);
            c.cmd = cmd.into();
            c.cti = [i as u8 + 1; 16];
            let out = d.verify_at(&signed_raw(&a.alice, &c), NOW);
            assert_eq!(
                out.status.code(),
                Some(22),
                "{nbf}..{exp} {cmd}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("longer than 24 h"),
                "{}",
                stderr(&out)
            );
        }
    }
    // Nothing was remembered, forever or otherwise.
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["replay_entries"], 0);
}

// --- 2. iat ---------------------------------------------------------------------

#[test]
fn iat_outside_nbf_exp_is_refused_as_malformed() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    for (n, iat) in [(1u8, NOW - 1), (2, NOW + 301), (3, i64::MIN), (4, i64::MAX)] {
        let mut c = claims("alice", "dev-1");
        c.iat = iat;
        c.cti = [n; 16];
        let out = d.verify_at(&signed_raw(&a.alice, &c), NOW);
        assert_eq!(out.status.code(), Some(10), "iat {iat}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("iat outside [nbf, exp]"),
            "{}",
            stderr(&out)
        );
    }
    // The edges are fine.
    for (n, iat) in [(5u8, NOW), (6, NOW + 300)] {
        let mut c = claims("alice", "dev-1");
        c.iat = iat;
        c.cti = [n; 16];
        let out = d.verify_at(&sign_command(&a.alice, &c), NOW);
        assert_eq!(out.status.code(), Some(0), "iat {iat}: {}", stderr(&out));
    }
}

// --- 3. time-sync: never twice, for a year ---------------------------------------

#[test]
fn time_sync_is_refused_31_and_365_days_later_across_restarts() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let mut c = claims("alice", "dev-1");
    c.cmd = "time-sync".into();
    let sync = sign_command(&a.alice, &c);
    let out = d.verify_at(&sync, NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Each run is a new process reading replay.cbor; ordinary commands in
    // between prune the cache.
    for (n, days) in [(1u8, 31), (2, 200), (3, 365)] {
        let now = NOW + days * DAY;
        let mut other = claims("alice", "dev-1");
        other.cti = [n; 16];
        (other.nbf, other.iat, other.exp) = (now, now, now + 300);
        let out = d.verify_at(&sign_command(&a.alice, &other), now);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let out = d.verify_at(&sync, now);
        assert_eq!(out.status.code(), Some(24), "day {days}: {}", stderr(&out));
        assert!(stderr(&out).contains("replay"), "{}", stderr(&out));
    }
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(
        show[0]["replay_entries"], 2,
        "the time-sync and the last command"
    );
}

// --- 4. encoding refusals exit 11, window refusals 22 -----------------------------

/// Trusts alice's account and verifies `env`, expecting `code`.
fn expect_exit(env: &[u8], code: i32, words: &str) {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let out = d.verify_at(env, NOW);
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    assert!(stderr(&out).contains(words), "{}", stderr(&out));
}

#[test]
fn unsorted_map_keys_exit_11() {
    let a = Account::new();
    let Value::Map(mut entries) = claims_value(&claims("alice", "dev-1")) else {
        panic!()
    };
    entries.swap(0, 1);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&Value::Map(entries), &mut payload).unwrap();
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    expect_exit(&env, 11, "not deterministically encoded (payload)");
}

#[test]
fn duplicate_map_keys_exit_11() {
    let a = Account::new();
    let Value::Map(mut entries) = claims_value(&claims("alice", "dev-1")) else {
        panic!()
    };
    let first = entries[0].clone();
    entries.insert(1, first);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&Value::Map(entries), &mut payload).unwrap();
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    expect_exit(&env, 11, "not deterministically encoded (payload)");
}

#[test]
fn indefinite_length_array_exits_11() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    assert_eq!(env[..2], [0xd2, 0x84]);
    let mut bad = vec![0xd2, 0x9f];
    bad.extend_from_slice(&env[2..]);
    bad.push(0xff);
    expect_exit(&bad, 11, "not deterministically encoded (envelope)");
}

#[test]
fn non_minimal_integer_exits_11() {
    let a = Account::new();
    // The first key of the payload map, 1 (iss), on two bytes: 0x18 0x01.
    let payload = claims("alice", "dev-1").to_payload();
    assert_eq!(payload[1], 0x01);
    let mut bad = vec![payload[0], 0x18, 0x01];
    bad.extend_from_slice(&payload[2..]);
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, bad, Default::default());
    expect_exit(&env, 11, "not deterministically encoded (payload)");
}

#[test]
fn tag_18_on_two_bytes_exits_11() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    assert_eq!(env[0], 0xd2);
    let mut bad = vec![0xd8, 0x12];
    bad.extend_from_slice(&env[1..]);
    expect_exit(&bad, 11, "not deterministically encoded (envelope)");
}

#[test]
fn validity_window_of_24h_and_1s_exits_22() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.exp = c.nbf + DAY + 1;
    expect_exit(&signed_raw(&a.alice, &c), 22, "86401 s is longer than 24 h");
}

// --- 5. the batch size is signed ------------------------------------------------

/// `env` with its inclusion proof replaced by `proof`.
fn with_proof(env: &[u8], proof: &InclusionProof) -> Vec<u8> {
    use coset::TaggedCborSerializable as _;
    let mut sign1 = coset::CoseSign1::from_tagged_slice(env).unwrap();
    assert_eq!(sign1.unprotected.rest.len(), 1);
    sign1.unprotected.rest[0].1 = proof.to_value();
    sign1.to_tagged_vec().unwrap()
}

#[test]
fn batch_proof_rewritten_from_4_of_5_to_2_of_3_is_refused() {
    let a = Account::new();
    let ids = ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"];
    let batch = Batch::new(ids).unwrap();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let u = UnsignedCommand::new(&c, &a.alice.public()).unwrap();
    let sig = a.alice.sign(u.to_be_signed());
    let envs = u.into_batch_envelopes(&sig, &batch).unwrap();
    let (id, env) = &envs[4];
    assert_eq!(id, "dev-4");
    // The rewritten proof still leads from dev-4's leaf to the root: only
    // the signed size can tell.
    let mut proof = batch.proof(4);
    (proof.leaf_index, proof.tree_size) = (2, 3);
    assert!(proof.verify("dev-4", &batch.root()));
    let d = Device::new();
    d.trust(&a, "dev-4");
    let out = d.verify_at(&with_proof(env, &proof), NOW);
    assert_eq!(out.status.code(), Some(19), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "reported {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The honest envelope reports the signed size.
    let out = d.verify_at(env, NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["batch_size"], 5);
}

// --- 6. device ids ----------------------------------------------------------------

#[test]
fn bad_device_ids_are_refused_with_exit_2() {
    let (d, a) = (Device::new(), Account::new());
    let log = d.file("log.cbor", &a.log.to_bytes());
    let env = d.file(
        "cmd.cose",
        &sign_command(&a.alice, &claims("alice", "dev-1")),
    );
    let long = "x".repeat(257);
    for bad in ["", "a/b", ".", "..", "dev\n1", "nul\0", long.as_str()] {
        // Command::arg cannot carry NUL; the rest go through as given.
        if bad.contains('\0') {
            continue;
        }
        let out = d.run(&["trust", "init", s(&log), "--device-id", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--device-id"), "{}", stderr(&out));
        assert!(stderr(&out).contains("device id"), "{}", stderr(&out));
    }
    // Nothing was trusted.
    let out = d.run(&["trust", "show", "--json"]);
    assert_eq!(json(&out), serde_json::json!([]));
    d.trust(&a, "dev-1");
    for bad in ["a/b", "..", "dev\t1"] {
        let out = d.run(&[
            "verify",
            s(&env),
            "--device-id",
            bad,
            "--now",
            &NOW.to_string(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--device-id"), "{}", stderr(&out));
    }
}

// --- 8. bounded reads ---------------------------------------------------------------

/// A sparse file of `len` bytes.
fn sparse(d: &Device, name: &str, len: u64) -> PathBuf {
    let p = d.dir.path().join(name);
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

/// Address space for a process that must not read 100 MB files whole.
const ULIMIT_60_MB: &str = "ulimit -v 60000";

#[test]
fn oversized_command_is_refused_without_reading_it_whole() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let now = NOW.to_string();
    // A 100 MB file, and an endless one, in 60 MB of address space.
    let big = sparse(&d, "big.cose", 100_000_000);
    for file in [big.as_path(), Path::new("/dev/zero")] {
        let out = d.run_in_shell(ULIMIT_60_MB, &["verify", s(file), "--now", &now]);
        assert_eq!(out.status.code(), Some(10), "{file:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("larger than the 65536-byte limit"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn oversized_body_and_key_log_are_refused_without_reading_them_whole() {
    let (d, a) = (Device::new(), Account::new());
    let big = sparse(&d, "big", 100_000_000);
    let out = d.run_in_shell(
        ULIMIT_60_MB,
        &["trust", "init", s(&big), "--device-id", "dev-1"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("key log") && stderr(&out).contains("16777216-byte limit"),
        "{}",
        stderr(&out)
    );
    d.trust(&a, "dev-1");
    let out = d.run_in_shell(ULIMIT_60_MB, &["trust", "update", s(&big)]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("16777216-byte limit"),
        "{}",
        stderr(&out)
    );
    let cmd = d.file("c.cose", &sign_command(&a.alice, &claims("alice", "dev-1")));
    let now = NOW.to_string();
    let out = d.run_in_shell(
        ULIMIT_60_MB,
        &["verify", s(&cmd), "--body", s(&big), "--now", &now],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("body") && stderr(&out).contains("67108864-byte limit"),
        "{}",
        stderr(&out)
    );
}

// --- 9. state files -------------------------------------------------------------------

#[test]
fn symlink_planted_at_the_lock_file_is_not_followed() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let lock = d.account_dir("acme").join(".lock");
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    // A dangling link: following it would create the target.
    let victim = d.dir.path().join("victim");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let out = d.verify_at(&env, NOW);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(!victim.exists(), "the link's target was created");
    // A link to an existing file: neither its content nor its mode change.
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = d.verify_at(&env, NOW);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn state_files_are_created_0600_whatever_the_umask() {
    let (d, a) = (Device::new(), Account::new());
    let log = d.file("log.cbor", &a.log.to_bytes());
    let out = d.run_in_shell(
        "umask 000",
        &["trust", "init", s(&log), "--device-id", "dev-1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let cmd = d.file("c.cose", &sign_command(&a.alice, &claims("alice", "dev-1")));
    let now = NOW.to_string();
    let out = d.run_in_shell("umask 000", &["verify", s(&cmd), "--now", &now]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = d.account_dir("acme");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "hardware.json",
            "keys.idx",
            "log.cbor",
            "replay.cbor",
            "settings.json",
            "trust.cbor"
        ]
    );
    for name in names {
        let mode = std::fs::metadata(dir.join(&name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}: {mode:o}");
    }
}

#[test]
fn accounts_a_b_and_hex_412042_get_distinct_folders() {
    let d = Device::new();
    let alice = Signer::ed25519(1);
    let recovery = Signer::ed25519(3);
    for (i, account) in ["A B", "hex-412042"].into_iter().enumerate() {
        let genesis = alice.finish(KeyLog::genesis(
            account,
            NOW - 1000,
            &alice.public(),
            "alice",
            &recovery.public(),
        ));
        let log = d.file(&format!("log{i}.cbor"), &genesis);
        let out = d.run(&["trust", "init", s(&log), "--device-id", "dev-1"]);
        assert!(out.status.success(), "{account}: {}", stderr(&out));
    }
    let show = json(&d.run(&["trust", "show", "--json"]));
    let accounts: Vec<&str> = show
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, ["A B", "hex-412042"]);
    // Each account's commands verify against its own folder.
    for account in ["A B", "hex-412042"] {
        let mut c = claims("alice", "dev-1");
        c.iss = account.into();
        let out = d.verify_at(&sign_command(&alice, &c), NOW);
        assert_eq!(out.status.code(), Some(0), "{account}: {}", stderr(&out));
        assert_eq!(json(&out)["account"], account);
    }
}

// --- 10. --now is a test hook -----------------------------------------------------------

#[test]
fn now_flag_exists_only_with_the_test_hooks_feature() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let cmd = d.file("c.cose", &sign_command(&a.alice, &claims("alice", "dev-1")));
    let out = Command::new(env!("CARGO_BIN_EXE_keybridge-device"))
        .arg("--state")
        .arg(d.dir.path().join("state"))
        .args(["verify", s(&cmd), "--now", &NOW.to_string()])
        .output()
        .unwrap();
    if cfg!(feature = "test-hooks") {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    } else {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("unexpected argument '--now'"),
            "{}",
            stderr(&out)
        );
    }
}

// --- 11. the trust state: verified once, never re-read by verify ------------------

/// An ed25519 signer of any 32-byte seed (the common ones have 256).
fn member(i: u32) -> Signer {
    let mut seed = [0x5a; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    Signer::Ed(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Grows `log` to `n` events: members `m<first>`, `m<first+1>`, … added
/// by alice and revoked in turn (bob stays); returns the members in order.
fn grow(log: &mut KeyLog, alice: &Signer, n: usize, first: u32) -> Vec<Signer> {
    let mut members = vec![];
    while log.events().len() < n {
        let i = first + members.len() as u32;
        let m = member(i);
        let agent = format!("m{i}");
        let ev = add_event(log, alice, &m, &agent, Role::Member, None);
        log.append(&ev).unwrap();
        if log.events().len() < n {
            let op = Op::Revoke {
                kid: m.public().kid(),
            };
            let ev = alice.finish(log.next_event(NOW - 700, &op, &alice.public()));
            log.append(&ev).unwrap();
        }
        members.push(m);
    }
    members
}

/// A command of `agent` signed by `signer`, with its own nonce `n`.
fn command(signer: &Signer, agent: &str, n: u8) -> Vec<u8> {
    let mut c = claims(agent, "dev-1");
    c.cti = [n; 16];
    sign_command(signer, &c)
}

#[test]
fn a_300_event_log_is_verified_when_taken_and_verify_never_reads_it() {
    let (d, mut a) = (Device::new(), Account::new());
    let members = grow(&mut a.log, &a.alice, 150, 0);
    let first = a.log.clone();
    let log = d.file("first.cbor", &first.to_bytes());
    let out = d.run(&["trust", "init", s(&log), "--device-id", "dev-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 301 events: the last member's revocation would be event 301.
    let more = grow(&mut a.log, &a.alice, 301, members.len() as u32);
    let members = [members, more].into_iter().flatten().collect::<Vec<_>>();
    let out = take(&d, &a.log);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("151 new events, now 301"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The last member is active.
    let last = members.len() - 1;
    let agent = format!("m{last}");
    let out = d.verify_at(&command(&members[last], &agent, 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The log is the record only: garbage in its place, and verify still
    // accepts, refuses revoked (from the index) and unknown keys.
    let log_path = d.account_dir("acme").join("log.cbor");
    std::fs::write(&log_path, b"garbage, not a key log").unwrap();
    let out = d.verify_at(&command(&a.bob, "bob", 2), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (i, m) in members.iter().enumerate().take(last).step_by(37) {
        let out = d.verify_at(&command(m, &format!("m{i}"), 3), NOW);
        assert_eq!(out.status.code(), Some(13), "m{i}: {}", stderr(&out));
        // m<i> was added at event 2 + 2i, revoked at 3 + 2i.
        let seq = 2 * i + 3;
        assert!(
            stderr(&out).contains(&format!("revoked at key-log event {seq}")),
            "{}",
            stderr(&out)
        );
    }
    let out = d.verify_at(&command(&member(9999), "x", 4), NOW);
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    // Taking an update needs the record: refused, saying so, changing
    // nothing.
    let before = snapshot(&d, "acme");
    let mut longer = a.log.clone();
    let ev = add_event(&longer, &a.alice, &member(5000), "z", Role::Member, None);
    longer.append(&ev).unwrap();
    let update = d.file("longer.cbor", &longer.to_bytes());
    let out = d.run(&["trust", "update", s(&update)]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("log.cbor is invalid")
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&d, "acme"), before);
    // trust show reads the trust state, not the log.
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["events"], 301);
    assert_eq!(show[0]["revoked_keys"], 149);
    assert_eq!(show[0]["keys"].as_array().unwrap().len(), 3);
}

#[test]
fn an_update_reads_the_keys_that_left_from_the_index_and_refuses_one_coming_back() {
    let (d, mut a) = (Device::new(), Account::new());
    let members = grow(&mut a.log, &a.alice, 40, 0);
    d.trust(&a, "dev-1");
    let dir = d.account_dir("acme");
    // trust.cbor holds no key that left: keys.idx does.
    let trust =
        keybridge_protocol::Trust::from_bytes(&std::fs::read(dir.join("trust.cbor")).unwrap())
            .unwrap();
    let revoked = members[3].public().kid();
    assert_eq!(
        trust.status(&revoked),
        keybridge_protocol::KeyStatus::Unknown
    );
    assert!(matches!(
        a.log.status(&revoked),
        keybridge_protocol::KeyStatus::Revoked(_)
    ));

    // A revoked member's key added again: refused as the whole log would
    // refuse it, nothing changed.
    let before = snapshot(&d, "acme");
    let back = add_event(&a.log, &a.alice, &members[3], "m3", Role::Member, None);
    let offered = d.file("back.cbor", &[a.log.to_bytes(), back].concat());
    let out = d.run(&["trust", "update", s(&offered)]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a revoked key cannot come back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&d, "acme"), before);
    // Revoking it again: refused, it is not active.
    let again = Op::Revoke { kid: revoked };
    let ev = a
        .alice
        .finish(a.log.next_event(NOW - 600, &again, &a.alice.public()));
    let offered = d.file("again.cbor", &[a.log.to_bytes(), ev].concat());
    let out = d.run(&["trust", "update", s(&offered)]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(stderr(&out).contains("not active"), "{}", stderr(&out));
    assert_eq!(snapshot(&d, "acme"), before);

    // A trust.cbor of the previous version (the keys that left in it): it
    // is read, and the next update writes it without them.
    std::fs::write(dir.join("trust.cbor"), a.log.trust().to_bytes()).unwrap();
    let more = grow(&mut a.log, &a.alice, 45, members.len() as u32);
    // Offered through a pipe: read whole, bounded, as a file is read in part.
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --state \"$1\" trust update /dev/stdin < \"$2\"")
        .arg(env!("CARGO_BIN_EXE_keybridge-device"))
        .arg(d.dir.path().join("state"))
        .arg(d.file("more.cbor", &a.log.to_bytes()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("5 new events, now 45"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let trust =
        keybridge_protocol::Trust::from_bytes(&std::fs::read(dir.join("trust.cbor")).unwrap())
            .unwrap();
    assert_eq!(
        trust.status(&revoked),
        keybridge_protocol::KeyStatus::Unknown
    );
    assert_eq!(trust.len(), 45);
    // Every member is as the log says: the one added last active, the
    // others revoked at their event, each found in the index.
    let all: Vec<Signer> = members.into_iter().chain(more).collect();
    for (i, m) in all.iter().enumerate() {
        let out = d.verify_at(&command(m, &format!("m{i}"), i as u8), NOW);
        let want = if i == all.len() - 1 { 0 } else { 13 };
        assert_eq!(out.status.code(), Some(want), "m{i}: {}", stderr(&out));
    }
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["revoked_keys"], all.len() - 1);
}

#[test]
fn an_older_state_folder_is_migrated_on_first_open() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let out = d.verify_at(&command(&a.bob, "bob", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dir = d.account_dir("acme");
    let made = snapshot(&d, "acme");
    // What an older version left: log, replay cache, settings.
    for name in ["trust.cbor", "keys.idx", "hardware.json"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    // The replay cache came through: the same command is a replay.
    let out = d.verify_at(&command(&a.bob, "bob", 1), NOW);
    assert_eq!(out.status.code(), Some(24), "{}", stderr(&out));
    let migrated = snapshot(&d, "acme");
    for name in ["trust.cbor", "keys.idx", "hardware.json"] {
        assert_eq!(migrated[name], made[name], "{name}");
    }
    let out = d.verify_at(&command(&a.alice, "alice", 2), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // An older folder whose log does not verify is not migrated: exit 32.
    let d = Device::new();
    d.trust(&a, "dev-1");
    let dir = d.account_dir("acme");
    std::fs::remove_file(dir.join("keys.idx")).unwrap();
    let mut log = std::fs::read(dir.join("log.cbor")).unwrap();
    *log.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("log.cbor"), &log).unwrap();
    let before = snapshot(&d, "acme");
    let out = d.verify_at(&command(&a.bob, "bob", 1), NOW);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    assert_eq!(snapshot(&d, "acme"), before);
}

#[test]
fn an_interrupted_update_is_detected_and_repaired() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let dir = d.account_dir("acme");
    let at_init = snapshot(&d, "acme");
    let mut next = a.log.clone();
    let op = Op::Revoke {
        kid: a.bob.public().kid(),
    };
    let ev = a.alice.finish(next.next_event(NOW, &op, &a.alice.public()));
    next.append(&ev).unwrap();

    // 1. A crash during the append: log.cbor has a torn tail; nothing
    //    else changed. Verify is unaffected; the next update cuts it off.
    let mut torn = a.log.to_bytes();
    torn.extend_from_slice(&ev[..ev.len() / 2]);
    std::fs::write(dir.join("log.cbor"), &torn).unwrap();
    let out = d.verify_at(&command(&a.bob, "bob", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = take(&d, &next);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("repaired: dropped"), "{said}");
    assert!(said.contains("1 new events, now 3"), "{said}");
    assert_eq!(
        std::fs::read(dir.join("log.cbor")).unwrap(),
        next.to_bytes()
    );
    assert_eq!(
        d.verify_at(&command(&a.bob, "bob", 2), NOW).status.code(),
        Some(13)
    );
    let updated = snapshot(&d, "acme");

    // 2. A crash after trust.cbor, before keys.idx: verify keeps the
    //    state before the update (bob still active) until the next
    //    update rebuilds from the log.
    std::fs::write(dir.join("keys.idx"), &at_init["keys.idx"]).unwrap();
    assert_eq!(
        d.verify_at(&command(&a.bob, "bob", 3), NOW).status.code(),
        Some(0)
    );
    let out = take(&d, &next);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("repaired: rebuilt the trust state"), "{said}");
    assert!(said.contains("0 new events, now 3"), "{said}");
    assert_eq!(
        d.verify_at(&command(&a.bob, "bob", 4), NOW).status.code(),
        Some(13)
    );

    // 3. A crash after hardware.json, before trust.cbor: the log and the
    //    evidence are ahead of the trust; rebuilt from the log.
    for name in ["trust.cbor", "keys.idx"] {
        std::fs::write(dir.join(name), &at_init[name]).unwrap();
    }
    take(&d, &next);
    let mut now = snapshot(&d, "acme");
    let mut then = updated.clone();
    for s in [&mut now, &mut then] {
        s.remove("replay.cbor");
    }
    assert_eq!(now, then);

    // 4. log.cbor replaced by an older (valid) log: not the log this
    //    state was made from, and never a way back: refused, unchanged.
    std::fs::write(dir.join("log.cbor"), a.log.to_bytes()).unwrap();
    let before = snapshot(&d, "acme");
    let update = d.file("next.cbor", &next.to_bytes());
    let out = d.run(&["trust", "update", s(&update)]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match this device's trust state"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&d, "acme"), before);
}

#[test]
fn trust_show_lists_the_threshold_and_pending_proposals() {
    let (d, a) = (Device::new(), Account::new());
    let mut log = a.log.clone();
    // dave, a second admin; then a threshold of 2; then alice proposes
    // erin as a third admin.
    let dave = Signer::ed25519(20);
    let ev = add_event(&log, &a.alice, &dave, "dave", Role::Admin, None);
    log.append(&ev).unwrap();
    let op = Op::Threshold { k: 2 };
    let ev = a
        .alice
        .finish(log.next_event(NOW - 700, &op, &a.alice.public()));
    log.append(&ev).unwrap();
    let erin = Signer::ed25519(21);
    let op = Op::Propose {
        change: Box::new(add_op(&log, &erin, "erin", Role::Admin, None)),
    };
    let ev = a
        .alice
        .finish(log.next_event(NOW - 600, &op, &a.alice.public()));
    log.append(&ev).unwrap();
    let path = d.file("log.cbor", &log.to_bytes());
    let out = d.run(&["trust", "init", s(&path), "--device-id", "dev-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = json(&d.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["threshold"], 2);
    let pending = &show[0]["pending"][0];
    assert_eq!(pending["op"], "add");
    assert_eq!(pending["event"], 4);
    assert_eq!(pending["agent"], "erin");
    assert_eq!(pending["role"], "admin");
    assert_eq!(pending["kid"], erin.public().kid().to_hex());
    assert_eq!(pending["approvers"], serde_json::json!(["alice"]));
    let text = String::from_utf8(d.run(&["trust", "show"]).stdout).unwrap();
    assert!(text.contains("threshold: 2"), "{text}");
    assert!(
        text.contains("pending (event 4): add admin key") && text.contains("approved by alice"),
        "{text}"
    );
}

// --- 12. hardware policy ----------------------------------------------------------------

#[test]
fn a_hardware_policy_accepts_attested_keys_and_refuses_the_others() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let carol = Signer::p256(9);
    let (chain, root) = attestation(&carol, 1, TOUCH_CACHED);
    add_with_evidence(&d, &a, &carol, "carol", Some(yubikey_evidence(chain)));
    let out = set_policy(&d, &["--require", "hardware"], &[&root]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("run-script now requires hardware"), "{said}");
    assert!(
        said.contains("carol: accepted (YubiKey 12345678, touch cached)"),
        "{said}"
    );
    assert!(said.contains("bob: refused, exit 40"), "{said}");

    // carol's command is accepted, with what her evidence attests.
    let out = d.verify_at(&command(&carol, "carol", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["hardware"]["serial"], 12_345_678);
    assert_eq!(v["hardware"]["touch_policy"], "cached");
    assert_eq!(v["hardware"]["required"], serde_json::json!(["hardware"]));
    // bob's is refused, and nothing is remembered of it.
    let before = snapshot(&d, "acme");
    let bob_cmd = command(&a.bob, "bob", 2);
    let out = d.verify_at(&bob_cmd, NOW);
    assert_eq!(out.status.code(), Some(40), "{}", stderr(&out));
    assert!(stderr(&out).contains("passphrase key"), "{}", stderr(&out));
    assert_eq!(snapshot(&d, "acme"), before);
    // Other command kinds have no rule.
    let mut c = claims("bob", "dev-1");
    c.cmd = "remote-control".into();
    c.cti = [3; 16];
    let out = d.verify_at(&sign_command(&a.bob, &c), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(json(&out).get("hardware").is_none());

    // touch, keeping the roots: cached is enough.
    let out = d.run(&[
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "touch",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.verify_at(&command(&carol, "carol", 4), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let show = json(&d.run(&["policy", "show", "--json"]));
    let rule = &show[0]["rules"][0];
    assert_eq!(rule["command"], "run-script");
    assert_eq!(rule["require"], serde_json::json!(["hardware", "touch"]));
    assert_eq!(
        rule["roots"]["certificates"][0]["subject"],
        "CN=Test PIV Root CA Serial 263751"
    );
    let keys = rule["keys"].as_array().unwrap();
    let by_agent = |agent: &str| keys.iter().find(|k| k["agent"] == agent).unwrap();
    assert_eq!(by_agent("carol")["accepted"], true);
    assert_eq!(by_agent("bob")["exit_code"], 40);
    let text = String::from_utf8(d.run(&["policy", "show"]).stdout).unwrap();
    assert!(
        text.contains("run-script requires hardware and touch"),
        "{text}"
    );

    // unset: bob's command (never accepted, so not a replay) goes through.
    let out = d.run(&["policy", "unset", "--command", "run-script"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.verify_at(&bob_cmd, NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let show = json(&d.run(&["policy", "show", "--json"]));
    assert_eq!(show[0]["rules"], serde_json::json!([]));
    assert!(
        !d.account_dir("acme").join("policy.json").exists() || {
            let p: serde_json::Value = serde_json::from_slice(
                &std::fs::read(d.account_dir("acme").join("policy.json")).unwrap(),
            )
            .unwrap();
            p["rules"] == serde_json::json!({}) && p["roots"] == serde_json::json!({})
        }
    );
}

#[test]
fn evidence_taken_with_a_later_log_is_judged_against_the_policy_roots() {
    // The policy first, the hardware key later: its verdict is computed
    // when the log is taken. Its touch policy never fails `touch`.
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let carol = Signer::p256(9);
    let (chain, root) = attestation(&carol, 1, TOUCH_NEVER);
    set_policy(&d, &["--require", "hardware"], &[&root]);
    add_with_evidence(&d, &a, &carol, "carol", Some(yubikey_evidence(chain)));
    let out = d.verify_at(&command(&carol, "carol", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    set_policy(&d, &["--require", "touch"], &[&root]);
    let out = d.verify_at(&command(&carol, "carol", 2), NOW);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("YubiKey 12345678 whose slot's attested touch policy is never"),
        "{}",
        stderr(&out)
    );
    // A verdict missing from the state (an interrupted `policy set`) is
    // computed on the spot: the same answer.
    let hw_path = d.account_dir("acme").join("hardware.json");
    let mut hw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hw_path).unwrap()).unwrap();
    let kid = carol.public().kid().to_hex();
    hw["keys"][&kid]["verdicts"] = serde_json::json!({});
    std::fs::write(&hw_path, serde_json::to_vec(&hw).unwrap()).unwrap();
    let out = d.verify_at(&command(&carol, "carol", 3), NOW);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    // An evidence chain altered in the state is not trusted either.
    let out = d.run(&[
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "hardware",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hw_path).unwrap()).unwrap();
    hw["keys"][&kid]["verdicts"] = serde_json::json!({});
    let leaf = hw["keys"][&kid]["chain"][0].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        &leaf[..leaf.len() - 2],
        if leaf.ends_with("00") { "01" } else { "00" }
    );
    hw["keys"][&kid]["chain"][0] = serde_json::json!(flipped);
    std::fs::write(&hw_path, serde_json::to_vec(&hw).unwrap()).unwrap();
    let out = d.verify_at(&command(&carol, "carol", 4), NOW);
    assert_eq!(out.status.code(), Some(41), "{}", stderr(&out));
}

#[test]
fn a_key_approved_through_a_proposal_keeps_its_evidence() {
    // Threshold 2: erin (an admin on a YubiKey) is proposed by alice in
    // one log and confirmed by dave in the next; her evidence sits in the
    // proposal, which the device has taken already.
    let (d, a) = (Device::new(), Account::new());
    let mut log = a.log.clone();
    let dave = Signer::ed25519(20);
    let ev = add_event(&log, &a.alice, &dave, "dave", Role::Admin, None);
    log.append(&ev).unwrap();
    let ev = a
        .alice
        .finish(log.next_event(NOW - 700, &Op::Threshold { k: 2 }, &a.alice.public()));
    log.append(&ev).unwrap();
    let erin = Signer::p256(21);
    let (chain, root) = attestation(&erin, 1, TOUCH_ALWAYS);
    let evidence = yubikey_evidence(chain);
    let op = Op::Propose {
        change: Box::new(add_op(&log, &erin, "erin", Role::Admin, Some(&evidence))),
    };
    let ev = a
        .alice
        .finish(log.next_event(NOW - 600, &op, &a.alice.public()));
    log.append(&ev).unwrap();
    let path = d.file("log.cbor", &log.to_bytes());
    let out = d.run(&["trust", "init", s(&path), "--device-id", "dev-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    set_policy(&d, &["--require", "touch"], &[&root]);
    let ev = dave.finish(log.next_event(NOW - 500, &Op::Confirm { proposal: 4 }, &dave.public()));
    log.append(&ev).unwrap();
    take(&d, &log);
    let out = d.verify_at(&command(&erin, "erin", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["hardware"]["touch_policy"], "always");
}

#[test]
fn policy_set_checks_its_arguments_and_changes_nothing_when_refusing() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let before = snapshot(&d, "acme");
    // No roots for a command without a rule yet.
    let out = d.run(&[
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "hardware",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--roots FILE"), "{}", stderr(&out));
    // Roots files: not PEM, no certificate, no self-signed root.
    let carol = Signer::p256(9);
    let (chain, _) = attestation(&carol, 1, TOUCH_ALWAYS);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "key.pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            "not a CERTIFICATE",
        ),
        ("empty.pem", b"hello\n".to_vec(), "no PEM certificate"),
        (
            "f9.pem",
            test_pki::pem(&chain[1]).into_bytes(),
            "no root (self-signed)",
        ),
        ("binary.pem", vec![0xff, 0xfe, 0x00], "not a PEM text file"),
    ];
    for (name, bytes, words) in cases {
        let path = d.file(name, &bytes);
        let out = d.run(&[
            "policy",
            "set",
            "--command",
            "run-script",
            "--require",
            "hardware",
            "--roots",
            s(&path),
        ]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(words), "{name}: {}", stderr(&out));
    }
    // Not a command kind; not a requirement.
    let (_, root) = attestation(&carol, 1, TOUCH_ALWAYS);
    let roots = d.file("roots.pem", test_pki::pem(&root).as_bytes());
    for (cmd, req) in [("run script", "hardware"), ("run-script", "pin")] {
        let out = d.run(&[
            "policy",
            "set",
            "--command",
            cmd,
            "--require",
            req,
            "--roots",
            s(&roots),
        ]);
        assert_eq!(out.status.code(), Some(2), "{cmd} {req}: {}", stderr(&out));
    }
    // A roots file too large is not read whole.
    let big = d.dir.path().join("big.pem");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let out = d.run(&[
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "hardware",
        "--roots",
        s(&big),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1048576-byte limit"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&d, "acme"), before);
    // Two accounts: --account is needed, and must be one of them.
    let other = Signer::ed25519(30);
    let genesis = other.finish(KeyLog::genesis(
        "globex",
        NOW - 1000,
        &other.public(),
        "olga",
        &Signer::ed25519(31).public(),
    ));
    let path = d.file("globex.cbor", &genesis);
    let out = d.run(&["trust", "init", s(&path), "--device-id", "dev-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = [
        "policy",
        "set",
        "--command",
        "run-script",
        "--require",
        "hardware",
        "--roots",
        s(&roots),
    ];
    let out = d.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("acme, globex"), "{}", stderr(&out));
    let out = d.run(&[&args[..], &["--account", "initech"]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = d.run(&[&args[..], &["--account", "globex"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    // The policy is the account's: acme's commands are not gated.
    assert_eq!(snapshot(&d, "acme"), before);
    let out = d.verify_at(&command(&a.bob, "bob", 1), NOW);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A damaged policy is never a weaker one: every command of that
    // account is refused until it is fixed, and nothing is remembered.
    let policy = d.account_dir("globex").join("policy.json");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("hardware", "hardwire")).unwrap();
    let before = snapshot(&d, "globex");
    let mut c = claims("olga", "dev-1");
    c.iss = "globex".into();
    c.cmd = "remote-control".into();
    let out = d.verify_at(&sign_command(&other, &c), NOW);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("policy is refused whole"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&d, "globex"), before);
}

#[test]
fn updates_leave_the_same_state_as_a_deployment_of_the_whole_log() {
    // Rotations, adds and revokes within one update, a proposal confirmed
    // in a later update, a reset: after each update the state kept
    // incrementally is byte for byte what `trust init` of the whole log
    // writes.
    let a = Account::new();
    let incremental = Device::new();
    incremental.trust(&a, "dev-1");
    let erin = Signer::p256(21);
    let (chain, root) = attestation(&erin, 1, TOUCH_ALWAYS);
    set_policy(&incremental, &["--require", "hardware"], &[&root]);
    let mut log = a.log.clone();
    let (m1, m2, bob2, dave) = (member(1), member(2), Signer::p256(12), Signer::ed25519(20));
    /// One update's events, appended to the log.
    type Step<'a> = Box<dyn Fn(&mut KeyLog) + 'a>;
    let mut steps: Vec<Step> = vec![];
    steps.push(Box::new(|log| {
        for (m, agent) in [(&m1, "m1"), (&m2, "m2")] {
            let ev = add_event(log, &a.alice, m, agent, Role::Member, None);
            log.append(&ev).unwrap();
        }
        let op = Op::Revoke {
            kid: m1.public().kid(),
        };
        let ev = a
            .alice
            .finish(log.next_event(NOW - 700, &op, &a.alice.public()));
        log.append(&ev).unwrap();
        let ev = add_event(
            log,
            &a.alice,
            &bob2,
            "bob",
            Role::Member,
            Some(a.bob.public().kid()),
        );
        log.append(&ev).unwrap();
    }));
    steps.push(Box::new(|log| {
        let ev = add_event(log, &a.alice, &dave, "dave", Role::Admin, None);
        log.append(&ev).unwrap();
        let op = Op::Threshold { k: 2 };
        let ev = a
            .alice
            .finish(log.next_event(NOW - 700, &op, &a.alice.public()));
        log.append(&ev).unwrap();
        let evidence = yubikey_evidence(chain.clone());
        let op = Op::Propose {
            change: Box::new(add_op(log, &erin, "erin", Role::Admin, Some(&evidence))),
        };
        let ev = a
            .alice
            .finish(log.next_event(NOW - 600, &op, &a.alice.public()));
        log.append(&ev).unwrap();
    }));
    steps.push(Box::new(|log| {
        let proposal = log.events().len() as u64 - 1;
        let op = Op::Confirm { proposal };
        let ev = dave.finish(log.next_event(NOW - 500, &op, &dave.public()));
        log.append(&ev).unwrap();
        let op = Op::Revoke {
            kid: m2.public().kid(),
        };
        let ev = a
            .alice
            .finish(log.next_event(NOW - 500, &op, &a.alice.public()));
        log.append(&ev).unwrap();
    }));
    steps.push(Box::new(|log| {
        let op = Op::Reset {
            key: Signer::ed25519(40).public(),
            agent: "alice".into(),
            recovery: Signer::ed25519(41).public(),
        };
        let ev = a
            .recovery
            .finish(log.next_event(NOW - 400, &op, &a.recovery.public()));
        log.append(&ev).unwrap();
    }));
    let compared = [
        "log.cbor",
        "trust.cbor",
        "keys.idx",
        "hardware.json",
        "policy.json",
    ];
    for (i, step) in steps.iter().enumerate() {
        step(&mut log);
        take(&incremental, &log);
        let whole = Device::new();
        let path = whole.file("log.cbor", &log.to_bytes());
        let out = whole.run(&["trust", "init", s(&path), "--device-id", "dev-1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        set_policy(&whole, &["--require", "hardware"], &[&root]);
        let (got, want) = (snapshot(&incremental, "acme"), snapshot(&whole, "acme"));
        for name in compared {
            assert!(got[name] == want[name], "step {i}: {name} differs");
        }
    }
    // erin came in through the proposal with her evidence, and left with
    // the reset; every key before the reset is now refused as revoked.
    let show = json(&incremental.run(&["trust", "show", "--json"]));
    assert_eq!(show[0]["revoked_keys"], 7);
    for (signer, agent) in [(&erin, "erin"), (&a.alice, "alice"), (&bob2, "bob")] {
        let out = incremental.verify_at(&command(signer, agent, 9), NOW);
        assert_eq!(out.status.code(), Some(13), "{agent}: {}", stderr(&out));
    }
    let out = incremental.verify_at(&command(&m1, "m1", 9), NOW);
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    let out = incremental.verify_at(&command(&a.bob, "bob", 9), NOW);
    assert_eq!(out.status.code(), Some(26), "{}", stderr(&out));
}
