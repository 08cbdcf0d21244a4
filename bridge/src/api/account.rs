//! `POST /v1/account/init`: the genesis event of a new account's key log,
//! signed by the account's first key (DESIGN.md §5).
//!
//! The recovery key's secret never reaches the daemon: the CLI generates it,
//! seals it in the age recovery file, and sends only its public COSE_Key.

use super::problem::ApiError;
use super::{Json, Shared};
use crate::audit;
use crate::wire::{AccountInit, AccountLog};
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{KeyLog, PublicKey};

/// `POST /v1/account/init`
pub async fn init(
    State(s): State<Shared>,
    Json(req): Json<AccountInit>,
) -> Result<Json<AccountLog>, ApiError> {
    let entry = s.keys.resolve(&req.key)?;
    let recovery = unhex(&req.recovery_key)
        .and_then(|b| PublicKey::from_cose_key_bytes(&b).ok())
        .ok_or_else(|| ApiError::BadRequest("recovery_key is the hex of a COSE_Key".into()))?;
    if recovery.kid() == entry.kid() {
        return Err(ApiError::BadRequest(
            "the recovery key must differ from the first key".into(),
        ));
    }
    let now = s.clock.now();
    let unsigned = KeyLog::genesis(
        &entry.stored.account,
        now,
        &entry.public,
        &entry.stored.agent,
        &recovery,
    );
    let signature = entry
        .sign(unsigned.to_be_signed().to_vec(), s.clock.boot())
        .await?;
    let event = unsigned
        .into_bytes(&signature)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Check what we hand out is a valid log, with our own verifier.
    let log = KeyLog::from_bytes(&event).map_err(|e| ApiError::Internal(e.to_string()))?;
    s.audit
        .append(&audit::Entry {
            time: now,
            kid: entry.kid().to_hex(),
            account: entry.stored.account.clone(),
            agent: entry.stored.agent.clone(),
            cmd: "key-log:genesis".into(),
            audience: None,
            batch_size: None,
            batch_root: None,
            cti: None,
            ..audit::Entry::default()
        })
        .map_err(|e| ApiError::Internal(format!("audit log: {e}")))?;
    Ok(Json(AccountLog {
        account: log.account().to_owned(),
        log: B64.encode(log.to_bytes()),
        head: hex(&log.head()),
        recovery_kid: recovery.kid().to_hex(),
    }))
}
