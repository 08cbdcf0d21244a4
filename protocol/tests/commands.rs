//! Signed commands end to end inside the protocol crate: round trips, and
//! one test per refusal of the verifier.

mod common;

use ciborium::value::Value;
use common::*;
use keybridge_protocol::command::{CONTENT_TYPE, inspect};
use keybridge_protocol::{
    ArgValue, Batch, Op, ReplayCache, UnsignedCommand, Verifier, VerifyError, cbor,
};
use sha2::{Digest, Sha256};

fn verify(account: &Account, env: &[u8]) -> Result<keybridge_protocol::Verified, VerifyError> {
    Verifier::new(&account.log, "dev-1").check(env, None, NOW)
}

#[test]
fn ed25519_command_round_trips_with_args_and_body() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.args
        .insert("path".into(), ArgValue::Text("/opt/x.sh".into()));
    c.args.insert("retries".into(), ArgValue::Int(-3));
    c.args.insert(
        "env".into(),
        ArgValue::Map([("A".to_string(), ArgValue::Bool(true))].into()),
    );
    c.body = Some(Sha256::digest(b"echo hi").into());
    let env = sign_command(&a.alice, &c);
    let v = Verifier::new(&a.log, "dev-1")
        .check(&env, Some(b"echo hi"), NOW)
        .unwrap();
    assert_eq!(v.claims, c);
    assert_eq!(v.kid, a.alice.public().kid());
    assert_eq!(inspect(&env).unwrap().1, c);
}

#[test]
fn p256_command_round_trips_and_is_low_s() {
    let a = Account::new();
    let c = claims("bob", "dev-1");
    let env = sign_command(&a.bob, &c);
    let v = verify(&a, &env).unwrap();
    assert_eq!(v.claims.sub, "bob");
    let sign1 =
        <coset::CoseSign1 as coset::TaggedCborSerializable>::from_tagged_slice(&env).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&sign1.signature).unwrap();
    assert!(sig.normalize_s() == sig, "signers emit low-S");
}

#[test]
fn high_s_signature_is_normalized_by_the_builder() {
    let a = Account::new();
    let c = claims("bob", "dev-1");
    let u = UnsignedCommand::new(&c, &a.bob.public()).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&a.bob.sign(u.to_be_signed())).unwrap();
    // Of (r, s) and (r, n - s) exactly one is high-S: hand the builder that one.
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
    let high = if sig.normalize_s() == sig {
        flipped
    } else {
        sig
    };
    assert!(high.normalize_s() != high, "the input is high-S");
    let env = u.into_envelope(&high.to_bytes()).unwrap();
    verify(&a, &env).unwrap();
    let sign1 =
        <coset::CoseSign1 as coset::TaggedCborSerializable>::from_tagged_slice(&env).unwrap();
    let out = p256::ecdsa::Signature::from_slice(&sign1.signature).unwrap();
    assert_eq!(
        out,
        high.normalize_s(),
        "the envelope carries the low-S form"
    );
}

#[test]
fn builder_refuses_a_signature_that_does_not_verify() {
    let a = Account::new();
    let u = UnsignedCommand::new(&claims("alice", "dev-1"), &a.alice.public()).unwrap();
    assert!(u.into_envelope(&[0u8; 64]).is_err());
}

#[test]
fn fully_specified_algorithms_are_accepted() {
    let a = Account::new();
    let c = claims("alice", "dev-1");
    let env = raw_envelope(
        &a.alice,
        -19,
        CONTENT_TYPE,
        c.to_payload(),
        Default::default(),
    );
    verify(&a, &env).unwrap();
    let c = claims("bob", "dev-1");
    let env = raw_envelope(&a.bob, -9, CONTENT_TYPE, c.to_payload(), Default::default());
    verify(&a, &env).unwrap();
}

#[test]
fn refuses_malformed_input() {
    let a = Account::new();
    for bad in [&b""[..], b"\x00", b"\xd2\x80", b"hello", &[0xff; 100]] {
        assert!(
            matches!(verify(&a, bad), Err(VerifyError::Malformed(_))),
            "{bad:?}"
        );
    }
    // A log event is not a command.
    let e = verify(&a, a.log.events()[0].bytes()).unwrap_err();
    assert!(matches!(e, VerifyError::Malformed(m) if m.contains("content type")));
}

