//! The device's replay cache: which (kid, cti) pairs it has already acted on.
//!
//! Bounded two ways: an entry leaves once the command it remembers could no
//! longer be accepted anyway (`exp + skew`), and the cache never holds more
//! than its capacity — when full it refuses new commands rather than forget
//! old ones (failing closed). The persisted form is a deterministic CBOR
//! array of `[kid, cti, keep_until]`; the device crate does the file I/O.

use crate::cbor;
use crate::key::Kid;
use ciborium::value::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Default capacity: far above what a device sees in a day.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A replay-cache failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This (kid, cti) was already accepted.
    #[error("command was already accepted once (replay)")]
    Replay,
    /// The cache is at capacity with entries that are all still live.
    #[error("replay cache is full ({0} live entries); refusing rather than forgetting")]
    Full(usize),
    /// The persisted form could not be read.
    #[error("replay cache file is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Seen (kid, cti) pairs with the time until which each must be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCache {
    entries: BTreeMap<(Kid, [u8; 16]), i64>,
    by_expiry: BTreeSet<(i64, Kid, [u8; 16])>,
    capacity: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` live entries.
    pub fn with_capacity(capacity: usize) -> Self {
        ReplayCache {
            entries: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            capacity,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when (kid, cti) was accepted and is still remembered.
    pub fn contains(&self, kid: &Kid, cti: &[u8; 16]) -> bool {
        self.entries.contains_key(&(*kid, *cti))
    }

    /// Drops every entry whose `keep_until` is before `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some(&(t, kid, cti)) = self.by_expiry.first() {
            if t >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&(kid, cti));
        }
    }

    /// Records (kid, cti) until `keep_until`, after pruning at `now`.
    /// Refuses a pair already present, and refuses when full.
    pub fn insert(
        &mut self,
        kid: Kid,
        cti: [u8; 16],
        keep_until: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if self.contains(&kid, &cti) {
            return Err(ReplayError::Replay);
        }
        if self.entries.len() >= self.capacity {
            return Err(ReplayError::Full(self.entries.len()));
        }
        self.entries.insert((kid, cti), keep_until);
        self.by_expiry.insert((keep_until, kid, cti));
        Ok(())
    }

    /// The persisted form: deterministic CBOR.
    pub fn to_bytes(&self) -> Vec<u8> {
        let items = self
            .entries
            .iter()
            .map(|((kid, cti), t)| {
                Value::Array(vec![
                    Value::Bytes(kid.0.to_vec()),
                    Value::Bytes(cti.to_vec()),
                    Value::Integer((*t).into()),
                ])
            })
            .collect();
        cbor::encode(&mut Value::Array(items))
    }

    /// Reads the persisted form.
    pub fn from_bytes(bytes: &[u8], capacity: usize) -> Result<Self, ReplayError> {
        let corrupt = ReplayError::Corrupt;
        let value = cbor::decode_deterministic(bytes).map_err(|_| corrupt("not CBOR"))?;
        let Value::Array(items) = value else {
            return Err(corrupt("not an array"));
        };
        let mut cache = Self::with_capacity(capacity.max(items.len()));
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
            if cache.entries.insert((kid, cti), t).is_some() {
                return Err(corrupt("duplicate entry"));
            }
            cache.by_expiry.insert((t, kid, cti));
        }
        cache.capacity = capacity;
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
        }
        let bytes = c.to_bytes();
        assert_eq!(
            ReplayCache::from_bytes(&bytes, DEFAULT_CAPACITY).unwrap(),
            c
        );
        assert!(ReplayCache::from_bytes(&bytes[..bytes.len() - 1], 10).is_err());
    }
}
