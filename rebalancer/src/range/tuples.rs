//! Counts the tuples in a binary COPY stream as it passes, chunk by chunk,
//! without copying it: progress for the operator, and a check that the
//! target accepted every row the source sent.
//!
//! The format (PostgreSQL docs, "Binary Format"): an 11-byte signature and a
//! 32-bit flags field, a 32-bit header-extension length and that many bytes;
//! then per tuple a 16-bit field count (-1 ends the stream) and per field a
//! 32-bit length (-1 for NULL) followed by that many bytes. Integers are big
//! endian and may be split across chunks.

/// Signature and flags: skipped, not checked (the server wrote them).
const SIGNATURE_AND_FLAGS: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Skipping this many more bytes of the header, then its extension length.
    Header(u64),
    /// Reading the 32-bit header-extension length.
    ExtensionLength,
    /// Skipping this many more bytes of header extension.
    Extension(u64),
    /// Reading a tuple's 16-bit field count.
    FieldCount,
    /// Reading a field's 32-bit length; this many fields are left, this one
    /// included.
    FieldLength(u16),
    /// Skipping this many bytes of field data; then this many fields are left.
    FieldData(u64, u16),
    /// The trailer was read; nothing more is expected.
    Done,
}

/// A running count of the tuples in a binary COPY stream.
#[derive(Debug, Clone)]
pub(crate) struct TupleCounter {
    state: State,
    /// Bytes of a split integer read so far.
    partial: [u8; 4],
    have: usize,
    tuples: u64,
}

impl TupleCounter {
    pub(crate) fn new() -> TupleCounter {
        TupleCounter {
            state: State::Header(SIGNATURE_AND_FLAGS),
            partial: [0; 4],
            have: 0,
            tuples: 0,
        }
    }

    /// Complete tuples seen so far.
    pub(crate) fn tuples(&self) -> u64 {
        self.tuples
    }

    /// Whether the stream's trailer has been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Accounts for the next chunk of the stream.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Header(n) | State::Extension(n) => {
                    let skipped = skip(&mut data, n);
                    self.state = match (self.state, n - skipped) {
                        (State::Header(_), 0) => State::ExtensionLength,
                        (State::Header(_), left) => State::Header(left),
                        (_, 0) => State::FieldCount,
                        (_, left) => State::Extension(left),
                    };
                }
                State::ExtensionLength => {
                    if let Some(n) = self.int(&mut data, 4) {
                        let n = u64::try_from(n).unwrap_or(0);
                        self.state = if n == 0 {
                            State::FieldCount
                        } else {
                            State::Extension(n)
                        };
                    }
                }
                State::FieldCount => {
                    if let Some(n) = self.int(&mut data, 2) {
                        self.state = match u16::try_from(n) {
                            Err(_) => State::Done,
                            Ok(0) => self.tuple_done(),
                            Ok(fields) => State::FieldLength(fields),
                        };
                    }
                }
                State::FieldLength(fields) => {
                    if let Some(len) = self.int(&mut data, 4) {
                        self.state = match u64::try_from(len) {
                            // NULL: no data follows.
                            Err(_) => self.field_done(fields),
                            Ok(0) => self.field_done(fields),
                            Ok(len) => State::FieldData(len, fields),
                        };
                    }
                }
                State::FieldData(n, fields) => {
                    let left = n - skip(&mut data, n);
                    self.state = if left == 0 {
                        self.field_done(fields)
                    } else {
                        State::FieldData(left, fields)
                    };
                }
                State::Done => return,
            }
        }
    }

    fn field_done(&mut self, fields: u16) -> State {
        match fields.saturating_sub(1) {
            0 => self.tuple_done(),
            left => State::FieldLength(left),
        }
    }

    fn tuple_done(&mut self) -> State {
        self.tuples += 1;
        State::FieldCount
    }

    /// Reads a big-endian signed integer of `width` (2 or 4) bytes, which
    /// may arrive over several chunks; `None` until it is complete.
    fn int(&mut self, data: &mut &[u8], width: usize) -> Option<i32> {
        while self.have < width {
            let (first, rest) = data.split_first()?;
            if let Some(slot) = self.partial.get_mut(self.have) {
                *slot = *first;
            }
            self.have += 1;
            *data = rest;
        }
        self.have = 0;
        let [a, b, c, d] = self.partial;
        Some(if width == 2 {
            i32::from(i16::from_be_bytes([a, b]))
        } else {
            i32::from_be_bytes([a, b, c, d])
        })
    }
}

/// Skips up to `n` bytes of `data`; returns how many were skipped.
fn skip(data: &mut &[u8], n: u64) -> u64 {
    let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
    *data = data.get(k..).unwrap_or(&[]);
    k as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuple's fields; `None` is NULL.
    type Tuple<'a> = Vec<Option<&'a [u8]>>;

    /// A binary COPY stream of `tuples` (None = NULL field), with a header
    /// extension of `ext` bytes.
    fn stream(tuples: &[Tuple<'_>], ext: usize) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&(ext as i32).to_be_bytes());
        out.extend(std::iter::repeat_n(0xab, ext));
        for t in tuples {
            out.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for f in t {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn counts_tuples_however_the_stream_is_cut() {
        let big = vec![0xffu8; 70_000];
        let cases: Vec<(Vec<Tuple<'_>>, usize)> = vec![
            (vec![], 0),
            (vec![vec![Some(b"\x00\x00\x00\x01")]], 0),
            (vec![vec![None, Some(b"")], vec![Some(b"abc"), None]], 3),
            (vec![vec![]; 3], 0),
            (vec![vec![Some(&big), Some(b"\xff\xff")], vec![None; 5]], 0),
        ];
        for (tuples, ext) in cases {
            let bytes = stream(&tuples, ext);
            for chunk in [1, 2, 3, 5, 7, 4096, bytes.len()] {
                let mut counter = TupleCounter::new();
                for piece in bytes.chunks(chunk) {
                    counter.feed(piece);
                }
                assert_eq!(counter.tuples(), tuples.len() as u64, "chunk {chunk}");
                assert!(counter.is_done(), "chunk {chunk}");
            }
            let mut partial = TupleCounter::new();
            partial.feed(bytes.get(..bytes.len() - 2).unwrap());
            assert!(!partial.is_done());
        }
    }
}
