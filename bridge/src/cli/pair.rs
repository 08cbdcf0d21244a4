//! `keybridge pair --origin URL | list | revoke ID`: web consoles allowed
//! to use the loopback listener ([`crate::api::web`]).

use super::Ctx;
use crate::api::pair::PairingView;
use clap::{Args, Subcommand};

/// `keybridge pair`
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PairArgs {
    /// Issue a token for the console at this origin (shown once).
    #[arg(long)]
    origin: Option<String>,
    /// List or revoke pairings.
    #[command(subcommand)]
    command: Option<PairCommand>,
}

/// `keybridge pair list|revoke`
#[derive(Subcommand)]
pub enum PairCommand {
    /// The paired consoles.
    List,
    /// Revoke a pairing, by id or by origin (every pairing of it).
    Revoke {
        /// The pairing's id, or an origin.
        which: String,
    },
}

pub(super) async fn run(ctx: &Ctx, args: &PairArgs) -> anyhow::Result<()> {
    let client = ctx.client();
    match (&args.origin, &args.command) {
        (Some(origin), None) => {
            let p = client.pair(origin).await?;
            ctx.print(&p, |p: &PairingView| {
                format!(
                    "paired {} (id {}).\ntoken: {}\nGive it to the console once (it is shown only now; keybridge keeps its hash). \
                     The console must also be allowed: keybridge serve --http 127.0.0.1:PORT --allow-origin {}",
                    p.origin,
                    p.id,
                    p.token.as_deref().unwrap_or(""),
                    p.origin
                )
            });
        }
        (None, Some(PairCommand::List)) => {
            let list = client.pairings().await?;
            ctx.print(&list, |l: &Vec<PairingView>| {
                if l.is_empty() {
                    return "no console is paired (keybridge pair --origin URL)".into();
                }
                l.iter()
                    .map(|p| format!("{}  {}  since {}", p.id, p.origin, super::date(p.created)))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        (None, Some(PairCommand::Revoke { which })) => {
            let gone = client.unpair(which).await?;
            ctx.print(&gone, |g: &Vec<PairingView>| {
                g.iter()
                    .map(|p| format!("revoked {} ({})", p.id, p.origin))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        _ => anyhow::bail!("keybridge pair --origin URL, pair list, or pair revoke ID"),
    }
    Ok(())
}
