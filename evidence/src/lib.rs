//! # keybridge-evidence
//!
//! Checking a key's residency evidence — the proof, made by its hardware,
//! that a key was generated in it — in pure Rust: no PC/SC, no TSS, no
//! hardware. Both the bridge (`keybridge keys verify-attestation`, through
//! `keybridge-backends`) and the device verifier (`keybridge-device policy`,
//! which must not link pcsc-lite or tpm2-tss) use it.
//!
//! - [`x509`]: certificate paths from a certificate up to a root the caller
//!   holds (size limits, strict DER, bounded path building), shared by the
//!   YubiKey check and the TPM's AK and EK certificate checks.
//! - [`yubikey`]: a YubiKey PIV attestation (the slot's attestation
//!   certificate and the f9 certificate) checked against roots, with what
//!   it says of the card and the slot (serial, firmware, PIN and touch
//!   policies, form factor).
//! - [`tpm`]: a TPM2_Certify statement ([`TPM2_CERTIFY`]): the TPM's
//!   attestation key certified that a key lives in that TPM and cannot
//!   leave it, for this key record; with roots, the AK's certificate (what
//!   binds the AK to a TPM the roots vouch for) or else the TPM's EK
//!   certificate (which names the TPM but, being public, does not bind the
//!   AK). Its TPM structures are read by a small hand-written reader
//!   ([`tpm::wire`]), cross-checked against tpm2-tss in
//!   `keybridge-backends`' tests.
//!
//! Nothing here reads a clock, a file or the network: evidence, roots and
//! the key come from the caller, and every one of them is hostile input.

pub mod tpm;
pub mod x509;
pub mod yubikey;

/// The evidence kind of a YubiKey PIV attestation ([`yubikey::verify`]):
/// DER certificates, the slot's attestation certificate then the f9
/// certificate.
pub const YUBIKEY_PIV_ATTESTATION: &str = "yubikey-piv-attestation";

/// The evidence kind of a TPM2_Certify statement ([`tpm::verify`]): the
/// TPMS_ATTEST, its TPMT_SIGNATURE, the AK's and the key's TPMT_PUBLIC,
/// and optionally the AK certificate or the EK certificate (DER).
pub const TPM2_CERTIFY: &str = "tpm2-certify";
