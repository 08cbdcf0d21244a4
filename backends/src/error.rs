//! [`BackendError`]: what went wrong in a backend, one variant per cause a
//! caller must tell apart.

/// What went wrong in a backend. Messages never contain a secret nor a
/// URI's query values (a URI is shown through [`crate::redact_uri`]); the
/// bridge maps each variant once to a stable problem code (DESIGN.md §6).
///
/// Everything a user can cause, by what they typed or by the state of
/// their tokens, has its own variant; [`BackendError::Failed`] is left for
/// bugs and library failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The key must be unlocked first (`locked`).
    #[error("the key is locked: unlock it first")]
    Locked,
    /// The PIN or passphrase is wrong (`wrong_pin`); hardware says how many
    /// attempts remain, a passphrase has no counter.
    #[error("wrong PIN or passphrase{}", retries_note(*.retries_left))]
    WrongSecret {
        /// Attempts left before the PIN blocks, when the backend counts them.
        retries_left: Option<u32>,
    },
    /// Only the last PIN attempt is left and the caller did not allow
    /// spending it (`wrong_pin` with `retries_left`).
    #[error(
        "only {retries_left} PIN attempt left: not trying it unless the caller allows spending the last attempt"
    )]
    LastAttempt {
        /// Attempts left (normally 1).
        retries_left: u32,
    },
    /// The PIN is blocked (`pin_blocked`).
    #[error("the PIN is blocked after too many wrong attempts: unblock or reset the token")]
    PinBlocked,
    /// The token of a key that was there is not there now (`token_absent`);
    /// the text says which. When it returns, the next request finds it.
    #[error("the token is not present: {0}")]
    TokenAbsent(String),
    /// The token refuses every PIN for a while (a TPM's dictionary-attack
    /// lockout): the message says how long and how to recover.
    #[error("the PIN cannot be tried now: {0}")]
    LockedOut(String),
    /// The user did not touch the key in time (`touch_timeout`).
    #[error("the security key was not touched in time")]
    TouchTimeout,
    /// No secret, or one that is not acceptable: a passphrase that is too
    /// short, a PIN file others can read, a token whose PIN expired.
    #[error("unacceptable secret: {0}")]
    InvalidSecret(String),
    /// Argon2id costs asked for a new passphrase key that keybridge does
    /// not allow (`bad_request`): the text names the cost and the allowed
    /// range. Nothing was derived or created.
    #[error("{0}")]
    KdfCosts(String),
    /// The backend or operation is not available in this build, or not for
    /// this kind of key (a passphrase key is always Ed25519), or the token
    /// cannot keep a key the way keybridge requires (sensitive, never
    /// extractable).
    #[error("{0}")]
    Unsupported(String),
    /// The token does not offer a mechanism the key needs (e.g. no
    /// `CKM_EDDSA` for an Ed25519 key, no Ed25519 curve).
    #[error("{0}")]
    UnsupportedMechanism(String),
    /// A key reference or location that cannot be used as given: a
    /// malformed URI, a URI of another backend, a `pkcs11:` URI without a
    /// module path, naming a non-key object, or with a relative module
    /// path; a module file that is not a PKCS#11 library.
    #[error("{0}")]
    InvalidUri(String),
    /// Nothing matches a reference: no token, no key, no such module file,
    /// a library other than the one the URI names, a private key that is
    /// not the half of the public key found.
    #[error("{0}")]
    NotFound(String),
    /// A key with that label or id is already on the token: nothing was
    /// created.
    #[error("{0}")]
    AlreadyExists(String),
    /// Several tokens or keys match a reference; the text lists them and
    /// says which attribute tells them apart.
    #[error("{0}")]
    Ambiguous(String),
    /// A PKCS#11 module that the allowlist does not name (`policy_denied`):
    /// it was not loaded.
    #[error(
        "the PKCS#11 module {path} is not allowed: it was not loaded. Allowed modules (pkcs11_modules in /etc/keybridge/policy.toml or ~/.config/keybridge/config.toml): {allowed}"
    )]
    ModuleNotAllowed {
        /// The module as named.
        path: String,
        /// The allowlist's patterns.
        allowed: String,
    },
    /// The token did not answer within the key's deadline
    /// (`token_not_answering`): a card, module or TPM that hangs. Nothing
    /// was signed; the request was given up, the token's other requests
    /// are refused at once until it answers again, and other keys are
    /// served meanwhile.
    #[error(
        "the token of key {key} did not answer within {waited_secs} s: nothing was done. Is it stuck? Check the token and its service (pcscd, the TPM, the PKCS#11 module); the key works again once the token answers"
    )]
    NotAnswering {
        /// The key's name (its label or the start of its kid).
        key: String,
        /// How long the request waited, seconds.
        waited_secs: u64,
    },
    /// A bug or a library failure: a broken record, an unexpected answer
    /// from a token, a worker that stopped.
    #[error("backend failure: {0}")]
    Failed(String),
}

fn retries_note(retries_left: Option<u32>) -> String {
    match retries_left {
        Some(1) => " (1 attempt left)".to_owned(),
        Some(n) => format!(" ({n} attempts left)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secret_message_counts_attempts() {
        let e = BackendError::WrongSecret {
            retries_left: Some(2),
        };
        assert_eq!(e.to_string(), "wrong PIN or passphrase (2 attempts left)");
        let e = BackendError::WrongSecret { retries_left: None };
        assert_eq!(e.to_string(), "wrong PIN or passphrase");
    }
}
