//! What a verified log leaves behind: its account, length and head, and the
//! key set it implies ([`Trust`]). Verifying a command needs only this, and
//! taking an extension of the log needs only this and the new events, so a
//! device keeps it next to the log ([`Trust::to_bytes`]) and never re-reads
//! or re-verifies the log's history: its cost per command does not grow
//! with the log.

use super::event::{Event, EventBody, Op, Pending, Role, parse_event, read_op};
use super::{LogError, event::op_fields};
use crate::cbor::{self, Key, MapReader};
use crate::key::{Kid, PublicKey};
use ciborium::value::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

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

/// How a key left the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// The event that removed it (`revoke`, `reset`, or the `add` that
    /// replaced it).
    pub seq: u64,
    /// The key that replaced it (a rotation), if any.
    pub replaced_by: Option<Kid>,
}

/// What the log says of a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus<'a> {
    /// Active: commands signed by it are accepted.
    Active(&'a ActiveKey),
    /// Was active and was revoked (or removed by a reset) at this event.
    Revoked(u64),
    /// Was active and was rotated out at event `seq` by the key `by`.
    Replaced {
        /// The `add` event that replaced it.
        seq: u64,
        /// The new key.
        by: Kid,
    },
    /// Never part of this account.
    Unknown,
}

/// The key set a log implies after its last event: what each operation's
/// rules read and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeySet {
    /// Keys that may sign, by kid.
    pub(super) active: BTreeMap<Kid, ActiveKey>,
    /// Keys that left, by kid.
    pub(super) revoked: BTreeMap<Kid, Revoked>,
    /// The current recovery key.
    pub(super) recovery: PublicKey,
    /// Distinct admin agents whose approval an admin change needs.
    pub(super) threshold: u32,
    /// Proposals waiting for approvals, by the proposal's event number.
    pub(super) pending: BTreeMap<u64, Pending>,
}

/// A verified log's account, length, head and key set: everything needed to
/// verify a command or to take an extension of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub(super) account: String,
    pub(super) len: u64,
    pub(super) head: [u8; 32],
    pub(super) keys: KeySet,
}

/// Format tag of [`Trust::to_bytes`].
const SNAPSHOT_VERSION: i64 = 1;

impl AsRef<Trust> for Trust {
    fn as_ref(&self) -> &Trust {
        self
    }
}

impl Trust {
    /// The state after a genesis event (already verified by the caller).
    pub(super) fn from_genesis(
        account: String,
        digest: [u8; 32],
        key: ActiveKey,
        recovery: PublicKey,
    ) -> Self {
        let mut active = BTreeMap::new();
        active.insert(key.key.kid(), key);
        Trust {
            account,
            len: 1,
            head: digest,
            keys: KeySet {
                active,
                revoked: BTreeMap::new(),
                recovery,
                threshold: 1,
                pending: BTreeMap::new(),
            },
        }
    }

    /// Verifies the next event and applies it. On error nothing changes.
    pub fn append(&mut self, event: &[u8]) -> Result<Event, LogError> {
        let seq = self.len;
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
        if prev != Some(self.head) {
            return Err(LogError::BrokenChain { seq });
        }
        // Who may sign: decide the signing key first, verify, check, and
        // only then change anything: on error `self` is untouched.
        let signer_key = op.authorized_signer(&self.keys, &parsed.kid, seq)?;
        parsed
            .verify_canonical_signature(signer_key)
            .map_err(|_| LogError::BadSignature { seq })?;
        op.check(&self.keys, &self.account, seq)?;
        op.apply(&mut self.keys, &parsed.kid, seq);
        let digest: [u8; 32] = Sha256::digest(event).into();
        self.len = seq.checked_add(1).ok_or(LogError::Malformed {
            seq,
            what: "the log is full",
        })?;
        self.head = digest;
        Ok(Event {
            digest,
            bytes: event.to_vec(),
            signer: parsed.kid,
            seq,
            time,
            op,
        })
    }

    /// Verifies and applies every event of the CBOR sequence `events`, in
    /// order. On error nothing changes.
    pub fn extend(&mut self, mut events: &[u8]) -> Result<Vec<Event>, LogError> {
        let mut next = self.clone();
        let mut out = vec![];
        while !events.is_empty() {
            let len = super::key_log::next_item_len(events, next.len)?;
            let (event, tail) = events.split_at(len);
            out.push(next.append(event)?);
            events = tail;
        }
        *self = next;
        Ok(out)
    }

