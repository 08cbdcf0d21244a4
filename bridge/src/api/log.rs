//! Key-log events, signed by a key of this daemon (DESIGN.md §5): a key
//! request (`POST /v1/keys/{kid}/request`), and an approval, a rejection,
//! a revocation or a threshold change appended to a key log
//! (`POST /v1/log/approve|reject|revoke|threshold`).
//!
//! Like `/v1/sign`, every route builds its event from typed fields and
//! signs nothing else. The log travels in the request: the daemon verifies
//! it, builds the event on its head, checks with the protocol's own rules
//! that the log would take the event *before* it spends a signature (a PIN,
//! a touch, an each-task unlock), signs, checks the appended log once more
//! and answers with it. The caller writes the file (compare-and-swap on the
//! head, see [`crate::logfile`]); every signed event is in the audit log.
//!
//! With an account threshold above 1, a change that needs several admins
//! (adding or revoking an admin key, changing the threshold) becomes a
//! `propose`, or a `confirm` when the same change is already pending: each
//! admin runs the same command.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::audit;
use crate::keys::KeyEntry;
use axum::extract::{Path, State};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::log::RequestEvidence;
use keybridge_protocol::{KeyLog, KeyRequest, Kid, Op, Role};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `POST /v1/keys/{kid}/request`
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakeRequest {
    /// `member` (default) or `admin`.
    #[serde(default)]
    pub role: Option<String>,
    /// Hex kid (64 digits) of a key of the same agent this one replaces.
    #[serde(default)]
    pub replaces: Option<String>,
    /// A TPM key's AK certificate (base64 DER): it takes the EK
    /// certificate's place in the request's evidence, after a check that
    /// its public key is the AK's.
    #[serde(default)]
    pub ak_certificate: Option<String>,
}

/// The answer to `POST /v1/keys/{kid}/request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeRequest {
    /// The requesting key.
    pub kid: String,
    /// Its account.
    pub account: String,
    /// Its agent.
    pub agent: String,
    /// The role asked for.
    pub role: String,
    /// The key it replaces, if a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The kind of residency evidence it carries, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The 6-digit verification code.
    pub code: String,
    /// The request (a COSE_Sign1), base64 on one line.
    pub request: String,
}

/// `POST /v1/log/approve`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The approving admin key (name, label or kid prefix).
    pub key: String,
    /// The key log, base64.
    pub log: String,
    /// The key request, base64.
    pub request: String,
    /// The verification code the approver typed.
    pub code: String,
}

/// `POST /v1/log/reject`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// The rejecting admin key.
    pub key: String,
    /// The key log, base64.
    pub log: String,
    /// The key request, base64.
    pub request: String,
    /// Why (kept in the log).
    pub reason: String,
}

/// `POST /v1/log/revoke`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// The signing key: an admin, or the revoked key itself.
    pub key: String,
    /// The key log, base64.
    pub log: String,
    /// The revoked key's kid, 64 hex digits.
    pub kid: String,
}

/// `POST /v1/log/threshold`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetThreshold {
    /// The signing admin key.
    pub key: String,
    /// The key log, base64.
    pub log: String,
    /// Admin agents needed for admin changes, at least 1.
    pub k: u32,
}

/// The answer of every `/v1/log/…` route: the event and the log with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The event's operation: `add`, `reject`, `revoke`, `threshold`,
    /// `propose` or `confirm`.
    pub op: String,
    /// Its position in the log.
    pub seq: u64,
    /// For `propose`/`confirm`: whether this approval applied the change.
    pub applied: bool,
    /// Approvals the change has (proposals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// The account's threshold after the event.
    pub threshold: u32,
    /// The signing key.
    pub kid: String,
    /// The event, base64.
    pub event: String,
    /// The whole log with the event, base64.
    pub log: String,
    /// SHA-256 of the event (the new head), hex.
    pub head: String,
    /// The head the event was built on, hex: the file must still end there.
    pub prev_head: String,
}

/// A kid from 64 hex digits.
fn kid_from_hex(what: &str, s: &str) -> Result<Kid, ApiError> {
    unhex(s)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Kid)
        .ok_or_else(|| ApiError::BadRequest(format!("{what} is a kid: 64 hex digits")))
}

fn role(s: Option<&str>) -> Result<Role, ApiError> {
    match s.unwrap_or("member") {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        other => Err(ApiError::BadRequest(format!(
            "role {other:?}: member or admin"
        ))),
    }
}

