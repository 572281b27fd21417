//! Upstream JSON → protobuf: a whole completion body, or the data of one SSE chunk, as the
//! encoding of `ChatCompletion` / `ChatCompletionChunk`, framed: behind the 5-byte prefix
//! (flag 0, big-endian length) that gRPC puts before each message and Connect's streams
//! before each envelope, so the wire sends the bytes as they are. Fields the proto does not know are
//! skipped, and `null` reads as unset, so a richer upstream is never an error. The core hands
//! over only bytes already masked and judged (an `{"error": …}` body or event never gets here),
//! so nothing here masks or looks for errors.
//!
//! The JSON is read field by field into borrowed views of the messages (a string without
//! escapes is not copied), which are then written as protobuf directly: no `serde_json::Value`,
//! no prost message with its owned strings in between. The reading is the lenient one the
//! proto needs: a field of the wrong type reads as unset (a string that is a number, a list
//! that is an object), a duplicate key's last value wins, and skipped values are still checked
//! to be valid JSON (UTF-8, escapes), exactly as a full parse would. The bytes are the ones
//! prost writes for the same message (fields in number order, proto3 defaults left out): the
//! tests compare them with the former `Value`-based converter's message, encoded by prost.
//!
//! Two readers fill the views through one [`Values`] trait, so each field's map is written
//! once: the [`quick`] one, a single pass over the plain JSON upstreams send (most of a gRPC
//! stream's cost was serde_json reading its chunks), and serde_json's, for whatever the quick
//! one declines, which it does on anything it is not sure to read exactly alike.
//!
//! Why this file is longer than the rest: it is one job, the field-by-field map of every upstream
//! answer onto its proto message, read straight from the bytes and written straight to the wire.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::pb;
use crate::chat::{read_json, read_json_text, GatewayError};

/// The prefix of each framed message.
pub const PREFIX: usize = 5;

/// A whole completion body, as a framed `ChatCompletion`.
pub fn completion(body: &[u8]) -> Result<Bytes, GatewayError> {
    let mut out = BytesMut::new();
    transcode::<Top<Choice<ToolCall>>>(body, &mut out)?;
    Ok(out.freeze())
}

/// The data of one SSE event, as a framed `ChatCompletionChunk` appended to `out` (the chunks
/// at hand together go out as one piece).
pub fn chunk(data: &[u8], out: &mut BytesMut) -> Result<(), GatewayError> {
    transcode::<Top<Choice<ToolCallDelta>>>(data, out)
}

/// The framed messages in `framed` (this module's output), each without its prefix.
pub fn messages(framed: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let prefix = framed.get(at..at + PREFIX)?;
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let start = at + PREFIX;
        let end = start.checked_add(len).filter(|&end| end <= framed.len())?;
        at = end;
        Some(framed.slice(start..end))
    })
}

/// The JSON object in `bytes` (already masked by the core: its start may be quoted), framed
/// and appended to `out`.
fn transcode<'de, T: FromObject<'de> + Proto>(
    bytes: &'de [u8],
    out: &mut BytesMut,
) -> Result<(), GatewayError> {
    let not_json = |e: &dyn fmt::Display| {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
        GatewayError::Internal(format!("the upstream's answer is not JSON ({e}): {start}"))
    };
    let seed = Any(ObjectOnly::<T>(PhantomData));
    let read = match std::str::from_utf8(bytes) {
        Ok(text) => match quick::read::<T>(text) {
            Some(message) => {
                #[cfg(test)]
                tests::QUICK_READS.with(|n| n.set(n.get() + 1));
                Ok(Some(message))
            }
            None => read_json_text(text, seed),
        },
        // serde_json's byte reader, for its error (or what it can read past a skipped value).
        Err(_) => read_json(bytes, seed),
    };
    let message = match read {
        Ok(Some(message)) => message,
        Ok(None) => {
            return Err(GatewayError::Internal(
                "the upstream's answer is not a JSON object".into(),
            ))
        }
        Err(e) => return Err(not_json(&e)),
    };
    let len = message.encoded_len();
    // The prefix cannot say more; no upstream body the gateway reads whole comes near it.
    let prefix_len = u32::try_from(len).map_err(|_| {
        GatewayError::Internal(format!("the upstream's answer is {len} bytes as protobuf, over the 4 GiB a gRPC message can be"))
    })?;
    out.reserve(PREFIX + len);
    out.put_u8(0);
    out.put_u32(prefix_len);
    message.fields(&mut Put(out));
    Ok(())
}

