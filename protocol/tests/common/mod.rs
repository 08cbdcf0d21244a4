//! Test fixtures: signing keys, an account with a key log, claims.
#![allow(dead_code, missing_docs)]

use ciborium::value::Value;
use coset::{CborSerializable as _, TaggedCborSerializable as _};
use keybridge_protocol::cbor;
use keybridge_protocol::{Claims, KeyLog, KeyRequest, Op, PublicKey, Role, Unsigned};
use std::collections::BTreeMap;

pub const NOW: i64 = 1_800_000_000;

/// A private key held by a test (what a backend holds in real life).
pub enum Signer {
    Ed(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl Signer {
    pub fn ed25519(seed: u8) -> Self {
        Signer::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    pub fn p256(seed: u8) -> Self {
        let mut bytes = [seed; 32];
        bytes[0] = 1; // keep the scalar well below the group order
        Signer::P256(p256::ecdsa::SigningKey::from_slice(&bytes).unwrap())
    }

    pub fn secret_bytes(&self) -> Vec<u8> {
        match self {
            Signer::Ed(sk) => sk.to_bytes().to_vec(),
            Signer::P256(sk) => sk.to_bytes().to_vec(),
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            Signer::Ed(sk) => PublicKey::ed25519(sk.verifying_key().as_bytes()).unwrap(),
            Signer::P256(sk) => {
                PublicKey::p256_sec1(sk.verifying_key().to_sec1_point(false).as_bytes()).unwrap()
            }
        }
    }

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

    pub fn finish(&self, u: Unsigned) -> Vec<u8> {
        let sig = self.sign(u.to_be_signed());
        u.into_bytes(&sig).unwrap()
    }
}

/// An account "acme" whose admin is alice (Ed25519), with bob (P-256,
/// member) approved by alice.
pub struct Account {
    pub log: KeyLog,
    pub alice: Signer,
    pub bob: Signer,
    pub recovery: Signer,
}

impl Account {
    pub fn new() -> Self {
        let alice = Signer::ed25519(1);
        let bob = Signer::p256(2);
        let recovery = Signer::ed25519(3);
        let genesis = alice.finish(KeyLog::genesis(
            "acme",
            NOW - 1000,
            &alice.public(),
            "alice",
            &recovery.public(),
        ));
        let mut log = KeyLog::from_bytes(&genesis).unwrap();
        let event = add_event(&log, &alice, &bob, "bob", Role::Member, None);
        log.append(&event).unwrap();
        Account {
            log,
            alice,
            bob,
            recovery,
        }
    }
}

/// An `add` event for `new` (agent `agent`), approved by `approver`.
pub fn add_event(
    log: &KeyLog,
    approver: &Signer,
    new: &Signer,
    agent: &str,
    role: Role,
    replaces: Option<keybridge_protocol::Kid>,
) -> Vec<u8> {
    let req = new.finish(KeyRequest::unsigned_with(
        log.account(),
        agent,
        role,
        &new.public(),
        NOW - 900,
        replaces,
        None,
    ));
    let op = Op::Add {
        key: new.public(),
        agent: agent.into(),
        role,
        req,
        replaces,
    };
    approver.finish(log.next_event(NOW - 800, &op, &approver.public()))
}

pub fn claims(sub: &str, aud: &str) -> Claims {
    Claims {
        iss: "acme".into(),
        sub: sub.into(),
        aud: Some(aud.into()),
        exp: NOW + 300,
        nbf: NOW,
        iat: NOW,
        cti: [0x42; 16],
        cmd: "run-script".into(),
        args: BTreeMap::new(),
        body: None,
        devs: None,
    }
}

pub fn sign_command(signer: &Signer, claims: &Claims) -> Vec<u8> {
    let u = keybridge_protocol::UnsignedCommand::new(claims, &signer.public()).unwrap();
    let sig = signer.sign(u.to_be_signed());
    u.into_envelope(&sig).unwrap()
}

/// An envelope built with coset directly, bypassing every check of ours:
/// for producing the invalid inputs a verifier must refuse.
pub fn raw_envelope(
    signer: &Signer,
    alg: i64,
    content_type: &str,
    payload: Vec<u8>,
    unprotected: coset::Header,
) -> Vec<u8> {
    let mut header = coset::Header {
        alg: Some(coset::RegisteredLabelWithPrivate::PrivateUse(alg)),
        key_id: signer.public().kid().0.to_vec(),
        content_type: Some(coset::RegisteredLabel::Text(content_type.into())),
        ..Default::default()
    };
    if let Some(a) = [
        (-8, coset::iana::Algorithm::EdDSA),
        (-7, coset::iana::Algorithm::ES256),
    ]
    .iter()
    .find(|(n, _)| *n == alg)
    {
        header.alg = Some(coset::RegisteredLabelWithPrivate::Assigned(a.1));
    }
    let protected = coset::ProtectedHeader {
        original_data: Some(header.clone().to_vec().unwrap()),
        header,
    };
    let mut sign1 = coset::CoseSign1 {
        protected,
        unprotected,
        payload: Some(payload),
        signature: vec![],
    };
    sign1.signature = signer.sign(&sign1.tbs_data(&[]));
    sign1.to_tagged_vec().unwrap()
}

/// A claims map as a CBOR value, for editing before re-encoding.
pub fn claims_value(c: &Claims) -> Value {
    cbor::decode_deterministic(&c.to_payload()).unwrap()
}

// Key-log builders shared by the log, threshold and adversarial tests.

/// `signer` signs the next event of `log`, doing `op`.
pub fn event(log: &KeyLog, signer: &Signer, op: &Op) -> Vec<u8> {
    signer.finish(log.next_event(NOW - 500, op, &signer.public()))
}

/// `new`'s self-signed request to join `account` as `agent` with `role`.
pub fn request(account: &str, new: &Signer, agent: &str, role: Role) -> Vec<u8> {
    new.finish(KeyRequest::unsigned(
        account,
        agent,
        role,
        &new.public(),
        NOW - 900,
    ))
}

pub fn add(new: &Signer, agent: &str, role: Role, req: Vec<u8>) -> Op {
    Op::Add {
        key: new.public(),
        agent: agent.into(),
        role,
        req,
        replaces: None,
    }
}

pub fn revoke(s: &Signer) -> Op {
    Op::Revoke {
        kid: s.public().kid(),
    }
}

pub fn reset(new: &Signer, agent: &str, recovery: &Signer) -> Op {
    Op::Reset {
        key: new.public(),
        agent: agent.into(),
        recovery: recovery.public(),
    }
}
