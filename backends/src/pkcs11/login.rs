//! Logging in to a token: the PIN state flags read before and after
//! `C_Login` (blocked, final try → [`BackendError::PinBlocked`],
//! [`BackendError::LastAttempt`], `retries_left`), the one `C_Login` per
//! request, and PINs read from a URI's `pin-source` file.
//!
//! PINs are never retried: each function spends at most one attempt, and
//! the last attempt only when the caller says so.

use super::errors::{failure, rv};
use crate::BackendError;
use crate::uri::pkcs11::Pkcs11Uri;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use secrecy::SecretString;
use std::io::Read as _;
use std::path::Path;
use zeroize::Zeroizing;

/// The largest PIN file read.
const MAX_PIN_FILE: u64 = 4096;

/// The PIN state flags of a token.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PinFlags {
    locked: bool,
    final_try: bool,
}

impl PinFlags {
    pub(super) fn of(info: &CkTokenInfo) -> Self {
        PinFlags {
            locked: info.user_pin_locked(),
            final_try: info.user_pin_final_try(),
        }
    }
}

/// Before `C_Login`: a blocked PIN is not tried, the last attempt only if
/// the caller allows it.
pub(super) fn before_login(flags: PinFlags, spend_last: bool) -> Result<(), BackendError> {
    if flags.locked {
        Err(BackendError::PinBlocked)
    } else if flags.final_try && !spend_last {
        Err(BackendError::LastAttempt { retries_left: 1 })
    } else {
        Ok(())
    }
}

/// After `CKR_PIN_INCORRECT`, from the flags read again. Tokens only say
/// "final try" or "count low" (a wrong PIN since the last good one, which
/// is all SoftHSM2 reports): only the first gives a number.
fn after_wrong_pin(flags: Option<PinFlags>) -> BackendError {
    match flags {
        Some(f) if f.locked => BackendError::PinBlocked,
        Some(f) if f.final_try => BackendError::WrongSecret {
            retries_left: Some(1),
        },
        _ => BackendError::WrongSecret { retries_left: None },
    }
}

/// `C_Login` as the user with `pin`. If the token is already logged in
/// (another key of this process on the same token), log out and in again so
/// the PIN given is still checked.
pub(super) fn login(
    session: &Session,
    ctx: &Pkcs11,
    slot: Slot,
    pin: &SecretString,
) -> Result<(), BackendError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => Ok(()),
        Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {
            let _ = session.logout();
            session
                .login(UserType::User, Some(pin))
                .map_err(|e| login_error(ctx, slot, &e))
        }
        Err(e) => Err(login_error(ctx, slot, &e)),
    }
}

/// Why a context-specific login did not happen.
pub(super) enum ContextLoginError {
    /// The PIN rules or the PIN itself: what the caller reports.
    Refused(BackendError),
    /// The token or session: for the caller to tell apart (gone, logged
    /// out, …) as it does for `C_Sign`.
    Token(CkError),
}

/// `C_Login(CKU_CONTEXT_SPECIFIC)` with `pin`, right before a `C_Sign` with
/// a key marked `CKA_ALWAYS_AUTHENTICATE` (PIV slot 9c). The rules of a
/// user login apply: a blocked PIN is not tried and the last attempt is
/// never spent here — the PIN is one that already logged in, so a token at
/// its last attempt means someone else spent the others, and the user
/// decides (by unlocking again, with consent).
pub(super) fn context_login(
    session: &Session,
    ctx: &Pkcs11,
    slot: Slot,
    pin: &SecretString,
) -> Result<(), ContextLoginError> {
    let info = ctx.get_token_info(slot).map_err(ContextLoginError::Token)?;
    before_login(PinFlags::of(&info), false).map_err(ContextLoginError::Refused)?;
    session
        .login(UserType::ContextSpecific, Some(pin))
        .map_err(|e| match rv(&e) {
            Some(
                RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinLenRange
                | RvError::PinInvalid
                | RvError::PinExpired,
            ) => ContextLoginError::Refused(login_error(ctx, slot, &e)),
            _ => ContextLoginError::Token(e),
        })
}

fn login_error(ctx: &Pkcs11, slot: Slot, e: &CkError) -> BackendError {
    match rv(e) {
        Some(RvError::PinIncorrect) => {
            after_wrong_pin(ctx.get_token_info(slot).ok().map(|i| PinFlags::of(&i)))
        }
        Some(RvError::PinLocked) => BackendError::PinBlocked,
        // Not counted by the token: the PIN cannot be right.
        Some(RvError::PinLenRange | RvError::PinInvalid) => {
            BackendError::WrongSecret { retries_left: None }
        }
        // ykcs11 answers this, without a word to the card, for a PIN
        // outside 6–8 characters.
        Some(RvError::ArgumentsBad) => BackendError::InvalidSecret(
            "the token refused the PIN's form (CKR_ARGUMENTS_BAD; a PIV PIN has 6 to 8 characters)"
                .into(),
        ),
        Some(RvError::PinExpired) => BackendError::InvalidSecret(
            "the token's user PIN has expired: change it with the token's tools".into(),
        ),
        Some(RvError::UserPinNotInitialized) => BackendError::InvalidSecret(
            "the token has no user PIN yet: initialise it with the token's tools".into(),
        ),
        _ => failure("C_Login", e),
    }
}