#[test]
fn refuses_non_deterministic_payload_even_when_signed() {
    let a = Account::new();
    let c = claims("alice", "dev-1");
    let Value::Map(mut entries) = claims_value(&c) else {
        panic!()
    };
    entries.reverse();
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&Value::Map(entries), &mut payload).unwrap();
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    assert_eq!(
        verify(&a, &env),
        Err(VerifyError::NotDeterministic("payload"))
    );
}

#[test]
fn refuses_non_deterministic_envelope() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    // Tag 18, then the 4-element array as an indefinite-length array.
    assert_eq!(env[..2], [0xd2, 0x84]);
    let mut bad = vec![0xd2, 0x9f];
    bad.extend_from_slice(&env[2..]);
    bad.push(0xff);
    assert_eq!(
        verify(&a, &bad),
        Err(VerifyError::NotDeterministic("envelope"))
    );
}

#[test]
fn refuses_unknown_kid() {
    let a = Account::new();
    let stranger = Signer::ed25519(99);
    let env = sign_command(&stranger, &claims("alice", "dev-1"));
    assert_eq!(
        verify(&a, &env),
        Err(VerifyError::UnknownKid(stranger.public().kid()))
    );
}

#[test]
fn refuses_revoked_kid() {
    let mut a = Account::new();
    let env = sign_command(&a.bob, &claims("bob", "dev-1"));
    verify(&a, &env).unwrap();
    let revoke = Op::Revoke {
        kid: a.bob.public().kid(),
    };
    let ev = a
        .alice
        .finish(a.log.next_event(NOW, &revoke, &a.alice.public()));
    a.log.append(&ev).unwrap();
    assert_eq!(
        verify(&a, &env),
        Err(VerifyError::RevokedKid {
            kid: a.bob.public().kid(),
            seq: 2
        })
    );
}

#[test]
fn refuses_alg_that_does_not_match_the_key() {
    let a = Account::new();
    // Alice's Ed25519 key, but the header says ES256.
    let env = raw_envelope(
        &a.alice,
        -7,
        CONTENT_TYPE,
        claims("alice", "dev-1").to_payload(),
        Default::default(),
    );
    assert!(matches!(
        verify(&a, &env),
        Err(VerifyError::AlgMismatch { .. })
    ));
}

#[test]
fn refuses_bad_signature() {
    let a = Account::new();
    let mut env = sign_command(&a.alice, &claims("alice", "dev-1"));
    let n = env.len();
    env[n - 5] ^= 0x01;
    assert_eq!(verify(&a, &env), Err(VerifyError::BadSignature));
}

#[test]
fn refuses_wrong_account() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.iss = "globex".into();
    assert!(matches!(
        verify(&a, &sign_command(&a.alice, &c)),
        Err(VerifyError::WrongAccount { .. })
    ));
}

#[test]
fn refuses_wrong_agent() {
    let a = Account::new();
    // Bob's key cannot speak for alice.
    let env = sign_command(&a.bob, &claims("alice", "dev-1"));
    assert_eq!(
        verify(&a, &env),
        Err(VerifyError::WrongAgent {
            expected: "bob".into(),
            found: "alice".into()
        })
    );
}

#[test]
fn refuses_wrong_device() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-2"));
    assert!(matches!(
        verify(&a, &env),
        Err(VerifyError::WrongDevice { .. })
    ));
}

fn batch_envelopes(a: &Account, ids: &[&str]) -> Vec<(String, Vec<u8>)> {
    let batch = Batch::new(ids.iter().copied()).unwrap();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let u = UnsignedCommand::new(&c, &a.alice.public()).unwrap();
    let sig = a.alice.sign(u.to_be_signed());
    u.into_batch_envelopes(&sig, &batch).unwrap()
}

