//! Prompt frequency and the administrator's policy (DESIGN.md §6).
//!
//! An unlock lasts for one signature (`each-task`, the default), 24 h
//! (`daily`) or 168 h (`weekly`). The administrator's
//! `/etc/keybridge/policy.toml` restricts which of these users may choose,
//! the longest validity a signed command may have and which PKCS#11 modules
//! may be loaded, and the most devices one batch may address. It wins whenever it exists: another policy file
//! (`serve --policy`, `KEYBRIDGE_POLICY`) and the user's `config.toml` can
//! only narrow it, never widen it. Without a system policy file the
//! defaults apply (every prompt frequency, 24 h, modules from the
//! distribution's library folders).
//!
//! ```toml
//! # /etc/keybridge/policy.toml
//! allowed_remember = ["each-task", "daily"]
//! max_ttl = 3600          # seconds
//! max_batch = 100000      # devices in one batch (default 1,000,000)
//! pkcs11_modules = ["/usr/lib/x86_64-linux-gnu/*"]   # globs; * matches any characters
//! no_fallback = ["deploy-unattended"]   # command kinds `sign --agent` never falls back for
//! min_kdf_memory_mib = 256   # new passphrase keys: Argon2id memory at least this
//! min_kdf_passes = 4         # and at least this many passes
//! ```
//!
//! Signing as an agent (`sign --agent`, API `"agent"`) picks the agent's
//! first key that is there, trying its keys by backend in `fallback_order`
//! (default `["yubikey", "tpm", "pkcs11", "passphrase"]`; within one
//! backend the oldest key first). It is a preference, not a restriction:
//! the user's `config.toml` sets it (else another policy file, else the
//! system policy); each backend at most once, and the keys of a backend
//! left out are never picked by agent (`--key` still names them).
//!
//! `min_kdf_memory_mib` and `min_kdf_passes` are a floor for the Argon2id
//! costs of new passphrase keys (defaults: 64 MiB, 3 passes, the costs new
//! keys get unless the user raises them; at most 1024 MiB, 64 passes).
//! Each file can only raise the floor. A new key below it is refused
//! (`policy_denied`, naming the file); a key made before is not: it still
//! signs, and `status` and `doctor` warn that it should be replaced (its
//! public key is out already, so refusing to sign would lock its agent out
//! without making an offline guess any dearer).
//!
//! `no_fallback` lists command kinds (`deploy-unattended`, `x-…`) for which
//! `sign --agent` must sign with the agent's first key in that order: when
//! that key's token is not there, the answer is `policy_denied`, never a
//! signature by a later key (a passphrase key, say). The lists of every
//! file are joined (a file can only add kinds). It governs the choice of a
//! key by agent; a request that names its key (`--key`) is not a fallback.

use crate::unlock::Remember;
use keybridge_backends::passphrase::{KdfCosts, memory_text};
use keybridge_backends::{BackendKind, ModuleAllowlist};
use keybridge_protocol::command::is_valid_command;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Default policy file.
pub const SYSTEM_POLICY: &str = "/etc/keybridge/policy.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    allowed_remember: Option<Vec<Remember>>,
    max_ttl: Option<i64>,
    max_batch: Option<usize>,
    default_remember: Option<Remember>,
    pkcs11_modules: Option<Vec<String>>,
    fallback_order: Option<Vec<BackendKind>>,
    no_fallback: Option<Vec<String>>,
    min_kdf_memory_mib: Option<u32>,
    min_kdf_passes: Option<u32>,
    notify: Option<bool>,
    pinentry: Option<String>,
    http: Option<String>,
    allow_origins: Option<Vec<String>>,
}

/// The default `max_batch`: a million devices (the protocol's limit,
/// [`keybridge_protocol::batch::MAX_BATCH`], is 16 times that).
pub const DEFAULT_MAX_BATCH: usize = 1_000_000;

/// The default preference of `sign --agent`: hardware that can be carried
/// away first (a YubiKey the user has with them), then hardware that stays
/// (the TPM), then any PKCS#11 token, and the passphrase key last.
pub const DEFAULT_FALLBACK_ORDER: [BackendKind; 4] = [
    BackendKind::Yubikey,
    BackendKind::Tpm,
    BackendKind::Pkcs11,
    BackendKind::Passphrase,
];

