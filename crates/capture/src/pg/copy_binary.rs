//! PostgreSQL's binary `COPY` format (PostgreSQL docs, "COPY", "Binary Format") as far as the
//! direct copy needs it: cutting the stream of a `COPY .. TO STDOUT (FORMAT binary)` into
//! chunks of whole rows, each a complete `COPY` input of its own (header, rows, trailer), and
//! reading the key of a chunk's last row for the copy's progress. Values are not decoded
//! otherwise: the target reads them with the same types' receive functions.
//!
//! Layout: an 11-byte signature, a 32-bit flags field, a 32-bit header-extension length and
//! that many bytes; then per row a 16-bit field count and per field a 32-bit length (-1: null)
//! and that many bytes; then a 16-bit -1. All integers are big-endian.

/// The signature every binary `COPY` stream starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A header with no flags and no extension, for each chunk.
pub const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The end-of-data marker.
pub const TRAILER: &[u8; 2] = b"\xff\xff";

/// Why the stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyBinaryError {
    #[error("the stream does not start with the binary COPY signature")]
    Signature,
    #[error("a row has {found} fields, not {expected}")]
    Width { found: i64, expected: usize },
    #[error("a field has the negative length {0}")]
    Length(i32),
    #[error("data after the end-of-data marker")]
    AfterEnd,
    #[error("the stream ended inside {0}")]
    Truncated(&'static str),
    #[error("key column {column}: {problem}")]
    Key { column: usize, problem: String },
}

/// Whole rows taken from a [`Cutter`].
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// A complete binary `COPY` input: header, the rows, trailer.
    pub data: Vec<u8>,
    pub rows: u64,
    /// The values asked for of the last row (`None`: null).
    pub key: Vec<Option<Vec<u8>>>,
}

/// Cuts a binary `COPY` stream into whole rows as its bytes arrive.
#[derive(Debug)]
pub struct Cutter {
    width: usize,
    /// Bytes received and not yet handed out (the header is dropped once read).
    buf: Vec<u8>,
    /// `buf[..rows_end]` holds whole rows.
    rows_end: usize,
    rows: u64,
    /// Where the last whole row in `buf` starts.
    last_row: Option<usize>,
    header_read: bool,
    ended: bool,
}

impl Cutter {
    /// A cutter for rows of `width` fields.
    pub fn new(width: usize) -> Self {
        Cutter {
            width,
            buf: Vec::new(),
            rows_end: 0,
            rows: 0,
            last_row: None,
            header_read: false,
            ended: false,
        }
    }

