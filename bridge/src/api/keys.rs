//! `GET|POST /v1/keys`, `GET /v1/keys/{kid}`, `POST /v1/keys/{kid}/unlock`,
//! `POST /v1/keys/{kid}/lock`.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::clock::Clock;
use crate::keys::{KeyEntry, StoredKey};
use crate::policy::Remember;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keybridge_backends::{BackendError, BackendKind, KeyRecord, KeyUri, SecretString, Signer};
use keybridge_protocol::Algorithm;
use serde::Deserialize;
use serde_json::{Value, json};

/// The JSON a key is shown as.
pub fn key_json(e: &KeyEntry, clock: &Clock) -> Value {
    let r = &e.stored.record;
    let unlocked = e.unlocked(clock.boot());
    json!({
        "kid": e.kid().to_hex(),
        "label": r.label,
        "backend": r.backend.name(),
        "uri": r.uri,
        "alg": e.public.algorithm().name(),
        "account": e.stored.account,
        "agent": e.stored.agent,
        "created": r.created,
        "remember": e.stored.remember.map(Remember::name),
        "unlocked": unlocked.is_some(),
        "unlocked_mode": unlocked.map(|(m, _)| m.name()),
        "unlocked_until": unlocked.map(|(_, t)| t),
    })
}

/// `GET /v1/keys`
pub async fn list(State(s): State<Shared>) -> Json<Value> {
    Json(Value::Array(
        s.keys.all().iter().map(|e| key_json(e, &s.clock)).collect(),
    ))
}

/// `GET /v1/keys/{kid}`: with the public key in every export format.
pub async fn show(
    State(s): State<Shared>,
    Path(sel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    let mut v = key_json(&e, &s.clock);
    let comment = format!("{}@{}", e.stored.agent, e.stored.account);
    v["public_key"] = json!({
        "cose": keybridge_protocol::key::hex(&e.public.to_cose_key_bytes()),
        "pem": e.public.to_spki_pem(),
        "ssh": e.public.to_openssh(&comment),
    });
    v["params"] = e.stored.record.params.clone();
    Ok(Json(v))
}

/// Body of `POST /v1/keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    backend: String,
    account: String,
    agent: String,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    remember: Option<Remember>,
    /// `p256` (default for hardware) or `ed25519`.
    #[serde(default)]
    alg: Option<String>,
    /// Use a key that already exists on the token instead of generating.
    #[serde(default)]
    existing: bool,
    /// Passphrase or PIN; a PKCS#11 URI may name a `pin-source` instead.
    #[serde(default)]
    secret: Option<SecretString>,
}

