//! `keybridge-device` as a device runs it: a real binary, a real state
//! folder, commands made by the protocol crate.

#[path = "../../protocol/tests/common/mod.rs"]
mod common;

use common::*;
use keybridge_protocol::{Batch, Op, UnsignedCommand};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
        Command::new(env!("CARGO_BIN_EXE_keybridge-device"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .args(args)
            .output()
            .unwrap()
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

#[test]
fn each_refusal_has_its_exit_code_and_a_reason() {
    let (d, a) = (Device::new(), Account::new());
    d.trust(&a, "dev-1");
    let stranger = Signer::ed25519(77);
    let mut sig_flipped = sign_command(&a.alice, &claims("alice", "dev-1"));
    let n = sig_flipped.len();
    sig_flipped[n - 1] ^= 1;
    let mut c = claims("alice", "dev-1");
    c.cti = [9; 16];
    let cases: Vec<(Vec<u8>, i64, i32, &str)> = vec![
        (b"not cose".to_vec(), NOW, 10, "malformed"),
        (
            sign_command(&stranger, &claims("alice", "dev-1")),
            NOW,
            12,
            "unknown key",
        ),
        (sig_flipped, NOW, 15, "signature"),
        (
            sign_command(&a.bob, &claims("alice", "dev-1")),
            NOW,
            17,
            "agent",
        ),
        (
            sign_command(&a.alice, &claims("alice", "dev-9")),
            NOW,
            18,
            "device",
        ),
        (sign_command(&a.alice, &c), NOW + 7200, 20, "time-sync"),
        (sign_command(&a.alice, &c), NOW - 7200, 21, "behind"),
    ];
    for (env, now, code, words) in cases {
        let out = d.verify_at(&env, now);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    let mut other = claims("alice", "dev-1");
    other.iss = "globex".into();
    let out = d.verify_at(&sign_command(&a.alice, &other), NOW);
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
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
    c.devs = Some(batch.root());
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
