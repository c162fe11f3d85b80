//! Incremental decoder for chunked request bodies (RFC 9112 §7.1): chunk sizes with optional
//! extensions, data, the last chunk, trailer fields. Fed whatever bytes have arrived; it keeps
//! its place between calls, so no byte is parsed twice. Line endings must be CRLF: tolerating
//! bare LF is where front proxies and servers disagree, which is how requests get smuggled.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ChunkError {
    #[error("chunk size is not hexadecimal")]
    BadSize,
    #[error("chunk size does not fit 64 bits")]
    SizeOverflow,
    #[error("chunk size line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("control character in a chunk extension or trailer")]
    BadLine,
    #[error("expected CRLF")]
    MissingCrlf,
    #[error("trailer fields longer than {limit} bytes")]
    TrailersTooLarge { limit: usize },
    #[error("decoded body larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Longest size line we accept; extensions are ignored, so a long one is only a cost.
const MAX_SIZE_LINE_BYTES: usize = 4096;
/// Sixteen hex digits already reach `u64::MAX`.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size,
    /// After the digits: whitespace and `;name=value` extensions up to CR.
    Extension,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    line_bytes: usize,
    remaining: u64,
    trailer_bytes: usize,
    max_body_bytes: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new(max_body_bytes: usize, max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line_bytes: 0,
            remaining: 0,
            trailer_bytes: 0,
            max_body_bytes,
            max_trailer_bytes,
        }
    }

    /// Decodes from `input`, appending chunk data to `body`. Returns how many bytes of `input`
    /// were used and whether the body is complete; bytes after the end are left unused (they
    /// are the next pipelined request).
    pub(crate) fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), ChunkError> {
        let mut at = 0;
        while at < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let available = (input.len() - at) as u64;
                let take = self.remaining.min(available) as usize;
                if body.len() + take > self.max_body_bytes {
                    return Err(ChunkError::TooLarge { limit: self.max_body_bytes });
                }
                body.extend_from_slice(&input[at..at + take]);
                at += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(input[at])?;
            at += 1;
        }
        Ok((at, self.state == State::Done))
    }

    /// One framing byte (everything but chunk data).
    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size | State::Extension => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_SIZE_LINE_BYTES {
                    return Err(ChunkError::LineTooLong { limit: MAX_SIZE_LINE_BYTES });
                }
                if self.state == State::Size {
                    if let Some(value) = hex_value(byte) {
                        self.digits += 1;
                        if self.digits > MAX_SIZE_DIGITS {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | u64::from(value);
                        return Ok(());
                    }
                    if self.digits == 0 {
                        return Err(ChunkError::BadSize);
                    }
                }
                match byte {
                    b'\r' => self.state = State::SizeLf,
                    b';' | b' ' | b'\t' => self.state = State::Extension,
                    _ if self.state == State::Extension && is_line_byte(byte) => {}
                    _ if self.state == State::Extension => return Err(ChunkError::BadLine),
                    _ => return Err(ChunkError::BadSize),
                }
            }
            State::SizeLf => {
                expect_lf(byte)?;
                self.remaining = self.size;
                self.state = if self.size == 0 { State::TrailerStart } else { State::Data };
                self.size = 0;
                self.digits = 0;
                self.line_bytes = 0;
            }
            State::DataCr => {
                if byte != b'\r' {
                    return Err(ChunkError::MissingCrlf);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                expect_lf(byte)?;
                self.state = State::Size;
            }
            State::TrailerStart | State::TrailerLine => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_trailer_bytes {
                    return Err(ChunkError::TrailersTooLarge { limit: self.max_trailer_bytes });
                }
                match byte {
                    b'\r' if self.state == State::TrailerStart => self.state = State::FinalLf,
                    b'\r' => self.state = State::TrailerLf,
                    _ if is_line_byte(byte) => self.state = State::TrailerLine,
                    _ => return Err(ChunkError::BadLine),
                }
            }
            State::TrailerLf => {
                expect_lf(byte)?;
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                expect_lf(byte)?;
                self.state = State::Done;
            }
            State::Data | State::Done => unreachable!("data and done are handled by decode"),
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Visible characters, space, tab and obs-text; no CR, LF or other controls.
fn is_line_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= b' ' && byte != 0x7f)
}

fn expect_lf(byte: u8) -> Result<(), ChunkError> {
    if byte == b'\n' {
        Ok(())
    } else {
        Err(ChunkError::MissingCrlf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new(1 << 20, 1024);
        let mut body = Vec::new();
        let (used, done) = decoder.decode(input, &mut body)?;
        assert!(done, "body should be complete");
        Ok((body, used))
    }

    const EXAMPLE: &[u8] =
        b"4;name=value\r\nWiki\r\n5 ; ext\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\nNEXT";

    #[test]
    fn decodes_extensions_and_trailers_and_stops_at_the_end() {
        let (body, used) = decode_all(EXAMPLE).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&EXAMPLE[used..], b"NEXT");
    }

    /// Every split point of the input must decode to the same body: the decoder keeps its place
    /// across calls, whatever the packet boundaries.
    #[test]
    fn any_split_gives_the_same_body() {
        let end = EXAMPLE.len() - 4;
        for split in 0..=end {
            let mut decoder = ChunkedDecoder::new(1 << 20, 1024);
            let mut body = Vec::new();
            let (first, done) = decoder.decode(&EXAMPLE[..split], &mut body).unwrap();
            assert_eq!(first, split);
            assert!(!done || split == end);
            let (second, done) = decoder.decode(&EXAMPLE[split..], &mut body).unwrap();
            assert!(done);
            assert_eq!(split + second, end, "split at {split}");
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        }
    }

    #[test]
    fn rejects_malformed_framing() {
        let cases: [(&[u8], ChunkError); 7] = [
            (b"x\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"4\nWiki\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"4\r\nWikiX\r\n", ChunkError::MissingCrlf),
            (b"4\r\nWiki\n0\r\n\r\n", ChunkError::MissingCrlf),
            (b"11111111111111111\r\n", ChunkError::SizeOverflow),
            (b"1;a\x01b\r\n", ChunkError::BadLine),
        ];
        for (input, expected) in cases {
            let mut decoder = ChunkedDecoder::new(1 << 20, 1024);
            let got = decoder.decode(input, &mut Vec::new()).unwrap_err();
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn enforces_the_body_and_trailer_limits() {
        let mut decoder = ChunkedDecoder::new(3, 1024);
        let err = decoder.decode(b"4\r\nWiki\r\n0\r\n\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(err, ChunkError::TooLarge { limit: 3 });
        let mut decoder = ChunkedDecoder::new(100, 8);
        let err = decoder.decode(b"0\r\nLong-Trailer: value\r\n\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(err, ChunkError::TrailersTooLarge { limit: 8 });
        let long_extension = format!("1;{}\r\n", "a".repeat(MAX_SIZE_LINE_BYTES));
        let mut decoder = ChunkedDecoder::new(100, 8);
        let err = decoder.decode(long_extension.as_bytes(), &mut Vec::new()).unwrap_err();
        assert_eq!(err, ChunkError::LineTooLong { limit: MAX_SIZE_LINE_BYTES });
    }
}
