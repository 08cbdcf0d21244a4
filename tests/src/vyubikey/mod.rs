//! A virtual YubiKey: a PIV card emulator that plugs into Debian's
//! `vsmartcard-vpcd` reader driver inside a real `pcscd`, so the real
//! `yubikey` crate, yubico-piv-tool and ykcs11 talk to it through real
//! pcsc-lite, unchanged.
//!
//! **It is a test fixture.** It holds its keys, PIN, PUK and management key
//! in memory, in the clear, and makes its attestation CA on the fly.
//!
//! ```ignore
//! use keybridge_tests::vyubikey::{CardConfig, KeySpec, ManagementKey, TouchPolicy};
//! let Some(card) = CardConfig::new(12_345_678)
//!     .firmware(5, 7, 1)
//!     .management_key(ManagementKey::aes192([7; 24]).pin_protected())
//!     .insert()
//! else {
//!     return; // SKIP outside CI when pcscd or vpcd is missing
//! };
//! card.generate(0x9c, KeySpec::p256().touch_policy(TouchPolicy::Always));
//! // … yubikey::YubiKey::open_by_serial(12345678.into()) sees it …
//! ```
//!
//! What the card implements (PIV per SP 800-73-4 and Yubico's extensions, as
//! yubikey.rs 0.9.0-rc.0 and yubico-piv-tool 2.2 use them): SELECT (PIV, and
//! the management and OTP applets hosts probe), GET VERSION, GET SERIAL,
//! VERIFY (retry counter, blocking, `63 Cx`, `69 83`, empty data for the
//! retry status even when verified, P1=FF to log out), CHANGE REFERENCE, RESET RETRY, management-key
//! authentication (mutual and one-way; 3DES, AES-128/192/256), GENERATE
//! (P-256; Ed25519 from firmware 5.7; PIN and touch policies), IMPORT (P-256,
//! Ed25519), GENERAL AUTHENTICATE for signing (ECDSA P-256 over the digest
//! given, DER out; Ed25519 over the message), command chaining and GET
//! RESPONSE, GET DATA / PUT DATA (any object; the PIN-protected object 5FC109
//! only after the PIN), GET METADATA (from 5.3), ATTEST, SET MANAGEMENT KEY,
//! SET PIN RETRIES and RESET. Not implemented: RSA, P-384, X25519 and key
//! agreement (they answer `6A 80`), MOVE/DELETE KEY, and the management
//! applet beyond READ CONFIG.
//!
//! One deliberate difference from a real card: re-selecting PIV while it is
//! selected keeps the PIN and management-key state, because every
//! `open_by_serial` of a parallel test selects PIV on every card present;
//! [`VirtualYubiKey::drop_authentication`] simulates the real loss.

mod attestation;
mod card;
pub mod pcscd;
mod tlv;
mod vpcd;

pub use attestation::{ChainShape, oid};
pub use pcscd::ReaderLease;
pub use vpcd::ATR;

use card::Card;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The factory management key (3DES before firmware 5.7, AES-192 after).
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// The factory PIN.
pub const DEFAULT_PIN: &str = "123456";
/// The factory PUK.
pub const DEFAULT_PUK: &str = "12345678";

/// How a virtual card is made: serial, firmware, credentials and keys.
#[derive(Clone)]
pub struct CardConfig {
    serial: u32,
    version: [u8; 3],
    pin: String,
    puk: String,
    pin_retries: u8,
    puk_retries: u8,
    management_key: Option<ManagementKey>,
    touch_timeout: Duration,
    sign_time: Duration,
    chain: ChainShape,
    form_factor: u8,
    keys: Vec<(u8, KeySpec)>,
}

impl CardConfig {
    /// A factory-fresh card with serial `serial`, firmware 5.4.3, default
    /// PIN, PUK and management key, retry counters 3, a 2 s touch timeout
    /// (a real card waits ~15 s), the legacy attestation chain and the USB-A
    /// keychain form factor.
    pub fn new(serial: u32) -> Self {
        CardConfig {
            serial,
            version: [5, 4, 3],
            pin: DEFAULT_PIN.into(),
            puk: DEFAULT_PUK.into(),
            pin_retries: 3,
            puk_retries: 3,
            management_key: None,
            touch_timeout: Duration::from_secs(2),
            sign_time: Duration::ZERO,
            chain: ChainShape::Legacy,
            form_factor: 0x01,
            keys: Vec::new(),
        }
    }

