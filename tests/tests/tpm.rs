//! TPM keys end to end: the real daemon and CLI, tss-esapi and tpm2-tss
//! against swtpm (one per test, on free loopback ports), `keybridge-device`
//! verifying what was signed, and tpm2-tools and openssl's tpm2 provider
//! reading what keybridge made (and the other way round).

use keybridge_tests::swtpm::Swtpm;
use keybridge_tests::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Output;

const NOW: i64 = 1_800_000_000;
const PIN: &str = "tpm-pin-1234";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A daemon that reaches `tpm` through `TPM2TOOLS_TCTI`.
fn bridge(tpm: &Swtpm) -> Bridge {
    let tcti = PathBuf::from(tpm.tcti());
    Bridge::start_with_env(NOW, None, &[("TPM2TOOLS_TCTI", &tcti)])
}

/// `keys create --backend tpm` with `extra` arguments; stdin is the PIN.
fn create(b: &Bridge, label: &str, extra: &[&str], pin: &str) -> Output {
    let mut args = vec![
        "--json",
        "keys",
        "create",
        "--backend",
        "tpm",
        "--account",
        "acme",
        "--agent",
        label,
        "--label",
        label,
        "--secret-stdin",
    ];
    args.extend_from_slice(extra);
    b.cli(&args, Some(pin))
}