/// A string of the JSON, borrowed unless it had escapes.
type Text<'a> = Cow<'a, str>;

// ---- the messages, field by field ----

/// A message read from a JSON object: `FIELDS` names the keys it reads, `field` reads the
/// value of `FIELDS[index]` from `values` (a later duplicate overwrites an earlier one).
trait FromObject<'de>: Default {
    const FIELDS: &'static [&'static str];
    fn field<V: Values<'de>>(&mut self, index: usize, values: &mut V) -> Result<(), V::Error>;
}

/// The next value of an object being read, as each kind of field reads it; the two readers
/// (serde_json's and the [`quick`] one) give the same answer for the same JSON.
trait Values<'de> {
    type Error;
    /// A string; anything else is unset.
    fn text(&mut self) -> Result<Option<Text<'de>>, Self::Error>;
    /// An integer; a float (some upstreams send `1.7e9`) is truncated, anything else is 0.
    fn int(&mut self) -> Result<i64, Self::Error>;
    /// A list of messages (an element that is no object is the empty message); anything else
    /// is the empty list.
    fn list<T: FromObject<'de>>(&mut self) -> Result<Vec<T>, Self::Error>;
    /// A message if the value is an object, else unset.
    fn object<T: FromObject<'de>>(&mut self) -> Result<Option<T>, Self::Error>;
    /// A message from an object; any other value is the empty message.
    fn item<T: FromObject<'de>>(&mut self) -> Result<T, Self::Error>;
    /// A JSON object as a `google.protobuf.Struct`; anything else (`null` included) as unset.
    fn structure(&mut self) -> Result<Option<prost_types::Struct>, Self::Error>;
    /// Unset when `null`, a known reason for its name, OTHER for any other value.
    fn finish_reason(&mut self) -> Result<pb::FinishReason, Self::Error>;

    fn uint(&mut self) -> Result<u32, Self::Error> {
        Ok(u32::try_from(self.int()?.max(0)).unwrap_or(u32::MAX))
    }
}

/// The finish reason a string names.
fn named_finish_reason(name: &str) -> pb::FinishReason {
    use pb::FinishReason as F;
    match name {
        "stop" => F::Stop,
        "length" => F::Length,
        "tool_calls" => F::ToolCalls,
        "content_filter" => F::ContentFilter,
        "function_call" => F::FunctionCall,
        _ => F::Other,
    }
}

/// `ChatCompletion` (choices of `ToolCall`s) or `ChatCompletionChunk` (of `ToolCallDelta`s): the
/// two have the same fields.
#[derive(Default)]
struct Top<'a, C> {
    id: Option<Text<'a>>,
    object: Option<Text<'a>>,
    created: i64,
    model: Option<Text<'a>>,
    choices: Vec<C>,
    usage: Option<Usage>,
    system_fingerprint: Option<Text<'a>>,
    service_tier: Option<Text<'a>>,
}

impl<'de, C: FromObject<'de>> FromObject<'de> for Top<'de, C> {
    const FIELDS: &'static [&'static str] = &[
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
        "service_tier",
    ];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.id = v.text()?,
            1 => self.object = v.text()?,
            2 => self.created = v.int()?,
            3 => self.model = v.text()?,
            4 => self.choices = v.list::<C>()?,
            5 => self.usage = v.object::<Usage>()?,
            6 => self.system_fingerprint = v.text()?,
            _ => self.service_tier = v.text()?,
        }
        Ok(())
    }
}

