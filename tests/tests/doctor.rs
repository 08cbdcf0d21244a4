//! `keybridge doctor` against machine states the tests set up: a stopped
//! daemon, pcscd missing, a bad policy file, a TPM node the user cannot
//! open, and a healthy daemon. Each problem is reported with its fix, and
//! the exit code says whether anything failed.

use keybridge_tests::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

const NOW: i64 = 1_800_000_000;

/// `keybridge doctor --json` with `home`, `env` and `args`.
fn doctor(home: &Path, env: &[(&str, &str)], args: &[&str]) -> (Output, Value) {
    let out = Command::new(bin("keybridge"))
        .args(["--json", "doctor"])
        .args(args)
        .env("KEYBRIDGE_HOME", home)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    (out, v)
}

/// The checks named `name`.
fn checks<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .collect()
}

/// The one check named `name`: its outcome, detail and fix.
fn one(v: &Value, name: &str) -> (String, String, String) {
    let c = checks(v, name);
    assert_eq!(c.len(), 1, "{name}: {v:#}");
    let s = |k: &str| c[0][k].as_str().unwrap_or("").to_owned();
    (s("outcome"), s("detail"), s("fix"))
}

/// The exit code agrees with the checks: 1 when one failed, else 0.
fn exit_agrees(out: &Output, v: &Value) {
    let failed = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["outcome"] == "fail");
    assert_eq!(out.status.code(), Some(i32::from(failed)), "{v:#}");
    assert_eq!(v["ok"], !failed);
}

#[test]
fn a_stopped_daemon_a_missing_pcscd_and_a_bad_policy_are_each_reported_with_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.toml");
    std::fs::write(&policy, "allowed_remember = [\"hourly\"]\n").unwrap();
    let (out, v) = doctor(
        home.path(),
        &[("PCSCLITE_CSOCK_NAME", "/nonexistent/pcscd.comm")],
        &[
            "--system-policy",
            policy.to_str().unwrap(),
            "--tpm-device",
            "/nonexistent/tpmrm0",
        ],
    );
    exit_agrees(&out, &v);
    assert_eq!(out.status.code(), Some(1));

    let (outcome, detail, fix) = one(&v, "daemon");
    assert_eq!(outcome, "fail", "{detail}");
    assert!(detail.contains("not running"), "{detail}");
    assert!(
        fix.contains("systemctl --user start keybridge.socket"),
        "{fix}"
    );

    let (outcome, detail, fix) = one(&v, "pcscd");
    assert_eq!(outcome, "fail", "{detail}");
    assert!(detail.contains("pcscd is not running"), "{detail}");
    assert!(fix.contains("pcscd.socket"), "{fix}");

    let (outcome, detail, fix) = one(&v, "policy");
    assert_eq!(outcome, "fail", "{detail}");
    assert!(detail.contains("policy.toml"), "{detail}");
    assert!(detail.contains("hourly"), "{detail}");
    assert!(fix.contains("never falls back"), "{fix}");

    let (outcome, detail, _) = one(&v, "tpm");
    assert_eq!(outcome, "skip", "{detail}");
    assert!(
        detail.contains("no TPM device /nonexistent/tpmrm0"),
        "{detail}"
    );

    // The human form: one line per check, the fixes under them.
    let human = Command::new(bin("keybridge"))
        .arg("doctor")
        .args(["--system-policy", policy.to_str().unwrap()])
        .env("KEYBRIDGE_HOME", home.path())
        .env("PCSCLITE_CSOCK_NAME", "/nonexistent/pcscd.comm")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("FAIL daemon"), "{text}");
    assert!(text.contains("fix: systemctl --user start"), "{text}");
    assert_eq!(human.status.code(), Some(1));
}

