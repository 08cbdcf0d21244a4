//! The daemon's lifecycle, in one place: take the per-user lock, bind the
//! socket, serve, drain on SIGTERM/SIGINT, lock every key, remove the socket.

use crate::api::{self, AppState, PeerUid};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::keys::Keys;
use crate::paths::{self, Paths};
use crate::policy::Policy;
use anyhow::{Context as _, bail};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

/// How the daemon was asked to run.
pub struct Options {
    /// Socket path (default: from [`Paths`]).
    pub socket: PathBuf,
    /// System policy file.
    pub policy: PathBuf,
    /// Time source.
    pub clock: Clock,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(paths: Paths, opts: Options) -> anyhow::Result<()> {
    let runtime_dir = opts
        .socket
        .parent()
        .context("socket path has no folder")?
        .to_owned();
    for dir in [&runtime_dir, &paths.state, &paths.keys_dir()] {
        paths::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // One daemon per socket: the lock is held for the daemon's lifetime and
    // released by the kernel however it exits, even on kill -9.
    let lock_path = runtime_dir.join("bridge.lock");
    let lock = File::create(&lock_path).with_context(|| lock_path.display().to_string())?;
    if lock.try_lock().is_err() {
        bail!(
            "a keybridge daemon is already running on {}",
            opts.socket.display()
        );
    }
    // We hold the lock, so a socket file left here is stale (a crash).
    match fs::remove_file(&opts.socket) {
        Ok(()) => tracing::info!(socket = %opts.socket.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("removing the stale socket"),
    }

    let policy = Policy::load(&opts.policy, &paths.config_file())?;
    let keys = Keys::load(&paths)?;
    let audit = AuditLog::open(&paths.audit_log())
        .with_context(|| paths.audit_log().display().to_string())?;
    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    fs::set_permissions(&opts.socket, fs::Permissions::from_mode(0o600))?;

    let state = Arc::new(AppState {
        keys,
        policy,
        audit,
        clock: opts.clock.clone(),
        uid: rustix::process::getuid().as_raw(),
        socket: opts.socket.clone(),
        started: opts.clock.now(),
    });
    tracing::info!(
        socket = %opts.socket.display(),
        keys = state.keys.all().len(),
        pid = std::process::id(),
        "keybridge daemon listening"
    );

    // Deadlines are enforced at every request too; this makes secrets leave
    // memory on time even when no request comes.
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                state.keys.expire_all(state.clock.now()).await;
            }
        })
    };

    let app = api::router(state.clone());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<PeerUid>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving")?;

    // Drained: every in-flight signature has been answered.
    sweeper.abort();
    state.keys.lock_all().await;
    let _ = fs::remove_file(&opts.socket);
    tracing::info!("keybridge daemon stopped; keys locked");
    drop(lock);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
