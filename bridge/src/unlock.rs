//! Prompt frequency (DESIGN.md §6), in one place: the modes, the grant an
//! unlock gives, its deadline, the backoff after wrong secrets, and the
//! sweep that locks keys on time.
//!
//! The bridge holds no key material: a backend's worker thread does. What
//! lives here is *whether* a key may sign right now — a grant with a mode
//! and a deadline. `each-task` grants are taken by the one signature they
//! allow (the worker signs and locks in one job, so nothing slips between);
//! timed grants lapse at their deadline, when the worker is told to lock and
//! the backend zeroizes what it cached. Deadlines run on the boot clock
//! ([`Clock::boot`]), which cannot be set back.
//!
//! The grant is the one source of truth for "unlocked": it changes only
//! under the key's transition lock, together with the worker's state, so
//! what the API shows is what a signature finds.
//!
//! A key on a removable token also loses its grant when the token goes
//! ([`Unlocker::check_presence`], run by the same sweep): at once when it
//! is pulled out, after [`UNSEEN_LIMIT_SECS`] on the boot clock when it
//! cannot be seen (pcscd away, the machine asleep).

use crate::clock::Clock;
use crate::keys::{KeyError, Keys};
use keybridge_backends::{BackendError, SecretString, Seen, UNSEEN_LIMIT_SECS, Worker};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an unlock lasts.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Remember {
    /// One unlock allows exactly one signature.
    EachTask,
    /// 24 hours.
    Daily,
    /// 168 hours.
    Weekly,
}

impl Remember {
    /// Every mode, shortest first.
    pub const ALL: [Remember; 3] = [Remember::EachTask, Remember::Daily, Remember::Weekly];

    /// How long an unlock in this mode lasts, seconds. `each-task` unlocks
    /// last until their one signature, or five minutes unused.
    pub fn lifetime(self) -> i64 {
        match self {
            Remember::EachTask => 300,
            Remember::Daily => 24 * 3600,
            Remember::Weekly => 168 * 3600,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Remember::EachTask => "each-task",
            Remember::Daily => "daily",
            Remember::Weekly => "weekly",
        }
    }
}

impl std::str::FromStr for Remember {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Remember::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("{s:?} is not each-task, daily or weekly"))
    }
}

/// An unlock: its mode, when it ends on the boot clock (the deadline that
/// is enforced), and the same instant in wall-clock seconds (what is shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    mode: Remember,
    until_boot: i64,
    until: i64,
}

/// Consecutive wrong secrets, for backoff.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    last_boot: i64,
}

/// The wait after `count` consecutive wrong secrets: 1 s, 2 s, 4 s, … up to
/// a minute.
pub fn backoff(count: u32) -> i64 {
    if count == 0 {
        return 0;
    }
    1i64.checked_shl(count - 1).map_or(60, |d| d.min(60))
}

/// A key's unlock state: its grant, the lock that orders changes to it,
/// and its run of wrong secrets.
#[derive(Debug, Default)]
pub struct Unlocker {
    /// Changed only while `transition` is held, together with the worker.
    grant: Mutex<Option<Grant>>,
    /// Serializes unlock, lock, expiry and `each-task` signatures: each
    /// changes the grant and the worker together.
    transition: tokio::sync::Mutex<()>,
    failures: Mutex<Failures>,
    /// Boot-clock time since which the key's token has been unseen.
    unseen_since: Mutex<Option<i64>>,
}

/// What the presence sweep did to a key (for the daemon's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The token was pulled out: the key lost its unlock (the backend had
    /// already forgotten the PIN).
    Removed,
    /// The token cannot be seen since now; the unlock stays for
    /// [`UNSEEN_LIMIT_SECS`].
    Unseen,
    /// Seen again within the limit: nothing was lost.
    Back,
    /// Unseen for [`UNSEEN_LIMIT_SECS`]: the key lost its unlock.
    UnseenTooLong,
}

impl Unlocker {
    fn unseen_since(&self) -> std::sync::MutexGuard<'_, Option<i64>> {
        self.unseen_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant(&self) -> std::sync::MutexGuard<'_, Option<Grant>> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unlock state at boot-clock time `boot`: mode and wall-clock
    /// deadline, if unlocked.
    pub fn unlocked(&self, boot: i64) -> Option<(Remember, i64)> {
        let g = *self.grant();
        g.filter(|g| g.until_boot > boot).map(|g| (g.mode, g.until))
    }

