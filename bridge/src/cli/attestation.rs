//! `keybridge keys verify-attestation KID [--roots FILE]`: checks a key's
//! residency evidence (a YubiKey's attestation chain, a TPM's
//! certification; kept by the daemon when the key was made) against roots
//! the user holds. The roots come from a local PEM file and nothing
//! is fetched; the check itself is the backend's
//! (`keybridge_backends::verify_evidence`, by evidence kind).

use super::Ctx;
use anyhow::{Context as _, bail};
use std::io::Read as _;
use std::path::Path;

/// The largest roots file read (Yubico's full CA bundle is about 10 KiB).
const MAX_ROOTS_FILE: u64 = 1024 * 1024;

pub(super) async fn verify(ctx: &Ctx, key: &str, roots: Option<&Path>) -> anyhow::Result<()> {
    let pem = roots.map(read_roots).transpose()?.unwrap_or_default();
    let k = ctx.client().key(key).await?;
    let Some(evidence) = k.evidence else {
        bail!(
            "key {} ({} backend) carries no attestation: only keys generated on a YubiKey or in a TPM have one",
            k.kid,
            k.backend
        );
    };
    if roots.is_none() && evidence.kind == "yubikey-piv-attestation" {
        bail!(
            "a YubiKey attestation is checked against roots you hold: give --roots (Yubico's PIV roots, PEM)"
        );
    }
    let Some(public) = k.public_key else {
        bail!("the daemon sent no public key for {key}");
    };
    let public = keybridge_protocol::key::unhex(&public.cose)
        .and_then(|cose| keybridge_protocol::PublicKey::from_cose_key_bytes(&cose).ok())
        .context("the daemon sent an unreadable public key")?;
    let chain = evidence
        .chain
        .iter()
        .map(|c| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(c)
        })
        .collect::<Result<Vec<_>, _>>()
        .context("the daemon sent evidence that is not base64")?;
    check(ctx, &k.kid, &evidence.kind, &chain, &pem, &public)
}

/// `keys ak-public KEY`: the PEM public key of the AK that certified a TPM
/// key (from the key's evidence, checked as an AK is).
pub(super) async fn ak_public(ctx: &Ctx, key: &str) -> anyhow::Result<()> {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let k = ctx.client().key(key).await?;
    let evidence = k
        .evidence
        .filter(|e| e.kind == keybridge_evidence::TPM2_CERTIFY)
        .with_context(|| {
            format!(
                "key {} ({} backend) is not a TPM key with a certification: only those have an attestation key",
                k.kid, k.backend
            )
        })?;
    let ak = evidence
        .chain
        .get(2)
        .map(|c| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(c)
        })
        .transpose()
        .context("the daemon sent evidence that is not base64")?
        .context("the key's certification has no AK public area")?;
    let point = keybridge_evidence::tpm::ak_point(&ak).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pem = p256::PublicKey::from_sec1_bytes(&point)
        .context("the AK's point is not on P-256")?
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the AK's public key")?;
    print!("{pem}");
    Ok(())
}

/// Reads a certificate file (one PEM certificate, or DER), at most 64 KiB.
pub(super) fn read_certificate(path: &Path) -> anyhow::Result<Vec<u8>> {
    const MAX: u64 = 64 * 1024;
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut bytes = vec![];
    file.take(MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| path.display().to_string())?;
    if bytes.len() as u64 > MAX {
        bail!(
            "{}: larger than {MAX} bytes; not a certificate",
            path.display()
        );
    }
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{}: PEM that is not text", path.display()))?;
        let mut certs = keybridge_evidence::x509::certificates_from_pem(text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if certs.len() != 1 {
            bail!(
                "{}: {} certificates; give the AK's certificate alone",
                path.display(),
                certs.len()
            );
        }
        return Ok(certs.remove(0));
    }
    Ok(bytes)
}

/// Reads the roots file, refusing a huge one before reading it all.
pub(super) fn read_roots(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the roots file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_ROOTS_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the roots file {} (PEM text)", path.display()))?;
    if text.len() as u64 > MAX_ROOTS_FILE {
        bail!(
            "the roots file {} is larger than {MAX_ROOTS_FILE} bytes",
            path.display()
        );
    }
    Ok(text)
}

/// Checks the evidence with the backend that knows its kind (the bridge
/// names no backend) and prints what it proved.
fn check(
    ctx: &Ctx,
    kid: &str,
    kind: &str,
    chain: &[Vec<u8>],
    pem: &str,
    public: &keybridge_protocol::PublicKey,
) -> anyhow::Result<()> {
    let report = keybridge_backends::verify_evidence(kind, chain, pem, public)
        .with_context(|| format!("the attestation of key {kid} does not verify"))?;
    if ctx.json {
        ctx.print(&report.report, |_| String::new());
        return Ok(());
    }
    let width = report.facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = format!("attestation verified: {}\n", report.proved);
    for (name, value) in &report.facts {
        let label = format!("{name}:");
        out.push_str(&format!("{label:<width$}{value}\n"));
    }
    out.push_str(&format!("({})", report.not_checked));
    println!("{out}");
    Ok(())
}
