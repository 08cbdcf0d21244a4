//! `keybridge-device`: the verifier a managed device runs.
//!
//! It trusts one key log per account (`trust init`, `trust update`) and
//! verifies signed commands against it (`verify`). Exit 0 and the verified
//! claims as JSON on stdout, or a one-line reason on stderr and an exit code
//! of its own for each refusal (see `--help`).
//!
//! Every input file is read only up to a limit: a signed command up to
//! [`MAX_ENVELOPE_LEN`] (64 KiB), a body up to [`MAX_BODY_LEN`] (64 MiB), a
//! key log up to [`state::MAX_LOG_LEN`] (16 MiB). Larger files are refused
//! without being read whole.
//!
//! With the cargo feature `test-hooks` (never in a shipped build), `verify
//! --now UNIX_SECONDS` replaces the system clock.

mod exit_code;
mod state;

use clap::{Parser, Subcommand};
use keybridge_protocol::key::hex;
use keybridge_protocol::{
    ArgValue, KeyLog, LogError, MAX_ENVELOPE_LEN, Verified, Verifier, VerifyError, check_device_id,
    unverified_account,
};
use serde_json::{Value, json};
use state::{ReadError, Settings, State, StateError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Largest detached body (`verify --body`) read: 64 MiB.
const MAX_BODY_LEN: usize = 64 * 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "keybridge-device",
    version,
    about = "Verify keybridge signed commands on a managed device",
    after_help = exit_code::help()
)]
struct Cli {
    /// State folder (trusted logs, replay caches, settings).
    #[arg(long, global = true, default_value = state::DEFAULT_STATE, env = "KEYBRIDGE_DEVICE_STATE")]
    state: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the accounts this device trusts.
    #[command(subcommand)]
    Trust(Trust),
    /// Verify a signed command; print its claims as JSON when accepted.
    Verify {
        /// The signed command (a COSE_Sign1 file, `.cose`).
        command: PathBuf,
        /// The detached body (a script) whose SHA-256 the command signs.
        #[arg(long)]
        body: Option<PathBuf>,
        /// This device's id, instead of the one stored at `trust init`.
        #[arg(long)]
        device_id: Option<String>,
        /// Verify at this unix time instead of the system clock (test
        /// builds only: cargo feature `test-hooks`).
        #[cfg(feature = "test-hooks")]
        #[arg(long, hide = true)]
        now: Option<i64>,
    },
}

#[derive(Subcommand)]
enum Trust {
    /// Deployment: trust the account whose key log this is.
    Init {
        /// The account's key log (CBOR sequence of events).
        log: PathBuf,
        /// This device's id.
        #[arg(long)]
        device_id: String,
        /// Clock skew tolerance in seconds.
        #[arg(long, default_value_t = keybridge_protocol::verify::DEFAULT_SKEW)]
        skew: i64,
    },
    /// Take a newer key log: only an extension of the trusted one.
    Update {
        /// The account's key log.
        log: PathBuf,
    },
    /// Show the trusted accounts and their active keys.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// A failure: the message for stderr and the exit code.
struct Failure(String, u8);

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        let code = match e {
            StateError::StoredLog(_) => exit_code::LOG_INVALID,
            _ => exit_code::STATE,
        };
        Failure(e.to_string(), code)
    }
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Self {
        let (code, _) = exit_code::of_verify(&e);
        Failure(e.to_string(), code)
    }
}

fn log_failure(e: LogError) -> Failure {
    let (code, _) = exit_code::of_log(&e);
    Failure(format!("key log refused: {e}"), code)
}

/// Reads `path` (`what` it is, for the message), at most `limit` bytes: a
/// larger file fails with exit code `too_large`, any other problem with
/// [`exit_code::STATE`].
fn read(path: &Path, what: &str, limit: usize, too_large: u8) -> Result<Vec<u8>, Failure> {
    let failure = |e: ReadError, code| Failure(format!("{} ({what}): {e}", path.display()), code);
    let file = std::fs::File::open(path).map_err(|e| failure(e.into(), exit_code::STATE))?;
    state::read_bounded(file, limit).map_err(|e| match e {
        e @ ReadError::TooLarge { .. } => failure(e, too_large),
        e => failure(e, exit_code::STATE),
    })
}

fn read_log(path: &Path) -> Result<Vec<u8>, Failure> {
    read(path, "key log", state::MAX_LOG_LEN, exit_code::STATE)
}

