//! Key logs: read whole, taken as an extension of the fixture's log, and
//! as new events after it.

use crate::fixture;
use keybridge_protocol::{KeyLog, Trust};

/// 1. `data` as a whole log ([`KeyLog::from_bytes`]): a log that verifies
///    is `data` exactly, names the account `peek_account` reads, and its
///    trust snapshot reads back to the same trust.
/// 2. `data` as a new log offered to a device that trusts the fixture's
///    ([`KeyLog::verify_extension`]), and the same with the fixture's log
///    in front of `data` (new events only): what is taken starts with the
///    trusted events, is the offered bytes, and the snapshot's own
///    extension check ([`Trust::verify_extension`]) takes exactly the same.
pub fn key_log(data: &[u8]) {
    let peeked = KeyLog::peek_account(data);
    if let Ok(log) = KeyLog::from_bytes(data) {
        assert_eq!(log.to_bytes(), data, "a verified log is its bytes");
        assert_eq!(peeked.as_deref(), Ok(log.account()));
        check_trust(&log);
    }

    let f = fixture::fixture();
    extension(&f.log, &f.log_bytes, data);
    let mut offered = f.log_bytes.clone();
    offered.extend_from_slice(data);
    extension(&f.log, &f.log_bytes, &offered);

    // The events alone, one at a time on the trust state.
    let mut trust = f.log.trust().clone();
    let _ = trust.kids_named(data);
    if let Ok(events) = trust.extend(data) {
        assert_eq!(trust.len(), f.log.len() + events.len() as u64);
    } else {
        assert_eq!(&trust, f.log.trust(), "a refused extension changes nothing");
    }
}

fn extension(base: &KeyLog, base_bytes: &[u8], offered: &[u8]) {
    let taken = base.verify_extension(offered);
    let by_snapshot = base.trust().verify_extension(base_bytes, offered);
    match (&taken, &by_snapshot) {
        (Ok(log), Ok((trust, events))) => {
            assert_eq!(log.to_bytes(), offered);
            assert_eq!(log.events()[..base.events().len()], *base.events());
            assert_eq!(log.trust(), trust);
            assert_eq!(events[..], log.events()[base.events().len()..]);
            check_trust(log);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the log and its snapshot disagree"),
        _ => panic!("the log and its snapshot disagree: {taken:?} / {by_snapshot:?}"),
    }
}

/// The snapshot of a verified log reads back to the same trust, and the
/// same without its revoked keys once they are put back.
fn check_trust(log: &KeyLog) {
    let bytes = log.trust().to_bytes();
    let back = Trust::from_bytes(&bytes).expect("a snapshot reads back");
    assert_eq!(&back, log.trust());
    assert_eq!(back.to_bytes(), bytes);
    let mut lean = back.clone();
    let gone = lean.take_revoked();
    lean.restore_revoked(gone)
        .expect("the keys that left go back");
    assert_eq!(&lean, log.trust());
}
