//! The backend-neutral entry points, [`create`], [`needs_secret`], [`list`]
//! and [`open`]: the one place that dispatches on a [`BackendKind`]. A new
//! backend is one module plus one arm in each of these functions.

use crate::record::{BackendKind, KeyRecord};
use crate::uri::KeyUri;
use crate::{BackendError, Signer, passphrase};
use keybridge_protocol::Algorithm;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[cfg(feature = "pkcs11")]
use crate::pkcs11;
#[cfg(feature = "tpm")]
use crate::tpm;
#[cfg(feature = "yubikey")]
use crate::yubikey;

/// What [`create`] makes: a key for `agent` in `account`, in `backend`.
///
/// `Debug` shows no secret (`SecretString` prints as redacted).
#[derive(Debug)]
pub struct CreateSpec {
    /// Where the key goes or is: a passphrase key's own URI (optional), a
    /// PKCS#11 token or key (required for `pkcs11`).
    pub uri: Option<KeyUri>,
    /// The backend that holds the key.
    pub backend: BackendKind,
    /// Account id (the commands' `iss`).
    pub account: String,
    /// Agent id inside the account (the commands' `sub`).
    pub agent: String,
    /// The algorithm; `None` is the backend's default (passphrase:
    /// Ed25519, PKCS#11: P-256).
    pub alg: Option<Algorithm>,
    /// A name the user gives the key (also the default PKCS#11 object label).
    pub label: Option<String>,
    /// Use a key that already exists in the backend instead of generating
    /// one (not for passphrase keys).
    pub existing: bool,
    /// The passphrase or PIN. A `pkcs11:` URI may name a `pin-source` file
    /// instead ([`needs_secret`] says whether one must be asked for).
    pub secret: Option<SecretString>,
    /// Now, unix seconds (the record's `created`).
    pub now: i64,
    /// What only some backends take (policies, overwriting, the management
    /// key); the others refuse what they cannot honour.
    pub options: CreateOptions,
    /// The folder key files live in (the bridge's private keys folder): a
    /// TPM key keeps its TSS2 key file there.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Creation options beyond the common ones.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// PIN policy of the new key (`once`, `always`, `never`; YubiKey).
    pub pin_policy: Option<String>,
    /// Touch policy (`never`, `always`, `cached`; YubiKey).
    pub touch_policy: Option<String>,
    /// Replace a key already in the slot (YubiKey).
    pub overwrite: bool,
    /// The card's management key, hex (YubiKey; else its PIN-protected
    /// one is used).
    pub management_key: Option<SecretString>,
    /// Use the factory management key (YubiKey; the user said so).
    pub default_management_key: bool,
    /// Try the PIN even if it is the last attempt.
    pub spend_last_attempt: bool,
    /// Also make the new key persistent at the URI's handle (TPM).
    pub persistent: bool,
    /// Argon2id costs of a passphrase key (`None`: the defaults,
    /// [`passphrase::KdfCosts::DEFAULT`]); the other backends refuse them.
    pub kdf: Option<passphrase::KdfCosts>,
}

/// Generates (or derives, or opens with `existing`) the key `spec` describes;
/// returns its signer, **locked**, and the record to store. Blocking: a KDF
/// or token operations.
///
/// Errors, by cause: [`BackendError::InvalidUri`] for a URI that does not
/// fit the backend (a passphrase key's URI must be its own
/// `passphrase:account=…;agent=…`; a PKCS#11 key needs a `pkcs11:` URI),
/// [`BackendError::InvalidSecret`] when a needed secret is missing or
/// unacceptable, [`BackendError::Unsupported`] for what the backend cannot
/// do (a passphrase key is always a derived Ed25519 key, never `existing`;
/// only a passphrase key takes Argon2id costs; YubiKey and TPM are not
/// built yet), [`BackendError::KdfCosts`] for Argon2id costs out of range,
/// and each backend's own errors (see
/// `pkcs11::create`, `pkcs11::open_uri`).
pub fn create(spec: CreateSpec) -> Result<(Box<dyn Signer>, KeyRecord), BackendError> {
    if spec.options.kdf.is_some() && spec.backend != BackendKind::Passphrase {
        return Err(BackendError::Unsupported(format!(
            "Argon2id costs are for passphrase keys; a {} key is not derived from a passphrase",
            spec.backend
        )));
    }
    let (mut signer, record): (Box<dyn Signer>, KeyRecord) = match spec.backend {
        BackendKind::Passphrase => {
            let (signer, record) = passphrase::create_from_spec(spec)?;
            (Box::new(signer), record)
        }
        #[cfg(feature = "pkcs11")]
        BackendKind::Pkcs11 => {
            let (signer, record) = pkcs11::create_from_spec(spec)?;
            (Box::new(signer), record)
        }
        #[cfg(not(feature = "pkcs11"))]
        BackendKind::Pkcs11 => return Err(not_built(BackendKind::Pkcs11)),
        #[cfg(feature = "yubikey")]
        BackendKind::Yubikey => {
            let (signer, record) = yubikey::create_from_spec(spec)?;
            (Box::new(signer), record)
        }
        #[cfg(not(feature = "yubikey"))]
        BackendKind::Yubikey => return Err(not_built(BackendKind::Yubikey)),
        #[cfg(feature = "tpm")]
        BackendKind::Tpm => {
            let dir = spec.state_dir.clone();
            let (signer, record) = tpm::create_from_spec(spec, dir.as_deref())?;
            (Box::new(signer), record)
        }
        #[cfg(not(feature = "tpm"))]
        BackendKind::Tpm => return Err(not_built(BackendKind::Tpm)),
    };
    // Creating derived the key (or logged in to the token); it stays
    // unusable until an unlock, so it leaves memory now.
    signer.lock();
    Ok((signer, record))
}

