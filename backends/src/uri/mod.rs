//! Key references (DESIGN.md §3):
//!
//! - `passphrase:account=ACME;agent=alice`
//! - `pkcs11:token=…;object=…?module-path=…` (RFC 7512)
//! - `yubikey:serial=12345678;slot=9c`
//! - `tpm:file=/abs/key.pem;handle=0x81000101;tcti=…` ([`tpm`])
//!
//! Each reference is parsed once, here, when it is read (pure parsing,
//! compiled in every build, whichever backends are).

pub mod pkcs11;
pub mod tpm;
pub mod yubikey;

use crate::record::BackendKind;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use pkcs11::{Pkcs11Uri, Pkcs11UriError};
use std::fmt;
use std::str::FromStr;
use tpm::{TpmUri, TpmUriError};
use yubikey::{YubikeyUri, YubikeyUriError};

/// A parsed key reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyUri {
    /// The memorized key of `agent` in `account`.
    Passphrase {
        /// Account id (the command's `iss`).
        account: String,
        /// Agent id inside the account (the command's `sub`).
        agent: String,
    },
    /// A PKCS#11 key, parsed (RFC 7512).
    Pkcs11(Pkcs11Uri),
    /// A YubiKey PIV slot, parsed.
    Yubikey(YubikeyUri),
    /// A TPM key (or where a new one goes), parsed.
    Tpm(TpmUri),
}

/// Why a key reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// No `scheme:` prefix.
    #[error("a key reference starts with passphrase:, pkcs11:, yubikey: or tpm:")]
    MissingScheme,
    /// A scheme keybridge has no backend for.
    #[error("unknown key reference scheme {0:?} (passphrase, pkcs11, yubikey or tpm)")]
    UnknownScheme(String),
    /// A `passphrase:` reference that is not `account=…;agent=…`.
    #[error("bad passphrase key reference: {0}")]
    Passphrase(&'static str),
    /// A `pkcs11:` reference that is not a URI keybridge accepts.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11UriError),
    /// A `yubikey:` reference that is not `serial=…;slot=…`.
    #[error(transparent)]
    Yubikey(#[from] YubikeyUriError),
    /// A `tpm:` reference keybridge does not accept.
    #[error(transparent)]
    Tpm(#[from] TpmUriError),
}

/// A key reference as it may appear in an error or a log line: attribute
/// values of the query (`?module-path=…&pin-source=…`) and any `pin-value`
/// replaced by `…`, so that no error ever carries a secret or a path from a
/// URI. Names of attributes are kept: they say what was given.
pub fn redact_uri(uri: &str) -> String {
    // The name as it would read once control characters are dropped (the
    // output drops them) and percent-escapes decoded: `pi\x01n-value` or
    // `pin%2Dvalue` is still the PIN's attribute.
    let is_pin_value = |name: &str| {
        let visible: String = name.chars().filter(|c| !c.is_control()).collect();
        percent_decode_str(&visible)
            .decode_utf8_lossy()
            .chars()
            .filter(|c| !c.is_control() && !c.is_whitespace())
            .collect::<String>()
            .eq_ignore_ascii_case("pin-value")
    };
    let redact_attrs = |part: &str, sep: char, all: bool| -> String {
        part.split(sep)
            .map(|attr| match attr.split_once('=') {
                Some((name, _)) if all || is_pin_value(name) => format!("{name}=…"),
                _ => attr.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    };
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let mut out = redact_attrs(path, ';', false);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_attrs(q, '&', true));
    }
    out.chars().filter(|c| !c.is_control()).collect()
}

/// Characters written percent-encoded in attribute values: the delimiters of
/// the URI forms, `%` itself, space and controls (non-ASCII is always encoded).
const VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b';')
    .add(b'=')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

impl KeyUri {
    /// The passphrase reference for `agent` in `account`. Both must be
    /// non-empty and free of NUL (NUL separates them in the KDF salt).
    pub fn passphrase(account: &str, agent: &str) -> Result<Self, UriError> {
        check_id(account, "account")?;
        check_id(agent, "agent")?;
        Ok(KeyUri::Passphrase {
            account: account.to_owned(),
            agent: agent.to_owned(),
        })
    }

    /// The backend this reference names.
    pub fn backend(&self) -> BackendKind {
        match self {
            KeyUri::Passphrase { .. } => BackendKind::Passphrase,
            KeyUri::Pkcs11(_) => BackendKind::Pkcs11,
            KeyUri::Yubikey(_) => BackendKind::Yubikey,
            KeyUri::Tpm(_) => BackendKind::Tpm,
        }
    }
}

fn check_id(value: &str, which: &'static str) -> Result<(), UriError> {
    if value.is_empty() {
        return Err(UriError::Passphrase(match which {
            "account" => "empty account",
            _ => "empty agent",
        }));
    }
    if value.contains('\0') {
        return Err(UriError::Passphrase("NUL in account or agent"));
    }
    Ok(())
}

impl FromStr for KeyUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError::MissingScheme)?;
        // URI schemes are case-insensitive (RFC 3986 §3.1).
        let kind = BackendKind::ALL
            .into_iter()
            .find(|k| scheme.eq_ignore_ascii_case(k.name()))
            .ok_or_else(|| UriError::UnknownScheme(scheme.to_owned()))?;
        Ok(match kind {
            BackendKind::Passphrase => parse_passphrase(rest)?,
            BackendKind::Pkcs11 => KeyUri::Pkcs11(s.parse()?),
            BackendKind::Yubikey => KeyUri::Yubikey(s.parse()?),
            BackendKind::Tpm => KeyUri::Tpm(s.parse()?),
        })
    }
}

