//! The key record: what the bridge writes to disk for each key. Public key
//! and reference only: nothing in it is secret.

use crate::uri::{KeyUri, UriError};
use keybridge_protocol::key::KeyError;
use keybridge_protocol::{Algorithm, Kid, PublicKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which backend holds a key. Serialized as `"passphrase"`, `"pkcs11"`,
/// `"yubikey"` or `"tpm"`, the names the CLI's `--backend` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The memorized key, derived from a passphrase ([`crate::passphrase`]).
    Passphrase,
    /// A PKCS#11 token (RFC 7512 URI).
    Pkcs11,
    /// A YubiKey PIV slot.
    Yubikey,
    /// A TPM 2.0 persistent key.
    Tpm,
}

impl BackendKind {
    /// All backends, in the order the CLI lists them.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Passphrase,
        BackendKind::Pkcs11,
        BackendKind::Yubikey,
        BackendKind::Tpm,
    ];

    /// The lower-case name (also the URI scheme).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Passphrase => "passphrase",
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Yubikey => "yubikey",
            BackendKind::Tpm => "tpm",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of `passphrase`, `pkcs11`, `yubikey`, `tpm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?} (passphrase, pkcs11, yubikey or tpm)")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

/// One key as the bridge stores it (JSON). Only public data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key reference (DESIGN.md §3), e.g. `passphrase:account=ACME;agent=alice`.
    pub uri: String,
    /// Which backend holds the key.
    pub backend: BackendKind,
    /// `"ed25519"` or `"p256"`.
    #[serde(with = "algorithm_name")]
    pub alg: Algorithm,
    /// Lower-case hex of the deterministic COSE_Key
    /// ([`PublicKey::to_cose_key_bytes`]); its SHA-256 is the kid.
    pub public_key: String,
    /// A name the user gave the key.
    #[serde(default)]
    pub label: Option<String>,
    /// When the key was created, unix seconds.
    pub created: i64,
    /// Backend-specific parameters (e.g. the passphrase KDF's costs and salt
    /// context), never secret.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// Why a key record's public key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// `public_key` is not hex.
    #[error("the record's public_key is not hex")]
    NotHex,
    /// `public_key` is not a COSE_Key keybridge reads.
    #[error("the record's public_key: {0}")]
    Key(#[from] KeyError),
    /// `alg` says one algorithm, the key is for another.
    #[error("the record says {recorded} but its public key is {actual}")]
    AlgorithmMismatch {
        /// What `alg` says.
        recorded: Algorithm,
        /// What the key is.
        actual: Algorithm,
    },
}

impl KeyRecord {
    /// A record for `public`, filling `alg` and `public_key` from it.
    pub fn new(
        uri: String,
        backend: BackendKind,
        public: &PublicKey,
        label: Option<String>,
        created: i64,
        params: serde_json::Value,
    ) -> Self {
        KeyRecord {
            uri,
            backend,
            alg: public.algorithm(),
            public_key: hex::encode(public.to_cose_key_bytes()),
            label,
            created,
            params,
        }
    }

    /// The public key, checked against `alg`.
    pub fn public(&self) -> Result<PublicKey, RecordError> {
        let bytes = hex::decode(&self.public_key).map_err(|_| RecordError::NotHex)?;
        let key = PublicKey::from_cose_key_bytes(&bytes)?;
        if key.algorithm() != self.alg {
            return Err(RecordError::AlgorithmMismatch {
                recorded: self.alg,
                actual: key.algorithm(),
            });
        }
        Ok(key)
    }

    /// The key id (RFC 9679 thumbprint of the public key).
    pub fn kid(&self) -> Result<Kid, RecordError> {
        Ok(self.public()?.kid())
    }

    /// The parsed key reference.
    pub fn key_uri(&self) -> Result<KeyUri, UriError> {
        self.uri.parse()
    }
}

mod algorithm_name {
    use keybridge_protocol::Algorithm;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(alg: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(alg.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        let name = String::deserialize(d)?;
        [Algorithm::Ed25519, Algorithm::Es256]
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown alg {name:?} (ed25519 or p256)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed_key() -> PublicKey {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        PublicKey::ed25519(sk.verifying_key().as_bytes()).unwrap()
    }

    #[test]
    fn record_round_trips_through_json_with_documented_field_names() {
        let key = ed_key();
        let record = KeyRecord::new(
            "passphrase:account=ACME;agent=alice".into(),
            BackendKind::Passphrase,
            &key,
            Some("laptop".into()),
            1_700_000_000,
            serde_json::json!({"m_kib": 65536}),
        );
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["backend"], "passphrase");
        assert_eq!(json["alg"], "ed25519");
        assert_eq!(json["label"], "laptop");
        assert_eq!(json["created"], 1_700_000_000);
        assert_eq!(
            json["public_key"].as_str().unwrap(),
            hex::encode(key.to_cose_key_bytes())
        );
        let back: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.public().unwrap(), key);
        assert_eq!(back.kid().unwrap(), key.kid());
    }

    #[test]
    fn record_with_unknown_backend_or_alg_is_refused() {
        let good = serde_json::to_value(KeyRecord::new(
            "tpm:handle=0x81000101".into(),
            BackendKind::Tpm,
            &ed_key(),
            None,
            0,
            serde_json::Value::Null,
        ))
        .unwrap();
        let mut bad = good.clone();
        bad["backend"] = "floppy".into();
        assert!(serde_json::from_value::<KeyRecord>(bad).is_err());
        let mut bad = good;
        bad["alg"] = "rsa".into();
        assert!(serde_json::from_value::<KeyRecord>(bad).is_err());
    }

    #[test]
    fn record_whose_alg_disagrees_with_its_key_is_refused() {
        let mut record = KeyRecord::new(
            "tpm:handle=0x81000101".into(),
            BackendKind::Tpm,
            &ed_key(),
            None,
            0,
            serde_json::Value::Null,
        );
        record.alg = Algorithm::Es256;
        assert_eq!(
            record.public(),
            Err(RecordError::AlgorithmMismatch {
                recorded: Algorithm::Es256,
                actual: Algorithm::Ed25519
            })
        );
        record.public_key = "zz".into();
        assert_eq!(record.public(), Err(RecordError::NotHex));
    }

    #[test]
    fn backend_names_parse_and_print() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.name().parse::<BackendKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.name())
            );
        }
        assert!("PKCS11".parse::<BackendKind>().is_err());
    }
}
