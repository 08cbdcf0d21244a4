//! The process-wide registry of loaded PKCS#11 modules, token lookup, and
//! the mapping of `CKR_*` codes to [`BackendError`].
//!
//! A PKCS#11 library may be initialised once per process (a second
//! `C_Initialize` answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`), so every key
//! on one module shares one [`Module`]: one `Pkcs11` context, initialised on
//! first use and kept for the life of the process.
//!
//! Re-initialising: some modules only look for tokens at `C_Initialize`
//! (SoftHSM2 reads its token directory there), so a token that was added or
//! came back is invisible until the module is finalized and initialised
//! again. keybridge does that, once per lookup and at most once per
//! [`REINIT_INTERVAL`], **only** when no slot matches a key's URI. The
//! trade-off: `C_Finalize` closes every session of
//! every key on that module and logs their tokens out. The signers notice
//! (each session carries the module's [`generation`](Module::with)) and
//! open a new session and log in again with their cached PIN, once, the
//! same way they recover from a token that was unplugged. A typo in a URI
//! therefore costs the other keys of that module a re-login, never a
//! signature.
//!
//! Every call into the module runs under a read lock and re-initialising
//! takes the write lock, so no call is ever in flight while the module is
//! finalized, and a session is only closed in the generation that opened it
//! (after a re-initialisation the same handle number may belong to another
//! key's new session).

use crate::BackendError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::{Slot, TokenInfo as CkTokenInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::uri::Pkcs11Uri;

/// One loaded, initialised PKCS#11 library.
pub(crate) struct Module {
    /// The path as the user wrote it (what goes back into URIs).
    path: PathBuf,
    state: RwLock<State>,
    /// One lock per token (by label and serial): operations of keys on one
    /// token run one at a time, because they share its login state.
    tokens: Mutex<HashMap<TokenName, Arc<Mutex<()>>>>,
}

/// A token's label and serial, as a key's URI gives them.
type TokenName = (Option<String>, Option<String>);

struct State {
    ctx: Pkcs11,
    /// Bumped at every re-initialisation: sessions of an older generation
    /// are gone.
    generation: u64,
    /// When the module was last re-initialised.
    reinitialized: Option<Instant>,
}

/// The shortest time between two re-initialisations of one module: requests
/// for a key whose token stays away do not reset the other keys' sessions
/// more often than this.
pub(crate) const REINIT_INTERVAL: Duration = Duration::from_secs(1);

type Registry = Mutex<HashMap<PathBuf, Arc<Module>>>;

fn registry() -> &'static Registry {
    static MODULES: OnceLock<Registry> = OnceLock::new();
    MODULES.get_or_init(Registry::default)
}

