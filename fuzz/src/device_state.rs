//! The device's state files, in a real state folder.
//!
//! A folder is made once per process (`trust init` of the fixture's log,
//! a hardware policy set, a command verified, with the device's own code)
//! and put back as it was before every execution. The input's first byte
//! says which file the rest of the input replaces:
//!
//! | byte % 8 | file |
//! |---|---|
//! | 0 | `log.cbor` (the derived files removed: a folder of an older version, migrated on open) |
//! | 1 | `trust.cbor` |
//! | 2 | `keys.idx` |
//! | 3 | `hardware.json` |
//! | 4 | `policy.json` |
//! | 5 | `replay.cbor` |
//! | 6 | `settings.json` |
//! | 7 | none: the rest is a key log offered to `trust update` |

use crate::fixture::{self, ACCOUNT, BODY, DEVICE, NOW};
use crate::keys_index::{self, Gone, KeysIndex};
use crate::policy::{self, Hardware, Policy};
use crate::state::{self, OfferedLog, Settings, State};
use keybridge_protocol::command::inspect;
use keybridge_protocol::replay::DEFAULT_CAPACITY;
use keybridge_protocol::{KeyLog, Kid, Op, ReplayCache, Trust, Verifier, VerifyError};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The state files of an account folder, by the input's first byte.
pub const FILES: [&str; 7] = [
    "log.cbor",
    "trust.cbor",
    "keys.idx",
    "hardware.json",
    "policy.json",
    "replay.cbor",
    "settings.json",
];
/// The files `trust init` derives from the log.
const DERIVED: [&str; 3] = ["trust.cbor", "keys.idx", "hardware.json"];
/// A "root certificate" for the policy: DER-shaped, not a certificate.
const FAKE_ROOT: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x02];
/// The command kinds the policy has rules for.
const RULES: [(&str, bool); 2] = [("run-script", false), ("deploy-unattended", true)];

/// Replaces one state file of a trusted account with `data[1..]` (or
/// offers it as a key log), then does what the device does with its
/// state: list the accounts, open the account (migrating a folder of an
/// older version), read its keys index, trust snapshot, policy and
/// hardware facts, verify the fixture's commands (index look-ups for keys
/// that are not active, the hardware policy for the kinds it has rules
/// for, the replay cache saved), and take a `trust update`.
///
/// What must hold: no panic; each file's parser round-trips what it reads;
/// from a folder the device's code made (selectors 0 and 7), a refused
/// update changes no state file, and after an accepted one the state is
/// the whole log's, verified from scratch.
pub fn device_state(data: &[u8]) {
    let Some((&which, content)) = data.split_first() else {
        return;
    };
    parse_alone(which, content);

    let scratch = scratch();
    let guard = scratch.lock().unwrap_or_else(|e| e.into_inner());
    guard.reset();
    let dir = &guard.account_dir;
    let offered_path = guard.root.join("offered.cbor");
    let offered = match usize::from(which % 8) {
        0 => {
            write(&dir.join("log.cbor"), content);
            for name in DERIVED {
                let _ = fs::remove_file(dir.join(name));
            }
            guard.extension.as_slice()
        }
        7 => content,
        i => {
            write(&dir.join(FILES[i]), content);
            guard.extension.as_slice()
        }
    };
    write(&offered_path, offered);

    let state = State::new(&guard.root);
    let _ = state.accounts();
    let Ok(mut account) = state.open(ACCOUNT) else {
        return;
    };
    if which % 8 != 7 {
        verify_commands(&mut account);
    }
    let before = guard.files();
    let Ok(log) = OfferedLog::open(&offered_path) else {
        return;
    };
    // The state folder is trusted as it is: a replaced trust.cbor,
    // keys.idx, … that agrees with the others is taken at its word. So the
    // strong checks are for a state the device's own code made: the
    // folder as made (an offered log), or rebuilt from the log (a
    // migration).
    let made_here = matches!(which % 8, 0 | 7);
    match account.update(&log) {
        Ok(updated) => {
            drop(account);
            if made_here {
                check_updated(&state, dir, updated.len);
            }
        }
        Err(_) if which % 8 == 7 => {
            assert_eq!(guard.files(), before, "a refused update changed the state")
        }
        Err(_) => {}
    }
}

