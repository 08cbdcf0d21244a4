//! The daemon's lifecycle, in one place: check and lock the folders, bind
//! the socket (or take the one systemd passed: socket activation), tell
//! systemd it is ready (`Type=notify`), serve with limits, drain on
//! SIGTERM/SIGINT — or after an idle period, with `--idle-exit` — within a
//! deadline, lock every key, remove the socket (unless systemd owns it).
//!
//! Limits, so that no client can hold the daemon (or its shutdown) hostage:
//! a request's headers must arrive within [`Limits::header_read`] (an idle
//! keep-alive connection waiting for its next request counts the same), its
//! body within [`Limits::body_read`], at most [`Limits::max_connections`]
//! connections are served at once (further ones wait in the listen
//! backlog), and shutdown waits at most [`Limits::shutdown_grace`] for
//! in-flight requests before the keys are locked and the process exits.

use crate::api::{self, AppState, PeerUid};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::keys::Keys;
use crate::paths::{self, Paths};
use crate::policy::Policy;
use anyhow::{Context as _, bail};
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tower_service::Service as _;

/// How the daemon was asked to run.
pub struct Options {
    /// Socket path (default: from [`Paths`]).
    pub socket: PathBuf,
    /// The administrator's policy file (wins whenever it exists).
    pub system_policy: PathBuf,
    /// Another policy file that can only narrow the system policy.
    pub extra_policy: Option<PathBuf>,
    /// Time source.
    pub clock: Clock,
    /// The listening socket systemd passed ([`inherited_listener`]): used
    /// as it is, and left in place at exit (systemd owns it).
    pub inherited: Option<std::os::unix::net::UnixListener>,
    /// Exit after this long with no connection.
    pub idle_exit: Option<Duration>,
    /// The loopback listener for web consoles ([`api::web`]).
    pub http: Option<HttpOptions>,
    /// [`Limits::stream_stall`] instead of its default (tests).
    pub stream_stall: Option<Duration>,
    /// [`Limits::token_answer`] instead of its default (tests).
    pub token_answer: Option<Duration>,
}

/// `serve --http ADDR --allow-origin ORIGIN…` (or `http` and
/// `allow_origins` in config.toml)
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to listen: a loopback address (`127.0.0.1:PORT`, `[::1]:PORT`;
    /// port 0 picks one).
    pub addr: std::net::SocketAddr,
    /// The consoles' origins, normalized.
    pub origins: Vec<String>,
}

impl HttpOptions {
    /// From an address and origins as the user wrote them (checked:
    /// loopback is checked when binding).
    pub fn parse(addr: &str, origins: &[String]) -> anyhow::Result<Self> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            anyhow::anyhow!("http {addr:?}: an address and port, 127.0.0.1:PORT or [::1]:PORT")
        })?;
        let origins = origins
            .iter()
            .map(|o| {
                crate::pairing::check_origin(o).map_err(|e| anyhow::anyhow!("allow-origin: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(HttpOptions { addr, origins })
    }
}

/// The listening socket systemd passed (socket activation), if any: only
/// when `LISTEN_PID` is this process and `LISTEN_FDS` is set (the strict
/// protocol: without `LISTEN_PID` the descriptors are not taken). Exactly
/// one descriptor, a Unix stream socket (checked by `listenfd`, which turns
/// descriptor 3 into a listener: the one `unsafe` step of it, which this
/// crate forbids itself). Unsets `LISTEN_PID` and `LISTEN_FDS`: call it
/// before any thread starts.
pub fn inherited_listener() -> anyhow::Result<Option<std::os::unix::net::UnixListener>> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (a parent that did not unset them).
        return Ok(None);
    }
    match fds.trim().parse::<usize>() {
        Ok(1) => {}
        Ok(n) => bail!(
            "socket activation passed {n} sockets (LISTEN_FDS={n}); keybridge.socket listens on exactly one"
        ),
        Err(_) => bail!("socket activation: LISTEN_FDS={fds:?} is not a number"),
    }
    let listener = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .context("the socket systemd passed (descriptor 3) is not a listening Unix stream socket")?
        .context("socket activation passed no socket at descriptor 3")?;
    Ok(Some(listener))
}

