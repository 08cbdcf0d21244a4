//! The COSE_Sign1 envelope shared by commands, key-log events and key
//! requests (RFC 9052 §4.2), built and parsed with `coset`.
//!
//! Every keybridge envelope has the same protected header — `alg`, `kid`
//! (32-byte thumbprint) and a content type — and nothing else. The content
//! type separates the three kinds of signed object: a signature over a
//! command can never be passed off as a log event, because the protected
//! header is part of what is signed.

use crate::cbor;
use crate::key::{Algorithm, BadSignature, Kid, PublicKey};
use ciborium::value::Value;
use coset::{
    AsCborValue as _, CborSerializable as _, CoseSign1, Header, HeaderBuilder, ProtectedHeader,
    SignatureContext, TaggedCborSerializable as _,
};

/// Largest envelope accepted, before any parsing, in bytes (64 KiB): the
/// one size limit of signed objects. A device refuses larger files before
/// reading them whole; [`crate::UnsignedCommand::new`] refuses claims that
/// would not fit. A batch proof for a million devices is 20 hashes; 64 KiB
/// leaves room for large `args`.
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;

/// Encoded length of an empty unprotected header (`{}`).
pub(crate) const EMPTY_HEADER_LEN: usize = 1;

/// Why bytes are not a well-formed keybridge envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a tagged COSE_Sign1 of the keybridge shape; says which part.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Well-formed but not deterministically encoded; says which part.
    #[error("envelope is not deterministically encoded: {0}")]
    NotDeterministic(&'static str),
    /// The content type names another kind of signed object.
    #[error("content type is {found:?}, expected {expected:?}")]
    WrongContentType {
        /// What the envelope says.
        found: String,
        /// What the caller expected.
        expected: &'static str,
    },
}

/// The protected header bytes for (alg, kid, content type), deterministic.
pub(crate) fn protected_header(alg: Algorithm, kid: Kid, content_type: &str) -> ProtectedHeader {
    let header = HeaderBuilder::new()
        .algorithm(alg.cose())
        .key_id(kid.0.to_vec())
        .content_type(content_type.to_owned())
        .build();
    // coset writes alg (1), content type (3), kid (4) in that order, which is
    // the deterministic order; the unit test below pins it.
    let bytes = header
        .clone()
        .to_vec()
        .expect("a header of bytes and text always encodes");
    ProtectedHeader {
        original_data: Some(bytes),
        header,
    }
}

/// The bytes a signer signs: `["Signature1", protected, h'', payload]`.
pub(crate) fn to_be_signed(protected: &ProtectedHeader, payload: &[u8]) -> Vec<u8> {
    coset::sig_structure_data(
        SignatureContext::CoseSign1,
        protected.clone(),
        None,
        &[],
        payload,
    )
}

/// Normalizes a signature for the envelope: ES256 signatures leave low-S.
pub(crate) fn normalize_signature(
    alg: Algorithm,
    signature: &[u8],
) -> Result<Vec<u8>, BadSignature> {
    if signature.len() != 64 {
        return Err(BadSignature);
    }
    match alg {
        Algorithm::Ed25519 => Ok(signature.to_vec()),
        Algorithm::Es256 => {
            let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| BadSignature)?;
            Ok(sig.normalize_s().to_bytes().to_vec())
        }
    }
}

/// Assembles the tagged COSE_Sign1 bytes.
pub(crate) fn assemble(
    protected: ProtectedHeader,
    unprotected: Header,
    payload: Vec<u8>,
    signature: Vec<u8>,
) -> Vec<u8> {
    CoseSign1 {
        protected,
        unprotected,
        payload: Some(payload),
        signature,
    }
    .to_tagged_vec()
    .expect("an envelope of bytes always encodes")
}

/// A payload ready to sign with `key`: the backend signs
/// [`Unsigned::to_be_signed`] and hands back 64 bytes; this does the COSE.
#[derive(Debug, Clone)]
pub struct Unsigned {
    key: PublicKey,
    pub(crate) protected: ProtectedHeader,
    pub(crate) payload: Vec<u8>,
    tbs: Vec<u8>,
}

impl Unsigned {
    /// Prepares `payload` for signing by `key` under `content_type`.
    pub(crate) fn new(key: &PublicKey, content_type: &str, payload: Vec<u8>) -> Self {
        let protected = protected_header(key.algorithm(), key.kid(), content_type);
        let tbs = to_be_signed(&protected, &payload);
        Unsigned {
            key: key.clone(),
            protected,
            payload,
            tbs,
        }
    }

    /// The COSE `Sig_structure` bytes the backend signs (for ES256 the
    /// backend hashes them with SHA-256 first, as ECDSA does).
    pub fn to_be_signed(&self) -> &[u8] {
        &self.tbs
    }

    /// The key that must sign.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Length of the envelope [`Unsigned::into_bytes`] makes, with an
    /// unprotected header of `unprotected_len` encoded bytes instead of the
    /// empty one: tag 18 and array(4) (one byte each), the protected header
    /// and payload as byte strings, and the 64-byte signature.
    pub(crate) fn envelope_len(&self, unprotected_len: usize) -> usize {
        let bstr = |n: usize| cbor::head_len(n as u64) + n;
        let protected = self.protected.original_data.as_ref().map_or(0, Vec::len);
        2 + bstr(protected) + unprotected_len + bstr(self.payload.len()) + bstr(64)
    }

