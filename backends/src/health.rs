//! What `keybridge doctor` asks of the machine, in the backends' terms:
//! the PC/SC readers pcscd shows (and whether another program holds a
//! card), and a TPM's dictionary-attack state. Read-only: nothing here
//! sends a PIN or changes a token.

/// A PC/SC reader as pcscd reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reader {
    /// The reader's name.
    pub name: String,
    /// A card is in it.
    pub card: bool,
    /// Another program holds the card exclusively (gpg's scdaemon, ykman,
    /// a PKCS#11 module): keybridge cannot use it until it lets go.
    pub exclusive: bool,
    /// The card is in use (shared), perhaps by keybridge itself.
    pub in_use: bool,
}

/// Why the readers could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcscError {
    /// pcscd is not running, or its socket is not reachable.
    #[error("pcscd is not running or its socket cannot be reached ({0})")]
    NoService(String),
    /// Any other PC/SC failure.
    #[error("PC/SC: {0}")]
    Other(String),
}

/// The readers pcscd shows now, with their cards' states (no waiting).
#[cfg(feature = "yubikey")]
pub fn pcsc_readers() -> Result<Vec<Reader>, PcscError> {
    use pcsc::{Context, Error, ReaderState, Scope, State};
    let ctx = Context::establish(Scope::User).map_err(|e| match e {
        Error::NoService | Error::ServiceStopped | Error::CommError | Error::NoReadersAvailable => {
            PcscError::NoService(e.to_string())
        }
        e => PcscError::Other(e.to_string()),
    })?;
    let names = match ctx.list_readers_owned() {
        Ok(n) => n,
        Err(Error::NoReadersAvailable) => return Ok(vec![]),
        Err(Error::NoService | Error::ServiceStopped) => {
            return Err(PcscError::NoService("it stopped".into()));
        }
        Err(e) => return Err(PcscError::Other(e.to_string())),
    };
    let mut states: Vec<ReaderState> = names
        .iter()
        .map(|n| ReaderState::new(n.clone(), State::UNAWARE))
        .collect();
    if !states.is_empty() {
        ctx.get_status_change(std::time::Duration::ZERO, &mut states)
            .map_err(|e| PcscError::Other(e.to_string()))?;
    }
    Ok(states
        .iter()
        .map(|s| {
            let e = s.event_state();
            Reader {
                name: s.name().to_string_lossy().into_owned(),
                card: e.contains(State::PRESENT),
                exclusive: e.contains(State::EXCLUSIVE),
                in_use: e.contains(State::INUSE),
            }
        })
        .collect())
}

/// The dictionary-attack state of the TPM at `tcti`.
#[cfg(feature = "tpm")]
pub fn tpm_lockout(tcti: &str) -> Result<crate::tpm::tpm::Lockout, crate::BackendError> {
    crate::tpm::tpm::Tpm::open(tcti)?.lockout()
}