/// The file's own parser on `content`: what reads writes back and reads
/// back the same.
fn parse_alone(which: u8, content: &[u8]) {
    match which % 8 {
        0 | 7 => {
            let _ = KeyLog::peek_account(content);
        }
        1 => {
            if let Ok(trust) = Trust::from_bytes(content) {
                let bytes = trust.to_bytes();
                assert_eq!(Trust::from_bytes(&bytes).as_ref(), Ok(&trust));
                if let Ok(view) = keys_index::view_of(&trust) {
                    let view = Trust::from_bytes(&view).expect("a view reads back");
                    assert_eq!(view.account(), trust.account());
                    assert_eq!((view.len(), view.head()), (trust.len(), trust.head()));
                }
            }
        }
        3 => {
            if let Ok(h) = Hardware::from_json(content) {
                assert_eq!(Hardware::from_json(&h.to_json()).as_ref(), Ok(&h));
            }
        }
        4 => {
            if let Ok(p) = Policy::from_json(content) {
                assert_eq!(Policy::from_json(&p.to_json()).as_ref(), Ok(&p));
            }
        }
        5 => {
            if let Ok(cache) = ReplayCache::from_bytes(content, DEFAULT_CAPACITY) {
                let bytes = cache.to_bytes();
                let again = ReplayCache::from_bytes(&bytes, DEFAULT_CAPACITY).expect("reads back");
                assert_eq!(again.to_bytes(), bytes);
                assert_eq!(again.len(), cache.len());
            }
        }
        _ => {}
    }
}

/// `keybridge-device verify` of each fixture command, as `device/src/main.rs`
/// does it (its `verify` is not reachable from here: this is its order of
/// calls on the same state API).
fn verify_commands(account: &mut state::Account) {
    let Ok(keys) = account.keys() else { return };
    let _ = account.trust();
    let _ = keys.revoked();
    let f = fixture::fixture();
    for kid in [f.alice.public().kid(), f.bob.public().kid(), Kid([0; 32])] {
        let _ = keys.lookup(&kid);
    }
    let device_id = account.settings.device_id.clone();
    let verifier = Verifier::new(&keys.view, &device_id).with_skew(account.settings.skew);
    // alice's run-script (a rule, no evidence), carol's (evidence that
    // does not verify) and alice's with a body (a rule with touch).
    for envelope in [&f.envelopes[0], &f.envelopes[2], &f.envelopes[3]] {
        let body = inspect(envelope)
            .ok()
            .and_then(|(_, c)| c.body)
            .map(|_| BODY);
        match verifier.verify(envelope, body, NOW, &mut account.replay) {
            Ok(v) => {
                let Ok(policy) = account.policy() else {
                    continue;
                };
                if let Some(rule) = policy.rules.get(&v.claims.cmd) {
                    let signer = keys
                        .view
                        .active_keys()
                        .find(|k| k.key.kid() == v.kid)
                        .expect("the verifier accepted an active key");
                    let Ok(hardware) = account.hardware() else {
                        continue;
                    };
                    let _ = policy::check(
                        &v.claims.cmd,
                        rule,
                        &policy.roots[&rule.roots],
                        &signer.key,
                        &signer.agent,
                        hardware.facts(&v.kid),
                    );
                }
                let _ = account.save_replay();
            }
            Err(VerifyError::UnknownKid(kid)) => {
                if let Ok(Some(gone)) = keys.lookup(&kid) {
                    assert!(matches!(gone, Gone::Revoked(_) | Gone::Replaced { .. }));
                }
            }
            Err(_) => {}
        }
    }
}