fn parse_passphrase(attrs: &str) -> Result<KeyUri, UriError> {
    use UriError::Passphrase as Bad;
    if attrs.contains(['?', '#']) {
        return Err(Bad("no query or fragment; percent-encode ? and #"));
    }
    let (mut account, mut agent) = (None, None);
    for attr in attrs.split(';') {
        let (name, value) = attr
            .split_once('=')
            .ok_or(Bad("attributes are name=value"))?;
        let slot = match name {
            "account" => &mut account,
            "agent" => &mut agent,
            _ => return Err(Bad("only the account and agent attributes")),
        };
        if slot.is_some() {
            return Err(Bad("repeated attribute"));
        }
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| Bad("percent-encoded value is not UTF-8"))?;
        *slot = Some(value.into_owned());
    }
    match (account, agent) {
        (Some(account), Some(agent)) => KeyUri::passphrase(&account, &agent),
        _ => Err(Bad("both account= and agent= are required")),
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::Passphrase { account, agent } => write!(
                f,
                "passphrase:account={};agent={}",
                utf8_percent_encode(account, VALUE),
                utf8_percent_encode(agent, VALUE)
            ),
            KeyUri::Pkcs11(uri) => uri.fmt(f),
            KeyUri::Yubikey(u) => u.fmt(f),
            KeyUri::Tpm(u) => u.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_uris_keep_no_query_value_and_no_pin() {
        let r = redact_uri(
            "pkcs11:token=t;pin-value=123456;object=o?module-path=/x/y.so&pin-value=654321&pin-source=file:/p",
        );
        assert_eq!(
            r,
            "pkcs11:token=t;pin-value=…;object=o?module-path=…&pin-value=…&pin-source=…"
        );
        for secret in ["123456", "654321", "/x/y.so", "file:/p"] {
            assert!(!r.contains(secret));
        }
        assert_eq!(
            redact_uri("yubikey:serial=1;slot=9c"),
            "yubikey:serial=1;slot=9c"
        );
        // Found by fuzzing: a name that reads `pin-value` only once its
        // control characters are dropped, or its escapes decoded.
        for name in [
            "pi\u{1}n-value",
            "PIN-\u{7f}VALUE",
            "pin%2Dvalue",
            "pin%2dvalue\t",
        ] {
            let r = redact_uri(&format!("pkcs11:token=t;{name}=123456"));
            assert!(!r.contains("123456"), "{name:?}: {r}");
        }
    }

    fn pp(account: &str, agent: &str) -> KeyUri {
        KeyUri::Passphrase {
            account: account.into(),
            agent: agent.into(),
        }
    }

    #[test]
    fn passphrase_uri_from_the_design_parses() {
        let uri: KeyUri = "passphrase:account=ACME;agent=alice".parse().unwrap();
        assert_eq!(uri, pp("ACME", "alice"));
        assert_eq!(uri.backend(), BackendKind::Passphrase);
        assert_eq!(uri.to_string(), "passphrase:account=ACME;agent=alice");
    }

    #[test]
    fn passphrase_attributes_may_come_in_any_order_and_scheme_case() {
        let uri: KeyUri = "Passphrase:agent=alice;account=ACME".parse().unwrap();
        assert_eq!(uri, pp("ACME", "alice"));
    }

    #[test]
    fn passphrase_values_are_percent_decoded_and_round_trip() {
        let uri: KeyUri = "passphrase:account=A%3BB%3Dc;agent=j%C3%B6rg%20k"
            .parse()
            .unwrap();
        assert_eq!(uri, pp("A;B=c", "jörg k"));
        assert_eq!(uri.to_string().parse::<KeyUri>().unwrap(), uri);
        let email = pp("acme.example", "alice@acme.example");
        assert_eq!(
            email.to_string(),
            "passphrase:account=acme.example;agent=alice@acme.example"
        );
    }

    #[test]
    fn malformed_passphrase_uris_are_refused() {
        for bad in [
            "passphrase:",
            "passphrase:account=ACME",
            "passphrase:agent=alice",
            "passphrase:account=;agent=alice",
            "passphrase:account=ACME;agent=",
            "passphrase:account=ACME;agent=alice;agent=bob",
            "passphrase:account=ACME;agent=alice;slot=1",
            "passphrase:account=ACME;agent",
            "passphrase:account=ACME;agent=alice?x=1",
            "passphrase:account=A%00;agent=alice",
            "passphrase:account=%FF;agent=alice",
        ] {
            assert!(
                matches!(bad.parse::<KeyUri>(), Err(UriError::Passphrase(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn pkcs11_uris_are_parsed_once_and_print_canonically() {
        let pkcs11 = "pkcs11:token=kb;object=alice?module-path=/usr/lib/softhsm/libsofthsm2.so";
        let parsed: KeyUri = pkcs11.parse().unwrap();
        let KeyUri::Pkcs11(uri) = &parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(uri.token.as_deref(), Some("kb"));
        assert_eq!(uri.object.as_deref(), Some("alice"));
        assert_eq!(parsed.backend(), BackendKind::Pkcs11);
        assert_eq!(parsed.to_string(), pkcs11);
        // Canonical: path attributes in one order, `id` percent-encoded,
        // vendor attributes dropped.
        let messy: KeyUri = "PKCS11:x-v=1;object=alice;id=A;token=kb?module-path=/m.so"
            .parse()
            .unwrap();
        assert_eq!(
            messy.to_string(),
            "pkcs11:token=kb;object=alice;id=%41?module-path=/m.so"
        );
        assert_eq!(messy.to_string().parse::<KeyUri>().unwrap(), messy);
        // A bad pkcs11 URI is refused when it is read, with the parser's reason.
        assert_eq!(
            "pkcs11:token=t?pin-value=1234".parse::<KeyUri>(),
            Err(UriError::Pkcs11(Pkcs11UriError::PinValue))
        );
    }

    #[test]
    fn yubikey_and_tpm_uris_are_parsed() {
        let yk = "yubikey:serial=12345678;slot=9c";
        assert_eq!(yk.parse(), Ok(KeyUri::Yubikey(yk.parse().unwrap())));
        assert_eq!(yk.parse::<KeyUri>().unwrap().to_string(), yk);
        let tpm = "tpm:handle=0x81000101";
        let parsed: KeyUri = tpm.parse().unwrap();
        assert_eq!(parsed, KeyUri::Tpm(tpm.parse().unwrap()));
        assert_eq!(parsed.backend(), BackendKind::Tpm);
        assert_eq!(parsed.to_string(), tpm);
    }

    #[test]
    fn unknown_or_missing_schemes_are_refused() {
        assert_eq!(
            "ssh:key=1".parse::<KeyUri>(),
            Err(UriError::UnknownScheme("ssh".into()))
        );
        assert_eq!("alice".parse::<KeyUri>(), Err(UriError::MissingScheme));
    }
}
