//! `keybridge sign`: one device (`--device`, `--out FILE`) or a batch
//! (`--devices FILE`, `--out DIR`, one `ID.cose` per device).

use super::{Ctx, short};
use crate::paths;
use crate::wire::{Args as SignArgsMap, SignRequest, Signed};
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
    /// Output file (one device) or folder (batch: one ID.cose per device).
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

/// Signs; meanwhile, if the key's token waits for a touch, says so once on
/// standard error ("touch your YubiKey").
async fn sign_telling_about_touch(
    ctx: &Ctx,
    req: &SignRequest,
) -> Result<Signed, crate::client::ClientError> {
    let client = ctx.client();
    let signing = client.sign(req);
    tokio::pin!(signing);
    let mut told = false;
    loop {
        tokio::select! {
            result = &mut signing => return result,
            () = tokio::time::sleep(std::time::Duration::from_millis(300)), if !told => {
                if let Ok(key) = client.key(&req.key).await
                    && key.touch_pending
                {
                    eprintln!("keybridge: touch your YubiKey (or security key) to sign");
                    told = true;
                }
            }
        }
    }
}

pub(super) async fn run(ctx: &Ctx, a: &SignArgs) -> anyhow::Result<()> {
    let mut req = SignRequest {
        key: a.key.clone(),
        command: a.command.clone(),
        args: parse_args(&a.args)?,
        ttl: Some(parse_ttl(&a.ttl)?),
        ..SignRequest::default()
    };
    if let Some(file) = &a.body {
        let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
        req.body_sha256 = Some(hex(&sha2::Sha256::digest(&bytes)));
    }
    match (&a.device, &a.devices) {
        (Some(d), _) => {
            check_device_id(d).with_context(|| format!("--device {d:?}"))?;
            req.device = Some(d.clone());
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
                ids.push(id.to_owned());
            }
            req.devices = Some(ids);
        }
        (None, None) => bail!("give --device ID or --devices FILE"),
    }
    match sign_telling_about_touch(ctx, &req).await? {
        Signed::Single { kid, envelope } => {
            let bytes = B64
                .decode(&envelope)
                .context("the daemon sent bad base64")?;
            paths::write_atomic(&a.out, &bytes).with_context(|| a.out.display().to_string())?;
            let line = format!(
                "signed {} for {} with {} → {}",
                a.command,
                a.device.as_deref().unwrap_or(""),
                short(&kid, 16),
                a.out.display()
            );
            ctx.print(&Signed::Single { kid, envelope }, |_| line);
        }
        Signed::Batch {
            kid,
            root,
            envelopes,
        } => {
            std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
            for (id, env) in &envelopes {
                // The daemon's answer is checked like any input: an id
                // becomes a file name.
                check_device_id(id)
                    .with_context(|| format!("the daemon returned device id {id:?}"))?;
                let bytes = B64.decode(env).context("the daemon sent bad base64")?;
                paths::write_atomic(&a.out.join(format!("{id}.cose")), &bytes)?;
            }
            let summary = serde_json::json!({
                "kid": kid, "root": root, "devices": envelopes.len(), "out": a.out,
            });
            ctx.print(&summary, |_| {
                format!(
                    "signed {} for {} devices with one signature (root {}…) → {}/",
                    a.command,
                    envelopes.len(),
                    short(&root, 16),
                    a.out.display()
                )
            });
        }
    }
    Ok(())
}
