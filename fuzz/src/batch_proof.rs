//! Batch proofs: CBOR from the input as an inclusion proof or a batch
//! root, and a batch built from the input's lines.

use crate::fixture;
use keybridge_protocol::batch::{Hash, leaf_hash, node_hash};
use keybridge_protocol::{Batch, BatchRoot, DeviceIds, InclusionProof, cbor};

/// Most ids of the input's batch whose proofs are all checked (a few
/// hundred keep an execution well under a millisecond).
const MAX_IDS: usize = 300;

/// 1. `data` as CBOR: deterministic decoding re-encodes to `data`; as an
///    [`InclusionProof`] and a [`BatchRoot`], the value round-trips, and a
///    proof that places a device of the fixture's batch under its signed
///    root is that device's own proof.
/// 2. `data` as lines of device ids (as the streamed batch body has them):
///    the valid ones are pushed, sorted and de-duplicated; the batch over
///    them has the RFC 6962 root, and every proof verifies for its device
///    and no other.
pub fn batch_proof(data: &[u8]) {
    as_cbor(data);
    as_lines(data);
}

fn as_cbor(data: &[u8]) {
    if let Ok(v) = cbor::decode_deterministic(data) {
        assert_eq!(cbor::encode(&mut v.clone()), data, "deterministic CBOR");
    }
    let Ok((value, _)) = cbor::decode_prefix(data) else {
        return;
    };
    if let Some(root) = BatchRoot::from_value(&value) {
        assert!(root.size_is_valid());
        assert_eq!(BatchRoot::from_value(&root.to_value()), Some(root));
    }
    let Some(proof) = InclusionProof::from_value(&value) else {
        return;
    };
    assert_eq!(
        InclusionProof::from_value(&proof.to_value()).as_ref(),
        Some(&proof)
    );
    let f = fixture::fixture();
    let signed = f.batch.signed_root();
    for (i, id) in f.batch.device_ids().iter().enumerate() {
        let _ = proof.root_from(&leaf_hash(id));
        if proof.verify_signed(id, &signed) {
            assert_eq!(proof, f.batch.proof(i), "a forged proof for {id}");
        }
    }
}

fn as_lines(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut given = DeviceIds::new();
    let mut valid = vec![];
    for line in text.split('\n').take(MAX_IDS) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let ok = keybridge_protocol::check_device_id(line).is_ok();
        assert_eq!(given.push(line).is_ok(), ok, "push and check_device_id");
        if ok {
            valid.push(line.to_owned());
        }
    }
    let n = given.len();
    assert_eq!(n, valid.len());
    assert!(given.iter().eq(valid.iter().map(String::as_str)));
    let (sorted, repeated) = given.sort_dedup();
    let mut expected = valid.clone();
    expected.sort_unstable();
    expected.dedup();
    assert!(sorted.iter().eq(expected.iter().map(String::as_str)));
    assert_eq!(
        sorted.len()
            + repeated
                .iter()
                .map(|r| r.positions.len() - 1)
                .sum::<usize>(),
        n,
        "every id kept once or counted as repeated"
    );
    for r in &repeated {
        assert!(r.positions.windows(2).all(|w| w[0] < w[1]));
        assert!(r.positions.iter().all(|&p| valid[p] == r.id));
    }
    let batch = match Batch::from_sorted(sorted) {
        Ok(b) => b,
        Err(_) => {
            assert!(expected.is_empty(), "a batch of valid, sorted ids");
            return;
        }
    };
    let again = Batch::new(valid.iter()).expect("the same ids");
    assert_eq!(again.signed_root(), batch.signed_root());
    assert_eq!(batch.root(), rfc6962_root(&expected));
    let signed = batch.signed_root();
    assert_eq!(BatchRoot::from_value(&signed.to_value()), Some(signed));
    for (i, (id, value)) in batch.proofs().enumerate() {
        let proof = batch.proof(i);
        assert_eq!(InclusionProof::from_value(&value).as_ref(), Some(&proof));
        assert!(proof.verify_signed(id, &signed), "the proof of {id}");
        if let Some(other) = batch.device_ids().get((i + 1) % batch.len())
            && other != id
        {
            assert!(
                !proof.verify_signed(other, &signed),
                "{id}'s proof for {other}"
            );
        }
    }
}

/// RFC 6962 §2.1 MTH, as the RFC states it (split at the largest power of
/// two below the size): the reference the batch's bottom-up tree must
/// match.
fn rfc6962_root(ids: &[String]) -> Hash {
    match ids {
        [one] => leaf_hash(one),
        _ => {
            let mut k = 1;
            while k * 2 < ids.len() {
                k *= 2;
            }
            node_hash(&rfc6962_root(&ids[..k]), &rfc6962_root(&ids[k..]))
        }
    }
}