/// The effective policy: system policy narrowed by the user's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Prompt frequencies a user may choose.
    pub allowed_remember: BTreeSet<Remember>,
    /// Longest command validity, seconds.
    pub max_ttl: i64,
    /// Most devices one batch may address (every file can only lower it;
    /// [`DEFAULT_MAX_BATCH`] by default).
    pub max_batch: usize,
    /// Mode used when an unlock names none (the user's choice, if allowed).
    pub default_remember: Remember,
    /// Which PKCS#11 modules may be loaded: a module must match a pattern
    /// of every list (system policy, extra policy, user config); with no
    /// list anywhere, the distribution's library folders.
    pub pkcs11_modules: ModuleAllowlist,
    /// The order in which `sign --agent` tries an agent's keys, by backend
    /// (the user's choice; backends not listed are not tried).
    pub fallback_order: Vec<BackendKind>,
    /// Command kinds for which `sign --agent` never signs with a key after
    /// one that is not there (joined from every file).
    pub no_fallback: BTreeSet<String>,
    /// The least Argon2id costs a new passphrase key may have (every file
    /// can only raise them).
    pub kdf_floor: KdfFloor,
    /// A desktop notification for each signature (the user's choice, else
    /// a policy file's; off by default).
    pub notify: bool,
    /// The pinentry program that asks for a PIN or passphrase when a sign
    /// request needs an unlock and no terminal is there (the user's choice,
    /// else a policy file's; none by default: such a request is `locked`).
    pub pinentry: Option<std::path::PathBuf>,
    /// The console listener's address (`serve --http` wins): the user's
    /// choice, else a policy file's.
    pub http: Option<String>,
    /// Its allowed origins (`serve --allow-origin` wins), from the same
    /// file as `http`.
    pub allow_origins: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_remember: Remember::ALL.into_iter().collect(),
            max_ttl: keybridge_protocol::command::MAX_VALIDITY,
            max_batch: DEFAULT_MAX_BATCH,
            default_remember: Remember::EachTask,
            pkcs11_modules: ModuleAllowlist::default(),
            fallback_order: DEFAULT_FALLBACK_ORDER.to_vec(),
            no_fallback: BTreeSet::new(),
            kdf_floor: KdfFloor::default(),
            notify: false,
            pinentry: None,
            http: None,
            allow_origins: vec![],
        }
    }
}

/// The floor of the Argon2id costs of new passphrase keys, and the file
/// that set each part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KdfFloor {
    /// Least memory, MiB (`min_kdf_memory_mib`; default 64, the default
    /// cost).
    pub min_kdf_memory_mib: u32,
    /// The file that set it (`None`: the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_kdf_memory_mib_from: Option<PathBuf>,
    /// Least passes (`min_kdf_passes`; default 3).
    pub min_kdf_passes: u32,
    /// The file that set it (`None`: the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_kdf_passes_from: Option<PathBuf>,
}

impl Default for KdfFloor {
    fn default() -> Self {
        KdfFloor {
            min_kdf_memory_mib: KdfCosts::DEFAULT.m_kib / 1024,
            min_kdf_memory_mib_from: None,
            min_kdf_passes: KdfCosts::DEFAULT.t,
            min_kdf_passes_from: None,
        }
    }
}

impl KdfFloor {
    /// What of `costs` falls short of the floor, one phrase per cost,
    /// naming the setting and its file (`Argon2id memory 64 MiB is below
    /// min_kdf_memory_mib = 256 of /etc/keybridge/policy.toml`); empty when
    /// the costs meet it.
    pub fn shortfalls(&self, costs: KdfCosts) -> Vec<String> {
        let from = |f: &Option<PathBuf>| {
            f.as_ref()
                .map_or_else(|| "the defaults".to_owned(), |p| p.display().to_string())
        };
        let mut out = vec![];
        if u64::from(costs.m_kib) < u64::from(self.min_kdf_memory_mib) * 1024 {
            out.push(format!(
                "Argon2id memory {} is below min_kdf_memory_mib = {} of {}",
                memory_text(costs.m_kib),
                self.min_kdf_memory_mib,
                from(&self.min_kdf_memory_mib_from)
            ));
        }
        if costs.t < self.min_kdf_passes {
            out.push(format!(
                "Argon2id passes {} is below min_kdf_passes = {} of {}",
                costs.t,
                self.min_kdf_passes,
                from(&self.min_kdf_passes_from)
            ));
        }
        out
    }
}

/// A policy or config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct PolicyError {
    path: String,
    what: String,
}

