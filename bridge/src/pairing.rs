//! Web consoles paired with this daemon: each holds a bearer token bound to
//! its origin (`keybridge pair --origin URL` issues one, shown once).
//!
//! A token is 32 random bytes (base64url, prefixed `kbp_`); the daemon
//! keeps only its SHA-256, with the origin, in `pairings.json` in its state
//! folder (0600, written atomically). A request on the loopback listener
//! must carry a token whose hash is on record *for the request's Origin*:
//! hashes are compared in constant time, against every record, and a token
//! used from another origin is refused as such. Tokens never appear in a
//! log or an answer but the one that issues them.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use subtle::ConstantTimeEq as _;

/// Most pairings kept (a console per origin, a few origins).
pub const MAX_PAIRINGS: usize = 64;
/// Largest `pairings.json` read.
const MAX_FILE: u64 = 256 * 1024;
const VERSION: u32 = 1;
/// What every token starts with (so that a leaked one is recognizable).
pub const TOKEN_PREFIX: &str = "kbp_";

/// One paired console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// Short id, for `pair revoke` (8 hex digits).
    pub id: String,
    /// The console's origin (`https://console.example`).
    pub origin: String,
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// When it was issued (unix seconds).
    pub created: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    pairings: Vec<Pairing>,
}

/// Why a request's token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` token.
    Missing,
    /// No pairing has this token (never issued, or revoked).
    Unknown,
    /// The token was issued to another origin.
    OtherOrigin,
}

/// The pairings, on disk and in memory.
pub struct Pairings {
    path: PathBuf,
    list: RwLock<Vec<Pairing>>,
}

/// A pairing error for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PairingError(pub String);

impl Pairings {
    /// Loads `path` (none yet: no pairing). A damaged file is an error: the
    /// daemon does not start with pairings it cannot read.
    pub fn load(path: &Path) -> Result<Self, PairingError> {
        let list = match crate::paths::open_private(path, crate::paths::Open::Read) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(PairingError(format!("{}: {e}", path.display()))),
            Ok(file) => {
                use std::io::Read as _;
                let mut text = String::new();
                file.take(MAX_FILE + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| PairingError(format!("{}: {e}", path.display())))?;
                if text.len() as u64 > MAX_FILE {
                    return Err(PairingError(format!("{}: too large", path.display())));
                }
                let f: File = serde_json::from_str(&text).map_err(|e| {
                    PairingError(format!(
                        "{}: {e} (remove it and pair the consoles again)",
                        path.display()
                    ))
                })?;
                if f.version != VERSION || f.pairings.len() > MAX_PAIRINGS {
                    return Err(PairingError(format!(
                        "{}: not a pairings file this version reads",
                        path.display()
                    )));
                }
                for p in &f.pairings {
                    check_origin(&p.origin)
                        .map_err(|e| PairingError(format!("{}: {e}", path.display())))?;
                }
                f.pairings
            }
        };
        Ok(Pairings {
            path: path.to_owned(),
            list: RwLock::new(list),
        })
    }

    /// Issues a token for `origin` (checked); the pairing and the token,
    /// which is shown once and kept nowhere.
    pub fn pair(&self, origin: &str, now: i64) -> Result<(Pairing, String), PairingError> {
        let origin = check_origin(origin).map_err(PairingError)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| PairingError(e.to_string()))?;
        use base64::Engine as _;
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let mut id = [0u8; 4];
        getrandom::fill(&mut id).map_err(|e| PairingError(e.to_string()))?;
        let pairing = Pairing {
            id: keybridge_protocol::key::hex(&id),
            origin,
            token_sha256: keybridge_protocol::key::hex(&Sha256::digest(token.as_bytes())),
            created: now,
        };
        let mut list = self.list.write().expect("not poisoned");
        if list.len() >= MAX_PAIRINGS {
            return Err(PairingError(format!(
                "{MAX_PAIRINGS} consoles are paired already: revoke some (keybridge pair list)"
            )));
        }
        let mut next = list.clone();
        next.push(pairing.clone());
        self.save(&next)?;
        *list = next;
        Ok((pairing, token))
    }

    /// Every pairing.
    pub fn list(&self) -> Vec<Pairing> {
        self.list.read().expect("not poisoned").clone()
    }

    /// Revokes the pairings with id `which`, or every pairing of the origin
    /// `which`; the ones revoked.
    pub fn revoke(&self, which: &str) -> Result<Vec<Pairing>, PairingError> {
        let mut list = self.list.write().expect("not poisoned");
        let (gone, kept): (Vec<Pairing>, Vec<Pairing>) = list
            .iter()
            .cloned()
            .partition(|p| p.id == which || p.origin == which);
        if gone.is_empty() {
            return Err(PairingError(format!(
                "no pairing has id or origin {which:?} (keybridge pair list)"
            )));
        }
        self.save(&kept)?;
        *list = kept;
        Ok(gone)
    }

    /// Whether `token` was issued to `origin`: every record is compared, in
    /// constant time, whatever matches first.
    pub fn check(&self, origin: &str, token: Option<&str>) -> Result<(), Refusal> {
        let Some(token) = token else {
            return Err(Refusal::Missing);
        };
        let hash = Sha256::digest(token.as_bytes());
        let mut for_origin = false;
        let mut elsewhere = false;
        for p in self.list.read().expect("not poisoned").iter() {
            let Some(stored) = keybridge_protocol::key::unhex(&p.token_sha256) else {
                continue;
            };
            let same: bool = stored.ct_eq(hash.as_slice()).into();
            if same && p.origin == origin {
                for_origin = true;
            } else if same {
                elsewhere = true;
            }
        }
        match (for_origin, elsewhere) {
            (true, _) => Ok(()),
            (false, true) => Err(Refusal::OtherOrigin),
            (false, false) => Err(Refusal::Unknown),
        }
    }

    fn save(&self, list: &[Pairing]) -> Result<(), PairingError> {
        let mut bytes = serde_json::to_vec_pretty(&File {
            version: VERSION,
            pairings: list.to_vec(),
        })
        .expect("JSON");
        bytes.push(b'\n');
        crate::paths::write_atomic(&self.path, &bytes)
            .map_err(|e| PairingError(format!("{}: {e}", self.path.display())))
    }
}

