//! `keybridge keys create | list | show | export | verify-attestation`.

use super::{Ctx, key_line, read_secret};
use crate::unlock::Remember;
use crate::wire::{CreateKey, CreatedKey, KdfView, KeyView};
use clap::{Subcommand, ValueEnum};
use keybridge_backends::passphrase::{KdfCosts, memory_text};
use keybridge_backends::{BackendKind, TokenListing};
use std::path::PathBuf;

/// The backend names `--backend` takes: the bridge's only knowledge of
/// which backends exist.
fn backend_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(BackendKind::ALL.map(BackendKind::name))
}

/// `keybridge keys …`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key in a backend.
    Create {
        /// Where the key lives.
        #[arg(long, value_parser = backend_names())]
        backend: String,
        /// Account the key signs for.
        #[arg(long)]
        account: String,
        /// Agent (user inside the account) the key belongs to.
        #[arg(long)]
        agent: String,
        /// Backend key URI (pkcs11:…, yubikey:…, tpm:…).
        #[arg(long)]
        uri: Option<String>,
        /// A name to refer to the key by.
        #[arg(long)]
        label: Option<String>,
        /// Default prompt frequency for this key.
        #[arg(long, value_enum)]
        remember: Option<Remember>,
        /// Key algorithm for hardware keys (the passphrase key is Ed25519).
        #[arg(long, value_enum, default_value = "p256")]
        alg: AlgArg,
        /// Use the key the URI names, already on the token (e.g. made by
        /// pkcs11-tool), instead of generating one.
        #[arg(long)]
        existing: bool,
        /// Read the passphrase or PIN from one line of standard input (and,
        /// with --management-key-stdin, the management key from the next).
        #[arg(long)]
        secret_stdin: bool,
        /// PIN policy of the new key, where the hardware has one (YubiKey).
        #[arg(long, value_parser = ["once", "always", "never"])]
        pin_policy: Option<String>,
        /// Touch policy of the new key, where the hardware has one (YubiKey).
        #[arg(long, value_parser = ["never", "always", "cached"])]
        touch_policy: Option<String>,
        /// Replace a key that is already in the slot.
        #[arg(long)]
        overwrite: bool,
        /// Read the token's management key (hex) from standard input or a
        /// prompt (YubiKey, when it is not PIN-protected on the card).
        #[arg(long, conflicts_with = "default_management_key")]
        management_key_stdin: bool,
        /// Use the factory management key (only if the card still has it:
        /// keybridge says so loudly, and never tries it on its own).
        #[arg(long)]
        default_management_key: bool,
        /// Try the PIN even if it is the last attempt before the token blocks.
        #[arg(long)]
        spend_last_attempt: bool,
        /// Also keep the new key at the URI's persistent handle (TPM:
        /// --uri tpm:handle=0x81000100; a taken handle is refused).
        #[arg(long)]
        persistent: bool,
        /// Argon2id memory of a passphrase key: 64MiB (the default) to
        /// 1GiB. Part of the key: write it down with the passphrase, the
        /// same key is made again only with the same costs.
        #[arg(long, value_name = "SIZE", value_parser = parse_kdf_memory)]
        kdf_memory: Option<u32>,
        /// Argon2id passes of a passphrase key: 3 (the default) to 64.
        #[arg(long, value_name = "N", value_parser = parse_kdf_passes)]
        kdf_passes: Option<u32>,
        /// Argon2id lanes of a passphrase key: 1 (the default) to 16 (they
        /// run one after another: no faster, no dearer to guess; for
        /// recreating a key made with several).
        #[arg(long, value_name = "N", value_parser = parse_kdf_lanes)]
        kdf_lanes: Option<u32>,
    },
    /// List the daemon's keys, or (with --backend, e.g. pkcs11 --module M)
    /// the tokens and usable keys a backend shows, like pkcs11-tool -L -O.
    List {
        /// List what a backend shows instead of the daemon's keys.
        #[arg(long, value_parser = backend_names())]
        backend: Option<String>,
        /// Where the backend looks (PKCS#11: the module, e.g.
        /// /usr/lib/softhsm/libsofthsm2.so).
        #[arg(long, alias = "module")]
        location: Option<String>,
    },
    /// Show one key.
    Show {
        /// Key id (any unique prefix) or label.
        key: String,
    },
    /// Export a public key.
    Export {
        /// Key id (any unique prefix) or label.
        key: String,
        /// cose (hex of the COSE_Key), pem (SPKI) or ssh (authorized_keys line).
        #[arg(long, value_enum, default_value = "pem")]
        format: ExportFormat,
    },
    /// Check a YubiKey key's attestation against roots you hold (PEM;
    /// nothing is fetched) and show the card's serial, firmware, form
    /// factor and the key's PIN and touch policy.
    VerifyAttestation {
        /// Key id (any unique prefix) or label.
        key: String,
        /// PEM file of the roots to trust, and any intermediates (e.g.
        /// Yubico's yubico-ca-certs.txt and yubico-intermediate.pem,
        /// concatenated; a TPM vendor's EK CA). A YubiKey needs it; a TPM
        /// key's certification is checked without it (the EK chain then
        /// is not).
        #[arg(long)]
        roots: Option<PathBuf>,
    },
    /// Ask to join the key's account: a self-signed key request (with the
    /// key's residency evidence, if any) for an admin, and its 6-digit
    /// verification code.
    Request {
        /// The requesting key (unlocked: it signs the request).
        #[arg(long)]
        key: String,
        /// The role asked for.
        #[arg(long, value_parser = ["member", "admin"], default_value = "member")]
        role: String,
        /// A rotation: the agent's key this one replaces (kid or label);
        /// approving revokes it in the same event.
        #[arg(long)]
        replaces: Option<String>,
        /// A TPM key: the certificate of the TPM's attestation key (PEM or
        /// DER, from your CA or the maker's IAK certificate), so that
        /// devices whose policy requires hardware accept the key (`keys
        /// ak-public` prints the key a CA certifies).
        #[arg(long, value_name = "FILE")]
        ak_cert: Option<PathBuf>,
        /// Where to write the request.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (PEM) of the attestation key (AK) of the TPM
    /// that holds a TPM key, for a CA to certify (`keys request
    /// --ak-cert`): the same AK certifies every key of that TPM.
    AkPublic {
        /// Key id (any unique prefix) or label of a TPM key.
        key: String,
    },
    /// Approve a key request into the log (an admin of another agent).
    /// Shows the request and what its evidence proves first.
    Approve {
        /// The request file.
        request: PathBuf,
        /// The verification code the requester sees (asked on the terminal
        /// when not given).
        #[arg(long)]
        code: Option<String>,
        /// The approving admin key.
        #[arg(long)]
        key: String,
        /// The account's key log (rewritten in place, if unchanged meanwhile).
        #[arg(long)]
        log: PathBuf,
        /// PEM roots to check the request's evidence against (Yubico's PIV
        /// roots; a TPM vendor's EK CA).
        #[arg(long)]
        roots: Option<PathBuf>,
    },
    /// Reject a key request (kept in the log's history).
    Reject {
        /// The request file.
        request: PathBuf,
        /// Why.
        #[arg(long)]
        reason: String,
        /// The rejecting admin key.
        #[arg(long)]
        key: String,
        /// The account's key log.
        #[arg(long)]
        log: PathBuf,
    },
    /// Revoke a key: by an admin, or by the key itself.
    Revoke {
        /// The key: a kid (hex prefix) of the log, or a label of this daemon.
        target: String,
        /// The signing key.
        #[arg(long)]
        key: String,
        /// The account's key log.
        #[arg(long)]
        log: PathBuf,
    },
    /// Set the account's threshold: how many admin agents must approve
    /// adding or revoking an admin key, or a new threshold.
    Threshold {
        /// Admin agents, at least 1.
        k: u32,
        /// The signing admin key.
        #[arg(long)]
        key: String,
        /// The account's key log.
        #[arg(long)]
        log: PathBuf,
    },
}