/// Whether creating a key in `backend` at `uri` needs a secret from the
/// user: a passphrase always; a PKCS#11 PIN unless the URI names a
/// `pin-source` file. `false` for backends not built in (creating fails
/// before any secret would be used).
pub fn needs_secret(backend: BackendKind, uri: Option<&KeyUri>) -> bool {
    match backend {
        BackendKind::Passphrase => true,
        BackendKind::Pkcs11 => {
            cfg!(feature = "pkcs11")
                && !matches!(uri, Some(KeyUri::Pkcs11(u)) if u.pin_source.is_some())
        }
        BackendKind::Yubikey => cfg!(feature = "yubikey"),
        BackendKind::Tpm => cfg!(feature = "tpm"),
    }
}

/// What a backend shows at `location`: its tokens (slots) and the usable
/// keys on them, without logging in. Blocking.
///
/// For `pkcs11`, `location` is the module path (absolute; the module
/// allowlist applies; `None`: the `KEYBRIDGE_PKCS11_MODULE` environment
/// variable). Other backends answer [`BackendError::Unsupported`].
pub fn list(
    backend: BackendKind,
    location: Option<&str>,
) -> Result<Vec<TokenListing>, BackendError> {
    match backend {
        #[cfg(feature = "pkcs11")]
        BackendKind::Pkcs11 => pkcs11::list(location),
        #[cfg(not(feature = "pkcs11"))]
        BackendKind::Pkcs11 => {
            let _ = location;
            Err(not_built(BackendKind::Pkcs11))
        }
        #[cfg(feature = "yubikey")]
        BackendKind::Yubikey => yubikey::list(),
        #[cfg(not(feature = "yubikey"))]
        BackendKind::Yubikey => Err(not_built(BackendKind::Yubikey)),
        #[cfg(feature = "tpm")]
        BackendKind::Tpm => Err(BackendError::Unsupported(
            "a TPM holds no list of keys: keybridge's TPM keys are files in its state folder (keybridge keys list shows them); persistent ones: tpm2_getcap handles-persistent".into(),
        )),
        BackendKind::Passphrase => Err(BackendError::Unsupported(
            "a passphrase key is derived, not kept in a token: there is nothing to list".into(),
        )),
        #[cfg(not(feature = "tpm"))]
        BackendKind::Tpm => Err(not_built(BackendKind::Tpm)),
    }
}

/// What a residency check proved, in a backend-neutral shape: facts for a
/// person (name, value) and the backend's full report for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceReport {
    /// The evidence kind, e.g. `yubikey-piv-attestation`.
    pub kind: String,
    /// What was proved, one sentence.
    pub proved: String,
    /// What was not checked, one sentence.
    pub not_checked: String,
    /// Facts the evidence states (serial, firmware, policies, root, …).
    pub facts: Vec<(String, String)>,
    /// The backend's own report.
    pub report: serde_json::Value,
}

/// Checks residency evidence of `kind` (leaf-first DER `chain`) for `key`
/// against the roots in `roots_pem` (PEM certificates, intermediates
/// allowed; nothing is fetched). Kinds no built backend knows →
/// [`BackendError::Unsupported`].
pub fn verify_evidence(
    kind: &str,
    chain: &[Vec<u8>],
    roots_pem: &str,
    key: &keybridge_protocol::PublicKey,
) -> Result<EvidenceReport, BackendError> {
    match kind {
        #[cfg(feature = "yubikey")]
        "yubikey-piv-attestation" => yubikey::attestation::verify_report(chain, roots_pem, key),
        #[cfg(feature = "tpm")]
        tpm::EVIDENCE_KIND => tpm::attestation::verify_report(chain, roots_pem, key),
        other => {
            let _ = (chain, roots_pem, key);
            Err(BackendError::Unsupported(format!(
                "this build cannot check {other} evidence"
            )))
        }
    }
}

