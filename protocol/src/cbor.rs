//! Deterministic CBOR (RFC 8949 §4.2.1) on top of `ciborium`.
//!
//! We do not hand-write CBOR: `ciborium` encodes and decodes. What it does not
//! do is *order* map keys or *refuse* non-deterministic input, so this module
//! adds exactly that:
//!
//! - [`encode`] sorts every map by the bytewise order of its encoded keys
//!   before handing the value to `ciborium` (which already emits shortest-form
//!   integers and definite lengths);
//! - [`decode_deterministic`] decodes, then re-encodes and demands the very
//!   same bytes back. Indefinite lengths, non-minimal integers, unsorted or
//!   duplicate map keys and trailing bytes all fail that comparison.
//!
//! Values are [`ciborium::value::Value`]; the crate root re-exports
//! `ciborium` (`keybridge_protocol::ciborium`) so callers need not depend
//! on it themselves.

use ciborium::value::Value;
use std::cmp::Ordering;

/// Why bytes were not accepted as deterministic CBOR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The bytes are not one well-formed CBOR item.
    #[error("not well-formed CBOR")]
    Malformed,
    /// Bytes follow the CBOR item.
    #[error("trailing bytes after the CBOR item")]
    TrailingBytes,
    /// Well-formed, but not in deterministic encoding.
    #[error("CBOR is not deterministically encoded")]
    NotDeterministic,
    /// Floating-point values have no place in keybridge structures.
    #[error("floating-point values are not allowed")]
    Float,
}

/// Encodes `value` deterministically. Maps are sorted in place (recursively).
pub fn encode(value: &mut Value) -> Vec<u8> {
    sort_maps(value);
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out);
    out
}

/// Length of a CBOR item head (major type and argument) for the argument
/// `n`: for a byte string of `n` bytes, the bytes before its content.
pub const fn head_len(n: u64) -> usize {
    if n < 24 {
        1
    } else if n <= u8::MAX as u64 {
        2
    } else if n <= u16::MAX as u64 {
        3
    } else if n <= u32::MAX as u64 {
        5
    } else {
        9
    }
}

/// Encodes an already-sorted value.
fn encode_into(value: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail and every `Value` is serializable.
    ciborium::ser::into_writer(value, out).expect("CBOR encoding into a Vec cannot fail");
}

/// Sorts every map in `value` by the deterministic order of its keys.
pub fn sort_maps(value: &mut Value) {
    match value {
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                sort_maps(k);
                sort_maps(v);
            }
            entries.sort_by(|(a, _), (b, _)| cmp_keys(a, b));
        }
        Value::Array(items) => items.iter_mut().for_each(sort_maps),
        Value::Tag(_, inner) => sort_maps(inner),
        _ => {}
    }
}

/// Bytewise order of the deterministic encodings of two keys.
fn cmp_keys(a: &Value, b: &Value) -> Ordering {
    // Fast paths for the keys keybridge uses: small integers and short text.
    match (small_key_bytes(a), small_key_bytes(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            encode_into(a, &mut x);
            encode_into(b, &mut y);
            x.cmp(&y)
        }
    }
}

/// For integers in −24..=23 (one-byte encodings) the encoded form as a key
/// that sorts identically; `None` for anything else.
fn small_key_bytes(v: &Value) -> Option<[u8; 1]> {
    let Value::Integer(i) = v else { return None };
    let i = i128::from(*i);
    match i {
        0..=23 => Some([i as u8]),
        -24..=-1 => Some([0x20 | (-1 - i) as u8]),
        _ => None,
    }
}

/// Decodes one CBOR item and requires `bytes` to be its deterministic
/// encoding, with no trailing bytes and no floats.
pub fn decode_deterministic(bytes: &[u8]) -> Result<Value, CborError> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(|_| CborError::Malformed)?;
    if !rest.is_empty() {
        return Err(CborError::TrailingBytes);
    }
    check_deterministic(&value, bytes)?;
    Ok(value)
}

/// Decodes the first CBOR item of `bytes` (for CBOR sequences, RFC 8742) and
/// returns it with the number of bytes it took.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Value, usize), CborError> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(|_| CborError::Malformed)?;
    Ok((value, bytes.len() - rest.len()))
}

/// Requires `bytes` to be exactly the deterministic encoding of `value`.
pub fn check_deterministic(value: &Value, bytes: &[u8]) -> Result<(), CborError> {
    check_sorted_no_float(value)?;
    let mut again = Vec::with_capacity(bytes.len());
    encode_into(value, &mut again);
    if again != bytes {
        return Err(CborError::NotDeterministic);
    }
    Ok(())
}