#[test]
fn a_tpm_node_the_user_cannot_open_names_the_group_to_join() {
    if rustix_uid() != 0 {
        assert!(!in_ci(), "CI runs as root; this test switches user");
        eprintln!("SKIP: needs root (setpriv)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A node of root's, mode 0660, group root: nobody is not in it.
    let node = home.path().join("tpmrm0");
    std::fs::write(&node, b"").unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o660)).unwrap();
    let cli = home.path().join("keybridge");
    std::fs::copy(bin("keybridge"), &cli).unwrap();
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&cli)
        .args(["--json", "doctor", "--tpm-device"])
        .arg(&node)
        .env("KEYBRIDGE_HOME", home.path().join("nobody"))
        .env("PCSCLITE_CSOCK_NAME", "/nonexistent/pcscd.comm")
        .output()
        .expect("setpriv (util-linux)");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    let (outcome, detail, fix) = one(&v, "tpm");
    assert_eq!(outcome, "fail", "{detail}");
    assert!(detail.contains("not accessible to you"), "{detail}");
    assert!(detail.contains("owner group root"), "{detail}");
    assert!(detail.contains("you are not in it"), "{detail}");
    assert!(fix.contains("sudo usermod -aG root $USER"), "{fix}");
    assert!(checks(&v, "lockout").is_empty(), "{v:#}");
    exit_agrees(&out, &v);
}

fn rustix_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_running_daemon_and_its_socket_pass() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let (out, v) = doctor(
        b.home(),
        &[],
        &[
            "--system-policy",
            b.system_policy().to_str().unwrap(),
            "--tpm-device",
            "/nonexistent/tpmrm0",
        ],
    );
    exit_agrees(&out, &v);
    let (outcome, detail, _) = one(&v, "daemon");
    assert_eq!(outcome, "ok", "{detail}");
    assert!(detail.contains("1 keys, 0 unlocked"), "{detail}");
    let (outcome, detail, _) = one(&v, "socket");
    assert_eq!(outcome, "ok", "{detail}");
    let (outcome, detail, _) = one(&v, "policy");
    assert_eq!(outcome, "ok", "{detail}");
    assert!(detail.contains("defaults"), "{detail}");
    // The socket opened up to others: a failure with its fix.
    std::fs::set_permissions(b.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let policy = b.system_policy().to_str().unwrap().to_owned();
    let (out, v) = doctor(
        b.home(),
        &[],
        &[
            "--system-policy",
            &policy,
            "--tpm-device",
            "/nonexistent/tpmrm0",
        ],
    );
    let (outcome, detail, fix) = one(&v, "socket");
    assert_eq!(outcome, "fail", "{detail}");
    assert!(detail.contains("mode 666"), "{detail}");
    assert!(fix.contains("remove"), "{fix}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_card_another_program_holds_is_named_and_the_yubikeys_are_listed() {
    let Some(card) = vyubikey::CardConfig::new(97_000_002).insert() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let reader = card.reader_name();
    let held_by_other = |v: &Value| {
        checks(v, "card")
            .iter()
            .any(|c| c["outcome"] == "warn" && c["detail"].as_str().unwrap().contains(&reader))
    };
    let hold = card.hold_exclusive().expect("exclusive hold");
    let (_, v) = doctor(home.path(), &[], &["--tpm-device", "/nonexistent/tpmrm0"]);
    assert!(held_by_other(&v), "{v:#}");
    let fix = checks(&v, "card")[0]["fix"].as_str().unwrap().to_owned();
    assert!(fix.contains("scdaemon"), "{fix}");
    drop(hold);
    let (_, v) = doctor(home.path(), &[], &["--tpm-device", "/nonexistent/tpmrm0"]);
    assert!(!held_by_other(&v), "{v:#}");
    // The card as pcscd shows it: serial and firmware.
    assert!(
        checks(&v, "yubikey").iter().any(|c| {
            c["outcome"] == "ok"
                && c["detail"]
                    .as_str()
                    .unwrap()
                    .contains("serial 97000002, YubiKey 5.4.3")
        }),
        "{v:#}"
    );
}
