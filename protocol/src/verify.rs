//! The device verifier (DESIGN.md §7).
//!
//! Checks, in order: COSE structure and deterministic encoding; kid known
//! and active; alg matches the key; signature; iss/sub; aud or batch proof;
//! time window (with skew); body hash; replay. The first failure is the
//! answer, and each has its own [`VerifyError`] variant.
//!
//! A device that trusts several accounts first learns which one a command
//! claims with [`unverified_account`], which checks only the envelope's
//! structure and encoding and reads nothing but `iss`; everything else is
//! left to [`Verifier::check`].

use crate::batch::{InclusionProof, PROOF_LABEL};
use crate::command::{CONTENT_TYPE, Claims, ClaimsError, TIME_SYNC};
use crate::envelope::{EnvelopeError, Parsed};
use crate::key::{Algorithm, Kid};
use crate::log::{KeyStatus, Role, Trust};
use crate::replay::{ReplayCache, ReplayError};
use sha2::{Digest, Sha256};

/// Default tolerance between the signer's and the device's clocks, seconds.
pub const DEFAULT_SKEW: i64 = 120;
/// How long a `time-sync` command is remembered past `max(exp, now)`
/// (366 days): a device whose clock was wrong must not take the same one
/// twice, for at least a year of device time. These entries live in their
/// own bounded set of the [`ReplayCache`].
pub const TIME_SYNC_RETENTION: i64 = 366 * 24 * 60 * 60;

/// Why a command was refused. Each refusal is its own variant; none
/// carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a keybridge command envelope, or its claims are malformed.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// Well-formed but not deterministically encoded.
    #[error("command is not deterministically encoded ({0})")]
    NotDeterministic(&'static str),
    /// No key of this account has this kid.
    #[error("signed by an unknown key {0}")]
    UnknownKid(Kid),
    /// The key was part of the account and has been revoked.
    #[error("signed by key {kid}, revoked at key-log event {seq}")]
    RevokedKid {
        /// The key.
        kid: Kid,
        /// The revoking event.
        seq: u64,
    },
    /// The key was rotated out: another key of its agent replaced it.
    #[error("signed by key {kid}, replaced by key {by} at key-log event {seq} (rotated out)")]
    ReplacedKid {
        /// The old key.
        kid: Kid,
        /// The `add` event that replaced it.
        seq: u64,
        /// The key that replaced it.
        by: Kid,
    },
    /// The header's alg is not the key's algorithm.
    #[error("alg {alg} does not match the {key} key")]
    AlgMismatch {
        /// The header's algorithm.
        alg: Algorithm,
        /// The key's.
        key: Algorithm,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `iss` is not this device's account.
    #[error("command is for account {found:?}, this device trusts {expected:?}")]
    WrongAccount {
        /// This device's account.
        expected: String,
        /// The command's.
        found: String,
    },
    /// `sub` is not the agent who owns the signing key.
    #[error("command says agent {found:?} but the key belongs to {expected:?}")]
    WrongAgent {
        /// The key's agent.
        expected: String,
        /// The command's.
        found: String,
    },
    /// `aud` is another device.
    #[error("command is for device {found:?}, this is {expected:?}")]
    WrongDevice {
        /// This device.
        expected: String,
        /// The command's.
        found: String,
    },
    /// A batch command whose proof does not place this device in the batch.
    #[error("batch proof does not include this device")]
    BadBatchProof,
    /// Past `exp` (+ skew).
    #[error(
        "command expired {late} s ago; the device clock is {offset} s ahead of the signer's — if the device clock is wrong, send a time-sync command"
    )]
    Expired {
        /// Seconds past `exp`.
        late: i64,
        /// Device clock minus the command's `iat`.
        offset: i64,
    },
    /// Before `nbf` (− skew).
    #[error(
        "command is not valid for another {early} s; the device clock is {behind} s behind the signer's — if the device clock is wrong, send a time-sync command",
        behind = -offset
    )]
    NotYetValid {
        /// Seconds until `nbf`.
        early: i64,
        /// Device clock minus the command's `iat` (negative: behind).
        offset: i64,
    },
    /// The command's validity window is over 24 h (saturated at
    /// `i64::MAX` when it does not fit an `i64`).
    #[error("validity window of {0} s is longer than 24 h")]
    WindowTooLong(i64),
    /// The body does not hash to the signed `body` claim, or a body is
    /// missing or unexpected.
    #[error("body mismatch: {0}")]
    BodyMismatch(&'static str),
    /// Already accepted once.
    #[error("command was already accepted once (replay)")]
    Replay,
    /// The replay cache (or its time-sync set) is full of live entries.
    #[error("replay cache is full; refusing rather than forgetting")]
    ReplayCacheFull,
}

