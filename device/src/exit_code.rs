//! The exit codes of `keybridge-device`: one per refusal, stable for the
//! scripts that run it. `--help` lists [`refusals`], and the device's tests
//! produce each of them through the real binary, so a code added here is
//! documented and tested or the build's tests fail.

use keybridge_protocol::{LogError, VerifyError};

/// Accepted (`verify`) or done.
pub const OK: u8 = 0;
/// A usage error: clap's own code, also for a refused `--device-id`.
pub const USAGE: u8 = 2;
/// A state or file problem: nothing trusted, an unreadable file.
pub const STATE: u8 = 3;
/// A malformed command (also one too large to read).
pub const MALFORMED: u8 = 10;
/// A key log that is neither a rollback nor a fork but does not verify
/// (also a stored log that no longer does).
pub const LOG_INVALID: u8 = 32;

/// The exit code of a refused command, and what `--help` says of it.
pub fn of_verify(e: &VerifyError) -> (u8, &'static str) {
    match e {
        VerifyError::Malformed(_) => (MALFORMED, "malformed command"),
        VerifyError::NotDeterministic(_) => (11, "not deterministically encoded"),
        VerifyError::UnknownKid(_) => (12, "unknown key"),
        VerifyError::RevokedKid { .. } => (13, "revoked key"),
        VerifyError::ReplacedKid { .. } => (26, "rotated-out key (replaced by a newer one)"),
        VerifyError::AlgMismatch { .. } => (14, "alg does not match the key"),
        VerifyError::BadSignature => (15, "bad signature"),
        VerifyError::WrongAccount { .. } => (16, "wrong account"),
        VerifyError::WrongAgent { .. } => (17, "wrong agent"),
        VerifyError::WrongDevice { .. } => (18, "wrong device"),
        VerifyError::BadBatchProof => (19, "bad batch proof"),
        VerifyError::Expired { .. } => (20, "expired (device clock ahead?)"),
        VerifyError::NotYetValid { .. } => (21, "not yet valid (device clock behind?)"),
        VerifyError::WindowTooLong(_) => (22, "validity window over 24 h"),
        VerifyError::BodyMismatch(_) => (23, "body mismatch"),
        VerifyError::Replay => (24, "replay"),
        VerifyError::ReplayCacheFull => (25, "replay cache full"),
    }
}

/// A command refused by the device's hardware policy (`policy set`): each
/// its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// The command kind requires a hardware key; the key carries no
    /// residency evidence (a passphrase key, an unattested key).
    NoEvidence,
    /// The key's evidence does not verify against the device's roots.
    EvidenceInvalid,
    /// The command kind requires touch; the key's attested touch policy is
    /// not `always` or `cached` (or it is a TPM key, which has no touch).
    NoTouch,
    /// The key's evidence is of a kind this device cannot check (neither a
    /// YubiKey PIV attestation nor a TPM2_Certify statement).
    Uncheckable,
}

impl PolicyRefusal {
    /// Every kind, for the table.
    pub const ALL: [PolicyRefusal; 4] = [
        PolicyRefusal::NoEvidence,
        PolicyRefusal::EvidenceInvalid,
        PolicyRefusal::NoTouch,
        PolicyRefusal::Uncheckable,
    ];
}

/// The exit code of a command refused by the hardware policy, and what
/// `--help` says of it.
pub fn of_policy(r: PolicyRefusal) -> (u8, &'static str) {
    match r {
        PolicyRefusal::NoEvidence => (40, "hardware key required"),
        PolicyRefusal::EvidenceInvalid => (41, "key evidence does not verify"),
        PolicyRefusal::NoTouch => (42, "touch policy required"),
        PolicyRefusal::Uncheckable => (43, "key evidence not checkable here"),
    }
}

/// The exit code of a refused key log, and what `--help` says of it.
pub fn of_log(e: &LogError) -> (u8, &'static str) {
    match e {
        LogError::Rollback { .. } => (30, "log update is a rollback"),
        LogError::Fork { .. } => (31, "log update is a fork"),
        _ => (LOG_INVALID, "log is invalid"),
    }
}

/// Every refusal's exit code with what it means, by code: one for each
/// kind of [`VerifyError`] (from [`VerifyError::examples`], which no
/// variant escapes), for each kind of key-log refusal and for each
/// hardware-policy refusal.
pub fn refusals() -> Vec<(u8, &'static str)> {
    let logs = [
        LogError::Rollback { have: 2, got: 1 },
        LogError::Fork { seq: 1 },
        LogError::Empty,
    ];
    let mut all: Vec<_> = VerifyError::examples()
        .iter()
        .map(of_verify)
        .chain(logs.iter().map(of_log))
        .chain(PolicyRefusal::ALL.into_iter().map(of_policy))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The exit-code table `--help` ends with.
pub fn help() -> String {
    let mut lines = vec![
        "Exit codes:".to_owned(),
        format!("{OK:>4}  accepted (verify) / done"),
        format!("{USAGE:>4}  usage error"),
        format!("{STATE:>4}  state or file problem (nothing trusted, unreadable file)"),
    ];
    // Two to a line, as they pair up (10 and 11, …, 30 and 31, 40 and 41),
    // each group of ten on lines of its own.
    let all = refusals();
    for group in all.chunk_by(|(a, _), (b, _)| a / 10 == b / 10) {
        for pair in group.chunks(2) {
            lines.push(match pair {
                [(a, what_a), (b, what_b)] => format!("{a:>4}  {what_a:<32}{b:>2}  {what_b}"),
                [(a, what_a)] => format!("{a:>4}  {what_a}"),
                _ => unreachable!("chunks of two"),
            });
        }
    }
    lines.join("\n")
}
