//! `keybridge sign`: one device (`--device`, `--out FILE`) or a batch
//! (`--devices FILE`, `--out DIR`, one `ID.cose` per device), with one key
//! (`--key`) or the first key at hand of an agent (`--agent`, falling back
//! in the user's `fallback_order`; the line printed says which key signed
//! and which were not there).

use super::{Ctx, short};
use crate::paths;
use crate::wire::{Args as SignArgsMap, SignRequest, Signed, SignedBy};
use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use keybridge_protocol::ArgValue;
use keybridge_protocol::device_id::check_device_id;
use keybridge_protocol::key::hex;
use sha2::Digest as _;
use std::path::PathBuf;

/// `keybridge sign`
#[derive(Args)]
pub struct SignArgs {
    /// Key id (any unique prefix) or label.
    #[arg(long, required_unless_present = "agent")]
    key: Option<String>,
    /// Sign with this agent's first key at hand (YubiKey, TPM, PKCS#11,
    /// passphrase unless `fallback_order` in config.toml says otherwise).
    #[arg(long, conflicts_with = "key")]
    agent: Option<String>,
    /// The agent's account (needed only when the agent has keys in several
    /// accounts).
    #[arg(long, requires = "agent")]
    account: Option<String>,
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
    /// A command argument, KEY=VALUE (repeatable; a key at most once).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// A detached body (a script): its SHA-256 is signed.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Validity: seconds (300) or a duration (5m, 1h 30m); at most 24 h
    /// and the policy's maximum.
    #[arg(long, default_value = "300s")]
    ttl: String,
    /// Output: a file (one device); for a batch a folder (one ID.cose per
    /// device), a FILE.jsonl / FILE.ndjson (the stream: one
    /// {"device","envelope"} line per device, then a "complete" line), or
    /// - (that stream on standard output).
    #[arg(long)]
    out: PathBuf,
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

/// `--arg K=V…`: text values, each key once.
fn parse_args(pairs: &[String]) -> anyhow::Result<SignArgsMap> {
    let mut args = SignArgsMap::default();
    for kv in pairs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--arg {kv:?} is not KEY=VALUE"))?;
        if args
            .0
            .insert(k.to_owned(), ArgValue::Text(v.to_owned()))
            .is_some()
        {
            bail!("--arg {k:?} is given twice");
        }
    }
    Ok(args)
}

/// Waits for `signing`; meanwhile, if the key's token waits for a touch,
/// says so once on standard error ("touch your YubiKey"). For a request by
/// agent, any of the agent's keys waiting for a touch is the one signing.
async fn telling_about_touch<T>(
    ctx: &Ctx,
    req: &SignRequest,
    signing: impl std::future::Future<Output = Result<T, crate::client::ClientError>>,
) -> Result<T, crate::client::ClientError> {
    let client = ctx.client();
    tokio::pin!(signing);
    let mut told = false;
    loop {
        tokio::select! {
            result = &mut signing => return result,
            () = tokio::time::sleep(std::time::Duration::from_millis(300)), if !told => {
                let waiting = match (&req.key, &req.agent) {
                    (Some(key), _) => client.key(key).await.is_ok_and(|k| k.touch_pending),
                    (None, Some(agent)) => client.keys().await.is_ok_and(|keys| {
                        keys.iter().any(|k| {
                            k.touch_pending
                                && &k.agent == agent
                                && req.account.as_ref().is_none_or(|a| &k.account == a)
                        })
                    }),
                    (None, None) => false,
                };
                if waiting {
                    eprintln!("keybridge: touch your YubiKey (or security key) to sign");
                    told = true;
                }
            }
        }
    }
}

/// `the passphrase key "alice-pass" (3f2a9c01d4e5b6a7)`: a key as an answer
/// names it, for a person (what came from the daemon is escaped).
fn key_name(kid: &str, backend: Option<&str>, label: Option<&str>) -> String {
    let backend = backend.map_or_else(String::new, |b| format!("{} ", b.escape_debug()));
    match label {
        Some(label) => format!(
            "the {backend}key \"{}\" ({})",
            label.escape_debug(),
            short(kid, 16).escape_debug()
        ),
        None => format!("the {backend}key {}", short(kid, 16).escape_debug()),
    }
}

/// How a line ends when a request by agent fell back: the keys passed over.
fn fallback_note(by: &SignedBy) -> String {
    if by.skipped.is_empty() {
        return String::new();
    }
    let gone: Vec<String> = by
        .skipped
        .iter()
        .map(|k| key_name(&k.kid, Some(&k.backend), k.label.as_deref()))
        .collect();
    let verb = if gone.len() == 1 { "is" } else { "are" };
    format!(" ({} {verb} not present)", gone.join(", "))
}

pub(super) async fn run(ctx: &Ctx, a: &SignArgs) -> anyhow::Result<()> {
    let mut req = SignRequest {
        key: a.key.clone(),
        agent: a.agent.clone(),
        account: a.account.clone(),
        command: a.command.clone(),
        args: parse_args(&a.args)?,
        ttl: Some(parse_ttl(&a.ttl)?),
        ..SignRequest::default()
    };
    if let Some(file) = &a.body {
        let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
        req.body_sha256 = Some(hex(&sha2::Sha256::digest(&bytes)));
    }
    let device = match (&a.device, &a.devices) {
        (Some(d), _) => {
            check_device_id(d).with_context(|| format!("--device {d:?}"))?;
            d.clone()
        }
        (None, Some(file)) => return run_batch(ctx, a, req, file).await,
        (None, None) => bail!("give --device ID or --devices FILE"),
    };
    req.device = Some(device.clone());
    let signed = telling_about_touch(ctx, &req, ctx.client().sign(&req)).await?;
    let Signed::Single { kid, envelope, by } = signed else {
        bail!("the daemon answered a single-device request with a batch");
    };
    let signer = key_name(&kid, by.backend.as_deref(), by.label.as_deref());
    let note = fallback_note(&by);
    let bytes = B64
        .decode(&envelope)
        .context("the daemon sent bad base64")?;
    paths::write_atomic(&a.out, &bytes).with_context(|| a.out.display().to_string())?;
    let line = format!(
        "signed {} for {device} with {signer} → {}{note}",
        a.command,
        a.out.display()
    );
    ctx.print(&Signed::Single { kid, envelope, by }, |_| line);
    Ok(())
}