impl<C: Proto> Proto for Top<'_, C> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.plain(1, self.id.as_deref());
        w.plain(2, self.object.as_deref());
        w.varint(3, self.created as u64);
        w.plain(4, self.model.as_deref());
        for choice in &self.choices {
            w.message(5, choice);
        }
        if let Some(usage) = &self.usage {
            w.message(6, usage);
        }
        w.optional(7, self.system_fingerprint.as_deref());
        w.optional(8, self.service_tier.as_deref());
    }
}

/// A choice: of a whole answer (`Choice<ToolCall>`, its `message`) or of a chunk
/// (`Choice<ToolCallDelta>`, its `delta`).
#[derive(Default)]
struct Choice<'a, C> {
    index: u32,
    said: Option<Said<'a, C>>,
    finish_reason: i32,
    logprobs: Option<prost_types::Struct>,
}

impl<'de, C: Call + FromObject<'de>> FromObject<'de> for Choice<'de, C> {
    const FIELDS: &'static [&'static str] = &["index", C::SAID, "finish_reason", "logprobs"];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.index = v.uint()?,
            1 => self.said = v.object::<Said<C>>()?,
            2 => self.finish_reason = v.finish_reason()? as i32,
            _ => self.logprobs = v.structure()?,
        }
        Ok(())
    }
}

impl<C: Call> Proto for Choice<'_, C> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.varint(1, self.index.into());
        if let Some(said) = &self.said {
            w.message(2, said);
        }
        w.varint(3, self.finish_reason as u64);
        if let Some(logprobs) = &self.logprobs {
            w.prost(4, logprobs);
        }
    }
}

/// An assistant message (`Said<ToolCall>`) or a chunk's delta (`Said<ToolCallDelta>`): the
/// same keys, where `reasoning` is how some upstreams (vLLM, OpenRouter) name
/// `reasoning_content`, and stands in when that is missing.
#[derive(Default)]
struct Said<'a, C> {
    role: Option<Text<'a>>,
    content: Option<Text<'a>>,
    tool_calls: Vec<C>,
    refusal: Option<Text<'a>>,
    reasoning_content: Option<Text<'a>>,
    reasoning: Option<Text<'a>>,
}

/// What tells a message's tool calls from a delta's.
trait Call: Proto {
    /// The key of the choice's message: `message` or `delta`.
    const SAID: &'static str;
    /// The role a message without one has: `assistant` for a whole message (whose `role` is
    /// a plain string); none for a delta (whose `role` is optional and says only what came).
    const ROLE: Option<&'static str>;
}

impl Call for ToolCall<'_> {
    const SAID: &'static str = "message";
    const ROLE: Option<&'static str> = Some("assistant");
}

impl Call for ToolCallDelta<'_> {
    const SAID: &'static str = "delta";
    const ROLE: Option<&'static str> = None;
}

impl<'de, C: FromObject<'de>> FromObject<'de> for Said<'de, C> {
    const FIELDS: &'static [&'static str] = &[
        "role",
        "content",
        "tool_calls",
        "refusal",
        "reasoning_content",
        "reasoning",
    ];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.role = v.text()?,
            1 => self.content = v.text()?,
            2 => self.tool_calls = v.list::<C>()?,
            3 => self.refusal = v.text()?,
            4 => self.reasoning_content = v.text()?,
            _ => self.reasoning = v.text()?,
        }
        Ok(())
    }
}

impl<C: Call> Proto for Said<'_, C> {
    fn fields<W: Writer>(&self, w: &mut W) {
        match C::ROLE {
            Some(default) => w.plain(1, self.role.as_deref().or(Some(default))),
            None => w.optional(1, self.role.as_deref()),
        }
        w.optional(2, self.content.as_deref());
        for call in &self.tool_calls {
            w.message(3, call);
        }
        w.optional(4, self.refusal.as_deref());
        let reasoning = self.reasoning_content.as_ref().or(self.reasoning.as_ref());
        w.optional(5, reasoning.map(|r| r.as_ref()));
    }
}

