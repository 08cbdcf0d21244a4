//! The account's key log (DESIGN.md §5): a hash-chained CBOR sequence
//! (RFC 8742) of signed key events, and the key set it implies.
//!
//! Each event is a COSE_Sign1 (content type [`EVENT_CONTENT_TYPE`]) whose
//! payload is `{"acct", "seq", "prev", "time", "op", …}`. `prev` is the
//! SHA-256 of the previous event's bytes, so an event cannot be edited,
//! dropped, reordered or inserted without breaking every later link. Who may
//! sign which operation:
//!
//! | op | signed by |
//! |---|---|
//! | `genesis` | the new key itself (seq 0 only) |
//! | `add` | an active admin key of a *different* agent; carries the new key's self-signed request |
//! | `reject` | an active admin key |
//! | `revoke` | an active admin key, or the key itself |
//! | `reset` | the current recovery key |

use crate::cbor::{self, Key, MapReader};
use crate::envelope::{self, EnvelopeError, Parsed, Unsigned};
use crate::key::{Kid, PublicKey};
use ciborium::value::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Content type of a key-log event.
pub const EVENT_CONTENT_TYPE: &str = "application/keybridge-log-event+cbor";
/// Content type of a key request (self-signed by the requested key).
pub const REQUEST_CONTENT_TYPE: &str = "application/keybridge-key-request+cbor";

const ACCT: Key = Key::Text("acct");
const SEQ: Key = Key::Text("seq");
const PREV: Key = Key::Text("prev");
const TIME: Key = Key::Text("time");
const OP: Key = Key::Text("op");
const KEY: Key = Key::Text("key");
const AGENT: Key = Key::Text("agent");
const ROLE: Key = Key::Text("role");
const RECOVERY: Key = Key::Text("recovery");
const REQ: Key = Key::Text("req");
const REPLACES: Key = Key::Text("replaces");
const REASON: Key = Key::Text("reason");
const KID: Key = Key::Text("kid");

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

    fn parse(s: &str) -> Option<Self> {
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
        }
    }
}

/// Why a log, an event or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// An empty log.
    #[error("the key log is empty")]
    Empty,
    /// The event's envelope is malformed.
    #[error("event {seq}: {source}")]
    Envelope {
        /// Position in the log.
        seq: u64,
        /// The envelope problem.
        source: EnvelopeError,
    },
    /// The event's payload is malformed.
    #[error("event {seq}: malformed: {what}")]
    Malformed {
        /// Position in the log.
        seq: u64,
        /// What.
        what: &'static str,
    },
    /// The event belongs to another account.
    #[error("event {seq}: account {found:?}, log is for {expected:?}")]
    WrongAccount {
        /// Position in the log.
        seq: u64,
        /// The log's account.
        expected: String,
        /// The event's.
        found: String,
    },
    /// `seq` is not the next number.
    #[error("event {expected}: carries seq {found}")]
    BadSequence {
        /// The position it sits at.
        expected: u64,
        /// What it says.
        found: u64,
    },
    /// `prev` is not the hash of the previous event.
    #[error("event {seq}: does not chain to the previous event")]
    BrokenChain {
        /// Position in the log.
        seq: u64,
    },
    /// The signer is not a key that may sign this operation.
    #[error("event {seq}: {op} not allowed: {why}")]
    NotAuthorized {
        /// Position in the log.
        seq: u64,
        /// The operation.
        op: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// The signature does not verify.
    #[error("event {seq}: signature does not verify")]
    BadSignature {
        /// Position in the log.
        seq: u64,
    },
    /// The key request inside an `add` is invalid or does not match it.
    #[error("key request: {0}")]
    BadRequest(&'static str),
    /// The new log does not start with all of the trusted log (rollback).
    #[error("the new log has {got} events, fewer than the {have} already trusted (rollback)")]
    Rollback {
        /// Events trusted.
        have: usize,
        /// Events offered.
        got: usize,
    },
    /// The new log differs from the trusted one at `seq` (fork).
    #[error("the new log differs from the trusted one at event {seq} (fork)")]
    Fork {
        /// First differing event.
        seq: u64,
    },
}

/// A key in the account's active set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveKey {
    /// The public key.
    pub key: PublicKey,
    /// Whose key it is.
    pub agent: String,
    /// The agent's role through this key.
    pub role: Role,
    /// The event that added it.
    pub since_seq: u64,
}

