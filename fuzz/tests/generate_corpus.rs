//! The seed corpus generator: writes `corpus/TARGET/` from real objects
//! made by keybridge's own code with the fixture's keys (signed commands,
//! key logs, key requests, the device's state files, API bodies, key
//! references from the tests). Run once after a format change, then
//! commit the result:
//!
//! `cargo test --manifest-path fuzz/Cargo.toml --test generate_corpus -- --ignored`
//!
//! Each target's folder is replaced whole. Every seed is deterministic
//! (Ed25519 and RFC 6979 ECDSA signatures), under 64 KiB, named for what
//! it is.

use keybridge_backends::{BackendKind, KeyRecord};
use keybridge_fuzz::device::{FILES, Policy, Settings, State, pristine};
use keybridge_fuzz::fixture::{
    self, ACCOUNT, BATCH_DEVICES, DEVICE, NOW, Signer, add_event, claims, request,
};
use keybridge_protocol::cbor;
use keybridge_protocol::log::RequestEvidence;
use keybridge_protocol::{KeyLog, Op, ReplayCache, Role, Verifier};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Largest seed.
const MAX_SEED: usize = 64 * 1024;

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    /// The folder of `target`, emptied.
    fn new(target: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        Seeds { dir, count: 0 }
    }

    fn add(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        assert!(bytes.len() < MAX_SEED, "{name}: {} bytes", bytes.len());
        let path = self.dir.join(name);
        assert!(!path.exists(), "{name} twice");
        std::fs::write(&path, bytes).expect("seed");
        self.count += 1;
    }
}

/// The same ES256 envelope with the other S (n − s): valid too.
fn high_s_twin(envelope: &[u8]) -> Vec<u8> {
    let (head, sig) = envelope.split_at(envelope.len() - 64);
    let sig = p256::ecdsa::Signature::from_slice(sig).expect("r || s");
    let (r, s) = sig.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -*s).expect("n - s");
    [head, &twin.to_bytes()[..]].concat()
}

#[test]
#[ignore = "writes the seed corpus: run by hand"]
fn generate_seed_corpus() {
    envelope_verify();
    batch_proof();
    let logs = key_log();
    key_request();
    public_key();
    bridge_requests();
    key_uri();
    device_state(&logs);
}

fn envelope_verify() {
    let f = fixture::fixture();
    let mut s = Seeds::new("envelope_verify");
    let names = [
        "cmd-alice-args",
        "cmd-bob-es256",
        "cmd-carol",
        "cmd-alice-body",
        "cmd-time-sync",
        "cmd-batch-dev-1",
    ];
    assert_eq!(names.len(), f.envelopes.len());
    for (name, env) in names.iter().zip(&f.envelopes) {
        s.add(&format!("{name}.cose"), env);
    }
    for (id, env) in f
        .batch_envelopes
        .iter()
        .filter(|(id, _)| id != DEVICE)
        .take(2)
    {
        s.add(&format!("cmd-batch-{id}.cose"), env);
    }
    s.add("cmd-bob-high-s.cose", high_s_twin(&f.envelopes[1]));
    s.add(
        "cmd-wrong-device.cose",
        f.alice
            .command(&claims("alice", Some("dev-2"), "remote-control", 0x50)),
    );
    let mut c = claims("alice", Some(DEVICE), "create-group", 0x51);
    (c.nbf, c.iat, c.exp) = (NOW - 4000, NOW - 4000, NOW - 3700);
    s.add("cmd-expired.cose", f.alice.command(&c));
    let mut c = claims("alice", Some(DEVICE), "run-script", 0x52);
    c.iss = "other".into();
    s.add("cmd-other-account.cose", f.alice.command(&c));
    s.add(
        "cmd-wrong-agent.cose",
        f.bob
            .command(&claims("alice", Some(DEVICE), "run-script", 0x53)),
    );
    s.add(
        "cmd-unknown-key.cose",
        Signer::p256(5).command(&claims("bob", Some(DEVICE), "run-script", 0x54)),
    );
    s.add("not-a-command-log-event.cose", f.log.events()[1].bytes());
    s.add("not-a-command-key-request.cose", &f.requests[0]);
    s.add("empty", b"");
}

