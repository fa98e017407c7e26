//! The libp2p driver around [`crate::relay::Core`]: owns the swarm, the RocksDB node database and
//! the clock, and does nothing but translate. Each turn of the loop feeds every swarm event that
//! is already ready into the core (up to [`MAX_EVENTS_PER_TURN`]), writes the core's writes in
//! one synced batch (group commit), then sends the core's outputs.

use crate::admin_socket::AdminCall;
use crate::frame::FrameCodec;
use crate::metrics::{HttpCall, Metrics, Probe};
use crate::relay::{
    self, AdminRequest, AdminResponse, BatchId, FedFailure, Ready, Token, WakeId, WakeOutcome,
};
use crate::webpush;
use futures::{FutureExt, StreamExt};
use hestia_protocol::Millis;
use hestia_protocol::wire::{
    self, ClientRequest, ClientResponse, FedRequest, FedResponse, PROTOCOL_VERSION, Presence,
};
use hestia_store::node::{NodeDb, NodeStore};
use libp2p::metrics::Recorder;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, identity, kad, noise, ping, tcp,
    yamux,
};
use libp2p::{connection_limits, memory_connection_limits};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Swarm events fed into the core before one group commit.
pub const MAX_EVENTS_PER_TURN: usize = 256;
/// How long a federation request may take before it counts as failed (and is retried).
pub const FED_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Client requests may be long polls of up to [`wire::MAX_FETCH_WAIT_MS`].
pub const CLIENT_REQUEST_TIMEOUT: Duration =
    Duration::from_millis(wire::MAX_FETCH_WAIT_MS as u64 + 10_000);
/// Concurrent streams per connection per protocol.
pub const MAX_CONCURRENT_STREAMS: usize = 128;
/// How often a node announces itself on the presence topic.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(20);
/// Largest gossipsub message: presence is small.
pub const MAX_PRESENCE_BYTES: usize = 4096;
/// Connections being set up (Noise handshakes) at once: a flood of half-open connections
/// costs at most this many handshakes.
pub const MAX_PENDING_INCOMING: u32 = 256;
/// Established inbound connections: devices holding long polls and peer nodes. Ten thousand
/// connected devices is the aim for one node (issue 10), with room for peers.
pub const MAX_ESTABLISHED_INCOMING: u32 = 12_000;
/// Resident memory above which the node takes no new connection, in or out (libp2p's
/// memory-connection-limits, read at most every 100 ms): a backstop behind the per-connection
/// and per-address bounds. Ten thousand devices with long polls take about 0.5 GiB
/// (docs/benchmarks.md), so this leaves room for them and for mail in flight.
pub const MAX_PROCESS_MEMORY_BYTES: usize = 1536 << 20;
/// Connections one peer id may hold: one, plus a few while reconnecting or dialling both ways.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Nodes whose latest presence time is remembered (to refuse replays).
pub const MAX_PRESENCE_RECORDS: usize = 4096;
/// Connections stay open this long without traffic, so clients and peers avoid re-handshakes.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// A failed dial starts a Kademlia lookup of the peer at most this often per peer. Without it a
/// node that is down turned every lookup's own failed dial into another lookup: ~300 dials a
/// second from each node with mail for it, and every node's latency climbing (found by
/// `hestia sim run --real` with a crash; docs/simulations.md).
pub const LOOKUP_INTERVAL_MS: Millis = 30_000;
/// Peers whose last lookup time is remembered.
pub const MAX_LOOKUP_RECORDS: usize = 1024;
/// After a shutdown signal the node stops listening, then spends at most this long sending the
/// answers already made (everything it acknowledged is durable before that) and closing its
/// connections; it exits within about this bound.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Backups kept by default (`backups_keep`).
pub const BACKUPS_KEPT: usize = 7;

/// Decides whether a failed dial may start a lookup of the peer: once per
/// [`LOOKUP_INTERVAL_MS`] per peer, for at most [`MAX_LOOKUP_RECORDS`] peers at a time.
#[derive(Default)]
pub struct LookupThrottle {
    last: HashMap<PeerId, Millis>,
}

