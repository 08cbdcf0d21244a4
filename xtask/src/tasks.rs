//! `cargo xtask test`, `bench` and `demo`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::deps::deps;
use crate::util::{cargo, run, step, succeeds, target_dir};

/// Environment variable through which tests and benchmarks find the venv's
/// Python (with pycose, cbor2 and cryptography).
const PYTHON_ENV: &str = "KEYBRIDGE_PYTHON";

/// Hidden test hooks the end-to-end tests need in the binaries (see
/// `keybridge_tests::TEST_HOOKS`); never in a release or demo build.
pub(crate) const TEST_HOOKS: &str = "keybridge/test-hooks,keybridge-device/test-hooks";

/// True if `cargo nextest` is installed.
fn nextest_available() -> bool {
    succeeds(cargo().args(["nextest", "--version"]))
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u64 = 5;

/// `cargo xtask test`: deps, rustfmt, clippy, then the tests (nextest plus
/// doctests if nextest is installed, else `cargo test`), a one-minute soak
/// of the daemon and every fuzz target for a few seconds. `args` go to the
/// test runner. Stops at the first failing step.
pub fn test(args: &[String]) -> Result<()> {
    let start = Instant::now();
    let python = step("deps", deps)?;
    step("fmt", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo()
            .args(["fmt", "--manifest-path"])
            .arg(crate::util::workspace_root().join("fuzz/Cargo.toml"))
            .args(["--", "--check"]))
    })?;
    step("clippy", || {
        // Both ways: the shipped code without the hooks, and with them.
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            TEST_HOOKS,
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("build binaries", || {
        run(cargo().args(["build", "--workspace", "--bins", "--features", TEST_HOOKS]))
    })?;
    // The fuzz targets' instrumented build (a dependency tree of its own,
    // minutes cold) runs while the tests wait on daemons and simulators.
    let fuzz_build = crate::fuzz::start_dev_build()?;
    if nextest_available() {
        step("tests (nextest)", || {
            run(cargo()
                .args(["nextest", "run", "--workspace", "--no-tests=warn"])
                .args(["--features", TEST_HOOKS])
                .args(args)
                .env(PYTHON_ENV, &python))
        })?;
        step("doctests", || {
            run(cargo()
                .args(["test", "--workspace", "--doc", "--features", TEST_HOOKS])
                .env(PYTHON_ENV, &python))
        })?;
    } else {
        step("tests", || {
            run(cargo()
                .args(["test", "--workspace", "--features", TEST_HOOKS])
                .args(args)
                .env(PYTHON_ENV, &python))
        })?;
    }
    // The daemon under many clients for a minute (`cargo xtask soak`), on
    // the debug binaries built above: no build of its own.
    crate::soak::run_soak(1.0)?;
    // Every fuzz target (fuzz/), briefly: libFuzzer first runs every seed
    // and every saved crash (a regression fails here), then fuzzes for a
    // few seconds. The same functions also run as an ordinary test
    // (`cargo test --manifest-path fuzz/Cargo.toml`, fuzz/tests/corpus.rs).
    crate::fuzz::brief(fuzz_build, FUZZ_SECONDS)?;
    println!(
        "xtask test: all steps passed ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask bench`: builds the benchmarks, runs `cargo bench --workspace`
/// with `args`, then the extra benchmark drivers.
pub fn bench(args: &[String]) -> Result<()> {
    let start = Instant::now();
    let python = step("deps", deps)?;
    step("build benchmarks", || {
        run(cargo().args(["bench", "--workspace", "--no-run"]))
    })?;
    step("cargo bench", || {
        run(cargo()
            .args(["bench", "--workspace"])
            .args(args)
            .env(PYTHON_ENV, &python))
    })?;
    extra_benchmarks(&python)?;
    println!("xtask bench: done ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Benchmark drivers beyond `cargo bench` (e.g. end-to-end runs against the
/// real backends). Each driver is added here as its own [`step`]; `python`
/// is the venv interpreter, to be exported as `KEYBRIDGE_PYTHON`.
///
/// - `bridge_bench` (issue 3): the release daemon against `ssh-agent` and a
///   bare HTTP signer, a 10,000-device batch and the daemon's memory; it
///   finds `keybridge` next to itself and writes `target/bench/bridge.json`.
/// - `pkcs11_bench` (issue 4): one P-256 key on a SoftHSM2 token, signed
///   with through the daemon, through `ssh-agent` and in a raw cryptoki
///   loop; writes `target/bench/pkcs11.json`. Built by the step above.
/// - `yubikey_bench` (issue 9): one P-256 key on a virtual YubiKey, signed
///   with through the daemon and in a raw `piv::sign_data` loop; writes
///   `target/bench/yubikey.json`.
/// - `tpm_bench` (issue 10): one P-256 key in swtpm, through the daemon
///   and in a raw tss-esapi load-sign-flush loop; writes
///   `target/bench/tpm.json`.
/// - `device_bench` (key lifecycle): `keybridge-device verify` and `trust
///   update` as whole processes with a 10,000-event key log against a
///   1-event one; writes `target/bench/device.json`.
/// - `fleet_bench` (fleet-scale batches): `keybridge sign --devices` for
///   10,000 to 1,000,000 devices into one `.jsonl` file and into a folder
///   (on the disk and on tmpfs), against `dd`, a plain file-writing loop
///   and the Merkle tree alone, with both processes' peak RSS, and a
///   million to a file from a daemon with its wipe of freed memory off (what
///   the wipe costs); checks every envelope's proof; writes
///   `target/bench/fleet.json` (about 5 minutes, most of it creating and
///   deleting a few million files).
fn extra_benchmarks(python: &Path) -> Result<()> {
    // Too slow for every `xtask test` (225,000 parses, ~20 s in release):
    // the exhaustive single-byte-edit sweep of a key log runs here.
    step("exhaustive key-log edit sweep", || {
        run(cargo().args([
            "test",
            "--quiet",
            "--release",
            "-p",
            "keybridge-protocol",
            "--test",
            "log",
            "--",
            "--ignored",
        ]))
    })?;
    step("bridge bench", || {
        build_release(&["keybridge-tests"])?;
        run(
            std::process::Command::new(target_dir().join("release").join("bridge_bench"))
                .env(PYTHON_ENV, python),
        )
    })?;
    step("pkcs11 bench", || {
        run(
            std::process::Command::new(target_dir().join("release").join("pkcs11_bench"))
                .env(PYTHON_ENV, python),
        )
    })?;
    step("yubikey bench", || {
        run(&mut std::process::Command::new(
            target_dir().join("release").join("yubikey_bench"),
        ))
    })?;
    step("tpm bench", || {
        run(&mut std::process::Command::new(
            target_dir().join("release").join("tpm_bench"),
        ))
    })?;
    step("device bench", || {
        build_release(&["keybridge-tests"])?;
        run(&mut std::process::Command::new(
            target_dir().join("release").join("device_bench"),
        ))
    })?;
    step("fleet bench", || {
        build_release(&["keybridge-tests"])?;
        run(&mut std::process::Command::new(
            target_dir().join("release").join("fleet_bench"),
        ))
    })
}

/// Builds the release binaries of `keybridge` and `keybridge-device`, and
/// those of the `extra` packages.
fn build_release(extra: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--release", "--bins"]);
    for package in ["keybridge", "keybridge-device"].iter().chain(extra) {
        cmd.args(["-p", package]);
    }
    run(&mut cmd)
}

/// `cargo xtask demo`: builds the release binaries of the bridge and the
/// device verifier and runs the demo with them.
pub fn demo() -> Result<()> {
    step("build release binaries", || build_release(&[]))?;
    crate::demo::run(&target_dir().join("release"))
}
