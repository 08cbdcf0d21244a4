//! `cargo xtask deps`: the Debian packages and the Python venv the tests need.
//!
//! Idempotent: each part first checks what is there and only installs what
//! is missing, printing one `deps: ... ok` line when nothing was to do.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{output, run, succeeds, workspace_root};

/// Debian 12 (bookworm) packages the build and the tests need (DESIGN.md §8).
const DEBIAN_PACKAGES: &[&str] = &[
    "pkg-config",
    "libssl-dev",
    "softhsm2",
    "opensc",
    "openssl",
    "swtpm",
    "swtpm-tools",
    "tpm2-tools",
    "libtss2-dev",
    // Cross-checks of TPM keys: openssl's tpm2 provider reads and writes
    // TSS2 key files; swtpm_setup's local CA (EK certificates) needs
    // certtool.
    "tpm2-openssl",
    "gnutls-bin",
    "pcscd",
    "libpcsclite-dev",
    "vsmartcard-vpcd",
    // Cross-checks of the virtual YubiKey: Debian's PIV tool and PKCS#11
    // module (2.2.0: firmware < 5.7 for them).
    "yubico-piv-tool",
    "ykcs11",
    // PKCS#11 on a TPM (tpm2_ptool makes its tokens), behind a resource
    // manager on the session bus: swtpm alone has 3 object slots and
    // tpm2-pkcs11 runs out of them (TPM_RC_OBJECT_MEMORY).
    "libtpm2-pkcs11-1",
    "libtpm2-pkcs11-tools",
    "python3-tpm2-pkcs11-tools",
    "tpm2-abrmd",
    "libtss2-tcti-tabrmd0",
    "dbus",
    "chromium",
    "openssh-client",
    // The recovery file opens with the age CLI (`age -d`).
    "age",
    "python3-venv",
    // setpriv (tests as another uid) and setsid (the shared pcscd, started
    // detached) come from util-linux, which Debian always has; named so a
    // minimal image gets it too.
    "util-linux",
    // getent (the udev test looks up the tss user and group).
    "libc-bin",
    // script(1): the recovery-passphrase and batch-progress tests type
    // into (read) a real terminal.
    "bsdutils",
    // /usr/bin/time: fleet_bench reads the CLI's peak RSS (ru_maxrss);
    // coreutils (always there; named for a minimal image): df and sync for
    // fleet_bench's tmpfs check and syncs, df for the full-disk test, nice
    // for the background fuzz build of `cargo xtask test`.
    "time",
    "coreutils",
    // `cargo xtask fuzz`: libfuzzer-sys builds libFuzzer from its C++
    // sources.
    "g++",
    // The workstation tests: systemd-socket-activate and systemd-analyze
    // (socket activation, the user units), systemctl (install --user) and
    // timedatectl (doctor's clock check), python3 (the stand-in for
    // systemd that starts the daemon on each connection).
    "systemd",
    "python3",
    // The udev rules test: udevadm test in a private mount namespace
    // (unshare from util-linux, mount), compared with tpm-udev's rules.
    "udev",
    "tpm-udev",
    "mount",
    // Shell completions and man pages: checked by the shells themselves,
    // and by man and groff for warnings.
    "man-db",
    "groff-base",
    "zsh",
    "fish",
    // The browser tests: `ip link set lo up` in their network namespace,
    // and the font the demo console asks for.
    "iproute2",
    "fonts-dejavu-core",
];

/// Python modules the tests import (through `KEYBRIDGE_PYTHON`).
const PYTHON_PACKAGES: &[&str] = &["pycose", "cbor2", "cryptography"];

/// Installs everything the tests need; returns the absolute path of the
/// venv's Python interpreter (what `KEYBRIDGE_PYTHON` should be).
pub fn deps() -> Result<PathBuf> {
    debian_packages()?;
    python_venv()
}

/// True if dpkg reports `package` as fully installed.
fn is_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim().ends_with(" ok installed"))
}

/// True if apt knows an installable candidate version for `package`.
fn has_candidate(package: &str) -> bool {
    let Some(policy) = output(Command::new("apt-cache").args(["policy", package])) else {
        return false;
    };
    policy.lines().any(|line| {
        line.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|version| version.trim() != "(none)")
    })
}

/// True on a Debian-like system with apt-get.
fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && succeeds(Command::new("apt-get").arg("--version"))
}

/// True if we run as root.
fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

