//! A command's `args` as they arrive in JSON, read straight into
//! [`ArgValue`]s — strictly.
//!
//! `serde_json::Map` keeps the last of two equal keys without a word, so a
//! request `{"user": "alice", "user": "root"}` would be signed as one the
//! caller may not have meant (and another JSON reader may keep the first).
//! This visitor refuses duplicate keys at every depth, floats (no
//! deterministic meaning across languages), `null`, and integers outside
//! `i64`.

use keybridge_protocol::ArgValue;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

use crate::wire::Args;

impl<'de> serde::Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ArgVisitor)? {
            ArgValue::Map(m) => Ok(Args(m)),
            _ => Err(de::Error::custom("args is a JSON object")),
        }
    }
}

struct Arg(ArgValue);

impl<'de> serde::Deserialize<'de> for Arg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ArgVisitor).map(Arg)
    }
}

struct ArgVisitor;

impl<'de> Visitor<'de> for ArgVisitor {
    type Value = ArgValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, integer, boolean, list or object (no floats, no null)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgValue, E> {
        Ok(ArgValue::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ArgValue, E> {
        Ok(ArgValue::Text(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ArgValue, E> {
        Ok(ArgValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ArgValue, E> {
        Ok(ArgValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ArgValue, E> {
        i64::try_from(v).map(ArgValue::Int).map_err(|_| {
            E::custom(format!(
                "argument {v} is larger than a 64-bit signed integer"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ArgValue, E> {
        Err(E::custom(format!(
            "argument {v} is not an integer (floats are not allowed)"
        )))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ArgValue, E> {
        Err(E::custom("null arguments are not allowed"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgValue, A::Error> {
        let mut items = Vec::new();
        while let Some(Arg(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(ArgValue::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgValue, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let Arg(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "argument {key:?} is given twice"
                )));
            }
            out.insert(key, value);
        }
        Ok(ArgValue::Map(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Args, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        let e = parse(r#"{"user": "alice", "user": "root"}"#).unwrap_err();
        assert!(e.contains("\"user\" is given twice"), "{e}");
        let e = parse(r#"{"a": {"b": 1, "b": 2}}"#).unwrap_err();
        assert!(e.contains("\"b\" is given twice"), "{e}");
        let e = parse(r#"{"a": [{"c": 1, "c": 1}]}"#).unwrap_err();
        assert!(e.contains("\"c\" is given twice"), "{e}");
    }

    #[test]
    fn values_map_to_arg_values_and_floats_nulls_big_ints_are_refused() {
        let a = parse(r#"{"s": "x", "i": -3, "b": true, "l": [1, "y"], "m": {"k": 2}}"#).unwrap();
        assert_eq!(a.0["s"], ArgValue::Text("x".into()));
        assert_eq!(a.0["i"], ArgValue::Int(-3));
        assert_eq!(a.0["b"], ArgValue::Bool(true));
        assert_eq!(
            a.0["l"],
            ArgValue::List(vec![ArgValue::Int(1), ArgValue::Text("y".into())])
        );
        assert_eq!(
            a.0["m"],
            ArgValue::Map([("k".to_owned(), ArgValue::Int(2))].into())
        );
        assert!(parse(r#"{"f": 1.5}"#).is_err());
        assert!(parse(r#"{"n": null}"#).is_err());
        assert!(parse(r#"{"u": 9223372036854775808}"#).is_err());
        assert!(parse(r#"["not", "an", "object"]"#).is_err());
    }
}
