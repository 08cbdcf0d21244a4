//! Signed commands (DESIGN.md §2): claims, their deterministic payload, and
//! the builder that turns claims plus one 64-byte signature into envelopes.

use crate::batch::{Batch, BatchRoot, MAX_PROOF_HEADER_LEN};
use crate::cbor::{self, Key};
use crate::device_id::check_device_id;
use crate::envelope::{self, EnvelopeError, MAX_ENVELOPE_LEN};
use crate::key::{BadSignature, Kid, PublicKey};
use ciborium::value::Value;
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// Content type of a signed command's protected header.
pub const CONTENT_TYPE: &str = "application/keybridge-command+cbor";
/// Default validity of a command, in seconds.
pub const DEFAULT_TTL: i64 = 300;
/// Longest validity window (`exp - nbf`) a command may have, in seconds.
pub const MAX_VALIDITY: i64 = 24 * 60 * 60;
/// The command kinds keybridge knows; others must start with `x-`.
pub const KNOWN_COMMANDS: [&str; 6] = [
    "remote-control",
    "deploy-unattended",
    "run-script",
    "create-group",
    "create-alert",
    "time-sync",
];
/// The command a device accepts outside its time window (once).
pub const TIME_SYNC: &str = "time-sync";

pub(crate) const ISS: Key = Key::Int(1);
const SUB: Key = Key::Int(2);
const AUD: Key = Key::Int(3);
const EXP: Key = Key::Int(4);
const NBF: Key = Key::Int(5);
const IAT: Key = Key::Int(6);
const CTI: Key = Key::Int(7);
const CMD: Key = Key::Text("cmd");
const ARGS: Key = Key::Text("args");
const BODY: Key = Key::Text("body");
const DEVS: Key = Key::Text("devs");

/// A command argument value. No floats: they have no deterministic meaning
/// across languages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// Text.
    Text(String),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A list of values.
    List(Vec<ArgValue>),
    /// A nested map with text keys.
    Map(BTreeMap<String, ArgValue>),
}

impl ArgValue {
    fn to_value(&self) -> Value {
        match self {
            ArgValue::Text(s) => Value::Text(s.clone()),
            ArgValue::Int(i) => Value::Integer((*i).into()),
            ArgValue::Bool(b) => Value::Bool(*b),
            ArgValue::Bytes(b) => Value::Bytes(b.clone()),
            ArgValue::List(l) => Value::Array(l.iter().map(ArgValue::to_value).collect()),
            ArgValue::Map(m) => map_to_value(m),
        }
    }

    fn from_value(v: Value) -> Result<Self, ClaimsError> {
        Ok(match v {
            Value::Text(s) => ArgValue::Text(s),
            Value::Integer(i) => ArgValue::Int(
                i64::try_from(i).map_err(|_| ClaimsError::Malformed("argument integer range"))?,
            ),
            Value::Bool(b) => ArgValue::Bool(b),
            Value::Bytes(b) => ArgValue::Bytes(b),
            Value::Array(l) => ArgValue::List(
                l.into_iter()
                    .map(ArgValue::from_value)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Map(m) => ArgValue::Map(map_from_value(m)?),
            _ => return Err(ClaimsError::Malformed("argument of an unsupported type")),
        })
    }
}

fn map_to_value(m: &BTreeMap<String, ArgValue>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (Value::Text(k.clone()), v.to_value()))
            .collect(),
    )
}

fn map_from_value(m: Vec<(Value, Value)>) -> Result<BTreeMap<String, ArgValue>, ClaimsError> {
    m.into_iter()
        .map(|(k, v)| match k {
            Value::Text(k) => Ok((k, ArgValue::from_value(v)?)),
            _ => Err(ClaimsError::Malformed("argument keys are text")),
        })
        .collect()
}