impl LookupThrottle {
    pub fn allow(&mut self, peer: PeerId, now: Millis) -> bool {
        if let Some(at) = self.last.get(&peer)
            && now.saturating_sub(*at) < LOOKUP_INTERVAL_MS
        {
            return false;
        }
        if self.last.len() >= MAX_LOOKUP_RECORDS && !self.last.contains_key(&peer) {
            self.last
                .retain(|_, at| now.saturating_sub(*at) < LOOKUP_INTERVAL_MS);
            if self.last.len() >= MAX_LOOKUP_RECORDS {
                return false; // many peers failing at once: their retries will look again
            }
        }
        self.last.insert(peer, now);
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] hestia_store::StoreError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored node key is unreadable: {0}")]
    Key(String),
    #[error("could not build the network stack: {0}")]
    Transport(String),
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("bootstrap address {0} has no /p2p/<peer id> suffix")]
    BootstrapWithoutPeerId(Multiaddr),
    #[error("the call relay cannot listen on {addr}: {reason}")]
    TurnListen {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error(transparent)]
    Admin(#[from] crate::admin_socket::AdminError),
    #[error("the metrics listener cannot listen on {addr}: {reason}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        reason: String,
    },
}

/// Sets the process's log filter (the CLI owns the subscriber); a bad filter is refused with
/// why.
pub type LogControl = std::sync::Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload (SIGHUP) changes while the node runs.
#[derive(Clone, Debug, Default)]
pub struct Reload {
    pub registration: Option<relay::Registration>,
    pub log_level: Option<String>,
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// First, so a connection over a limit is refused before any other behaviour sees it.
    pub limits: connection_limits::Behaviour,
    pub per_ip: crate::ip_limits::Behaviour,
    pub memory: memory_connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub fed: request_response::Behaviour<FrameCodec<FedRequest, FedResponse>>,
    pub client: request_response::Behaviour<FrameCodec<ClientRequest, ClientResponse>>,
}

pub const KAD_PROTOCOL: &str = "/hestia/kad/1";

/// Kademlia in server mode on Hestia's own protocol name.
pub fn kad_behaviour(peer: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_cfg.set_query_timeout(Duration::from_secs(30));
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_cfg);
    // On loopback and in small federations no address is ever confirmed external; answer queries
    // anyway, or nodes would never find each other through the bootstrap node.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Adds the listen addresses a peer reported through identify to Kademlia, if it speaks
/// Hestia's Kademlia (clients do not, and stay out of the routing table).
pub fn learn_addresses(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    peer: PeerId,
    info: identify::Info,
) {
    if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
        for addr in info.listen_addrs {
            kad.add_address(&peer, addr);
        }
    }
}

/// The connection limits every Hestia node and bootstrap node applies (see the constants).
pub fn connection_limits_behaviour() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
    )
}

/// Gossipsub for presence: signed messages, strict validation, small messages.
pub fn gossip_behaviour(key: &identity::Keypair) -> Result<gossipsub::Behaviour, NodeError> {
    let gs_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .max_transmit_size(MAX_PRESENCE_BYTES)
        .message_id_fn(|m: &gossipsub::Message| {
            let source = m.source.map(|p| p.to_bytes());
            gossipsub::MessageId::from(wire::gossip_message_id(
                source.as_deref(),
                m.sequence_number,
                &m.data,
            ))
        })
        .build()
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gs_cfg)
        .map_err(|e| NodeError::Transport(e.to_string()))
}

pub fn identify_behaviour(key: &identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        format!("/hestia/{PROTOCOL_VERSION}"),
        key.public(),
    ))
}

/// The behaviour every Hestia node runs.
pub fn node_behaviour(key: &identity::Keypair) -> Result<NodeBehaviour, NodeError> {
    let rr = |timeout| {
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS)
    };
    Ok(NodeBehaviour {
        limits: connection_limits_behaviour(),
        per_ip: crate::ip_limits::Behaviour::default(),
        memory: memory_connection_limits::Behaviour::with_max_bytes(MAX_PROCESS_MEMORY_BYTES),
        identify: identify_behaviour(key),
        ping: ping::Behaviour::new(ping::Config::new()),
        kad: kad_behaviour(key.public().to_peer_id()),
        gossipsub: gossip_behaviour(key)?,
        fed: request_response::Behaviour::new(
            [(
                StreamProtocol::new(wire::FED_PROTOCOL),
                ProtocolSupport::Full,
            )],
            rr(FED_REQUEST_TIMEOUT),
        ),
        client: request_response::Behaviour::new(
            [(
                StreamProtocol::new(wire::CLIENT_PROTOCOL),
                ProtocolSupport::Inbound,
            )],
            rr(CLIENT_REQUEST_TIMEOUT),
        ),
    })
}

