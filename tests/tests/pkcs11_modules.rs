//! The PKCS#11 backend against modules nobody here wrote, on the hardware
//! they are for: Yubico's ykcs11 and OpenSC's PIV driver on the virtual
//! YubiKey (firmware 5.4, behind a pcscd of the test's own, so that nothing
//! else on the machine talks to the card meanwhile), and tpm2-pkcs11 on
//! swtpm behind tpm2-abrmd. Each key is signed with through the real
//! daemon and checked by `keybridge-device`. Serials 95_000_000 + n are this
//! file's.

use keybridge_tests::vyubikey::pcscd::PrivatePcscd;
use keybridge_tests::vyubikey::{CardConfig, INS_VERIFY, VirtualYubiKey};
use keybridge_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const NOW: i64 = 1_800_000_000;
const PIN: &str = "123456";
const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether `path` (from Debian package `package`) is installed; a SKIP
/// line if not, a panic under `CI=true`.
fn installed(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        !in_ci(),
        "{path} missing under CI (Debian package {package}; run cargo xtask deps)"
    );
    eprintln!("SKIP: {path} missing (Debian package {package}); run `cargo xtask deps`");
    false
}

/// VERIFYs that carried a PIN to `card` (an empty VERIFY only reads the
/// retry counter).
fn pins_sent(card: &VirtualYubiKey) -> usize {
    card.apdu_log()
        .iter()
        .filter(|a| a.ins == INS_VERIFY && !a.data.is_empty())
        .count()
}

/// Asserts the card got exactly `signatures` signatures, each right after
/// a VERIFY with the PIN (a context-specific login per signature), and no
/// other PIN.
fn one_pin_per_signature(card: &VirtualYubiKey, signatures: usize) {
    let log = card.apdu_log();
    let signs: Vec<usize> = (0..log.len()).filter(|&i| log[i].ins == 0x87).collect();
    assert_eq!(signs.len(), signatures, "{}", apdus(card));
    for &i in &signs {
        assert!(
            i > 0 && log[i - 1].ins == INS_VERIFY && !log[i - 1].data.is_empty(),
            "a signature without a PIN right before it: {}",
            apdus(card)
        );
    }
    assert_eq!(pins_sent(card), signatures, "{}", apdus(card));
}

/// The card's APDUs, for failure messages: instruction, P1, P2, data
/// length and status word.
fn apdus(card: &VirtualYubiKey) -> String {
    format!(
        "{:02x?}",
        card.apdu_log()
            .iter()
            .map(|a| (a.ins, a.p1, a.p2, a.data.len(), a.sw))
            .collect::<Vec<_>>()
    )
}

/// A virtual YubiKey 5.4 alone in a pcscd of this test's own, a daemon
/// that uses that pcscd, and a P-256 key made in slot 9c by
/// `yubico-piv-tool -a generate -s 9c` (PIN policy "always", a real
/// YubiKey's default for 9c), with a self-signed certificate (OpenSC shows
/// PIV keys through their certificates).
struct Piv {
    b: Bridge,
    card: VirtualYubiKey,
    socket: PathBuf,
    /// The public key yubico-piv-tool wrote (PEM).
    public_pem: PathBuf,
    _pcscd: PrivatePcscd,
}

