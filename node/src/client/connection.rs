//! One libp2p connection from a device to its home node, speaking `/hestia/client/1`.

use super::ClientLibError;
use crate::driver::{self, build_swarm, now_millis, peer_of};
use crate::frame::FrameCodec;
use futures::StreamExt;
use hestia_protocol::identity::{IdentityKey, UserId};
use hestia_protocol::wire::{
    self, Auth, ClientAuth, ClientError, ClientOp, ClientRequest, ClientResponse,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity};
use std::time::Duration;

/// How long to wait for the home node to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    rr: request_response::Behaviour<FrameCodec<ClientRequest, ClientResponse>>,
}

/// A connection to the home node.
pub struct Connection {
    swarm: Swarm<ClientBehaviour>,
    node: PeerId,
    /// The user this connection has a session for (after one signed request succeeded).
    session: Option<UserId>,
}

impl Connection {
    pub async fn open(addr: &Multiaddr) -> Result<Connection, ClientLibError> {
        let node =
            peer_of(addr).ok_or_else(|| ClientLibError::AddressWithoutPeerId(addr.clone()))?;
        // A fresh device key per connection: the node learns nothing linking connections except
        // the user id they authenticate as.
        let mut swarm = build_swarm(identity::Keypair::generate_ed25519(), |_| {
            Ok(ClientBehaviour {
                rr: request_response::Behaviour::new(
                    [(
                        StreamProtocol::new(wire::CLIENT_PROTOCOL),
                        ProtocolSupport::Outbound,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(driver::CLIENT_REQUEST_TIMEOUT),
                ),
            })
        })?;
        let unreachable = |reason: String| ClientLibError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        swarm
            .dial(addr.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node => {
                        return Ok(());
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(unreachable(error.to_string()));
                    }
                    _ => {}
                }
            }
        })
        .await;
        match connected {
            Ok(r) => r?,
            Err(_) => return Err(unreachable("timed out".into())),
        }
        Ok(Connection {
            swarm,
            node,
            session: None,
        })
    }

    pub fn node_id(&self) -> String {
        self.node.to_string()
    }

    /// Sends `op` as `key`'s user and waits for the answer. The first request on a connection
    /// is signed and opens a session; later ones name the session (and are signed again if the
    /// node has forgotten it).
    pub async fn call(
        &mut self,
        key: &IdentityKey,
        op: ClientOp,
    ) -> Result<ClientResponse, ClientLibError> {
        let user = key.user_id();
        if self.session == Some(user) {
            match self.send(Auth::Session(user), op.clone()).await {
                Err(ClientLibError::Refused(ClientError::SessionUnknown)) => self.session = None,
                other => return other,
            }
        }
        let me = self.swarm.local_peer_id().to_string();
        let auth = ClientAuth::sign(key, &self.node.to_string(), &me, now_millis(), &op)
            .map_err(|e| ClientLibError::Unexpected(e.to_string()))?;
        let answer = self.send(Auth::Signed(Box::new(auth)), op).await;
        if answer.is_ok() {
            self.session = Some(user);
        }
        answer
    }

    /// Sends these requests at once and returns their answers in the same order: the way to
    /// keep a link busy with several chunks in flight. They go on the session (the first is
    /// sent alone, signed, if there is none yet); one the node answers `SessionUnknown` is sent
    /// again signed.
    pub async fn call_all(
        &mut self,
        key: &IdentityKey,
        ops: Vec<ClientOp>,
    ) -> Vec<Result<ClientResponse, ClientLibError>> {
        let user = key.user_id();
        let mut ops = ops.into_iter();
        let mut out = Vec::new();
        if self.session != Some(user) {
            let Some(first) = ops.next() else {
                return out;
            };
            out.push(self.call(key, first).await);
        }
        let ops: Vec<ClientOp> = ops.collect();
        let requests = ops
            .iter()
            .map(|op| ClientRequest {
                auth: Auth::Session(user),
                op: op.clone(),
            })
            .collect();
        let answers = self.send_all(requests).await;
        for (op, answer) in ops.into_iter().zip(answers) {
            out.push(match answer {
                Err(ClientLibError::Refused(ClientError::SessionUnknown)) => {
                    self.session = None;
                    self.call(key, op).await
                }
                other => other,
            });
        }
        out
    }

    async fn send(&mut self, auth: Auth, op: ClientOp) -> Result<ClientResponse, ClientLibError> {
        let mut answers = self.send_all(vec![ClientRequest { auth, op }]).await;
        answers.pop().expect("one answer per request")
    }

    /// Sends every request at once; their answers (or failures) in the same order.
    async fn send_all(
        &mut self,
        requests: Vec<ClientRequest>,
    ) -> Vec<Result<ClientResponse, ClientLibError>> {
        let mut pending = std::collections::HashMap::new();
        for (i, request) in requests.into_iter().enumerate() {
            let id = self
                .swarm
                .behaviour_mut()
                .rr
                .send_request(&self.node, request);
            pending.insert(id, i);
        }
        let mut answers: Vec<Option<Result<ClientResponse, ClientLibError>>> =
            (0..pending.len()).map(|_| None).collect();
        while !pending.is_empty() {
            let SwarmEvent::Behaviour(ClientBehaviourEvent::Rr(ev)) =
                self.swarm.select_next_some().await
            else {
                continue;
            };
            let (id, answer) = match ev {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => (
                    request_id,
                    match response {
                        ClientResponse::Error(e) => Err(ClientLibError::Refused(e)),
                        r => Ok(r),
                    },
                ),
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => (
                    request_id,
                    Err(ClientLibError::RequestFailed(error.to_string())),
                ),
                _ => continue,
            };
            if let Some(i) = pending.remove(&id) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every request is answered or failed"))
            .collect()
    }
}