    /// The firmware version (GET VERSION and the management applet).
    /// Ed25519 needs 5.7, GET METADATA 5.3; yubico-piv-tool 2.2 wants < 5.7.
    pub fn firmware(mut self, major: u8, minor: u8, patch: u8) -> Self {
        self.version = [major, minor, patch];
        self
    }

    /// The PIN (6 to 8 characters).
    pub fn pin(mut self, pin: &str) -> Self {
        self.pin = pin.into();
        self
    }

    /// The PUK.
    pub fn puk(mut self, puk: &str) -> Self {
        self.puk = puk.into();
        self
    }

    /// The PIN retry counter (default 3).
    pub fn pin_retries(mut self, n: u8) -> Self {
        self.pin_retries = n;
        self
    }

    /// The management key (default: the factory key for the firmware).
    pub fn management_key(mut self, key: ManagementKey) -> Self {
        self.management_key = Some(key);
        self
    }

    /// How long a signature waits for a touch before it fails.
    pub fn touch_timeout(mut self, limit: Duration) -> Self {
        self.touch_timeout = limit;
        self
    }

    /// How long the card takes to answer a signature (GENERAL AUTHENTICATE
    /// with a key slot), after the answer is computed and without holding
    /// the card's state. Default zero: the virtual card signs in
    /// microseconds; benchmarks set a real card's time to compare like with
    /// like.
    pub fn sign_time(mut self, time: Duration) -> Self {
        self.sign_time = time;
        self
    }

    /// The shape of the attestation chain (default [`ChainShape::Legacy`]).
    pub fn attestation_chain(mut self, chain: ChainShape) -> Self {
        self.chain = chain;
        self
    }

    /// The form factor byte of the attestation extension .9.
    pub fn form_factor(mut self, byte: u8) -> Self {
        self.form_factor = byte;
        self
    }

    /// A key generated on the card in `slot` before it is inserted.
    pub fn key(mut self, slot: u8, spec: KeySpec) -> Self {
        self.keys.push((slot, spec));
        self
    }

    /// Makes the card and inserts it into a free virtual reader (starting
    /// the shared pcscd if needed), and waits until PC/SC sees it. `None`,
    /// with a loud SKIP line, when pcscd or vpcd is not installed — under
    /// `CI=true` that panics instead. A test that needs several cards at
    /// once uses [`insert_all`], never `insert` twice (two tests could each
    /// hold one reader and wait for the other).
    pub fn insert(self) -> Option<VirtualYubiKey> {
        insert_all(vec![self]).map(|mut v| v.remove(0))
    }

    /// Makes the card and inserts it into `pcscd`'s reader. Nothing waits
    /// for pcscd to see it: the test process does not talk to a private
    /// pcscd (see [`pcscd::PrivatePcscd`]); wait through the daemon.
    pub fn insert_into(self, pcscd: &pcscd::PrivatePcscd) -> VirtualYubiKey {
        self.make(ReaderLease::private(pcscd))
    }

    fn make(&self, lease: ReaderLease) -> VirtualYubiKey {
        let mut card = Card::new(self);
        for (slot, spec) in &self.keys {
            assert!(card::is_key_slot(*slot), "slot {slot:02x} holds no key");
            card.keys.insert(
                *slot,
                SlotKey::generate(spec.algorithm, spec.pin_policy, spec.touch_policy),
            );
        }
        let mut yk = VirtualYubiKey {
            shared: Arc::new(Shared {
                card: Mutex::new(card),
                touched: Condvar::new(),
                removed: AtomicBool::new(false),
                sign_time: Mutex::new(self.sign_time),
            }),
            lease,
            connection: None,
        };
        yk.reinsert();
        yk
    }
}

