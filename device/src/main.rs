//! `keybridge-device`: the verifier a managed device runs.
//!
//! It trusts one key log per account (`trust init`, `trust update`) and
//! verifies signed commands against it (`verify`). Exit 0 and the verified
//! claims as JSON on stdout, or a one-line reason on stderr and an exit code
//! of its own for each refusal (see `--help`).
//!
//! The log is verified once, when it is taken — `trust update` verifies
//! only the new events — and `verify` reads what it left behind (the active
//! keys, an index of the others), never the log: a command costs the same
//! with a 10,000-event log as with one event (see [`state`]).
//!
//! Per account, a hardware policy (`policy set`) may require, per command
//! kind, a key whose residency evidence — a YubiKey PIV attestation in its
//! key request — verifies against roots configured on the device, and an
//! attested touch policy of `always` or `cached` (see [`policy`]).
//!
//! Dependencies: DESIGN.md has `device/` depend on `keybridge-protocol`
//! alone. It also depends on `keybridge-evidence`, deliberately: the
//! pure-Rust X.509 and YubiKey attestation checks the bridge uses, split
//! out of `keybridge-backends` so that the device links no hardware library
//! (no pcsc-lite, no tpm2-tss) to check hardware evidence.
//!
//! Every input file is read only up to a limit: a signed command up to
//! [`MAX_ENVELOPE_LEN`] (64 KiB), a body up to [`MAX_BODY_LEN`] (64 MiB), a
//! key log up to [`state::MAX_LOG_LEN`] (16 MiB), a roots file up to
//! [`policy::MAX_ROOTS_FILE_LEN`] (1 MiB). Larger files are refused
//! without being read whole.
//!
//! With the cargo feature `test-hooks` (never in a shipped build), `verify
//! --now UNIX_SECONDS` replaces the system clock.

mod exit_code;
mod keys_index;
mod policy;
mod state;

