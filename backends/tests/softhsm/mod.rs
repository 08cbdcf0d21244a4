//! A SoftHSM2 token directory per test, and the command-line tools that
//! cross-check what keybridge made (`softhsm2-util`, `pkcs11-tool`,
//! `openssl`).
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, when the module is first
//! initialised, and keybridge keeps one initialised module per process. So
//! each test runs in its own process: the `#[test]` re-runs this test
//! binary for just that test, with `SOFTHSM2_CONF` pointing at a fresh
//! directory (the environment of a child is set safely with `Command::env`;
//! changing our own would need `unsafe`). Under `cargo test` the tests still
//! run in parallel, each child with its own tokens.
//!
//! Missing tools: under `CI=true` the test fails; otherwise it prints a loud
//! SKIP and passes.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The SoftHSM2 module Debian installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token.
pub const PIN: &str = "123456";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "12345678";

/// Set in the child: the test's SoftHSM directory.
const CHILD_ENV: &str = "KEYBRIDGE_TEST_SOFTHSM_DIR";
const TOOLS: [&str; 3] = ["softhsm2-util", "pkcs11-tool", "openssl"];

/// One test's SoftHSM2: a token directory and its configuration.
pub struct SoftHsm {
    dir: PathBuf,
}

/// A token made with `softhsm2-util --init-token`.
pub struct Token {
    /// The token label.
    pub label: String,
    /// Its directory under `tokens/`.
    pub dir: PathBuf,
}

/// Declares a `#[test]` that runs `body` in its own process with a fresh
/// SoftHSM2 (see the module docs).
#[macro_export]
macro_rules! softhsm_test {
    ($(#[$meta:meta])* fn $name:ident($hsm:ident) $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            softhsm::run(stringify!($name), &[], |$hsm: &softhsm::SoftHsm| $body)
        }
    };
    ($(#[$meta:meta])* fn $name:ident($hsm:ident) with env $env:expr => $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            softhsm::run(stringify!($name), $env, |$hsm: &softhsm::SoftHsm| $body)
        }
    };
}

/// Runs `body` with a fresh SoftHSM2, in a child process of this test
/// binary (see the module docs). `env` is added to the child's environment.
pub fn run(test: &str, env: &[(&str, &str)], body: impl FnOnce(&SoftHsm)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        body(&SoftHsm {
            dir: PathBuf::from(dir),
        });
        return;
    }
    if !tools_present() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("keybridge-softhsm-")
        .tempdir()
        .expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, dir.path())
        .env_remove(keybridge_backends::pkcs11::MODULE_ENV);
    for (name, value) in env {
        child.env(name, value);
    }
    let out = child.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by `cargo test -- --nocapture`, and on failure.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its SoftHSM process ({})",
        out.status
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

fn tools_present() -> bool {
    let mut missing: Vec<&str> = TOOLS.into_iter().filter(|t| !on_path(t)).collect();
    if !Path::new(MODULE).is_file() {
        missing.push(MODULE);
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true and the PKCS#11 test tools are missing: {what} (cargo xtask deps installs them)"
        );
    }
    // Straight to stderr: libtest hides `eprintln!` of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIP: PKCS#11 tests need {what} (cargo xtask deps installs them) !!!!!!!!\n"
    );
    false
}

/// Runs a tool; panics with its output unless it succeeds.
pub fn tool<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = tool_output(program, args);
    assert!(
        out.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a tool and returns whatever happened.
pub fn tool_output<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

impl SoftHsm {
    /// The test's directory (for scratch files too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The token directory SoftHSM2 scans.
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// `softhsm2-util --init-token --free` with the test PINs.
    pub fn init_token(&self, label: &str) -> Token {
        let before = self.token_dirs();
        tool(
            "softhsm2-util",
            [
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ],
        );
        let mut new: Vec<PathBuf> = self
            .token_dirs()
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        assert_eq!(new.len(), 1, "one new token directory");
        Token {
            label: label.to_owned(),
            dir: new.remove(0),
        }
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tokens())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// `pkcs11-tool --module MODULE …`.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        tool("pkcs11-tool", [&["--module", MODULE][..], args].concat())
    }

    /// A key URI on `token` with `attrs` (`object=…;id=…`) and the module.
    pub fn uri(&self, token: &str, attrs: &str) -> String {
        let sep = if attrs.is_empty() { "" } else { ";" };
        format!("pkcs11:token={token}{sep}{attrs}?module-path={MODULE}")
    }

    /// A file in the test directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
