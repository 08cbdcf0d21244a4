//! Keys in a TPM 2.0, through `tss-esapi` (feature `tpm`).
//!
//! `tss-esapi` 7.x: 8.x needs tpm2-tss ≥ 4.1.3 and Debian 12 ships 3.2.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | creating a key (or adopting one), certifying it, its key file in the state folder |
//! | [`tpm`] | one connection per operation: parent, salted session, load, sign, lockout, errors |
//! | [`signer`] | [`TpmSigner`]: unlock under the dictionary-attack rules, sign, lock |
//! | [`keyfile`] | the TSS2 private key file (`-----BEGIN TSS2 PRIVATE KEY-----`) |
//! | [`attestation`] | checking the TPM2_Certify evidence of a key |
//!
//! A key is an ECC P-256 signing key under the owner-hierarchy primary
//! tpm2-openssl uses (`0x40000001` in the key file) or a persistent parent,
//! its auth value the user's PIN. It is kept as a TSS2 private key file in
//! the key's state folder — the format tpm2-openssl, tpm2-tss-engine and
//! ssh-tpm-agent read — which holds only the TPM-encrypted private blob.

pub mod attestation;
pub mod keyfile;
pub mod signer;
#[allow(clippy::module_inception)]
pub mod tpm;

use crate::dispatch::CreateSpec;
use crate::record::{BackendKind, KeyRecord};
use crate::uri::KeyUri;
use crate::uri::tpm::{OWNER_HIERARCHY, PERSISTENT, TpmUri};
use crate::{BackendError, Evidence};
use base64::Engine as _;
use keybridge_protocol::{Algorithm, PublicKey};
use keyfile::KeyFile;
pub use signer::TpmSigner;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use tpm::{Tpm, tcti};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::Marshall as _;

/// The evidence kind of a TPM2_Certify statement.
pub const EVIDENCE_KIND: &str = "tpm2-certify";

/// Longest key file keybridge reads.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// What the key record keeps besides the public key (never secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TpmParams {
    /// The TCTI the key was made with, when the URI named one; else the
    /// environment decides at each use.
    #[serde(default)]
    pub tcti: Option<String>,
    /// The parent: `0x40000001` (owner primary) or a persistent handle.
    pub parent: u32,
    /// The key file's name in the state folder (`<kid>.tss2.pem`).
    #[serde(default)]
    pub key_file: Option<String>,
    /// The persistent handle the key is (also) at.
    #[serde(default)]
    pub handle: Option<u32>,
    /// The TPM2_Certify evidence (base64 blobs, see [`attestation`]).
    #[serde(default)]
    pub certification: Vec<String>,
}

impl TpmParams {
    fn evidence(&self) -> Option<Evidence> {
        let der_chain: Vec<Vec<u8>> = self
            .certification
            .iter()
            .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .collect();
        (!der_chain.is_empty()).then(|| Evidence {
            kind: EVIDENCE_KIND.into(),
            der_chain,
        })
    }
}

/// A key's public and private blobs, as the TPM loads them.
#[derive(Debug, Clone)]
pub(crate) struct KeyBlobs {
    public: Public,
    private: Private,
}

impl KeyBlobs {
    fn from_file(file: &KeyFile) -> Result<Self, BackendError> {
        let bad = |e: keyfile::KeyFileError| BackendError::Failed(format!("the TPM key file: {e}"));
        Ok(KeyBlobs {
            public: file.tpm_public().map_err(bad)?,
            private: file.tpm_private().map_err(bad)?,
        })
    }
}

/// The keybridge public key of a TPM public area (P-256 only).
pub(crate) fn public_key_of(public: &Public) -> Result<PublicKey, BackendError> {
    let point = tpm::ecc_point(public)?;
    PublicKey::p256_sec1(&point)
        .map_err(|e| BackendError::UnsupportedMechanism(format!("the TPM key: {e}")))
}

/// A TPM2B: two bytes of size, then the bytes.
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| BackendError::Failed("a TPM blob over 64 KiB".into()))?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

fn uri_of(spec: &CreateSpec) -> Result<TpmUri, BackendError> {
    match &spec.uri {
        None => Ok(TpmUri::default()),
        Some(KeyUri::Tpm(u)) => Ok(u.clone()),
        Some(other) => Err(BackendError::InvalidUri(format!(
            "a TPM key takes a tpm: URI, not {}",
            other.backend()
        ))),
    }
}

