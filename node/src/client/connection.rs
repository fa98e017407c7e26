//! One libp2p connection from a device to its home node, speaking `/hestia/client/1`.

use super::ClientLibError;
use crate::driver::{self, build_swarm, now_millis, peer_of};
use crate::frame::FrameCodec;
use futures::StreamExt;
use hestia_protocol::identity::{IdentityKey, UserId};
use hestia_protocol::wire::{
    self, Auth, ClientAuth, ClientError, ClientOp, ClientRequest, ClientResponse,
};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity};
use std::collections::{HashMap, VecDeque};
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
    /// Requests of the window ([`Connection::start`]), oldest first.
    window: VecDeque<Windowed>,
    /// Answers to windowed requests that came before those ahead of them were taken.
    early: HashMap<OutboundRequestId, Answer>,
}

type Answer = Result<ClientResponse, ClientLibError>;

/// One request of the window: sent and waiting, or answered already (one that had to go
/// alone, signed, because there was no session yet).
enum Windowed {
    Sent(OutboundRequestId, ClientOp),
    Answered(Answer),
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
                        return Err(unreachable(dial_reason(&error.to_string())));
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
            window: VecDeque::new(),
            early: HashMap::new(),
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

    /// Sends `op` on the session without waiting: the way to keep a link busy, one request
    /// leaving as each answer is taken. Answers come from [`Connection::next_answer`] in the
    /// order the requests were started. (With no session yet, the request goes alone, signed,
    /// and its answer waits in the window.)
    pub async fn start(&mut self, key: &IdentityKey, op: ClientOp) {
        let user = key.user_id();
        if self.session != Some(user) {
            let answer = self.call(key, op).await;
            self.window.push_back(Windowed::Answered(answer));
            return;
        }
        let request = ClientRequest {
            auth: Auth::Session(user),
            op: op.clone(),
        };
        let id = self
            .swarm
            .behaviour_mut()
            .rr
            .send_request(&self.node, request);
        self.window.push_back(Windowed::Sent(id, op));
    }

    /// Requests started and not yet answered through [`Connection::next_answer`].
    pub fn in_window(&self) -> usize {
        self.window.len()
    }

    /// The answer to the oldest request [`Connection::start`] sent (`None` if there is none).
    /// One the node answers `SessionUnknown` is sent again, signed.
    pub async fn next_answer(&mut self, key: &IdentityKey) -> Option<Answer> {
        let (id, op) = match self.window.pop_front()? {
            Windowed::Answered(a) => return Some(a),
            Windowed::Sent(id, op) => (id, op),
        };
        let answer = loop {
            if let Some(a) = self.early.remove(&id) {
                break a;
            }
            if let SwarmEvent::Behaviour(ClientBehaviourEvent::Rr(ev)) =
                self.swarm.select_next_some().await
                && let Some((got, answer)) = answer_of(ev)
            {
                self.early.insert(got, answer);
            }
        };
        Some(match answer {
            Err(ClientLibError::Refused(ClientError::SessionUnknown)) => {
                self.session = None;
                self.call(key, op).await
            }
            other => other,
        })
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
        let mut pending = HashMap::new();
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
            let Some((id, answer)) = answer_of(ev) else {
                continue;
            };
            match pending.remove(&id) {
                Some(i) => answers[i] = Some(answer),
                // A request of the window: kept for `next_answer`.
                None => {
                    self.early.insert(id, answer);
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every request is answered or failed"))
            .collect()
    }
}

/// libp2p's dial error, which lists every address and transport tried over several lines, as
/// the one short reason a person acts on.
fn dial_reason(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains("connection refused") {
        "connection refused (is the node running?)".into()
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out".into()
    } else if lower.contains("unreachable") {
        "network unreachable".into()
    } else {
        let first = error.lines().next().unwrap_or_default();
        first.chars().take(160).collect()
    }
}

/// The request an event answers, and the answer (a refusal as an error).
fn answer_of(
    ev: request_response::Event<ClientRequest, ClientResponse>,
) -> Option<(OutboundRequestId, Answer)> {
    match ev {
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => Some((
            request_id,
            match response {
                ClientResponse::Error(e) => Err(ClientLibError::Refused(e)),
                r => Ok(r),
            },
        )),
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => Some((
            request_id,
            Err(ClientLibError::RequestFailed(error.to_string())),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dial_errors_become_one_short_line() {
        let libp2p = "Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/tcp/9/p2p/12D3: \
                      : Transport(Other(Custom { kind: Other, error: Other(Left(Left(Os { \
                      code: 111, kind: ConnectionRefused, message: \"Connection refused\" }))) })))]\n\
                      Multiple dial errors occurred";
        assert_eq!(
            super::dial_reason(libp2p),
            "connection refused (is the node running?)"
        );
        assert_eq!(super::dial_reason("odd\nsecond line"), "odd");
    }
}