/// Inserts several cards at once, each in a reader of its own (claimed all
/// together); see [`CardConfig::insert`]. At most [`pcscd::READERS`].
pub fn insert_all(configs: Vec<CardConfig>) -> Option<Vec<VirtualYubiKey>> {
    match pcscd::ensure_running() {
        Ok(()) => {}
        Err(pcscd::Missing(what)) => {
            assert!(
                !crate::in_ci(),
                "virtual YubiKey unavailable under CI: {what} (run cargo xtask deps)"
            );
            eprintln!("SKIP: virtual YubiKey unavailable: {what}; run `cargo xtask deps`");
            return None;
        }
    }
    let leases = ReaderLease::claim_many(configs.len(), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Some(
        configs
            .iter()
            .zip(leases)
            .map(|(config, lease)| config.make(lease))
            .collect(),
    )
}

/// What `ATTEST` on a card of chain `shape` would return for a P-256 key
/// generated in `slot` with `pin` and `touch` policies — without a card or
/// pcscd, for checks of attestation verifiers (`keybridge-device policy`):
/// the chain, leaf first (the slot's attestation certificate, then the f9
/// certificate, DER), and the card's test CA (PEM, root first). The key is
/// the caller's (`secret`, a P-256 scalar), so the caller can sign with
/// it; each call makes a fresh CA. Firmware 5.7.4, form factor USB-A
/// keychain.
pub fn offline_attestation(
    shape: ChainShape,
    secret: &[u8; 32],
    slot: u8,
    serial: u32,
    pin: PinPolicy,
    touch: TouchPolicy,
) -> (Vec<Vec<u8>>, Vec<String>) {
    let ca = attestation::Attestation::new(shape);
    let key = SlotKey::from_secret(KeyAlgorithm::P256, secret, pin, touch).expect("a P-256 scalar");
    let leaf = ca.certify(slot, &key, serial, [5, 7, 4], 0x01);
    (vec![leaf, ca.f9_der()], ca.chain_pem())
}

/// State the card's connection thread and the test share.
pub(crate) struct Shared {
    card: Mutex<Card>,
    /// Signalled when the user touches the card or it is removed.
    touched: Condvar,
    removed: AtomicBool,
    /// See [`CardConfig::sign_time`] and [`VirtualYubiKey::set_sign_time`].
    sign_time: Mutex<Duration>,
}

impl Shared {
    fn card(&self) -> MutexGuard<'_, Card> {
        // A panic in another test thread must not hide this card's state.
        self.card.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a signature takes now.
    pub(crate) fn sign_time(&self) -> Duration {
        *self.sign_time.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An inserted virtual YubiKey (see the [module docs](self)). Dropping it
/// removes it and frees its reader.
pub struct VirtualYubiKey {
    shared: Arc<Shared>,
    lease: ReaderLease,
    connection: Option<vpcd::Connection>,
}

/// How long the fixture waits for pcscd to notice an insertion or removal
/// (it polls every 0.2–0.6 s, but when the card before was pulled in the
/// middle of an exchange vpcd first waits out its own receive timeout:
/// seen taking over 10 s with the whole suite running).
const PCSC_NOTICE: Duration = Duration::from_secs(30);

impl VirtualYubiKey {
    /// The serial number.
    pub fn serial(&self) -> u32 {
        self.shared.card().serial
    }

    /// The firmware version.
    pub fn version(&self) -> [u8; 3] {
        self.shared.card().version
    }

    /// The PC/SC name of the reader the card is in.
    pub fn reader_name(&self) -> String {
        self.lease.reader_name()
    }

    /// True while the card is in its reader.
    pub fn is_inserted(&self) -> bool {
        self.connection.is_some()
    }

    /// Pulls the card out of its reader and waits until PC/SC sees the
    /// reader empty. Keys, PIN state and counters stay with the card.
    pub fn remove(&mut self) {
        if let Some(c) = self.connection.take() {
            c.close(&self.shared);
            if self.lease.is_private() {
                return;
            }
            let name = self.reader_name();
            assert!(
                crate::poll_until(PCSC_NOTICE, || !card_present(&name)),
                "pcscd still sees a card in {name}"
            );
        }
    }

    /// Puts the card (back) into its reader and waits until PC/SC sees it.
    pub fn reinsert(&mut self) {
        if self.connection.is_some() {
            return;
        }
        // The card that had this reader before may still count as present
        // until pcscd's next poll: wait for an empty reader first.
        let name = self.reader_name();
        let watched = !self.lease.is_private();
        assert!(
            !watched || crate::poll_until(PCSC_NOTICE, || !card_present(&name)),
            "pcscd still sees an earlier card in {name}"
        );
        // Debian's vpcd now and then never accepts a card's connection on a
        // reader whose card just left (seen under the full suite: the reader
        // stays EMPTY for 30 s although the socket connected); plugging it
        // in again is what a user would do, and it works.
        for attempt in 1..=3 {
            let conn = vpcd::Connection::open(
                self.lease.port(),
                self.shared.clone(),
                PCSC_NOTICE,
                !watched,
            )
            .unwrap_or_else(|e| panic!("connecting to vpcd on {}: {e}", self.lease.port()));
            if !watched || crate::poll_until(PCSC_NOTICE / 3, || card_present(&name)) {
                self.connection = Some(conn);
                return;
            }
            eprintln!(
                "vyubikey: pcscd did not see card {} in {name} (attempt {attempt}): {}; plugging it in again",
                self.serial(),
                reader_state(&name)
            );
            conn.close(&self.shared);
            assert!(
                crate::poll_until(PCSC_NOTICE, || !card_present(&name)),
                "pcscd still sees a card in {name}"
            );
        }
        panic!(
            "pcscd did not see the card in {name}: {}",
            reader_state(&name)
        );
    }

    /// Every APDU the card answered since it was made (or the log was
    /// cleared), in order. VERIFY data holds the PIN sent, in the clear.
    pub fn apdu_log(&self) -> Vec<LoggedApdu> {
        self.shared.card().log.clone()
    }

    /// Forgets the APDU log.
    pub fn clear_log(&self) {
        self.shared.card().log.clear();
    }

    /// How many logged APDUs had instruction `ins` (e.g. [`INS_VERIFY`]).
    pub fn count(&self, ins: u8) -> usize {
        self.shared
            .card()
            .log
            .iter()
            .filter(|a| a.ins == ins)
            .count()
    }

    /// Whether the user touches the card when a signature waits for it.
    pub fn set_touch(&self, touch: Touch) {
        self.shared.card().touch.automatic = touch == Touch::Automatic;
        self.shared.touched.notify_all();
    }

    /// From now on, each signature takes `time` before the card answers
    /// (a card that hangs, for a long `time`).
    pub fn set_sign_time(&self, time: Duration) {
        *self
            .shared
            .sign_time
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = time;
    }

    /// True while a signature waits for a touch.
    pub fn touch_pending(&self) -> bool {
        self.shared.card().touch.pending
    }

    /// Touches the card: the waiting signature (if any) goes ahead. Returns
    /// false when nothing waited for a touch.
    pub fn touch(&self) -> bool {
        let mut card = self.shared.card();
        if !card.touch.pending {
            return false;
        }
        card.touch.given = true;
        self.shared.touched.notify_all();
        true
    }

    /// Ends the session's PIN and management-key authentication, as when
    /// another program reset the card or selected another applet.
    pub fn drop_authentication(&self) {
        self.shared.card().drop_authentication();
    }

    /// The PIN retries left.
    pub fn pin_retries(&self) -> u8 {
        self.shared.card().pin_retries()
    }

    /// Generates a key in `slot` without any APDU (as if provisioned
    /// earlier); returns its public key.
    pub fn generate(&self, slot: u8, spec: KeySpec) -> SlotPublicKey {
        assert!(card::is_key_slot(slot), "slot {slot:02x} holds no key");
        let key = SlotKey::generate(spec.algorithm, spec.pin_policy, spec.touch_policy);
        let public = key.public();
        self.shared.card().keys.insert(slot, key);
        public
    }

    /// The public key in `slot`, if it holds one.
    pub fn public_key(&self, slot: u8) -> Option<SlotPublicKey> {
        self.shared.card().keys.get(&slot).map(SlotKey::public)
    }

    /// Stores `der` as the certificate of `slot` (no management key needed).
    pub fn put_certificate(&self, slot: u8, der: &[u8]) {
        self.shared.card().put_certificate(slot, der);
    }

    /// The attestation certificate (DER) ATTEST returns for `slot`; `None`
    /// when the slot is empty or its key was imported.
    pub fn attestation_certificate(&self, slot: u8) -> Option<Vec<u8>> {
        let card = self.shared.card();
        let key = card.keys.get(&slot)?;
        (key.origin == Origin::Generated).then(|| {
            card.attestation
                .certify(slot, key, card.serial, card.version, card.form_factor)
        })
    }

    /// The f9 (attestation key) certificate, DER. Like a real card's it has
    /// no basicConstraints.
    pub fn f9_certificate(&self) -> Vec<u8> {
        self.shared.card().attestation.f9_der()
    }

    /// The test CA above the f9 certificate, PEM, root first: the root
    /// alone ([`ChainShape::Legacy`]) or the root and an intermediate
    /// ([`ChainShape::Root1`]).
    pub fn attestation_chain_pem(&self) -> Vec<String> {
        self.shared.card().attestation.chain_pem()
    }

    /// The management key the card has now.
    pub fn management_key(&self) -> ManagementKey {
        self.shared.card().management_key()
    }

    /// Opens the card in exclusive mode from this process, as another
    /// program (gpg's scdaemon, ykman) would: other PC/SC clients get a
    /// sharing violation until the hold is dropped.
    pub fn hold_exclusive(&self) -> Result<ExclusiveHold, pcsc::Error> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = std::ffi::CString::new(self.reader_name()).expect("a reader name");
        let card = ctx.connect(&name, pcsc::ShareMode::Exclusive, pcsc::Protocols::T1)?;
        Ok(ExclusiveHold {
            card: Some(card),
            _ctx: ctx,
        })
    }
}

impl Drop for VirtualYubiKey {
    fn drop(&mut self) {
        // No waiting for pcscd here: the reader's lease goes with the card,
        // and the next card on this port waits for pcscd itself.
        if let Some(c) = self.connection.take() {
            c.close(&self.shared);
        }
    }
}

/// What PC/SC says about reader `name`, for failure messages.
fn reader_state(name: &str) -> String {
    let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) else {
        return "no PC/SC context".into();
    };
    let Ok(cname) = std::ffi::CString::new(name) else {
        return "bad reader name".into();
    };
    let mut states = [pcsc::ReaderState::new(cname, pcsc::State::UNAWARE)];
    match ctx.get_status_change(Some(Duration::ZERO), &mut states) {
        Ok(()) => format!(
            "state {:?}, ATR {:02x?}; sockets: {}",
            states[0].event_state(),
            states[0].atr(),
            std::process::Command::new("ss")
                .args(["-tanp"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(":3596"))
                    .collect::<Vec<_>>()
                    .join(" | "))
                .unwrap_or_default()
        ),
        Err(e) => format!("status: {e}"),
    }
}

/// True when PC/SC reports a card in reader `name`.
fn card_present(name: &str) -> bool {
    let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) else {
        return false;
    };
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut states = [pcsc::ReaderState::new(cname, pcsc::State::UNAWARE)];
    if ctx
        .get_status_change(Some(Duration::ZERO), &mut states)
        .is_err()
    {
        return false;
    }
    let state = states[0].event_state();
    // Present, powered by pcscd and answering with our ATR: ready for hosts.
    state.contains(pcsc::State::PRESENT)
        && !state.intersects(pcsc::State::MUTE | pcsc::State::EMPTY)
        && states[0].atr() == ATR
}