    /// Takes more of the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), CopyBinaryError> {
        if self.ended && !bytes.is_empty() {
            return Err(CopyBinaryError::AfterEnd);
        }
        self.buf.extend_from_slice(bytes);
        self.scan()
    }

    /// Whole rows waiting, and their bytes.
    pub fn rows(&self) -> (u64, usize) {
        (self.rows, self.rows_end)
    }

    /// Whether the end-of-data marker was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The stream ended (the server finished the `COPY`): anything left over is an error.
    pub fn finish(&self) -> Result<(), CopyBinaryError> {
        if !self.header_read {
            return Err(CopyBinaryError::Truncated("the header"));
        }
        if self.rows_end != self.buf.len() || !self.ended {
            return Err(CopyBinaryError::Truncated("a row"));
        }
        Ok(())
    }

    /// The whole rows read so far as a complete `COPY` input (header, rows, trailer), with
    /// the values at `positions` of the last row; `None` when there are none.
    pub fn take(&mut self, positions: &[usize]) -> Result<Option<Taken>, CopyBinaryError> {
        let Some(last) = self.last_row else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(HEADER.len() + self.rows_end + TRAILER.len());
        data.extend_from_slice(HEADER);
        data.extend_from_slice(&self.buf[..self.rows_end]);
        data.extend_from_slice(TRAILER);
        let rows = self.rows;
        // The last row, copied out of `data` (its offset moves by the header).
        let last_at = HEADER.len() + last;
        let rest = self.buf.split_off(self.rows_end);
        self.buf = rest;
        self.rows_end = 0;
        self.rows = 0;
        self.last_row = None;
        let fields = fields(&data[last_at..data.len() - TRAILER.len()], self.width)?;
        let key = positions
            .iter()
            .map(|&i| fields.get(i).copied().flatten().map(<[u8]>::to_vec))
            .collect();
        Ok(Some(Taken { data, rows, key }))
    }

    fn scan(&mut self) -> Result<(), CopyBinaryError> {
        if !self.header_read {
            if self.buf.len() < HEADER.len() {
                return Ok(());
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyBinaryError::Signature);
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < HEADER.len() + ext {
                return Ok(());
            }
            self.buf.drain(..HEADER.len() + ext);
            self.header_read = true;
        }
        let mut at = self.rows_end;
        while !self.ended {
            let Some(count) = self.buf.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                // The trailer is not part of any chunk.
                if self.buf.len() > at + 2 {
                    return Err(CopyBinaryError::AfterEnd);
                }
                self.buf.truncate(at);
                break;
            }
            if usize::try_from(count).ok() != Some(self.width) {
                return Err(CopyBinaryError::Width {
                    found: i64::from(count),
                    expected: self.width,
                });
            }
            let Some(end) = row_end(&self.buf, at + 2, self.width)? else {
                break;
            };
            self.last_row = Some(at);
            self.rows += 1;
            at = end;
            self.rows_end = end;
        }
        Ok(())
    }
}

