//! A Hestia bootstrap node: the well-known address new nodes dial first. It runs identify, ping,
//! Kademlia (server mode) and gossipsub on the presence topic, and nothing else: it holds no
//! accounts and relays no envelopes. Its key is kept in `<data dir>/bootstrap.key` so its peer
//! id, and so the address nodes are configured with, survives restarts.

use futures::StreamExt;
use hestia_node::driver::{self, NodeError, build_swarm};
use hestia_protocol::wire;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, gossipsub, identify, identity, kad, ping};
use std::path::Path;

#[derive(NetworkBehaviour)]
pub struct BootstrapBehaviour {
    /// First, so a connection over a limit is refused before the others see it.
    limits: libp2p::connection_limits::Behaviour,
    per_ip: hestia_node::ip_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("bootstrap key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

fn load_or_create_key(dir: &Path) -> Result<identity::Keypair, BootstrapError> {
    let path = dir.join("bootstrap.key");
    let err = |reason: String| BootstrapError::Key {
        path: path.display().to_string(),
        reason,
    };
    // Owner only: the key is the bootstrap node's identity.
    hestia_store::secure_dir(dir).map_err(|e| err(e.to_string()))?;
    if let Ok(bytes) = std::fs::read(&path) {
        return identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()));
    }
    let key = identity::Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
    hestia_store::write_secret_file(&path, &bytes).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

pub struct Bootstrap {
    swarm: libp2p::Swarm<BootstrapBehaviour>,
    data_dir: std::path::PathBuf,
}

impl Bootstrap {
    pub fn start(data_dir: &Path, listen: &[Multiaddr]) -> Result<Bootstrap, BootstrapError> {
        let key = load_or_create_key(data_dir)?;
        let _ = std::fs::remove_file(data_dir.join("listen.addr"));
        let mut swarm = build_swarm(key, |k| {
            Ok(BootstrapBehaviour {
                limits: driver::connection_limits_behaviour(),
                per_ip: Default::default(),
                identify: driver::identify_behaviour(k),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad: driver::kad_behaviour(k.public().to_peer_id()),
                gossipsub: driver::gossip_behaviour(k)?,
            })
        })?;
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&gossipsub::IdentTopic::new(wire::PRESENCE_TOPIC))
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        for addr in listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| BootstrapError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Bootstrap {
            swarm,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                ev = self.swarm.select_next_some() => match ev {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        let full = address.with(libp2p::multiaddr::Protocol::P2p(self.peer_id()));
                        tracing::info!(addr = %full, "bootstrap listening");
                        let path = self.data_dir.join("listen.addr");
                        let mut existing = std::fs::read_to_string(&path).unwrap_or_default();
                        existing.push_str(&format!("{full}\n"));
                        if let Err(e) = std::fs::write(&path, existing) {
                            tracing::warn!(error = %e, "could not record listen address");
                        }
                    }
                    SwarmEvent::Behaviour(BootstrapBehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) => driver::learn_addresses(&mut self.swarm.behaviour_mut().kad, peer_id, info),
                    _ => {}
                }
            }
        }
    }
}