/// After an accepted update: the state reads, and is what verifying the
/// whole stored log from scratch gives.
fn check_updated(state: &State, dir: &Path, len: u64) {
    let account = state.open(ACCOUNT).expect("an updated account opens");
    let keys: KeysIndex = account.keys().expect("keys.idx after an update");
    let mut trust = account.trust().expect("trust.cbor after an update");
    assert_eq!(keys.view.len(), len);
    assert_eq!(trust.len(), len);
    trust
        .restore_revoked(keys.revoked().expect("the index's records"))
        .expect("the keys that left go back");
    let stored = fs::read(dir.join("log.cbor")).expect("log.cbor");
    let whole = KeyLog::from_bytes(&stored).expect("the stored log verifies");
    assert_eq!(&trust, whole.trust(), "an update is the whole log's state");
    let hardware = account.hardware().expect("hardware.json after an update");
    assert!(hardware.is_for(&trust));
}

/// The state files of the folder every execution starts from, and the
/// valid extension offered to `trust update` (for seeds).
pub fn pristine() -> (Vec<(&'static str, Vec<u8>)>, Vec<u8>) {
    let s = scratch().lock().unwrap_or_else(|e| e.into_inner());
    (s.pristine.clone(), s.extension.clone())
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The state folder and its pristine files.
struct Scratch {
    root: PathBuf,
    account_dir: PathBuf,
    /// Every state file of the account as `trust init` and `policy set`
    /// left them.
    pristine: Vec<(&'static str, Vec<u8>)>,
    /// The fixture's log and one more event (alice revokes bob): a valid
    /// update.
    extension: Vec<u8>,
}

impl Scratch {
    /// Puts the account folder back as it was made.
    fn reset(&self) {
        if let Ok(entries) = fs::read_dir(&self.account_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let keep = name == ".lock" || self.pristine.iter().any(|(n, _)| name == *n);
                if !keep {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for (name, bytes) in &self.pristine {
            let path = self.account_dir.join(name);
            if fs::read(&path).ok().as_ref() != Some(bytes) {
                write(&path, bytes);
            }
        }
    }

    /// The state files as they are now.
    fn files(&self) -> Vec<(&'static str, Option<Vec<u8>>)> {
        self.pristine
            .iter()
            .map(|(n, _)| (*n, fs::read(self.account_dir.join(n)).ok()))
            .collect()
    }
}

fn scratch() -> &'static Mutex<Scratch> {
    static SCRATCH: OnceLock<Mutex<Scratch>> = OnceLock::new();
    SCRATCH.get_or_init(|| Mutex::new(make_scratch()))
}

/// A fresh folder for this process (in `/dev/shm` where there is one),
/// after removing those of processes that are gone.
fn make_scratch() -> Scratch {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    const PREFIX: &str = "keybridge-fuzz-device-";
    if let Ok(entries) = fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(PREFIX)
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let root = base.join(format!("{PREFIX}{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("a scratch folder");

    let f = fixture::fixture();
    let state = State::new(&root);
    let settings = Settings {
        device_id: DEVICE.into(),
        skew: 120,
    };
    state.init(&f.log, &settings).expect("trust init");
    let mut account = state.open(ACCOUNT).expect("open");
    let mut policy = Policy::default();
    for (cmd, touch) in RULES {
        policy
            .set(cmd, touch, Some(vec![FAKE_ROOT.to_vec()]))
            .expect("policy set");
    }
    let keys = account.keys().expect("keys");
    let mut hardware = account.hardware().expect("hardware");
    hardware.rejudge(&keys.view, &policy);
    account
        .save_policy(&policy, &hardware)
        .expect("save policy");
    // One command remembered.
    Verifier::new(&keys.view, DEVICE)
        .verify(&f.envelopes[1], None, NOW, &mut account.replay)
        .expect("bob's command verifies");
    account.save_replay().expect("save replay");
    drop(account);

    let account_dir = root.join("accounts").join(ACCOUNT);
    let pristine = FILES
        .iter()
        .map(|n| (*n, fs::read(account_dir.join(n)).expect("a state file")))
        .collect();
    let mut extension = f.log_bytes.clone();
    let revoke = Op::Revoke {
        kid: f.bob.public().kid(),
    };
    extension.extend(
        f.alice
            .finish(f.log.next_event(NOW - 700, &revoke, &f.alice.public())),
    );
    Scratch {
        root,
        account_dir,
        pristine,
        extension,
    }
}