/// The card held exclusively (see [`VirtualYubiKey::hold_exclusive`]);
/// released on drop, leaving the card's state as it is.
pub struct ExclusiveHold {
    card: Option<pcsc::Card>,
    _ctx: pcsc::Context,
}

impl Drop for ExclusiveHold {
    fn drop(&mut self) {
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        }
    }
}

/// The instruction byte of VERIFY (for [`VirtualYubiKey::count`]).
pub const INS_VERIFY: u8 = 0x20;
/// The instruction byte of GENERAL AUTHENTICATE.
pub const INS_GENERAL_AUTHENTICATE: u8 = 0x87;

/// One APDU the card answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedApdu {
    /// Class byte (0x10: more to come).
    pub cla: u8,
    /// Instruction.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data.
    pub data: Vec<u8>,
    /// The status word answered.
    pub sw: u16,
}

/// Whether the simulated user touches the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Touch at once whenever a signature needs it (the default).
    Automatic,
    /// Touch only on [`VirtualYubiKey::touch`]; a signature nobody touches
    /// fails after the touch timeout with `69 82`, as on a real card.
    Manual,
}

/// Key algorithms the card generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 (PIV algorithm 0x11).
    P256,
    /// Ed25519 (0xE0, firmware 5.7 and later).
    Ed25519,
}

