//! The log itself: reading and verifying a whole log, appending one event,
//! checking that a new log extends the trusted one, and what the log says
//! of a key. The rules of each operation are in `event.rs`.

use super::event::{Event, Op, Role, event_payload, parse_event};
use super::trust::{ActiveKey, Trust};
use super::{EVENT_CONTENT_TYPE, LogError};
use crate::cbor;
use crate::envelope::{self, EnvelopeError, Unsigned};
use crate::key::PublicKey;
use sha2::{Digest, Sha256};

/// A verified key log: its events, and the [`Trust`] they leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLog {
    trust: Trust,
    events: Vec<Event>,
}

impl AsRef<Trust> for KeyLog {
    fn as_ref(&self) -> &Trust {
        &self.trust
    }
}

impl std::ops::Deref for KeyLog {
    type Target = Trust;

    fn deref(&self) -> &Trust {
        &self.trust
    }
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
        Unsigned::new(
            signer,
            EVENT_CONTENT_TYPE,
            event_payload(
                &self.trust.account,
                self.trust.len,
                Some(self.trust.head),
                time,
                op,
            ),
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
    fn append_all(&mut self, rest: &[u8]) -> Result<(), LogError> {
        let events = self.trust.extend(rest)?;
        self.events.extend(events);
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
            .verify_canonical_signature(&key)
            .map_err(|_| LogError::BadSignature { seq: 0 })?;
        let digest: [u8; 32] = Sha256::digest(event).into();
        let first = ActiveKey {
            key: key.clone(),
            agent: agent.clone(),
            role: Role::Admin,
            since_seq: 0,
        };
        Ok(KeyLog {
            trust: Trust::from_genesis(body.acct, digest, first, recovery.clone()),
            events: vec![Event {
                digest,
                bytes: event.to_vec(),
                signer: parsed.kid,
                seq: 0,
                time: body.time,
                op: Op::Genesis {
                    key,
                    agent,
                    recovery,
                },
            }],
        })
    }

    /// Verifies one more event and applies it. On error nothing changes.
    pub fn append(&mut self, event: &[u8]) -> Result<(), LogError> {
        let event = self.trust.append(event)?;
        self.events.push(event);
        Ok(())
    }

    /// Verifies that `new_log` extends this log (same events, then more, all
    /// valid) and returns it. A shorter log is a rollback; a different event
    /// is a fork. Neither changes `self`.
    pub fn verify_extension(&self, new_log: &[u8]) -> Result<KeyLog, LogError> {
        let rest = strip_trusted(self.events.iter().map(|e| e.bytes.as_slice()), new_log)?;
        let mut log = self.clone();
        log.append_all(rest)?;
        Ok(log)
    }

    /// The log as a CBOR sequence.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.events.iter().flat_map(|e| e.bytes.clone()).collect()
    }

    /// The events, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// What the log leaves behind (see [`Trust`]).
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The account named by the first event of the CBOR sequence `bytes`,
    /// read without verifying anything: only to pick which trusted log an
    /// offered one is checked against.
    pub fn peek_account(bytes: &[u8]) -> Result<String, LogError> {
        let len = next_item_len(bytes, 0)?;
        let (_, body) = parse_event(&bytes[..len], 0)?;
        Ok(body.acct)
    }
}

/// What follows the trusted events `ours` in `new_log`: a log that ends
/// inside them is a rollback, one that differs from them a fork.
pub(super) fn strip_trusted<'n, 'o>(
    ours: impl ExactSizeIterator<Item = &'o [u8]>,
    new_log: &'n [u8],
) -> Result<&'n [u8], LogError> {
    let have = ours.len();
    let mut rest = new_log;
    for (i, ours) in ours.enumerate() {
        if rest.is_empty() {
            return Err(LogError::Rollback { have, got: i });
        }
        rest = rest
            .strip_prefix(ours)
            .ok_or(LogError::Fork { seq: i as u64 })?;
    }
    Ok(rest)
}

/// The events of the CBOR sequence `bytes`, split but not parsed.
pub(super) fn split_events(mut bytes: &[u8]) -> Result<Vec<&[u8]>, LogError> {
    let mut out = vec![];
    while !bytes.is_empty() {
        let len = next_item_len(bytes, out.len() as u64)?;
        let (event, tail) = bytes.split_at(len);
        out.push(event);
        bytes = tail;
    }
    Ok(out)
}

/// Length of the first CBOR item of `bytes`.
pub(super) fn next_item_len(bytes: &[u8], seq: u64) -> Result<usize, LogError> {
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
