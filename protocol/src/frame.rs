//! The frame both protocols carry on a stream: a 4-byte big-endian length, then that many bytes
//! of the codec ([`crate::codec`]). [`FrameReader`] reads one without doing IO: a driver asks
//! how many bytes it [`wants`](FrameReader::wants), reads at most that many and
//! [`push`es](FrameReader::push) them. Its buffer grows only with the bytes pushed, never to the
//! length a peer declares, and a declared length above the reader's limit is refused before any
//! of the body is taken.

use crate::codec::{self, CodecError};
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
}

/// One frame being read. See the module documentation.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    prefix: [u8; LEN_BYTES],
    prefix_read: usize,
    declared: Option<usize>,
    body: Vec<u8>,
}

impl FrameReader {
    /// A reader that refuses frames longer than `max` bytes (prefix not counted).
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            max,
            prefix: [0; LEN_BYTES],
            prefix_read: 0,
            declared: None,
            body: Vec::new(),
        }
    }

    /// How many more bytes this frame needs: the rest of the prefix, then the rest of the body.
    /// Zero once it is whole.
    pub fn wants(&self) -> usize {
        match self.declared {
            None => LEN_BYTES - self.prefix_read,
            Some(len) => len - self.body.len(),
        }
    }

    /// The body's length, once the prefix has been read (and accepted).
    pub fn declared(&self) -> Option<usize> {
        self.declared
    }

    /// Whether the whole frame has been read.
    pub fn is_complete(&self) -> bool {
        self.declared.is_some() && self.wants() == 0
    }

    /// Takes bytes that arrived, up to the end of this frame (prefix and body: a piece that
    /// completes the prefix may run on into the body), and returns how many it took; the rest
    /// belong to whatever follows the frame. A prefix declaring more than the limit is an
    /// error, and the reader takes nothing more after it.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let mut taken = 0;
        if self.declared.is_none() {
            let n = (LEN_BYTES - self.prefix_read).min(bytes.len());
            self.prefix[self.prefix_read..self.prefix_read + n].copy_from_slice(&bytes[..n]);
            self.prefix_read += n;
            taken = n;
            if self.prefix_read < LEN_BYTES {
                return Ok(taken);
            }
            let len = u32::from_be_bytes(self.prefix) as usize;
            if len > self.max {
                return Err(FrameError::TooLong { len, max: self.max });
            }
            self.declared = Some(len);
        }
        let n = self.wants().min(bytes.len() - taken);
        self.body.extend_from_slice(&bytes[taken..taken + n]);
        Ok(taken + n)
    }

    /// The body read so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Decodes the whole frame's body. Before the frame is whole this fails as malformed.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        if !self.is_complete() {
            return Err(CodecError::Malformed("incomplete frame".into()));
        }
        codec::decode(&self.body, self.max)
    }
}

/// A frame's bytes: the prefix, then `body`.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLong {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(LEN_BYTES + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_frame_pushed_a_byte_at_a_time_and_leaves_what_follows() {
        let body = codec::encode(&("hello", 7u32)).unwrap();
        let mut bytes = frame(&body).unwrap();
        bytes.extend_from_slice(b"next");
        let mut r = FrameReader::new(64);
        let mut used = 0;
        while !r.is_complete() {
            assert!(r.decode::<(String, u32)>().is_err());
            used += r.push(&bytes[used..used + 1]).unwrap();
        }
        assert_eq!(used, LEN_BYTES + body.len());
        assert_eq!(
            r.push(b"more").unwrap(),
            0,
            "a whole frame takes nothing more"
        );
        assert_eq!(r.decode::<(String, u32)>().unwrap(), ("hello".into(), 7));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_the_body() {
        let mut r = FrameReader::new(1024);
        let bytes = [0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        assert_eq!(
            r.push(&bytes),
            Err(FrameError::TooLong {
                len: 0x7fff_ffff,
                max: 1024
            })
        );
        assert!(r.body().is_empty() && r.body.capacity() == 0);
    }

    #[test]
    fn the_buffer_grows_with_what_arrives_not_with_what_is_declared() {
        let mut r = FrameReader::new(1 << 20);
        r.push(&(1u32 << 20).to_be_bytes()).unwrap();
        assert_eq!(r.declared(), Some(1 << 20));
        r.push(&[0; 10]).unwrap();
        assert!(r.body.capacity() < 4096, "{}", r.body.capacity());
        assert_eq!(r.wants(), (1 << 20) - 10);
    }

    #[test]
    fn an_empty_frame_is_whole_after_its_prefix() {
        let mut r = FrameReader::new(8);
        assert_eq!(r.push(&[0, 0, 0, 0, 9]).unwrap(), 4);
        assert!(r.is_complete());
        assert!(r.decode::<u8>().is_err());
    }
}
