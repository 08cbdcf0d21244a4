//! [`YubikeySigner`]: one PIV slot of one YubiKey.
//!
//! Unlocking opens the card by serial, checks that the slot still holds the
//! recorded public key (before any PIN is sent: a swapped card never sees
//! the PIN), then verifies the PIN under the retry rules and keeps the
//! connection and the PIN (zeroized on lock) until `lock`. Signing uses the
//! open connection; if the card was unplugged, reset by another program or
//! its PIN state lost, the signer reconnects and re-verifies with the
//! cached PIN once. A slot with PIN policy `always` gets the PIN before
//! every signature. While unlocked, a watch (`watch.rs`) forgets the PIN
//! the moment the card is pulled out.

use super::card::{self, Card};
use super::watch::{self, SharedPin, Watch};
use super::{YubikeyParams, card_algorithm, slot_of};
use crate::{BackendError, ExposeSecret as _, Presence, SecretString, Signer};
use keybridge_protocol::{Algorithm, PublicKey};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use yubikey::piv::{self, SlotId};

/// Longest message the card signs with Ed25519 in one command (the crate
/// builds the command in a 1 KiB buffer).
pub const MAX_ED25519_MESSAGE: usize = 1000;

/// A key in a YubiKey PIV slot.
pub struct YubikeySigner {
    public: PublicKey,
    params: YubikeyParams,
    slot: SlotId,
    /// While unlocked: the open card and the PIN (wiped on lock, or by the
    /// watch when the card is pulled out).
    card: Option<Card>,
    pin: SharedPin,
    presence: Arc<Presence>,
    watch: Option<Watch>,
    touch_pending: Arc<AtomicBool>,
}

