//! The command line (DESIGN.md §9), one module per subcommand, mirroring
//! `api/`. Secrets come from a no-echo prompt or, with `--secret-stdin`,
//! from one line of standard input — never from arguments or the
//! environment — straight into a zeroizing type and from there into the
//! request body. Every subcommand but `serve` talks to the daemon through
//! [`crate::client`]; `--json` prints the API's answer as it is.

mod account;
mod attestation;
mod batch;
mod completions;
mod doctor;
mod history;
mod install;
mod keys;
mod lifecycle;
mod pair;
mod recovery;
mod serve;
mod sign;
mod status;
mod unlock;

use crate::client::{Client, ClientError};
use crate::paths::Paths;
use crate::wire::KeyView;
use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use std::io::BufRead as _;
use std::path::PathBuf;

pub use keys::KeysCommand;
pub use serve::ServeArgs;
pub use sign::SignArgs;

#[derive(Parser)]
#[command(
    name = "keybridge",
    version,
    about = "Sign remote-support commands with a key in a token, a YubiKey, a TPM or your passphrase",
    long_about = "keybridge signs the commands a support agent sends to managed devices. \
                  `keybridge serve` runs the per-user daemon; the other commands talk to it."
)]
/// The command line.
pub struct Cli {
    /// The daemon's socket (default: $XDG_RUNTIME_DIR/keybridge/bridge.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (one per user).
    Serve(ServeArgs),
    /// Create, list, show and export keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Unlock a key for signing (prompt frequency: --remember).
    Unlock(unlock::UnlockArgs),
    /// Lock a key now.
    Lock {
        /// Key id (any unique prefix) or label.
        key: String,
    },
    /// Create an account: its key log's genesis event and a recovery file.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Sign a command for one device (--device) or a batch (--devices).
    Sign(SignArgs),
    /// The daemon and its keys.
    Status,
    /// Every signature the daemon made.
    Audit,
    /// Use the account's recovery file.
    #[command(subcommand)]
    Recovery(recovery::RecoveryCommand),
    /// An account's key history, from its verified key log.
    History {
        /// The key log (CBOR sequence).
        #[arg(long)]
        log: PathBuf,
    },
    /// Check what signing needs on this machine, one line each with the
    /// fix: daemon, socket, pcscd and YubiKeys, PKCS#11 modules, TPM, udev
    /// rules, clock, policy. Exit code 1 when a check failed.
    Doctor(doctor::DoctorArgs),
    /// Pair a web console (a token bound to its origin), list or revoke
    /// pairings.
    Pair(pair::PairArgs),
    /// Install the systemd user units: the daemon starts on the first
    /// connection (socket activation).
    Install(install::InstallArgs),
    /// Print the shell completion script for bash, zsh or fish (needs no
    /// daemon).
    #[command(after_help = completions::AFTER_HELP)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What every subcommand needs: where the daemon is, how to print.
struct Ctx {
    paths: Paths,
    socket: PathBuf,
    json: bool,
}

impl Ctx {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Prints `value` as JSON with `--json`, else as `human` renders it.
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("an answer serializes")
            );
        } else {
            println!("{}", human(value));
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::from_env();
    let ctx = Ctx {
        socket: cli.socket.clone().unwrap_or_else(|| paths.socket()),
        paths,
        json: cli.json,
    };
    match &cli.command {
        Command::Serve(args) => serve::run(&ctx, args).await,
        Command::Keys(cmd) => keys::run(&ctx, cmd).await,
        Command::Unlock(args) => unlock::unlock(&ctx, args).await,
        Command::Lock { key } => unlock::lock(&ctx, key).await,
        Command::Account(cmd) => account::run(&ctx, cmd).await,
        Command::Sign(args) => sign::run(&ctx, args).await,
        Command::Status => status::status(&ctx).await,
        Command::Audit => status::audit(&ctx),
        Command::Recovery(cmd) => recovery::run(&ctx, cmd).await,
        Command::History { log } => history::run(&ctx, log),
        Command::Completions { shell } => completions::run(*shell),
        Command::Install(args) => install::run(args),
        Command::Doctor(args) => doctor::run(&ctx, args).await,
        Command::Pair(args) => pair::run(&ctx, args).await,
    }
}

/// The process exit code for an error: 1, or a code per problem kind so
/// scripts can react (README, "CLI exit codes").
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::NotRunning(_)) => 3,
        Some(ClientError::Untrusted(_)) => 11,
        Some(ClientError::Problem(p)) => match p.code.as_str() {
            "locked" => 4,
            "wrong_pin" | "last_attempt" => 5,
            "pin_blocked" => 6,
            "token_absent" => 7,
            "touch_timeout" => 8,
            "policy_denied" => 9,
            "unknown_key" => 10,
            "forbidden" => 11,
            "too_many_attempts" => 12,
            "token_not_answering" => 13,
            _ => 1,
        },
        _ => 1,
    }
}

/// Reads a secret: one line of stdin, or a no-echo prompt on the terminal.
/// It lives in a `SecretString` from the moment it is read.
fn read_secret(from_stdin: bool, prompt: &str, confirm: bool) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
        let trimmed = line.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            bail!("standard input carried no secret");
        }
        return Ok(SecretString::from(trimmed.to_owned()));
    }
    let first = SecretString::from(rpassword::prompt_password(prompt).map_err(|_| {
        anyhow!("no terminal to prompt on; pass the secret on standard input with --secret-stdin")
    })?);
    if confirm {
        let again = SecretString::from(rpassword::prompt_password("Repeat to confirm: ")?);
        if again.expose_secret() != first.expose_secret() {
            bail!("the two entries differ; nothing was changed");
        }
    }
    Ok(first)
}

/// At most the first `n` characters of `s` (ids shown shortened).
fn short(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Unix seconds as an RFC 3339 date (UTC), for people; `--json` keeps the
/// seconds.
fn date(secs: i64) -> String {
    u64::try_from(secs)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        .map_or_else(
            || format!("@{secs}"),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

/// One line per key.
fn key_line(k: &KeyView) -> String {
    let state = match k.unlocked_mode {
        Some(m) => format!("unlocked ({})", m.name()),
        None => "locked".into(),
    };
    format!(
        "{}  {:<10} {:<6} {:<12} {}/{}  {}{}",
        k.kid,
        k.backend,
        k.alg,
        k.label.as_deref().unwrap_or("-"),
        k.account,
        k.agent,
        state,
        if k.login_each_signature == Some(true) {
            "  (PIN on the token for each signature)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_never_panic_on_short_or_multibyte_input() {
        assert_eq!(short("abcdef", 4), "abcd");
        assert_eq!(short("ab", 4), "ab");
        assert_eq!(short("", 4), "");
        assert_eq!(short("ééééé", 2), "éé");
    }

    #[test]
    fn dates_are_rfc3339_and_out_of_range_seconds_stay_numbers() {
        assert_eq!(date(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(date(-5), "@-5");
    }
}