/// Refuses a `--device-id` that is not a device id ([`exit_code::USAGE`]).
fn check_id(id: &str) -> Result<(), Failure> {
    check_device_id(id).map_err(|e| {
        Failure(
            format!("--device-id {id:?} is refused: {e}"),
            exit_code::USAGE,
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure(msg, code)) => {
            eprintln!("keybridge-device: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<String, Failure> {
    let state = State::new(&cli.state);
    match cli.command {
        Command::Trust(Trust::Init {
            log,
            device_id,
            skew,
        }) => {
            check_id(&device_id)?;
            let log = KeyLog::from_bytes(&read_log(&log)?).map_err(log_failure)?;
            let settings = Settings {
                device_id,
                skew: skew.max(0),
            };
            state.init(&log, &settings)?;
            Ok(format!(
                "trusting account {:?} ({} events, {} active keys) as device {:?}",
                log.account(),
                log.events().len(),
                log.active_keys().count(),
                settings.device_id
            ))
        }
        Command::Trust(Trust::Update { log }) => {
            let bytes = read_log(&log)?;
            // Parse once to learn the account; the extension check below is
            // what decides.
            let offered = KeyLog::from_bytes(&bytes).map_err(log_failure)?;
            let mut account = state.open(offered.account())?;
            let before = account.log.events().len();
            let new = account.log.verify_extension(&bytes).map_err(log_failure)?;
            let added = new.events().len() - before;
            if added > 0 {
                account.save_log(new)?;
            }
            Ok(format!(
                "account {:?}: {added} new events, now {}",
                offered.account(),
                before + added
            ))
        }
        Command::Trust(Trust::Show { json }) => {
            let mut accounts = vec![];
            for name in state.accounts()? {
                let a = state.open(&name)?;
                accounts.push(account_json(&a));
            }
            if json {
                Ok(serde_json::to_string_pretty(&accounts).expect("JSON"))
            } else if accounts.is_empty() {
                Ok("no account is trusted on this device".into())
            } else {
                Ok(accounts
                    .iter()
                    .map(render_account)
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        }
        Command::Verify {
            command,
            body,
            device_id,
            #[cfg(feature = "test-hooks")]
            now,
        } => {
            if let Some(id) = &device_id {
                check_id(id)?;
            }
            let envelope = read(
                &command,
                "signed command",
                MAX_ENVELOPE_LEN,
                exit_code::MALFORMED,
            )?;
            let body = body
                .map(|b| read(&b, "body", MAX_BODY_LEN, exit_code::STATE))
                .transpose()?;
            // The account named in the (not yet verified) claims only picks
            // which trust store to check against; reading it checks only
            // the envelope's structure and encoding, everything else is
            // the verifier's, in its order.
            let account_name = unverified_account(&envelope)?;
            let mut account = match state.open(&account_name) {
                Err(StateError::NotTrusted(found)) => {
                    let known = state.accounts()?;
                    return Err(VerifyError::WrongAccount {
                        expected: known.join(", "),
                        found,
                    }
                    .into());
                }
                other => other?,
            };
            let device_id = device_id.unwrap_or_else(|| account.settings.device_id.clone());
            #[cfg(feature = "test-hooks")]
            let now = now.unwrap_or_else(unix_now);
            #[cfg(not(feature = "test-hooks"))]
            let now = unix_now();
            let verifier = Verifier::new(&account.log, &device_id).with_skew(account.settings.skew);
            let verified = verifier.verify(&envelope, body.as_deref(), now, &mut account.replay)?;
            // Remember it before anyone acts on it.
            account.save_replay()?;
            Ok(serde_json::to_string_pretty(&verified_json(&verified, &device_id)).expect("JSON"))
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn arg_json(v: &ArgValue) -> Value {
    match v {
        ArgValue::Text(s) => json!(s),
        ArgValue::Int(i) => json!(i),
        ArgValue::Bool(b) => json!(b),
        ArgValue::Bytes(b) => json!({ "hex": hex(b) }),
        ArgValue::List(l) => Value::Array(l.iter().map(arg_json).collect()),
        ArgValue::Map(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), arg_json(v))).collect())
        }
    }
}

fn verified_json(v: &Verified, device_id: &str) -> Value {
    let c = &v.claims;
    json!({
        "accepted": true,
        "device": device_id,
        "account": c.iss,
        "agent": c.sub,
        "role": v.role.name(),
        "kid": v.kid.to_hex(),
        "alg": v.alg.name(),
        "command": c.cmd,
        "args": Value::Object(c.args.iter().map(|(k, v)| (k.clone(), arg_json(v))).collect()),
        "body_sha256": c.body.map(|b| hex(&b)),
        "audience": c.aud,
        "batch_size": v.batch_size,
        "issued_at": c.iat,
        "not_before": c.nbf,
        "expires": c.exp,
        "cti": hex(&c.cti),
        "clock_offset": v.clock_offset,
    })
}

fn account_json(a: &state::Account) -> Value {
    let log = &a.log;
    json!({
        "account": log.account(),
        "device_id": a.settings.device_id,
        "skew": a.settings.skew,
        "events": log.events().len(),
        "head": hex(&log.head()),
        "recovery_kid": log.recovery_key().kid().to_hex(),
        "replay_entries": a.replay.len(),
        "keys": log.active_keys().map(|k| json!({
            "kid": k.key.kid().to_hex(),
            "agent": k.agent,
            "role": k.role.name(),
            "alg": k.key.algorithm().name(),
            "since_event": k.since_seq,
        })).collect::<Vec<_>>(),
    })
}

fn render_account(a: &Value) -> String {
    let mut out = format!(
        "account {}  device {}  ({} events, head {}…)\n",
        a["account"],
        a["device_id"],
        a["events"],
        // The head is ours, 64 hex digits, but the JSON holds whatever it
        // is given: never slice past its end or inside a character.
        a["head"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(16)
            .collect::<String>()
    );
    for k in a["keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  {:<8} {:<7} {}\n",
            k["kid"].as_str().unwrap_or(""),
            k["role"].as_str().unwrap_or(""),
            k["alg"].as_str().unwrap_or(""),
            k["agent"].as_str().unwrap_or("")
        ));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_with_a_short_missing_or_multibyte_head_renders_without_panicking() {
        for head in [json!("abcd"), json!(null), json!(7), json!("xéééééééé")] {
            let out = render_account(&json!({"account": "acme", "head": head, "keys": []}));
            assert!(out.starts_with("account \"acme\""), "{out}");
        }
        let out = render_account(&json!({}));
        assert!(out.contains("head …"), "{out}");
        let head = "0123456789abcdef".repeat(4);
        let out = render_account(&json!({"head": head}));
        assert!(out.contains("head 0123456789abcdef…)"), "{out}");
    }
}
