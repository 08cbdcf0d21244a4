//! The presence watch of an unlocked YubiKey key: a thread that waits on
//! PC/SC reader events for the card's reader and, when the card is pulled
//! out, forgets the PIN at once (zeroized) and reports
//! [`Seen::Removed`]; when pcscd cannot be reached it reports
//! [`Seen::Unseen`] and keeps trying (the bridge applies the five-minute
//! rule on its boot clock). It never talks to the card itself: it cannot
//! spend a PIN attempt or disturb another program's transaction.
//!
//! Removal is any of, after the card was seen in its reader: the reader
//! reports no card, the reader is gone while pcscd answers (a real YubiKey
//! is its own reader), or the reader's event counter moved (pulled out and
//! put back between two looks). After pcscd comes back the card counts as
//! unseen until pcscd reports it again (a fresh pcscd finds cards only at
//! its first poll), with a new baseline for the counter; the card's
//! identity is then checked, before any PIN, at the next use.

use crate::SecretString;
use crate::presence::{Presence, Seen};
use pcsc::{Context, ReaderState, Scope, State};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one wait for a reader event lasts: also how soon the thread
/// notices that it should stop, and how often it retries a lost pcscd.
const TICK: Duration = Duration::from_millis(500);

/// The PIN a signer and its watch share: the only copy.
pub(super) type SharedPin = Arc<Mutex<Option<SecretString>>>;

/// A running watch; dropping it stops the thread within [`TICK`].
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts watching `reader`. `None` if the thread cannot start (then the
/// signer notices a removal at its next use, as without a watch).
pub(super) fn start(reader: &str, pin: SharedPin, presence: Arc<Presence>) -> Option<Watch> {
    let reader = CString::new(reader).ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    presence.set(Seen::Present);
    std::thread::Builder::new()
        .name("yubikey watch".into())
        .spawn(move || run(&reader, &pin, &presence, &thread_stop))
        .ok()?;
    Some(Watch { stop })
}

/// What one look at the reader found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// The card is in, with this event count.
    In(u32),
    /// Nothing changed within the wait.
    Same,
    Removed,
    /// pcscd did not answer.
    Unseen,
}

fn run(reader: &CString, pin: &SharedPin, presence: &Presence, stop: &AtomicBool) {
    let mut context: Option<Context> = None;
    let mut state = ReaderState::new(reader.clone(), State::UNAWARE);
    // The event count when the card was first seen since pcscd came (back).
    let mut baseline: Option<u32> = None;
    while !stop.load(Ordering::Acquire) {
        let look = match &context {
            Some(ctx) => look(ctx, &mut state),
            None => match Context::establish(Scope::User) {
                Ok(ctx) => {
                    context = Some(ctx);
                    state = ReaderState::new(reader.clone(), State::UNAWARE);
                    continue;
                }
                Err(_) => Look::Unseen,
            },
        };
        match look {
            Look::Same => {}
            Look::In(count) => match baseline {
                Some(b) if b != count => {
                    removed(pin, presence);
                    return;
                }
                _ => {
                    baseline = Some(count);
                    presence.set(Seen::Present);
                }
            },
            // Seen and then gone: pulled out.
            Look::Removed if baseline.is_some() => {
                removed(pin, presence);
                return;
            }
            // Not seen since pcscd came (back): it may not have found the
            // card yet, or it was pulled while pcscd was away; the bridge's
            // five-minute rule decides.
            Look::Removed => presence.set(Seen::Unseen),
            Look::Unseen => {
                presence.set(Seen::Unseen);
                context = None;
                baseline = None;
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Waits up to [`TICK`] for the reader to change from what `state` says.
fn look(ctx: &Context, state: &mut ReaderState) -> Look {
    match ctx.get_status_change(TICK, std::slice::from_mut(state)) {
        Ok(()) => {
            let now = state.event_state();
            state.sync_current_state();
            classify(now, state.event_count())
        }
        Err(pcsc::Error::Timeout) => Look::Same,
        // pcscd answers and the reader is not there: a real YubiKey is its
        // own reader, so this is the card pulled out.
        Err(pcsc::Error::UnknownReader | pcsc::Error::NoReadersAvailable) => Look::Removed,
        Err(_) => Look::Unseen,
    }
}

fn classify(event: State, count: u32) -> Look {
    if event.intersects(State::UNKNOWN | State::UNAVAILABLE | State::IGNORE | State::EMPTY)
        || !event.contains(State::PRESENT)
    {
        Look::Removed
    } else {
        Look::In(count)
    }
}

fn removed(pin: &SharedPin, presence: &Presence) {
    // Dropping the secret zeroizes it.
    drop(pin.lock().unwrap_or_else(|e| e.into_inner()).take());
    presence.set(Seen::Removed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_in_its_reader_is_in_and_anything_else_is_removed() {
        assert_eq!(classify(State::PRESENT | State::CHANGED, 3), Look::In(3));
        assert_eq!(
            classify(State::PRESENT | State::INUSE | State::EXCLUSIVE, 3),
            Look::In(3),
            "a card another program holds is still there"
        );
        for gone in [
            State::EMPTY,
            State::EMPTY | State::CHANGED,
            State::UNKNOWN | State::IGNORE | State::CHANGED,
            State::UNAVAILABLE,
            State::empty(),
        ] {
            assert_eq!(classify(gone, 3), Look::Removed, "{gone:?}");
        }
    }

    #[test]
    fn removal_forgets_the_pin_and_says_so() {
        let pin: SharedPin = Arc::new(Mutex::new(Some(SecretString::from("123456"))));
        let presence = Presence::default();
        removed(&pin, &presence);
        assert!(pin.lock().unwrap().is_none());
        assert_eq!(presence.get(), Seen::Removed);
    }
}
