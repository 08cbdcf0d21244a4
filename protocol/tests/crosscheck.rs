//! Cross-check with an independent COSE implementation: pycose, cbor2 and
//! `cryptography` (Python, `tests/cose_crosscheck.py`) verify what keybridge
//! signs, and keybridge verifies what they sign.
//!
//! The interpreter is `KEYBRIDGE_PYTHON` (set by `cargo xtask test`), else
//! the venv `cargo xtask deps` makes under `target/xtask/venv`. Without it
//! the test fails under `CI=true` and skips loudly otherwise.

mod common;

use common::*;
use keybridge_protocol::command::CONTENT_TYPE;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{
    Algorithm, ArgValue, Batch, BatchRoot, Claims, KeyLog, PublicKey, Role, UnsignedCommand,
    Verifier, VerifyError,
};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Python with pycose, cbor2 and cryptography; `None` (after saying so
/// loudly) when there is none and this is not CI.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("KEYBRIDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/venv/bin/python")
        });
    let probe = Command::new(&path)
        .args(["-c", "import pycose, cbor2, cryptography"])
        .output();
    let problem = match probe {
        Ok(out) if out.status.success() => return Some(path),
        Ok(out) => format!(
            "{} cannot import pycose, cbor2 and cryptography: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {}: {e}", path.display()),
    };
    let fix = "run `cargo xtask deps` (it makes target/xtask/venv) or set KEYBRIDGE_PYTHON";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("COSE cross-check cannot run under CI=true: {problem}; {fix}");
    }
    eprintln!(
        "\n\
         ################################################################\n\
         ## SKIPPED: COSE cross-check with pycose/cbor2/cryptography\n\
         ## {problem}\n\
         ## {fix}\n\
         ################################################################\n"
    );
    None
}

/// Runs the Python side on one request and returns its answer.
fn run_python(python: &Path, request: &Json) -> Json {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cose_crosscheck.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cross-check script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cose_crosscheck.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script answers JSON")
}

fn arg_json(v: &ArgValue) -> Json {
    match v {
        ArgValue::Text(s) => json!(s),
        ArgValue::Int(i) => json!(i),
        ArgValue::Bool(b) => json!(b),
        ArgValue::Bytes(b) => json!({ "$bytes": hex(b) }),
        ArgValue::List(l) => Json::Array(l.iter().map(arg_json).collect()),
        ArgValue::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), arg_json(v))).collect()),
    }
}

fn claims_json(c: &Claims) -> Json {
    json!({
        "iss": c.iss, "sub": c.sub, "aud": c.aud,
        "exp": c.exp, "nbf": c.nbf, "iat": c.iat, "cti": hex(&c.cti),
        "cmd": c.cmd,
        "args": Json::Object(c.args.iter().map(|(k, v)| (k.clone(), arg_json(v))).collect()),
        "body": c.body.map(|b| hex(&b)),
        "devs": c.devs.map(|d| json!({ "size": d.size, "root": hex(&d.root) })),
    })
}

/// Arguments that exercise the encoder: integer widths at their
/// boundaries, both signs, bytes, nesting, non-ASCII text, and keys whose
/// deterministic order is not their alphabetical one (shorter sorts first).
fn rich_args() -> BTreeMap<String, ArgValue> {
    use ArgValue::*;
    let ints = [
        0,
        23,
        24,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as i64,
        u32::MAX as i64 + 1,
        i64::MAX,
        -1,
        -24,
        -25,
        -256,
        -257,
        i64::MIN,
    ];
    BTreeMap::from([
        ("path".into(), Text("/opt/scripts/x.sh".into())),
        ("ints".into(), List(ints.iter().map(|&i| Int(i)).collect())),
        ("flag".into(), Bool(true)),
        ("off".into(), Bool(false)),
        ("blob".into(), Bytes(vec![0, 1, 2, 0xfe, 0xff])),
        ("z".into(), Text(String::new())),
        ("zz".into(), List(vec![])),
        ("a-key-longer-than-23-bytes-sorts-last".into(), Int(1)),
        (
            "env".into(),
            Map(BTreeMap::from([
                ("B".into(), Text("1".into())),
                ("AA".into(), Text("2".into())),
                ("é".into(), Text("café ✓ 日本".into())),
            ])),
        ),
        ("long".into(), Text("x".repeat(300))),
    ])
}

