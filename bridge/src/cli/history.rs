//! `keybridge history --log LOG`: an account's key history, rendered from
//! its key log — what happened to which key, whose key it was (owner), and
//! who did it (actor).

use super::{Ctx, date, short};
use anyhow::Context as _;
use keybridge_protocol::key::hex;
use keybridge_protocol::{KeyLog, Op};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One event of the history.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Position in the log.
    pub seq: u64,
    /// When (unix seconds, the signer's clock).
    pub time: i64,
    /// `genesis`, `add`, `reject`, `revoke`, `reset`.
    pub op: &'static str,
    /// What happened, for a person.
    pub what: String,
    /// The kid (or request digest) the event is about.
    pub subject: String,
    /// The agent who owns the subject key, when it is a key.
    pub owner: Option<String>,
    /// Who signed the event: an agent, or "recovery key".
    pub actor: String,
    /// The signing kid.
    pub actor_kid: String,
}

/// The history of `log`, oldest first.
pub fn rows(log: &KeyLog) -> Vec<Row> {
    // Who each kid belonged to, as the log goes.
    let mut owner: BTreeMap<_, String> = BTreeMap::new();
    let mut rows = vec![];
    for e in log.events() {
        let (what, subject, subject_owner) = match &e.op {
            Op::Genesis { key, agent, .. } => {
                owner.insert(key.kid(), agent.clone());
                (
                    "created (first key, admin)".to_owned(),
                    key.kid().to_hex(),
                    Some(agent.clone()),
                )
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
                    .map(|k| format!(", replaces {}", short(&k.to_hex(), 16)))
                    .unwrap_or_default();
                (
                    format!("approved for {agent} as {role}{r}"),
                    key.kid().to_hex(),
                    Some(agent.clone()),
                )
            }
            Op::Reject { req, reason } => (format!("request rejected: {reason}"), hex(req), None),
            Op::Revoke { kid } => {
                let o = owner.get(kid).cloned();
                (
                    format!("revoked ({})", o.as_deref().unwrap_or("?")),
                    kid.to_hex(),
                    o,
                )
            }
            Op::Reset { key, agent, .. } => {
                owner.insert(key.kid(), agent.clone());
                (
                    format!("reset: all keys removed, new first key for {agent}"),
                    key.kid().to_hex(),
                    Some(agent.clone()),
                )
            }
        };
        // Only the recovery key signs a reset, and it owns no other event.
        let actor = match (&e.op, owner.get(&e.signer)) {
            (Op::Reset { .. }, _) => "recovery key".to_owned(),
            (_, Some(agent)) => agent.clone(),
            (_, None) => "?".to_owned(),
        };
        rows.push(Row {
            seq: e.seq,
            time: e.time,
            op: e.op.name(),
            what,
            subject,
            owner: subject_owner,
            actor,
            actor_kid: e.signer.to_hex(),
        });
    }
    rows
}

pub(super) fn run(ctx: &Ctx, log: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(log).with_context(|| log.display().to_string())?;
    let parsed = KeyLog::from_bytes(&bytes)?;
    let rows = rows(&parsed);
    ctx.print(&rows, |rows| {
        rows.iter()
            .map(|r| {
                format!(
                    "#{:<3} {}  {:<8} {}…  {}  (by {})",
                    r.seq,
                    date(r.time),
                    r.op,
                    short(&r.subject, 16),
                    r.what,
                    r.actor
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
