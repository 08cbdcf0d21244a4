//! Key references and the key records that carry them.

use keybridge_backends::{BackendKind, KeyRecord, KeyUri, Pkcs11Uri, redact_uri};

/// 1. `data` as a key reference ([`KeyUri`]: `passphrase:`, RFC 7512
///    `pkcs11:`, `yubikey:`, `tpm:`): a reference that reads prints in
///    its canonical form, which reads back to the same reference and
///    prints the same; its backend is its scheme's. `pkcs11:` alone
///    ([`Pkcs11Uri`]) reads the same.
/// 2. [`redact_uri`] never panics and leaves no control character, no
///    `pin-value` and no query value (what it promises: no secret and no
///    path from a URI in an error), and is idempotent.
/// 3. `data` as a key record (JSON): it writes back and reads back the
///    same, and its key, kid and reference read without panicking.
pub fn key_uri(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let redacted = redact_uri(&text);
    assert!(!redacted.chars().any(char::is_control));
    let (path, query) = match redacted.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (redacted.as_str(), None),
    };
    for attr in path.split(';') {
        if let Some((name, value)) = attr.split_once('=')
            && name.eq_ignore_ascii_case("pin-value")
        {
            assert_eq!(value, "…", "a PIN left in {redacted:?}");
        }
    }
    for attr in query.into_iter().flat_map(|q| q.split('&')) {
        if let Some((_, value)) = attr.split_once('=') {
            assert_eq!(value, "…", "a query value left in {redacted:?}");
        }
    }
    assert_eq!(redact_uri(&redacted), redacted, "redaction is idempotent");

    let _ = text.parse::<BackendKind>();
    if let Ok(uri) = text.parse::<KeyUri>() {
        let printed = uri.to_string();
        let again: KeyUri = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not read back: {e}"));
        assert_eq!(again, uri, "{printed:?} reads back differently");
        assert_eq!(again.to_string(), printed);
        let scheme = text.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        assert_eq!(scheme.as_deref(), Some(uri.backend().name()));
        if let KeyUri::Pkcs11(p) = &uri {
            assert_eq!(text.parse::<Pkcs11Uri>().as_ref(), Ok(p));
            let _ = p.names_a_key();
        }
    }
    if let Ok(p) = text.parse::<Pkcs11Uri>() {
        let printed = p.to_string();
        assert_eq!(printed.parse::<Pkcs11Uri>().as_ref(), Ok(&p), "{printed:?}");
    }

    if let Ok(record) = serde_json::from_slice::<KeyRecord>(data) {
        let json = serde_json::to_vec(&record).expect("JSON");
        let back: KeyRecord = serde_json::from_slice(&json).expect("a record reads back");
        assert_eq!(back, record);
        let _ = record.key_uri();
        match record.public() {
            Ok(key) => assert_eq!(record.kid(), Ok(key.kid())),
            Err(_) => assert!(record.kid().is_err()),
        }
    }
}
