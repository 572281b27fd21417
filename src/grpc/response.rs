//! Upstream JSON → proto: a whole completion body, or the data of one SSE chunk. Fields the
//! proto does not know are skipped, and `null` reads as unset, so a richer upstream is never
//! an error. The core hands over only bytes already masked and judged (an `{"error": …}` body
//! or event never gets here), so nothing here masks or looks for errors.
//!
//! The JSON is read straight into the prost messages, field by field (no `serde_json::Value`
//! in between), with the lenient reading the proto needs: a field of the wrong type reads as
//! unset (a string that is a number, a list that is an object), a duplicate key's last value
//! wins, and skipped values are still checked to be valid JSON (UTF-8, escapes), exactly as a
//! full parse would. The tests keep the former `Value`-based converter as the oracle.
//!
//! Why this file is longer than the rest: it is one job, the field-by-field map of every upstream
//! answer onto its proto message, read straight from the bytes (no intermediate `Value`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::pb;
use crate::chat::{read_json, GatewayError};

/// A whole completion body.
pub fn completion(body: &[u8]) -> Result<pb::ChatCompletion, GatewayError> {
    parse::<pb::ChatCompletion>(body)
}

/// The data of one SSE event.
pub fn chunk(data: &[u8]) -> Result<pb::ChatCompletionChunk, GatewayError> {
    parse::<pb::ChatCompletionChunk>(data)
}

/// The JSON object in `bytes` (already masked by the core: its start may be quoted).
fn parse<T: FromObject>(bytes: &[u8]) -> Result<T::Out, GatewayError> {
    let not_json = |e: &dyn fmt::Display| {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
        GatewayError::Internal(format!("the upstream's answer is not JSON ({e}): {start}"))
    };
    let read = read_json(bytes, Any(ObjectOnly::<T>(PhantomData)));
    match read {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(GatewayError::Internal(
            "the upstream's answer is not a JSON object".into(),
        )),
        Err(e) => Err(not_json(&e)),
    }
}

// ---- the messages, field by field ----

/// A message read from a JSON object: `FIELDS` names the keys it reads, `field` reads the
/// value of `FIELDS[index]`, `done` finishes it (defaults that depend on several fields).
trait FromObject: Default {
    type Out;
    const FIELDS: &'static [&'static str];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error>;
    fn done(self) -> Self::Out;
}

fn string<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<String>, A::Error> {
    map.next_value_seed(Any(Str))
}

fn int<'de, A: MapAccess<'de>>(map: &mut A) -> Result<i64, A::Error> {
    map.next_value_seed(Any(Int))
}

fn uint<'de, A: MapAccess<'de>>(map: &mut A) -> Result<u32, A::Error> {
    Ok(u32::try_from(int(map)?.max(0)).unwrap_or(u32::MAX))
}

fn list<'de, T: FromObject, A: MapAccess<'de>>(map: &mut A) -> Result<Vec<T::Out>, A::Error> {
    map.next_value_seed(Any(List::<T>(PhantomData)))
}

/// The field only if it is an object.
fn object<'de, T: FromObject, A: MapAccess<'de>>(map: &mut A) -> Result<Option<T::Out>, A::Error> {
    map.next_value_seed(Any(ObjectOnly::<T>(PhantomData)))
}

fn structure<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<prost_types::Struct>, A::Error> {
    map.next_value_seed(Any(StructOnly))
}

fn finish_reason<'de, A: MapAccess<'de>>(map: &mut A) -> Result<i32, A::Error> {
    Ok(map.next_value_seed(Any(Finish))? as i32)
}

macro_rules! top_level {
    ($t:ty, $choice:ty) => {
        impl FromObject for $t {
            type Out = Self;
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
            fn field<'de, A: MapAccess<'de>>(
                &mut self,
                index: usize,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match index {
                    0 => self.id = string(map)?.unwrap_or_default(),
                    1 => self.object = string(map)?.unwrap_or_default(),
                    2 => self.created = int(map)?,
                    3 => self.model = string(map)?.unwrap_or_default(),
                    4 => self.choices = list::<$choice, A>(map)?,
                    5 => self.usage = object::<pb::Usage, A>(map)?,
                    6 => self.system_fingerprint = string(map)?,
                    _ => self.service_tier = string(map)?,
                }
                Ok(())
            }
            fn done(self) -> Self {
                self
            }
        }
    };
}
top_level!(pb::ChatCompletion, pb::Choice);
top_level!(pb::ChatCompletionChunk, pb::ChunkChoice);

