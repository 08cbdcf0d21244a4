//! A PIN or passphrase without a terminal: when a sign request (from a
//! console or a script) needs a key that is locked, and the user's config
//! names a pinentry program (`pinentry = "/usr/bin/pinentry-gnome3"`), the
//! daemon asks through it — the Assuan protocol gpg-agent speaks to the
//! same programs — then unlocks the key for its usual prompt frequency and
//! signs.
//!
//! The dialog says which key, on which token, and why: the command kind and
//! its device (or batch size), the account and the agent. One dialog at a
//! time; a request that waited for another's dialog finds the key unlocked
//! and asks nothing. Never spends a token's last PIN attempt (that needs
//! `keybridge unlock --spend-last-attempt` on a terminal). A cancelled
//! dialog, or none answered within [`TIMEOUT`], is `locked` with that
//! reason. The secret goes from the program into a `SecretString` and on
//! to the backend; it is never logged.
//!
//! The Assuan client is the `pinentry` crate's (used by rage and
//! age-plugin-yubikey).

use crate::api::problem::ApiError;
use crate::keys::KeyEntry;
use crate::unlock::Remember;
use keybridge_backends::BackendKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the person at the dialog.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// One dialog at a time.
static DIALOG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the request wants signed, for the dialog.
pub struct Why<'a> {
    /// The command kind.
    pub cmd: &'a str,
    /// The device, or `None` for a batch.
    pub device: Option<&'a str>,
    /// The batch size.
    pub batch: Option<usize>,
}

/// Unlocks `entry` through `program` for its prompt frequency (`mode`),
/// unless it is unlocked by the time the dialog is ours.
pub async fn unlock(
    program: &Path,
    entry: &Arc<KeyEntry>,
    mode: Remember,
    why: &Why<'_>,
    clock: &crate::clock::Clock,
) -> Result<(), ApiError> {
    let _dialog = DIALOG.lock().await;
    if entry.unlocked(clock.boot()).is_some() {
        return Ok(());
    }
    let what = match entry.backend() {
        BackendKind::Passphrase => "passphrase",
        _ => "PIN",
    };
    let target = match (why.device, why.batch) {
        (Some(d), _) => format!("for device {d}"),
        (None, Some(n)) => format!("for a batch of {n} devices"),
        (None, None) => String::new(),
    };
    let description = format!(
        "keybridge needs the {what} of {}{} to sign {} {target}.\nAccount {}, agent {}. It stays unlocked {}.",
        entry.describe(),
        token(entry),
        why.cmd,
        entry.stored.account,
        entry.stored.agent,
        match mode {
            Remember::EachTask => "for this signature only",
            Remember::Daily => "for 24 hours",
            Remember::Weekly => "for 7 days",
        }
    );
    let prompt = format!("{what}:");
    let program = program.to_owned();
    let asked = tokio::task::spawn_blocking(move || {
        let Some(mut input) = pinentry::PassphraseInput::with_binary(&program) else {
            return Err(ApiError::LockedKey {
                kid: String::new(),
                detail: format!(
                    "the pinentry program {} (config.toml) is missing or not executable",
                    program.display()
                ),
            });
        };
        input
            .with_title("keybridge")
            .with_description(&description)
            .with_prompt(&prompt)
            .with_timeout(TIMEOUT.as_secs() as u16)
            .required("keybridge needs it to sign");
        input.interact().map_err(|e| ApiError::LockedKey {
            kid: String::new(),
            detail: match e {
                pinentry::Error::Cancelled => "the PIN dialog was cancelled".to_owned(),
                pinentry::Error::Timeout => {
                    format!("no answer at the PIN dialog within {} s", TIMEOUT.as_secs())
                }
                other => format!("the pinentry program failed: {other}"),
            },
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let secret = asked.map_err(|e| match e {
        ApiError::LockedKey { detail, .. } => ApiError::LockedKey {
            kid: entry.kid_hex.clone(),
            detail: format!("{} is locked: {detail}", entry.describe()),
        },
        e => e,
    })?;
    let until = entry.unlock(secret, mode, false, clock).await?;
    tracing::info!(kid = %entry.kid(), mode = mode.name(), until, "key unlocked through pinentry");
    Ok(())
}

/// `, on TOKEN` for the dialog, from the key's URI (YubiKey serial, token
/// label, TPM).
fn token(entry: &KeyEntry) -> String {
    match entry.backend() {
        BackendKind::Passphrase => String::new(),
        BackendKind::Tpm => ", in this computer's TPM".into(),
        _ => format!(
            ", on {}",
            keybridge_backends::redact_uri(&entry.stored.record.uri)
        ),
    }
}
