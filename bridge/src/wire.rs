//! The API's requests and answers (DESIGN.md §6) as types: the handlers
//! answer with them, the [`crate::client`] reads them, the CLI and the
//! tests use them. One definition of each JSON shape.
//!
//! Secrets (`secret` in [`CreateKey`] and [`Unlock`]) are `SecretString`s
//! on both sides: deserialized straight into one on the daemon, serialized
//! from one by the client into a buffer that is zeroized after sending.

use crate::unlock::Remember;
use keybridge_protocol::ArgValue;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// A key as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    /// Hex of the kid (RFC 9679 thumbprint).
    pub kid: String,
    /// The user's name for it.
    pub label: Option<String>,
    /// Backend name (`passphrase`, `pkcs11`, …).
    pub backend: String,
    /// The key reference.
    pub uri: String,
    /// `ed25519` or `p256`.
    pub alg: String,
    /// The commands' `iss`.
    pub account: String,
    /// The commands' `sub`.
    pub agent: String,
    /// When the key was created, unix seconds.
    pub created: i64,
    /// Default prompt frequency chosen at creation.
    pub remember: Option<Remember>,
    /// Whether a signature is allowed now.
    pub unlocked: bool,
    /// The unlock's mode, when unlocked.
    pub unlocked_mode: Option<Remember>,
    /// The unlock's end (wall clock, unix seconds), when unlocked.
    pub unlocked_until: Option<i64>,
    /// A signature is waiting for the user to touch the token.
    #[serde(default)]
    pub touch_pending: bool,
    /// Every signature needs the PIN again on the token itself (PKCS#11
    /// `CKA_ALWAYS_AUTHENTICATE`, a context-specific login, as PIV slot 9c
    /// keys have): the bridge gives it from the unlock. `None` when not
    /// known yet (a key opened without its PIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_each_signature: Option<bool>,
    /// A passphrase key's Argon2id costs: with the passphrase, account and
    /// agent, what makes the same key again (`None` for other backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfView>,
    /// The public key in every export format (`GET /v1/keys/{kid}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyExport>,
    /// Backend parameters (`GET /v1/keys/{kid}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Proof of hardware residency as the hardware gave it
    /// (`GET /v1/keys/{kid}` only, when there is any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceView>,
}

/// A passphrase key's Argon2id costs, as its record holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfView {
    /// Memory, KiB (`m`).
    pub memory_kib: u32,
    /// Passes (`t`).
    pub passes: u32,
    /// Lanes (`p`).
    pub lanes: u32,
    /// Set when the costs are below the policy's floor for new keys
    /// (`min_kdf_memory_mib`, `min_kdf_passes`): what falls short, naming
    /// the policy file. The key still signs; `status` and `doctor` warn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_policy: Option<String>,
}

/// Hardware residency evidence: what kind, and the certificates (DER,
/// base64), leaf first. Checked by the client against roots it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceView {
    /// E.g. `yubikey-piv-attestation`.
    pub kind: String,
    /// Base64 DER certificates, leaf first.
    pub chain: Vec<String>,
}

/// A public key for other tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyExport {
    /// Hex of the COSE_Key.
    pub cose: String,
    /// SubjectPublicKeyInfo PEM.
    pub pem: String,
    /// OpenSSH public-key line.
    pub ssh: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub socket: String,
    /// When it started (unix seconds).
    pub started: i64,
    /// Its clock (unix seconds).
    pub now: i64,
    /// The audit log's path.
    pub audit_log: String,
    /// Some key's signature is waiting for a touch.
    #[serde(default)]
    pub touch_pending: bool,
    /// The effective policy.
    pub policy: serde_json::Value,
    /// Every key.
    pub keys: Vec<KeyView>,
}

fn expose<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

fn expose_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => expose(secret, s),
        None => s.serialize_none(),
    }
}

