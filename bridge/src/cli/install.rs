//! `keybridge install --user`: the systemd user units that start the
//! daemon on its first connection (socket activation), as ssh-agent's and
//! gpg-agent's user units do.
//!
//! - `keybridge.socket` listens on `%t/keybridge/bridge.sock` (`%t` is
//!   `$XDG_RUNTIME_DIR`, the daemon's default socket), mode 0600 in a 0700
//!   folder;
//! - `keybridge.service` runs `keybridge serve` on the socket systemd
//!   passes (`Type=notify`: started once it is ready), optionally with
//!   `--idle-exit` so that an idle daemon exits and releases every token
//!   until the next connection.
//!
//! Hardening: only what a user manager applies without user namespaces
//! (no new privileges, a system-call filter, native calls only, no
//! realtime, no W+X memory, Unix and IP sockets only, umask 077). Left
//! out, on purpose: `PrivateDevices=` (the daemon opens `/dev/tpmrm0`),
//! `ProtectSystem=`, `ProtectHome=` and `PrivateTmp=` (mount namespaces,
//! which a user manager cannot set up on distributions that restrict
//! unprivileged user namespaces; the service would fail to start there),
//! `IPAddressDeny=` (a swtpm or remote TPM TCTI, and `--http` on
//! loopback).

use anyhow::{Context as _, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `keybridge install`
#[derive(Args)]
pub struct InstallArgs {
    /// Install the systemd user units (the only kind there is).
    #[arg(long)]
    user: bool,
    /// Print the units instead of writing them.
    #[arg(long)]
    print: bool,
    /// Write the units, but neither reload systemd nor enable the socket.
    #[arg(long)]
    no_enable: bool,
    /// Let the daemon exit after this long without a client (`15min`);
    /// the socket starts it again.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_exit: Option<Duration>,
    /// The folder to write to (default: $XDG_CONFIG_HOME/systemd/user).
    #[arg(long, hide = true)]
    unit_dir: Option<PathBuf>,
}

/// The units: (file name, text), socket first.
pub fn units(
    exe: &Path,
    idle_exit: Option<Duration>,
) -> anyhow::Result<[(&'static str, String); 2]> {
    let exe = exe
        .to_str()
        .filter(|s| !s.contains(char::is_whitespace) && !s.contains(['%', '"', '\\', '$']))
        .with_context(|| {
            format!(
                "{} cannot go into a unit's ExecStart as it is (spaces, quotes or specifiers); install keybridge under a plain path",
                exe.display()
            )
        })?;
    let idle = idle_exit
        .map(|d| format!(" --idle-exit {}s", d.as_secs().max(1)))
        .unwrap_or_default();
    let socket = "\
[Unit]
Description=keybridge signing bridge socket
Documentation=man:keybridge(1) man:keybridge-serve(1)

[Socket]
ListenStream=%t/keybridge/bridge.sock
SocketMode=0600
DirectoryMode=0700
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"
    .to_owned();
    let service = format!(
        "\
[Unit]
Description=keybridge signing bridge (signature keys in a token, a YubiKey, a TPM or a passphrase)
Documentation=man:keybridge(1) man:keybridge-serve(1)
Requires=keybridge.socket
After=keybridge.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} serve{idle}
Restart=on-failure
RestartSec=2
# The daemon drains for up to 20 s (a signature waiting for a touch) and
# locks every key within 5 s.
TimeoutStopSec=30
UMask=0077
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
Also=keybridge.socket
"
    );
    Ok([("keybridge.socket", socket), ("keybridge.service", service)])
}

/// `keybridge install --user`
pub(super) fn run(args: &InstallArgs) -> anyhow::Result<()> {
    if !args.user {
        bail!(
            "keybridge installs per user: `keybridge install --user` (the udev rules in udev/ are the system part; see udev/README.md)"
        );
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let units = units(&exe, args.idle_exit)?;
    if args.print {
        for (name, text) in &units {
            println!("# {name}\n{text}");
        }
        return Ok(());
    }
    let dir = match &args.unit_dir {
        Some(d) => d.clone(),
        None => config_home()?.join("systemd/user"),
    };
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    for (name, text) in &units {
        let path = dir.join(name);
        crate::paths::write_atomic(&path, text.as_bytes())
            .with_context(|| path.display().to_string())?;
        println!("wrote {}", path.display());
    }
    if args.no_enable {
        println!(
            "not enabled: systemctl --user daemon-reload && systemctl --user enable --now keybridge.socket"
        );
        return Ok(());
    }
    for step in [
        &["--user", "daemon-reload"][..],
        &["--user", "enable", "--now", "keybridge.socket"][..],
    ] {
        let out = Command::new("systemctl")
            .args(step)
            .output()
            .context("running systemctl (is systemd your session's service manager?)")?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed: {} — the units are written; run it again in your login session",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "enabled keybridge.socket: the daemon starts on the first connection (systemctl --user status keybridge.socket)"
    );
    Ok(())
}

/// `$XDG_CONFIG_HOME`, or `~/.config`.
fn config_home() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".config"))
}