fn created(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Creates a TPM key with the test PIN; its kid.
fn new_kid(b: &Bridge, label: &str, extra: &[&str]) -> String {
    created(&create(b, label, extra, PIN))["kid"]
        .as_str()
        .expect("a kid")
        .to_owned()
}

fn unlock(b: &Bridge, key: &str, extra: &[&str], pin: &str) -> Output {
    let mut args = vec!["unlock", key, "--secret-stdin"];
    args.extend_from_slice(extra);
    b.cli(&args, Some(pin))
}

fn sign(b: &Bridge, key: &str) -> Output {
    b.sign_for(key, "dev-1")
}

/// Signs for `dev-1` and has a device that trusts `key`'s account verify it.
fn sign_and_verify(b: &Bridge, key: &str) {
    b.sign_and_verify(key, NOW);
}

fn show(b: &Bridge, key: &str) -> Value {
    serde_json::from_str(&b.ok(&["--json", "keys", "show", key], None)).unwrap()
}

/// The public key keybridge recorded for `key` (its PEM export).
fn recorded_key(b: &Bridge, key: &str) -> keybridge_protocol::PublicKey {
    keybridge_protocol::PublicKey::from_spki_pem(
        show(b, key)["public_key"]["pem"]
            .as_str()
            .expect("a PEM export"),
    )
    .expect("a readable public key")
}

/// `openssl <command> -provider tpm2 -provider default <args>` against
/// `tpm`; its standard output.
fn openssl_tpm2(tpm: &Swtpm, command: &str, args: &[&str]) -> Vec<u8> {
    let (var, tcti) = tpm.openssl_env();
    let mut all = vec![command, "-provider", "tpm2", "-provider", "default"];
    all.extend_from_slice(args);
    tool_ok("openssl", &all, &[(var, tcti.as_str())])
}

/// A P-256 key made by tpm2-openssl in `tpm`, with `pin` as its password
/// (none: emptyAuth).
fn openssl_genkey(tpm: &Swtpm, out: &std::path::Path, pin: Option<&str>) {
    let auth = pin.map(|p| format!("user-auth:{p}"));
    let mut args = vec!["-algorithm", "EC", "-pkeyopt", "group:P-256"];
    if let Some(a) = &auth {
        args.extend(["-pkeyopt", a.as_str()]);
    }
    args.extend(["-out", out.to_str().expect("a UTF-8 path")]);
    openssl_tpm2(tpm, "genpkey", &args);
}

/// The key file keybridge keeps for `kid`.
fn key_file(b: &Bridge, kid: &str) -> PathBuf {
    let path = b
        .home()
        .join("state")
        .join("keys")
        .join(format!("{kid}.tss2.pem"));
    assert!(path.is_file(), "no key file {}", path.display());
    path
}

/// The dictionary-attack counter, from tpm2-tools.
fn lockout_counter(tpm: &Swtpm) -> u32 {
    let out = tpm.tpm2_ok("getcap", &["properties-variable"]);
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_else(|| panic!("no TPM2_PT_LOCKOUT_COUNTER in {out}"))
        .trim();
    u32::from_str_radix(value.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// How many session handles `tpm2_getcap <what>` lists.
fn session_handles(tpm: &Swtpm, what: &str) -> usize {
    tpm.tpm2_ok("getcap", &[what])
        .lines()
        .filter(|l| l.trim_start().starts_with("- 0x"))
        .count()
}

fn tool(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask deps installs it)"))
}

fn tool_ok(program: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let out = tool(program, args, env);
    assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
    out.stdout
}

#[test]
fn a_tpm_key_survives_a_daemon_restart_and_signs_what_a_device_accepts() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let mut b = bridge(&tpm);
    let c = created(&create(&b, "wk", &[], PIN));
    let kid = c["kid"].as_str().unwrap().to_owned();
    let file = std::fs::read_to_string(key_file(&b, &kid)).unwrap();
    assert!(
        file.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
        "{file}"
    );
    assert!(!file.contains(PIN));
    assert!(
        tpm.transient_handles().is_empty(),
        "creating left objects loaded"
    );
    b.restart();
    let r = unlock(&b, "wk", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "wk");
    // A short PIN is refused before the TPM is asked.
    let r = create(&b, "short", &[], "12345");
    assert!(!r.status.success());
    assert!(stderr(&r).contains("at least 6"), "{}", stderr(&r));
}

#[test]
fn wrong_pins_count_down_to_a_lockout_that_is_explained_and_never_overspent() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    tpm.set_lockout(3, 1000, 1000);
    let b = bridge(&tpm);
    created(&create(&b, "lo", &[], PIN));
    let r = unlock(&b, "lo", &[], "wrong-pin-1");
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(
        stderr(&r).contains('2'),
        "two attempts left: {}",
        stderr(&r)
    );
    assert_eq!(lockout_counter(&tpm), 1, "exactly one attempt spent");
    // keybridge's own backoff after a wrong secret: move the clock on.
    b.set_time(NOW + 10);
    let r = unlock(&b, "lo", &[], "wrong-pin-2");
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert_eq!(lockout_counter(&tpm), 2);
    b.set_time(NOW + 20);
    // The last attempt is not spent without consent, right PIN or not.
    let r = unlock(&b, "lo", &[], PIN);
    assert_eq!(r.status.code(), Some(5), "last_attempt: {}", stderr(&r));
    assert!(stderr(&r).contains("last"), "{}", stderr(&r));
    assert_eq!(lockout_counter(&tpm), 2, "nothing spent");
    b.set_time(NOW + 30);
    let r = unlock(&b, "lo", &["--spend-last-attempt"], "wrong-pin-3");
    assert_eq!(r.status.code(), Some(6), "pin_blocked: {}", stderr(&r));
    assert_eq!(lockout_counter(&tpm), 3);
    // Locked out: explained with the interval, and the right PIN is not
    // even tried.
    b.set_time(NOW + 100);
    let r = unlock(&b, "lo", &["--spend-last-attempt"], PIN);
    assert_eq!(r.status.code(), Some(6), "{}", stderr(&r));
    assert!(stderr(&r).contains("1000 s"), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("tpm2_dictionarylockout"),
        "{}",
        stderr(&r)
    );
    assert_eq!(lockout_counter(&tpm), 3, "no attempt while locked out");
    tpm.clear_lockout();
    b.set_time(NOW + 200);
    let r = unlock(&b, "lo", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    // Signed at the time the device believes.
    b.set_clocks(NOW, NOW + 200);
    sign_and_verify(&b, "lo");
}

#[test]
fn a_tpm_that_goes_away_gives_token_absent_and_the_cached_pin_works_when_it_returns() {
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let b = bridge(&tpm);
    created(&create(&b, "ga", &[], PIN));
    let r = unlock(&b, "ga", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "ga");
    tpm.kill();
    let r = sign(&b, "ga");
    assert_eq!(r.status.code(), Some(7), "token_absent: {}", stderr(&r));
    assert!(b.cli(&["status"], None).status.success(), "daemon up");
    tpm.restart();
    sign_and_verify(&b, "ga");
    assert_eq!(show(&b, "ga")["unlocked"], true);
}

#[test]
fn a_thousand_signatures_and_a_hundred_unlocks_leave_no_object_loaded() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let b = bridge(&tpm);
    created(&create(&b, "many", &[], PIN));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = b.http().connect().await.unwrap();
        for i in 0..100 {
            let (s, v) = c
                .request(
                    "POST",
                    "/v1/keys/many/unlock",
                    Some(&json!({"secret": PIN, "remember": "daily"})),
                )
                .await
                .unwrap();
            assert_eq!(s, 200, "unlock {i}: {v}");
            let (s, v) = c
                .request("POST", "/v1/keys/many/lock", None)
                .await
                .unwrap();
            assert_eq!(s, 200, "lock {i}: {v}");
        }
        let (s, v) = c
            .request(
                "POST",
                "/v1/keys/many/unlock",
                Some(&json!({"secret": PIN, "remember": "daily"})),
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
        for i in 0..1000 {
            let body = json!({"key": "many", "device": format!("dev-{i}"), "command": "remote-control", "args": {}, "ttl": 300});
            let (s, v) = c.request("POST", "/v1/sign", Some(&body)).await.unwrap();
            assert_eq!(s, 200, "signature {i}: {v}");
        }
        let (s, v) = c
            .request("POST", "/v1/keys/many/lock", None)
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
    });
    assert_eq!(
        tpm.transient_handles(),
        Vec::<u32>::new(),
        "objects left loaded"
    );
    assert_eq!(
        session_handles(&tpm, "handles-saved-session"),
        0,
        "no session is left behind"
    );
    assert_eq!(session_handles(&tpm, "handles-loaded-session"), 0);
    // Nothing the TSS libraries would complain about on the way.
    let log = b.daemon_log();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn openssl_reads_our_key_file_and_we_open_one_openssl_made() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let b = bridge(&tpm);
    let kid = new_kid(&b, "os", &[]);
    let file = key_file(&b, &kid);
    // openssl's tpm2 provider loads keybridge's key file; same public key.
    let pass = format!("pass:{PIN}");
    let path = file.to_str().unwrap();
    let pubout = openssl_tpm2(&tpm, "pkey", &["-in", path, "-passin", &pass, "-pubout"]);
    let theirs =
        keybridge_protocol::PublicKey::from_spki_pem(std::str::from_utf8(&pubout).unwrap())
            .unwrap();
    let ours = recorded_key(&b, "os");
    assert_eq!(theirs, ours, "openssl sees the key we recorded");
    // A signature openssl makes with it verifies with our verifier.
    let msg = b"signed by openssl through the tpm2 provider";
    let digest = <sha2::Sha256 as sha2::Digest>::digest(msg);
    let dir = tempfile::tempdir().unwrap();
    let dgst = dir.path().join("digest.bin");
    std::fs::write(&dgst, digest).unwrap();
    let der = openssl_tpm2(
        &tpm,
        "pkeyutl",
        &[
            "-sign",
            "-inkey",
            path,
            "-passin",
            &pass,
            "-in",
            dgst.to_str().unwrap(),
        ],
    );
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    ours.verify(
        keybridge_protocol::Algorithm::Es256,
        msg,
        &sig.normalize_s().to_bytes(),
    )
    .expect("openssl's TPM signature verifies with keybridge's verifier");

    // The other way round: a key tpm2-openssl made opens with --existing.
    let theirs_file = dir.path().join("theirs.pem");
    openssl_genkey(&tpm, &theirs_file, Some(PIN));
    let uri = format!("tpm:file={}", theirs_file.display());
    let c = created(&create(&b, "adopted", &["--existing", "--uri", &uri], PIN));
    assert_eq!(c["new"], true);
    // keybridge keeps its own copy: the original can go.
    std::fs::remove_file(&theirs_file).unwrap();
    let r = unlock(&b, "adopted", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "adopted");
    // A key without a password is refused, with the reason.
    let nopass = dir.path().join("nopass.pem");
    openssl_genkey(&tpm, &nopass, None);
    let uri = format!("tpm:file={}", nopass.display());
    let r = create(&b, "nopass", &["--existing", "--uri", &uri], PIN);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("emptyAuth"), "{}", stderr(&r));
}

