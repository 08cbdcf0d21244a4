//! The two-person rule with teeth (k-of-n admin agents), key requests that
//! carry a rotation and residency evidence, and the trust state a device
//! keeps instead of re-verifying its log.

mod common;

use common::*;
use keybridge_protocol::log::{RequestEvidence, Revoked, format_code};
use keybridge_protocol::{
    KeyLog, KeyRequest, KeyStatus, LogError, Op, Role, Trust, Verifier, VerifyError,
};

fn event(log: &KeyLog, signer: &Signer, op: &Op) -> Vec<u8> {
    signer.finish(log.next_event(NOW - 500, op, &signer.public()))
}

fn accept(log: &mut KeyLog, ev: &[u8]) {
    log.append(ev).unwrap();
    assert_eq!(&KeyLog::from_bytes(&log.to_bytes()).unwrap(), log);
}

fn refused(log: &KeyLog, ev: &[u8]) -> LogError {
    let mut copy = log.clone();
    let e = copy.append(ev).unwrap_err();
    assert_eq!(&copy, log, "a refused event changed the log");
    e
}

fn denied(e: &LogError, because: &str) -> bool {
    matches!(e, LogError::NotAuthorized { why, .. } if why.contains(because))
}

fn add_op(log: &KeyLog, new: &Signer, agent: &str, role: Role) -> Op {
    let req = new.finish(KeyRequest::unsigned(
        log.account(),
        agent,
        role,
        &new.public(),
        NOW - 900,
    ));
    Op::Add {
        key: new.public(),
        agent: agent.into(),
        role,
        req,
        replaces: None,
    }
}

/// alice (admin), bob (member), carol and dave (admins): three admin agents.
fn three_admins() -> (Account, Signer, Signer) {
    let mut a = Account::new();
    let (carol, dave) = (Signer::p256(20), Signer::ed25519(21));
    for (s, name) in [(&carol, "carol"), (&dave, "dave")] {
        let op = add_op(&a.log, s, name, Role::Admin);
        let ev = event(&a.log, &a.alice, &op);
        accept(&mut a.log, &ev);
    }
    (a, carol, dave)
}

#[test]
fn a_threshold_of_two_needs_a_second_admin_agent_for_admin_changes() {
    let (mut a, carol, dave) = three_admins();
    // The threshold itself is bounded by the admin agents there are.
    for k in [0, 4] {
        let e = refused(&a.log, &event(&a.log, &a.alice, &Op::Threshold { k }));
        assert!(denied(&e, "number of distinct admin agents"), "{k}: {e:?}");
    }
    let e = refused(&a.log, &event(&a.log, &a.bob, &Op::Threshold { k: 2 }));
    assert!(denied(&e, "only an admin"), "{e:?}");
    let ev = event(&a.log, &a.alice, &Op::Threshold { k: 2 });
    accept(&mut a.log, &ev);
    assert_eq!(a.log.threshold(), 2);

    // One admin alone can no longer add an admin, nor revoke one, nor
    // change the threshold: the event is refused, the log unchanged.
    let erin = Signer::p256(22);
    let add_erin = add_op(&a.log, &erin, "erin", Role::Admin);
    for op in [
        add_erin.clone(),
        Op::Revoke {
            kid: dave.public().kid(),
        },
        Op::Threshold { k: 1 },
    ] {
        let e = refused(&a.log, &event(&a.log, &a.alice, &op));
        assert!(denied(&e, "propose it"), "{op:?}: {e:?}");
    }
    // Members still need one admin.
    let frank = Signer::ed25519(23);
    let ev = event(
        &a.log,
        &a.alice,
        &add_op(&a.log, &frank, "frank", Role::Member),
    );
    accept(&mut a.log, &ev);

    // alice proposes erin; the proposal is pending, erin not active.
    let proposal = a.log.trust().len();
    let ev = event(
        &a.log,
        &a.alice,
        &Op::Propose {
            change: Box::new(add_erin.clone()),
        },
    );
    accept(&mut a.log, &ev);
    assert_eq!(a.log.status(&erin.public().kid()), KeyStatus::Unknown);
    assert_eq!(a.log.pending_for(&add_erin).unwrap().0, proposal);
    // The same change twice, alice confirming herself, a member, erin
    // confirming her own addition, an unknown proposal: refused.
    let e = refused(
        &a.log,
        &event(
            &a.log,
            &carol,
            &Op::Propose {
                change: Box::new(add_erin.clone()),
            },
        ),
    );
    assert!(denied(&e, "already proposed"), "{e:?}");
    let e = refused(&a.log, &event(&a.log, &a.alice, &Op::Confirm { proposal }));
    assert!(denied(&e, "already approved"), "{e:?}");
    let e = refused(&a.log, &event(&a.log, &a.bob, &Op::Confirm { proposal }));
    assert!(denied(&e, "only an admin"), "{e:?}");
    let e = refused(&a.log, &event(&a.log, &carol, &Op::Confirm { proposal: 1 }));
    assert!(denied(&e, "no pending proposal"), "{e:?}");
    // A device does not take commands from erin yet.
    let v = Verifier::new(&a.log, "dev-1");
    assert!(matches!(
        v.check(&sign_command(&erin, &claims("erin", "dev-1")), None, NOW),
        Err(VerifyError::UnknownKid(_))
    ));
    // carol confirms: erin is in, the proposal gone.
    let ev = event(&a.log, &carol, &Op::Confirm { proposal });
    accept(&mut a.log, &ev);
    match a.log.status(&erin.public().kid()) {
        KeyStatus::Active(k) => assert_eq!((k.role, k.since_seq), (Role::Admin, proposal + 1)),
        other => panic!("{other:?}"),
    }
    assert!(a.log.pending().is_empty());
    let e = refused(&a.log, &event(&a.log, &dave, &Op::Confirm { proposal }));
    assert!(denied(&e, "no pending proposal"), "{e:?}");
}