    /// Verifies that `new_log` extends `stored`, the log this state was
    /// made from, and returns the state after it with the new events. Only
    /// the new events are verified: the stored ones were when they were
    /// taken. `stored` must be the log this state came from (its length and
    /// head are checked); a shorter `new_log` is a rollback, a different
    /// one a fork. Nothing changes `self`.
    pub fn verify_extension(
        &self,
        stored: &[u8],
        new_log: &[u8],
    ) -> Result<(Trust, Vec<Event>), LogError> {
        let ours = super::key_log::split_events(stored)?;
        let last = ours.last().ok_or(LogError::Empty)?;
        if ours.len() as u64 != self.len || Sha256::digest(last).as_slice() != self.head {
            return Err(LogError::Malformed {
                seq: self.len,
                what: "the stored log is not the one this trust state was made from",
            });
        }
        let rest = super::key_log::strip_trusted(ours.into_iter(), new_log)?;
        let mut next = self.clone();
        let events = next.extend(rest)?;
        Ok((next, events))
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The number of events.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a log has at least its genesis event.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 of the last event.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// What the log says of `kid`.
    pub fn status(&self, kid: &Kid) -> KeyStatus<'_> {
        if let Some(k) = self.keys.active.get(kid) {
            KeyStatus::Active(k)
        } else if let Some(r) = self.keys.revoked.get(kid) {
            match r.replaced_by {
                Some(by) => KeyStatus::Replaced { seq: r.seq, by },
                None => KeyStatus::Revoked(r.seq),
            }
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

    /// How many distinct admin agents must approve an admin change.
    pub fn threshold(&self) -> u32 {
        self.keys.threshold
    }

    /// Proposals waiting for approvals, by their event number.
    pub fn pending(&self) -> &BTreeMap<u64, Pending> {
        &self.keys.pending
    }

    /// Whether `op`, signed directly, would be refused for needing the
    /// threshold's approvals (then it is proposed and confirmed).
    pub fn needs_quorum(&self, op: &Op) -> bool {
        op.needs_quorum(&self.keys)
    }

    /// Whether `signer` may sign `op` as the next event: every rule of the
    /// log but the signature. A signer checks this before it spends a
    /// signature (a PIN, a touch) on an event the log would refuse.
    pub fn check(&self, signer: &Kid, op: &Op) -> Result<(), LogError> {
        if matches!(op, Op::Genesis { .. }) {
            return Err(LogError::NotAuthorized {
                seq: self.len,
                op: "genesis",
                why: "genesis only at the start of a log",
            });
        }
        op.authorized_signer(&self.keys, signer, self.len)?;
        op.check(&self.keys, &self.account, self.len)
    }

    /// Moves the keys that left the account out of this state, sorted by
    /// kid. What is left is the state a verifier needs (active keys,
    /// recovery key, threshold, proposals) and snapshots at a size that
    /// does not grow with the history; a device keeps the keys that left
    /// in an index of its own and [`Trust::restore_revoked`]s them before
    /// it takes an extension: without them, an extension that brings back
    /// a revoked key would not be refused.
    pub fn take_revoked(&mut self) -> BTreeMap<Kid, Revoked> {
        std::mem::take(&mut self.keys.revoked)
    }

    /// Puts back keys that left the account ([`Trust::take_revoked`]). A
    /// kid that is active, a kid named twice with different facts, or an
    /// event number past the log's end is refused, and nothing changes;
    /// the same fact twice is kept once (a snapshot written before the
    /// index may already hold it).
    pub fn restore_revoked(
        &mut self,
        gone: impl IntoIterator<Item = (Kid, Revoked)>,
    ) -> Result<(), SnapshotError> {
        let mut revoked = self.keys.revoked.clone();
        for (kid, r) in gone {
            if r.seq >= self.len || self.keys.active.contains_key(&kid) {
                return Err(SnapshotError(
                    "a revoked key that is active or past the log",
                ));
            }
            if let Some(old) = revoked.insert(kid, r)
                && old != r
            {
                return Err(SnapshotError("a revoked key twice"));
            }
        }
        self.keys.revoked = revoked;
        Ok(())
    }

    /// Every key id the events of the CBOR sequence `events` name — their
    /// signers, the keys they add, replace, revoke or reset to, those of
    /// the proposals they make — and those the pending proposals name. The
    /// events are parsed, not verified. A state whose keys that left are
    /// kept elsewhere ([`Trust::take_revoked`]) needs only these restored
    /// to take `events` exactly as the whole state would: the log's rules
    /// look up no other key that left.
    pub fn kids_named(&self, mut events: &[u8]) -> Result<BTreeSet<Kid>, LogError> {
        let mut out = BTreeSet::new();
        for p in self.keys.pending.values() {
            p.change.kids_named(&mut out);
        }
        let mut seq = self.len;
        while !events.is_empty() {
            let len = super::key_log::next_item_len(events, seq)?;
            let (event, tail) = events.split_at(len);
            let (parsed, body) = super::event::parse_event(event, seq)?;
            out.insert(parsed.kid);
            body.op.kids_named(&mut out);
            events = tail;
            seq = seq.saturating_add(1);
        }
        Ok(out)
    }

    /// The proposal waiting with exactly this change, if any.
    pub fn pending_for(&self, change: &Op) -> Option<(u64, &Pending)> {
        self.keys
            .pending
            .iter()
            .find(|(_, p)| p.change == *change)
            .map(|(seq, p)| (*seq, p))
    }

    /// The state as deterministic CBOR, for a device to keep next to its
    /// log. It holds no secret; it is as trustworthy as the folder it is
    /// kept in (the same as the log's).
    pub fn to_bytes(&self) -> Vec<u8> {
        let int = |i: u64| Value::Integer(i.into());
        let active = self
            .keys
            .active
            .values()
            .map(|k| {
                Value::Array(vec![
                    k.key.to_cose_key_value(),
                    Value::Text(k.agent.clone()),
                    Value::Text(k.role.name().to_owned()),
                    int(k.since_seq),
                ])
            })
            .collect();
        let revoked = self
            .keys
            .revoked
            .iter()
            .map(|(kid, r)| {
                let mut v = vec![Value::Bytes(kid.0.to_vec()), int(r.seq)];
                if let Some(by) = r.replaced_by {
                    v.push(Value::Bytes(by.0.to_vec()));
                }
                Value::Array(v)
            })
            .collect();
        let pending = self
            .keys
            .pending
            .iter()
            .map(|(seq, p)| {
                Value::Array(vec![
                    int(*seq),
                    Value::Map(op_fields(&p.change)),
                    Value::Array(p.approvers.iter().map(|a| Value::Text(a.clone())).collect()),
                ])
            })
            .collect();
        let mut m = Value::Map(vec![
            (
                T_VERSION.to_value(),
                Value::Integer(SNAPSHOT_VERSION.into()),
            ),
            (T_ACCT.to_value(), Value::Text(self.account.clone())),
            (T_LEN.to_value(), int(self.len)),
            (T_HEAD.to_value(), Value::Bytes(self.head.to_vec())),
            (T_ACTIVE.to_value(), Value::Array(active)),
            (T_REVOKED.to_value(), Value::Array(revoked)),
            (
                T_RECOVERY.to_value(),
                self.keys.recovery.to_cose_key_value(),
            ),
            (T_THRESHOLD.to_value(), int(self.keys.threshold.into())),
            (T_PENDING.to_value(), Value::Array(pending)),
        ]);
        cbor::encode(&mut m)
    }

    /// Reads what [`Trust::to_bytes`] wrote. Structure is checked (a
    /// damaged file is an error, never a different key set); signatures
    /// are not: they were verified when the events were taken.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let bad = SnapshotError;
        let v = cbor::decode_deterministic(bytes).map_err(|_| bad("not deterministic CBOR"))?;
        let mut m = MapReader::new(v).ok_or(bad("not a map"))?;
        if m.int(&T_VERSION).ok().flatten() != Some(SNAPSHOT_VERSION) {
            return Err(bad("unknown version"));
        }
        let account = m.text(&T_ACCT).ok().flatten().ok_or(bad("acct"))?;
        let len = m
            .int(&T_LEN)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or(bad("len"))?;
        let head = m.array32(&T_HEAD).ok().flatten().ok_or(bad("head"))?;
        let array = |m: &mut MapReader, k: &Key, what| match m.take(k) {
            Some(Value::Array(a)) => Ok(a),
            _ => Err(bad(what)),
        };
        let seq_of = |v: &Value| match v {
            Value::Integer(i) => u64::try_from(*i).ok().filter(|s| *s < len),
            _ => None,
        };
        let kid_of = |v: &Value| match v {
            Value::Bytes(b) => <[u8; 32]>::try_from(b.as_slice()).ok().map(Kid),
            _ => None,
        };
        let text_of = |v: &Value| match v {
            Value::Text(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let mut active = BTreeMap::new();
        for item in array(&mut m, &T_ACTIVE, "active")? {
            let Value::Array(f) = item else {
                return Err(bad("active key"));
            };
            let [key, agent, role, since] =
                <[Value; 4]>::try_from(f).map_err(|_| bad("active key"))?;
            let key = PublicKey::from_cose_key_value(&key).map_err(|_| bad("active key"))?;
            let k = ActiveKey {
                agent: text_of(&agent).ok_or(bad("agent"))?,
                role: text_of(&role)
                    .and_then(|r| Role::parse(&r))
                    .ok_or(bad("role"))?,
                since_seq: seq_of(&since).ok_or(bad("since"))?,
                key,
            };
            if active.insert(k.key.kid(), k).is_some() {
                return Err(bad("a key twice"));
            }
        }
        let mut revoked = BTreeMap::new();
        for item in array(&mut m, &T_REVOKED, "revoked")? {
            let Value::Array(f) = item else {
                return Err(bad("revoked key"));
            };
            let (kid, seq, by) = match f.as_slice() {
                [kid, seq] => (kid, seq, None),
                [kid, seq, by] => (kid, seq, Some(kid_of(by).ok_or(bad("replaced_by"))?)),
                _ => return Err(bad("revoked key")),
            };
            let kid = kid_of(kid).ok_or(bad("revoked kid"))?;
            let r = Revoked {
                seq: seq_of(seq).ok_or(bad("revoked seq"))?,
                replaced_by: by,
            };
            if active.contains_key(&kid) || revoked.insert(kid, r).is_some() {
                return Err(bad("a key twice"));
            }
        }
        let recovery = m
            .take(&T_RECOVERY)
            .and_then(|v| PublicKey::from_cose_key_value(&v).ok())
            .ok_or(bad("recovery"))?;
        let threshold = m
            .int(&T_THRESHOLD)
            .ok()
            .flatten()
            .and_then(|k| u32::try_from(k).ok())
            .filter(|k| *k > 0)
            .ok_or(bad("threshold"))?;
        let mut pending = BTreeMap::new();
        for item in array(&mut m, &T_PENDING, "pending")? {
            let Value::Array(f) = item else {
                return Err(bad("pending"));
            };
            let [seq, change, approvers] = <[Value; 3]>::try_from(f).map_err(|_| bad("pending"))?;
            let seq = seq_of(&seq).ok_or(bad("pending seq"))?;
            let mut change = MapReader::new(change).ok_or(bad("pending change"))?;
            let change = read_op(&mut change, false)
                .ok()
                .filter(|_| change.is_exhausted())
                .ok_or(bad("pending change"))?;
            let Value::Array(approvers) = approvers else {
                return Err(bad("approvers"));
            };
            let approvers: BTreeSet<String> = approvers
                .iter()
                .map(|a| text_of(a).ok_or(bad("approver")))
                .collect::<Result<_, _>>()?;
            if approvers.is_empty() {
                return Err(bad("approvers"));
            }
            pending.insert(seq, Pending { change, approvers });
        }
        if !m.is_exhausted() {
            return Err(bad("unknown field"));
        }
        Ok(Trust {
            account,
            len,
            head,
            keys: KeySet {
                active,
                revoked,
                recovery,
                threshold,
                pending,
            },
        })
    }
}

/// A trust snapshot that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trust snapshot: {0}")]
pub struct SnapshotError(pub &'static str);

const T_VERSION: Key = Key::Text("v");
const T_ACCT: Key = Key::Text("acct");
const T_LEN: Key = Key::Text("len");
const T_HEAD: Key = Key::Text("head");
const T_ACTIVE: Key = Key::Text("active");
const T_REVOKED: Key = Key::Text("revoked");
const T_RECOVERY: Key = Key::Text("recovery");
const T_THRESHOLD: Key = Key::Text("threshold");
const T_PENDING: Key = Key::Text("pending");