/// A tool call of a whole message: `type` defaults to `function`, and a `function` that is
/// there at all is a call (of no name if it is no object).
#[derive(Default)]
struct ToolCall<'a> {
    id: Option<Text<'a>>,
    kind: Option<Text<'a>>,
    function: Option<Function<'a>>,
}

impl<'de> FromObject<'de> for ToolCall<'de> {
    const FIELDS: &'static [&'static str] = &["id", "type", "function"];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.id = v.text()?,
            1 => self.kind = v.text()?,
            _ => self.function = Some(v.item::<Function>()?),
        }
        Ok(())
    }
}

impl Proto for ToolCall<'_> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.plain(1, self.id.as_deref());
        w.plain(2, self.kind.as_deref().or(Some("function")));
        if let Some(function) = &self.function {
            w.message(3, &Whole(function));
        }
    }
}

/// A tool call of a delta: every field as it came.
#[derive(Default)]
struct ToolCallDelta<'a> {
    index: u32,
    id: Option<Text<'a>>,
    kind: Option<Text<'a>>,
    function: Option<Function<'a>>,
}

impl<'de> FromObject<'de> for ToolCallDelta<'de> {
    const FIELDS: &'static [&'static str] = &["index", "id", "type", "function"];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.index = v.uint()?,
            1 => self.id = v.text()?,
            2 => self.kind = v.text()?,
            _ => self.function = v.object::<Function>()?,
        }
        Ok(())
    }
}

impl Proto for ToolCallDelta<'_> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.varint(1, self.index.into());
        w.optional(2, self.id.as_deref());
        w.optional(3, self.kind.as_deref());
        if let Some(function) = &self.function {
            w.message(4, function);
        }
    }
}

/// A function call's name and arguments: as a delta's `FunctionCallDelta` (each as it came),
/// or, in [`Whole`], as a whole message's `FunctionCall` (missing ones empty).
#[derive(Default)]
struct Function<'a> {
    name: Option<Text<'a>>,
    arguments: Option<Text<'a>>,
}

impl<'de> FromObject<'de> for Function<'de> {
    const FIELDS: &'static [&'static str] = &["name", "arguments"];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.name = v.text()?,
            _ => self.arguments = v.text()?,
        }
        Ok(())
    }
}

impl Proto for Function<'_> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.optional(1, self.name.as_deref());
        w.optional(2, self.arguments.as_deref());
    }
}

/// A whole message's `FunctionCall`, whose strings are not optional.
struct Whole<'f, 'a>(&'f Function<'a>);

impl Proto for Whole<'_, '_> {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.plain(1, self.0.name.as_deref());
        w.plain(2, self.0.arguments.as_deref());
    }
}

#[derive(Default)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: Option<prost_types::Struct>,
    completion_tokens_details: Option<prost_types::Struct>,
}

impl<'de> FromObject<'de> for Usage {
    const FIELDS: &'static [&'static str] = &[
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    ];
    fn field<V: Values<'de>>(&mut self, index: usize, v: &mut V) -> Result<(), V::Error> {
        match index {
            0 => self.prompt_tokens = v.uint()?,
            1 => self.completion_tokens = v.uint()?,
            2 => self.total_tokens = v.uint()?,
            3 => self.prompt_tokens_details = v.structure()?,
            _ => self.completion_tokens_details = v.structure()?,
        }
        Ok(())
    }
}