impl Piv {
    fn start(serial: u32, module: &str, package: &str) -> Option<Piv> {
        if !installed(module, package) || !installed("/usr/bin/yubico-piv-tool", "yubico-piv-tool")
        {
            return None;
        }
        let pcscd = PrivatePcscd::start()?;
        let card = CardConfig::new(serial)
            .firmware(5, 4, 3)
            .insert_into(&pcscd);
        let (var, socket) = pcscd.env();
        let b = Bridge::start_with_env(NOW, None, &[(var, &socket)]);
        let public_pem = b.home().join("9c.pem");
        let cert_pem = b.home().join("9c-cert.pem");
        let mut piv = Piv {
            b,
            card,
            socket,
            public_pem,
            _pcscd: pcscd,
        };
        // The test process talks to the shared pcscd: wait until the card
        // answers in the private one.
        assert!(
            poll_until(Duration::from_secs(10), || piv
                .piv_tool(&["-a", "status"])
                .status
                .success()),
            "yubico-piv-tool never saw card {serial} in the private pcscd"
        );
        let public = piv.public_pem.to_str().unwrap().to_owned();
        piv.piv_ok(&[
            "-a",
            "generate",
            "-s",
            "9c",
            "-A",
            "ECCP256",
            "--pin-policy=always",
            "-o",
            &public,
        ]);
        // A certificate for the card's key, made with openssl (yubico-piv-tool
        // 2.2's selfsign-certificate fails with Debian's OpenSSL 3 before it
        // sends anything to the card). Nothing checks who signed it: OpenSC
        // reads the key and the token label from it.
        let cert = cert_pem.to_str().unwrap().to_owned();
        let home = piv.b.home().to_owned();
        let issuer = home.join("issuer.key");
        let csr = home.join("issuer.csr");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("running openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        openssl(&[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            &path(&issuer),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            &path(&issuer),
            "-subj",
            "/CN=keybridge test",
            "-out",
            &path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-signkey",
            &path(&issuer),
            "-force_pubkey",
            &public,
            "-days",
            "30",
            "-out",
            &cert,
        ]);
        piv.piv_ok(&["-a", "import-certificate", "-s", "9c", "-i", &cert]);
        piv.card.clear_log();
        Some(piv)
    }

    fn piv_tool(&self, args: &[&str]) -> Output {
        Command::new("yubico-piv-tool")
            .env("PCSCLITE_CSOCK_NAME", &self.socket)
            .arg("--reader")
            .arg(self.card.reader_name())
            .args(args)
            .output()
            .expect("running yubico-piv-tool")
    }

    fn piv_ok(&mut self, args: &[&str]) {
        let out = self.piv_tool(args);
        assert!(
            out.status.success(),
            "yubico-piv-tool {args:?}: {}\nthe card's last APDUs: {:02x?}",
            stderr(&out),
            self.card
                .apdu_log()
                .iter()
                .rev()
                .take(6)
                .map(|a| (a.ins, a.p1, a.p2, a.data.len(), a.sw))
                .collect::<Vec<_>>()
        );
    }

    /// `pkcs11-tool --module MODULE ARGS` on this test's pcscd.
    fn pkcs11_tool(&self, module: &str, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .env("PCSCLITE_CSOCK_NAME", &self.socket)
            .args(["--module", module])
            .args(args)
            .output()
            .expect("running pkcs11-tool")
    }

    /// The kid (hex) of the key yubico-piv-tool generated, as `openssl`
    /// reads its PEM and keybridge computes thumbprints.
    fn generated_kid(&self) -> String {
        let pem = std::fs::read_to_string(&self.public_pem).unwrap();
        keybridge_protocol::PublicKey::from_spki_pem(&pem)
            .expect("a P-256 SPKI")
            .kid()
            .to_hex()
    }

    /// `keybridge --json keys list --backend pkcs11 --module MODULE`,
    /// polled until it shows a token (the daemon's module may need a
    /// moment to see a card that was just inserted).
    fn listing(&self, module: &str) -> Value {
        let mut last = Value::Null;
        let seen = poll_until(Duration::from_secs(10), || {
            let out = self.b.cli(
                &[
                    "--json",
                    "keys",
                    "list",
                    "--backend",
                    "pkcs11",
                    "--module",
                    module,
                ],
                None,
            );
            if !out.status.success() {
                return false;
            }
            last = serde_json::from_slice(&out.stdout).unwrap();
            last.as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["keys"].as_array().is_some_and(|k| !k.is_empty()))
            })
        });
        assert!(seen, "the daemon never listed the card's key: {last:#}");
        last
    }

    /// `keybridge keys create --backend pkcs11 --existing --uri URI`, the
    /// PIN on standard input; the new key's kid.
    fn open_existing(&self, label: &str, uri: &str) -> String {
        create_pkcs11(&self.b, label, uri, &["--existing"], PIN)
    }

    fn unlock(&self, key: &str, extra: &[&str], pin: &str) -> Output {
        let mut args = vec!["unlock", key, "--secret-stdin"];
        args.extend_from_slice(extra);
        self.b.cli(&args, Some(pin))
    }
}

/// The issue's own reference: the token by its label (with `#` and spaces,
/// percent-encoded), its serial, the key by id, the module by path.
fn ykcs11_uri(serial: u32) -> String {
    format!("pkcs11:token=YubiKey%20PIV%20%23{serial};serial={serial};id=%02?module-path={YKCS11}")
}

