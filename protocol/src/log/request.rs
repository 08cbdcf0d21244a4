//! A key request: a new key asking to join an account, self-signed, with
//! the verification code its approver types (DESIGN.md §5).

use super::{ACCT, AGENT, KEY, LogError, ROLE, Role, TIME};
use crate::cbor::{self, Key, MapReader};
use crate::envelope::{Parsed, Unsigned};
use crate::key::{Kid, PublicKey};
use ciborium::value::Value;
use sha2::{Digest, Sha256};

/// Content type of a key request (self-signed by the requested key).
pub const REQUEST_CONTENT_TYPE: &str = "application/keybridge-key-request+cbor";

const REPLACES: Key = Key::Text("replaces");
const EVIDENCE: Key = Key::Text("evidence");
const KIND: Key = Key::Text("kind");
const CHAIN: Key = Key::Text("chain");
/// Most certificates or statements a request's evidence may carry.
const MAX_EVIDENCE_ITEMS: usize = 8;

/// Proof that the requested key lives in hardware, as its hardware gave it
/// (a YubiKey's attestation chain, a TPM's certification). The request
/// carries it verbatim; who checks it decides what it proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEvidence {
    /// E.g. `yubikey-piv-attestation`, `tpm2-certify`.
    pub kind: String,
    /// DER certificates or statements, leaf first.
    pub chain: Vec<Vec<u8>>,
}

/// A request for a new key to join an account, self-signed by that key.
/// The approver compares [`KeyRequest::verification_code`] with the one the
/// requester sees, so a swapped request cannot be approved by mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    bytes: Vec<u8>,
    /// The account asked to join.
    pub account: String,
    /// The requesting agent.
    pub agent: String,
    /// The role asked for.
    pub role: Role,
    /// The new key.
    pub key: PublicKey,
    /// When it was made (requester's clock).
    pub time: i64,
    /// A key of the same agent this one is to replace (a rotation).
    pub replaces: Option<Kid>,
    /// The key's residency evidence, when its hardware has any.
    pub evidence: Option<RequestEvidence>,
}

impl KeyRequest {
    /// A request to be signed by `key` itself.
    pub fn unsigned(
        account: &str,
        agent: &str,
        role: Role,
        key: &PublicKey,
        time: i64,
    ) -> Unsigned {
        Self::unsigned_with(account, agent, role, key, time, None, None)
    }

    /// [`KeyRequest::unsigned`] for a rotation (`replaces`) and with the
    /// key's residency `evidence`.
    pub fn unsigned_with(
        account: &str,
        agent: &str,
        role: Role,
        key: &PublicKey,
        time: i64,
        replaces: Option<Kid>,
        evidence: Option<&RequestEvidence>,
    ) -> Unsigned {
        let mut m = vec![
            (ACCT.to_value(), Value::Text(account.to_owned())),
            (AGENT.to_value(), Value::Text(agent.to_owned())),
            (ROLE.to_value(), Value::Text(role.name().to_owned())),
            (KEY.to_value(), key.to_cose_key_value()),
            (TIME.to_value(), Value::Integer(time.into())),
        ];
        if let Some(r) = replaces {
            m.push((REPLACES.to_value(), Value::Bytes(r.0.to_vec())));
        }
        if let Some(e) = evidence {
            m.push((
                EVIDENCE.to_value(),
                Value::Map(vec![
                    (KIND.to_value(), Value::Text(e.kind.clone())),
                    (
                        CHAIN.to_value(),
                        Value::Array(e.chain.iter().cloned().map(Value::Bytes).collect()),
                    ),
                ]),
            ));
        }
        Unsigned::new(key, REQUEST_CONTENT_TYPE, cbor::encode(&mut Value::Map(m)))
    }

    /// Parses and checks the self-signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, LogError> {
        Self::parse_expecting(bytes, None)
    }

    /// [`KeyRequest::parse`], reusing `known` when the request carries
    /// exactly that key: an `add` event names the key its request carries,
    /// and decoding a point once is enough (log verification is hot).
    pub(super) fn parse_expecting(
        bytes: &[u8],
        known: Option<&PublicKey>,
    ) -> Result<Self, LogError> {
        let parsed = Parsed::parse(bytes, REQUEST_CONTENT_TYPE)
            .map_err(|_| LogError::BadRequest("not a key request envelope"))?;
        if !parsed.unprotected.is_empty() {
            return Err(LogError::BadRequest("unprotected header must be empty"));
        }
        let mut m = parsed
            .payload_map()
            .map_err(|_| LogError::BadRequest("payload"))?;
        let bad = LogError::BadRequest;
        let text = |m: &mut MapReader, k: &Key| m.text(k).ok().flatten().filter(|s| !s.is_empty());
        let account = text(&mut m, &ACCT).ok_or(bad("acct"))?;
        let agent = text(&mut m, &AGENT).ok_or(bad("agent"))?;
        let role = text(&mut m, &ROLE)
            .and_then(|r| Role::parse(&r))
            .ok_or(bad("role"))?;
        let key = m
            .take(&KEY)
            .and_then(|v| match known {
                Some(k) if k.to_cose_key_value() == v => Some(k.clone()),
                _ => PublicKey::from_cose_key_value(&v).ok(),
            })
            .ok_or(bad("key"))?;
        let time = m.int(&TIME).ok().flatten().ok_or(bad("time"))?;
        let replaces = m
            .array32(&REPLACES)
            .map_err(|_| bad("replaces is a kid"))?
            .map(Kid);
        let evidence = match m.take(&EVIDENCE) {
            None => None,
            Some(v) => Some(read_evidence(v).ok_or(bad("evidence"))?),
        };
        if !m.is_exhausted() {
            return Err(bad("unknown field"));
        }
        if parsed.kid != key.kid() {
            return Err(bad("not signed by the requested key"));
        }
        parsed
            .verify_canonical_signature(&key)
            .map_err(|_| bad("self-signature does not verify"))?;
        Ok(KeyRequest {
            bytes: bytes.to_vec(),
            account,
            agent,
            role,
            key,
            time,
            replaces,
            evidence,
        })
    }

    /// The request's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the request bytes (what a `reject` names).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The 6-digit code: first 4 bytes of the digest, big-endian, mod 10^6
    /// (shown to people as `123 456`, see [`format_code`]).
    pub fn verification_code(&self) -> String {
        let d = self.digest();
        let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 1_000_000;
        format!("{n:06}")
    }
}

/// `{"kind": text, "chain": [bstr…]}`, 1 to [`MAX_EVIDENCE_ITEMS`]
/// non-empty items, a kind of 1 to 64 printable ASCII characters.
fn read_evidence(v: Value) -> Option<RequestEvidence> {
    let mut m = MapReader::new(v)?;
    let kind = m
        .text(&KIND)
        .ok()
        .flatten()
        .filter(|k| (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))?;
    let Some(Value::Array(items)) = m.take(&CHAIN) else {
        return None;
    };
    if !m.is_exhausted() || items.is_empty() || items.len() > MAX_EVIDENCE_ITEMS {
        return None;
    }
    let chain = items
        .into_iter()
        .map(|i| match i {
            Value::Bytes(b) if !b.is_empty() => Some(b),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RequestEvidence { kind, chain })
}

/// A verification code as people read it: `123 456`. Anything that is not
/// six digits is returned as it is.
pub fn format_code(code: &str) -> String {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {}", &code[..3], &code[3..])
    } else {
        code.to_owned()
    }
}
