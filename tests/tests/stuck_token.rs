//! A token that never answers: a TPM (swtpm) and a PKCS#11 module
//! (tpm2-pkcs11 on its own swtpm) stopped with SIGSTOP while the daemon
//! serves their keys and a passphrase key. Their requests give up after
//! the token deadline (3 s here, through the `--token-deadline` test
//! hook; 60 s by default) with `token_not_answering`, later ones are
//! refused at once, and everything else keeps flowing: the passphrase key
//! signs, `status` answers, grants still lapse on time. Once the tokens
//! answer again, their keys work.

use keybridge_tests::swtpm::Swtpm;
use keybridge_tests::tpm2_pkcs11::Tpm2Pkcs11;
use keybridge_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NOW: i64 = 1_800_000_000;
const TPM_PIN: &str = "tpm-pin-1234";
const P11_USER_PIN: &str = "user-pin-1234";
const P11_SO_PIN: &str = "so-pin-12345678";
const DEADLINE_SECS: u64 = 3;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A refusal because the token hangs: exit code 13, the reason said.
fn assert_not_answering(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(13), "{what}: {}", stderr(o));
    let err = stderr(o);
    assert!(
        err.contains(&format!("did not answer within {DEADLINE_SECS} s")),
        "{what}: {err}"
    );
    assert!(err.contains("nothing was done"), "{what}: {err}");
}

fn audit_lines(b: &Bridge) -> usize {
    let path = b.home().join("state/audit.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

fn unlocked(b: &Bridge, label: &str) -> bool {
    let v: Value = serde_json::from_str(&b.ok(&["--json", "status"], None)).unwrap();
    let key = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == label)
        .unwrap_or_else(|| panic!("{label} in {v:#}"));
    key["unlocked"].as_bool().expect("unlocked is a bool")
}

#[test]
fn a_hanging_tpm_and_pkcs11_module_give_up_in_time_while_other_keys_flow() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let Some((p11, token)) = Tpm2Pkcs11::with_token("stuck", P11_SO_PIN, P11_USER_PIN) else {
        return;
    };
    let tcti = PathBuf::from(tpm.tcti());
    let env: Vec<(String, PathBuf)> = p11
        .env()
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    let mut refs: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
    refs.push(("TPM2TOOLS_TCTI", &tcti));
    let mut b = Bridge::start_with_env(NOW, None, &refs);

    b.passphrase_key("acme", "alice");
    let o = b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "tpm",
            "--account",
            "acme",
            "--agent",
            "wk",
            "--label",
            "wk",
            "--secret-stdin",
        ],
        Some(TPM_PIN),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let uri = p11.token_uri(&token.label, "object=p11");
    let o = b.create_key("pkcs11", "p11", &uri, &[], P11_USER_PIN);
    assert!(o.status.success(), "{}\n{}", stderr(&o), b.daemon_log());

    b.restart_with(&["--token-deadline", &format!("{DEADLINE_SECS}s")]);
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    for (key, pin) in [("wk", TPM_PIN), ("p11", P11_USER_PIN)] {
        b.ok(
            &["unlock", key, "--remember", "daily", "--secret-stdin"],
            Some(pin),
        );
        let o = b.sign_for(key, "dev-1");
        assert!(o.status.success(), "{key}: {}", stderr(&o));
    }
    let signed_before = audit_lines(&b);
    assert_eq!(signed_before, 2);

    // Both tokens stop answering.
    let tpm_pid = tpm.pid().expect("swtpm runs");
    let p11_pid = p11.swtpm().and_then(Swtpm::pid).expect("swtpm runs");
    signal(tpm_pid, "-STOP");
    signal(p11_pid, "-STOP");

    let started = Instant::now();
    let (tpm_sign, p11_sign, passphrase_signs) = std::thread::scope(|s| {
        let t = s.spawn(|| b.sign_for("wk", "dev-2"));
        let p = s.spawn(|| b.sign_for("p11", "dev-2"));
        // Meanwhile the passphrase key signs, and status answers.
        let mut ok = 0;
        while !t.is_finished() || !p.is_finished() {
            let o = b.sign_for("alice", "dev-2");
            assert!(o.status.success(), "{}", stderr(&o));
            b.ok(&["status"], None);
            ok += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        (t.join().unwrap(), p.join().unwrap(), ok)
    });
    let waited = started.elapsed();
    assert_not_answering(&tpm_sign, "TPM sign");
    assert_not_answering(&p11_sign, "PKCS#11 sign");
    assert!(
        waited >= Duration::from_secs(DEADLINE_SECS),
        "gave up early: {waited:?}"
    );
    assert!(passphrase_signs >= 2, "{passphrase_signs}");

    // Still hanging: refused at once, not queued behind the stuck call.
    for key in ["wk", "p11"] {
        let t = Instant::now();
        let o = b.sign_for(key, "dev-3");
        assert_not_answering(&o, key);
        assert!(
            t.elapsed() < Duration::from_secs(DEADLINE_SECS),
            "{key} waited {:?}",
            t.elapsed()
        );
        let o = b.cli(
            &["unlock", key, "--remember", "daily", "--secret-stdin"],
            Some("a-wrong-pin-not-tried"),
        );
        assert_not_answering(&o, key);
    }
    // The API says so too: 504 with its code.
    let (status, body) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut conn = b.http().connect().await.unwrap();
            let req = serde_json::json!({
                "key": "wk", "command": "remote-control", "device": "dev-4",
            });
            conn.request("POST", "/v1/sign", Some(&req)).await.unwrap()
        });
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "token_not_answering", "{body}");

    // A grant still lapses on time: a day later the sweep locks alice
    // (and the stuck keys' grants too), within a couple of sweeps.
    assert!(unlocked(&b, "alice"));
    b.set_time(NOW + 25 * 3600);
    let swept = poll_until(Duration::from_secs(5), || !unlocked(&b, "alice"));
    assert!(swept, "{}", b.daemon_log());
    // `lock` of a hanging key answers (its lock runs when the token does).
    let t = Instant::now();
    b.ok(&["lock", "wk"], None);
    assert!(t.elapsed() < Duration::from_secs(2 * DEADLINE_SECS + 2));
    assert_eq!(
        audit_lines(&b),
        signed_before + passphrase_signs,
        "a line for every signature that left, none for the refused"
    );

    // The tokens answer again: their keys work after an unlock, and the
    // wrong PIN offered while they hung was never tried.
    signal(tpm_pid, "-CONT");
    signal(p11_pid, "-CONT");
    b.set_time(NOW);
    let back = poll_until(Duration::from_secs(30), || {
        b.cli(
            &["unlock", "wk", "--remember", "daily", "--secret-stdin"],
            Some(TPM_PIN),
        )
        .status
        .success()
    });
    assert!(back, "{}", b.daemon_log());
    let o = b.sign_for("wk", "dev-5");
    assert!(o.status.success(), "{}", stderr(&o));
    let back = poll_until(Duration::from_secs(30), || {
        b.cli(
            &["unlock", "p11", "--remember", "daily", "--secret-stdin"],
            Some(P11_USER_PIN),
        )
        .status
        .success()
    });
    assert!(back, "{}", b.daemon_log());
    let o = b.sign_for("p11", "dev-5");
    assert!(o.status.success(), "{}", stderr(&o));
    let pins = p11.pkcs11_tool(&["--token-label", "stuck", "-T"]);
    let listing = String::from_utf8_lossy(&pins.stdout);
    assert!(
        !listing.contains("user PIN count low"),
        "a PIN attempt was spent: {listing}"
    );
}

