//! The TSS2 private key file: `-----BEGIN TSS2 PRIVATE KEY-----`, the ASN.1
//! `TPMKey` of "ASN.1 Specification for TPM 2.0 Key Files"
//! (draft-bottomley-tpm2-keys), as written by tpm2-openssl, tpm2-tss-engine,
//! openssl_tpm2_engine and ssh-tpm-agent:
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,          -- 2.23.133.10.1.3: loadable key
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//!     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//!     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//!     description [4] EXPLICIT UTF8String OPTIONAL,
//!     rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//!     parent      INTEGER,                    -- a TPM handle
//!     pubkey      OCTET STRING,               -- TPM2B_PUBLIC
//!     privkey     OCTET STRING                -- TPM2B_PRIVATE
//! }
//! ```
//!
//! keybridge supports password-authorized loadable keys only: a file with a
//! policy, an import secret or an auth policy, another key type, or an RSA
//! parent is refused with an error that says so. The file holds no secret:
//! `privkey` is encrypted by the TPM under its parent's storage key and is
//! useless without that TPM, so nothing here is zeroized.
//!
//! The file is hostile input. It is size-limited before decoding, decoded as
//! DER (definite, minimal lengths; canonical INTEGER; no trailing data) with
//! the one leniency real files need (a BOOLEAN TRUE written as 0x01), and the
//! two TPM blobs are checked against their size prefixes and against the
//! largest structures the TSS can hold. No input makes it panic.
//!
//! # emptyAuth
//!
//! What the tools do, checked against their sources and, for tpm2-openssl
//! 1.1.1 (Debian 12), against swtpm:
//!
//! - tpm2-openssl (every version to 1.3.1-rc1) writes TRUE as the byte 0x01,
//!   not DER's 0xFF, and writes FALSE explicitly (0x00). Reading, it takes
//!   any non-zero byte as TRUE (OpenSSL's `ASN1_BOOLEAN`); 0xFF loads fine.
//! - An absent emptyAuth: up to 1.2.0 tpm2-openssl took it as "no password"
//!   (an unset `ASN1_BOOLEAN` is -1, which is non-zero), so a password key
//!   without the field failed with an authorization error and a bump of the
//!   TPM's dictionary-attack counter. 1.3.0 fixed that (issue #121) to
//!   follow the draft: absent means a password is required. go-tpm-keyfiles
//!   (ssh-tpm-agent) reads absent as FALSE too. We follow the draft:
//!   absent is `empty_auth == false`, the safe side (an empty password still
//!   works when asked for one).
//! - go-tpm-keyfiles writes TRUE as 0xFF and omits FALSE; before June 2024
//!   (commit 9c84be3) it refused anything but 0x00/0xFF, so tpm2-openssl's
//!   0x01 only loads in ssh-tpm-agent since then. It reads 0x02..=0xFE as
//!   FALSE; we read them, like OpenSSL, as TRUE (no producer writes them).
//!
//! So we always write emptyAuth, as strict DER: TRUE as 0xFF (read by every
//! version of every tool above, old go-tpm-keyfiles included) and FALSE as
//! an explicit 0x00 (so tpm2-openssl before 1.3.0 asks for the password
//! instead of failing). The field is OPTIONAL, not DEFAULT FALSE, so an
//! explicit FALSE is still DER.
//!
//! # description
//!
//! tpm2-openssl (to 1.3.1-rc1) knows only type, emptyAuth, parent, pubkey and
//! privkey: it refuses a file with a description ("unsupported"), checked on
//! 1.1.1. ssh-tpm-agent reads it. Write one only for files no tpm2-openssl
//! has to read.

use der::asn1::{AnyRef, IntRef, ObjectIdentifier, OctetStringRef, Utf8StringRef};
use der::{Decode as _, Encode as _, Header, Reader as _, SliceReader, Tag, Tagged as _};
use std::fmt;
use tss_esapi::structures::{Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};

/// The PEM label: `-----BEGIN TSS2 PRIVATE KEY-----`.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";

/// The line that ends the PEM armor.
const PEM_END: &str = "-----END TSS2 PRIVATE KEY-----";

/// `id-loadablekey`: a key made by the TPM under its parent, loadable with
/// `TPM2_Load`. The only type keybridge reads and writes.
pub const LOADABLE_KEY_OID: &str = "2.23.133.10.1.3";

/// The owner (storage) hierarchy, `TPM_RH_OWNER`. As a parent it means: the
/// primary key is not persistent but recreated with `TPM2_CreatePrimary`
/// from the standard template (tpm2-openssl: ECC P-256 if the TPM has ECC,
/// else RSA-2048). Other parents are persistent handles (`0x81xxxxxx`).
pub const OWNER_HIERARCHY: u32 = 0x4000_0001;

/// The largest key file accepted, PEM text or DER. A real one is under
/// 2 KiB (an RSA-2048 key is 788 bytes of PEM); the limit only stops a
/// hostile file from costing memory.
pub const MAX_FILE_LEN: usize = 64 * 1024;

/// The largest `TPMT_PUBLIC` (inside `pubkey`'s size prefix): the size of
/// the TSS's in-memory `TPMT_PUBLIC`, which bounds every marshalled one (an
/// RSA-4096 key with a SHA-512 policy is about 600 bytes): 612 bytes on
/// x86-64, under 1 KiB everywhere.
pub const MAX_PUBLIC_AREA_LEN: usize = PublicBuffer::MAX_SIZE;

/// The largest TPM-encrypted private blob (inside `privkey`'s size prefix):
/// the TSS's `TPM2B_PRIVATE` buffer, `sizeof(_PRIVATE)`, which bounds what
/// any TPM returns (an RSA-2048 key's is 222 bytes): 1550 bytes on x86-64,
/// under 2 KiB everywhere.
pub const MAX_PRIVATE_AREA_LEN: usize = Private::MAX_SIZE;

/// The longest description accepted, in bytes of UTF-8.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// The largest PEM label quoted back in an error.
const MAX_LABEL_SHOWN: usize = 64;

const LOADABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap(LOADABLE_KEY_OID);
const IMPORTABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.4");
const SEALED_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.5");
/// The loadable-key OID of openssl_tpm2_engine before the draft.
const LEGACY_LOADABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.2");

