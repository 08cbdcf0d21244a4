//! # keybridge-protocol
//!
//! What a managed device embeds to verify keybridge signed commands: the
//! wire format, key ids, batch proofs, the account's key log, the replay
//! cache and the verifier. Pure Rust: no I/O, no clock (time is a
//! parameter), no async. The contract is `DESIGN.md` §2–§5 and §7.
//!
//! - A signed command is a tagged COSE_Sign1 (RFC 9052) whose payload is a
//!   deterministic CBOR (RFC 8949 §4.2.1) map of CWT-style claims
//!   ([`command::Claims`]). [`command::UnsignedCommand`] gives a backend the
//!   exact bytes to sign and wraps its 64-byte signature.
//! - Keys are Ed25519 or P-256 ([`key::PublicKey`]); a key id is the RFC 9679
//!   COSE Key Thumbprint ([`key::Kid`]).
//! - A batch ([`batch::Batch`]) signs one command for many devices: the
//!   batch size and an RFC 6962 Merkle root in the payload
//!   ([`batch::BatchRoot`]), a proof per device.
//! - Device ids have one grammar ([`device_id::check_device_id`]) and
//!   signed objects one size limit ([`MAX_ENVELOPE_LEN`]).
//! - The account's [`log::KeyLog`] says which keys are trusted.
//! - [`verify::Verifier`] checks a command against a log, and
//!   [`replay::ReplayCache`] makes sure it is acted on once.

pub mod batch;
pub mod cbor;
pub mod command;
pub mod device_id;
mod envelope;
pub mod key;
pub mod log;
pub mod replay;
pub mod verify;

pub use batch::{Batch, BatchError, BatchRoot, InclusionProof};
pub use command::{ArgValue, AssembleError, Claims, ClaimsError, UnsignedCommand};
pub use device_id::{DeviceIdError, check_device_id};
pub use envelope::{EnvelopeError, MAX_ENVELOPE_LEN, Unsigned};
pub use key::{Algorithm, BadSignature, Kid, PublicKey};
pub use log::{KeyLog, KeyRequest, KeyStatus, LogError, Op, Role};
pub use replay::ReplayCache;
pub use verify::{Verified, Verifier, VerifyError, unverified_account};