/// `--alg`
#[derive(Clone, Copy, ValueEnum)]
pub enum AlgArg {
    /// ECDSA P-256 (ES256).
    P256,
    /// Ed25519 (EdDSA), where the hardware has it.
    Ed25519,
}

/// `--format`
#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Hex of the COSE_Key.
    Cose,
    /// SubjectPublicKeyInfo PEM.
    Pem,
    /// OpenSSH public-key line.
    Ssh,
}

pub(super) async fn run(ctx: &Ctx, cmd: &KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            backend,
            account,
            agent,
            uri,
            label,
            remember,
            alg,
            existing,
            secret_stdin,
            pin_policy,
            touch_policy,
            overwrite,
            management_key_stdin,
            default_management_key,
            spend_last_attempt,
            persistent,
            kdf_memory,
            kdf_passes,
            kdf_lanes,
        } => {
            let passphrase = backend == BackendKind::Passphrase.name();
            if !passphrase && (kdf_memory.is_some() || kdf_passes.is_some() || kdf_lanes.is_some())
            {
                anyhow::bail!(
                    "--kdf-memory, --kdf-passes and --kdf-lanes are for --backend passphrase: a {backend} key is not derived from a passphrase"
                );
            }
            // A PKCS#11 URI may name a pin-source file the daemon reads;
            // the daemon says whether a secret is needed.
            let needs_secret = match (backend.parse::<BackendKind>(), uri) {
                (Ok(kind), Some(uri)) => {
                    keybridge_backends::needs_secret(kind, uri.parse().ok().as_ref())
                }
                _ => true,
            };
            let secret = if needs_secret {
                let prompt = if passphrase {
                    "Passphrase for the new key (at least 8 characters): "
                } else {
                    "Token PIN: "
                };
                Some(read_secret(*secret_stdin, prompt, passphrase)?)
            } else {
                None
            };
            let management_key = if *management_key_stdin {
                Some(read_secret(*secret_stdin, "Management key (hex): ", false)?)
            } else {
                None
            };
            let alg = match (passphrase, alg) {
                (true, _) => None,
                (false, AlgArg::P256) => Some("p256".to_owned()),
                (false, AlgArg::Ed25519) => Some("ed25519".to_owned()),
            };
            let req = CreateKey {
                backend: backend.clone(),
                account: account.clone(),
                agent: agent.clone(),
                uri: uri.clone(),
                label: label.clone(),
                remember: *remember,
                alg,
                existing: *existing,
                secret,
                pin_policy: pin_policy.clone(),
                touch_policy: touch_policy.clone(),
                overwrite: *overwrite,
                management_key,
                default_management_key: *default_management_key,
                spend_last_attempt: *spend_last_attempt,
                persistent: *persistent,
                kdf_memory_kib: *kdf_memory,
                kdf_passes: *kdf_passes,
                kdf_lanes: *kdf_lanes,
            };
            let created = ctx.client().create_key(&req).await?;
            ctx.print(&created, |c: &CreatedKey| {
                let verb = if c.new { "created" } else { "already present" };
                let mut out = format!("{verb}: {}", key_line(&c.key));
                if let Some(kdf) = c.key.kdf.as_ref().filter(|k| !is_default(k)) {
                    out.push_str(&format!(
                        "\nArgon2id {}: write these costs down with your passphrase. The same key is made again (on another machine too) only with\n  keybridge keys create --backend passphrase --account {} --agent {} {}",
                        costs_text(kdf),
                        c.key.account,
                        c.key.agent,
                        kdf_flags(kdf)
                    ));
                }
                out
            });
            if created.factory_credentials {
                eprintln!(
                    "keybridge: WARNING: this card still uses the factory management key: anyone with the card can replace its keys. Change it (ykman piv access change-management-key --protect)."
                );
            }
        }
        KeysCommand::List {
            backend: Some(backend),
            location,
        } => {
            let tokens = ctx.client().tokens(backend, location.as_deref()).await?;
            ctx.print(&tokens, |t| render_tokens(t));
        }
        KeysCommand::List { backend: None, .. } => {
            let keys = ctx.client().keys().await?;
            ctx.print(&keys, |keys: &Vec<KeyView>| {
                if keys.is_empty() {
                    "no keys yet: keybridge keys create --backend passphrase --account A --agent U"
                        .into()
                } else {
                    keys.iter().map(key_line).collect::<Vec<_>>().join("\n")
                }
            });
        }
        KeysCommand::Show { key } => {
            let k = ctx.client().key(key).await?;
            ctx.print(&k, |k| {
                let export = k.public_key.as_ref();
                let kdf = k.kdf.as_ref().map_or_else(String::new, |kdf| {
                    let mut line = format!(
                        "kdf: Argon2id {} (write these down with your passphrase; recreate with: {})\n",
                        costs_text(kdf),
                        kdf_flags(kdf)
                    );
                    if let Some(why) = &kdf.below_policy {
                        line.push_str(&format!("WARNING: {}\n", below_policy_text(why)));
                    }
                    line
                });
                format!(
                    "{}\nuri: {}\n{kdf}{}{}",
                    key_line(k),
                    k.uri,
                    export.map_or("", |e| e.pem.as_str()),
                    export.map_or("", |e| e.ssh.as_str())
                )
            });
        }
        KeysCommand::Export { key, format } => {
            let k = ctx.client().key(key).await?;
            let Some(export) = k.public_key else {
                anyhow::bail!("the daemon sent no public key for {key}");
            };
            let out = match format {
                ExportFormat::Cose => export.cose,
                ExportFormat::Pem => export.pem,
                ExportFormat::Ssh => export.ssh,
            };
            println!("{}", out.trim_end());
        }
        KeysCommand::VerifyAttestation { key, roots } => {
            super::attestation::verify(ctx, key, roots.as_deref()).await?;
        }
        KeysCommand::Request {
            key,
            role,
            replaces,
            ak_cert,
            out,
        } => {
            super::lifecycle::request(ctx, key, role, replaces.as_deref(), ak_cert.as_deref(), out)
                .await?
        }
        KeysCommand::AkPublic { key } => super::attestation::ak_public(ctx, key).await?,
        KeysCommand::Approve {
            request,
            code,
            key,
            log,
            roots,
        } => {
            super::lifecycle::approve(ctx, request, code.as_deref(), key, log, roots.as_deref())
                .await?
        }
        KeysCommand::Reject {
            request,
            reason,
            key,
            log,
        } => super::lifecycle::reject(ctx, request, reason, key, log).await?,
        KeysCommand::Revoke { target, key, log } => {
            super::lifecycle::revoke(ctx, target, key, log).await?
        }
        KeysCommand::Threshold { k, key, log } => {
            super::lifecycle::threshold(ctx, *k, key, log).await?
        }
    }
    Ok(())
}