#[test]
fn an_admin_cannot_be_her_own_second_approver_and_revocations_keep_the_quorum() {
    let (mut a, carol, dave) = three_admins();
    let ev = event(&a.log, &a.alice, &Op::Threshold { k: 3 });
    accept(&mut a.log, &ev);
    // alice's own second key: proposing it, and approving it, is alice.
    let alice2 = Signer::p256(30);
    let op = add_op(&a.log, &alice2, "alice", Role::Admin);
    let ev = event(
        &a.log,
        &carol,
        &Op::Propose {
            change: Box::new(op),
        },
    );
    let proposal = a.log.trust().len();
    accept(&mut a.log, &ev);
    let e = refused(&a.log, &event(&a.log, &a.alice, &Op::Confirm { proposal }));
    assert!(denied(&e, "different agent"), "{e:?}");
    let ev = event(&a.log, &dave, &Op::Confirm { proposal });
    accept(&mut a.log, &ev);
    assert!(matches!(
        a.log.status(&alice2.public().kid()),
        KeyStatus::Unknown
    ));
    assert_eq!(a.log.pending()[&proposal].approvers.len(), 2);

    // Revoking an admin agent's only key would leave 2 agents < k = 3.
    let revoke_dave = Op::Revoke {
        kid: dave.public().kid(),
    };
    let ev = event(
        &a.log,
        &a.alice,
        &Op::Propose {
            change: Box::new(revoke_dave.clone()),
        },
    );
    let e = refused(&a.log, &ev);
    assert!(denied(&e, "fewer admin agents than the threshold"), "{e:?}");
    // Lower the threshold to 2 (three approvals), then revoking dave takes two.
    let lower = Op::Threshold { k: 2 };
    let p = a.log.trust().len();
    let ev = event(
        &a.log,
        &a.alice,
        &Op::Propose {
            change: Box::new(lower),
        },
    );
    accept(&mut a.log, &ev);
    for s in [&carol, &dave] {
        let ev = event(&a.log, s, &Op::Confirm { proposal: p });
        accept(&mut a.log, &ev);
    }
    assert_eq!(a.log.threshold(), 2);
    let p = a.log.trust().len();
    let ev = event(
        &a.log,
        &a.alice,
        &Op::Propose {
            change: Box::new(revoke_dave),
        },
    );
    accept(&mut a.log, &ev);
    assert!(matches!(
        a.log.status(&dave.public().kid()),
        KeyStatus::Active(_)
    ));
    let ev = event(&a.log, &carol, &Op::Confirm { proposal: p });
    accept(&mut a.log, &ev);
    assert!(matches!(
        a.log.status(&dave.public().kid()),
        KeyStatus::Revoked(_)
    ));
}