fn batch_proof() {
    let f = fixture::fixture();
    let mut s = Seeds::new("batch_proof");
    for i in 0..f.batch.len() {
        s.add(
            &format!("proof-{}-of-{}.cbor", i, f.batch.len()),
            cbor::encode(&mut f.batch.proof(i).to_value()),
        );
    }
    s.add(
        "batch-root.cbor",
        cbor::encode(&mut f.batch.signed_root().to_value()),
    );
    s.add("ids-fixture.txt", BATCH_DEVICES.join("\n"));
    s.add(
        "ids-crlf-repeated-invalid.txt",
        "dev-1\r\ndev-0\r\ndev-1\r\nbad/id\r\n\r\n..\r\ngerät-ü\r\nZebra 2\r\n...\n",
    );
    let many: Vec<String> = (0..100).rev().map(|i| format!("dev-{i:03}")).collect();
    s.add("ids-100-reversed.txt", many.join("\n") + "\n");
    s.add("ids-one.txt", "only-one");
    s.add("ids-long.txt", "x".repeat(256) + "\n" + &"y".repeat(257));
}

/// The fixture's log extended by every kind of event; returns the logs
/// after each event (the fixture's first).
fn key_log() -> Vec<(String, KeyLog)> {
    let f = fixture::fixture();
    let mut s = Seeds::new("key_log");
    let erin = Signer::ed25519(6);
    let mallory = Signer::ed25519(7);
    let frank = Signer::ed25519(8);
    let new_recovery = Signer::ed25519(9);
    let dave = Signer::p256(5);
    let mut log = f.log.clone();
    let mut logs = vec![("fixture".to_owned(), log.clone())];
    let mut step = |log: &mut KeyLog, name: &str, event: Vec<u8>| {
        log.append(&event).unwrap_or_else(|e| panic!("{name}: {e}"));
        logs.push((name.to_owned(), log.clone()));
    };
    let next = |log: &KeyLog, signer: &Signer, op: Op, dt: i64| {
        signer.finish(log.next_event(NOW - 600 + dt, &op, &signer.public()))
    };

    let req = request(&erin, "erin", Role::Admin, None, None);
    let e = add_event(&log, &f.alice, &erin, "erin", Role::Admin, req, None);
    step(&mut log, "add-admin", e);
    let e = next(&log, &f.alice, Op::Threshold { k: 2 }, 1);
    step(&mut log, "threshold-2", e);
    let change = Op::Threshold { k: 1 };
    assert!(log.needs_quorum(&change));
    let e = next(
        &log,
        &f.alice,
        Op::Propose {
            change: Box::new(change),
        },
        2,
    );
    step(&mut log, "propose", e);
    let proposal = log.len() - 1;
    let e = next(&log, &erin, Op::Confirm { proposal }, 3);
    step(&mut log, "confirm", e);
    let rejected = request(&mallory, "mallory", Role::Member, None, None);
    let e = next(
        &log,
        &f.alice,
        Op::Reject {
            req: Sha256::digest(&rejected).into(),
            reason: "unknown person".into(),
        },
        4,
    );
    step(&mut log, "reject", e);
    let req = request(&dave, "bob", Role::Member, Some(f.bob.public().kid()), None);
    let e = add_event(
        &log,
        &f.alice,
        &dave,
        "bob",
        Role::Member,
        req,
        Some(f.bob.public().kid()),
    );
    step(&mut log, "rotate", e);
    let e = next(
        &log,
        &f.alice,
        Op::Revoke {
            kid: f.carol.public().kid(),
        },
        5,
    );
    step(&mut log, "revoke", e);
    let e = next(
        &log,
        &f.recovery,
        Op::Reset {
            key: frank.public(),
            agent: "frank".into(),
            recovery: new_recovery.public(),
        },
        6,
    );
    step(&mut log, "reset", e);

    let genesis = f.log.events()[0].bytes();
    s.add("genesis.cbor", genesis);
    let base = f.log.events().len();
    for (i, (name, l)) in logs.iter().enumerate() {
        s.add(&format!("log-{i:02}-{name}.cbor"), l.to_bytes());
        if i > 0 {
            let event = l.events().last().expect("an event");
            s.add(&format!("event-{i:02}-{name}.cbor"), event.bytes());
        }
    }
    // The new events alone, after the fixture's log.
    let last = &logs.last().expect("logs").1;
    let rest: Vec<u8> = last.events()[base..]
        .iter()
        .flat_map(|e| e.bytes().to_vec())
        .collect();
    s.add("after-fixture-all.cbor", rest);
    // A fork: another genesis.
    let other = Signer::ed25519(11).finish(KeyLog::genesis(
        ACCOUNT,
        NOW,
        &Signer::ed25519(11).public(),
        "zed",
        &f.recovery.public(),
    ));
    s.add("fork-genesis.cbor", other);
    logs
}