/// A password-authorized loadable TPM 2.0 key, as stored in a TSS2 private
/// key file.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The key's authorization value is empty: use it without asking for a
    /// password. False when the file says FALSE or says nothing (see the
    /// module documentation).
    pub empty_auth: bool,
    /// The handle of the parent key: [`OWNER_HIERARCHY`] (recreate the
    /// primary from the standard template) or a persistent handle. Kept as
    /// written; tpm2-openssl also reads 0 as [`OWNER_HIERARCHY`].
    pub parent: u32,
    /// The `TPM2B_PUBLIC`, exactly as in the file: a two-byte big-endian
    /// size, then that many bytes of `TPMT_PUBLIC`.
    pub public: Vec<u8>,
    /// The `TPM2B_PRIVATE`, exactly as in the file: a two-byte big-endian
    /// size, then the TPM-encrypted blob.
    pub private: Vec<u8>,
    /// Free text naming the key, if any. Untrusted: escape it before
    /// showing it on a terminal.
    pub description: Option<String>,
}

/// What is wrong with a TSS2 private key file (or with a [`KeyFile`] about
/// to be written). Messages quote no blob, only sizes and positions.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file is over [`MAX_FILE_LEN`].
    #[error("the key file is {len} bytes, over the {max}-byte limit for a TSS2 private key file")]
    TooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_FILE_LEN`].
        max: usize,
    },
    /// Not PEM at all, or PEM whose armor or Base64 is broken.
    #[error("not a TSS2 PRIVATE KEY PEM file: {0}")]
    NotPem(String),
    /// PEM of another kind, e.g. `PRIVATE KEY`.
    #[error("not a TSS2 private key: the PEM label is {0:?}, expected \"TSS2 PRIVATE KEY\"")]
    WrongLabel(String),
    /// A TPM key file of a type keybridge does not load.
    #[error(
        "unsupported TPM key type: {0}; keybridge loads only loadable keys ({LOADABLE_KEY_OID})"
    )]
    UnsupportedKeyType(String),
    /// The key needs a TPM policy (or is an import blob): `field` is the
    /// first such field found (`policy`, `secret` or `authPolicy`).
    #[error(
        "the key file has a {field} field: keybridge supports password-authorized loadable keys only, not TPM policies"
    )]
    PolicyNotSupported {
        /// The field's name in the specification.
        field: &'static str,
    },
    /// `rsaParent` is TRUE: the parent is the RSA-2048 primary, which
    /// keybridge does not recreate.
    #[error(
        "the key file has rsaParent set: keybridge recreates only the standard ECC P-256 primary as a parent"
    )]
    RsaParentNotSupported,
    /// The DER is broken; the text says where.
    #[error("malformed TSS2 private key file: {0}")]
    Malformed(String),
    /// A TPM2B's size prefix disagrees with the bytes that follow it.
    #[error("{field}: the size prefix says {declared} bytes but {actual} follow it")]
    SizeMismatch {
        /// `pubkey` or `privkey`.
        field: &'static str,
        /// The size the prefix states.
        declared: usize,
        /// The bytes after the prefix.
        actual: usize,
    },
    /// A TPM2B is empty or larger than any TPM makes.
    #[error("{field}: {len} bytes, outside the TPM's range of 1..={max}")]
    BlobSize {
        /// `pubkey` or `privkey`.
        field: &'static str,
        /// The size inside the prefix.
        len: usize,
        /// [`MAX_PUBLIC_AREA_LEN`] or [`MAX_PRIVATE_AREA_LEN`].
        max: usize,
    },
    /// The parent is negative or does not fit 32 bits: no TPM handle.
    #[error("the parent {0} is not a TPM handle (an unsigned 32-bit number)")]
    ParentOutOfRange(String),
    /// The public area is not a `TPMT_PUBLIC` the TSS accepts.
    #[error("pubkey: not a valid TPMT_PUBLIC: {0}")]
    InvalidPublicArea(String),
    /// The private blob is not a `TPM2B_PRIVATE` the TSS accepts.
    #[error("privkey: not a valid TPM2B_PRIVATE: {0}")]
    InvalidPrivateArea(String),
}

impl KeyFile {
    /// A key file for a key the TPM just created (`TPM2_Create` returns
    /// `public` and `private`) under `parent`, with no description.
    ///
    /// # Errors
    /// [`KeyFileError::InvalidPublicArea`] if `public` does not marshal,
    /// [`KeyFileError::BlobSize`] if either part is empty or too large.
    pub fn from_tpm_objects(
        empty_auth: bool,
        parent: u32,
        public: &Public,
        private: &Private,
    ) -> Result<Self, KeyFileError> {
        let area = public
            .marshall()
            .map_err(|e| KeyFileError::InvalidPublicArea(e.to_string()))?;
        let key = Self {
            empty_auth,
            parent,
            public: with_size_prefix(&area),
            private: with_size_prefix(private.value()),
            description: None,
        };
        key.validate()?;
        Ok(key)
    }

    /// Reads a key file, PEM or DER: DER if it starts with a SEQUENCE tag,
    /// else PEM.
    ///
    /// # Errors
    /// As [`KeyFile::from_pem`] or [`KeyFile::from_der`].
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyFileError> {
        if bytes.first() == Some(&0x30) {
            Self::from_der(bytes)
        } else {
            Self::from_pem_bytes(bytes)
        }
    }

    /// Reads a PEM key file (`-----BEGIN TSS2 PRIVATE KEY-----`). Text before
    /// and after the armor is ignored, as OpenSSL does; LF or CRLF lines,
    /// Base64 lines of any one width.
    ///
    /// # Errors
    /// [`KeyFileError::NotPem`], [`KeyFileError::WrongLabel`], or any error
    /// of [`KeyFile::from_der`].
    pub fn from_pem(text: &str) -> Result<Self, KeyFileError> {
        Self::from_pem_bytes(text.as_bytes())
    }

    fn from_pem_bytes(pem: &[u8]) -> Result<Self, KeyFileError> {
        check_file_len(pem.len())?;
        // Like OpenSSL, read the first key and ignore what follows its END
        // line (a comment, a certificate), which pem-rfc7468 would refuse.
        let end = PEM_END.as_bytes();
        let pem = match pem.windows(end.len()).position(|w| w == end) {
            Some(at) => &pem[..at.saturating_add(end.len())],
            None => pem,
        };
        let label = der::pem::decode_label(pem).map_err(|e| KeyFileError::NotPem(e.to_string()))?;
        if label != PEM_LABEL {
            return Err(KeyFileError::WrongLabel(
                label.chars().take(MAX_LABEL_SHOWN).collect(),
            ));
        }
        let mut decoder = der::pem::Decoder::new_detect_wrap(pem)
            .map_err(|e| KeyFileError::NotPem(e.to_string()))?;
        let mut der = Vec::new();
        decoder
            .decode_to_end(&mut der)
            .map_err(|e| KeyFileError::NotPem(e.to_string()))?;
        Self::from_der(&der)
    }

    /// Reads the DER `TPMKey`: exactly one SEQUENCE, nothing after it.
    ///
    /// # Errors
    /// [`KeyFileError::TooLarge`], [`KeyFileError::Malformed`] (the text
    /// says where), [`KeyFileError::UnsupportedKeyType`],
    /// [`KeyFileError::PolicyNotSupported`],
    /// [`KeyFileError::RsaParentNotSupported`],
    /// [`KeyFileError::ParentOutOfRange`], [`KeyFileError::SizeMismatch`],
    /// [`KeyFileError::BlobSize`].
    pub fn from_der(der: &[u8]) -> Result<Self, KeyFileError> {
        check_file_len(der.len())?;
        let mut outer = SliceReader::new(der).map_err(malformed("the file"))?;
        let header = Header::decode(&mut outer).map_err(malformed("the TPMKey SEQUENCE"))?;
        if header.tag() != Tag::Sequence {
            return Err(KeyFileError::Malformed(format!(
                "expected the TPMKey SEQUENCE, found {}",
                header.tag()
            )));
        }
        let body = outer
            .read_slice(header.length())
            .map_err(malformed("the TPMKey SEQUENCE"))?;
        outer
            .finish()
            .map_err(malformed("after the TPMKey SEQUENCE"))?;

        let mut fields = SliceReader::new(body).map_err(malformed("the TPMKey SEQUENCE"))?;
        let key = Self::decode_fields(&mut fields)?;
        fields
            .finish()
            .map_err(malformed("after privkey, inside the TPMKey SEQUENCE"))?;
        key.validate()?;
        Ok(key)
    }

    /// The fields of the SEQUENCE, in order.
    fn decode_fields(r: &mut SliceReader<'_>) -> Result<Self, KeyFileError> {
        let key_type = ObjectIdentifier::decode(r).map_err(malformed("type"))?;
        check_key_type(&key_type)?;

        let mut empty_auth = None;
        let mut description = None;
        // The optional fields are [0]..=[5], each at most once, in order.
        let mut next_number = 0;
        while !r.is_finished() {
            let Tag::ContextSpecific {
                constructed,
                number,
            } = Tag::peek(&*r).map_err(malformed("the field after type"))?
            else {
                break;
            };
            let number = number.value();
            if number < next_number {
                return Err(KeyFileError::Malformed(format!(
                    "optional field [{number}] repeated or out of order"
                )));
            }
            if !constructed {
                return Err(KeyFileError::Malformed(format!(
                    "optional field [{number}] is not an EXPLICIT (constructed) tag"
                )));
            }
            let field = AnyRef::decode(r).map_err(malformed("an optional field"))?;
            match number {
                0 => empty_auth = Some(lenient_boolean(field.value(), "emptyAuth")?),
                1 => return Err(KeyFileError::PolicyNotSupported { field: "policy" }),
                2 => return Err(KeyFileError::PolicyNotSupported { field: "secret" }),
                3 => {
                    return Err(KeyFileError::PolicyNotSupported {
                        field: "authPolicy",
                    });
                }
                4 => {
                    let text = Utf8StringRef::from_der(field.value())
                        .map_err(malformed("description (a UTF8String)"))?;
                    description = Some(text.as_str().to_owned());
                }
                5 => {
                    if lenient_boolean(field.value(), "rsaParent")? {
                        return Err(KeyFileError::RsaParentNotSupported);
                    }
                }
                _ => {
                    return Err(KeyFileError::Malformed(format!(
                        "unknown optional field [{number}]"
                    )));
                }
            }
            next_number = number.saturating_add(1);
        }

        let parent = IntRef::decode(r).map_err(malformed("parent (an INTEGER)"))?;
        let parent = handle_from_integer(parent.as_bytes())?;
        let public = <&OctetStringRef>::decode(r).map_err(malformed("pubkey (an OCTET STRING)"))?;
        let private =
            <&OctetStringRef>::decode(r).map_err(malformed("privkey (an OCTET STRING)"))?;
        Ok(Self {
            // Absent means a password is required (see the module docs).
            empty_auth: empty_auth.unwrap_or(false),
            parent,
            public: public.as_bytes().to_vec(),
            private: private.as_bytes().to_vec(),
            description,
        })
    }

    /// The PEM file: strict DER inside, 64-column Base64, LF line ends,
    /// ending in a newline (what tpm2-openssl writes).
    ///
    /// # Errors
    /// As [`KeyFile::to_der`]: nothing is written that [`KeyFile::from_pem`]
    /// would refuse.
    pub fn to_pem(&self) -> Result<String, KeyFileError> {
        let der = self.to_der()?;
        der::pem::encode_string(PEM_LABEL, der::pem::LineEnding::LF, &der)
            .map_err(|e| KeyFileError::Malformed(format!("PEM encoding: {e}")))
    }

    /// The DER `TPMKey`, emptyAuth always present (TRUE as 0xFF, FALSE as
    /// 0x00: see the module documentation), description when there is one.
    ///
    /// # Errors
    /// What [`KeyFile::from_der`] would refuse in the result: a blob whose
    /// size prefix is wrong, an empty or oversized blob, an overlong
    /// description.
    pub fn to_der(&self) -> Result<Vec<u8>, KeyFileError> {
        self.validate()?;
        let encoding_error = |e: der::Error| KeyFileError::Malformed(format!("DER encoding: {e}"));
        let description = self
            .description
            .as_deref()
            .map(Utf8StringRef::new)
            .transpose()
            .map_err(encoding_error)?;
        let value = TpmKeyDer {
            key_type: LOADABLE_KEY,
            empty_auth: Some(self.empty_auth),
            description,
            parent: self.parent,
            pubkey: OctetStringRef::new(&self.public).map_err(encoding_error)?,
            privkey: OctetStringRef::new(&self.private).map_err(encoding_error)?,
        };
        value.to_der().map_err(encoding_error)
    }

    /// The `TPMT_PUBLIC` inside [`KeyFile::public`], after its size prefix.
    ///
    /// # Errors
    /// [`KeyFileError::SizeMismatch`] if the prefix disagrees with the
    /// length, [`KeyFileError::BlobSize`] if it is empty or too large.
    pub fn public_area(&self) -> Result<&[u8], KeyFileError> {
        tpm2b_contents(&self.public, "pubkey", MAX_PUBLIC_AREA_LEN)
    }

    /// The TPM-encrypted blob inside [`KeyFile::private`], after its size
    /// prefix.
    ///
    /// # Errors
    /// As [`KeyFile::public_area`].
    pub fn private_area(&self) -> Result<&[u8], KeyFileError> {
        tpm2b_contents(&self.private, "privkey", MAX_PRIVATE_AREA_LEN)
    }

    /// The public area as `tss-esapi`'s [`Public`], ready for `TPM2_Load`.
    /// The whole area must unmarshal, with nothing left over.
    ///
    /// # Errors
    /// As [`KeyFile::public_area`], or [`KeyFileError::InvalidPublicArea`].
    pub fn tpm_public(&self) -> Result<Public, KeyFileError> {
        let area = self.public_area()?;
        let public =
            Public::unmarshall(area).map_err(|e| KeyFileError::InvalidPublicArea(e.to_string()))?;
        // `unmarshall` ignores trailing bytes: marshalling back must give
        // exactly the area, or the file held more than the key.
        let again = public
            .marshall()
            .map_err(|e| KeyFileError::InvalidPublicArea(e.to_string()))?;
        if again != area {
            return Err(KeyFileError::InvalidPublicArea(format!(
                "{} bytes hold a {}-byte structure and more",
                area.len(),
                again.len()
            )));
        }
        Ok(public)
    }

    /// The private blob as `tss-esapi`'s [`Private`], ready for `TPM2_Load`.
    ///
    /// # Errors
    /// As [`KeyFile::private_area`], or [`KeyFileError::InvalidPrivateArea`].
    pub fn tpm_private(&self) -> Result<Private, KeyFileError> {
        Private::try_from(self.private_area()?)
            .map_err(|e| KeyFileError::InvalidPrivateArea(e.to_string()))
    }

    /// Everything [`KeyFile::from_der`] checks beyond the DER itself.
    fn validate(&self) -> Result<(), KeyFileError> {
        self.public_area()?;
        self.private_area()?;
        if let Some(text) = &self.description
            && text.len() > MAX_DESCRIPTION_LEN
        {
            return Err(KeyFileError::Malformed(format!(
                "description: {} bytes, over the {MAX_DESCRIPTION_LEN}-byte limit",
                text.len()
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for KeyFile {
    // The blobs are not secret, only long: show their sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("empty_auth", &self.empty_auth)
            .field("parent", &format_args!("{:#010x}", self.parent))
            .field("public", &format_args!("<{} bytes>", self.public.len()))
            .field("private", &format_args!("<{} bytes>", self.private.len()))
            .field("description", &self.description)
            .finish()
    }
}

/// The `TPMKey` as the encoder writes it: only the fields keybridge writes.
/// Deriving the strict decoder too lets the tests prove the output is DER.
#[derive(der::Sequence)]
struct TpmKeyDer<'a> {
    key_type: ObjectIdentifier,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    empty_auth: Option<bool>,
    #[asn1(context_specific = "4", tag_mode = "EXPLICIT", optional = "true")]
    description: Option<Utf8StringRef<'a>>,
    parent: u32,
    pubkey: &'a OctetStringRef,
    privkey: &'a OctetStringRef,
}

fn malformed(place: &'static str) -> impl Fn(der::Error) -> KeyFileError {
    move |e| KeyFileError::Malformed(format!("{place}: {e}"))
}

fn check_file_len(len: usize) -> Result<(), KeyFileError> {
    if len > MAX_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            len,
            max: MAX_FILE_LEN,
        });
    }
    Ok(())
}

fn check_key_type(oid: &ObjectIdentifier) -> Result<(), KeyFileError> {
    let what = match *oid {
        LOADABLE_KEY => return Ok(()),
        IMPORTABLE_KEY => {
            "importable key (2.23.133.10.1.4), which must be imported into the TPM first"
        }
        SEALED_KEY => "sealed data (2.23.133.10.1.5), not a signing key",
        LEGACY_LOADABLE_KEY => {
            "a loadable key in the pre-draft format of old openssl_tpm2_engine (2.23.133.10.2)"
        }
        _ => {
            return Err(KeyFileError::UnsupportedKeyType(format!(
                "unknown OID {oid}"
            )));
        }
    };
    Err(KeyFileError::UnsupportedKeyType(what.to_owned()))
}

/// The value of `[n] EXPLICIT BOOLEAN`: the inner TLV must be one BOOLEAN of
/// one byte, and any non-zero byte is TRUE, as OpenSSL reads it, because
/// tpm2-openssl writes TRUE as 0x01 where DER wants 0xFF.
fn lenient_boolean(explicit: &[u8], field: &str) -> Result<bool, KeyFileError> {
    let inner =
        AnyRef::from_der(explicit).map_err(|e| KeyFileError::Malformed(format!("{field}: {e}")))?;
    match (inner.tag(), inner.value()) {
        (Tag::Boolean, [byte]) => Ok(*byte != 0),
        (Tag::Boolean, value) => Err(KeyFileError::Malformed(format!(
            "{field}: a BOOLEAN of {} bytes, expected 1",
            value.len()
        ))),
        (tag, _) => Err(KeyFileError::Malformed(format!(
            "{field}: expected a BOOLEAN, found {tag}"
        ))),
    }
}

/// A TPM handle from the content octets of a canonical DER INTEGER (two's
/// complement, big-endian, a leading 0x00 only before a byte >= 0x80).
fn handle_from_integer(bytes: &[u8]) -> Result<u32, KeyFileError> {
    let shown = || format!("0x{}", hex::encode(&bytes[..bytes.len().min(16)]));
    match bytes.first() {
        None => return Err(KeyFileError::Malformed("parent: an empty INTEGER".into())),
        Some(first) if first & 0x80 != 0 => {
            return Err(KeyFileError::ParentOutOfRange(format!(
                "{} (negative)",
                shown()
            )));
        }
        Some(_) => {}
    }
    let magnitude = bytes.strip_prefix(&[0]).unwrap_or(bytes);
    if magnitude.len() > 4 {
        return Err(KeyFileError::ParentOutOfRange(format!(
            "{} (over 32 bits)",
            shown()
        )));
    }
    Ok(magnitude
        .iter()
        .fold(0u32, |handle, byte| (handle << 8) | u32::from(*byte)))
}

/// The contents of a TPM2B (two-byte big-endian size, then the bytes).
fn tpm2b_contents<'a>(
    tpm2b: &'a [u8],
    field: &'static str,
    max: usize,
) -> Result<&'a [u8], KeyFileError> {
    let Some((prefix, contents)) = tpm2b.split_first_chunk::<2>() else {
        return Err(KeyFileError::Malformed(format!(
            "{field}: {} bytes, too short for a TPM2B size prefix",
            tpm2b.len()
        )));
    };
    let declared = usize::from(u16::from_be_bytes(*prefix));
    if declared != contents.len() {
        return Err(KeyFileError::SizeMismatch {
            field,
            declared,
            actual: contents.len(),
        });
    }
    if contents.is_empty() || contents.len() > max {
        return Err(KeyFileError::BlobSize {
            field,
            len: contents.len(),
            max,
        });
    }
    Ok(contents)
}

/// `bytes` behind a TPM2B size prefix. Only called with what the TSS
/// marshalled, which its buffer sizes keep far below 64 KiB; a longer input
/// gets a prefix that `validate` then refuses as a mismatch.
fn with_size_prefix(bytes: &[u8]) -> Vec<u8> {
    let size = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(bytes.len().saturating_add(2));
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    //! The samples in `testdata/` were made with tpm2-openssl 1.1.1 (Debian
    //! 12) on swtpm 0.7.1, e.g.
    //! `TPM2OPENSSL_TCTI=swtpm:port=… openssl genpkey -provider tpm2
    //! -algorithm EC -pkeyopt group:P-256 [-pkeyopt user-auth:abcdef]
    //! [-pkeyopt parent:0x81000001]`. They hold only blobs encrypted by that
    //! (discarded) simulated TPM.

    use super::*;
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::key_bits::RsaKeyBits;

    const EMPTY_AUTH: &str = include_str!("testdata/tpm2-openssl-p256-empty-auth.pem");
    const PASSWORD: &str = include_str!("testdata/tpm2-openssl-p256-password.pem");
    const PERSISTENT: &str = include_str!("testdata/tpm2-openssl-p256-persistent-parent.pem");
    const RSA: &str = include_str!("testdata/tpm2-openssl-rsa2048.pem");
    const SAMPLES: [&str; 4] = [EMPTY_AUTH, PASSWORD, PERSISTENT, RSA];

    fn der_of(pem: &str) -> Vec<u8> {
        der::pem::decode_vec(pem.as_bytes()).unwrap().1
    }

    /// A DER TLV (lengths up to 64 KiB).
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    fn explicit(number: u8, inner: &[u8]) -> Vec<u8> {
        tlv(0xa0 | number, inner)
    }

    fn boolean(byte: u8) -> Vec<u8> {
        tlv(0x01, &[byte])
    }

    fn oid(dotted: &str) -> Vec<u8> {
        ObjectIdentifier::new_unwrap(dotted).to_der().unwrap()
    }

    /// A TPMKey from its parts, each already a TLV, the blobs raw.
    struct Parts {
        key_type: Vec<u8>,
        optional: Vec<Vec<u8>>,
        parent: Vec<u8>,
        public: Vec<u8>,
        private: Vec<u8>,
    }

    impl Parts {
        /// The empty-auth sample, taken apart.
        fn sample() -> Self {
            let key = KeyFile::from_pem(EMPTY_AUTH).unwrap();
            Self {
                key_type: oid(LOADABLE_KEY_OID),
                optional: vec![explicit(0, &boolean(0xff))],
                parent: tlv(0x02, &[0x40, 0, 0, 1]),
                public: key.public,
                private: key.private,
            }
        }

        fn der(&self) -> Vec<u8> {
            let mut body = self.key_type.clone();
            for field in &self.optional {
                body.extend_from_slice(field);
            }
            body.extend_from_slice(&self.parent);
            body.extend(tlv(0x04, &self.public));
            body.extend(tlv(0x04, &self.private));
            tlv(0x30, &body)
        }

        fn parse(&self) -> Result<KeyFile, KeyFileError> {
            KeyFile::from_der(&self.der())
        }
    }

    fn assert_p256(key: &KeyFile) {
        match key.tpm_public().unwrap() {
            Public::Ecc { parameters, .. } => {
                assert_eq!(parameters.ecc_curve(), EccCurve::NistP256)
            }
            other => panic!("not an ECC key: {other:?}"),
        }
        key.tpm_private().unwrap();
    }

    #[test]
    fn tpm2_openssl_key_without_password_reads_as_empty_auth_under_the_owner_hierarchy() {
        let key = KeyFile::from_pem(EMPTY_AUTH).unwrap();
        assert!(key.empty_auth);
        assert_eq!(key.parent, OWNER_HIERARCHY);
        assert_eq!(key.description, None);
        assert_eq!(key.public.len(), 0x58);
        assert_eq!(key.public_area().unwrap().len(), 0x56);
        assert_eq!(key.private_area().unwrap().len(), 0x7e);
        assert_p256(&key);
    }

    #[test]
    fn tpm2_openssl_key_with_password_reads_as_needing_one() {
        let key = KeyFile::from_pem(PASSWORD).unwrap();
        assert!(!key.empty_auth);
        assert_eq!(key.parent, OWNER_HIERARCHY);
        assert_p256(&key);
    }

    #[test]
    fn tpm2_openssl_key_under_a_persistent_parent_keeps_its_handle() {
        let key = KeyFile::from_pem(PERSISTENT).unwrap();
        assert!(key.empty_auth);
        assert_eq!(key.parent, 0x8100_0001);
        assert_p256(&key);
    }

    #[test]
    fn tpm2_openssl_rsa_key_reads_as_rsa_2048() {
        let key = KeyFile::from_pem(RSA).unwrap();
        match key.tpm_public().unwrap() {
            Public::Rsa { parameters, .. } => {
                assert_eq!(parameters.key_bits(), RsaKeyBits::Rsa2048)
            }
            other => panic!("not an RSA key: {other:?}"),
        }
        key.tpm_private().unwrap();
    }

    #[test]
    fn writing_a_tpm2_openssl_file_back_changes_only_a_true_byte_to_0xff() {
        // FALSE is written as tpm2-openssl writes it: the same file, to the byte.
        assert_eq!(
            KeyFile::from_pem(PASSWORD).unwrap().to_pem().unwrap(),
            PASSWORD
        );
        // TRUE: tpm2-openssl's 0x01 becomes DER's 0xFF, nothing else moves.
        for pem in [EMPTY_AUTH, PERSISTENT, RSA] {
            let original = der_of(pem);
            let written = KeyFile::from_pem(pem).unwrap().to_der().unwrap();
            assert_eq!(original.len(), written.len());
            let differ: Vec<_> = (0..original.len())
                .filter(|&i| original[i] != written[i])
                .map(|i| (original[i], written[i]))
                .collect();
            assert_eq!(differ, [(0x01, 0xff)]);
        }
    }

    #[test]
    fn output_is_strict_der_that_reads_back_the_same() {
        let mut keys: Vec<KeyFile> = SAMPLES
            .iter()
            .map(|p| KeyFile::from_pem(p).unwrap())
            .collect();
        for (parent, empty_auth) in [(0, true), (0x7f, false), (0x80, true), (u32::MAX, false)] {
            keys.push(KeyFile {
                empty_auth,
                parent,
                description: Some("sign key ✓ for keybridge".into()),
                ..keys[0].clone()
            });
        }
        for key in keys {
            let der = key.to_der().unwrap();
            // The derived decoder is strict DER: BOOLEAN only 0x00/0xFF,
            // minimal INTEGER and lengths, no trailing data.
            let strict = TpmKeyDer::from_der(&der).unwrap();
            assert_eq!(strict.empty_auth, Some(key.empty_auth));
            assert_eq!(strict.parent, key.parent);
            assert_eq!(strict.to_der().unwrap(), der);
            assert_eq!(KeyFile::from_der(&der).unwrap(), key);
            assert_eq!(KeyFile::from_pem(&key.to_pem().unwrap()).unwrap(), key);
            assert_eq!(KeyFile::parse(&der).unwrap(), key);
            assert_eq!(
                KeyFile::parse(key.to_pem().unwrap().as_bytes()).unwrap(),
                key
            );
        }
    }

    #[test]
    fn output_passes_openssl_asn1parse_when_openssl_is_installed() {
        let key = KeyFile {
            description: Some("a key".into()),
            ..KeyFile::from_pem(PERSISTENT).unwrap()
        };
        let dir = std::env::temp_dir().join(format!("keyfile-asn1parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, key.to_pem().unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["asn1parse", "-in"])
            .arg(&path)
            .output();
        std::fs::remove_dir_all(&dir).unwrap();
        let Ok(out) = out else {
            eprintln!("openssl not installed: skipped");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(":2.23.133.10.1.3"), "{text}");
        assert!(text.contains("BOOLEAN           :255"), "{text}");
        assert!(text.contains("UTF8STRING        :a key"), "{text}");
        assert!(text.contains("INTEGER           :81000001"), "{text}");
    }

    #[test]
    fn parent_is_encoded_as_a_minimal_non_negative_integer() {
        for (parent, encoded) in [
            (0, &[0x02, 0x01, 0x00][..]),
            (0x80, &[0x02, 0x02, 0x00, 0x80]),
            (0x4000_0001, &[0x02, 0x04, 0x40, 0, 0, 1]),
            (0x8100_0001, &[0x02, 0x05, 0x00, 0x81, 0, 0, 1]),
            (u32::MAX, &[0x02, 0x05, 0x00, 0xff, 0xff, 0xff, 0xff]),
        ] {
            let key = KeyFile {
                parent,
                ..KeyFile::from_pem(EMPTY_AUTH).unwrap()
            };
            let der = key.to_der().unwrap();
            assert!(
                der.windows(encoded.len()).any(|w| w == encoded),
                "{parent:#x}"
            );
            let mut parts = Parts::sample();
            parts.parent = encoded.to_vec();
            assert_eq!(parts.parse().unwrap().parent, parent);
        }
    }

    #[test]
    fn any_non_zero_empty_auth_byte_is_true_and_absent_means_a_password() {
        for (byte, expected) in [(0x00, false), (0x01, true), (0x02, true), (0xff, true)] {
            let mut parts = Parts::sample();
            parts.optional = vec![explicit(0, &boolean(byte))];
            assert_eq!(parts.parse().unwrap().empty_auth, expected, "{byte:#x}");
        }
        let mut parts = Parts::sample();
        parts.optional.clear();
        assert!(!parts.parse().unwrap().empty_auth);
    }

    #[test]
    fn description_and_a_false_rsa_parent_are_read() {
        let mut parts = Parts::sample();
        parts
            .optional
            .push(explicit(4, &tlv(0x0c, "clé".as_bytes())));
        parts.optional.push(explicit(5, &boolean(0x00)));
        let key = parts.parse().unwrap();
        assert_eq!(key.description.as_deref(), Some("clé"));
        assert!(key.empty_auth);
    }

    #[test]
    fn a_key_made_by_the_tpm_becomes_the_same_file_tpm2_openssl_wrote() {
        let sample = KeyFile::from_pem(PASSWORD).unwrap();
        let key = KeyFile::from_tpm_objects(
            false,
            OWNER_HIERARCHY,
            &sample.tpm_public().unwrap(),
            &sample.tpm_private().unwrap(),
        )
        .unwrap();
        assert_eq!(key, sample);
        assert_eq!(key.to_pem().unwrap(), PASSWORD);
    }

    #[test]
    fn bounds_are_those_documented() {
        assert!(
            (600..=1024).contains(&MAX_PUBLIC_AREA_LEN),
            "{MAX_PUBLIC_AREA_LEN}"
        );
        assert!(
            (1024..=2048).contains(&MAX_PRIVATE_AREA_LEN),
            "{MAX_PRIVATE_AREA_LEN}"
        );
    }

    fn assert_malformed(result: Result<KeyFile, KeyFileError>, needle: &str) {
        match result {
            Err(KeyFileError::Malformed(text)) => assert!(text.contains(needle), "{text}"),
            other => panic!("expected Malformed({needle}…), got {other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        for pem in SAMPLES {
            let der = der_of(pem);
            for len in 0..der.len() {
                assert!(KeyFile::from_der(&der[..len]).is_err(), "{len}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut der = der_of(PASSWORD);
        der.push(0);
        assert_malformed(KeyFile::from_der(&der), "after the TPMKey SEQUENCE");

        // Inside the SEQUENCE, after privkey.
        let parts = Parts::sample();
        let inner = parts.der();
        let mut body = inner[3..].to_vec();
        body.extend(tlv(0x04, b"x"));
        assert_malformed(KeyFile::from_der(&tlv(0x30, &body)), "after privkey");

        // Inside emptyAuth's explicit tag.
        let mut parts = Parts::sample();
        let mut inner = boolean(0xff);
        inner.push(0);
        parts.optional = vec![explicit(0, &inner)];
        assert_malformed(parts.parse(), "emptyAuth");
    }

    #[test]
    fn other_pem_and_non_pem_are_refused() {
        let other = PASSWORD.replace("TSS2 PRIVATE KEY", "PRIVATE KEY");
        match KeyFile::from_pem(&other) {
            Err(KeyFileError::WrongLabel(label)) => assert_eq!(label, "PRIVATE KEY"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            KeyFile::from_pem(""),
            Err(KeyFileError::NotPem(_))
        ));
        assert!(matches!(
            KeyFile::from_pem("hello"),
            Err(KeyFileError::NotPem(_))
        ));
        let broken = PASSWORD.replacen("MIHw", "MI!w", 1);
        assert!(matches!(
            KeyFile::from_pem(&broken),
            Err(KeyFileError::NotPem(_))
        ));
        let unterminated = PASSWORD.replace("-----END TSS2 PRIVATE KEY-----\n", "");
        assert!(matches!(
            KeyFile::from_pem(&unterminated),
            Err(KeyFileError::NotPem(_))
        ));
    }

    #[test]
    fn text_around_the_armor_and_crlf_lines_are_accepted() {
        let expected = KeyFile::from_pem(PASSWORD).unwrap();
        for text in [
            format!("a key made by tpm2-openssl\n{PASSWORD}"),
            format!("{PASSWORD}a comment after the key\n"),
            format!("{PASSWORD}{EMPTY_AUTH}"),
            PASSWORD.replace('\n', "\r\n"),
            PASSWORD.trim_end().to_owned(),
        ] {
            assert_eq!(KeyFile::from_pem(&text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn other_key_types_are_refused_by_name() {
        for (dotted, needle) in [
            ("2.23.133.10.1.4", "importable key (2.23.133.10.1.4)"),
            ("2.23.133.10.1.5", "sealed data (2.23.133.10.1.5)"),
            ("2.23.133.10.2", "(2.23.133.10.2)"),
            ("1.2.840.10045.2.1", "unknown OID 1.2.840.10045.2.1"),
        ] {
            let mut parts = Parts::sample();
            parts.key_type = oid(dotted);
            match parts.parse() {
                Err(e @ KeyFileError::UnsupportedKeyType(_)) => {
                    assert!(e.to_string().contains(needle), "{e}")
                }
                other => panic!("{dotted}: {other:?}"),
            }
        }
        let mut parts = Parts::sample();
        parts.key_type = tlv(0x04, b"not an oid");
        assert_malformed(parts.parse(), "type");
    }

    #[test]
    fn policies_and_import_secrets_are_refused_as_unsupported() {
        let policy = tlv(
            0x30,
            &tlv(
                0x30,
                &[
                    explicit(0, &tlv(0x02, &[0x01, 0x6b])),
                    explicit(1, &tlv(0x04, &[0; 4])),
                ]
                .concat(),
            ),
        );
        for (number, inner, name) in [
            (1, policy.clone(), "policy"),
            (2, tlv(0x04, &[0; 8]), "secret"),
            (
                3,
                tlv(0x30, &tlv(0x30, &explicit(1, &policy))),
                "authPolicy",
            ),
        ] {
            let mut parts = Parts::sample();
            parts.optional.push(explicit(number, &inner));
            match parts.parse() {
                Err(e @ KeyFileError::PolicyNotSupported { field }) => {
                    assert_eq!(field, name);
                    assert!(
                        e.to_string()
                            .contains("password-authorized loadable keys only")
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_rsa_parent_is_refused() {
        let mut parts = Parts::sample();
        parts.optional.push(explicit(5, &boolean(0xff)));
        assert!(matches!(
            parts.parse(),
            Err(KeyFileError::RsaParentNotSupported)
        ));
    }

    #[test]
    fn optional_fields_out_of_order_repeated_unknown_or_implicit_are_refused() {
        let description = explicit(4, &tlv(0x0c, b"k"));
        let empty_auth = explicit(0, &boolean(0xff));
        for (optional, needle) in [
            (
                vec![description.clone(), empty_auth.clone()],
                "out of order",
            ),
            (vec![empty_auth.clone(), empty_auth.clone()], "repeated"),
            (
                vec![explicit(6, &boolean(0xff))],
                "unknown optional field [6]",
            ),
            (vec![tlv(0x80, &[0xff])], "not an EXPLICIT"),
            (vec![explicit(0, &tlv(0x02, &[1]))], "expected a BOOLEAN"),
            (
                vec![explicit(0, &tlv(0x01, &[0xff, 0xff]))],
                "BOOLEAN of 2 bytes",
            ),
            (vec![explicit(0, &tlv(0x01, &[]))], "BOOLEAN of 0 bytes"),
            (vec![explicit(0, &[])], "emptyAuth"),
            (vec![explicit(4, &tlv(0x0c, &[0xff, 0xfe]))], "description"),
            (vec![explicit(4, &tlv(0x04, b"k"))], "description"),
        ] {
            let mut parts = Parts::sample();
            parts.optional = optional;
            assert_malformed(parts.parse(), needle);
        }
    }

    #[test]
    fn negative_oversized_and_non_minimal_parents_are_refused() {
        for encoded in [
            &[0x02, 0x01, 0xff][..],
            &[0x02, 0x04, 0x81, 0, 0, 1],
            &[0x02, 0x05, 0x01, 0, 0, 0, 0],
            &[0x02, 0x09, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut parts = Parts::sample();
            parts.parent = encoded.to_vec();
            assert!(
                matches!(parts.parse(), Err(KeyFileError::ParentOutOfRange(_))),
                "{encoded:x?}"
            );
        }
        for encoded in [
            &[0x02, 0x05, 0x00, 0x40, 0, 0, 1][..],
            &[0x02, 0x00],
            &[0x04, 0x01, 0x00],
        ] {
            let mut parts = Parts::sample();
            parts.parent = encoded.to_vec();
            assert_malformed(parts.parse(), "parent");
        }
    }

    #[test]
    fn wrong_size_prefixes_and_blob_sizes_are_refused() {
        let mut parts = Parts::sample();
        parts.public[1] -= 1;
        assert!(matches!(
            parts.parse(),
            Err(KeyFileError::SizeMismatch {
                field: "pubkey",
                declared: 0x55,
                actual: 0x56
            })
        ));

        let mut parts = Parts::sample();
        parts.private[0] = 0x01;
        assert!(matches!(
            parts.parse(),
            Err(KeyFileError::SizeMismatch {
                field: "privkey",
                declared: 0x17e,
                actual: 0x7e
            })
        ));

        let mut parts = Parts::sample();
        parts.private = vec![0];
        assert_malformed(parts.parse(), "privkey: 1 bytes");

        let mut parts = Parts::sample();
        parts.public = vec![0, 0];
        assert!(matches!(
            parts.parse(),
            Err(KeyFileError::BlobSize {
                field: "pubkey",
                len: 0,
                ..
            })
        ));

        let mut parts = Parts::sample();
        parts.private = with_size_prefix(&[0; MAX_PRIVATE_AREA_LEN + 1]);
        assert!(matches!(
            parts.parse(),
            Err(KeyFileError::BlobSize {
                field: "privkey",
                ..
            })
        ));

        // The writer refuses what the reader would.
        let key = KeyFile {
            public: vec![0x00, 0x05, 1, 2],
            ..KeyFile::from_pem(PASSWORD).unwrap()
        };
        assert!(matches!(
            key.to_der(),
            Err(KeyFileError::SizeMismatch { .. })
        ));
        assert!(key.to_pem().is_err());
    }

    #[test]
    fn a_public_area_with_bytes_after_the_key_is_refused() {
        let mut parts = Parts::sample();
        let mut area = parts.public[2..].to_vec();
        area.extend_from_slice(&[0, 0]);
        parts.public = with_size_prefix(&area);
        let key = parts.parse().unwrap();
        assert!(matches!(
            key.tpm_public(),
            Err(KeyFileError::InvalidPublicArea(_))
        ));

        let mut parts = Parts::sample();
        parts.public = with_size_prefix(&[0xff; 40]);
        assert!(matches!(
            parts.parse().unwrap().tpm_public(),
            Err(KeyFileError::InvalidPublicArea(_))
        ));
    }

    #[test]
    fn huge_lengths_and_files_are_refused() {
        // A SEQUENCE claiming 2 GiB.
        assert_malformed(
            KeyFile::from_der(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x06]),
            "TPMKey SEQUENCE",
        );
        // An OCTET STRING claiming more than the SEQUENCE holds.
        let mut parts = Parts::sample();
        parts.optional.clear();
        let mut der = parts.der();
        let at = der.windows(2).position(|w| w == [0x04, 0x58]).unwrap();
        der.splice(at..at + 2, [0x04, 0x83, 0xff, 0xff, 0xff]);
        assert!(KeyFile::from_der(&der).is_err());

        let big = vec![0x30; MAX_FILE_LEN + 1];
        assert!(matches!(
            KeyFile::from_der(&big),
            Err(KeyFileError::TooLarge { .. })
        ));
        let text = format!("{}{PASSWORD}", " ".repeat(MAX_FILE_LEN));
        assert!(matches!(
            KeyFile::from_pem(&text),
            Err(KeyFileError::TooLarge { .. })
        ));

        let key = KeyFile {
            description: Some("x".repeat(MAX_DESCRIPTION_LEN + 1)),
            ..KeyFile::from_pem(PASSWORD).unwrap()
        };
        let der = TpmKeyDer {
            key_type: LOADABLE_KEY,
            empty_auth: Some(false),
            description: Some(Utf8StringRef::new(key.description.as_deref().unwrap()).unwrap()),
            parent: key.parent,
            pubkey: OctetStringRef::new(&key.public).unwrap(),
            privkey: OctetStringRef::new(&key.private).unwrap(),
        }
        .to_der()
        .unwrap();
        assert_malformed(KeyFile::from_der(&der), "description");
        assert!(key.to_der().is_err());
    }

    #[test]
    fn no_mutation_of_a_real_file_panics() {
        // Every byte set to a few telling values, then pseudo-random
        // multi-byte damage; each input must give Ok or Err, never panic.
        let original = der_of(RSA);
        for at in 0..original.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0xff] {
                let mut der = original.clone();
                der[at] = value;
                let _ = KeyFile::from_der(&der).map(|k| (k.tpm_public(), k.tpm_private()));
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut der = original.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % der.len() as u64) as usize;
                der[at] = next() as u8;
            }
            if next() % 4 == 0 {
                der.truncate((next() % der.len() as u64) as usize);
            }
            let _ = KeyFile::parse(&der).map(|k| (k.tpm_public(), k.tpm_private()));
        }
    }

    #[test]
    fn debug_shows_sizes_not_blobs() {
        let text = format!("{:?}", KeyFile::from_pem(PERSISTENT).unwrap());
        assert_eq!(
            text,
            "KeyFile { empty_auth: true, parent: 0x81000001, public: <88 bytes>, private: <128 bytes>, description: None }"
        );
    }
}
