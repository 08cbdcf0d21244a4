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

fn main() -> ExitCode {
    let mut args = cli::Cli::parse();
    let serving = matches!(args.command, cli::Command::Serve(_));
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