/// Makes (or adopts, with `existing`) the key `spec` describes; its key
/// file goes to `state_dir`.
pub fn create_from_spec(
    spec: CreateSpec,
    state_dir: Option<&Path>,
) -> Result<(TpmSigner, KeyRecord), BackendError> {
    let uri = uri_of(&spec)?;
    let o = &spec.options;
    if o.pin_policy.is_some()
        || o.touch_policy.is_some()
        || o.overwrite
        || o.management_key.is_some()
        || o.default_management_key
    {
        return Err(BackendError::Unsupported(
            "PIN and touch policies, --overwrite and management keys are YubiKey options; a TPM key takes --persistent".into(),
        ));
    }
    if spec.alg.is_some_and(|a| a != Algorithm::Es256) {
        return Err(BackendError::UnsupportedMechanism(
            "a TPM key is P-256 (ES256)".into(),
        ));
    }
    let pin = spec.secret.as_ref().ok_or_else(|| {
        BackendError::InvalidSecret("a TPM key needs a PIN (at least 6 characters)".into())
    })?;
    let state_dir = state_dir.ok_or_else(|| {
        BackendError::Failed("no state folder was given for the TPM key file".into())
    })?;
    if spec.existing {
        return adopt(&spec, &uri, state_dir);
    }
    tpm::check_new_pin(pin)?;
    if o.persistent && uri.handle.is_none() {
        return Err(BackendError::InvalidUri(
            "--persistent needs the handle: --uri tpm:handle=0x81000100".into(),
        ));
    }
    let parent = uri.parent.unwrap_or(OWNER_HIERARCHY);
    let mut tpm = Tpm::open(&tcti(uri.tcti.as_deref()))?;
    let persistent = match uri.handle {
        Some(h) if o.persistent => {
            if tpm.persistent_taken(h)? {
                return Err(BackendError::AlreadyExists(format!(
                    "persistent handle {h:#010x} is taken; choose another (tpm2_getcap handles-persistent lists them)"
                )));
            }
            Some(h)
        }
        Some(_) => {
            return Err(BackendError::InvalidUri(
                "a handle for a new key also needs --persistent (or --existing for the key already there)".into(),
            ));
        }
        None => None,
    };
    let parent_handle = tpm.parent(parent)?;
    let session = tpm.salted_session(parent_handle, true)?;
    let (public, private) = tpm.create_key(parent_handle, session, pin)?;
    let key = tpm.load(parent_handle, public.clone(), private.clone())?;
    let public_key = public_key_of(&public)?;
    let certification = certify(&mut tpm, key, session, pin, &public_key, &public)?;
    if let Some(h) = persistent {
        tpm.persist(key, h)?;
    }
    drop(tpm);
    let file = KeyFile {
        empty_auth: false,
        parent,
        public: tpm2b(&public.marshall().map_err(tpm::map_error)?)?,
        private: tpm2b(private.value())?,
        // No description ([4]): tpm2-openssl up to 1.3 refuses files with it.
        description: None,
    };
    let key_file = write_key_file(state_dir, &public_key, &file)?;
    let params = TpmParams {
        tcti: uri.tcti.clone(),
        parent,
        key_file: Some(key_file),
        handle: persistent,
        certification: certification
            .iter()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .collect(),
    };
    finish(
        &spec,
        &uri,
        public_key,
        params,
        Some(KeyBlobs { public, private }),
    )
}

/// Adopts a key made elsewhere: a TSS2 key file (tpm2-openssl) or a key at
/// a persistent handle. The PIN is checked once before it is recorded.
fn adopt(
    spec: &CreateSpec,
    uri: &TpmUri,
    state_dir: &Path,
) -> Result<(TpmSigner, KeyRecord), BackendError> {
    let pin = spec.secret.as_ref().ok_or(BackendError::Locked)?;
    let (blobs, file, parent) = match (&uri.file, uri.handle) {
        (Some(path), None) => {
            let file = read_key_file(path)?;
            if file.empty_auth {
                return Err(BackendError::Unsupported(
                    "this key file has no password (emptyAuth): keybridge keeps PIN-protected TPM keys only (make it with -pkeyopt user-auth:…)".into(),
                ));
            }
            let parent = file.parent;
            if parent != OWNER_HIERARCHY && !PERSISTENT.contains(&parent) {
                return Err(BackendError::Unsupported(format!(
                    "the key file's parent {parent:#010x} is neither 0x40000001 nor a persistent handle"
                )));
            }
            (Some(KeyBlobs::from_file(&file)?), Some(file), parent)
        }
        (None, Some(_)) => (None, None, OWNER_HIERARCHY),
        _ => {
            return Err(BackendError::InvalidUri(
                "--existing needs tpm:file=/abs/key.pem or tpm:handle=0x81…".into(),
            ));
        }
    };
    let public_key = match &blobs {
        Some(b) => public_key_of(&b.public)?,
        None => {
            let handle = uri.handle.unwrap_or_default();
            let mut tpm = Tpm::open(&tcti(uri.tcti.as_deref()))?;
            let key: KeyHandle = tpm.persistent(handle)?.into();
            public_key_of(&tpm.read_public(key)?)?
        }
    };
    let params = TpmParams {
        tcti: uri.tcti.clone(),
        parent,
        key_file: None,
        handle: uri.handle,
        certification: vec![],
    };
    let mut signer = TpmSigner::new(public_key.clone(), params.clone(), blobs.clone());
    use crate::Signer as _;
    // The PIN is checked (one attempt, never the last without consent)
    // before anything is recorded.
    signer
        .unlock(pin, spec.options.spend_last_attempt)
        .map_err(|e| match e {
            BackendError::WrongSecret { retries_left } => {
                BackendError::WrongSecret { retries_left }
            }
            e => e,
        })?;
    let key_file = match file {
        Some(f) => Some(write_key_file(state_dir, &public_key, &f)?),
        None => None,
    };
    finish(
        spec,
        uri,
        public_key,
        TpmParams { key_file, ..params },
        blobs,
    )
}

