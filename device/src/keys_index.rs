//! `keys.idx`: what `verify` reads of an account's trust, in a form whose
//! cost does not grow with the key log.
//!
//! The keys that ever left an account grow with its log (a 10,000-event log
//! that adds and revokes members has 5,000 of them: as CBOR in a [`Trust`]
//! snapshot, 190 KB and 2.4 ms to read). `verify` needs only the active
//! keys, the account, and — for a command signed by a key that is not
//! active — whether and how that key left; `trust update` needs those its
//! new events name ([`Trust::kids_named`]), put back into the trust state
//! ([`Trust::restore_revoked`]). So they live here, as fixed-size records,
//! and nowhere else (`trust.cbor` is the snapshot without them). This file
//! holds:
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
//! a non-active kid up by binary search, reading ⌈log₂ N⌉ records;
//! `trust update` looks up the keys it needs the same way, and writes the
//! next file by copying the records as they are with the update's merged
//! in ([`encode_update`]: 5,000 records are a 360 KB copy, no parsing). The
//! file is written whole and atomically with the rest of a trust update;
//! the log's length and last-event offset let `trust update` check, cheaply,
//! that `log.cbor` is the log this state was made from.

use keybridge_protocol::ciborium::value::Value;
use keybridge_protocol::log::Revoked;
use keybridge_protocol::{Kid, Trust, cbor};
use std::collections::BTreeMap;
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

/// The bytes of `keys.idx` for `trust`, whose log is `log_bytes` long with
/// its last event at `log_last`, and `gone`, the keys that left the account
/// ([`Trust::take_revoked`]: `trust` may hold them or not, the view leaves
/// them out either way).
pub fn encode(
    trust: &Trust,
    gone: &BTreeMap<Kid, Revoked>,
    log_bytes: u64,
    log_last: u64,
) -> Result<Vec<u8>, String> {
    encode_parts(&view_of(trust)?, gone, log_bytes, log_last)
}

/// The bytes of `keys.idx` after an update: `old`'s records with `gone`
/// merged in (the keys that left in the update, and those restored from
/// `old` for it, which must say what `old` says), for `trust`, the state
/// after the update. The old records are copied as they are, not parsed:
/// the cost is a copy of the history's records, not a rebuild.
pub fn encode_update(
    trust: &Trust,
    old: &KeysIndex,
    gone: &BTreeMap<Kid, Revoked>,
    log_bytes: u64,
    log_last: u64,
) -> Result<Vec<u8>, String> {
    let view = view_of(trust)?;
    let view_len = u32::try_from(view.len())
        .ok()
        .filter(|_| view.len() <= MAX_VIEW_LEN)
        .ok_or_else(|| "the active key set is too large".to_owned())?;
    let old_records = old.raw_records().map_err(|e| e.to_string())?;
    let mut records = Vec::with_capacity(old_records.len() + gone.len() * RECORD_LEN);
    let mut count = 0u64;
    let mut fresh = gone.iter().peekable();
    let mut push = |records: &mut Vec<u8>, bytes: &[u8]| {
        records.extend_from_slice(bytes);
        count += 1;
    };
    for r in old_records.chunks_exact(RECORD_LEN) {
        let kid: &[u8] = &r[..32];
        while let Some((k, g)) = fresh.next_if(|(k, _)| k.0.as_slice() < kid) {
            push(&mut records, &record_bytes(k, g));
        }
        if let Some((k, g)) = fresh.next_if(|(k, _)| k.0.as_slice() == kid)
            && record_bytes(k, g) != r
        {
            return Err(format!(
                "key {} left the account twice, differently",
                k.to_hex()
            ));
        }
        push(&mut records, r);
    }
    for (k, g) in fresh {
        push(&mut records, &record_bytes(k, g));
    }
    Ok(assemble(
        &view, view_len, count, &records, log_bytes, log_last,
    ))
}

fn record_bytes(kid: &Kid, r: &Revoked) -> [u8; RECORD_LEN] {
    let mut out = [0; RECORD_LEN];
    out[..32].copy_from_slice(&kid.0);
    out[32..40].copy_from_slice(&r.seq.to_be_bytes());
    out[40..].copy_from_slice(&r.replaced_by.map_or([0; 32], |by| by.0));
    out
}

