//! YubiKey keys end to end: the real daemon and CLI, the `yubikey` crate
//! and pcsc-lite, a virtual YubiKey on vpcd, and `keybridge-device`
//! verifying what was signed. Serials 92_000_000 + n are this file's.

use keybridge_tests::vyubikey::pcscd::PrivatePcscd;
use keybridge_tests::vyubikey::{
    CardConfig, INS_VERIFY, KeySpec, ManagementKey, Touch, VirtualYubiKey, insert_all,
};
use keybridge_tests::*;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

const NOW: i64 = 1_800_000_000;
const PIN: &str = "123456";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `keybridge keys create --backend yubikey` for `uri`, the PIN (and more
/// lines) on standard input.
fn create(b: &Bridge, label: &str, uri: &str, extra: &[&str], stdin: &str) -> Output {
    b.create_yubikey_key(label, uri, extra, stdin)
}

fn created_kid(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

fn unlock(b: &Bridge, key: &str, extra: &[&str], pin: &str) -> Output {
    let mut args = vec!["unlock", key, "--secret-stdin"];
    args.extend_from_slice(extra);
    b.cli(&args, Some(pin))
}

fn sign(b: &Bridge, key: &str, device: &str) -> Output {
    b.sign_for(key, device)
}

/// Signs for `dev-1` and has a device that trusts `key`'s account verify it.
fn sign_and_verify(b: &Bridge, key: &str) {
    b.sign_and_verify(key, NOW);
}

/// VERIFYs that carried a PIN to `card` (an empty VERIFY only reads the
/// retry counter — and other tests' processes listing the cards present
/// send those to every card).
fn pins_sent(card: &VirtualYubiKey) -> usize {
    card.apdu_log()
        .iter()
        .filter(|a| a.ins == INS_VERIFY && !a.data.is_empty())
        .count()
}

fn uri(card: &VirtualYubiKey) -> String {
    format!("yubikey:serial={};slot=9c", card.serial())
}

#[test]
fn a_p256_key_on_a_5_4_card_signs_commands_a_device_accepts() {
    let Some(card) = CardConfig::new(92_000_001).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    let r = create(&b, "yuki", &uri(&card), &["--default-management-key"], PIN);
    created_kid(&r);
    assert!(
        stderr(&r).contains("factory management key"),
        "{}",
        stderr(&r)
    );
    assert!(card.public_key(0x9c).is_some(), "generated on the card");
    let r = unlock(&b, "yuki", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "yuki");
    // Daily: the PIN was verified once, not per signature.
    card.clear_log();
    sign_and_verify(&b, "yuki");
    assert_eq!(pins_sent(&card), 0, "no PIN per signature");
}

#[test]
fn an_ed25519_key_on_a_5_7_card_with_an_aes_management_key_signs() {
    let Some(card) = CardConfig::new(92_000_002).firmware(5, 7, 1).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    let r = create(
        &b,
        "edna",
        &uri(&card),
        &["--alg", "ed25519", "--default-management-key"],
        PIN,
    );
    created_kid(&r);
    let shown: Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "show", "edna"], None)).unwrap();
    assert_eq!(shown["alg"], "ed25519");
    unlock(&b, "edna", &["--remember", "daily"], PIN);
    sign_and_verify(&b, "edna");
}

