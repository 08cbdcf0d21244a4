//! The device verifier's benchmark (the key-lifecycle issue): a device's
//! cost must not grow with the account's key log.
//!
//! Built in process: a 10,000-event key log — alice (the genesis admin)
//! adds two more admins and a member who stay, then adds and revokes
//! members in turn, so the active set stays small (5 keys) while 4,998 keys
//! have left — and the 1-event log of the same genesis. Two state folders
//! of the release `keybridge-device` (found next to this binary; no test
//! hooks, so commands are signed for the real clock) `trust init` them.
//! Every figure is whole processes, spawned and waited for one at a time,
//! taking turns between the two folders (200 each, after 10 warm-up runs
//! each); medians:
//!
//! 1. `keybridge-device verify CMD`: a fresh command each run (its own
//!    nonce), signed by alice, whose key is active in both logs. Goal:
//!    10,000 events ≤ 1.2 × 1 event.
//! 2. `keybridge-device trust update LOG`: each run offers the folder's
//!    log plus one new event (an `add` of a member, or its `revoke`, by
//!    alice: the same kinds on both sides), which the device verifies and
//!    takes. Goal: 10,000 events ≤ 2 × the baseline, the same 1-event
//!    extension taken by a folder whose log has no history (1 event). That
//!    baseline is a process too: verifying the extension's signatures
//!    alone, in process (also reported: `Trust::append` of the same event,
//!    ~0.1 ms), is not what a process that reads and atomically writes its
//!    state can be compared with — process start and fsyncs are
//!    milliseconds on their own — so the same command on a history-free
//!    folder isolates exactly what the history costs.
//!
//! `cargo xtask bench` runs it (release build) and it writes
//! `target/bench/device.json`. A missed goal is reported, not failed; a
//! refused command or update exits non-zero.

use anyhow::{Context as _, Result, ensure};
use keybridge_protocol::{Claims, KeyLog, KeyRequest, Op, PublicKey, Role, Unsigned};
use keybridge_tests::bench::{Goal, exit};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Events in the large log.
const EVENTS: usize = 10_000;
/// Measured runs per folder and figure, after [`WARM_UP`] runs.
const RUNS: usize = 200;
const WARM_UP: usize = 10;
const DEVICE: &str = "bench-device";

mod goal {
    /// verify with 10,000 events over verify with 1, at most.
    pub const VERIFY: f64 = 1.2;
    /// trust update of one event on 10,000 over on 1, at most.
    pub const UPDATE: f64 = 2.0;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.is_empty() {
        bench()
    } else {
        Err(anyhow::anyhow!("usage: device_bench (no arguments)"))
    };
    exit("device_bench", outcome)
}

