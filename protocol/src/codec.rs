//! The codec: bincode 2 (serde mode, standard configuration: little-endian, variable-length
//! integers) behind two functions. Every decode takes a size limit, refuses trailing bytes and
//! never panics, whatever the input.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame either protocol accepts: a full batch of the largest envelopes plus framing.
/// Chosen so a batch of [`crate::wire::MAX_BATCH_ENVELOPES`] padded 4 KiB envelopes fits, and a
/// peer cannot make us buffer more than this per stream.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// Bincode's own allocation limit, a backstop behind the explicit length check.
const BINCODE_LIMIT: usize = MAX_FRAME_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed frame: {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("value could not be encoded: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

/// Encodes a value. Fails only if a value is larger than [`MAX_FRAME_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok(bytes)
}

/// The length [`encode`] would produce, without building the bytes (for accounting).
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    struct Count(usize);
    impl bincode::enc::write::Writer for Count {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0 += bytes.len();
            Ok(())
        }
    }
    let mut n = Count(0);
    bincode::serde::encode_into_writer(value, &mut n, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(n.0)
}

/// Decodes a value from exactly `bytes`, refusing anything longer than `limit`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// `#[serde(with = "crate::codec::bytes")]` for a `Vec<u8>` field: the same encoding as serde's
/// default for a `Vec<u8>` (a varint length, then the bytes; bincode writes a `u8` as one byte),
/// so it changes no stored or wire form, but it is written and read as one slice instead of
/// one call per byte (an envelope body was the largest cost in encoding a relay batch).
pub mod bytes {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        // Formats that write bytes as a sequence (JSON) read back the same way.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The hint comes from the input: bounded, never trusted as an allocation size.
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u32,
        b: Vec<u8>,
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct SampleBytes {
        a: u32,
        #[serde(with = "bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn the_bytes_helper_keeps_the_encoding() {
        for n in [0usize, 1, 250, 251, 300, 70_000] {
            let b: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let plain = encode(&Sample { a: 9, b: b.clone() }).unwrap();
            let fast = encode(&SampleBytes { a: 9, b: b.clone() }).unwrap();
            assert_eq!(plain, fast, "length {n}");
            let back: SampleBytes = decode(&plain, MAX_FRAME_BYTES).unwrap();
            assert_eq!(back.b, b);
            let json = serde_json_like(&back);
            assert_eq!(json, b);
        }
        // A lying length is refused, not allocated.
        let mut bytes = vec![1, 0xFD];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<SampleBytes>(&bytes, 64).is_err());
        let mut short = vec![1, 10];
        short.extend_from_slice(&[0; 9]);
        assert!(decode::<SampleBytes>(&short, 64).is_err());
    }

    /// Reads the field back through the sequence path, as a self-describing format would.
    fn serde_json_like(s: &SampleBytes) -> Vec<u8> {
        use serde::de::value::{Error, SeqDeserializer};
        let de = SeqDeserializer::<_, Error>::new(s.b.iter().copied());
        bytes::deserialize(de).unwrap()
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = Sample {
            a: 7,
            b: vec![1, 2, 3],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(encoded_len(&s).unwrap(), bytes.len());
        assert_eq!(decode::<Sample>(&bytes, 64).unwrap(), s);
        assert!(matches!(
            decode::<Sample>(&bytes, 2),
            Err(CodecError::TooLarge { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Sample>(&trailing, 64),
            Err(CodecError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode::<Sample>(&bytes[..2], 64),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn a_huge_length_prefix_is_refused_not_allocated() {
        // a = 1, then a Vec length of u64::MAX as a varint (0xFD + 8 bytes).
        let mut bytes = vec![1, 0xFD];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes, 64).is_err());
    }
}
