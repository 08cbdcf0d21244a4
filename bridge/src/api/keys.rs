//! `GET|POST /v1/keys`, `GET /v1/keys/{kid}`, `POST /v1/keys/{kid}/unlock`,
//! `POST /v1/keys/{kid}/lock`, `GET /v1/backends/{backend}/tokens`.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::clock::Clock;
use crate::keys::{KeyEntry, StoredKey};
use crate::policy::Policy;
use crate::wire::{
    CreateKey, CreatedKey, EvidenceView, KdfView, KeyView, LockState, PublicKeyExport, Unlock,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use keybridge_backends::passphrase::{KdfCosts, PassphraseParams};
use keybridge_backends::{
    BackendError, BackendKind, CreateOptions, CreateSpec, KeyUri, TokenListing,
};
use keybridge_protocol::Algorithm;
use keybridge_protocol::key::hex;
use serde::Deserialize;

/// How a key is shown; a passphrase key's costs are held against
/// `policy`'s floor.
pub fn key_view(e: &KeyEntry, clock: &Clock, policy: &Policy) -> KeyView {
    let r = &e.stored.record;
    let unlocked = e.unlocked(clock.boot());
    KeyView {
        kid: e.kid_hex.clone(),
        label: r.label.clone(),
        backend: r.backend.name().to_owned(),
        uri: r.uri.clone(),
        alg: e.public.algorithm().name().to_owned(),
        account: e.stored.account.clone(),
        agent: e.stored.agent.clone(),
        created: r.created,
        remember: e.stored.remember,
        unlocked: unlocked.is_some(),
        unlocked_mode: unlocked.map(|(m, _)| m),
        unlocked_until: unlocked.map(|(_, t)| t),
        touch_pending: e.touch_pending(),
        login_each_signature: r
            .params
            .get("always_authenticate")
            .and_then(|v| v.as_bool()),
        kdf: kdf_view(e, policy),
        public_key: None,
        params: None,
        evidence: None,
    }
}

/// A passphrase key's Argon2id costs, and what of them is below the
/// policy's floor.
fn kdf_view(e: &KeyEntry, policy: &Policy) -> Option<KdfView> {
    let r = &e.stored.record;
    if r.backend != BackendKind::Passphrase {
        return None;
    }
    let costs = serde_json::from_value::<PassphraseParams>(r.params.clone())
        .ok()?
        .costs();
    let short = policy.kdf_floor.shortfalls(costs);
    Some(KdfView {
        memory_kib: costs.m_kib,
        passes: costs.t,
        lanes: costs.p,
        below_policy: (!short.is_empty()).then(|| short.join("; ")),
    })
}

/// The Argon2id costs a create request asks for: `None` when it names
/// none, else each one given or its default.
fn requested_kdf(req: &CreateKey) -> Option<KdfCosts> {
    if req.kdf_memory_kib.is_none() && req.kdf_passes.is_none() && req.kdf_lanes.is_none() {
        return None;
    }
    let d = KdfCosts::DEFAULT;
    Some(KdfCosts {
        m_kib: req.kdf_memory_kib.unwrap_or(d.m_kib),
        t: req.kdf_passes.unwrap_or(d.t),
        p: req.kdf_lanes.unwrap_or(d.p),
    })
}

/// `GET /v1/keys`
pub async fn list(State(s): State<Shared>) -> Json<Vec<KeyView>> {
    Json(
        s.keys
            .all()
            .iter()
            .map(|e| key_view(e, &s.clock, &s.policy))
            .collect(),
    )
}

/// `GET /v1/keys/{kid}`: with the public key in every export format.
pub async fn show(
    State(s): State<Shared>,
    Path(sel): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    let mut v = key_view(&e, &s.clock, &s.policy);
    let comment = format!("{}@{}", e.stored.agent, e.stored.account);
    v.public_key = Some(PublicKeyExport {
        cose: hex(&e.public.to_cose_key_bytes()),
        pem: e.public.to_spki_pem(),
        ssh: e.public.to_openssh(&comment),
    });
    v.params = Some(e.stored.record.params.clone());
    v.evidence = e.evidence().map(|ev| EvidenceView {
        kind: ev.kind,
        chain: ev
            .der_chain
            .iter()
            .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
            .collect(),
    });
    Ok(Json(v))
}

/// `POST /v1/keys`: generate (or derive, or open) a key in its backend.
pub async fn create(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    // Parsed by hand so that a malformed body's error can never echo the
    // secret back.
    let req: CreateKey = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest(
            "expected {\"backend\", \"account\", \"agent\", \"secret\", optional \"uri\", \"label\", \"remember\", \"alg\", \"existing\", \"pin_policy\", \"touch_policy\", \"overwrite\", \"management_key\", \"default_management_key\", \"spend_last_attempt\", \"persistent\", \"kdf_memory_kib\", \"kdf_passes\", \"kdf_lanes\"} (costs: whole numbers)".into(),
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
    // A refused URI is named without its query values: it may carry a PIN
    // (`pin-value`) or a path.
    let uri = req
        .uri
        .as_deref()
        .map(|u| {
            u.parse::<KeyUri>().map_err(|e| {
                ApiError::BadRequest(format!("{}: {e}", keybridge_backends::redact_uri(u)))
            })
        })
        .transpose()?;
    let alg = match req.alg.as_deref() {
        None => None,
        Some("p256") => Some(Algorithm::Es256),
        Some("ed25519") => Some(Algorithm::Ed25519),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "alg {other:?} is not p256 or ed25519"
            )));
        }
    };
    // A passphrase key's costs: within what keybridge allows, then at least
    // the policy's floor; checked before anything is derived.
    let kdf = requested_kdf(&req);
    if backend == BackendKind::Passphrase {
        let costs = kdf.unwrap_or(KdfCosts::DEFAULT);
        costs.check().map_err(ApiError::BadRequest)?;
        let short = s.policy.kdf_floor.shortfalls(costs);
        if !short.is_empty() {
            let floor = &s.policy.kdf_floor;
            return Err(ApiError::PolicyDenied(format!(
                "{}: a new passphrase key needs at least {} MiB and {} passes (CLI: --kdf-memory {}MiB --kdf-passes {})",
                short.join("; "),
                floor.min_kdf_memory_mib,
                floor.min_kdf_passes,
                floor.min_kdf_memory_mib.max(costs.m_kib.div_ceil(1024)),
                floor.min_kdf_passes.max(costs.t)
            )));
        }
    }
    let now = s.clock.now();
    let spec = CreateSpec {
        uri,
        backend,
        account: req.account.clone(),
        agent: req.agent.clone(),
        alg,
        label: req.label.clone(),
        existing: req.existing,
        secret: req.secret,
        now,
        options: CreateOptions {
            pin_policy: req.pin_policy,
            touch_policy: req.touch_policy,
            overwrite: req.overwrite,
            management_key: req.management_key,
            default_management_key: req.default_management_key,
            spend_last_attempt: req.spend_last_attempt,
            persistent: req.persistent,
            kdf,
        },
        state_dir: s.keys.keys_dir(),
    };
    let (signer, record) = blocking(move || keybridge_backends::create(spec)).await?;
    let stored = StoredKey {
        record,
        account: req.account,
        agent: req.agent,
        remember: req.remember,
    };
    let (entry, new) = s.keys.add(stored, signer)?;
    tracing::info!(kid = %entry.kid(), new, "key created");
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(CreatedKey {
            factory_credentials: entry.stored.record.params["factory_management_key"]
                == serde_json::Value::Bool(true),
            key: key_view(&entry, &s.clock, &s.policy),
            new,
        }),
    ))
}

