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
    assert!(
        log.matches("refused malformed frame").count() >= 4,
        "refusals are logged:\n{log}"
    );
}