/// `POST /v1/keys`: generate (or derive) a key in its backend.
pub async fn create(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Parsed by hand so that a malformed body's error can never echo the
    // secret back.
    let req: CreateRequest = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest(
            "expected {\"backend\", \"account\", \"agent\", \"secret\", optional \"uri\", \"label\", \"remember\", \"alg\", \"existing\"}".into(),
        ))?;
    if req.account.is_empty() || req.agent.is_empty() {
        return Err(ApiError::BadRequest(
            "account and agent must not be empty".into(),
        ));
    }
    if let Some(mode) = req.remember
        && !s.policy.allows(mode)
    {
        return Err(ApiError::PolicyDenied(format!(
            "prompt frequency {} is not allowed here",
            mode.name()
        )));
    }
    if let Some(label) = &req.label
        && (label.is_empty() || label.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::BadRequest(
            "a label must not be empty or look like a kid prefix".into(),
        ));
    }
    let backend: BackendKind = req
        .backend
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("unknown backend {:?}", req.backend)))?;
    let now = s.clock.now();
    let (signer, record): (Box<dyn Signer>, KeyRecord) = match backend {
        BackendKind::Passphrase => {
            if let Some(uri) = &req.uri {
                let expected = KeyUri::passphrase(&req.account, &req.agent)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let given: KeyUri = uri.parse().map_err(|e: keybridge_backends::UriError| {
                    ApiError::BadRequest(e.to_string())
                })?;
                if given != expected {
                    return Err(ApiError::BadRequest(format!(
                        "a passphrase key's URI is {expected}; it names the account and agent"
                    )));
                }
            }
            if req.existing || req.alg.as_deref().is_some_and(|a| a != "ed25519") {
                return Err(ApiError::BadRequest(
                    "a passphrase key is always a derived Ed25519 key".into(),
                ));
            }
            let secret = req.secret.ok_or_else(|| {
                ApiError::BadRequest("a passphrase key needs its passphrase".into())
            })?;
            let (account, agent, label) =
                (req.account.clone(), req.agent.clone(), req.label.clone());
            let (signer, record) = blocking(move || {
                keybridge_backends::passphrase::create(&account, &agent, &secret, label, now)
            })
            .await?;
            (Box::new(signer), record)
        }
        #[cfg(feature = "pkcs11")]
        BackendKind::Pkcs11 => {
            use keybridge_backends::pkcs11;
            let uri = req.uri.clone().ok_or_else(|| {
                ApiError::BadRequest(
                    "a PKCS#11 key needs --uri 'pkcs11:token=…;object=…?module-path=…'".into(),
                )
            })?;
            // The error names the URI without its query values: a refused
            // URI may carry a PIN (`pin-value`) or a path.
            uri.parse::<pkcs11::Pkcs11Uri>().map_err(|e| {
                ApiError::BadRequest(format!("{}: {e}", keybridge_backends::redact_uri(&uri)))
            })?;
            let alg = match req.alg.as_deref() {
                None | Some("p256") => Algorithm::Es256,
                Some("ed25519") => Algorithm::Ed25519,
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "alg {other:?} is not p256 or ed25519"
                    )));
                }
            };
            let pin = match req.secret {
                Some(pin) => Some(pin),
                None => pkcs11::pin_from_uri(&uri)?,
            };
            let (account, agent, label) =
                (req.account.clone(), req.agent.clone(), req.label.clone());
            let existing = req.existing;
            let (signer, record) = blocking(move || {
                if existing {
                    pkcs11::open_uri(&uri, pin.as_ref(), label, now)
                } else {
                    let pin = pin.ok_or_else(|| {
                        BackendError::InvalidSecret(
                            "generating a key on a token needs its PIN".into(),
                        )
                    })?;
                    pkcs11::create(&uri, &account, &agent, alg, &pin, label, now)
                }
            })
            .await?;
            (Box::new(signer), record)
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "the {} backend is not available in this build yet",
                other.name()
            )));
        }
    };
    // Creating derived the key (or logged in to the token); it stays
    // unusable until an unlock grants a prompt frequency, so it leaves
    // memory now.
    let mut signer = signer;
    signer.lock();
    let stored = StoredKey {
        record,
        account: req.account,
        agent: req.agent,
        remember: req.remember,
    };
    let (entry, created) = s.keys.add(stored, signer)?;
    let mut v = key_json(&entry, &s.clock);
    v["created"] = json!(created);
    tracing::info!(kid = %entry.kid(), created, "key created");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(v),
    ))
}

/// Body of `POST /v1/keys/{kid}/unlock`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockRequest {
    secret: SecretString,
    #[serde(default)]
    remember: Option<Remember>,
    #[serde(default)]
    spend_last_attempt: bool,
}

/// `POST /v1/keys/{kid}/unlock`
pub async fn unlock(
    State(s): State<Shared>,
    Path(sel): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    let req: UnlockRequest = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest(
            "expected {\"secret\", optional \"remember\", \"spend_last_attempt\"}".into(),
        )
    })?;
    let mode = req
        .remember
        .or(e.stored.remember.filter(|m| s.policy.allows(*m)))
        .unwrap_or(s.policy.default_remember);
    if !s.policy.allows(mode) {
        let allowed: Vec<_> = s.policy.allowed_remember.iter().map(|m| m.name()).collect();
        return Err(ApiError::PolicyDenied(format!(
            "prompt frequency {} is not allowed; allowed: {}",
            mode.name(),
            allowed.join(", ")
        )));
    }
    let until = e
        .unlock(req.secret, mode, req.spend_last_attempt, &s.clock)
        .await?;
    tracing::info!(kid = %e.kid(), mode = mode.name(), until, "key unlocked");
    Ok(Json(json!({
        "kid": e.kid().to_hex(),
        "unlocked": true,
        "mode": mode.name(),
        "until": until,
    })))
}

/// `POST /v1/keys/{kid}/lock`
pub async fn lock(
    State(s): State<Shared>,
    Path(sel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    e.lock().await;
    tracing::info!(kid = %e.kid(), "key locked");
    Ok(Json(json!({ "kid": e.kid().to_hex(), "unlocked": false })))
}

/// Runs a blocking backend call (a KDF, a token operation) off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}