fn key_request() {
    let f = fixture::fixture();
    let mut s = Seeds::new("key_request");
    for (name, req) in [
        "bob",
        "carol-evidence",
        "dave-rotates-bob",
        "alice-other-account",
    ]
    .iter()
    .zip(&f.requests)
    {
        s.add(&format!("request-{name}.cose"), req);
    }
    s.add("request-bob-high-s.cose", high_s_twin(&f.requests[0]));
    s.add("code.txt", "123456");
    s.add("not-a-request-command.cose", &f.envelopes[0]);
}

/// A YubiKey-shaped PIV attestation of `key` (touch always) under a test
/// CA, as a request's evidence, and the CA's root.
fn yubikey_evidence(key: &Signer) -> (RequestEvidence, Vec<u8>) {
    let Signer::P256(sk) = key else {
        panic!("a P-256 key")
    };
    let spki = keybridge_evidence::x509::test_pki::spki(sk.verifying_key());
    let (chain, root) =
        keybridge_evidence::x509::test_pki::yubikey_attestation(7, spki, 94_000_001, 1, 2);
    (
        RequestEvidence {
            kind: "yubikey-piv-attestation".into(),
            chain,
        },
        root,
    )
}

fn public_key() {
    let f = fixture::fixture();
    let mut s = Seeds::new("public_key");
    for (name, key) in [("alice", f.alice.public()), ("bob", f.bob.public())] {
        s.add(&format!("{name}.cose_key"), key.to_cose_key_bytes());
        s.add(&format!("{name}.pem"), key.to_spki_pem());
        s.add(
            &format!("{name}.pub"),
            key.to_openssh(&format!("{name}@acme")),
        );
        s.add(&format!("{name}.kid"), key.kid().to_hex());
        s.add(&format!("{name}.raw"), key.raw_bytes());
    }
    let Signer::P256(bob) = &f.bob else {
        panic!("bob is P-256")
    };
    s.add(
        "bob-compressed.sec1",
        bob.verifying_key().to_sec1_point(true).as_bytes(),
    );
    let msg = b"a message";
    s.add(
        "message-and-bad-signature.bin",
        [&msg[..], &[0x5a; 64][..]].concat(),
    );
}

