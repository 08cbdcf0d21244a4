//! Whether a removable token is there, as a watch thread sees it, for other
//! threads to read without asking the signer (which may be busy signing).
//!
//! A backend whose key lives in something that can be pulled out (a
//! YubiKey) watches it while unlocked:
//!
//! - [`Seen::Removed`]: the token was pulled out (or its reader went away
//!   while the smart-card service kept answering). The backend has already
//!   forgotten its PIN (zeroized); the bridge drops the unlock, so the key
//!   shows locked at once and the user is asked again.
//! - [`Seen::Unseen`]: the backend cannot tell (the smart-card service is
//!   gone: pcscd restarting, the machine asleep). The PIN is kept; the
//!   bridge locks the key if this lasts [`UNSEEN_LIMIT_SECS`] on its boot
//!   clock, so a short pcscd restart costs nothing and a long absence does.
//! - [`Seen::Present`]: there, or not watched (locked).

use std::sync::atomic::{AtomicU8, Ordering};

/// How long a token may stay unseen before the bridge forgets its PIN:
/// five minutes.
pub const UNSEEN_LIMIT_SECS: i64 = 300;

/// What the watch saw last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// There (or not watched).
    Present,
    /// Pulled out: the PIN is gone.
    Removed,
    /// Cannot be seen right now (the smart-card service is away).
    Unseen,
}

/// The shared flag: written by the backend's watch, read by the bridge.
#[derive(Debug)]
pub struct Presence(AtomicU8);

impl Default for Presence {
    fn default() -> Self {
        Presence(AtomicU8::new(Seen::Present as u8))
    }
}

impl Presence {
    /// What was seen last.
    pub fn get(&self) -> Seen {
        match self.0.load(Ordering::Acquire) {
            x if x == Seen::Removed as u8 => Seen::Removed,
            x if x == Seen::Unseen as u8 => Seen::Unseen,
            _ => Seen::Present,
        }
    }

    /// Records what was seen.
    pub fn set(&self, seen: Seen) {
        self.0.store(seen as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back() {
        let p = Presence::default();
        assert_eq!(p.get(), Seen::Present);
        for s in [Seen::Removed, Seen::Unseen, Seen::Present] {
            p.set(s);
            assert_eq!(p.get(), s);
        }
    }
}
