//! Public keys in every format keybridge reads.

use crate::fixture;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{Algorithm, Kid, PublicKey};
use sha2::{Digest as _, Sha256};

/// `data` as a COSE_Key, a SEC1 point, 32 Ed25519 bytes, an SPKI PEM, an
/// OpenSSH line, a kid and hex: every key read writes back in each format
/// and reads back to the same key, whose kid is the SHA-256 of its
/// COSE_Key. No signature from `data` verifies under a fixture key.
pub fn public_key(data: &[u8]) {
    let mut keys = vec![];
    keys.extend(PublicKey::from_cose_key_bytes(data).ok());
    keys.extend(PublicKey::p256_sec1(data).ok());
    if let Ok(raw) = <&[u8; 32]>::try_from(data) {
        keys.extend(PublicKey::ed25519(raw).ok());
    }
    let text = String::from_utf8_lossy(data);
    keys.extend(PublicKey::from_spki_pem(&text).ok());
    keys.extend(PublicKey::from_openssh(&text).ok());
    for key in &keys {
        round_trip(key);
    }

    if let Ok(kid) = text.parse::<Kid>() {
        assert_eq!(kid.to_hex().parse::<Kid>(), Ok(kid));
        assert_eq!(kid.to_hex(), text.to_ascii_lowercase());
    }
    if let Some(bytes) = unhex(&text) {
        assert_eq!(hex(&bytes), text.to_ascii_lowercase());
    }

    // The last 64 bytes as a signature over the rest: never good.
    if let Some(split) = data.len().checked_sub(64) {
        let (msg, sig) = data.split_at(split);
        let f = fixture::fixture();
        for key in [f.alice.public(), f.bob.public(), f.carol.public()] {
            for alg in [Algorithm::Ed25519, Algorithm::Es256] {
                assert!(key.verify(alg, msg, sig).is_err(), "a forged signature");
            }
        }
    }
}

fn round_trip(key: &PublicKey) {
    let cose = key.to_cose_key_bytes();
    assert_eq!(key.kid().0, <[u8; 32]>::from(Sha256::digest(&cose)));
    assert_eq!(PublicKey::from_cose_key_bytes(&cose).as_ref(), Ok(key));
    assert_eq!(
        PublicKey::from_cose_key_value(&key.to_cose_key_value()).as_ref(),
        Ok(key)
    );
    assert_eq!(
        PublicKey::from_spki_pem(&key.to_spki_pem()).as_ref(),
        Ok(key)
    );
    assert_eq!(
        PublicKey::from_openssh(&key.to_openssh("a comment")).as_ref(),
        Ok(key)
    );
    assert_eq!(
        PublicKey::from_openssh(&key.to_openssh("")).as_ref(),
        Ok(key)
    );
    let raw = key.raw_bytes();
    let again = match key.algorithm() {
        Algorithm::Ed25519 => PublicKey::ed25519(&raw.try_into().expect("32 bytes")),
        Algorithm::Es256 => PublicKey::p256_sec1(&raw),
    };
    assert_eq!(again.as_ref(), Ok(key));
}
