//! The command line (DESIGN.md §9). Secrets come from a no-echo prompt or,
//! with `--secret-stdin`, from one line of standard input; never from
//! arguments or the environment.

use crate::client::{Client, ClientError};
use crate::clock::Clock;
use crate::paths::{self, Paths};
use crate::policy::{Remember, SYSTEM_POLICY};
use crate::{audit, server};
use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keybridge_protocol::device_id::check_device_id;
use keybridge_protocol::key::hex;
use keybridge_protocol::{KeyLog, Op};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "keybridge",
    version,
    about = "Sign remote-support commands with a key in a token, a YubiKey, a TPM or your passphrase",
    long_about = "keybridge signs the commands a support agent sends to managed devices. \
                  `keybridge serve` runs the per-user daemon; the other commands talk to it."
)]
pub struct Cli {
    /// The daemon's socket (default: $XDG_RUNTIME_DIR/keybridge/bridge.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (one per user).
    Serve(ServeArgs),
    /// Create, list, show and export keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Unlock a key for signing (prompt frequency: --remember).
    Unlock {
        /// Key id (any unique prefix) or label.
        key: String,
        /// How long the unlock lasts.
        #[arg(long, value_enum)]
        remember: Option<RememberArg>,
        /// Read the PIN or passphrase from one line of standard input.
        #[arg(long)]
        secret_stdin: bool,
        /// Try the PIN even if it is the last attempt before the token blocks.
        #[arg(long)]
        spend_last_attempt: bool,
    },
    /// Lock a key now.
    Lock {
        /// Key id (any unique prefix) or label.
        key: String,
    },
    /// Create an account: its key log's genesis event and a recovery file.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Sign a command for one device (--device) or a batch (--devices).
    Sign(SignArgs),
    /// The daemon and its keys.
    Status,
    /// Every signature the daemon made.
    Audit,
    /// An account's key history, from its key log.
    History {
        /// The key log (CBOR sequence).
        #[arg(long)]
        log: PathBuf,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Also listen on 127.0.0.1:PORT for a browser console.
    #[arg(long)]
    http: Option<String>,
    /// Origins allowed on --http (exact match).
    #[arg(long)]
    allow_origin: Vec<String>,
    /// Another policy file; it can only narrow /etc/keybridge/policy.toml,
    /// which wins whenever it exists.
    #[arg(long, env = "KEYBRIDGE_POLICY")]
    policy: Option<PathBuf>,
    /// Test hook: the system policy file instead of /etc/keybridge/policy.toml.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value = SYSTEM_POLICY)]
    system_policy: PathBuf,
    /// Test hook: read both clocks from this file ("WALL" or "WALL BOOT").
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    clock_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RememberArg {
    /// One unlock, one signature.
    EachTask,
    /// 24 hours.
    Daily,
    /// 168 hours.
    Weekly,
}

impl From<RememberArg> for Remember {
    fn from(r: RememberArg) -> Self {
        match r {
            RememberArg::EachTask => Remember::EachTask,
            RememberArg::Daily => Remember::Daily,
            RememberArg::Weekly => Remember::Weekly,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// Ed25519 derived from a passphrase (Argon2id); nothing stored.
    Passphrase,
    /// A PKCS#11 token or HSM.
    Pkcs11,
    /// A YubiKey's PIV applet.
    Yubikey,
    /// A TPM 2.0.
    Tpm,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key in a backend.
    Create {
        /// Where the key lives.
        #[arg(long, value_enum)]
        backend: BackendArg,
        /// Account the key signs for.
        #[arg(long)]
        account: String,
        /// Agent (user inside the account) the key belongs to.
        #[arg(long)]
        agent: String,
        /// Backend key URI (pkcs11:…, yubikey:…, tpm:…).
        #[arg(long)]
        uri: Option<String>,
        /// A name to refer to the key by.
        #[arg(long)]
        label: Option<String>,
        /// Default prompt frequency for this key.
        #[arg(long, value_enum)]
        remember: Option<RememberArg>,
        /// Key algorithm for hardware keys (the passphrase key is Ed25519).
        #[arg(long, value_enum, default_value = "p256")]
        alg: AlgArg,
        /// Use the key the URI names, already on the token (e.g. made by
        /// pkcs11-tool), instead of generating one.
        #[arg(long)]
        existing: bool,
        /// Read the passphrase or PIN from one line of standard input.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// List the daemon's keys, or (with --backend pkcs11 --module) the
    /// tokens and usable keys a PKCS#11 module shows, like pkcs11-tool -L -O.
    List {
        /// List what a backend shows instead of the daemon's keys.
        #[arg(long, value_enum, requires = "module")]
        backend: Option<BackendArg>,
        /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Show one key.
    Show {
        /// Key id (any unique prefix) or label.
        key: String,
    },
    /// Export a public key.
    Export {
        /// Key id (any unique prefix) or label.
        key: String,
        /// cose (hex of the COSE_Key), pem (SPKI) or ssh (authorized_keys line).
        #[arg(long, value_enum, default_value = "pem")]
        format: ExportFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AlgArg {
    /// ECDSA P-256 (ES256).
    P256,
    /// Ed25519 (EdDSA), where the hardware has it.
    Ed25519,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Hex of the COSE_Key.
    Cose,
    /// SubjectPublicKeyInfo PEM.
    Pem,
    /// OpenSSH public-key line.
    Ssh,
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Write the genesis key log (signed by --key, which must be unlocked)
    /// and an age-encrypted recovery file (passphrase from the prompt or
    /// --secret-stdin).
    Init {
        /// The account id (must be the key's account).
        #[arg(long)]
        account: String,
        /// The account's first key (an admin).
        #[arg(long)]
        key: String,
        /// Where to write the key log.
        #[arg(long)]
        log: PathBuf,
        /// Where to write the recovery file.
        #[arg(long)]
        recovery_file: PathBuf,
        /// Read the recovery passphrase from one line of standard input.
        #[arg(long)]
        secret_stdin: bool,
    },
}

#[derive(Args)]
pub struct SignArgs {
    /// Key id (any unique prefix) or label.
    #[arg(long)]
    key: String,
    /// The target device.
    #[arg(long, conflicts_with = "devices", required_unless_present = "devices")]
    device: Option<String>,
    /// A file of device ids, one per line: a batch, one signature.
    #[arg(long)]
    devices: Option<PathBuf>,
    /// Command kind (remote-control, deploy-unattended, run-script,
    /// create-group, create-alert, time-sync, x-…).
    #[arg(long)]
    command: String,
    /// A command argument, KEY=VALUE (repeatable).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// A detached body (a script): its SHA-256 is signed.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Validity: 300, 300s, 5m, 1h (at most 24h and the policy's maximum).
    #[arg(long, default_value = "300s")]
    ttl: String,
    /// Output file (one device) or folder (batch: one ID.cose per device).
    #[arg(long)]
    out: PathBuf,
}

/// The process exit code for an error: 1, or 2 for a usage problem, or a
/// code per problem kind so scripts can react.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::NotRunning(_)) => 3,
        Some(ClientError::Untrusted(_)) => 11,
        Some(ClientError::Problem { code, .. }) => match code.as_str() {
            "locked" => 4,
            "wrong_pin" | "last_attempt" => 5,
            "pin_blocked" => 6,
            "token_absent" => 7,
            "touch_timeout" => 8,
            "policy_denied" => 9,
            "unknown_key" => 10,
            "forbidden" => 11,
            "too_many_attempts" => 12,
            _ => 1,
        },
        _ => 1,
    }
}

fn client(cli: &Cli, paths: &Paths) -> Client {
    Client::new(&cli.socket.clone().unwrap_or_else(|| paths.socket()))
}

/// Reads a secret: one line of stdin, or a no-echo prompt on the terminal.
fn read_secret(from_stdin: bool, prompt: &str, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if from_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
        let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned());
        if trimmed.is_empty() {
            bail!("standard input carried no secret");
        }
        return Ok(trimmed);
    }
    let first = Zeroizing::new(rpassword::prompt_password(prompt).map_err(|_| {
        anyhow!("no terminal to prompt on; pass the secret on standard input with --secret-stdin")
    })?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat to confirm: ")?);
        if *again != *first {
            bail!("the two entries differ; nothing was changed");
        }
    }
    Ok(first)
}

fn print(json: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON"));
    } else {
        println!("{}", human(value));
    }
}

fn key_line(k: &Value) -> String {
    let state = match k["unlocked_mode"].as_str() {
        Some(m) => format!("unlocked ({m})"),
        None => "locked".into(),
    };
    format!(
        "{}  {:<10} {:<6} {:<12} {}/{}  {}",
        k["kid"].as_str().unwrap_or(""),
        k["backend"].as_str().unwrap_or(""),
        k["alg"].as_str().unwrap_or(""),
        k["label"].as_str().unwrap_or("-"),
        k["account"].as_str().unwrap_or(""),
        k["agent"].as_str().unwrap_or(""),
        state
    )
}

/// A validity: plain seconds (`300`) or a humantime duration (`5m`,
/// `1h 30m`), at most 24 h. Overflow is an error, never a wrap.
fn parse_ttl(s: &str) -> anyhow::Result<i64> {
    let secs = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_duration(s)
            .with_context(|| format!("bad ttl {s:?}: seconds, or a duration such as 5m or 1h"))?
            .as_secs(),
    };
    match i64::try_from(secs) {
        Ok(n) if (1..=keybridge_protocol::command::MAX_VALIDITY).contains(&n) => Ok(n),
        _ => bail!("bad ttl {s:?}: a command is valid for 1 s to 24 h"),
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::from_env();
    match &cli.command {
        Command::Serve(args) => {
            if args.http.is_some() || !args.allow_origin.is_empty() {
                bail!("the browser console listener (--http) is not available in this build yet");
            }
            #[cfg(feature = "test-hooks")]
            let (clock, system_policy) = (
                match &args.clock_file {
                    Some(p) => Clock::File(std::sync::Arc::new(p.clone())),
                    None => Clock::System,
                },
                args.system_policy.clone(),
            );
            #[cfg(not(feature = "test-hooks"))]
            let (clock, system_policy) = (Clock::System, PathBuf::from(SYSTEM_POLICY));
            server::run(
                paths.clone(),
                server::Options {
                    socket: cli.socket.clone().unwrap_or_else(|| paths.socket()),
                    system_policy,
                    extra_policy: args.policy.clone(),
                    clock,
                },
            )
            .await
        }
        Command::Keys(KeysCommand::Create {
            backend,
            account,
            agent,
            uri,
            label,
            remember,
            alg,
            existing,
            secret_stdin,
        }) => {
            let backend = match backend {
                BackendArg::Passphrase => "passphrase",
                BackendArg::Pkcs11 => "pkcs11",
                BackendArg::Yubikey => "yubikey",
                BackendArg::Tpm => "tpm",
            };
            let prompt = if backend == "passphrase" {
                "Passphrase for the new key (at least 8 characters): "
            } else {
                "Token PIN: "
            };
            // A PKCS#11 URI may name a pin-source file the daemon reads.
            let pin_in_uri = uri.as_deref().is_some_and(|u| u.contains("pin-source="));
            let secret = if pin_in_uri {
                None
            } else {
                Some(read_secret(*secret_stdin, prompt, backend == "passphrase")?)
            };
            let alg = match (backend, alg) {
                ("passphrase", _) => None,
                (_, AlgArg::P256) => Some("p256"),
                (_, AlgArg::Ed25519) => Some("ed25519"),
            };
            let body = json!({
                "backend": backend,
                "account": account,
                "agent": agent,
                "uri": uri,
                "label": label,
                "remember": remember.map(|r| Remember::from(r).name()),
                "alg": alg,
                "existing": existing,
                "secret": secret.as_ref().map(|s| s.as_str()),
            });
            let v = client(&cli, &paths).post("/v1/keys", &body).await?;
            print(cli.json, &v, |v| {
                let verb = if v["created"] == json!(true) {
                    "created"
                } else {
                    "already present"
                };
                format!("{verb}: {}", key_line(v))
            });
            Ok(())
        }
        Command::Keys(KeysCommand::List {
            backend: Some(backend),
            module,
        }) => list_backend(cli.json, *backend, module.as_deref()),
        Command::Keys(KeysCommand::List { backend: None, .. }) => {
            let v = client(&cli, &paths).get("/v1/keys").await?;
            print(cli.json, &v, |v| {
                let keys = v.as_array().cloned().unwrap_or_default();
                if keys.is_empty() {
                    "no keys yet: keybridge keys create --backend passphrase --account A --agent U"
                        .into()
                } else {
                    keys.iter().map(key_line).collect::<Vec<_>>().join("\n")
                }
            });
            Ok(())
        }
        Command::Keys(KeysCommand::Show { key }) => {
            let v = client(&cli, &paths).get(&format!("/v1/keys/{key}")).await?;
            print(cli.json, &v, |v| {
                format!(
                    "{}\nuri: {}\n{}{}",
                    key_line(v),
                    v["uri"].as_str().unwrap_or(""),
                    v["public_key"]["pem"].as_str().unwrap_or(""),
                    v["public_key"]["ssh"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        Command::Keys(KeysCommand::Export { key, format }) => {
            let v = client(&cli, &paths).get(&format!("/v1/keys/{key}")).await?;
            let field = match format {
                ExportFormat::Cose => "cose",
                ExportFormat::Pem => "pem",
                ExportFormat::Ssh => "ssh",
            };
            let out = v["public_key"][field].as_str().unwrap_or_default();
            println!("{}", out.trim_end());
            Ok(())
        }
        Command::Unlock {
            key,
            remember,
            secret_stdin,
            spend_last_attempt,
        } => {
            let secret = read_secret(*secret_stdin, "PIN or passphrase: ", false)?;
            let mut body = json!({
                "secret": secret.as_str(),
                "spend_last_attempt": spend_last_attempt,
            });
            if let Some(r) = remember {
                body["remember"] = json!(Remember::from(*r).name());
            }
            let v = client(&cli, &paths)
                .post(&format!("/v1/keys/{key}/unlock"), &body)
                .await
                .map_err(|e| match e {
                    ClientError::Problem {
                        ref code,
                        retries_left: Some(n),
                        ..
                    } if code == "wrong_pin" => anyhow!(e).context(format!("{n} attempts left")),
                    other => anyhow!(other),
                })?;
            print(cli.json, &v, |v| {
                format!(
                    "unlocked {} ({})",
                    v["kid"].as_str().unwrap_or(""),
                    v["mode"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        Command::Lock { key } => {
            let v = client(&cli, &paths)
                .post(&format!("/v1/keys/{key}/lock"), &json!({}))
                .await?;
            print(cli.json, &v, |v| {
                format!("locked {}", v["kid"].as_str().unwrap_or(""))
            });
            Ok(())
        }
        Command::Account(AccountCommand::Init {
            account,
            key,
            log,
            recovery_file,
            secret_stdin,
        }) => {
            account_init(
                &cli,
                &paths,
                account,
                key,
                log,
                recovery_file,
                *secret_stdin,
            )
            .await
        }
        Command::Sign(args) => sign(&cli, &paths, args).await,
        Command::Status => {
            let v = client(&cli, &paths).get("/v1/status").await?;
            print(cli.json, &v, |v| {
                let mut s = format!(
                    "daemon {} (pid {}) on {}\n",
                    v["version"].as_str().unwrap_or(""),
                    v["pid"],
                    v["socket"].as_str().unwrap_or("")
                );
                for k in v["keys"].as_array().into_iter().flatten() {
                    s.push_str(&key_line(k));
                    s.push('\n');
                }
                s.trim_end().to_owned()
            });
            Ok(())
        }
        Command::Audit => {
            let (entries, bad) = audit::read(&paths.audit_log())?;
            if bad > 0 {
                eprintln!(
                    "keybridge: {bad} unreadable line(s) in {} skipped",
                    paths.audit_log().display()
                );
            }
            let v = serde_json::to_value(&entries)?;
            print(cli.json, &v, |_| {
                entries
                    .iter()
                    .map(|e| {
                        let target = match (&e.audience, e.batch_size) {
                            (Some(a), _) => a.clone(),
                            (None, Some(n)) => format!("batch of {n}"),
                            _ => "-".into(),
                        };
                        format!(
                            "{}  {}  {}/{}  {:<18} {}",
                            e.time,
                            &e.kid[..16.min(e.kid.len())],
                            e.account,
                            e.agent,
                            e.cmd,
                            target
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        Command::History { log } => history(cli.json, log),
    }
}

async fn sign(cli: &Cli, paths: &Paths, a: &SignArgs) -> anyhow::Result<()> {
    let mut args = serde_json::Map::new();
    for kv in &a.args {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--arg {kv:?} is not KEY=VALUE"))?;
        args.insert(k.to_owned(), json!(v));
    }
    let mut body = json!({
        "key": a.key,
        "command": a.command,
        "args": args,
        "ttl": parse_ttl(&a.ttl)?,
    });
    if let Some(file) = &a.body {
        let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
        body["body_sha256"] = json!(hex(&sha2::Sha256::digest(&bytes)));
    }
    match (&a.device, &a.devices) {
        (Some(d), _) => {
            check_device_id(d).with_context(|| format!("--device {d:?}"))?;
            body["device"] = json!(d);
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
            let mut ids = vec![];
            for (n, line) in text.lines().enumerate() {
                let id = line.trim();
                if id.is_empty() || id.starts_with('#') {
                    continue;
                }
                check_device_id(id).with_context(|| {
                    format!("{} line {}: device id {id:?}", file.display(), n + 1)
                })?;
                ids.push(id);
            }
            body["devices"] = json!(ids);
        }
        (None, None) => bail!("give --device ID or --devices FILE"),
    }
    let v = client(cli, paths).post("/v1/sign", &body).await?;
    if let Some(env) = v["envelope"].as_str() {
        let bytes = B64.decode(env).context("daemon sent bad base64")?;
        paths::write_atomic(&a.out, &bytes).with_context(|| a.out.display().to_string())?;
        print(cli.json, &v, |v| {
            format!(
                "signed {} for {} with {} → {}",
                a.command,
                a.device.as_deref().unwrap_or(""),
                &v["kid"].as_str().unwrap_or("")[..16],
                a.out.display()
            )
        });
    } else {
        let envs = v["envelopes"]
            .as_object()
            .context("daemon sent no envelopes")?;
        std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
        for (id, env) in envs {
            // The daemon's answer is checked like any input: an id becomes
            // a file name.
            check_device_id(id).with_context(|| format!("daemon returned device id {id:?}"))?;
            let bytes = B64.decode(env.as_str().unwrap_or_default())?;
            paths::write_atomic(&a.out.join(format!("{id}.cose")), &bytes)?;
        }
        let summary =
            json!({"kid": v["kid"], "root": v["root"], "devices": envs.len(), "out": a.out});
        print(cli.json, &summary, |_| {
            format!(
                "signed {} for {} devices with one signature (root {}…) → {}/",
                a.command,
                envs.len(),
                &v["root"].as_str().unwrap_or("")[..16],
                a.out.display()
            )
        });
    }
    Ok(())
}

async fn account_init(
    cli: &Cli,
    paths: &Paths,
    account: &str,
    key: &str,
    log: &Path,
    recovery_file: &Path,
    secret_stdin: bool,
) -> anyhow::Result<()> {
    for f in [log, recovery_file] {
        if f.exists() {
            bail!("{} exists; refusing to overwrite it", f.display());
        }
    }
    let client = client(cli, paths);
    let k = client.get(&format!("/v1/keys/{key}")).await?;
    if k["account"].as_str() != Some(account) {
        bail!(
            "key {key} signs for account {}, not {account:?}",
            k["account"]
        );
    }
    let passphrase = read_secret(secret_stdin, "Recovery file passphrase: ", true)?;
    if passphrase.chars().count() < 8 {
        bail!("the recovery passphrase must have at least 8 characters");
    }
    // The recovery key: generated here, sealed in the age file, never sent.
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| anyhow!("random: {e}"))?;
    let recovery = ed25519_dalek::SigningKey::from_bytes(&seed);
    let recovery_public =
        keybridge_protocol::PublicKey::ed25519(recovery.verifying_key().as_bytes())?;
    let plaintext = Zeroizing::new(
        serde_json::to_vec_pretty(&json!({
            "keybridge_recovery": 1,
            "account": account,
            "recovery_kid": recovery_public.kid().to_hex(),
            "recovery_seed": hex(seed.as_ref()),
        }))
        .expect("JSON"),
    );
    let recipient = age::scrypt::Recipient::new(age::secrecy::SecretString::from(
        passphrase.as_str().to_owned(),
    ));
    let sealed = age::encrypt(&recipient, &plaintext).context("sealing the recovery file")?;
    let v = client
        .post(
            "/v1/account/init",
            &json!({
                "key": key,
                "recovery_key": hex(&recovery_public.to_cose_key_bytes()),
            }),
        )
        .await?;
    let log_bytes = B64
        .decode(v["log"].as_str().unwrap_or_default())
        .context("daemon sent bad base64")?;
    // Check with our own verifier before writing anything.
    let parsed = KeyLog::from_bytes(&log_bytes)?;
    if parsed.recovery_key() != &recovery_public {
        bail!("the daemon's genesis event names another recovery key");
    }
    paths::write_atomic(recovery_file, &sealed)
        .with_context(|| recovery_file.display().to_string())?;
    if let Err(e) = paths::write_atomic(log, &log_bytes) {
        let _ = std::fs::remove_file(recovery_file);
        return Err(e).with_context(|| log.display().to_string());
    }
    print(cli.json, &v, |v| {
        format!(
            "account {account}: key log {} (head {}…), recovery file {} — keep it and its passphrase apart from this machine",
            log.display(),
            &v["head"].as_str().unwrap_or("")[..16],
            recovery_file.display()
        )
    });
    Ok(())
}

fn history(json_out: bool, log: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(log).with_context(|| log.display().to_string())?;
    let parsed = KeyLog::from_bytes(&bytes)?;
    // Who each kid belonged to, as the log goes.
    let mut owner = std::collections::BTreeMap::new();
    let mut rows = vec![];
    for e in parsed.events() {
        let (what, subject) = match &e.op {
            Op::Genesis { key, agent, .. } => {
                owner.insert(key.kid(), agent.clone());
                ("created (first key, admin)".to_string(), key.kid().to_hex())
            }
            Op::Add {
                key,
                agent,
                role,
                replaces,
                ..
            } => {
                owner.insert(key.kid(), agent.clone());
                let r = replaces
                    .map(|k| format!(", replaces {}", &k.to_hex()[..16]))
                    .unwrap_or_default();
                let what = format!("approved for {agent} as {role}{r}");
                (what, key.kid().to_hex())
            }
            Op::Reject { req, reason } => (format!("request rejected: {reason}"), hex(req)),
            Op::Revoke { kid } => (
                format!("revoked ({})", owner.get(kid).map_or("?", String::as_str)),
                kid.to_hex(),
            ),
            Op::Reset { key, agent, .. } => {
                owner.insert(key.kid(), agent.clone());
                let what = format!("reset: all keys removed, new first key for {agent}");
                (what, key.kid().to_hex())
            }
        };
        // Only the recovery key signs a reset, and it owns no other event.
        let actor = match (&e.op, owner.get(&e.signer)) {
            (Op::Reset { .. }, _) => "recovery key".to_owned(),
            (_, Some(agent)) => agent.clone(),
            (_, None) => "?".to_owned(),
        };
        rows.push(json!({
            "seq": e.seq, "time": e.time, "op": e.op.name(), "what": what,
            "subject": subject, "actor": actor, "actor_kid": e.signer.to_hex(),
        }));
    }
    let v = Value::Array(rows);
    print(json_out, &v, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "#{:<3} {}  {:<8} {}…  {}  (by {})",
                    r["seq"],
                    r["time"],
                    r["op"].as_str().unwrap_or(""),
                    &r["subject"].as_str().unwrap_or("")[..16],
                    r["what"].as_str().unwrap_or(""),
                    r["actor"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `keys list --backend pkcs11 --module M`: what the module shows, read
/// directly (public objects only, no PIN, no daemon).
fn list_backend(json_out: bool, backend: BackendArg, module: Option<&Path>) -> anyhow::Result<()> {
    let module = module.context("--module PATH is needed")?;
    // This process loads the module: the same allowlist as the daemon's.
    let policy = crate::policy::Policy::load(
        Path::new(SYSTEM_POLICY),
        None,
        &Paths::from_env().config_file(),
    )?;
    keybridge_backends::set_module_allowlist(policy.pkcs11_modules);
    match backend {
        #[cfg(feature = "pkcs11")]
        BackendArg::Pkcs11 => {
            let tokens = keybridge_backends::pkcs11::list(module)?;
            let v = Value::Array(
                tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "slot": t.slot, "label": t.label, "manufacturer": t.manufacturer,
                            "model": t.model, "serial": t.serial, "uri": t.uri,
                            "login_required": t.login_required,
                            "user_pin_count_low": t.user_pin_count_low,
                            "user_pin_final_try": t.user_pin_final_try,
                            "user_pin_locked": t.user_pin_locked,
                            "p256": t.p256, "ed25519": t.ed25519,
                            "keys": t.keys.iter().map(|k| json!({
                                "label": k.label, "id": k.id, "alg": k.alg.name(),
                                "kid": k.kid().to_hex(), "uri": k.uri,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            );
            print(json_out, &v, |v| {
                let mut out = String::new();
                for t in v.as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "slot {}: token {:?} ({} {}, serial {}){}\n  {}\n",
                        t["slot"],
                        t["label"].as_str().unwrap_or(""),
                        t["manufacturer"].as_str().unwrap_or(""),
                        t["model"].as_str().unwrap_or(""),
                        t["serial"].as_str().unwrap_or(""),
                        if t["user_pin_locked"] == json!(true) {
                            "  PIN LOCKED"
                        } else {
                            ""
                        },
                        t["uri"].as_str().unwrap_or("")
                    ));
                    for k in t["keys"].as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "    {}  {:<7} {:?} id {}\n      {}\n",
                            k["kid"].as_str().unwrap_or(""),
                            k["alg"].as_str().unwrap_or(""),
                            k["label"].as_str().unwrap_or(""),
                            k["id"].as_str().unwrap_or(""),
                            k["uri"].as_str().unwrap_or("")
                        ));
                    }
                }
                if out.is_empty() {
                    "no tokens".into()
                } else {
                    out.trim_end().to_owned()
                }
            });
            Ok(())
        }
        _ => bail!("listing is available for --backend pkcs11"),
    }
}
