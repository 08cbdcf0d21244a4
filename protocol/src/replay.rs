//! The device's replay cache: which (kid, cti) pairs it has already acted on.
//!
//! Two sets of entries, each bounded two ways:
//!
//! - ordinary commands leave once they could no longer be accepted anyway
//!   (`exp + skew`); at most [`DEFAULT_CAPACITY`] by default;
//! - `time-sync` commands, which a device accepts outside their time window,
//!   are kept far longer (`max(exp, now)` + 366 days, see
//!   [`crate::verify::TIME_SYNC_RETENTION`]) in a set of their own, at most
//!   [`DEFAULT_TIME_SYNC_CAPACITY`] by default, so that a flood of ordinary
//!   commands can never push them out and they can never crowd out
//!   ordinary commands.
//!
//! A full set refuses new commands rather than forget old ones (failing
//! closed). A (kid, cti) pair is a replay whichever set holds it.
//!
//! The persisted form is deterministic CBOR, a map of the two sets:
//!
//! ```text
//! { "cmds": [[kid (bstr 32), cti (bstr 16), keep_until (int)], …],
//!   "sync": [[kid, cti, keep_until], …] }
//! ```
//!
//! The earlier form, a plain array of `[kid, cti, keep_until]`, is still
//! read, as ordinary command entries. The device crate does the file I/O.

use crate::cbor;
use crate::key::Kid;
use ciborium::value::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Default capacity for ordinary commands: far above what a device sees in
/// a day.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Default capacity for `time-sync` commands: one a day for 27 years.
pub const DEFAULT_TIME_SYNC_CAPACITY: usize = 10_000;

const CMDS: &str = "cmds";
const SYNC: &str = "sync";

/// A replay-cache failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This (kid, cti) was already accepted.
    #[error("command was already accepted once (replay)")]
    Replay,
    /// The cache is at capacity with entries that are all still live.
    #[error("replay cache is full ({0} live entries); refusing rather than forgetting")]
    Full(usize),
    /// The time-sync set is at capacity with entries that are all still
    /// live.
    #[error(
        "replay cache is full of time-sync commands ({0} live entries); refusing rather than forgetting"
    )]
    TimeSyncFull(usize),
    /// The persisted form could not be read.
    #[error("replay cache file is corrupt: {0}")]
    Corrupt(&'static str),
}

type Entry = (Kid, [u8; 16]);

/// One bounded set of (kid, cti) with the time until which each is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entries {
    entries: BTreeMap<Entry, i64>,
    by_expiry: BTreeSet<(i64, Kid, [u8; 16])>,
    capacity: usize,
}

impl Entries {
    fn new(capacity: usize) -> Self {
        Entries {
            entries: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            capacity,
        }
    }

    fn contains(&self, e: &Entry) -> bool {
        self.entries.contains_key(e)
    }

    fn prune(&mut self, now: i64) {
        while let Some(&(t, kid, cti)) = self.by_expiry.first() {
            if t >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&(kid, cti));
        }
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Adds an entry; false when it was already there.
    fn add(&mut self, (kid, cti): Entry, keep_until: i64) -> bool {
        if self.entries.insert((kid, cti), keep_until).is_some() {
            return false;
        }
        self.by_expiry.insert((keep_until, kid, cti));
        true
    }

    fn to_value(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|((kid, cti), t)| {
                    Value::Array(vec![
                        Value::Bytes(kid.0.to_vec()),
                        Value::Bytes(cti.to_vec()),
                        Value::Integer((*t).into()),
                    ])
                })
                .collect(),
        )
    }

    /// Reads `[[kid, cti, keep_until], …]` into `self`; `other` is the other
    /// set, which must not hold the same pair.
    fn read(&mut self, items: Vec<Value>, other: &Entries) -> Result<(), ReplayError> {
        let corrupt = ReplayError::Corrupt;
        for item in items {
            let Value::Array(fields) = item else {
                return Err(corrupt("entry is not an array"));
            };
            let [Value::Bytes(kid), Value::Bytes(cti), Value::Integer(t)] = fields.as_slice()
            else {
                return Err(corrupt("entry shape"));
            };
            let kid = Kid(kid.as_slice().try_into().map_err(|_| corrupt("kid"))?);
            let cti: [u8; 16] = cti.as_slice().try_into().map_err(|_| corrupt("cti"))?;
            let t = i64::try_from(*t).map_err(|_| corrupt("time"))?;
            if other.contains(&(kid, cti)) || !self.add((kid, cti), t) {
                return Err(corrupt("duplicate entry"));
            }
        }
        Ok(())
    }
}