/// `--kdf-memory`: a size with its unit, `256MiB`, `1GiB` (or `KiB`), in
/// KiB, within what a key may have.
fn parse_kdf_memory(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit: give one, e.g. 256MiB or 1GiB"))?;
    let (number, unit) = t.split_at(split);
    let kib_per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "kib" => 1,
        "mib" => 1024,
        "gib" => 1024 * 1024,
        _ => return Err(format!("{s:?}: the unit is KiB, MiB or GiB, e.g. 256MiB")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size, e.g. 256MiB"))?;
    let (min, max) = (KdfCosts::DEFAULT.m_kib, KdfCosts::MAX.m_kib);
    number
        .checked_mul(kib_per_unit)
        .and_then(|kib| u32::try_from(kib).ok())
        .filter(|kib| (min..=max).contains(kib))
        .ok_or_else(|| {
            format!(
                "{s} is out of range: allowed {} to {}",
                memory_text(min),
                memory_text(max)
            )
        })
}

/// `--kdf-passes`, within what a key may have.
fn parse_kdf_passes(s: &str) -> Result<u32, String> {
    parse_in(s, KdfCosts::DEFAULT.t, KdfCosts::MAX.t)
}

/// `--kdf-lanes`, within what a key may have.
fn parse_kdf_lanes(s: &str) -> Result<u32, String> {
    parse_in(s, KdfCosts::DEFAULT.p, KdfCosts::MAX.p)
}

fn parse_in(s: &str, min: u32, max: u32) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{s} is out of range: allowed {min} to {max}"))
}

