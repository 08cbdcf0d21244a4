//! `cargo xtask soak --minutes N`: the daemon under many clients at once
//! for N minutes (`tests/src/bin/soak.rs`: signers, batches, unlock/lock,
//! status, bad requests, slow and disconnecting clients), then every
//! signature verified, the audit log matched line for line, the daemon's
//! memory and descriptors checked. Writes `target/soak/report.json`; a
//! failed check fails the task.
//!
//! It runs the debug binaries with the test hooks (`serve --stream-stall`,
//! `--system-policy`), the ones `cargo xtask test` builds: `cargo xtask
//! soak` builds them with the same command (nothing to do after a test
//! run), and `cargo xtask test` runs a one-minute soak on the binaries it
//! has just built.

use crate::tasks::TEST_HOOKS;
use crate::util::{cargo, run, step, target_dir};
use anyhow::{Result, bail};
use std::process::Command;

/// `cargo xtask soak --minutes N`: builds the debug binaries (as `cargo
/// xtask test` does), then soaks.
pub fn soak(minutes: f64) -> Result<()> {
    if minutes.is_nan() || minutes <= 0.0 || minutes > 600.0 {
        bail!("--minutes {minutes}: more than 0, at most 600");
    }
    step("build binaries (debug, test hooks)", || {
        run(cargo().args(["build", "--workspace", "--bins", "--features", TEST_HOOKS]))
    })?;
    run_soak(minutes)
}

/// Runs the soak driver already built in `target/debug` for `minutes`.
pub fn run_soak(minutes: f64) -> Result<()> {
    step(&format!("soak ({minutes} min)"), || {
        run(Command::new(target_dir().join("debug").join("soak"))
            .args(["--minutes", &minutes.to_string()]))
    })
}
