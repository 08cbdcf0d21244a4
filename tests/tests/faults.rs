//! Faults: the daemon, the CLI and the device killed at every step of each
//! kind of write they do (crash points of the `test-hooks` build: the
//! process aborts there, as under `kill -9`, at a random one of its
//! writes), the daemon SIGKILLed at random moments while it signs, and a
//! state folder whose disk is full. Afterwards every file is the old one
//! or the new one, never torn; the audit log has a line for every
//! envelope that left; nothing is signed without its line; temp files a
//! crash left are cleaned up at the next start.
//!
//! The random choices come from one seed, printed (set `FAULTS_SEED` to
//! replay a run).

use keybridge_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

const NOW: i64 = 1_800_000_000;
/// Every step of an atomic write a crash point exists for.
const WRITE_STEPS: [&str; 4] = [
    "write:created",
    "write:half",
    "write:synced",
    "write:renamed",
];

/// A small deterministic generator (xorshift), seeded per test.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: FAULTS_SEED={seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The crash plan as environment: abort at `step` on the `nth` write of
/// a file whose name ends with `file`.
fn plan(cmd: &mut Command, step: &str, nth: u64, file: &str) {
    cmd.env("KEYBRIDGE_CRASH_AT", step)
        .env("KEYBRIDGE_CRASH_NTH", nth.to_string())
        .env("KEYBRIDGE_CRASH_FILE", file);
}

/// Stops `b`'s daemon and starts one with a crash plan; waits until it
/// answers. The caller waits for it to abort.
fn crashing_daemon(b: &mut Bridge, step: &str, nth: u64, file: &str, extra: &[&str]) -> Child {
    b.signal("-TERM");
    let mut cmd = b.serve_command(&[], extra);
    plan(&mut cmd, step, nth, file);
    let mut child = cmd.spawn().unwrap();
    let up = poll_until(Duration::from_secs(20), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited early: {}",
            b.daemon_log()
        );
        b.cli(&["status"], None).status.success()
    });
    assert!(up, "{}", b.daemon_log());
    child
}

/// Waits for a process that must abort at its crash point.
fn aborted(child: &mut Child, what: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    let mut status = None;
    poll_until(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{what}: the crash point was not reached")
    });
    assert_eq!(status.signal(), Some(6), "{what}: {status}");
}

/// Files of `dir` whose names start with `.` and end with `.tmp`.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

fn keys_dir(b: &Bridge) -> PathBuf {
    b.home().join("state/keys")
}

/// Every key record parses, and names the kid it is filed under.
fn key_records(b: &Bridge) -> BTreeSet<String> {
    let mut kids = BTreeSet::new();
    for e in std::fs::read_dir(keys_dir(b)).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kid) = name.strip_suffix(".json") else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("torn key record {name}: {err}: {text:?}"));
        assert!(v.is_object(), "{name}: {text}");
        kids.insert(kid.to_owned());
    }
    kids
}

fn create_passphrase(b: &Bridge, agent: &str) -> Output {
    b.create_passphrase("acme", agent, PASSPHRASE)
}

#[test]
fn a_crash_at_any_step_of_writing_a_key_record_leaves_it_whole_or_absent() {
    let mut rng = Rng::new("key records");
    let mut b = Bridge::start(NOW);
    let mut made = BTreeSet::new();
    for (round, step) in WRITE_STEPS.iter().enumerate() {
        let nth = 1 + rng.below(2);
        let mut daemon = crashing_daemon(&mut b, step, nth, ".json", &[]);
        let mut crashed_on = None;
        for i in 1..=nth {
            let agent = format!("a{round}x{i}");
            let o = create_passphrase(&b, &agent);
            if i < nth {
                assert!(o.status.success(), "{}", stderr(&o));
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                made.insert(v["kid"].as_str().unwrap().to_owned());
            } else {
                assert!(!o.status.success(), "{step}: the crash did not fail it");
                crashed_on = Some(agent);
            }
        }
        aborted(&mut daemon, step);
        let left = temps(&keys_dir(&b));
        let on_disk = key_records(&b);
        b.restart();
        assert!(temps(&keys_dir(&b)).is_empty(), "{step}: {left:?} stayed");
        // Old or new: the records made before, and the crashed one only
        // once it was renamed into place.
        let extra: Vec<_> = on_disk.difference(&made).cloned().collect();
        assert_eq!(
            extra.len(),
            usize::from(*step == "write:renamed"),
            "{step}: {extra:?}"
        );
        if *step != "write:renamed" && *step != "write:synced" {
            assert!(
                *step == "write:created" || !left.is_empty(),
                "{step}: the crash left its temp file"
            );
        }
        // The key is made again (the same kid: a passphrase key), and is
        // served.
        let agent = crashed_on.unwrap();
        let o = create_passphrase(&b, &agent);
        assert!(o.status.success(), "{step}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let kid = v["kid"].as_str().unwrap().to_owned();
        if let Some(k) = extra.first() {
            assert_eq!(k, &kid);
        }
        made.insert(kid);
        assert_eq!(key_records(&b), made);
        let listed: Value = serde_json::from_str(&b.ok(&["--json", "keys", "list"], None)).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), made.len(), "{listed:#}");
    }
}