fn check_sorted_no_float(value: &Value) -> Result<(), CborError> {
    match value {
        Value::Float(_) => Err(CborError::Float),
        Value::Map(entries) => {
            for pair in entries.windows(2) {
                // Strictly increasing: equal keys are duplicates.
                if cmp_keys(&pair[0].0, &pair[1].0) != Ordering::Less {
                    return Err(CborError::NotDeterministic);
                }
            }
            for (k, v) in entries {
                check_sorted_no_float(k)?;
                check_sorted_no_float(v)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_sorted_no_float),
        Value::Tag(_, inner) => check_sorted_no_float(inner),
        _ => Ok(()),
    }
}

/// Small typed accessors over a decoded CBOR map, so parsers read as a list
/// of fields instead of a `match` forest.
pub(crate) struct MapReader {
    entries: Vec<(Value, Value)>,
}

impl MapReader {
    pub(crate) fn new(value: Value) -> Option<Self> {
        match value {
            Value::Map(entries) => Some(Self { entries }),
            _ => None,
        }
    }

    /// Removes and returns the value under `key`.
    pub(crate) fn take(&mut self, key: &Key) -> Option<Value> {
        let pos = self.entries.iter().position(|(k, _)| key.matches(k))?;
        Some(self.entries.swap_remove(pos).1)
    }

    pub(crate) fn text(&mut self, key: &Key) -> Result<Option<String>, ()> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s)),
            Some(_) => Err(()),
        }
    }

    pub(crate) fn bytes(&mut self, key: &Key) -> Result<Option<Vec<u8>>, ()> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b)),
            Some(_) => Err(()),
        }
    }

    pub(crate) fn int(&mut self, key: &Key) -> Result<Option<i64>, ()> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => i64::try_from(i).map(Some).map_err(|_| ()),
            Some(_) => Err(()),
        }
    }

    pub(crate) fn array32(&mut self, key: &Key) -> Result<Option<[u8; 32]>, ()> {
        match self.bytes(key)? {
            None => Ok(None),
            Some(b) => b.try_into().map(Some).map_err(|_| ()),
        }
    }

    /// True when every field has been taken: unknown fields are refused.
    pub(crate) fn is_exhausted(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A map key: a CWT integer label or a text label.
pub(crate) enum Key {
    Int(i64),
    Text(&'static str),
}

impl Key {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Key::Int(a), Value::Integer(b)) => i128::from(*b) == i128::from(*a),
            (Key::Text(a), Value::Text(b)) => a == b,
            _ => false,
        }
    }

    pub(crate) fn to_value(&self) -> Value {
        match self {
            Key::Int(i) => Value::Integer((*i).into()),
            Key::Text(s) => Value::Text((*s).to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_sorts_keys_by_encoded_bytes() {
        let mut v = Value::Map(vec![
            (Value::Text("devs".into()), Value::Null),
            (Value::Text("cmd".into()), Value::Null),
            (Value::Integer(7.into()), Value::Null),
            (Value::Integer((-1).into()), Value::Null),
            (Value::Integer(1.into()), Value::Null),
            (Value::Text("args".into()), Value::Null),
            (Value::Integer(100.into()), Value::Null),
        ]);
        let bytes = encode(&mut v);
        let Value::Map(entries) = &v else { panic!() };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            vec![
                Value::Integer(1.into()),
                Value::Integer(7.into()),
                Value::Integer(100.into()),
                Value::Integer((-1).into()),
                Value::Text("cmd".into()),
                Value::Text("args".into()),
                Value::Text("devs".into()),
            ]
        );
        assert_eq!(decode_deterministic(&bytes).unwrap(), v);
    }

    #[test]
    fn head_len_matches_ciborium() {
        for n in [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            encode_into(&Value::Integer(n.into()), &mut out);
            assert_eq!(head_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn unsorted_map_is_refused() {
        // {2: 0, 1: 0}
        assert_eq!(
            decode_deterministic(&[0xa2, 0x02, 0x00, 0x01, 0x00]),
            Err(CborError::NotDeterministic)
        );
    }

    #[test]
    fn duplicate_key_is_refused() {
        assert_eq!(
            decode_deterministic(&[0xa2, 0x01, 0x00, 0x01, 0x00]),
            Err(CborError::NotDeterministic)
        );
    }

    #[test]
    fn non_minimal_integer_is_refused() {
        // 1 encoded on two bytes.
        assert_eq!(
            decode_deterministic(&[0x18, 0x01]),
            Err(CborError::NotDeterministic)
        );
    }

    #[test]
    fn indefinite_length_is_refused() {
        // [_ 1]
        assert_eq!(
            decode_deterministic(&[0x9f, 0x01, 0xff]),
            Err(CborError::NotDeterministic)
        );
    }

    #[test]
    fn trailing_bytes_and_floats_are_refused() {
        assert_eq!(
            decode_deterministic(&[0x01, 0x01]),
            Err(CborError::TrailingBytes)
        );
        assert_eq!(
            decode_deterministic(&[0xf9, 0x3c, 0x00]),
            Err(CborError::Float)
        );
        assert_eq!(decode_deterministic(&[0x5a]), Err(CborError::Malformed));
    }
}