/// The daemon's limits (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request's headers, idle keep-alive included.
    pub header_read: Duration,
    /// Longest wait for a request's body.
    pub body_read: Duration,
    /// Longest a client may stop reading a streamed answer (a batch's
    /// envelopes) before it is cut off.
    pub stream_stall: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Longest wait for the backends to lock at shutdown.
    pub lock_deadline: Duration,
    /// Longest a request waits for a hardware key's token (a card, module
    /// or TPM that hangs): then `token_not_answering`, and the key's next
    /// requests are refused at once until the token answers.
    pub token_answer: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            stream_stall: Duration::from_secs(30),
            max_connections: 128,
            // Long enough for a signature that waits for a touch (a
            // YubiKey gives up after 15 s).
            shutdown_grace: Duration::from_secs(20),
            lock_deadline: Duration::from_secs(5),
            // Well past a touch (15 s) and a TPM's or token's slowest
            // operation (key generation, a few seconds).
            token_answer: Duration::from_secs(60),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(paths: Paths, opts: Options) -> anyhow::Result<()> {
    let mut limits = Limits::default();
    if let Some(stall) = opts.stream_stall {
        limits.stream_stall = stall;
    }
    if let Some(answer) = opts.token_answer {
        limits.token_answer = answer;
    }
    let runtime_dir = opts
        .socket
        .parent()
        .context("socket path has no folder")?
        .to_owned();
    for dir in [&runtime_dir, &paths.state, &paths.keys_dir()] {
        paths::private_dir(dir).with_context(|| format!("{}", dir.display()))?;
    }

    // One daemon per home and one per socket: both locks are held for the
    // daemon's lifetime and released by the kernel however it exits, even
    // on kill -9. Two daemons on one home would write one audit log and
    // key folder; two on one socket would take each other's socket away.
    let _home_lock = take_lock(&paths.state.join("daemon.lock"), || {
        format!(
            "a keybridge daemon is already running on the state folder {}",
            paths.state.display()
        )
    })?;
    let _socket_lock = take_lock(&runtime_dir.join("bridge.lock"), || {
        format!(
            "a keybridge daemon is already running on {}",
            opts.socket.display()
        )
    })?;
    // We hold the lock: temp files of ours here were left by a crash
    // mid-write (the file they were to replace is whole, old or new).
    for dir in [&paths.state, &paths.keys_dir()] {
        let removed = paths::remove_leftover_temps(dir);
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed temp files a crash left");
        }
    }
    // We hold the lock, so a socket file left here is stale (a crash) —
    // unless systemd made it and passed it to us.
    if opts.inherited.is_none() {
        match fs::remove_file(&opts.socket) {
            Ok(()) => tracing::info!(socket = %opts.socket.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the stale socket"),
        }
    }

    let policy = Policy::load(
        &opts.system_policy,
        opts.extra_policy.as_deref(),
        &paths.config_file(),
    )?;
    keybridge_backends::set_module_allowlist(policy.pkcs11_modules.clone());
    let keys = Keys::load(&paths, limits.token_answer)?;
    let audit = AuditLog::open(&paths.audit_log())
        .with_context(|| paths.audit_log().display().to_string())?;
    let activated = opts.inherited.is_some();
    let listener = match opts.inherited {
        Some(l) => {
            l.set_nonblocking(true)?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned));
            if path.as_deref() != Some(opts.socket.as_path()) {
                tracing::warn!(
                    passed = ?path,
                    expected = %opts.socket.display(),
                    "systemd passed a socket at another path than the one clients use"
                );
            }
            UnixListener::from_std(l).context("the socket systemd passed")?
        }
        None => {
            let l = UnixListener::bind(&opts.socket)
                .with_context(|| format!("binding {}", opts.socket.display()))?;
            fs::set_permissions(&opts.socket, fs::Permissions::from_mode(0o600))?;
            l
        }
    };

    let pairings = Arc::new(
        crate::pairing::Pairings::load(&paths.state.join("pairings.json"))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let http = match opts.http {
        Some(h) => Some(h),
        None => match &policy.http {
            None => None,
            Some(addr) => Some(
                HttpOptions::parse(addr, &policy.allow_origins)
                    .context("http and allow_origins in config.toml")?,
            ),
        },
    };
    let web = match http {
        None => None,
        Some(h) => {
            if !h.addr.ip().is_loopback() {
                bail!(
                    "--http {}: the console listener binds to loopback only (127.0.0.1:PORT or [::1]:PORT)",
                    h.addr
                );
            }
            if h.origins.is_empty() {
                bail!(
                    "--http needs the consoles it serves: --allow-origin https://console.example (exact origins)"
                );
            }
            let l = tokio::net::TcpListener::bind(h.addr)
                .await
                .with_context(|| format!("binding {}", h.addr))?;
            let addr = l.local_addr()?;
            tracing::info!(%addr, origins = ?h.origins, "console listener on loopback");
            Some((
                l,
                Arc::new(api::web::Web {
                    port: addr.port(),
                    origins: h.origins,
                    pairings: pairings.clone(),
                }),
            ))
        }
    };

    let state = Arc::new(AppState {
        keys: Arc::new(keys),
        policy,
        audit,
        clock: opts.clock.clone(),
        uid: rustix::process::getuid().as_raw(),
        socket: opts.socket.clone(),
        started: opts.clock.now(),
        body_read: limits.body_read,
        stream_stall: limits.stream_stall,
        pairings,
    });
    tracing::info!(
        socket = %opts.socket.display(),
        keys = state.keys.all().len(),
        pid = std::process::id(),
        activated,
        idle_exit = ?opts.idle_exit,
        "keybridge daemon listening"
    );
    // Type=notify: ready now (a no-op without systemd's NOTIFY_SOCKET).
    notify(sd_notify::NotifyState::Ready);

    let sweeper = crate::unlock::spawn_expiry_sweep(state.keys.clone(), state.clock.clone());

    // One shutdown for both listeners: a signal, or the idle period.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let idle = Idle::new(opts.idle_exit);
    let watcher = {
        let idle = idle.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = idle.elapsed() => {}
            }
            let _ = stop.send(true);
        })
    };
    let web = web.map(|(listener, web)| {
        tokio::spawn(serve(
            listener,
            api::web::router(state.clone(), web),
            limits,
            idle.clone(),
            stopping.clone(),
        ))
    });
    serve(listener, api::router(state.clone()), limits, idle, stopping).await;
    if let Some(web) = web {
        let _ = web.await;
    }
    watcher.abort();

    notify(sd_notify::NotifyState::Stopping);
    sweeper.abort();
    state.keys.lock_all(limits.lock_deadline).await;
    if !activated {
        let _ = fs::remove_file(&opts.socket);
    }
    tracing::info!("keybridge daemon stopped; keys locked");
    Ok(())
}

