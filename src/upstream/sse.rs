//! Incremental Server-Sent Events parser: bytes in as they arrive from the network (events may
//! split anywhere, lines end in `\n`, `\r\n` or `\r`), complete events' `data` out. Comments
//! and fields other than `data` and `event` are skipped; an event's name (`event:`) is kept
//! beside its data ([`SseParser::event_name`]) for the endpoints whose events are named (the
//! Responses API, Anthropic's Messages), and [`named_frame`] writes such an event out again.
//! Chat reads the data alone. A single-line `data` is returned as a slice of the read buffer,
//! without copying.

use bytes::{Buf, Bytes, BytesMut};

/// Largest event (or unfinished line) the parser holds: far above any real chunk.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct SseParser {
    /// Whether the stream's first bytes (and a possible byte order mark) were seen.
    started: bool,
    buf: BytesMut,
    /// How far `buf` was already searched for a line end.
    scanned: usize,
    /// Data lines of the event being assembled.
    data: Option<Bytes>,
    joined: Option<BytesMut>,
    /// The `event:` name of the event being assembled, and of the last one returned.
    name: Option<Bytes>,
    last_name: Option<Bytes>,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if !self.started && self.buf.len() >= 3 {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.advance(3); // a UTF-8 byte order mark is not part of the first field
            }
        }
    }

    /// True when more than [`MAX_PENDING`] bytes wait without completing a line or event: an
    /// upstream that never ends its lines must not grow the gateway's memory without bound.
    pub fn overflowed(&self) -> bool {
        self.buf.len()
            + self.data.as_ref().map_or(0, Bytes::len)
            + self.joined.as_ref().map_or(0, BytesMut::len)
            > MAX_PENDING
    }

    /// Bytes received but not yet part of a complete event (to tell a clean end from a cut).
    #[cfg(test)]
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.data.is_some()
    }

    /// The next complete event's data, if one is complete.
    pub fn next_event(&mut self) -> Option<Bytes> {
        while let Some(line) = self.next_line() {
            if line.is_empty() {
                if let Some(joined) = self.joined.take() {
                    self.data = None;
                    self.last_name = self.name.take();
                    return Some(joined.freeze());
                }
                if let Some(data) = self.data.take() {
                    self.last_name = self.name.take();
                    return Some(data);
                }
                self.name = None;
                continue; // blank line with no data: nothing to dispatch
            }
            if line[0] == b':' {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let skip = if line.get(colon + 1) == Some(&b' ') {
                        2
                    } else {
                        1
                    };
                    (&line[..colon], line.slice(colon + skip..))
                }
                None => (&line[..], Bytes::new()),
            };
            if field == b"event" {
                self.name = Some(value);
                continue;
            }
            if field != b"data" {
                continue;
            }
            match (&mut self.joined, self.data.take()) {
                (Some(joined), _) => {
                    joined.extend_from_slice(b"\n");
                    joined.extend_from_slice(&value);
                }
                (None, None) => self.data = Some(value),
                (None, Some(first)) => {
                    let mut joined = BytesMut::with_capacity(first.len() + value.len() + 1);
                    joined.extend_from_slice(&first);
                    joined.extend_from_slice(b"\n");
                    joined.extend_from_slice(&value);
                    self.joined = Some(joined);
                }
            }
        }
        None
    }

    /// The `event:` name of the event [`SseParser::next_event`] returned last, if it had one.
    pub fn event_name(&self) -> Option<&Bytes> {
        self.last_name.as_ref()
    }

    fn next_line(&mut self) -> Option<Bytes> {
        let found = memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]);
        let Some(offset) = found else {
            self.scanned = self.buf.len();
            return None;
        };
        let pos = self.scanned + offset;
        let terminator = if self.buf[pos] == b'\r' {
            match self.buf.get(pos + 1) {
                Some(b'\n') => 2,
                Some(_) => 1,
                None => {
                    // A `\r` at the end of what arrived may be half of `\r\n`: wait.
                    self.scanned = pos;
                    return None;
                }
            }
        } else {
            1
        };
        let line = self.buf.split_to(pos).freeze();
        self.buf.advance(terminator);
        self.scanned = 0;
        Some(line)
    }
}

/// An event as it goes out again: `event: <name>` (when it had one), then its data, a `data:`
/// line for each of its lines, then the blank line.
pub fn named_frame(name: Option<&[u8]>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name);
        out.extend_from_slice(b"\n");
    }
    put_data(&mut out, data);
    out.freeze()
}

/// An event's data and its closing blank line: a `data:` line for each of its lines. Lines are
/// found with memchr: nearly every event is one line, and a byte-by-byte split of it was the
/// larger part of framing it.
pub fn put_data(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    let mut rest = data;
    while let Some(at) = memchr::memchr(b'\n', rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\ndata: ");
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parser: &mut SseParser) -> Vec<String> {
        std::iter::from_fn(|| parser.next_event())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn events_split_at_every_byte() {
        let input =
            b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\nevent: x\ndata: [DONE]\n\n";
        for split in 0..input.len() {
            let mut p = SseParser::new();
            let mut got = Vec::new();
            p.push(&input[..split]);
            got.extend(all(&mut p));
            p.push(&input[split..]);
            got.extend(all(&mut p));
            assert_eq!(
                got,
                ["{\"a\":1}", "{\"b\":2}", "[DONE]"],
                "split at {split}"
            );
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn byte_by_byte_with_multiline_data_and_cr_endings() {
        let input = b"data: line1\rdata: line2\r\rdata:no-space\n\nid: 7\nretry: 10\n\n";
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input {
            p.push(&[*b]);
            got.extend(all(&mut p));
        }
        assert_eq!(got, ["line1\nline2", "no-space"]);
    }

    #[test]
    fn event_names_are_kept_beside_the_data() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\ndata: plain\n\nevent: ping\r\ndata: x\r\ndata: y\r\n\r\n";
        let mut p = SseParser::new();
        p.push(input);
        let mut got = Vec::new();
        while let Some(data) = p.next_event() {
            got.push(named_frame(p.event_name().map(|n| &n[..]), &data));
        }
        assert_eq!(
            got,
            [
                &b"event: message_start\ndata: {\"a\":1}\n\n"[..],
                b"data: plain\n\n",
                b"event: ping\ndata: x\ndata: y\n\n"
            ]
        );
    }

    #[test]
    fn frames_keep_every_line() {
        let frame = |data: &[u8]| named_frame(None, data);
        assert_eq!(&frame(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&frame(b"one\ntwo")[..], b"data: one\ndata: two\n\n");
        assert_eq!(
            &frame(b"a\n\nb\n")[..],
            b"data: a\ndata: \ndata: b\ndata: \n\n"
        );
        assert_eq!(&frame(b"")[..], b"data: \n\n");
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let mut p = SseParser::new();
        p.push(b"\xEF\xBB");
        p.push(b"\xBFdata: x\n\n");
        assert_eq!(all(&mut p), ["x"]);
    }

    #[test]
    fn endless_line_overflows() {
        let mut p = SseParser::new();
        let block = vec![b'a'; 1024 * 1024];
        for _ in 0..16 {
            p.push(&block);
            assert!(p.next_event().is_none());
        }
        assert!(!p.overflowed());
        p.push(b"a");
        assert!(p.overflowed());
    }

    #[test]
    fn incomplete_event_is_partial() {
        let mut p = SseParser::new();
        p.push(b"data: {\"a\"");
        assert!(p.next_event().is_none());
        assert!(p.has_partial());
        p.push(b":1}\n");
        assert!(p.next_event().is_none());
        assert!(p.has_partial());
    }
}
