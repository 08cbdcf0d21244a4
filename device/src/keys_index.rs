//! `keys.idx`: what `verify` reads of an account's trust, in a form whose
//! cost does not grow with the key log.
//!
//! A [`Trust`] snapshot (`trust.cbor`) holds every key that ever left the
//! account: its size, and the time to parse it, grow with the log (a
//! 10,000-event log that adds and revokes members has 5,000 revoked keys:
//! 190 KB, 2.4 ms to read). `verify` needs only the active keys, the
//! account, and — for a command signed by a key that is not active —
//! whether and how that key left. So this file holds:
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | magic `KBKEYS\0\x01` |
//! | 8..16 | length of `log.cbor` when this file was written (u64, big-endian) |
//! | 16..24 | offset of the log's last event in `log.cbor` (u64) |
//! | 24..32 | number of revoked-key records, N (u64) |
//! | 32..36 | length of the view, V (u32) |
//! | 36..36+V | the view: the `Trust` snapshot with its revoked keys and pending proposals left out |
//! | then | N records of 72 bytes, sorted by kid: kid (32), the event that removed it (u64), the key that replaced it (32; zeros: none) |
//!
//! `verify` reads the header and the view (size ∝ active keys), and looks
//! a non-active kid up by binary search, reading ⌈log₂ N⌉ records. The
//! file is written whole and atomically with the rest of a trust update;
//! the log's length and last-event offset let `trust update` check, cheaply,
//! that `log.cbor` is the log this state was made from.

use keybridge_protocol::ciborium::value::Value;
use keybridge_protocol::{KeyStatus, Kid, Trust, cbor};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;

const MAGIC: &[u8; 8] = b"KBKEYS\x00\x01";
const HEADER_LEN: usize = 36;
const RECORD_LEN: usize = 72;
/// Largest view read: 4 MiB (thousands of active keys).
pub const MAX_VIEW_LEN: usize = 4 * 1024 * 1024;
/// Most record bytes `trust update` reads back (64 MiB: nearly a million
/// keys that left, far more than a 16 MiB log can name).
const MAX_RECORDS_LEN: usize = 64 * 1024 * 1024;

/// How a key that is not active left the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Revoked (or removed by a reset) at this event.
    Revoked(u64),
    /// Rotated out at event `seq` by the key `by`.
    Replaced {
        /// The `add` event that replaced it.
        seq: u64,
        /// The key that replaced it.
        by: Kid,
    },
}

/// An open `keys.idx`: the view, where the log ended, and the revoked
/// records, looked up on demand.
pub struct KeysIndex {
    /// The account's trust without its history: account, length, head,
    /// active keys, recovery key, threshold. What the verifier checks a
    /// command against.
    pub view: Trust,
    /// Length of `log.cbor` when this state was written.
    pub log_bytes: u64,
    /// Offset of the last event in `log.cbor`.
    pub log_last: u64,
    file: File,
    records_at: u64,
    count: u64,
}

/// A revoked-key record: the key id and how it left.
pub type Record = (Kid, Gone);

/// The bytes of `keys.idx` for `trust`, whose log is `log_bytes` long with
/// its last event at `log_last`: every key that left, read from the whole
/// snapshot (deployment, migration, repair).
pub fn encode(trust: &Trust, log_bytes: u64, log_last: u64) -> Result<Vec<u8>, String> {
    let (_, records) = split_snapshot(&trust.to_bytes())?;
    encode_parts(&view_of(trust)?, records, log_bytes, log_last)
}

/// The bytes of `keys.idx` for `next`, the trust after an update of the one
/// whose index is `old`: its records and those of the keys that left in
/// the update, found among `candidates` — every key that may have been
/// active during the update (the active keys before it and every key its
/// events added or proposed). Costs what the update changed, not the
/// history.
pub fn encode_update(
    next: &Trust,
    old: &KeysIndex,
    candidates: impl IntoIterator<Item = Kid>,
    log_bytes: u64,
    log_last: u64,
) -> Result<Vec<u8>, String> {
    let mut records = old.records().map_err(|e| e.to_string())?;
    for kid in candidates {
        let gone = match next.status(&kid) {
            KeyStatus::Revoked(seq) => Gone::Revoked(seq),
            KeyStatus::Replaced { seq, by } => Gone::Replaced { seq, by },
            KeyStatus::Active(_) | KeyStatus::Unknown => continue,
        };
        records.push((kid, gone));
    }
    records.sort_by_key(|r| r.0);
    // A key that had left before the update is a candidate only if it
    // came back, which the log refuses: the same record twice, at most.
    records.dedup();
    encode_parts(&view_of(next)?, records, log_bytes, log_last)
}