impl VerifyError {
    /// A stable, machine-readable name for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::NotDeterministic(_) => "not_deterministic",
            VerifyError::UnknownKid(_) => "unknown_kid",
            VerifyError::RevokedKid { .. } => "revoked_kid",
            VerifyError::ReplacedKid { .. } => "replaced_kid",
            VerifyError::AlgMismatch { .. } => "alg_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongAccount { .. } => "wrong_account",
            VerifyError::WrongAgent { .. } => "wrong_agent",
            VerifyError::WrongDevice { .. } => "wrong_device",
            VerifyError::BadBatchProof => "bad_batch_proof",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::WindowTooLong(_) => "window_too_long",
            VerifyError::BodyMismatch(_) => "body_mismatch",
            VerifyError::Replay => "replay",
            VerifyError::ReplayCacheFull => "replay_cache_full",
        }
    }

    /// One refusal of each kind, in the order of the variants; the details
    /// inside are placeholders.
    ///
    /// For tables that must cover every refusal (a device's exit codes, an
    /// API's problem codes) and their tests: a new variant does not compile
    /// until it has an example here, so no such table can miss it silently.
    pub fn examples() -> Vec<VerifyError> {
        // Each line is a variant's pattern and its example. The patterns
        // also make a `match`, which the compiler demands be exhaustive:
        // a variant without a line here is a build error.
        macro_rules! one_of_each {
            ($($variant:pat => $example:expr),+ $(,)?) => {{
                let exhaustive = |e: &VerifyError| match e {
                    $($variant => {})+
                };
                vec![$({
                    let example = $example;
                    exhaustive(&example);
                    debug_assert!(matches!(example, $variant), "an example of another variant");
                    example
                }),+]
            }};
        }
        let kid = Kid([0; 32]);
        let (expected, found) = (String::from("expected"), String::from("found"));
        one_of_each![
            VerifyError::Malformed(_) => VerifyError::Malformed("example".into()),
            VerifyError::NotDeterministic(_) => VerifyError::NotDeterministic("payload"),
            VerifyError::UnknownKid(_) => VerifyError::UnknownKid(kid),
            VerifyError::RevokedKid { .. } => VerifyError::RevokedKid { kid, seq: 1 },
            VerifyError::ReplacedKid { .. } => VerifyError::ReplacedKid { kid, seq: 1, by: kid },
            VerifyError::AlgMismatch { .. } => VerifyError::AlgMismatch {
                alg: Algorithm::Es256,
                key: Algorithm::Ed25519,
            },
            VerifyError::BadSignature => VerifyError::BadSignature,
            VerifyError::WrongAccount { .. } => VerifyError::WrongAccount {
                expected: expected.clone(),
                found: found.clone(),
            },
            VerifyError::WrongAgent { .. } => VerifyError::WrongAgent {
                expected: expected.clone(),
                found: found.clone(),
            },
            VerifyError::WrongDevice { .. } => VerifyError::WrongDevice { expected, found },
            VerifyError::BadBatchProof => VerifyError::BadBatchProof,
            VerifyError::Expired { .. } => VerifyError::Expired { late: 1, offset: 1 },
            VerifyError::NotYetValid { .. } => VerifyError::NotYetValid { early: 1, offset: -1 },
            VerifyError::WindowTooLong(_) => VerifyError::WindowTooLong(86_401),
            VerifyError::BodyMismatch(_) => VerifyError::BodyMismatch("example"),
            VerifyError::Replay => VerifyError::Replay,
            VerifyError::ReplayCacheFull => VerifyError::ReplayCacheFull,
        ]
    }
}

