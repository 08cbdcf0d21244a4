//! The card itself: the PIV applet (SP 800-73-4 part 2 plus Yubico's
//! extensions) and the bits of the management and OTP applets hosts probe.
//!
//! [`Card::respond`] turns one command APDU into one response APDU, except
//! for a signature that waits for a touch: then it returns
//! [`Step::WaitTouch`], the connection thread waits (without holding the
//! card's lock) and calls [`Card::finish_sign`].

use super::attestation::{Attestation, pin_policy_byte, touch_policy_byte};
use super::tlv::{self, Tlv};
use super::{
    CardConfig, KeyAlgorithm, LoggedApdu, ManagementAlgorithm, ManagementKey, Origin, PinPolicy,
    SlotKey, TouchPolicy,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

// Status words (SP 800-73-4 part 2 §5.6, Yubico's extensions).
const SW_OK: u16 = 0x9000;
const SW_WRONG_LENGTH: u16 = 0x6700;
const SW_SECURITY_STATUS: u16 = 0x6982;
const SW_AUTH_BLOCKED: u16 = 0x6983;
const SW_CONDITIONS: u16 = 0x6985;
const SW_WRONG_DATA: u16 = 0x6a80;
const SW_NOT_FOUND: u16 = 0x6a82;
const SW_REF_NOT_FOUND: u16 = 0x6a88;
const SW_WRONG_P1P2: u16 = 0x6b00;
const SW_INS_NOT_SUPPORTED: u16 = 0x6d00;
const SW_CLA_NOT_SUPPORTED: u16 = 0x6e00;

const AID_PIV: &[u8] = &[0xa0, 0x00, 0x00, 0x03, 0x08];
const AID_MGMT: &[u8] = &[0xa0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
const AID_OTP: &[u8] = &[0xa0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01];

/// Object ids the card answers for without a PUT DATA.
const OBJ_DISCOVERY: u32 = 0x7e;
/// The f9 (attestation) certificate object.
const OBJ_ATTESTATION_CERT: u32 = 0x5f_ff01;
/// Yubico's PIN-protected data ("printed information"), readable only after
/// the PIN.
const OBJ_PRINTED: u32 = 0x5f_c109;

/// How long a touch stays cached for keys with the `cached` touch policy.
const TOUCH_CACHE: Duration = Duration::from_secs(15);
/// Response bytes per APDU before the card answers `61 xx`.
const RESPONSE_CHUNK: usize = 256;

/// A slot's key and the state the card keeps across sessions.
pub(crate) struct Card {
    pub(crate) serial: u32,
    pub(crate) version: [u8; 3],
    pub(crate) form_factor: u8,
    pin: RetryCounter,
    puk: RetryCounter,
    mgmt: ManagementKey,
    mgmt_default: bool,
    pub(crate) keys: BTreeMap<u8, SlotKey>,
    objects: BTreeMap<u32, Vec<u8>>,
    pub(crate) attestation: Attestation,
    pub(crate) touch: TouchState,
    pub(crate) log: Vec<LoggedApdu>,
    session: Session,
}

/// A PIN or PUK and its retry counter.
struct RetryCounter {
    value: Vec<u8>,
    default_value: &'static [u8],
    total: u8,
    remaining: u8,
}

impl RetryCounter {
    fn new(value: &[u8], default_value: &'static [u8], total: u8) -> Self {
        RetryCounter {
            value: pad8(value),
            default_value,
            total,
            remaining: total,
        }
    }

    fn is_default(&self) -> bool {
        self.value == pad8(self.default_value)
    }

    /// Checks `attempt` (8 bytes, FF-padded); spends a retry when wrong.
    fn check(&mut self, attempt: &[u8]) -> Result<(), u16> {
        if self.remaining == 0 {
            return Err(SW_AUTH_BLOCKED);
        }
        if attempt == self.value.as_slice() {
            self.remaining = self.total;
            Ok(())
        } else {
            self.remaining -= 1;
            Err(0x63c0 | u16::from(self.remaining))
        }
    }
}

/// Whether the user touches the card, and whether a signature waits for it.
pub(crate) struct TouchState {
    pub(crate) automatic: bool,
    /// The user touched the card while a signature waited.
    pub(crate) given: bool,
    pub(crate) pending: bool,
    pub(crate) last: Option<Instant>,
    pub(crate) timeout: Duration,
}

/// What lasts from one reset to the next.
#[derive(Default)]
struct Session {
    applet: Applet,
    pin_verified: bool,
    /// A VERIFY since the last use of a PIN-policy-`always` key.
    pin_fresh: bool,
    mgmt_authenticated: bool,
    witness: Option<Vec<u8>>,
    challenge: Option<Vec<u8>>,
    /// Command chaining: (INS, P1, P2, data so far).
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// Response data still to fetch with GET RESPONSE.
    pending: Vec<u8>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Applet {
    #[default]
    None,
    Piv,
    Management,
    Otp,
}

/// A signature that waits for the user's touch.
pub(crate) struct PendingSign {
    slot: u8,
    input: Vec<u8>,
}

/// What [`Card::respond`] decided.
pub(crate) enum Step {
    /// The response APDU (data and status word).
    Done(Vec<u8>),
    /// Wait for a touch, then call [`Card::finish_sign`].
    WaitTouch(PendingSign),
}

/// A parsed command APDU.
struct Command {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
}

fn parse_command(raw: &[u8]) -> Option<Command> {
    let (header, body) = raw.split_at_checked(4)?;
    let data = match body.len() {
        0 | 1 => Vec::new(),
        // Extended length: 00 Lc1 Lc2 data [Le Le].
        _ if body[0] == 0 && body.len() >= 3 => {
            let lc = usize::from(u16::from_be_bytes([body[1], body[2]]));
            body.get(3..3 + lc)?.to_vec()
        }
        _ => {
            let lc = usize::from(body[0]);
            body.get(1..1 + lc)?.to_vec()
        }
    };
    Some(Command {
        cla: header[0],
        ins: header[1],
        p1: header[2],
        p2: header[3],
        data,
    })
}

/// Pads a PIN to the 8 bytes PIV compares (`FF` filler).
fn pad8(pin: &[u8]) -> Vec<u8> {
    let mut v = pin.to_vec();
    v.resize(8, 0xff);
    v
}

fn with_sw(mut data: Vec<u8>, sw: u16) -> Vec<u8> {
    data.extend_from_slice(&sw.to_be_bytes());
    data
}

fn sw(sw: u16) -> Vec<u8> {
    sw.to_be_bytes().to_vec()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).expect("system randomness");
    v
}

/// The PIV slots that hold asymmetric keys: 9a, 9c, 9d, 9e and the retired
/// slots 82–95.
pub(crate) fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
}

/// The certificate object of a key slot.
fn certificate_object(slot: u8) -> Option<u32> {
    Some(match slot {
        0x9a => 0x5f_c105,
        0x9c => 0x5f_c10a,
        0x9d => 0x5f_c10b,
        0x9e => 0x5f_c101,
        0x82..=0x95 => 0x5f_c10d + u32::from(slot - 0x82),
        0xf9 => OBJ_ATTESTATION_CERT,
        _ => return None,
    })
}

impl Card {
    pub(crate) fn new(config: &CardConfig) -> Self {
        let attestation = Attestation::new(config.chain);
        let mgmt = config
            .management_key
            .clone()
            .unwrap_or_else(|| ManagementKey::factory_default(config.version));
        let mgmt_default = mgmt == ManagementKey::factory_default(config.version);
        let mut card = Card {
            serial: config.serial,
            version: config.version,
            form_factor: config.form_factor,
            pin: RetryCounter::new(config.pin.as_bytes(), b"123456", config.pin_retries),
            puk: RetryCounter::new(config.puk.as_bytes(), b"12345678", config.puk_retries),
            mgmt,
            mgmt_default,
            keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            attestation,
            touch: TouchState {
                automatic: true,
                given: false,
                pending: false,
                last: None,
                timeout: config.touch_timeout,
            },
            log: Vec::new(),
            session: Session::default(),
        };
        card.store_attestation_certificate();
        if card.mgmt.pin_protected {
            card.store_protected_management_key();
        }
        card
    }

    /// The f9 certificate in its object, as a real card ships it.
    fn store_attestation_certificate(&mut self) {
        let f9 = self.attestation.f9_der();
        self.objects
            .insert(OBJ_ATTESTATION_CERT, certificate_object_value(&f9));
    }

    /// The management key in the PIN-protected object, with the admin data
    /// flag that says so, as `ykman piv access change-management-key
    /// --protect` leaves them.
    fn store_protected_management_key(&mut self) {
        let inner = tlv::encode(&[0x89], &self.mgmt.key);
        self.objects
            .insert(OBJ_PRINTED, tlv::encode(&[0x88], &inner));
        let admin = tlv::encode(&[0x81], &[0x02]);
        self.objects.insert(0x5f_ff00, tlv::encode(&[0x80], &admin));
    }

    /// A power cycle or reset: the session's state goes, the card's stays.
    pub(crate) fn reset_session(&mut self) {
        self.session = Session::default();
    }

    /// Ends PIN and management-key authentication; the applet stays.
    pub(crate) fn drop_authentication(&mut self) {
        let applet = self.session.applet;
        self.reset_session();
        self.session.applet = applet;
    }

    /// The management key the card has now.
    pub(crate) fn management_key(&self) -> ManagementKey {
        self.mgmt.clone()
    }

    /// The remaining PIN retries.
    pub(crate) fn pin_retries(&self) -> u8 {
        self.pin.remaining
    }

    /// Answers one command APDU.
    pub(crate) fn respond(&mut self, raw: &[u8]) -> Step {
        let step = match parse_command(raw) {
            None => Step::Done(sw(SW_WRONG_LENGTH)),
            Some(cmd) => self.dispatch(cmd),
        };
        if let (Some(cmd), Step::Done(resp)) = (parse_command(raw), &step) {
            self.log_apdu(&cmd, resp);
        }
        step
    }

    fn log_apdu(&mut self, cmd: &Command, resp: &[u8]) {
        let n = resp.len();
        self.log.push(LoggedApdu {
            cla: cmd.cla,
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data: cmd.data.clone(),
            sw: u16::from_be_bytes([resp[n - 2], resp[n - 1]]),
        });
    }

    fn dispatch(&mut self, cmd: Command) -> Step {
        // GET RESPONSE continues the last answer; anything else drops it.
        if cmd.ins == 0xc0 {
            return Step::Done(self.next_chunk(Vec::new(), SW_OK));
        }
        self.session.pending.clear();
        if cmd.cla & !0x10 != 0 {
            return Step::Done(sw(SW_CLA_NOT_SUPPORTED));
        }
        // Command chaining: collect until the last part (CLA without 0x10).
        let mut cmd = cmd;
        if let Some((ins, p1, p2, mut data)) = self.session.chain.take()
            && (ins, p1, p2) == (cmd.ins, cmd.p1, cmd.p2)
        {
            data.extend_from_slice(&cmd.data);
            cmd.data = data;
        }
        if cmd.cla & 0x10 != 0 {
            self.session.chain = Some((cmd.ins, cmd.p1, cmd.p2, cmd.data));
            return Step::Done(sw(SW_OK));
        }
        if cmd.ins == 0xa4 {
            return Step::Done(self.select(&cmd));
        }
        let answer = match self.session.applet {
            Applet::Piv => return self.piv(&cmd),
            Applet::Management => self.management(&cmd),
            Applet::Otp => self.otp(&cmd),
            Applet::None => Err(SW_INS_NOT_SUPPORTED),
        };
        Step::Done(self.finish(answer))
    }

    /// Turns a handler's answer into a response APDU, chunking long data.
    fn finish(&mut self, answer: Result<Vec<u8>, u16>) -> Vec<u8> {
        match answer {
            Ok(data) => self.next_chunk(data, SW_OK),
            Err(code) => sw(code),
        }
    }

    /// Sends up to [`RESPONSE_CHUNK`] bytes of `data` (or of what is left of
    /// the last answer when `data` is empty), `61 xx` while more remain.
    fn next_chunk(&mut self, data: Vec<u8>, ok: u16) -> Vec<u8> {
        let mut rest = if data.is_empty() {
            std::mem::take(&mut self.session.pending)
        } else {
            data
        };
        if rest.len() <= RESPONSE_CHUNK {
            return with_sw(rest, ok);
        }
        self.session.pending = rest.split_off(RESPONSE_CHUNK);
        let more = u8::try_from(self.session.pending.len()).unwrap_or(0);
        with_sw(rest, 0x6100 | u16::from(more))
    }

    fn version_string(&self) -> String {
        let [a, b, c] = self.version;
        format!("{a}.{b}.{c}")
    }

    fn select(&mut self, cmd: &Command) -> Vec<u8> {
        if cmd.p1 != 0x04 {
            return sw(SW_WRONG_P1P2);
        }
        let aid = cmd.data.as_slice();
        let (applet, answer) = if aid.starts_with(AID_PIV) {
            // Application property template: PIX of the applet and its AID.
            let mut t = tlv::encode(&[0x4f], &[0x00, 0x00, 0x10, 0x00, 0x01, 0x00]);
            t.extend(tlv::encode(&[0x79], &tlv::encode(&[0x4f], AID_PIV)));
            (Applet::Piv, tlv::encode(&[0x61], &t))
        } else if aid.starts_with(AID_MGMT) {
            // ykman reads the version from this string.
            let text = format!("Virtual mgr - FW version {}", self.version_string());
            (Applet::Management, text.into_bytes())
        } else if aid.starts_with(AID_OTP) {
            // Version, programming sequence, touch level.
            let mut status = self.version.to_vec();
            status.extend_from_slice(&[0, 0, 0]);
            (Applet::Otp, status)
        } else {
            return sw(SW_NOT_FOUND);
        };
        // Moving to another applet ends the PIN and management-key state. A
        // re-SELECT of PIV while PIV is selected keeps it: the fixture's
        // choice, so that a test scanning every reader (open_by_serial) does
        // not log out the cards of tests running in parallel. Use
        // VirtualYubiKey::drop_authentication to simulate another program
        // resetting the card.
        if !(applet == Applet::Piv && self.session.applet == Applet::Piv) {
            self.reset_session();
        }
        self.session.applet = applet;
        self.finish(Ok(answer))
    }

    fn management(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        match cmd.ins {
            // READ CONFIG: a length-prefixed DeviceInfo TLV list.
            0x1d => {
                let mut info = tlv::encode(&[0x02], &self.serial.to_be_bytes());
                info.extend(tlv::encode(&[0x05], &self.version));
                info.extend(tlv::encode(&[0x04], &[self.form_factor]));
                // Supported and enabled over USB: OTP, U2F, OpenPGP, PIV, OATH, FIDO2.
                info.extend(tlv::encode(&[0x01], &[0x02, 0x3b]));
                info.extend(tlv::encode(&[0x03], &[0x02, 0x3b]));
                let mut out = vec![u8::try_from(info.len()).expect("short")];
                out.extend(info);
                Ok(out)
            }
            _ => Err(SW_INS_NOT_SUPPORTED),
        }
    }

    fn otp(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        match (cmd.ins, cmd.p1) {
            // The YubiKey 4 way to read the serial.
            (0x01, 0x10) => Ok(self.serial.to_be_bytes().to_vec()),
            _ => Err(SW_INS_NOT_SUPPORTED),
        }
    }

    fn piv(&mut self, cmd: &Command) -> Step {
        let answer = match cmd.ins {
            0xfd => Ok(self.version.to_vec()),
            0xf8 => Ok(self.serial.to_be_bytes().to_vec()),
            0x20 => self.verify(cmd),
            0x24 => self.change_reference(cmd),
            0x2c => self.reset_retry(cmd),
            0x87 => return self.general_authenticate(cmd),
            0x47 => self.generate(cmd),
            0xfe => self.import(cmd),
            0xcb => self.get_data(cmd),
            0xdb => self.put_data(cmd),
            0xf7 => self.metadata(cmd),
            0xf9 => self.attest(cmd),
            0xff => self.set_management_key(cmd),
            0xfa => self.set_pin_retries(cmd),
            0xfb => self.reset_card(),
            _ => Err(SW_INS_NOT_SUPPORTED),
        };
        Step::Done(self.finish(answer))
    }

    fn at_least(&self, version: [u8; 3]) -> bool {
        self.version >= version
    }

    fn verify(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        if cmd.p2 != 0x80 {
            return Err(SW_REF_NOT_FOUND);
        }
        if cmd.p1 == 0xff && cmd.data.is_empty() {
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            return Ok(Vec::new());
        }
        // Empty data: the retry status, verified or not (the yubikey crate
        // and yubico-piv-tool read the counter this way).
        if cmd.data.is_empty() {
            return match self.pin.remaining {
                0 => Err(SW_AUTH_BLOCKED),
                n => Err(0x63c0 | u16::from(n)),
            };
        }
        if cmd.data.len() != 8 {
            return Err(SW_WRONG_DATA);
        }
        let result = self.pin.check(&cmd.data);
        self.session.pin_verified = result.is_ok();
        self.session.pin_fresh = result.is_ok();
        result.map(|()| Vec::new())
    }

    fn change_reference(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        if cmd.data.len() != 16 {
            return Err(SW_WRONG_DATA);
        }
        let (old, new) = cmd.data.split_at(8);
        let counter = match cmd.p2 {
            0x80 => &mut self.pin,
            0x81 => &mut self.puk,
            _ => return Err(SW_REF_NOT_FOUND),
        };
        counter.check(old)?;
        if new.iter().take_while(|b| **b != 0xff).count() < 6 {
            return Err(SW_WRONG_DATA);
        }
        counter.value = new.to_vec();
        Ok(Vec::new())
    }

    fn reset_retry(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        if cmd.p2 != 0x80 || cmd.data.len() != 16 {
            return Err(SW_WRONG_DATA);
        }
        let (puk, new) = cmd.data.split_at(8);
        self.puk.check(puk)?;
        self.pin.value = new.to_vec();
        self.pin.remaining = self.pin.total;
        Ok(Vec::new())
    }

    fn require_management(&self) -> Result<(), u16> {
        if self.session.mgmt_authenticated {
            Ok(())
        } else {
            Err(SW_SECURITY_STATUS)
        }
    }

    fn general_authenticate(&mut self, cmd: &Command) -> Step {
        let answer = (|| {
            let outer = tlv::parse_all(&cmd.data).ok_or(SW_WRONG_DATA)?;
            let inner = tlv::find(&outer, &[0x7c]).ok_or(SW_WRONG_DATA)?;
            let tags = tlv::parse_all(inner).ok_or(SW_WRONG_DATA)?;
            if cmd.p2 == 0x9b {
                return self.management_auth(cmd.p1, &tags);
            }
            self.start_sign(cmd.p1, cmd.p2, &tags)
        })();
        match answer {
            Ok(data) => Step::Done(self.finish(Ok(data))),
            Err(Pending::Touch(p)) => Step::WaitTouch(p),
            Err(Pending::Status(code)) => Step::Done(sw(code)),
        }
    }

    /// Management-key authentication: mutual (witness, then challenge) or
    /// the older one-way challenge/response.
    fn management_auth(&mut self, alg: u8, tags: &[Tlv<'_>]) -> Result<Vec<u8>, Pending> {
        if alg != self.mgmt.algorithm.code() {
            return Err(Pending::Status(SW_WRONG_DATA));
        }
        let block = self.mgmt.algorithm.block_len();
        let witness = tlv::find(tags, &[0x80]);
        let challenge = tlv::find(tags, &[0x81]);
        let response = tlv::find(tags, &[0x82]);
        match (witness, challenge, response) {
            // Step 1 of mutual auth: the card's encrypted witness.
            (Some([]), None, None) => {
                let w = random_bytes(block);
                let enc = self.mgmt.encrypt(&w);
                self.session.witness = Some(w);
                Ok(tlv::encode(&[0x7c], &tlv::encode(&[0x80], &enc)))
            }
            // Step 2: the host decrypted the witness; answer its challenge.
            (Some(decrypted), Some(host_challenge), None) => {
                let expected = self.session.witness.take();
                if expected.as_deref() != Some(decrypted) || host_challenge.len() != block {
                    self.session.mgmt_authenticated = false;
                    return Err(Pending::Status(SW_SECURITY_STATUS));
                }
                self.session.mgmt_authenticated = true;
                let enc = self.mgmt.encrypt(host_challenge);
                Ok(tlv::encode(&[0x7c], &tlv::encode(&[0x82], &enc)))
            }
            // One-way: a challenge for the host to encrypt…
            (None, Some([]), None) => {
                let c = random_bytes(block);
                self.session.challenge = Some(c.clone());
                Ok(tlv::encode(&[0x7c], &tlv::encode(&[0x81], &c)))
            }
            // …and its answer.
            (None, None, Some(answer)) => {
                let expected = self.session.challenge.take().map(|c| self.mgmt.encrypt(&c));
                if expected.as_deref() == Some(answer) {
                    self.session.mgmt_authenticated = true;
                    Ok(Vec::new())
                } else {
                    self.session.mgmt_authenticated = false;
                    Err(Pending::Status(SW_SECURITY_STATUS))
                }
            }
            _ => Err(Pending::Status(SW_WRONG_DATA)),
        }
    }

    fn start_sign(&mut self, alg: u8, slot: u8, tags: &[Tlv<'_>]) -> Result<Vec<u8>, Pending> {
        let status = Pending::Status;
        let key = self.keys.get(&slot).ok_or(status(SW_REF_NOT_FOUND))?;
        if key.algorithm.code() != alg {
            return Err(status(SW_WRONG_DATA));
        }
        let (Some([]), Some(input)) = (tlv::find(tags, &[0x82]), tlv::find(tags, &[0x81])) else {
            // 85 (key agreement) and anything else: not this card.
            return Err(status(SW_WRONG_DATA));
        };
        if key.algorithm == KeyAlgorithm::P256 && input.len() > 32 {
            return Err(status(SW_WRONG_DATA));
        }
        let pin_ok = match key.pin_policy {
            PinPolicy::Never => true,
            PinPolicy::Once => self.session.pin_verified,
            PinPolicy::Always => self.session.pin_fresh,
        };
        if !pin_ok {
            return Err(status(SW_SECURITY_STATUS));
        }
        if key.pin_policy == PinPolicy::Always {
            self.session.pin_fresh = false;
        }
        let needs_touch = match key.touch_policy {
            TouchPolicy::Never => false,
            TouchPolicy::Always => true,
            TouchPolicy::Cached => self.touch.last.is_none_or(|t| t.elapsed() > TOUCH_CACHE),
        };
        let pending = PendingSign {
            slot,
            input: input.to_vec(),
        };
        if needs_touch {
            return Err(Pending::Touch(pending));
        }
        Ok(self.sign(&pending))
    }

    /// Completes a signature that waited for a touch; `touched` false means
    /// the card timed out (as a real YubiKey does after ~15 s).
    pub(crate) fn finish_sign(
        &mut self,
        pending: PendingSign,
        raw: &[u8],
        touched: bool,
    ) -> Vec<u8> {
        let resp = if touched {
            self.touch.last = Some(Instant::now());
            let data = self.sign(&pending);
            self.finish(Ok(data))
        } else {
            sw(SW_SECURITY_STATUS)
        };
        if let Some(cmd) = parse_command(raw) {
            self.log_apdu(&cmd, &resp);
        }
        resp
    }

    fn sign(&self, pending: &PendingSign) -> Vec<u8> {
        let key = &self.keys[&pending.slot];
        let sig = key.sign(&pending.input);
        tlv::encode(&[0x7c], &tlv::encode(&[0x82], &sig))
    }

    fn parse_policies(&self, tags: &[Tlv<'_>]) -> Result<(PinPolicy, TouchPolicy), u16> {
        let pin = match tlv::find(tags, &[0xaa]) {
            None | Some([0]) => PinPolicy::Once,
            Some([1]) => PinPolicy::Never,
            Some([2]) => PinPolicy::Once,
            Some([3]) => PinPolicy::Always,
            _ => return Err(SW_WRONG_DATA),
        };
        let touch = match tlv::find(tags, &[0xab]) {
            None | Some([0]) | Some([1]) => TouchPolicy::Never,
            Some([2]) => TouchPolicy::Always,
            Some([3]) => TouchPolicy::Cached,
            _ => return Err(SW_WRONG_DATA),
        };
        Ok((pin, touch))
    }

    fn algorithm(&self, code: u8) -> Result<KeyAlgorithm, u16> {
        match code {
            0x11 => Ok(KeyAlgorithm::P256),
            0xe0 if self.at_least([5, 7, 0]) => Ok(KeyAlgorithm::Ed25519),
            _ => Err(SW_WRONG_DATA),
        }
    }

    fn generate(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        self.require_management()?;
        if !is_key_slot(cmd.p2) {
            return Err(SW_WRONG_P1P2);
        }
        let outer = tlv::parse_all(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let template = tlv::find(&outer, &[0xac]).ok_or(SW_WRONG_DATA)?;
        let tags = tlv::parse_all(template).ok_or(SW_WRONG_DATA)?;
        let alg = match tlv::find(&tags, &[0x80]) {
            Some([code]) => self.algorithm(*code)?,
            _ => return Err(SW_WRONG_DATA),
        };
        let (pin_policy, touch_policy) = self.parse_policies(&tags)?;
        let key = SlotKey::generate(alg, pin_policy, touch_policy);
        let answer = tlv::encode(&[0x7f, 0x49], &tlv::encode(&[0x86], &key.public_bytes()));
        self.keys.insert(cmd.p2, key);
        Ok(answer)
    }

    fn import(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        self.require_management()?;
        if !is_key_slot(cmd.p2) {
            return Err(SW_WRONG_P1P2);
        }
        let alg = self.algorithm(cmd.p1)?;
        let tags = tlv::parse_all(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let secret = match alg {
            KeyAlgorithm::P256 => tlv::find(&tags, &[0x06]),
            KeyAlgorithm::Ed25519 => tlv::find(&tags, &[0x07]),
        }
        .ok_or(SW_WRONG_DATA)?;
        let (pin_policy, touch_policy) = self.parse_policies(&tags)?;
        let mut key =
            SlotKey::from_secret(alg, secret, pin_policy, touch_policy).ok_or(SW_WRONG_DATA)?;
        key.origin = Origin::Imported;
        self.keys.insert(cmd.p2, key);
        Ok(Vec::new())
    }

    fn object_id(data: &[u8]) -> Result<u32, u16> {
        let tlvs = tlv::parse_all(data).ok_or(SW_WRONG_DATA)?;
        let tag = tlv::find(&tlvs, &[0x5c]).ok_or(SW_WRONG_DATA)?;
        if tag.is_empty() || tag.len() > 3 {
            return Err(SW_NOT_FOUND);
        }
        Ok(tag.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
    }

    fn get_data(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        if (cmd.p1, cmd.p2) != (0x3f, 0xff) {
            return Err(SW_WRONG_P1P2);
        }
        let id = Self::object_id(&cmd.data)?;
        if id == OBJ_DISCOVERY {
            let mut v = tlv::encode(&[0x4f], &[0xa0, 0, 0, 3, 8, 0, 0, 0x10, 0, 1, 0]);
            v.extend(tlv::encode(&[0x5f, 0x2f], &[0x40, 0x00]));
            return Ok(tlv::encode(&[0x7e], &v));
        }
        if id == OBJ_PRINTED && !self.session.pin_verified {
            return Err(SW_SECURITY_STATUS);
        }
        let value = self.objects.get(&id).ok_or(SW_NOT_FOUND)?;
        Ok(tlv::encode(&[0x53], value))
    }

    fn put_data(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        self.require_management()?;
        if (cmd.p1, cmd.p2) != (0x3f, 0xff) {
            return Err(SW_WRONG_P1P2);
        }
        let tlvs = tlv::parse_all(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let id = Self::object_id(&cmd.data)?;
        let value = tlv::find(&tlvs, &[0x53]).ok_or(SW_WRONG_DATA)?;
        if value.is_empty() {
            self.objects.remove(&id);
        } else {
            self.objects.insert(id, value.to_vec());
        }
        Ok(Vec::new())
    }

    fn metadata(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        // GET METADATA arrived with firmware 5.3.
        if !self.at_least([5, 3, 0]) {
            return Err(SW_INS_NOT_SUPPORTED);
        }
        let slot = cmd.p2;
        let counter = |c: &RetryCounter| {
            let mut v = tlv::encode(&[0x01], &[0xff]);
            v.extend(tlv::encode(&[0x05], &[u8::from(c.is_default())]));
            v.extend(tlv::encode(&[0x06], &[c.total, c.remaining]));
            v
        };
        match slot {
            0x80 => Ok(counter(&self.pin)),
            0x81 => Ok(counter(&self.puk)),
            0x9b => {
                let mut v = tlv::encode(&[0x01], &[self.mgmt.algorithm.code()]);
                v.extend(tlv::encode(&[0x02], &[0x00, 0x01]));
                v.extend(tlv::encode(&[0x05], &[u8::from(self.mgmt_default)]));
                Ok(v)
            }
            0xf9 => {
                let public = self.attestation.f9_public_bytes();
                let mut v = tlv::encode(&[0x01], &[KeyAlgorithm::P256.code()]);
                v.extend(tlv::encode(&[0x02], &[0x01, 0x01]));
                v.extend(tlv::encode(&[0x03], &[0x02]));
                v.extend(tlv::encode(&[0x04], &tlv::encode(&[0x86], &public)));
                Ok(v)
            }
            _ => {
                let key = self.keys.get(&slot).ok_or(SW_REF_NOT_FOUND)?;
                let mut v = tlv::encode(&[0x01], &[key.algorithm.code()]);
                v.extend(tlv::encode(
                    &[0x02],
                    &[
                        pin_policy_byte(key.pin_policy),
                        touch_policy_byte(key.touch_policy),
                    ],
                ));
                let origin = match key.origin {
                    Origin::Generated => 1,
                    Origin::Imported => 2,
                };
                v.extend(tlv::encode(&[0x03], &[origin]));
                v.extend(tlv::encode(
                    &[0x04],
                    &tlv::encode(&[0x86], &key.public_bytes()),
                ));
                Ok(v)
            }
        }
    }

    fn attest(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        let slot = cmd.p1;
        let key = self.keys.get(&slot).ok_or(SW_REF_NOT_FOUND)?;
        if key.origin != Origin::Generated {
            return Err(SW_WRONG_DATA);
        }
        Ok(self
            .attestation
            .certify(slot, key, self.serial, self.version, self.form_factor))
    }

    fn set_management_key(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        self.require_management()?;
        let [alg, 0x9b, len, key @ ..] = cmd.data.as_slice() else {
            return Err(SW_WRONG_DATA);
        };
        let algorithm = ManagementAlgorithm::from_code(*alg).ok_or(SW_WRONG_DATA)?;
        if usize::from(*len) != key.len() || key.len() != algorithm.key_len() {
            return Err(SW_WRONG_DATA);
        }
        self.mgmt = ManagementKey {
            algorithm,
            key: key.to_vec(),
            pin_protected: false,
        };
        self.mgmt_default = self.mgmt == ManagementKey::factory_default(self.version);
        Ok(Vec::new())
    }

    fn set_pin_retries(&mut self, cmd: &Command) -> Result<Vec<u8>, u16> {
        self.require_management()?;
        if !self.session.pin_verified {
            return Err(SW_SECURITY_STATUS);
        }
        if cmd.p1 == 0 || cmd.p2 == 0 || cmd.p1 > 15 || cmd.p2 > 15 {
            return Err(SW_WRONG_P1P2);
        }
        // As on a real card, new counters come with the default PIN and PUK.
        self.pin = RetryCounter::new(b"123456", b"123456", cmd.p1);
        self.puk = RetryCounter::new(b"12345678", b"12345678", cmd.p2);
        Ok(Vec::new())
    }

    fn reset_card(&mut self) -> Result<Vec<u8>, u16> {
        if self.pin.remaining != 0 || self.puk.remaining != 0 {
            return Err(SW_CONDITIONS);
        }
        self.pin = RetryCounter::new(b"123456", b"123456", 3);
        self.puk = RetryCounter::new(b"12345678", b"12345678", 3);
        self.mgmt = ManagementKey::factory_default(self.version);
        self.mgmt_default = true;
        self.keys.clear();
        self.objects.clear();
        self.store_attestation_certificate();
        self.reset_session();
        self.session.applet = Applet::Piv;
        Ok(Vec::new())
    }
}

/// Why [`Card::start_sign`] did not answer at once.
enum Pending {
    Status(u16),
    Touch(PendingSign),
}

impl From<u16> for Pending {
    fn from(code: u16) -> Self {
        Pending::Status(code)
    }
}

/// A certificate as PIV stores it: `70` certificate, `71` info (not
/// compressed), `FE` error detection code.
pub(crate) fn certificate_object_value(der: &[u8]) -> Vec<u8> {
    let mut v = tlv::encode(&[0x70], der);
    v.extend(tlv::encode(&[0x71], &[0x00]));
    v.extend(tlv::encode(&[0xfe], &[]));
    v
}

/// The object that holds a slot's certificate.
pub(crate) fn slot_certificate_object(slot: u8) -> Option<u32> {
    certificate_object(slot)
}

impl Card {
    /// Stores `der` as the certificate of `slot` (a test hook: no
    /// management key needed).
    pub(crate) fn put_certificate(&mut self, slot: u8, der: &[u8]) {
        let id = slot_certificate_object(slot).expect("a slot with a certificate object");
        self.objects.insert(id, certificate_object_value(der));
    }
}
