//! What people do with an account's keys (README, "Adding people and
//! keys"): `keys request`, `keys approve`, `keys reject`, `keys revoke`,
//! `keys threshold`. The daemon signs each event from its fields; the
//! log file is read and verified here, and written back only if no one
//! changed it meanwhile ([`crate::logfile`]).

use super::{Ctx, short};
use crate::api::log::{Appended, Approve, MadeRequest, MakeRequest, Reject, Revoke, SetThreshold};
use crate::logfile::LogFile;
use crate::paths;
use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::log::format_code;
use keybridge_protocol::{KeyLog, KeyRequest, KeyStatus, Kid};
use serde::Serialize;
use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::Path;

/// Largest key request file read (a request with a TPM's EK certificate
/// is a few KiB; an envelope is at most 64 KiB).
const MAX_REQUEST_FILE: u64 = 128 * 1024;

/// `keys request`
pub(super) async fn request(
    ctx: &Ctx,
    key: &str,
    role: &str,
    replaces: Option<&str>,
    ak_cert: Option<&Path>,
    out: &Path,
) -> anyhow::Result<()> {
    if out.symlink_metadata().is_ok() {
        bail!("{} exists; refusing to overwrite it", out.display());
    }
    let ak_certificate = ak_cert
        .map(super::attestation::read_certificate)
        .transpose()?
        .map(|der| B64.encode(der));
    let client = ctx.client();
    let replaces = match replaces {
        None => None,
        Some(name) => Some(resolve_kid(ctx, name, None).await?),
    };
    let made = client
        .key_request(
            key,
            &MakeRequest {
                role: Some(role.to_owned()),
                replaces: replaces.map(|k| k.to_hex()),
                ak_certificate,
            },
        )
        .await?;
    let bytes = B64
        .decode(&made.request)
        .context("the daemon sent bad base64")?;
    // Checked with our own verifier before it is written.
    let parsed = KeyRequest::parse(&bytes)?;
    if parsed.verification_code() != made.code {
        bail!("the daemon's verification code is not the request's");
    }
    paths::write_atomic(out, &bytes).with_context(|| out.display().to_string())?;
    ctx.print(&made, |m: &MadeRequest| {
        format!(
            "key request for {agent} in {account} as {role}{rot}: {out}\n\
             verification code: {code}\n\
             Give the file to an admin of {account}, and tell them the code another way \
             (in person, by phone): they type it to approve.",
            agent = m.agent,
            account = m.account,
            role = m.role,
            rot = m
                .replaces
                .as_deref()
                .map(|r| format!(", replacing {}…", short(r, 16)))
                .unwrap_or_default(),
            out = out.display(),
            code = format_code(&m.code),
        )
    });
    Ok(())
}

/// Reads a key request file: the request's bytes, or the base64 line
/// `keys request --json` prints.
fn read_request(path: &Path) -> anyhow::Result<(Vec<u8>, KeyRequest)> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut bytes = vec![];
    file.take(MAX_REQUEST_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| path.display().to_string())?;
    if bytes.len() as u64 > MAX_REQUEST_FILE {
        bail!(
            "{}: larger than {MAX_REQUEST_FILE} bytes; not a key request",
            path.display()
        );
    }
    if let Ok(text) = std::str::from_utf8(&bytes)
        && let Ok(decoded) = B64.decode(text.trim())
    {
        bytes = decoded;
    }
    let req = KeyRequest::parse(&bytes)
        .with_context(|| format!("{} is not a valid key request", path.display()))?;
    Ok((bytes, req))
}

/// A kid named by a hex prefix of a key in `log` (any key the log ever
/// had), else by a key of this daemon (label or kid prefix).
async fn resolve_kid(ctx: &Ctx, name: &str, log: Option<&KeyLog>) -> anyhow::Result<Kid> {
    let hexlike = name.len() >= 4 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(log) = log
        && hexlike
    {
        let name = name.to_ascii_lowercase();
        let mut found: Vec<Kid> = log_kids(log)
            .into_iter()
            .filter(|k| k.to_hex().starts_with(&name))
            .collect();
        found.dedup();
        match found.len() {
            1 => return Ok(found[0]),
            0 => {}
            _ => bail!("{name:?} names several keys of the log; use more of the kid"),
        }
    }
    let k = ctx.client().key(name).await.with_context(|| {
        format!("{name:?} is neither a kid in the log nor a key of this daemon")
    })?;
    keybridge_protocol::key::unhex(&k.kid)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Kid)
        .ok_or_else(|| anyhow!("the daemon sent a bad kid"))
}