/// Builds a swarm over TCP + Noise + Yamux and QUIC (v1) with the given behaviour.
pub fn build_swarm<B: NetworkBehaviour>(
    key: identity::Keypair,
    behaviour: impl FnOnce(&identity::Keypair) -> Result<B, NodeError>,
) -> Result<Swarm<B>, NodeError> {
    let mut err = None;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_behaviour(|k| match behaviour(k) {
            Ok(b) => Ok(b),
            Err(e) => {
                err = Some(e.to_string());
                Err(Box::<dyn std::error::Error + Send + Sync>::from(
                    "behaviour",
                ))
            }
        })
        .map_err(|e| NodeError::Transport(err.clone().unwrap_or_else(|| e.to_string())))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Loads the key stored in the database, or makes and stores one.
pub fn node_key(db: &NodeDb) -> Result<identity::Keypair, NodeError> {
    if let Some(bytes) = db.node_key()? {
        return identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| NodeError::Key(e.to_string()));
    }
    let key = identity::Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| NodeError::Key(e.to_string()))?;
    db.set_node_key(&bytes)?;
    Ok(key)
}

/// Splits `/…/p2p/<id>` into the peer id and the address.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub registration: relay::Registration,
    pub limits: relay::Limits,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not at all).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where backups go (default: `backups` in the data directory), and how many are kept.
    pub backup_dir: Option<PathBuf>,
    pub backups_keep: usize,
    /// The database's memory budget, info-log rotation and crash recovery.
    pub db: hestia_store::tuning::DbTuning,
    /// Lets `node admin log-level` and reloads change the log filter.
    pub log_control: Option<LogControl>,
    /// Apply the per-address connection limit to loopback too (tests of that limit).
    pub limit_loopback: bool,
    pub push: PushSettings,
    /// The call relay: where it listens (`None`: no relay, and this node's users cannot
    /// call), and its bounds.
    pub turn_listen: Option<std::net::SocketAddr>,
    pub turn: crate::turn::server::TurnSettings,
    /// Fault injection for tests of lost answers: the process aborts after making the `n`-th
    /// client `Send` durable and before answering it, as a node that crashes at the worst
    /// moment does. `None` in every real node.
    pub crash_after_sends: Option<u32>,
}

/// The node's push wake-up settings.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// Send wake-ups (and accept registrations) at all.
    pub enabled: bool,
    /// Accept and reach endpoints on loopback addresses: tests against a local push service.
    pub allow_loopback: bool,
    /// Longest random delay before a wake-up goes out (0: none).
    pub max_delay_ms: Millis,
    /// The VAPID `sub` claim: a `mailto:` or `https:` address push services can reach the
    /// operator at.
    pub contact: String,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            enabled: true,
            allow_loopback: false,
            max_delay_ms: 0,
            contact: "mailto:operator@hestia.invalid".into(),
        }
    }
}

/// An endpoint check finished: the registration it belongs to, and the verdict.
type EndpointChecked = (Token, Result<(), hestia_protocol::push::EndpointRefusal>);

/// A running node: the swarm, the store and the core.
pub struct Node {
    swarm: Swarm<NodeBehaviour>,
    store: NodeDb,
    core: relay::Core,
    data_dir: PathBuf,
    next_token: u64,
    client_channels: HashMap<Token, ResponseChannel<ClientResponse>>,
    fed_channels: HashMap<Token, ResponseChannel<FedResponse>>,
    batches: HashMap<OutboundRequestId, BatchId>,
    presence_topic: gossipsub::IdentTopic,
    has_bootstrap: bool,
    lookups: LookupThrottle,
    /// The time of the last presence announcement acted on, per node.
    presence_seen: HashMap<PeerId, Millis>,
    /// Sends wake-ups; `None` when push is off.
    pusher: Option<webpush::Sender>,
    wake_results: tokio::sync::mpsc::Receiver<(WakeId, WakeOutcome)>,
    push_allow_loopback: bool,
    /// Endpoint checks finished (the core bounds how many are going on).
    checks_tx: tokio::sync::mpsc::Sender<EndpointChecked>,
    checks_rx: tokio::sync::mpsc::Receiver<EndpointChecked>,
    /// Sends answered so far, and after how many to abort (see [`NodeConfig`]).
    sends_answered: u32,
    crash_after_sends: Option<u32>,
    /// The call relay, until `run` starts it.
    turn: Option<(crate::turn::server::TurnServer, std::net::UdpSocket)>,
    /// The admin socket and the metrics listener, until `run` starts serving them.
    admin_listener: Option<tokio::net::UnixListener>,
    metrics_listener: Option<std::net::TcpListener>,
    admin_rx: tokio::sync::mpsc::Receiver<AdminCall>,
    admin_tx: tokio::sync::mpsc::Sender<AdminCall>,
    http_rx: tokio::sync::mpsc::Receiver<HttpCall>,
    http_tx: tokio::sync::mpsc::Sender<HttpCall>,
    reload_rx: tokio::sync::mpsc::Receiver<Reload>,
    reload_tx: tokio::sync::mpsc::Sender<Reload>,
    /// Admin requests whose answers wait for their writes.
    admin_replies: HashMap<Token, tokio::sync::oneshot::Sender<AdminResponse>>,
    metrics: Metrics,
    started: std::time::Instant,
    backup_dir: PathBuf,
    backups_keep: usize,
    log_control: Option<LogControl>,
    /// The remote address of each connection, for counting registrations per address
    /// (loopback is left out unless `limit_loopback`).
    connection_ips: HashMap<ConnectionId, std::net::IpAddr>,
    limit_loopback: bool,
    listener_ids: Vec<libp2p::core::transport::ListenerId>,
    shutting_down: bool,
}