/// The module at `path`, loaded and initialised on first use.
///
/// Modules are keyed by their canonical path, so two spellings of one
/// library share one context. Loading a module runs its code: the path must
/// be absolute and comes from the user's own key reference or environment.
pub(crate) fn load(path: &Path) -> Result<Arc<Module>, BackendError> {
    if !path.is_absolute() {
        return Err(BackendError::Failed(format!(
            "the PKCS#11 module path {} is not absolute",
            path.display()
        )));
    }
    let key = std::fs::canonicalize(path).map_err(|e| {
        BackendError::Failed(format!(
            "cannot use the PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    // Loading runs the module's code: only modules on the allowlist.
    crate::modules::check_module(path)?;
    let mut modules = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(&key) {
        return Ok(Arc::clone(module));
    }
    let ctx = Pkcs11::new(&key).map_err(|e| {
        BackendError::Failed(format!(
            "cannot load the PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    initialize(&ctx, path)?;
    let module = Arc::new(Module {
        path: path.to_owned(),
        state: RwLock::new(State {
            ctx,
            generation: 0,
            reinitialized: None,
        }),
        tokens: Mutex::default(),
    });
    modules.insert(key, Arc::clone(&module));
    Ok(module)
}

fn initialize(ctx: &Pkcs11, path: &Path) -> Result<(), BackendError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process initialised it: share it.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(BackendError::Failed(format!(
            "cannot initialise the PKCS#11 module {}: {}",
            path.display(),
            describe(&e)
        ))),
    }
}

impl Module {
    /// The library path, as first given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The lock that serialises the keys of the token `uri` names. Take it
    /// before [`Module::with`], never inside.
    pub(crate) fn token_lock(&self, uri: &Pkcs11Uri) -> Arc<Mutex<()>> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            tokens
                .entry((uri.token.clone(), uri.serial.clone()))
                .or_default(),
        )
    }

    /// Runs `f` with the context and its current generation, under the read
    /// lock (no re-initialisation can happen meanwhile).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Pkcs11, u64) -> T) -> T {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&state.ctx, state.generation)
    }

    /// Finalizes and initialises the module again, unless someone already
    /// did since generation `seen` or less than [`REINIT_INTERVAL`] ago.
    pub(crate) fn reinitialize(&self, seen: u64) -> Result<(), BackendError> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let recent = state
            .reinitialized
            .is_some_and(|at| at.elapsed() < REINIT_INTERVAL);
        if state.generation != seen || recent {
            return Ok(());
        }
        state.reinitialized = Some(Instant::now());
        // Errors do not matter: whatever state it was in, we initialise anew.
        let _ = state.ctx.clone().finalize();
        state.generation += 1;
        initialize(&state.ctx, &self.path)
    }
}

/// Whether a token's description matches the token attributes of `uri`.
pub(crate) fn token_matches(uri: &Pkcs11Uri, info: &CkTokenInfo) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    info.token_initialized()
        && eq(&uri.token, info.label())
        && eq(&uri.manufacturer, info.manufacturer_id())
        && eq(&uri.serial, info.serial_number())
        && eq(&uri.model, info.model())
}

/// Checks the `library-*` attributes of `uri` against the module.
pub(crate) fn check_library(
    ctx: &Pkcs11,
    uri: &Pkcs11Uri,
    path: &Path,
) -> Result<(), BackendError> {
    if uri.library_manufacturer.is_none()
        && uri.library_description.is_none()
        && uri.library_version.is_none()
    {
        return Ok(());
    }
    let info = ctx
        .get_library_info()
        .map_err(|e| failure("C_GetInfo", &e))?;
    let version = info.library_version();
    let ok = uri
        .library_manufacturer
        .as_deref()
        .is_none_or(|m| m == info.manufacturer_id())
        && uri
            .library_description
            .as_deref()
            .is_none_or(|d| d == info.library_description())
        && uri
            .library_version
            .is_none_or(|(major, minor)| (major, minor) == (version.major(), version.minor()));
    if ok {
        Ok(())
    } else {
        Err(BackendError::Failed(format!(
            "the PKCS#11 module {} is \"{}\" \"{}\" {}.{}, not the library the URI names",
            path.display(),
            info.manufacturer_id(),
            info.library_description(),
            version.major(),
            version.minor()
        )))
    }
}

/// The slots whose token matches `uri`. Slots that fail to answer (a token
/// pulled out right now) are skipped.
pub(crate) fn matching_slots(
    ctx: &Pkcs11,
    uri: &Pkcs11Uri,
) -> Result<Vec<(Slot, CkTokenInfo)>, BackendError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| failure("C_GetSlotList", &e))?;
    Ok(slots
        .into_iter()
        .filter_map(|slot| ctx.get_token_info(slot).ok().map(|info| (slot, info)))
        .filter(|(_, info)| token_matches(uri, info))
        .collect())
}

/// The `CKR_*` code of a cryptoki error, if it is one.
pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Codes that mean the token (or our session on it) is gone.
pub(crate) fn means_absent(rv: RvError) -> bool {
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

/// `C_Sign: CKR_KEY_HANDLE_INVALID`: the function and the code, without
/// cryptoki's paragraph-long descriptions.
pub(crate) fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            let function = format!("{function:?}");
            format!("C_{function}: {}", ckr_name(*rv))
        }
        other => other.to_string(),
    }
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
pub(crate) fn ckr_name(rv: RvError) -> String {
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
/// [`BackendError::Failed`] otherwise.
pub(crate) fn failure(what: &str, e: &CkError) -> BackendError {
    match rv(e) {
        Some(code) if means_absent(code) => {
            BackendError::TokenAbsent(format!("{what}: {}", ckr_name(code)))
        }
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
    fn relative_or_missing_module_paths_are_refused() {
        assert!(matches!(
            load(Path::new("libsofthsm2.so")),
            Err(BackendError::Failed(m)) if m.contains("not absolute")
        ));
        assert!(matches!(
            load(Path::new("/nonexistent/keybridge/pkcs11.so")),
            Err(BackendError::Failed(m)) if m.contains("/nonexistent/keybridge/pkcs11.so")
        ));
    }
}
