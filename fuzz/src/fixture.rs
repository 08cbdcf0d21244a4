//! The fixed account every target checks against, made once per process
//! from fixed keys (the same seeds as `protocol/tests/common`): account
//! `acme`, alice (Ed25519, admin, genesis), bob (P-256, member) and carol
//! (Ed25519, member, with residency evidence that does not verify), the
//! recovery key, and the known-good objects signed by them: the only ones
//! a verifier may accept.

use keybridge_protocol::log::RequestEvidence;
use keybridge_protocol::{
    ArgValue, Batch, Claims, KeyLog, KeyRequest, Kid, Op, PublicKey, Role, Trust, Unsigned,
    UnsignedCommand,
};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The verifier's clock (unix seconds).
pub const NOW: i64 = 1_800_000_000;
/// The account.
pub const ACCOUNT: &str = "acme";
/// The device the known-good commands are for.
pub const DEVICE: &str = "dev-1";
/// The detached body of the known-good command that has one.
pub const BODY: &[u8] = b"#!/bin/sh\necho hi\n";
/// The devices of the known-good batch command (DEVICE among them).
pub const BATCH_DEVICES: [&str; 5] = ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"];
/// Carol's residency evidence: of a checkable kind, but not a certificate.
pub const CAROL_EVIDENCE_KIND: &str = "yubikey-piv-attestation";
/// Its one "certificate".
pub const CAROL_EVIDENCE: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x01];

/// A private key (what a backend holds in real life).
pub enum Signer {
    /// Ed25519.
    Ed(ed25519_dalek::SigningKey),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
}

impl Signer {
    /// The Ed25519 key whose seed is 32 times `seed`.
    pub fn ed25519(seed: u8) -> Self {
        Signer::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    /// A P-256 key from `seed` (well below the group order).
    pub fn p256(seed: u8) -> Self {
        let mut bytes = [seed; 32];
        bytes[0] = 1;
        Signer::P256(p256::ecdsa::SigningKey::from_slice(&bytes).expect("a valid scalar"))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        match self {
            Signer::Ed(sk) => PublicKey::ed25519(sk.verifying_key().as_bytes()).expect("valid"),
            Signer::P256(sk) => {
                PublicKey::p256_sec1(sk.verifying_key().to_sec1_point(false).as_bytes())
                    .expect("valid")
            }
        }
    }

    /// A signature over `msg` (deterministic for both algorithms).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Signer::Ed(sk) => {
                use ed25519_dalek::Signer as _;
                sk.sign(msg).to_bytes().to_vec()
            }
            Signer::P256(sk) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = sk.sign(msg);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// The signed envelope of `u`.
    pub fn finish(&self, u: Unsigned) -> Vec<u8> {
        let sig = self.sign(u.to_be_signed());
        u.into_bytes(&sig).expect("a good signature")
    }

    /// The envelope of a command.
    pub fn command(&self, claims: &Claims) -> Vec<u8> {
        let u = UnsignedCommand::new(claims, &self.public()).expect("valid claims");
        let sig = self.sign(u.to_be_signed());
        u.into_envelope(&sig).expect("a good signature")
    }
}

/// The keys, the log and everything signed with them.
pub struct Fixture {
    /// Genesis key, admin.
    pub alice: Signer,
    /// Member, P-256.
    pub bob: Signer,
    /// Member, Ed25519, with evidence.
    pub carol: Signer,
    /// The recovery key.
    pub recovery: Signer,
    /// genesis (alice), add bob, add carol.
    pub log: KeyLog,
    /// `log.to_bytes()`.
    pub log_bytes: Vec<u8>,
    /// What a device keeps instead of the log: the snapshot, read back.
    pub snapshot: Trust,
    /// The known-good commands for [`DEVICE`] at [`NOW`]. Each verifies
    /// (with [`BODY`] where its claims name a body); nothing else may.
    pub envelopes: Vec<Vec<u8>>,
    /// The batch of [`BATCH_DEVICES`].
    pub batch: Batch,
    /// Every device's envelope of the batch command (only DEVICE's is in
    /// `envelopes`).
    pub batch_envelopes: Vec<(String, Vec<u8>)>,
    /// The known-good key requests (self-signed): bob's and carol's (in
    /// the log), dave's (admin, replacing bob: not in the log), alice's
    /// for another account.
    pub requests: Vec<Vec<u8>>,
}

/// The fixture, made on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(make)
}

/// A key request of `new`, signed by itself.
pub fn request(
    new: &Signer,
    agent: &str,
    role: Role,
    replaces: Option<Kid>,
    evidence: Option<&RequestEvidence>,
) -> Vec<u8> {
    new.finish(KeyRequest::unsigned_with(
        ACCOUNT,
        agent,
        role,
        &new.public(),
        NOW - 900,
        replaces,
        evidence,
    ))
}

/// The `add` event of the request `req` (of `new`, agent `agent`), signed
/// by `approver` as the next event of `log`.
pub fn add_event(
    log: &KeyLog,
    approver: &Signer,
    new: &Signer,
    agent: &str,
    role: Role,
    req: Vec<u8>,
    replaces: Option<Kid>,
) -> Vec<u8> {
    let op = Op::Add {
        key: new.public(),
        agent: agent.into(),
        role,
        req,
        replaces,
    };
    approver.finish(log.next_event(NOW - 800, &op, &approver.public()))
}

