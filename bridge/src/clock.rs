//! The daemon's two clocks.
//!
//! - [`Clock::now`]: wall-clock unix seconds, for what is signed and shown
//!   (`iat`, `exp`, an unlock's `until` as a date).
//! - [`Clock::boot`]: seconds on `CLOCK_BOOTTIME`, for every deadline the
//!   daemon enforces (prompt frequency, PIN backoff). It cannot be set, and
//!   it keeps counting during suspend, so setting the wall clock back never
//!   extends a daily unlock and a laptop that sleeps through the deadline
//!   wakes up locked.
//!
//! Tests start a real daemon with a clock file (`serve --clock-file`, only
//! in builds with the `test-hooks` feature) and move both clocks by
//! rewriting it, so deadlines are tested without sleeping.

#[cfg(feature = "test-hooks")]
use std::path::PathBuf;
#[cfg(feature = "test-hooks")]
use std::sync::Arc;

/// Where the time comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system's clocks.
    System,
    /// Read from a file at each call: `WALL` or `WALL BOOT` (unix seconds,
    /// boot seconds; with one number both clocks read it). Testing only.
    #[cfg(feature = "test-hooks")]
    File(Arc<PathBuf>),
}

impl Clock {
    /// Wall-clock unix seconds.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => system_now(),
            #[cfg(feature = "test-hooks")]
            Clock::File(path) => read_file(path).map_or_else(system_now, |(wall, _)| wall),
        }
    }

    /// Seconds since boot, suspend included (`CLOCK_BOOTTIME`): the clock
    /// of deadlines.
    pub fn boot(&self) -> i64 {
        match self {
            Clock::System => boot_now(),
            #[cfg(feature = "test-hooks")]
            Clock::File(path) => read_file(path).map_or_else(boot_now, |(_, boot)| boot),
        }
    }
}

#[cfg(feature = "test-hooks")]
fn read_file(path: &std::path::Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut numbers = text.split_whitespace().map(str::parse::<i64>);
    let wall = numbers.next()?.ok()?;
    let boot = match numbers.next() {
        Some(b) => b.ok()?,
        None => wall,
    };
    Some((wall, boot))
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn boot_now() -> i64 {
    rustix::time::clock_gettime(rustix::time::ClockId::Boottime).tv_sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_moves_forward_with_time() {
        let a = Clock::System.boot();
        assert!(a > 0, "CLOCK_BOOTTIME counts from boot");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(Clock::System.boot() > a);
    }
}
