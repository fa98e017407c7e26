//! The relay's thin driver: the listening UDP socket, one socket per allocation, the clock.
//! Everything it decides is the [`TurnServer`]'s.

use super::server::{TurnOutput, TurnServer};
use hestia_protocol::Millis;
use hestia_protocol::stun::MAX_MESSAGE_BYTES;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Datagrams from peers waiting for the relay's loop; beyond it they are dropped.
const PEER_QUEUE: usize = 1024;

fn now_millis() -> Millis {
    crate::driver::now_millis()
}

struct RelaySocket {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// Runs the relay on `listen` (already bound) until `shutdown`; its allocations bind on the
/// listening socket's IP address.
pub async fn serve(
    mut server: TurnServer,
    listen: UdpSocket,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let listen = Arc::new(listen);
    let relay_ip = match listen.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            tracing::error!(error = %e, "call relay socket has no address");
            return;
        }
    };
    let (peer_tx, mut peer_rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(PEER_QUEUE);
    let mut relays: HashMap<SocketAddr, RelaySocket> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut shutdown = std::pin::pin!(shutdown);
    // The server's next deadline, asked once per turn (it looks at every allocation).
    let mut deadline = server.poll_timeout();
    loop {
        let now = now_millis();
        if deadline.is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        while let Some(o) = server.poll_output() {
            match o {
                TurnOutput::ToClient { to, bytes } => {
                    let _ = listen.try_send_to(&bytes, to);
                }
                TurnOutput::ToPeer { relay, to, bytes } => {
                    if let Some(r) = relays.get(&relay) {
                        let _ = r.socket.try_send_to(&bytes, to);
                    }
                }
                TurnOutput::Bind { client } => {
                    let bound = match UdpSocket::bind(SocketAddr::new(relay_ip, 0)).await {
                        Ok(s) => s.local_addr().map(|a| (a, s)),
                        Err(e) => Err(e),
                    };
                    match bound {
                        Ok((addr, socket)) => {
                            let socket = Arc::new(socket);
                            let reader =
                                tokio::spawn(read_peers(socket.clone(), addr, peer_tx.clone()));
                            relays.insert(addr, RelaySocket { socket, reader });
                            server.handle_bound(now_millis(), client, Ok(addr));
                        }
                        Err(e) => server.handle_bound(now_millis(), client, Err(e)),
                    }
                }
                TurnOutput::Release { relay } => {
                    if let Some(r) = relays.remove(&relay) {
                        r.reader.abort();
                    }
                }
            }
        }
        deadline = server.poll_timeout();
        let wait = deadline
            .map(|t| Duration::from_millis(t.saturating_sub(now_millis())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = &mut shutdown => break,
            got = listen.recv_from(&mut buf) => match got {
                // Longer than any STUN message we take: dropped whole, not cut.
                Ok((n, from)) if n <= MAX_MESSAGE_BYTES => {
                    server.handle_client(now_millis(), from, &buf[..n]);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "call relay receive failed"),
            },
            Some((relay, from, bytes)) = peer_rx.recv() => {
                server.handle_peer(now_millis(), relay, from, &bytes);
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    for (_, r) in relays {
        r.reader.abort();
    }
}

async fn read_peers(
    socket: Arc<UdpSocket>,
    relay: SocketAddr,
    tx: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) {
    // Room for the Data indication's own headers within a STUN message.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES - 64];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) if n < buf.len() => {
                // Full: dropped, as the network might have.
                let _ = tx.try_send((relay, from, buf[..n].to_vec()));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "relay socket receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