#[test]
fn ykcs11_opens_a_9c_key_and_logs_in_for_every_signature() {
    let serial = 95_000_001;
    let Some(p) = Piv::start(serial, YKCS11, "ykcs11") else {
        return;
    };
    let kid = p.generated_kid();
    // Listed without login, with the token label that needs encoding.
    let listing = p.listing(YKCS11);
    let token = &listing[0];
    assert_eq!(
        token["label"],
        format!("YubiKey PIV #{serial}"),
        "{listing:#}"
    );
    let listed = token["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "02")
        .unwrap_or_else(|| panic!("no id 02 in {listing:#}"));
    assert_eq!(listed["kid"], kid);
    assert!(
        listed["uri"]
            .as_str()
            .unwrap()
            .contains("YubiKey%20PIV%20%23"),
        "{listed:#}"
    );
    assert_eq!(pins_sent(&p.card), 0, "listing sends no PIN");

    // Opened by the URI: found after login, not "absent".
    assert_eq!(p.open_existing("yk", &ykcs11_uri(serial)), kid);
    let shown: Value =
        serde_json::from_str(&p.b.ok(&["--json", "keys", "show", "yk"], None)).unwrap();
    assert_eq!(shown["login_each_signature"], true, "{shown:#}");
    assert!(
        p.b.ok(&["keys", "list"], None)
            .contains("PIN on the token for each signature")
    );

    // daily: the cached PIN goes to the card once per signature (the card
    // refuses a signature without it: PIN policy always).
    let r = p.unlock("yk", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    p.card.clear_log();
    // The first signature also signs the account's log (the device's trust).
    p.b.sign_and_verify("yk", NOW);
    one_pin_per_signature(&p.card, 2);
    p.card.clear_log();
    p.b.sign_and_verify("yk", NOW);
    one_pin_per_signature(&p.card, 1);

    // each-task: the unlock's PIN serves the one signature, then locked.
    p.b.ok(&["lock", "yk"], None);
    let r = p.unlock("yk", &["--remember", "each-task"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    p.b.sign_and_verify("yk", NOW);
    let again = p.b.sign_for("yk", "dev-1");
    assert!(!again.status.success(), "each-task allows one signature");
    assert!(stderr(&again).contains("locked"), "{}", stderr(&again));

    // pkcs11-tool, through the same module, verifies what it signs with
    // the key keybridge uses: the same key.
    let data = p.b.home().join("data");
    std::fs::write(&data, [7u8; 32]).unwrap();
    let sig = p.b.home().join("sig");
    let out = p.pkcs11_tool(
        YKCS11,
        &[
            "--token-label",
            &format!("YubiKey PIV #{serial}"),
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--id",
            "02",
            "--mechanism",
            "ECDSA",
            "--input-file",
            data.to_str().unwrap(),
            "--output-file",
            sig.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "pkcs11-tool --sign: {}", stderr(&out));
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
}

#[test]
fn ykcs11_pin_counter_drives_retries_and_the_last_attempt_waits_for_consent() {
    let Some(p) = Piv::start(95_000_002, YKCS11, "ykcs11") else {
        return;
    };
    p.listing(YKCS11);
    p.open_existing("yr", &ykcs11_uri(95_000_002));
    assert_eq!(p.card.pin_retries(), 3);

    let r = p.unlock("yr", &[], "000000");
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert_eq!(p.card.pin_retries(), 2, "exactly one retry spent");
    p.b.set_time(NOW + 2);
    let r = p.unlock("yr", &[], "000000");
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(stderr(&r).contains("1 attempts left"), "{}", stderr(&r));
    assert_eq!(p.card.pin_retries(), 1);

    // The last attempt: not spent without consent, whatever the PIN.
    p.b.set_time(NOW + 10);
    p.card.clear_log();
    let r = p.unlock("yr", &[], PIN);
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("only one PIN attempt is left"),
        "{}",
        stderr(&r)
    );
    assert_eq!(pins_sent(&p.card), 0, "no PIN went to the card");
    assert_eq!(p.card.pin_retries(), 1);

    // Spent with consent, wrong: blocked, and said so.
    p.b.set_time(NOW + 30);
    let r = p.unlock("yr", &["--spend-last-attempt"], "000000");
    assert_eq!(r.status.code(), Some(6), "{}", stderr(&r));
    assert_eq!(p.card.pin_retries(), 0);
    p.b.set_time(NOW + 100);
    p.card.clear_log();
    let r = p.unlock("yr", &["--spend-last-attempt"], PIN);
    assert_eq!(r.status.code(), Some(6), "pin_blocked: {}", stderr(&r));
    assert_eq!(pins_sent(&p.card), 0, "a blocked PIN is not tried");
}

#[test]
fn ykcs11_key_generation_is_refused_before_any_pin_is_sent() {
    let Some(p) = Piv::start(95_000_003, YKCS11, "ykcs11") else {
        return;
    };
    p.listing(YKCS11);
    let uri = format!("pkcs11:token=YubiKey%20PIV%20%2395000003;id=%03?module-path={YKCS11}");
    let r = p.b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "pkcs11",
            "--account",
            "acme",
            "--agent",
            "g",
            "--uri",
            &uri,
            "--secret-stdin",
        ],
        Some(PIN),
    );
    assert_eq!(r.status.code(), Some(1), "a 400: {}", stderr(&r));
    assert!(stderr(&r).contains("security-officer"), "{}", stderr(&r));
    assert!(stderr(&r).contains("--backend yubikey"), "{}", stderr(&r));
    assert_eq!(pins_sent(&p.card), 0);
}

#[test]
fn opensc_opens_the_same_9c_key_and_signs() {
    let serial = 95_000_004;
    let Some(p) = Piv::start(serial, OPENSC, "opensc-pkcs11") else {
        return;
    };
    let kid = p.generated_kid();
    let listing = p.listing(OPENSC);
    let key = listing
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["keys"].as_array().unwrap())
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("OpenSC does not list {kid}: {listing:#}"))
        .clone();
    let uri = key["uri"].as_str().unwrap();
    assert_eq!(p.open_existing("os", uri), kid);
    let r = p.unlock("os", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    p.card.clear_log();
    p.b.sign_and_verify("os", NOW);
    p.b.sign_and_verify("os", NOW);
    // Three signatures (the account log's genesis, two commands), each
    // with the PIN right before it: 9c is PIN-always.
    one_pin_per_signature(&p.card, 3);
}

// ---------------------------------------------------------------------------
// tpm2-pkcs11

use keybridge_tests::tpm2_pkcs11::{self, Tpm2Pkcs11};

const TPM_USER_PIN: &str = "user-pin-1234";
const TPM_SO_PIN: &str = "so-pin-12345678";
/// Spaces, `#` and non-ASCII, as token labels have them.
const TPM_TOKEN: &str = "kb #1 – über Tökén";

/// A daemon whose environment reaches `p11` (and more `extra` variables).
fn tpm_bridge(p11: &Tpm2Pkcs11, extra: &[(&str, &Path)]) -> Bridge {
    let env: Vec<(String, PathBuf)> = p11
        .env()
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    let mut refs: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
    refs.extend_from_slice(extra);
    Bridge::start_with_env(NOW, None, &refs)
}

/// `keybridge --json keys create --backend pkcs11 …` with the PIN on
/// standard input; the kid.
fn create_pkcs11(b: &Bridge, label: &str, uri: &str, extra: &[&str], pin: &str) -> String {
    let out = b.create_key("pkcs11", label, uri, extra, pin);
    assert!(out.status.success(), "{}\n{}", stderr(&out), b.daemon_log());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[test]
fn tpm2_pkcs11_generates_through_keybridge_and_devices_accept() {
    let Some((p11, token)) = Tpm2Pkcs11::with_token(TPM_TOKEN, TPM_SO_PIN, TPM_USER_PIN) else {
        return;
    };
    let mut b = tpm_bridge(&p11, &[]);
    let uri = p11.token_uri(&token.label, "object=alice");
    let kid = create_pkcs11(&b, "alice", &uri, &[], TPM_USER_PIN);
    let shown: Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "show", "alice"], None)).unwrap();
    let params = &shown["params"];
    assert_eq!(params["token"], TPM_TOKEN, "{shown:#}");
    assert_eq!(params["generated"], true);
    assert_eq!(params["always_sensitive"], true);
    assert_eq!(params["never_extractable"], true);
    assert_eq!(params["local"], true);
    assert_eq!(shown["login_each_signature"], false);
    // The recorded URI carries the label percent-encoded.
    assert!(
        shown["uri"]
            .as_str()
            .unwrap()
            .contains("kb%20%231%20%E2%80%93%20%C3%BCber"),
        "{shown:#}"
    );

    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(TPM_USER_PIN),
    );
    b.sign_and_verify("alice", NOW);
    // After a restart the recorded URI finds the token again by its label.
    b.restart();
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(TPM_USER_PIN),
    );
    b.sign_and_verify("alice", NOW);

    // pkcs11-tool, through the same module, reads the same public key.
    let listed = p11.pkcs11_tool_ok(&["--token-label", TPM_TOKEN, "-O"]);
    assert!(listed.contains("alice"), "{listed}");
    let shown_pem = shown["public_key"]["pem"].as_str().unwrap();
    let der = p11.work_dir().join("alice.der");
    let params_id = params["id"].as_str().unwrap();
    p11.pkcs11_tool_ok(&[
        "--token-label",
        TPM_TOKEN,
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        params_id,
        "-o",
        der.to_str().unwrap(),
    ]);
    let theirs = {
        use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&std::fs::read(&der).unwrap())
            .expect("pkcs11-tool wrote a P-256 key");
        vk.to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap()
    };
    assert_eq!(theirs.trim(), shown_pem.trim());
    assert_eq!(shown["kid"], kid);
}