fn audit_event(s: &Shared, entry: &KeyEntry, now: i64, what: &str) -> Result<(), ApiError> {
    s.audit
        .append(&audit::Entry {
            time: now,
            kid: entry.kid_hex.clone(),
            account: entry.stored.account.clone(),
            agent: entry.stored.agent.clone(),
            cmd: format!("key-log:{what}"),
            backend: Some(entry.stored.record.backend.to_string()),
            ..Default::default()
        })
        .map_err(|e| ApiError::Internal(format!("audit log: {e}")))
}

/// `POST /v1/keys/{kid}/request`
pub async fn request(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<MakeRequest>,
) -> Result<Json<MadeRequest>, ApiError> {
    let entry = s.keys.resolve(&name)?;
    let role = role(req.role.as_deref())?;
    let replaces = req
        .replaces
        .as_deref()
        .map(|h| kid_from_hex("replaces", h))
        .transpose()?;
    if replaces == Some(entry.kid()) {
        return Err(ApiError::BadRequest("a key cannot replace itself".into()));
    }
    let mut evidence = entry.evidence().map(|e| RequestEvidence {
        kind: e.kind,
        chain: e.der_chain,
    });
    if let Some(b64) = req.ak_certificate.as_deref() {
        with_ak_certificate(&entry, evidence.as_mut(), b64)?;
    }
    let now = s.clock.now();
    let unsigned = KeyRequest::unsigned_with(
        &entry.stored.account,
        &entry.stored.agent,
        role,
        &entry.public,
        now,
        replaces,
        evidence.as_ref(),
    );
    let signature = entry
        .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
        .await?;
    let bytes = unsigned
        .into_bytes(&signature)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // What we hand out must verify with our own verifier.
    let parsed = KeyRequest::parse(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    audit_event(&s, &entry, now, "request")?;
    Ok(Json(MadeRequest {
        kid: entry.kid_hex.clone(),
        account: parsed.account.clone(),
        agent: parsed.agent.clone(),
        role: role.name().into(),
        replaces: replaces.map(|k| k.to_hex()),
        evidence: parsed.evidence.as_ref().map(|e| e.kind.clone()),
        code: parsed.verification_code(),
        request: B64.encode(&bytes),
    }))
}

/// Puts the AK certificate `b64` (base64 DER) into `evidence`, a TPM
/// key's certification, in the EK certificate's place — refused unless its
/// public key is the AK's.
fn with_ak_certificate(
    entry: &KeyEntry,
    evidence: Option<&mut RequestEvidence>,
    b64: &str,
) -> Result<(), ApiError> {
    use keybridge_evidence::{TPM2_CERTIFY, tpm, x509::MAX_CERTIFICATE_LEN};
    let der = B64
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("ak_certificate is base64 DER".into()))?;
    if der.is_empty() || der.len() > MAX_CERTIFICATE_LEN {
        return Err(ApiError::BadRequest(format!(
            "ak_certificate is 1 to {MAX_CERTIFICATE_LEN} bytes of DER"
        )));
    }
    let ev = match evidence {
        Some(ev) if ev.kind == TPM2_CERTIFY && ev.chain.len() >= 4 => ev,
        other => {
            return Err(ApiError::BadRequest(format!(
                "an AK certificate goes with a TPM key's certification; key {} ({} backend) has {}",
                entry.kid_hex,
                entry.stored.record.backend,
                other.map_or("no residency evidence".into(), |e| format!(
                    "{} evidence",
                    e.kind
                ))
            )));
        }
    };
    match tpm::is_ak_certificate(&der, &ev.chain[2]) {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::BadRequest(
                "the certificate is not for this TPM's attestation key: its public key is another (keybridge keys ak-public KID prints the AK's)".into(),
            ));
        }
        Err(e) => return Err(ApiError::BadRequest(format!("the AK certificate: {e}"))),
    }
    ev.chain.truncate(4);
    ev.chain.push(der);
    Ok(())
}

/// The log of a request body: base64, verified (off the async threads: a
/// long log is many signatures).
async fn read_log(b64: &str) -> Result<KeyLog, ApiError> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("log is base64".into()))?;
    tokio::task::spawn_blocking(move || KeyLog::from_bytes(&bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::LogInvalid(e.to_string()))
}

/// The request of a body: base64, self-signature checked, for this log's
/// account.
fn read_request(b64: &str, log: &KeyLog) -> Result<KeyRequest, ApiError> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("request is base64".into()))?;
    let req = KeyRequest::parse(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the key request is invalid: {e}")))?;
    if req.account != log.account() {
        return Err(ApiError::LogRefused(format!(
            "the request is for account {:?}, the log is {:?}'s",
            req.account,
            log.account()
        )));
    }
    Ok(req)
}