/// An origin as browsers send it (`scheme://host[:port]`, lowercase, no
/// path): `https` anywhere, `http` only on loopback names. The normalized
/// origin, or why not.
pub fn check_origin(origin: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "origin {origin:?}: {why} (e.g. https://console.example)"
        ))
    };
    if origin.len() > 256 || origin.bytes().any(|b| !b.is_ascii_graphic()) {
        return bad("not an origin");
    }
    let lower = origin.to_ascii_lowercase();
    let (scheme, rest) = match lower.split_once("://") {
        Some(p) => p,
        None => return bad("no scheme"),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return bad("an origin is scheme://host[:port], nothing more");
    }
    let (host, port) = if rest.starts_with('[') {
        match rest.split_once(']') {
            Some((h, "")) => (&rest[..=h.len()], None),
            Some((h, tail)) => match tail.strip_prefix(':') {
                Some(p) => (&rest[..=h.len()], Some(p)),
                None => return bad("not a host name"),
            },
            None => return bad("not a host name"),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if let Some(p) = port
        && (!p.parse::<u16>().is_ok_and(|p| p > 0) || p.starts_with('0'))
    {
        return bad("a port is 1 to 65535");
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
    {
        return bad("not a host name");
    }
    match scheme {
        "https" => {}
        "http" if matches!(host, "localhost" | "127.0.0.1" | "[::1]") => {}
        "http" => return bad("a console is served over https (http only on localhost)"),
        _ => return bad("the scheme is https"),
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_normalized() {
        for good in [
            "https://console.example",
            "https://Console.Example:8443",
            "http://127.0.0.1:5173",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(check_origin(good).is_ok(), "{good}");
        }
        assert_eq!(
            check_origin("https://Console.Example").unwrap(),
            "https://console.example"
        );
        for bad in [
            "console.example",
            "https://console.example/",
            "https://console.example/app",
            "https://user@console.example",
            "http://console.example",
            "ftp://console.example",
            "https://console.example:0",
            "https://console.example:65536",
            "https://console.example:08443",
            "https://",
            "https://a b",
            "null",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_is_bound_to_its_origin_kept_hashed_and_revocable() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pairings.json");
        let p = Pairings::load(&path).unwrap();
        let (a, token) = p.pair("https://a.example", 1).unwrap();
        let (_, other) = p.pair("https://b.example", 2).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        assert_eq!(p.check("https://a.example", Some(&token)), Ok(()));
        assert_eq!(
            p.check("https://b.example", Some(&token)),
            Err(Refusal::OtherOrigin)
        );
        assert_eq!(p.check("https://a.example", None), Err(Refusal::Missing));
        assert_eq!(
            p.check("https://a.example", Some("kbp_guess")),
            Err(Refusal::Unknown)
        );
        // On disk: the hash, never the token.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token) && !text.contains(&other));
        assert!(text.contains(&a.token_sha256));
        // Read back, then revoked by id.
        let again = Pairings::load(&path).unwrap();
        assert_eq!(again.list(), p.list());
        assert_eq!(again.revoke(&a.id).unwrap(), vec![a]);
        assert_eq!(
            again.check("https://a.example", Some(&token)),
            Err(Refusal::Unknown)
        );
        assert!(again.revoke("https://nope.example").is_err());
        // A damaged file is an error, not "no pairing".
        std::fs::write(&path, "{").unwrap();
        assert!(Pairings::load(&path).is_err());
    }
}
