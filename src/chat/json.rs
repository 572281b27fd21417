//! Reading upstream JSON bytes: one UTF-8 check of the whole text, then serde_json's text
//! reader, which is cheaper than its byte reader checking each string. Bytes that are not
//! UTF-8 go to the byte reader, so that its error (or what it can still read) is as before.

use serde::de::DeserializeSeed;

/// The value `seed` reads from `bytes`, which must hold one JSON value and nothing after it
/// but whitespace. A type `T` that is `Deserialize` reads with `PhantomData::<T>`.
pub fn read_json<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    match std::str::from_utf8(bytes) {
        Ok(text) => read_json_text(text, seed),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = seed.deserialize(&mut de)?;
            de.end().map(|()| value)
        }
    }
}

/// [`read_json`] of a text already known to be UTF-8.
pub fn read_json_text<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> serde_json::Result<S::Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut de)?;
    de.end().map(|()| value)
}

#[cfg(test)]
mod tests {
    use std::marker::PhantomData;

    use super::*;

    #[test]
    fn text_and_bytes_read_alike() {
        let text: serde_json::Value = read_json(br#"{"a":[1,"x"]} "#, PhantomData).unwrap();
        assert_eq!(text, serde_json::json!({"a": [1, "x"]}));
        // Not UTF-8 inside a string the reader skips: still read, by the byte reader.
        #[derive(serde::Deserialize)]
        struct Usage {
            n: u32,
        }
        let bytes = b"{\"skipped\":\"\xff\",\"n\":3}";
        let u: Usage = read_json(bytes, PhantomData).unwrap();
        assert_eq!(u.n, 3);
        // Trailing content is an error either way.
        assert!(read_json::<PhantomData<serde_json::Value>>(b"{} {}", PhantomData).is_err());
        assert!(read_json::<PhantomData<serde_json::Value>>(b"{} \xff", PhantomData).is_err());
    }
}