/// The view of `trust` (its snapshot without revoked keys and pending
/// proposals), built from what it shows, in the snapshot's own format:
/// what [`Trust::from_bytes`] reads back (checked here).
pub fn view_of(trust: &Trust) -> Result<Vec<u8>, String> {
    let text = |s: &str| Value::Text(s.to_owned());
    let int = |i: u64| Value::Integer(i.into());
    let active = trust
        .active_keys()
        .map(|k| {
            Value::Array(vec![
                k.key.to_cose_key_value(),
                text(&k.agent),
                text(k.role.name()),
                int(k.since_seq),
            ])
        })
        .collect();
    let mut map = Value::Map(vec![
        (text("v"), int(1)),
        (text("acct"), text(trust.account())),
        (text("len"), int(trust.len())),
        (text("head"), Value::Bytes(trust.head().to_vec())),
        (text("active"), Value::Array(active)),
        (text("revoked"), Value::Array(vec![])),
        (text("recovery"), trust.recovery_key().to_cose_key_value()),
        (text("threshold"), int(trust.threshold().into())),
        (text("pending"), Value::Array(vec![])),
    ]);
    let view = cbor::encode(&mut map);
    let back = Trust::from_bytes(&view).map_err(|e| format!("unexpected trust snapshot ({e})"))?;
    if back.len() != trust.len() || back.active_keys().count() != trust.active_keys().count() {
        return Err("unexpected trust snapshot (the view differs)".into());
    }
    Ok(view)
}

fn encode_parts(
    view: &[u8],
    records: Vec<Record>,
    log_bytes: u64,
    log_last: u64,
) -> Result<Vec<u8>, String> {
    if records.windows(2).any(|w| w[0].0.0 >= w[1].0.0) {
        return Err("revoked keys not sorted, or a key twice".into());
    }
    let view_len =
        u32::try_from(view.len()).map_err(|_| "the active key set is too large".to_owned())?;
    if view.len() > MAX_VIEW_LEN {
        return Err("the active key set is too large".into());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + view.len() + records.len() * RECORD_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&log_bytes.to_be_bytes());
    out.extend_from_slice(&log_last.to_be_bytes());
    out.extend_from_slice(&(records.len() as u64).to_be_bytes());
    out.extend_from_slice(&view_len.to_be_bytes());
    out.extend_from_slice(view);
    for (kid, gone) in records {
        out.extend_from_slice(&kid.0);
        let (seq, by) = match gone {
            Gone::Revoked(seq) => (seq, [0; 32]),
            Gone::Replaced { seq, by } => (seq, by.0),
        };
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&by);
    }
    Ok(out)
}

/// The snapshot `bytes` without its revoked keys and pending proposals
/// (still a valid snapshot: [`Trust::from_bytes`] reads it), and the
/// revoked keys it held.
fn split_snapshot(bytes: &[u8]) -> Result<(Vec<u8>, Vec<Record>), String> {
    let format = |what: &str| format!("unexpected trust snapshot ({what})");
    let value = cbor::decode_deterministic(bytes).map_err(|_| format("not CBOR"))?;
    let Value::Map(mut entries) = value else {
        return Err(format("not a map"));
    };
    let mut records = Vec::new();
    let mut seen = (false, false);
    for (k, v) in &mut entries {
        match k.as_text() {
            Some("revoked") => {
                let Value::Array(items) = std::mem::replace(v, Value::Array(vec![])) else {
                    return Err(format("revoked"));
                };
                for item in items {
                    records.push(revoked_entry(&item).ok_or_else(|| format("revoked key"))?);
                }
                seen.0 = true;
            }
            Some("pending") => {
                *v = Value::Array(vec![]);
                seen.1 = true;
            }
            _ => {}
        }
    }
    if seen != (true, true) {
        return Err(format("no revoked or pending field"));
    }
    let view = cbor::encode(&mut Value::Map(entries));
    Trust::from_bytes(&view).map_err(|e| format(&e.to_string()))?;
    records.sort_by_key(|r| r.0);
    Ok((view, records))
}

