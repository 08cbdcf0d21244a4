//! What verification costs beyond the signature check itself.
//!
//! - `Verifier::check` of a single-device command against the raw signature
//!   check of the same signature over the same `Sig_structure` bytes
//!   (Ed25519: `verify_strict` and plain `verify`; P-256: `verify`);
//! - `Batch::new` for 10,000 device ids (the tree; each proof is read off
//!   its levels when the envelope is made);
//! - `KeyLog::from_bytes` of a 10,000-event log of mixed operations against
//!   raw `verify_strict` of the very signatures the log holds (an `add`
//!   holds two: the approver's and the request's self-signature), and
//!   against 10,000 raw verifications (one per event).
//!
//! criterion measures each; then, in the same process, plain timed loops
//! (median of several runs, full and raw interleaved) give the ratios,
//! printed as one summary block.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Account, NOW, Signer, add_event, claims, sign_command};
use coset::TaggedCborSerializable as _;
use criterion::{Criterion, SamplingMode};
use keybridge_protocol::{Batch, KeyLog, Kid, Op, Role, UnsignedCommand, Verifier};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One single-device command and the pieces of its raw signature check.
struct Single<K, S> {
    env: Vec<u8>,
    tbs: Vec<u8>,
    key: K,
    sig: S,
}

fn single<K, S>(
    signer: &Signer,
    agent: &str,
    key: impl Fn(&Signer) -> K,
    sig: impl Fn(&[u8]) -> S,
) -> Single<K, S> {
    let c = claims(agent, "dev-1");
    let env = sign_command(signer, &c);
    let tbs = UnsignedCommand::new(&c, &signer.public())
        .unwrap()
        .to_be_signed()
        .to_vec();
    // The signature in the envelope (for ES256: after low-S normalization).
    let sig = sig(&env[env.len() - 64..]);
    Single {
        env,
        tbs,
        key: key(signer),
        sig,
    }
}

fn ed_key(s: &Signer) -> ed25519_dalek::VerifyingKey {
    match s {
        Signer::Ed(sk) => sk.verifying_key(),
        Signer::P256(_) => unreachable!("an Ed25519 signer"),
    }
}

fn p256_key(s: &Signer) -> p256::ecdsa::VerifyingKey {
    match s {
        Signer::P256(sk) => *sk.verifying_key(),
        Signer::Ed(_) => unreachable!("a P-256 signer"),
    }
}

/// A raw Ed25519 check as the log holds it.
struct RawSig {
    key: ed25519_dalek::VerifyingKey,
    tbs: Vec<u8>,
    sig: ed25519_dalek::Signature,
}

/// A key log of `events` events of a realistic mix, all Ed25519 (so that
/// raw Ed25519 checks are the fair baseline), and every signature in it.
struct LogFixture {
    bytes: Vec<u8>,
    events: usize,
    /// Every signature the log holds: per event, the event's, then for an
    /// `add` the request's self-signature.
    all: Vec<RawSig>,
    /// The events' own signatures, one per event.
    per_event: Vec<RawSig>,
}