/// Tells systemd `state` (`Type=notify`); without systemd, nothing.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Opens (creating owner-only, never through a symlink) and locks `path`.
fn take_lock(path: &Path, busy: impl FnOnce() -> String) -> anyhow::Result<fs::File> {
    let lock =
        paths::open_private(path, paths::Open::Lock).with_context(|| path.display().to_string())?;
    if lock.try_lock().is_err() {
        bail!(busy());
    }
    Ok(lock)
}

/// Completes once `shutdown` says stop (or its sender is gone).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A listening socket the daemon serves: the Unix socket (the peer's uid
/// from `SO_PEERCRED`) or the loopback TCP listener (no uid: its requests
/// are authorized by origin and pairing, [`api::web`]).
trait Listen: Send + 'static {
    /// A connection.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection, and its peer's uid if the socket tells.
    fn next(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, PeerUid)>> + Send;
}

impl Listen for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<(Self::Io, PeerUid)> {
        let (stream, _) = self.accept().await?;
        let peer = PeerUid(stream.peer_cred().ok().map(|c| c.uid()));
        Ok((stream, peer))
    }
}

impl Listen for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<(Self::Io, PeerUid)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, PeerUid(None)))
    }
}

/// Accepts and serves connections until `shutdown` says so, then waits at
/// most `limits.shutdown_grace` for the connections to finish. Every
/// connection counts for `idle`.
async fn serve<L: Listen>(
    listener: L,
    app: axum::Router,
    limits: Limits,
    idle: Idle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            () = stopped(&mut shutdown) => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.next() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or memory: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().call(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = idle.open();
        tokio::spawn(async move {
            let _ = connection.await;
            drop(open);
            drop(permit);
        });
    }
    // No new connections from here on; a client now sees "not running".
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown deadline; exiting anyway"
        );
    }
}

/// The idle timer of `--idle-exit`: it elapses once no connection has
/// been open for the idle period.
#[derive(Clone)]
struct Idle(Option<Arc<IdleState>>);

struct IdleState {
    period: Duration,
    /// Connections open, and when the last one closed (or the daemon
    /// started).
    open: std::sync::Mutex<(usize, tokio::time::Instant)>,
}

/// A connection open; dropping it records when it closed.
struct Open(Option<Arc<IdleState>>);

impl Idle {
    fn new(period: Option<Duration>) -> Self {
        Idle(period.map(|period| {
            Arc::new(IdleState {
                period,
                open: std::sync::Mutex::new((0, tokio::time::Instant::now())),
            })
        }))
    }

    fn open(&self) -> Open {
        if let Some(s) = &self.0 {
            s.open.lock().expect("not poisoned").0 += 1;
        }
        Open(self.0.clone())
    }

    /// Completes once no connection has been open for the idle period;
    /// never without `--idle-exit`.
    async fn elapsed(&self) {
        let Some(s) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let (open, since) = *s.open.lock().expect("not poisoned");
            let due = since + s.period;
            if open == 0 && tokio::time::Instant::now() >= due {
                tracing::info!(period = ?s.period, "idle: exiting (--idle-exit)");
                return;
            }
            // Check again when the period would end, or a period from now
            // while connections are open.
            let next = if open == 0 {
                due
            } else {
                tokio::time::Instant::now() + s.period
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let mut open = s.open.lock().expect("not poisoned");
            open.0 = open.0.saturating_sub(1);
            open.1 = tokio::time::Instant::now();
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