/// What the log says of a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus<'a> {
    /// Active: commands signed by it are accepted.
    Active(&'a ActiveKey),
    /// Was active and was revoked (or removed by a reset) at this event.
    Revoked(u64),
    /// Never part of this account.
    Unknown,
}

/// One verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    bytes: Vec<u8>,
    digest: [u8; 32],
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

/// A verified key log and the key set it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLog {
    account: String,
    events: Vec<Event>,
    active: BTreeMap<Kid, ActiveKey>,
    revoked: BTreeMap<Kid, u64>,
    recovery: PublicKey,
}

impl KeyLog {
    /// The genesis event of a new account, to be signed by `key` itself.
    pub fn genesis(
        account: &str,
        time: i64,
        key: &PublicKey,
        agent: &str,
        recovery: &PublicKey,
    ) -> Unsigned {
        let op = Op::Genesis {
            key: key.clone(),
            agent: agent.to_owned(),
            recovery: recovery.clone(),
        };
        Unsigned::new(
            key,
            EVENT_CONTENT_TYPE,
            event_payload(account, 0, None, time, &op),
        )
    }

    /// The next event of this log, to be signed by `signer`.
    pub fn next_event(&self, time: i64, op: &Op, signer: &PublicKey) -> Unsigned {
        let seq = self.events.len() as u64;
        let prev = self.head();
        Unsigned::new(
            signer,
            EVENT_CONTENT_TYPE,
            event_payload(&self.account, seq, Some(prev), time, op),
        )
    }