/// Every audit line's device (`audience`), and how many lines are not
/// entries.
fn audited(b: &Bridge) -> (BTreeSet<String>, usize) {
    let text = std::fs::read_to_string(b.home().join("state/audit.jsonl")).unwrap_or_default();
    let mut devices = BTreeSet::new();
    let mut bad = 0;
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                devices.insert(v["audience"].as_str().unwrap_or_default().to_owned());
            }
            Err(_) => bad += 1,
        }
    }
    (devices, bad)
}

/// `keybridge sign` for `device` into `home/out/DEVICE.cose`.
fn sign(b: &Bridge, device: &str) -> Output {
    let out = b.home().join("out").join(format!("{device}.cose"));
    b.cli(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            device,
            "--command",
            "remote-control",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    )
}

/// The devices an envelope left for (a file in `home/out`).
fn envelopes(b: &Bridge) -> BTreeSet<String> {
    std::fs::read_dir(b.home().join("out"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".cose")
                .map(str::to_owned)
        })
        .collect()
}

fn unlock_alice(b: &Bridge) {
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
}

#[test]
fn the_audit_log_has_a_line_for_every_envelope_that_left_whatever_the_crash() {
    let mut rng = Rng::new("audit");
    let mut b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    std::fs::create_dir_all(b.home().join("out")).unwrap();
    let mut n = 0;
    let mut torn = 0;
    // Crash points: half a line written, and the whole line written but
    // the answer not sent.
    for step in ["audit:half", "audit:written", "audit:half"] {
        let nth = 1 + rng.below(4);
        let mut daemon = crashing_daemon(&mut b, step, nth, "audit.jsonl", &[]);
        unlock_alice(&b);
        for i in 1..=nth {
            n += 1;
            let o = sign(&b, &format!("dev-{n}"));
            assert_eq!(o.status.success(), i < nth, "{step} {i}: {}", stderr(&o));
        }
        aborted(&mut daemon, step);
        torn += usize::from(step == "audit:half");
        b.restart();
        unlock_alice(&b);
        n += 1;
        let o = sign(&b, &format!("dev-{n}"));
        assert!(o.status.success(), "{}", stderr(&o));
        let (lines, bad) = audited(&b);
        let left = envelopes(&b);
        assert!(
            left.is_subset(&lines),
            "{step}: envelopes without a line: {:?}",
            left.difference(&lines).collect::<Vec<_>>()
        );
        assert_eq!(
            bad, torn,
            "{step}: the cut lines, and only them, unreadable"
        );
        // `audit:written`: a line for a signature that never left.
        assert!(lines.len() - left.len() <= 1, "{lines:?} {left:?}");
    }

    // SIGKILL at random moments while a client signs in a loop.
    for round in 0..6 {
        unlock_alice(&b);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let first = n;
        let pid = b.child().id();
        std::thread::scope(|s| {
            let signer = s.spawn(|| {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let _ = sign(&b, &format!("kill-{round}-{i}"));
                }
                i
            });
            std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            n = first + signer.join().unwrap();
        });
        let _ = b.child().wait();
        b.restart();
    }
    let (lines, bad) = audited(&b);
    let left = envelopes(&b);
    assert!(
        left.is_subset(&lines),
        "envelopes without a line: {:?}",
        left.difference(&lines).collect::<Vec<_>>()
    );
    assert_eq!(bad, torn);
    assert!(
        left.iter().filter(|d| d.starts_with("kill-")).count() >= 6,
        "{left:?}"
    );
    assert!(temps(&b.home().join("state")).is_empty());
}

