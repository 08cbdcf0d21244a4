//! The non-secret facts of a PKCS#11 key, as its key record's `params`.

use super::keygen::PrivateAttrs;
use super::module::Module;
use crate::BackendError;
use crate::record::{BackendKind, KeyRecord};
use crate::uri::pkcs11::Pkcs11Uri;
use cryptoki::slot::TokenInfo as CkTokenInfo;
use keybridge_protocol::{Algorithm, PublicKey};
use serde::{Deserialize, Serialize};

/// The non-secret facts of a PKCS#11 key: the key record's `params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pkcs11Params {
    /// The module path.
    pub module: String,
    /// Token label (CK_TOKEN_INFO.label).
    pub token: String,
    /// Token serial number.
    pub serial: String,
    /// Token manufacturer.
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// `CKA_ID`, lower-case hex.
    pub id: String,
    /// `CKA_LABEL`.
    pub object: String,
    /// The signing mechanism: `"CKM_ECDSA"` (over a host-side SHA-256) or
    /// `"CKM_EDDSA"`.
    pub mechanism: String,
    /// True when keybridge generated the key on the token
    /// ([`create`](super::create)); false for a key opened with
    /// [`open_uri`](super::open_uri).
    pub generated: bool,
    /// `CKA_LOCAL` of the private key (generated on the token), when read.
    #[serde(default)]
    pub local: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE` of the private key, when read.
    #[serde(default)]
    pub always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE` of the private key, when read.
    #[serde(default)]
    pub never_extractable: Option<bool>,
    /// `CKA_ALWAYS_AUTHENTICATE` of the private key, when read: every
    /// signature needs a context-specific login (PIV slot 9c).
    #[serde(default)]
    pub always_authenticate: Option<bool>,
    /// The account the key was created for ([`create`](super::create) only).
    #[serde(default)]
    pub account: Option<String>,
    /// The agent the key was created for ([`create`](super::create) only).
    #[serde(default)]
    pub agent: Option<String>,
}

pub(super) fn params_for(
    module: &Module,
    token: &CkTokenInfo,
    id: &[u8],
    object: &str,
    alg: Algorithm,
    attrs: Option<PrivateAttrs>,
) -> Pkcs11Params {
    Pkcs11Params {
        module: module.path().to_string_lossy().into_owned(),
        token: token.label().to_owned(),
        serial: token.serial_number().to_owned(),
        manufacturer: token.manufacturer_id().to_owned(),
        model: token.model().to_owned(),
        id: hex::encode(id),
        object: object.to_owned(),
        mechanism: match alg {
            Algorithm::Es256 => "CKM_ECDSA",
            Algorithm::Ed25519 => "CKM_EDDSA",
        }
        .to_owned(),
        generated: false,
        local: attrs.map(|a| a.local),
        always_sensitive: attrs.map(|a| a.always_sensitive),
        never_extractable: attrs.map(|a| a.never_extractable),
        always_authenticate: attrs.map(|a| a.always_authenticate),
        account: None,
        agent: None,
    }
}

/// The key record of a PKCS#11 key at `uri` (canonical).
pub(super) fn record(
    uri: &Pkcs11Uri,
    public: &PublicKey,
    label: Option<String>,
    now: i64,
    params: &Pkcs11Params,
) -> Result<KeyRecord, BackendError> {
    Ok(KeyRecord::new(
        uri.to_string(),
        BackendKind::Pkcs11,
        public,
        label,
        now,
        serde_json::to_value(params).map_err(|e| BackendError::Failed(e.to_string()))?,
    ))
}
