//! `cargo xtask fuzz --seconds N`: every libFuzzer target of `fuzz/`
//! (cargo-fuzz, stable toolchain, `-s none`) for N seconds each, seeded
//! from `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`, new inputs
//! into `fuzz/target/corpus/TARGET` (the committed seeds do not grow).
//! Prints executions per target; a crash fails the task and leaves its
//! input in `fuzz/artifacts/TARGET/` — copy it into
//! `fuzz/regressions/TARGET/` and the corpus test (`cargo test
//! --manifest-path fuzz/Cargo.toml`) keeps it as a regression test.

use crate::util::{cargo, output, run, step, succeeds, workspace_root};
use anyhow::{Context as _, Result, bail};
use std::process::Command;

/// Runs every target for `seconds`.
pub fn fuzz(seconds: u64) -> Result<()> {
    let root = workspace_root();
    step("cargo-fuzz", || {
        if succeeds(cargo().args(["fuzz", "--version"])) {
            return Ok(());
        }
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))
    })?;
    step("build fuzz targets", || {
        run(cargo()
            .current_dir(&root)
            .args(["fuzz", "build", "-s", "none"]))
    })?;
    let list =
        output(cargo().current_dir(&root).args(["fuzz", "list"])).context("cargo fuzz list")?;
    let bins = root.join("fuzz/target/x86_64-unknown-linux-gnu/release");
    let mut report = vec![];
    for target in list.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let scratch = root.join("fuzz/target/corpus").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let out = Command::new(bins.join(target))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg(&scratch)
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
        println!("fuzz {target}: {execs} executions in {seconds} s");
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "fuzz target {target} crashed: its input is in {}",
                artifacts.display()
            );
        }
        report.push((target.to_owned(), execs));
    }
    println!("xtask fuzz: {} targets, no crash", report.len());
    Ok(())
}