#[test]
fn tpm2_tools_load_the_blobs_of_our_key_file_and_read_the_same_public_key() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let b = bridge(&tpm);
    let kid = new_kid(&b, "tt", &[]);
    let text = std::fs::read_to_string(key_file(&b, &kid)).unwrap();
    let file = keybridge_backends::tpm::keyfile::KeyFile::from_pem(&text).unwrap();
    assert!(!file.empty_auth);
    assert_eq!(file.parent, 0x4000_0001);
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::write(path("key.pub"), &file.public).unwrap();
    std::fs::write(path("key.priv"), &file.private).unwrap();
    // The owner primary from tpm2-openssl's template, rebuilt by tpm2-tools.
    tpm.tpm2_ok(
        "createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:null:aes128cfb",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
            "-c",
            &path("prim.ctx"),
        ],
    );
    tpm.tpm2_ok(
        "load",
        &[
            "-C",
            &path("prim.ctx"),
            "-u",
            &path("key.pub"),
            "-r",
            &path("key.priv"),
            "-c",
            &path("key.ctx"),
        ],
    );
    tpm.tpm2_ok(
        "readpublic",
        &["-c", &path("key.ctx"), "-f", "pem", "-o", &path("key.pem")],
    );
    let theirs = keybridge_protocol::PublicKey::from_spki_pem(
        &std::fs::read_to_string(path("key.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(theirs, recorded_key(&b, "tt"));
}

#[test]
fn a_persistent_key_is_collision_checked_and_opens_by_handle() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let b = bridge(&tpm);
    let uri = "tpm:handle=0x81000100";
    created(&create(&b, "pe", &["--persistent", "--uri", uri], PIN));
    tpm.tpm2_ok("readpublic", &["-c", "0x81000100"]);
    let r = create(&b, "pe2", &["--persistent", "--uri", uri], PIN);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("taken"), "{}", stderr(&r));
    // The key at the handle, adopted by a second daemon.
    let b2 = bridge(&tpm);
    created(&create(&b2, "byhandle", &["--existing", "--uri", uri], PIN));
    let r = unlock(&b2, "byhandle", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b2, "byhandle");
}

