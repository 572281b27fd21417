//! The quick reading of an upstream answer: one pass over JSON of the plain shape upstreams
//! send, straight into the same views as serde_json's reading, for a fraction of its cost
//! (most of a gRPC stream's transcoding is reading its chunks' JSON).
//!
//! It never errs and never guesses. On whatever it is not sure to read exactly as serde_json
//! would (a lone surrogate escape, an integer of more than 18 digits, a number serde_json
//! refuses, nesting deeper than [`MAX_DEPTH`], anything that is not JSON), it declines,
//! and serde_json reads the whole text as before: every answer it gives is serde_json's, and
//! every error is serde_json's own (the tests hold the two readings to the same bytes on the
//! corpus and on every one-byte change of it).

use std::borrow::Cow;
use std::collections::BTreeMap;

use prost_types::value::Kind;

use super::{kind, named_finish_reason, pb, FromObject, Text, Values};
use crate::chat::{unicode_escape, UnicodeEscape};

/// The deepest nesting read here; deeper is for serde_json (and its recursion limit).
const MAX_DEPTH: u32 = 64;

/// The message in `text`, a JSON object and nothing after it but whitespace; `None` when the
/// quick reading declines.
pub(super) fn read<'de, T: FromObject<'de>>(text: &'de str) -> Option<T> {
    let mut reader = Reader {
        text,
        at: 0,
        depth: 0,
    };
    reader.ws();
    if reader.peek().ok()? != b'{' {
        return None;
    }
    let mut message = T::default();
    reader.object_into(&mut message).ok()?;
    reader.ws();
    (reader.at == reader.text.len()).then_some(message)
}

/// A number, as serde_json reads it.
enum Number {
    Int(i64),
    Float(f64),
}

/// Why the quick reading stopped: serde_json reads this one.
struct Declined;

type Read<T> = Result<T, Declined>;

struct Reader<'de> {
    text: &'de str,
    at: usize,
    depth: u32,
}

impl<'de> Reader<'de> {
    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Read<u8> {
        self.bytes().get(self.at).copied().ok_or(Declined)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Read<()> {
        self.ws();
        if self.peek()? != byte {
            return Err(Declined);
        }
        self.at += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Read<()> {
        if !self
            .bytes()
            .get(self.at..)
            .unwrap_or_default()
            .starts_with(word)
        {
            return Err(Declined);
        }
        self.at += word.len();
        Ok(())
    }

    /// Into an object or array, no deeper than [`MAX_DEPTH`].
    fn enter(&mut self) -> Read<()> {
        self.at += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Declined);
        }
        Ok(())
    }