/// One token (or slot) as [`list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenListing {
    /// The backend (serialized as its name, e.g. `"pkcs11"`).
    pub backend: BackendKind,
    /// The slot id, where the backend has slots (it may change between
    /// runs: not a reference; use `uri`).
    pub slot: Option<u64>,
    /// The token's label.
    pub label: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The token's model.
    pub model: String,
    /// The token's serial number.
    pub serial: String,
    /// A URI naming this token; add `object=` to name a new key there.
    pub uri: String,
    /// Whether using keys needs a login (PIN).
    pub login_required: bool,
    /// A wrong PIN was entered since the last successful login.
    pub pin_count_low: bool,
    /// Only one PIN attempt is left.
    pub pin_final_try: bool,
    /// The PIN is blocked.
    pub pin_locked: bool,
    /// The algorithms a new key here can have, by name (`"p256"`,
    /// `"ed25519"`, as [`Algorithm::name`] writes them).
    pub algorithms: Vec<String>,
    /// The usable keys visible without login.
    pub keys: Vec<ListedKey>,
}

/// One usable key in a [`TokenListing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedKey {
    /// The key's label (PKCS#11 `CKA_LABEL`).
    pub label: String,
    /// The key's id (PKCS#11 `CKA_ID`), lower-case hex.
    pub id: String,
    /// The algorithm's name (`"p256"` or `"ed25519"`).
    pub alg: String,
    /// The key id (RFC 9679 thumbprint), lower-case hex.
    pub kid: String,
    /// A URI that opens this key ([`CreateSpec::existing`]).
    pub uri: String,
    /// Every signature needs the PIN on the token again (PKCS#11
    /// `CKA_ALWAYS_AUTHENTICATE`), as far as can be seen without login:
    /// `None` when the private half is not visible before login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_each_signature: Option<bool>,
}

/// Opens the signer a key record describes, locked. `state_dir` is the
/// folder the record's key files are in (see [`CreateSpec::state_dir`]).
///
/// Backends that are not compiled in answer [`BackendError::Unsupported`].
pub fn open(
    record: &KeyRecord,
    state_dir: &std::path::Path,
) -> Result<Box<dyn Signer>, BackendError> {
    match record.backend {
        BackendKind::Passphrase => Ok(Box::new(passphrase::PassphraseSigner::from_record(record)?)),
        #[cfg(feature = "pkcs11")]
        BackendKind::Pkcs11 => Ok(Box::new(pkcs11::Pkcs11Signer::from_record(record)?)),
        #[cfg(not(feature = "pkcs11"))]
        BackendKind::Pkcs11 => Err(not_built(BackendKind::Pkcs11)),
        #[cfg(feature = "yubikey")]
        BackendKind::Yubikey => Ok(Box::new(yubikey::open_record(record)?)),
        #[cfg(not(feature = "yubikey"))]
        BackendKind::Yubikey => Err(not_built(BackendKind::Yubikey)),
        #[cfg(feature = "tpm")]
        BackendKind::Tpm => Ok(Box::new(tpm::open_record(record, state_dir)?)),
        #[cfg(not(feature = "tpm"))]
        BackendKind::Tpm => {
            let _ = state_dir;
            Err(not_built(BackendKind::Tpm))
        }
    }
}

