//! `keybridge doctor`: what stands between this user and a signature, one
//! line per check with the fix — the daemon and its socket, pcscd and the
//! YubiKeys it sees (and a card another program holds), the PKCS#11
//! modules, the TPM (present, accessible, not locked out), the udev rules,
//! the clock (devices refuse commands from a signer whose clock is off),
//! the policy, and passphrase keys made below the policy's Argon2id floor. `--json` for scripts; the exit code is 1 when a check
//! failed (a warning does not fail).
//!
//! Read-only: no PIN is sent, no token is changed, nothing is written.

use super::Ctx;
use crate::client::ClientError;
use crate::policy::Policy;
use clap::Args;
use serde::Serialize;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `keybridge doctor`
#[derive(Args)]
pub struct DoctorArgs {
    /// The TPM device node to check (default: the one the TCTI names, else
    /// /dev/tpmrm0).
    #[arg(long, value_name = "PATH")]
    tpm_device: Option<PathBuf>,
    /// Test hook: the system policy file instead of /etc/keybridge/policy.toml.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value = crate::policy::SYSTEM_POLICY)]
    system_policy: PathBuf,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but something a user may trip on.
    Warn,
    /// Broken: signing with what it concerns will fail.
    Fail,
    /// Not applicable here (no such hardware, or a tool missing).
    Skip,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`daemon`, `pcscd`, `tpm`, …).
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name,
        outcome,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// `keybridge doctor`
pub(super) async fn run(ctx: &Ctx, args: &DoctorArgs) -> anyhow::Result<()> {
    #[cfg(feature = "test-hooks")]
    let system_policy = args.system_policy.clone();
    #[cfg(not(feature = "test-hooks"))]
    let system_policy = PathBuf::from(crate::policy::SYSTEM_POLICY);

    let mut checks = vec![];
    let status = ctx.client().status().await;
    checks.push(daemon(ctx, &status));
    checks.push(socket(&ctx.socket));
    let readers = tokio::task::spawn_blocking(pcscd).await?;
    checks.extend(readers);
    let policy = Policy::load(
        &system_policy,
        std::env::var_os("KEYBRIDGE_POLICY")
            .map(PathBuf::from)
            .as_deref(),
        &ctx.paths.config_file(),
    );
    checks.push(match &policy {
        Ok(p) => check("policy", Outcome::Ok, describe_policy(p, &system_policy)),
        Err(e) => check("policy", Outcome::Fail, format!("{e}")).fix(
            "fix the file (or remove it): the daemon does not start with a policy it cannot read, and never falls back to \"allow all\"",
        ),
    });
    checks.extend(kdf_floor(status.as_ref().ok()));
    let modules = modules(policy.as_ref().ok(), status.as_ref().ok());
    checks.extend(tokio::task::spawn_blocking(move || check_modules(&modules)).await?);
    let device = args.tpm_device.clone();
    checks.extend(tokio::task::spawn_blocking(move || tpm(device)).await?);
    checks.push(udev());
    checks.push(clock());

    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    ctx.print(
        &serde_json::json!({"ok": !failed, "checks": checks}),
        |_| render(&checks),
    );
    if failed {
        return Err(anyhow::Error::new(Failed));
    }
    Ok(())
}

/// A check failed (exit code 1, nothing more to print).
#[derive(Debug, thiserror::Error)]
#[error("a check failed (see above)")]
pub struct Failed;

