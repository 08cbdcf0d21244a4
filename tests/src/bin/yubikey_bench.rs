//! The YubiKey benchmark (issue 9): what keybridge costs on top of the card.
//!
//! One virtual YubiKey (firmware 5.4.3) on the shared pcscd + vpcd, one
//! P-256 key generated in slot 9c through the daemon and unlocked `daily`;
//! then, in rounds taking turns, the same card signs:
//!
//! 1. through `keybridge serve`: `POST /v1/sign` for one device over one
//!    keep-alive connection (a card signs one thing at a time);
//! 2. in a raw loop: `yubikey::piv::sign_data` over a SHA-256 digest, in
//!    this process, with the card opened and the PIN verified once.
//!
//! Twice: with the virtual card at full speed (it signs in microseconds, so
//! the ratio is all bridge: HTTP, COSE, the check of the signature, the
//! hand-off to the card's worker), and with the card taking the 70 ms a
//! real YubiKey 5 takes for P-256 (Yubico's published figure). The goal,
//! keybridge at least 0.9 × the raw loop, is for the second: that is the
//! rate a user gets. Both figures are printed, and what the bridge adds per
//! signature in microseconds.
//!
//! Then the same again through PKCS#11 (issue 11): Yubico's ykcs11 on a
//! card signing in 70 ms, a slot-9c key opened with `keys create --backend
//! pkcs11 --existing`, against a raw cryptoki loop on the same module doing
//! what a correct client must for a 9c key (`CKA_ALWAYS_AUTHENTICATE`):
//! `C_SignInit`, `C_Login(CKU_CONTEXT_SPECIFIC)`, `C_SignUpdate`,
//! `C_SignFinal`. Goal ≥ 0.9 as well.
//!
//! `cargo xtask bench` runs it (release build); it writes
//! `target/bench/yubikey.json`. A missed goal is reported, not failed.

use anyhow::{Context as _, Result, ensure};
use hyper::body::Bytes;
use keybridge_tests::bench::{Measurement, Target, exit, keybridge, measure, secs_arg};
use keybridge_tests::vyubikey::CardConfig;
use serde_json::json;
use sha2::Digest as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SERIAL: u32 = 94_000_001;
/// Yubico's published P-256 signing time for a YubiKey 5.
const REAL_SIGN_TIME: Duration = Duration::from_millis(70);
const PIN: &str = "123456";
const ROUNDS: usize = 3;
const GOAL: f64 = 0.9;
const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";
const SIGN_REQUEST: &str = r#"{"key":"bench","device":"device-00042","command":"remote-control","args":{"mode":"view"},"ttl":300}"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    exit(
        "yubikey_bench",
        secs_arg("yubikey_bench", &args, Duration::from_secs(2)).and_then(bench),
    )
}

/// Signs with the card directly for `length`; signatures per second.
fn raw_loop(serial: u32, length: Duration) -> Result<f64> {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(serial))?;
    yk.verify_pin(PIN.as_bytes())?;
    let digest = sha2::Sha256::digest(b"keybridge benchmark Sig_structure stand-in");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        yubikey::piv::sign_data(
            &mut yk,
            &digest,
            yubikey::piv::AlgorithmId::EccP256,
            yubikey::piv::SlotId::Signature,
        )?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Signs with slot 9c through ykcs11 directly for `length`, as a correct
/// PKCS#11 client must for a key with `CKA_ALWAYS_AUTHENTICATE`;
/// signatures per second.
fn ykcs11_raw_loop(serial: u32, length: Duration) -> Result<f64> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(YKCS11)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let label = format!("YubiKey PIV #{serial}");
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == label))
        .with_context(|| format!("ykcs11 shows no token {label:?}"))?;
    let session = ctx.open_ro_session(slot)?;
    let pin = AuthPin::from(PIN);
    session.login(UserType::User, Some(&pin))?;
    let key = *session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(vec![2]),
        ])?
        .first()
        .context("no private key with id 02")?;
    let digest = sha2::Sha256::digest(b"keybridge benchmark Sig_structure stand-in");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        session.sign_init(&Mechanism::Ecdsa, key)?;
        session.login(UserType::ContextSpecific, Some(&pin))?;
        session.sign_update(&digest)?;
        session.sign_final()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// One card speed: the rates through the bridge and in the raw loop.
struct Phase {
    name: &'static str,
    /// What the raw loop is.
    raw_name: &'static str,
    bridge_rate: f64,
    raw_rate: f64,
}

impl Phase {
    fn ratio(&self) -> f64 {
        self.bridge_rate / self.raw_rate
    }

    /// What the bridge adds to one signature, in microseconds.
    fn added_us(&self) -> f64 {
        (1.0 / self.bridge_rate - 1.0 / self.raw_rate) * 1e6
    }
}

/// Inserts a card signing in `sign_time`, makes a key through the daemon,
/// and measures it both ways, rounds taking turns.
/// Through which interface the key is used.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `--backend yubikey`, raw loop `yubikey::piv::sign_data`.
    Yubikey,
    /// `--backend pkcs11` on ykcs11, raw loop cryptoki on ykcs11.
    Ykcs11,
}