#[test]
fn a_reset_clears_the_threshold_and_pending_proposals() {
    let (mut a, carol, _dave) = three_admins();
    let ev = event(&a.log, &a.alice, &Op::Threshold { k: 2 });
    accept(&mut a.log, &ev);
    let erin = Signer::p256(40);
    let op = add_op(&a.log, &erin, "erin", Role::Admin);
    let ev = event(
        &a.log,
        &carol,
        &Op::Propose {
            change: Box::new(op),
        },
    );
    accept(&mut a.log, &ev);
    let (frank, recovery2) = (Signer::ed25519(41), Signer::ed25519(42));
    let reset = Op::Reset {
        key: frank.public(),
        agent: "frank".into(),
        recovery: recovery2.public(),
    };
    let ev = event(&a.log, &a.recovery, &reset);
    accept(&mut a.log, &ev);
    assert_eq!(a.log.threshold(), 1);
    assert!(a.log.pending().is_empty());
}

#[test]
fn proposals_of_other_operations_and_nested_proposals_are_malformed() {
    let a = Account::new();
    for change in [
        Op::Reject {
            req: [0; 32],
            reason: "x".into(),
        },
        Op::Confirm { proposal: 1 },
    ] {
        let ev = event(
            &a.log,
            &a.alice,
            &Op::Propose {
                change: Box::new(change),
            },
        );
        let e = refused(&a.log, &ev);
        assert!(matches!(e, LogError::Malformed { .. }), "{e:?}");
    }
}

#[test]
fn a_rotation_request_and_its_evidence_travel_in_the_request() {
    let mut a = Account::new();
    let bob2 = Signer::p256(50);
    let evidence = RequestEvidence {
        kind: "yubikey-piv-attestation".into(),
        chain: vec![vec![0x30, 1, 2], vec![0x30, 3]],
    };
    let req_bytes = bob2.finish(KeyRequest::unsigned_with(
        "acme",
        "bob",
        Role::Member,
        &bob2.public(),
        NOW,
        Some(a.bob.public().kid()),
        Some(&evidence),
    ));
    let req = KeyRequest::parse(&req_bytes).unwrap();
    assert_eq!(req.replaces, Some(a.bob.public().kid()));
    assert_eq!(req.evidence.as_ref(), Some(&evidence));
    let code = req.verification_code();
    assert_eq!(code.len(), 6);
    assert_eq!(format_code(&code), format!("{} {}", &code[..3], &code[3..]));
    assert_eq!(format_code("12345"), "12345");

    // An add that drops the rotation the request asked for is refused.
    let mut op = Op::Add {
        key: bob2.public(),
        agent: "bob".into(),
        role: Role::Member,
        req: req_bytes.clone(),
        replaces: None,
    };
    let e = refused(&a.log, &event(&a.log, &a.alice, &op));
    assert!(
        matches!(e, LogError::BadRequest(w) if w.contains("replace")),
        "{e:?}"
    );
    if let Op::Add { replaces, .. } = &mut op {
        *replaces = Some(a.bob.public().kid());
    }
    let ev = event(&a.log, &a.alice, &op);
    accept(&mut a.log, &ev);
    // The add event keeps the evidence: a device reads it from the log.
    let Op::Add { req, .. } = &a.log.events()[2].op else {
        panic!()
    };
    assert_eq!(KeyRequest::parse(req).unwrap().evidence, Some(evidence));

    // Evidence that is not {kind, chain of 1..8 byte strings}: refused.
    for chain in [vec![], vec![vec![]], vec![vec![1]; 9]] {
        let bad = RequestEvidence {
            kind: "x".into(),
            chain,
        };
        let bytes = bob2.finish(KeyRequest::unsigned_with(
            "acme",
            "bob",
            Role::Member,
            &bob2.public(),
            NOW,
            None,
            Some(&bad),
        ));
        assert!(KeyRequest::parse(&bytes).is_err());
    }
}