    /// Reads and verifies a whole log (a CBOR sequence of events).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LogError> {
        let mut rest = bytes;
        let first_len = next_item_len(rest, 0)?;
        let (first, tail) = rest.split_at(first_len);
        let mut log = Self::from_genesis(first)?;
        rest = tail;
        log.append_all(rest)?;
        Ok(log)
    }

    /// Appends every event of the CBOR sequence `rest`, in order.
    fn append_all(&mut self, mut rest: &[u8]) -> Result<(), LogError> {
        while !rest.is_empty() {
            let seq = self.events.len() as u64;
            let len = next_item_len(rest, seq)?;
            let (event, tail) = rest.split_at(len);
            self.append(event)?;
            rest = tail;
        }
        Ok(())
    }

    /// A log of one genesis event.
    pub fn from_genesis(event: &[u8]) -> Result<Self, LogError> {
        let (parsed, body) = parse_event(event, 0)?;
        let Op::Genesis {
            key,
            agent,
            recovery,
        } = body.op
        else {
            return Err(LogError::NotAuthorized {
                seq: 0,
                op: body.op.name(),
                why: "the first event must be genesis",
            });
        };
        if body.seq != 0 {
            return Err(LogError::BadSequence {
                expected: 0,
                found: body.seq,
            });
        }
        if body.prev.is_some() {
            return Err(LogError::BrokenChain { seq: 0 });
        }
        if parsed.kid != key.kid() {
            return Err(LogError::NotAuthorized {
                seq: 0,
                op: "genesis",
                why: "genesis must be signed by the new key itself",
            });
        }
        if recovery.kid() == key.kid() {
            return Err(LogError::Malformed {
                seq: 0,
                what: "the recovery key must differ from the first key",
            });
        }
        parsed
            .verify_signature(&key)
            .map_err(|_| LogError::BadSignature { seq: 0 })?;
        let mut active = BTreeMap::new();
        active.insert(
            key.kid(),
            ActiveKey {
                key: key.clone(),
                agent: agent.clone(),
                role: Role::Admin,
                since_seq: 0,
            },
        );
        Ok(KeyLog {
            account: body.acct,
            events: vec![Event {
                digest: Sha256::digest(event).into(),
                bytes: event.to_vec(),
                signer: parsed.kid,
                seq: 0,
                time: body.time,
                op: Op::Genesis {
                    key,
                    agent,
                    recovery: recovery.clone(),
                },
            }],
            active,
            revoked: BTreeMap::new(),
            recovery,
        })
    }

    /// Verifies one more event and applies it. On error nothing changes.
    pub fn append(&mut self, event: &[u8]) -> Result<(), LogError> {
        let seq = self.events.len() as u64;
        let (parsed, body) = parse_event(event, seq)?;
        if body.acct != self.account {
            return Err(LogError::WrongAccount {
                seq,
                expected: self.account.clone(),
                found: body.acct,
            });
        }
        if body.seq != seq {
            return Err(LogError::BadSequence {
                expected: seq,
                found: body.seq,
            });
        }
        if body.prev != Some(self.head()) {
            return Err(LogError::BrokenChain { seq });
        }
        let op_name = body.op.name();
        let deny = |why| LogError::NotAuthorized {
            seq,
            op: op_name,
            why,
        };
        // Who may sign: decide the signing key first, verify, then apply.
        let signer_key = match &body.op {
            Op::Genesis { .. } => return Err(deny("genesis only at the start of a log")),
            Op::Reset { .. } => {
                if parsed.kid != self.recovery.kid() {
                    return Err(deny("reset must be signed by the recovery key"));
                }
                self.recovery.clone()
            }
            Op::Revoke { kid } => {
                let signer = self
                    .active
                    .get(&parsed.kid)
                    .ok_or(deny("signer not active"))?;
                if signer.role != Role::Admin && parsed.kid != *kid {
                    return Err(deny("only an admin or the key itself may revoke"));
                }
                signer.key.clone()
            }
            Op::Add { agent, .. } => {
                let signer = self
                    .active
                    .get(&parsed.kid)
                    .ok_or(deny("signer not active"))?;
                if signer.role != Role::Admin {
                    return Err(deny("approver is not an admin"));
                }
                if signer.agent == *agent {
                    return Err(deny("approver must be a different agent"));
                }
                signer.key.clone()
            }
            Op::Reject { .. } => {
                let signer = self
                    .active
                    .get(&parsed.kid)
                    .ok_or(deny("signer not active"))?;
                if signer.role != Role::Admin {
                    return Err(deny("rejecter is not an admin"));
                }
                signer.key.clone()
            }
        };
        parsed
            .verify_signature(&signer_key)
            .map_err(|_| LogError::BadSignature { seq })?;

        // Operation-specific checks, all before the first change: on error
        // `self` is untouched.
        match &body.op {
            Op::Genesis { .. } => unreachable!("refused above"),
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
                    || request.account != self.account
                {
                    return Err(LogError::BadRequest("does not match the add event"));
                }
                self.check_new_key(key, seq, "add")?;
                if let Some(old) = replaces {
                    match self.active.get(old) {
                        Some(k) if k.agent == *agent => {}
                        Some(_) => return Err(deny("replaces a key of another agent")),
                        None => return Err(deny("replaces a key that is not active")),
                    }
                }
            }
            Op::Reject { .. } => {}
            Op::Revoke { kid } => {
                if !self.active.contains_key(kid) {
                    return Err(deny("key is not active"));
                }
            }
            Op::Reset { key, recovery, .. } => {
                if recovery.kid() == key.kid() {
                    return Err(LogError::Malformed {
                        seq,
                        what: "the recovery key must differ from the first key",
                    });
                }
                self.check_new_key(key, seq, "reset")?;
            }
        }
        // Apply.
        match &body.op {
            Op::Genesis { .. } | Op::Reject { .. } => {}
            Op::Add {
                key,
                agent,
                role,
                replaces,
                ..
            } => {
                if let Some(old) = replaces {
                    self.active.remove(old);
                    self.revoked.insert(*old, seq);
                }
                self.insert_key(key, agent, *role, seq);
            }
            Op::Revoke { kid } => {
                self.active.remove(kid);
                self.revoked.insert(*kid, seq);
            }
            Op::Reset {
                key,
                agent,
                recovery,
            } => {
                for kid in std::mem::take(&mut self.active).into_keys() {
                    self.revoked.insert(kid, seq);
                }
                self.insert_key(key, agent, Role::Admin, seq);
                self.recovery = recovery.clone();
            }
        }
        self.events.push(Event {
            digest: Sha256::digest(event).into(),
            bytes: event.to_vec(),
            signer: parsed.kid,
            seq,
            time: body.time,
            op: body.op,
        });
        Ok(())
    }

    /// A key may enter the account once: never a revoked kid, never the
    /// recovery key.
    fn check_new_key(&self, key: &PublicKey, seq: u64, op: &'static str) -> Result<(), LogError> {
        let kid = key.kid();
        let why = if self.active.contains_key(&kid) {
            "key is already active"
        } else if self.revoked.contains_key(&kid) {
            "a revoked key cannot come back"
        } else if kid == self.recovery.kid() {
            "the recovery key cannot sign commands"
        } else {
            return Ok(());
        };
        Err(LogError::NotAuthorized { seq, op, why })
    }

    fn insert_key(&mut self, key: &PublicKey, agent: &str, role: Role, seq: u64) {
        self.active.insert(
            key.kid(),
            ActiveKey {
                key: key.clone(),
                agent: agent.to_owned(),
                role,
                since_seq: seq,
            },
        );
    }

    /// Verifies that `new_log` extends this log (same events, then more, all
    /// valid) and returns it. A shorter log is a rollback; a different event
    /// is a fork. Neither changes `self`.
    pub fn verify_extension(&self, new_log: &[u8]) -> Result<KeyLog, LogError> {
        let mut rest = new_log;
        for (i, ours) in self.events.iter().enumerate() {
            if rest.is_empty() {
                return Err(LogError::Rollback {
                    have: self.events.len(),
                    got: i,
                });
            }
            if !rest.starts_with(&ours.bytes) {
                return Err(LogError::Fork { seq: i as u64 });
            }
            rest = &rest[ours.bytes.len()..];
        }
        let mut log = self.clone();
        log.append_all(rest)?;
        Ok(log)
    }

    /// The log as a CBOR sequence.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.events.iter().flat_map(|e| e.bytes.clone()).collect()
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The events, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// SHA-256 of the last event.
    pub fn head(&self) -> [u8; 32] {
        self.events.last().expect("a log is never empty").digest
    }

    /// What the log says of `kid`.
    pub fn status(&self, kid: &Kid) -> KeyStatus<'_> {
        if let Some(k) = self.active.get(kid) {
            KeyStatus::Active(k)
        } else if let Some(seq) = self.revoked.get(kid) {
            KeyStatus::Revoked(*seq)
        } else {
            KeyStatus::Unknown
        }
    }

    /// The active keys.
    pub fn active_keys(&self) -> impl Iterator<Item = &ActiveKey> {
        self.active.values()
    }

    /// The current recovery key.
    pub fn recovery_key(&self) -> &PublicKey {
        &self.recovery
    }
}