impl From<EnvelopeError> for VerifyError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::NotDeterministic(what) => VerifyError::NotDeterministic(what),
            other => VerifyError::Malformed(other.to_string()),
        }
    }
}

/// A command that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signing key.
    pub kid: Kid,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The signer's role.
    pub role: Role,
    /// The claims.
    pub claims: Claims,
    /// For a batch command, the number of devices in it (the signed size,
    /// which the proof's matches).
    pub batch_size: Option<u64>,
    /// For a `time-sync` accepted outside the window: device clock minus
    /// the signer's `iat`, seconds.
    pub clock_offset: Option<i64>,
}

/// Verifies commands for one device against one account's key log.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    log: &'a Trust,
    device_id: &'a str,
    skew: i64,
}

impl<'a> Verifier<'a> {
    /// A verifier for `device_id` trusting `log` (a [`crate::KeyLog`] or
    /// the [`Trust`] it leaves behind), with the default skew.
    pub fn new(log: &'a (impl AsRef<Trust> + ?Sized), device_id: &'a str) -> Self {
        Verifier {
            log: log.as_ref(),
            device_id,
            skew: DEFAULT_SKEW,
        }
    }

    /// Sets the clock skew tolerance (seconds, at least 0).
    pub fn with_skew(mut self, skew: i64) -> Self {
        self.skew = skew.max(0);
        self
    }

    /// Every check but replay, at time `now` (unix seconds). Never panics,
    /// whatever `envelope` holds.
    pub fn check(
        &self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let mut parsed = Parsed::parse(envelope, CONTENT_TYPE)?;
        let payload = parsed.payload_map()?;

        let active = match self.log.status(&parsed.kid) {
            KeyStatus::Active(k) => k,
            KeyStatus::Revoked(seq) => {
                return Err(VerifyError::RevokedKid {
                    kid: parsed.kid,
                    seq,
                });
            }
            KeyStatus::Replaced { seq, by } => {
                return Err(VerifyError::ReplacedKid {
                    kid: parsed.kid,
                    seq,
                    by,
                });
            }
            KeyStatus::Unknown => return Err(VerifyError::UnknownKid(parsed.kid)),
        };
        if parsed.alg != active.key.algorithm() {
            return Err(VerifyError::AlgMismatch {
                alg: parsed.alg,
                key: active.key.algorithm(),
            });
        }
        parsed
            .verify_signature(&active.key)
            .map_err(|_| VerifyError::BadSignature)?;

        // Only signed claims from here on.
        let claims = Claims::from_map(payload).map_err(|e| match e {
            ClaimsError::WindowTooLong(w) => VerifyError::WindowTooLong(w),
            other => VerifyError::Malformed(other.to_string()),
        })?;
        if claims.iss != self.log.account() {
            return Err(VerifyError::WrongAccount {
                expected: self.log.account().to_owned(),
                found: claims.iss,
            });
        }
        if claims.sub != active.agent {
            return Err(VerifyError::WrongAgent {
                expected: active.agent.clone(),
                found: claims.sub,
            });
        }

        // The proof is taken out of the (owned) header; whatever is left
        // must be nothing.
        let unprotected = &mut parsed.unprotected;
        let proof_header = unprotected
            .rest
            .iter()
            .position(|(l, _)| matches!(l, coset::Label::Text(t) if t == PROOF_LABEL))
            .map(|i| unprotected.rest.swap_remove(i));
        if !unprotected.is_empty() {
            return Err(VerifyError::Malformed(
                "unexpected unprotected header parameter".into(),
            ));
        }
        let batch_size = match (&claims.aud, &claims.devs, proof_header) {
            (Some(aud), None, None) => {
                if aud != self.device_id {
                    return Err(VerifyError::WrongDevice {
                        expected: self.device_id.to_owned(),
                        found: aud.clone(),
                    });
                }
                None
            }
            (None, Some(signed), Some((_, proof))) => {
                let proof = InclusionProof::from_value(&proof).ok_or(VerifyError::BadBatchProof)?;
                // The proof's tree_size is unsigned and shapes the walk:
                // it must be the signed size.
                if !proof.verify_signed(self.device_id, signed) {
                    return Err(VerifyError::BadBatchProof);
                }
                Some(signed.size)
            }
            (None, Some(_), None) => return Err(VerifyError::BadBatchProof),
            _ => {
                return Err(VerifyError::Malformed(
                    "a proof header on a single-device command".into(),
                ));
            }
        };

        // The times are signed but arbitrary: saturate rather than wrap
        // (order is preserved, so the comparisons below stay exact).
        let offset = now.saturating_sub(claims.iat);
        let mut clock_offset = None;
        let late = now.saturating_sub(claims.exp);
        let early = claims.nbf.saturating_sub(now);
        if late > self.skew || early > self.skew {
            if claims.cmd == TIME_SYNC {
                clock_offset = Some(offset);
            } else if late > self.skew {
                return Err(VerifyError::Expired { late, offset });
            } else {
                return Err(VerifyError::NotYetValid { early, offset });
            }
        }

        match (&claims.body, body) {
            (None, None) => {}
            (Some(_), None) => return Err(VerifyError::BodyMismatch("the command needs its body")),
            (None, Some(_)) => {
                return Err(VerifyError::BodyMismatch(
                    "a body was given but the command signs none",
                ));
            }
            (Some(expected), Some(b)) => {
                let got: [u8; 32] = Sha256::digest(b).into();
                if got != *expected {
                    return Err(VerifyError::BodyMismatch(
                        "the body's SHA-256 is not the signed one",
                    ));
                }
            }
        }

        Ok(Verified {
            kid: parsed.kid,
            alg: parsed.alg,
            role: active.role,
            claims,
            batch_size,
            clock_offset,
        })
    }