#[test]
fn a_key_under_a_persistent_parent_names_it_in_its_file_and_signs() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prim = dir.path().join("srk.ctx");
    // A storage key the administrator made persistent (as tpm2-tools does).
    tpm.tpm2_ok(
        "createprimary",
        &[
            "-C",
            "o",
            "-G",
            "ecc256:null:aes128cfb",
            "-c",
            prim.to_str().unwrap(),
        ],
    );
    tpm.tpm2_ok(
        "evictcontrol",
        &["-C", "o", "-c", prim.to_str().unwrap(), "0x81000001"],
    );
    let b = bridge(&tpm);
    let kid = new_kid(&b, "pp", &["--uri", "tpm:parent=0x81000001"]);
    let text = std::fs::read_to_string(key_file(&b, &kid)).unwrap();
    let file = keybridge_backends::tpm::keyfile::KeyFile::from_pem(&text).unwrap();
    assert_eq!(file.parent, 0x8100_0001);
    let r = unlock(&b, "pp", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "pp");
    // A parent that is not there is a clear error, nothing is made.
    let r = create(&b, "nop", &["--uri", "tpm:parent=0x81000002"], PIN);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("0x81000002"), "{}", stderr(&r));
}

#[test]
fn the_certification_verifies_and_a_tampered_one_is_refused() {
    let Some(tpm) = Swtpm::start_with_ek_cert() else {
        return;
    };
    let mut b = bridge(&tpm);
    let kid = new_kid(&b, "cert", &[]);
    // Without roots: the statement checks, and says what it does not prove.
    let out = b.ok(&["keys", "verify-attestation", "cert"], None);
    assert!(out.contains("trust on first use"), "{out}");
    // With the local CA that issued the EK certificate: the chain too.
    let ca = b.home().join("ek-ca.pem");
    std::fs::write(&ca, tpm.ek_ca_pem().expect("an EK CA")).unwrap();
    let out = b.ok(
        &[
            "keys",
            "verify-attestation",
            "cert",
            "--roots",
            ca.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.to_lowercase().contains("endorsement"), "{out}");
    // A foreign root fails.
    let foreign = b.home().join("foreign.pem");
    let foreign_key = b.home().join("foreign.key");
    tool_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=not the EK CA",
            "-days",
            "1",
            "-keyout",
            foreign_key.to_str().unwrap(),
            "-out",
            foreign.to_str().unwrap(),
        ],
        &[],
    );
    let r = b.cli(
        &[
            "keys",
            "verify-attestation",
            "cert",
            "--roots",
            foreign.to_str().unwrap(),
        ],
        None,
    );
    assert!(!r.status.success(), "a foreign root verified the EK");
    // The record's statement tampered with (one byte of the attest
    // structure): refused after a restart.
    let record = b
        .home()
        .join("state")
        .join("keys")
        .join(format!("{kid}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let attest = v["record"]["params"]["certification"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = b64.decode(attest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    v["record"]["params"]["certification"][0] = json!(b64.encode(bytes));
    std::fs::write(&record, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    b.restart();
    let r = b.cli(&["keys", "verify-attestation", "cert"], None);
    assert!(
        !r.status.success(),
        "a tampered statement verified: {}",
        String::from_utf8_lossy(&r.stdout)
    );
}
