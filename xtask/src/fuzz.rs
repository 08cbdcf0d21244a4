//! `cargo xtask fuzz --seconds N`: every libFuzzer target of `fuzz/`
//! (cargo-fuzz, stable toolchain, `-s none`) for N seconds each, seeded
//! from `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`, new inputs
//! into `fuzz/target/corpus/TARGET` (the committed seeds do not grow).
//! Prints executions per target; a crash fails the task and leaves its
//! input in `fuzz/artifacts/TARGET/` — copy it into
//! `fuzz/regressions/TARGET/` and every later run replays it.
//!
//! [`brief`] is the bounded run `cargo xtask test` does: a dev build of
//! the targets (still coverage-instrumented, with debug assertions; more
//! codegen units than cargo-fuzz's one, which would double the cold
//! build), each target started on every seed and saved crash — libFuzzer
//! runs each of them first, so a regression fails here — and then fuzzing
//! for a few seconds, new inputs into `target/fuzz-brief` (emptied first).

use crate::util::{cargo, output, run, step, succeeds, workspace_root};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs every target for `seconds` (release build).
pub fn fuzz(seconds: u64) -> Result<()> {
    let root = workspace_root();
    let bins = build(false)?;
    let scratch = root.join("fuzz/target/corpus");
    let report = run_all(&bins, seconds, &scratch)?;
    for (target, execs) in &report {
        println!("fuzz {target}: {execs} executions in {seconds} s");
    }
    println!("xtask fuzz: {} targets, no crash", report.len());
    Ok(())
}

/// `cargo xtask test`'s run: every target for `seconds` from a dev build.
pub fn brief(seconds: u64) -> Result<()> {
    let bins = build(true)?;
    let scratch = workspace_root().join("target/fuzz-brief");
    let _ = std::fs::remove_dir_all(&scratch);
    let report = run_all(&bins, seconds, &scratch)?;
    let summary: Vec<String> = report
        .iter()
        .map(|(t, execs)| format!("{t} {execs}"))
        .collect();
    println!(
        "fuzz, {seconds} s per target, executions: {}",
        summary.join(", ")
    );
    Ok(())
}

/// Installs cargo-fuzz if needed and builds the targets; where they are.
fn build(dev: bool) -> Result<PathBuf> {
    let root = workspace_root();
    step("cargo-fuzz", || {
        if succeeds(cargo().args(["fuzz", "--version"])) {
            return Ok(());
        }
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))
    })?;
    step("build fuzz targets", || {
        let mut c = cargo();
        c.current_dir(&root).args(["fuzz", "build", "-s", "none"]);
        if dev {
            // cargo-fuzz puts RUSTFLAGS after its own flags: this codegen
            // unit count replaces its `-Ccodegen-units=1`.
            c.arg("--dev").env("RUSTFLAGS", "-Ccodegen-units=16");
        }
        run(&mut c)
    })?;
    let profile = if dev { "debug" } else { "release" };
    Ok(root
        .join("fuzz/target/x86_64-unknown-linux-gnu")
        .join(profile))
}

/// Runs each target in `bins` for `seconds`, from the committed seeds and
/// saved crashes, new inputs under `scratch/TARGET`; the executions per
/// target. A crash fails, naming the file that holds its input.
fn run_all(bins: &Path, seconds: u64, scratch: &Path) -> Result<Vec<(String, String)>> {
    let root = workspace_root();
    let list =
        output(cargo().current_dir(&root).args(["fuzz", "list"])).context("cargo fuzz list")?;
    let mut report = vec![];
    for target in list.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let corpus = scratch.join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let out = Command::new(bins.join(target))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg(&corpus)
            .arg(root.join("fuzz/corpus").join(target))
            .arg(root.join("fuzz/regressions").join(target))
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let execs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        if !out.status.success() || execs == "?" {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "fuzz target {target} crashed: its input is in {}",
                artifacts.display()
            );
        }
        report.push((target.to_owned(), execs));
    }
    Ok(report)
}
