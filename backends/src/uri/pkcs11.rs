//! RFC 7512 `pkcs11:` URIs: the parser, and the canonical form keybridge
//! writes into key records.
//!
//! ```text
//! pkcs11:token=kb;serial=bccd1e795262e621;object=alice;id=%A1%B2
//!       ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/user/1000/pin
//! ```
//!
//! Path attributes (RFC 7512 §2.3): `token`, `manufacturer`, `serial`,
//! `model`, `library-manufacturer`, `library-description`,
//! `library-version`, `object`, `id` (bytes), `type`. Query attributes:
//! `module-path`, `pin-source` (a `file:` URI or an absolute path).
//!
//! Refused, each with its own message: `pin-value` (a secret in a URI ends up
//! in shell history, configs and logs), `module-name` (say which library with
//! `module-path`), a `pin-source` that runs a command, unknown attributes
//! (vendor `x-…` attributes are allowed and ignored), repeated attributes,
//! characters RFC 7512 requires to be percent-encoded, bad percent-encoding,
//! and text values that are not UTF-8.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A parsed `pkcs11:` URI. Absent attributes match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Pkcs11Uri {
    /// `token`: the token label (CK_TOKEN_INFO.label).
    pub token: Option<String>,
    /// `manufacturer`: CK_TOKEN_INFO.manufacturerID.
    pub manufacturer: Option<String>,
    /// `serial`: CK_TOKEN_INFO.serialNumber.
    pub serial: Option<String>,
    /// `model`: CK_TOKEN_INFO.model.
    pub model: Option<String>,
    /// `library-manufacturer`: CK_INFO.manufacturerID.
    pub library_manufacturer: Option<String>,
    /// `library-description`: CK_INFO.libraryDescription.
    pub library_description: Option<String>,
    /// `library-version`: CK_INFO.libraryVersion, `(major, minor)`; a URI
    /// that gives only the major number means minor 0 (RFC 7512 §2.3).
    pub library_version: Option<(u8, u8)>,
    /// `object`: the object label (CKA_LABEL).
    pub object: Option<String>,
    /// `id`: the object id (CKA_ID), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `type`: the object class.
    pub object_type: Option<ObjectType>,
    /// `module-path`: the PKCS#11 library to load (absolute path).
    pub module_path: Option<PathBuf>,
    /// `pin-source`: the file to read the PIN from (absolute path).
    pub pin_source: Option<PathBuf>,
}

/// The RFC 7512 `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// `public`: a public key.
    Public,
    /// `private`: a private key.
    Private,
    /// `cert`: a certificate.
    Cert,
    /// `secret-key`: a secret (symmetric) key.
    SecretKey,
    /// `data`: a data object.
    Data,
}

impl ObjectType {
    /// The attribute value, as written in a URI.
    pub fn name(self) -> &'static str {
        match self {
            ObjectType::Public => "public",
            ObjectType::Private => "private",
            ObjectType::Cert => "cert",
            ObjectType::SecretKey => "secret-key",
            ObjectType::Data => "data",
        }
    }
}

/// Why a `pkcs11:` URI was refused. Never contains a PIN (a `pin-value` is
/// refused without repeating it) nor any other query value (`module-path`,
/// `pin-source`): those are named, not shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs11UriError {
    /// The text does not start with `pkcs11:`.
    #[error("a PKCS#11 key reference starts with pkcs11:")]
    NotPkcs11,
    /// Not RFC 7512 syntax; the text says where.
    #[error("bad pkcs11 URI: {0}")]
    Syntax(String),
    /// An attribute RFC 7512 does not define (and not a vendor `x-…` one).
    #[error("bad pkcs11 URI: unknown attribute {0:?}")]
    UnknownAttribute(String),
    /// The same attribute twice.
    #[error("bad pkcs11 URI: attribute {0:?} given twice")]
    Repeated(String),
    /// `%` not followed by two hex digits, or a text value that is not UTF-8.
    #[error("bad pkcs11 URI: {0:?} is not correctly percent-encoded UTF-8")]
    Encoding(String),
    /// `pin-value`: keybridge never takes a secret from a URI.
    #[error(
        "pkcs11 URI: pin-value puts the PIN into the URI, which ends up in configs, shell history and logs; keybridge refuses it: use pin-source=file:/path (mode 0600) or enter the PIN when asked"
    )]
    PinValue,
    /// A valid RFC 7512 attribute or value keybridge does not support.
    #[error("pkcs11 URI: {0}")]
    Unsupported(String),
}

