//! Key requests: parse and self-signature check.

use crate::fixture::{self, same_but_signature};
use keybridge_protocol::log::format_code;
use keybridge_protocol::{Algorithm, KeyRequest, cbor};

/// [`KeyRequest::parse`] on `data`: only the fixture's known-good requests
/// (or an ES256 one's twin with the other S) are accepted; an accepted
/// request is `data`, whose payload is deterministic CBOR, with a 6-digit
/// code that formats as `ddd ddd`. [`format_code`] of any text does not
/// panic and leaves anything but six digits as it is.
pub fn key_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let formatted = format_code(&text);
    if !(text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit())) {
        assert_eq!(formatted, text);
    }

    let Ok(req) = KeyRequest::parse(data) else {
        return;
    };
    let f = fixture::fixture();
    let known = f.requests.iter().any(|good| good == data);
    let twin = req.key.algorithm() == Algorithm::Es256
        && f.requests.iter().any(|good| same_but_signature(data, good));
    assert!(
        known || twin,
        "an unknown key request was accepted: {req:?}"
    );
    assert_eq!(req.bytes(), data);
    assert!(!req.account.is_empty() && !req.agent.is_empty());
    let code = req.verification_code();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let shown = format_code(&code);
    assert_eq!(shown, format!("{} {}", &code[..3], &code[3..]));
    assert!(cbor::decode_deterministic(data).is_ok());
    if let Some(e) = &req.evidence {
        assert!(!e.kind.is_empty() && !e.chain.is_empty());
    }
}