/// `POST /v1/keys/{kid}/unlock`
pub async fn unlock(
    State(s): State<Shared>,
    Path(sel): Path<String>,
    body: Bytes,
) -> Result<Json<LockState>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    let req: Unlock = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest(
            "expected {\"secret\", optional \"remember\", \"spend_last_attempt\", \"persistent\"}"
                .into(),
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
    Ok(Json(LockState {
        kid: e.kid_hex.clone(),
        unlocked: true,
        mode: Some(mode),
        until: Some(until),
    }))
}

/// `POST /v1/keys/{kid}/lock`
pub async fn lock(
    State(s): State<Shared>,
    Path(sel): Path<String>,
) -> Result<Json<LockState>, ApiError> {
    let e = s.keys.resolve(&sel)?;
    e.lock().await;
    tracing::info!(kid = %e.kid(), "key locked");
    Ok(Json(LockState {
        kid: e.kid_hex.clone(),
        unlocked: false,
        mode: None,
        until: None,
    }))
}

/// Query of `GET /v1/backends/{backend}/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensQuery {
    /// Where to look (for PKCS#11: the module path; the allowlist applies).
    #[serde(default)]
    location: Option<String>,
}

/// `GET /v1/backends/{backend}/tokens`: what a backend shows (tokens and
/// the usable keys on them), like `pkcs11-tool -L -O`. Public objects only.
pub async fn tokens(
    Path(backend): Path<String>,
    Query(q): Query<TokensQuery>,
) -> Result<Json<Vec<TokenListing>>, ApiError> {
    let backend: BackendKind = backend
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("unknown backend {backend:?}")))?;
    let listing =
        blocking(move || keybridge_backends::list(backend, q.location.as_deref())).await?;
    Ok(Json(listing))
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