/// `[kid, seq]` or `[kid, seq, replaced_by]`.
fn revoked_entry(v: &Value) -> Option<(Kid, Gone)> {
    let kid = |v: &Value| -> Option<Kid> {
        Some(Kid(<[u8; 32]>::try_from(v.as_bytes()?.as_slice()).ok()?))
    };
    let Value::Array(f) = v else { return None };
    let seq = |v: &Value| u64::try_from(v.as_integer()?).ok();
    match f.as_slice() {
        [k, s] => Some((kid(k)?, Gone::Revoked(seq(s)?))),
        [k, s, by] => Some((
            kid(k)?,
            Gone::Replaced {
                seq: seq(s)?,
                by: kid(by)?,
            },
        )),
        _ => None,
    }
}

impl KeysIndex {
    /// Reads the header and the view of the open `keys.idx` `file`; the
    /// records stay on disk. Every length is checked against the file's
    /// size before anything is allocated or read.
    pub fn read(mut file: File) -> Result<Self, String> {
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header)
            .map_err(|_| "shorter than its header".to_owned())?;
        if &header[..8] != MAGIC {
            return Err("not a keys index (bad magic)".into());
        }
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8"));
        let (log_bytes, log_last, count) = (u64_at(8), u64_at(16), u64_at(24));
        let view_len = u32::from_be_bytes(header[32..36].try_into().expect("4")) as usize;
        if view_len > MAX_VIEW_LEN {
            return Err(format!(
                "a view of {view_len} bytes, over the {MAX_VIEW_LEN}-byte limit"
            ));
        }
        let records_at = (HEADER_LEN + view_len) as u64;
        let expected = count
            .checked_mul(RECORD_LEN as u64)
            .and_then(|r| r.checked_add(records_at));
        if expected != Some(size) {
            return Err(format!(
                "{size} bytes, not the {count} records its header announces"
            ));
        }
        if log_last >= log_bytes {
            return Err("the log's last event lies past its end".into());
        }
        let mut view = vec![0; view_len];
        file.read_exact(&mut view).map_err(|e| e.to_string())?;
        let view = Trust::from_bytes(&view).map_err(|e| e.to_string())?;
        Ok(KeysIndex {
            view,
            log_bytes,
            log_last,
            file,
            records_at,
            count,
        })
    }

    /// How `kid`, not active, left the account; `None`: never part of it.
    /// Binary search over the sorted records, one 72-byte read per step.
    pub fn lookup(&self, kid: &Kid) -> io::Result<Option<Gone>> {
        let (mut lo, mut hi) = (0u64, self.count);
        let mut record = [0u8; RECORD_LEN];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // In range: mid < count, and records_at + count × 72 is the
            // file's size (checked when it was opened).
            self.file
                .read_exact_at(&mut record, self.records_at + mid * RECORD_LEN as u64)?;
            match record[..32].cmp(&kid.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let seq = u64::from_be_bytes(record[32..40].try_into().expect("8"));
                    if seq >= self.view.len() {
                        return Err(io::Error::other(
                            "a revoked-key record names an event past the log's end",
                        ));
                    }
                    let by: [u8; 32] = record[40..].try_into().expect("32");
                    return Ok(Some(if by == [0; 32] {
                        Gone::Revoked(seq)
                    } else {
                        Gone::Replaced { seq, by: Kid(by) }
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The number of keys that left the account.
    pub fn revoked_count(&self) -> u64 {
        self.count
    }

    /// Every record, in order (for `trust update`, which writes them again
    /// with the update's).
    pub fn records(&self) -> io::Result<Vec<Record>> {
        let len = usize::try_from(self.count)
            .ok()
            .and_then(|n| n.checked_mul(RECORD_LEN))
            .filter(|n| *n <= MAX_RECORDS_LEN)
            .ok_or_else(|| io::Error::other("more revoked-key records than accepted"))?;
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, self.records_at)?;
        bytes
            .chunks_exact(RECORD_LEN)
            .map(|r| {
                let kid = Kid(r[..32].try_into().expect("32"));
                let seq = u64::from_be_bytes(r[32..40].try_into().expect("8"));
                let by: [u8; 32] = r[40..].try_into().expect("32");
                if seq >= self.view.len() {
                    return Err(io::Error::other(
                        "a revoked-key record names an event past the log's end",
                    ));
                }
                Ok((
                    kid,
                    if by == [0; 32] {
                        Gone::Revoked(seq)
                    } else {
                        Gone::Replaced { seq, by: Kid(by) }
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_protocol::{KeyLog, KeyRequest, Op, PublicKey, Role, Unsigned};
    use std::io::{Seek as _, Write as _};

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn public(k: &ed25519_dalek::SigningKey) -> PublicKey {
        PublicKey::ed25519(k.verifying_key().as_bytes()).unwrap()
    }

    fn finish(k: &ed25519_dalek::SigningKey, u: Unsigned) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        let sig = k.sign(u.to_be_signed()).to_bytes();
        u.into_bytes(&sig).unwrap()
    }

    /// alice; members 10..20 added, the even ones revoked; 30 replaces 11.
    fn log() -> KeyLog {
        let alice = key(1);
        let genesis = finish(
            &alice,
            KeyLog::genesis("acme", 0, &public(&alice), "alice", &public(&key(2))),
        );
        let mut log = KeyLog::from_bytes(&genesis).unwrap();
        let add = |log: &mut KeyLog, m: u8, agent: &str, replaces| {
            let k = key(m);
            let req = finish(
                &k,
                KeyRequest::unsigned_with(
                    "acme",
                    agent,
                    Role::Member,
                    &public(&k),
                    0,
                    replaces,
                    None,
                ),
            );
            let op = Op::Add {
                key: public(&k),
                agent: agent.into(),
                role: Role::Member,
                req,
                replaces,
            };
            let ev = finish(&alice, log.next_event(0, &op, &public(&alice)));
            log.append(&ev).unwrap();
        };
        for m in 10..20u8 {
            add(&mut log, m, &format!("m{m}"), None);
            if m % 2 == 0 {
                let op = Op::Revoke {
                    kid: public(&key(m)).kid(),
                };
                let ev = finish(&alice, log.next_event(0, &op, &public(&alice)));
                log.append(&ev).unwrap();
            }
        }
        add(&mut log, 30, "m11", Some(public(&key(11)).kid()));
        log
    }

    fn open(bytes: &[u8]) -> Result<KeysIndex, String> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        KeysIndex::read(f)
    }

    #[test]
    fn the_view_is_the_snapshot_without_revoked_keys_and_proposals() {
        let log = log();
        let (split, records) = split_snapshot(&log.trust().to_bytes()).unwrap();
        assert_eq!(view_of(log.trust()).unwrap(), split);
        assert_eq!(records.len(), 6);
    }

    #[test]
    fn every_key_is_found_as_the_trust_says() {
        let log = log();
        let bytes = encode(log.trust(), 1000, 900).unwrap();
        let index = open(&bytes).unwrap();
        assert_eq!((index.log_bytes, index.log_last), (1000, 900));
        assert_eq!(index.revoked_count(), 6);
        assert_eq!(index.view.active_keys().count(), 6);
        for seed in (1..=40u8).filter(|s| *s != 2) {
            let kid = public(&key(seed)).kid();
            let want = match log.status(&kid) {
                KeyStatus::Revoked(seq) => Some(Gone::Revoked(seq)),
                KeyStatus::Replaced { seq, by } => Some(Gone::Replaced { seq, by }),
                KeyStatus::Active(_) | KeyStatus::Unknown => None,
            };
            assert_eq!(index.lookup(&kid).unwrap(), want, "seed {seed}");
        }
        assert!(matches!(
            index.lookup(&public(&key(11)).kid()).unwrap(),
            Some(Gone::Replaced { .. })
        ));
        assert_eq!(index.records().unwrap().len(), 6);
    }

    #[test]
    fn a_damaged_index_is_refused_before_anything_is_allocated_from_it() {
        let log = log();
        let good = encode(log.trust(), 1000, 900).unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..20].to_vec(), "shorter than its header"),
            (
                good[..good.len() - 1].to_vec(),
                "records its header announces",
            ),
            ([&good[..], &[0]].concat(), "records its header announces"),
        ];
        let mut magic = good.clone();
        magic[0] ^= 1;
        cases.push((magic, "bad magic"));
        let mut count = good.clone();
        count[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        cases.push((count, "records its header announces"));
        let mut view = good.clone();
        view[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push((view, "over the"));
        let mut last = good.clone();
        last[16..24].copy_from_slice(&1000u64.to_be_bytes());
        cases.push((last, "past its end"));
        for (bytes, words) in cases {
            let e = open(&bytes).err().expect(words);
            assert!(e.contains(words), "{words}: {e}");
        }
    }
}