#[test]
fn the_management_key_is_never_guessed() {
    let key = [7u8; 24];
    let Some(card) = CardConfig::new(92_000_003)
        .management_key(ManagementKey::triple_des(key))
        .insert()
    else {
        return;
    };
    let b = Bridge::start(NOW);
    // No key given, none PIN-protected on the card: refused, nothing tried.
    let r = create(&b, "m1", &uri(&card), &[], PIN);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("--management-key-stdin"),
        "{}",
        stderr(&r)
    );
    assert!(card.public_key(0x9c).is_none(), "nothing generated");
    // The factory key is refused by this card, with the way out named.
    let r = create(&b, "m2", &uri(&card), &["--default-management-key"], PIN);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("does not have the factory management key"),
        "{}",
        stderr(&r)
    );
    // The right key from standard input works.
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let r = create(
        &b,
        "m3",
        &uri(&card),
        &["--management-key-stdin"],
        &format!("{PIN}\n{hex}"),
    );
    created_kid(&r);
    assert!(
        !stderr(&r).contains("factory management key"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn a_pin_protected_management_key_is_used_as_ykman_stores_it() {
    let Some(card) = CardConfig::new(92_000_004)
        .management_key(ManagementKey::aes192([9; 24]).pin_protected())
        .insert()
    else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(&b, "pp", &uri(&card), &[], PIN));
    // A slot that holds a key is not overwritten without --overwrite.
    let r = create(&b, "pp2", &uri(&card), &[], PIN);
    assert!(stderr(&r).contains("already holds a key"), "{}", stderr(&r));
    created_kid(&create(&b, "pp3", &uri(&card), &["--overwrite"], PIN));
}

#[test]
fn a_wrong_pin_spends_one_retry_and_the_last_is_kept_unless_asked() {
    let Some(card) = CardConfig::new(92_000_005).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "rp",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    assert_eq!(card.pin_retries(), 3);
    let r = unlock(&b, "rp", &[], "000000");
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(stderr(&r).contains("2 attempts left"), "{}", stderr(&r));
    assert_eq!(card.pin_retries(), 2, "exactly one retry spent");
    b.set_time(NOW + 1);
    assert_eq!(unlock(&b, "rp", &[], "000000").status.code(), Some(5));
    assert_eq!(card.pin_retries(), 1);
    // The last attempt: not tried without consent, whatever the PIN.
    b.set_time(NOW + 10);
    card.clear_log();
    let r = unlock(&b, "rp", &[], PIN);
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("only one PIN attempt is left"),
        "{}",
        stderr(&r)
    );
    assert_eq!(card.pin_retries(), 1, "nothing spent");
    let r = unlock(&b, "rp", &["--spend-last-attempt"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(card.pin_retries(), 3, "a right PIN resets the counter");
}

#[test]
fn another_card_in_the_reader_never_sees_the_pin() {
    let serial = 92_000_006;
    let Some(card) = CardConfig::new(serial).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "sw",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    drop(card);
    // The same serial (a reset or swapped card) with another key in 9c.
    let Some(other) = CardConfig::new(serial).key(0x9c, KeySpec::p256()).insert() else {
        return;
    };
    other.clear_log();
    let r = unlock(&b, "sw", &[], PIN);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("holds another key"), "{}", stderr(&r));
    assert_eq!(pins_sent(&other), 0, "no PIN was sent to the other card");
}

/// Whether `key` shows unlocked.
fn shows_unlocked(b: &Bridge, key: &str) -> bool {
    let shown: Value = serde_json::from_str(&b.ok(&["--json", "keys", "show", key], None)).unwrap();
    shown["unlocked"].as_bool().expect("unlocked is a boolean")
}

#[test]
fn a_card_pulled_out_forgets_the_pin_at_once_and_works_after_the_pin() {
    let Some(mut card) = CardConfig::new(92_000_007).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "pl",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    unlock(&b, "pl", &["--remember", "daily"], PIN);
    sign_and_verify(&b, "pl");
    card.remove();
    // No request needed: the backend's watch forgets the PIN and the key
    // shows locked as soon as pcscd reports the reader empty.
    assert!(
        poll_until(Duration::from_secs(10), || !shows_unlocked(&b, "pl")),
        "the key still shows unlocked after its card was pulled out\n{}",
        b.daemon_log()
    );
    assert!(
        b.daemon_log().contains("token pulled out: PIN forgotten"),
        "{}",
        b.daemon_log()
    );
    let r = sign(&b, "pl", "dev-1");
    assert_eq!(r.status.code(), Some(4), "locked: {}", stderr(&r));
    // Unlocking while the card is away: token_absent, and the daemon stays.
    let r = unlock(&b, "pl", &["--remember", "daily"], PIN);
    assert_eq!(r.status.code(), Some(7), "{}", stderr(&r));
    assert!(stderr(&r).contains("92000007"), "{}", stderr(&r));
    assert!(
        b.cli(&["status"], None).status.success(),
        "the daemon stays up"
    );
    card.reinsert();
    let r = sign(&b, "pl", "dev-1");
    assert_eq!(
        r.status.code(),
        Some(4),
        "locked until the PIN is given again: {}",
        stderr(&r)
    );
    b.set_time(NOW + 1);
    let r = unlock(&b, "pl", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "pl");
}

/// A card in a private pcscd (one a test may stop), a daemon that uses it,
/// and a P-256 key in slot 9c unlocked `daily`.
fn behind_private_pcscd(serial: u32) -> Option<(PrivatePcscd, VirtualYubiKey, Bridge)> {
    let pcscd = PrivatePcscd::start()?;
    let card = CardConfig::new(serial).insert_into(&pcscd);
    let (var, socket) = pcscd.env();
    let b = Bridge::start_with_env(NOW, None, &[(var, &socket)]);
    // The test process cannot ask this pcscd: wait until the daemon sees the
    // card.
    assert!(
        poll_until(Duration::from_secs(10), || {
            b.cli(&["keys", "list", "--backend", "yubikey"], None)
                .stdout
                .windows(8)
                .any(|w| w == serial.to_string().as_bytes())
        }),
        "the daemon never saw card {serial} in the private pcscd"
    );
    created_kid(&create(
        &b,
        "pc",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    let r = unlock(&b, "pc", &["--remember", "daily"], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
    sign_and_verify(&b, "pc");
    Some((pcscd, card, b))
}

/// Stops `pcscd` and waits until the daemon has noticed (its log says so).
fn stop_pcscd(pcscd: &mut PrivatePcscd, b: &Bridge) {
    pcscd.stop();
    assert!(
        poll_until(Duration::from_secs(10), || b
            .daemon_log()
            .contains("token not seen")),
        "the daemon did not notice pcscd going\n{}",
        b.daemon_log()
    );
}

#[test]
fn a_pcscd_restart_costs_no_pin_and_the_daemon_reconnects() {
    let Some((mut pcscd, mut card, b)) = behind_private_pcscd(92_000_014) else {
        return;
    };
    stop_pcscd(&mut pcscd, &b);
    let r = sign(&b, "pc", "dev-1");
    assert_eq!(r.status.code(), Some(7), "{}", stderr(&r));
    assert!(stderr(&r).contains("pcscd"), "{}", stderr(&r));
    assert!(b.cli(&["status"], None).status.success(), "daemon up");
    assert!(shows_unlocked(&b, "pc"), "a pcscd restart keeps the unlock");
    // Four minutes and more later on the boot clock: within the limit.
    b.set_clocks(NOW, NOW + 299);
    card.remove();
    pcscd.restart();
    card.reinsert();
    card.clear_log();
    assert!(
        poll_until(Duration::from_secs(10), || sign(&b, "pc", "dev-2")
            .status
            .success()),
        "no signature after pcscd came back\n{}",
        b.daemon_log()
    );
    assert_eq!(
        pins_sent(&card),
        1,
        "the new connection got the cached PIN once, the user was not asked"
    );
    assert!(shows_unlocked(&b, "pc"));
    assert!(
        poll_until(Duration::from_secs(10), || b
            .daemon_log()
            .contains("token seen again")),
        "{}",
        b.daemon_log()
    );
}

#[test]
fn a_card_unseen_for_five_minutes_forgets_the_pin() {
    let Some((mut pcscd, mut card, b)) = behind_private_pcscd(92_000_015) else {
        return;
    };
    stop_pcscd(&mut pcscd, &b);
    // The machine slept (or pcscd stayed away) five minutes: boot clock.
    b.set_clocks(NOW, NOW + 300);
    assert!(
        poll_until(Duration::from_secs(10), || !shows_unlocked(&b, "pc")),
        "still unlocked after five minutes unseen\n{}",
        b.daemon_log()
    );
    assert!(
        b.daemon_log().contains("token not seen for 300 s"),
        "{}",
        b.daemon_log()
    );
    card.remove();
    pcscd.restart();
    card.reinsert();
    card.clear_log();
    let r = sign(&b, "pc", "dev-2");
    assert_eq!(r.status.code(), Some(4), "asked again: {}", stderr(&r));
    assert_eq!(pins_sent(&card), 0, "no cached PIN was left to send");
    assert!(
        poll_until(Duration::from_secs(10), || unlock(
            &b,
            "pc",
            &["--remember", "daily"],
            PIN
        )
        .status
        .success()),
        "{}",
        b.daemon_log()
    );
    sign_and_verify(&b, "pc");
}

#[test]
fn a_card_held_by_another_program_is_explained_and_works_when_let_go() {
    let Some(card) = CardConfig::new(92_000_008).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "ho",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    let hold = card.hold_exclusive().expect("exclusive hold");
    let r = unlock(&b, "ho", &[], PIN);
    assert_eq!(r.status.code(), Some(7), "{}", stderr(&r));
    assert!(stderr(&r).contains("scdaemon"), "{}", stderr(&r));
    drop(hold);
    let r = unlock(&b, "ho", &[], PIN);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[test]
fn a_touch_is_waited_for_shown_and_timed_out() {
    let Some(card) = CardConfig::new(92_000_009)
        .touch_timeout(Duration::from_secs(4))
        .insert()
    else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "tp",
        &uri(&card),
        &["--default-management-key", "--touch-policy", "always"],
        PIN,
    ));
    unlock(&b, "tp", &["--remember", "daily"], PIN);
    card.set_touch(Touch::Manual);
    let mut signing = std::process::Command::new(bin("keybridge"))
        .env("KEYBRIDGE_HOME", b.home())
        .args([
            "sign",
            "--key",
            "tp",
            "--device",
            "dev-1",
            "--command",
            "remote-control",
        ])
        .arg("--out")
        .arg(b.home().join("tp.cose"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI tells the person to touch (the daemon shows the pending touch
    // meanwhile); only then does the "person" touch.
    let mut told = String::new();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(signing.stderr.take().unwrap()));
    for line in lines.by_ref() {
        let line = line.unwrap();
        told.push_str(&line);
        if line.contains("touch your YubiKey") {
            break;
        }
    }
    assert!(told.contains("touch your YubiKey"), "{told}");
    assert!(card.touch_pending());
    let shown: Value = serde_json::from_str(&b.ok(&["--json", "status"], None)).unwrap();
    assert_eq!(shown["touch_pending"], true, "{shown}");
    assert!(card.touch());
    assert!(signing.wait().unwrap().success());
    // Withheld: the card gives up and the request says why.
    let r = sign(&b, "tp", "dev-1");
    assert_eq!(r.status.code(), Some(8), "{}", stderr(&r));
}

#[test]
fn several_cards_without_a_serial_are_named_not_guessed() {
    let Some(cards) = insert_all(vec![
        CardConfig::new(92_000_010),
        CardConfig::new(92_000_011),
    ]) else {
        return;
    };
    let b = Bridge::start(NOW);
    let r = create(
        &b,
        "amb",
        "yubikey:slot=9c",
        &["--default-management-key"],
        PIN,
    );
    assert!(!r.status.success());
    for card in &cards {
        assert!(
            stderr(&r).contains(&card.serial().to_string()),
            "{}",
            stderr(&r)
        );
        assert_eq!(pins_sent(card), 0);
    }
    let listing: Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "list", "--backend", "yubikey"], None))
            .unwrap();
    let serials: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["serial"].as_str().unwrap())
        .collect();
    assert!(
        serials.contains(&"92000010") && serials.contains(&"92000011"),
        "{listing}"
    );
}

#[test]
fn pin_policy_always_sends_the_pin_for_every_signature() {
    let Some(card) = CardConfig::new(92_000_012).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "pa",
        &uri(&card),
        &["--default-management-key", "--pin-policy", "always"],
        PIN,
    ));
    unlock(&b, "pa", &["--remember", "daily"], PIN);
    sign_and_verify(&b, "pa"); // the account's genesis and a first command
    for round in 1..=3 {
        card.clear_log();
        sign_and_verify(&b, "pa");
        assert_eq!(
            pins_sent(&card),
            1,
            "round {round}: the PIN once per signature"
        );
    }
}

