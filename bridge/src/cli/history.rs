//! `keybridge history --log LOG`: an account's key history, rendered from
//! its verified key log — what happened to which key (created, requested,
//! approved, rejected, revoked, reset; proposed and confirmed under a
//! threshold), whose key it was (owner), who did it (actor), and the
//! residency evidence a request carried. A log that does not verify is an
//! error: it is never rendered as if it were fine.

use super::{Ctx, date, short};
use crate::logfile::LogFile;
use keybridge_protocol::key::hex;
use keybridge_protocol::{KeyLog, KeyRequest, Kid, Op};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The log event it comes from.
    pub seq: u64,
    /// When (unix seconds, the signer's clock; for `requested`, the
    /// requester's).
    pub time: i64,
    /// `created`, `requested`, `approved`, `rejected`, `revoked`, `reset`,
    /// `threshold`, `proposed`, `confirmed`.
    pub event: &'static str,
    /// The log operation (`genesis`, `add`, …).
    pub op: &'static str,
    /// What happened, for a person.
    pub what: String,
    /// The kid the line is about (for a rejection: the request's digest).
    pub kid: String,
    /// The agent who owns that key.
    pub owner: Option<String>,
    /// Who did it: an agent, or `recovery key`.
    pub actor: String,
    /// The kid that signed.
    pub actor_kid: String,
    /// The residency evidence the key's request carried (its kind).
    pub evidence: Option<String>,
}

/// What a change (an `add`, `revoke` or `threshold`, direct or proposed)
/// is about: (subject kid, owner, sentence, evidence).
fn describe(
    change: &Op,
    owner: &BTreeMap<Kid, String>,
) -> (String, Option<String>, String, Option<String>) {
    match change {
        Op::Add {
            key,
            agent,
            role,
            replaces,
            req,
        } => {
            let r = replaces
                .map(|k| format!(", replacing {}…", short(&k.to_hex(), 16)))
                .unwrap_or_default();
            let evidence = KeyRequest::parse(req)
                .ok()
                .and_then(|r| r.evidence.map(|e| e.kind));
            (
                key.kid().to_hex(),
                Some(agent.clone()),
                format!("{agent}'s key as {role}{r}"),
                evidence,
            )
        }
        Op::Revoke { kid } => {
            let o = owner.get(kid).cloned();
            (
                kid.to_hex(),
                o.clone(),
                format!("{}'s key", o.as_deref().unwrap_or("?")),
                None,
            )
        }
        Op::Threshold { k } => (String::new(), None, format!("threshold {k} admins"), None),
        other => (String::new(), None, other.name().to_owned(), None),
    }
}