/// Characters written raw in canonical path values: unreserved plus the
/// `pk11-res-avail` ones that cannot be mistaken for a delimiter.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',');
/// Query values may also hold `/` raw (paths).
const QUERY_VALUE: &AsciiSet = &PATH_VALUE.remove(b'/');

/// Where an attribute sits: the path (`;`-separated) or the query (`&`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
}

/// Whether `c` may appear unencoded in a value (RFC 7512 §2.3 `pk11-pchar`
/// for the path, `pk11-qchar` for the query).
fn raw_allowed(c: u8, part: Part) -> bool {
    c.is_ascii_alphanumeric()
        || b"-._~:[]@!$'()*+,=".contains(&c)
        || match part {
            Part::Path => c == b'&',
            Part::Query => b"/?|".contains(&c),
        }
}

impl FromStr for Pkcs11Uri {
    type Err = Pkcs11UriError;

    fn from_str(s: &str) -> Result<Self, Pkcs11UriError> {
        let rest = s
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &s[7..])
            .ok_or(Pkcs11UriError::NotPkcs11)?;
        if rest.contains('#') {
            return Err(Pkcs11UriError::Syntax(
                "a pkcs11 URI has no fragment (#); percent-encode # as %23".into(),
            ));
        }
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        if !path.is_empty() {
            for attr in path.split(';') {
                uri.set(attr, Part::Path)?;
            }
        }
        if let Some(query) = query {
            if query.is_empty() {
                return Err(Pkcs11UriError::Syntax("empty query after ?".into()));
            }
            for attr in query.split('&') {
                uri.set(attr, Part::Query)?;
            }
        }
        Ok(uri)
    }
}

impl Pkcs11Uri {
    fn set(&mut self, attr: &str, part: Part) -> Result<(), Pkcs11UriError> {
        let (name, raw) = attr.split_once('=').ok_or_else(|| {
            Pkcs11UriError::Syntax(if attr.is_empty() {
                "empty attribute (doubled or trailing ; or &)".into()
            } else {
                format!("attribute {attr:?} has no =value")
            })
        })?;
        if let Some(c) = raw.bytes().find(|&c| c != b'%' && !raw_allowed(c, part)) {
            return Err(Pkcs11UriError::Syntax(format!(
                "character {:?} in attribute {name:?} must be percent-encoded",
                char::from(c)
            )));
        }
        if name.starts_with("x-") {
            // Vendor extensions (RFC 7512 §2.3): allowed, not ours to interpret.
            return Ok(());
        }
        let bytes = || percent_bytes(raw, name);
        let text = || percent_text(raw, name);
        let repeated = || Pkcs11UriError::Repeated(name.to_owned());
        macro_rules! once {
            ($field:expr, $value:expr) => {{
                if $field.is_some() {
                    return Err(repeated());
                }
                $field = Some($value);
            }};
        }
        match (part, name) {
            (Part::Path, "token") => once!(self.token, text()?),
            (Part::Path, "manufacturer") => once!(self.manufacturer, text()?),
            (Part::Path, "serial") => once!(self.serial, text()?),
            (Part::Path, "model") => once!(self.model, text()?),
            (Part::Path, "library-manufacturer") => once!(self.library_manufacturer, text()?),
            (Part::Path, "library-description") => once!(self.library_description, text()?),
            (Part::Path, "library-version") => once!(self.library_version, version(&text()?)?),
            (Part::Path, "object") => once!(self.object, text()?),
            (Part::Path, "id") => once!(self.id, bytes()?),
            (Part::Path, "type") => once!(self.object_type, object_type(&text()?)?),
            (Part::Query, "module-path") => once!(self.module_path, module_path(&text()?)?),
            (Part::Query, "pin-source") => once!(self.pin_source, pin_source(&text()?)?),
            (Part::Query, "pin-value") => return Err(Pkcs11UriError::PinValue),
            (Part::Query, "module-name") => {
                return Err(Pkcs11UriError::Unsupported(
                    "module-name is not supported: name the library with module-path=/absolute/path.so".into(),
                ));
            }
            (Part::Path, "module-path" | "module-name" | "pin-source" | "pin-value") => {
                return Err(Pkcs11UriError::Syntax(format!(
                    "{name} is a query attribute: write it after ?"
                )));
            }
            (
                Part::Query,
                "token" | "manufacturer" | "serial" | "model" | "object" | "id" | "type",
            ) => {
                return Err(Pkcs11UriError::Syntax(format!(
                    "{name} is a path attribute: write it before ?, separated by ;"
                )));
            }
            _ => return Err(Pkcs11UriError::UnknownAttribute(name.to_owned())),
        }
        Ok(())
    }