#[test]
fn the_trust_state_round_trips_and_takes_extensions_without_the_history() {
    let (mut a, carol, dave) = three_admins();
    let ev = event(&a.log, &a.alice, &Op::Threshold { k: 2 });
    accept(&mut a.log, &ev);
    let erin = Signer::p256(60);
    let op = add_op(&a.log, &erin, "erin", Role::Admin);
    let proposal = a.log.trust().len();
    let ev = event(
        &a.log,
        &carol,
        &Op::Propose {
            change: Box::new(op),
        },
    );
    accept(&mut a.log, &ev);
    let ev = event(
        &a.log,
        &a.alice,
        &Op::Revoke {
            kid: a.bob.public().kid(),
        },
    );
    accept(&mut a.log, &ev);

    let stored = a.log.to_bytes();
    let snapshot = a.log.trust().to_bytes();
    let trust = Trust::from_bytes(&snapshot).unwrap();
    assert_eq!(&trust, a.log.trust());
    assert_eq!(trust.to_bytes(), snapshot);
    assert_eq!(KeyLog::peek_account(&stored).unwrap(), "acme".to_owned());
    // Verifying works from the state alone.
    let v = Verifier::new(&trust, "dev-1");
    v.check(&sign_command(&dave, &claims("dave", "dev-1")), None, NOW)
        .unwrap();
    assert!(matches!(
        v.check(&sign_command(&a.bob, &claims("bob", "dev-1")), None, NOW),
        Err(VerifyError::RevokedKid { .. })
    ));

    // An extension: dave confirms erin.
    let mut longer = a.log.clone();
    let ev = event(&longer, &dave, &Op::Confirm { proposal });
    accept(&mut longer, &ev);
    let (next, events) = trust.verify_extension(&stored, &longer.to_bytes()).unwrap();
    assert_eq!(&next, longer.trust());
    assert_eq!(events.len(), 1);
    // Rollback and fork, as for a whole log.
    assert!(matches!(
        next.verify_extension(&longer.to_bytes(), &stored),
        Err(LogError::Rollback { .. })
    ));
    let mut fork = a.log.clone();
    let frank = Signer::ed25519(61);
    let ev = event(&fork, &carol, &add_op(&fork, &frank, "frank", Role::Member));
    accept(&mut fork, &ev);
    assert!(matches!(
        next.verify_extension(&longer.to_bytes(), &fork.to_bytes()),
        Err(LogError::Fork { .. })
    ));
    // A state that is not the stored log's: refused.
    assert!(
        trust
            .verify_extension(&longer.to_bytes(), &longer.to_bytes())
            .is_err()
    );

    // Damaged snapshots are errors, never another key set.
    for i in 0..snapshot.len() {
        let mut bad = snapshot.clone();
        bad[i] ^= 0x01;
        if let Ok(t) = Trust::from_bytes(&bad) {
            assert_ne!(&t, a.log.trust(), "byte {i}");
        }
    }
    assert!(Trust::from_bytes(&snapshot[..snapshot.len() - 1]).is_err());
    assert!(Trust::from_bytes(b"").is_err());
}

#[test]
fn the_keys_that_left_can_be_kept_apart_and_put_back() {
    let mut a = Account::new();
    let bob = a.bob.public().kid();
    let ev = event(&a.log, &a.alice, &Op::Revoke { kid: bob });
    accept(&mut a.log, &ev);
    let full = a.log.trust().clone();

    let mut sparse = full.clone();
    let gone = sparse.take_revoked();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[&bob].seq, a.log.len() - 1);
    assert_eq!(sparse.status(&bob), KeyStatus::Unknown);
    // The sparse snapshot reads back as itself.
    assert_eq!(Trust::from_bytes(&sparse.to_bytes()).unwrap(), sparse);

    // Why a device puts them back before it takes an extension: bob's key
    // coming back is refused only by a state that knows it left.
    let back = add_op(&a.log, &a.bob, "bob", Role::Member);
    let ev = event(&a.log, &a.alice, &back);
    assert!(sparse.clone().extend(&ev).is_ok());
    let e = full.clone().extend(&ev).unwrap_err();
    assert!(denied(&e, "a revoked key cannot come back"), "{e:?}");

    let mut restored = sparse.clone();
    restored.restore_revoked(gone.clone()).unwrap();
    assert_eq!(restored, full);
    // The same fact twice is kept once; a different fact, an active key or
    // an event past the log's end is refused, and nothing changes.
    restored.restore_revoked(gone.clone()).unwrap();
    assert_eq!(restored, full);
    let r = gone[&bob];
    let alice = a.alice.public().kid();
    for bad in [
        (
            bob,
            Revoked {
                seq: r.seq - 1,
                ..r
            },
        ),
        (alice, r),
        (
            keybridge_protocol::Kid([9; 32]),
            Revoked {
                seq: a.log.len(),
                ..r
            },
        ),
    ] {
        let mut t = sparse.clone();
        assert!(t.restore_revoked([(bob, r), bad]).is_err(), "{bad:?}");
        assert_eq!(t, sparse);
    }
}

