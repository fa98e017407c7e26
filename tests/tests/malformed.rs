//! Malformed and oversized frames on both protocols are refused; the node keeps serving.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hestia_protocol::wire::{CLIENT_PROTOCOL, FED_PROTOCOL};
use hestia_tests::Net;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, identity};
use std::io;
use std::time::Duration;

/// Writes the request bytes exactly as given: no framing, no encoding.
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("this test client serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("this test client serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
struct Attacker {
    client: request_response::Behaviour<Raw>,
    fed: request_response::Behaviour<Raw>,
}

fn rr(proto: &'static str) -> request_response::Behaviour<Raw> {
    request_response::Behaviour::new(
        [(StreamProtocol::new(proto), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    )
}

/// Sends each payload on its protocol and returns what came back (an error, or bytes).
async fn send_all(addr: Multiaddr, payloads: Vec<(bool, Vec<u8>)>) -> Vec<Result<Vec<u8>, String>> {
    let mut swarm = hestia_node::driver::build_swarm(identity::Keypair::generate_ed25519(), |_| {
        Ok(Attacker {
            client: rr(CLIENT_PROTOCOL),
            fed: rr(FED_PROTOCOL),
        })
    })
    .unwrap();
    let peer = hestia_node::driver::peer_of(&addr).unwrap();
    swarm.dial(addr).unwrap();
    let mut ids = Vec::new();
    for (fed, bytes) in payloads {
        let id = if fed {
            swarm.behaviour_mut().fed.send_request(&peer, bytes)
        } else {
            swarm.behaviour_mut().client.send_request(&peer, bytes)
        };
        ids.push((fed, id));
    }
    let mut results: Vec<Option<Result<Vec<u8>, String>>> = ids.iter().map(|_| None).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while results.iter().any(Option::is_none) {
        let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
            panic!("no answer in time; so far: {results:?}");
        };
        let (fed, e) = match ev {
            SwarmEvent::Behaviour(AttackerEvent::Client(e)) => (false, e),
            SwarmEvent::Behaviour(AttackerEvent::Fed(e)) => (true, e),
            _ => continue,
        };
        let (id, r) = match e {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => (request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => (request_id, Err(error.to_string())),
            _ => continue,
        };
        if let Some(i) = ids.iter().position(|x| *x == (fed, id)) {
            results[i] = Some(r);
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

#[test]
fn malformed_and_oversized_frames_are_refused_and_the_node_keeps_serving() {
    let mut net = Net::start(1);
    net.account("alice", 0);
    let addr: Multiaddr = net.node_addr(0).parse().unwrap();
    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 64]);
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 5]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(send_all(
        addr,
        vec![
            (false, oversized.clone()),
            (false, garbage.clone()),
            (true, oversized),
            (true, garbage),
        ],
    ));
    for r in &results {
        // Refused: the stream fails, or closes without an answer.
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|b| b.is_empty()),
            "{results:?}"
        );
    }
    assert!(
        net.nodes[0].as_mut().unwrap().is_running(),
        "node went down"
    );
    // The node still serves its users.
    net.ok("alice", &["inbox"]);
    let log = std::fs::read_to_string(net.node_dir(0).join("process.log")).unwrap();
    // Logged as a summary, not one line per stream: a sender cannot choose the log's volume.
    // (A stranger's oversized frame is refused at its length, before any byte is buffered.)
    assert_eq!(
        log.matches("refusing malformed, oversized or slow frames")
            .count(),
        1,
        "refusals are summarised:\n{log}"
    );
}

/// Declares a full-size frame on every stream, sends all of it but one byte, and holds on.
#[derive(Clone, Default)]
struct Hold;

impl request_response::Codec for Hold {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("expects nothing"))
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, _: ()) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        let len = hestia_protocol::codec::MAX_FRAME_BYTES;
        io.write_all(&(len as u32).to_be_bytes()).await?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = len - 1;
        while left > 0 {
            let n = left.min(chunk.len());
            io.write_all(&chunk[..n]).await?;
            left -= n;
        }
        io.flush().await?;
        futures::future::pending::<()>().await;
        Ok(())
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: ()) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
struct Flooder {
    auth: request_response::Behaviour<
        hestia_node::frame::FrameCodec<
            hestia_protocol::wire::ClientRequest,
            hestia_protocol::wire::ClientResponse,
        >,
    >,
    hold: request_response::Behaviour<Hold>,
}

