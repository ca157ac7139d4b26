//! The chunked transfer coding (RFC 9112 7.1), strictly: a size line of 1
//! to 16 hex digits ended by CRLF, extensions without control bytes, data
//! followed by CRLF, trailers skipped. `feed` finds a body's end without
//! decoding it (to relay it as it is); `decode` takes the payload out.

/// Finds the end of a chunked body without decoding it (`feed`), or
/// decodes it (`decode`).
/// Longest chunk extension accepted on one size line.
const MAX_EXT: u32 = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Default, Clone)]
pub(crate) struct ChunkedScan {
    state: Chunk,
    size: u64,
    /// Hex digits of the size line so far: at least one (RFC 9112 7.1),
    /// at most 16 (a longer size line is refused, leading zeros or not).
    digits: u8,
    /// Payload bytes seen (chunk data, no framing): what the access log
    /// counts.
    pub payload: u64,
    /// Bytes of chunk extensions on this line, and of trailers: both are
    /// capped (`MAX_EXT`, `MAX_TRAILERS`), as they cost work and count
    /// toward no body limit.
    ext: u32,
    trailers: u32,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// A step of decoding a chunked body.
pub(crate) enum Decoded {
    Data(bytes::Bytes),
    End,
    NeedMore,
}

impl ChunkedScan {
    /// Takes the next payload piece (or the end) off the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Decoded, ()> {
        use bytes::Buf;
        loop {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            if self.state == Chunk::Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            // Framing bytes, one at a time.
            let end = self.feed(&buf[..1])?;
            buf.advance(1);
            if end.is_some() {
                return Ok(Decoded::End);
            }
        }
    }

    /// Scans `data`; `Some(n)`: the body ends after `data[..n]`.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size >> 59 != 0 {
                            return Err(());
                        }
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(());
                        }
                        let d = (b as char).to_digit(16).ok_or(())?;
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Ext,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Ext => match b {
                    _ if self.ext >= MAX_EXT => return Err(()),
                    b'\r' => {
                        self.ext = 0;
                        self.state = Chunk::SizeLf;
                    }
                    // A bare LF (or any control byte) inside a chunk line
                    // is where parsers disagree: refused.
                    b'\t' => {}
                    0..=0x1f | 0x7f => return Err(()),
                    _ => self.ext += 1,
                },
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
                }
                Chunk::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.size -= n as u64;
                    self.payload += n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Size;
                    self.digits = 0;
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::TrailerLine
                    };
                }
                Chunk::TrailerLine => match b {
                    _ if self.trailers >= MAX_TRAILERS => return Err(()),
                    b'\r' => self.state = Chunk::TrailerLf,
                    b'\t' => {}
                    0..=0x1f | 0x7f => return Err(()),
                    _ => self.trailers += 1,
                },
                Chunk::TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::TrailerStart;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_end_is_found_across_pieces() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut scan = ChunkedScan::default();
            let (a, b) = body.split_at(split);
            let end = match scan.feed(a).unwrap() {
                Some(n) => n,
                None => split + scan.feed(b).unwrap().expect("end in second part"),
            };
            assert_eq!(&body[end..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"5\r\nhello\r\n;x=1\r\n",
            b"zz\r\n",
            b"1\r\nab\r\n",
            b"fffffffffffffffffff\r\n",
            b"000000000000000005\r\n",
            b" 5\r\n",
            b"0x5\r\n",
            b"-5\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"5;a\nb\r\n",
            b"0\r\nx: 1\nz\r\n",
            &[b"1;".as_slice(), &[b'e'; 5000]].concat(),
            &[b"0\r\nx: ".as_slice(), &[b'e'; 20000]].concat(),
        ] {
            assert!(
                ChunkedScan::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