/// `keys request` for bob's key into `home/bob.req`: the file and its
/// verification code.
fn bob_request(b: &Bridge) -> (PathBuf, String) {
    let req = b.home().join("bob.req");
    let v: Value = serde_json::from_str(&b.ok(
        &[
            "--json",
            "keys",
            "request",
            "--key",
            "bob",
            "--out",
            req.to_str().unwrap(),
        ],
        None,
    ))
    .unwrap();
    (req, v["code"].as_str().unwrap().to_owned())
}

/// `keys approve` of `req` by alice into `log`, as arguments.
fn approve_args<'a>(req: &'a Path, code: &'a str, log: &'a Path) -> [&'a str; 9] {
    [
        "keys",
        "approve",
        req.to_str().unwrap(),
        "--code",
        code,
        "--key",
        "alice",
        "--log",
        log.to_str().unwrap(),
    ]
}

#[test]
fn a_crash_while_the_cli_writes_a_key_log_leaves_the_old_log_or_the_new_one() {
    let mut rng = Rng::new("key log");
    for step in WRITE_STEPS {
        let b = Bridge::start(NOW);
        b.passphrase_key("acme", "alice");
        b.passphrase_key("acme", "bob");
        b.ok(
            &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
            Some(PASSPHRASE),
        );
        b.ok(
            &["unlock", "bob", "--remember", "daily", "--secret-stdin"],
            Some(PASSPHRASE),
        );
        let log = b.home().join("acme.log");
        let rec = b.home().join("acme.recovery.age");
        let init = [
            "account",
            "init",
            "--account",
            "acme",
            "--key",
            "alice",
            "--log",
            log.to_str().unwrap(),
            "--recovery-file",
            rec.to_str().unwrap(),
            "--secret-stdin",
        ];
        // The genesis: either write may be the one that crashes (the
        // recovery file first, then the log).
        let which = if rng.below(2) == 0 {
            "acme.log"
        } else {
            ".age"
        };
        let mut cmd = Command::new(bin("keybridge"));
        cmd.env("KEYBRIDGE_HOME", b.home()).args(init);
        plan(&mut cmd, step, 1, which);
        let o = run_with_stdin(&mut cmd, Some("recovery passphrase 1"));
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(o.status.signal(), Some(6), "{step}: {}", stderr(&o));
        let whole = |p: &Path| {
            let r = b.cli(&["--json", "history", "--log", p.to_str().unwrap()], None);
            assert!(r.status.success(), "{step}: {}", stderr(&r));
        };
        if log.exists() {
            assert!(step == "write:renamed" && which == "acme.log", "{step}");
            whole(&log);
        } else {
            // Nothing to keep: init again, now with nothing in the way
            // but a recovery file that may exist.
            let _ = std::fs::remove_file(&rec);
            b.ok(&init, Some("recovery passphrase 1"));
            whole(&log);
        }
        let genesis = std::fs::read(&log).unwrap();

        // An extension: bob's request approved by alice; the crash
        // during the log's replacement.
        let (req, code) = bob_request(&b);
        let approve = approve_args(&req, &code, &log);
        let mut cmd = Command::new(bin("keybridge"));
        cmd.env("KEYBRIDGE_HOME", b.home()).args(approve);
        plan(&mut cmd, step, 1, "acme.log");
        let o = run_with_stdin(&mut cmd, None);
        assert_eq!(o.status.signal(), Some(6), "{step}: {}", stderr(&o));
        whole(&log);
        let now = std::fs::read(&log).unwrap();
        if step == "write:renamed" {
            assert!(now.len() > genesis.len() && now.starts_with(&genesis));
        } else {
            assert_eq!(now, genesis, "{step}: the old log");
            // And approving again works.
            b.ok(&approve, None);
            whole(&log);
        }
        let dir_temps = temps(b.home());
        // The CLI's temp file is left where the crash left it (no daemon
        // start cleans a user's folder): named so, and harmless.
        assert!(
            dir_temps.iter().all(|t| t.starts_with(".keybridge-")),
            "{dir_temps:?}"
        );
    }
}

