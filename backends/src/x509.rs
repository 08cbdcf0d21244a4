//! X.509 certificate paths for attestation evidence: the part a YubiKey's
//! attestation (`yubikey/attestation.rs`) and a TPM's endorsement key
//! certificate (`tpm/attestation.rs`) share.
//!
//! The code lives in the pure-Rust `keybridge-evidence` crate
//! ([`keybridge_evidence::x509`]), which the device verifier shares without
//! linking any hardware library; it is re-exported here so that
//! `keybridge_backends::x509::…` keeps naming the same items. (With the
//! crate's `test-pki` feature, which this crate's tests turn on, that
//! includes `test_pki`, the in-memory certificate builder of the tests.)

pub use keybridge_evidence::x509::*;