fn key_log(events: usize) -> LogFixture {
    let mut counter = 0u32;
    let mut keys: BTreeMap<Kid, ed25519_dalek::VerifyingKey> = BTreeMap::new();
    let mut fresh = |keys: &mut BTreeMap<Kid, _>| {
        counter += 1;
        let seed: [u8; 32] = Sha256::digest(counter.to_be_bytes()).into();
        let s = Signer::Ed(ed25519_dalek::SigningKey::from_bytes(&seed));
        keys.insert(s.public().kid(), ed_key(&s));
        s
    };
    let first = fresh(&mut keys);
    let recovery = fresh(&mut keys);
    let genesis = KeyLog::genesis("acme", NOW, &first.public(), "admin-0", &recovery.public());
    let mut log = KeyLog::from_bytes(&first.finish(genesis)).unwrap();
    let mut admins = vec![first];
    let mut members: VecDeque<(Signer, String)> = VecDeque::new();
    let mut agents = 0;
    // One cycle of ten: onboarding (three members, one admin), two key
    // rotations, a rejected request, two revocations by an admin and one
    // by the key itself. Six adds in ten events: 1.6 signatures per event,
    // and the active set grows slowly (about one key per cycle).
    while log.events().len() < events {
        let step = log.events().len() % 10;
        let approver = &admins[log.events().len() % admins.len()];
        let ev = match (step, members.is_empty()) {
            (3 | 9, false) => {
                let (old, agent) = members.pop_front().unwrap();
                let new = fresh(&mut keys);
                let replaces = Some(old.public().kid());
                let ev = add_event(&log, approver, &new, &agent, Role::Member, replaces);
                members.push_back((new, agent));
                ev
            }
            (4, _) => {
                let op = Op::Reject {
                    req: Sha256::digest(step.to_be_bytes()).into(),
                    reason: "not a device of ours".into(),
                };
                approver.finish(log.next_event(NOW, &op, &approver.public()))
            }
            (5 | 7, false) => {
                let (old, _) = members.pop_front().unwrap();
                let op = Op::Revoke {
                    kid: old.public().kid(),
                };
                approver.finish(log.next_event(NOW, &op, &approver.public()))
            }
            (6, false) => {
                let (old, _) = members.pop_front().unwrap();
                let op = Op::Revoke {
                    kid: old.public().kid(),
                };
                old.finish(log.next_event(NOW, &op, &old.public()))
            }
            (8, _) => {
                agents += 1;
                let (new, agent) = (fresh(&mut keys), format!("agent-{agents}"));
                let ev = add_event(&log, approver, &new, &agent, Role::Admin, None);
                admins.push(new);
                ev
            }
            _ => {
                agents += 1;
                let (new, agent) = (fresh(&mut keys), format!("agent-{agents}"));
                let ev = add_event(&log, approver, &new, &agent, Role::Member, None);
                members.push_back((new, agent));
                ev
            }
        };
        log.append(&ev).unwrap();
    }

    let raw = |bytes: &[u8]| {
        let sign1 = coset::CoseSign1::from_tagged_slice(bytes).unwrap();
        let kid = Kid(sign1.protected.header.key_id.as_slice().try_into().unwrap());
        RawSig {
            key: keys[&kid],
            tbs: sign1.tbs_data(&[]),
            sig: ed25519_dalek::Signature::from_slice(&sign1.signature).unwrap(),
        }
    };
    let mut all = Vec::new();
    let mut per_event = Vec::new();
    for e in log.events() {
        all.push(raw(e.bytes()));
        per_event.push(raw(e.bytes()));
        if let Op::Add { req, .. } = &e.op {
            all.push(raw(req));
        }
    }
    LogFixture {
        bytes: log.to_bytes(),
        events: log.events().len(),
        all,
        per_event,
    }
}