/// Claims of a command of `sub` for `aud` (or a batch when `aud` is
/// `None`: `devs` is set by the caller).
pub fn claims(sub: &str, aud: Option<&str>, cmd: &str, cti: u8) -> Claims {
    Claims {
        iss: ACCOUNT.into(),
        sub: sub.into(),
        aud: aud.map(Into::into),
        exp: NOW + 300,
        nbf: NOW,
        iat: NOW,
        cti: [cti; 16],
        cmd: cmd.into(),
        args: BTreeMap::new(),
        body: None,
        devs: None,
    }
}

fn make() -> Fixture {
    let alice = Signer::ed25519(1);
    let bob = Signer::p256(2);
    let recovery = Signer::ed25519(3);
    let carol = Signer::ed25519(4);
    let dave = Signer::p256(5);

    let genesis = alice.finish(KeyLog::genesis(
        ACCOUNT,
        NOW - 1000,
        &alice.public(),
        "alice",
        &recovery.public(),
    ));
    let mut log = KeyLog::from_bytes(&genesis).expect("genesis");
    let bob_req = request(&bob, "bob", Role::Member, None, None);
    let event = add_event(
        &log,
        &alice,
        &bob,
        "bob",
        Role::Member,
        bob_req.clone(),
        None,
    );
    log.append(&event).expect("add bob");
    let evidence = RequestEvidence {
        kind: CAROL_EVIDENCE_KIND.into(),
        chain: vec![CAROL_EVIDENCE.to_vec()],
    };
    let carol_req = request(&carol, "carol", Role::Member, None, Some(&evidence));
    let event = add_event(
        &log,
        &alice,
        &carol,
        "carol",
        Role::Member,
        carol_req.clone(),
        None,
    );
    log.append(&event).expect("add carol");
    let dave_req = request(&dave, "bob", Role::Admin, Some(bob.public().kid()), None);
    let other_req = alice.finish(KeyRequest::unsigned(
        "other",
        "alice",
        Role::Member,
        &alice.public(),
        NOW,
    ));
    let log_bytes = log.to_bytes();
    let snapshot = Trust::from_bytes(&log.trust().to_bytes()).expect("a snapshot reads back");

    let mut envelopes = vec![];
    // alice, with arguments of every kind.
    let mut c = claims("alice", Some(DEVICE), "run-script", 0x41);
    c.args
        .insert("path".into(), ArgValue::Text("/opt/x.sh".into()));
    c.args.insert("retries".into(), ArgValue::Int(-3));
    c.args.insert("dry".into(), ArgValue::Bool(false));
    c.args.insert("blob".into(), ArgValue::Bytes(vec![0, 1, 2]));
    c.args.insert(
        "list".into(),
        ArgValue::List(vec![ArgValue::Int(1), ArgValue::Text("two".into())]),
    );
    c.args.insert(
        "env".into(),
        ArgValue::Map([("A".to_string(), ArgValue::Bool(true))].into()),
    );
    envelopes.push(alice.command(&c));
    // bob (ES256).
    envelopes.push(bob.command(&claims("bob", Some(DEVICE), "create-alert", 0x42)));
    // carol, whose evidence a hardware policy refuses.
    envelopes.push(carol.command(&claims("carol", Some(DEVICE), "run-script", 0x43)));
    // alice, with a detached body.
    let mut c = claims("alice", Some(DEVICE), "deploy-unattended", 0x44);
    c.body = Some(Sha256::digest(BODY).into());
    envelopes.push(alice.command(&c));
    // a time-sync, far outside its window.
    let mut c = claims("alice", Some(DEVICE), "time-sync", 0x45);
    (c.nbf, c.iat, c.exp) = (NOW - 7200, NOW - 7200, NOW - 6900);
    envelopes.push(alice.command(&c));
    // a batch: DEVICE's envelope.
    let batch = Batch::new(BATCH_DEVICES).expect("valid ids");
    let mut c = claims("alice", None, "x-reboot", 0x46);
    c.devs = Some(batch.signed_root());
    let u = UnsignedCommand::new(&c, &alice.public()).expect("valid claims");
    let sig = alice.sign(u.to_be_signed());
    let batch_envelopes = u.into_batch_envelopes(&sig, &batch).expect("batch");
    envelopes.extend(
        batch_envelopes
            .iter()
            .filter(|(id, _)| id == DEVICE)
            .map(|(_, env)| env.clone()),
    );

    Fixture {
        alice,
        bob,
        carol,
        recovery,
        log,
        log_bytes,
        snapshot,
        envelopes,
        batch,
        batch_envelopes,
        requests: vec![bob_req, carol_req, dave_req, other_req],
    }
}

/// Whether `bytes` is `good` but for an ES256 signature (the last 64
/// bytes): the other S of the same (r, s) verifies too, by design
/// (RFC 9053 accepts both; `PublicKey::verify` says so).
pub fn same_but_signature(bytes: &[u8], good: &[u8]) -> bool {
    bytes.len() == good.len()
        && bytes.len() > 64
        && bytes[..bytes.len() - 64] == good[..good.len() - 64]
}
