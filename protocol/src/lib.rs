//! # keybridge-protocol
//!
//! What a managed device embeds to verify keybridge signed commands: the
//! wire format, key ids, batch proofs, the account's key log, the replay
//! cache and the verifier. No I/O, no clock (time is a parameter), no
//! async, no `unsafe` of its own. The contract is `DESIGN.md` §2–§5 and §7.
//!
//! Not pure Rust: ES256 (P-256) signatures are verified with `ring`, whose
//! elliptic-curve arithmetic is C and assembly. It is there for speed: on
//! the reference machine `ring` verifies a P-256 signature in ~75 µs where
//! the pure-Rust `p256` 0.14 takes ~400 µs, and every device verifies every
//! command, as the bridge checks every hardware signature. `p256` still
//! parses and validates the points; Ed25519 is `ed25519-dalek`, SHA-256
//! `sha2`, CBOR `ciborium` and COSE `coset`, all Rust. Building the crate
//! therefore needs a C compiler for the target (as `ring` does).
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
//!
//! The public API speaks `ciborium` CBOR values
//! ([`ciborium::value::Value`], e.g. [`InclusionProof::to_value`],
//! [`BatchRoot::from_value`], [`PublicKey::to_cose_key_value`]) and `coset`
//! types (e.g. [`Algorithm::cose`]). Both crates are re-exported here
//! ([`ciborium`], [`coset`]), at the versions this crate uses, so a device
//! embedding it needs no direct dependency on either to call those
//! functions:
//!
//! ```
//! use keybridge_protocol::ciborium::value::Value;
//! use keybridge_protocol::{Batch, InclusionProof};
//!
//! let batch = Batch::new(["dev-1", "dev-2", "dev-3"]).unwrap();
//! let proof: Value = batch.proof(1).to_value();
//! assert_eq!(InclusionProof::from_value(&proof), Some(batch.proof(1)));
//! let alg: keybridge_protocol::coset::iana::Algorithm =
//!     keybridge_protocol::Algorithm::Es256.cose();
//! assert_eq!(alg as i64, -7);
//! ```

pub use ciborium;
pub use coset;

pub mod batch;
pub mod cbor;
pub mod command;
pub mod crash;
pub mod device_id;
mod envelope;
pub mod key;
pub mod log;
pub mod replay;
pub mod verify;

pub use batch::{Batch, BatchError, BatchRoot, DeviceIds, InclusionProof, Repeated};
pub use command::{ArgValue, AssembleError, BatchEnvelopes, Claims, ClaimsError, UnsignedCommand};
pub use device_id::{DeviceIdError, check_device_id};
pub use envelope::{EnvelopeError, MAX_ENVELOPE_LEN, Unsigned};
pub use key::{Algorithm, BadSignature, Kid, PublicKey};
pub use log::{KeyLog, KeyRequest, KeyStatus, LogError, Op, Role, Trust};
pub use replay::ReplayCache;
pub use verify::{Verified, Verifier, VerifyError, unverified_account};
