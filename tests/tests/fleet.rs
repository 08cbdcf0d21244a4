//! Fleet-scale batches (`POST /v1/sign/batch`, `keybridge sign --devices`):
//! 100,000 devices streamed through the real daemon and CLI, every
//! envelope checked against its own id, devices verifying theirs with the
//! real `keybridge-device`; streams cut short; bad lists refused by line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::ciborium::value::Value as Cbor;
use keybridge_protocol::{BatchRoot, InclusionProof, KeyLog, ReplayCache, Verifier};
use keybridge_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOW: i64 = 1_800_000_000;

fn unlock(b: &Bridge, key: &str, mode: &str) {
    b.ok(
        &["unlock", key, "--remember", mode, "--secret-stdin"],
        Some(PASSPHRASE),
    );
}

/// `n` device ids, in an order that is not sorted.
fn fleet(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("host-{:06}", (i * 7919) % n))
        .collect()
}

fn write_list(path: &Path, ids: &[String]) {
    let mut text = ids.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn sign_args<'a>(list: &'a Path, out: &'a str) -> Vec<&'a str> {
    vec![
        "sign",
        "--key",
        "alice",
        "--devices",
        list.to_str().unwrap(),
        "--command",
        "run-script",
        "--arg",
        "user=ops",
        "--out",
        out,
    ]
}

fn audit(b: &Bridge) -> Vec<Value> {
    std::fs::read_to_string(b.home().join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["cmd"] != "key-log:genesis")
        .collect()
}

/// The four items of a COSE_Sign1 envelope (tag 18).
fn items(envelope: &[u8]) -> Vec<Cbor> {
    let v: Cbor = keybridge_protocol::ciborium::from_reader(envelope).unwrap();
    let Cbor::Tag(18, inner) = v else {
        panic!("not a COSE_Sign1")
    };
    let Cbor::Array(items) = *inner else {
        panic!("not an array")
    };
    assert_eq!(items.len(), 4);
    items
}

#[test]
fn a_100000_device_batch_streams_and_every_device_gets_its_own_verifying_envelope() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    // The account's genesis takes one signature's unlock…
    unlock(&b, "alice", "each-task");
    let log = b.account_log("acme", "alice");
    // …and the whole batch another one.
    unlock(&b, "alice", "each-task");
    let ids = fleet(100_000);
    let list = b.home().join("fleet.txt");
    write_list(&list, &ids);
    let out = b.home().join("fleet.jsonl");
    let mut args = sign_args(&list, out.to_str().unwrap());
    args.insert(0, "--json");
    let summary: Value = serde_json::from_str(&b.ok(&args, None)).unwrap();
    assert_eq!(summary["devices"], 100_000);
    // No temporary file is left beside the stream.
    let beside: Vec<String> = std::fs::read_dir(b.home())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let trailer: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(trailer["complete"], true);
    assert_eq!(trailer["size"], 100_000);
    assert_eq!(trailer["root"], summary["root"]);
    let signed = BatchRoot {
        size: 100_000,
        root: hex32(trailer["root"].as_str().unwrap()),
    };

    // One audit line, with the size and the root.
    let lines_of_audit = audit(&b);
    assert_eq!(lines_of_audit.len(), 1, "{lines_of_audit:?}");
    assert_eq!(lines_of_audit[0]["batch_size"], 100_000);
    assert_eq!(lines_of_audit[0]["batch_root"], trailer["root"]);
    assert_eq!(lines_of_audit[0]["cti"], trailer["audit"]["cti"]);
    // One backend signature: the each-task unlock is spent.
    let again = b.cli(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "x",
            "--command",
            "create-alert",
            "--out",
            b.home().join("x.cose").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(again.status.code(), Some(4), "{}", output_text(&again));

    // Every envelope: sorted ids, each once; the same signed bytes as an
    // envelope a device verified; its own proof, leading to the signed
    // root and to no other device's.
    let key_log = KeyLog::from_bytes(&std::fs::read(&log).unwrap()).unwrap();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut reference: Option<Vec<Cbor>> = None;
    for (i, expected) in sorted.iter().enumerate() {
        let line: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(line["device"], expected.as_str());
        let env = B64.decode(line["envelope"].as_str().unwrap()).unwrap();
        if i % 997 == 0 {
            // A full verification as the device for this id does it.
            let mut replay = ReplayCache::default();
            Verifier::new(&key_log, expected)
                .verify(&env, None, NOW, &mut replay)
                .unwrap_or_else(|e| panic!("{expected}: {e}"));
        }
        let mut it = items(&env);
        let Cbor::Map(unprotected) = &it[1] else {
            panic!("unprotected header")
        };
        let [(Cbor::Text(label), proof)] = unprotected.as_slice() else {
            panic!("one proof in the unprotected header")
        };
        assert_eq!(label, "kbp");
        let proof = InclusionProof::from_value(proof).unwrap();
        assert_eq!(proof.leaf_index, i as u64);
        assert!(proof.verify_signed(expected, &signed), "{expected}");
        assert!(!proof.verify_signed(&sorted[(i + 1) % sorted.len()], &signed));
        it[1] = Cbor::Null;
        match &reference {
            None => reference = Some(it),
            Some(r) => assert_eq!(r, &it, "{expected}: other signed bytes"),
        }
    }
    assert!(lines.next().is_some(), "the trailer");
    assert!(lines.next().is_none(), "nothing after the trailer");

    // keybridge-device itself, for a few devices.
    let verified = text.lines().step_by(24_989).take(5);
    for line in verified {
        let line: Value = serde_json::from_str(line).unwrap();
        let id = line["device"].as_str().unwrap();
        let state = b.home().join(format!("device-{id}"));
        trust_device(&state, &log, id);
        let file = b.home().join(format!("{id}.cose"));
        std::fs::write(
            &file,
            B64.decode(line["envelope"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let v = device(
            &state,
            &["verify", file.to_str().unwrap(), "--now", &NOW.to_string()],
        );
        assert!(v.status.success(), "{id}: {}", output_text(&v));
        let claims: Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(claims["batch_size"], 100_000);
        // Another device's envelope is refused by this one.
        let other = b.home().join("other.cose");
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        if first["device"] != id {
            std::fs::write(
                &other,
                B64.decode(first["envelope"].as_str().unwrap()).unwrap(),
            )
            .unwrap();
            let v = device(
                &state,
                &["verify", other.to_str().unwrap(), "--now", &NOW.to_string()],
            );
            assert!(!v.status.success(), "{id} took another device's envelope");
        }
    }
}

fn hex32(s: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn a_folder_and_standard_output_get_the_same_envelopes() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    let ids = fleet(2_000);
    let list = b.home().join("fleet.txt");
    write_list(&list, &ids);
    // A folder that already has a file: it stays, the envelopes join it.
    let dir = b.home().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let line = b.ok(&sign_args(&list, dir.to_str().unwrap()), None);
    assert!(line.contains("for 2000 devices"), "{line}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2_001);
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    // `--out -`: the stream on standard output, the summary on standard
    // error.
    let o = b.cli(&sign_args(&list, "-"), None);
    assert!(o.status.success(), "{}", output_text(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 2_001);
    assert!(String::from_utf8_lossy(&o.stderr).contains("for 2000 devices"));
    for l in text.lines().take(2_000).step_by(101) {
        let l: Value = serde_json::from_str(l).unwrap();
        let file = dir.join(format!("{}.cose", l["device"].as_str().unwrap()));
        // Same device, same command shape; another signature (another
        // command nonce), so compare what is signed for: the device.
        let env = std::fs::read(&file).unwrap();
        let (_, claims) = keybridge_protocol::command::inspect(&env).unwrap();
        assert_eq!(claims.devs.unwrap().size, 2_000);
    }
    assert_eq!(audit(&b).len(), 2);
}

/// A batch of `ids` by alice through keybridge's client, and the first
/// piece of its answer.
async fn start_batch(
    b: &Bridge,
    ids: &[String],
) -> (keybridge::client::BatchAnswer, hyper::body::Bytes) {
    let req = keybridge::wire::SignRequest {
        key: Some("alice".into()),
        command: "create-alert".into(),
        ..Default::default()
    };
    let mut body = ids.join("\n");
    body.push('\n');
    let mut answer = b
        .http()
        .client()
        .sign_batch(&req, body.into_bytes().into())
        .await
        .unwrap();
    let first = answer.chunk().await.unwrap().unwrap();
    (answer, first)
}

/// `keybridge sign --devices` with `out`, killed once its staging shows
/// envelopes arriving.
fn kill_midway(b: &Bridge, list: &Path, out: &Path, staging_in: &Path) {
    let mut cmd = Command::new(bin("keybridge"));
    cmd.env("KEYBRIDGE_HOME", b.home())
        .args(sign_args(list, out.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let name = out.file_name().unwrap().to_str().unwrap().to_owned();
    let started = poll_until(Duration::from_secs(60), || {
        std::fs::read_dir(staging_in).unwrap().any(|e| {
            let e = e.unwrap();
            let n = e.file_name().into_string().unwrap();
            n.starts_with(&format!(".{name}.partial-"))
                && (e.path().is_file() && e.metadata().unwrap().len() > 0
                    || e.path().is_dir() && std::fs::read_dir(e.path()).unwrap().next().is_some())
        })
    });
    assert!(started, "the batch never started arriving");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn a_stream_cut_midway_leaves_nothing_claimed_complete_and_the_daemon_serving() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    let ids = fleet(100_000);
    let list = b.home().join("fleet.txt");
    write_list(&list, &ids);
    let work = b.home().join("work");
    std::fs::create_dir(&work).unwrap();

    // The CLI killed while the envelopes arrive: no folder, no file.
    let dir = work.join("out");
    kill_midway(&b, &list, &dir, &work);
    assert!(!dir.exists(), "a folder claimed complete");
    let file = work.join("fleet.jsonl");
    kill_midway(&b, &list, &file, &work);
    assert!(!file.exists(), "a stream file claimed complete");

    // A reader that stops after the first chunk: the daemon stops making
    // envelopes and serves on.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answer, first) = rt.block_on(start_batch(&b, &ids));
    assert!(first.starts_with(br#"{"device":"host-000000","envelope":""#));
    drop(answer);
    assert!(
        poll_until(Duration::from_secs(20), || b
            .daemon_log()
            .contains("the client went away before the end of the batch")),
        "{}",
        b.daemon_log()
    );
    // `--out -` into a reader that closes early: the CLI fails.
    let cut = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' sign --key alice --devices '{}' --command create-alert --out - | head -c 100000 >/dev/null",
            bin("keybridge").display(),
            list.display()
        ))
        .env("KEYBRIDGE_HOME", b.home())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!cut.status.success(), "{}", output_text(&cut));

    // Still serving: status, and a whole batch.
    b.ok(&["status"], None);
    let small = b.home().join("small.txt");
    write_list(&small, &fleet(10));
    let done = work.join("done.jsonl");
    b.ok(&sign_args(&small, done.to_str().unwrap()), None);
    assert_eq!(std::fs::read_to_string(&done).unwrap().lines().count(), 11);
    // Every staging left by a killed CLI is named as such.
    for e in std::fs::read_dir(&work).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(n == "done.jsonl" || n.contains(".partial-"), "{n}");
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_are_served_meanwhile() {
    let mut b = Bridge::start(NOW);
    b.restart_with(&["--stream-stall", "2s"]);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    let ids = fleet(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut answer, _) = rt.block_on(start_batch(&b, &ids));
    // Not reading: the daemon gives up on this client after 2 s, and
    // serves everyone else in the meantime.
    let cut = poll_until(Duration::from_secs(20), || {
        b.ok(&["status"], None);
        b.daemon_log()
            .contains("the client stopped reading the batch: cut off")
    });
    assert!(cut, "{}", b.daemon_log());
    // Reading again: what was in flight, then the end without a trailer.
    let (ended, trailer) = rt.block_on(async {
        let mut last = Vec::new();
        loop {
            match answer.chunk().await {
                Ok(Some(c)) => {
                    last.extend_from_slice(&c);
                    let keep = last.len().saturating_sub(4096);
                    last.drain(..keep);
                }
                Ok(None) => return (false, String::from_utf8_lossy(&last).into_owned()),
                Err(_) => return (true, String::from_utf8_lossy(&last).into_owned()),
            }
        }
    });
    assert!(ended, "the stream was not cut");
    assert!(!trailer.contains("\"complete\""), "{trailer}");
    // One audit line: the signature was made and recorded; the envelopes
    // that did not go out are not claimed by anyone.
    assert_eq!(audit(&b).len(), 1);
    let out = b.home().join("after.jsonl");
    let list = b.home().join("few.txt");
    write_list(&list, &fleet(3));
    b.ok(&sign_args(&list, out.to_str().unwrap()), None);
}

/// `keybridge sign …` on a pseudo-terminal (util-linux `script`): what
/// the terminal showed.
fn on_a_terminal(b: &Bridge, args: &[&str]) -> String {
    let mut line = format!("'{}'", bin("keybridge").display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let o = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KEYBRIDGE_HOME", b.home())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_terminal_sees_progress_for_a_long_batch_only() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    let long = b.home().join("long.txt");
    write_list(&long, &fleet(150_000));
    let screen = on_a_terminal(
        &b,
        &sign_args(&long, b.home().join("l.jsonl").to_str().unwrap()),
    );
    assert!(screen.contains("/150,000 devices"), "{screen}");
    assert!(
        screen.contains("signed run-script for 150000 devices"),
        "{screen}"
    );
    let short = b.home().join("short.txt");
    write_list(&short, &fleet(10));
    let screen = on_a_terminal(
        &b,
        &sign_args(&short, b.home().join("s.jsonl").to_str().unwrap()),
    );
    assert!(!screen.contains("devices,"), "{screen}");
    assert!(
        screen.contains("signed run-script for 10 devices"),
        "{screen}"
    );
}

/// `POST /v1/sign/batch` with `body` as is: status and problem.
fn post_batch(b: &Bridge, body: Vec<u8>) -> (u16, Value) {
    let http = b.http();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = http.connect().await.unwrap();
            c.request_raw("POST", "/v1/sign/batch", body).await.unwrap()
        })
}

#[test]
fn bad_lists_are_refused_by_line_number_and_nothing_is_signed() {
    let b = Bridge::start_with_policy(NOW, Some("max_batch = 50\n"));
    b.passphrase_key("acme", "alice");
    // An each-task unlock: a refusal must not spend it.
    unlock(&b, "alice", "each-task");
    let head = r#"{"key":"alice","command":"create-alert"}"#;
    let body = |lines: &[&str]| {
        let mut s = format!("{head}\n");
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.into_bytes()
    };
    let long = "x".repeat(300);
    let cases: Vec<(Vec<u8>, u16, Vec<&str>)> = vec![
        (
            body(&["a", "b", "a", "c", "b", "a"]),
            400,
            vec![
                "device id \"a\" is on lines 2, 4, 7",
                "device id \"b\" is on lines 3, 6",
                "nothing was signed",
            ],
        ),
        (
            body(&["ok", "../etc/passwd", "", &long, "fine"]),
            400,
            vec![
                "line 3: device id \"../etc/passwd\"",
                "line 4: device id \"\"",
                "line 5: longer than a device id",
            ],
        ),
        (
            [body(&["a"]), b"\xff\xfe\n".to_vec()].concat(),
            400,
            vec!["line 3: not UTF-8"],
        ),
        (
            body(
                &(0..51)
                    .map(|i| format!("d{i}"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
            403,
            vec!["more than 50 devices", "max_batch"],
        ),
        (b"".to_vec(), 400, vec!["the body is empty"]),
        (format!("{head}\n").into_bytes(), 400, vec!["no device ids"]),
        (
            b"not json\na\n".to_vec(),
            400,
            vec!["line 1 is not a sign request"],
        ),
        (
            b"{\"key\":\"alice\",\"command\":\"create-alert\",\"device\":\"d\"}\na\n".to_vec(),
            400,
            vec!["line 1 names no devices"],
        ),
        (
            b"{\"key\":\"nobody\",\"command\":\"create-alert\"}\na\n".to_vec(),
            404,
            vec!["nobody"],
        ),
        (
            b"{\"key\":\"alice\",\"command\":\"format-disk\"}\na\n".to_vec(),
            400,
            vec!["unknown command"],
        ),
    ];
    for (i, (bytes, status, needles)) in cases.into_iter().enumerate() {
        let (got, problem) = post_batch(&b, bytes);
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert_eq!(got, status, "case {i}: {problem}");
        for n in needles {
            assert!(detail.contains(n), "case {i}: {n:?} not in {detail:?}");
        }
    }
    assert!(audit(&b).is_empty(), "nothing signed");
    // The unlock was not spent: a good batch signs.
    let list = b.home().join("list.txt");
    std::fs::write(&list, "a\nb\n").unwrap();
    b.ok(
        &sign_args(&list, b.home().join("ab.jsonl").to_str().unwrap()),
        None,
    );
    assert_eq!(audit(&b).len(), 1);
    // The CLI reports its file's own line numbers for the same mistakes.
    std::fs::write(&list, "# fleet\na\n\nb\na\nx/y\n").unwrap();
    let out = b.home().join("o");
    let r = b.cli(&sign_args(&list, out.to_str().unwrap()), None);
    let e = output_text(&r);
    assert!(!r.status.success());
    assert!(
        e.contains("\"a\" is on lines 2, 5") && e.contains("line 6: device id \"x/y\""),
        "{e}"
    );
    assert!(!out.exists());
}