/// The claims of a signed command (the COSE payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `iss` (1): account id.
    pub iss: String,
    /// `sub` (2): agent id inside the account.
    pub sub: String,
    /// `aud` (3): the one target device; `None` in a batch.
    pub aud: Option<String>,
    /// `exp` (4): not valid after, unix seconds.
    pub exp: i64,
    /// `nbf` (5): not valid before, unix seconds.
    pub nbf: i64,
    /// `iat` (6): issued at, unix seconds (the signer's clock).
    pub iat: i64,
    /// `cti` (7): random nonce; (kid, cti) is the replay key.
    pub cti: [u8; 16],
    /// `"cmd"`: the command kind.
    pub cmd: String,
    /// `"args"`: command arguments.
    pub args: BTreeMap<String, ArgValue>,
    /// `"body"`: SHA-256 of a detached body, when there is one.
    pub body: Option<[u8; 32]>,
    /// `"devs"`: a batch's size and Merkle root over its device ids,
    /// encoded `[size, root]` (see [`crate::batch`]).
    pub devs: Option<BatchRoot>,
}

/// Why claims cannot be signed or were refused on reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// A field is missing, of the wrong type, or unknown.
    #[error("malformed claims: {0}")]
    Malformed(&'static str),
    /// `exp - nbf` is over 24 hours (saturated at `i64::MAX` when it does
    /// not even fit an `i64`).
    #[error("validity window of {0} s is longer than the 24 h maximum")]
    WindowTooLong(i64),
    /// The envelope would be larger than [`MAX_ENVELOPE_LEN`], which no
    /// device accepts. For a batch, room for the largest inclusion proof
    /// ([`MAX_PROOF_HEADER_LEN`]) is counted in.
    #[error("the signed command would be {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// The envelope's length (with a batch's proof reserve).
        len: usize,
        /// [`MAX_ENVELOPE_LEN`].
        max: usize,
    },
    /// The command kind is not a known one nor `x-…`.
    #[error("unknown command kind {0:?} (known kinds, or x-… for extensions)")]
    UnknownCommand(String),
}

impl Claims {
    /// Checks everything a well-formed command needs: non-empty ids, one of
    /// `aud` (a valid device id) and `devs` (a size in 1..=`MAX_BATCH`),
    /// `nbf <= exp`, a window of at most 24 h, `nbf <= iat <= exp`, a known
    /// command kind. Never overflows, whatever the times.
    pub fn validate(&self) -> Result<(), ClaimsError> {
        use ClaimsError::Malformed as M;
        if self.iss.is_empty() || self.sub.is_empty() {
            return Err(M("empty account or agent"));
        }
        match (&self.aud, &self.devs) {
            (Some(aud), None) => {
                check_device_id(aud).map_err(|_| M("aud is not a valid device id"))?
            }
            (None, Some(devs)) if !devs.size_is_valid() => {
                return Err(M("devs size is not 1..=MAX_BATCH"));
            }
            (None, Some(_)) => {}
            _ => return Err(M("exactly one of aud and devs")),
        }
        if self.exp < self.nbf {
            return Err(M("exp before nbf"));
        }
        // exp >= nbf: the difference only fails to fit when it is huge.
        let window = self.exp.checked_sub(self.nbf).unwrap_or(i64::MAX);
        if window > MAX_VALIDITY {
            return Err(ClaimsError::WindowTooLong(window));
        }
        if self.iat < self.nbf || self.iat > self.exp {
            return Err(M("iat outside [nbf, exp]"));
        }
        if !is_valid_command(&self.cmd) {
            return Err(ClaimsError::UnknownCommand(self.cmd.clone()));
        }
        Ok(())
    }