/// True if apt has downloaded package lists (so a missing candidate means
/// the package does not exist rather than that the lists are empty).
fn apt_lists_present() -> bool {
    std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// The `apt-get install` command line for `packages`.
fn install_line(packages: &[&str]) -> String {
    format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// Warns about packages that do not exist in this distribution's archive.
fn warn_unknown(unknown: &[&str]) {
    for package in unknown {
        eprintln!(
            "deps: warning: Debian package `{package}` does not exist in the \
             configured apt sources; skipping it"
        );
    }
}

/// An `apt-get` command that never prompts.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Installs the missing Debian packages, running `apt-get update` once first.
fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        println!("deps: debian packages ok");
        return Ok(());
    }
    if !is_debian() {
        bail!(
            "this is not a Debian system (no apt-get or no /etc/debian_version), so \
             `cargo xtask deps` cannot install packages.\n\
             Install the equivalents of these Debian 12 packages by hand:\n    {}",
            missing.join(" ")
        );
    }

    // Packages apt has never heard of although its lists are present do not
    // exist here; needing no update or root for them keeps reruns quiet.
    let lists_present = apt_lists_present();
    let (known, unknown): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .partition(|package| !lists_present || has_candidate(package));
    if known.is_empty() {
        warn_unknown(&unknown);
        println!("deps: debian packages ok (skipped: {})", unknown.join(" "));
        return Ok(());
    }

    if !is_root() {
        bail!(
            "missing Debian packages: {}\n\
             Installing them needs root. Either run `sudo -E cargo xtask deps`, or:\n    \
             sudo apt-get update && sudo {}",
            known.join(" "),
            install_line(&known)
        );
    }

    println!("deps: installing Debian packages: {}", known.join(" "));
    run(apt_get().arg("update")).context("apt-get update failed")?;
    let (available, unknown): (Vec<&str>, Vec<&str>) =
        missing.iter().partition(|package| has_candidate(package));
    warn_unknown(&unknown);
    if !available.is_empty() {
        run(apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&available))
        .with_context(|| format!("could not install: {}", available.join(" ")))?;
    }
    let still_missing: Vec<&str> = available
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "apt-get reported success but these packages are still not installed: {}",
            still_missing.join(" ")
        );
    }
    if unknown.is_empty() {
        println!("deps: debian packages ok");
    } else {
        println!("deps: debian packages ok (skipped: {})", unknown.join(" "));
    }
    Ok(())
}

/// The venv directory, `<workspace root>/target/xtask/venv`.
fn venv_dir() -> PathBuf {
    workspace_root().join("target").join("xtask").join("venv")
}

/// True if `python` can import every module the tests need.
fn imports_ok(python: &Path) -> bool {
    let import = format!("import {}", PYTHON_PACKAGES.join(", "));
    succeeds(Command::new(python).args(["-c", &import]))
}

/// Creates (or repairs) the venv at `target/xtask/venv` and installs the
/// Python packages into it if they are not importable; returns its Python.
fn python_venv() -> Result<PathBuf> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    if imports_ok(&python) {
        println!("deps: python venv ok ({})", python.display());
        return Ok(python);
    }

    if !succeeds(Command::new(&python).args(["-c", ""])) {
        create_venv(&dir, &python)?;
    }
    if !succeeds(Command::new(&python).args(["-m", "pip", "--version"])) {
        run(Command::new(&python).args(["-m", "ensurepip", "--upgrade", "--default-pip"]))
            .context("the venv has no pip and ensurepip could not install it")?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES))
    .with_context(|| {
        format!(
            "could not pip-install {} into {}",
            PYTHON_PACKAGES.join(", "),
            dir.display()
        )
    })?;
    if !imports_ok(&python) {
        bail!(
            "{} still cannot import {} after pip install",
            python.display(),
            PYTHON_PACKAGES.join(", ")
        );
    }
    println!("deps: python venv ok ({})", python.display());
    Ok(python)
}

/// Creates a fresh venv in `dir` with the machine's `python3`, falling back
/// to `--without-pip` plus `ensurepip` if the plain form fails.
fn create_venv(dir: &Path, python: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    let with_pip = run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(dir));
    let Err(first) = with_pip else {
        return Ok(());
    };
    eprintln!("deps: `python3 -m venv` failed ({first:#}); retrying without pip");
    let fallback = run(Command::new("python3")
        .args(["-m", "venv", "--clear", "--without-pip"])
        .arg(dir))
    .and_then(|()| {
        run(Command::new(python).args(["-m", "ensurepip", "--upgrade", "--default-pip"]))
    });
    if let Err(second) = fallback {
        bail!(
            "could not create a Python venv at {}.\n\
             `python3 -m venv` failed: {first:#}\n\
             `python3 -m venv --without-pip` + ensurepip failed: {second:#}\n\
             Make sure `python3` on PATH has the venv and ensurepip modules \
             (on Debian: apt-get install python3-venv).",
            dir.display()
        );
    }
    Ok(())
}