fn key(tag: u8, i: u32) -> ed25519_dalek::SigningKey {
    let mut seed = [tag; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

fn public(k: &ed25519_dalek::SigningKey) -> PublicKey {
    PublicKey::ed25519(k.verifying_key().as_bytes()).expect("an Ed25519 key")
}

fn finish(k: &ed25519_dalek::SigningKey, u: Unsigned) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    let sig = k.sign(u.to_be_signed()).to_bytes();
    u.into_bytes(&sig).expect("a signature of the right size")
}

/// The account: alice, her log, and the next member number.
struct Account {
    alice: ed25519_dalek::SigningKey,
    log: KeyLog,
    next_member: u32,
    /// Members added and not revoked yet, oldest first.
    open: Vec<ed25519_dalek::SigningKey>,
}

impl Account {
    fn new(time: i64) -> Result<Self> {
        let alice = key(1, 0);
        let recovery = key(3, 0);
        let genesis = finish(
            &alice,
            KeyLog::genesis("acme", time, &public(&alice), "alice", &public(&recovery)),
        );
        Ok(Account {
            log: KeyLog::from_bytes(&genesis)?,
            alice,
            next_member: 0,
            open: vec![],
        })
    }

    /// The next event of the log: adds a member (`role`), approved by
    /// alice; or, when `revoke` and a member is open, revokes the oldest.
    /// Appended, and returned.
    fn step(&mut self, revoke: bool, role: Role, time: i64) -> Result<Vec<u8>> {
        let op = if revoke && !self.open.is_empty() {
            let m = self.open.remove(0);
            Op::Revoke {
                kid: public(&m).kid(),
            }
        } else {
            let i = self.next_member;
            self.next_member += 1;
            let m = key(7, i);
            let agent = format!("m{i}");
            let req = finish(
                &m,
                KeyRequest::unsigned("acme", &agent, role, &public(&m), time),
            );
            let op = Op::Add {
                key: public(&m),
                agent,
                role,
                req,
                replaces: None,
            };
            self.open.push(m);
            op
        };
        let ev = finish(
            &self.alice,
            self.log.next_event(time, &op, &public(&self.alice)),
        );
        self.log.append(&ev)?;
        Ok(ev)
    }
}

/// One state folder and the files its runs use.
struct Folder {
    name: &'static str,
    state: PathBuf,
    offered: PathBuf,
}

fn run(bin: &Path, state: &Path, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "keybridge-device {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench() -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();
    let bin = bin_dir.join("keybridge-device");
    ensure!(
        bin.exists(),
        "{} is missing: cargo build --release -p keybridge-device",
        bin.display()
    );
    let tmp = tempfile::Builder::new().prefix("kbd").tempdir()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;

    // The logs: the same genesis; the large one grown to 10,000 events.
    let built = Instant::now();
    let mut small = Account::new(now - 3600)?;
    let mut large = Account::new(now - 3600)?;
    for _ in 0..2 {
        large.step(false, Role::Admin, now - 3600)?;
    }
    large.step(false, Role::Member, now - 3600)?;
    large.open.clear(); // these stay
    while large.log.events().len() < EVENTS {
        let revoke = !large.open.is_empty();
        large.step(revoke, Role::Member, now - 3600)?;
    }
    if !large.open.is_empty() {
        large.open.clear(); // the last member stays too
    }
    println!(
        "built a {}-event log ({:.1} MB, {} active keys) in {:.1} s",
        large.log.events().len(),
        large.log.to_bytes().len() as f64 / 1e6,
        large.log.active_keys().count(),
        built.elapsed().as_secs_f64()
    );

    let mut folders = vec![];
    for (name, account) in [("10,000 events", &large), ("1 event", &small)] {
        let dir = tmp.path().join(if account.log.events().len() > 1 {
            "large"
        } else {
            "small"
        });
        std::fs::create_dir_all(&dir)?;
        let offered = dir.join("offered.cbor");
        std::fs::write(&offered, account.log.to_bytes())?;
        let state = dir.join("state");
        let took = run(
            &bin,
            &state,
            &[
                "trust",
                "init",
                offered.to_str().context("a UTF-8 path")?,
                "--device-id",
                DEVICE,
            ],
        )?;
        println!("trust init ({name}): {:.0} ms", ms(took));
        folders.push(Folder {
            name,
            state,
            offered,
        });
    }

    // 1. verify: fresh commands by alice, active in both.
    let alice_public = public(&small.alice);
    let command = |n: usize| -> Result<PathBuf> {
        let mut cti = [0u8; 16];
        cti[..8].copy_from_slice(&(n as u64).to_be_bytes());
        let claims = Claims {
            iss: "acme".into(),
            sub: "alice".into(),
            aud: Some(DEVICE.into()),
            exp: now + 3600,
            nbf: now - 60,
            iat: now - 60,
            cti,
            cmd: "run-script".into(),
            args: BTreeMap::new(),
            body: None,
            devs: None,
        };
        let u = keybridge_protocol::UnsignedCommand::new(&claims, &alice_public)?;
        use ed25519_dalek::Signer as _;
        let sig = small.alice.sign(u.to_be_signed()).to_bytes();
        let path = tmp.path().join(format!("cmd-{n}.cose"));
        std::fs::write(&path, u.into_envelope(&sig)?)?;
        Ok(path)
    };
    let mut verify: [Vec<Duration>; 2] = [vec![], vec![]];
    for i in 0..WARM_UP + RUNS {
        // Alternate which folder goes first.
        for k in [i % 2, 1 - i % 2] {
            let cmd = command(2 * i + k)?;
            let took = run(
                &bin,
                &folders[k].state,
                &["verify", cmd.to_str().context("a UTF-8 path")?],
            )?;
            if i >= WARM_UP {
                verify[k].push(took);
            }
        }
    }
    let [verify_large, verify_small] = verify.map(median);

    // 2. trust update: one new event per run, on each side.
    let mut update: [Vec<Duration>; 2] = [vec![], vec![]];
    let mut in_process = vec![];
    for i in 0..WARM_UP + RUNS {
        let revoke = i % 2 == 1;
        for k in [i % 2, 1 - i % 2] {
            let account = if k == 0 { &mut large } else { &mut small };
            let before = account.log.trust().clone();
            let ev = account.step(revoke, Role::Member, now - 60)?;
            if k == 1 {
                // The event's signatures and rules alone, in process.
                let start = Instant::now();
                let mut t = before.clone();
                t.append(&ev)?;
                in_process.push(start.elapsed());
            }
            std::fs::OpenOptions::new()
                .append(true)
                .open(&folders[k].offered)?
                .write_all(&ev)?;
            let took = run(
                &bin,
                &folders[k].state,
                &[
                    "trust",
                    "update",
                    folders[k].offered.to_str().context("a UTF-8 path")?,
                ],
            )?;
            if i >= WARM_UP {
                update[k].push(took);
            }
        }
    }
    let [update_large, update_small] = update.map(median);
    let in_process = median(in_process);

    let verify_ratio = verify_large.as_secs_f64() / verify_small.as_secs_f64();
    let update_ratio = update_large.as_secs_f64() / update_small.as_secs_f64();
    println!(
        "\nkeybridge-device, whole processes, medians of {RUNS} ({} and {}):",
        folders[0].name, folders[1].name
    );
    println!(
        "  verify        {:>8.2} ms  {:>8.2} ms",
        ms(verify_large),
        ms(verify_small)
    );
    println!(
        "  trust update  {:>8.2} ms  {:>8.2} ms   (in process, the event alone: {:.3} ms)",
        ms(update_large),
        ms(update_small),
        ms(in_process)
    );
    let goals = [
        Goal {
            name: "verify: 10,000 events / 1 event",
            measured: verify_ratio,
            target: goal::VERIFY,
            at_least: false,
            detail: format!("{:.2} ms / {:.2} ms", ms(verify_large), ms(verify_small)),
        },
        Goal {
            name: "trust update +1: 10,000 events / 1",
            measured: update_ratio,
            target: goal::UPDATE,
            at_least: false,
            detail: format!(
                "{:.2} ms / {:.2} ms; vs the event's verification in process {:.0}x",
                ms(update_large),
                ms(update_small),
                update_large.as_secs_f64() / in_process.as_secs_f64()
            ),
        },
    ];
    println!("\ngoals:");
    for g in &goals {
        println!("{}", g.line());
    }
    let out = target_dir.join("bench").join("device.json");
    std::fs::create_dir_all(out.parent().context("bench folder")?)?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "events": EVENTS,
            "runs": RUNS,
            "verify_ms": {"large": ms(verify_large), "small": ms(verify_small)},
            "update_ms": {"large": ms(update_large), "small": ms(update_small)},
            "update_event_in_process_ms": ms(in_process),
            "goals": goals.iter().map(Goal::to_json).collect::<Vec<_>>(),
        }))?,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