impl Proto for Usage {
    fn fields<W: Writer>(&self, w: &mut W) {
        w.varint(1, self.prompt_tokens.into());
        w.varint(2, self.completion_tokens.into());
        w.varint(3, self.total_tokens.into());
        if let Some(details) = &self.prompt_tokens_details {
            w.prost(4, details);
        }
        if let Some(details) = &self.completion_tokens_details {
            w.prost(5, details);
        }
    }
}

/// Every field of the object at `map`; the ones `T` does not read are checked and skipped.
fn read_object<'de, T: FromObject<'de>, A: MapAccess<'de>>(map: A) -> Result<T, A::Error> {
    let mut out = T::default();
    let mut values = Serde(map);
    while let Some(key) = values.0.next_key_seed(Key(T::FIELDS))? {
        match key {
            Some(index) => out.field(index, &mut values)?,
            None => values.0.next_value_seed(Any(Skip))?,
        }
    }
    Ok(out)
}

/// The values of an object serde_json reads, each through its [`Sink`].
struct Serde<A>(A);

impl<'de, A: MapAccess<'de>> Values<'de> for Serde<A> {
    type Error = A::Error;
    fn text(&mut self) -> Result<Option<Text<'de>>, A::Error> {
        self.0.next_value_seed(Any(Str))
    }
    fn int(&mut self) -> Result<i64, A::Error> {
        self.0.next_value_seed(Any(Int))
    }
    fn list<T: FromObject<'de>>(&mut self) -> Result<Vec<T>, A::Error> {
        self.0.next_value_seed(Any(List::<T>(PhantomData)))
    }
    fn object<T: FromObject<'de>>(&mut self) -> Result<Option<T>, A::Error> {
        self.0.next_value_seed(Any(ObjectOnly::<T>(PhantomData)))
    }
    fn item<T: FromObject<'de>>(&mut self) -> Result<T, A::Error> {
        self.0.next_value_seed(Any(Item::<T>(PhantomData)))
    }
    fn structure(&mut self) -> Result<Option<prost_types::Struct>, A::Error> {
        self.0.next_value_seed(Any(StructOnly))
    }
    fn finish_reason(&mut self) -> Result<pb::FinishReason, A::Error> {
        self.0.next_value_seed(Any(Finish))
    }
}

/// A key: its index in the names a message reads, `None` for any other.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|name| *name == v))
    }
}

// ---- the protobuf side ----

/// A message the views write: `fields` gives its fields, in field-number order, to a
/// [`Writer`] that either measures or writes them, so the two can never disagree.
trait Proto {
    fn fields<W: Writer>(&self, w: &mut W);

    fn encoded_len(&self) -> usize {
        let mut len = Len(0);
        self.fields(&mut len);
        len.0
    }
}

/// What a message's fields go to. Each method leaves out what proto3 leaves out, as prost does.
trait Writer {
    /// A length-delimited field of `len` bytes: its key and length (the bytes follow).
    fn delimited(&mut self, tag: u32, len: usize);
    fn bytes(&mut self, bytes: &[u8]);
    /// A varint field, left out when 0.
    fn varint(&mut self, tag: u32, value: u64);

    /// A string field that is `optional` in the proto: written when set, even empty.
    fn optional(&mut self, tag: u32, value: Option<&str>) {
        if let Some(value) = value {
            self.delimited(tag, value.len());
            self.bytes(value.as_bytes());
        }
    }

    /// A plain proto3 string field: unset and empty are the same, and left out.
    fn plain(&mut self, tag: u32, value: Option<&str>) {
        self.optional(tag, value.filter(|v| !v.is_empty()));
    }

    fn message<M: Proto>(&mut self, tag: u32, message: &M);

    /// A message prost writes (the `Struct`s of logprobs and token details).
    fn prost<M: prost::Message>(&mut self, tag: u32, message: &M);
}

/// Measures.
struct Len(usize);