fn verify_all(sigs: &[RawSig]) {
    for s in sigs {
        s.key.verify_strict(black_box(&s.tbs), &s.sig).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // then criterion runs each routine once: keep the fixtures small.
    let bench_mode = has("--bench") && !has("--test") && !has("--list");
    let log_events = if bench_mode { 10_000 } else { 50 };
    let batch_size = if bench_mode { 10_000 } else { 50 };

    let account = Account::new();
    let device = Verifier::new(&account.log, "dev-1");
    let ed = single(&account.alice, "alice", ed_key, |s| {
        ed25519_dalek::Signature::from_slice(s).unwrap()
    });
    let p = single(&account.bob, "bob", p256_key, |s| {
        p256::ecdsa::Signature::from_slice(s).unwrap()
    });
    let ids: Vec<String> = (0..batch_size).map(|i| format!("device-{i:06}")).collect();
    let started = Instant::now();
    let lf = key_log(log_events);
    eprintln!(
        "built a {}-event key log ({} signatures, {} KiB) in {:.1?}",
        lf.events,
        lf.all.len(),
        lf.bytes.len() / 1024,
        started.elapsed()
    );

    // Each routine black-boxes its result so that nothing is optimized away.
    let full_ed = || {
        black_box(device.check(black_box(&ed.env), None, NOW).unwrap());
    };
    let strict_ed = || ed.key.verify_strict(black_box(&ed.tbs), &ed.sig).unwrap();
    let plain_ed = || {
        use ed25519_dalek::Verifier as _;
        ed.key.verify(black_box(&ed.tbs), &ed.sig).unwrap()
    };
    let full_p = || {
        black_box(device.check(black_box(&p.env), None, NOW).unwrap());
    };
    let raw_p = || {
        use p256::ecdsa::signature::Verifier as _;
        p.key.verify(black_box(&p.tbs), &p.sig).unwrap()
    };
    // What `PublicKey::verify` runs for ES256: the fair baseline.
    let p_sec1 = p.key.to_sec1_point(false).as_bytes().to_vec();
    let p_sig = p.sig.to_bytes();
    let raw_ring_p = || {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &p_sec1)
            .verify(black_box(&p.tbs), &p_sig)
            .unwrap()
    };
    let batch = || {
        black_box(Batch::new(black_box(&ids)).unwrap());
    };
    let log_full = || {
        black_box(KeyLog::from_bytes(black_box(&lf.bytes)).unwrap());
    };
    let log_raw_all = || verify_all(&lf.all);
    let log_raw_events = || verify_all(&lf.per_event);

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("verify ed25519");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50);
        g.bench_function("Verifier::check", |b| b.iter(full_ed));
        g.bench_function("raw verify_strict", |b| b.iter(strict_ed));
        g.bench_function("raw verify", |b| b.iter(plain_ed));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("verify p256");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50);
        g.bench_function("Verifier::check", |b| b.iter(full_p));
        g.bench_function("raw verify (p256)", |b| b.iter(raw_p));
        g.bench_function("raw verify (ring)", |b| b.iter(raw_ring_p));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("batch");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .sample_size(20);
        g.bench_function(format!("Batch::new {batch_size} ids"), |b| b.iter(batch));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("key log");
        g.sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(15))
            .sample_size(10);
        g.bench_function(format!("KeyLog::from_bytes {} events", lf.events), |b| {
            b.iter(log_full)
        });
        g.bench_function(
            format!("raw verify_strict x{} (its signatures)", lf.all.len()),
            |b| b.iter(log_raw_all),
        );
        g.bench_function(
            format!("raw verify_strict x{} (one per event)", lf.per_event.len()),
            |b| b.iter(log_raw_events),
        );
        g.finish();
    }
    c.final_summary();

    if !bench_mode {
        return;
    }
    // The ratios, from plain timed loops: full and raw interleaved, so a
    // slow moment of the machine hits both, median of the runs.
    let [t_full_ed, t_strict_ed, t_plain_ed] = medians(9, 2_000, [&full_ed, &strict_ed, &plain_ed]);
    let [t_full_p, t_raw_p, t_ring_p] = medians(9, 1_000, [&full_p, &raw_p, &raw_ring_p]);
    let [t_batch] = medians(9, 20, [&batch]);
    let [t_log, t_log_all, t_log_events] =
        medians(5, 1, [&log_full, &log_raw_all, &log_raw_events]);

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |full: Duration, raw: Duration| full.as_secs_f64() / raw.as_secs_f64();
    let goal_at = |want: f64, full: Duration, raw: Duration| {
        let r = raw.as_secs_f64() / full.as_secs_f64();
        format!(
            "goal: raw/full >= {want}; is {r:.2}, {}",
            if r >= want { "met" } else { "NOT met" }
        )
    };
    let goal = |full: Duration, raw: Duration| goal_at(0.8, full, raw);
    println!();
    println!("==== keybridge-protocol: verification overhead (timed loops, medians) ====");
    println!(
        "verify ed25519: Verifier::check {:.1} us, raw verify_strict {:.1} us, raw verify {:.1} us",
        us(t_full_ed),
        us(t_strict_ed),
        us(t_plain_ed)
    );
    println!(
        "verify ed25519: full/raw = {:.2}x vs verify_strict ({}); {:.2}x vs verify",
        ratio(t_full_ed, t_strict_ed),
        goal(t_full_ed, t_strict_ed),
        ratio(t_full_ed, t_plain_ed)
    );
    println!(
        "verify p256:    Verifier::check {:.1} us, raw ring verify {:.1} us, raw p256-crate verify {:.1} us",
        us(t_full_p),
        us(t_ring_p),
        us(t_raw_p)
    );
    println!(
        "verify p256:    full/raw = {:.2}x vs ring, what we run ({}); {:.2}x vs the p256 crate",
        ratio(t_full_p, t_ring_p),
        goal_at(0.9, t_full_p, t_ring_p),
        ratio(t_full_p, t_raw_p)
    );
    println!(
        "batch:          Batch::new({batch_size} ids) {:.2} ms = {:.2} us per device (the tree, level by level)",
        ms(t_batch),
        us(t_batch) / batch_size as f64
    );
    println!(
        "key log:        KeyLog::from_bytes({} events, {} signatures, {} KiB) {:.0} ms = {:.1} us per event",
        lf.events,
        lf.all.len(),
        lf.bytes.len() / 1024,
        ms(t_log),
        us(t_log) / lf.events as f64
    );
    println!(
        "key log:        raw verify_strict x{} (its signatures) {:.0} ms; x{} (one per event) {:.0} ms",
        lf.all.len(),
        ms(t_log_all),
        lf.per_event.len(),
        ms(t_log_events)
    );
    println!(
        "key log:        full/raw = {:.2}x vs its {} signatures ({}); {:.2}x vs {} raw verifies",
        ratio(t_log, t_log_all),
        lf.all.len(),
        goal_at(0.77, t_log, t_log_all),
        ratio(t_log, t_log_events),
        lf.per_event.len()
    );
    println!("==========================================================================");
}

/// Per-call time of each of `fs`: `runs` rounds of `iters` calls of each,
/// interleaved, then the median round of each.
fn medians<const N: usize>(runs: usize, iters: u32, fs: [&dyn Fn(); N]) -> [Duration; N] {
    let mut times = [(); N].map(|_| Vec::with_capacity(runs));
    for _ in 0..runs {
        for (f, t) in fs.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.push(start.elapsed() / iters);
        }
    }
    times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    })
}
