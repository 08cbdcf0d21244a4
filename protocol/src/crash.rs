//! Crash points for the fault tests: the process aborts (no destructors,
//! no flush — as under `kill -9` or a power cut) at a chosen step of a
//! chosen write. Compiled in only with the `crash-points` feature, which
//! the binaries' `test-hooks` turn on; without it [`point`] is an empty
//! inline function and [`armed`] is always false.
//!
//! The plan comes from the environment, read once:
//! `KEYBRIDGE_CRASH_AT` names the step (`write:created`, `write:half`,
//! `write:synced`, `write:renamed`, `audit:half`, `audit:written`, and
//! the device's `append:half`, `append:written` of `log.cbor`),
//! `KEYBRIDGE_CRASH_NTH` which occurrence of it in this process (1 when
//! unset), counting only writes whose file name ends with
//! `KEYBRIDGE_CRASH_FILE` when that is set.

use std::path::Path;

/// Aborts here if this is the planned crash.
#[inline]
pub fn point(step: &str, path: &Path) {
    if armed(step, path) {
        abort(step, path);
    }
}

/// Whether this is the planned crash: the caller does the partial work
/// the step names (half a write) and calls [`abort`].
#[cfg(feature = "crash-points")]
pub fn armed(step: &str, path: &Path) -> bool {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Plan {
        step: String,
        nth: u64,
        file: Option<String>,
        seen: AtomicU64,
    }
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let step = std::env::var("KEYBRIDGE_CRASH_AT").ok()?;
        let nth = std::env::var("KEYBRIDGE_CRASH_NTH")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let file = std::env::var("KEYBRIDGE_CRASH_FILE").ok();
        Some(Plan {
            step,
            nth,
            file,
            seen: AtomicU64::new(0),
        })
    });
    let Some(plan) = plan else {
        return false;
    };
    if plan.step != step {
        return false;
    }
    if let Some(file) = &plan.file {
        let name = path.file_name().map(|n| n.to_string_lossy());
        if !name.is_some_and(|n| n.ends_with(file.as_str())) {
            return false;
        }
    }
    plan.seen.fetch_add(1, Ordering::SeqCst) + 1 == plan.nth
}

/// Without the `crash-points` feature: never.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn armed(_step: &str, _path: &Path) -> bool {
    false
}

/// Aborts the process, saying where (on stderr, for the test's log).
pub fn abort(step: &str, path: &Path) -> ! {
    eprintln!("crash point {step} at {}: aborting", path.display());
    std::process::abort()
}