impl Writer for Len {
    fn delimited(&mut self, tag: u32, len: usize) {
        self.0 += key_len(tag) + encoded_len_varint(len as u64);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn varint(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.0 += key_len(tag) + encoded_len_varint(value);
        }
    }
    fn message<M: Proto>(&mut self, tag: u32, message: &M) {
        let len = message.encoded_len();
        self.delimited(tag, len);
        self.0 += len;
    }
    fn prost<M: prost::Message>(&mut self, tag: u32, message: &M) {
        self.0 += prost::encoding::message::encoded_len(tag, message);
    }
}

/// Writes.
struct Put<'b>(&'b mut BytesMut);

impl Writer for Put<'_> {
    fn delimited(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, self.0);
        encode_varint(len as u64, self.0);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.put_slice(bytes);
    }
    fn varint(&mut self, tag: u32, value: u64) {
        if value != 0 {
            encode_key(tag, WireType::Varint, self.0);
            encode_varint(value, self.0);
        }
    }
    fn message<M: Proto>(&mut self, tag: u32, message: &M) {
        self.delimited(tag, message.encoded_len());
        message.fields(self);
    }
    fn prost<M: prost::Message>(&mut self, tag: u32, message: &M) {
        prost::encoding::message::encode(tag, message, self.0);
    }
}

// ---- lenient values: what each kind of JSON value reads as ----

/// What a value reads as, by its JSON kind; a kind not handled reads as [`Sink::other`]
/// (arrays and objects are still read through, to check them).
trait Sink<'de>: Sized {
    type Out;
    fn other(self) -> Self::Out;
    fn null(self) -> Self::Out {
        self.other()
    }
    fn bool(self, _: bool) -> Self::Out {
        self.other()
    }
    fn i64(self, _: i64) -> Self::Out {
        self.other()
    }
    fn u64(self, _: u64) -> Self::Out {
        self.other()
    }
    fn f64(self, _: f64) -> Self::Out {
        self.other()
    }
    fn str(self, _: &str) -> Self::Out {
        self.other()
    }
    /// A string without escapes, which can be borrowed from the JSON.
    fn borrowed_str(self, v: &'de str) -> Self::Out {
        self.str(v)
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        while seq.next_element_seed(Any(Skip))?.is_some() {}
        Ok(self.other())
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        while map.next_key_seed(Any(Skip))?.is_some() {
            map.next_value_seed(Any(Skip))?;
        }
        Ok(self.other())
    }
}

