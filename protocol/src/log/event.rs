//! One key-log event: its operations ([`Op`]), their payload encoding and
//! parsing, and the rules of each operation: who may sign it, what it
//! checks against the key set, and what it changes there.

use super::request::KeyRequest;
use super::trust::{ActiveKey, KeySet, Revoked};
use super::{ACCT, AGENT, KEY, LogError, ROLE, TIME};
use crate::cbor::{self, Key, MapReader};
use crate::envelope::{EnvelopeError, Parsed};
use crate::key::{Kid, PublicKey};
use ciborium::value::Value;
use std::collections::BTreeSet;
use std::fmt;

/// Content type of a key-log event.
pub const EVENT_CONTENT_TYPE: &str = "application/keybridge-log-event+cbor";

const SEQ: Key = Key::Text("seq");
const PREV: Key = Key::Text("prev");
const OP: Key = Key::Text("op");
const RECOVERY: Key = Key::Text("recovery");
const REQ: Key = Key::Text("req");
const REPLACES: Key = Key::Text("replaces");
const REASON: Key = Key::Text("reason");
const KID: Key = Key::Text("kid");
const K: Key = Key::Text("k");
const CHANGE: Key = Key::Text("change");
const PROPOSAL: Key = Key::Text("proposal");

/// An agent's role in the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May approve, reject and revoke keys.
    Admin,
    /// May sign commands.
    Member,
}

impl Role {
    /// `"admin"` or `"member"`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key-log operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The account's first key (an admin) and its recovery key.
    Genesis {
        /// The first key.
        key: PublicKey,
        /// Its agent.
        agent: String,
        /// The recovery key, the only signer of `reset`.
        recovery: PublicKey,
    },
    /// An approved key request.
    Add {
        /// The new key.
        key: PublicKey,
        /// Its agent.
        agent: String,
        /// Its role.
        role: Role,
        /// The new key's self-signed request, verbatim.
        req: Vec<u8>,
        /// A key of the same agent this one replaces (revoked by this event).
        replaces: Option<Kid>,
    },
    /// A refused key request, kept for the history.
    Reject {
        /// SHA-256 of the request bytes.
        req: [u8; 32],
        /// Why.
        reason: String,
    },
    /// A key leaves the account.
    Revoke {
        /// The key id.
        kid: Kid,
    },
    /// Recovery: all keys removed, one new first key, a new recovery key.
    Reset {
        /// The new first key (an admin).
        key: PublicKey,
        /// Its agent.
        agent: String,
        /// The new recovery key.
        recovery: PublicKey,
    },
    /// The account's threshold: how many distinct admin agents must approve
    /// adding or revoking an admin key, or changing the threshold.
    Threshold {
        /// The number of admin agents, at least 1.
        k: u32,
    },
    /// A change that needs the threshold's approvals, proposed by one admin
    /// (the first approval): an `add` of an admin key (or one replacing an
    /// admin key), a `revoke` of an admin key, or a `threshold`.
    Propose {
        /// The change.
        change: Box<Op>,
    },
    /// Another admin agent's approval of the proposal at event `proposal`;
    /// the approval that reaches the threshold applies the change.
    Confirm {
        /// The proposal's position in the log.
        proposal: u64,
    },
}

/// A proposal waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The proposed change.
    pub change: Op,
    /// The admin agents who approved it so far (the proposer first).
    pub approvers: BTreeSet<String>,
}

