//! `POST /v1/sign`: build a command from the request, have the key's backend
//! sign it once, answer with the envelope (or one per device of a batch).
//!
//! The bridge is never a raw-bytes signing oracle: it signs only commands it
//! built itself from validated fields.
//!
//! A request names its key (`key`), or an agent (`agent`, and `account`
//! when the agent has keys in several): then the agent's keys are tried in
//! the user's `fallback_order` ([`crate::policy`]) and the first one at
//! hand signs:
//!
//! - a key whose token is not there (its watch says so, a probe without
//!   PIN finds no token, or the signature answers `token_absent`) is passed
//!   over and named in the answer (`skipped`, `fallback: true`) and the
//!   audit line;
//! - a key that is there but locked stops the search: `locked`, naming it
//!   (`kid`). A present key is never passed over silently;
//! - an unlocked `each-task` key is probed before it signs, so that a
//!   token that is not there does not spend its one signature; only the
//!   key that signs uses its unlock;
//! - any other error is the answer; when every key was passed over, the
//!   answer is `token_absent` listing them;
//! - for the command kinds of the policy's `no_fallback`, passing over a
//!   key is `policy_denied`.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::audit;
use crate::keys::{KeyEntry, KeyError, Presence};
use crate::unlock::Remember;
use crate::wire::{SignRequest, Signed, SignedBy, SkippedKey};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_backends::BackendError;
use keybridge_protocol::command::{DEFAULT_TTL, MAX_VALIDITY, is_valid_command};
use keybridge_protocol::device_id::check_device_id;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{Batch, Claims, UnsignedCommand};
use std::sync::Arc;

/// Longest agent or account name a request may give (a name is echoed in
/// errors; no key has a longer one in practice).
const MAX_NAME: usize = 1024;

/// The answer: one envelope, or (a batch) JSON already rendered.
enum Answer {
    Single(Signed),
    Rendered(String),
}

/// A sign request checked, but for its devices: who may sign, and the
/// command's fields.
pub(super) struct Asked {
    /// The keys that may sign, in the order to try them.
    candidates: Vec<Arc<KeyEntry>>,
    /// The agent, for a request by agent.
    by_agent: Option<String>,
    /// The first candidate (every candidate speaks for the same account
    /// and agent).
    first: Arc<KeyEntry>,
    cmd: String,
    args: std::collections::BTreeMap<String, keybridge_protocol::ArgValue>,
    ttl: i64,
    body: Option<[u8; 32]>,
}

impl Asked {
    /// Checks everything of `req` but `device` and `devices`.
    pub(super) fn check(s: &Shared, req: SignRequest) -> Result<Asked, ApiError> {
        let bad = |m: &str| ApiError::BadRequest(m.to_owned());
        let (candidates, by_agent) = match (&req.key, &req.agent) {
            (Some(key), None) => {
                if req.account.is_some() {
                    return Err(bad(
                        "account goes with agent: a key names its account itself",
                    ));
                }
                (vec![s.keys.resolve(key)?], None)
            }
            (None, Some(agent)) => {
                check_name("agent", agent)?;
                if let Some(account) = &req.account {
                    check_name("account", account)?;
                }
                let keys =
                    s.keys
                        .of_agent(req.account.as_deref(), agent, &s.policy.fallback_order)?;
                (keys, Some(agent.clone()))
            }
            _ => return Err(bad("give exactly one of key and agent")),
        };
        let first = candidates
            .first()
            .cloned()
            .ok_or_else(|| ApiError::Internal("no key to sign with".into()))?;
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
        let body = match &req.body_sha256 {
            None => None,
            Some(h) => Some(
                unhex(h)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| bad("body_sha256 is 64 hex characters"))?,
            ),
        };
        Ok(Asked {
            candidates,
            by_agent,
            first,
            cmd: req.command,
            args: req.args.0,
            ttl,
            body,
        })
    }

    /// The command's claims for one device (`aud`) or a batch (`devs`),
    /// valid from now for the request's ttl, with a fresh nonce.
    pub(super) fn claims(
        &self,
        s: &Shared,
        aud: Option<String>,
        devs: Option<keybridge_protocol::BatchRoot>,
    ) -> Result<Claims, ApiError> {
        let now = s.clock.now();
        let exp = now
            .checked_add(self.ttl)
            .ok_or_else(|| ApiError::BadRequest("the clock is past the end of time".into()))?;
        let mut cti = [0u8; 16];
        getrandom::fill(&mut cti).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Claims {
            iss: self.first.stored.account.clone(),
            sub: self.first.stored.agent.clone(),
            aud,
            exp,
            nbf: now,
            iat: now,
            cti,
            cmd: self.cmd.clone(),
            args: self.args.clone(),
            body: self.body,
            devs,
        })
    }

    /// Signs `claims` with the requested key, or the agent's first key at
    /// hand (module docs); asks for a locked key's secret through the
    /// pinentry program when there is one.
    pub(super) async fn sign(self, s: &Shared, claims: &Claims) -> Result<Chosen, ApiError> {
        let batch_size = claims.devs.map(|d| d.size as usize);
        match &self.by_agent {
            None => {
                let first = self.first;
                if first.unlocked(s.clock.boot()).is_none() {
                    ask_secret(s, &first, claims, batch_size).await?;
                }
                let unsigned = UnsignedCommand::new(claims, &first.public)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let signature = first
                    .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
                    .await?;
                Ok(Chosen {
                    entry: first,
                    unsigned,
                    signature,
                    skipped: vec![],
                })
            }
            Some(agent) => first_at_hand(s, claims, agent, self.candidates, batch_size).await,
        }
    }
}