fn bridge_requests() {
    let mut s = Seeds::new("bridge_requests");
    let bodies: [(&str, &str); 30] = [
        (
            "sign-by-key",
            r#"{"key":"alice","device":"dev-1","command":"run-script","args":{"path":"/opt/x.sh","retries":3,"env":{"A":true},"list":[1,"two"]},"ttl":300}"#,
        ),
        (
            "sign-by-agent",
            r#"{"agent":"alice","account":"acme","command":"create-alert","device":"d","body_sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
        ),
        (
            "sign-batch",
            r#"{"key":"alice","devices":["dev-1","dev-2","dev-1"],"command":"x-reboot"}"#,
        ),
        (
            "sign-duplicate-arg",
            r#"{"key":"alice","device":"d","command":"run-script","args":{"user":"alice","user":"root"}}"#,
        ),
        (
            "sign-float-arg",
            r#"{"key":"alice","device":"d","command":"run-script","args":{"f":1.5,"n":null}}"#,
        ),
        (
            "create-key-passphrase",
            r#"{"backend":"passphrase","account":"acme","agent":"alice","label":"alice-pass","remember":"daily","secret":"correct horse battery staple"}"#,
        ),
        (
            "create-key-pkcs11",
            r#"{"backend":"pkcs11","account":"acme","agent":"bob","uri":"pkcs11:token=kb;object=bob?module-path=/usr/lib/softhsm/libsofthsm2.so","alg":"p256","secret":"1234","existing":false}"#,
        ),
        (
            "create-key-yubikey",
            r#"{"backend":"yubikey","account":"acme","agent":"carol","uri":"yubikey:serial=12345678;slot=9c","pin_policy":"once","touch_policy":"cached","overwrite":true,"management_key":"010203040506070801020304050607080102030405060708","default_management_key":false,"spend_last_attempt":false}"#,
        ),
        (
            "create-key-tpm",
            r#"{"backend":"tpm","account":"acme","agent":"dave","uri":"tpm:handle=0x81000101","persistent":true}"#,
        ),
        (
            "unlock",
            r#"{"secret":"1234","remember":"each-task","spend_last_attempt":true}"#,
        ),
        (
            "account-init",
            r#"{"key":"alice","recovery_key":"a301012006215820"}"#,
        ),
        (
            "make-request",
            r#"{"role":"admin","replaces":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","ak_certificate":"MIIB"}"#,
        ),
        (
            "approve",
            r#"{"key":"alice","log":"2IRY","request":"2IRY","code":"123456"}"#,
        ),
        (
            "reject",
            r#"{"key":"alice","log":"2IRY","request":"2IRY","reason":"who is this"}"#,
        ),
        (
            "revoke",
            r#"{"key":"alice","log":"2IRY","kid":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#,
        ),
        ("threshold", r#"{"key":"alice","log":"2IRY","k":2}"#),
        ("pair", r#"{"origin":"https://Console.Example:8443"}"#),
        ("pair-loopback", r#"{"origin":"http://[::1]:3000"}"#),
        (
            "answer-signed-single",
            r#"{"kid":"cd","envelope":"AA==","backend":"passphrase","label":"alice-pass","fallback":true,"skipped":[{"kid":"ab","backend":"pkcs11","why":"not there"}]}"#,
        ),
        (
            "answer-signed-batch",
            r#"{"kid":"cd","root":"ef","envelopes":{"d1":"AA=="},"fallback":false}"#,
        ),
        (
            "answer-problem",
            r#"{"type":"urn:keybridge:problem:locked","title":"Locked","status":423,"code":"locked","detail":"unlock it","retries_left":2,"kid":"ab"}"#,
        ),
        (
            "answer-key-view",
            r#"{"kid":"ab","label":null,"backend":"pkcs11","uri":"pkcs11:token=t","alg":"p256","account":"acme","agent":"bob","created":1800000000,"remember":"weekly","unlocked":true,"unlocked_mode":"weekly","unlocked_until":1800604800,"touch_pending":false,"login_each_signature":true,"public_key":{"cose":"a4","pem":"-----BEGIN PUBLIC KEY-----","ssh":"ecdsa-sha2-nistp256 AAAA"},"params":{"kdf":{"m":65536,"t":3,"p":1,"x":1.5e3}},"evidence":{"kind":"yubikey-piv-attestation","chain":["MIIB"]}}"#,
        ),
        (
            "answer-status",
            r#"{"version":"0.1.0","pid":42,"socket":"/run/user/1000/keybridge.sock","started":1,"now":2,"audit_log":"/a","policy":{"max_ttl":3600,"allowed":["daily"]},"keys":[]}"#,
        ),
        (
            "answer-lock-state",
            r#"{"kid":"ab","unlocked":true,"mode":"daily","until":1800086400}"#,
        ),
        (
            "answer-account-log",
            r#"{"account":"acme","log":"2IRY","head":"00","recovery_kid":"ab"}"#,
        ),
        (
            "answer-made-request",
            r#"{"kid":"ab","account":"acme","agent":"bob","role":"member","replaces":"cd","evidence":"tpm2-certify","code":"123456","request":"2IRY"}"#,
        ),
        (
            "answer-appended",
            r#"{"op":"propose","seq":5,"applied":false,"approvals":1,"threshold":2,"kid":"ab","event":"2IRY","log":"2IRY","head":"00","prev_head":"11"}"#,
        ),
        (
            "answer-pairing",
            r#"{"id":"p1","origin":"https://console.example","created":1,"token":"t0k3n"}"#,
        ),
        (
            "answer-batch-line",
            r#"{"device":"dev-0001","envelope":"0oRYH6MB"}"#,
        ),
        (
            "answer-batch-trailer",
            r#"{"complete":true,"size":2,"root":"ab","kid":"cd","audit":{"time":1800000000,"cti":"ef"},"backend":"yubikey","fallback":false}"#,
        ),
    ];
    for (name, body) in bodies {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.add(&format!("{name}.json"), body);
    }
    s.add(
        "batch-body.ndjson",
        "{\"key\":\"alice\",\"command\":\"run-script\",\"args\":{\"n\":1},\"ttl\":300}\ndev-0002\r\ndev-0001\ndev-0003",
    );
    s.add(
        "batch-body-problems.ndjson",
        "{\"agent\":\"alice\",\"command\":\"x-reboot\"}\ndev-1\n\ndev-1\nbad/id\n..\n",
    );
}

fn key_uri() {
    let f = fixture::fixture();
    let mut s = Seeds::new("key_uri");
    // The references the tests use (tests/tests/pkcs11*.rs, the backends'
    // unit tests), good and bad.
    let uris = [
        "passphrase:account=ACME;agent=alice",
        "Passphrase:agent=alice;account=ACME",
        "passphrase:account=A%3BB%3Dc;agent=j%C3%B6rg%20k",
        "passphrase:account=acme.example;agent=alice@acme.example",
        "passphrase:account=ACME;agent=alice;agent=bob",
        "passphrase:account=A%00;agent=alice",
        "pkcs11:token=kb;object=alice?module-path=/usr/lib/softhsm/libsofthsm2.so",
        "PKCS11:x-v=1;object=alice;id=A;token=kb?module-path=/m.so",
        "pkcs11:token=t;pin-value=123456;object=o?module-path=/x/y.so&pin-value=654321&pin-source=file:/p",
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-source=file:/etc/token_pin",
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
        "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
        "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
        "pkcs11:token=t;object=Public%20key%20for%20Digital%20Signature;id=%02",
        "pkcs11:token=YubiKey%20PIV%20%2395000003;serial=95000003;id=%02?module-path=/usr/lib/libykcs11.so",
        "pkcs11:token=soft%20%232%20%C3%BC;object=s?module-path=/usr/lib/softhsm/libsofthsm2.so",
        "pkcs11:x-vendor=1;token=t?x-other=a/b&module-path=/m.so",
        "pkcs11:id=%00%ffA",
        "pkcs11:?pin-source=|/bin/echo%201234",
        "pkcs11:token=t?pin-value=1234",
        "pkcs11:token=careful;slot-id=1",
        "yubikey:serial=12345678;slot=9c",
        "yubikey:serial=12345678;slot=9C",
        "yubikey:slot=f9",
        "yubikey:slot=9c?pin-value=1",
        "tpm:handle=0x81000101",
        "tpm:file=/k.pem;handle=0x81000001",
        "tpm:parent=0x40000001;tcti=swtpm:host=127.0.0.1,port=2321",
        "tpm:file=/home/a%3Bb/key.pem",
        "tpm:tcti=%00",
        "ssh:key=1",
    ];
    for (i, uri) in uris.iter().enumerate() {
        let scheme = uri.split(':').next().unwrap_or("none").to_ascii_lowercase();
        s.add(&format!("uri-{i:02}-{scheme}.txt"), uri);
    }
    let records = [
        KeyRecord::new(
            "passphrase:account=acme;agent=alice".into(),
            BackendKind::Passphrase,
            &f.alice.public(),
            Some("alice-pass".into()),
            NOW,
            serde_json::json!({"kdf": "argon2id", "m": 65536, "t": 3, "p": 1}),
        ),
        KeyRecord::new(
            "pkcs11:token=kb;object=bob?module-path=/usr/lib/softhsm/libsofthsm2.so".into(),
            BackendKind::Pkcs11,
            &f.bob.public(),
            None,
            NOW,
            serde_json::json!({"id": "01"}),
        ),
        KeyRecord::new(
            "yubikey:serial=12345678;slot=9c".into(),
            BackendKind::Yubikey,
            &f.bob.public(),
            Some("yk".into()),
            NOW,
            serde_json::Value::Null,
        ),
    ];
    for (i, r) in records.iter().enumerate() {
        s.add(
            &format!("record-{i}-{}.json", r.backend),
            serde_json::to_vec_pretty(r).expect("JSON"),
        );
    }
}

/// The device's state files: the folder the target starts from, a folder
/// with a real hardware policy and attested key, and one whose log has
/// keys that left (records in `keys.idx`).
fn device_state(logs: &[(String, KeyLog)]) {
    let f = fixture::fixture();
    let mut s = Seeds::new("device_state");
    let selector = |name: &str| FILES.iter().position(|n| *n == name).expect("a file") as u8;
    let add = |s: &mut Seeds, label: &str, name: &str, bytes: &[u8]| {
        let sel = selector(name);
        s.add(
            &format!("{sel}-{label}-{name}"),
            [&[sel][..], bytes].concat(),
        );
    };

    let (files, extension) = pristine();
    for (name, bytes) in &files {
        add(&mut s, "fixture", name, bytes);
    }
    s.add("7-offered-extension.cbor", [&[7][..], &extension].concat());
    s.add("7-offered-same.cbor", [&[7][..], &f.log_bytes].concat());
    s.add(
        "7-offered-rollback.cbor",
        [&[7][..], f.log.events()[0].bytes()].concat(),
    );
    let (_, longest) = logs.last().expect("logs");
    s.add(
        "7-offered-every-event.cbor",
        [&[7][..], &longest.to_bytes()].concat(),
    );

    // A folder with a hardware policy over a real attestation.
    let tmp = tempfile::tempdir().expect("tmp");
    let yuki = Signer::p256(10);
    let (evidence, root) = yubikey_evidence(&yuki);
    let req = request(&yuki, "yuki", Role::Member, None, Some(&evidence));
    let mut log = f.log.clone();
    log.append(&add_event(
        &log,
        &f.alice,
        &yuki,
        "yuki",
        Role::Member,
        req,
        None,
    ))
    .expect("add yuki");
    let state = State::new(tmp.path().join("attested"));
    let settings = Settings {
        device_id: DEVICE.into(),
        skew: 60,
    };
    state.init(&log, &settings).expect("init");
    let mut account = state.open(ACCOUNT).expect("open");
    let mut policy = Policy::default();
    policy
        .set("run-script", true, Some(vec![root.clone()]))
        .expect("policy");
    policy
        .set("x-reboot", false, None)
        .expect_err("no roots yet");
    policy
        .set("create-alert", false, Some(vec![root]))
        .expect("policy");
    let keys = account.keys().expect("keys");
    let mut hardware = account.hardware().expect("hardware");
    hardware.rejudge(&keys.view, &policy);
    account.save_policy(&policy, &hardware).expect("save");
    let cmd = yuki.command(&claims("yuki", Some(DEVICE), "run-script", 0x60));
    Verifier::new(&keys.view, DEVICE)
        .verify(&cmd, None, NOW, &mut account.replay)
        .expect("yuki's command");
    let mut c = claims("alice", Some(DEVICE), "time-sync", 0x61);
    (c.nbf, c.iat, c.exp) = (NOW - 7200, NOW - 7200, NOW - 6900);
    Verifier::new(&keys.view, DEVICE)
        .verify(&f.alice.command(&c), None, NOW, &mut account.replay)
        .expect("a time-sync");
    account.save_replay().expect("replay");
    drop(account);
    let dir = tmp.path().join("attested/accounts").join(ACCOUNT);
    for name in FILES {
        let bytes = std::fs::read(dir.join(name)).expect("a state file");
        add(&mut s, "attested", name, &bytes);
    }

    // A folder whose log has revocations, a rotation and a reset.
    let state = State::new(tmp.path().join("history"));
    state.init(longest, &settings).expect("init");
    let dir = tmp.path().join("history/accounts").join(ACCOUNT);
    for name in ["trust.cbor", "keys.idx", "log.cbor"] {
        let bytes = std::fs::read(dir.join(name)).expect("a state file");
        add(&mut s, "history", name, &bytes);
    }
    // The earlier replay cache form: a plain array.
    let plain = ReplayCache::default().to_bytes();
    add(&mut s, "empty", "replay.cbor", &plain);
    add(&mut s, "array", "replay.cbor", &[0x80]);
    add(
        &mut s,
        "minimal",
        "settings.json",
        br#"{"device_id":"dev-1"}"#,
    );
}