fn command_claims(sub: &str, aud: &str, n: u8) -> Vec<Claims> {
    let mut plain = claims(sub, aud);
    plain.cti = [n; 16];
    let mut rich = plain.clone();
    rich.cti[0] ^= 1;
    rich.args = rich_args();
    rich.body = Some(Sha256::digest(b"#!/bin/sh\necho hi\n").into());
    let mut sync = plain.clone();
    sync.cti[0] ^= 2;
    sync.cmd = "time-sync".into();
    sync.exp = sync.nbf + 24 * 3600;
    let mut ext = plain.clone();
    ext.cti[0] ^= 3;
    ext.cmd = "x-reboot-now".into();
    vec![plain, rich, sync, ext]
}

fn batch_ids(n: usize) -> Vec<String> {
    // Unsorted, with a duplicate and non-ASCII ids: both sides must sort
    // by bytes and de-duplicate the same way.
    let mut ids: Vec<String> = (0..n).rev().map(|i| format!("dev-{i}")).collect();
    if n > 2 {
        ids.push("dev-1".into());
        ids.push("gerät-ü".into());
        ids.push("Zebra".into());
    }
    ids
}

const BATCH_SIZES: [usize; 6] = [1, 2, 3, 5, 8, 13];

fn cose_alg(key: &PublicKey) -> i64 {
    match key.algorithm() {
        Algorithm::Ed25519 => -8,
        Algorithm::Es256 => -7,
    }
}

/// Direction (a): keybridge signs single-device and batch commands with
/// Ed25519 and P-256; pycose, cbor2 and cryptography check every one.
fn rust_made_cases(a: &Account) -> Vec<Json> {
    let mut cases = Vec::new();
    for (signer, agent) in [(&a.alice, "alice"), (&a.bob, "bob")] {
        let key = signer.public();
        let case =
            |name: String, env: &[u8], c: &Claims, device: &str, batch: Option<&[String]>| {
                // Rust accepts it first, or the cross-check proves nothing.
                let body = c.body.is_some().then_some(&b"#!/bin/sh\necho hi\n"[..]);
                Verifier::new(&a.log, device).check(env, body, NOW).unwrap();
                json!({
                    "name": name, "envelope": hex(env), "alg": cose_alg(&key),
                    "cose_key": hex(&key.to_cose_key_bytes()), "spki_pem": key.to_spki_pem(),
                    "kid": key.kid().to_hex(), "claims": claims_json(c), "device": device,
                    "batch": batch,
                })
            };
        for (i, c) in command_claims(agent, "dev-1", 1).iter().enumerate() {
            let env = sign_command(signer, c);
            cases.push(case(format!("{agent} single {i}"), &env, c, "dev-1", None));
        }
        for n in BATCH_SIZES {
            let ids = batch_ids(n);
            let batch = Batch::new(ids.clone()).unwrap();
            let mut c = claims(agent, "x");
            c.aud = None;
            c.devs = Some(batch.signed_root());
            c.args = rich_args();
            let u = UnsignedCommand::new(&c, &key).unwrap();
            let sig = signer.sign(u.to_be_signed());
            for (id, env) in u.into_batch_envelopes(&sig, &batch).unwrap() {
                cases.push(case(
                    format!("{agent} batch {n} {id}"),
                    &env,
                    &c,
                    &id,
                    Some(&ids),
                ));
            }
        }
    }
    cases
}

