//! Asking a stream for its usage on the client's behalf: OpenAI sends a stream's token counts
//! only when the request says `stream_options.include_usage: true`. When the client did not
//! ask, [`ChatRequest::ask_stream_usage`] splices the field into the client's own bytes (the
//! rest untouched, as `model` is spliced), and the usage meter hides the extra chunk again.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ChatRequest;

const ASK: &[u8] = br#""include_usage":true"#;

impl ChatRequest {
    /// The same request asking for the stream's usage, or `None` when the client asked
    /// already (the usage chunk is then the client's own) or the request is no stream.
    pub fn ask_stream_usage(&self) -> Option<ChatRequest> {
        if !self.stream() {
            return None;
        }
        ask_usage(self.body()).map(|body| self.with_body(body))
    }
}

/// `body` (a JSON object) asking for a stream's usage, or `None` when it asks already (or is
/// not what it should be: the upstream then judges it as it is).
pub fn ask_usage(body: &Bytes) -> Option<Bytes> {
    {
        let text = std::str::from_utf8(body).ok()?;
        #[derive(Deserialize)]
        struct Top<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            stream_options: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Options<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            include_usage: Option<&'a RawValue>,
        }
        let top: Top = serde_json::from_str(text).ok()?;
        let spliced = match top.stream_options {
            None => {
                // `{` → `{"stream_options":{"include_usage":true},`
                let brace = text.find('{')?;
                splice(
                    body,
                    brace + 1,
                    brace + 1,
                    br#""stream_options":{"include_usage":true},"#,
                )
            }
            Some(raw) if raw.get() == "null" => {
                let at = offset(text, raw.get());
                splice(body, at, at + 4, br#"{"include_usage":true}"#)
            }
            Some(raw) => {
                let options: Options = serde_json::from_str(raw.get()).ok()?;
                match options.include_usage {
                    Some(v) if v.get() == "true" => return None,
                    Some(v) => {
                        let at = offset(text, v.get());
                        splice(body, at, at + v.get().len(), b"true")
                    }
                    None => {
                        let open = offset(text, raw.get()) + 1;
                        let empty = raw.get()[1..].trim_start().starts_with('}');
                        let insert: &[u8] = if empty {
                            ASK
                        } else {
                            br#""include_usage":true,"#
                        };
                        splice(body, open, open, insert)
                    }
                }
            }
        };
        Some(spliced)
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Where `part` (a slice borrowed from `whole`) starts in it.
fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// `body` with `from..to` replaced by `insert`.
fn splice(body: &[u8], from: usize, to: usize, insert: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.put_slice(&body[..from]);
    out.put_slice(insert);
    out.put_slice(&body[to..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(body: &str) -> Option<String> {
        let req = ChatRequest::from_json(Bytes::from(body.to_owned()), "m").unwrap();
        req.ask_stream_usage()
            .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
    }

    #[test]
    fn the_field_is_spliced_into_the_clients_bytes() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(
            asked(&format!(r#"{{"model":"x","stream":true,{msgs}}}"#)).unwrap(),
            format!(
                r#"{{"stream_options":{{"include_usage":true}},"model":"x","stream":true,{msgs}}}"#
            )
        );
        assert_eq!(
            asked(&format!(
                r#"{{"model":"x","stream":true,"stream_options":null,{msgs}}}"#
            ))
            .unwrap(),
            format!(
                r#"{{"model":"x","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
            )
        );
        assert_eq!(
            asked(&format!(r#"{{"model":"x","stream":true,"stream_options":{{"include_usage": false}},{msgs}}}"#)).unwrap(),
            format!(r#"{{"model":"x","stream":true,"stream_options":{{"include_usage": true}},{msgs}}}"#)
        );
        assert_eq!(
            asked(&format!(
                r#"{{"model":"x","stream":true,"stream_options":{{ }},{msgs}}}"#
            ))
            .unwrap(),
            format!(
                r#"{{"model":"x","stream":true,"stream_options":{{"include_usage":true }},{msgs}}}"#
            )
        );
        assert_eq!(
            asked(&format!(
                r#"{{"model":"x","stream":true,"stream_options":{{"x":1}},{msgs}}}"#
            ))
            .unwrap(),
            format!(
                r#"{{"model":"x","stream":true,"stream_options":{{"include_usage":true,"x":1}},{msgs}}}"#
            )
        );
        for body in [
            format!(
                r#"{{"model":"x","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
            ),
            format!(r#"{{"model":"x",{msgs}}}"#),
        ] {
            assert_eq!(asked(&body), None, "{body}");
        }
        let spliced = asked(&format!(r#"{{"model":"x","stream":true,{msgs}}}"#)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}
