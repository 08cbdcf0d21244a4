//! `keybridge`: the signing bridge daemon and its command line — a thin
//! binary over the `keybridge` library (parse, log, run, exit code).

use keybridge::cli;

use clap::Parser as _;
use std::process::ExitCode;

/// Every freed allocation is zeroed first: a PIN or passphrase that passed
/// through a buffer we do not own (hyper's read buffer, a request body,
/// serde's scratch space) does not stay in the daemon's freed memory. The
/// types that hold secrets zeroize themselves as well; this covers the
/// copies on the way. The cost is one `memset` per free (a 1,000,000-device
/// batch frees 1.3 GB of answer chunks: ~0.1 s). 1Password's
/// `zeroizing-alloc`; `tests/tests/secrets.rs` reads the daemon's memory.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

/// glibc settings for the daemon: no per-thread cache of freed chunks
/// (`tcache_count=0`, whose frees skip the next setting) and every freed
/// chunk overwritten (`perturb`). The C libraries under the backends —
/// tss2-esys, pcsc-lite, PKCS#11 modules — copy a PIN into memory they
/// `free` without wiping (tss2-esys keeps the auth value in its session
/// objects): the global allocator above cannot reach those.
/// `tests/tests/secrets.rs` found a wrong TPM PIN there after `lock`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const SCRUB_TUNABLES: &str = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=165";

/// Runs the daemon again, the same program with the same arguments (and
/// process id, open descriptors: a socket systemd passed stays valid),
/// with [`SCRUB_TUNABLES`], which glibc reads only at start. Returns if it
/// cannot (the daemon then runs without them, and says so).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn scrub_c_heap() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.perturb") {
        return;
    }
    let tunables = if current.is_empty() {
        SCRUB_TUNABLES.to_owned()
    } else {
        format!("{current}:{SCRUB_TUNABLES}")
    };
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_else(|| "keybridge".into());
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(argv)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("keybridge: warning: freed C memory will not be wiped (re-exec failed: {err})");
}

fn main() -> ExitCode {
    let mut args = cli::Cli::parse();
    let serving = matches!(args.command, cli::Command::Serve(_));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if serving {
        scrub_c_heap();
    }
    // Socket activation: the inherited socket is taken while the process
    // has one thread (the environment is changed).
    if let cli::Command::Serve(serve) = &mut args.command
        && let Err(e) = serve.inherit_socket()
    {
        eprintln!("keybridge: {e:#}");
        return ExitCode::from(1);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYBRIDGE_LOG").unwrap_or_else(|_| {
                let level = if serving { "info" } else { "warn" };
                tracing_subscriber::EnvFilter::new(format!(
                    "{level},{}",
                    keybridge_backends::LOG_QUIET
                ))
            }),
        )
        .init();
    let runtime = if serving {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let result = runtime.block_on(cli::run(args));
    // A backend call stuck in hardware must not keep the process alive
    // past the daemon's shutdown deadline.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybridge: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