/// Where the row whose fields start at `at` ends, `None` if it is not complete yet.
fn row_end(buf: &[u8], mut at: usize, width: usize) -> Result<Option<usize>, CopyBinaryError> {
    for _ in 0..width {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| CopyBinaryError::Length(len))?;
        at += len;
        if at > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

/// The fields of one whole row (starting at its field count); `None` for nulls.
fn fields(row: &[u8], width: usize) -> Result<Vec<Option<&[u8]>>, CopyBinaryError> {
    let mut out = Vec::with_capacity(width);
    let mut at = 2;
    for _ in 0..width {
        let len = row
            .get(at..at + 4)
            .ok_or(CopyBinaryError::Truncated("a row"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| CopyBinaryError::Length(len))?;
        out.push(Some(
            row.get(at..at + len)
                .ok_or(CopyBinaryError::Truncated("a row"))?,
        ));
        at += len;
    }
    Ok(out)
}

/// Types whose binary form [`key_text`] turns into the text PostgreSQL prints for them:
/// int2, int4, int8, text, varchar, bpchar, name, uuid.
pub fn key_type_readable(type_oid: u32) -> bool {
    matches!(type_oid, 21 | 23 | 20 | 25 | 1043 | 1042 | 19 | 2950)
}

/// The text form of a key value of type `type_oid` (see [`key_type_readable`]) from its
/// binary form.
pub fn key_text(type_oid: u32, bytes: &[u8], column: usize) -> Result<String, CopyBinaryError> {
    let bad = |problem: &str| CopyBinaryError::Key {
        column,
        problem: problem.to_owned(),
    };
    match type_oid {
        21 => <[u8; 2]>::try_from(bytes)
            .map(|b| i16::from_be_bytes(b).to_string())
            .map_err(|_| bad("an int2 is not 2 bytes")),
        23 => <[u8; 4]>::try_from(bytes)
            .map(|b| i32::from_be_bytes(b).to_string())
            .map_err(|_| bad("an int4 is not 4 bytes")),
        20 => <[u8; 8]>::try_from(bytes)
            .map(|b| i64::from_be_bytes(b).to_string())
            .map_err(|_| bad("an int8 is not 8 bytes")),
        25 | 1043 | 1042 | 19 => String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8")),
        2950 => {
            let b = <[u8; 16]>::try_from(bytes).map_err(|_| bad("a uuid is not 16 bytes"))?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Ok(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        other => Err(bad(&format!(
            "type {other} has no readable binary key form"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A row of `fields` in binary COPY form.
    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    fn stream(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        for r in rows {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(TRAILER);
        out
    }

    #[test]
    fn cuts_whole_rows_whatever_the_pieces_and_makes_each_chunk_complete() {
        let rows: Vec<Vec<u8>> = (1..=5i64)
            .map(|i| row(&[Some(&i.to_be_bytes()), None, Some(b"x\ty")]))
            .collect();
        let all = stream(&rows);
        // Fed one byte at a time: rows are counted only when whole.
        let mut cutter = Cutter::new(3);
        for (n, b) in all.iter().enumerate() {
            cutter.push(std::slice::from_ref(b)).unwrap();
            if n == HEADER.len() + rows[0].len() + rows[1].len() - 1 {
                assert_eq!(cutter.rows().0, 2);
                let Taken {
                    data,
                    rows: count,
                    key,
                } = cutter.take(&[0, 2]).unwrap().unwrap();
                assert_eq!(count, 2);
                assert_eq!(data, stream(&rows[..2]));
                assert_eq!(
                    key,
                    [Some(2i64.to_be_bytes().to_vec()), Some(b"x\ty".to_vec())]
                );
            }
        }
        assert!(cutter.ended());
        cutter.finish().unwrap();
        let taken = cutter.take(&[0]).unwrap().unwrap();
        assert_eq!((taken.data, taken.rows), (stream(&rows[2..]), 3));
        assert!(cutter.take(&[0]).unwrap().is_none());
    }

    #[test]
    fn a_header_extension_is_skipped() {
        let mut all = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\x03abc".to_vec();
        all.extend_from_slice(&row(&[Some(b"k")]));
        all.extend_from_slice(TRAILER);
        let mut cutter = Cutter::new(1);
        cutter.push(&all).unwrap();
        let taken = cutter.take(&[0]).unwrap().unwrap();
        assert_eq!((taken.rows, taken.key), (1, vec![Some(b"k".to_vec())]));
    }

    #[test]
    fn bad_streams_are_named() {
        assert_eq!(
            Cutter::new(1).push(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"),
            Err(CopyBinaryError::Signature)
        );
        let mut wide = HEADER.to_vec();
        wide.extend_from_slice(&row(&[Some(b"a"), Some(b"b")]));
        assert_eq!(
            Cutter::new(1).push(&wide),
            Err(CopyBinaryError::Width {
                found: 2,
                expected: 1
            })
        );
        let mut cut = HEADER.to_vec();
        cut.extend_from_slice(&row(&[Some(b"abc")])[..5]);
        let mut cutter = Cutter::new(1);
        cutter.push(&cut).unwrap();
        assert_eq!(cutter.finish(), Err(CopyBinaryError::Truncated("a row")));
        let mut after = stream(&[row(&[Some(b"a")])]);
        after.push(0);
        assert_eq!(Cutter::new(1).push(&after), Err(CopyBinaryError::AfterEnd));
    }

    #[test]
    fn key_texts_are_what_postgresql_prints() {
        assert_eq!(key_text(21, &(-7i16).to_be_bytes(), 0).unwrap(), "-7");
        assert_eq!(key_text(23, &42i32.to_be_bytes(), 0).unwrap(), "42");
        assert_eq!(
            key_text(20, &i64::MIN.to_be_bytes(), 0).unwrap(),
            i64::MIN.to_string()
        );
        assert_eq!(key_text(25, "ä\tb".as_bytes(), 0).unwrap(), "ä\tb");
        let uuid = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            key_text(2950, &uuid, 0).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(
            key_text(23, &[1, 2], 3)
                .unwrap_err()
                .to_string()
                .contains("key column 3")
        );
        assert!(key_text(1700, &[0], 0).is_err());
        assert!(key_type_readable(20) && !key_type_readable(1700));
    }
}
