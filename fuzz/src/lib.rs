//! # keybridge-fuzz
//!
//! The logic of every fuzz target, in one place: the libFuzzer binaries
//! (`fuzz_targets/*.rs`) and the corpus regression test
//! (`tests/corpus.rs`) call the same `pub fn TARGET(data: &[u8])`. Each
//! runs the real parsing and verification code on `data` and checks what
//! must hold whatever `data` is: no panic, stable round trips, and no
//! verifier accepting anything but the known-good objects of the
//! [`fixture`].
//!
//! | target | what |
//! |---|---|
//! | [`envelope_verify`] | a signed command against the fixture's log and its snapshot: `Verifier`, `inspect`, `unverified_account`, replay |
//! | [`batch_proof`] | CBOR, inclusion proofs and batch roots; a batch built from lines of ids |
//! | [`key_log`] | a key log read whole, as an extension of the fixture's, as new events after it |
//! | [`key_request`] | a key request: parse, self-signature, code |
//! | [`public_key`] | COSE_Key, SEC1, SPKI PEM, OpenSSH, kid hex |
//! | [`bridge_requests`] | every JSON body of the bridge's API (and its answers, as the client reads them); the streamed batch body |
//! | [`key_uri`] | key references (`passphrase:`, RFC 7512 `pkcs11:`, `yubikey:`, `tpm:`), their redaction, key records |
//! | [`device_state`] | the device's state files, one replaced at a time in a real state folder, read and used as `verify` and `trust update` do |

pub mod fixture;

mod batch_proof;
mod bridge_requests;
mod device_state;
mod envelope_verify;
mod key_log;
mod key_request;
mod key_uri;
mod public_key;

pub use batch_proof::batch_proof;
pub use bridge_requests::bridge_requests;
pub use device_state::device_state;
pub use envelope_verify::envelope_verify;
pub use key_log::key_log;
pub use key_request::key_request;
pub use key_uri::key_uri;
pub use public_key::public_key;

/// A target: what libFuzzer calls with each input.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus test and tools.
pub const TARGETS: [(&str, Target); 8] = [
    ("envelope_verify", envelope_verify),
    ("batch_proof", batch_proof),
    ("key_log", key_log),
    ("key_request", key_request),
    ("public_key", public_key),
    ("bridge_requests", bridge_requests),
    ("key_uri", key_uri),
    ("device_state", device_state),
];

/// The device's state API (compiled from `device/src`, see below), for
/// the seed corpus generator.
#[doc(hidden)]
pub mod device {
    pub use crate::device_state::{FILES, pristine};
    pub use crate::policy::{Hardware, Policy};
    pub use crate::state::{Settings, State};
}

// The device crate is a binary without a library target: its state
// modules are compiled here from its sources, as they are (they name each
// other as `crate::…`, hence at this crate's root). See README.md.
#[allow(dead_code, unused_imports)]
#[rustfmt::skip]
#[path = "../../device/src/exit_code.rs"]
mod exit_code;
#[allow(dead_code, unused_imports)]
#[rustfmt::skip]
#[path = "../../device/src/keys_index.rs"]
mod keys_index;
#[allow(dead_code, unused_imports)]
#[rustfmt::skip]
#[path = "../../device/src/policy.rs"]
mod policy;
#[allow(dead_code, unused_imports)]
#[rustfmt::skip]
#[path = "../../device/src/state.rs"]
mod state;
