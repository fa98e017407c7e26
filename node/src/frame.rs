//! The request-response codec for both Hestia protocols: a 4-byte big-endian length, then that
//! many bytes of the protocol codec. A length above [`MAX_FRAME_BYTES`] or bytes that do not
//! decode fail that one stream with `InvalidData`; the connection and the node carry on.
//!
//! A peer decides what it declares, not what the node spends: a frame's buffer grows only as its
//! bytes arrive, every byte being read is taken from one budget for all streams of the process
//! ([`MAX_BUFFERED_BYTES`]; past it a stream is refused), and a frame must arrive whole within
//! [`FRAME_READ_TIMEOUT`]. Refusals are counted and logged as a summary at most every
//! [`REFUSAL_LOG_INTERVAL`], so a sender cannot decide how much the node logs.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::frame::{self, FrameReader};
use hestia_protocol::wire::{ClientError, ClientRequest, ClientResponse, FedRequest, FedResponse};
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest one frame may take to arrive. 2 MiB in 10 s is 200 KiB/s: any real link; a peer
/// trickling bytes to hold buffers open is cut off.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of frames being read at once, all streams of all connections together. Far above what
/// honest peers keep in flight (a batch is at most 2 MiB), far below what the machine has.
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;
/// Bytes of frames being read at once on one connection: two full frames. An honest device or
/// node sends one request at a time per stream and few streams at once.
pub const MAX_BUFFERED_PER_CONNECTION: usize = 2 * MAX_FRAME_BYTES;
/// How much of a frame is read per step.
const READ_CHUNK: usize = 16 * 1024;
/// Refused frames are summarised in the log at most this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

static BUFFERED: AtomicUsize = AtomicUsize::new(0);
/// Frames refused since start, by [`REFUSAL_REASONS`].
static REFUSED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Why a frame was refused, as the metrics name it: a length prefix above the limit, bytes
/// that do not decode, a frame that did not arrive in time, a buffer budget spent.
pub const REFUSAL_REASONS: [&str; 4] = ["oversized", "malformed", "too_slow", "over_budget"];
static LAST_REFUSAL_LOG: Mutex<Option<Instant>> = Mutex::new(None);

/// Bytes taken from [`MAX_BUFFERED_BYTES`] (and from its connection's budget, if it has one)
/// for one frame being read; given back when dropped.
struct Reservation<'a> {
    conn: Option<&'a AtomicUsize>,
    taken: usize,
}

/// Adds `n` to `counter` unless that passes `max`.
fn take_from(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    let mut cur = counter.load(Ordering::Relaxed);
    loop {
        if cur.saturating_add(n) > max {
            return false;
        }
        match counter.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

impl Reservation<'_> {
    fn take(&mut self, n: usize) -> io::Result<()> {
        let spent = |what: &str| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("the buffer budget for incoming frames ({what}) is spent"),
            )
        };
        if let Some(c) = self.conn
            && !take_from(c, n, MAX_BUFFERED_PER_CONNECTION)
        {
            return Err(spent("this connection's"));
        }
        if !take_from(&BUFFERED, n, MAX_BUFFERED_BYTES) {
            if let Some(c) = self.conn {
                c.fetch_sub(n, Ordering::AcqRel);
            }
            return Err(spent("the node's"));
        }
        self.taken += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.taken, Ordering::AcqRel);
        if let Some(c) = self.conn {
            c.fetch_sub(self.taken, Ordering::AcqRel);
        }
    }
}

/// Bytes of incoming frames being read right now, all streams together.
pub fn buffered_bytes() -> usize {
    BUFFERED.load(Ordering::Relaxed)
}