fn phase(
    name: &'static str,
    serial: u32,
    sign_time: Duration,
    secs: Duration,
    bin_dir: &std::path::Path,
    via: Via,
) -> Result<Phase> {
    let mut config = CardConfig::new(serial).sign_time(sign_time);
    if via == Via::Ykcs11 {
        config = config.key(0x9c, keybridge_tests::vyubikey::KeySpec::p256());
    }
    let card = config
        .insert()
        .context("the virtual YubiKey needs pcscd and vsmartcard-vpcd (cargo xtask deps)")?;
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (bridge, rounds) = rt.block_on(async {
        let bridge = keybridge::serve(bin_dir, tmp.path(), &[]).await?;
        if via == Via::Ykcs11 {
            let uri =
                format!("pkcs11:token=YubiKey%20PIV%20%23{serial};id=%02?module-path={YKCS11}");
            bridge.cli(
                &[
                    "keys",
                    "create",
                    "--backend",
                    "pkcs11",
                    "--existing",
                    "--account",
                    "acme",
                    "--agent",
                    "bench",
                    "--label",
                    "bench",
                    "--uri",
                    &uri,
                    "--secret-stdin",
                ],
                Some(PIN),
            )?;
        } else {
            bridge.cli(
                &[
                    "keys",
                    "create",
                    "--backend",
                    "yubikey",
                    "--account",
                    "acme",
                    "--agent",
                    "bench",
                    "--label",
                    "bench",
                    "--uri",
                    &format!("yubikey:serial={serial};slot=9c"),
                    "--default-management-key",
                    "--secret-stdin",
                ],
                Some(PIN),
            )?;
        }
        bridge.cli(
            &["unlock", "bench", "--remember", "daily", "--secret-stdin"],
            Some(PIN),
        )?;
        let target = Target::Http {
            socket: bridge.socket.clone(),
            body: Bytes::from_static(SIGN_REQUEST.as_bytes()),
            field: "envelope",
        };
        let mut rounds: Vec<(Measurement, f64)> = vec![];
        for _ in 0..ROUNDS {
            let through = measure(&target, 1, secs, &[bridge.proc.pid()]).await?;
            // Synchronous on purpose: nothing else runs meanwhile.
            let raw = match via {
                Via::Yubikey => raw_loop(serial, secs)?,
                Via::Ykcs11 => ykcs11_raw_loop(serial, secs)?,
            };
            rounds.push((through, raw));
        }
        anyhow::Ok((bridge, rounds))
    })?;
    drop(bridge);
    drop(card);
    let bridge_rate: f64 =
        rounds.iter().map(|(m, _)| m.throughput()).sum::<f64>() / rounds.len() as f64;
    let raw_rate: f64 = rounds.iter().map(|(_, r)| r).sum::<f64>() / rounds.len() as f64;
    ensure!(
        raw_rate > 0.0 && bridge_rate > 0.0,
        "{name}: nothing was signed"
    );
    Ok(Phase {
        name,
        raw_name: match via {
            Via::Yubikey => "raw piv::sign_data loop",
            Via::Ykcs11 => "raw cryptoki loop (SignInit, context login, SignUpdate, SignFinal)",
        },
        bridge_rate,
        raw_rate,
    })
}

fn bench(secs: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();
    // At full speed the figure is what the bridge adds; at a real card's
    // speed it is what a user sees, and that is where the goal applies.
    let fast = phase(
        "virtual card at full speed",
        SERIAL,
        Duration::ZERO,
        secs,
        &bin_dir,
        Via::Yubikey,
    )?;
    let real = phase(
        "virtual card at a YubiKey 5's 70 ms",
        SERIAL + 1,
        REAL_SIGN_TIME,
        secs,
        &bin_dir,
        Via::Yubikey,
    )?;
    let pkcs11 = phase(
        "ykcs11 (PKCS#11) on the virtual card at 70 ms, 9c: a PIN per signature",
        SERIAL + 2,
        REAL_SIGN_TIME,
        secs,
        &bin_dir,
        Via::Ykcs11,
    )?;
    for p in [&fast, &real, &pkcs11] {
        println!(
            "yubikey ({}, P-256, 1 connection): keybridge {:.1} sig/s, {} {:.1} sig/s, ratio {:.3}, bridge adds {:.0} µs per signature",
            p.name,
            p.bridge_rate,
            p.raw_name,
            p.raw_rate,
            p.ratio(),
            p.added_us()
        );
    }
    let met = real.ratio() >= GOAL;
    println!(
        "goal: ratio ≥ {GOAL} at a real card's speed: {:.3} {}",
        real.ratio(),
        if met { "✔" } else { "✘" }
    );
    let met_pkcs11 = pkcs11.ratio() >= GOAL;
    println!(
        "goal: ratio ≥ {GOAL} through ykcs11 against a raw cryptoki loop: {:.3} {}",
        pkcs11.ratio(),
        if met_pkcs11 { "✔" } else { "✘" }
    );
    let out = target_dir.join("bench").join("yubikey.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    let phase_json = |p: &Phase| {
        json!({
            "keybridge_sig_per_s": p.bridge_rate,
            "raw_sig_per_s": p.raw_rate,
            "ratio": p.ratio(),
            "added_us_per_signature": p.added_us(),
        })
    };
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "full_speed": phase_json(&fast),
            "real_card_70ms": phase_json(&real),
            "ykcs11_70ms": phase_json(&pkcs11),
            "goal": GOAL,
            "met": met,
            "met_ykcs11": met_pkcs11,
        }))?,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