    /// Whether the URI names a key (it has no `type`, or `type=private` or
    /// `type=public`: both halves of a key pair share id and label).
    pub fn names_a_key(&self) -> bool {
        matches!(
            self.object_type,
            None | Some(ObjectType::Private | ObjectType::Public)
        )
    }
}

fn percent_bytes(raw: &str, name: &str) -> Result<Vec<u8>, Pkcs11UriError> {
    // `percent_decode_str` passes a malformed escape through unchanged:
    // check the escapes first.
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(Pkcs11UriError::Encoding(name.to_owned()));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(percent_decode_str(raw).collect())
}

fn percent_text(raw: &str, name: &str) -> Result<String, Pkcs11UriError> {
    String::from_utf8(percent_bytes(raw, name)?)
        .map_err(|_| Pkcs11UriError::Encoding(name.to_owned()))
}

fn version(v: &str) -> Result<(u8, u8), Pkcs11UriError> {
    let bad = || Pkcs11UriError::Syntax(format!("library-version {v:?} is not M or M.m"));
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u8>().map_err(|_| bad())
    };
    match v.split_once('.') {
        Some((major, minor)) => Ok((number(major)?, number(minor)?)),
        None => Ok((number(v)?, 0)),
    }
}

fn object_type(v: &str) -> Result<ObjectType, Pkcs11UriError> {
    [
        ObjectType::Public,
        ObjectType::Private,
        ObjectType::Cert,
        ObjectType::SecretKey,
        ObjectType::Data,
    ]
    .into_iter()
    .find(|t| t.name() == v)
    .ok_or_else(|| {
        Pkcs11UriError::Syntax(format!(
            "type={v:?}: RFC 7512 knows public, private, cert, secret-key and data"
        ))
    })
}

fn module_path(v: &str) -> Result<PathBuf, Pkcs11UriError> {
    if !v.starts_with('/') {
        return Err(Pkcs11UriError::Unsupported(
            "module-path must be an absolute path".into(),
        ));
    }
    Ok(PathBuf::from(v))
}

/// `file:/p`, `file:///p`, `file://localhost/p` or a plain absolute path.
fn pin_source(v: &str) -> Result<PathBuf, Pkcs11UriError> {
    let path = if let Some(rest) = v.strip_prefix("file:") {
        if let Some(authority_and_path) = rest.strip_prefix("//") {
            let (host, path) = authority_and_path
                .find('/')
                .map(|i| authority_and_path.split_at(i))
                .unwrap_or((authority_and_path, ""));
            if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                return Err(Pkcs11UriError::Unsupported(
                    "pin-source names a file on another host: only local files are read".into(),
                ));
            }
            path
        } else {
            rest
        }
    } else if v.starts_with('|') {
        return Err(Pkcs11UriError::Unsupported(
            "pin-source must be a file (file:/path): keybridge does not run commands to get a PIN"
                .into(),
        ));
    } else {
        v
    };
    if !path.starts_with('/') {
        return Err(Pkcs11UriError::Unsupported(
            "pin-source must be file:/absolute/path".into(),
        ));
    }
    Ok(PathBuf::from(path))
}