/// Batch envelopes whose size is not the signed one, which Python must
/// refuse as keybridge does: leaf 4 of 5 relabelled leaf 2 of 3 (the walk
/// still reaches the root), and a `"devs"` that signs 6 devices for a tree
/// of 5.
fn rust_made_bad_cases(a: &Account) -> Vec<Json> {
    let key = a.alice.public();
    let ids: Vec<String> = (0..5).map(|i| format!("dev-{i}")).collect();
    let batch = Batch::new(ids.clone()).unwrap();
    let device = batch.device_ids().get(4).unwrap().to_owned();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let u = UnsignedCommand::new(&c, &key).unwrap();
    let sig = a.alice.sign(u.to_be_signed());
    let env = u.into_batch_envelopes(&sig, &batch).unwrap().remove(4).1;
    let mut sign1 =
        <coset::CoseSign1 as coset::TaggedCborSerializable>::from_tagged_slice(&env).unwrap();
    let mut proof = batch.proof(4);
    (proof.leaf_index, proof.tree_size) = (2, 3);
    assert!(
        proof.verify(&device, &batch.root()),
        "the relabelled walk reaches the root"
    );
    sign1.unprotected.rest[0].1 = proof.to_value();
    let relabelled = coset::TaggedCborSerializable::to_tagged_vec(sign1).unwrap();

    let mut six = c.clone();
    six.devs = Some(BatchRoot {
        size: 6,
        ..batch.signed_root()
    });
    let mut honest_proof = coset::Header::default();
    honest_proof.rest.push((
        coset::Label::Text(keybridge_protocol::batch::PROOF_LABEL.into()),
        batch.proof(4).to_value(),
    ));
    let oversized = raw_envelope(&a.alice, -8, CONTENT_TYPE, six.to_payload(), honest_proof);

    [
        ("bad relabelled 4/5 as 2/3", relabelled, c),
        ("bad devs size 6 of 5", oversized, six),
    ]
    .into_iter()
    .map(|(name, env, c)| {
        assert_eq!(
            Verifier::new(&a.log, &device).check(&env, None, NOW),
            Err(VerifyError::BadBatchProof),
            "{name}"
        );
        json!({
            "name": name, "envelope": hex(&env), "alg": cose_alg(&key),
            "cose_key": hex(&key.to_cose_key_bytes()), "spki_pem": key.to_spki_pem(),
            "kid": key.kid().to_hex(), "claims": claims_json(&c), "device": device,
            "batch": ids,
        })
    })
    .collect()
}