fn finish(
    spec: &CreateSpec,
    uri: &TpmUri,
    public_key: PublicKey,
    params: TpmParams,
    blobs: Option<KeyBlobs>,
) -> Result<(TpmSigner, KeyRecord), BackendError> {
    let record_uri = TpmUri {
        file: None,
        handle: params.handle,
        parent: (params.parent != OWNER_HIERARCHY).then_some(params.parent),
        tcti: uri.tcti.clone(),
    };
    let record = KeyRecord::new(
        record_uri.to_string(),
        BackendKind::Tpm,
        &public_key,
        spec.label.clone(),
        spec.now,
        serde_json::to_value(&params)
            .map_err(|e| BackendError::Failed(format!("TPM key parameters: {e}")))?,
    );
    Ok((TpmSigner::new(public_key, params, blobs), record))
}

/// The signer of a stored TPM key record (key file read from `state_dir`).
pub fn open_record(record: &KeyRecord, state_dir: &Path) -> Result<TpmSigner, BackendError> {
    let public = record
        .public()
        .map_err(|e| BackendError::Failed(format!("key record: {e}")))?;
    let params: TpmParams = serde_json::from_value(record.params.clone())
        .map_err(|e| BackendError::Failed(format!("TPM key record parameters: {e}")))?;
    let blobs = match &params.key_file {
        Some(name) => {
            let path = key_file_path(state_dir, name)?;
            let blobs = KeyBlobs::from_file(&read_key_file(&path)?)?;
            if public_key_of(&blobs.public)? != public {
                return Err(BackendError::Failed(format!(
                    "the key file {name} holds another key than its record"
                )));
            }
            Some(blobs)
        }
        None => None,
    };
    Ok(TpmSigner::new(public, params, blobs))
}

/// `name` in `dir`, if it is a plain key file name.
fn key_file_path(dir: &Path, name: &str) -> Result<PathBuf, BackendError> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && name.ends_with(".tss2.pem")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !name.starts_with('.');
    if !plain {
        return Err(BackendError::Failed(format!(
            "the key record names an unusable key file {name:?}"
        )));
    }
    Ok(dir.join(name))
}

/// Reads a key file: a regular file (no symlink), at most 64 KiB.
fn read_key_file(path: &Path) -> Result<KeyFile, BackendError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| BackendError::NotFound(format!("TPM key file {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| BackendError::NotFound(format!("TPM key file {shown}: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        return Err(BackendError::InvalidUri(format!(
            "TPM key file {shown} is not a regular file of at most 64 KiB"
        )));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|e| BackendError::InvalidUri(format!("TPM key file {shown}: {e}")))?;
    KeyFile::from_pem(&text)
        .map_err(|e| BackendError::InvalidUri(format!("TPM key file {shown}: {e}")))
}

/// Writes `<kid>.tss2.pem` into `dir` atomically (a private temporary file,
/// synced, renamed); returns its name. An existing file is never replaced.
fn write_key_file(dir: &Path, key: &PublicKey, file: &KeyFile) -> Result<String, BackendError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = format!("{}.tss2.pem", key.kid().to_hex());
    let path = dir.join(&name);
    let failed = |e: std::io::Error| {
        BackendError::Failed(format!("writing the TPM key file {}: {e}", path.display()))
    };
    if path.exists() {
        return Err(BackendError::AlreadyExists(format!(
            "the key file {} exists already",
            path.display()
        )));
    }
    let pem = file
        .to_pem()
        .map_err(|e| BackendError::Failed(format!("encoding the TPM key file: {e}")))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    let written = out
        .write_all(pem.as_bytes())
        .and_then(|()| out.sync_all())
        .and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    written.map_err(failed)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(name)
}

/// Certifies `key` with the TPM's attestation key (a restricted P-256
/// signing primary in the endorsement hierarchy: the same key every time
/// on one TPM), qualifying data = the key's kid; returns the evidence
/// blobs: attest, signature, AK public, key public, and the EK
/// certificate when the TPM has one.
fn certify(
    tpm: &mut Tpm,
    key: KeyHandle,
    session: AuthSession,
    pin: &secrecy::SecretString,
    public_key: &PublicKey,
    public: &Public,
) -> Result<Vec<Vec<u8>>, BackendError> {
    let certified = tpm.certify(key, session, pin, &public_key.kid().0)?;
    let mut blobs = vec![
        certified.attest,
        certified.signature,
        certified.ak_public,
        public.marshall().map_err(tpm::map_error)?,
    ];
    if let Some(ek) = tpm.ek_certificate() {
        blobs.push(ek);
    }
    Ok(blobs)
}