/// The canonical form: path attributes in the order of the struct, `id`
/// fully percent-encoded, then `module-path` and `pin-source`. Parsing it
/// gives the same value back.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let mut path = Vec::new();
        let mut text = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                path.push(format!("{name}={}", utf8_percent_encode(v, PATH_VALUE)));
            }
        };
        text("token", &self.token);
        text("manufacturer", &self.manufacturer);
        text("serial", &self.serial);
        text("model", &self.model);
        text("library-manufacturer", &self.library_manufacturer);
        text("library-description", &self.library_description);
        if let Some((major, minor)) = self.library_version {
            path.push(format!("library-version={major}.{minor}"));
        }
        let mut text = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                path.push(format!("{name}={}", utf8_percent_encode(v, PATH_VALUE)));
            }
        };
        text("object", &self.object);
        if let Some(id) = &self.id {
            let encoded: String = id.iter().map(|b| format!("%{b:02X}")).collect();
            path.push(format!("id={encoded}"));
        }
        if let Some(t) = self.object_type {
            path.push(format!("type={}", t.name()));
        }
        f.write_str(&path.join(";"))?;
        let mut query = Vec::new();
        let mut file = |name: &str, prefix: &str, value: &Option<PathBuf>| {
            if let Some(p) = value {
                let p = p.to_string_lossy();
                query.push(format!(
                    "{name}={prefix}{}",
                    utf8_percent_encode(&p, QUERY_VALUE)
                ));
            }
        };
        file("module-path", "", &self.module_path);
        // A path that itself starts with `//` gets `file://` and an empty
        // host, so that it reads back as the same path and not as a host
        // name (found by fuzzing); any other keeps the short `file:/p`.
        let pin_prefix = match &self.pin_source {
            Some(p) if p.to_string_lossy().starts_with("//") => "file://",
            _ => "file:",
        };
        file("pin-source", pin_prefix, &self.pin_source);
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pin_source_path_starting_with_two_slashes_reads_back_as_itself() {
        for v in ["//localhost/etc/pin", "//evil/pin", "////etc/pin"] {
            let uri = format!("pkcs11:token=t?pin-source={v}");
            let parsed: super::Pkcs11Uri = uri.parse().unwrap();
            let again: super::Pkcs11Uri = parsed.to_string().parse().unwrap();
            assert_eq!(again, parsed, "{v}: {parsed}");
        }
    }

    use super::*;

    fn parse(s: &str) -> Result<Pkcs11Uri, Pkcs11UriError> {
        s.parse()
    }

    #[test]
    fn the_design_example_parses() {
        let uri = parse("pkcs11:token=kb;object=alice?module-path=/usr/lib/softhsm/libsofthsm2.so")
            .unwrap();
        assert_eq!(uri.token.as_deref(), Some("kb"));
        assert_eq!(uri.object.as_deref(), Some("alice"));
        assert_eq!(
            uri.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(uri.id, None);
        assert!(uri.names_a_key());
    }

    #[test]
    fn rfc7512_examples_parse() {
        // RFC 7512 §3, a selection of the examples.
        assert_eq!(parse("pkcs11:").unwrap(), Pkcs11Uri::default());
        let uri = parse("pkcs11:object=my-pubkey;type=public").unwrap();
        assert_eq!(uri.object.as_deref(), Some("my-pubkey"));
        assert_eq!(uri.object_type, Some(ObjectType::Public));
        let uri = parse("pkcs11:object=my-key;type=private?pin-source=file:/etc/token").unwrap();
        assert_eq!(uri.pin_source, Some(PathBuf::from("/etc/token")));
        let uri = parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
             manufacturer=Snake%20Oil,%20Inc.;model=1.0;\
             object=my-certificate;type=cert;\
             id=%69%95%3E%5C%F4%BD%EC%91;serial=\
             ?pin-source=file:/etc/token_pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(uri.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(uri.model.as_deref(), Some("1.0"));
        assert_eq!(uri.serial.as_deref(), Some(""));
        assert_eq!(
            uri.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(uri.object_type, Some(ObjectType::Cert));
        assert!(!uri.names_a_key());
        let uri = parse("pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-source=file:/etc/token_pin").unwrap();
        assert_eq!(uri.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        let uri = parse(
            "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("A name with a substring %;"));
        let uri = parse("pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert").unwrap();
        assert_eq!(
            uri.token.as_deref(),
            Some("Name with a small A with acute: á")
        );
        let uri = parse(
            "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
        );
        // RFC 7512 lists vendor attributes without the x- prefix in this
        // example; we only accept the x- form (see below).
        assert_eq!(
            uri,
            Err(Pkcs11UriError::UnknownAttribute("vendor-aaa".into()))
        );
        let uri = parse("pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23").unwrap();
        assert_eq!(uri.library_version, Some((1, 23)));
        assert_eq!(
            uri.library_description.as_deref(),
            Some("Soft Token Library")
        );
        assert_eq!(
            parse("pkcs11:library-version=7").unwrap().library_version,
            Some((7, 0))
        );
    }

    #[test]
    fn vendor_attributes_are_ignored() {
        let uri = parse("pkcs11:x-vendor=1;token=t?x-other=a/b&module-path=/m.so").unwrap();
        assert_eq!(uri.token.as_deref(), Some("t"));
        assert_eq!(uri.module_path, Some(PathBuf::from("/m.so")));
    }

    #[test]
    fn id_is_raw_bytes_and_may_mix_raw_characters() {
        let uri = parse("pkcs11:id=%00%ffA").unwrap();
        assert_eq!(uri.id, Some(vec![0x00, 0xff, b'A']));
        // Bytes that are not UTF-8 are fine in id, not in text attributes.
        assert_eq!(
            parse("pkcs11:object=%ff"),
            Err(Pkcs11UriError::Encoding("object".into()))
        );
    }

    #[test]
    fn pin_value_is_refused_without_repeating_the_pin() {
        let err = parse("pkcs11:token=t?pin-value=123456").unwrap_err();
        assert_eq!(err, Pkcs11UriError::PinValue);
        assert!(!err.to_string().contains("123456"));
        assert!(err.to_string().contains("pin-source"));
        assert!(!format!("{err:?}").contains("123456"));
    }

    #[test]
    fn pin_source_forms() {
        for (given, path) in [
            ("file:/run/pin", "/run/pin"),
            ("file:///run/pin", "/run/pin"),
            ("file://localhost/run/pin", "/run/pin"),
            ("/run/pin", "/run/pin"),
            ("file:/run/my%20pin", "/run/my pin"),
        ] {
            let uri = parse(&format!("pkcs11:?pin-source={given}")).unwrap();
            assert_eq!(uri.pin_source, Some(PathBuf::from(path)), "{given}");
        }
        for bad in [
            "pkcs11:?pin-source=|/bin/echo%201234",
            "pkcs11:?pin-source=file://host/pin",
            "pkcs11:?pin-source=pin.txt",
            "pkcs11:?pin-source=https://example.invalid/pin",
        ] {
            assert!(
                matches!(parse(bad), Err(Pkcs11UriError::Unsupported(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refused_query_values_are_named_not_shown() {
        for (bad, value) in [
            ("pkcs11:?module-path=lib/secret-place.so", "secret-place"),
            ("pkcs11:?pin-source=file://far-host/pin", "far-host"),
            ("pkcs11:?pin-source=relative/secret-pin", "secret-pin"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(!err.contains(value), "{bad}: {err}");
        }
    }

    #[test]
    fn malformed_uris_are_refused_precisely() {
        use Pkcs11UriError::*;
        type Expect = fn(&Pkcs11UriError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("pkcs12:token=t", |e| *e == NotPkcs11),
            ("token=t", |e| *e == NotPkcs11),
            ("pkcs11:token=a;token=b", |e| *e == Repeated("token".into())),
            ("pkcs11:?module-path=/a&module-path=/b", |e| {
                *e == Repeated("module-path".into())
            }),
            ("pkcs11:slot-id=3", |e| {
                *e == UnknownAttribute("slot-id".into())
            }),
            ("pkcs11:Token=t", |e| *e == UnknownAttribute("Token".into())),
            ("pkcs11:?foo=1", |e| *e == UnknownAttribute("foo".into())),
            ("pkcs11:token=a%2", |e| *e == Encoding("token".into())),
            ("pkcs11:id=%zz", |e| *e == Encoding("id".into())),
            ("pkcs11:token=my token", |e| matches!(e, Syntax(_))),
            ("pkcs11:token=a/b", |e| matches!(e, Syntax(_))),
            ("pkcs11:token=t;", |e| matches!(e, Syntax(_))),
            ("pkcs11:token", |e| matches!(e, Syntax(_))),
            ("pkcs11:token=t#frag", |e| matches!(e, Syntax(_))),
            ("pkcs11:token=t?", |e| matches!(e, Syntax(_))),
            ("pkcs11:module-path=/m.so", |e| matches!(e, Syntax(_))),
            ("pkcs11:?object=a", |e| matches!(e, Syntax(_))),
            ("pkcs11:type=key", |e| matches!(e, Syntax(_))),
            ("pkcs11:library-version=1.x", |e| matches!(e, Syntax(_))),
            ("pkcs11:library-version=", |e| matches!(e, Syntax(_))),
            ("pkcs11:?module-path=lib.so", |e| {
                matches!(e, Unsupported(_))
            }),
            ("pkcs11:?module-name=softhsm2", |e| {
                matches!(e, Unsupported(_))
            }),
        ];
        for (uri, expected) in cases {
            let got = parse(uri);
            assert!(matches!(&got, Err(e) if expected(e)), "{uri}: got {got:?}");
        }
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(parse("PKCS11:token=t").unwrap().token.as_deref(), Some("t"));
    }

    #[test]
    fn token_labels_with_hash_spaces_and_non_ascii_round_trip() {
        for (label, encoded) in [
            ("YubiKey PIV #7777777", "YubiKey%20PIV%20%237777777"),
            (
                "PIV_II (PIV Card Holder pin)",
                "PIV_II%20(PIV%20Card%20Holder%20pin)",
            ),
            ("kb #1 ü/€", "kb%20%231%20%C3%BC%2F%E2%82%AC"),
            ("a?b&c=d;e%f", "a%3Fb%26c%3Dd%3Be%25f"),
        ] {
            let uri = Pkcs11Uri {
                token: Some(label.into()),
                id: Some(vec![2]),
                ..Default::default()
            };
            let text = uri.to_string();
            assert_eq!(text, format!("pkcs11:token={encoded};id=%02"), "{label}");
            assert_eq!(parse(&text).unwrap(), uri, "{label}");
        }
    }

    #[test]
    fn canonical_form_round_trips() {
        let uri = Pkcs11Uri {
            token: Some("kb token;1".into()),
            serial: Some("bccd1e795262e621".into()),
            object: Some("alice@acme/laptop ü".into()),
            id: Some(vec![0x01, 0xab, 0x00]),
            module_path: Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")),
            pin_source: Some(PathBuf::from("/run/user/1000/my pin")),
            ..Default::default()
        };
        let text = uri.to_string();
        assert_eq!(
            text,
            "pkcs11:token=kb%20token%3B1;serial=bccd1e795262e621;\
             object=alice@acme%2Flaptop%20%C3%BC;id=%01%AB%00\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/user/1000/my%20pin"
        );
        assert_eq!(parse(&text).unwrap(), uri);

        let all = Pkcs11Uri {
            manufacturer: Some("Snake Oil, Inc.".into()),
            model: Some("m=1&2".into()),
            library_manufacturer: Some("x".into()),
            library_description: Some("y z".into()),
            library_version: Some((2, 6)),
            object_type: Some(ObjectType::Private),
            ..Default::default()
        };
        assert_eq!(parse(&all.to_string()).unwrap(), all);
        assert_eq!(Pkcs11Uri::default().to_string(), "pkcs11:");
    }
}
