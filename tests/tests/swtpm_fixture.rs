//! The swtpm fixture itself: it starts a TPM that answers, keeps fixtures
//! apart, survives a kill with its persistent state, sets the dictionary
//! attack parameters, leaves no transient objects behind, and makes EK
//! certificates that chain to its local CA.

use keybridge_tests::swtpm::{self, Swtpm};
use std::process::Command;

/// The value of `name` in `tpm2_getcap properties-variable`, as a number.
fn variable(tpm: &Swtpm, name: &str) -> u32 {
    let out = tpm.tpm2_ok("getcap", &["properties-variable"]);
    let prefix = format!("{name}:");
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from:\n{out}"));
    let hex = value.trim().strip_prefix("0x").expect("a hex value");
    u32::from_str_radix(hex, 16).unwrap()
}

#[test]
fn a_fresh_swtpm_answers_as_an_ibm_tpm_2_0() {
    let Some(tpm) = Swtpm::start() else { return };
    assert!(tpm.tcti().starts_with("swtpm:host=127.0.0.1,port="));
    let fixed = tpm.tpm2_ok("getcap", &["properties-fixed"]);
    assert!(fixed.contains("TPM2_PT_FAMILY_INDICATOR"), "{fixed}");
    assert!(fixed.contains("value: \"2.0\""), "{fixed}");
    assert!(fixed.contains("TPM2_PT_MANUFACTURER"), "{fixed}");
    assert!(fixed.contains("value: \"IBM\""), "{fixed}");
    assert!(tpm.state_dir().join("tpm2-00.permall").exists());
    assert_eq!(tpm.ek_ca_pem(), None);
}

#[test]
fn two_fixtures_at_once_are_different_tpms_on_different_ports() {
    let (Some(a), Some(b)) = (Swtpm::start(), Swtpm::start()) else {
        return;
    };
    let ports = [a.port(), a.port() + 1, b.port(), b.port() + 1];
    assert!(
        ports[..2].iter().all(|p| !ports[2..].contains(p)),
        "{ports:?}"
    );
    assert_ne!(a.tcti(), b.tcti());
    assert_ne!(a.state_dir(), b.state_dir());
    a.tpm2_ok("createprimary", &["-C", "o", "-c", "prim.ctx"]);
    a.tpm2_ok("evictcontrol", &["-C", "o", "-c", "prim.ctx", "0x81000001"]);
    let in_a = a.tpm2_ok("getcap", &["handles-persistent"]);
    let in_b = b.tpm2_ok("getcap", &["handles-persistent"]);
    assert!(in_a.contains("0x81000001"), "{in_a}");
    assert!(!in_b.contains("0x81000001"), "{in_b}");
}