#[test]
fn batch_envelopes_verify_on_each_device_with_one_signature() {
    let a = Account::new();
    let ids: Vec<String> = (0..37).map(|i| format!("dev-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let envs = batch_envelopes(&a, &refs);
    assert_eq!(envs.len(), 37);
    let sigs: std::collections::BTreeSet<Vec<u8>> = envs
        .iter()
        .map(|(_, e)| {
            <coset::CoseSign1 as coset::TaggedCborSerializable>::from_tagged_slice(e)
                .unwrap()
                .signature
        })
        .collect();
    assert_eq!(sigs.len(), 1, "one signature for the whole batch");
    for (id, env) in &envs {
        let v = Verifier::new(&a.log, id).check(env, None, NOW).unwrap();
        assert_eq!(v.batch_size, Some(37));
    }
}

#[test]
fn refuses_bad_batch_proof() {
    let a = Account::new();
    let envs = batch_envelopes(&a, &["dev-1", "dev-2", "dev-3"]);
    // dev-4 is not in the batch, whatever proof it is shown.
    for (_, env) in &envs {
        assert_eq!(
            Verifier::new(&a.log, "dev-4").check(env, None, NOW),
            Err(VerifyError::BadBatchProof)
        );
    }
    // dev-1's envelope on dev-2: the proof is for another leaf.
    assert_eq!(
        Verifier::new(&a.log, "dev-2").check(&envs[0].1, None, NOW),
        Err(VerifyError::BadBatchProof)
    );
    // A batch command with its proof stripped.
    let batch = Batch::new(["dev-1", "dev-2"]).unwrap();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let env = signed_as_is(&a, &c);
    assert_eq!(verify(&a, &env), Err(VerifyError::BadBatchProof));
}

#[test]
fn refuses_expired_and_says_how_far_off_the_clock_is() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    let v = Verifier::new(&a.log, "dev-1");
    // Within skew: fine.
    v.check(&env, None, NOW + 300 + 120).unwrap();
    let e = v.check(&env, None, NOW + 3600).unwrap_err();
    assert_eq!(
        e,
        VerifyError::Expired {
            late: 3300,
            offset: 3600
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("3600 s ahead") && msg.contains("time-sync"),
        "{msg}"
    );
}

#[test]
fn refuses_not_yet_valid_and_says_how_far_behind() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    let e = Verifier::new(&a.log, "dev-1")
        .check(&env, None, NOW - 7200)
        .unwrap_err();
    assert_eq!(
        e,
        VerifyError::NotYetValid {
            early: 7200,
            offset: -7200
        }
    );
    assert!(e.to_string().contains("7200 s behind"), "{e}");
}

#[test]
fn time_sync_is_accepted_outside_the_window_but_never_twice() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.cmd = "time-sync".into();
    let env = sign_command(&a.alice, &c);
    let mut replay = ReplayCache::default();
    let v = Verifier::new(&a.log, "dev-1");
    let far = NOW + 400 * 24 * 3600;
    let ok = v.verify(&env, None, far, &mut replay).unwrap();
    assert_eq!(ok.clock_offset, Some(far - NOW));
    assert_eq!(
        v.verify(&env, None, far, &mut replay),
        Err(VerifyError::Replay)
    );
    // After the clock is fixed, still refused.
    assert_eq!(
        v.verify(&env, None, NOW, &mut replay),
        Err(VerifyError::Replay)
    );
}

#[test]
fn refuses_body_mismatch() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.body = Some(Sha256::digest(b"echo hi").into());
    let env = sign_command(&a.alice, &c);
    let v = Verifier::new(&a.log, "dev-1");
    assert!(matches!(
        v.check(&env, Some(b"rm -rf /"), NOW),
        Err(VerifyError::BodyMismatch(_))
    ));
    assert!(matches!(
        v.check(&env, None, NOW),
        Err(VerifyError::BodyMismatch(_))
    ));
    let plain = sign_command(&a.alice, &claims("alice", "dev-1"));
    assert!(matches!(
        v.check(&plain, Some(b"x"), NOW),
        Err(VerifyError::BodyMismatch(_))
    ));
}

#[test]
fn refuses_replay() {
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    let mut replay = ReplayCache::default();
    let v = Verifier::new(&a.log, "dev-1");
    v.verify(&env, None, NOW, &mut replay).unwrap();
    assert_eq!(
        v.verify(&env, None, NOW + 10, &mut replay),
        Err(VerifyError::Replay)
    );
    // The replay cache survives a round trip through its persisted form.
    let mut reloaded = ReplayCache::from_bytes(&replay.to_bytes(), 1000).unwrap();
    assert_eq!(
        v.verify(&env, None, NOW + 10, &mut reloaded),
        Err(VerifyError::Replay)
    );
}