    /// The deterministic CBOR payload.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut m = vec![
            (ISS.to_value(), Value::Text(self.iss.clone())),
            (SUB.to_value(), Value::Text(self.sub.clone())),
            (EXP.to_value(), Value::Integer(self.exp.into())),
            (NBF.to_value(), Value::Integer(self.nbf.into())),
            (IAT.to_value(), Value::Integer(self.iat.into())),
            (CTI.to_value(), Value::Bytes(self.cti.to_vec())),
            (CMD.to_value(), Value::Text(self.cmd.clone())),
        ];
        if let Some(aud) = &self.aud {
            m.push((AUD.to_value(), Value::Text(aud.clone())));
        }
        if !self.args.is_empty() {
            m.push((ARGS.to_value(), map_to_value(&self.args)));
        }
        if let Some(body) = &self.body {
            m.push((BODY.to_value(), Value::Bytes(body.to_vec())));
        }
        if let Some(devs) = &self.devs {
            m.push((DEVS.to_value(), devs.to_value()));
        }
        cbor::encode(&mut Value::Map(m))
    }

    /// Reads claims from a payload map (already checked deterministic).
    pub(crate) fn from_map(mut m: cbor::MapReader) -> Result<Self, ClaimsError> {
        use ClaimsError::Malformed as M;
        let claims = Claims {
            iss: m
                .text(&ISS)
                .map_err(|_| M("iss"))?
                .ok_or(M("iss missing"))?,
            sub: m
                .text(&SUB)
                .map_err(|_| M("sub"))?
                .ok_or(M("sub missing"))?,
            aud: m.text(&AUD).map_err(|_| M("aud"))?,
            exp: m.int(&EXP).map_err(|_| M("exp"))?.ok_or(M("exp missing"))?,
            nbf: m.int(&NBF).map_err(|_| M("nbf"))?.ok_or(M("nbf missing"))?,
            iat: m.int(&IAT).map_err(|_| M("iat"))?.ok_or(M("iat missing"))?,
            cti: m
                .bytes(&CTI)
                .map_err(|_| M("cti"))?
                .ok_or(M("cti missing"))?
                .try_into()
                .map_err(|_| M("cti is 16 bytes"))?,
            cmd: m
                .text(&CMD)
                .map_err(|_| M("cmd"))?
                .ok_or(M("cmd missing"))?,
            args: match m.take(&ARGS) {
                None => BTreeMap::new(),
                Some(Value::Map(a)) => map_from_value(a)?,
                Some(_) => return Err(M("args is a map")),
            },
            body: m.array32(&BODY).map_err(|_| M("body is 32 bytes"))?,
            devs: m
                .take(&DEVS)
                .map(|v| BatchRoot::from_value(&v).ok_or(M("devs is [size, root]")))
                .transpose()?,
        };
        if !m.is_exhausted() {
            return Err(M("unknown claim"));
        }
        claims.validate()?;
        Ok(claims)
    }
}

/// A command kind keybridge will sign: known, or `x-` plus lower-case
/// letters, digits and dashes.
pub fn is_valid_command(cmd: &str) -> bool {
    KNOWN_COMMANDS.contains(&cmd)
        || cmd.strip_prefix("x-").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Why a signature could not be assembled into an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// The claims are not signable.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// The signature is not 64 bytes of the key's algorithm, or does not
    /// verify against the key (a faulty backend or a wrong key).
    #[error("the signature does not verify against the key")]
    BadSignature,
    /// A batch command must carry the batch's size and root
    /// ([`Batch::signed_root`]); a single-device command none.
    #[error("devs claim does not match the batch (size and root)")]
    BatchMismatch,
}

impl From<BadSignature> for AssembleError {
    fn from(_: BadSignature) -> Self {
        AssembleError::BadSignature
    }
}

/// A command ready to sign: the backend signs [`UnsignedCommand::to_be_signed`]
/// and hands back 64 bytes; the builder does all of COSE.
#[derive(Debug, Clone)]
pub struct UnsignedCommand {
    inner: envelope::Unsigned,
    devs: Option<BatchRoot>,
}