impl FromObject for pb::Choice {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &["index", "message", "finish_reason", "logprobs"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.index = uint(map)?,
            1 => self.message = object::<Message, A>(map)?,
            2 => self.finish_reason = finish_reason(map)?,
            _ => self.logprobs = structure(map)?,
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

impl FromObject for pb::ChunkChoice {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &["index", "delta", "finish_reason", "logprobs"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.index = uint(map)?,
            1 => self.delta = object::<Delta, A>(map)?,
            2 => self.finish_reason = finish_reason(map)?,
            _ => self.logprobs = structure(map)?,
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

/// An assistant message: `role` defaults to `assistant`; `reasoning_content`, or `reasoning`
/// as some upstreams (vLLM, OpenRouter) name it.
#[derive(Default)]
struct Message {
    message: pb::AssistantMessage,
    role: Option<String>,
    reasoning: Option<String>,
}

impl FromObject for Message {
    type Out = pb::AssistantMessage;
    const FIELDS: &'static [&'static str] = &[
        "role",
        "content",
        "tool_calls",
        "refusal",
        "reasoning_content",
        "reasoning",
    ];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        let m = &mut self.message;
        match index {
            0 => self.role = string(map)?,
            1 => m.content = string(map)?,
            2 => m.tool_calls = list::<ToolCall, A>(map)?,
            3 => m.refusal = string(map)?,
            4 => m.reasoning_content = string(map)?,
            _ => self.reasoning = string(map)?,
        }
        Ok(())
    }
    fn done(self) -> pb::AssistantMessage {
        let mut m = self.message;
        m.role = self.role.unwrap_or_else(|| "assistant".into());
        m.reasoning_content = m.reasoning_content.or(self.reasoning);
        m
    }
}

/// A tool call of a whole message: `type` defaults to `function`, and a `function` that is
/// there at all is a call (of no name if it is no object).
#[derive(Default)]
struct ToolCall {
    call: pb::ToolCall,
    kind: Option<String>,
}

impl FromObject for ToolCall {
    type Out = pb::ToolCall;
    const FIELDS: &'static [&'static str] = &["id", "type", "function"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.call.id = string(map)?.unwrap_or_default(),
            1 => self.kind = string(map)?,
            _ => {
                let any = Item::<pb::FunctionCall>(PhantomData);
                self.call.function = Some(map.next_value_seed(Any(any))?);
            }
        }
        Ok(())
    }
    fn done(self) -> pb::ToolCall {
        let mut call = self.call;
        call.r#type = self.kind.unwrap_or_else(|| "function".into());
        call
    }
}

impl FromObject for pb::FunctionCall {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &["name", "arguments"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.name = string(map)?.unwrap_or_default(),
            _ => self.arguments = string(map)?.unwrap_or_default(),
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

/// A chunk's delta; `reasoning` stands in for a missing `reasoning_content`.
#[derive(Default)]
struct Delta {
    delta: pb::Delta,
    reasoning: Option<String>,
}

impl FromObject for Delta {
    type Out = pb::Delta;
    const FIELDS: &'static [&'static str] = &[
        "role",
        "content",
        "tool_calls",
        "refusal",
        "reasoning_content",
        "reasoning",
    ];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        let d = &mut self.delta;
        match index {
            0 => d.role = string(map)?,
            1 => d.content = string(map)?,
            2 => d.tool_calls = list::<pb::ToolCallDelta, A>(map)?,
            3 => d.refusal = string(map)?,
            4 => d.reasoning_content = string(map)?,
            _ => self.reasoning = string(map)?,
        }
        Ok(())
    }
    fn done(self) -> pb::Delta {
        let mut d = self.delta;
        d.reasoning_content = d.reasoning_content.or(self.reasoning);
        d
    }
}

impl FromObject for pb::ToolCallDelta {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &["index", "id", "type", "function"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.index = uint(map)?,
            1 => self.id = string(map)?,
            2 => self.r#type = string(map)?,
            _ => self.function = object::<pb::FunctionCallDelta, A>(map)?,
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

impl FromObject for pb::FunctionCallDelta {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &["name", "arguments"];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.name = string(map)?,
            _ => self.arguments = string(map)?,
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

impl FromObject for pb::Usage {
    type Out = Self;
    const FIELDS: &'static [&'static str] = &[
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    ];
    fn field<'de, A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => self.prompt_tokens = uint(map)?,
            1 => self.completion_tokens = uint(map)?,
            2 => self.total_tokens = uint(map)?,
            3 => self.prompt_tokens_details = structure(map)?,
            _ => self.completion_tokens_details = structure(map)?,
        }
        Ok(())
    }
    fn done(self) -> Self {
        self
    }
}