#[test]
fn refuses_window_longer_than_24h() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.exp = c.nbf + 24 * 3600 + 1;
    assert!(UnsignedCommand::new(&c, &a.alice.public()).is_err());
    let env = signed_as_is(&a, &c);
    assert_eq!(
        verify(&a, &env),
        Err(VerifyError::WindowTooLong(24 * 3600 + 1))
    );
}

#[test]
fn refuses_unknown_claims_and_headers() {
    let a = Account::new();
    let Value::Map(mut entries) = claims_value(&claims("alice", "dev-1")) else {
        panic!()
    };
    entries.push((Value::Text("zzz".into()), Value::Null));
    let payload = cbor::encode(&mut Value::Map(entries));
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    assert!(matches!(verify(&a, &env), Err(VerifyError::Malformed(_))));

    let mut unprotected = coset::Header::default();
    unprotected
        .rest
        .push((coset::Label::Int(99), Value::Bool(true)));
    let env = raw_envelope(
        &a.alice,
        -8,
        CONTENT_TYPE,
        claims("alice", "dev-1").to_payload(),
        unprotected,
    );
    assert!(matches!(verify(&a, &env), Err(VerifyError::Malformed(_))));
}

#[test]
fn every_refusal_has_its_own_code() {
    use std::collections::BTreeSet;
    // `examples` cannot leave a variant out (it would not compile), so
    // neither can this test.
    let all = VerifyError::examples();
    let codes: BTreeSet<_> = all.iter().map(VerifyError::code).collect();
    assert_eq!(
        codes.len(),
        all.len(),
        "two refusals share a code: {codes:?}"
    );
    for e in &all {
        let code = e.code();
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{e:?}: code {code:?}"
        );
        assert!(!e.to_string().is_empty(), "{e:?} says nothing");
    }
    // The refusals this test listed by hand before `examples` existed are
    // all still there.
    for code in [
        "malformed",
        "not_deterministic",
        "unknown_kid",
        "revoked_kid",
        "alg_mismatch",
        "bad_signature",
        "wrong_account",
        "wrong_agent",
        "wrong_device",
        "bad_batch_proof",
        "expired",
        "not_yet_valid",
        "window_too_long",
        "body_mismatch",
        "replay",
        "replay_cache_full",
    ] {
        assert!(codes.contains(code), "{code} is gone");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    static ACCOUNT: LazyLock<Account> = LazyLock::new(Account::new);
    static ENVELOPE: LazyLock<Vec<u8>> =
        LazyLock::new(|| sign_command(&ACCOUNT.alice, &claims("alice", "dev-1")));

    fn shared() -> &'static Account {
        &ACCOUNT
    }

    fn shared_envelope() -> &'static [u8] {
        &ENVELOPE
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `verify(bytes)` never panics on arbitrary input.
        #[test]
        fn verify_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let a = shared();
            let _ = Verifier::new(&a.log, "dev-1").check(&bytes, None, NOW);
        }

        /// Any single-byte change of a valid envelope is refused.
        #[test]
        fn any_byte_edit_is_refused(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let (a, env) = (shared(), shared_envelope());
            let mut bad = env.to_vec();
            let i = pos.index(bad.len());
            bad[i] ^= xor;
            prop_assert!(verify(a, &bad).is_err(), "edit at {} accepted", i);
        }
    }
}

// --- times are checked, never wrapped ------------------------------------------

#[test]
fn overflowing_windows_are_refused_as_too_long() {
    let a = Account::new();
    for (nbf, exp) in [
        (-1, i64::MAX),
        (-(1i64 << 62), 1i64 << 62),
        (i64::MIN, i64::MAX),
    ] {
        let mut c = claims("alice", "dev-1");
        (c.nbf, c.exp, c.iat) = (nbf, exp, 0);
        assert_eq!(
            c.validate(),
            Err(keybridge_protocol::ClaimsError::WindowTooLong(i64::MAX)),
            "{nbf}..{exp}"
        );
        let env = signed_as_is(&a, &c);
        assert_eq!(verify(&a, &env), Err(VerifyError::WindowTooLong(i64::MAX)));
    }
}

