//! zstd and gzip, as named by HTTP `Content-Encoding`. Decompression stops at a caller's limit
//! so that a small malicious payload cannot expand into gigabytes.

use std::io::{Read, Write};

use super::DecodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

impl Encoding {
    /// Parses a `Content-Encoding` header value.
    pub fn from_header(value: &str) -> Option<Encoding> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Encoding::Identity),
            "zstd" => Some(Encoding::Zstd),
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }
}

pub fn compress(data: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Identity => data.to_vec(),
        // Writing into a Vec cannot fail; level 3 is zstd's default speed/ratio balance.
        Encoding::Zstd => zstd::bulk::compress(data, 3)
            .unwrap_or_else(|e| unreachable!("zstd into memory failed: {e}")),
        Encoding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(data)
                .and_then(|()| enc.finish())
                .unwrap_or_else(|e| unreachable!("gzip into memory failed: {e}"))
        }
    }
}

/// Decompresses `data`, failing with [`DecodeError::TooLarge`] past `limit` bytes of output.
pub fn decompress(data: &[u8], encoding: Encoding, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let err = |e: std::io::Error| DecodeError::Compression {
        encoding: encoding.as_str(),
        message: e.to_string(),
    };
    let mut out = Vec::new();
    let read = match encoding {
        Encoding::Identity => {
            if data.len() > limit {
                return Err(DecodeError::TooLarge {
                    encoding: "identity",
                    limit,
                });
            }
            return Ok(data.to_vec());
        }
        Encoding::Zstd => zstd::stream::read::Decoder::new(data)
            .map_err(err)?
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Encoding::Gzip => flate2::read::GzDecoder::new(data)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
    };
    read.map_err(err)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge {
            encoding: encoding.as_str(),
            limit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            for enc in [Encoding::Identity, Encoding::Zstd, Encoding::Gzip] {
                prop_assert_eq!(decompress(&compress(&data, enc), enc, 4096).unwrap(), data.clone());
            }
        }

        #[test]
        fn garbage_is_an_error(data in proptest::collection::vec(any::<u8>(), 1..256)) {
            for enc in [Encoding::Zstd, Encoding::Gzip] {
                let _ = decompress(&data, enc, 1 << 20);
            }
        }
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        for enc in [Encoding::Zstd, Encoding::Gzip] {
            let packed = compress(&zeros, enc);
            assert!(packed.len() < 64 << 10);
            let err = decompress(&packed, enc, 1 << 20).unwrap_err();
            assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        }
    }

    #[test]
    fn wrong_encoding_is_named() {
        let err = decompress(b"not zstd at all", Encoding::Zstd, 100).unwrap_err();
        assert!(err.to_string().starts_with("zstd payload:"), "{err}");
        assert_eq!(Encoding::from_header("GZIP"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header("br"), None);
    }
}
