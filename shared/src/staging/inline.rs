//! The checks of inline content (`kimi_upload_bytes`): the client's file name reduced to its
//! last component, and the size checked from the length of the base64 text before anything is
//! decoded or written.

use bytes::Bytes;

use super::StagingError;

/// A client's file name reduced to its last component (after `/` or `\\`); empty, `.`, `..`
/// and names with control characters are refused.
pub fn plain_filename(raw: &str) -> Result<String, StagingError> {
    let name = raw.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(char::is_control) {
        return Err(StagingError::InvalidName(raw.escape_default().to_string()));
    }
    Ok(name.to_owned())
}

/// Decodes the inline content of `name` (standard base64, surrounding whitespace ignored). The
/// size is checked first, from the length of the text (3 bytes per 4 characters), so content
/// over `max_bytes` is refused without being decoded; empty content is refused too.
pub fn decode_inline(name: &str, encoded: &str, max_bytes: u64) -> Result<Bytes, StagingError> {
    use base64::Engine as _;
    let encoded = encoded.trim();
    let padding = encoded
        .bytes()
        .rev()
        .take_while(|b| *b == b'=')
        .count()
        .min(2) as u64;
    let decoded_len = (encoded.len() as u64).div_ceil(4) * 3 - padding;
    if decoded_len > max_bytes {
        return Err(StagingError::TooLarge {
            name: name.to_owned(),
            size: decoded_len,
            limit: max_bytes,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| StagingError::InvalidBase64(e.to_string()))?;
    if bytes.is_empty() {
        return Err(StagingError::Empty {
            name: name.to_owned(),
        });
    }
    Ok(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_file_names_keep_only_their_last_component() {
        assert_eq!(plain_filename("a.txt").unwrap(), "a.txt");
        assert_eq!(plain_filename("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(plain_filename("C:\\x\\y.pdf").unwrap(), "y.pdf");
        assert!(plain_filename("dir/").is_err());
        assert!(plain_filename("..").is_err());
        assert!(plain_filename("a\nb").is_err());
    }

    #[test]
    fn inline_content_is_bounded_before_it_is_decoded() {
        assert_eq!(&decode_inline("a", "aGVsbG8=", 5).unwrap()[..], b"hello");
        assert_eq!(&decode_inline("a", " aGk= ", 2).unwrap()[..], b"hi");
        assert!(matches!(
            decode_inline("a", "aGVsbG8=", 4),
            Err(StagingError::TooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        // Far over the limit and not even base64: refused for its size, never decoded.
        assert!(matches!(
            decode_inline("a", &"!".repeat(4000), 100),
            Err(StagingError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_inline("a", "not base64!", 100),
            Err(StagingError::InvalidBase64(_))
        ));
        assert!(matches!(
            decode_inline("a", "", 100),
            Err(StagingError::Empty { .. })
        ));
    }
}