impl KeyAlgorithm {
    /// The PIV algorithm byte.
    pub fn code(self) -> u8 {
        match self {
            KeyAlgorithm::P256 => 0x11,
            KeyAlgorithm::Ed25519 => 0xe0,
        }
    }
}

/// When a key needs the PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    /// Never.
    Never,
    /// Once per session (the default).
    Once,
    /// Before every use.
    Always,
}

/// When a key needs a touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPolicy {
    /// Never (the default).
    Never,
    /// For every use.
    Always,
    /// Once per 15 s.
    Cached,
}

/// Where a slot's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Generated on the card (attestable).
    Generated,
    /// Imported.
    Imported,
}

/// A key to put in a slot.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// Algorithm.
    pub algorithm: KeyAlgorithm,
    /// PIN policy.
    pub pin_policy: PinPolicy,
    /// Touch policy.
    pub touch_policy: TouchPolicy,
}

impl KeySpec {
    /// A P-256 key, PIN once, no touch.
    pub fn p256() -> Self {
        KeySpec {
            algorithm: KeyAlgorithm::P256,
            pin_policy: PinPolicy::Once,
            touch_policy: TouchPolicy::Never,
        }
    }

    /// An Ed25519 key, PIN once, no touch.
    pub fn ed25519() -> Self {
        KeySpec {
            algorithm: KeyAlgorithm::Ed25519,
            ..Self::p256()
        }
    }

