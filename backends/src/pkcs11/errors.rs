//! `CKR_*` codes → [`BackendError`]: the codes that mean the token went
//! away, the ones that mean it lacks a mechanism, and a short description
//! of the rest. PIN codes are read where the PIN is spent (`login.rs`).

use crate::BackendError;
use cryptoki::error::{Error as CkError, RvError};

/// The `CKR_*` code of a cryptoki error, if it is one.
pub(super) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Codes that mean the token (or our session on it) is gone.
pub(super) fn means_absent(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::TokenNotPresent
            | RvError::DeviceRemoved
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SlotIdInvalid
            | RvError::TokenNotRecognized
            | RvError::DeviceError
    )
}

/// Codes that mean the token does not do what was asked the way it was
/// asked: a mechanism (or its parameters) it does not have.
fn means_unsupported(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::MechanismInvalid | RvError::MechanismParamInvalid | RvError::CurveNotSupported
    )
}

/// `C_Sign: CKR_KEY_HANDLE_INVALID`: the function and the code, without
/// cryptoki's paragraph-long descriptions.
pub(super) fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            let function = format!("{function:?}");
            format!("C_{function}: {}", ckr_name(*rv))
        }
        other => other.to_string(),
    }
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
pub(super) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut name = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Maps an error of `what` (an operation, for the message):
/// [`BackendError::TokenAbsent`] for the codes of [`means_absent`],
/// [`BackendError::UnsupportedMechanism`] for a mechanism the token does
/// not have, [`BackendError::Failed`] otherwise.
pub(super) fn failure(what: &str, e: &CkError) -> BackendError {
    match rv(e) {
        Some(code) if means_absent(code) => {
            BackendError::TokenAbsent(format!("{what}: {}", ckr_name(code)))
        }
        Some(code) if means_unsupported(code) => BackendError::UnsupportedMechanism(format!(
            "{what}: the token does not support it ({})",
            ckr_name(code)
        )),
        _ => BackendError::Failed(format!("{what}: {}", describe(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_read_like_the_standard() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::SlotIdInvalid), "CKR_SLOT_ID_INVALID");
        assert_eq!(
            describe(&CkError::Pkcs11(
                RvError::TokenNotPresent,
                cryptoki::context::Function::Sign
            )),
            "C_Sign: CKR_TOKEN_NOT_PRESENT"
        );
    }

    #[test]
    fn absent_codes_become_token_absent() {
        for code in [
            RvError::TokenNotPresent,
            RvError::DeviceRemoved,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::SlotIdInvalid,
            RvError::TokenNotRecognized,
            RvError::DeviceError,
        ] {
            let e = CkError::Pkcs11(code, cryptoki::context::Function::Sign);
            assert!(matches!(failure("sign", &e), BackendError::TokenAbsent(_)));
        }
        let e = CkError::Pkcs11(RvError::GeneralError, cryptoki::context::Function::Sign);
        assert!(matches!(failure("sign", &e), BackendError::Failed(_)));
    }

    #[test]
    fn a_mechanism_the_token_lacks_is_an_unsupported_mechanism() {
        for code in [
            RvError::MechanismInvalid,
            RvError::MechanismParamInvalid,
            RvError::CurveNotSupported,
        ] {
            let e = CkError::Pkcs11(code, cryptoki::context::Function::SignInit);
            let mapped = failure("C_Sign", &e);
            assert!(
                matches!(&mapped, BackendError::UnsupportedMechanism(m) if m.contains(&ckr_name(code))),
                "{mapped:?}"
            );
        }
    }
}
