//! Key lifecycle, end to end (README, "Adding people and keys"): an admin
//! creates the account, a member requests, the admin approves with the
//! 6-digit code, devices take the new log and accept the member's
//! commands; rotation, revocation, recovery reset, history, and every
//! refusal on the way — each leaving the log file and the devices' state
//! byte-identical. The story runs with passphrase keys and with member keys
//! on a SoftHSM2 token.

use keybridge_tests::{
    Bridge, PASSPHRASE, SoftHsm, TOKEN_PIN, bin, device, in_ci, run_with_stdin, trust_device,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOW: i64 = 1_800_000_000;
const RECOVERY_PASS: &str = "recovery passphrase 1";

use keybridge_tests::{output_text as text, path_str as s};

/// Where a key lives: a passphrase, or a token of a SoftHSM2 store.
#[derive(Clone, Copy)]
enum Home<'a> {
    Passphrase,
    Token(&'a SoftHsm),
}

/// One agent's daemon.
struct Agent {
    b: Bridge,
}

impl Agent {
    fn new(home: Home<'_>) -> Agent {
        let b = match home {
            Home::Passphrase => Bridge::start(NOW),
            Home::Token(hsm) => {
                Bridge::start_with_env(NOW, None, &[("SOFTHSM2_CONF", &hsm.conf())])
            }
        };
        Agent { b }
    }

    /// A key of `agent` labelled `label` in `home`, unlocked daily.
    fn key(&self, home: Home<'_>, agent: &str, label: &str) -> String {
        // A passphrase key is Argon2id(passphrase, account, agent): a second
        // key of one agent needs its own passphrase.
        let own = format!("{PASSPHRASE} {label}");
        let (backend, uri, secret) = match home {
            Home::Passphrase => ("passphrase", None, own.as_str()),
            Home::Token(hsm) => {
                let token = format!("tok-{label}");
                hsm.init_token(&token);
                ("pkcs11", Some(hsm.uri(&token, label)), TOKEN_PIN)
            }
        };
        let mut args = vec![
            "--json",
            "keys",
            "create",
            "--backend",
            backend,
            "--account",
            "acme",
            "--agent",
            agent,
            "--label",
            label,
            "--secret-stdin",
        ];
        if let Some(u) = &uri {
            args.extend(["--uri", u]);
        }
        let v: Value = serde_json::from_str(&self.b.ok(&args, Some(secret))).unwrap();
        self.b.ok(
            &["unlock", label, "--remember", "daily", "--secret-stdin"],
            Some(secret),
        );
        v["kid"].as_str().unwrap().to_owned()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.b.cli(args, None)
    }

    /// `keys request`; returns the request file and its code.
    fn request(&self, key: &str, extra: &[&str]) -> (PathBuf, String) {
        let out = self.b.home().join(format!("{key}-{}.req", extra.len()));
        let mut args = vec!["--json", "keys", "request", "--key", key, "--out", s(&out)];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&self.b.ok(&args, None)).unwrap();
        let code = v["code"].as_str().unwrap().to_owned();
        assert_eq!(code.len(), 6);
        // Without --json the code is shown as "123 456".
        (out, code)
    }

    fn approve(&self, req: &Path, code: &str, admin: &str, log: &Path) -> Output {
        self.cli(&[
            "keys",
            "approve",
            s(req),
            "--code",
            code,
            "--key",
            admin,
            "--log",
            s(log),
        ])
    }

    /// Signs a run-script for `dev` with `key` into a file; returns it.
    fn sign(&self, key: &str, dev: &str) -> PathBuf {
        let out = self.b.home().join(format!("{key}-{dev}.cose"));
        let _ = std::fs::remove_file(&out);
        self.b.ok(
            &[
                "sign",
                "--key",
                key,
                "--device",
                dev,
                "--command",
                "run-script",
                "--out",
                s(&out),
            ],
            None,
        );
        out
    }
}