fn assemble(
    view: &[u8],
    view_len: u32,
    count: u64,
    records: &[u8],
    log_bytes: u64,
    log_last: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + view.len() + records.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&log_bytes.to_be_bytes());
    out.extend_from_slice(&log_last.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&view_len.to_be_bytes());
    out.extend_from_slice(view);
    out.extend_from_slice(records);
    out
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
    gone: &BTreeMap<Kid, Revoked>,
    log_bytes: u64,
    log_last: u64,
) -> Result<Vec<u8>, String> {
    let view_len = u32::try_from(view.len())
        .ok()
        .filter(|_| view.len() <= MAX_VIEW_LEN)
        .ok_or_else(|| "the active key set is too large".to_owned())?;
    // A BTreeMap iterates in kid order: the records come out sorted, each
    // kid once, as the binary search needs.
    let records: Vec<u8> = gone.iter().flat_map(|(k, r)| record_bytes(k, r)).collect();
    Ok(assemble(
        view,
        view_len,
        gone.len() as u64,
        &records,
        log_bytes,
        log_last,
    ))
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
                std::cmp::Ordering::Equal => return Ok(Some(self.record(&record)?.1)),
            }
        }
        Ok(None)
    }

    /// The number of keys that left the account.
    pub fn revoked_count(&self) -> u64 {
        self.count
    }

    /// Every key that left, with how (for `trust update`, which puts them
    /// back into the trust state before it takes an extension, and writes
    /// them again with the update's). A record out of order, a kid twice
    /// or an event past the log's end is an error.
    pub fn revoked(&self) -> io::Result<BTreeMap<Kid, Revoked>> {
        self.raw_records()?
            .chunks_exact(RECORD_LEN)
            .map(|r| {
                let (kid, gone) = self.record(r.try_into().expect("72"))?;
                Ok((kid, gone.into()))
            })
            .collect()
    }

    /// The records as stored, checked: sorted by kid, each once, each
    /// event number within the log (one read, then a pass over them).
    fn raw_records(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.count)
            .ok()
            .and_then(|n| n.checked_mul(RECORD_LEN))
            .filter(|n| *n <= MAX_RECORDS_LEN)
            .ok_or_else(|| io::Error::other("more revoked-key records than accepted"))?;
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, self.records_at)?;
        let mut previous: Option<&[u8]> = None;
        for r in bytes.chunks_exact(RECORD_LEN) {
            self.record(r.try_into().expect("72"))?;
            if previous.is_some_and(|p| p >= &r[..32]) {
                return Err(io::Error::other(
                    "revoked-key records out of order, or a key twice",
                ));
            }
            previous = Some(&r[..32]);
        }
        Ok(bytes)
    }

    /// One record, its event number checked against the log's length.
    fn record(&self, r: &[u8; RECORD_LEN]) -> io::Result<(Kid, Gone)> {
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
    }
}

impl From<Gone> for Revoked {
    fn from(g: Gone) -> Self {
        match g {
            Gone::Revoked(seq) => Revoked {
                seq,
                replaced_by: None,
            },
            Gone::Replaced { seq, by } => Revoked {
                seq,
                replaced_by: Some(by),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_protocol::{KeyLog, KeyRequest, KeyStatus, Op, PublicKey, Role, Unsigned};
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

    /// `keys.idx` for `log`, as a device writes it.
    fn index_of(log: &KeyLog) -> Vec<u8> {
        let mut sparse = log.trust().clone();
        let gone = sparse.take_revoked();
        encode(&sparse, &gone, 1000, 900).unwrap()
    }

    #[test]
    fn the_view_is_the_snapshot_without_revoked_keys_and_proposals() {
        let log = log();
        let mut sparse = log.trust().clone();
        let gone = sparse.take_revoked();
        assert_eq!(gone.len(), 6);
        // With or without its revoked keys, the same view.
        assert_eq!(view_of(log.trust()).unwrap(), view_of(&sparse).unwrap());
        assert_eq!(view_of(&sparse).unwrap(), sparse.to_bytes());
        assert_eq!(
            encode(log.trust(), &gone, 1000, 900).unwrap(),
            index_of(&log)
        );
    }

    #[test]
    fn every_key_is_found_as_the_trust_says() {
        let log = log();
        let index = open(&index_of(&log)).unwrap();
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
        // Put back, they make the whole trust again.
        let mut trust = index.view.clone();
        trust.restore_revoked(index.revoked().unwrap()).unwrap();
        assert_eq!(&trust, log.trust());
    }

    #[test]
    fn records_out_of_order_or_past_the_log_are_refused() {
        let log = log();
        let good = index_of(&log);
        let at = good.len() - 6 * RECORD_LEN;
        let mut swapped = good.clone();
        swapped[at..at + 2 * RECORD_LEN].copy_from_slice(
            &[
                &good[at + RECORD_LEN..at + 2 * RECORD_LEN],
                &good[at..at + RECORD_LEN],
            ]
            .concat(),
        );
        let e = open(&swapped).unwrap().revoked().unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let mut twice = good.clone();
        twice.copy_within(at..at + RECORD_LEN, at + RECORD_LEN);
        let e = open(&twice).unwrap().revoked().unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let mut late = good.clone();
        late[at + 32..at + 40].copy_from_slice(&u64::MAX.to_be_bytes());
        let index = open(&late).unwrap();
        let e = index.revoked().unwrap_err();
        assert!(e.to_string().contains("past the log's end"), "{e}");
        let kid = Kid(late[at..at + 32].try_into().unwrap());
        assert!(index.lookup(&kid).is_err());
    }

    #[test]
    fn a_damaged_index_is_refused_before_anything_is_allocated_from_it() {
        let log = log();
        let good = index_of(&log);
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