impl Op {
    /// The operation's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Genesis { .. } => "genesis",
            Op::Add { .. } => "add",
            Op::Reject { .. } => "reject",
            Op::Revoke { .. } => "revoke",
            Op::Reset { .. } => "reset",
            Op::Threshold { .. } => "threshold",
            Op::Propose { .. } => "propose",
            Op::Confirm { .. } => "confirm",
        }
    }

    /// Whether this change, signed directly, needs the approvals of the
    /// account's threshold instead: with a threshold above 1, adding an
    /// admin key (or replacing one), revoking an admin key and changing the
    /// threshold go through `propose` and `confirm`.
    pub(super) fn needs_quorum(&self, keys: &KeySet) -> bool {
        let is_admin = |kid: &Kid| keys.active.get(kid).is_some_and(|k| k.role == Role::Admin);
        keys.threshold > 1
            && match self {
                Op::Threshold { .. } => true,
                Op::Add { role, replaces, .. } => {
                    *role == Role::Admin || replaces.as_ref().is_some_and(is_admin)
                }
                Op::Revoke { kid } => is_admin(kid),
                _ => false,
            }
    }

    /// Who may sign this operation as event `seq` of a log whose key set is
    /// `keys`: the key the event's signature must verify with, provided
    /// `signer` (the envelope's kid) is allowed to sign it. `genesis` only
    /// starts a log ([`super::KeyLog::from_genesis`]), so it is refused here.
    pub(super) fn authorized_signer<'k>(
        &self,
        keys: &'k KeySet,
        signer: &Kid,
        seq: u64,
    ) -> Result<&'k PublicKey, LogError> {
        let deny = |why| self.deny(seq, why);
        let active = || keys.active.get(signer).ok_or(deny("signer not active"));
        let admin = |why| {
            let k = active()?;
            if k.role == Role::Admin {
                Ok(k)
            } else {
                Err(deny(why))
            }
        };
        let signer_key = match self {
            Op::Genesis { .. } => return Err(deny("genesis only at the start of a log")),
            Op::Reset { .. } => {
                if *signer != keys.recovery.kid() {
                    return Err(deny("reset must be signed by the recovery key"));
                }
                return Ok(&keys.recovery);
            }
            Op::Revoke { kid } => {
                let signer_key = active()?;
                if signer_key.role != Role::Admin && signer != kid {
                    return Err(deny("only an admin or the key itself may revoke"));
                }
                signer_key
            }
            Op::Add { agent, .. } => {
                let signer_key = admin("approver is not an admin")?;
                if signer_key.agent == *agent {
                    return Err(deny("approver must be a different agent"));
                }
                signer_key
            }
            Op::Reject { .. } => admin("rejecter is not an admin")?,
            Op::Threshold { .. } => admin("only an admin sets the threshold")?,
            Op::Propose { change } => {
                let signer_key = admin("only an admin proposes")?;
                match &**change {
                    Op::Add { agent, .. } if signer_key.agent == *agent => {
                        return Err(deny("approver must be a different agent"));
                    }
                    Op::Add { .. } | Op::Revoke { .. } | Op::Threshold { .. } => {}
                    _ => return Err(deny("only add, revoke and threshold are proposed")),
                }
                signer_key
            }
            Op::Confirm { proposal } => {
                let signer_key = admin("only an admin approves a proposal")?;
                let pending = keys
                    .pending
                    .get(proposal)
                    .ok_or(deny("no pending proposal at that event"))?;
                if pending.approvers.contains(&signer_key.agent) {
                    return Err(deny("this agent already approved the proposal"));
                }
                if matches!(&pending.change, Op::Add { agent, .. } if *agent == signer_key.agent) {
                    return Err(deny("approver must be a different agent"));
                }
                signer_key
            }
        };
        Ok(&signer_key.key)
    }

    /// The checks of this operation against the key set of `account`, once
    /// its signature verified; nothing changes (see [`Op::apply`]).
    pub(super) fn check(&self, keys: &KeySet, account: &str, seq: u64) -> Result<(), LogError> {
        let deny = |why| self.deny(seq, why);
        match self {
            Op::Genesis { .. } => unreachable!("refused by authorized_signer"),
            Op::Add { .. } | Op::Revoke { .. } | Op::Threshold { .. } => {
                if self.needs_quorum(keys) {
                    return Err(deny(
                        "the account's threshold requires several admins: propose it, other admins confirm",
                    ));
                }
                self.check_effect(keys, account, seq)?;
            }
            Op::Reject { .. } => {}
            Op::Reset { key, recovery, .. } => {
                if recovery.kid() == key.kid() {
                    return Err(LogError::Malformed {
                        seq,
                        what: "the recovery key must differ from the first key",
                    });
                }
                check_new_key(keys, key, seq, "reset")?;
            }
            Op::Propose { change } => {
                if keys.pending.values().any(|p| p.change == **change) {
                    return Err(deny("the same change is already proposed: confirm it"));
                }
                change.check_effect(keys, account, seq)?;
            }
            Op::Confirm { proposal } => {
                let pending = &keys.pending[proposal];
                if approvals_after(keys, pending) >= keys.threshold {
                    pending.change.check_effect(keys, account, seq)?;
                }
            }
        }
        Ok(())
    }

    /// Adds the key ids this operation names to `out` (a confirmation
    /// names none itself: its proposal does).
    pub(super) fn kids_named(&self, out: &mut BTreeSet<Kid>) {
        match self {
            Op::Genesis { key, recovery, .. } | Op::Reset { key, recovery, .. } => {
                out.insert(key.kid());
                out.insert(recovery.kid());
            }
            Op::Add { key, replaces, .. } => {
                out.insert(key.kid());
                out.extend(replaces);
            }
            Op::Revoke { kid } => {
                out.insert(*kid);
            }
            Op::Propose { change } => change.kids_named(out),
            Op::Reject { .. } | Op::Threshold { .. } | Op::Confirm { .. } => {}
        }
    }

    /// What an `add`, `revoke` or `threshold` requires of the key set,
    /// whether it is signed directly or reached through its approvals.
    fn check_effect(&self, keys: &KeySet, account: &str, seq: u64) -> Result<(), LogError> {
        let deny = |why| self.deny(seq, why);
        match self {
            Op::Add {
                key,
                agent,
                role,
                req,
                replaces,
            } => {
                let request = KeyRequest::parse_expecting(req, Some(key))?;
                if request.key != *key
                    || request.agent != *agent
                    || request.role != *role
                    || request.account != account
                {
                    return Err(LogError::BadRequest("does not match the add event"));
                }
                if request.replaces != *replaces {
                    return Err(LogError::BadRequest(
                        "replaces differs from the key the request asked to replace",
                    ));
                }
                check_new_key(keys, key, seq, "add")?;
                if let Some(old) = replaces {
                    match keys.active.get(old) {
                        Some(k) if k.agent == *agent => {}
                        Some(_) => return Err(deny("replaces a key of another agent")),
                        None => return Err(deny("replaces a key that is not active")),
                    }
                    check_admins_after(keys, Some(old), Some((agent, *role)), seq, self)?;
                }
            }
            Op::Revoke { kid } => {
                if !keys.active.contains_key(kid) {
                    return Err(deny("key is not active"));
                }
                check_admins_after(keys, Some(kid), None, seq, self)?;
            }
            Op::Threshold { k } => {
                let admins = admin_agents(keys, None, None);
                if *k == 0 || *k as usize > admins {
                    return Err(deny(
                        "the threshold is 1 to the number of distinct admin agents",
                    ));
                }
            }
            _ => unreachable!("only add, revoke and threshold have effects to check"),
        }
        Ok(())
    }

    /// What this operation, event `seq` signed by `signer`, changes in the
    /// key set. Only after [`Op::authorized_signer`], the signature and
    /// [`Op::check`] passed.
    pub(super) fn apply(&self, keys: &mut KeySet, signer: &Kid, seq: u64) {
        match self {
            Op::Genesis { .. } | Op::Reject { .. } => {}
            Op::Add {
                key,
                agent,
                role,
                replaces,
                ..
            } => {
                if let Some(old) = replaces {
                    keys.active.remove(old);
                    keys.revoked.insert(
                        *old,
                        Revoked {
                            seq,
                            replaced_by: Some(key.kid()),
                        },
                    );
                }
                insert_key(keys, key, agent, *role, seq);
            }
            Op::Revoke { kid } => {
                keys.active.remove(kid);
                keys.revoked.insert(
                    *kid,
                    Revoked {
                        seq,
                        replaced_by: None,
                    },
                );
            }
            Op::Reset {
                key,
                agent,
                recovery,
            } => {
                for kid in std::mem::take(&mut keys.active).into_keys() {
                    keys.revoked.insert(
                        kid,
                        Revoked {
                            seq,
                            replaced_by: None,
                        },
                    );
                }
                insert_key(keys, key, agent, Role::Admin, seq);
                keys.recovery = recovery.clone();
                keys.threshold = 1;
                keys.pending.clear();
            }
            Op::Threshold { k } => keys.threshold = *k,
            Op::Propose { change } => {
                let agent = keys.active[signer].agent.clone();
                let pending = Pending {
                    change: (**change).clone(),
                    approvers: BTreeSet::from([agent]),
                };
                if pending.approvers.len() as u32 >= keys.threshold {
                    change.apply(keys, signer, seq);
                } else {
                    keys.pending.insert(seq, pending);
                }
            }
            Op::Confirm { proposal } => {
                let agent = keys.active[signer].agent.clone();
                let pending = keys.pending.get_mut(proposal).expect("checked");
                pending.approvers.insert(agent);
                if pending.approvers.len() as u32 >= keys.threshold {
                    let change = keys.pending.remove(proposal).expect("checked").change;
                    change.apply(keys, signer, seq);
                }
            }
        }
    }

    fn deny(&self, seq: u64, why: &'static str) -> LogError {
        LogError::NotAuthorized {
            seq,
            op: self.name(),
            why,
        }
    }
}