/// A connection that first registers an account (registration is open, so anyone can: this is
/// the strongest flooder, past the small limit for strangers), then holds [`FLOOD_STREAMS`]
/// full-size frames open on it.
async fn authenticated_flooder(addr: &Multiaddr) -> libp2p::Swarm<Flooder> {
    use hestia_protocol::wire::{Auth, ClientAuth, ClientOp, ClientRequest, ClientResponse};
    let outbound = |streams| {
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(60))
            .with_max_concurrent_streams(streams)
    };
    let mut s = hestia_node::driver::build_swarm(identity::Keypair::generate_ed25519(), |_| {
        Ok(Flooder {
            auth: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CLIENT_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                outbound(1),
            ),
            hold: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CLIENT_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                outbound(FLOOD_STREAMS),
            ),
        })
    })
    .unwrap();
    let node = hestia_node::driver::peer_of(addr).unwrap();
    s.dial(addr.clone()).unwrap();
    let key = hestia_protocol::identity::IdentityKey::generate(&mut rand::rng());
    let me = s.local_peer_id().to_string();
    let now = hestia_node::driver::now_millis();
    let op = ClientOp::Register;
    let auth = ClientAuth::sign(&key, &node.to_string(), &me, now, &op).unwrap();
    let req = ClientRequest {
        auth: Auth::Signed(Box::new(auth)),
        op,
    };
    s.behaviour_mut().auth.send_request(&node, req);
    loop {
        if let SwarmEvent::Behaviour(FlooderEvent::Auth(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) = s.select_next_some().await
        {
            assert_eq!(response, ClientResponse::Registered);
            break;
        }
    }
    for _ in 0..FLOOD_STREAMS {
        s.behaviour_mut().hold.send_request(&node, ());
    }
    s
}

/// Connections of the flood, each with this many streams held open.
const FLOOD_CONNECTIONS: usize = 4;
const FLOOD_STREAMS: usize = 128;
/// The node's resident memory must stay under this while flooded (it idles near 30 MiB).
const FLOOD_RSS_LIMIT_KIB: u64 = 256 * 1024;

#[test]
fn a_flood_of_held_full_size_frames_neither_grows_the_node_nor_stops_its_devices() {
    let net = Net::start(1);
    net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let addr: Multiaddr = net.node_addr(0).parse().unwrap();
    let pid = net.nodes[0].as_ref().unwrap().pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut swarms = Vec::new();
            for _ in 0..FLOOD_CONNECTIONS {
                swarms.push(authenticated_flooder(&addr).await);
            }
            // Drive every attacker until told to stop.
            let mut all = futures::stream::select_all(swarms.iter_mut().map(|s| s.by_ref()));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(100), all.next()).await;
            }
        })
    };
    // While it runs, the devices keep working, and the node stays small.
    let mut peak = 0;
    let started = std::time::Instant::now();
    for i in 0..5 {
        let t = std::time::Instant::now();
        net.ok("alice", &["send", "bob", &format!("during the flood {i}")]);
        let inbox = net.ok("bob", &["inbox"]);
        assert!(inbox.contains(&format!("during the flood {i}")), "{inbox}");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "a send and read took {took:?}"
        );
        peak = peak.max(hestia_tests::memory_kib(pid).0);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(flood).unwrap();
    let (_, hwm) = hestia_tests::memory_kib(pid);
    eprintln!(
        "flood: {:?}, node resident peak seen {peak} KiB, high-water mark {hwm} KiB",
        started.elapsed()
    );
    assert!(
        hwm < FLOOD_RSS_LIMIT_KIB,
        "node grew to {hwm} KiB under the flood"
    );
}