/// Length of the first CBOR item of `bytes`.
fn next_item_len(bytes: &[u8], seq: u64) -> Result<usize, LogError> {
    if bytes.is_empty() {
        return Err(LogError::Empty);
    }
    let prefix = &bytes[..bytes.len().min(envelope::MAX_ENVELOPE_LEN + 1)];
    cbor::decode_prefix(prefix)
        .map(|(_, len)| len)
        .map_err(|_| LogError::Envelope {
            seq,
            source: EnvelopeError::Malformed("not CBOR"),
        })
}

struct EventBody {
    acct: String,
    seq: u64,
    prev: Option<[u8; 32]>,
    time: i64,
    op: Op,
}

fn event_payload(acct: &str, seq: u64, prev: Option<[u8; 32]>, time: i64, op: &Op) -> Vec<u8> {
    let text = |s: &str| Value::Text(s.to_owned());
    let mut m = vec![
        (ACCT.to_value(), text(acct)),
        (SEQ.to_value(), Value::Integer(seq.into())),
        (TIME.to_value(), Value::Integer(time.into())),
        (OP.to_value(), text(op.name())),
    ];
    if let Some(prev) = prev {
        m.push((PREV.to_value(), Value::Bytes(prev.to_vec())));
    }
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
    }
    cbor::encode(&mut Value::Map(m))
}

