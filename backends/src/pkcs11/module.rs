//! The process-wide registry of loaded PKCS#11 modules, and which module a
//! key reference names.
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

use super::errors::describe;
use crate::BackendError;
use crate::uri::pkcs11::Pkcs11Uri;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The environment variable naming the PKCS#11 module when a URI has no
/// `module-path` (or [`crate::list`] no location).
pub const MODULE_ENV: &str = "KEYBRIDGE_PKCS11_MODULE";

/// The module a key reference names: its `module-path`, else `env` (the
/// value of [`MODULE_ENV`], passed in so that this stays a pure function).
pub(crate) fn module_path(uri: &Pkcs11Uri, env: Option<OsString>) -> Result<PathBuf, BackendError> {
    uri.module_path.clone().or_else(|| nonempty(env)).ok_or_else(|| {
        BackendError::InvalidUri(format!(
            "which PKCS#11 module? add ?module-path=/path/to/module.so to the pkcs11 URI or set {MODULE_ENV} (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
        ))
    })
}

/// The module a listing names: `location`, else `env` (as [`module_path`]).
pub(crate) fn location_path(
    location: Option<&str>,
    env: Option<OsString>,
) -> Result<PathBuf, BackendError> {
    location
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .or_else(|| nonempty(env))
        .ok_or_else(|| {
            BackendError::InvalidUri(format!(
                "which PKCS#11 module? give its path as the location or set {MODULE_ENV} (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            ))
        })
}

fn nonempty(env: Option<OsString>) -> Option<PathBuf> {
    env.filter(|v| !v.is_empty()).map(PathBuf::from)
}

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
        return Err(BackendError::InvalidUri(format!(
            "the PKCS#11 module path {} is not absolute",
            path.display()
        )));
    }
    // Missing is said before the allowlist is: "not allowed" would send
    // the user to the policy for a typo.
    let key = std::fs::canonicalize(path).map_err(|e| {
        BackendError::NotFound(format!(
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
    let ctx = open_library(&key, path)?;
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

/// Loads the library at `canonical` (named `path` by the user). A file
/// that is there (and allowed) but does not load is not a PKCS#11 library,
/// or not one for this machine: the reference names the wrong file.
fn open_library(canonical: &Path, path: &Path) -> Result<Pkcs11, BackendError> {
    Pkcs11::new(canonical).map_err(|e| {
        BackendError::InvalidUri(format!(
            "cannot load the PKCS#11 module {}: {e}",
            path.display()
        ))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_or_missing_module_paths_are_refused() {
        assert!(matches!(
            load(Path::new("libsofthsm2.so")),
            Err(BackendError::InvalidUri(m)) if m.contains("not absolute")
        ));
        assert!(matches!(
            load(Path::new("/nonexistent/keybridge/pkcs11.so")),
            Err(BackendError::NotFound(m)) if m.contains("/nonexistent/keybridge/pkcs11.so")
        ));
    }

    #[test]
    fn a_file_that_is_not_a_pkcs11_library_is_an_invalid_uri() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("fake.so");
        std::fs::write(&fake, "not a library").unwrap();
        let err = open_library(&fake, &fake).expect_err("refused");
        assert!(
            matches!(&err, BackendError::InvalidUri(m) if m.contains("fake.so")),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_module_path_is_explained() {
        let uri: Pkcs11Uri = "pkcs11:token=t".parse().unwrap();
        let err = module_path(&uri, None).unwrap_err();
        assert!(matches!(err, BackendError::InvalidUri(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("module-path") && err.contains(MODULE_ENV),
            "{err}"
        );
        assert!(
            module_path(&uri, Some(OsString::new())).is_err(),
            "empty is unset"
        );
        assert_eq!(
            module_path(&uri, Some("/env/m.so".into())).unwrap(),
            PathBuf::from("/env/m.so")
        );
        // The URI's own module-path wins over the environment.
        let uri: Pkcs11Uri = "pkcs11:token=t?module-path=/opt/m.so".parse().unwrap();
        assert_eq!(module_path(&uri, None).unwrap(), PathBuf::from("/opt/m.so"));
        assert_eq!(
            module_path(&uri, Some("/env/m.so".into())).unwrap(),
            PathBuf::from("/opt/m.so")
        );
    }

    #[test]
    fn a_listing_without_location_takes_the_environment_or_explains() {
        let err = location_path(None, None).unwrap_err();
        assert!(
            matches!(&err, BackendError::InvalidUri(m) if m.contains(MODULE_ENV)),
            "{err:?}"
        );
        assert_eq!(
            location_path(None, Some("/env/m.so".into())).unwrap(),
            PathBuf::from("/env/m.so")
        );
        assert_eq!(
            location_path(Some("/given.so"), Some("/env/m.so".into())).unwrap(),
            PathBuf::from("/given.so")
        );
    }
}