impl Chosen {
    /// Which key signed, and the keys passed over before it.
    pub(super) fn signed_by(&self) -> SignedBy {
        SignedBy {
            backend: Some(self.entry.backend().name().to_owned()),
            label: self.entry.label().map(str::to_owned),
            fallback: !self.skipped.is_empty(),
            skipped: self
                .skipped
                .iter()
                .map(|(e, why)| SkippedKey {
                    kid: e.kid_hex.clone(),
                    backend: e.backend().name().to_owned(),
                    label: e.label().map(str::to_owned),
                    why: why.clone(),
                })
                .collect(),
        }
    }
}

/// Records a signature by `key` in the audit log (and the desktop
/// notification, if on): before any envelope leaves the bridge. No audit
/// line, no signature: a command that was not recorded never leaves. The
/// entry is returned for the answer.
pub(super) fn record(
    s: &Shared,
    key: &KeyEntry,
    claims: &Claims,
    by: &SignedBy,
) -> Result<audit::Entry, ApiError> {
    if by.fallback {
        tracing::info!(
            kid = %key.kid_hex,
            skipped = ?by.skipped.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            "signed by agent with a later key: the keys before it were not there"
        );
    }
    let entry = audit::Entry {
        time: claims.iat,
        kid: key.kid_hex.clone(),
        account: claims.iss.clone(),
        agent: claims.sub.clone(),
        cmd: claims.cmd.clone(),
        audience: claims.aud.clone(),
        batch_size: claims.devs.map(|d| d.size as usize),
        batch_root: claims.devs.map(|d| hex(&d.root)),
        cti: Some(hex(&claims.cti)),
        backend: by.backend.clone(),
        fallback: by.fallback,
        skipped: by.skipped.iter().map(|k| k.kid.clone()).collect(),
    };
    s.audit
        .append(&entry)
        .map_err(|e| ApiError::Internal(format!("audit log: {e}")))?;
    if s.policy.notify {
        // In a task of its own: never delays or fails the signature.
        crate::notify::signed(&entry, key.label());
    }
    Ok(entry)
}

/// Refuses a batch larger than the policy's `max_batch`.
pub(super) fn check_batch_size(s: &Shared, n: usize) -> Result<(), ApiError> {
    if n > s.policy.max_batch {
        return Err(ApiError::PolicyDenied(format!(
            "a batch of more than {} devices (the policy's max_batch): split the fleet",
            s.policy.max_batch
        )));
    }
    Ok(())
}