impl YubikeySigner {
    /// The signer of a recorded key, locked.
    pub fn new(public: PublicKey, params: YubikeyParams) -> Result<Self, BackendError> {
        Ok(YubikeySigner {
            slot: slot_of(&params)?,
            public,
            params,
            card: None,
            pin: SharedPin::default(),
            presence: Arc::default(),
            watch: None,
            touch_pending: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Opens the recorded card and checks, before any PIN, that its slot
    /// holds our public key (where the firmware reports it).
    fn open_checked(&self) -> Result<Card, BackendError> {
        let mut card = Card::open(Some(self.params.serial))?;
        match card.slot_public_key(self.slot)? {
            Some(found) if found == self.public => Ok(card),
            Some(_) => Err(BackendError::NotFound(format!(
                "YubiKey {} slot {} holds another key than the one recorded: the key was replaced; no PIN was sent",
                self.params.serial, self.params.slot
            ))),
            None if supports_metadata(&mut card) => Err(BackendError::NotFound(format!(
                "YubiKey {} slot {} is empty: the key was deleted or the card reset; no PIN was sent",
                self.params.serial, self.params.slot
            ))),
            // Firmware before 5.3 cannot tell without a signature: the
            // signature is checked against the recorded key instead.
            None => Ok(card),
        }
    }

    /// Verifies the cached PIN on `card`: one attempt, never the last (it
    /// was right a moment ago). [`BackendError::Locked`] once forgotten.
    fn verify_cached_pin(&self, card: &mut Card) -> Result<(), BackendError> {
        let pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let pin = pin.as_ref().ok_or(BackendError::Locked)?;
        card::verify_pin(card, pin, false)
    }

    fn has_pin(&self) -> bool {
        self.pin.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn pin_always(&self) -> bool {
        self.params.pin_policy == "always"
    }

    fn needs_touch(&self) -> bool {
        self.params.touch_policy != "never"
    }

    fn raw_sign(&self, card: &mut Card, tbs: &[u8]) -> Result<Vec<u8>, yubikey::Error> {
        let alg = card_algorithm(&self.public);
        self.touch_pending
            .store(self.needs_touch(), Ordering::Release);
        let result = match self.public.algorithm() {
            Algorithm::Es256 => {
                let digest = Sha256::digest(tbs);
                piv::sign_data(card.yk(), &digest, alg, self.slot)
            }
            Algorithm::Ed25519 => piv::sign_data(card.yk(), tbs, alg, self.slot),
        };
        self.touch_pending.store(false, Ordering::Release);
        result.map(|b| b.to_vec())
    }

    /// Connects (again) and verifies the cached PIN once. A card that is
    /// not found keeps the PIN here: whether it was pulled out is for the
    /// watch to say (pcscd may just not have found it again yet after a
    /// restart); a card found with another key never gets the PIN.
    fn reconnect(&mut self) -> Result<(), BackendError> {
        self.card = None;
        let mut card = self.open_checked()?;
        self.verify_cached_pin(&mut card)?;
        self.card = Some(card);
        Ok(())
    }

    /// The 64-byte signature from what the card returned.
    fn finish(&self, sig: &[u8]) -> Result<Vec<u8>, BackendError> {
        match self.public.algorithm() {
            Algorithm::Es256 => {
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| {
                    BackendError::Failed("the card returned a malformed ECDSA signature".into())
                })?;
                Ok(sig.normalize_s().to_bytes().to_vec())
            }
            Algorithm::Ed25519 if sig.len() == 64 => Ok(sig.to_vec()),
            Algorithm::Ed25519 => Err(BackendError::Failed(
                "the card returned an Ed25519 signature of the wrong size".into(),
            )),
        }
    }
}

/// Whether the card was pulled out (as opposed to reset or held).
fn removed(e: &yubikey::Error) -> bool {
    matches!(
        e,
        yubikey::Error::PcscError {
            inner: Some(
                pcsc::Error::RemovedCard
                    | pcsc::Error::NoSmartcard
                    | pcsc::Error::ReaderUnavailable
                    | pcsc::Error::UnknownReader
                    | pcsc::Error::NoReadersAvailable
            )
        }
    )
}

fn supports_metadata(card: &mut Card) -> bool {
    let v = card.yk().version();
    (v.major, v.minor) >= (5, 3)
}

impl Signer for YubikeySigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn unlock(
        &mut self,
        secret: &SecretString,
        spend_last_attempt: bool,
    ) -> Result<(), BackendError> {
        let mut card = self.open_checked()?;
        card::verify_pin(&mut card, secret, spend_last_attempt)?;
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(SecretString::from(secret.expose_secret().to_owned()));
        self.watch = watch::start(
            card.reader_name(),
            Arc::clone(&self.pin),
            Arc::clone(&self.presence),
        );
        self.card = Some(card);
        Ok(())
    }

    fn lock(&mut self) {
        self.watch = None;
        // Dropping the card resets it: its PIN state is gone too.
        self.card = None;
        drop(self.pin.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn is_unlocked(&self) -> bool {
        self.has_pin()
    }

    fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
        if !self.has_pin() {
            // Forgotten by the watch (card pulled out), or never given.
            self.lock();
            return Err(BackendError::Locked);
        }
        if self.public.algorithm() == Algorithm::Ed25519 && tbs.len() > MAX_ED25519_MESSAGE {
            return Err(BackendError::UnsupportedMechanism(format!(
                "a YubiKey signs at most {MAX_ED25519_MESSAGE} bytes with Ed25519 and this command is {} bytes: use fewer arguments, or a P-256 key",
                tbs.len()
            )));
        }
        if self.card.is_none() {
            self.reconnect()?;
        }
        let mut retried = false;
        // A reconnect verifies the PIN: then a PIN-always slot has it
        // fresh for this signature, and it is not sent twice.
        let mut just_verified = false;
        loop {
            let mut card = self.card.take().ok_or(BackendError::Locked)?;
            if self.pin_always() && !std::mem::take(&mut just_verified) {
                match self.verify_cached_pin(&mut card) {
                    Ok(()) => {}
                    // Another program reset the card (its connection ended
                    // with a reset) or it went away: reconnect once, as
                    // for a signature below.
                    Err(BackendError::TokenAbsent(_)) if !retried => {
                        drop(card);
                        retried = true;
                        self.reconnect()?;
                        just_verified = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let started = std::time::Instant::now();
            match self.raw_sign(&mut card, tbs) {
                Ok(sig) => {
                    self.card = Some(card);
                    return self.finish(&sig);
                }
                Err(e) => {
                    // A card that waited for a touch and then refused timed
                    // out (a YubiKey answers "security status not
                    // satisfied" after ~15 s without a touch).
                    let touched_out = self.needs_touch()
                        && matches!(e, yubikey::Error::AuthenticationError)
                        && started.elapsed() >= std::time::Duration::from_secs(1);
                    drop(card);
                    if touched_out {
                        return Err(BackendError::TouchTimeout);
                    }
                    // Pulled out: the PIN is forgotten, the user unlocks
                    // again once the card is back.
                    if removed(&e) {
                        self.lock();
                        return Err(BackendError::TokenAbsent(format!(
                            "YubiKey {} was removed; plug it in and unlock again",
                            self.params.serial
                        )));
                    }
                    // PIN state lost (another program reset the applet):
                    // reconnect and re-verify, once.
                    let recoverable = matches!(
                        e,
                        yubikey::Error::AuthenticationError | yubikey::Error::PcscError { .. }
                    );
                    if retried || !recoverable {
                        return Err(card::map_error(e));
                    }
                    retried = true;
                    self.reconnect()?;
                    just_verified = true;
                }
            }
        }
    }

    fn touch_indicator(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.touch_pending))
    }

    fn presence(&self) -> Option<Arc<Presence>> {
        Some(Arc::clone(&self.presence))
    }

    fn residency_evidence(&self) -> Option<crate::Evidence> {
        use base64::Engine as _;
        let der_chain: Vec<Vec<u8>> = self
            .params
            .attestation
            .iter()
            .filter_map(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .collect();
        (!der_chain.is_empty()).then(|| crate::Evidence {
            kind: "yubikey-piv-attestation".into(),
            der_chain,
        })
    }
}