/// The history of `log`, oldest first.
pub fn rows(log: &KeyLog) -> Vec<Row> {
    // A kid belongs to one agent for good (a key never comes back).
    let mut owner: BTreeMap<Kid, String> = BTreeMap::new();
    for e in log.events() {
        let change = match &e.op {
            Op::Propose { change } => change,
            op => op,
        };
        match change {
            Op::Genesis { key, agent, .. }
            | Op::Reset { key, agent, .. }
            | Op::Add { key, agent, .. } => {
                owner.insert(key.kid(), agent.clone());
            }
            _ => {}
        }
    }
    // The log replayed alongside, to tell whether a confirmation applied
    // its proposal (the events were verified once already).
    let mut replay: Option<KeyLog> = None;
    let mut proposals: BTreeMap<u64, Op> = BTreeMap::new();
    let mut rows = vec![];
    for e in log.events() {
        let pending_before: Option<bool> = match &e.op {
            Op::Confirm { proposal } => replay.as_ref().map(|r| r.pending().contains_key(proposal)),
            _ => None,
        };
        match replay.as_mut() {
            None => replay = KeyLog::from_genesis(e.bytes()).ok(),
            Some(r) => {
                let _ = r.append(e.bytes());
            }
        }
        let actor = match (&e.op, owner.get(&e.signer)) {
            // Only the recovery key signs a reset, and it owns no other event.
            (Op::Reset { .. }, _) => "recovery key".to_owned(),
            (_, Some(agent)) => agent.clone(),
            (_, None) => "?".to_owned(),
        };
        let line =
            |event,
             time,
             what: String,
             (kid, o, evidence): (String, Option<String>, Option<String>)| Row {
                seq: e.seq,
                time,
                event,
                op: e.op.name(),
                what,
                kid,
                owner: o,
                actor: actor.clone(),
                actor_kid: e.signer.to_hex(),
                evidence,
            };
        // An add's request is a line of its own: who asked, and when.
        let requested = |change: &Op| -> Option<Row> {
            let Op::Add {
                req, agent, role, ..
            } = change
            else {
                return None;
            };
            let r = KeyRequest::parse(req).ok()?;
            let kid = r.key.kid().to_hex();
            Some(Row {
                actor: agent.clone(),
                actor_kid: kid.clone(),
                ..line(
                    "requested",
                    r.time,
                    format!("{agent} asked to join as {role}"),
                    (kid, Some(agent.clone()), r.evidence.map(|e| e.kind)),
                )
            })
        };
        match &e.op {
            Op::Genesis { key, agent, .. } => rows.push(line(
                "created",
                e.time,
                format!("account created; {agent}'s first key (admin)"),
                (key.kid().to_hex(), Some(agent.clone()), None),
            )),
            Op::Reset { key, agent, .. } => {
                rows.push(line(
                    "reset",
                    e.time,
                    format!("reset with the recovery file: all keys removed, {agent}'s key first"),
                    (key.kid().to_hex(), Some(agent.clone()), None),
                ));
                proposals.clear();
            }
            Op::Reject { req, reason } => rows.push(line(
                "rejected",
                e.time,
                format!("request rejected: {reason}"),
                (hex(req), None, None),
            )),
            Op::Add { .. } | Op::Revoke { .. } | Op::Threshold { .. } => {
                rows.extend(requested(&e.op));
                let (kid, o, what, evidence) = describe(&e.op, &owner);
                let event = match &e.op {
                    Op::Add { .. } => "approved",
                    Op::Revoke { .. } => "revoked",
                    _ => "threshold",
                };
                rows.push(line(event, e.time, what, (kid, o, evidence)));
            }
            Op::Propose { change } => {
                rows.extend(requested(change));
                let (kid, o, what, evidence) = describe(change, &owner);
                let applied = replay
                    .as_ref()
                    .is_some_and(|r| !r.pending().contains_key(&e.seq));
                let how = if applied { " — applied" } else { "" };
                rows.push(line(
                    "proposed",
                    e.time,
                    format!("proposed: {} {what}{how}", change.name()),
                    (kid, o, evidence),
                ));
                proposals.insert(e.seq, (**change).clone());
            }
            Op::Confirm { proposal } => {
                let change = proposals.get(proposal);
                let (kid, o, what, evidence) =
                    change.map(|c| describe(c, &owner)).unwrap_or_default();
                let applied = pending_before == Some(true)
                    && replay
                        .as_ref()
                        .is_some_and(|r| !r.pending().contains_key(proposal));
                let how = if applied { " — applied" } else { "" };
                rows.push(line(
                    "confirmed",
                    e.time,
                    format!(
                        "confirmed proposal #{proposal}: {} {what}{how}",
                        change.map_or("?", Op::name)
                    ),
                    (kid, o, evidence),
                ));
            }
        }
    }
    rows
}

pub(super) fn run(ctx: &Ctx, log: &Path) -> anyhow::Result<()> {
    let file = LogFile::read(log)?;
    let rows = rows(file.log());
    ctx.print(&rows, |rows| {
        let mut out = vec![format!(
            "{:<4} {:<20}  {:<9}  {:<10} {:<10} {:<17} {}",
            "#", "time (UTC)", "event", "owner", "actor", "kid", "what"
        )];
        for r in rows {
            let evidence = r
                .evidence
                .as_deref()
                .map(|e| format!("  [evidence: {e}]"))
                .unwrap_or_default();
            out.push(format!(
                "{:<4} {:<20}  {:<9}  {:<10} {:<10} {:<17} {}{evidence}",
                r.seq,
                date(r.time),
                r.event,
                r.owner.as_deref().unwrap_or("-"),
                r.actor,
                if r.kid.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{}…", short(&r.kid, 16))
                },
                r.what,
            ));
        }
        out.join("\n")
    });
    Ok(())
}
