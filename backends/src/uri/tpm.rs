//! `tpm:` references (DESIGN.md §3): where a TPM key is and which TPM.
//!
//! `tpm:[file=PATH][;handle=0x81…][;parent=0x…][;tcti=…]`, every attribute
//! optional, each at most once, values percent-decoded:
//!
//! - `file`: a TSS2 private key file (absolute path) — the key to adopt with
//!   `keys create --existing`. Keys keybridge makes keep their file in the
//!   key's state folder and need no `file=`.
//! - `handle`: a persistent handle (`0x81000000`–`0x81FFFFFF`): with
//!   `--existing`, the key already there; with `--persistent`, where the new
//!   key is also made persistent (collision-checked).
//! - `parent`: the parent of a new key: `0x40000001` (the owner hierarchy;
//!   the primary is rebuilt each time from tpm2-openssl's template — the
//!   default) or a persistent handle.
//! - `tcti`: which TPM (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`); else
//!   `TPM2TOOLS_TCTI`, then `TCTI`, then `device:/dev/tpmrm0`.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The owner hierarchy as a key file's parent: the primary is rebuilt from
/// the standard template.
pub const OWNER_HIERARCHY: u32 = 0x4000_0001;

/// The persistent handle range (TPM 2.0 Part 2, 7.5).
pub const PERSISTENT: std::ops::RangeInclusive<u32> = 0x8100_0000..=0x81FF_FFFF;

/// A parsed `tpm:` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TpmUri {
    /// A TSS2 private key file (absolute).
    pub file: Option<PathBuf>,
    /// A persistent handle.
    pub handle: Option<u32>,
    /// The parent of a new key.
    pub parent: Option<u32>,
    /// The TCTI configuration string.
    pub tcti: Option<String>,
}

/// Why a `tpm:` reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tpm URI: {0} (expected tpm:[file=/abs/key.pem][;handle=0x81…][;parent=0x40000001][;tcti=…])"
)]
pub struct TpmUriError(pub String);

fn bad(m: impl Into<String>) -> TpmUriError {
    TpmUriError(m.into())
}

/// Characters kept as written in values; the rest is percent-encoded.
const VALUE: &AsciiSet = &CONTROLS.add(b';').add(b'%').add(b'?').add(b'#').add(b' ');

fn parse_handle(value: &str, what: &str) -> Result<u32, TpmUriError> {
    let hex = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .ok_or_else(|| bad(format!("{what} is hex, 0x…")))?;
    if hex.is_empty() || hex.len() > 8 {
        return Err(bad(format!("{what} is a 32-bit hex handle")));
    }
    u32::from_str_radix(hex, 16).map_err(|_| bad(format!("{what} is a 32-bit hex handle")))
}

impl FromStr for TpmUri {
    type Err = TpmUriError;

    fn from_str(s: &str) -> Result<Self, TpmUriError> {
        let rest = s
            .split_once(':')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("tpm"))
            .map(|(_, rest)| rest)
            .ok_or_else(|| bad("not a tpm: URI"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("no query or fragment; percent-encode ? and #"));
        }
        let mut uri = TpmUri::default();
        for attr in rest.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| bad("attributes are name=value"))?;
            let value = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| bad("percent-encoded value is not UTF-8"))?;
            if value.is_empty() || value.contains('\0') {
                return Err(bad(format!("{name} is empty or holds NUL")));
            }
            let repeated = || bad(format!("{name} given twice"));
            match name {
                "file" => {
                    let path = PathBuf::from(value.as_ref());
                    if !path.is_absolute() {
                        return Err(bad("file is an absolute path"));
                    }
                    if uri.file.replace(path).is_some() {
                        return Err(repeated());
                    }
                }
                "handle" => {
                    let h = parse_handle(&value, "handle")?;
                    if !PERSISTENT.contains(&h) {
                        return Err(bad(format!(
                            "handle {h:#010x} is not a persistent handle (0x81000000–0x81ffffff)"
                        )));
                    }
                    if uri.handle.replace(h).is_some() {
                        return Err(repeated());
                    }
                }
                "parent" => {
                    let h = parse_handle(&value, "parent")?;
                    if h != OWNER_HIERARCHY && !PERSISTENT.contains(&h) {
                        return Err(bad(format!(
                            "parent {h:#010x} is neither the owner hierarchy 0x40000001 nor a persistent handle"
                        )));
                    }
                    if uri.parent.replace(h).is_some() {
                        return Err(repeated());
                    }
                }
                "tcti" => {
                    if value.len() > 1024 {
                        return Err(bad("tcti is longer than 1024 bytes"));
                    }
                    if uri.tcti.replace(value.into_owned()).is_some() {
                        return Err(repeated());
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown attribute {other:?} (file, handle, parent, tcti)"
                    )));
                }
            }
        }
        if uri.file.is_some() && uri.handle.is_some() {
            return Err(bad("a key is either in a file or at a handle, not both"));
        }
        Ok(uri)
    }
}

impl fmt::Display for TpmUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = vec![];
        if let Some(file) = &self.file {
            parts.push(format!(
                "file={}",
                utf8_percent_encode(&file.to_string_lossy(), VALUE)
            ));
        }
        if let Some(h) = self.handle {
            parts.push(format!("handle={h:#010x}"));
        }
        if let Some(h) = self.parent {
            parts.push(format!("parent={h:#010x}"));
        }
        if let Some(t) = &self.tcti {
            parts.push(format!("tcti={}", utf8_percent_encode(t, VALUE)));
        }
        write!(f, "tpm:{}", parts.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_canonically() {
        let u: TpmUri = "TPM:tcti=swtpm:host=127.0.0.1,port=2321;parent=0x40000001"
            .parse()
            .unwrap();
        assert_eq!(u.tcti.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));
        assert_eq!(u.parent, Some(OWNER_HIERARCHY));
        assert_eq!(
            u.to_string(),
            "tpm:parent=0x40000001;tcti=swtpm:host=127.0.0.1,port=2321"
        );
        assert_eq!(u.to_string().parse::<TpmUri>().unwrap(), u);
        let u: TpmUri = "tpm:handle=0x81000101".parse().unwrap();
        assert_eq!(u.handle, Some(0x8100_0101));
        assert_eq!(u.to_string(), "tpm:handle=0x81000101");
        let u: TpmUri = "tpm:file=/home/a%3Bb/key.pem".parse().unwrap();
        assert_eq!(u.file, Some(PathBuf::from("/home/a;b/key.pem")));
        assert_eq!(u.to_string().parse::<TpmUri>().unwrap(), u);
        assert_eq!("tpm:".parse::<TpmUri>().unwrap(), TpmUri::default());
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "tpm:file=key.pem",
            "tpm:file=",
            "tpm:handle=0x80000001",
            "tpm:handle=81000001",
            "tpm:handle=0x810000011",
            "tpm:handle=0x81000001;handle=0x81000002",
            "tpm:parent=0x40000007",
            "tpm:parent=0x01",
            "tpm:file=/k.pem;handle=0x81000001",
            "tpm:pin=123456",
            "tpm:handle",
            "tpm:tcti=a?b",
            "tpm:tcti=%00",
            "tpm:file=/k%FF.pem",
            "pkcs11:handle=0x81000001",
        ] {
            assert!(bad.parse::<TpmUri>().is_err(), "{bad} was accepted");
        }
    }
}