/// Every kid a log names (sorted).
fn log_kids(log: &KeyLog) -> Vec<Kid> {
    use keybridge_protocol::Op;
    let mut kids = vec![];
    for e in log.events() {
        let op = match &e.op {
            Op::Propose { change } => change.as_ref(),
            op => op,
        };
        match op {
            Op::Genesis { key, .. } | Op::Add { key, .. } | Op::Reset { key, .. } => {
                kids.push(key.kid())
            }
            Op::Revoke { kid } => kids.push(*kid),
            _ => {}
        }
    }
    kids.sort();
    kids
}

/// What a person must see before approving: requester, role, key, and
/// what the residency evidence proves (checked against `roots` when given).
fn describe_request(
    req: &KeyRequest,
    log: &KeyLog,
    roots: Option<&Path>,
) -> anyhow::Result<String> {
    let mut out = format!(
        "key request\n  account:   {}\n  agent:     {}\n  role:      {}\n  key:       {} ({})\n  made:      {}\n",
        req.account,
        req.agent,
        req.role,
        req.key.kid().to_hex(),
        req.key.algorithm().name(),
        super::date(req.time),
    );
    if let Some(old) = req.replaces {
        let what = match log.status(&old) {
            KeyStatus::Active(k) if k.agent == req.agent => {
                format!("{}'s active {} key", k.agent, k.role)
            }
            KeyStatus::Active(k) => {
                format!("a key of {} (another agent: will be refused)", k.agent)
            }
            _ => "a key that is not active (will be refused)".into(),
        };
        out.push_str(&format!("  replaces:  {} — {what}\n", old.to_hex()));
    }
    match &req.evidence {
        None => {
            out.push_str("  evidence:  none (a passphrase key, or hardware without attestation)\n")
        }
        Some(e) => {
            let pem = roots.map(super::attestation::read_roots).transpose()?;
            if pem.is_none() && e.kind == "yubikey-piv-attestation" {
                out.push_str(&format!(
                    "  evidence:  {} — not checked: give --roots (Yubico's PIV roots, PEM) to see what it proves\n",
                    e.kind
                ));
            } else {
                match keybridge_backends::verify_evidence(
                    &e.kind,
                    &e.chain,
                    pem.as_deref().unwrap_or(""),
                    &req.key,
                ) {
                    Ok(report) => {
                        out.push_str(&format!(
                            "  evidence:  {} — verified: {}\n",
                            e.kind, report.proved
                        ));
                        for (name, value) in &report.facts {
                            out.push_str(&format!("    {name}: {value}\n"));
                        }
                        out.push_str(&format!("    ({})\n", report.not_checked));
                    }
                    Err(err) => out.push_str(&format!(
                        "  evidence:  {} — DOES NOT VERIFY: {err}\n",
                        e.kind
                    )),
                }
            }
        }
    }
    Ok(out)
}

/// The code the approver types: `--code`, or asked on the terminal after
/// the request was shown.
fn typed_code(code: Option<&str>) -> anyhow::Result<String> {
    let code = match code {
        Some(c) => c.to_owned(),
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("give the requester's verification code with --code NNNNNN");
            }
            eprint!("Verification code the requester sees (6 digits): ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("the verification code is 6 digits (e.g. 123 456)");
    }
    Ok(digits)
}

/// Sends `body` to `/v1/log/{route}` and writes the answer's log back to
/// the file, if it still is what was read.
async fn append(
    ctx: &Ctx,
    file: &LogFile,
    route: &str,
    body: &impl Serialize,
) -> anyhow::Result<Appended> {
    let answer = ctx.client().log_event(route, body).await?;
    // Test builds only: hold the signed event before writing it, so that a
    // test can make two writers race for certain.
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("KEYBRIDGE_TEST_PAUSE_BEFORE_WRITE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(10_000))).await;
    }
    let new = B64
        .decode(&answer.log)
        .context("the daemon sent bad base64")?;
    file.replace(&new)?;
    Ok(answer)
}

