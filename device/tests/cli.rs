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
use keybridge_protocol::command::CONTENT_TYPE;
use keybridge_protocol::replay::{DEFAULT_TIME_SYNC_CAPACITY, ReplayCache};
use keybridge_protocol::{Batch, InclusionProof, KeyLog, Op, Role, UnsignedCommand};
use std::collections::BTreeSet;
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
            // The trusted log with its last signature altered.
            let mut bytes = a.log.to_bytes();
            *bytes.last_mut().unwrap() ^= 1;
            let tampered = d.file("tampered.cbor", &bytes);
            d.run(&["trust", "update", s(&tampered)])
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

    let before = d.run(&["trust", "show", "--json"]).stdout;
    // Rollback to the log where bob was active.
    let old = d.file("old.cbor", &short.to_bytes());
    let out = d.run(&["trust", "update", s(&old)]);
    assert_eq!(out.status.code(), Some(30), "{}", stderr(&out));
    // Fork: a different third event (alice revokes herself instead).
    let mut fork = short.clone();
    let op = Op::Revoke {
        kid: a.alice.public().kid(),
    };
    let ev = a.alice.finish(fork.next_event(NOW, &op, &a.alice.public()));
    fork.append(&ev).unwrap();
    let forked = d.file("fork.cbor", &fork.to_bytes());
    let out = d.run(&["trust", "update", s(&forked)]);
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    // Neither changed anything.
    assert_eq!(d.run(&["trust", "show", "--json"]).stdout, before);
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
    assert_eq!(names, [".lock", "log.cbor", "replay.cbor", "settings.json"]);
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
