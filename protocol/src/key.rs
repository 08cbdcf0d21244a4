//! Public keys: COSE_Key, key ids (RFC 9679 thumbprints), SPKI PEM and
//! OpenSSH public-key lines, and signature verification.

use crate::cbor;
use ciborium::value::Value;
use coset::iana;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The two signature algorithms keybridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (COSE `-8` EdDSA; verifiers also take `-19`).
    Ed25519,
    /// ECDSA P-256 with SHA-256 (COSE `-7` ES256; verifiers also take `-9`).
    Es256,
}

impl Algorithm {
    /// The COSE algorithm identifier signers put in the protected header.
    pub fn cose(self) -> iana::Algorithm {
        match self {
            Algorithm::Ed25519 => iana::Algorithm::EdDSA,
            Algorithm::Es256 => iana::Algorithm::ES256,
        }
    }

    /// Maps a COSE algorithm identifier to ours; `None` for anything else.
    pub fn from_cose(alg: i64) -> Option<Self> {
        match alg {
            -8 | -19 => Some(Algorithm::Ed25519),
            -7 | -9 => Some(Algorithm::Es256),
            _ => None,
        }
    }

    /// Short name, as used in the CLI and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Es256 => "p256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key id: the RFC 9679 COSE Key Thumbprint (SHA-256) of a public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(pub [u8; 32]);

impl Kid {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kid({})", self.to_hex())
    }
}

impl FromStr for Kid {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = unhex(s).ok_or(KeyError::BadKid)?;
        Ok(Kid(bytes.try_into().map_err(|_| KeyError::BadKid)?))
    }
}

/// Why a public key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a COSE_Key keybridge understands (OKP/Ed25519 or EC2/P-256).
    #[error("not a supported COSE_Key: {0}")]
    CoseKey(&'static str),
    /// The bytes are not a valid point on the curve.
    #[error("invalid {0} public key")]
    InvalidPoint(Algorithm),
    /// Not a PEM SubjectPublicKeyInfo for Ed25519 or P-256.
    #[error("not an Ed25519 or P-256 SubjectPublicKeyInfo PEM")]
    Pem,
    /// Not an `ssh-ed25519` or `ecdsa-sha2-nistp256` public-key line.
    #[error("not an ssh-ed25519 or ecdsa-sha2-nistp256 public key line")]
    OpenSsh,
    /// A key id must be 64 hex characters.
    #[error("a key id is 64 hex characters")]
    BadKid,
}

/// A signature did not verify. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

#[derive(Clone, PartialEq, Eq)]
enum Inner {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// A verified-usable public key. Construction validates the point, so a
/// `PublicKey` is always on its curve (and, for Ed25519, not of small order).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: Inner,
    kid: Kid,
    /// P-256 only: the uncompressed SEC1 point, as `ring` takes it.
    sec1: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.algorithm(), self.kid)
    }
}

impl PublicKey {
    fn new(inner: Inner) -> Self {
        let kid = Kid(Sha256::digest(thumbprint_input(&inner)).into());
        let sec1 = match &inner {
            Inner::Ed25519(_) => Vec::new(),
            Inner::P256(vk) => vk.to_sec1_point(false).as_bytes().to_vec(),
        };
        PublicKey { inner, kid, sec1 }
    }

