//! The log itself: reading and verifying a whole log, appending one event,
//! checking that a new log extends the trusted one, and what the log says
//! of a key. The rules of each operation are in `event.rs`.

use super::event::{Event, EventBody, Op, Role, event_payload, parse_event};
use super::{EVENT_CONTENT_TYPE, LogError};
use crate::cbor;
use crate::envelope::{self, EnvelopeError, Unsigned};
use crate::key::{Kid, PublicKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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

/// The key set a log implies after its last event: what each operation's
/// rules read and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeySet {
    /// Keys that may sign, by kid.
    pub(super) active: BTreeMap<Kid, ActiveKey>,
    /// Keys that left, by kid, with the event that removed them.
    pub(super) revoked: BTreeMap<Kid, u64>,
    /// The current recovery key.
    pub(super) recovery: PublicKey,
}

/// A verified key log and the key set it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLog {
    account: String,
    events: Vec<Event>,
    keys: KeySet,
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
        let first_len = next_item_len(bytes, 0)?;
        let (first, rest) = bytes.split_at(first_len);
        let mut log = Self::from_genesis(first)?;
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
            keys: KeySet {
                active,
                revoked: BTreeMap::new(),
                recovery,
            },
        })
    }

    /// Verifies one more event and applies it. On error nothing changes.
    pub fn append(&mut self, event: &[u8]) -> Result<(), LogError> {
        let seq = self.events.len() as u64;
        let (parsed, body) = parse_event(event, seq)?;
        let EventBody {
            acct,
            seq: claimed_seq,
            prev,
            time,
            op,
        } = body;
        if acct != self.account {
            return Err(LogError::WrongAccount {
                seq,
                expected: self.account.clone(),
                found: acct,
            });
        }
        if claimed_seq != seq {
            return Err(LogError::BadSequence {
                expected: seq,
                found: claimed_seq,
            });
        }
        if prev != Some(self.head()) {
            return Err(LogError::BrokenChain { seq });
        }
        // Who may sign: decide the signing key first, verify, check, and
        // only then change anything: on error `self` is untouched.
        let signer_key = op.authorized_signer(&self.keys, &parsed.kid, seq)?;
        parsed
            .verify_signature(signer_key)
            .map_err(|_| LogError::BadSignature { seq })?;
        op.check(&self.keys, &self.account, seq)?;
        op.apply(&mut self.keys, seq);
        self.events.push(Event {
            digest: Sha256::digest(event).into(),
            bytes: event.to_vec(),
            signer: parsed.kid,
            seq,
            time,
            op,
        });
        Ok(())
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
            rest = rest
                .strip_prefix(ours.bytes.as_slice())
                .ok_or(LogError::Fork { seq: i as u64 })?;
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
        if let Some(k) = self.keys.active.get(kid) {
            KeyStatus::Active(k)
        } else if let Some(seq) = self.keys.revoked.get(kid) {
            KeyStatus::Revoked(*seq)
        } else {
            KeyStatus::Unknown
        }
    }

    /// The active keys.
    pub fn active_keys(&self) -> impl Iterator<Item = &ActiveKey> {
        self.keys.active.values()
    }

    /// The current recovery key.
    pub fn recovery_key(&self) -> &PublicKey {
        &self.keys.recovery
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