#[test]
fn a_pkcs11_tool_key_on_tpm2_pkcs11_opens_with_existing_and_signs() {
    let Some((p11, token)) = Tpm2Pkcs11::with_token(TPM_TOKEN, TPM_SO_PIN, TPM_USER_PIN) else {
        return;
    };
    p11.pkcs11_tool_ok(&[
        "--token-label",
        &token.label,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "made-elsewhere",
        "--login",
        "--pin",
        TPM_USER_PIN,
    ]);
    let b = tpm_bridge(&p11, &[]);
    // Listed without login, then opened by the listed URI.
    let listing: Value = serde_json::from_str(&b.ok(
        &[
            "--json",
            "keys",
            "list",
            "--backend",
            "pkcs11",
            "--module",
            tpm2_pkcs11::MODULE,
        ],
        None,
    ))
    .unwrap();
    let key = listing[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "01")
        .unwrap_or_else(|| panic!("{listing:#}"))
        .clone();
    assert_eq!(listing[0]["label"], TPM_TOKEN);
    let kid = create_pkcs11(
        &b,
        "legacy",
        key["uri"].as_str().unwrap(),
        &["--existing"],
        TPM_USER_PIN,
    );
    assert_eq!(kid, key["kid"].as_str().unwrap());
    b.ok(
        &["unlock", "legacy", "--remember", "daily", "--secret-stdin"],
        Some(TPM_USER_PIN),
    );
    b.sign_and_verify("legacy", NOW);
}