/// The keys pycose signs with in direction (b), all in one account's log.
struct Signers {
    log: KeyLog,
    keys: Vec<(Signer, &'static str)>,
}

fn signers() -> Signers {
    let a = Account::new();
    let (carol, dave) = (Signer::ed25519(4), Signer::p256(5));
    let mut log = a.log;
    let ev = add_event(&log, &a.alice, &carol, "carol", Role::Member, None);
    log.append(&ev).unwrap();
    let ev = add_event(&log, &a.alice, &dave, "dave", Role::Admin, None);
    log.append(&ev).unwrap();
    Signers {
        log,
        keys: vec![
            (a.alice, "alice"),
            (a.bob, "bob"),
            (carol, "carol"),
            (dave, "dave"),
        ],
    }
}

/// Direction (b): what pycose should sign, and the claims Rust expects back.
fn python_jobs(s: &Signers) -> (Vec<Json>, BTreeMap<String, Vec<Claims>>) {
    let mut jobs = Vec::new();
    let mut expected = BTreeMap::new();
    for (signer, agent) in &s.keys {
        let key = signer.public();
        let alg = key.algorithm().name();
        let mut job = |name: String, c: Claims, batch: Option<Vec<String>>| {
            jobs.push(json!({
                "name": name, "alg": alg, "secret": hex(&signer.secret_bytes()),
                "cose_key": hex(&key.to_cose_key_bytes()), "claims": claims_json(&c),
                "batch": batch,
            }));
            expected.entry(name).or_insert_with(Vec::new).push(c);
        };
        for (i, c) in command_claims(agent, "dev-1", 9).into_iter().enumerate() {
            job(format!("{agent} single {i}"), c, None);
        }
        for n in BATCH_SIZES {
            let mut c = claims(agent, "x");
            c.aud = None;
            c.cti = [n as u8; 16];
            c.args = rich_args();
            // devs (size and root) is left for Python to compute from the
            // ids.
            job(format!("{agent} batch {n}"), c, Some(batch_ids(n)));
        }
    }
    (jobs, expected)
}

#[test]
fn independent_cose_implementation_agrees_both_ways() {
    let Some(python) = python() else { return };
    let a = Account::new();
    let cases = rust_made_cases(&a);
    let bad = rust_made_bad_cases(&a);
    let s = signers();
    let (jobs, expected) = python_jobs(&s);
    let all: Vec<&Json> = cases.iter().chain(&bad).collect();
    let answer = run_python(&python, &json!({ "verify": all, "sign": jobs }));

    // (a) Every Rust-made envelope passed every Python check, and Python
    // refused, as keybridge does, the batch sizes the signature does not
    // cover.
    let (bad_errors, errors): (Vec<&Json>, Vec<&Json>) = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|e| e.as_str().unwrap().starts_with("bad "));
    for (case, words) in bad
        .iter()
        .zip(["tree_size 3 is not the signed size", "devs size 6"])
    {
        let name = case["name"].as_str().unwrap();
        assert!(
            bad_errors
                .iter()
                .any(|e| e.as_str().unwrap().starts_with(name)
                    && e.as_str().unwrap().contains(words)),
            "Python did not refuse {name} ({words}): {bad_errors:?}"
        );
    }
    assert!(
        errors.is_empty(),
        "{} Python check(s) failed:\n{}",
        errors.len(),
        errors
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let batch_cases = 2 * BATCH_SIZES
        .iter()
        .map(|&n| Batch::new(batch_ids(n)).unwrap().len())
        .sum::<usize>();
    assert_eq!(cases.len(), 2 * 4 + batch_cases);
    assert_eq!(
        answer["verified"].as_array().unwrap().len(),
        cases.len(),
        "Python verified every Rust-made envelope, and none of the bad ones"
    );

    // (b) Every pycose-made envelope passes keybridge's verifier, carries
    // exactly the claims asked for, and is the very envelope keybridge
    // makes itself from the same claims and signature.
    let signed = answer["signed"].as_array().unwrap();
    assert_eq!(signed.len(), jobs.len());
    let (mut verified, mut identical, mut high_s) = (0, 0, 0);
    for job in signed {
        let name = job["name"].as_str().unwrap();
        let (signer, agent) = s
            .keys
            .iter()
            .find(|(_, agent)| name.starts_with(&format!("{agent} ")))
            .unwrap();
        let key = signer.public();
        let mut c = expected[name][0].clone();
        let envelopes = job["envelopes"].as_object().unwrap();
        let batch = c.aud.is_none().then(|| {
            let n: usize = name.rsplit(' ').next().unwrap().parse().unwrap();
            Batch::new(batch_ids(n)).unwrap()
        });
        if let Some(batch) = &batch {
            assert_eq!(
                job["root"],
                json!(hex(&batch.root())),
                "{name}: Merkle root"
            );
            assert_eq!(job["size"], json!(batch.len()), "{name}: batch size");
            assert_eq!(
                envelopes.len(),
                batch.len(),
                "{name}: one envelope per device"
            );
            c.devs = Some(batch.signed_root());
        }
        let body = c.body.is_some().then_some(&b"#!/bin/sh\necho hi\n"[..]);
        for (device, env) in envelopes {
            let env = unhex(env.as_str().unwrap()).unwrap();
            let v = Verifier::new(&s.log, device)
                .check(&env, body, NOW)
                .unwrap_or_else(|e| panic!("{name} on {device}: {e}"));
            assert_eq!(v.claims, c, "{name}");
            assert_eq!((v.kid, v.alg), (key.kid(), key.algorithm()), "{name}");
            assert_eq!(v.batch_size, batch.as_ref().map(|b| b.len() as u64));
            assert_eq!(v.claims.sub, *agent);
            verified += 1;

            // Rebuilt by keybridge around pycose's signature: the same bytes,
            // except that keybridge emits low-S where python-ecdsa may not.
            let py_sig = &env[env.len() - 64..];
            let u = UnsignedCommand::new(&c, &key).unwrap();
            let ours = match &batch {
                None => u.into_envelope(py_sig).unwrap(),
                Some(b) => {
                    let all = u.into_batch_envelopes(py_sig, b).unwrap();
                    all.into_iter().find(|(id, _)| id == device).unwrap().1
                }
            };
            if ours == env {
                identical += 1;
            } else {
                assert_eq!(key.algorithm(), Algorithm::Es256, "{name}: {device}");
                let n = env.len();
                assert_eq!(ours[..n - 32], env[..n - 32], "{name}: only s may differ");
                high_s += 1;
            }
            // Deterministic signatures (Ed25519; RFC 6979 for P-256 in both
            // python-ecdsa and RustCrypto) make keybridge's own envelope the
            // same, up to low-S.
            if batch.is_none() {
                let own = sign_command(signer, &c);
                assert_eq!(own, ours, "{name}: keybridge's own envelope");
            }
        }
    }
    let batch_envelopes = 4 * BATCH_SIZES
        .iter()
        .map(|&n| Batch::new(batch_ids(n)).unwrap().len())
        .sum::<usize>();
    assert_eq!(
        verified,
        4 * 4 + batch_envelopes,
        "Rust verified every pycose envelope"
    );
    assert_eq!(identical + high_s, verified);
    eprintln!(
        "cross-check: Python verified {} keybridge envelopes; keybridge verified {verified} pycose \
         envelopes ({identical} byte-identical to its own, {high_s} high-S ES256 from python-ecdsa)",
        cases.len()
    );
}