    /// With PIN policy `p`.
    pub fn pin_policy(mut self, p: PinPolicy) -> Self {
        self.pin_policy = p;
        self
    }

    /// With touch policy `t`.
    pub fn touch_policy(mut self, t: TouchPolicy) -> Self {
        self.touch_policy = t;
        self
    }
}

/// A slot's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotPublicKey {
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl SlotPublicKey {
    /// The SubjectPublicKeyInfo, DER.
    pub fn to_spki_der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey as _;
        match self {
            SlotPublicKey::P256(k) => k.to_public_key_der(),
            SlotPublicKey::Ed25519(k) => {
                ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_der(k)
            }
        }
        .expect("encoding a public key")
        .as_bytes()
        .to_vec()
    }
}

/// A key in a slot (private half included: this is a fixture).
pub(crate) struct SlotKey {
    pub(crate) algorithm: KeyAlgorithm,
    secret: Secret,
    pub(crate) pin_policy: PinPolicy,
    pub(crate) touch_policy: TouchPolicy,
    pub(crate) origin: Origin,
}

enum Secret {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SlotKey {
    pub(crate) fn generate(alg: KeyAlgorithm, pin: PinPolicy, touch: TouchPolicy) -> Self {
        let secret = match alg {
            KeyAlgorithm::P256 => Secret::P256(attestation::random_p256()),
            KeyAlgorithm::Ed25519 => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).expect("system randomness");
                Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
        };
        SlotKey {
            algorithm: alg,
            secret,
            pin_policy: pin,
            touch_policy: touch,
            origin: Origin::Generated,
        }
    }

    pub(crate) fn from_secret(
        alg: KeyAlgorithm,
        bytes: &[u8],
        pin: PinPolicy,
        touch: TouchPolicy,
    ) -> Option<Self> {
        let secret = match alg {
            KeyAlgorithm::P256 => Secret::P256(p256::ecdsa::SigningKey::from_slice(bytes).ok()?),
            KeyAlgorithm::Ed25519 => Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                bytes.try_into().ok()?,
            )),
        };
        Some(SlotKey {
            algorithm: alg,
            secret,
            pin_policy: pin,
            touch_policy: touch,
            origin: Origin::Imported,
        })
    }

    pub(crate) fn public(&self) -> SlotPublicKey {
        match &self.secret {
            Secret::P256(k) => SlotPublicKey::P256(*k.verifying_key()),
            Secret::Ed25519(k) => SlotPublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// The public key as the card sends it under tag 86: an uncompressed
    /// point, or the 32 Ed25519 bytes.
    pub(crate) fn public_bytes(&self) -> Vec<u8> {
        match &self.secret {
            Secret::P256(k) => k.verifying_key().to_sec1_point(false).as_bytes().to_vec(),
            Secret::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    pub(crate) fn spki(&self) -> x509_cert::spki::SubjectPublicKeyInfoOwned {
        use x509_cert::der::Decode as _;
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&self.public().to_spki_der())
            .expect("a public key")
    }

    /// ECDSA over a digest (left-padded to 32 bytes, as the card does), DER
    /// out; or Ed25519 over the message.
    pub(crate) fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.secret {
            Secret::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashSigner as _;
                let mut digest = [0u8; 32];
                digest[32 - input.len()..].copy_from_slice(input);
                let sig: p256::ecdsa::DerSignature =
                    k.sign_prehash(&digest).expect("signing a digest");
                sig.as_bytes().to_vec()
            }
            Secret::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(input).to_bytes().to_vec()
            }
        }
    }
}

