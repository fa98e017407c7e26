//! The request-response codec for both Hestia protocols: a 4-byte big-endian length, then that
//! many bytes of the protocol codec. A length above [`MAX_FRAME_BYTES`] or bytes that do not
//! decode fail that one stream with `InvalidData`; the connection and the node carry on.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::marker::PhantomData;

pub struct FrameCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        FrameCodec(PhantomData)
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        FrameCodec(PhantomData)
    }
}

pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(io: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    codec::decode(&buf, MAX_FRAME_BYTES).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes `value` and writes it as one frame, then closes the write side.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    io: &mut W,
    value: &T,
) -> io::Result<()> {
    let bytes = codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    write_bytes(io, bytes).await
}

async fn write_bytes<W: AsyncWrite + Unpin>(io: &mut W, bytes: Vec<u8>) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

fn log_refusal(protocol: &StreamProtocol, e: &io::Error) {
    if e.kind() == io::ErrorKind::InvalidData {
        tracing::info!(%protocol, error = %e, "refused malformed frame");
    }
}

impl<Req, Resp> request_response::Codec for FrameCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        // libp2p drops a stream whose request fails to read without telling the behaviour, so
        // the refusal is logged here, where it is known.
        read_frame(io)
            .await
            .inspect_err(|e| log_refusal(protocol, e))
    }

    async fn read_response<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
            .await
            .inspect_err(|e| log_refusal(protocol, e))
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes =
            codec::encode(&req).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_bytes(io, bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes =
            codec::encode(&res).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_bytes(io, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        futures::executor::block_on(async {
            let mut big = Cursor::new(((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec());
            let e = read_frame::<Vec<u8>, _>(&mut big).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            let mut junk = vec![0, 0, 0, 3];
            junk.extend_from_slice(&[0xff, 0xff, 0xff]);
            let e = read_frame::<hestia_protocol::wire::FedRequest, _>(&mut Cursor::new(junk))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            let mut buf = Cursor::new(Vec::new());
            write_frame(&mut buf, &vec![1u8, 2, 3]).await.unwrap();
            buf.set_position(0);
            assert_eq!(
                read_frame::<Vec<u8>, _>(&mut buf).await.unwrap(),
                vec![1, 2, 3]
            );
        });
    }
}