#[test]
fn a_killed_swtpm_restarts_on_the_same_tcti_with_its_persistent_objects() {
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let tcti = tpm.tcti();
    tpm.tpm2_ok("createprimary", &["-C", "o", "-c", "prim.ctx"]);
    tpm.tpm2_ok("evictcontrol", &["-C", "o", "-c", "prim.ctx", "0x81000001"]);
    let before = tpm.tpm2_ok("readpublic", &["-c", "0x81000001"]);

    let pid = tpm.pid().expect("running");
    tpm.kill();
    assert_eq!(tpm.pid(), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // The TPM is gone: tools fail (connection refused), and tpm2() does
    // not try to flush a TPM that is not there.
    let gone = tpm.tpm2("getcap", &["properties-fixed"]);
    assert!(!gone.status.success());

    tpm.restart();
    assert_eq!(tpm.tcti(), tcti);
    let after = tpm.tpm2_ok("readpublic", &["-c", "0x81000001"]);
    assert_eq!(before, after, "the same persistent key");
    // A restart also works while swtpm runs.
    tpm.restart();
    tpm.tpm2_ok("readpublic", &["-c", "0x81000001"]);
}

#[test]
fn set_lockout_sets_the_dictionary_attack_parameters_and_clear_lockout_resets_the_counter() {
    let Some(tpm) = Swtpm::start() else { return };
    // swtpm's defaults.
    assert_eq!(variable(&tpm, "TPM2_PT_MAX_AUTH_FAIL"), 3);
    assert_eq!(variable(&tpm, "TPM2_PT_LOCKOUT_INTERVAL"), 1000);

    tpm.set_lockout(5, 10, 20);
    assert_eq!(variable(&tpm, "TPM2_PT_MAX_AUTH_FAIL"), 5);
    assert_eq!(variable(&tpm, "TPM2_PT_LOCKOUT_INTERVAL"), 10);
    assert_eq!(variable(&tpm, "TPM2_PT_LOCKOUT_RECOVERY"), 20);

    // A wrong password on a DA-protected NV index counts as a failure.
    tpm.tpm2_ok(
        "nvdefine",
        &[
            "0x01500001",
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "authread|authwrite",
            "-p",
            "secret",
        ],
    );
    std::fs::write(tpm.work_dir().join("data"), b"12345678").unwrap();
    let wrong = tpm.tpm2(
        "nvwrite",
        &[
            "0x01500001",
            "-C",
            "0x01500001",
            "-P",
            "wrong",
            "-i",
            "data",
        ],
    );
    assert!(!wrong.status.success());
    assert_eq!(variable(&tpm, "TPM2_PT_LOCKOUT_COUNTER"), 1);

    tpm.clear_lockout();
    assert_eq!(variable(&tpm, "TPM2_PT_LOCKOUT_COUNTER"), 0);
    tpm.tpm2_ok(
        "nvwrite",
        &[
            "0x01500001",
            "-C",
            "0x01500001",
            "-P",
            "secret",
            "-i",
            "data",
        ],
    );
}

#[test]
fn tpm2_calls_leave_no_transient_objects_behind() {
    let Some(tpm) = Swtpm::start() else { return };
    assert_eq!(tpm.transient_handles(), Vec::<u32>::new());
    tpm.tpm2_ok("createprimary", &["-C", "o", "-G", "ecc", "-c", "prim.ctx"]);
    assert_eq!(tpm.transient_handles(), Vec::<u32>::new());
    tpm.tpm2_ok(
        "create",
        &[
            "-C", "prim.ctx", "-G", "ecc", "-u", "key.pub", "-r", "key.priv",
        ],
    );
    // Each load leaks the parent and the key; without the flush the third
    // one would find swtpm's 3 object slots full.
    for _ in 0..3 {
        tpm.tpm2_ok(
            "load",
            &[
                "-C", "prim.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx",
            ],
        );
        assert_eq!(tpm.transient_handles(), Vec::<u32>::new());
    }
    // A session is flushed too.
    tpm.tpm2_ok("startauthsession", &["-S", "session.ctx"]);
    let sessions = tpm.tpm2_ok("getcap", &["handles-saved-session"]);
    assert!(!sessions.contains("0x"), "{sessions}");
    let loaded = tpm.tpm2_ok("getcap", &["handles-loaded-session"]);
    assert!(!loaded.contains("0x"), "{loaded}");
}

#[test]
fn openssl_env_points_the_tpm2_provider_at_the_fixture() {
    let Some(tpm) = Swtpm::start() else { return };
    let (name, value) = tpm.openssl_env();
    assert_eq!(
        (name, value.as_str()),
        ("TPM2OPENSSL_TCTI", tpm.tcti().as_str())
    );
    let key = tpm.work_dir().join("key.pem");
    let out = Command::new("openssl")
        .args(["genpkey", "-provider", "tpm2", "-algorithm", "EC"])
        .args(["-pkeyopt", "group:P-256", "-out"])
        .arg(&key)
        .env(name, &value)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "{}\n--- swtpm log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        tpm.log()
    );
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"), "{pem}");
}

#[test]
fn ek_certificates_chain_to_the_fixtures_own_local_ca() {
    let Some(tpm) = Swtpm::start_with_ek_cert() else {
        return;
    };
    let ca_pem = tpm.ek_ca_pem().expect("a local CA");
    assert_eq!(
        ca_pem,
        format!(
            "{}{}",
            tpm.ek_issuing_ca_pem().unwrap(),
            tpm.ek_root_ca_pem().unwrap()
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, tpm.ek_root_ca_pem().unwrap()).unwrap();
    let issuer = dir.path().join("issuer.pem");
    std::fs::write(&issuer, tpm.ek_issuing_ca_pem().unwrap()).unwrap();

    let persistent = tpm.tpm2_ok("getcap", &["handles-persistent"]);
    for (index, handle, key_text) in [
        (
            swtpm::EK_CERT_ECC_NV,
            swtpm::EK_ECC_HANDLE,
            "NIST CURVE: P-384",
        ),
        (swtpm::EK_CERT_RSA_NV, swtpm::EK_RSA_HANDLE, "(2048 bit)"),
    ] {
        assert!(persistent.contains(&format!("{handle:#x}")), "{persistent}");
        let cert = dir.path().join(format!("{index:x}.der"));
        tpm.tpm2_ok(
            "nvread",
            &[
                &format!("{index:#x}"),
                "-C",
                "o",
                "-o",
                cert.to_str().unwrap(),
            ],
        );
        let text = Command::new("openssl")
            .args(["x509", "-inform", "der", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(key_text), "{text}");
        assert!(text.contains("Issuer: CN = swtpm-localca\n"), "{text}");

        for args in [
            vec!["-CAfile", ca.to_str().unwrap()],
            vec![
                "-CAfile",
                root.to_str().unwrap(),
                "-untrusted",
                issuer.to_str().unwrap(),
            ],
        ] {
            let out = Command::new("openssl")
                .arg("verify")
                .args(&args)
                .arg(&cert)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl verify {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let nv = tpm.tpm2_ok("getcap", &["handles-nv-index"]);
    assert!(nv.contains("0x1C08000"), "platform certificate: {nv}");
}

#[test]
fn dropping_the_fixture_stops_swtpm_and_removes_its_folder() {
    let Some(tpm) = Swtpm::start() else { return };
    let pid = tpm.pid().expect("running");
    let state = tpm.state_dir().to_owned();
    drop(tpm);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!state.exists());
}