#[test]
fn debian_tools_read_the_key_keybridge_generated() {
    const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
    // Debian's tools are 2.2.0: a 5.4 card.
    let Some(card) = CardConfig::new(92_000_013).firmware(5, 4, 3).insert() else {
        return;
    };
    let b = Bridge::start(NOW);
    created_kid(&create(
        &b,
        "dt",
        &uri(&card),
        &["--default-management-key"],
        PIN,
    ));
    let shown: Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "show", "dt"], None)).unwrap();
    // Our public key as an uncompressed SEC1 point, from our PEM export.
    let pem = shown["public_key"]["pem"].as_str().unwrap();
    let ours = keybridge_protocol::PublicKey::from_spki_pem(pem).unwrap();
    let point = keybridge_protocol::key::hex(&ours.raw_bytes());
    let tool = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask deps installs it)"));
        assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // ykcs11 + pkcs11-tool list the same public key.
    let label = format!("YubiKey PIV #{}", card.serial());
    let listed = tool(
        "pkcs11-tool",
        &["--module", YKCS11, "--token-label", &label, "-O"],
    )
    .replace([' ', '\n'], "");
    assert!(
        listed.contains(&point),
        "ykcs11 does not show our key {point}: {listed}"
    );
    // yubico-piv-tool's attestation of the slot certifies our key, and
    // openssl reads the same public key out of it.
    let attest = tool(
        "yubico-piv-tool",
        &["--reader", &card.reader_name(), "-a", "attest", "-s", "9c"],
    );
    let cert = b.home().join("attest.pem");
    std::fs::write(&cert, attest).unwrap();
    let from_cert = tool(
        "openssl",
        &["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"],
    );
    let from_cert = keybridge_protocol::PublicKey::from_spki_pem(&from_cert).unwrap();
    assert_eq!(
        from_cert, ours,
        "the card's attestation certifies the key we recorded"
    );
    // The evidence keybridge kept is the same certificate.
    let leaf = shown["evidence"]["chain"][0].as_str().unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"])
        .output()
        .unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&out.stdout),
        leaf
    );
}
