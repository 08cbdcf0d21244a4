//! The one grammar of device ids, shared by everything that names a device:
//! a batch's ids ([`crate::Batch::new`]), a single-device command's `aud`
//! ([`crate::Claims::validate`]) and a device's own id (`keybridge-device
//! trust init --device-id`).
//!
//! A device id is 1 to [`MAX_DEVICE_ID_LEN`] bytes of UTF-8 with no control
//! character (`char::is_control`, so no NUL, no newline), no `/`, and is
//! neither `.` nor `..`: it can be printed on one line, used as a file name
//! and compared byte for byte, and it never names a folder.

/// Longest device id, in bytes of UTF-8.
pub const MAX_DEVICE_ID_LEN: usize = 256;

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The empty string.
    #[error("a device id must not be empty")]
    Empty,
    /// Longer than [`MAX_DEVICE_ID_LEN`] bytes.
    #[error("a device id is at most {max} bytes of UTF-8, this one is {len}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_DEVICE_ID_LEN`].
        max: usize,
    },
    /// A control character (NUL, newline, escape…).
    #[error("a device id must not contain control characters (found U+{code:04X} at byte {at})")]
    ControlCharacter {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// A `/`.
    #[error("a device id must not contain '/' (found at byte {0})")]
    Slash(usize),
    /// `.` or `..`.
    #[error("a device id must not be \".\" or \"..\"")]
    DotName,
}

/// Checks `id` against the device-id grammar (see the module docs).
pub fn check_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong {
            len: id.len(),
            max: MAX_DEVICE_ID_LEN,
        });
    }
    if id == "." || id == ".." {
        return Err(DeviceIdError::DotName);
    }
    for (at, c) in id.char_indices() {
        if c.is_control() {
            return Err(DeviceIdError::ControlCharacter { code: c.into(), at });
        }
        if c == '/' {
            return Err(DeviceIdError::Slash(at));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_accepted() {
        for id in [
            "dev-1",
            "a",
            "gerät-ü",
            "Zebra 2",
            "...",
            ".hidden",
            "a..b",
            "host.example.com",
            "日本",
            "back\\slash",
        ] {
            assert_eq!(check_device_id(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn length_is_1_to_256_bytes_of_utf8() {
        assert_eq!(check_device_id(""), Err(DeviceIdError::Empty));
        assert_eq!(check_device_id(&"x".repeat(256)), Ok(()));
        assert_eq!(
            check_device_id(&"x".repeat(257)),
            Err(DeviceIdError::TooLong { len: 257, max: 256 })
        );
        // Bytes, not characters: 86 three-byte characters are 258 bytes.
        assert_eq!(check_device_id(&"日".repeat(85)), Ok(()));
        assert_eq!(
            check_device_id(&"日".repeat(86)),
            Err(DeviceIdError::TooLong { len: 258, max: 256 })
        );
    }

    #[test]
    fn control_characters_are_refused() {
        for (id, code, at) in [
            ("a\0b", 0, 1),
            ("\n", 0x0a, 0),
            ("dev\r", 0x0d, 3),
            ("x\u{1b}[31m", 0x1b, 1),
            ("é\u{7f}", 0x7f, 2),
            ("\u{85}", 0x85, 0),
        ] {
            assert_eq!(
                check_device_id(id),
                Err(DeviceIdError::ControlCharacter { code, at }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn slashes_and_dot_names_are_refused() {
        assert_eq!(check_device_id("a/b"), Err(DeviceIdError::Slash(1)));
        assert_eq!(check_device_id("/"), Err(DeviceIdError::Slash(0)));
        assert_eq!(check_device_id("../etc"), Err(DeviceIdError::Slash(2)));
        assert_eq!(check_device_id("."), Err(DeviceIdError::DotName));
        assert_eq!(check_device_id(".."), Err(DeviceIdError::DotName));
    }
}