fn render(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            let mark = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "--  ",
            };
            let mut line = format!("{mark} {:<8} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                line.push_str(&format!("\n              fix: {fix}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn daemon(ctx: &Ctx, status: &Result<crate::wire::Status, ClientError>) -> Check {
    match status {
        Ok(s) => check(
            "daemon",
            Outcome::Ok,
            format!(
                "running (pid {}, version {}), {} keys, {} unlocked",
                s.pid,
                s.version,
                s.keys.len(),
                s.keys.iter().filter(|k| k.unlocked).count()
            ),
        ),
        Err(ClientError::NotRunning(_)) => check(
            "daemon",
            Outcome::Fail,
            format!("not running at {}", ctx.socket.display()),
        )
        .fix(
            "systemctl --user start keybridge.socket (after `keybridge install --user`), or run `keybridge serve`",
        ),
        Err(e) => check("daemon", Outcome::Fail, e.to_string()).fix(
            "see the daemon's log: journalctl --user -u keybridge, or the terminal running `keybridge serve`",
        ),
    }
}

fn socket(path: &Path) -> Check {
    let uid = rustix::process::getuid().as_raw();
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return check(
            "socket",
            Outcome::Skip,
            format!(
                "{} does not exist (the daemon is not running)",
                path.display()
            ),
        );
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::symlink_metadata(dir).ok();
    let mut wrong = vec![];
    if !meta.file_type().is_socket() {
        wrong.push("is not a socket".to_owned());
    }
    if meta.uid() != uid {
        wrong.push(format!("belongs to uid {}, not you ({uid})", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        wrong.push(format!(
            "has mode {:o}: others may connect",
            meta.mode() & 0o777
        ));
    }
    match &dir_meta {
        Some(d) if d.uid() != uid || d.mode() & 0o077 != 0 => wrong.push(format!(
            "its folder {} has owner {} and mode {:o} (0700, yours, expected)",
            dir.display(),
            d.uid(),
            d.mode() & 0o777
        )),
        _ => {}
    }
    if wrong.is_empty() {
        check(
            "socket",
            Outcome::Ok,
            format!("{}: yours, mode 0600, folder 0700", path.display()),
        )
    } else {
        check(
            "socket",
            Outcome::Fail,
            format!("{} {}", path.display(), wrong.join("; ")),
        )
        .fix(format!(
            "stop the daemon, remove {} and start it again (keybridge makes both private); if another user made them, report it",
            dir.display()
        ))
    }
}

/// pcscd, the readers, the YubiKeys in them, and cards another program
/// holds.
fn pcscd() -> Vec<Check> {
    #[cfg(feature = "yubikey")]
    {
        use keybridge_backends::health::{PcscError, pcsc_readers};
        let readers = match pcsc_readers() {
            Ok(r) => r,
            Err(e @ PcscError::NoService(_)) => {
                return vec![check("pcscd", Outcome::Fail, e.to_string()).fix(
                    "sudo apt install pcscd && sudo systemctl enable --now pcscd.socket; YubiKeys and smart cards are reached through it",
                )];
            }
            Err(e) => return vec![check("pcscd", Outcome::Fail, e.to_string())],
        };
        let mut out = vec![check(
            "pcscd",
            Outcome::Ok,
            format!(
                "running, {} reader{} ({} with a card)",
                readers.len(),
                if readers.len() == 1 { "" } else { "s" },
                readers.iter().filter(|r| r.card).count()
            ),
        )];
        for r in readers.iter().filter(|r| r.exclusive) {
            out.push(
                check(
                    "card",
                    Outcome::Warn,
                    format!("the card in {:?} is held by another program", r.name),
                )
                .fix(
                    "close it, or stop it from keeping cards: gpg's scdaemon (gpgconf --kill scdaemon; disable-ccid / pcsc-shared in scdaemon.conf), ykman, a browser's PKCS#11 module",
                ),
            );
        }
        if !readers.iter().any(|r| r.card) {
            out.push(check("yubikey", Outcome::Skip, "no card in any reader"));
            return out;
        }
        match keybridge_backends::list(keybridge_backends::BackendKind::Yubikey, None) {
            Ok(cards) if cards.is_empty() => {
                out.push(check("yubikey", Outcome::Skip, "no YubiKey plugged in"))
            }
            Ok(cards) => {
                for c in cards {
                    let pin = if c.pin_locked {
                        " — PIN BLOCKED"
                    } else if c.pin_final_try {
                        " — one PIN attempt left"
                    } else {
                        ""
                    };
                    let outcome = if pin.is_empty() {
                        Outcome::Ok
                    } else {
                        Outcome::Warn
                    };
                    let mut c2 = check(
                        "yubikey",
                        outcome,
                        format!("serial {}, {}{pin}", c.serial, c.model),
                    );
                    if !pin.is_empty() {
                        c2 = c2.fix("unblock the PIN with the PUK: yubico-piv-tool -a unblock-pin (or ykman piv access unblock-pin)");
                    }
                    out.push(c2);
                }
            }
            Err(e) => out.push(check("yubikey", Outcome::Warn, e.to_string())),
        }
        out
    }
    #[cfg(not(feature = "yubikey"))]
    vec![check(
        "pcscd",
        Outcome::Skip,
        "this build has no YubiKey backend",
    )]
}

fn describe_policy(p: &Policy, system: &Path) -> String {
    let remember: Vec<&str> = p.allowed_remember.iter().map(|r| r.name()).collect();
    let source = if system.exists() {
        system.display().to_string()
    } else {
        format!("defaults (no {})", system.display())
    };
    let mut s = format!(
        "{source}: prompt frequency {}, commands valid up to {} s",
        remember.join("/"),
        p.max_ttl
    );
    if !p.no_fallback.is_empty() {
        s.push_str(&format!(
            ", no fallback for {}",
            p.no_fallback.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if p.kdf_floor != crate::policy::KdfFloor::default() {
        s.push_str(&format!(
            ", new passphrase keys at least {} MiB and {} Argon2id passes",
            p.kdf_floor.min_kdf_memory_mib, p.kdf_floor.min_kdf_passes
        ));
    }
    s
}

/// The daemon's passphrase keys against its policy's Argon2id floor: a key
/// below it still signs (a warning, not a failure), but should be replaced.
fn kdf_floor(status: Option<&crate::wire::Status>) -> Vec<Check> {
    let Some(status) = status else {
        return vec![];
    };
    let keys: Vec<_> = status
        .keys
        .iter()
        .filter_map(|k| Some((k, k.kdf.as_ref()?)))
        .collect();
    if keys.is_empty() {
        return vec![check("kdf", Outcome::Skip, "no passphrase key")];
    }
    let below: Vec<Check> = keys
        .iter()
        .filter_map(|(k, kdf)| {
            let why = kdf.below_policy.as_ref()?;
            let name = k.label.as_deref().unwrap_or(&k.kid);
            Some(
                check(
                    "kdf",
                    Outcome::Warn,
                    format!(
                        "passphrase key {name} (Argon2id {}): {why}; it still signs",
                        super::keys::costs_text(kdf)
                    ),
                )
                .fix(format!(
                    "replace it: keys create --backend passphrase --account {} --agent {} with costs at the floor or above (--kdf-memory, --kdf-passes), keys request --replaces {name}, have it approved, then revoke the old key",
                    k.account, k.agent
                )),
            )
        })
        .collect();
    if below.is_empty() {
        vec![check(
            "kdf",
            Outcome::Ok,
            format!(
                "{} passphrase key{} at or above the policy's Argon2id floor",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" }
            ),
        )]
    } else {
        below
    }
}

/// The PKCS#11 modules to check: those of the daemon's keys, and
/// `KEYBRIDGE_PKCS11_MODULE`.
fn modules(policy: Option<&Policy>, status: Option<&crate::wire::Status>) -> Vec<(String, bool)> {
    let mut out: Vec<String> = status
        .into_iter()
        .flat_map(|s| &s.keys)
        .filter(|k| k.backend == "pkcs11")
        .filter_map(|k| module_of(&k.uri))
        .collect();
    if let Ok(m) = std::env::var("KEYBRIDGE_PKCS11_MODULE") {
        out.push(m);
    }
    out.sort();
    out.dedup();
    out.into_iter()
        .map(|m| {
            let allowed = policy.is_none_or(|p| p.pkcs11_modules.allows(Path::new(&m)));
            (m, allowed)
        })
        .collect()
}

/// The `module-path` of a PKCS#11 URI.
fn module_of(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("module-path="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

fn check_modules(modules: &[(String, bool)]) -> Vec<Check> {
    if modules.is_empty() {
        return vec![check(
            "pkcs11",
            Outcome::Skip,
            "no PKCS#11 module in use (no token key, no KEYBRIDGE_PKCS11_MODULE)",
        )];
    }
    modules
        .iter()
        .map(|(m, allowed)| {
            if !allowed {
                return check(
                    "pkcs11",
                    Outcome::Fail,
                    format!("{m}: not allowed by the policy's pkcs11_modules"),
                )
                .fix("ask your administrator to add it to pkcs11_modules in /etc/keybridge/policy.toml");
            }
            match keybridge_backends::list(keybridge_backends::BackendKind::Pkcs11, Some(m)) {
                Ok(slots) => check(
                    "pkcs11",
                    Outcome::Ok,
                    format!("{m}: loads, {} token{}", slots.len(), if slots.len() == 1 { "" } else { "s" }),
                ),
                Err(e) => check("pkcs11", Outcome::Fail, format!("{m}: {e}")).fix(
                    "install the module's package, or correct the path in the key's URI (keybridge keys show)",
                ),
            }
        })
        .collect()
}

/// The TPM device node (from `--tpm-device`, else the TCTI's, else
/// /dev/tpmrm0): present, accessible, and its lockout state.
fn tpm(device: Option<PathBuf>) -> Vec<Check> {
    let tcti = std::env::var("TPM2TOOLS_TCTI")
        .or_else(|_| std::env::var("TCTI"))
        .ok()
        .filter(|t| !t.is_empty());
    let node = match (&device, tcti.as_deref()) {
        (Some(d), _) => Some(d.clone()),
        (None, None) => Some(PathBuf::from("/dev/tpmrm0")),
        (None, Some(t)) => t
            .strip_prefix("device:")
            .map(|p| PathBuf::from(if p.is_empty() { "/dev/tpmrm0" } else { p })),
    };
    let mut out = vec![];
    if let Some(node) = &node {
        let meta = match std::fs::metadata(node) {
            Ok(m) => m,
            Err(_) => {
                return vec![check(
                    "tpm",
                    Outcome::Skip,
                    format!(
                        "no TPM device {} (no TPM, or it is off in the firmware settings)",
                        node.display()
                    ),
                )];
            }
        };
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)
        {
            Ok(_) => out.push(check(
                "tpm",
                Outcome::Ok,
                format!(
                    "{} is accessible{}",
                    node.display(),
                    if meta.file_type().is_char_device() {
                        ""
                    } else {
                        " (not a device node)"
                    }
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let group = group_name(meta.gid());
                let member = in_group(meta.gid());
                return vec![check(
                    "tpm",
                    Outcome::Fail,
                    format!(
                        "{} is not accessible to you (owner group {group}, mode {:o}; you are {}in it)",
                        node.display(),
                        meta.mode() & 0o777,
                        if member { "" } else { "not " }
                    ),
                )
                .fix(if member {
                    "log out and in again (a new group takes effect at login), and check udev/60-keybridge-tpm.rules gives the node mode 0660".to_owned()
                } else {
                    format!(
                        "sudo usermod -aG {group} $USER, then log in again (install udev/60-keybridge-tpm.rules so that /dev/tpmrm0 is group tss, mode 0660)"
                    )
                })];
            }
            Err(e) => {
                return vec![check(
                    "tpm",
                    Outcome::Fail,
                    format!("{}: {e}", node.display()),
                )];
            }
        }
    }
    #[cfg(feature = "tpm")]
    {
        let tcti = tcti.unwrap_or_else(|| match &node {
            Some(n) => format!("device:{}", n.display()),
            None => "device:/dev/tpmrm0".into(),
        });
        match keybridge_backends::health::tpm_lockout(&tcti) {
            Ok(l) if l.left() == 0 => out.push(
                check(
                    "lockout",
                    Outcome::Fail,
                    format!(
                        "the TPM is locked out ({} of {} failed PIN attempts); one is forgiven every {} s",
                        l.counter, l.max_tries, l.interval
                    ),
                )
                .fix("wait, or clear it with the lockout authorization: tpm2_dictionarylockout --clear-lockout"),
            ),
            Ok(l) => out.push(check(
                "lockout",
                Outcome::Ok,
                format!("{} of {} failed PIN attempts counted", l.counter, l.max_tries),
            )),
            Err(e) => out.push(check("lockout", Outcome::Warn, format!("{tcti}: {e}"))),
        }
    }
    out
}

/// The name of group `gid` (`/etc/group`), else its number.
fn group_name(gid: u32) -> String {
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|g| {
            g.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?;
                (id.parse::<u32>().ok() == Some(gid)).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| gid.to_string())
}

/// Whether this process has group `gid`.
fn in_group(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups()
            .map(|g| g.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false)
}

/// The udev rules, installed where udev reads them.
fn udev() -> Check {
    let dirs = [
        "/etc/udev/rules.d",
        "/usr/lib/udev/rules.d",
        "/lib/udev/rules.d",
    ];
    let found: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("keybridge"))
        .map(|e| e.path().display().to_string())
        .collect();
    if found.is_empty() {
        check("udev", Outcome::Warn, "keybridge's udev rules are not installed").fix(
            "sudo install -m 0644 udev/*.rules /etc/udev/rules.d/ && sudo udevadm control --reload && sudo udevadm trigger (udev/README.md)",
        )
    } else {
        check("udev", Outcome::Ok, found.join(", "))
    }
}

/// The system clock's synchronization, as systemd-timedated reports it.
fn clock() -> Check {
    let out = Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .output();
    match out {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim() {
            "yes" => check("clock", Outcome::Ok, "synchronized (NTP)"),
            _ => check(
                "clock",
                Outcome::Warn,
                "not synchronized: devices refuse commands whose time is off by more than their skew (exit 20/21 there)",
            )
            .fix("sudo timedatectl set-ntp true (or start chrony / systemd-timesyncd)"),
        },
        _ => check(
            "clock",
            Outcome::Skip,
            "unknown: timedatectl cannot tell (no systemd-timedated here); check that an NTP client runs",
        ),
    }
}