use clap::{Parser, Subcommand};
use keybridge_protocol::key::hex;
use keybridge_protocol::{
    ArgValue, KeyLog, LogError, MAX_ENVELOPE_LEN, Op, Trust, Verified, Verifier, VerifyError,
    check_device_id, unverified_account,
};
use keys_index::Gone;
use policy::{Attested, Policy};
use serde_json::{Value, json};
use state::{OfferedLog, ReadError, Settings, State, StateError, UpdateError};
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
    /// State folder (trusted logs, replay caches, settings, policies).
    #[arg(long, global = true, default_value = state::DEFAULT_STATE, env = "KEYBRIDGE_DEVICE_STATE")]
    state: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the accounts this device trusts.
    #[command(subcommand)]
    Trust(TrustCmd),
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
    /// Hardware-gated trust: which command kinds need a hardware key.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_help = "Example:\n  \
        keybridge-device completions bash > /usr/share/bash-completion/completions/keybridge-device")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff) of this command and every subcommand into
    /// a folder and list them; for `cargo xtask man`.
    #[command(hide = true)]
    Man {
        /// The folder (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
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
    /// Take a newer key log: only an extension of the trusted one (only its
    /// new events are verified).
    Update {
        /// The account's key log.
        log: PathBuf,
    },
    /// Show the trusted accounts, their active keys, threshold and pending
    /// proposals.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Require a hardware key for one command kind: its evidence must verify
    /// against the roots given (and with `touch`, its attested touch policy
    /// be always or cached). Per account.
    Set {
        /// The account (needed when the device trusts several).
        #[arg(long)]
        account: Option<String>,
        /// The command kind (`run-script`, `remote-control`, `x-…`).
        #[arg(long)]
        command: String,
        /// `hardware`, or `touch` (which implies `hardware`); repeatable.
        #[arg(long, required = true, value_parser = ["hardware", "touch"])]
        require: Vec<String>,
        /// PEM file of the roots the evidence must chain to (e.g. Yubico's
        /// PIV roots); repeatable. Copied into the state folder. Without
        /// it, the command kind keeps the roots it has.
        #[arg(long)]
        roots: Vec<PathBuf>,
    },
    /// Remove a command kind's rule.
    Unset {
        /// The account (needed when the device trusts several).
        #[arg(long)]
        account: Option<String>,
        /// The command kind.
        #[arg(long)]
        command: String,
    },
    /// Show the rules, their roots, and which active keys each accepts.
    Show {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
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
            StateError::StoredLog { .. } | StateError::StoredLogMismatch { .. } => {
                exit_code::LOG_INVALID
            }
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

impl From<UpdateError> for Failure {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::State(e) => e.into(),
            UpdateError::Log(e) => log_failure(e),
        }
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

/// A key log that cannot be read: [`exit_code::STATE`], as [`read_log`].
fn read_failure(path: &Path, what: &str, e: ReadError) -> Failure {
    Failure(
        format!("{} ({what}): {e}", path.display()),
        exit_code::STATE,
    )
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
        Command::Completions { shell } => Ok(completion_script(shell)),
        Command::Man { dir } => man_pages(&dir),
        Command::Trust(TrustCmd::Init {
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
        Command::Trust(TrustCmd::Update { log }) => {
            let offered = OfferedLog::open(&log).map_err(|e| read_failure(&log, "key log", e))?;
            let first = offered
                .first_event()
                .map_err(|e| read_failure(&log, "key log", e.into()))?;
            // The first event names the account whose trust the log is
            // checked against; the extension check decides.
            let account_name = KeyLog::peek_account(&first).map_err(log_failure)?;
            let mut account = state.open(&account_name)?;
            let done = account.update(&offered)?;
            let mut out = format!(
                "account {account_name:?}: {} new events, now {}",
                done.added, done.len
            );
            if let Some(repaired) = done.repaired {
                out = format!("account {account_name:?}: repaired: {repaired}\n{out}");
            }
            Ok(out)
        }
        Command::Trust(TrustCmd::Show { json }) => {
            let mut accounts = vec![];
            for name in state.accounts()? {
                let a = state.open(&name)?;
                accounts.push(account_json(&a, &a.trust()?, a.keys()?.revoked_count()));
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
            #[cfg(feature = "test-hooks")]
            let now = now.unwrap_or_else(unix_now);
            #[cfg(not(feature = "test-hooks"))]
            let now = unix_now();
            verify(&state, &command, body.as_deref(), device_id, now)
        }
        Command::Policy(PolicyCmd::Set {
            account,
            command,
            require,
            roots,
        }) => {
            policy::check_command_name(&command).map_err(|e| Failure(e, exit_code::USAGE))?;
            let touch = require.iter().any(|r| r == "touch");
            let roots = if roots.is_empty() {
                None
            } else {
                let mut files = vec![];
                for path in &roots {
                    let bytes = read(path, "roots", policy::MAX_ROOTS_FILE_LEN, exit_code::STATE)?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        Failure(
                            format!("{} (roots): not a PEM text file", path.display()),
                            exit_code::STATE,
                        )
                    })?;
                    files.push((path.display().to_string(), text));
                }
                Some(
                    policy::roots_from_pem(&files)
                        .map_err(|e| Failure(format!("--roots: {e}"), exit_code::STATE))?,
                )
            };
            let name = pick_account(&state, account)?;
            let a = state.open(&name)?;
            let mut p = a.policy()?;
            p.set(&command, touch, roots)
                .map_err(|e| Failure(e, exit_code::USAGE))?;
            let view = a.keys()?.view;
            let mut hardware = a.hardware()?;
            hardware.rejudge(&view, &p);
            a.save_policy(&p, &hardware)?;
            let rule = &p.rules[&command];
            let mut out = format!(
                "account {name:?}: {command} now requires {} (roots {}…)",
                rule.requirements()
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(" and "),
                &rule.roots[..16]
            );
            for k in rule_keys_json(&command, rule, &p, &view, &hardware) {
                out.push_str(&format!("\n  {}", render_rule_key(&k)));
            }
            Ok(out)
        }
        Command::Policy(PolicyCmd::Unset { account, command }) => {
            policy::check_command_name(&command).map_err(|e| Failure(e, exit_code::USAGE))?;
            let name = pick_account(&state, account)?;
            let a = state.open(&name)?;
            let mut p = a.policy()?;
            if !p.unset(&command) {
                return Ok(format!("account {name:?}: {command} had no rule"));
            }
            let mut hardware = a.hardware()?;
            hardware.rejudge(&a.keys()?.view, &p);
            a.save_policy(&p, &hardware)?;
            Ok(format!(
                "account {name:?}: {command} no longer requires a hardware key"
            ))
        }
        Command::Policy(PolicyCmd::Show { account, json }) => {
            let names = match account {
                Some(a) => vec![pick_account(&state, Some(a))?],
                None => state.accounts()?,
            };
            let mut out = vec![];
            for name in names {
                let a = state.open(&name)?;
                out.push(policy_json(
                    &name,
                    &a.policy()?,
                    &a.keys()?.view,
                    &a.hardware()?,
                ));
            }
            if json {
                Ok(serde_json::to_string_pretty(&out).expect("JSON"))
            } else if out.is_empty() {
                Ok("no account is trusted on this device".into())
            } else {
                Ok(out.iter().map(render_policy).collect::<Vec<_>>().join("\n"))
            }
        }
    }
}

/// The completion script for `shell` (without its last newline, which
/// `main` prints).
fn completion_script(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory as _;
    // clap_complete offers hidden subcommands too: the script is made from
    // the command without them (the hidden `man`).
    let full = Cli::command();
    let mut cmd = clap::Command::new("keybridge-device")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut script = vec![];
    clap_complete::generate(shell, &mut cmd, "keybridge-device", &mut script);
    let mut script = String::from_utf8(script).expect("clap_complete writes UTF-8");
    if shell == clap_complete::Shell::Bash {
        // clap_complete 4.6 labels the cases of a hyphenated binary's
        // subcommands `keybridge__subcmd__device__subcmd__trust` but goes to
        // `keybridge__device__subcmd__trust` (clap-rs/clap#6421): without
        // this, nothing after a subcommand would complete.
        script = script.replace("keybridge__subcmd__device", "keybridge__device");
    }
    script.strip_suffix('\n').unwrap_or(&script).to_owned()
}

/// Writes a man page for the command and each visible subcommand into
/// `dir` (`keybridge-device.1`, `keybridge-device-trust-init.1`, …) and
/// lists the files written, one a line.
fn man_pages(dir: &Path) -> Result<String, Failure> {
    use clap::CommandFactory as _;
    fn write(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone())
            .source(concat!("keybridge-device ", env!("CARGO_PKG_VERSION")));
        out.push(page.generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir, out)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = vec![];
    std::fs::create_dir_all(dir)
        .and_then(|()| write(&cmd, dir, &mut written))
        .map_err(|e| Failure(format!("{}: {e}", dir.display()), exit_code::STATE))?;
    Ok(written
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `--account`, or the one account trusted.
fn pick_account(state: &State, account: Option<String>) -> Result<String, Failure> {
    let known = state.accounts()?;
    match account {
        Some(a) if known.contains(&a) => Ok(a),
        Some(a) => Err(StateError::NotTrusted(a).into()),
        None => match known.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure(
                "this device trusts no account yet; deploy one with `keybridge-device trust init LOG --device-id ID`".into(),
                exit_code::STATE,
            )),
            many => Err(Failure(
                format!(
                    "this device trusts several accounts ({}): say which with --account",
                    many.join(", ")
                ),
                exit_code::USAGE,
            )),
        },
    }
}

/// `verify`: the protocol's checks against the account's active keys,
/// then the account's hardware policy for the command's kind, then the
/// replay cache is saved. Nothing is saved on a refusal.
fn verify(
    state: &State,
    command: &Path,
    body: Option<&Path>,
    device_id: Option<String>,
    now: i64,
) -> Result<String, Failure> {
    if let Some(id) = &device_id {
        check_id(id)?;
    }
    let envelope = read(
        command,
        "signed command",
        MAX_ENVELOPE_LEN,
        exit_code::MALFORMED,
    )?;
    let body = body
        .map(|b| read(b, "body", MAX_BODY_LEN, exit_code::STATE))
        .transpose()?;
    // The account named in the (not yet verified) claims only picks which
    // trust store to check against; reading it checks only the envelope's
    // structure and encoding, everything else is the verifier's, in its
    // order.
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
    let keys = account.keys()?;
    let device_id = device_id.unwrap_or_else(|| account.settings.device_id.clone());
    let verifier = Verifier::new(&keys.view, &device_id).with_skew(account.settings.skew);
    let verified = match verifier.verify(&envelope, body.as_deref(), now, &mut account.replay) {
        Ok(v) => v,
        // Not an active key: the index says whether it left the account,
        // and how (the verifier's next check, as with the whole trust).
        Err(VerifyError::UnknownKid(kid)) => {
            let gone = keys.lookup(&kid).map_err(|e| {
                Failure(
                    format!("state file keys.idx of account {account_name:?}: {e}"),
                    exit_code::STATE,
                )
            })?;
            return Err(match gone {
                Some(Gone::Revoked(seq)) => VerifyError::RevokedKid { kid, seq },
                Some(Gone::Replaced { seq, by }) => VerifyError::ReplacedKid { kid, seq, by },
                None => VerifyError::UnknownKid(kid),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let policy = account.policy()?;
    let mut hardware_json = None;
    if let Some(rule) = policy.rules.get(&verified.claims.cmd) {
        let signer = keys
            .view
            .active_keys()
            .find(|k| k.key.kid() == verified.kid)
            .expect("the verifier accepted an active key");
        let hardware = account.hardware()?;
        let attested = policy::check(
            &verified.claims.cmd,
            rule,
            &policy.roots[&rule.roots],
            &signer.key,
            &signer.agent,
            hardware.facts(&verified.kid),
        )
        .map_err(|r| Failure(r.message, exit_code::of_policy(r.kind).0))?;
        hardware_json = Some(attested_json(&attested, rule));
    }
    // Remember it before anyone acts on it.
    account.save_replay()?;
    let mut out = verified_json(&verified, &device_id);
    if let Some(h) = hardware_json {
        out["hardware"] = h;
    }
    Ok(serde_json::to_string_pretty(&out).expect("JSON"))
}

fn attested_json(a: &Attested, rule: &policy::Rule) -> Value {
    let required = rule
        .requirements()
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>();
    match &a.tpm {
        Some(t) => json!({
            "required": required,
            "kind": keybridge_evidence::TPM2_CERTIFY,
            "ak_name": t.ak_name,
            "ak_certificate": t.ak_certificate,
            "key_attributes": t.key_attributes,
            "firmware": a.firmware,
            "root": a.root,
        }),
        None => json!({
            "required": required,
            "kind": keybridge_evidence::YUBIKEY_PIV_ATTESTATION,
            "serial": a.serial,
            "firmware": a.firmware,
            "form_factor": a.form_factor,
            "pin_policy": a.pin_policy,
            "touch_policy": a.touch_policy,
            "root": a.root,
        }),
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

fn account_json(a: &state::Account, trust: &Trust, revoked: u64) -> Value {
    json!({
        "account": trust.account(),
        "device_id": a.settings.device_id,
        "skew": a.settings.skew,
        "events": trust.len(),
        "head": hex(&trust.head()),
        "recovery_kid": trust.recovery_key().kid().to_hex(),
        "replay_entries": a.replay.len(),
        "threshold": trust.threshold(),
        "revoked_keys": revoked,
        "keys": trust.active_keys().map(|k| json!({
            "kid": k.key.kid().to_hex(),
            "agent": k.agent,
            "role": k.role.name(),
            "alg": k.key.algorithm().name(),
            "since_event": k.since_seq,
        })).collect::<Vec<_>>(),
        "pending": trust.pending().iter().map(|(seq, p)| {
            let mut change = op_json(&p.change);
            change["event"] = json!(seq);
            change["approvers"] = json!(p.approvers);
            change
        }).collect::<Vec<_>>(),
    })
}

/// A proposed change, for `trust show`.
fn op_json(op: &Op) -> Value {
    match op {
        Op::Add {
            key,
            agent,
            role,
            replaces,
            ..
        } => json!({
            "op": "add",
            "kid": key.kid().to_hex(),
            "agent": agent,
            "role": role.name(),
            "replaces": replaces.map(|k| k.to_hex()),
        }),
        Op::Revoke { kid } => json!({"op": "revoke", "kid": kid.to_hex()}),
        Op::Threshold { k } => json!({"op": "threshold", "k": k}),
        other => json!({"op": other.name()}),
    }
}

/// Each active key under `cmd`'s `rule`: accepted (with what its evidence
/// attests) or refused (with its exit code and reason).
fn rule_keys_json(
    cmd: &str,
    rule: &policy::Rule,
    p: &Policy,
    view: &Trust,
    hardware: &policy::Hardware,
) -> Vec<Value> {
    view.active_keys()
        .map(|k| {
            let kid = k.key.kid();
            let mut v = json!({"kid": kid.to_hex(), "agent": k.agent, "role": k.role.name()});
            match policy::check(
                cmd,
                rule,
                &p.roots[&rule.roots],
                &k.key,
                &k.agent,
                hardware.facts(&kid),
            ) {
                Ok(a) => {
                    v["accepted"] = json!(true);
                    v["hardware"] = attested_json(&a, rule);
                }
                Err(r) => {
                    let (code, what) = exit_code::of_policy(r.kind);
                    v["accepted"] = json!(false);
                    v["exit_code"] = json!(code);
                    v["refusal"] = json!(what);
                    v["reason"] = json!(r.message);
                }
            }
            v
        })
        .collect()
}

fn policy_json(account: &str, p: &Policy, view: &Trust, hardware: &policy::Hardware) -> Value {
    let rules: Vec<Value> = p
        .rules
        .iter()
        .map(|(cmd, rule)| {
            let roots = &p.roots[&rule.roots];
            json!({
                "command": cmd,
                "require": rule.requirements().iter().map(|r| r.name()).collect::<Vec<_>>(),
                "roots": {
                    "id": rule.roots,
                    "certificates": policy::describe_roots(roots)
                        .into_iter()
                        .map(|(subject, sha256)| json!({"subject": subject, "sha256": sha256}))
                        .collect::<Vec<_>>(),
                },
                "keys": rule_keys_json(cmd, rule, p, view, hardware),
            })
        })
        .collect();
    json!({"account": account, "rules": rules})
}

fn render_rule_key(k: &Value) -> String {
    let kid: String = k["kid"].as_str().unwrap_or("").chars().take(16).collect();
    let who = format!(
        "{kid}…  {:<8} {}",
        k["role"].as_str().unwrap_or(""),
        k["agent"].as_str().unwrap_or("")
    );
    if k["accepted"] == json!(true) {
        let h = &k["hardware"];
        if h["kind"] == keybridge_evidence::TPM2_CERTIFY {
            return format!(
                "{who}: accepted (TPM, AK certificate {})",
                h["ak_certificate"].as_str().unwrap_or("")
            );
        }
        format!(
            "{who}: accepted (YubiKey {}, touch {})",
            h["serial"],
            h["touch_policy"].as_str().unwrap_or("not stated")
        )
    } else {
        format!(
            "{who}: refused, exit {} ({})",
            k["exit_code"],
            k["refusal"].as_str().unwrap_or("")
        )
    }
}

fn render_policy(a: &Value) -> String {
    let mut out = format!("account {}", a["account"]);
    let rules = a["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rules.is_empty() {
        out.push_str(": no rule (every command kind accepts any active key)");
    }
    for r in rules {
        let require: Vec<&str> = r["require"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "\n  {} requires {}",
            r["command"].as_str().unwrap_or(""),
            require.join(" and ")
        ));
        for c in r["roots"]["certificates"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n    root {}  sha256 {}",
                c["subject"].as_str().unwrap_or(""),
                c["sha256"].as_str().unwrap_or("")
            ));
        }
        for k in r["keys"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n    {}", render_rule_key(k)));
        }
    }
    out
}

fn render_account(a: &Value) -> String {
    let mut out = format!(
        "account {}  device {}  ({} events, {} keys revoked, head {}…)\n",
        a["account"],
        a["device_id"],
        a["events"],
        a["revoked_keys"],
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
    if let Some(k) = a["threshold"].as_u64() {
        out.push_str(&format!(
            "  threshold: {k} admin agent(s) approve admin changes
"
        ));
    }
    for p in a["pending"].as_array().into_iter().flatten() {
        let approvers: Vec<&str> = p["approvers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let what = match p["op"].as_str().unwrap_or("") {
            "add" => format!(
                "add {} key {} of {}",
                p["role"].as_str().unwrap_or(""),
                p["kid"].as_str().unwrap_or(""),
                p["agent"].as_str().unwrap_or("")
            ),
            "revoke" => format!("revoke key {}", p["kid"].as_str().unwrap_or("")),
            "threshold" => format!("threshold {}", p["k"]),
            other => other.to_owned(),
        };
        out.push_str(&format!(
            "  pending (event {}): {what}, approved by {}\n",
            p["event"],
            approvers.join(", ")
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