    /// Unlocks with `secret` for `mode`. On a wrong secret nothing changes:
    /// an existing grant stays, a locked key stays locked; consecutive wrong
    /// secrets make the next attempt wait ([`backoff`]), and an attempt
    /// that comes too early is not tried at all.
    pub async fn unlock(
        &self,
        worker: &Worker,
        secret: SecretString,
        mode: Remember,
        spend_last_attempt: bool,
        clock: &Clock,
    ) -> Result<i64, KeyError> {
        let _transition = self.transition.lock().await;
        let boot = clock.boot();
        let failures = *self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let next = failures.last_boot.saturating_add(backoff(failures.count));
        if failures.count > 0 && boot < next {
            return Err(KeyError::TooManyAttempts {
                retry_after: u64::try_from(next - boot).unwrap_or(1),
            });
        }
        let result = worker.unlock(secret, spend_last_attempt).await;
        {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(()) => *f = Failures::default(),
                Err(BackendError::WrongSecret { .. }) => {
                    *f = Failures {
                        count: f.count.saturating_add(1),
                        last_boot: clock.boot(),
                    }
                }
                Err(_) => {}
            }
        }
        result?;
        let until = clock.now().saturating_add(mode.lifetime());
        *self.grant() = Some(Grant {
            mode,
            until_boot: clock.boot().saturating_add(mode.lifetime()),
            until,
        });
        Ok(until)
    }

    /// Locks now; the backend forgets its secret.
    pub async fn lock(&self, worker: &Worker) {
        let _transition = self.transition.lock().await;
        self.grant().take();
        worker.lock().await;
    }

    /// Forgets the grant without waiting for the worker (shutdown: a
    /// worker stuck in a hardware operation must not keep the key usable).
    pub fn revoke(&self) {
        self.grant().take();
    }

    /// Locks if the grant's deadline has passed. Returns true if it did.
    pub async fn expire(&self, worker: &Worker, boot: i64) -> bool {
        let current = *self.grant();
        if current.is_none_or(|g| g.until_boot > boot) {
            return false;
        }
        let _transition = self.transition.lock().await;
        let lapsed = {
            let mut g = self.grant();
            match *g {
                Some(grant) if grant.until_boot <= boot => {
                    *g = None;
                    true
                }
                _ => false,
            }
        };
        if lapsed {
            worker.lock().await;
        }
        lapsed
    }

    /// Signs `tbs` if the grant allows: an `each-task` grant is spent by
    /// this signature whatever its outcome.
    pub async fn sign(
        &self,
        worker: &Worker,
        tbs: Vec<u8>,
        boot: i64,
    ) -> Result<Vec<u8>, KeyError> {
        let current = *self.grant();
        let mode = match current {
            None => return Err(KeyError::Locked),
            Some(g) if g.until_boot <= boot => {
                self.expire(worker, boot).await;
                return Err(KeyError::Locked);
            }
            Some(g) => g.mode,
        };
        if mode != Remember::EachTask {
            // A lock racing this signature wins: the worker answers Locked.
            return self.timed_sign(worker, tbs).await;
        }
        // Spending an each-task grant changes the key's state: under the
        // transition lock, and only if the grant is still the one we saw.
        let _transition = self.transition.lock().await;
        let grant = {
            let mut g = self.grant();
            match *g {
                Some(grant) if grant.mode == Remember::EachTask && grant.until_boot > boot => {
                    g.take()
                }
                _ => None,
            }
        };
        if grant.is_some() {
            return Ok(worker.sign_then_lock(tbs).await?);
        }
        // Another request spent it, or replaced it: a timed grant now
        // allows this signature, anything else does not.
        let current = *self.grant();
        if current.is_none_or(|g| g.until_boot <= boot) {
            return Err(KeyError::Locked);
        }
        drop(_transition);
        self.timed_sign(worker, tbs).await
    }
}

impl Unlocker {
    /// Applies what the backend's presence watch saw, at boot-clock time
    /// `boot`: a token pulled out loses its grant now, one unseen since
    /// [`UNSEEN_LIMIT_SECS`] ago loses it now, and the worker is locked
    /// (the backend zeroizes the PIN). Returns what changed, if anything.
    pub async fn check_presence(&self, worker: &Worker, boot: i64) -> Option<PresenceEvent> {
        let gone = match worker.presence() {
            Seen::Present => {
                return self.unseen_since().take().map(|_| PresenceEvent::Back);
            }
            Seen::Removed => PresenceEvent::Removed,
            Seen::Unseen => {
                let mut since = self.unseen_since();
                let Some(start) = *since else {
                    *since = Some(boot);
                    return Some(PresenceEvent::Unseen);
                };
                if boot.saturating_sub(start) < UNSEEN_LIMIT_SECS {
                    return None;
                }
                PresenceEvent::UnseenTooLong
            }
        };
        self.grant().as_ref()?;
        let _transition = self.transition.lock().await;
        // An unlock that came in between saw the token again.
        if worker.presence() == Seen::Present || self.grant().take().is_none() {
            return None;
        }
        *self.unseen_since() = None;
        worker.lock().await;
        Some(gone)
    }

    /// A signature under a timed grant. A backend that locked itself (a
    /// token that forgot its PIN because it was unplugged) answers
    /// `Locked`: the grant goes too, so that what the API shows stays what
    /// a signature finds, and the user is asked again.
    async fn timed_sign(&self, worker: &Worker, tbs: Vec<u8>) -> Result<Vec<u8>, KeyError> {
        let result = worker.sign(tbs).await;
        // Only a failed signature asks the worker (no cost on the hot path);
        // a token that hangs cannot say, and its grant stays as it is.
        let hangs = matches!(result, Err(BackendError::NotAnswering { .. }));
        if result.is_err() && !hangs && !worker.is_unlocked().await {
            let _transition = self.transition.lock().await;
            if !worker.is_unlocked().await {
                self.grant().take();
            }
        }
        Ok(result?)
    }
}

/// Locks the keys whose grant lapsed, every second, so that secrets leave
/// memory on time even when no request comes (deadlines are also checked
/// at every request).
pub fn spawn_expiry_sweep(keys: Arc<Keys>, clock: Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            keys.expire_all(clock.boot()).await;
        }
    })
}
