//! The BER-TLV subset PIV speaks (SP 800-73-4 part 2, §3): tags of one to
//! three bytes (`5C`, `7F49`, `5FC109`), lengths short or `81 xx` / `82 xx xx`.
//!
//! Hand-written on purpose: it is a few lines, and a general BER crate would
//! accept (and make us handle) forms no PIV host sends.

/// One parsed TLV: its tag bytes and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub tag: &'a [u8],
    pub value: &'a [u8],
}

/// Parses all TLVs in `data`; `None` if it is malformed.
pub(crate) fn parse_all(mut data: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (tlv, rest) = parse_one(data)?;
        out.push(tlv);
        data = rest;
    }
    Some(out)
}

/// Parses one TLV at the start of `data`; returns it and the rest.
pub(crate) fn parse_one(data: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let first = *data.first()?;
    // Multi-byte tags: low five bits all set, then bytes while bit 8 is set.
    let mut tag_len = 1;
    if first & 0x1f == 0x1f {
        loop {
            let b = *data.get(tag_len)?;
            tag_len += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let (tag, rest) = data.split_at(tag_len);
    let (len, rest) = match *rest.first()? {
        n if n < 0x80 => (usize::from(n), &rest[1..]),
        0x81 => (usize::from(*rest.get(1)?), &rest[2..]),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?])),
            &rest[3..],
        ),
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((Tlv { tag, value }, rest))
}

/// Finds the value of the first TLV tagged `tag` in `tlvs`.
pub(crate) fn find<'a>(tlvs: &[Tlv<'a>], tag: &[u8]) -> Option<&'a [u8]> {
    tlvs.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Encodes one TLV.
pub(crate) fn encode(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 3 + value.len());
    out.extend_from_slice(tag);
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => {
            let n = u16::try_from(n).expect("PIV objects are shorter than 64 KiB");
            out.push(0x82);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tags_and_lengths_round_trip() {
        let big = vec![7u8; 300];
        let mut data = encode(&[0x5f, 0xc1, 0x09], &big);
        data.extend(encode(&[0x7f, 0x49], &[1, 2]));
        data.extend(encode(&[0x53], &[9; 0x90]));
        let tlvs = parse_all(&data).unwrap();
        assert_eq!(tlvs.len(), 3);
        assert_eq!(tlvs[0].tag, [0x5f, 0xc1, 0x09]);
        assert_eq!(tlvs[0].value, &big[..]);
        assert_eq!(find(&tlvs, &[0x7f, 0x49]), Some(&[1u8, 2][..]));
        assert_eq!(tlvs[2].value.len(), 0x90);
    }

    #[test]
    fn truncated_input_is_refused() {
        assert!(parse_all(&[0x53, 0x05, 1, 2]).is_none());
        assert!(parse_all(&[0x5f, 0xc1]).is_none());
        assert!(parse_all(&[0x53, 0x83, 0, 0, 1]).is_none());
    }
}
