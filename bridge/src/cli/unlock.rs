//! `keybridge unlock` and `keybridge lock`.

use super::{Ctx, read_secret};
use crate::client::ClientError;
use crate::unlock::Remember;
use crate::wire::{LockState, Unlock};
use anyhow::anyhow;
use clap::Args;

/// `keybridge unlock`
#[derive(Args)]
pub struct UnlockArgs {
    /// Key id (any unique prefix) or label.
    key: String,
    /// How long the unlock lasts.
    #[arg(long, value_enum)]
    remember: Option<Remember>,
    /// Read the PIN or passphrase from one line of standard input.
    #[arg(long)]
    secret_stdin: bool,
    /// Try the PIN even if it is the last attempt before the token blocks.
    #[arg(long)]
    spend_last_attempt: bool,
}

pub(super) async fn unlock(ctx: &Ctx, args: &UnlockArgs) -> anyhow::Result<()> {
    let req = Unlock {
        secret: read_secret(args.secret_stdin, "PIN or passphrase: ", false)?,
        remember: args.remember,
        spend_last_attempt: args.spend_last_attempt,
    };
    let state = ctx
        .client()
        .unlock(&args.key, &req)
        .await
        .map_err(|e| match &e {
            ClientError::Problem(p) if p.code == "wrong_pin" && p.retries_left.is_some() => {
                let n = p.retries_left.unwrap_or_default();
                anyhow!(e).context(format!("{n} attempts left"))
            }
            _ => anyhow!(e),
        })?;
    ctx.print(&state, |s: &LockState| {
        format!("unlocked {} ({})", s.kid, s.mode.map_or("", Remember::name))
    });
    Ok(())
}

pub(super) async fn lock(ctx: &Ctx, key: &str) -> anyhow::Result<()> {
    let state = ctx.client().lock(key).await?;
    ctx.print(&state, |s: &LockState| format!("locked {}", s.kid));
    Ok(())
}
