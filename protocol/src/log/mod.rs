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
//! | `threshold` | an active admin key (with a threshold above 1: proposed and confirmed) |
//! | `propose` | an active admin key: an `add` of an admin, a `revoke` of an admin or a `threshold`, needing the threshold's approvals |
//! | `confirm` | an active admin key of an agent who has not approved that proposal yet |

// The code is split by what it is about, one file each:
//
// - `key_log.rs`: the log itself (`KeyLog`): reading and verifying a whole
//   log, appending an event, checking that a new log extends the trusted
//   one, and what the log says of a key (`KeyStatus`);
// - `event.rs`: one event (`Event`, `Op`, `Role`): its payload's encoding
//   and parsing, and the rules of each operation (who may sign it, what it
//   checks, what it changes in the key set);
// - `trust.rs`: what a verified log leaves behind (`Trust`: account,
//   length, head, key set, threshold, pending proposals), enough to verify
//   commands and take extensions without the history; a device keeps it;
// - `request.rs`: a key request (`KeyRequest`) and its verification code.

mod event;
mod key_log;
mod request;
mod trust;

pub use event::{EVENT_CONTENT_TYPE, Event, Op, Pending, Role};
pub use key_log::KeyLog;
pub use request::{KeyRequest, REQUEST_CONTENT_TYPE, RequestEvidence, format_code};
pub use trust::{ActiveKey, KeyStatus, Revoked, SnapshotError, Trust};

use crate::cbor::Key;
use crate::envelope::EnvelopeError;

// Payload fields that events and key requests share.
const ACCT: Key = Key::Text("acct");
const TIME: Key = Key::Text("time");
const KEY: Key = Key::Text("key");
const AGENT: Key = Key::Text("agent");
const ROLE: Key = Key::Text("role");

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