/// Reads a policy or config file; a missing file is `None` when
/// `may_be_missing`, an error otherwise.
fn read(path: &Path, may_be_missing: bool) -> Result<PolicyFile, PolicyError> {
    let err = |what: String| PolicyError {
        path: path.display().to_string(),
        what,
    };
    let file: PolicyFile = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| err(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_missing => {
            return Ok(PolicyFile::default());
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if let Some(order) = &file.fallback_order {
        if order.is_empty() {
            return Err(err(
                "fallback_order is empty: list the backends sign --agent may use, e.g. [\"yubikey\", \"tpm\", \"pkcs11\", \"passphrase\"]".into(),
            ));
        }
        if let Some((i, twice)) = order
            .iter()
            .enumerate()
            .find(|(i, b)| order[..*i].contains(b))
        {
            return Err(err(format!(
                "fallback_order names {twice} twice (entry {}): each backend at most once",
                i + 1
            )));
        }
    }
    if let Some(program) = &file.pinentry
        && !Path::new(program).is_absolute()
    {
        // Never looked up on PATH: the daemon's environment picks no program.
        return Err(err(format!(
            "pinentry = {program:?}: give the program's absolute path (e.g. /usr/bin/pinentry-gnome3)"
        )));
    }
    if let Some(bad) = file
        .no_fallback
        .iter()
        .flatten()
        .find(|c| !is_valid_command(c))
    {
        // A misspelt kind would silently protect nothing.
        return Err(err(format!(
            "no_fallback: {bad:?} is not a command kind ({} or x-…)",
            keybridge_protocol::command::KNOWN_COMMANDS.join(", ")
        )));
    }
    // A floor outside what a key may have would either mean nothing or
    // refuse every new passphrase key: both are mistakes worth saying.
    let (min, max) = (KdfCosts::DEFAULT, KdfCosts::MAX);
    if let Some(mib) = file.min_kdf_memory_mib
        && !(min.m_kib / 1024..=max.m_kib / 1024).contains(&mib)
    {
        return Err(err(format!(
            "min_kdf_memory_mib = {mib}: allowed {} to {} (MiB of Argon2id memory)",
            min.m_kib / 1024,
            max.m_kib / 1024
        )));
    }
    if let Some(t) = file.min_kdf_passes
        && !(min.t..=max.t).contains(&t)
    {
        return Err(err(format!(
            "min_kdf_passes = {t}: allowed {} to {} (Argon2id passes)",
            min.t, max.t
        )));
    }
    Ok(file)
}

impl Policy {
    /// Loads the system policy (defaults when it does not exist), then
    /// narrows it with `extra` (which must exist when named) and the user's
    /// config. A broken file is an error (never silently "allow all").
    pub fn load(system: &Path, extra: Option<&Path>, user: &Path) -> Result<Self, PolicyError> {
        let mut files = vec![read(system, true)?];
        let mut named = vec![system.to_owned()];
        if let Some(extra) = extra {
            files.push(read(extra, false)?);
            named.push(extra.to_owned());
        }
        let usr = read(user, true)?;
        named.push(user.to_owned());
        let default_remember = usr
            .default_remember
            .or_else(|| files.iter().find_map(|f| f.default_remember));
        // A preference: the user's own, else the last policy file's.
        let fallback_order = usr
            .fallback_order
            .clone()
            .or_else(|| files.iter().rev().find_map(|f| f.fallback_order.clone()));
        let notify = usr
            .notify
            .or_else(|| files.iter().rev().find_map(|f| f.notify));
        let pinentry = usr
            .pinentry
            .clone()
            .or_else(|| files.iter().rev().find_map(|f| f.pinentry.clone()));
        // The listener and its origins come together, from one file.
        let web = std::iter::once(&usr)
            .chain(files.iter().rev())
            .find(|f| f.http.is_some())
            .map(|f| (f.http.clone(), f.allow_origins.clone().unwrap_or_default()));
        files.push(usr);
        let mut p = Policy::default();
        let module_lists: Vec<Vec<String>> = files
            .iter()
            .filter_map(|f| f.pkcs11_modules.clone())
            .collect();
        if !module_lists.is_empty() {
            p.pkcs11_modules = ModuleAllowlist::new(module_lists);
        }
        for (f, path) in files.iter().zip(named) {
            if let Some(mib) = f.min_kdf_memory_mib
                && mib > p.kdf_floor.min_kdf_memory_mib
            {
                p.kdf_floor.min_kdf_memory_mib = mib;
                p.kdf_floor.min_kdf_memory_mib_from = Some(path.clone());
            }
            if let Some(t) = f.min_kdf_passes
                && t > p.kdf_floor.min_kdf_passes
            {
                p.kdf_floor.min_kdf_passes = t;
                p.kdf_floor.min_kdf_passes_from = Some(path);
            }
            if let Some(allowed) = &f.allowed_remember {
                let narrowed: BTreeSet<Remember> = allowed.iter().copied().collect();
                p.allowed_remember = p
                    .allowed_remember
                    .intersection(&narrowed)
                    .copied()
                    .collect();
            }
            if let Some(ttl) = f.max_ttl {
                p.max_ttl = p.max_ttl.min(ttl.max(1));
            }
            if let Some(n) = f.max_batch {
                p.max_batch = p.max_batch.min(n.max(1));
            }
            p.no_fallback
                .extend(f.no_fallback.iter().flatten().cloned());
        }
        if let Some(order) = fallback_order {
            p.fallback_order = order;
        }
        p.notify = notify.unwrap_or(false);
        if let Some((http, origins)) = web {
            p.http = http;
            p.allow_origins = origins;
        }
        p.pinentry = pinentry.map(std::path::PathBuf::from);
        if p.allowed_remember.is_empty() {
            p.allowed_remember.insert(Remember::EachTask);
        }
        p.default_remember = default_remember
            .filter(|r| p.allowed_remember.contains(r))
            .unwrap_or_else(|| *p.allowed_remember.first().expect("never empty"));
        Ok(p)
    }

    /// Whether `mode` may be chosen.
    pub fn allows(&self, mode: Remember) -> bool {
        self.allowed_remember.contains(&mode)
    }

    /// Whether `sign --agent` may sign a `cmd` command with a key that
    /// comes after one that is not there.
    pub fn allows_fallback(&self, cmd: &str) -> bool {
        !self.no_fallback.contains(cmd)
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
    fn user_config_narrows_but_cannot_widen_the_system_policy() {
        let d = tempfile::tempdir().unwrap();
        let sys = write(
            d.path(),
            "policy.toml",
            "allowed_remember = [\"each-task\", \"daily\"]\nmax_ttl = 3600\n",
        );
        let usr = write(
            d.path(),
            "config.toml",
            "allowed_remember = [\"daily\", \"weekly\"]\nmax_ttl = 86400\ndefault_remember = \"weekly\"\n",
        );
        let p = Policy::load(&sys, None, &usr).unwrap();
        assert_eq!(p.allowed_remember, [Remember::Daily].into());
        assert_eq!(p.max_ttl, 3600);
        assert_eq!(p.default_remember, Remember::Daily);
    }

    #[test]
    fn another_policy_file_narrows_the_system_policy_but_cannot_widen_it() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        let sys = write(
            d.path(),
            "policy.toml",
            "allowed_remember = [\"each-task\"]\nmax_ttl = 600\nmax_batch = 5000\n",
        );
        let extra = write(
            d.path(),
            "extra.toml",
            "allowed_remember = [\"each-task\", \"weekly\"]\nmax_ttl = 86400\nmax_batch = 2000000\n",
        );
        let p = Policy::load(&sys, Some(&extra), &none).unwrap();
        assert_eq!(p.allowed_remember, [Remember::EachTask].into());
        assert_eq!(p.max_ttl, 600);
        // A later file cannot raise the batch limit.
        assert_eq!(p.max_batch, 5000);
        assert_eq!(Policy::default().max_batch, DEFAULT_MAX_BATCH);
        // A named policy file that is missing is an error, not "allow all".
        assert!(Policy::load(&sys, Some(&d.path().join("typo.toml")), &none).is_err());
    }

    #[test]
    fn the_fallback_order_is_the_users_choice_and_no_fallback_lists_are_joined() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        assert_eq!(
            Policy::load(&none, None, &none).unwrap().fallback_order,
            DEFAULT_FALLBACK_ORDER
        );
        let sys = write(
            d.path(),
            "policy.toml",
            "no_fallback = [\"deploy-unattended\"]\nfallback_order = [\"tpm\", \"passphrase\"]\n",
        );
        let extra = write(d.path(), "extra.toml", "no_fallback = [\"x-wipe\"]\n");
        let usr = write(
            d.path(),
            "config.toml",
            "fallback_order = [\"pkcs11\", \"passphrase\", \"yubikey\"]\nno_fallback = []\n",
        );
        let p = Policy::load(&sys, Some(&extra), &usr).unwrap();
        assert_eq!(
            p.fallback_order,
            [
                BackendKind::Pkcs11,
                BackendKind::Passphrase,
                BackendKind::Yubikey
            ]
        );
        // The user's empty list takes nothing away from the policy's.
        assert_eq!(
            p.no_fallback,
            ["deploy-unattended".to_owned(), "x-wipe".to_owned()].into()
        );
        assert!(!p.allows_fallback("deploy-unattended"));
        assert!(!p.allows_fallback("x-wipe"));
        assert!(p.allows_fallback("create-alert"));
        // Without a user choice, the policy's order applies.
        let p = Policy::load(&sys, None, &none).unwrap();
        assert_eq!(
            p.fallback_order,
            [BackendKind::Tpm, BackendKind::Passphrase]
        );
    }

    #[test]
    fn bad_fallback_settings_are_errors_not_ignored() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        for (text, says) in [
            ("fallback_order = []\n", "empty"),
            ("fallback_order = [\"tpm\", \"tpm\"]\n", "twice"),
            ("fallback_order = [\"floppy\"]\n", "floppy"),
            (
                "no_fallback = [\"deploy-unatended\"]\n",
                "not a command kind",
            ),
            ("no_fallback = [\"x-\"]\n", "not a command kind"),
            ("no_fallback = \"deploy-unattended\"\n", "sequence"),
        ] {
            let f = write(d.path(), "bad.toml", text);
            let err = Policy::load(&f, None, &none).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
            let err = Policy::load(&none, None, &f).unwrap_err().to_string();
            assert!(err.contains(says), "{text} (user config): {err}");
        }
    }

    #[test]
    fn the_kdf_floor_is_raised_by_any_file_never_lowered_and_names_its_file() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        let floor = Policy::load(&none, None, &none).unwrap().kdf_floor;
        assert_eq!(floor, KdfFloor::default());
        assert_eq!((floor.min_kdf_memory_mib, floor.min_kdf_passes), (64, 3));
        assert!(floor.shortfalls(KdfCosts::DEFAULT).is_empty());

        let sys = write(
            d.path(),
            "policy.toml",
            "min_kdf_memory_mib = 256
",
        );
        let extra = write(
            d.path(),
            "extra.toml",
            "min_kdf_memory_mib = 128
min_kdf_passes = 4
",
        );
        let usr = write(
            d.path(),
            "config.toml",
            "min_kdf_passes = 3
",
        );
        let floor = Policy::load(&sys, Some(&extra), &usr).unwrap().kdf_floor;
        // The system file's 256 stands against the extra file's 128; the
        // extra file's 4 passes against the user's 3.
        assert_eq!(floor.min_kdf_memory_mib, 256);
        assert_eq!(floor.min_kdf_memory_mib_from.as_deref(), Some(&*sys));
        assert_eq!(floor.min_kdf_passes, 4);
        assert_eq!(floor.min_kdf_passes_from.as_deref(), Some(&*extra));
        assert_eq!(
            floor.shortfalls(KdfCosts::DEFAULT),
            [
                format!(
                    "Argon2id memory 64 MiB is below min_kdf_memory_mib = 256 of {}",
                    sys.display()
                ),
                format!(
                    "Argon2id passes 3 is below min_kdf_passes = 4 of {}",
                    extra.display()
                ),
            ]
        );
        let enough = KdfCosts {
            m_kib: 256 * 1024,
            t: 4,
            p: 1,
        };
        assert!(floor.shortfalls(enough).is_empty());
        // The user's own config may raise it too.
        let usr = write(
            d.path(),
            "config.toml",
            "min_kdf_memory_mib = 512
",
        );
        let floor = Policy::load(&sys, None, &usr).unwrap().kdf_floor;
        assert_eq!(floor.min_kdf_memory_mib, 512);
        assert_eq!(floor.min_kdf_memory_mib_from.as_deref(), Some(&*usr));
    }

    #[test]
    fn a_kdf_floor_outside_what_a_key_may_have_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        for (text, says) in [
            (
                "min_kdf_memory_mib = 32\n",
                "min_kdf_memory_mib = 32: allowed 64 to 1024",
            ),
            (
                "min_kdf_memory_mib = 2048\n",
                "min_kdf_memory_mib = 2048: allowed 64 to 1024",
            ),
            (
                "min_kdf_passes = 2\n",
                "min_kdf_passes = 2: allowed 3 to 64",
            ),
            (
                "min_kdf_passes = 100\n",
                "min_kdf_passes = 100: allowed 3 to 64",
            ),
            ("min_kdf_memory_mib = \"256MiB\"\n", "expected u32"),
        ] {
            let f = write(d.path(), "bad.toml", text);
            let err = Policy::load(&f, None, &none).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn missing_files_mean_the_defaults_and_broken_ones_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.toml");
        assert_eq!(Policy::load(&none, None, &none).unwrap(), Policy::default());
        let bad = write(d.path(), "bad.toml", "allowed_remember = [\"forever\"]\n");
        assert!(Policy::load(&bad, None, &none).is_err());
    }
}