/// Seen (kid, cti) pairs with the time until which each must be kept: one
/// set for ordinary commands, one for `time-sync` commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCache {
    commands: Entries,
    time_syncs: Entries,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` live command entries (and
    /// [`DEFAULT_TIME_SYNC_CAPACITY`] time-sync entries).
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacities(capacity, DEFAULT_TIME_SYNC_CAPACITY)
    }

    /// An empty cache holding at most `capacity` live command entries and
    /// `time_sync_capacity` live time-sync entries.
    pub fn with_capacities(capacity: usize, time_sync_capacity: usize) -> Self {
        ReplayCache {
            commands: Entries::new(capacity),
            time_syncs: Entries::new(time_sync_capacity),
        }
    }

    /// Number of entries, both sets.
    pub fn len(&self) -> usize {
        self.commands.entries.len() + self.time_syncs.entries.len()
    }

    /// Number of time-sync entries.
    pub fn time_sync_len(&self) -> usize {
        self.time_syncs.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when (kid, cti) was accepted and is still remembered, in
    /// either set.
    pub fn contains(&self, kid: &Kid, cti: &[u8; 16]) -> bool {
        let e = (*kid, *cti);
        self.commands.contains(&e) || self.time_syncs.contains(&e)
    }

    /// Drops every entry whose `keep_until` is before `now`.
    pub fn prune(&mut self, now: i64) {
        self.commands.prune(now);
        self.time_syncs.prune(now);
    }

    /// Records a command's (kid, cti) until `keep_until`, after pruning at
    /// `now`. Refuses a pair already present (in either set), and refuses
    /// when the command set is full.
    pub fn insert(
        &mut self,
        kid: Kid,
        cti: [u8; 16],
        keep_until: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.insert_into(false, (kid, cti), keep_until, now)
    }

    /// [`ReplayCache::insert`] for a `time-sync` command, into the
    /// time-sync set; refuses when that set is full.
    pub fn insert_time_sync(
        &mut self,
        kid: Kid,
        cti: [u8; 16],
        keep_until: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.insert_into(true, (kid, cti), keep_until, now)
    }

    fn insert_into(
        &mut self,
        time_sync: bool,
        (kid, cti): (Kid, [u8; 16]),
        keep_until: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if self.contains(&kid, &cti) {
            return Err(ReplayError::Replay);
        }
        let (set, full): (_, fn(usize) -> ReplayError) = if time_sync {
            (&mut self.time_syncs, ReplayError::TimeSyncFull)
        } else {
            (&mut self.commands, ReplayError::Full)
        };
        if set.is_full() {
            return Err(full(set.entries.len()));
        }
        set.add((kid, cti), keep_until);
        Ok(())
    }

    /// The persisted form: deterministic CBOR (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        cbor::encode(&mut Value::Map(vec![
            (Value::Text(CMDS.into()), self.commands.to_value()),
            (Value::Text(SYNC.into()), self.time_syncs.to_value()),
        ]))
    }

    /// Reads the persisted form (or the earlier plain array, as command
    /// entries), with [`DEFAULT_TIME_SYNC_CAPACITY`].
    pub fn from_bytes(bytes: &[u8], capacity: usize) -> Result<Self, ReplayError> {
        Self::from_bytes_with_capacities(bytes, capacity, DEFAULT_TIME_SYNC_CAPACITY)
    }

    /// Reads the persisted form. Entries beyond a capacity are kept (none
    /// is forgotten); the set then refuses new ones until some expire.
    pub fn from_bytes_with_capacities(
        bytes: &[u8],
        capacity: usize,
        time_sync_capacity: usize,
    ) -> Result<Self, ReplayError> {
        let corrupt = ReplayError::Corrupt;
        let value = cbor::decode_deterministic(bytes).map_err(|_| corrupt("not CBOR"))?;
        let (commands, time_syncs) = match value {
            // The earlier form: every entry is a command entry.
            Value::Array(items) => (items, vec![]),
            Value::Map(fields) => {
                let mut m = cbor::MapReader::new(Value::Map(fields)).expect("a map");
                let mut list = |key: &'static str| match m.take(&cbor::Key::Text(key)) {
                    Some(Value::Array(items)) => Ok(items),
                    _ => Err(corrupt("a set is missing or not an array")),
                };
                let sets = (list(CMDS)?, list(SYNC)?);
                if !m.is_exhausted() {
                    return Err(corrupt("unknown field"));
                }
                sets
            }
            _ => return Err(corrupt("not a map")),
        };
        let mut cache = Self::with_capacities(capacity, time_sync_capacity);
        cache.commands.read(commands, &Entries::new(0))?;
        let mut syncs = Entries::new(time_sync_capacity);
        syncs.read(time_syncs, &cache.commands)?;
        cache.time_syncs = syncs;
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_refused_until_expiry_then_forgotten() {
        let mut c = ReplayCache::default();
        let kid = Kid([1; 32]);
        c.insert(kid, [2; 16], 100, 0).unwrap();
        assert_eq!(c.insert(kid, [2; 16], 100, 50), Err(ReplayError::Replay));
        c.prune(101);
        assert!(c.is_empty());
    }

    #[test]
    fn full_cache_refuses_instead_of_forgetting() {
        let mut c = ReplayCache::with_capacity(2);
        let kid = Kid([1; 32]);
        c.insert(kid, [1; 16], 100, 0).unwrap();
        c.insert(kid, [2; 16], 100, 0).unwrap();
        assert_eq!(c.insert(kid, [3; 16], 100, 0), Err(ReplayError::Full(2)));
        // Once entries expire there is room again.
        c.insert(kid, [3; 16], 300, 200).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn persisted_form_round_trips() {
        let mut c = ReplayCache::default();
        for i in 0..10u8 {
            c.insert(Kid([i; 32]), [i; 16], i as i64 * 10, 0).unwrap();
            c.insert_time_sync(Kid([i; 32]), [i + 100; 16], i as i64 * 1000, 0)
                .unwrap();
        }
        let bytes = c.to_bytes();
        let back = ReplayCache::from_bytes(&bytes, DEFAULT_CAPACITY).unwrap();
        assert_eq!(back, c);
        assert_eq!((back.len(), back.time_sync_len()), (20, 10));
        assert!(ReplayCache::from_bytes(&bytes[..bytes.len() - 1], 10).is_err());
        // A map of the two sets.
        let Value::Map(fields) = cbor::decode_deterministic(&bytes).unwrap() else {
            panic!("not a map")
        };
        let keys: Vec<_> = fields.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            [Value::Text("cmds".into()), Value::Text("sync".into())]
        );
    }

    #[test]
    fn earlier_plain_array_form_is_read_as_command_entries() {
        let kid = Kid([7; 32]);
        let old = cbor::encode(&mut Value::Array(vec![Value::Array(vec![
            Value::Bytes(kid.0.to_vec()),
            Value::Bytes(vec![1; 16]),
            Value::Integer(500.into()),
        ])]));
        let mut c = ReplayCache::from_bytes(&old, DEFAULT_CAPACITY).unwrap();
        assert_eq!((c.len(), c.time_sync_len()), (1, 0));
        assert_eq!(c.insert(kid, [1; 16], 900, 100), Err(ReplayError::Replay));
        c.prune(501);
        assert!(c.is_empty());
        // An empty old file (what `trust init` used to write).
        assert!(ReplayCache::from_bytes(&[0x80], 10).unwrap().is_empty());
    }

    #[test]
    fn a_pair_is_a_replay_whichever_set_holds_it() {
        let mut c = ReplayCache::default();
        let kid = Kid([1; 32]);
        c.insert(kid, [1; 16], 100, 0).unwrap();
        c.insert_time_sync(kid, [2; 16], 100, 0).unwrap();
        assert_eq!(
            c.insert_time_sync(kid, [1; 16], 100, 0),
            Err(ReplayError::Replay)
        );
        assert_eq!(c.insert(kid, [2; 16], 100, 0), Err(ReplayError::Replay));
        // The same pair in both sets of a file is corrupt.
        let mut both = ReplayCache::default();
        both.insert(kid, [1; 16], 100, 0).unwrap();
        both.time_syncs.add((kid, [1; 16]), 100);
        assert_eq!(
            ReplayCache::from_bytes(&both.to_bytes(), 10),
            Err(ReplayError::Corrupt("duplicate entry"))
        );
    }

    #[test]
    fn full_time_sync_store_refuses_instead_of_forgetting() {
        let mut c = ReplayCache::with_capacities(3, 2);
        let kid = Kid([1; 32]);
        c.insert_time_sync(kid, [1; 16], 1000, 0).unwrap();
        c.insert_time_sync(kid, [2; 16], 1000, 0).unwrap();
        assert_eq!(
            c.insert_time_sync(kid, [3; 16], 1000, 0),
            Err(ReplayError::TimeSyncFull(2))
        );
        // Ordinary commands have their own room, and filling it does not
        // push time-sync entries out.
        for i in 10..13 {
            c.insert(kid, [i; 16], 10, 0).unwrap();
        }
        assert_eq!(c.insert(kid, [13; 16], 10, 0), Err(ReplayError::Full(3)));
        assert!(c.contains(&kid, &[1; 16]) && c.contains(&kid, &[2; 16]));
        // Still full after a reload, until the entries expire.
        let mut c = ReplayCache::from_bytes_with_capacities(&c.to_bytes(), 3, 2).unwrap();
        assert_eq!(
            c.insert_time_sync(kid, [3; 16], 5000, 500),
            Err(ReplayError::TimeSyncFull(2))
        );
        c.insert_time_sync(kid, [3; 16], 5000, 1001).unwrap();
        assert_eq!(c.time_sync_len(), 1);
    }
}