/// Three devices that trust one account.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new(log: &Path) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        for d in ["dev-1", "dev-2", "dev-3"] {
            trust_device(&dir.path().join(d), log, d);
        }
        Fleet { dir }
    }

    fn state(&self, d: &str) -> PathBuf {
        self.dir.path().join(d)
    }

    /// `trust update` on every device; each must take it.
    fn update(&self, log: &Path) {
        for d in ["dev-1", "dev-2", "dev-3"] {
            let o = device(&self.state(d), &["trust", "update", s(log)]);
            assert!(o.status.success(), "{d}: {}", text(&o));
        }
    }

    /// Every file of every device's state, for byte-identity checks.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = vec![];
        let mut stack = vec![self.dir.path().to_owned()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    stack.push(e);
                } else if !e.file_name().unwrap().to_string_lossy().ends_with(".lock") {
                    out.push((e.clone(), std::fs::read(&e).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// `verify` on `d`; the exit code.
    fn verify(&self, d: &str, cmd: &Path) -> i32 {
        let o = device(
            &self.state(d),
            &["verify", s(cmd), "--now", &NOW.to_string()],
        );
        o.status.code().unwrap_or(-1)
    }
}

/// Runs `f`, which must fail with `words` in its output, and checks the log
/// file and the devices are byte-identical afterwards.
fn refused(log: &Path, fleet: &Fleet, words: &str, f: impl FnOnce() -> Output) {
    let (before, devices) = (std::fs::read(log).unwrap(), fleet.snapshot());
    let o = f();
    assert!(
        !o.status.success(),
        "expected a refusal ({words}), got success: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(words),
        "expected {words:?} in: {}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(log).unwrap(),
        before,
        "the log changed ({words})"
    );
    assert!(
        fleet.snapshot() == devices,
        "a device's state changed ({words})"
    );
}

fn story(member_home: Home<'_>) {
    let alice = Agent::new(Home::Passphrase);
    let bob = Agent::new(member_home);
    alice.key(Home::Passphrase, "alice", "alice");
    let log = alice.b.account_log("acme", "alice");
    let recovery_file = alice.b.home().join("acme.recovery.age");
    let fleet = Fleet::new(&log);

    // bob asks to join; alice approves with the code he reads out.
    let bob_kid = bob.key(member_home, "bob", "bob");
    let (req, code) = bob.request("bob", &[]);
    let human = text(&bob.cli(&[
        "keys",
        "request",
        "--key",
        "bob",
        "--out",
        s(&bob.b.home().join("again.req")),
    ]));
    assert!(
        human.contains("verification code: ") && human.contains(' '),
        "{human}"
    );
    let wrong = if code == "000000" { "000001" } else { "000000" };
    refused(&log, &fleet, "not this request's", || {
        alice.approve(&req, wrong, "alice", &log)
    });
    // Before the approval, devices refuse bob.
    let cmd = bob.sign("bob", "dev-1");
    assert_eq!(fleet.verify("dev-1", &cmd), 12, "unknown key");
    let o = alice.approve(&req, &code, "alice", &log);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("approved"), "{}", text(&o));
    fleet.update(&log);
    for d in ["dev-1", "dev-2", "dev-3"] {
        let cmd = bob.sign("bob", d);
        assert_eq!(fleet.verify(d, &cmd), 0, "{d} takes bob's command");
    }
    // The same request again (a replay): the key is in the log already.
    refused(&log, &fleet, "already active", || {
        alice.approve(&req, &code, "alice", &log)
    });

    // Self-approval: alice's second key, approved by alice.
    alice.key(Home::Passphrase, "alice", "alice-2");
    let (req2, code2) = alice.request("alice-2", &["--role", "admin"]);
    refused(&log, &fleet, "different agent", || {
        alice.approve(&req2, &code2, "alice", &log)
    });
    // A member approving: refused.
    let carol = Agent::new(Home::Passphrase);
    carol.key(Home::Passphrase, "carol", "carol");
    let (carol_req, carol_code) = carol.request("carol", &[]);
    refused(&log, &fleet, "not an admin", || {
        bob.approve(&carol_req, &carol_code, "bob", &log)
    });
    // A request for another account: refused.
    let other = Agent::new(Home::Passphrase);
    other.b.ok(
        &[
            "keys",
            "create",
            "--backend",
            "passphrase",
            "--account",
            "globex",
            "--agent",
            "mallory",
            "--label",
            "mallory",
            "--secret-stdin",
        ],
        Some(PASSPHRASE),
    );
    other
        .b
        .ok(&["unlock", "mallory", "--secret-stdin"], Some(PASSPHRASE));
    let (m_req, m_code) = other.request("mallory", &[]);
    refused(&log, &fleet, "account", || {
        alice.approve(&m_req, &m_code, "alice", &log)
    });
    // A log that does not verify: refused, nothing written.
    let tampered = alice.b.home().join("tampered.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len() - 5;
    bytes[n] ^= 1;
    std::fs::write(&tampered, &bytes).unwrap();
    refused(&tampered, &fleet, "does not verify", || {
        alice.approve(&carol_req, &carol_code, "alice", &tampered)
    });
    let h = alice.cli(&["history", "--log", s(&tampered)]);
    assert!(
        !h.status.success() && text(&h).contains("does not verify"),
        "{}",
        text(&h)
    );

    // Devices: a rollback and a fork are refused, state untouched.
    let old_log = alice.b.home().join("old.log");
    std::fs::write(&old_log, &std::fs::read(&log).unwrap()[..]).unwrap();
    let reject_out = alice.cli(&[
        "keys",
        "reject",
        s(&carol_req),
        "--reason",
        "unknown person",
        "--key",
        "alice",
        "--log",
        s(&log),
    ]);
    assert!(reject_out.status.success(), "{}", text(&reject_out));
    fleet.update(&log);
    refused(&old_log, &fleet, "rollback", || {
        device(&fleet.state("dev-2"), &["trust", "update", s(&old_log)])
    });
    let fork = alice.b.home().join("fork.log");
    std::fs::copy(&old_log, &fork).unwrap();
    let o = alice.cli(&[
        "keys",
        "reject",
        s(&carol_req),
        "--reason",
        "a different reason",
        "--key",
        "alice",
        "--log",
        s(&fork),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    refused(&fork, &fleet, "fork", || {
        device(&fleet.state("dev-3"), &["trust", "update", s(&fork)])
    });

    // Rotation: bob's new key replaces the old one in one event.
    bob.key(member_home, "bob", "bob-new");
    let (rot, rot_code) = bob.request("bob-new", &["--replaces", "bob"]);
    let o = alice.approve(&rot, &rot_code, "alice", &log);
    assert!(o.status.success(), "{}", text(&o));
    let before = fleet.verify("dev-1", &bob.sign("bob", "dev-1"));
    assert_eq!(before, 0, "the old key works until the devices update");
    fleet.update(&log);
    assert_eq!(
        fleet.verify("dev-1", &bob.sign("bob", "dev-1")),
        26,
        "rotated out"
    );
    assert_eq!(fleet.verify("dev-2", &bob.sign("bob-new", "dev-2")), 0);

    // Revocation by an admin takes effect on the devices.
    let new_kid = text(&bob.cli(&["--json", "keys", "show", "bob-new"]));
    let new_kid: Value = serde_json::from_str(new_kid.trim()).unwrap();
    let new_kid = new_kid["kid"].as_str().unwrap().to_owned();
    let o = alice.cli(&[
        "keys",
        "revoke",
        &new_kid[..12],
        "--key",
        "alice",
        "--log",
        s(&log),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    fleet.update(&log);
    assert_eq!(
        fleet.verify("dev-3", &bob.sign("bob-new", "dev-3")),
        13,
        "revoked"
    );
    // The last admin key cannot be revoked; the error says what to do.
    refused(&log, &fleet, "recovery reset", || {
        alice.cli(&[
            "keys",
            "revoke",
            "alice",
            "--key",
            "alice",
            "--log",
            s(&log),
        ])
    });
    let _ = bob_kid;

    // Recovery: without the file, an explanation; with it, a reset.
    alice.key(Home::Passphrase, "alice", "alice-reset");
    let new_rec = alice.b.home().join("acme.recovery-2.age");
    refused(&log, &fleet, "re-deployed", || {
        alice.cli(&[
            "recovery",
            "reset",
            "--new-key",
            "alice-reset",
            "--log",
            s(&log),
            "--new-recovery-file",
            s(&new_rec),
            "--secret-stdin",
        ])
    });
    refused(&log, &fleet, "does not open", || {
        alice.b.cli(
            &[
                "recovery",
                "reset",
                "--file",
                s(&recovery_file),
                "--new-key",
                "alice-reset",
                "--log",
                s(&log),
                "--new-recovery-file",
                s(&new_rec),
                "--secret-stdin",
            ],
            Some("not the passphrase\nnew recovery passphrase 2\n"),
        )
    });
    assert!(!new_rec.exists());
    let o = alice.b.cli(
        &[
            "recovery",
            "reset",
            "--file",
            s(&recovery_file),
            "--new-key",
            "alice-reset",
            "--log",
            s(&log),
            "--new-recovery-file",
            s(&new_rec),
            "--secret-stdin",
        ],
        Some(&format!("{RECOVERY_PASS}\nnew recovery passphrase 2\n")),
    );
    assert!(o.status.success(), "{}", text(&o));
    fleet.update(&log);
    assert_eq!(
        fleet.verify("dev-1", &alice.sign("alice-reset", "dev-1")),
        0
    );
    assert_eq!(fleet.verify("dev-2", &alice.sign("alice", "dev-2")), 13);
    // The old recovery file no longer works; the new one does.
    let newer = alice.b.home().join("acme.recovery-3.age");
    refused(
        &log,
        &fleet,
        "no longer this account's recovery file",
        || {
            alice.b.cli(
                &[
                    "recovery",
                    "reset",
                    "--file",
                    s(&recovery_file),
                    "--new-key",
                    "alice-2",
                    "--log",
                    s(&log),
                    "--new-recovery-file",
                    s(&newer),
                    "--secret-stdin",
                ],
                Some(&format!("{RECOVERY_PASS}\nnew recovery passphrase 3\n")),
            )
        },
    );

    // The history an admin reads: every event, owner and actor.
    let h: Value =
        serde_json::from_str(&alice.b.ok(&["--json", "history", "--log", s(&log)], None)).unwrap();
    let got: Vec<(String, String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["owner"].as_str().unwrap_or("-").to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("created", "alice", "alice"),
        ("requested", "bob", "bob"),
        ("approved", "bob", "alice"),
        ("rejected", "-", "alice"),
        ("requested", "bob", "bob"),
        ("approved", "bob", "alice"),
        ("revoked", "bob", "alice"),
        ("reset", "alice", "recovery key"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want, "{h:#}");
    assert!(
        h[5]["what"].as_str().unwrap().contains("replacing"),
        "{h:#}"
    );
}

#[test]
fn the_whole_story_with_passphrase_keys() {
    story(Home::Passphrase);
}

keybridge_tests::softhsm_test! {
    fn the_whole_story_with_member_keys_on_a_softhsm_token(hsm) {
        story(Home::Token(hsm));
    }
}

#[test]
fn two_concurrent_approvals_on_one_log_one_wins_and_the_other_is_told_to_retry() {
    let alice = Agent::new(Home::Passphrase);
    alice.key(Home::Passphrase, "alice", "alice");
    let log = alice.b.account_log("acme", "alice");
    let mut reqs = vec![];
    let mut agents = vec![];
    for name in ["bob", "carol"] {
        let a = Agent::new(Home::Passphrase);
        a.key(Home::Passphrase, name, name);
        reqs.push(a.request(name, &[]));
        agents.push(a);
    }
    // Both read the log, then each holds its signed event for a second
    // before writing (a test-build hook): both built on the same head.
    let mut outcomes = vec![];
    let children: Vec<_> = reqs
        .iter()
        .map(|(req, code)| {
            Command::new(bin("keybridge"))
                .env("KEYBRIDGE_HOME", alice.b.home())
                .env("KEYBRIDGE_TEST_PAUSE_BEFORE_WRITE_MS", "1500")
                .args([
                    "keys",
                    "approve",
                    s(req),
                    "--code",
                    code,
                    "--key",
                    "alice",
                    "--log",
                    s(&log),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        outcomes.push(c.wait_with_output().unwrap());
    }
    let wins = outcomes.iter().filter(|o| o.status.success()).count();
    let log_now = keybridge_protocol::KeyLog::from_bytes(&std::fs::read(&log).unwrap()).unwrap();
    // One wins, one is told to run again: never a fork, nothing lost.
    assert_eq!(
        wins,
        1,
        "{:?}",
        outcomes.iter().map(text).collect::<Vec<_>>()
    );
    assert_eq!(log_now.events().len(), 2);
    for o in outcomes.iter().filter(|o| !o.status.success()) {
        assert!(text(o).contains("changed since it was read"), "{}", text(o));
        assert!(text(o).contains("run the command again"), "{}", text(o));
    }
    // The loser runs again and gets in.
    let i = outcomes.iter().position(|o| !o.status.success()).unwrap();
    let o = alice.approve(&reqs[i].0, &reqs[i].1, "alice", &log);
    assert!(o.status.success(), "{}", text(&o));
    let log_now = keybridge_protocol::KeyLog::from_bytes(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!(log_now.active_keys().count(), 3);
}

#[test]
fn a_second_admin_must_confirm_admin_changes_under_a_threshold() {
    let alice = Agent::new(Home::Passphrase);
    alice.key(Home::Passphrase, "alice", "alice");
    let log = alice.b.account_log("acme", "alice");
    let fleet = Fleet::new(&log);
    // carol and dave join as admins (threshold 1: alice alone approves).
    let mut admins = vec![];
    for name in ["carol", "dave"] {
        let a = Agent::new(Home::Passphrase);
        a.key(Home::Passphrase, name, name);
        let (req, code) = a.request(name, &["--role", "admin"]);
        let o = alice.approve(&req, &code, "alice", &log);
        assert!(o.status.success(), "{}", text(&o));
        admins.push(a);
    }
    let o = alice.cli(&["keys", "threshold", "2", "--key", "alice", "--log", s(&log)]);
    assert!(o.status.success(), "{}", text(&o));
    // alice makes a second admin identity for herself ("mallory"): her
    // approval alone only proposes it.
    let mallory = Agent::new(Home::Passphrase);
    mallory.key(Home::Passphrase, "mallory", "mallory");
    let (req, code) = mallory.request("mallory", &["--role", "admin"]);
    let o = alice.approve(&req, &code, "alice", &log);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 of 2"), "{}", text(&o));
    fleet.update(&log);
    assert_eq!(
        fleet.verify("dev-1", &mallory.sign("mallory", "dev-1")),
        12,
        "not in yet"
    );
    // carol confirms with the same command and the code: now it applies.
    let o = admins[0].approve(&req, &code, "carol", &log);
    assert!(o.status.success(), "{}", text(&o));
    fleet.update(&log);
    assert_eq!(fleet.verify("dev-1", &mallory.sign("mallory", "dev-1")), 0);
    // Members still need one admin only.
    let erin = Agent::new(Home::Passphrase);
    erin.key(Home::Passphrase, "erin", "erin");
    let (req, code) = erin.request("erin", &[]);
    let o = admins[1].approve(&req, &code, "dave", &log);
    assert!(
        o.status.success() && text(&o).contains("approved"),
        "{}",
        text(&o)
    );
    let h = alice.b.ok(&["history", "--log", s(&log)], None);
    assert!(
        h.contains("proposed") && h.contains("confirmed") && h.contains("applied"),
        "{h}"
    );
}

#[test]
fn the_recovery_passphrase_is_asked_twice_on_a_terminal_and_the_file_opens_with_age() {
    for tool in ["script", "age"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                !in_ci(),
                "{tool} missing under CI (cargo xtask deps installs it)"
            );
            eprintln!("SKIP: {tool} missing; run cargo xtask deps");
            return;
        }
    }
    let alice = Agent::new(Home::Passphrase);
    alice.key(Home::Passphrase, "alice", "alice");
    let home = alice.b.home().to_owned();
    // `script` gives the CLI a terminal; its standard input is typed there.
    let init = |log: &str, rec: &str, typed: &str| -> Output {
        let cmdline = format!(
            "{} account init --account acme --key alice --log {} --recovery-file {}",
            bin("keybridge").display(),
            home.join(log).display(),
            home.join(rec).display()
        );
        run_with_stdin(
            Command::new("script")
                .args(["-qec", &cmdline, "/dev/null"])
                .env("KEYBRIDGE_HOME", &home),
            Some(typed),
        )
    };
    let o = init(
        "a.log",
        "a.age",
        "recovery passphrase 1\nrecovery passphrase 2\n",
    );
    assert!(text(&o).contains("differ"), "{}", text(&o));
    assert!(!home.join("a.age").exists() && !home.join("a.log").exists());
    let o = init("a.log", "a.age", "short pass\nshort pass\n");
    assert!(text(&o).contains("at least 12 characters"), "{}", text(&o));
    assert!(!home.join("a.age").exists() && !home.join("a.log").exists());
    let o = init(
        "a.log",
        "a.age",
        &format!("{RECOVERY_PASS}\n{RECOVERY_PASS}\n"),
    );
    assert!(
        o.status.success() && home.join("a.age").exists(),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("Repeat"), "asked twice: {}", text(&o));

    // `age -d` (the age CLI, not our code) opens it with the passphrase.
    let out = home.join("plain.json");
    let o = run_with_stdin(
        Command::new("script").args([
            "-qec",
            &format!(
                "age -d -o {} {}",
                out.display(),
                home.join("a.age").display()
            ),
            "/dev/null",
        ]),
        Some(&format!("{RECOVERY_PASS}\n")),
    );
    let plain: Value = serde_json::from_slice(&std::fs::read(&out).unwrap_or_default())
        .unwrap_or_else(|e| panic!("age -d: {e}: {}", text(&o)));
    assert_eq!(plain["account"], "acme");
    assert_eq!(plain["keybridge_recovery"], 1);
    let log = keybridge_protocol::KeyLog::from_bytes(&std::fs::read(home.join("a.log")).unwrap())
        .unwrap();
    assert_eq!(plain["recovery_kid"], log.recovery_key().kid().to_hex());
}
