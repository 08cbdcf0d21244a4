//! RFC 9457 problem details with keybridge's stable `code`s: the one place
//! where errors from policy, keys and backends become HTTP answers.

use crate::keys::KeyError;
use crate::wire::Problem;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keybridge_backends::BackendError;

/// An API error; `code()` is the stable name clients match on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key must be unlocked first.
    #[error("the key is locked; unlock it first (keybridge unlock KID)")]
    Locked,
    /// A key chosen by agent is there but locked (`sign --agent` never
    /// passes over it): which key, and what to do.
    #[error("{detail}")]
    LockedKey {
        /// Hex kid of the locked key.
        kid: String,
        /// What happened, naming the key.
        detail: String,
    },
    /// Wrong PIN or passphrase; nothing else changed.
    #[error("wrong PIN or passphrase")]
    WrongPin {
        /// Attempts left before the PIN blocks, when the token says.
        retries_left: Option<u32>,
    },
    /// One attempt is left and the caller did not agree to spend it.
    #[error(
        "only one PIN attempt is left; it was not tried. Retry with spend_last_attempt=true (CLI: --spend-last-attempt) if you are sure"
    )]
    LastAttempt,
    /// The PIN is blocked.
    #[error("the PIN is blocked; unblock it with the PUK or the token's admin tool")]
    PinBlocked,
    /// The token refuses PINs for a while (TPM lockout), with why and how
    /// long.
    #[error("the PIN cannot be tried now: {0}")]
    LockedOut(String),
    /// The token is not there.
    #[error("the token is not present: {0}")]
    TokenAbsent(String),
    /// The token wanted a touch that did not come.
    #[error("the token was not touched in time")]
    TouchTimeout,
    /// The administrator's policy does not allow it.
    #[error("not allowed by policy: {0}")]
    PolicyDenied(String),
    /// No such key.
    #[error("no key matches {0:?}")]
    UnknownKey(String),
    /// No key of the agent asked for (in the account asked for).
    #[error("{0}")]
    UnknownAgent(String),
    /// A name that several keys (or tokens) answer to.
    #[error("{0}")]
    Ambiguous(String),
    /// A token, key, module or file the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something with that name or id exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Wrong secrets in a row: the next attempt must wait.
    #[error("too many wrong attempts in a row; try again in {retry_after} s (nothing was tried)")]
    TooManyAttempts {
        /// Seconds until the next attempt is taken.
        retry_after: u64,
    },
    /// The verification code typed is not the request's.
    #[error("the verification code does not match the request's; nothing was signed")]
    WrongCode,
    /// The key log sent does not verify.
    #[error("the key log does not verify: {0}; nothing was signed")]
    LogInvalid(String),
    /// The key log would not take the event (not an admin, self-approval,
    /// a key already in the log, …).
    #[error("the key log refuses this event: {0}; nothing was signed")]
    LogRefused(String),
    /// The request did not arrive in time.
    #[error("the request was not received in time")]
    RequestTimeout,
    /// The request is malformed or impossible.
    #[error("{0}")]
    BadRequest(String),
    /// The caller is not the user this daemon serves.
    #[error("this daemon serves another user")]
    Forbidden,
    /// The loopback listener: a `Host` that is not a loopback name of its
    /// port (DNS rebinding).
    #[error("the Host header {0:?} is not this listener's loopback address")]
    BadHost(String),
    /// The loopback listener: a request without an allowed `Origin`.
    #[error("{0}")]
    OriginNotAllowed(String),
    /// The loopback listener: no token, or one no pairing has (never
    /// issued, or revoked).
    #[error("{0}")]
    NotPaired(String),
    /// The loopback listener: a token issued to another origin.
    #[error(
        "this pairing token was issued to another origin; pair this console (keybridge pair --origin {0})"
    )]
    TokenOtherOrigin(String),
    /// A route asked with a method it does not have.
    #[error("this route does not take {0} requests")]
    MethodNotAllowed(String),
    /// A hardware token did not answer in time (it hangs); nothing was
    /// done with it.
    #[error("{0}")]
    NotAnswering(String),
    /// Something failed on our side; details are in the daemon's log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Locked | ApiError::LockedKey { .. } => "locked",
            ApiError::WrongPin { .. } => "wrong_pin",
            ApiError::LastAttempt => "last_attempt",
            ApiError::PinBlocked | ApiError::LockedOut(_) => "pin_blocked",
            ApiError::TokenAbsent(_) => "token_absent",
            ApiError::TouchTimeout => "touch_timeout",
            ApiError::PolicyDenied(_) => "policy_denied",
            ApiError::UnknownKey(_) | ApiError::UnknownAgent(_) => "unknown_key",
            ApiError::Ambiguous(_) => "ambiguous",
            ApiError::NotFound(_) => "not_found",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::TooManyAttempts { .. } => "too_many_attempts",
            ApiError::WrongCode => "wrong_code",
            ApiError::LogInvalid(_) => "log_invalid",
            ApiError::LogRefused(_) => "log_refused",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden => "forbidden",
            ApiError::BadHost(_) => "bad_host",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::NotPaired(_) => "not_paired",
            ApiError::TokenOtherOrigin(_) => "token_other_origin",
            ApiError::NotAnswering(_) => "token_not_answering",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Locked | ApiError::LockedKey { .. } => StatusCode::LOCKED,
            ApiError::WrongPin { .. } => StatusCode::UNAUTHORIZED,
            ApiError::LastAttempt => StatusCode::CONFLICT,
            ApiError::PinBlocked | ApiError::LockedOut(_) => StatusCode::LOCKED,
            ApiError::TokenAbsent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TouchTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PolicyDenied(_)
            | ApiError::Forbidden
            | ApiError::BadHost(_)
            | ApiError::OriginNotAllowed(_)
            | ApiError::TokenOtherOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::NotPaired(_) => StatusCode::UNAUTHORIZED,
            ApiError::UnknownKey(_) | ApiError::UnknownAgent(_) | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Ambiguous(_) | ApiError::AlreadyExists(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::WrongCode => StatusCode::BAD_REQUEST,
            ApiError::LogInvalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::LogRefused(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAnswering(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Locked => ApiError::Locked,
            BackendError::WrongSecret { retries_left } => ApiError::WrongPin { retries_left },
            BackendError::LastAttempt { .. } => ApiError::LastAttempt,
            BackendError::PinBlocked => ApiError::PinBlocked,
            BackendError::LockedOut(why) => ApiError::LockedOut(why),
            BackendError::TokenAbsent(what) => ApiError::TokenAbsent(what),
            BackendError::TouchTimeout => ApiError::TouchTimeout,
            BackendError::InvalidSecret(why) | BackendError::KdfCosts(why) => {
                ApiError::BadRequest(why)
            }
            BackendError::Unsupported(why)
            | BackendError::UnsupportedMechanism(why)
            | BackendError::InvalidUri(why) => ApiError::BadRequest(why),
            BackendError::NotFound(what) => ApiError::NotFound(what),
            BackendError::AlreadyExists(what) => ApiError::AlreadyExists(what),
            BackendError::Ambiguous(what) => ApiError::Ambiguous(what),
            e @ BackendError::ModuleNotAllowed { .. } => ApiError::PolicyDenied(e.to_string()),
            e @ BackendError::NotAnswering { .. } => ApiError::NotAnswering(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Locked => ApiError::Locked,
            KeyError::Unknown(name) => ApiError::UnknownKey(name),
            e @ KeyError::Ambiguous(_) => ApiError::Ambiguous(e.to_string()),
            KeyError::LabelTaken(why) => ApiError::AlreadyExists(why),
            KeyError::TooManyAttempts { retry_after } => ApiError::TooManyAttempts { retry_after },
            KeyError::Backend(e) => e.into(),
            e @ KeyError::Storage(_) => ApiError::Internal(e.to_string()),
            KeyError::NoAgentKey(why) => ApiError::UnknownAgent(why),
            e @ KeyError::AgentInSeveralAccounts { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let body = Problem {
            kind: format!("urn:keybridge:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            code: self.code().to_owned(),
            detail: self.to_string(),
            retries_left: match &self {
                ApiError::WrongPin { retries_left } => retries_left.map(u64::from),
                ApiError::LastAttempt => Some(1),
                _ => None,
            },
            retry_after: match &self {
                ApiError::TooManyAttempts { retry_after } => Some(*retry_after),
                _ => None,
            },
            kid: match &self {
                ApiError::LockedKey { kid, .. } => Some(kid.clone()),
                _ => None,
            },
        };
        let body = serde_json::to_string(&body).expect("a problem serializes");
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::TooManyAttempts { retry_after } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}