#[test]
fn two_modules_serve_keys_in_one_daemon() {
    let Some((p11, token)) = Tpm2Pkcs11::with_token(TPM_TOKEN, TPM_SO_PIN, TPM_USER_PIN) else {
        return;
    };
    let Some(hsm) = SoftHsm::new() else {
        return;
    };
    hsm.init_token("soft #2 ü");
    let conf = hsm.conf();
    let b = tpm_bridge(&p11, &[("SOFTHSM2_CONF", &conf)]);
    create_pkcs11(
        &b,
        "on-tpm",
        &p11.token_uri(&token.label, "object=t"),
        &[],
        TPM_USER_PIN,
    );
    create_pkcs11(
        &b,
        "on-softhsm",
        &format!("pkcs11:token=soft%20%232%20%C3%BC;object=s?module-path={SOFTHSM_MODULE}"),
        &[],
        TOKEN_PIN,
    );
    for (key, pin) in [("on-tpm", TPM_USER_PIN), ("on-softhsm", TOKEN_PIN)] {
        b.ok(
            &["unlock", key, "--remember", "daily", "--secret-stdin"],
            Some(pin),
        );
    }
    b.sign_and_verify("on-tpm", NOW);
    // Each key heads an account log of its own: the first one's files go.
    std::fs::remove_file(b.home().join("acme.log")).unwrap();
    std::fs::remove_file(b.home().join("acme.recovery.age")).unwrap();
    b.sign_and_verify("on-softhsm", NOW);
    // Taking turns, each on its own module.
    for _ in 0..2 {
        b.sign_and_verify("on-tpm", NOW);
        b.sign_and_verify("on-softhsm", NOW);
    }
}