/// `POST /v1/keys`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Backend name.
    pub backend: String,
    /// Account the key signs for.
    pub account: String,
    /// Agent the key belongs to.
    pub agent: String,
    /// Key reference (hardware keys).
    #[serde(default)]
    pub uri: Option<String>,
    /// A name for the key.
    #[serde(default)]
    pub label: Option<String>,
    /// Default prompt frequency.
    #[serde(default)]
    pub remember: Option<Remember>,
    /// `p256` or `ed25519`.
    #[serde(default)]
    pub alg: Option<String>,
    /// Use a key already on the token.
    #[serde(default)]
    pub existing: bool,
    /// Passphrase or PIN.
    #[serde(default, serialize_with = "expose_opt")]
    pub secret: Option<SecretString>,
    /// PIN policy of the new key (`once`, `always`, `never`), where the
    /// backend has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_policy: Option<String>,
    /// Touch policy (`never`, `always`, `cached`), where the backend has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touch_policy: Option<String>,
    /// Replace a key already in the slot.
    #[serde(default)]
    pub overwrite: bool,
    /// The token's management key (hex), where the backend needs one.
    #[serde(default, serialize_with = "expose_opt")]
    pub management_key: Option<SecretString>,
    /// Use the token's factory management key (the user said so).
    #[serde(default)]
    pub default_management_key: bool,
    /// Try the PIN even if it is the last attempt.
    #[serde(default)]
    pub spend_last_attempt: bool,
    /// Also make the new key persistent at the URI's handle (TPM).
    #[serde(default)]
    pub persistent: bool,
    /// A passphrase key's Argon2id memory, KiB (default 65536, 64 MiB;
    /// at most 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf_memory_kib: Option<u32>,
    /// A passphrase key's Argon2id passes (default 3; at most 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf_passes: Option<u32>,
    /// A passphrase key's Argon2id lanes (default 1; at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf_lanes: Option<u32>,
}

/// The answer to `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// False when the key existed already (same kid).
    pub new: bool,
    /// True when the token still has factory credentials (a YubiKey made
    /// with its default management key): the CLI warns.
    #[serde(default)]
    pub factory_credentials: bool,
}

/// `POST /v1/keys/{kid}/unlock`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unlock {
    /// PIN or passphrase.
    #[serde(serialize_with = "expose")]
    pub secret: SecretString,
    /// How long the unlock lasts.
    #[serde(default)]
    pub remember: Option<Remember>,
    /// Try the PIN even if it is the last attempt.
    #[serde(default)]
    pub spend_last_attempt: bool,
}

/// The answer to an unlock or a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The key.
    pub kid: String,
    /// Whether it is unlocked now.
    pub unlocked: bool,
    /// The unlock's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Remember>,
    /// The unlock's end (wall clock, unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// `POST /v1/sign`: exactly one of `key` (that key signs) and `agent` (the
/// agent's first key at hand signs, see [`Signed`]'s `fallback`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Label or kid prefix of the key that signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The agent whose first key at hand signs, in the user's
    /// `fallback_order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent's account: needed only when the agent has keys in several
    /// accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// One target device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Command kind.
    pub command: String,
    /// Arguments (strict: see [`Args`]).
    #[serde(default)]
    pub args: Args,
    /// Hex SHA-256 of a detached body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// Validity, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
}

/// A key a request by agent passed over because its token was not there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedKey {
    /// Hex kid.
    pub kid: String,
    /// Backend name.
    pub backend: String,
    /// The key's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Why it was not used, for a person.
    pub why: String,
}

/// Which key signed, in both shapes of [`Signed`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBy {
    /// Backend name of the key that signed (`kid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// True when a request by agent was signed by a later key than its
    /// first: the keys before it were not there (`skipped`).
    #[serde(default)]
    pub fallback: bool,
    /// The keys passed over, in the order they were tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedKey>,
}

/// One envelope line of `POST /v1/sign/batch`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine<'a> {
    /// The device.
    #[serde(borrow)]
    pub device: std::borrow::Cow<'a, str>,
    /// Its envelope, base64.
    #[serde(borrow)]
    pub envelope: std::borrow::Cow<'a, str>,
}

/// The last line of `POST /v1/sign/batch`'s answer: present only when
/// every envelope was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTrailer {
    /// Always true: the stream is whole.
    pub complete: bool,
    /// Number of devices (envelope lines before this one).
    pub size: usize,
    /// Hex Merkle root the command signed.
    pub root: String,
    /// Hex kid of the key that signed.
    pub kid: String,
    /// The audit line that records the signature.
    pub audit: BatchAudit,
    /// Which key signed.
    #[serde(flatten)]
    pub by: SignedBy,
}

/// Which audit line records a batch: its time and the command's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAudit {
    /// Unix seconds (the line's `time`).
    pub time: i64,
    /// Hex nonce of the command (the line's `cti`).
    pub cti: String,
}

/// The answer to `POST /v1/sign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Signed {
    /// A batch: one envelope per device.
    Batch {
        /// Hex kid.
        kid: String,
        /// Hex Merkle root.
        root: String,
        /// Base64 envelope per device id.
        envelopes: BTreeMap<String, String>,
        /// Which key signed.
        #[serde(flatten)]
        by: SignedBy,
    },
    /// One device.
    Single {
        /// Hex kid.
        kid: String,
        /// Base64 envelope.
        envelope: String,
        /// Which key signed.
        #[serde(flatten)]
        by: SignedBy,
    },
}

impl Signed {
    /// The signing key's hex kid.
    pub fn kid(&self) -> &str {
        match self {
            Signed::Batch { kid, .. } | Signed::Single { kid, .. } => kid,
        }
    }

