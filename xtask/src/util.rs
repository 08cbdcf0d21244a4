//! Small helpers shared by the tasks: paths, running commands, timing steps.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of the `xtask` crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("xtask's manifest directory has a parent")
        .to_path_buf();
    root.canonicalize().unwrap_or(root)
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The cargo that runs us (`$CARGO`), so nested builds use the same
/// toolchain; plain `cargo` otherwise.
fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// A `cargo` command whose working directory is the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root());
    cmd
}

/// Quotes one word for display the way a POSIX shell would need it.
fn shell_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command line of `cmd` as a shell would show it (`cargo` for `$CARGO`).
pub fn display(cmd: &Command) -> String {
    let program = cmd.get_program();
    let mut line = if Path::new(program) == cargo_program() {
        "cargo".to_owned()
    } else {
        shell_quote(program)
    };
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line
}

/// Echoes `cmd` (`$ cargo fmt ...`), runs it with inherited stdio and fails,
/// naming the command line, unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("command failed ({status}): {line}");
    }
    Ok(())
}

/// Runs `cmd` without echo, output discarded; true if it started and
/// exited successfully.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `cmd` without echo and returns its standard output, or `None` if it
/// could not start or exited unsuccessfully.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one named step of a task, printing its elapsed time; on failure the
/// error names the step.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f();
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(value) => {
            println!("<== {name}: ok ({secs:.1}s)");
            Ok(value)
        }
        Err(err) => {
            println!("<== {name}: FAILED ({secs:.1}s)");
            Err(err.context(format!("step `{name}` failed")))
        }
    }
}