    /// `each` for every key of the object at `{` (read past its `:`), to read its value.
    #[inline]
    fn fields(&mut self, mut each: impl FnMut(&mut Self, Text<'de>) -> Read<()>) -> Read<()> {
        self.members(b'}', |reader| {
            let key = reader.key()?;
            reader.expect(b':')?;
            reader.ws();
            each(reader, key)
        })
    }

    /// `each` for every element of the array at `[`.
    fn elements(&mut self, each: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.members(b']', each)
    }

    /// `each` for every member of the object or array here, which `close` ends.
    #[inline]
    fn members(&mut self, close: u8, mut each: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.enter()?;
        self.ws();
        if self.peek()? != close {
            loop {
                each(self)?;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        self.ws();
                    }
                    byte if byte == close => break,
                    _ => return Err(Declined),
                }
            }
        }
        self.at += 1;
        self.depth -= 1;
        Ok(())
    }

    /// The message of the object at `{`.
    fn object<T: FromObject<'de>>(&mut self) -> Read<T> {
        let mut out = T::default();
        self.object_into(&mut out)?;
        Ok(out)
    }

    /// The fields of the object at `{`, read into `out` where it is (a chunk's views are
    /// hundreds of bytes, not worth a move at each level).
    fn object_into<T: FromObject<'de>>(&mut self, out: &mut T) -> Read<()> {
        self.fields(
            |reader, key| match T::FIELDS.iter().position(|name| *name == key) {
                Some(index) => out.field(index, reader),
                None => reader.skip(),
            },
        )
    }

    /// A key, read past its closing quote (unescaped, as serde_json compares it).
    #[inline]
    fn key(&mut self) -> Read<Text<'de>> {
        if self.peek()? != b'"' {
            return Err(Declined);
        }
        self.at += 1;
        self.string()
    }

    /// The string whose content starts here, read past its closing quote: borrowed unless it
    /// has escapes.
    #[inline]
    fn string(&mut self) -> Read<Text<'de>> {
        let start = self.at;
        let end = self.plain_run(start);
        match self.bytes().get(end) {
            Some(b'"') => {
                self.at = end + 1;
                // Both ends are ASCII quotes, so on character boundaries.
                Ok(Cow::Borrowed(&self.text[start..end]))
            }
            Some(b'\\') => self.escaped(start, end).map(Cow::Owned),
            _ => Err(Declined),
        }
    }

    /// Where the run of string bytes from `at` that need no care ends: at a quote, a
    /// backslash, a control character (which JSON forbids in strings) or the text's end.
    /// Eight bytes at a time, as serde_json does: a byte is flagged where `x - k` borrows
    /// into its top bit; the lowest flag is always a true one.
    fn plain_run(&self, mut at: usize) -> usize {
        const ONES: u64 = u64::from_ne_bytes([1; 8]);
        const TOPS: u64 = ONES << 7;
        while let Some(word) = self.bytes().get(at..at + 8) {
            let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let quote = x ^ (ONES * u64::from(b'"'));
            let backslash = x ^ (ONES * u64::from(b'\\'));
            let flags = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (x.wrapping_sub(ONES * 0x20) & !x);
            let flags = flags & TOPS;
            if flags != 0 {
                return at + flags.trailing_zeros() as usize / 8;
            }
            at += 8;
        }
        while let Some(&byte) = self.bytes().get(at) {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                break;
            }
            at += 1;
        }
        at
    }

    /// The rest of a string from `start` whose first escape is at `at`.
    fn escaped(&mut self, start: usize, mut at: usize) -> Read<String> {
        let mut out = String::with_capacity(at - start + 16);
        out.push_str(&self.text[start..at]);
        loop {
            match self.bytes().get(at) {
                Some(b'"') => {
                    self.at = at + 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let (c, len) = match self.bytes().get(at + 1) {
                        Some(b'"') => ('"', 2),
                        Some(b'\\') => ('\\', 2),
                        Some(b'/') => ('/', 2),
                        Some(b'b') => ('\u{8}', 2),
                        Some(b'f') => ('\u{c}', 2),
                        Some(b'n') => ('\n', 2),
                        Some(b'r') => ('\r', 2),
                        Some(b't') => ('\t', 2),
                        // A lone surrogate is serde_json's error, so declined.
                        Some(b'u') => match unicode_escape(self.bytes(), at) {
                            UnicodeEscape::Char(c, len) => (c, len),
                            _ => return Err(Declined),
                        },
                        _ => return Err(Declined),
                    };
                    out.push(c);
                    at += len;
                }
                _ => return Err(Declined),
            }
            let end = self.plain_run(at);
            out.push_str(&self.text[at..end]);
            at = end;
        }
    }

    /// The number here. An integer of up to 18 digits (which i64 and f64 hold alike) is read
    /// here; a float, and `-0` (a float to serde_json), are handed to serde_json as the text
    /// they are, so that their value is its own to the last bit (and `1e400` its error, so
    /// declined); longer integers are declined, as is what is not a JSON number.
    fn number(&mut self) -> Read<Number> {
        let start = self.at;
        let negative = self.bytes().get(start) == Some(&b'-');
        let first = start + usize::from(negative);
        let mut at = first;
        let mut value: i64 = 0;
        while let Some(&digit @ b'0'..=b'9') = self.bytes().get(at) {
            if at - first == 18 {
                return Err(Declined);
            }
            value = value * 10 + i64::from(digit - b'0');
            at += 1;
        }
        let digits = at - first;
        if digits == 0 || (digits > 1 && self.bytes()[first] == b'0') {
            return Err(Declined);
        }
        let mut float = negative && value == 0;
        if self.bytes().get(at) == Some(&b'.') {
            let fraction = self.digits(at + 1);
            if fraction == 0 {
                return Err(Declined);
            }
            (float, at) = (true, at + 1 + fraction);
        }
        if let Some(b'e' | b'E') = self.bytes().get(at) {
            at += 1;
            if let Some(b'+' | b'-') = self.bytes().get(at) {
                at += 1;
            }
            let exponent = self.digits(at);
            if exponent == 0 {
                return Err(Declined);
            }
            (float, at) = (true, at + exponent);
        }
        let number = if float {
            let text = &self.text[start..at];
            Number::Float(serde_json::from_str(text).map_err(|_| Declined)?)
        } else {
            Number::Int(if negative { -value } else { value })
        };
        self.at = at;
        Ok(number)
    }

    /// How many ASCII digits start at `at`.
    fn digits(&self, at: usize) -> usize {
        let rest = self.bytes().get(at..).unwrap_or_default();
        rest.iter().take_while(|b| b.is_ascii_digit()).count()
    }

    /// Past any value, checked as far as reading it would check it.
    fn skip(&mut self) -> Read<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(drop)
            }
            b'{' => self.fields(|reader, _| reader.skip()),
            b'[' => self.elements(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => Err(Declined),
        }
    }

    /// The object at `{` as a `Struct`: a later duplicate key wins, as in serde_json's.
    fn structure(&mut self) -> Read<prost_types::Struct> {
        let mut fields = BTreeMap::new();
        self.fields(|reader, key| {
            fields.insert(key.into_owned(), reader.proto_value()?);
            Ok(())
        })?;
        Ok(prost_types::Struct { fields })
    }

    fn proto_value(&mut self) -> Read<prost_types::Value> {
        Ok(kind(match self.peek()? {
            b'"' => {
                self.at += 1;
                Kind::StringValue(self.string()?.into_owned())
            }
            b'{' => Kind::StructValue(self.structure()?),
            b'[' => {
                let mut values = Vec::new();
                self.elements(|reader| {
                    values.push(reader.proto_value()?);
                    Ok(())
                })?;
                Kind::ListValue(prost_types::ListValue { values })
            }
            b't' => self.literal(b"true").map(|()| Kind::BoolValue(true))?,
            b'f' => self.literal(b"false").map(|()| Kind::BoolValue(false))?,
            b'n' => self.literal(b"null").map(|()| Kind::NullValue(0))?,
            b'-' | b'0'..=b'9' => Kind::NumberValue(match self.number()? {
                Number::Int(v) => v as f64,
                Number::Float(v) => v,
            }),
            _ => return Err(Declined),
        }))
    }
}