#[test]
fn extreme_times_saturate_instead_of_wrapping() {
    let a = Account::new();
    let v = Verifier::new(&a.log, "dev-1");
    // A command at the very end of time, checked at the very beginning:
    // late/early/offset would overflow.
    let mut c = claims("alice", "dev-1");
    (c.nbf, c.iat, c.exp) = (i64::MAX - 300, i64::MAX - 300, i64::MAX);
    let env = sign_command(&a.alice, &c);
    assert_eq!(
        v.check(&env, None, i64::MIN),
        Err(VerifyError::NotYetValid {
            early: i64::MAX,
            offset: i64::MIN
        })
    );
    let mut c = claims("alice", "dev-1");
    (c.nbf, c.iat, c.exp) = (i64::MIN, i64::MIN, i64::MIN + 300);
    let env = sign_command(&a.alice, &c);
    assert_eq!(
        v.check(&env, None, i64::MAX),
        Err(VerifyError::Expired {
            late: i64::MAX,
            offset: i64::MAX
        })
    );
    // A time-sync there is accepted once and kept (saturating) as long as
    // anything can be.
    c.cmd = "time-sync".into();
    let env = sign_command(&a.alice, &c);
    let mut replay = ReplayCache::default();
    let ok = v.verify(&env, None, i64::MAX, &mut replay).unwrap();
    assert_eq!(ok.clock_offset, Some(i64::MAX));
    assert_eq!(
        v.verify(&env, None, i64::MAX, &mut replay),
        Err(VerifyError::Replay)
    );
}

#[test]
fn iat_outside_nbf_exp_is_malformed() {
    let a = Account::new();
    for iat in [NOW - 1, NOW + 301, i64::MIN, i64::MAX] {
        let mut c = claims("alice", "dev-1");
        c.iat = iat;
        assert_eq!(
            c.validate(),
            Err(keybridge_protocol::ClaimsError::Malformed(
                "iat outside [nbf, exp]"
            ))
        );
        assert!(UnsignedCommand::new(&c, &a.alice.public()).is_err());
        let env = signed_as_is(&a, &c);
        assert!(
            matches!(verify(&a, &env), Err(VerifyError::Malformed(m)) if m.contains("iat")),
            "iat {iat}"
        );
    }
}

// --- time-sync is remembered for a year, in its own bounded set -------------------

#[test]
fn time_sync_is_remembered_366_days_past_max_exp_now() {
    let a = Account::new();
    let mut c = claims("alice", "dev-1");
    c.cmd = "time-sync".into();
    let env = sign_command(&a.alice, &c);
    let v = Verifier::new(&a.log, "dev-1");
    let day = 24 * 3600;
    let mut replay = ReplayCache::default();
    v.verify(&env, None, NOW, &mut replay).unwrap();
    for days in [31, 365, 366] {
        let mut reloaded = ReplayCache::from_bytes(&replay.to_bytes(), 1000).unwrap();
        assert_eq!(
            v.verify(&env, None, NOW + 300 + days * day, &mut reloaded),
            Err(VerifyError::Replay),
            "day {days}"
        );
    }
    // And only then forgotten.
    v.verify(&env, None, NOW + 300 + 366 * day + 1, &mut replay)
        .unwrap();
}

#[test]
fn full_time_sync_store_refuses_as_replay_cache_full() {
    let a = Account::new();
    let v = Verifier::new(&a.log, "dev-1");
    let mut replay = ReplayCache::with_capacities(10, 2);
    let sync = |n: u8| {
        let mut c = claims("alice", "dev-1");
        c.cmd = "time-sync".into();
        c.cti = [n; 16];
        sign_command(&a.alice, &c)
    };
    v.verify(&sync(1), None, NOW, &mut replay).unwrap();
    v.verify(&sync(2), None, NOW, &mut replay).unwrap();
    assert_eq!(
        v.verify(&sync(3), None, NOW, &mut replay),
        Err(VerifyError::ReplayCacheFull)
    );
    // Ordinary commands still have their room.
    v.verify(
        &sign_command(&a.alice, &claims("alice", "dev-1")),
        None,
        NOW,
        &mut replay,
    )
    .unwrap();
    assert_eq!((replay.len(), replay.time_sync_len()), (3, 2));
}

// --- the account is read from iss alone, with the verifier's encoding errors -------

