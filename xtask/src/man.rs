//! `cargo xtask man`: roff man pages for both binaries and each of their
//! subcommands (`keybridge.1`, `keybridge-keys-create.1`, …,
//! `keybridge-device.1`, `keybridge-device-trust-update.1`, …), made by
//! `clap_mangen` from the command lines' own definitions.
//!
//! * `keybridge`: its command line comes from the bridge's library
//!   (`keybridge::cli::Cli`) and the pages are written here.
//! * `keybridge-device` is a binary only: its hidden `man DIR` subcommand
//!   writes its pages, the same way, and lists them. It runs from a release
//!   build, as `demo` and `bench` use: rebuilding `target/debug` without
//!   the test hooks would swap the binary the tests run.

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{cargo, display, run, step, target_dir};

/// `cargo xtask man`: writes the pages into `out` (default
/// `<target>/man`), created if missing, and lists them.
pub fn man(out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| target_dir().join("man"));
    let out = std::path::absolute(&out).with_context(|| format!("{}", out.display()))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut pages = step("keybridge man pages", || {
        write_pages(keybridge::cli::Cli::command(), &out)
            .with_context(|| format!("writing into {}", out.display()))
    })?;
    step("build keybridge-device (release)", || {
        run(cargo().args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "keybridge-device",
            "--bin",
            "keybridge-device",
        ]))
    })?;
    pages.extend(step("keybridge-device man pages", || device_pages(&out))?);
    println!("xtask man: {} pages in {}", pages.len(), out.display());
    for page in &pages {
        println!("{}", page.display());
    }
    Ok(())
}

/// Writes a page for `cmd` and each of its visible subcommands, at any
/// depth (no `help` subcommand), into `dir`; returns the files written.
/// The device's `man` subcommand does the same for `keybridge-device`.
fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn write(
        cmd: &clap::Command,
        source: &str,
        dir: &Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone()).source(source);
        out.push(page.generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, source, dir, out)?;
        }
        Ok(())
    }
    // Built, so that each subcommand's name is its full one
    // (`keybridge-keys-create`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the program and its version.
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut written = vec![];
    write(&cmd, &source, dir, &mut written)?;
    Ok(written)
}

/// Runs the release `keybridge-device man DIR` and returns the pages it
/// lists.
fn device_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new(target_dir().join("release").join("keybridge-device"));
    cmd.arg("man").arg(dir);
    let line = display(&cmd);
    println!("$ {line}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {line}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect())
}
