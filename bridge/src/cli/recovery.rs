//! `keybridge recovery reset`: the account's last resort when its admins
//! lost their keys. The recovery key, sealed in the age file written at
//! `account init`, signs a `reset` event here (its secret never reaches the
//! daemon): every key is removed, the new key becomes the first admin, and
//! a new recovery key is sealed in a new file — the old file no longer
//! works.

use super::{Ctx, read_secret, short};
use crate::logfile::LogFile;
use crate::paths;
use crate::recovery::{MAX_FILE_LEN, RecoveryKey};
use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use keybridge_protocol::{Op, PublicKey};
use serde::Serialize;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// `keybridge recovery …`
#[derive(Subcommand)]
pub enum RecoveryCommand {
    /// Reset the account with its recovery file: all keys removed, --new-key
    /// first (an admin), a new recovery file. Passphrases from the prompt, or
    /// with --secret-stdin two lines: the file's, then the new file's.
    Reset {
        /// The account's recovery file (age).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The key that becomes the account's first key (a key of this
        /// daemon, label or kid).
        #[arg(long)]
        new_key: String,
        /// The account's key log.
        #[arg(long)]
        log: PathBuf,
        /// Where to write the new recovery file.
        #[arg(long)]
        new_recovery_file: PathBuf,
        /// Read both passphrases from standard input, one line each.
        #[arg(long)]
        secret_stdin: bool,
    },
}

/// What a reset reports.
#[derive(Serialize)]
struct ResetDone {
    account: String,
    seq: u64,
    head: String,
    first_key: String,
    agent: String,
    recovery_kid: String,
    recovery_file: PathBuf,
}

const WITHOUT_FILE: &str = "without the recovery file: an admin of another agent can approve a new key for you \
    (keybridge keys request, then keys approve on their side); if no admin is left, the account cannot be \
    recovered and its devices must be re-deployed with a new account (keybridge-device trust init)";

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))
        .context(WITHOUT_FILE)?;
    let mut bytes = vec![];
    file.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_FILE_LEN {
        bail!(
            "{}: larger than {MAX_FILE_LEN} bytes; not a recovery file",
            path.display()
        );
    }
    Ok(bytes)
}

pub(super) async fn run(ctx: &Ctx, cmd: &RecoveryCommand) -> anyhow::Result<()> {
    let RecoveryCommand::Reset {
        file,
        new_key,
        log,
        new_recovery_file,
        secret_stdin,
    } = cmd;
    let Some(file) = file else {
        bail!("a reset needs the account's recovery file (--file); {WITHOUT_FILE}");
    };
    let sealed = read_file(file)?;
    let logfile = LogFile::read(log)?;
    let current = logfile.log();
    if new_recovery_file.symlink_metadata().is_ok() {
        bail!(
            "{} exists; refusing to overwrite it",
            new_recovery_file.display()
        );
    }
    let k = ctx.client().key(new_key).await?;
    if k.account != current.account() {
        bail!(
            "key {new_key} signs for account {:?}, the log is {:?}'s",
            k.account,
            current.account()
        );
    }
    let public = k
        .public_key
        .as_ref()
        .and_then(|p| keybridge_protocol::key::unhex(&p.cose))
        .and_then(|c| PublicKey::from_cose_key_bytes(&c).ok())
        .context("the daemon sent no usable public key")?;

    let passphrase = read_secret(*secret_stdin, "Recovery file passphrase: ", false)?;
    let (old, account) = RecoveryKey::open(&sealed, &passphrase)?;
    drop(passphrase);
    if account != current.account() {
        bail!(
            "{} is the recovery file of account {account:?}, the log is {:?}'s",
            file.display(),
            current.account()
        );
    }
    if old.public().kid() != current.recovery_key().kid() {
        let last_reset = current
            .events()
            .iter()
            .rev()
            .find(|e| matches!(e.op, Op::Reset { .. }))
            .map(|e| e.seq);
        bail!(
            "{} is no longer this account's recovery file{}: use the file written by the last reset",
            file.display(),
            last_reset
                .map(|s| format!(" (a reset at event #{s} replaced it)"))
                .unwrap_or_default()
        );
    }
    // The new recovery key, sealed before the log changes.
    let new_recovery = RecoveryKey::generate()?;
    let op = Op::Reset {
        key: public.clone(),
        agent: k.agent.clone(),
        recovery: new_recovery.public().clone(),
    };
    current
        .trust()
        .check(&old.public().kid(), &op)
        .map_err(|e| anyhow!("the log refuses this reset: {e}; nothing was written"))?;
    let new_pass = read_secret(*secret_stdin, "New recovery file passphrase: ", true)?;
    let sealed_new = new_recovery.seal(current.account(), &new_pass)?;
    drop(new_pass);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let unsigned = current.next_event(now, &op, old.public());
    let signature = old.sign(unsigned.to_be_signed());
    let event = unsigned
        .into_bytes(&signature)
        .map_err(|e| anyhow!("signing the reset: {e}"))?;
    let mut new_log = logfile.bytes().to_vec();
    new_log.extend_from_slice(&event);

    paths::write_atomic(new_recovery_file, &sealed_new)
        .with_context(|| new_recovery_file.display().to_string())?;
    let written = match logfile.replace(&new_log) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(new_recovery_file);
            return Err(e.into());
        }
    };
    let done = ResetDone {
        account: written.account().to_owned(),
        seq: written.len() - 1,
        head: keybridge_protocol::key::hex(&written.head()),
        first_key: public.kid().to_hex(),
        agent: k.agent.clone(),
        recovery_kid: new_recovery.public().kid().to_hex(),
        recovery_file: new_recovery_file.clone(),
    };
    ctx.print(&done, |d| {
        format!(
            "account {} reset (event #{}): every key removed, {}'s key {}… is the first admin.\n\
             New recovery file: {} — the old one no longer works. Devices take the new log with \
             `keybridge-device trust update {}`.",
            d.account,
            d.seq,
            d.agent,
            short(&d.first_key, 16),
            d.recovery_file.display(),
            log.display()
        )
    });
    Ok(())
}
