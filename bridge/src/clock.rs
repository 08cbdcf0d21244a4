//! The daemon's notion of "now". Tests start a real daemon with a clock file
//! (a hidden `serve --clock-file`) and move time by rewriting it, so prompt
//! frequency deadlines are tested without sleeping.

use std::path::PathBuf;
use std::sync::Arc;

/// Where the time comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// Unix seconds read from a file at each call (testing only).
    File(Arc<PathBuf>),
}

impl Clock {
    /// Unix seconds.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => system_now(),
            Clock::File(path) => std::fs::read_to_string(path.as_ref())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(system_now),
        }
    }
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