#[test]
fn unverified_account_reads_iss_and_reports_non_deterministic_encoding() {
    use keybridge_protocol::unverified_account;
    let a = Account::new();
    let env = sign_command(&a.alice, &claims("alice", "dev-1"));
    assert_eq!(unverified_account(&env).unwrap(), "acme");
    // Claims the verifier refuses later still name their account.
    let mut c = claims("alice", "dev-1");
    c.exp = c.nbf + 24 * 3600 + 1;
    c.cmd = "not a command".into();
    let env = signed_as_is(&a, &c);
    assert_eq!(unverified_account(&env).unwrap(), "acme");
    // Non-deterministic encodings are NotDeterministic, as in check().
    let good = sign_command(&a.alice, &claims("alice", "dev-1"));
    let mut two_byte_tag = vec![0xd8, 0x12];
    two_byte_tag.extend_from_slice(&good[1..]);
    assert_eq!(
        unverified_account(&two_byte_tag),
        Err(VerifyError::NotDeterministic("envelope"))
    );
    assert_eq!(
        verify(&a, &two_byte_tag),
        Err(VerifyError::NotDeterministic("envelope"))
    );
    let Value::Map(mut entries) = claims_value(&claims("alice", "dev-1")) else {
        panic!()
    };
    entries.swap(0, 1);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&Value::Map(entries), &mut payload).unwrap();
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    assert_eq!(
        unverified_account(&env),
        Err(VerifyError::NotDeterministic("payload"))
    );
    // No iss: no trust store to pick.
    let Value::Map(mut entries) = claims_value(&claims("alice", "dev-1")) else {
        panic!()
    };
    entries.remove(0);
    let payload = cbor::encode(&mut Value::Map(entries));
    let env = raw_envelope(&a.alice, -8, CONTENT_TYPE, payload, Default::default());
    assert!(matches!(
        unverified_account(&env),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        unverified_account(b"junk"),
        Err(VerifyError::Malformed(_))
    ));
}

// --- the batch size is signed -------------------------------------------------------

/// `env` with its inclusion proof replaced by `proof`.
fn with_proof(env: &[u8], proof: &keybridge_protocol::InclusionProof) -> Vec<u8> {
    use coset::TaggedCborSerializable as _;
    let mut sign1 = coset::CoseSign1::from_tagged_slice(env).unwrap();
    sign1.unprotected.rest[0].1 = proof.to_value();
    sign1.to_tagged_vec().unwrap()
}