fn parse_event(bytes: &[u8], seq: u64) -> Result<(Parsed, EventBody), LogError> {
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
        "genesis" => {
            let op = Op::Genesis {
                key: key(&mut m, &KEY)?,
                agent: text(&mut m, &AGENT, "agent")?,
                recovery: key(&mut m, &RECOVERY)?,
            };
            if role(&mut m)? != Role::Admin {
                return Err("the genesis key is an admin");
            }
            op
        }
        "add" => Op::Add {
            key: key(&mut m, &KEY)?,
            agent: text(&mut m, &AGENT, "agent")?,
            role: role(&mut m)?,
            req: m.bytes(&REQ).map_err(|_| "req")?.ok_or("req missing")?,
            replaces: m
                .array32(&REPLACES)
                .map_err(|_| "replaces is a kid")?
                .map(Kid),
        },
        "reject" => Op::Reject {
            req: m
                .array32(&REQ)
                .map_err(|_| "req digest")?
                .ok_or("req digest missing")?,
            reason: m.text(&REASON).map_err(|_| "reason")?.unwrap_or_default(),
        },
        "revoke" => Op::Revoke {
            kid: Kid(m.array32(&KID).map_err(|_| "kid")?.ok_or("kid missing")?),
        },
        "reset" => Op::Reset {
            key: key(&mut m, &KEY)?,
            agent: text(&mut m, &AGENT, "agent")?,
            recovery: key(&mut m, &RECOVERY)?,
        },
        _ => return Err("unknown op"),
    };
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

/// A request for a new key to join an account, self-signed by that key.
/// The approver compares [`KeyRequest::verification_code`] with the one the
/// requester sees, so a swapped request cannot be approved by mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    bytes: Vec<u8>,
    /// The account asked to join.
    pub account: String,
    /// The requesting agent.
    pub agent: String,
    /// The role asked for.
    pub role: Role,
    /// The new key.
    pub key: PublicKey,
    /// When it was made (requester's clock).
    pub time: i64,
}

impl KeyRequest {
    /// A request to be signed by `key` itself.
    pub fn unsigned(
        account: &str,
        agent: &str,
        role: Role,
        key: &PublicKey,
        time: i64,
    ) -> Unsigned {
        let mut m = Value::Map(vec![
            (ACCT.to_value(), Value::Text(account.to_owned())),
            (AGENT.to_value(), Value::Text(agent.to_owned())),
            (ROLE.to_value(), Value::Text(role.name().to_owned())),
            (KEY.to_value(), key.to_cose_key_value()),
            (TIME.to_value(), Value::Integer(time.into())),
        ]);
        Unsigned::new(key, REQUEST_CONTENT_TYPE, cbor::encode(&mut m))
    }

    /// Parses and checks the self-signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, LogError> {
        Self::parse_expecting(bytes, None)
    }

    /// [`KeyRequest::parse`], reusing `known` when the request carries
    /// exactly that key: an `add` event names the key its request carries,
    /// and decoding a point once is enough (log verification is hot).
    fn parse_expecting(bytes: &[u8], known: Option<&PublicKey>) -> Result<Self, LogError> {
        let parsed = Parsed::parse(bytes, REQUEST_CONTENT_TYPE)
            .map_err(|_| LogError::BadRequest("not a key request envelope"))?;
        if !parsed.unprotected.is_empty() {
            return Err(LogError::BadRequest("unprotected header must be empty"));
        }
        let mut m = parsed
            .payload_map()
            .map_err(|_| LogError::BadRequest("payload"))?;
        let bad = LogError::BadRequest;
        let text = |m: &mut MapReader, k: &Key| m.text(k).ok().flatten().filter(|s| !s.is_empty());
        let account = text(&mut m, &ACCT).ok_or(bad("acct"))?;
        let agent = text(&mut m, &AGENT).ok_or(bad("agent"))?;
        let role = text(&mut m, &ROLE)
            .and_then(|r| Role::parse(&r))
            .ok_or(bad("role"))?;
        let key = m
            .take(&KEY)
            .and_then(|v| match known {
                Some(k) if k.to_cose_key_value() == v => Some(k.clone()),
                _ => PublicKey::from_cose_key_value(&v).ok(),
            })
            .ok_or(bad("key"))?;
        let time = m.int(&TIME).ok().flatten().ok_or(bad("time"))?;
        if !m.is_exhausted() {
            return Err(bad("unknown field"));
        }
        if parsed.kid != key.kid() {
            return Err(bad("not signed by the requested key"));
        }
        parsed
            .verify_signature(&key)
            .map_err(|_| bad("self-signature does not verify"))?;
        Ok(KeyRequest {
            bytes: bytes.to_vec(),
            account,
            agent,
            role,
            key,
            time,
        })
    }

    /// The request's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the request bytes (what a `reject` names).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The 6-digit code: first 4 bytes of the digest, big-endian, mod 10^6.
    pub fn verification_code(&self) -> String {
        let d = self.digest();
        let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 1_000_000;
        format!("{n:06}")
    }
}