    /// Which key signed.
    pub fn by(&self) -> &SignedBy {
        match self {
            Signed::Batch { by, .. } | Signed::Single { by, .. } => by,
        }
    }
}

/// `POST /v1/account/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInit {
    /// The account's first key.
    pub key: String,
    /// Hex of the recovery key's COSE_Key.
    pub recovery_key: String,
}

/// The answer to `POST /v1/account/init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLog {
    /// The account.
    pub account: String,
    /// Base64 of the key log (CBOR sequence).
    pub log: String,
    /// Hex of the log's head hash.
    pub head: String,
    /// Hex kid of the recovery key.
    pub recovery_kid: String,
}

/// An RFC 9457 problem with keybridge's stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:keybridge:problem:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// The stable code clients match on.
    pub code: String,
    /// What happened, for a person.
    pub detail: String,
    /// PIN attempts left, when the token says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_left: Option<u64>,
    /// Seconds until another attempt is taken (`too_many_attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The key concerned (hex kid), when the request did not name it: the
    /// locked key a request by agent stopped at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// A command's `args`, read strictly from JSON (see [`crate::api`]'s
/// `args` module): duplicate keys, floats and `null` are refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args(pub BTreeMap<String, ArgValue>);

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        arg_map_json(&self.0).serialize(s)
    }
}

/// The JSON of argument values (bytes, which JSON cannot carry and the API
/// never produces, as `{"hex": …}`).
pub fn arg_json(v: &ArgValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        ArgValue::Text(t) => Value::String(t.clone()),
        ArgValue::Int(i) => Value::from(*i),
        ArgValue::Bool(b) => Value::Bool(*b),
        ArgValue::Bytes(b) => serde_json::json!({ "hex": keybridge_protocol::key::hex(b) }),
        ArgValue::List(l) => Value::Array(l.iter().map(arg_json).collect()),
        ArgValue::Map(m) => arg_map_json(m),
    }
}

fn arg_map_json(m: &BTreeMap<String, ArgValue>) -> serde_json::Value {
    serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), arg_json(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_answers_round_trip_and_old_ones_still_read() {
        let by = SignedBy {
            backend: Some("passphrase".into()),
            label: Some("alice-pass".into()),
            fallback: true,
            skipped: vec![SkippedKey {
                kid: "ab".into(),
                backend: "pkcs11".into(),
                label: None,
                why: "not there".into(),
            }],
        };
        let single = Signed::Single {
            kid: "cd".into(),
            envelope: "AA==".into(),
            by: by.clone(),
        };
        let json = serde_json::to_value(&single).unwrap();
        assert_eq!(json["fallback"], true);
        assert_eq!(json["backend"], "passphrase");
        assert_eq!(json["skipped"][0]["backend"], "pkcs11");
        assert_eq!(serde_json::from_value::<Signed>(json).unwrap(), single);
        let batch = Signed::Batch {
            kid: "cd".into(),
            root: "ef".into(),
            envelopes: [("d1".to_owned(), "AA==".to_owned())].into(),
            by,
        };
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Signed>(&json).unwrap(), batch);
        // An answer of an older daemon: no `by` fields.
        let old: Signed = serde_json::from_str(r#"{"kid":"cd","envelope":"AA=="}"#).unwrap();
        assert_eq!(old.kid(), "cd");
        assert_eq!(old.by(), &SignedBy::default());
        let old: Signed =
            serde_json::from_str(r#"{"kid":"cd","root":"ef","envelopes":{"d":"AA=="}}"#).unwrap();
        assert!(matches!(old, Signed::Batch { .. }));
        // Without fallback, a key request's answer says so explicitly.
        let plain = Signed::Single {
            kid: "cd".into(),
            envelope: "AA==".into(),
            by: SignedBy::default(),
        };
        assert_eq!(serde_json::to_value(&plain).unwrap()["fallback"], false);
    }

    #[test]
    fn a_sign_request_names_a_key_or_an_agent() {
        let r: SignRequest = serde_json::from_str(
            r#"{"agent":"alice","account":"acme","command":"create-alert","device":"d"}"#,
        )
        .unwrap();
        assert_eq!(r.key, None);
        assert_eq!(r.agent.as_deref(), Some("alice"));
        let r: SignRequest =
            serde_json::from_str(r#"{"key":"alice","command":"create-alert","device":"d"}"#)
                .unwrap();
        assert_eq!(r.key.as_deref(), Some("alice"));
        // Nothing a client did not set is sent.
        let json = serde_json::to_value(&r).unwrap();
        assert!(
            json.get("agent").is_none() && json.get("account").is_none(),
            "{json}"
        );
    }
}