/// `POST /v1/sign`
pub async fn sign(
    State(s): State<Shared>,
    Json(mut req): Json<SignRequest>,
) -> Result<Response, ApiError> {
    let (device, devices) = (req.device.take(), req.devices.take());
    let asked = Asked::check(&s, req)?;
    for id in device.iter().chain(devices.iter().flatten()) {
        check_device_id(id).map_err(|e| ApiError::BadRequest(format!("device id {id:?}: {e}")))?;
    }
    let batch = match (device, devices) {
        (Some(d), None) if !d.is_empty() => Err(d),
        (None, Some(ids)) if !ids.is_empty() => {
            check_batch_size(&s, ids.len())?;
            Ok(tokio::task::spawn_blocking(move || Batch::new(ids))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of device and devices (non-empty)".into(),
            ));
        }
    };
    let claims = asked.claims(
        &s,
        batch.as_ref().err().cloned(),
        batch.as_ref().ok().map(Batch::signed_root),
    )?;
    let chosen = asked.sign(&s, &claims).await?;
    let by = chosen.signed_by();
    let Chosen {
        entry,
        unsigned,
        signature,
        ..
    } = chosen;
    let kid = entry.kid_hex.clone();
    let response = match batch {
        Err(_) => {
            let env = unsigned
                .into_envelope(&signature)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Answer::Single(Signed::Single {
                kid,
                envelope: B64.encode(env),
                by: by.clone(),
            })
        }
        Ok(batch) => {
            // Everything but the envelopes, as the answer's first fields.
            let mut head =
                serde_json::to_value(&by).map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(fields) = head.as_object_mut() {
                fields.insert("kid".into(), kid.clone().into());
                fields.insert("root".into(), hex(&batch.root()).into());
            }
            let head = head.to_string();
            // 10,000 envelopes are ~10 MB of JSON: written straight into one
            // string (serde_json escapes each device id; base64 needs no
            // escaping) instead of building 10,000 `Value`s first. Larger
            // batches stream (`POST /v1/sign/batch`).
            let body = tokio::task::spawn_blocking(move || {
                // ~1 KiB of base64 per device.
                let mut out = String::with_capacity(batch.len() * 1100 + head.len() + 32);
                // `{"kid":…,"root":…` and then the envelopes.
                out.push_str(head.strip_suffix('}').unwrap_or("{"));
                out.push_str(r#","envelopes":{"#);
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
    record(&s, &entry, &claims, &by)?;
    Ok(match response {
        Answer::Single(v) => Json(v).into_response(),
        Answer::Rendered(body) => {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    })
}

/// A locked key's PIN or passphrase, asked through the user's pinentry
/// program ([`crate::pinentry`]) when the config names one; the key is
/// then unlocked for its prompt frequency. Without one: nothing (the
/// signature answers `locked`).
async fn ask_secret(
    s: &Shared,
    entry: &Arc<KeyEntry>,
    claims: &Claims,
    batch_size: Option<usize>,
) -> Result<(), ApiError> {
    let Some(program) = &s.policy.pinentry else {
        return Ok(());
    };
    let mode = entry
        .stored
        .remember
        .filter(|m| s.policy.allows(*m))
        .unwrap_or(s.policy.default_remember);
    let why = crate::pinentry::Why {
        cmd: &claims.cmd,
        device: claims.aud.as_deref(),
        batch: batch_size,
    };
    crate::pinentry::unlock(program, entry, mode, &why, &s.clock).await
}

/// What signed: the key, the command it signed, the signature, and the
/// keys passed over before it (with why).
pub(super) struct Chosen {
    pub(super) entry: Arc<KeyEntry>,
    pub(super) unsigned: UnsignedCommand,
    pub(super) signature: Vec<u8>,
    skipped: Vec<(Arc<KeyEntry>, String)>,
}

/// An agent or account name from a request: not empty, bounded.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::BadRequest(format!(
            "{what} is 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// Signs with the first of `candidates` (the agent's keys in preference
/// order) that is at hand; see the module documentation for the rules.
async fn first_at_hand(
    s: &Shared,
    claims: &Claims,
    agent: &str,
    candidates: Vec<Arc<KeyEntry>>,
    batch_size: Option<usize>,
) -> Result<Chosen, ApiError> {
    let mut skipped: Vec<(Arc<KeyEntry>, String)> = vec![];
    // Passing over a key: refused for the policy's `no_fallback` kinds.
    let pass_over = |skipped: &mut Vec<(Arc<KeyEntry>, String)>,
                     entry: &Arc<KeyEntry>,
                     why: String|
     -> Result<(), ApiError> {
        if !s.policy.allows_fallback(&claims.cmd) {
            return Err(ApiError::PolicyDenied(format!(
                "{} is not there ({why}), and the policy forbids signing {} with another key of the agent (no_fallback): connect it and sign again",
                entry.describe(),
                claims.cmd
            )));
        }
        skipped.push((Arc::clone(entry), why));
        Ok(())
    };
    for entry in &candidates {
        let boot = s.clock.boot();
        let unlocked = entry.unlocked(boot);
        let presence = match unlocked {
            // Locked: is it there? (A present key is never passed over.)
            None => s.keys.probe(entry, boot).await,
            // One signature's unlock: spent by trying, so look first.
            Some((Remember::EachTask, _)) => s.keys.probe(entry, boot).await,
            // A timed unlock: the signature itself tells.
            Some(_) => entry.presence(),
        };
        if let Presence::Absent(why) = presence {
            pass_over(&mut skipped, entry, why)?;
            continue;
        }
        if unlocked.is_none() {
            if s.policy.pinentry.is_none() {
                return Err(locked(entry, &skipped));
            }
            ask_secret(s, entry, claims, batch_size).await?;
        }
        let unsigned = UnsignedCommand::new(claims, &entry.public)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        match entry
            .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
            .await
        {
            Ok(signature) => {
                return Ok(Chosen {
                    entry: Arc::clone(entry),
                    unsigned,
                    signature,
                    skipped,
                });
            }
            Err(KeyError::Backend(BackendError::TokenAbsent(why))) => {
                pass_over(&mut skipped, entry, why)?;
            }
            // The unlock ended in between (expired, locked, spent by
            // another request).
            Err(KeyError::Locked) => return Err(locked(entry, &skipped)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::TokenAbsent(format!(
        "no key of agent {agent:?} (account {:?}) is at hand: {}",
        claims.iss,
        skipped
            .iter()
            .map(|(e, why)| format!("{}: {why}", e.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// `locked`, naming the key a request by agent stopped at.
fn locked(entry: &KeyEntry, skipped: &[(Arc<KeyEntry>, String)]) -> ApiError {
    let name = entry.label().unwrap_or(&entry.kid_hex);
    let mut detail = format!(
        "{} is there but locked: unlock it (keybridge unlock {name}) and sign again",
        entry.describe()
    );
    if !skipped.is_empty() {
        detail.push_str(&format!(
            " (not there: {})",
            skipped
                .iter()
                .map(|(e, _)| e.describe())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    ApiError::LockedKey {
        kid: entry.kid_hex.clone(),
        detail,
    }
}
