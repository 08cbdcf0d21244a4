//! A signed command (any bytes) against the fixture's key log.

use crate::fixture::{self, BODY, DEVICE, NOW, same_but_signature};
use keybridge_protocol::command::inspect;
use keybridge_protocol::{
    Algorithm, ReplayCache, Verified, Verifier, VerifyError, unverified_account,
};

/// Verifies `data` as a command for the fixture's device, against the
/// whole log and against the snapshot a device keeps (same answer), with
/// and without the fixture's body, as another device and at other times.
/// Only the known-good envelopes may be accepted (or, for an ES256 one,
/// its twin with the other S). What `inspect` and `unverified_account`
/// read must agree with what the verifier accepted.
pub fn envelope_verify(data: &[u8]) {
    let f = fixture::fixture();
    let on_log = Verifier::new(&f.log, DEVICE);
    let on_snapshot = Verifier::new(&f.snapshot, DEVICE);

    let mut accepted: Option<Verified> = None;
    for body in [None, Some(BODY)] {
        let v = on_log.check(data, body, NOW);
        assert_eq!(
            v,
            on_snapshot.check(data, body, NOW),
            "the log and its snapshot disagree"
        );
        if let Ok(v) = v {
            accepted = Some(v);
        }
    }
    // Other devices, clocks and skews: anything but a panic.
    for (device, now, skew) in [
        ("dev-2", NOW, 120),
        (DEVICE, i64::MIN, 0),
        (DEVICE, i64::MAX, i64::MAX),
        (DEVICE, NOW + 86_400, -5),
    ] {
        let _ = Verifier::new(&f.log, device)
            .with_skew(skew)
            .check(data, Some(BODY), now);
    }

    let inspected = inspect(data);
    let account = unverified_account(data);
    if let (Ok((_, claims)), Ok(account)) = (&inspected, &account) {
        assert_eq!(&claims.iss, account, "inspect and unverified_account");
    }

    let Some(v) = accepted else { return };
    let known = f.envelopes.iter().any(|good| good == data);
    let twin = v.alg == Algorithm::Es256
        && f.envelopes
            .iter()
            .any(|good| same_but_signature(data, good));
    assert!(
        known || twin,
        "the verifier accepted an envelope it was never given: {v:?}"
    );
    let (kid, claims) = inspected.expect("an accepted envelope inspects");
    assert_eq!((kid, &claims), (v.kid, &v.claims));
    assert_eq!(account, Ok(claims.iss.clone()));

    // Once, then a replay.
    let body = claims.body.map(|_| BODY);
    let mut cache = ReplayCache::default();
    assert_eq!(on_log.verify(data, body, NOW, &mut cache).as_ref(), Ok(&v));
    assert_eq!(
        on_log.verify(data, body, NOW, &mut cache),
        Err(VerifyError::Replay)
    );
    let again = ReplayCache::from_bytes(&cache.to_bytes(), 16).expect("a cache reads back");
    assert!(again.contains(&v.kid, &v.claims.cti));
}