/// Frames refused since the process started, all reasons together.
pub fn refused_frames() -> u64 {
    REFUSED.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Frames refused since the process started, by reason ([`REFUSAL_REASONS`]).
pub fn refused_frames_by_reason() -> [(&'static str, u64); 4] {
    std::array::from_fn(|i| (REFUSAL_REASONS[i], REFUSED[i].load(Ordering::Relaxed)))
}

/// Which of [`REFUSAL_REASONS`] an error of the codec is, if it is a refusal at all (a stream
/// the peer closed early or reset is not).
fn refusal_reason(e: &io::Error) -> Option<usize> {
    match e.kind() {
        io::ErrorKind::InvalidData => Some(
            if e.get_ref()
                .is_some_and(|inner| inner.downcast_ref::<frame::FrameError>().is_some())
            {
                0
            } else {
                1
            },
        ),
        io::ErrorKind::TimedOut => Some(2),
        io::ErrorKind::OutOfMemory => Some(3),
        _ => None,
    }
}

/// The codec. Each connection gets its own buffer budget ([`MAX_BUFFERED_PER_CONNECTION`])
/// besides the process-wide one, so one peer holding many streams open cannot spend what the
/// others need.
///
/// How the per-connection budget is found: libp2p's request-response behaviour clones its codec
/// once per connection (for the connection's handler) and the handler clones that once per
/// stream. So the behaviour's codec has no budget of its own (`conn: None`), a clone of it starts
/// a new one (a new connection), and a clone of a codec that has one shares it (a stream of that
/// connection). `per_connection_budgets_follow_libp2p_s_cloning` pins this down.
pub struct FrameCodec<Req, Resp> {
    conn: Option<std::sync::Arc<Conn>>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

/// What one connection's streams share: bytes being read, and whether its peer has shown it
/// holds a registered account's key (a response that only such a request gets went out).
#[derive(Default)]
struct Conn {
    buffered: AtomicUsize,
    trusted: std::sync::atomic::AtomicBool,
}

/// What the codec needs to know of the messages it carries.
pub trait Framed: Serialize + DeserializeOwned + Send + 'static {
    /// Largest frame of this type accepted before the connection is trusted. A client's first
    /// request is small (it is signed; the device's first is a prekey check or a registration),
    /// so a stranger cannot make the node read full-size frames before proving anything.
    const UNTRUSTED_MAX: usize = MAX_FRAME_BYTES;
    /// Whether sending this (as a response) shows the peer authenticated.
    fn trusts(&self) -> bool {
        true
    }
}

/// The largest first request a client connection may send: a signed request carries a few
/// hundred bytes of authentication besides its operation.
pub const MAX_UNTRUSTED_CLIENT_FRAME: usize = 64 * 1024;

impl Framed for ClientRequest {
    const UNTRUSTED_MAX: usize = MAX_UNTRUSTED_CLIENT_FRAME;
}

impl Framed for ClientResponse {
    fn trusts(&self) -> bool {
        !matches!(
            self,
            ClientResponse::Error(
                ClientError::NotRegistered
                    | ClientError::BadAuth
                    | ClientError::StaleTimestamp
                    | ClientError::SessionUnknown
                    | ClientError::RegistrationClosed
            )
        )
    }
}

// Nodes are peers by their Noise key alone; their requests are bounded by rate limits instead.
impl Framed for FedRequest {}
impl Framed for FedResponse {}
impl Framed for Vec<u8> {}

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        FrameCodec {
            conn: None,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        FrameCodec {
            conn: Some(
                self.conn
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::new(Conn::default())),
            ),
            _types: PhantomData,
        }
    }
}

/// Reads one frame: its length, then its bytes as they arrive (never allocated at the declared
/// length), within the process-wide buffer budget.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(io: &mut R) -> io::Result<T> {
    read_frame_in(io, None, MAX_FRAME_BYTES).await
}

/// [`read_frame`] within a connection's budget too.
async fn read_frame_in<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    conn: Option<&AtomicUsize>,
    max: usize,
) -> io::Result<T> {
    let reader = read_len(io, max).await?;
    read_body(io, reader, conn).await
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads a frame's length prefix (refused above `max`); the reader then wants the body.
async fn read_len<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> io::Result<FrameReader> {
    let mut reader = FrameReader::new(max);
    let mut prefix = [0u8; frame::LEN_BYTES];
    while reader.declared().is_none() {
        let want = reader.wants();
        let n = io.read(&mut prefix[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reader.push(&prefix[..n]).map_err(invalid)?;
    }
    Ok(reader)
}

/// Reads the body as it arrives, taking every byte from the buffer budgets first.
async fn read_body<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    mut reader: FrameReader,
    conn: Option<&AtomicUsize>,
) -> io::Result<T> {
    let mut reserved = Reservation { conn, taken: 0 };
    let mut chunk = vec![0u8; READ_CHUNK.min(reader.wants())];
    while !reader.is_complete() {
        let want = reader.wants().min(chunk.len());
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reserved.take(n)?;
        reader.push(&chunk[..n]).map_err(invalid)?;
    }
    reader.decode().map_err(invalid)
}

fn too_slow() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "frame did not arrive in time")
}

/// A request: whole within [`FRAME_READ_TIMEOUT`] of the stream opening (a peer that opens
/// streams and sends nothing is cut off too).
async fn read_request_timed<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    conn: Option<&AtomicUsize>,
    max: usize,
) -> io::Result<T> {
    tokio::time::timeout(FRAME_READ_TIMEOUT, read_frame_in(io, conn, max))
        .await
        .map_err(|_| too_slow())?
}

