//! `keybridge serve`: run the daemon.

use super::Ctx;
use crate::clock::Clock;
use crate::policy::SYSTEM_POLICY;
use crate::server;
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;

/// `keybridge serve`
#[derive(Args)]
pub struct ServeArgs {
    /// Also listen on 127.0.0.1:PORT for a browser console.
    #[arg(long)]
    http: Option<String>,
    /// Origins allowed on --http (exact match).
    #[arg(long)]
    allow_origin: Vec<String>,
    /// Another policy file; it can only narrow /etc/keybridge/policy.toml,
    /// which wins whenever it exists.
    #[arg(long, env = "KEYBRIDGE_POLICY")]
    policy: Option<PathBuf>,
    /// Test hook: the system policy file instead of /etc/keybridge/policy.toml.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value = SYSTEM_POLICY)]
    system_policy: PathBuf,
    /// Test hook: read both clocks from this file ("WALL" or "WALL BOOT").
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    clock_file: Option<PathBuf>,
}

pub(super) async fn run(ctx: &Ctx, args: &ServeArgs) -> anyhow::Result<()> {
    if args.http.is_some() || !args.allow_origin.is_empty() {
        bail!("the browser console listener (--http) is not available in this build yet");
    }
    #[cfg(feature = "test-hooks")]
    let (clock, system_policy) = (
        match &args.clock_file {
            Some(p) => Clock::File(std::sync::Arc::new(p.clone())),
            None => Clock::System,
        },
        args.system_policy.clone(),
    );
    #[cfg(not(feature = "test-hooks"))]
    let (clock, system_policy) = (Clock::System, PathBuf::from(SYSTEM_POLICY));
    server::run(
        ctx.paths.clone(),
        server::Options {
            socket: ctx.socket.clone(),
            system_policy,
            extra_policy: args.policy.clone(),
            clock,
        },
    )
    .await
}