impl<'de> Values<'de> for Reader<'de> {
    type Error = Declined;

    fn text(&mut self) -> Read<Option<Text<'de>>> {
        if self.peek()? == b'"' {
            self.at += 1;
            return self.string().map(Some);
        }
        self.skip().map(|()| None)
    }

    fn int(&mut self) -> Read<i64> {
        match self.peek()? {
            // As serde_json's lenient reading: a float is truncated.
            b'-' | b'0'..=b'9' => Ok(match self.number()? {
                Number::Int(v) => v,
                Number::Float(v) => v as i64,
            }),
            _ => self.skip().map(|()| 0),
        }
    }

    fn list<T: FromObject<'de>>(&mut self) -> Read<Vec<T>> {
        if self.peek()? != b'[' {
            return self.skip().map(|()| Vec::new());
        }
        let mut out = Vec::new();
        self.elements(|reader| {
            if reader.peek()? != b'{' {
                return reader.skip().map(|()| out.push(T::default()));
            }
            out.push(T::default());
            let last = out.len() - 1;
            reader.object_into(&mut out[last])
        })?;
        Ok(out)
    }

    fn object<T: FromObject<'de>>(&mut self) -> Read<Option<T>> {
        if self.peek()? == b'{' {
            return self.object().map(Some);
        }
        self.skip().map(|()| None)
    }

    fn item<T: FromObject<'de>>(&mut self) -> Read<T> {
        if self.peek()? == b'{' {
            return self.object();
        }
        self.skip().map(|()| T::default())
    }

    fn structure(&mut self) -> Read<Option<prost_types::Struct>> {
        if self.peek()? == b'{' {
            return Reader::structure(self).map(Some);
        }
        self.skip().map(|()| None)
    }

    fn finish_reason(&mut self) -> Read<pb::FinishReason> {
        match self.peek()? {
            b'n' => self
                .literal(b"null")
                .map(|()| pb::FinishReason::Unspecified),
            b'"' => {
                self.at += 1;
                Ok(named_finish_reason(&self.string()?))
            }
            _ => self.skip().map(|()| pb::FinishReason::Other),
        }
    }
}