/// Management-key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementAlgorithm {
    /// 3DES (0x03): the factory default before firmware 5.7.
    TripleDes,
    /// AES-128 (0x08).
    Aes128,
    /// AES-192 (0x0A): the factory default from firmware 5.7.
    Aes192,
    /// AES-256 (0x0C).
    Aes256,
}

impl ManagementAlgorithm {
    /// The PIV algorithm byte.
    pub fn code(self) -> u8 {
        match self {
            ManagementAlgorithm::TripleDes => 0x03,
            ManagementAlgorithm::Aes128 => 0x08,
            ManagementAlgorithm::Aes192 => 0x0a,
            ManagementAlgorithm::Aes256 => 0x0c,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            ManagementAlgorithm::TripleDes,
            ManagementAlgorithm::Aes128,
            ManagementAlgorithm::Aes192,
            ManagementAlgorithm::Aes256,
        ]
        .into_iter()
        .find(|a| a.code() == code)
    }

    fn key_len(self) -> usize {
        match self {
            ManagementAlgorithm::TripleDes | ManagementAlgorithm::Aes192 => 24,
            ManagementAlgorithm::Aes128 => 16,
            ManagementAlgorithm::Aes256 => 32,
        }
    }

    fn block_len(self) -> usize {
        match self {
            ManagementAlgorithm::TripleDes => 8,
            _ => 16,
        }
    }
}

/// A management key, and whether the card keeps it PIN-protected (in
/// object 5FC109, flagged in the admin data, as `ykman` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementKey {
    /// Algorithm.
    pub algorithm: ManagementAlgorithm,
    /// The key bytes.
    pub key: Vec<u8>,
    /// Stored PIN-protected on the card.
    pub pin_protected: bool,
}

impl ManagementKey {
    /// The factory key of firmware `version`: 010203…08 ×3, 3DES before 5.7,
    /// AES-192 from 5.7.
    pub fn factory_default(version: [u8; 3]) -> Self {
        let algorithm = if version >= [5, 7, 0] {
            ManagementAlgorithm::Aes192
        } else {
            ManagementAlgorithm::TripleDes
        };
        ManagementKey {
            algorithm,
            key: DEFAULT_MANAGEMENT_KEY.to_vec(),
            pin_protected: false,
        }
    }

    /// A 3DES key.
    pub fn triple_des(key: [u8; 24]) -> Self {
        ManagementKey {
            algorithm: ManagementAlgorithm::TripleDes,
            key: key.to_vec(),
            pin_protected: false,
        }
    }

    /// An AES-192 key.
    pub fn aes192(key: [u8; 24]) -> Self {
        ManagementKey {
            algorithm: ManagementAlgorithm::Aes192,
            key: key.to_vec(),
            pin_protected: false,
        }
    }

    /// This key, stored PIN-protected on the card.
    pub fn pin_protected(mut self) -> Self {
        self.pin_protected = true;
        self
    }

    /// Encrypts one block (the card's side of the challenge-response).
    fn encrypt(&self, block: &[u8]) -> Vec<u8> {
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let mut out = block.to_vec();
        let buf = out.as_mut_slice();
        match self.algorithm {
            ManagementAlgorithm::TripleDes => {
                let key = des::cipher::Key::<des::TdesEde3>::try_from(self.key.as_slice())
                    .expect("a 24-byte key");
                des::TdesEde3::new(&key).encrypt_block(buf.try_into().expect("one block"));
            }
            ManagementAlgorithm::Aes128 => aes::Aes128::new_from_slice(&self.key)
                .expect("a 16-byte key")
                .encrypt_block(buf.try_into().expect("one block")),
            ManagementAlgorithm::Aes192 => aes::Aes192::new_from_slice(&self.key)
                .expect("a 24-byte key")
                .encrypt_block(buf.try_into().expect("one block")),
            ManagementAlgorithm::Aes256 => aes::Aes256::new_from_slice(&self.key)
                .expect("a 32-byte key")
                .encrypt_block(buf.try_into().expect("one block")),
        }
        out
    }
}
