//! `keybridge account init`: the genesis event of an account's key log,
//! signed by its first key in the daemon, and the recovery file, sealed
//! here ([`crate::recovery`]).

use super::{Ctx, read_secret, short};
use crate::paths;
use crate::recovery::RecoveryKey;
use crate::wire::{AccountInit, AccountLog};
use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use keybridge_protocol::KeyLog;
use keybridge_protocol::key::hex;
use std::path::PathBuf;

/// `keybridge account …`
#[derive(Subcommand)]
pub enum AccountCommand {
    /// Write the genesis key log (signed by --key, which must be unlocked)
    /// and an age-encrypted recovery file (passphrase from the prompt or
    /// --secret-stdin).
    Init {
        /// The account id (must be the key's account).
        #[arg(long)]
        account: String,
        /// The account's first key (an admin).
        #[arg(long)]
        key: String,
        /// Where to write the key log.
        #[arg(long)]
        log: PathBuf,
        /// Where to write the recovery file.
        #[arg(long)]
        recovery_file: PathBuf,
        /// Read the recovery passphrase from one line of standard input.
        #[arg(long)]
        secret_stdin: bool,
    },
}

pub(super) async fn run(ctx: &Ctx, cmd: &AccountCommand) -> anyhow::Result<()> {
    let AccountCommand::Init {
        account,
        key,
        log,
        recovery_file,
        secret_stdin,
    } = cmd;
    for f in [log, recovery_file] {
        if f.exists() {
            bail!("{} exists; refusing to overwrite it", f.display());
        }
    }
    let client = ctx.client();
    let k = client.key(key).await?;
    if &k.account != account {
        bail!(
            "key {key} signs for account {:?}, not {account:?}",
            k.account
        );
    }
    let passphrase = read_secret(*secret_stdin, "Recovery file passphrase: ", true)?;
    // The recovery key: generated here, sealed in the age file, never sent.
    let recovery = RecoveryKey::generate()?;
    let sealed = recovery.seal(account, &passphrase)?;
    let answer = client
        .account_init(&AccountInit {
            key: key.clone(),
            recovery_key: hex(&recovery.public().to_cose_key_bytes()),
        })
        .await?;
    let log_bytes = B64
        .decode(&answer.log)
        .context("the daemon sent bad base64")?;
    // Check with our own verifier before writing anything.
    let parsed = KeyLog::from_bytes(&log_bytes)?;
    if parsed.recovery_key() != recovery.public() {
        bail!("the daemon's genesis event names another recovery key");
    }
    paths::write_atomic(recovery_file, &sealed)
        .with_context(|| recovery_file.display().to_string())?;
    if let Err(e) = paths::write_atomic(log, &log_bytes) {
        let _ = std::fs::remove_file(recovery_file);
        return Err(e).with_context(|| log.display().to_string());
    }
    ctx.print(&answer, |a: &AccountLog| {
        format!(
            "account {account}: key log {} (head {}…), recovery file {} — keep it and its passphrase apart from this machine",
            log.display(),
            short(&a.head, 16),
            recovery_file.display()
        )
    });
    Ok(())
}