fn outcome(a: &Appended, log: &Path, done: &str) -> String {
    match (a.op.as_str(), a.applied) {
        ("propose", false) | ("confirm", false) => format!(
            "{} at event #{} ({} of {} admin approvals); another admin runs the same command to confirm — {}",
            if a.op == "propose" {
                "proposed"
            } else {
                "confirmed"
            },
            a.seq,
            a.approvals.unwrap_or(0),
            a.threshold,
            log.display()
        ),
        _ => format!(
            "{done} (event #{}, head {}…) — {}",
            a.seq,
            short(&a.head, 16),
            log.display()
        ),
    }
}

/// `keys approve`
pub(super) async fn approve(
    ctx: &Ctx,
    req_path: &Path,
    code: Option<&str>,
    key: &str,
    log_path: &Path,
    roots: Option<&Path>,
) -> anyhow::Result<()> {
    let file = LogFile::read(log_path)?;
    let (bytes, req) = read_request(req_path)?;
    if !ctx.json {
        eprint!("{}", describe_request(&req, file.log(), roots)?);
    }
    let typed = typed_code(code)?;
    if typed != req.verification_code() {
        bail!(
            "the code {} is not this request's: it may have been swapped or changed on the way. Nothing was approved.",
            format_code(&typed)
        );
    }
    let answer = append(
        ctx,
        &file,
        "approve",
        &Approve {
            key: key.to_owned(),
            log: B64.encode(file.bytes()),
            request: B64.encode(&bytes),
            code: typed,
        },
    )
    .await?;
    let done = format!(
        "approved: {}'s key {}… added as {}",
        req.agent,
        short(&req.key.kid().to_hex(), 16),
        req.role
    );
    ctx.print(&answer, |a| outcome(a, log_path, &done));
    Ok(())
}

/// `keys reject`
pub(super) async fn reject(
    ctx: &Ctx,
    req_path: &Path,
    reason: &str,
    key: &str,
    log_path: &Path,
) -> anyhow::Result<()> {
    let file = LogFile::read(log_path)?;
    let (bytes, req) = read_request(req_path)?;
    let answer = append(
        ctx,
        &file,
        "reject",
        &Reject {
            key: key.to_owned(),
            log: B64.encode(file.bytes()),
            request: B64.encode(&bytes),
            reason: reason.to_owned(),
        },
    )
    .await?;
    let done = format!("rejected {}'s request", req.agent);
    ctx.print(&answer, |a| outcome(a, log_path, &done));
    Ok(())
}

/// `keys revoke`
pub(super) async fn revoke(
    ctx: &Ctx,
    target: &str,
    key: &str,
    log_path: &Path,
) -> anyhow::Result<()> {
    let file = LogFile::read(log_path)?;
    let kid = resolve_kid(ctx, target, Some(file.log())).await?;
    let log = file.log();
    match log.status(&kid) {
        KeyStatus::Active(_) => {}
        _ => bail!(
            "key {} is not active in {}; nothing to revoke",
            kid.to_hex(),
            log_path.display()
        ),
    }
    let answer = append(
        ctx,
        &file,
        "revoke",
        &Revoke {
            key: key.to_owned(),
            log: B64.encode(file.bytes()),
            kid: kid.to_hex(),
        },
    )
    .await
    .map_err(explain_last_admin)?;
    let done = format!("revoked {}…", short(&kid.to_hex(), 16));
    ctx.print(&answer, |a| outcome(a, log_path, &done));
    Ok(())
}

/// The refusal to revoke the last admin key, with the way out.
fn explain_last_admin(e: anyhow::Error) -> anyhow::Error {
    if e.to_string().contains("no active admin key") {
        e.context(
            "this is the account's last admin key: add another admin first (keys request --role admin, \
             then approve), or, if it is lost or compromised, reset the account with its recovery file \
             (keybridge recovery reset); without either, the devices must be re-deployed",
        )
    } else {
        e
    }
}

/// `keys threshold`
pub(super) async fn threshold(ctx: &Ctx, k: u32, key: &str, log_path: &Path) -> anyhow::Result<()> {
    let file = LogFile::read(log_path)?;
    let answer = append(
        ctx,
        &file,
        "threshold",
        &SetThreshold {
            key: key.to_owned(),
            log: B64.encode(file.bytes()),
            k,
        },
    )
    .await?;
    let done = format!("threshold set: adding or revoking an admin now needs {k} admins");
    ctx.print(&answer, |a| outcome(a, log_path, &done));
    Ok(())
}