/// The approvals `pending` has once one more agent confirms it.
fn approvals_after(_keys: &KeySet, pending: &Pending) -> u32 {
    u32::try_from(pending.approvers.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

/// The number of distinct agents holding an active admin key, once `removed`
/// leaves and `added` (agent, role) joins.
fn admin_agents(keys: &KeySet, removed: Option<&Kid>, added: Option<(&String, Role)>) -> usize {
    let mut agents: BTreeSet<&String> = keys
        .active
        .iter()
        .filter(|(kid, k)| Some(*kid) != removed && k.role == Role::Admin)
        .map(|(_, k)| &k.agent)
        .collect();
    if let Some((agent, Role::Admin)) = added {
        agents.insert(agent);
    }
    agents.len()
}

/// A key that leaves must leave at least one admin, and at least as many
/// admin agents as the threshold needs: otherwise the account could never
/// approve anything again but through its recovery file.
fn check_admins_after(
    keys: &KeySet,
    removed: Option<&Kid>,
    added: Option<(&String, Role)>,
    seq: u64,
    op: &Op,
) -> Result<(), LogError> {
    let left = admin_agents(keys, removed, added);
    if left == 0 {
        return Err(op.deny(
            seq,
            "it would leave no active admin key; the recovery file (keybridge recovery reset) replaces the last admin",
        ));
    }
    if (left as u64) < u64::from(keys.threshold) {
        return Err(op.deny(
            seq,
            "it would leave fewer admin agents than the threshold; lower the threshold first",
        ));
    }
    Ok(())
}

/// A key may enter the account once: never a revoked kid, never the
/// recovery key.
fn check_new_key(
    keys: &KeySet,
    key: &PublicKey,
    seq: u64,
    op: &'static str,
) -> Result<(), LogError> {
    let kid = key.kid();
    let why = if keys.active.contains_key(&kid) {
        "key is already active"
    } else if keys.revoked.contains_key(&kid) {
        "a revoked key cannot come back"
    } else if kid == keys.recovery.kid() {
        "the recovery key cannot sign commands"
    } else {
        return Ok(());
    };
    Err(LogError::NotAuthorized { seq, op, why })
}

fn insert_key(keys: &mut KeySet, key: &PublicKey, agent: &str, role: Role, seq: u64) {
    keys.active.insert(
        key.kid(),
        ActiveKey {
            key: key.clone(),
            agent: agent.to_owned(),
            role,
            since_seq: seq,
        },
    );
}

/// One verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub(super) bytes: Vec<u8>,
    pub(super) digest: [u8; 32],
    /// Who signed it.
    pub signer: Kid,
    /// Position in the log.
    pub seq: u64,
    /// The signer's clock at signing, unix seconds.
    pub time: i64,
    /// What it does.
    pub op: Op,
}

impl Event {
    /// The event's bytes (a tagged COSE_Sign1).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes: the next event's `prev`.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// An event's payload, parsed but not yet checked against any log.
pub(super) struct EventBody {
    pub(super) acct: String,
    pub(super) seq: u64,
    pub(super) prev: Option<[u8; 32]>,
    pub(super) time: i64,
    pub(super) op: Op,
}

/// The deterministic payload of an event.
pub(super) fn event_payload(
    acct: &str,
    seq: u64,
    prev: Option<[u8; 32]>,
    time: i64,
    op: &Op,
) -> Vec<u8> {
    let mut m = vec![
        (ACCT.to_value(), Value::Text(acct.to_owned())),
        (SEQ.to_value(), Value::Integer(seq.into())),
        (TIME.to_value(), Value::Integer(time.into())),
    ];
    if let Some(prev) = prev {
        m.push((PREV.to_value(), Value::Bytes(prev.to_vec())));
    }
    m.extend(op_fields(op));
    cbor::encode(&mut Value::Map(m))
}

/// The fields of `op` (its name under `op`, then its own), as an event's
/// payload and a proposal's `change` carry them.
pub(super) fn op_fields(op: &Op) -> Vec<(Value, Value)> {
    let text = |s: &str| Value::Text(s.to_owned());
    let mut m = vec![(OP.to_value(), text(op.name()))];
    match op {
        Op::Genesis {
            key,
            agent,
            recovery,
        } => {
            m.push((KEY.to_value(), key.to_cose_key_value()));
            m.push((AGENT.to_value(), text(agent)));
            m.push((ROLE.to_value(), text(Role::Admin.name())));
            m.push((RECOVERY.to_value(), recovery.to_cose_key_value()));
        }
        Op::Add {
            key,
            agent,
            role,
            req,
            replaces,
        } => {
            m.push((KEY.to_value(), key.to_cose_key_value()));
            m.push((AGENT.to_value(), text(agent)));
            m.push((ROLE.to_value(), text(role.name())));
            m.push((REQ.to_value(), Value::Bytes(req.clone())));
            if let Some(r) = replaces {
                m.push((REPLACES.to_value(), Value::Bytes(r.0.to_vec())));
            }
        }
        Op::Reject { req, reason } => {
            m.push((REQ.to_value(), Value::Bytes(req.to_vec())));
            m.push((REASON.to_value(), text(reason)));
        }
        Op::Revoke { kid } => m.push((KID.to_value(), Value::Bytes(kid.0.to_vec()))),
        Op::Reset {
            key,
            agent,
            recovery,
        } => {
            m.push((KEY.to_value(), key.to_cose_key_value()));
            m.push((AGENT.to_value(), text(agent)));
            m.push((RECOVERY.to_value(), recovery.to_cose_key_value()));
        }
        Op::Threshold { k } => m.push((K.to_value(), Value::Integer((*k).into()))),
        Op::Propose { change } => m.push((CHANGE.to_value(), Value::Map(op_fields(change)))),
        Op::Confirm { proposal } => {
            m.push((PROPOSAL.to_value(), Value::Integer((*proposal).into())));
        }
    }
    m
}

/// Parses event `seq`: its envelope (signature not checked) and payload.
pub(super) fn parse_event(bytes: &[u8], seq: u64) -> Result<(Parsed, EventBody), LogError> {
    let env = |source| LogError::Envelope { seq, source };
    let parsed = Parsed::parse(bytes, EVENT_CONTENT_TYPE).map_err(env)?;
    if !parsed.unprotected.is_empty() {
        return Err(env(EnvelopeError::Malformed(
            "events have an empty unprotected header",
        )));
    }
    let m = parsed.payload_map().map_err(env)?;
    let body = read_event(m).map_err(|what| LogError::Malformed { seq, what })?;
    Ok((parsed, body))
}

fn read_event(mut m: MapReader) -> Result<EventBody, &'static str> {
    let acct = m.text(&ACCT).map_err(|_| "acct")?.ok_or("acct missing")?;
    let seq = m.int(&SEQ).map_err(|_| "seq")?.ok_or("seq missing")?;
    let seq = u64::try_from(seq).map_err(|_| "seq is negative")?;
    let prev = m.array32(&PREV).map_err(|_| "prev is 32 bytes")?;
    let time = m.int(&TIME).map_err(|_| "time")?.ok_or("time missing")?;
    let op = read_op(&mut m, true)?;
    if !m.is_exhausted() {
        return Err("unknown field");
    }
    Ok(EventBody {
        acct,
        seq,
        prev,
        time,
        op,
    })
}

/// Reads an operation's fields from `m` (see [`op_fields`]). A proposal's
/// change is read with `top_level` false: it cannot itself be a proposal,
/// a confirmation, a genesis, a reset or a reject.
pub(super) fn read_op(m: &mut MapReader, top_level: bool) -> Result<Op, &'static str> {
    let op = m.text(&OP).map_err(|_| "op")?.ok_or("op missing")?;
    let key = |m: &mut MapReader, k: &Key| -> Result<PublicKey, &'static str> {
        let v = m.take(k).ok_or("key missing")?;
        PublicKey::from_cose_key_value(&v).map_err(|_| "not a usable COSE_Key")
    };
    let text = |m: &mut MapReader, k: &Key, what| -> Result<String, &'static str> {
        m.text(k)
            .map_err(|_| what)?
            .filter(|s| !s.is_empty())
            .ok_or(what)
    };
    let role = |m: &mut MapReader| -> Result<Role, &'static str> {
        Role::parse(&text(m, &ROLE, "role")?).ok_or("role is admin or member")
    };
    let op = match op.as_str() {
        "genesis" if top_level => {
            let op = Op::Genesis {
                key: key(m, &KEY)?,
                agent: text(m, &AGENT, "agent")?,
                recovery: key(m, &RECOVERY)?,
            };
            if role(m)? != Role::Admin {
                return Err("the genesis key is an admin");
            }
            op
        }
        "add" => Op::Add {
            key: key(m, &KEY)?,
            agent: text(m, &AGENT, "agent")?,
            role: role(m)?,
            req: m.bytes(&REQ).map_err(|_| "req")?.ok_or("req missing")?,
            replaces: m
                .array32(&REPLACES)
                .map_err(|_| "replaces is a kid")?
                .map(Kid),
        },
        "reject" if top_level => Op::Reject {
            req: m
                .array32(&REQ)
                .map_err(|_| "req digest")?
                .ok_or("req digest missing")?,
            reason: m.text(&REASON).map_err(|_| "reason")?.unwrap_or_default(),
        },
        "revoke" => Op::Revoke {
            kid: Kid(m.array32(&KID).map_err(|_| "kid")?.ok_or("kid missing")?),
        },
        "reset" if top_level => Op::Reset {
            key: key(m, &KEY)?,
            agent: text(m, &AGENT, "agent")?,
            recovery: key(m, &RECOVERY)?,
        },
        "threshold" => {
            let k = m.int(&K).map_err(|_| "k")?.ok_or("k missing")?;
            Op::Threshold {
                k: u32::try_from(k).map_err(|_| "k is 1 to 2^32-1")?,
            }
        }
        "propose" if top_level => {
            let change = m.take(&CHANGE).ok_or("change missing")?;
            let mut inner = MapReader::new(change).ok_or("change is a map")?;
            let change = read_op(&mut inner, false)?;
            if !inner.is_exhausted() {
                return Err("unknown field in change");
            }
            Op::Propose {
                change: Box::new(change),
            }
        }
        "confirm" if top_level => {
            let p = m.int(&PROPOSAL).map_err(|_| "proposal")?;
            Op::Confirm {
                proposal: u64::try_from(p.ok_or("proposal missing")?)
                    .map_err(|_| "proposal is an event number")?,
            }
        }
        "genesis" | "reject" | "reset" | "propose" | "confirm" => {
            return Err("a proposal changes add, revoke or threshold only");
        }
        _ => return Err("unknown op"),
    };
    Ok(op)
}