#[test]
fn a_card_that_stops_answering_is_given_up_on_while_the_passphrase_key_signs() {
    use keybridge_tests::vyubikey::CardConfig;
    let Some(card) = CardConfig::new(98_000_002).insert() else {
        return;
    };
    let mut b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let uri = format!("yubikey:serial={};slot=9c", card.serial());
    let o = b.create_yubikey_key("yuki", &uri, &["--default-management-key"], "123456");
    assert!(o.status.success(), "{}", stderr(&o));
    b.restart_with(&["--token-deadline", &format!("{DEADLINE_SECS}s")]);
    for (key, secret) in [("alice", PASSPHRASE), ("yuki", "123456")] {
        b.ok(
            &["unlock", key, "--remember", "daily", "--secret-stdin"],
            Some(secret),
        );
    }
    let o = b.sign_for("yuki", "dev-1");
    assert!(o.status.success(), "{}", stderr(&o));

    // The card now takes far longer than the deadline to sign.
    card.set_sign_time(Duration::from_secs(4 * DEADLINE_SECS));
    let (stuck, signed) = std::thread::scope(|s| {
        let t = s.spawn(|| b.sign_for("yuki", "dev-2"));
        let mut signed = 0;
        while !t.is_finished() {
            let o = b.sign_for("alice", "dev-2");
            assert!(o.status.success(), "{}", stderr(&o));
            signed += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        (t.join().unwrap(), signed)
    });
    assert_not_answering(&stuck, "card");
    assert!(signed >= 2, "{signed}");
    let o = b.sign_for("yuki", "dev-3");
    assert_not_answering(&o, "card, still busy");

    // It answers again: the key signs (its grant stayed).
    card.set_sign_time(Duration::ZERO);
    let back = poll_until(Duration::from_secs(30), || {
        b.sign_for("yuki", "dev-4").status.success()
    });
    assert!(back, "{}", b.daemon_log());
    b.sign_and_verify("yuki", NOW);
}
