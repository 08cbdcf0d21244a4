//! The TPM benchmark (issue 10): what keybridge costs on top of the TPM.
//!
//! One swtpm, one P-256 key made through the daemon and unlocked `daily`;
//! then, in rounds taking turns:
//!
//! 1. through `keybridge serve`: `POST /v1/sign` over one keep-alive
//!    connection. Each signature is one TPM connection: owner primary,
//!    salted HMAC session, load, sign, flush (the PIN never crosses the bus
//!    in the clear; nothing stays loaded, so other programs can use the TPM
//!    between signatures);
//! 2. raw: a `tss-esapi` loop on one open connection with the primary made
//!    once — load the key's blobs, sign (password session), flush — the
//!    least a client can do per signature.
//!
//! Goal: keybridge ≥ 0.9 × the raw loop. swtpm signs in about a
//! millisecond, a real TPM in 200–600 ms (published figures), so the ratio
//! here shows the bridge's own cost at its most visible.
//!
//! `cargo xtask bench` runs it (release build) and it writes
//! `target/bench/tpm.json`. A missed goal is reported, not failed.

use anyhow::{Context as _, Result, ensure};
use hyper::body::Bytes;
use keybridge_backends::tpm::keyfile::KeyFile;
use keybridge_tests::bench::{Target, exit, keybridge, measure, secs_arg};
use keybridge_tests::swtpm::Swtpm;
use serde_json::json;
use sha2::Digest as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::time::{Duration, Instant};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, HashScheme, Private, Public, SignatureScheme};
use tss_esapi::traits::UnMarshall as _;

const PIN: &str = "bench-pin-1234";
const ROUNDS: usize = 3;
const GOAL: f64 = 0.9;
const SIGN_REQUEST: &str = r#"{"key":"bench","device":"device-00042","command":"remote-control","args":{"mode":"view"},"ttl":300}"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    exit(
        "tpm_bench",
        secs_arg("tpm_bench", &args, Duration::from_secs(2)).and_then(bench),
    )
}

/// Load, sign, flush in a loop for `length` on one connection; signatures
/// per second.
fn raw_loop(tcti: &str, file: &KeyFile, length: Duration) -> Result<f64> {
    let mut ctx = tss_esapi::Context::new(tss_esapi::TctiNameConf::from_str(tcti)?)?;
    // The parent the key file names, rebuilt as keybridge rebuilds it.
    let template = keybridge_backends::tpm::tpm::primary_template()?;
    let primary = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })?;
    let public = Public::unmarshall(file.public_area()?)?;
    let private = Private::try_from(file.private_area()?.to_vec())?;
    let digest: [u8; 32] =
        sha2::Sha256::digest(b"keybridge benchmark Sig_structure stand-in").into();
    let scheme = SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        let key = ctx.load(primary.key_handle, private.clone(), public.clone())?;
        ctx.tr_set_auth(key.into(), Auth::try_from(PIN.as_bytes().to_vec())?)?;
        let ticket = keybridge_backends::tpm::tpm::null_ticket()?;
        ctx.sign(key, Digest::try_from(digest.to_vec())?, scheme, ticket)?;
        ctx.clear_sessions();
        ctx.flush_context(key.into())?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    ctx.flush_context(primary.key_handle.into())?;
    Ok(rate)
}

fn bench(secs: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();
    let tpm = Swtpm::start().context("swtpm is needed (cargo xtask deps)")?;
    let tcti = tpm.tcti();
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tcti_path = PathBuf::from(&tcti);
    let rounds = rt.block_on(async {
        let bridge =
            keybridge::serve(&bin_dir, tmp.path(), &[("TPM2TOOLS_TCTI", &tcti_path)]).await?;
        let created = bridge.cli(
            &[
                "--json",
                "keys",
                "create",
                "--backend",
                "tpm",
                "--account",
                "acme",
                "--agent",
                "bench",
                "--label",
                "bench",
                "--secret-stdin",
            ],
            Some(PIN),
        )?;
        let kid = serde_json::from_str::<serde_json::Value>(&created)?["kid"]
            .as_str()
            .context("no kid")?
            .to_owned();
        bridge.cli(
            &["unlock", "bench", "--remember", "daily", "--secret-stdin"],
            Some(PIN),
        )?;
        let key_file = tmp
            .path()
            .join("state/keys")
            .join(format!("{kid}.tss2.pem"));
        let file = KeyFile::from_pem(&std::fs::read_to_string(&key_file)?)?;
        let target = Target::Http {
            socket: bridge.socket.clone(),
            body: Bytes::from_static(SIGN_REQUEST.as_bytes()),
            field: "envelope",
        };
        let mut rounds = vec![];
        for _ in 0..ROUNDS {
            let through = measure(&target, 1, secs, &[bridge.proc.pid()]).await?;
            let raw = raw_loop(&tcti, &file, secs)?;
            rounds.push((through.throughput(), raw));
        }
        anyhow::Ok(rounds)
    })?;
    let bridge_rate = rounds.iter().map(|(b, _)| b).sum::<f64>() / rounds.len() as f64;
    let raw_rate = rounds.iter().map(|(_, r)| r).sum::<f64>() / rounds.len() as f64;
    ensure!(raw_rate > 0.0 && bridge_rate > 0.0, "nothing was signed");
    let ratio = bridge_rate / raw_rate;
    let added_us = (1.0 / bridge_rate - 1.0 / raw_rate) * 1e6;
    println!(
        "tpm (swtpm, P-256, 1 connection): keybridge {bridge_rate:.0} sig/s, raw load-sign-flush loop {raw_rate:.0} sig/s, ratio {ratio:.2} (goal ≥ {GOAL}) {}, keybridge adds {added_us:.0} µs per signature",
        if ratio >= GOAL { "✔" } else { "✘" }
    );
    let out = target_dir.join("bench").join("tpm.json");
    std::fs::create_dir_all(out.parent().context("bench folder")?)?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "keybridge_sig_per_s": bridge_rate,
            "raw_sig_per_s": raw_rate,
            "ratio": ratio,
            "added_us_per_signature": added_us,
            "goal": GOAL,
            "met": ratio >= GOAL,
        }))?,
    )?;
    println!("wrote {}", out.display());
    drop(tpm);
    Ok(())
}