#[cfg_attr(
    all(feature = "pkcs11", feature = "yubikey", feature = "tpm"),
    allow(dead_code)
)]
fn not_built(kind: BackendKind) -> BackendError {
    let compiled_in = match kind {
        BackendKind::Passphrase => true,
        BackendKind::Pkcs11 => cfg!(feature = "pkcs11"),
        BackendKind::Yubikey => cfg!(feature = "yubikey"),
        BackendKind::Tpm => cfg!(feature = "tpm"),
    };
    debug_assert!(!compiled_in, "{kind} is built");
    BackendError::Unsupported(format!("keybridge was built without the {kind} feature"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_protocol::PublicKey;

    fn spec(backend: BackendKind, uri: Option<&str>) -> CreateSpec {
        CreateSpec {
            uri: uri.map(|u| u.parse().unwrap()),
            backend,
            account: "ACME".into(),
            agent: "alice".into(),
            alg: None,
            label: None,
            existing: false,
            secret: Some(SecretString::from("correct horse battery staple")),
            now: 0,
            options: Default::default(),
            state_dir: None,
        }
    }

    fn refusal(spec: CreateSpec) -> BackendError {
        create(spec).err().expect("refused")
    }

    #[test]
    fn backends_left_out_of_the_build_say_so_before_any_secret() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let public = PublicKey::ed25519(key.verifying_key().as_bytes()).unwrap();
        let hardware = [
            (
                BackendKind::Pkcs11,
                "pkcs11:token=t;object=k",
                cfg!(feature = "pkcs11"),
            ),
            (
                BackendKind::Yubikey,
                "yubikey:serial=1;slot=9c",
                cfg!(feature = "yubikey"),
            ),
            (
                BackendKind::Tpm,
                "tpm:handle=0x81000101",
                cfg!(feature = "tpm"),
            ),
        ];
        for (kind, uri, _) in hardware.into_iter().filter(|(_, _, built)| !built) {
            let expected = format!("keybridge was built without the {kind} feature");
            let record =
                KeyRecord::new(uri.into(), kind, &public, None, 0, serde_json::Value::Null);
            let err = open(&record, std::path::Path::new("/nonexistent"))
                .err()
                .expect("not built");
            assert!(matches!(err, BackendError::Unsupported(_)));
            assert_eq!(err.to_string(), expected);
            let err = refusal(spec(kind, Some(uri)));
            assert_eq!(err.to_string(), expected);
            assert!(!needs_secret(kind, None));
            assert!(matches!(
                list(kind, None),
                Err(BackendError::Unsupported(_))
            ));
        }
        assert!(matches!(
            list(BackendKind::Passphrase, None),
            Err(BackendError::Unsupported(_))
        ));
    }

    #[test]
    fn a_passphrase_key_is_derived_locked_and_named_by_its_account_and_agent() {
        let (signer, record) = create(spec(
            BackendKind::Passphrase,
            Some("passphrase:account=ACME;agent=alice"),
        ))
        .unwrap();
        assert!(!signer.is_unlocked(), "created locked");
        assert_eq!(record.uri, "passphrase:account=ACME;agent=alice");
        assert_eq!(record.alg, Algorithm::Ed25519);
        assert!(needs_secret(BackendKind::Passphrase, None));
    }

    #[test]
    fn only_a_passphrase_key_takes_argon2id_costs() {
        let mut s = spec(BackendKind::Pkcs11, Some("pkcs11:token=t;object=k"));
        s.options.kdf = Some(passphrase::KdfCosts::DEFAULT);
        let err = refusal(s);
        assert!(matches!(err, BackendError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("for passphrase keys"), "{err}");
        let mut s = spec(BackendKind::Passphrase, None);
        s.options.kdf = Some(passphrase::KdfCosts {
            t: 2,
            ..passphrase::KdfCosts::DEFAULT
        });
        assert!(matches!(refusal(s), BackendError::KdfCosts(_)));
    }

    #[test]
    fn a_passphrase_uri_naming_another_agent_is_an_invalid_uri() {
        let err = refusal(spec(
            BackendKind::Passphrase,
            Some("passphrase:account=ACME;agent=bob"),
        ));
        assert!(matches!(err, BackendError::InvalidUri(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "a passphrase key's URI is passphrase:account=ACME;agent=alice; it names the account and agent"
        );
        // A URI of another backend, the same.
        let err = refusal(spec(BackendKind::Passphrase, Some("tpm:handle=0x81000001")));
        assert!(matches!(err, BackendError::InvalidUri(_)), "{err:?}");
    }

    #[test]
    fn a_passphrase_key_is_always_a_derived_ed25519_key() {
        let mut p256 = spec(BackendKind::Passphrase, None);
        p256.alg = Some(Algorithm::Es256);
        let mut existing = spec(BackendKind::Passphrase, None);
        existing.existing = true;
        for s in [p256, existing] {
            let err = refusal(s);
            assert!(matches!(err, BackendError::Unsupported(_)), "{err:?}");
            assert_eq!(
                err.to_string(),
                "a passphrase key is always a derived Ed25519 key"
            );
        }
        let mut ed = spec(BackendKind::Passphrase, None);
        ed.alg = Some(Algorithm::Ed25519);
        assert!(create(ed).is_ok());
    }

    #[test]
    fn a_passphrase_key_needs_its_passphrase() {
        let mut s = spec(BackendKind::Passphrase, None);
        s.secret = None;
        let err = refusal(s);
        assert!(
            matches!(&err, BackendError::InvalidSecret(m) if m == "a passphrase key needs its passphrase"),
            "{err:?}"
        );
    }
}
