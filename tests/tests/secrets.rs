//! Secrets leave no trace: a session with known passphrases — created,
//! unlocked (right and wrong), used to sign (one device, a batch), locked —
//! and then none of them is in the daemon's log, any answer, the audit
//! log, any state file, or the daemon's memory (read through
//! `/proc/PID/mem` after `lock`). The same for the PINs of a YubiKey (the
//! virtual card), a TPM key (swtpm) and a PKCS#11 key (tpm2-pkcs11), and
//! for the web console's path (a pairing token, a passphrase sent over the
//! loopback listener).

use keybridge_tests::*;
use serde_json::json;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

const NOW: i64 = 1_800_000_000;

/// Where `needle` occurs in the readable memory of process `pid`: the
/// mappings (from `/proc/PID/maps`) that hold it.
fn in_memory(pid: u32, needle: &[u8]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = vec![];
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let name = parts.nth(3).unwrap_or("[anonymous]");
        // Readable, and not the kernel's vsyscall page.
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            found.push(line.to_owned());
        }
    }
    found
}

/// Every file under `dir` whose bytes contain `needle`.
fn in_files(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(in_files(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn no_passphrase_is_left_in_logs_answers_files_or_the_daemons_memory_after_lock() {
    let mut b = Bridge::start(NOW);
    // Secrets no other part of the test or the daemon could contain by
    // chance.
    let first = "orchid-velvet-quarry-9183-secret";
    let second = "lantern-mosaic-thimble-4471-secret";
    let wrong = "wrong-pebble-saddle-2290-secret";
    let create = |label: &str, secret: &str| {
        let o = b.create_passphrase("acme", label, secret);
        assert!(o.status.success(), "{}", output_text(&o));
        output_text(&o)
    };
    let mut answers = vec![create("alice", first), create("bob", second)];
    let unlock = |label: &str, secret: &str, mode: &str| {
        b.cli(
            &["unlock", label, "--remember", mode, "--secret-stdin"],
            Some(secret),
        )
    };
    answers.push(output_text(&unlock("alice", first, "daily")));
    // Through the API too.
    let http = b.http();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = http.connect().await.unwrap();
        for (key, secret) in [("bob", second)] {
            let (_, v) = c
                .request(
                    "POST",
                    &format!("/v1/keys/{key}/unlock"),
                    Some(&json!({"secret": secret, "remember": "daily"})),
                )
                .await
                .unwrap();
            answers.push(v.to_string());
        }
    });
    let out = b.home().join("one.cose");
    answers.push(b.ok(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "d-1",
            "--command",
            "remote-control",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    ));
    let list = b.home().join("fleet.txt");
    std::fs::write(&list, "d-1\nd-2\nd-3\n").unwrap();
    answers.push(b.ok(
        &[
            "sign",
            "--key",
            "bob",
            "--devices",
            list.to_str().unwrap(),
            "--command",
            "create-alert",
            "--out",
            b.home().join("fleet.jsonl").to_str().unwrap(),
        ],
        None,
    ));
    // Wrong secrets, on the terminal path and the API (after the
    // signatures: a wrong one makes the next try wait).
    answers.push(output_text(&unlock("bob", wrong, "daily")));
    rt.block_on(async {
        let mut c = http.connect().await.unwrap();
        let (_, v) = c
            .request(
                "POST",
                "/v1/keys/alice/unlock",
                Some(&json!({"secret": wrong, "remember": "daily"})),
            )
            .await
            .unwrap();
        answers.push(v.to_string());
    });
    answers.push(b.ok(&["--json", "status"], None));
    answers.push(b.ok(&["--json", "keys", "list"], None));
    answers.push(b.ok(&["--json", "audit"], None));
    b.ok(&["lock", "alice"], None);
    b.ok(&["lock", "bob"], None);

    assert_no_trace(&mut b, &answers, &[first, second, wrong]);
    let pid = b.child().id();
    // The scan finds what is there: the daemon holds its socket's path.
    assert!(!in_memory(pid, b.socket().to_str().unwrap().as_bytes()).is_empty());
}

/// Asserts that none of `secrets` is in `answers`, the daemon's log, any
/// file under its home, or its memory.
fn assert_no_trace(b: &mut Bridge, answers: &[String], secrets: &[&str]) {
    let pid = b.child().id();
    // The daemon runs with glibc wiping what C code frees (it runs itself
    // again with these settings; glibc splits the variable in place).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let has = |what: &[u8]| environ.windows(what.len()).any(|w| w == what);
    assert!(
        has(b"GLIBC_TUNABLES=") && has(b"glibc.malloc.perturb=") && has(b"tcache_count=0"),
        "the daemon runs without the malloc settings"
    );
    for secret in secrets {
        let s = secret.as_bytes();
        for a in answers {
            assert!(!a.contains(secret), "{secret} in an answer: {a}");
        }
        assert!(
            !b.daemon_log().contains(secret),
            "{secret} in the daemon's log"
        );
        let files = in_files(b.home(), s);
        assert!(files.is_empty(), "{secret} in files: {files:?}");
        let memory = in_memory(pid, s);
        assert!(
            memory.is_empty(),
            "{secret} in the daemon's memory after lock: {memory:?}"
        );
    }
}

/// `unlock KEY --remember daily` with `secret` on stdin: what it printed.
fn unlock(b: &Bridge, key: &str, secret: &str) -> std::process::Output {
    b.cli(
        &["unlock", key, "--remember", "daily", "--secret-stdin"],
        Some(secret),
    )
}

/// The same through the API (the body carries the secret).
fn api_unlock(b: &Bridge, key: &str, secret: &str) -> String {
    let http = b.http();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = http.connect().await.unwrap();
        let (_, v) = c
            .request(
                "POST",
                &format!("/v1/keys/{key}/unlock"),
                Some(&json!({"secret": secret, "remember": "daily"})),
            )
            .await
            .unwrap();
        v.to_string()
    })
}

