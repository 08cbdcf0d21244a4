//! `keybridge serve`: run the daemon.

use super::Ctx;
use crate::clock::Clock;
use crate::policy::SYSTEM_POLICY;
use crate::server;
use anyhow::bail;
use clap::Args;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

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
    /// Exit after this long with no client (e.g. `15min`), locking every
    /// key and releasing every token; under socket activation
    /// (keybridge.socket) the next connection starts the daemon again.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    idle_exit: Option<Duration>,
    /// The listening socket systemd passed (socket activation), taken by
    /// [`ServeArgs::inherit_socket`] before any thread starts.
    #[arg(skip)]
    inherited: Mutex<Option<UnixListener>>,
    /// Test hook: the system policy file instead of /etc/keybridge/policy.toml.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value = SYSTEM_POLICY)]
    system_policy: PathBuf,
    /// Test hook: read both clocks from this file ("WALL" or "WALL BOOT").
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    clock_file: Option<PathBuf>,
    /// Test hook: cut off a client that stops reading a streamed batch
    /// after this long (default 30 s).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    stream_stall: Option<Duration>,
    /// Test hook: give up on a hardware token that does not answer after
    /// this long (default 60 s).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    token_deadline: Option<Duration>,
}

impl ServeArgs {
    /// Takes the listening socket systemd passed, if any
    /// ([`server::inherited_listener`]). Call it before the runtime starts
    /// any thread: it unsets `LISTEN_PID`/`LISTEN_FDS`, as sd_listen_fds
    /// does, so that no child sees them.
    pub fn inherit_socket(&mut self) -> anyhow::Result<()> {
        let listener = server::inherited_listener()?;
        *self.inherited.get_mut().expect("not poisoned") = listener;
        Ok(())
    }
}

/// `--idle-exit`: a duration (`90s`, `15min`, `1h`) of at least a second.
fn parse_idle(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 15min)"))?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

pub(super) async fn run(ctx: &Ctx, args: &ServeArgs) -> anyhow::Result<()> {
    let http = match &args.http {
        None if !args.allow_origin.is_empty() => {
            bail!("--allow-origin goes with --http 127.0.0.1:PORT (the console listener)")
        }
        None => None,
        Some(addr) => Some(
            server::HttpOptions::parse(addr, &args.allow_origin).map_err(|e| {
                anyhow::anyhow!("--{e} (127.0.0.1:PORT or [::1]:PORT; https://console.example)")
            })?,
        ),
    };
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
    #[cfg(feature = "test-hooks")]
    let (stream_stall, token_answer) = (args.stream_stall, args.token_deadline);
    #[cfg(not(feature = "test-hooks"))]
    let (stream_stall, token_answer) = (None, None);
    let inherited = args.inherited.lock().expect("not poisoned").take();
    server::run(
        ctx.paths.clone(),
        server::Options {
            socket: ctx.socket.clone(),
            system_policy,
            extra_policy: args.policy.clone(),
            clock,
            inherited,
            idle_exit: args.idle_exit,
            http,
            stream_stall,
            token_answer,
        },
    )
    .await
}