/// Binds the call relay's socket and derives its keys from the node's relay secret (made at
/// first start).
fn call_relay(
    store: &NodeDb,
    listen: std::net::SocketAddr,
    settings: crate::turn::server::TurnSettings,
) -> Result<
    (
        relay::CallRelay,
        crate::turn::server::TurnServer,
        std::net::UdpSocket,
    ),
    NodeError,
> {
    use hestia_protocol::turn::TurnKeys;
    if listen.ip().is_unspecified() {
        return Err(NodeError::TurnListen {
            addr: listen,
            reason: "give the address devices reach this node at, not a wildcard".into(),
        });
    }
    let secret: [u8; 32] = match store.turn_secret()? {
        Some(s) => s
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::Key("call relay secret is not 32 bytes".into()))?,
        None => {
            let s: [u8; 32] = rand::random();
            store.set_turn_secret(&s)?;
            s
        }
    };
    let failed = |e: std::io::Error| NodeError::TurnListen {
        addr: listen,
        reason: e.to_string(),
    };
    let socket = std::net::UdpSocket::bind(listen).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    let config = relay::CallRelay {
        server: socket.local_addr().map_err(failed)?,
        keys: std::sync::Arc::new(TurnKeys::derive(&secret)),
    };
    let server = crate::turn::server::TurnServer::new(settings, config.keys.clone());
    Ok((config, server, socket))
}

