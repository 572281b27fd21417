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

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::pb;
use crate::chat::GatewayError;

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
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = Any(ObjectOnly::<T>(PhantomData))
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match read {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(GatewayError::Internal(
            "the upstream's answer is not a JSON object".into(),
        )),
        Err(e) => {
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            Err(GatewayError::Internal(format!(
                "the upstream's answer is not JSON ({e}): {start}"
            )))
        }
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
mod tests {
    use super::*;
    use serde_json::Value;

    /// The former converter, through `serde_json::Value`: the oracle the typed one must match.
    mod oracle {
        use serde_json::Value;

        use super::super::pb;
        use crate::chat::GatewayError;

        /// A whole completion body.
        pub fn completion(body: &[u8]) -> Result<pb::ChatCompletion, GatewayError> {
            let v = parse(body)?;
            Ok(pb::ChatCompletion {
                id: string(&v, "id").unwrap_or_default(),
                object: string(&v, "object").unwrap_or_default(),
                created: int(&v, "created"),
                model: string(&v, "model").unwrap_or_default(),
                choices: list(&v, "choices")
                    .map(|c| pb::Choice {
                        index: uint(c, "index"),
                        message: c
                            .get("message")
                            .filter(|m| m.is_object())
                            .map(assistant_message),
                        finish_reason: finish_reason(c) as i32,
                        logprobs: c.get("logprobs").and_then(to_struct),
                    })
                    .collect(),
                usage: usage(&v),
                system_fingerprint: string(&v, "system_fingerprint"),
                service_tier: string(&v, "service_tier"),
            })
        }

        /// The data of one SSE event.
        pub fn chunk(data: &[u8]) -> Result<pb::ChatCompletionChunk, GatewayError> {
            let v = parse(data)?;
            Ok(pb::ChatCompletionChunk {
                id: string(&v, "id").unwrap_or_default(),
                object: string(&v, "object").unwrap_or_default(),
                created: int(&v, "created"),
                model: string(&v, "model").unwrap_or_default(),
                choices: list(&v, "choices")
                    .map(|c| pb::ChunkChoice {
                        index: uint(c, "index"),
                        delta: c.get("delta").filter(|d| d.is_object()).map(delta),
                        finish_reason: finish_reason(c) as i32,
                        logprobs: c.get("logprobs").and_then(to_struct),
                    })
                    .collect(),
                usage: usage(&v),
                system_fingerprint: string(&v, "system_fingerprint"),
                service_tier: string(&v, "service_tier"),
            })
        }

        /// The JSON object in `bytes` (already masked by the core: its start may be quoted).
        fn parse(bytes: &[u8]) -> Result<Value, GatewayError> {
            let v: Value = serde_json::from_slice(bytes).map_err(|e| {
                let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
                GatewayError::Internal(format!("the upstream's answer is not JSON ({e}): {start}"))
            })?;
            if !v.is_object() {
                return Err(GatewayError::Internal(
                    "the upstream's answer is not a JSON object".into(),
                ));
            }
            Ok(v)
        }

        fn assistant_message(m: &Value) -> pb::AssistantMessage {
            pb::AssistantMessage {
                role: string(m, "role").unwrap_or_else(|| "assistant".into()),
                content: string(m, "content"),
                tool_calls: list(m, "tool_calls")
                    .map(|t| {
                        let f = t.get("function");
                        pb::ToolCall {
                            id: string(t, "id").unwrap_or_default(),
                            r#type: string(t, "type").unwrap_or_else(|| "function".into()),
                            function: f.map(|f| pb::FunctionCall {
                                name: string(f, "name").unwrap_or_default(),
                                arguments: string(f, "arguments").unwrap_or_default(),
                            }),
                        }
                    })
                    .collect(),
                refusal: string(m, "refusal"),
                reasoning_content: reasoning(m),
            }
        }

        fn delta(d: &Value) -> pb::Delta {
            pb::Delta {
                role: string(d, "role"),
                content: string(d, "content"),
                tool_calls: list(d, "tool_calls")
                    .map(|t| pb::ToolCallDelta {
                        index: uint(t, "index"),
                        id: string(t, "id"),
                        r#type: string(t, "type"),
                        function: t.get("function").filter(|f| f.is_object()).map(|f| {
                            pb::FunctionCallDelta {
                                name: string(f, "name"),
                                arguments: string(f, "arguments"),
                            }
                        }),
                    })
                    .collect(),
                refusal: string(d, "refusal"),
                reasoning_content: reasoning(d),
            }
        }

        /// `reasoning_content`, or `reasoning` as some upstreams (vLLM, OpenRouter) name it.
        fn reasoning(v: &Value) -> Option<String> {
            string(v, "reasoning_content").or_else(|| string(v, "reasoning"))
        }

        fn finish_reason(choice: &Value) -> pb::FinishReason {
            use pb::FinishReason as F;
            match choice.get("finish_reason") {
                None | Some(Value::Null) => F::Unspecified,
                Some(Value::String(s)) => match s.as_str() {
                    "stop" => F::Stop,
                    "length" => F::Length,
                    "tool_calls" => F::ToolCalls,
                    "content_filter" => F::ContentFilter,
                    "function_call" => F::FunctionCall,
                    _ => F::Other,
                },
                Some(_) => F::Other,
            }
        }

        fn usage(v: &Value) -> Option<pb::Usage> {
            let u = v.get("usage").filter(|u| u.is_object())?;
            Some(pb::Usage {
                prompt_tokens: uint(u, "prompt_tokens"),
                completion_tokens: uint(u, "completion_tokens"),
                total_tokens: uint(u, "total_tokens"),
                prompt_tokens_details: u.get("prompt_tokens_details").and_then(to_struct),
                completion_tokens_details: u.get("completion_tokens_details").and_then(to_struct),
            })
        }

        /// A JSON object as a `google.protobuf.Struct`; anything else (`null` included) as unset.
        fn to_struct(v: &Value) -> Option<prost_types::Struct> {
            let Value::Object(map) = v else { return None };
            Some(prost_types::Struct {
                fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
            })
        }

        fn to_value(v: &Value) -> prost_types::Value {
            use prost_types::value::Kind;
            let kind = match v {
                Value::Null => Kind::NullValue(0),
                Value::Bool(b) => Kind::BoolValue(*b),
                Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
                Value::String(s) => Kind::StringValue(s.clone()),
                Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                    values: items.iter().map(to_value).collect(),
                }),
                Value::Object(_) => Kind::StructValue(to_struct(v).unwrap_or_default()),
            };
            prost_types::Value { kind: Some(kind) }
        }

        fn string(v: &Value, key: &str) -> Option<String> {
            v.get(key).and_then(Value::as_str).map(str::to_owned)
        }

        /// An integer field; a float (some upstreams send `1.7e9`) is truncated, anything else is 0.
        fn int(v: &Value, key: &str) -> i64 {
            v.get(key)
                .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
                .unwrap_or_default()
        }

        fn uint(v: &Value, key: &str) -> u32 {
            u32::try_from(int(v, key).max(0)).unwrap_or(u32::MAX)
        }

        fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
            v.get(key).and_then(Value::as_array).into_iter().flatten()
        }
    }

    #[test]
    fn logprobs_usage_details_and_service_tier_survive() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","service_tier":"default",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop",
                        "logprobs":{"content":[{"token":"Hi","logprob":-0.25,"top_logprobs":[]}]}}],
            "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,
                     "prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        let c = completion(body).unwrap();
        assert_eq!(c.service_tier.as_deref(), Some("default"));
        let logprobs = c.choices[0].logprobs.as_ref().expect("logprobs");
        let json = serde_json::to_string(&Value::Object(struct_json(logprobs))).unwrap();
        assert_eq!(
            json,
            r#"{"content":[{"logprob":-0.25,"token":"Hi","top_logprobs":[]}]}"#
        );
        let usage = c.usage.unwrap();
        let cached = &usage.prompt_tokens_details.unwrap().fields["cached_tokens"];
        assert_eq!(
            cached.kind,
            Some(prost_types::value::Kind::NumberValue(2.0))
        );
        assert!(usage.completion_tokens_details.is_some());
    }

    fn struct_json(s: &prost_types::Struct) -> serde_json::Map<String, Value> {
        use prost_types::value::Kind;
        fn json(v: &prost_types::Value) -> Value {
            match v.kind.as_ref().unwrap() {
                Kind::NullValue(_) => Value::Null,
                Kind::BoolValue(b) => Value::Bool(*b),
                Kind::NumberValue(n) => serde_json::json!(n),
                Kind::StringValue(s) => Value::String(s.clone()),
                Kind::ListValue(l) => Value::Array(l.values.iter().map(json).collect()),
                Kind::StructValue(s) => Value::Object(struct_json(s)),
            }
        }
        s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect()
    }

    #[test]
    fn chunk_with_unknown_fields_and_nulls() {
        let data = br#"{"id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"m","new_field":{"x":1},
            "choices":[{"index":0,"delta":{"role":"assistant","content":"Hel","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{"}}]},"finish_reason":null,"logprobs":null}],"usage":null}"#;
        let c = chunk(data).unwrap();
        assert_eq!(
            (c.id.as_str(), c.created, c.model.as_str()),
            ("c1", 1_700_000_000, "m")
        );
        let choice = &c.choices[0];
        assert_eq!(choice.finish_reason, pb::FinishReason::Unspecified as i32);
        let d = choice.delta.as_ref().unwrap();
        assert_eq!(
            (d.role.as_deref(), d.content.as_deref()),
            (Some("assistant"), Some("Hel"))
        );
        assert_eq!(
            d.tool_calls[0]
                .function
                .as_ref()
                .unwrap()
                .arguments
                .as_deref(),
            Some("{")
        );
        assert!(c.usage.is_none());
    }

    #[test]
    fn a_chunk_that_is_not_an_object_is_an_error() {
        let err = chunk(b"[1]").unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        let err = chunk(b"oops [redacted key]").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn completion_with_usage_and_finish_reason() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{}}}"#;
        let c = completion(body).unwrap();
        assert_eq!(c.choices[0].finish_reason, pb::FinishReason::Stop as i32);
        assert_eq!(
            c.choices[0].message.as_ref().unwrap().content.as_deref(),
            Some("hi")
        );
        assert_eq!(c.usage.unwrap().total_tokens, 5);
    }

    /// Upstream answers of every shape the converter meets, odd ones included.
    const CORPUS: &[&str] = &[
        r#"{"id":"x","object":"chat.completion","created":1,"model":"m","service_tier":"default","system_fingerprint":"fp",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"finish_reason":"stop",
                        "logprobs":{"content":[{"token":"Hi","logprob":-0.25,"bytes":[72,105],"top_logprobs":[]}]}}],
            "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,
                     "prompt_tokens_details":{"cached_tokens":2,"audio_tokens":null},"completion_tokens_details":{"reasoning_tokens":0,"nested":{"a":[true,false,"s",1.5e300]}}}}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"m","new_field":{"x":[1,{"y":null}]},
            "choices":[{"index":0,"delta":{"role":"assistant","content":"Hel","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{"}}]},"finish_reason":null,"logprobs":null}],"usage":null}"#,
        r#"{"choices":[{"message":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{}"}},{"type":"custom","function":null},{"function":7},{}]},"finish_reason":"tool_calls"}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":null},{"function":{"arguments":"x"}},5,null]}}]}"#,
        r#"{"choices":[1,"two",null,[],{"index":-4},{"index":1e10},{"index":99999999999},{"index":"3"},{"index":2.9}]}"#,
        r#"{"created":1.7e9,"id":5,"object":null,"model":["m"],"choices":{"0":{}},"usage":[1]}"#,
        r#"{"created":18446744073709551615,"usage":{"prompt_tokens":-1,"completion_tokens":4294967296,"total_tokens":12.7}}"#,
        r#"{"created":-9223372036854775808,"choices":[{"finish_reason":"length"},{"finish_reason":"content_filter"},{"finish_reason":"function_call"},{"finish_reason":"weird"},{"finish_reason":3},{"finish_reason":{}},{}]}"#,
        r#"{"choices":[{"message":{"content":"a","reasoning":"think"}},{"message":{"reasoning_content":"rc","reasoning":"r"}},{"message":{"role":7}},{"message":"text"},{"message":null}]}"#,
        r#"{"choices":[{"delta":{"reasoning":"think","refusal":"no"}},{"delta":{"reasoning_content":null,"reasoning":"r"}},{"delta":[]}]}"#,
        r#"{"id":"first","id":"second","choices":[{"index":1}],"choices":[{"index":2}],"usage":{"total_tokens":1},"usage":3}"#,
        r#"{"id":"\u0041\n\"q\"","model":"\ud83d\ude00","\u0069d":"escaped-key","choices":[{"message":{"content":"é ü \u00e9"}}]}"#,
        r#"{"choices":[{"logprobs":{"k":{"deep":[[[]]],"n":-0.0,"big":123456789012345678901234567890}},"logprobs":[]}]}"#,
        r#"{"choices":[{"logprobs":{"a":1,"a":2}}]}"#,
        r#"  {}  "#,
        r#"[1]"#,
        r#""just a string""#,
        r#"null"#,
        r#"oops [redacted key]"#,
        r#"{"id":"x""#,
        r#"{"id":"x"} trailing"#,
        r#"{"unknown":"\ud800"}"#,
        r#"{"unknown":[1,2,}"#,
        r#"{"created":1e400}"#,
        "",
    ];

    #[test]
    fn the_typed_reading_matches_the_value_one_on_the_corpus() {
        fn same<T: PartialEq + std::fmt::Debug>(
            input: &[u8],
            typed: Result<T, GatewayError>,
            oracle: Result<T, GatewayError>,
        ) {
            let text = String::from_utf8_lossy(input);
            match (typed, oracle) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                (a, b) => panic!("{text}: typed {a:?}, oracle {b:?}"),
            }
        }
        let mut inputs: Vec<Vec<u8>> = CORPUS.iter().map(|s| s.as_bytes().to_vec()).collect();
        inputs.push(b"{\"unknown\":\"\xff\"}".to_vec());
        inputs.push(b"{\"id\":\"\xc3\"}".to_vec());
        inputs.push(b"{\"id\":\"tab\tinside\"}".to_vec());
        for input in &inputs {
            same(input, completion(input), oracle::completion(input));
            same(input, chunk(input), oracle::chunk(input));
        }
    }
}
