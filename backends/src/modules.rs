//! Which PKCS#11 modules may be loaded (DESIGN.md §6).
//!
//! Loading a PKCS#11 module runs its code in the daemon, so a module path
//! that arrives in a request is never loaded just because it was named:
//! only a module on the allowlist is. The bridge sets the allowlist once,
//! from the administrator's policy and the user's config
//! ([`set_module_allowlist`]); until then the default applies, the
//! distribution's library folders ([`DEFAULT_PKCS11_MODULES`]), as
//! `ssh-agent -P` defaults to.

use serde::Serialize;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

/// Where PKCS#11 modules may be loaded from when no file says otherwise.
pub const DEFAULT_PKCS11_MODULES: [&str; 2] = ["/usr/lib*/*", "/usr/local/lib*/*"];

/// The PKCS#11 modules that may be loaded: lists of path globs (`*` matches
/// any characters, `/` included, as in `ssh-agent -P`); a module is allowed
/// when its canonical path (symlinks and `..` resolved) matches a pattern of
/// every list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ModuleAllowlist(Vec<Vec<String>>);

impl ModuleAllowlist {
    /// From lists that must all allow a module.
    pub fn new(lists: Vec<Vec<String>>) -> Self {
        ModuleAllowlist(lists)
    }

    /// Whether the module at `path` may be loaded. A path that does not
    /// resolve is not allowed.
    pub fn allows(&self, path: &Path) -> bool {
        let Ok(canonical) = std::fs::canonicalize(path) else {
            return false;
        };
        let Some(canonical) = canonical.to_str() else {
            return false;
        };
        self.0.iter().all(|list| {
            list.iter().any(|pattern| {
                glob_match(pattern, canonical)
                    || (!pattern.contains('*')
                        && std::fs::canonicalize(pattern)
                            .is_ok_and(|p| p.to_str() == Some(canonical)))
            })
        })
    }

    /// The patterns, for error messages.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|l| l.join(", "))
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// `*` matches any run of characters (including `/`); everything else is
/// literal.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Default for ModuleAllowlist {
    fn default() -> Self {
        ModuleAllowlist(vec![
            DEFAULT_PKCS11_MODULES
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        ])
    }
}

static ALLOWLIST: RwLock<Option<ModuleAllowlist>> = RwLock::new(None);

/// Sets the process-wide allowlist every module load is checked against.
pub fn set_module_allowlist(list: ModuleAllowlist) {
    *ALLOWLIST.write().unwrap_or_else(PoisonError::into_inner) = Some(list);
}

/// Checks `path` against the process-wide allowlist.
#[cfg(feature = "pkcs11")]
pub(crate) fn check_module(path: &Path) -> Result<(), crate::BackendError> {
    let guard = ALLOWLIST.read().unwrap_or_else(PoisonError::into_inner);
    let default;
    let list = match guard.as_ref() {
        Some(l) => l,
        None => {
            default = ModuleAllowlist::default();
            &default
        }
    };
    if list.allows(path) {
        Ok(())
    } else {
        Err(crate::BackendError::ModuleNotAllowed {
            path: path.display().to_string(),
            allowed: list.describe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn module_allowlist_matches_canonical_paths_against_every_list() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        let module = write(&dir, "module.so", "not really a library");
        std::fs::create_dir(dir.join("sub")).unwrap();
        let inside = format!("{}/*", dir.display());
        let default = ModuleAllowlist::default();
        assert!(
            !default.allows(&module),
            "a temp folder is not a library folder"
        );
        let list = ModuleAllowlist::new(vec![vec![inside.clone()]]);
        assert!(list.allows(&module));
        // `..` and symlinks are resolved before matching.
        assert!(list.allows(&dir.join("sub/../module.so")));
        let elsewhere = tempfile::tempdir().unwrap();
        let link = elsewhere.path().join("link.so");
        std::os::unix::fs::symlink(&module, &link).unwrap();
        assert!(list.allows(&link), "the link's target is inside");
        let outside = write(elsewhere.path(), "evil.so", "x");
        std::os::unix::fs::symlink(&outside, dir.join("sub/evil.so")).unwrap();
        assert!(!list.allows(&dir.join("sub/evil.so")), "target outside");
        // Every list must allow it: the user's config cannot widen.
        let both = ModuleAllowlist::new(vec![vec!["/usr/lib*/*".into()], vec![inside]]);
        assert!(!both.allows(&module));
        assert!(!list.allows(&dir.join("missing.so")));
        // An exact path allows that file only.
        let exact = ModuleAllowlist::new(vec![vec![module.display().to_string()]]);
        assert!(exact.allows(&module) && !exact.allows(&outside));
    }

    #[test]
    fn glob_star_matches_any_run_of_characters() {
        assert!(glob_match(
            "/usr/lib*/*",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"
        ));
        assert!(glob_match("/usr/lib*/*", "/usr/lib64/a.so"));
        assert!(!glob_match("/usr/lib*/*", "/usr/libexec"));
        assert!(!glob_match("/usr/lib*/*", "/tmp/usr/lib/a.so"));
        assert!(glob_match("/a/*.so", "/a/b/c.so"));
        assert!(!glob_match("/a/*.so", "/a/b/c.sox"));
        assert!(glob_match("/a/b.so", "/a/b.so"));
        assert!(!glob_match("/a/b.so", "/a/b.so2"));
        assert!(glob_match("*", ""));
    }
}