#[test]
fn no_pin_of_a_yubikey_tpm_or_pkcs11_key_is_left_after_lock() {
    use keybridge_tests::swtpm::Swtpm;
    use keybridge_tests::tpm2_pkcs11::Tpm2Pkcs11;
    use keybridge_tests::vyubikey::CardConfig;
    // PINs no other part of the session could contain by chance.
    let card_pin = "q7Zx3Kw9";
    let card_wrong = "m2Vb8Tr4";
    let tpm_pin = "tpm-ferrule-6613-secret";
    let tpm_wrong = "tpm-wrong-0427-secret";
    let p11_pin = "p11-gusset-5820-secret";
    let p11_wrong = "p11-wrong-3391-secret";
    let Some(card) = CardConfig::new(98_000_001).pin(card_pin).insert() else {
        return;
    };
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let Some((p11, token)) = Tpm2Pkcs11::with_token("secrets", "so-pin-77310-secret", p11_pin)
    else {
        return;
    };
    let tcti = std::path::PathBuf::from(tpm.tcti());
    let env: Vec<(String, std::path::PathBuf)> =
        p11.env().into_iter().map(|(k, v)| (k, v.into())).collect();
    let mut refs: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
    refs.push(("TPM2TOOLS_TCTI", &tcti));
    let mut b = Bridge::start_with_env(NOW, None, &refs);

    let mut answers = vec![];
    let mut created = |o: std::process::Output| {
        assert!(o.status.success(), "{}", output_text(&o));
        answers.push(output_text(&o));
    };
    let card_uri = format!("yubikey:serial={};slot=9c", card.serial());
    created(b.create_yubikey_key("yuki", &card_uri, &["--default-management-key"], card_pin));
    created(b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "tpm",
            "--account",
            "acme",
            "--agent",
            "tee",
            "--label",
            "tee",
            "--secret-stdin",
        ],
        Some(tpm_pin),
    ));
    let p11_uri = p11.token_uri(&token.label, "object=pk");
    created(b.create_key("pkcs11", "pk", &p11_uri, &[], p11_pin));

    for (key, pin, wrong) in [
        ("yuki", card_pin, card_wrong),
        ("tee", tpm_pin, tpm_wrong),
        ("pk", p11_pin, p11_wrong),
    ] {
        let o = unlock(&b, key, pin);
        assert!(o.status.success(), "{key}: {}", output_text(&o));
        answers.push(output_text(&o));
        let o = b.sign_for(key, "d-1");
        assert!(o.status.success(), "{key}: {}", output_text(&o));
        answers.push(output_text(&o));
        b.ok(&["lock", key], None);
        answers.push(api_unlock(&b, key, pin));
        let o = b.sign_for(key, "d-2");
        assert!(o.status.success(), "{key}: {}", output_text(&o));
        // One wrong PIN each (counters allow it), on both paths.
        let o = unlock(&b, key, wrong);
        assert!(!o.status.success(), "{key}");
        answers.push(output_text(&o));
        answers.push(b.ok(&["--json", "status"], None));
        b.ok(&["lock", key], None);
    }
    answers.push(b.ok(&["--json", "keys", "list"], None));
    answers.push(b.ok(&["--json", "audit"], None));
    assert_no_trace(
        &mut b,
        &answers,
        &[card_pin, card_wrong, tpm_pin, tpm_wrong, p11_pin, p11_wrong],
    );
}