/// `sign --devices FILE`: the ids checked here (with the file's line
/// numbers), streamed to the daemon, the envelopes streamed to `--out`
/// ([`super::batch`]).
async fn run_batch(
    ctx: &Ctx,
    a: &SignArgs,
    req: SignRequest,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let ids = device_list(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let n = ids.len();
    let mut body = String::with_capacity(text.len());
    for id in ids {
        body.push_str(id);
        body.push('\n');
    }
    drop(text);
    let sink = super::batch::Sink::open(&a.out)?;
    let to_stdout = matches!(sink, super::batch::Sink::Stdout(_));
    let answer = telling_about_touch(
        ctx,
        &req,
        ctx.client().sign_batch(&req, body.into_bytes().into()),
    )
    .await?;
    let t = super::batch::receive(answer, sink, n, !ctx.json, started).await?;
    let signer = key_name(&t.kid, t.by.backend.as_deref(), t.by.label.as_deref());
    let note = fallback_note(&t.by);
    let summary = serde_json::json!({
        "kid": t.kid, "root": t.root, "devices": t.size, "out": a.out,
        "backend": t.by.backend, "label": t.by.label, "fallback": t.by.fallback,
        "skipped": t.by.skipped, "audit": t.audit,
    });
    let line = format!(
        "signed {} for {} devices with one signature of {signer} (root {}…) → {}{note}",
        a.command,
        t.size,
        short(&t.root, 16),
        a.out.display()
    );
    if to_stdout {
        // Standard output carries the stream.
        if ctx.json {
            eprintln!("{summary}");
        } else {
            eprintln!("{line}");
        }
    } else {
        ctx.print(&summary, |_| line);
    }
    Ok(())
}

/// The device ids of a `--devices` file: one per line, blank lines and
/// `#` comments skipped. Every bad id and every id given twice is refused
/// with its line numbers (at most 20 named), before anything is signed.
fn device_list(text: &str) -> Result<Vec<&str>, String> {
    const SHOWN: usize = 20;
    let mut problems = vec![];
    let mut ids: Vec<&str> = vec![];
    let lines = || {
        text.lines()
            .enumerate()
            .map(|(n, line)| (n + 1, line.trim()))
            .filter(|(_, id)| !id.is_empty() && !id.starts_with('#'))
    };
    for (n, id) in lines() {
        match check_device_id(id) {
            Ok(()) => ids.push(id),
            Err(e) => problems.push(format!("line {n}: device id {id:?}: {e}")),
        }
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let repeated: std::collections::BTreeSet<&str> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(sorted);
    if !repeated.is_empty() {
        // Their lines, found in a second pass (the common case, no
        // repeats, keeps no line numbers).
        let mut on: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (n, id) in lines() {
            if repeated.contains(id) {
                on.entry(id).or_default().push(n.to_string());
            }
        }
        for (id, lines) in on {
            problems.push(format!(
                "device id {id:?} is on lines {} (each device once)",
                lines.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        return Ok(ids);
    }
    let more = problems.len().saturating_sub(SHOWN);
    let mut shown = problems
        .into_iter()
        .take(SHOWN)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        shown.push_str(&format!("; and {more} more"));
    }
    Err(format!("{shown}; nothing was signed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_list_names_duplicates_and_bad_ids_by_line() {
        assert_eq!(device_list("# fleet\n a \n\nb\n").unwrap(), ["a", "b"]);
        let e = device_list("a\nb\na\nc\nb\na\n..\n").unwrap_err();
        assert!(e.contains("\"a\" is on lines 1, 3, 6"), "{e}");
        assert!(e.contains("\"b\" is on lines 2, 5"), "{e}");
        assert!(e.contains("line 7: device id \"..\""), "{e}");
        let many: String = (0..50).map(|i| format!("x{i}/\n")).collect();
        let e = device_list(&many).unwrap_err();
        assert!(e.ends_with("and 30 more; nothing was signed"), "{e}");
    }
    use crate::wire::SkippedKey;

    #[test]
    fn the_line_says_which_key_signed_and_which_were_not_there() {
        let by = SignedBy {
            backend: Some("passphrase".into()),
            label: Some("alice-pass".into()),
            fallback: true,
            skipped: vec![SkippedKey {
                kid: "0123456789abcdef0123".into(),
                backend: "yubikey".into(),
                label: Some("alice\u{1b}[2J".into()),
                why: "not plugged in".into(),
            }],
        };
        assert_eq!(
            key_name("fedcba9876543210fe", Some("passphrase"), Some("alice-pass")),
            "the passphrase key \"alice-pass\" (fedcba9876543210)"
        );
        // What the daemon sends is escaped before it reaches a terminal.
        assert_eq!(
            fallback_note(&by),
            " (the yubikey key \"alice\\u{1b}[2J\" (0123456789abcdef) is not present)"
        );
        assert_eq!(fallback_note(&SignedBy::default()), "");
        assert_eq!(key_name("ab", None, None), "the key ab");
    }
}
