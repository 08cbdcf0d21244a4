//! `POST /v1/sign`: build a command from the request, have the key's backend
//! sign it once, answer with the envelope (or one per device of a batch).
//!
//! The bridge is never a raw-bytes signing oracle: it signs only commands it
//! built itself from validated fields.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::audit;
use crate::wire::{SignRequest, Signed};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::command::{DEFAULT_TTL, MAX_VALIDITY, is_valid_command};
use keybridge_protocol::device_id::check_device_id;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{Batch, Claims, UnsignedCommand};

/// The answer: one envelope, or (a batch) JSON already rendered.
enum Answer {
    Single(Signed),
    Rendered(String),
}

/// `POST /v1/sign`
pub async fn sign(
    State(s): State<Shared>,
    Json(req): Json<SignRequest>,
) -> Result<Response, ApiError> {
    let bad = |m: &str| ApiError::BadRequest(m.to_owned());
    let entry = s.keys.resolve(&req.key)?;
    if !is_valid_command(&req.command) {
        return Err(ApiError::BadRequest(format!(
            "unknown command {:?}: one of {} or x-…",
            req.command,
            keybridge_protocol::command::KNOWN_COMMANDS.join(", ")
        )));
    }
    let ttl = req.ttl.unwrap_or(DEFAULT_TTL);
    if ttl <= 0 || ttl > MAX_VALIDITY {
        return Err(bad("ttl is 1 s to 24 h"));
    }
    if ttl > s.policy.max_ttl {
        return Err(ApiError::PolicyDenied(format!(
            "ttl {ttl} s is over the policy's maximum of {} s",
            s.policy.max_ttl
        )));
    }
    for id in req.device.iter().chain(req.devices.iter().flatten()) {
        check_device_id(id).map_err(|e| ApiError::BadRequest(format!("device id {id:?}: {e}")))?;
    }
    let body = match &req.body_sha256 {
        None => None,
        Some(h) => Some(
            unhex(h)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| bad("body_sha256 is 64 hex characters"))?,
        ),
    };
    let batch = match (req.device, req.devices) {
        (Some(d), None) if !d.is_empty() => Err(d),
        (None, Some(ids)) if !ids.is_empty() => {
            Ok(tokio::task::spawn_blocking(move || Batch::new(ids))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        _ => return Err(bad("give exactly one of device and devices (non-empty)")),
    };
    let now = s.clock.now();
    let exp = now
        .checked_add(ttl)
        .ok_or_else(|| bad("the clock is past the end of time"))?;
    let mut cti = [0u8; 16];
    getrandom::fill(&mut cti).map_err(|e| ApiError::Internal(e.to_string()))?;
    let claims = Claims {
        iss: entry.stored.account.clone(),
        sub: entry.stored.agent.clone(),
        aud: batch.as_ref().err().cloned(),
        exp,
        nbf: now,
        iat: now,
        cti,
        cmd: req.command,
        args: req.args.0,
        body,
        devs: batch.as_ref().ok().map(Batch::signed_root),
    };
    let unsigned = UnsignedCommand::new(&claims, &entry.public)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let signature = entry
        .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
        .await?;
    let kid = entry.kid_hex.clone();
    let audit_entry = audit::Entry {
        time: now,
        kid: kid.clone(),
        account: claims.iss.clone(),
        agent: claims.sub.clone(),
        cmd: claims.cmd.clone(),
        audience: claims.aud.clone(),
        batch_size: batch.as_ref().ok().map(Batch::len),
        cti: Some(hex(&cti)),
    };
    let response = match batch {
        Err(_) => {
            let env = unsigned
                .into_envelope(&signature)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Answer::Single(Signed::Single {
                kid,
                envelope: B64.encode(env),
            })
        }
        Ok(batch) => {
            let root = hex(&batch.root());
            let kid = kid.clone();
            // 10,000 envelopes are ~10 MB of JSON: written straight into one
            // string (serde_json escapes each device id; base64 needs no
            // escaping) instead of building 10,000 `Value`s first.
            let body = tokio::task::spawn_blocking(move || {
                // ~1 KiB of base64 per device.
                let mut out = String::with_capacity(batch.len() * 1100 + 200);
                out.push_str(&format!(
                    r#"{{"kid":"{kid}","root":"{root}","envelopes":{{"#
                ));
                let mut first = true;
                unsigned.for_each_batch_envelope(&signature, &batch, |id, env| {
                    if !std::mem::take(&mut first) {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(id).expect("a string serializes"));
                    out.push_str(":\"");
                    B64.encode_string(env, &mut out);
                    out.push('"');
                })?;
                out.push_str("}}");
                Ok::<_, keybridge_protocol::AssembleError>(out)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            Answer::Rendered(body)
        }
    };
    // No audit line, no signature: a command that was not recorded never
    // leaves the bridge.
    s.audit
        .append(&audit_entry)
        .map_err(|e| ApiError::Internal(format!("audit log: {e}")))?;
    Ok(match response {
        Answer::Single(v) => Json(v).into_response(),
        Answer::Rendered(body) => {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    })
}