#[test]
fn a_state_without_the_keys_that_left_takes_any_extension_with_only_those_it_names() {
    let (mut a, carol, dave) = three_admins();
    let (m1, m2, m3, erin) = (
        Signer::ed25519(70),
        Signer::ed25519(71),
        Signer::p256(72),
        Signer::ed25519(73),
    );
    let alice = &a.alice;
    let push = |log: &mut KeyLog, signer: &Signer, op: &Op| {
        let ev = event(log, signer, op);
        accept(log, &ev);
    };
    let op = add_op(&a.log, &m1, "m1", Role::Member);
    push(&mut a.log, alice, &op);
    push(
        &mut a.log,
        alice,
        &Op::Revoke {
            kid: m1.public().kid(),
        },
    );
    let op = add_op(&a.log, &m2, "m2", Role::Member);
    push(&mut a.log, alice, &op);
    // m2 rotated to m3.
    let replaces = Some(m2.public().kid());
    let req = m3.finish(KeyRequest::unsigned_with(
        "acme",
        "m2",
        Role::Member,
        &m3.public(),
        NOW - 900,
        replaces,
        None,
    ));
    let rotate = Op::Add {
        key: m3.public(),
        agent: "m2".into(),
        role: Role::Member,
        req,
        replaces,
    };
    push(&mut a.log, alice, &rotate);
    push(&mut a.log, alice, &Op::Threshold { k: 2 });
    let change = Box::new(add_op(&a.log, &erin, "erin", Role::Admin));
    push(&mut a.log, alice, &Op::Propose { change });
    let proposal = a.log.len() - 1;
    push(&mut a.log, &dave, &Op::Confirm { proposal });
    push(
        &mut a.log,
        alice,
        &Op::Revoke {
            kid: a.bob.public().kid(),
        },
    );
    let change = Box::new(Op::Revoke {
        kid: carol.public().kid(),
    });
    push(&mut a.log, alice, &Op::Propose { change });
    let proposal = a.log.len() - 1;
    push(&mut a.log, &dave, &Op::Confirm { proposal });

    // Keys that left a sparse state may need back, at each split.
    let put_back = |t: &mut Trust, gone: &std::collections::BTreeMap<_, Revoked>, rest: &[u8]| {
        let named = t.kids_named(rest).unwrap();
        t.restore_revoked(
            gone.iter()
                .filter(|(k, _)| named.contains(*k))
                .map(|(k, r)| (*k, *r)),
        )
        .unwrap();
    };
    let events = a.log.events();
    let intruders = [&m1, &m2, &a.bob, &carol];
    let mut refusals = 0;
    for i in 1..events.len() {
        let prefix: Vec<u8> = events[..i]
            .iter()
            .flat_map(|e| e.bytes().to_vec())
            .collect();
        let rest: Vec<u8> = events[i..]
            .iter()
            .flat_map(|e| e.bytes().to_vec())
            .collect();
        let at = KeyLog::from_bytes(&prefix).unwrap();
        let full = at.trust().clone();
        let mut sparse = full.clone();
        let gone = sparse.take_revoked();
        put_back(&mut sparse, &gone, &rest);
        let (mut whole, mut part) = (full.clone(), sparse);
        whole.extend(&rest).unwrap();
        part.extend(&rest).unwrap();
        part.restore_revoked(gone.clone()).unwrap();
        assert_eq!(whole, part, "split at {i}");
        // A key that left before the split, added again right after it:
        // refused by both, for the same reason.
        for s in intruders {
            if !matches!(
                full.status(&s.public().kid()),
                KeyStatus::Revoked(_) | KeyStatus::Replaced { .. }
            ) {
                continue;
            }
            let ev = event(&at, alice, &add_op(&at, s, "back", Role::Member));
            let mut sparse = full.clone();
            let gone = sparse.take_revoked();
            put_back(&mut sparse, &gone, &ev);
            let e1 = full.clone().extend(&ev).unwrap_err();
            let e2 = sparse.extend(&ev).unwrap_err();
            assert_eq!(e1, e2, "split at {i}");
            assert!(denied(&e1, "a revoked key cannot come back"), "{e1:?}");
            refusals += 1;
        }
    }
    // m1 from its revocation on, m2 from its rotation, bob and carol at
    // the end: every case was tried.
    assert!(refusals >= 10, "{refusals}");
}