#[test]
fn batch_proofs_relabelled_with_another_size_are_refused_for_trees_of_2_to_16() {
    use keybridge_protocol::InclusionProof;
    let a = Account::new();
    // Rewrites whose walk still reaches the signed root: what an unsigned
    // size would let through.
    let mut reaching = Vec::new();
    for n in 2..=16usize {
        let ids: Vec<String> = (0..n).map(|i| format!("dev-{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let batch = Batch::new(refs.iter().copied()).unwrap();
        let signed = batch.signed_root();
        let envs = batch_envelopes(&a, &refs);
        for (i, (id, env)) in envs.iter().enumerate() {
            let honest = batch.proof(i);
            // A path of L hashes completes no walk for a size over 2^L.
            for size in 1..=32u64 {
                for index in 0..size {
                    if (index, size) == (i as u64, n as u64) {
                        continue;
                    }
                    let proof = InclusionProof {
                        leaf_index: index,
                        tree_size: size,
                        path: honest.path.clone(),
                    };
                    assert!(
                        !proof.verify_signed(id, &signed),
                        "{index}/{size} for {i}/{n}"
                    );
                    if proof.verify(id, &signed.root) {
                        assert_ne!(
                            size, n as u64,
                            "same size, other index: {index} for {i}/{n}"
                        );
                        let got =
                            Verifier::new(&a.log, id).check(&with_proof(env, &proof), None, NOW);
                        assert_eq!(
                            got,
                            Err(VerifyError::BadBatchProof),
                            "{index}/{size} for {i}/{n}"
                        );
                        reaching.push((i, n, index, size));
                    }
                }
            }
        }
    }
    assert!(
        reaching.contains(&(4, 5, 2, 3)),
        "leaf 4 of 5 relabelled leaf 2 of 3 reaches the root: {reaching:?}"
    );
    assert!(reaching.len() > 10, "{reaching:?}");
}

// --- device ids ----------------------------------------------------------------------

#[test]
fn aud_must_be_a_valid_device_id() {
    let a = Account::new();
    for bad in ["", "a/b", ".", "..", "dev\n1", "dev\0x"] {
        let mut c = claims("alice", "dev-1");
        c.aud = Some(bad.into());
        assert!(
            UnsignedCommand::new(&c, &a.alice.public()).is_err(),
            "{bad:?}"
        );
        let env = signed_as_is(&a, &c);
        assert!(
            matches!(verify(&a, &env), Err(VerifyError::Malformed(m)) if m.contains("aud")),
            "{bad:?}"
        );
    }
}

// --- one size limit ---------------------------------------------------------------------

/// The largest `"pad"` argument length `make` accepts, by bisection.
fn largest_accepted(
    make: impl Fn(usize) -> Result<UnsignedCommand, keybridge_protocol::ClaimsError>,
) -> usize {
    use keybridge_protocol::{ClaimsError, MAX_ENVELOPE_LEN};
    let (mut lo, mut hi) = (0, MAX_ENVELOPE_LEN);
    assert!(make(lo).is_ok());
    assert!(make(hi).is_err());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if make(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    match make(hi) {
        Err(ClaimsError::TooLarge { len, max }) => {
            assert_eq!(max, MAX_ENVELOPE_LEN);
            assert!(len > max);
        }
        other => panic!("{other:?}"),
    }
    lo
}

fn padded(mut c: keybridge_protocol::Claims, pad: usize) -> keybridge_protocol::Claims {
    c.args.insert("pad".into(), ArgValue::Text("x".repeat(pad)));
    c
}

#[test]
fn largest_accepted_single_command_fits_and_verifies() {
    use keybridge_protocol::MAX_ENVELOPE_LEN;
    let a = Account::new();
    for signer in [&a.alice, &a.bob] {
        let agent = if std::ptr::eq(signer, &a.alice) {
            "alice"
        } else {
            "bob"
        };
        let c = claims(agent, "dev-1");
        let pad =
            largest_accepted(|n| UnsignedCommand::new(&padded(c.clone(), n), &signer.public()));
        let env = sign_command(signer, &padded(c.clone(), pad));
        assert!(env.len() <= MAX_ENVELOPE_LEN, "{}", env.len());
        // The bound is exact for a single command.
        assert!(env.len() > MAX_ENVELOPE_LEN - 4, "{}", env.len());
        let v = verify(&a, &env).unwrap();
        assert_eq!(v.claims, padded(c, pad));
    }
}

#[test]
fn largest_accepted_batch_command_fits_and_verifies() {
    use keybridge_protocol::MAX_ENVELOPE_LEN;
    use keybridge_protocol::batch::MAX_PROOF_HEADER_LEN;
    let a = Account::new();
    let ids: Vec<String> = (0..37).map(|i| format!("dev-{i}")).collect();
    let batch = Batch::new(ids.clone()).unwrap();
    let mut c = claims("alice", "x");
    c.aud = None;
    c.devs = Some(batch.signed_root());
    let pad = largest_accepted(|n| UnsignedCommand::new(&padded(c.clone(), n), &a.alice.public()));
    let u = UnsignedCommand::new(&padded(c.clone(), pad), &a.alice.public()).unwrap();
    let sig = a.alice.sign(u.to_be_signed());
    for (i, (id, env)) in u
        .into_batch_envelopes(&sig, &batch)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        assert!(env.len() <= MAX_ENVELOPE_LEN, "{}", env.len());
        let v = Verifier::new(&a.log, &id).check(&env, None, NOW).unwrap();
        assert_eq!(v.batch_size, Some(37));
        // With the longest possible proof (24 hashes, 9-byte integers)
        // instead of this one, it would still fit, exactly.
        let mut header = coset::Header::default();
        header
            .rest
            .push((coset::Label::Text("kbp".into()), batch.proof(i).to_value()));
        let this = coset::CborSerializable::to_vec(header).unwrap().len();
        let worst = env.len() - this + MAX_PROOF_HEADER_LEN;
        assert!(worst <= MAX_ENVELOPE_LEN, "{worst}");
        assert!(worst > MAX_ENVELOPE_LEN - 4, "{worst}");
    }
}

/// `c` signed by alice exactly as it is (no validation): what an attacker
/// holding a valid key, or a buggy signer, could send.
fn signed_as_is(a: &Account, c: &keybridge_protocol::Claims) -> Vec<u8> {
    raw_envelope(
        &a.alice,
        -8,
        CONTENT_TYPE,
        c.to_payload(),
        Default::default(),
    )
}