#[test]
fn a_device_killed_while_it_writes_its_state_keeps_a_state_it_can_use() {
    let mut rng = Rng::new("device state");
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    b.passphrase_key("acme", "bob");
    unlock_alice(&b);
    let log = b.account_log("acme", "alice");
    let genesis = std::fs::read(&log).unwrap();
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    // The extension a device will take: bob joins.
    b.ok(
        &["unlock", "bob", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    let (req, code) = bob_request(&b);
    b.ok(&approve_args(&req, &code, &log), None);
    let genesis_file = b.home().join("genesis.log");
    std::fs::write(&genesis_file, &genesis).unwrap();
    std::fs::create_dir_all(b.home().join("out")).unwrap();

    let device_cmd = |state: &Path, args: &[&str]| {
        let mut c = Command::new(bin("keybridge-device"));
        c.arg("--state").arg(state).args(args);
        c
    };
    // A trust update appends to log.cbor, then replaces the files derived
    // from it; each of these writes, killed at each of its steps.
    let files = ["trust.cbor", "keys.idx", "hardware.json"];
    let updates = WRITE_STEPS
        .iter()
        .map(|step| (*step, files[rng.below(3) as usize]))
        .chain([("append:half", "log.cbor"), ("append:written", "log.cbor")]);
    for (round, (step, file)) in updates.enumerate() {
        let state = b.home().join(format!("device-{round}"));
        trust_device(&state, &genesis_file, "dev-1");
        let mut cmd = device_cmd(&state, &["trust", "update", log.to_str().unwrap()]);
        plan(&mut cmd, step, 1, file);
        let o = cmd.output().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(o.status.signal(), Some(6), "{step} {file}: {}", stderr(&o));
        // The state is usable: it shows, verifies, and takes the update
        // (again, or as already taken).
        let show = device(&state, &["trust", "show"]);
        assert!(show.status.success(), "{step} {file}: {}", stderr(&show));
        let o = device(&state, &["trust", "update", log.to_str().unwrap()]);
        assert!(o.status.success(), "{step} {file}: {}", stderr(&o));
        let show = String::from_utf8_lossy(&device(&state, &["trust", "show"]).stdout).into_owned();
        // A command bob signed is accepted: the update is in.
        let env = b.home().join("out").join(format!("bob-{round}.cose"));
        b.ok(
            &[
                "sign",
                "--key",
                "bob",
                "--device",
                "dev-1",
                "--command",
                "remote-control",
                "--out",
                env.to_str().unwrap(),
            ],
            None,
        );
        // `verify` killed while it saves the replay cache: the command is
        // not accepted (the process died before saying so), and the next
        // verify of the same envelope is decided from a whole cache.
        let step = WRITE_STEPS[round % WRITE_STEPS.len()];
        let mut cmd = device_cmd(
            &state,
            &["verify", env.to_str().unwrap(), "--now", &NOW.to_string()],
        );
        plan(&mut cmd, step, 1, "replay.cbor");
        let o = cmd.output().unwrap();
        assert_eq!(o.status.signal(), Some(6), "{step} verify: {}", stderr(&o));
        let again = device(
            &state,
            &["verify", env.to_str().unwrap(), "--now", &NOW.to_string()],
        );
        let code = again.status.code();
        if step == "write:renamed" {
            // The cache was saved: a replay, refused.
            assert_eq!(code, Some(24), "{step}: {}", stderr(&again));
        } else {
            assert_eq!(code, Some(0), "{step}: {show}\n{}", stderr(&again));
        }
    }
}

/// A small tmpfs (root only): `None` when this machine cannot mount one,
/// which fails under CI.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(!in_ci(), "CI must be able to mount a tmpfs (root)");
            eprintln!("SKIP: cannot mount a tmpfs here (not root)");
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` up, but for `spare` bytes.
fn fill(dir: &Path, spare: u64) -> PathBuf {
    let filler = dir.join("filler");
    let free = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let size = free.saturating_sub(spare);
    let f = std::fs::File::create(&filler).unwrap();
    use std::io::Write as _;
    let mut w = std::io::BufWriter::new(f);
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        if w.write_all(&chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    let _ = w.flush();
    filler
}

#[test]
fn a_full_disk_under_the_state_folder_fails_clearly_and_loses_nothing() {
    let mut b = Bridge::unstarted(NOW, None, &[]);
    let state = b.home().join("state");
    let Some(_fs) = Tmpfs::mount(&state, "4m") else {
        return;
    };
    b.restart_with(&[
        "--http",
        "127.0.0.1:0",
        "--allow-origin",
        "https://c.example",
    ]);
    b.passphrase_key("acme", "alice");
    unlock_alice(&b);
    std::fs::create_dir_all(b.home().join("out")).unwrap();
    for i in 0..3 {
        let o = sign(&b, &format!("before-{i}"));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (id, _token) = b.pair("https://c.example");
    let keys_before = key_records(&b);
    let pairing_before = std::fs::read(state.join("pairings.json")).unwrap();

    let filler = fill(&state, 0);
    // Signing: the audit log's last page may still take a few lines;
    // then a signature is refused with the reason, without an envelope or
    // a line, and so is the next.
    let mut refused = None;
    for i in 0..64 {
        let o = sign(&b, &format!("full-{i}"));
        if !o.status.success() {
            refused = Some((i, o));
            break;
        }
    }
    let (i, o) = refused.expect("a full disk refused a signature");
    let err = stderr(&o);
    assert!(err.contains("No space left"), "{err}");
    assert!(!b.home().join(format!("out/full-{i}.cose")).exists());
    let o = sign(&b, "full-again");
    assert!(!o.status.success(), "signed with a full disk");
    let (lines, bad) = audited(&b);
    assert_eq!(bad, 0, "a failed write was cut back to whole lines");
    assert_eq!(lines, envelopes(&b), "a line for each envelope, none more");
    // A new key, a pairing: refused, nothing half-written.
    let o = create_passphrase(&b, "carol");
    assert!(!o.status.success());
    assert!(
        stderr(&o).to_lowercase().contains("space"),
        "{}",
        stderr(&o)
    );
    let o = b.cli(&["pair", "--origin", "https://c.example"], None);
    assert!(!o.status.success());
    assert_eq!(key_records(&b), keys_before);
    assert_eq!(
        std::fs::read(state.join("pairings.json")).unwrap(),
        pairing_before
    );
    assert!(temps(&state).is_empty() && temps(&keys_dir(&b)).is_empty());
    // Still serving.
    b.ok(&["status"], None);

    // Room again: everything works, and the log is whole lines.
    std::fs::remove_file(filler).unwrap();
    let o = sign(&b, "after");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = create_passphrase(&b, "carol");
    assert!(o.status.success(), "{}", stderr(&o));
    let (lines, bad) = audited(&b);
    assert_eq!(bad, 0);
    assert_eq!(lines, envelopes(&b));
    let listed = b.ok(&["--json", "pair", "list"], None);
    assert!(listed.contains(&id), "{listed}");
}

#[test]
fn a_crash_while_pairing_a_console_keeps_the_pairings_whole() {
    let origin = "https://c.example";
    let console = ["--http", "127.0.0.1:0", "--allow-origin", origin];
    let mut b = Bridge::start(NOW);
    b.restart_with(&console);
    let mut ids = BTreeSet::new();
    for step in WRITE_STEPS {
        let (id, _) = b.pair(origin);
        ids.insert(id);
        let mut daemon = crashing_daemon(&mut b, step, 1, "pairings.json", &console);
        let o = b.cli(&["--json", "pair", "--origin", origin], None);
        assert!(!o.status.success(), "{step}");
        aborted(&mut daemon, step);
        let text = std::fs::read_to_string(b.home().join("state/pairings.json")).unwrap();
        let on_disk: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{step}: torn pairings: {e}: {text}"));
        b.restart_with(&console);
        assert!(temps(&b.home().join("state")).is_empty(), "{step}");
        let listed: Value = serde_json::from_str(&b.ok(&["--json", "pair", "list"], None)).unwrap();
        let now: BTreeSet<String> = listed
            .as_array()
            .unwrap_or_else(|| panic!("{listed:#}"))
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        // Old or new: every earlier pairing, and the crashed one only once
        // renamed into place.
        assert!(ids.is_subset(&now), "{step}: {ids:?} {now:?} {on_disk}");
        assert_eq!(
            now.len() - ids.len(),
            usize::from(step == "write:renamed"),
            "{step}: {now:?}"
        );
        ids = now;
    }
}