    /// An Ed25519 public key from its 32 bytes. Small-order points are
    /// refused: no signature made with them proves anything.
    pub fn ed25519(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        // RFC 8032 §5.1.3: y ≥ p is not an encoding. ed25519-dalek reduces
        // y mod p instead, which would give one point a second encoding —
        // and a second kid. y ≥ p = 2^255 − 19 means bits 8..255 all set
        // and the lowest byte at least 0xed.
        let y_high_bits_set = bytes[1..31].iter().all(|&b| b == 0xff) && bytes[31] & 0x7f == 0x7f;
        if y_high_bits_set && bytes[0] >= 0xed {
            return Err(KeyError::InvalidPoint(Algorithm::Ed25519));
        }
        let vk = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| KeyError::InvalidPoint(Algorithm::Ed25519))?;
        if vk.is_weak() {
            return Err(KeyError::InvalidPoint(Algorithm::Ed25519));
        }
        Ok(Self::new(Inner::Ed25519(vk)))
    }

    /// A P-256 public key from its SEC1 encoding (compressed or not).
    pub fn p256_sec1(bytes: &[u8]) -> Result<Self, KeyError> {
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map_err(|_| KeyError::InvalidPoint(Algorithm::Es256))?;
        Ok(Self::new(Inner::P256(vk)))
    }

    /// The signature algorithm this key is for.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            Inner::Ed25519(_) => Algorithm::Ed25519,
            Inner::P256(_) => Algorithm::Es256,
        }
    }

    /// The key id (RFC 9679 thumbprint), computed once at construction.
    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// The raw public key: 32 bytes for Ed25519, 65-byte uncompressed SEC1
    /// point for P-256.
    pub fn raw_bytes(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Ed25519(vk) => vk.to_bytes().to_vec(),
            Inner::P256(vk) => vk.to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    /// The deterministic COSE_Key encoding with exactly the required
    /// parameters (kty, crv, x, and y for EC2). These are also the bytes the
    /// RFC 9679 thumbprint hashes.
    pub fn to_cose_key_bytes(&self) -> Vec<u8> {
        thumbprint_input(&self.inner)
    }

    /// The COSE_Key as a CBOR value (for embedding in other structures).
    pub fn to_cose_key_value(&self) -> Value {
        cose_key_value(&self.inner)
    }

    /// Reads a COSE_Key from CBOR bytes. Extra parameters (`kid`, `alg`,
    /// `key_ops`) are ignored; the key must be OKP/Ed25519 or EC2/P-256 with
    /// an uncompressed point.
    pub fn from_cose_key_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let (value, used) =
            cbor::decode_prefix(bytes).map_err(|_| KeyError::CoseKey("not CBOR"))?;
        if used != bytes.len() {
            return Err(KeyError::CoseKey("trailing bytes"));
        }
        Self::from_cose_key_value(&value)
    }

    /// Reads a COSE_Key from a decoded CBOR value.
    pub fn from_cose_key_value(value: &Value) -> Result<Self, KeyError> {
        let Value::Map(entries) = value else {
            return Err(KeyError::CoseKey("not a map"));
        };
        let get = |label: i64| {
            entries.iter().find_map(|(k, v)| match k {
                Value::Integer(i) if i128::from(*i) == i128::from(label) => Some(v),
                _ => None,
            })
        };
        let int = |v: Option<&Value>| match v {
            Some(Value::Integer(i)) => i64::try_from(*i).ok(),
            _ => None,
        };
        let bytes = |v: Option<&Value>| match v {
            Some(Value::Bytes(b)) => Some(b.clone()),
            _ => None,
        };
        let kty = int(get(1)).ok_or(KeyError::CoseKey("missing kty"))?;
        let crv = int(get(-1)).ok_or(KeyError::CoseKey("missing crv"))?;
        let x = bytes(get(-2)).ok_or(KeyError::CoseKey("missing x"))?;
        match (kty, crv) {
            (1, 6) => {
                let x: [u8; 32] = x
                    .try_into()
                    .map_err(|_| KeyError::CoseKey("Ed25519 x is 32 bytes"))?;
                Self::ed25519(&x)
            }
            (2, 1) => {
                let y = bytes(get(-3)).ok_or(KeyError::CoseKey("EC2 key needs y as bytes"))?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::CoseKey("P-256 coordinates are 32 bytes"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                Self::p256_sec1(&sec1)
            }
            _ => Err(KeyError::CoseKey("only OKP/Ed25519 and EC2/P-256")),
        }
    }

    /// SubjectPublicKeyInfo, PEM (`-----BEGIN PUBLIC KEY-----`), as
    /// `openssl pkey -pubin` reads it.
    pub fn to_spki_pem(&self) -> String {
        let lf = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
        match &self.inner {
            Inner::Ed25519(vk) => vk.to_public_key_pem(lf),
            Inner::P256(vk) => {
                use p256::pkcs8::EncodePublicKey as _;
                vk.to_public_key_pem(lf)
            }
        }
        .expect("encoding a valid public key as PEM cannot fail")
    }

    /// Reads a SubjectPublicKeyInfo PEM for Ed25519 or P-256.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        if let Ok(vk) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()) {
            return Self::ed25519(vk.as_bytes());
        }
        use p256::pkcs8::DecodePublicKey as _;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|_| KeyError::Pem)?;
        Ok(Self::new(Inner::P256(vk)))
    }

    /// An OpenSSH public-key line (`ssh-ed25519 AAAA… comment`, or
    /// `ecdsa-sha2-nistp256 AAAA… comment`), RFC 4253 §6.6 / RFC 5656 §3.1.
    pub fn to_openssh(&self, comment: &str) -> String {
        let mut blob = Vec::with_capacity(104);
        let name = match &self.inner {
            Inner::Ed25519(vk) => {
                ssh_string(&mut blob, b"ssh-ed25519");
                ssh_string(&mut blob, vk.as_bytes());
                "ssh-ed25519"
            }
            Inner::P256(vk) => {
                ssh_string(&mut blob, b"ecdsa-sha2-nistp256");
                ssh_string(&mut blob, b"nistp256");
                ssh_string(&mut blob, vk.to_sec1_point(false).as_bytes());
                "ecdsa-sha2-nistp256"
            }
        };
        use base64ct::Encoding as _;
        let b64 = base64ct::Base64::encode_string(&blob);
        if comment.is_empty() {
            format!("{name} {b64}")
        } else {
            format!("{name} {b64} {comment}")
        }
    }

    /// Reads an OpenSSH public-key line (`authorized_keys` format, no options).
    pub fn from_openssh(line: &str) -> Result<Self, KeyError> {
        use base64ct::Encoding as _;
        let mut parts = line.split_whitespace();
        let name = parts.next().ok_or(KeyError::OpenSsh)?;
        let b64 = parts.next().ok_or(KeyError::OpenSsh)?;
        let blob = base64ct::Base64::decode_vec(b64).map_err(|_| KeyError::OpenSsh)?;
        let mut rd = blob.as_slice();
        let inner_name = ssh_read_string(&mut rd)?;
        if inner_name != name.as_bytes() {
            return Err(KeyError::OpenSsh);
        }
        let key = match name {
            "ssh-ed25519" => {
                let raw: [u8; 32] = ssh_read_string(&mut rd)?
                    .try_into()
                    .map_err(|_| KeyError::OpenSsh)?;
                Self::ed25519(&raw)?
            }
            "ecdsa-sha2-nistp256" => {
                if ssh_read_string(&mut rd)? != b"nistp256" {
                    return Err(KeyError::OpenSsh);
                }
                Self::p256_sec1(ssh_read_string(&mut rd)?)?
            }
            _ => return Err(KeyError::OpenSsh),
        };
        if !rd.is_empty() {
            return Err(KeyError::OpenSsh);
        }
        Ok(key)
    }

    /// Verifies a 64-byte signature over `msg` for algorithm `alg`.
    ///
    /// The algorithm must be this key's: an Ed25519 key never verifies an
    /// ES256 signature and vice versa (no algorithm confusion). Ed25519 uses
    /// strict verification (no small-order R, canonical S) with
    /// `ed25519-dalek`. ES256 hashes `msg` with SHA-256 and accepts both low
    /// and high S, as RFC 9053 does (commands: their replay key is (kid,
    /// cti), not their bytes); it is verified with `ring`. Key-log events
    /// and key requests, which are chained and compared by their bytes,
    /// require low S on top of this.
    pub fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> Result<(), BadSignature> {
        if alg != self.algorithm() {
            return Err(BadSignature);
        }
        let sig: &[u8; 64] = sig.try_into().map_err(|_| BadSignature)?;
        match &self.inner {
            Inner::Ed25519(vk) => {
                let sig = ed25519_dalek::Signature::from_bytes(sig);
                vk.verify_strict(msg, &sig).map_err(|_| BadSignature)
            }
            // The point was validated by `p256` at construction; the
            // verification itself is ring's, ~5x faster here than p256 0.14
            // (75 µs against 400 µs), which devices and the bridge's check
            // of every hardware signature both feel.
            Inner::P256(_) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &self.sec1,
            )
            .verify(msg, sig)
            .map_err(|_| BadSignature),
        }
    }
}