/// A response: its first bytes may take as long as the request does (a long poll waits up to
/// 30 s; request-response's own timeout bounds that), then whole within
/// [`FRAME_READ_TIMEOUT`].
async fn read_response_timed<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    conn: Option<&AtomicUsize>,
) -> io::Result<T> {
    let reader = read_len(io, MAX_FRAME_BYTES).await?;
    tokio::time::timeout(FRAME_READ_TIMEOUT, read_body(io, reader, conn))
        .await
        .map_err(|_| too_slow())?
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

/// Counts a refused frame; logs a summary (not one line per stream) when the interval passed.
fn log_refusal(protocol: &StreamProtocol, e: &io::Error) {
    let Some(reason) = refusal_reason(e) else {
        return;
    };
    REFUSED[reason].fetch_add(1, Ordering::Relaxed);
    let total = refused_frames();
    let Ok(mut last) = LAST_REFUSAL_LOG.lock() else {
        return;
    };
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
        *last = Some(now);
        tracing::info!(%protocol, latest = %e, refused_since_start = total, "refusing malformed, oversized or slow frames");
    }
}

impl<Req: Framed, Resp: Framed> request_response::Codec for FrameCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        // libp2p drops a stream whose request fails to read without telling the behaviour, so
        // the refusal is logged here, where it is known.
        let trusted = self
            .conn
            .as_ref()
            .is_some_and(|c| c.trusted.load(Ordering::Relaxed));
        let max = if trusted {
            MAX_FRAME_BYTES
        } else {
            Req::UNTRUSTED_MAX
        };
        read_request_timed(io, self.conn.as_deref().map(|c| &c.buffered), max)
            .await
            .inspect_err(|e| log_refusal(protocol, e))
    }

    async fn read_response<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response_timed(io, self.conn.as_deref().map(|c| &c.buffered))
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
        if res.trusts()
            && let Some(c) = &self.conn
        {
            c.trusted.store(true, Ordering::Relaxed);
        }
        let bytes =
            codec::encode(&res).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_bytes(io, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    /// The buffer budget is process-wide: these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        futures::executor::block_on(async {
            let mut big = Cursor::new(((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec());
            let e = read_frame::<Vec<u8>, _>(&mut big).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert_eq!(
                refusal_reason(&e).map(|i| REFUSAL_REASONS[i]),
                Some("oversized")
            );
            let mut junk = vec![0, 0, 0, 3];
            junk.extend_from_slice(&[0xff, 0xff, 0xff]);
            let e = read_frame::<hestia_protocol::wire::FedRequest, _>(&mut Cursor::new(junk))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert_eq!(
                refusal_reason(&e).map(|i| REFUSAL_REASONS[i]),
                Some("malformed")
            );
            assert_eq!(
                refusal_reason(&too_slow()).map(|i| REFUSAL_REASONS[i]),
                Some("too_slow")
            );
            let eof: io::Error = io::ErrorKind::UnexpectedEof.into();
            assert_eq!(
                refusal_reason(&eof),
                None,
                "a peer hanging up is not a refusal"
            );
            let mut buf = Cursor::new(Vec::new());
            write_frame(&mut buf, &vec![1u8, 2, 3]).await.unwrap();
            buf.set_position(0);
            assert_eq!(
                read_frame::<Vec<u8>, _>(&mut buf).await.unwrap(),
                vec![1, 2, 3]
            );
        });
    }

    #[test]
    fn a_lying_length_costs_only_the_bytes_that_arrive() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        futures::executor::block_on(async {
            // Declares 2 MiB, sends 10 bytes and ends: refused, nothing held afterwards.
            let mut lie = (MAX_FRAME_BYTES as u32).to_be_bytes().to_vec();
            lie.extend_from_slice(&[0; 10]);
            let e = read_frame::<Vec<u8>, _>(&mut Cursor::new(lie))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(buffered_bytes(), 0);
        });
    }

    #[test]
    fn the_shared_budget_refuses_a_frame_past_it() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut hog = Reservation {
            conn: None,
            taken: 0,
        };
        hog.take(MAX_BUFFERED_BYTES - 100).unwrap();
        futures::executor::block_on(async {
            let mut frame = Cursor::new(Vec::new());
            write_frame(&mut frame, &vec![7u8; 1000]).await.unwrap();
            frame.set_position(0);
            let e = read_frame::<Vec<u8>, _>(&mut frame).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
            assert_eq!(
                refusal_reason(&e).map(|i| REFUSAL_REASONS[i]),
                Some("over_budget")
            );
        });
        drop(hog);
        assert_eq!(buffered_bytes(), 0);
    }

    #[test]
    fn per_connection_budgets_follow_libp2p_s_cloning() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let behaviour = FrameCodec::<Vec<u8>, Vec<u8>>::default();
        let (conn_a, conn_b) = (behaviour.clone(), behaviour.clone());
        let (a1, a2) = (conn_a.clone(), conn_a.clone());
        let budget = |c: &FrameCodec<Vec<u8>, Vec<u8>>| c.conn.clone().unwrap();
        fn bytes(c: &FrameCodec<Vec<u8>, Vec<u8>>) -> Option<&AtomicUsize> {
            c.conn.as_deref().map(|c| &c.buffered)
        }
        assert!(
            std::sync::Arc::ptr_eq(&budget(&a1), &budget(&a2)),
            "streams share"
        );
        assert!(
            !std::sync::Arc::ptr_eq(&budget(&a1), &budget(&conn_b)),
            "connections do not"
        );
        // One connection's streams together stop at its budget; another's still read.
        let mut held = Reservation {
            conn: bytes(&a1),
            taken: 0,
        };
        held.take(MAX_BUFFERED_PER_CONNECTION - 10).unwrap();
        let mut more = Reservation {
            conn: bytes(&a2),
            taken: 0,
        };
        assert!(more.take(11).is_err());
        let mut other = Reservation {
            conn: bytes(&conn_b),
            taken: 0,
        };
        other.take(11).unwrap();
        drop((held, more, other));
        assert_eq!(buffered_bytes(), 0);
    }

    /// Starts answering only after `after`; then yields `data`.
    struct Late {
        sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
        data: Cursor<Vec<u8>>,
    }

    impl AsyncRead for Late {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            use std::future::Future;
            if self.sleep.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
        }
    }

    fn late(after: Duration, data: Vec<u8>) -> Late {
        Late {
            sleep: Box::pin(tokio::time::sleep(after)),
            data: Cursor::new(data),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_answer_may_start_late_but_a_request_may_not() {
        let mut frame = Cursor::new(Vec::new());
        write_frame(&mut frame, &vec![1u8; 10]).await.unwrap();
        let bytes = frame.into_inner();
        // A long poll's answer starts after 30 s: still read.
        let mut slow_answer = late(Duration::from_secs(30), bytes.clone());
        let got: Vec<u8> = read_response_timed(&mut slow_answer, None).await.unwrap();
        assert_eq!(got, vec![1u8; 10]);
        // A request that has not arrived 10 s after its stream opened is cut off.
        let mut slow_request = late(FRAME_READ_TIMEOUT + Duration::from_secs(1), bytes);
        let e = read_request_timed::<Vec<u8>, _>(&mut slow_request, None, MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_client_connection_reads_full_frames_only_once_its_peer_authenticated() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(trust_then_full_frames());
    }

    async fn trust_then_full_frames() {
        use request_response::Codec;
        let proto = StreamProtocol::new(hestia_protocol::wire::CLIENT_PROTOCOL);
        let behaviour = FrameCodec::<ClientRequest, ClientResponse>::default();
        let mut conn = behaviour.clone();
        // A request frame declaring 100 KiB: too large for a stranger's first request.
        let big = || {
            let mut f = ((100 * 1024) as u32).to_be_bytes().to_vec();
            f.resize(4 + 100 * 1024, 0);
            Cursor::new(f)
        };
        let e = conn
            .clone()
            .read_request(&proto, &mut big())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A refusal of authentication does not trust the connection…
        let mut out = Cursor::new(Vec::new());
        let refused = ClientResponse::Error(ClientError::BadAuth);
        conn.write_response(&proto, &mut out, refused)
            .await
            .unwrap();
        let e = conn
            .clone()
            .read_request(&proto, &mut big())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exceeds the limit of 65536"), "{e}");
        // …an answer that only a registered, authenticated request gets does.
        conn.write_response(&proto, &mut out, ClientResponse::Registered)
            .await
            .unwrap();
        let e = conn
            .clone()
            .read_request(&proto, &mut big())
            .await
            .unwrap_err();
        assert!(
            !e.to_string().contains("exceeds"),
            "now past the length check: {e}"
        );
        // Another connection is still a stranger.
        let e = behaviour
            .clone()
            .read_request(&proto, &mut big())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exceeds the limit of 65536"), "{e}");
    }
}
