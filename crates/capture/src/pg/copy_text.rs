//! Reading PostgreSQL's `COPY` text format (PostgreSQL docs, "COPY", "Text Format") as far as
//! the direct copy needs it: counting rows and taking the key of the last row of a chunk, so
//! the copy's progress can be stored without decoding any other value.
//!
//! A row is one line ending in `\n`; values are separated by `\t`; `\N` is null; a backslash
//! escapes the next character, with `\b \f \n \r \t \v`, octal `\ooo` and hex `\xhh` standing
//! for bytes. Data never holds a raw newline or tab inside a value.

/// The number of rows in `data` (complete lines).
pub fn count_rows(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyTextError {
    #[error("no complete row")]
    NoRow,
    #[error("the row has {found} values, not {expected}")]
    Width { found: usize, expected: usize },
    #[error("value {0} is not UTF-8 text")]
    NotUtf8(usize),
}

/// The values at `positions` of the last complete line of `data`, unescaped; `None` for a
/// null. `width` is the number of values a line must hold.
pub fn last_row_values(
    data: &[u8],
    width: usize,
    positions: &[usize],
) -> Result<Vec<Option<String>>, CopyTextError> {
    let body = data.strip_suffix(b"\n").ok_or(CopyTextError::NoRow)?;
    let start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let fields: Vec<&[u8]> = body[start..].split(|&b| b == b'\t').collect();
    if fields.len() != width {
        return Err(CopyTextError::Width {
            found: fields.len(),
            expected: width,
        });
    }
    positions
        .iter()
        .map(|&i| {
            let field = fields[i];
            if field == b"\\N" {
                return Ok(None);
            }
            String::from_utf8(unescape(field))
                .map(Some)
                .map_err(|_| CopyTextError::NotUtf8(i))
        })
        .collect()
}

/// The bytes a text-format value stands for.
pub(crate) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' || i >= field.len() {
            out.push(b);
            continue;
        }
        let c = field[i];
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_lines() {
        assert_eq!(count_rows(b""), 0);
        assert_eq!(count_rows(b"1\ta\n2\tb\n"), 2);
    }

    #[test]
    fn takes_the_key_of_the_last_line() {
        let data = b"1\tx\tone\n22\t\\N\ttwo\\tand\\\\three\\nfour\n";
        assert_eq!(
            last_row_values(data, 3, &[0, 2]).unwrap(),
            [Some("22".into()), Some("two\tand\\three\nfour".into())]
        );
        assert_eq!(last_row_values(data, 3, &[1]).unwrap(), [None]);
        // One line only.
        assert_eq!(
            last_row_values(b"7\ta\n", 2, &[0]).unwrap(),
            [Some("7".into())]
        );
    }

    #[test]
    fn octal_hex_and_other_escapes() {
        assert_eq!(unescape(b"a\\101\\x42\\x4a\\7z"), b"aABJ\x07z");
        assert_eq!(unescape(b"\\b\\f\\r\\v\\q\\"), b"\x08\x0c\r\x0bq\\");
        // `\x` without a hex digit is an `x`.
        assert_eq!(unescape(b"\\xg"), b"xg");
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(last_row_values(b"1\t2", 2, &[0]), Err(CopyTextError::NoRow));
        assert_eq!(
            last_row_values(b"1\t2\t3\n", 2, &[0]),
            Err(CopyTextError::Width {
                found: 3,
                expected: 2
            })
        );
        assert_eq!(
            last_row_values(b"\\377\n", 1, &[0]),
            Err(CopyTextError::NotUtf8(0))
        );
    }
}