/// Every field of the object at `map`; the ones `T` does not read are checked and skipped.
fn read_object<'de, T: FromObject, A: MapAccess<'de>>(mut map: A) -> Result<T::Out, A::Error> {
    let mut out = T::default();
    while let Some(key) = map.next_key_seed(Key(T::FIELDS))? {
        match key {
            Some(index) => out.field(index, &mut map)?,
            None => map.next_value_seed(Any(Skip))?,
        }
    }
    Ok(out.done())
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

// ---- lenient values: what each kind of JSON value reads as ----

/// What a value reads as, by its JSON kind; a kind not handled reads as [`Sink::other`]
/// (arrays and objects are still read through, to check them).
trait Sink: Sized {
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
    fn seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        while seq.next_element_seed(Any(Skip))?.is_some() {}
        Ok(self.other())
    }
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        while map.next_key_seed(Any(Skip))?.is_some() {
            map.next_value_seed(Any(Skip))?;
        }
        Ok(self.other())
    }
}

/// Reads any JSON value into its [`Sink`].
struct Any<S>(S);

impl<'de, S: Sink> DeserializeSeed<'de> for Any<S> {
    type Value = S::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink> Visitor<'de> for Any<S> {
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
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Out, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Out, A::Error> {
        self.0.map(map)
    }
}

/// Any value, checked and dropped.
struct Skip;
impl Sink for Skip {
    type Out = ();
    fn other(self) {}
}

/// A string; anything else is unset.
struct Str;
impl Sink for Str {
    type Out = Option<String>;
    fn other(self) -> Option<String> {
        None
    }
    fn str(self, v: &str) -> Option<String> {
        Some(v.to_owned())
    }
}

/// An integer; a float (some upstreams send `1.7e9`) is truncated, anything else is 0.
struct Int;
impl Sink for Int {
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
impl Sink for Finish {
    type Out = pb::FinishReason;
    fn other(self) -> pb::FinishReason {
        pb::FinishReason::Other
    }
    fn null(self) -> pb::FinishReason {
        pb::FinishReason::Unspecified
    }
    fn str(self, v: &str) -> pb::FinishReason {
        use pb::FinishReason as F;
        match v {
            "stop" => F::Stop,
            "length" => F::Length,
            "tool_calls" => F::ToolCalls,
            "content_filter" => F::ContentFilter,
            "function_call" => F::FunctionCall,
            _ => F::Other,
        }
    }
}

/// A message if the value is an object, else unset.
struct ObjectOnly<T>(PhantomData<T>);
impl<T: FromObject> Sink for ObjectOnly<T> {
    type Out = Option<T::Out>;
    fn other(self) -> Option<T::Out> {
        None
    }
    fn map<'de, A: MapAccess<'de>>(self, map: A) -> Result<Option<T::Out>, A::Error> {
        read_object::<T, A>(map).map(Some)
    }
}

/// A message from an object; any other value is the empty message.
struct Item<T>(PhantomData<T>);
impl<T: FromObject> Sink for Item<T> {
    type Out = T::Out;
    fn other(self) -> T::Out {
        T::default().done()
    }
    fn map<'de, A: MapAccess<'de>>(self, map: A) -> Result<T::Out, A::Error> {
        read_object::<T, A>(map)
    }
}

/// A list of messages (each element as [`Item`]); anything else is the empty list.
struct List<T>(PhantomData<T>);
impl<T: FromObject> Sink for List<T> {
    type Out = Vec<T::Out>;
    fn other(self) -> Vec<T::Out> {
        Vec::new()
    }
    fn seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T::Out>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(item) = seq.next_element_seed(Any(Item::<T>(PhantomData)))? {
            out.push(item);
        }
        Ok(out)
    }
}

/// A JSON object as a `google.protobuf.Struct`; anything else (`null` included) as unset.
struct StructOnly;
impl Sink for StructOnly {
    type Out = Option<prost_types::Struct>;
    fn other(self) -> Option<prost_types::Struct> {
        None
    }
    fn map<'de, A: MapAccess<'de>>(self, map: A) -> Result<Self::Out, A::Error> {
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
impl Sink for ProtoValue {
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
    fn seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<prost_types::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Any(ProtoValue))? {
            values.push(v);
        }
        Ok(kind(prost_types::value::Kind::ListValue(
            prost_types::ListValue { values },
        )))
    }
    fn map<'de, A: MapAccess<'de>>(self, map: A) -> Result<prost_types::Value, A::Error> {
        Ok(kind(prost_types::value::Kind::StructValue(read_struct(
            map,
        )?)))
    }
}

fn kind(kind: prost_types::value::Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