    /// Checks `signature` against the key and normalizes ES256 to low-S, so
    /// a backend fault never leaves as a signed object.
    pub(crate) fn checked_signature(&self, signature: &[u8]) -> Result<Vec<u8>, BadSignature> {
        let alg = self.key.algorithm();
        let sig = normalize_signature(alg, signature)?;
        self.key.verify(alg, &self.tbs, &sig)?;
        Ok(sig)
    }

    /// The tagged COSE_Sign1 with an empty unprotected header.
    pub fn into_bytes(self, signature: &[u8]) -> Result<Vec<u8>, BadSignature> {
        let sig = self.checked_signature(signature)?;
        Ok(assemble(
            self.protected,
            Header::default(),
            self.payload,
            sig,
        ))
    }
}

/// An envelope that passed the structural checks; nothing is verified yet.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    /// The raw COSE algorithm identifier, mapped.
    pub alg: Algorithm,
    pub kid: Kid,
    pub protected: ProtectedHeader,
    pub unprotected: Header,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Parsed {
    /// Structure and deterministic encoding of a tagged COSE_Sign1 whose
    /// content type must be `content_type`.
    pub(crate) fn parse(bytes: &[u8], content_type: &'static str) -> Result<Self, EnvelopeError> {
        use EnvelopeError::{Malformed, NotDeterministic};
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(Malformed("larger than 64 KiB"));
        }
        let value = cbor::decode_deterministic(bytes).map_err(|e| match e {
            cbor::CborError::NotDeterministic | cbor::CborError::Float => {
                NotDeterministic("envelope")
            }
            cbor::CborError::TrailingBytes => Malformed("trailing bytes"),
            cbor::CborError::Malformed => Malformed("not CBOR"),
        })?;
        let Value::Tag(18, inner) = value else {
            return Err(Malformed("not a tagged COSE_Sign1 (tag 18)"));
        };
        let sign1 =
            CoseSign1::from_cbor_value(*inner).map_err(|_| Malformed("not a COSE_Sign1"))?;
        let payload = sign1.payload.ok_or(Malformed("detached payload"))?;
        let protected = sign1.protected;
        let header = &protected.header;
        let original = protected
            .original_data
            .as_deref()
            .ok_or(Malformed("no protected header"))?;
        let alg = match &header.alg {
            Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => Algorithm::from_cose(*a as i64),
            Some(coset::RegisteredLabelWithPrivate::PrivateUse(a)) => Algorithm::from_cose(*a),
            _ => None,
        }
        .ok_or(Malformed("alg is not EdDSA, Ed25519, ES256 or ESP256"))?;
        let kid = Kid(header
            .key_id
            .as_slice()
            .try_into()
            .map_err(|_| Malformed("kid is not 32 bytes"))?);
        match &header.content_type {
            Some(coset::RegisteredLabel::Text(ct)) if ct == content_type => {}
            Some(coset::RegisteredLabel::Text(ct)) => {
                return Err(EnvelopeError::WrongContentType {
                    found: ct.clone(),
                    expected: content_type,
                });
            }
            _ => return Err(Malformed("content type missing or not text")),
        }
        if !header.crit.is_empty()
            || !header.iv.is_empty()
            || !header.partial_iv.is_empty()
            || !header.counter_signatures.is_empty()
            || !header.rest.is_empty()
        {
            return Err(Malformed("unexpected protected header parameter"));
        }
        // Re-encode the parsed header: equal bytes means deterministic and
        // nothing we did not understand.
        let again = header
            .clone()
            .to_vec()
            .map_err(|_| Malformed("protected header"))?;
        if again != original {
            return Err(NotDeterministic("protected header"));
        }
        Ok(Parsed {
            alg,
            kid,
            unprotected: sign1.unprotected,
            protected,
            payload,
            signature: sign1.signature,
        })
    }

    /// As [`Parsed::verify_signature`], and an ES256 signature must be in
    /// its low-S form (the form the builder makes). For objects chained or
    /// compared by their bytes — key-log events, key requests — where the
    /// high-S twin of a signature would be a second valid object that
    /// anyone could make without the key (a relay could fork a device's log).
    pub(crate) fn verify_canonical_signature(&self, key: &PublicKey) -> Result<(), BadSignature> {
        if normalize_signature(self.alg, &self.signature)? != self.signature {
            return Err(BadSignature);
        }
        self.verify_signature(key)
    }

    /// Verifies the signature with `key` (whose algorithm must match).
    pub(crate) fn verify_signature(&self, key: &PublicKey) -> Result<(), BadSignature> {
        let tbs = to_be_signed(&self.protected, &self.payload);
        key.verify(self.alg, &tbs, &self.signature)
    }

    /// The payload decoded as a deterministic CBOR map.
    pub(crate) fn payload_map(&self) -> Result<cbor::MapReader, EnvelopeError> {
        let value = cbor::decode_deterministic(&self.payload).map_err(|e| match e {
            cbor::CborError::NotDeterministic | cbor::CborError::Float => {
                EnvelopeError::NotDeterministic("payload")
            }
            _ => EnvelopeError::Malformed("payload is not one CBOR item"),
        })?;
        cbor::MapReader::new(value).ok_or(EnvelopeError::Malformed("payload is not a map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_header_is_deterministic() {
        let p = protected_header(Algorithm::Ed25519, Kid([1; 32]), "a/b");
        let bytes = p.original_data.unwrap();
        let value = cbor::decode_deterministic(&bytes).expect("deterministic");
        let Value::Map(entries) = value else { panic!() };
        let labels: Vec<i128> = entries
            .iter()
            .map(|(k, _)| match k {
                Value::Integer(i) => i128::from(*i),
                _ => panic!(),
            })
            .collect();
        assert_eq!(labels, vec![1, 3, 4]);
    }
}
