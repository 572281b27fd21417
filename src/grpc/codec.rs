//! The ChatService's protobuf codec: prost's, with the server's side of the wire made strict.
//! A request message that is not valid protobuf is the caller's fault, INVALID_ARGUMENT (prost's
//! codec says INTERNAL, which reads as the gateway's bug), and a second request message on a
//! call that takes one is refused as INVALID_ARGUMENT (tonic's unary decoding reads the first
//! and silently drops the rest). Responses decode as prost's codec does them (the generated
//! client shares this codec): many messages allowed, a bad one INTERNAL.
//!
//! `build.rs` names this codec for the generated code; [`Wire`] says which side a type is.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::pb;
use super::status::DOMAIN;

/// Which way a message type travels: every ChatService call takes exactly one request
/// message; responses may be a stream.
pub trait Wire {
    /// A request: decoded by the server, one per call.
    const REQUEST: bool;
}

macro_rules! wire {
    ($request:literal: $($t:ty),*) => {
        $(impl Wire for $t {
            const REQUEST: bool = $request;
        })*
    };
}
wire!(true: pb::ChatCompletionRequest, pb::ListModelsRequest);
wire!(false: pb::ChatCompletion, pb::ChatCompletionChunk, pb::ListModelsResponse);

/// [`tonic_prost::ProstCodec`] with a strict decoder for requests.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Wire + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            seen: false,
            _pd: PhantomData,
        }
    }
}

/// One call's decoder (tonic makes one per call): it counts the request messages it has read.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    seen: bool,
    _pd: PhantomData<U>,
}

impl<U: Message + Default + Wire> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if !U::REQUEST {
            return U::decode(buf)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()));
        }
        if std::mem::replace(&mut self.seen, true) {
            return Err(invalid(
                "TOO_MANY_MESSAGES",
                "this call takes exactly one request message; a second one arrived",
            ));
        }
        U::decode(buf).map(Some).map_err(|e| {
            invalid(
                "INVALID_PROTOBUF",
                &format!("the request message is not valid protobuf: {e}"),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// INVALID_ARGUMENT with the details every gateway error carries (ErrorInfo, one BadRequest
/// violation naming no field: the message as a whole is wrong).
pub(super) fn invalid(reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, DOMAIN, std::collections::HashMap::new());
    details.add_bad_request_violation("", message);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_usual_details() {
        // The decoder itself is exercised over the wire in tests/grpc_validation.rs.
        let status = invalid("INVALID_PROTOBUF", "bad");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            ""
        );
    }
}