/// The signing key, which must sign for the log's account.
fn signer(s: &Shared, name: &str, log: &KeyLog) -> Result<Arc<KeyEntry>, ApiError> {
    let entry = s.keys.resolve(name)?;
    if entry.stored.account != log.account() {
        return Err(ApiError::BadRequest(format!(
            "key {name} signs for account {:?}, the log is {:?}'s",
            entry.stored.account,
            log.account()
        )));
    }
    Ok(entry)
}

/// Turns `change` into what the log takes from this signer: the change
/// itself, or, when it needs the threshold's approvals, a proposal (or the
/// confirmation of the same pending proposal).
fn route(log: &KeyLog, change: Op) -> Op {
    if !log.needs_quorum(&change) {
        return change;
    }
    match log.pending_for(&change) {
        Some((proposal, _)) => Op::Confirm { proposal },
        None => Op::Propose {
            change: Box::new(change),
        },
    }
}

/// Checks, signs and appends `op` to `log` with `entry`.
async fn append(
    s: &Shared,
    entry: &KeyEntry,
    log: KeyLog,
    op: Op,
) -> Result<Json<Appended>, ApiError> {
    // Every rule but the signature, before a PIN or a touch is spent.
    log.trust()
        .check(&entry.kid(), &op)
        .map_err(|e| ApiError::LogRefused(e.to_string()))?;
    let now = s.clock.now();
    let unsigned = log.next_event(now, &op, &entry.public);
    let signature = entry
        .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
        .await?;
    let event = unsigned
        .into_bytes(&signature)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let prev_head = hex(&log.head());
    let mut new = log;
    new.append(&event)
        .map_err(|e| ApiError::Internal(format!("our own event was refused: {e}")))?;
    let seq = new.len() - 1;
    let pending = match &op {
        Op::Confirm { proposal } => Some(new.pending().get(proposal)),
        Op::Propose { change } => Some(new.pending_for(change).map(|(_, p)| p)),
        _ => None,
    };
    // A proposal still pending after this event was not applied yet.
    let (applied, approvals) = match pending {
        Some(Some(p)) => (false, Some(p.approvers.len() as u32)),
        _ => (true, None),
    };
    audit_event(s, entry, now, op.name())?;
    Ok(Json(Appended {
        op: op.name().into(),
        seq,
        applied,
        approvals,
        threshold: new.threshold(),
        kid: entry.kid_hex.clone(),
        event: B64.encode(&event),
        log: B64.encode(new.to_bytes()),
        head: hex(&new.head()),
        prev_head,
    }))
}

/// `POST /v1/log/approve`
pub async fn approve(
    State(s): State<Shared>,
    Json(body): Json<Approve>,
) -> Result<Json<Appended>, ApiError> {
    let log = read_log(&body.log).await?;
    let entry = signer(&s, &body.key, &log)?;
    let req = read_request(&body.request, &log)?;
    let typed: String = body.code.chars().filter(|c| !c.is_whitespace()).collect();
    if typed != req.verification_code() {
        return Err(ApiError::WrongCode);
    }
    let op = route(
        &log,
        Op::Add {
            key: req.key.clone(),
            agent: req.agent.clone(),
            role: req.role,
            req: req.bytes().to_vec(),
            replaces: req.replaces,
        },
    );
    append(&s, &entry, log, op).await
}

/// `POST /v1/log/reject`
pub async fn reject(
    State(s): State<Shared>,
    Json(body): Json<Reject>,
) -> Result<Json<Appended>, ApiError> {
    let log = read_log(&body.log).await?;
    let entry = signer(&s, &body.key, &log)?;
    let req = read_request(&body.request, &log)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > 1024 || reason.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "reason: 1 to 1024 bytes of text, no control characters".into(),
        ));
    }
    let op = Op::Reject {
        req: req.digest(),
        reason: reason.to_owned(),
    };
    append(&s, &entry, log, op).await
}

/// `POST /v1/log/revoke`
pub async fn revoke(
    State(s): State<Shared>,
    Json(body): Json<Revoke>,
) -> Result<Json<Appended>, ApiError> {
    let log = read_log(&body.log).await?;
    let entry = signer(&s, &body.key, &log)?;
    let kid = kid_from_hex("kid", &body.kid)?;
    let op = route(&log, Op::Revoke { kid });
    append(&s, &entry, log, op).await
}

/// `POST /v1/log/threshold`
pub async fn threshold(
    State(s): State<Shared>,
    Json(body): Json<SetThreshold>,
) -> Result<Json<Appended>, ApiError> {
    let log = read_log(&body.log).await?;
    let entry = signer(&s, &body.key, &log)?;
    let op = route(&log, Op::Threshold { k: body.k });
    append(&s, &entry, log, op).await
}
