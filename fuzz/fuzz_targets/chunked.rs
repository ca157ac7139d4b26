//! The strict chunked scanner and decoder (`wire::ChunkedScan`): the same
//! bytes fed in arbitrary pieces and at once must give the same answer
//! (the end, or an error), and `decode` must agree with `feed`.
//!
//! Input: a count byte `c` (mod 8), `c` piece lengths, then the body.
#![no_main]

use bytes::BytesMut;
use gateway::fuzzing::{Chunked, DecodeStep};
use libfuzzer_sys::fuzz_target;

/// The body's pieces, as split by the control bytes.
fn pieces(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&c, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let c = usize::from(c % 8).min(rest.len());
    let (sizes, mut body) = rest.split_at(c);
    let whole = body;
    let mut out = Vec::new();
    for &s in sizes {
        let n = usize::from(s).min(body.len());
        let (a, b) = body.split_at(n);
        out.push(a);
        body = b;
    }
    out.push(body);
    (out, whole)
}

#[derive(Debug, PartialEq)]
enum Scanned {
    End(usize),
    More,
    Bad,
}

fuzz_target!(|data: &[u8]| {
    let (parts, body) = pieces(data);

    // At once.
    let mut once = Chunked::new();
    let at_once = match once.feed(body) {
        Ok(Some(n)) => {
            assert!(n > 0 && n <= body.len());
            Scanned::End(n)
        }
        Ok(None) => Scanned::More,
        Err(()) => Scanned::Bad,
    };

    // In pieces.
    let mut scan = Chunked::new();
    let mut offset = 0;
    let mut in_pieces = Scanned::More;
    for p in &parts {
        match scan.feed(p) {
            Ok(Some(n)) => {
                assert!(n <= p.len());
                in_pieces = Scanned::End(offset + n);
                break;
            }
            Ok(None) => offset += p.len(),
            Err(()) => {
                in_pieces = Scanned::Bad;
                break;
            }
        }
    }
    assert_eq!(at_once, in_pieces, "pieces {parts:?}");
    assert_eq!(once.payload(), scan.payload());

    // Decoded, the pieces arriving one by one as reads would.
    let mut dec = Chunked::new();
    let mut buf = BytesMut::new();
    let mut payload = Vec::new();
    let mut fed = 0;
    let mut decoded = Scanned::More;
    'outer: for p in &parts {
        buf.extend_from_slice(p);
        fed += p.len();
        loop {
            match dec.decode(&mut buf) {
                Ok(DecodeStep::Data(b)) => {
                    assert!(!b.is_empty());
                    payload.extend_from_slice(&b);
                }
                Ok(DecodeStep::End) => {
                    decoded = Scanned::End(fed - buf.len());
                    break 'outer;
                }
                Ok(DecodeStep::NeedMore) => break,
                Err(()) => {
                    decoded = Scanned::Bad;
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(at_once, decoded, "decode disagrees with feed");
    if let Scanned::End(n) = decoded {
        // What is left after the end is the next message's, untouched.
        let mut after = buf.to_vec();
        let mut seen = 0;
        for p in &parts {
            let start = seen;
            seen += p.len();
            if start >= fed {
                after.extend_from_slice(p);
            }
        }
        assert_eq!(&after[..], &body[n..]);
        assert_eq!(payload.len() as u64, once.payload());
    }
});