/// Reads any JSON value into its [`Sink`].
struct Any<S>(S);

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for Any<S> {
    type Value = S::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink<'de>> Visitor<'de> for Any<S> {
    type Value = S::Out;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<S::Out, E> {
        Ok(self.0.null())
    }
    fn visit_none<E: de::Error>(self) -> Result<S::Out, E> {
        Ok(self.0.null())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<S::Out, E> {
        Ok(self.0.bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<S::Out, E> {
        Ok(self.0.i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<S::Out, E> {
        Ok(self.0.u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<S::Out, E> {
        Ok(self.0.f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<S::Out, E> {
        Ok(self.0.str(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<S::Out, E> {
        Ok(self.0.borrowed_str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Out, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Out, A::Error> {
        self.0.map(map)
    }
}

/// Any value, checked and dropped.
struct Skip;
impl Sink<'_> for Skip {
    type Out = ();
    fn other(self) {}
}

/// A string; anything else is unset.
struct Str;
impl<'de> Sink<'de> for Str {
    type Out = Option<Text<'de>>;
    fn other(self) -> Option<Text<'de>> {
        None
    }
    fn str(self, v: &str) -> Option<Text<'de>> {
        Some(Cow::Owned(v.to_owned()))
    }
    fn borrowed_str(self, v: &'de str) -> Option<Text<'de>> {
        Some(Cow::Borrowed(v))
    }
}

/// An integer; a float (some upstreams send `1.7e9`) is truncated, anything else is 0.
struct Int;
impl Sink<'_> for Int {
    type Out = i64;
    fn other(self) -> i64 {
        0
    }
    fn i64(self, v: i64) -> i64 {
        v
    }
    fn u64(self, v: u64) -> i64 {
        i64::try_from(v).unwrap_or(v as f64 as i64)
    }
    fn f64(self, v: f64) -> i64 {
        v as i64
    }
}

/// `finish_reason`: unset when `null`, a known reason, or OTHER for any other value.
struct Finish;
impl Sink<'_> for Finish {
    type Out = pb::FinishReason;
    fn other(self) -> pb::FinishReason {
        pb::FinishReason::Other
    }
    fn null(self) -> pb::FinishReason {
        pb::FinishReason::Unspecified
    }
    fn str(self, v: &str) -> pb::FinishReason {
        named_finish_reason(v)
    }
}

/// A message if the value is an object, else unset.
struct ObjectOnly<T>(PhantomData<T>);
impl<'de, T: FromObject<'de>> Sink<'de> for ObjectOnly<T> {
    type Out = Option<T>;
    fn other(self) -> Option<T> {
        None
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
        read_object::<T, A>(map).map(Some)
    }
}

/// A message from an object; any other value is the empty message.
struct Item<T>(PhantomData<T>);
impl<'de, T: FromObject<'de>> Sink<'de> for Item<T> {
    type Out = T;
    fn other(self) -> T {
        T::default()
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        read_object::<T, A>(map)
    }
}

/// A list of messages (each element as [`Item`]); anything else is the empty list.
struct List<T>(PhantomData<T>);
impl<'de, T: FromObject<'de>> Sink<'de> for List<T> {
    type Out = Vec<T>;
    fn other(self) -> Vec<T> {
        Vec::new()
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(item) = seq.next_element_seed(Any(Item::<T>(PhantomData)))? {
            out.push(item);
        }
        Ok(out)
    }
}

/// A JSON object as a `google.protobuf.Struct`; anything else (`null` included) as unset.
struct StructOnly;
impl<'de> Sink<'de> for StructOnly {
    type Out = Option<prost_types::Struct>;
    fn other(self) -> Option<prost_types::Struct> {
        None
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Out, A::Error> {
        read_struct(map).map(Some)
    }
}

fn read_struct<'de, A: MapAccess<'de>>(mut map: A) -> Result<prost_types::Struct, A::Error> {
    let mut fields = BTreeMap::new();
    while let Some(key) = map.next_key::<String>()? {
        fields.insert(key, map.next_value_seed(Any(ProtoValue))?);
    }
    Ok(prost_types::Struct { fields })
}

/// Any JSON value as a `google.protobuf.Value` (numbers as doubles).
struct ProtoValue;
impl<'de> Sink<'de> for ProtoValue {
    type Out = prost_types::Value;
    fn other(self) -> prost_types::Value {
        kind(prost_types::value::Kind::NullValue(0))
    }
    fn bool(self, v: bool) -> prost_types::Value {
        kind(prost_types::value::Kind::BoolValue(v))
    }
    fn i64(self, v: i64) -> prost_types::Value {
        kind(prost_types::value::Kind::NumberValue(v as f64))
    }
    fn u64(self, v: u64) -> prost_types::Value {
        kind(prost_types::value::Kind::NumberValue(v as f64))
    }
    fn f64(self, v: f64) -> prost_types::Value {
        kind(prost_types::value::Kind::NumberValue(v))
    }
    fn str(self, v: &str) -> prost_types::Value {
        kind(prost_types::value::Kind::StringValue(v.to_owned()))
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<prost_types::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Any(ProtoValue))? {
            values.push(v);
        }
        Ok(kind(prost_types::value::Kind::ListValue(
            prost_types::ListValue { values },
        )))
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<prost_types::Value, A::Error> {
        Ok(kind(prost_types::value::Kind::StructValue(read_struct(
            map,
        )?)))
    }
}

fn kind(kind: prost_types::value::Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

#[path = "response_quick.rs"]
mod quick;

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