fn costs_of(kdf: &KdfView) -> KdfCosts {
    KdfCosts {
        m_kib: kdf.memory_kib,
        t: kdf.passes,
        p: kdf.lanes,
    }
}

fn is_default(kdf: &KdfView) -> bool {
    costs_of(kdf) == KdfCosts::DEFAULT
}

/// `256 MiB, 4 passes, 1 lane`.
pub(super) fn costs_text(kdf: &KdfView) -> String {
    costs_of(kdf).to_string()
}

/// The `keys create` flags that make a key with these costs.
pub(super) fn kdf_flags(kdf: &KdfView) -> String {
    format!(
        "--kdf-memory {} --kdf-passes {} --kdf-lanes {}",
        memory_text(kdf.memory_kib).replace(' ', ""),
        kdf.passes,
        kdf.lanes
    )
}

/// What `status`, `keys show` and `doctor` say of a key below the policy's
/// floor.
pub(super) fn below_policy_text(why: &str) -> String {
    format!(
        "{why}. The key still signs (its public key is out already: refusing it would not make a guess dearer); replace it with a key of at least those costs (keys create --kdf-memory …, keys request --replaces, approve, revoke the old one)"
    )
}

fn render_tokens(tokens: &[TokenListing]) -> String {
    let mut out = String::new();
    for t in tokens {
        out.push_str(&format!(
            "slot {}: token {:?} ({} {}, serial {}){}\n  {}\n",
            t.slot.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            t.label,
            t.manufacturer,
            t.model,
            t.serial,
            if t.pin_locked { "  PIN LOCKED" } else { "" },
            t.uri
        ));
        for k in &t.keys {
            out.push_str(&format!(
                "    {}  {:<7} {:?} id {}{}\n      {}\n",
                k.kid,
                k.alg,
                k.label,
                k.id,
                if k.login_each_signature == Some(true) {
                    "  (PIN on the token for each signature)"
                } else {
                    ""
                },
                k.uri
            ));
        }
    }
    if out.is_empty() {
        "no tokens".into()
    } else {
        out.trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_memory_takes_a_size_with_its_unit_within_the_bounds() {
        assert_eq!(parse_kdf_memory("64MiB"), Ok(65536));
        assert_eq!(parse_kdf_memory("256 MiB"), Ok(262144));
        assert_eq!(parse_kdf_memory("256mib"), Ok(262144));
        assert_eq!(parse_kdf_memory("1GiB"), Ok(1048576));
        assert_eq!(parse_kdf_memory("70000KiB"), Ok(70000));
        for (bad, says) in [
            ("256", "no unit"),
            ("256MB", "KiB, MiB or GiB"),
            ("256M", "KiB, MiB or GiB"),
            ("1.5GiB", "KiB, MiB or GiB"),
            ("MiB", "not a size"),
            ("63MiB", "allowed 64 MiB to 1 GiB"),
            ("2GiB", "allowed 64 MiB to 1 GiB"),
            ("99999999999GiB", "allowed 64 MiB to 1 GiB"),
        ] {
            let err = parse_kdf_memory(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(parse_kdf_passes("4"), Ok(4));
        assert!(
            parse_kdf_passes("2")
                .unwrap_err()
                .contains("allowed 3 to 64")
        );
        assert!(
            parse_kdf_lanes("17")
                .unwrap_err()
                .contains("allowed 1 to 16")
        );
    }

    #[test]
    fn the_flags_shown_make_the_same_costs_again() {
        for kib in [65536, 262144, 1048576, 70000] {
            let kdf = KdfView {
                memory_kib: kib,
                passes: 4,
                lanes: 2,
                below_policy: None,
            };
            let flags = kdf_flags(&kdf);
            let memory = flags.split_whitespace().nth(1).unwrap();
            assert_eq!(parse_kdf_memory(memory), Ok(kib), "{flags}");
            assert!(flags.ends_with("--kdf-passes 4 --kdf-lanes 2"), "{flags}");
        }
    }
}