impl UnsignedCommand {
    /// Validates `claims` and prepares the bytes to sign with `key`.
    /// Refuses claims whose envelope would be over [`MAX_ENVELOPE_LEN`]
    /// (for a batch, counting the largest possible inclusion proof), so
    /// that nothing signed is too large for a device to read.
    pub fn new(claims: &Claims, key: &PublicKey) -> Result<Self, ClaimsError> {
        claims.validate()?;
        let inner = envelope::Unsigned::new(key, CONTENT_TYPE, claims.to_payload());
        let unprotected = match claims.devs {
            None => envelope::EMPTY_HEADER_LEN,
            Some(_) => MAX_PROOF_HEADER_LEN,
        };
        let len = inner.envelope_len(unprotected);
        if len > MAX_ENVELOPE_LEN {
            return Err(ClaimsError::TooLarge {
                len,
                max: MAX_ENVELOPE_LEN,
            });
        }
        Ok(UnsignedCommand {
            inner,
            devs: claims.devs,
        })
    }

    /// The COSE `Sig_structure` bytes the backend signs (for ES256 the
    /// backend hashes them with SHA-256 first, as ECDSA does).
    pub fn to_be_signed(&self) -> &[u8] {
        self.inner.to_be_signed()
    }

    /// The key id that will be in the envelope.
    pub fn kid(&self) -> Kid {
        self.inner.key().kid()
    }

    /// The single-device envelope. The signature is verified before it is
    /// wrapped, so a backend fault never leaves the bridge as a command.
    pub fn into_envelope(self, signature: &[u8]) -> Result<Vec<u8>, AssembleError> {
        if self.devs.is_some() {
            return Err(AssembleError::BatchMismatch);
        }
        Ok(self.inner.into_bytes(signature)?)
    }

    /// One envelope per device of `batch`, all carrying the same signature,
    /// each with its inclusion proof in the unprotected header (`"kbp"`).
    /// The claims must have been built with `devs = batch.signed_root()`.
    pub fn into_batch_envelopes(
        self,
        signature: &[u8],
        batch: &Batch,
    ) -> Result<Vec<(String, Vec<u8>)>, AssembleError> {
        let mut out = Vec::with_capacity(batch.len());
        self.for_each_batch_envelope(signature, batch, |id, env| {
            out.push((id.to_owned(), env.to_vec()))
        })?;
        Ok(out)
    }

    /// [`UnsignedCommand::into_batch_envelopes`] without keeping them: `f`
    /// gets each device id (sorted order) and its envelope, in a buffer
    /// reused from one device to the next.
    pub fn for_each_batch_envelope(
        self,
        signature: &[u8],
        batch: &Batch,
        mut f: impl FnMut(&str, &[u8]),
    ) -> Result<(), AssembleError> {
        let mut envelopes = self.batch_envelopes(signature, batch)?;
        let mut env = Vec::new();
        while let Some(id) = envelopes.next_into(&mut env) {
            f(id, &env);
        }
        Ok(())
    }

    /// The envelopes of `batch` one at a time, at the pace of the caller
    /// (a stream to a client that reads slowly holds one envelope, not the
    /// fleet). `batch` is borrowed or owned (`Arc<Batch>`, `Batch`). The
    /// signature is checked once, here.
    pub fn batch_envelopes<B: Borrow<Batch>>(
        self,
        signature: &[u8],
        batch: B,
    ) -> Result<BatchEnvelopes<B>, AssembleError> {
        if self.devs != Some(batch.borrow().signed_root()) {
            return Err(AssembleError::BatchMismatch);
        }
        let sig = self.inner.checked_signature(signature)?;
        // Every envelope of a batch is the same but for its unprotected
        // header: encode the shared parts once (ciborium does every item;
        // only the two fixed bytes of tag 18 and a 4-array are ours), then
        // one small map per device. A unit test pins the result to coset's.
        let protected = self
            .inner
            .protected
            .original_data
            .clone()
            .expect("built with its bytes");
        let mut prefix = vec![0xd2, 0x84];
        encode_into(&Value::Bytes(protected), &mut prefix);
        let mut suffix = Vec::with_capacity(self.inner.payload.len() + 80);
        encode_into(&Value::Bytes(self.inner.payload.clone()), &mut suffix);
        encode_into(&Value::Bytes(sig), &mut suffix);
        Ok(BatchEnvelopes {
            prefix,
            suffix,
            batch,
            next: 0,
        })
    }
}