impl Node {
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        // Owner only (0700): the node key and every user's mail are in here.
        hestia_store::secure_dir(&config.data_dir).map_err(|e| match e {
            hestia_store::StoreError::Io { path, source } => NodeError::DataDir { path, source },
            other => other.into(),
        })?;
        let store = NodeDb::open_tuned(&config.data_dir.join("db"), &config.db)?;
        // Refuses to start beside another node on the same directory (its socket answers).
        let admin_listener = crate::admin_socket::bind(&config.data_dir)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let failed = |e: std::io::Error| NodeError::MetricsListen {
                    addr,
                    reason: e.to_string(),
                };
                let l = std::net::TcpListener::bind(addr).map_err(failed)?;
                l.set_nonblocking(true).map_err(failed)?;
                let bound = l.local_addr().map_err(failed)?;
                tracing::info!(addr = %bound, "metrics and health checks listening");
                let path = config.data_dir.join("metrics.addr");
                if let Err(e) = std::fs::write(&path, format!("{bound}\n")) {
                    tracing::warn!(error = %e, "could not record the metrics address");
                }
                Some(l)
            }
            None => None,
        };
        // Listen addresses are recorded afresh each run (ports may differ).
        let _ = std::fs::remove_file(config.data_dir.join("listen.addr"));
        let key = node_key(&store)?;
        let peer = key.public().to_peer_id();
        let mut swarm = build_swarm(key, node_behaviour)?;
        swarm
            .behaviour_mut()
            .per_ip
            .limit_loopback(config.limit_loopback);
        let presence_topic = gossipsub::IdentTopic::new(wire::PRESENCE_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&presence_topic)
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        let mut listener_ids = Vec::new();
        for addr in &config.listen {
            listener_ids.push(
                swarm
                    .listen_on(addr.clone())
                    .map_err(|e| NodeError::Listen {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?,
            );
        }
        for addr in &config.bootstrap {
            let id =
                peer_of(addr).ok_or_else(|| NodeError::BootstrapWithoutPeerId(addr.clone()))?;
            swarm.behaviour_mut().kad.add_address(&id, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "could not dial bootstrap node");
            }
        }
        let seed = rand::random::<u64>();
        let (pusher, wake_results, vapid_key) = if config.push.enabled {
            let key = webpush::vapid_key(&store)?;
            let public = webpush::vapid_public(&key);
            let (sender, results) =
                webpush::Sender::new(key, config.push.contact.clone(), config.push.allow_loopback);
            (Some(sender), results, Some(public))
        } else {
            (None, tokio::sync::mpsc::channel(1).1, None)
        };
        let (checks_tx, checks_rx) =
            tokio::sync::mpsc::channel(relay::MAX_PENDING_ENDPOINT_CHECKS + 1);
        let (turn_config, turn) = match config.turn_listen {
            Some(listen) => {
                let (c, server, socket) = call_relay(&store, listen, config.turn.clone())?;
                tracing::info!(addr = %c.server, "call relay listening");
                let path = config.data_dir.join("turn.addr");
                if let Err(e) = std::fs::write(&path, format!("{}\n", c.server)) {
                    tracing::warn!(error = %e, "could not record the call relay's address");
                }
                (Some(c), Some((server, socket)))
            }
            None => (None, None),
        };
        let core = relay::Core::from_store(
            relay::Config {
                node_id: peer.to_string(),
                registration: config.registration,
                seed,
                limits: config.limits,
                push: relay::PushConfig {
                    vapid_key,
                    allow_loopback: config.push.allow_loopback,
                    max_delay_ms: config.push.max_delay_ms,
                },
                turn: turn_config,
            },
            &store,
            now_millis(),
        )?;
        tracing::info!(peer = %peer, stats = ?core.stats(), "node started");
        let (admin_tx, admin_rx) = tokio::sync::mpsc::channel(crate::admin_socket::MAX_CONNECTIONS);
        let (http_tx, http_rx) = tokio::sync::mpsc::channel(crate::metrics::MAX_CONNECTIONS);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let backup_dir = config
            .backup_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("backups"));
        Ok(Node {
            admin_listener: Some(admin_listener),
            metrics_listener,
            admin_rx,
            admin_tx,
            http_rx,
            http_tx,
            reload_rx,
            reload_tx,
            admin_replies: HashMap::new(),
            metrics: Metrics::new(),
            started: std::time::Instant::now(),
            backup_dir,
            backups_keep: config.backups_keep.max(1),
            log_control: config.log_control,
            connection_ips: HashMap::new(),
            limit_loopback: config.limit_loopback,
            listener_ids,
            shutting_down: false,
            swarm,
            store,
            core,
            data_dir: config.data_dir,
            next_token: 0,
            client_channels: HashMap::new(),
            fed_channels: HashMap::new(),
            batches: HashMap::new(),
            lookups: LookupThrottle::default(),
            presence_topic,
            presence_seen: HashMap::new(),
            has_bootstrap: !config.bootstrap.is_empty(),
            pusher,
            wake_results,
            push_allow_loopback: config.push.allow_loopback,
            checks_tx,
            checks_rx,
            sends_answered: 0,
            crash_after_sends: config.crash_after_sends,
            turn,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub fn stats(&self) -> relay::Stats {
        self.core.stats()
    }

    /// Where to send reloads (the CLI sends one on SIGHUP).
    pub fn reloads(&self) -> tokio::sync::mpsc::Sender<Reload> {
        self.reload_tx.clone()
    }

    /// Runs until `shutdown` resolves. Errors from the store end the run: a node that cannot
    /// make writes durable must not acknowledge anything.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        let mut shutdown = std::pin::pin!(shutdown);
        // The call relay runs beside the node on its own task, and ends with it.
        let _relay = match self.turn.take() {
            Some((server, socket)) => {
                let socket = tokio::net::UdpSocket::from_std(socket)
                    .map_err(|e| NodeError::Transport(format!("call relay socket: {e}")))?;
                let task = tokio::spawn(crate::turn::udp::serve(
                    server,
                    socket,
                    std::future::pending(),
                ));
                Some(AbortOnDrop(task))
            }
            None => None,
        };
        let _admin = self.admin_listener.take().map(|l| {
            AbortOnDrop(tokio::spawn(crate::admin_socket::serve(
                l,
                self.admin_tx.clone(),
            )))
        });
        let _http = match self.metrics_listener.take() {
            Some(l) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| NodeError::Transport(format!("metrics listener: {e}")))?;
                Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                    l,
                    self.http_tx.clone(),
                ))))
            }
            None => None,
        };
        // First announcement soon after start (once connections are up), then periodically.
        let mut presence = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(2),
            PRESENCE_INTERVAL,
        );
        if self.has_bootstrap {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        loop {
            let now = now_millis();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now);
            }
            self.flush()?;
            let deadline = self.core.poll_timeout().map(|at| {
                let wait = at.saturating_sub(now_millis());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return self.shut_down().await,
                event = self.swarm.select_next_some() => {
                    self.on_event(event);
                    // Group commit: take whatever else is ready before writing once.
                    for _ in 1..MAX_EVENTS_PER_TURN {
                        match self.swarm.select_next_some().now_or_never() {
                            Some(event) => self.on_event(event),
                            None => break,
                        }
                    }
                }
                _ = timer => {}
                _ = presence.tick() => self.announce(),
                Some((wake, outcome)) = self.wake_results.recv() => {
                    self.core.handle_wake_result(now_millis(), wake, outcome);
                }
                Some((token, verdict)) = self.checks_rx.recv() => {
                    self.core.handle_endpoint_checked(now_millis(), token, verdict);
                }
                Some(call) = self.admin_rx.recv() => self.on_admin(call),
                Some(call) = self.http_rx.recv() => self.on_http(call),
                Some(reload) = self.reload_rx.recv() => self.on_reload(reload),
            }
        }
    }

    /// Stops listening, sends what is already answered, closes connections and flushes the
    /// database, within about [`SHUTDOWN_GRACE`]. Nothing acknowledged is at risk at any point:
    /// every answer left after its writes were durable.
    async fn shut_down(mut self) -> Result<(), NodeError> {
        tracing::info!("node shutting down");
        self.shutting_down = true;
        for id in std::mem::take(&mut self.listener_ids) {
            self.swarm.remove_listener(id);
        }
        self.flush()?;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        // Answers queued in the swarm go out while it is driven; requests still arriving are
        // handled as usual (their answers too are sent only after their writes).
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => {
                    self.on_event(event);
                    self.flush()?;
                }
                Err(_) => break,
            }
            if self.client_channels.is_empty() && self.fed_channels.is_empty() {
                break;
            }
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        self.store.flush()?;
        let _ = std::fs::remove_file(self.data_dir.join(crate::admin_socket::SOCKET_NAME));
        tracing::info!("node stopped");
        Ok(())
    }

    fn on_admin(&mut self, call: AdminCall) {
        let AdminCall { request, reply } = call;
        let response = match request {
            AdminRequest::LogLevel { level } => match &self.log_control {
                None => AdminResponse::Error("this node's log level is fixed".into()),
                Some(set) => match set(&level) {
                    Ok(()) => {
                        tracing::info!(level = %level, "log level changed");
                        AdminResponse::Done(format!("log level is {level}"))
                    }
                    Err(e) => AdminResponse::Error(e),
                },
            },
            AdminRequest::BackupCreate => {
                let dir = self.backup_dir.clone();
                let keep = self.backups_keep;
                match tokio::task::block_in_place(|| self.store.backup(&dir, keep)) {
                    Ok(b) => {
                        tracing::info!(id = b.id, bytes = b.bytes, "backup taken");
                        AdminResponse::Backups(vec![backup_info(b)])
                    }
                    Err(e) => AdminResponse::Error(format!("backup failed: {e}")),
                }
            }
            AdminRequest::BackupList => {
                match tokio::task::block_in_place(|| hestia_store::backup::list(&self.backup_dir)) {
                    Ok(list) => AdminResponse::Backups(list.into_iter().map(backup_info).collect()),
                    Err(e) => AdminResponse::Error(format!("cannot list backups: {e}")),
                }
            }
            AdminRequest::BackupVerify { id } => {
                match tokio::task::block_in_place(|| {
                    hestia_store::backup::verify(&self.backup_dir, id)
                }) {
                    Ok((id, entries)) => AdminResponse::Done(format!(
                        "backup {id} is sound: {entries} entries decoded"
                    )),
                    Err(e) => AdminResponse::Error(format!("backup is not sound: {e}")),
                }
            }
            AdminRequest::Status => {
                let mut s = self.core.admin_status();
                s.version = env!("CARGO_PKG_VERSION").to_string();
                s.uptime_secs = self.started.elapsed().as_secs();
                s.connected_peers = self.swarm.connected_peers().count();
                AdminResponse::Status(s)
            }
            request => {
                let token = self.token();
                self.admin_replies.insert(token, reply);
                let entropy: [u8; 16] = rand::random();
                self.core
                    .handle_admin(now_millis(), token, request, entropy);
                return;
            }
        };
        let _ = reply.send(response);
    }

    fn on_http(&mut self, call: HttpCall) {
        let answer = match call.probe {
            Probe::Metrics => {
                let peers = self.swarm.connected_peers().count();
                (200, self.metrics.render(&self.core, peers))
            }
            Probe::Health => (200, "ok\n".to_string()),
            Probe::Ready if self.shutting_down => (503, "shutting down\n".to_string()),
            Probe::Ready if self.swarm.listeners().next().is_none() => {
                (503, "not listening yet\n".to_string())
            }
            Probe::Ready => (200, "ready\n".to_string()),
        };
        let _ = call.reply.send(answer);
    }

    fn on_reload(&mut self, reload: Reload) {
        if let Some(r) = reload.registration {
            self.core.set_registration(r);
            tracing::info!(registration = ?r, "registration policy reloaded");
        }
        if let (Some(level), Some(set)) = (reload.log_level, &self.log_control) {
            match set(&level) {
                Ok(()) => tracing::info!(level = %level, "log level reloaded"),
                Err(e) => tracing::warn!(error = %e, "log level in the config not applied"),
            }
        }
    }

    /// The driving contract: writes durable first, then outputs.
    fn flush(&mut self) -> Result<(), NodeError> {
        let writes = self.core.take_writes();
        if !writes.is_empty() {
            let started = std::time::Instant::now();
            tokio::task::block_in_place(|| self.store.apply(&writes))?;
            self.metrics.record_write(started.elapsed().as_secs_f64());
        }
        while let Some(out) = self.core.poll_output() {
            // Mail is named by id; its bodies come from the store here (bounded by a batch).
            let ready = tokio::task::block_in_place(|| out.load(&self.store))?;
            match ready {
                Ready::Admin { token, response } => {
                    if let Some(reply) = self.admin_replies.remove(&token) {
                        let _ = reply.send(response);
                    }
                }
                Ready::Client { token, response } => {
                    if matches!(response, ClientResponse::Sent(_)) {
                        self.sends_answered += 1;
                        if self.crash_after_sends == Some(self.sends_answered) {
                            tracing::warn!("aborting before answering a send (fault injection)");
                            std::process::abort();
                        }
                    }
                    if let Some(ch) = self.client_channels.remove(&token)
                        && self
                            .swarm
                            .behaviour_mut()
                            .client
                            .send_response(ch, response)
                            .is_err()
                    {
                        tracing::debug!("client went away before its response");
                    }
                }
                Ready::FedResponse { token, response } => {
                    if let Some(ch) = self.fed_channels.remove(&token)
                        && self
                            .swarm
                            .behaviour_mut()
                            .fed
                            .send_response(ch, response)
                            .is_err()
                    {
                        tracing::debug!("peer node went away before its response");
                    }
                }
                Ready::CheckEndpoint { token, endpoint } => {
                    let allow_loopback = self.push_allow_loopback;
                    let tx = self.checks_tx.clone();
                    tokio::spawn(async move {
                        let verdict = webpush::check_resolved(&endpoint, allow_loopback).await;
                        // The core holds at most MAX_PENDING_ENDPOINT_CHECKS: there is room.
                        let _ = tx.try_send((token, verdict));
                    });
                }
                Ready::Wake { wake, target } => match &self.pusher {
                    Some(p) => p.send(wake, target),
                    None => self.core.handle_wake_result(
                        now_millis(),
                        wake,
                        WakeOutcome::Failed(wire::WakeFailure::Unreachable),
                    ),
                },
                Ready::FedRequest {
                    batch,
                    to_node,
                    request,
                } => match to_node.parse::<PeerId>() {
                    Ok(peer) => {
                        let id = self.swarm.behaviour_mut().fed.send_request(&peer, request);
                        self.batches.insert(id, batch);
                    }
                    Err(_) => {
                        tracing::warn!(to = %to_node, "not a peer id; batch failed");
                        self.core.handle_fed_response(
                            now_millis(),
                            batch,
                            Err(FedFailure::Protocol),
                        );
                    }
                },
            }
        }
        Ok(())
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    fn on_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            } => {
                let ip = endpoint.get_remote_address().iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(a) => Some(std::net::IpAddr::V4(a)),
                    libp2p::multiaddr::Protocol::Ip6(a) => Some(std::net::IpAddr::V6(a)),
                    _ => None,
                });
                if let Some(ip) = ip
                    && endpoint.is_listener()
                    && (self.limit_loopback || !ip.is_loopback())
                {
                    self.connection_ips.insert(connection_id, ip);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.connection_ips.remove(&connection_id);
                if num_established == 0 {
                    self.core.handle_client_disconnected(&peer_id.to_string());
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.peer_id()));
                tracing::info!(addr = %full, "listening");
                let path = self.data_dir.join("listen.addr");
                let mut existing = std::fs::read_to_string(&path).unwrap_or_default();
                existing.push_str(&format!("{full}\n"));
                if let Err(e) = std::fs::write(&path, existing) {
                    tracing::warn!(error = %e, "could not record listen address");
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Client(ev)) => self.on_client(ev),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Fed(ev)) => self.on_fed(ev),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => learn_addresses(&mut self.swarm.behaviour_mut().kad, peer_id, info),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => self.on_presence(propagation_source, message),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if self.lookups.allow(peer, now_millis()) {
                    tracing::debug!(%peer, %error, "dial failed; looking the peer up");
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                } else {
                    tracing::trace!(%peer, %error, "dial failed");
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_client(&mut self, ev: request_response::Event<ClientRequest, ClientResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                let token = self.token();
                self.client_channels.insert(token, channel);
                let source = self.connection_ips.get(&connection_id).copied();
                self.core.handle_client_from(
                    now_millis(),
                    token,
                    &peer.to_string(),
                    source,
                    request,
                );
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, %error, "client request failed (malformed or closed)");
            }
            _ => {}
        }
    }

    fn on_fed(&mut self, ev: request_response::Event<FedRequest, FedResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let token = self.token();
                    self.fed_channels.insert(token, channel);
                    self.core
                        .handle_fed_request(now_millis(), token, &peer.to_string(), request);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(batch) = self.batches.remove(&request_id) {
                        self.core
                            .handle_fed_response(now_millis(), batch, Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::info!(%peer, %error, "federation request failed; will retry");
                let failure = match error {
                    request_response::OutboundFailure::DialFailure => FedFailure::Unreachable,
                    request_response::OutboundFailure::Timeout => FedFailure::Timeout,
                    _ => FedFailure::Protocol,
                };
                if let Some(batch) = self.batches.remove(&request_id) {
                    self.core
                        .handle_fed_response(now_millis(), batch, Err(failure));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, %error, "federation request from peer failed (malformed or closed)");
            }
            _ => {}
        }
    }

    fn on_presence(&mut self, from: PeerId, message: gossipsub::Message) {
        let Ok(p) = hestia_protocol::codec::decode::<Presence>(&message.data, MAX_PRESENCE_BYTES)
        else {
            tracing::info!(%from, "malformed presence announcement ignored");
            return;
        };
        // gossipsub checked the signature of `source`; the announcement must speak for it.
        let Some(source) = message.source else { return };
        if p.peer_id != source.to_string() || p.addrs.len() > wire::MAX_PRESENCE_ADDRS {
            tracing::info!(%from, "presence announcement for another peer ignored");
            return;
        }
        let now = now_millis();
        if !p.is_fresh(now, self.presence_seen.get(&source).copied()) {
            tracing::debug!(%from, "stale or replayed presence announcement ignored");
            return;
        }
        if self.presence_seen.len() >= MAX_PRESENCE_RECORDS
            && !self.presence_seen.contains_key(&source)
        {
            // Forgetting all only lets announcements younger than the age bound count again.
            self.presence_seen.clear();
        }
        self.presence_seen.insert(source, p.at);
        for a in p.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
            self.swarm.behaviour_mut().kad.add_address(&source, a);
        }
    }

    fn announce(&mut self) {
        let addrs: Vec<String> = self
            .swarm
            .listeners()
            .take(wire::MAX_PRESENCE_ADDRS)
            .map(|a| a.to_string())
            .collect();
        let p = Presence {
            peer_id: self.peer_id().to_string(),
            addrs,
            protocol_version: PROTOCOL_VERSION,
            at: now_millis(),
        };
        let Ok(bytes) = hestia_protocol::codec::encode(&p) else {
            return;
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.presence_topic.clone(), bytes)
        {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!("no peers on the presence topic yet");
            }
            Err(e) => tracing::debug!(error = %e, "presence not published"),
        }
    }
}

fn backup_info(b: hestia_store::backup::Backup) -> relay::BackupInfo {
    relay::BackupInfo {
        id: b.id,
        created_at: b.created_at,
        bytes: b.bytes,
        files: b.files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_peer_is_looked_up_once_per_interval() {
        let mut t = LookupThrottle::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(t.allow(a, 1_000));
        // The lookup's own failed dials do not start more lookups.
        assert!(!t.allow(a, 1_001));
        assert!(!t.allow(a, 1_000 + LOOKUP_INTERVAL_MS - 1));
        assert!(t.allow(b, 1_001), "other peers are independent");
        assert!(t.allow(a, 1_000 + LOOKUP_INTERVAL_MS));
    }

    #[test]
    fn lookup_records_are_bounded() {
        let mut t = LookupThrottle::default();
        for _ in 0..MAX_LOOKUP_RECORDS {
            assert!(t.allow(PeerId::random(), 0));
        }
        assert!(!t.allow(PeerId::random(), 1), "full of fresh records");
        assert!(
            t.allow(PeerId::random(), LOOKUP_INTERVAL_MS),
            "stale ones make room"
        );
        assert!(t.last.len() <= MAX_LOOKUP_RECORDS);
    }
}