fn cose_key_value(inner: &Inner) -> Value {
    let int = |i: i64| Value::Integer(i.into());
    match inner {
        Inner::Ed25519(vk) => Value::Map(vec![
            (int(1), int(iana::KeyType::OKP as i64)),
            (int(-1), int(iana::EllipticCurve::Ed25519 as i64)),
            (int(-2), Value::Bytes(vk.to_bytes().to_vec())),
        ]),
        Inner::P256(vk) => {
            let point = vk.to_sec1_point(false);
            let x = point.x().expect("uncompressed point has x").to_vec();
            let y = point.y().expect("uncompressed point has y").to_vec();
            Value::Map(vec![
                (int(1), int(iana::KeyType::EC2 as i64)),
                (int(-1), int(iana::EllipticCurve::P_256 as i64)),
                (int(-2), Value::Bytes(x)),
                (int(-3), Value::Bytes(y)),
            ])
        }
    }
}

/// RFC 9679 §3: the deterministic encoding of the required parameters only.
fn thumbprint_input(inner: &Inner) -> Vec<u8> {
    cbor::encode(&mut cose_key_value(inner))
}

fn ssh_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn ssh_read_string<'a>(rd: &mut &'a [u8]) -> Result<&'a [u8], KeyError> {
    let (len, rest) = rd.split_first_chunk::<4>().ok_or(KeyError::OpenSsh)?;
    let len = u32::from_be_bytes(*len) as usize;
    let (s, rest) = rest.split_at_checked(len).ok_or(KeyError::OpenSsh)?;
    *rd = rest;
    Ok(s)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Decodes hex: pairs of digits `0-9`, `a-f`, `A-F`, nothing else (no sign,
/// no whitespace, no `0x`); `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    ::hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed_key() -> PublicKey {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        PublicKey::ed25519(sk.verifying_key().as_bytes()).unwrap()
    }

    fn p256_key() -> PublicKey {
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        PublicKey::p256_sec1(sk.verifying_key().to_sec1_point(false).as_bytes()).unwrap()
    }

    #[test]
    fn rfc9679_thumbprint_example_matches() {
        // RFC 9679 §6, the EC2 P-256 example key.
        let x = unhex("65eda5a12577c2bae829437fe338701a10aaa375e1bb5b5de108de439c08551d").unwrap();
        let y = unhex("1e52ed75701163f7f9e40ddf9f341b3dc9ba860af7e0ca7ca7e9eecd0084d19c").unwrap();
        let mut sec1 = vec![4u8];
        sec1.extend(x);
        sec1.extend(y);
        let key = PublicKey::p256_sec1(&sec1).unwrap();
        assert_eq!(
            key.kid().to_hex(),
            "496bd8afadf307e5b08c64b0421bf9dc01528a344a43bda88fadd1669da253ec"
        );
    }

    #[test]
    fn cose_key_round_trips_for_both_curves() {
        for key in [ed_key(), p256_key()] {
            let bytes = key.to_cose_key_bytes();
            assert_eq!(PublicKey::from_cose_key_bytes(&bytes).unwrap(), key);
            assert_eq!(
                key.kid().0,
                <[u8; 32]>::from(Sha256::digest(&bytes)),
                "kid is the hash of the COSE_Key bytes"
            );
        }
    }

    #[test]
    fn pem_and_openssh_round_trip() {
        for key in [ed_key(), p256_key()] {
            assert_eq!(PublicKey::from_spki_pem(&key.to_spki_pem()).unwrap(), key);
            let line = key.to_openssh("alice@acme");
            assert!(line.ends_with(" alice@acme"));
            assert_eq!(PublicKey::from_openssh(&line).unwrap(), key);
        }
        assert_eq!(
            PublicKey::from_openssh("ssh-rsa AAAAB3NzaC1yc2E="),
            Err(KeyError::OpenSsh)
        );
    }

    #[test]
    fn small_order_ed25519_key_is_refused() {
        // The identity point.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert!(PublicKey::ed25519(&id).is_err());
    }

    #[test]
    fn kid_parses_from_hex() {
        let k = ed_key().kid();
        assert_eq!(k.to_hex().parse::<Kid>().unwrap(), k);
        assert!("zz".parse::<Kid>().is_err());
    }

    #[test]
    fn hex_round_trips_in_either_case() {
        let bytes: Vec<u8> = (0..=255).collect();
        let lower = hex(&bytes);
        assert_eq!(lower, lower.to_ascii_lowercase());
        assert_eq!(unhex(&lower).unwrap(), bytes);
        assert_eq!(unhex(&lower.to_ascii_uppercase()).unwrap(), bytes);
        assert_eq!(unhex("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn unhex_refuses_signs_whitespace_odd_length_and_non_ascii() {
        // `u8::from_str_radix` takes a leading `+`: "+a" was once 0x0a.
        for bad in [
            "+a+b",
            "+0",
            "-1",
            "+a",
            "0x00",
            " 0",
            "0 ",
            "0\n",
            "a b",
            "\t00",
            "abc",
            "0",
            "gg",
            "é",
            "0é",
            "éé",
            "٠٠",
            "+a".repeat(32).as_str(),
        ] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
        let kid = "+a".repeat(32);
        assert!(kid.parse::<Kid>().is_err(), "{kid} is not a kid");
    }
}