/// CBOR of `v` appended to `out`.
fn encode_into(v: &Value, out: &mut Vec<u8>) {
    ciborium::ser::into_writer(v, out).expect("CBOR into a Vec cannot fail")
}

/// The envelopes of a batch, one per call of
/// [`BatchEnvelopes::next_into`], in the batch's sorted order
/// ([`UnsignedCommand::batch_envelopes`]).
pub struct BatchEnvelopes<B> {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    batch: B,
    next: usize,
}

impl<B: Borrow<Batch>> BatchEnvelopes<B> {
    /// Writes the next device's envelope into `out` (cleared first) and
    /// returns its id; `None` after the last.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Option<&str> {
        let batch = self.batch.borrow();
        let i = self.next;
        let id = batch.device_ids().get(i)?;
        self.next += 1;
        out.clear();
        out.extend_from_slice(&self.prefix);
        let proof = Value::Map(vec![(
            Value::Text(crate::batch::PROOF_LABEL.into()),
            batch.proof(i).to_value(),
        )]);
        encode_into(&proof, out);
        out.extend_from_slice(&self.suffix);
        Some(id)
    }

    /// Envelopes not yet written.
    pub fn remaining(&self) -> usize {
        self.batch.borrow().len() - self.next
    }

    /// The batch.
    pub fn batch(&self) -> &Batch {
        self.batch.borrow()
    }
}

/// Reads the claims of an envelope without verifying anything: for
/// displaying what a file is. Never use the result to act.
pub fn inspect(bytes: &[u8]) -> Result<(Kid, Claims), EnvelopeError> {
    let parsed = envelope::Parsed::parse(bytes, CONTENT_TYPE)?;
    let claims =
        Claims::from_map(parsed.payload_map()?).map_err(|_| EnvelopeError::Malformed("claims"))?;
    Ok((parsed.kid, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coset::Header;

    #[test]
    fn batch_envelopes_are_byte_identical_to_coset_assembly() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let key = PublicKey::ed25519(sk.verifying_key().as_bytes()).unwrap();
        let batch = Batch::new((0..37).map(|i| format!("d{i}"))).unwrap();
        let claims = Claims {
            iss: "a".into(),
            sub: "b".into(),
            aud: None,
            exp: 10,
            nbf: 0,
            iat: 0,
            cti: [1; 16],
            cmd: "run-script".into(),
            args: BTreeMap::new(),
            body: None,
            devs: Some(batch.signed_root()),
        };
        let u = UnsignedCommand::new(&claims, &key).unwrap();
        use ed25519_dalek::Signer as _;
        let sig = sk.sign(u.to_be_signed()).to_bytes();
        let reference = u.clone();
        let envs = u.into_batch_envelopes(&sig, &batch).unwrap();
        for ((id, env), (id2, proof)) in envs.iter().zip(batch.proofs()) {
            assert_eq!(id, id2);
            let mut unprotected = Header::default();
            unprotected
                .rest
                .push((coset::Label::Text(crate::batch::PROOF_LABEL.into()), proof));
            let expected = envelope::assemble(
                reference.inner.protected.clone(),
                unprotected,
                reference.inner.payload.clone(),
                sig.to_vec(),
            );
            assert_eq!(env, &expected);
        }
    }

    #[test]
    fn command_kinds() {
        assert!(is_valid_command("run-script"));
        assert!(is_valid_command("x-reboot-2"));
        assert!(!is_valid_command("x-"));
        assert!(!is_valid_command("x-Reboot"));
        assert!(!is_valid_command("reboot"));
    }
}