/// The PIN a URI's `pin-source` names, if it has one (for callers that
/// would otherwise prompt). The file must not be readable by group or
/// others; one trailing newline is dropped.
///
/// Errors: [`BackendError::NotFound`] when the file is not there,
/// [`BackendError::InvalidSecret`] when it cannot be read or is not a
/// usable PIN file (readable by others, empty, too large, not UTF-8).
pub fn pin_from_uri(uri: &Pkcs11Uri) -> Result<Option<SecretString>, BackendError> {
    uri.pin_source.as_deref().map(read_pin_file).transpose()
}

fn read_pin_file(path: &Path) -> Result<SecretString, BackendError> {
    // The path is a query value of the URI: named, not shown.
    let fail = |why: String| BackendError::InvalidSecret(format!("the pin-source file: {why}"));
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            BackendError::NotFound("the pin-source file does not exist".into())
        }
        _ => fail(e.to_string()),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .map_err(|e| fail(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "readable by group or others (mode {:o}): chmod 600 it",
                mode & 0o777
            )));
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_PIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PIN_FILE {
        return Err(fail("too large for a PIN".into()));
    }
    for ending in [&b"\r\n"[..], b"\n"] {
        if bytes.ends_with(ending) {
            let len = bytes.len() - ending.len();
            bytes.truncate(len);
            break;
        }
    }
    if bytes.is_empty() {
        return Err(fail("empty".into()));
    }
    match std::str::from_utf8(&bytes) {
        Ok(pin) => Ok(SecretString::from(pin)),
        Err(_) => Err(fail("not UTF-8".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn blocked_pins_and_the_last_attempt_are_not_tried() {
        let flags = |locked, final_try| PinFlags { locked, final_try };
        assert!(before_login(flags(false, false), false).is_ok());
        assert!(matches!(
            before_login(flags(true, false), true),
            Err(BackendError::PinBlocked)
        ));
        assert!(matches!(
            before_login(flags(false, true), false),
            Err(BackendError::LastAttempt { retries_left: 1 })
        ));
        assert!(before_login(flags(false, true), true).is_ok());
    }

    #[test]
    fn a_wrong_pin_reports_what_the_token_flags_say() {
        let flags = |locked, final_try| Some(PinFlags { locked, final_try });
        assert!(matches!(
            after_wrong_pin(flags(false, false)),
            BackendError::WrongSecret { retries_left: None }
        ));
        assert!(matches!(
            after_wrong_pin(flags(false, true)),
            BackendError::WrongSecret {
                retries_left: Some(1)
            }
        ));
        assert!(matches!(
            after_wrong_pin(flags(true, false)),
            BackendError::PinBlocked
        ));
        assert!(matches!(
            after_wrong_pin(None),
            BackendError::WrongSecret { retries_left: None }
        ));
    }

    fn pin_file(dir: &Path, text: &[u8], mode: u32) -> Pkcs11Uri {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("pin");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Pkcs11Uri {
            pin_source: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn pin_files_are_read_once_checked_and_never_echoed() {
        let d = tempfile::tempdir().unwrap();
        assert!(pin_from_uri(&Pkcs11Uri::default()).unwrap().is_none());
        let pin = pin_from_uri(&pin_file(d.path(), b"4711\n", 0o600))
            .unwrap()
            .unwrap();
        assert_eq!(pin.expose_secret(), "4711");
        for (text, mode, why) in [
            (&b"4711\n"[..], 0o644, "chmod 600"),
            (b"\n", 0o600, "empty"),
            (b"\xff\xfe", 0o600, "not UTF-8"),
        ] {
            let err = pin_from_uri(&pin_file(d.path(), text, mode)).unwrap_err();
            assert!(
                matches!(&err, BackendError::InvalidSecret(m) if m.contains(why)),
                "{err:?}"
            );
            assert!(!err.to_string().contains("4711"), "{err}");
            assert!(
                !err.to_string().contains(&d.path().display().to_string()),
                "{err}"
            );
        }
        let missing = Pkcs11Uri {
            pin_source: Some(d.path().join("nothing")),
            ..Default::default()
        };
        assert!(matches!(
            pin_from_uri(&missing),
            Err(BackendError::NotFound(_))
        ));
    }
}
