//! `cargo xtask fuzz --seconds N`: every libFuzzer target of `fuzz/`
//! (cargo-fuzz, stable toolchain, `-s none`) for N seconds each, seeded
//! from `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`, new inputs
//! into `fuzz/target/corpus/TARGET` (the committed seeds do not grow).
//! Prints executions per target; a crash fails the task and leaves its
//! input in `fuzz/artifacts/TARGET/` — copy it into
//! `fuzz/regressions/TARGET/` and every later run replays it.
//!
//! [`brief`] is the bounded run `cargo xtask test` does: a dev build of
//! the targets with the instrumentation cargo-fuzz gives `-s none`
//! (SanitizerCoverage: inline 8-bit counters, PC table, compare tracing;
//! `--cfg fuzzing`, debug assertions) by `cargo build` itself — no
//! cargo-fuzz to install on a fresh machine, and more codegen units than
//! cargo-fuzz's one, which would double the cold build —, each target
//! started on every seed and saved crash (libFuzzer runs each of them
//! first, so a regression fails here) and then fuzzing for a few seconds,
//! new inputs into `target/fuzz-brief` (emptied first).

use crate::util::{cargo, run, step, succeeds, workspace_root};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs every target for `seconds` (release build).
pub fn fuzz(seconds: u64) -> Result<()> {
    let root = workspace_root();
    let bins = build()?;
    let scratch = root.join("fuzz/target/corpus");
    let report = run_all(&bins, seconds, &scratch)?;
    for (target, execs) in &report {
        println!("fuzz {target}: {execs} executions in {seconds} s");
    }
    println!("xtask fuzz: {} targets, no crash", report.len());
    Ok(())
}

/// The dev build of the targets for [`brief`], started in the background
/// at the lowest CPU priority (`nice -n 19`) so that it takes only what
/// the tests leave idle (they wait on daemons, simulators and deadlines
/// much of the time); its output goes to `target/fuzz-build.log`.
/// Dropped unwaited (a step before failed), it stops the build.
pub struct BackgroundBuild {
    child: Option<std::process::Child>,
    log: PathBuf,
    started: std::time::Instant,
}

impl Drop for BackgroundBuild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts [`BackgroundBuild`].
pub fn start_dev_build() -> Result<BackgroundBuild> {
    let root = workspace_root();
    let log = root.join("target/fuzz-build.log");
    std::fs::create_dir_all(root.join("target"))?;
    let out = std::fs::File::create(&log)?;
    let flags: Vec<&str> = COVERAGE_FLAGS.split_whitespace().collect();
    let cargo_path = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = if succeeds(Command::new("nice").arg("true")) {
        let mut c = Command::new("nice");
        c.args(["-n", "19"]).arg(cargo_path);
        c
    } else {
        Command::new(cargo_path)
    };
    let child = cmd
        .current_dir(root.join("fuzz"))
        .args(["build", "--bins", "--target", TRIPLE])
        .env("RUSTFLAGS", flags.join(" "))
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the fuzz targets' build")?;
    println!(
        "==> build fuzz targets (dev, instrumented): in the background, log in {}",
        log.display()
    );
    Ok(BackgroundBuild {
        child: Some(child),
        log,
        started: std::time::Instant::now(),
    })
}

/// `cargo xtask test`'s run: waits for `build`, then every target for
/// `seconds`.
pub fn brief(mut build: BackgroundBuild, seconds: u64) -> Result<()> {
    let (log, started) = (build.log.clone(), build.started);
    step("build fuzz targets (dev, instrumented): wait", || {
        let mut child = build.child.take().context("waited for already")?;
        let status = child.wait()?;
        println!(
            "    built in the background in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "building the fuzz targets failed ({status}); see {}",
                log.display()
            );
        }
        Ok(())
    })?;
    let bins = workspace_root()
        .join("fuzz/target")
        .join(TRIPLE)
        .join("debug");
    let scratch = workspace_root().join("target/fuzz-brief");
    let _ = std::fs::remove_dir_all(&scratch);
    step("fuzz targets, briefly", || {
        let report = run_all(&bins, seconds, &scratch)?;
        let summary: Vec<String> = report
            .iter()
            .map(|(t, execs)| format!("{t} {execs}"))
            .collect();
        println!(
            "    {seconds} s per target, executions: {}",
            summary.join(", ")
        );
        Ok(())
    })
}

/// The target triple the fuzz targets are built for (as cargo-fuzz).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// cargo-fuzz's instrumentation for `-s none` (cargo-fuzz 0.12/0.13,
/// `BuildOptions` with no sanitizer), for the dev build; 16 codegen
/// units instead of its one.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
    -Cllvm-args=-sanitizer-coverage-stack-depth \
    --cfg fuzzing -Cdebug-assertions -Ccodegen-units=16";

/// Builds the targets for a long run (release, with cargo-fuzz,
/// installed if needed); where they are.
fn build() -> Result<PathBuf> {
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
    Ok(root.join("fuzz/target").join(TRIPLE).join("release"))
}

/// The targets: one file each in `fuzz/fuzz_targets`.
fn targets() -> Result<Vec<String>> {
    let dir = workspace_root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Runs each target in `bins` for `seconds`, from the committed seeds and
/// saved crashes, new inputs under `scratch/TARGET`; the executions per
/// target. A crash fails, naming the file that holds its input.
fn run_all(bins: &Path, seconds: u64, scratch: &Path) -> Result<Vec<(String, String)>> {
    let root = workspace_root();
    let mut report = vec![];
    for target in targets()? {
        let target = target.as_str();
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