#[test]
fn the_console_path_leaves_no_passphrase_or_pairing_token() {
    let origin = "https://console.example";
    let mut b = Bridge::start(NOW);
    let secret = "harbor-quince-lattice-5521-secret";
    let wrong = "wrong-tundra-bobbin-7730-secret";
    let o = b.create_passphrase("acme", "carol", secret);
    assert!(o.status.success(), "{}", output_text(&o));
    b.restart_with(&["--http", "127.0.0.1:0", "--allow-origin", origin]);
    let port: u16 = b
        .daemon_log()
        .lines()
        .find(|l| l.contains("console listener on loopback"))
        .and_then(|l| l.split("addr=127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the console port in the log");
    let (_, token) = b.pair(origin);
    let mut answers = vec![];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |path: &str, body: serde_json::Value| -> String {
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method("POST")
                .uri(path)
                .header("host", format!("127.0.0.1:{port}"))
                .header("origin", origin)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(hyper::body::Bytes::from(
                    body.to_string(),
                )))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            use http_body_util::BodyExt as _;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        })
    };
    answers.push(post(
        "/v1/keys/carol/unlock",
        json!({"secret": secret, "remember": "daily"}),
    ));
    let signed = post(
        "/v1/sign",
        json!({"key": "carol", "device": "d-1", "command": "remote-control"}),
    );
    assert!(signed.contains("envelope"), "{signed}");
    answers.push(signed);
    answers.push(post("/v1/keys/carol/lock", json!({})));
    answers.push(post(
        "/v1/keys/carol/unlock",
        json!({"secret": wrong, "remember": "daily"}),
    ));
    b.ok(&["lock", "carol"], None);
    assert_no_trace(&mut b, &answers, &[secret, wrong, &token]);
}

#[test]
fn debug_output_of_what_carries_a_secret_shows_none() {
    let secret = "debug-walnut-crevice-8842-secret";
    let key = "0102030405060708090a0b0c0d0e0f101112131415161718";
    let unlock: keybridge::wire::Unlock =
        serde_json::from_value(json!({"secret": secret, "remember": "daily"})).unwrap();
    let create: keybridge::wire::CreateKey = serde_json::from_value(json!({
        "backend": "yubikey", "account": "acme", "agent": "a",
        "secret": secret, "management_key": key,
    }))
    .unwrap();
    for shown in [
        format!("{unlock:?}"),
        format!("{unlock:#?}"),
        format!("{create:?}"),
        format!("{create:#?}"),
    ] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(key), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }
    // A key reference carrying a PIN: redacted in Debug and Display.
    let uri = format!("pkcs11:token=t;object=o?pin-value={secret}&module-path=/m.so");
    // Refused or taken, what comes back never shows it.
    let parsed = uri.parse::<keybridge_backends::KeyUri>();
    let shown = match &parsed {
        Ok(u) => format!("{u:?} {u:#?} {u}"),
        Err(e) => format!("{e:?} {e:#?} {e}"),
    };
    assert!(!shown.contains(secret), "{shown}");
    assert!(!keybridge_backends::redact_uri(&uri).contains(secret));
}