    /// [`Verifier::check`], then the replay check: on success (kid, cti) is
    /// recorded in `replay` (the caller persists it before acting). A
    /// `time-sync` is kept [`TIME_SYNC_RETENTION`] past `max(exp, now)` in
    /// the cache's time-sync set, any other command until `exp + skew`.
    pub fn verify(
        &self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: i64,
        replay: &mut ReplayCache,
    ) -> Result<Verified, VerifyError> {
        let v = self.check(envelope, body, now)?;
        let (kid, cti) = (v.kid, v.claims.cti);
        let inserted = if v.claims.cmd == TIME_SYNC {
            let keep_until = v.claims.exp.max(now).saturating_add(TIME_SYNC_RETENTION);
            replay.insert_time_sync(kid, cti, keep_until, now)
        } else {
            let keep_until = v.claims.exp.saturating_add(self.skew);
            replay.insert(kid, cti, keep_until, now)
        };
        inserted.map_err(|e| match e {
            ReplayError::Replay => VerifyError::Replay,
            _ => VerifyError::ReplayCacheFull,
        })?;
        Ok(v)
    }
}

/// The account a command *claims* to be for (its `iss`), to pick which
/// trust store to verify it against. Nothing is verified: never act on the
/// answer. Only the envelope's structure and deterministic encoding are
/// checked (the first checks of [`Verifier::check`], with the same errors:
/// [`VerifyError::NotDeterministic`] for a non-deterministic envelope or
/// payload) and only `iss` is read; every other refusal is left to
/// [`Verifier::check`], in its order. A payload without a text `iss` names
/// no trust store and is [`VerifyError::Malformed`].
pub fn unverified_account(envelope: &[u8]) -> Result<String, VerifyError> {
    let parsed = Parsed::parse(envelope, CONTENT_TYPE)?;
    let mut payload = parsed.payload_map()?;
    payload
        .text(&crate::command::ISS)
        .ok()
        .flatten()
        .ok_or_else(|| VerifyError::Malformed("claims: iss missing or not text".into()))
}
