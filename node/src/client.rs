//! The client library a user's device runs against its home node.
//!
//! - [`Connection`]: one libp2p connection to the home node speaking `/hestia/client/1`; every
//!   request is signed with the user's identity key for this node and this connection.
//! - [`Device`]: the user's side of Hestia: identity, contacts with pinned keys (trust on first
//!   use), prekeys it publishes, forward-secret sessions (X3DH and the Double Ratchet) with each
//!   contact, history in the local [`ClientDb`], sealed-sender envelopes, delivery receipts.
//!   Plaintext exists only here.

use crate::driver::{self, NodeError, build_swarm, now_millis, peer_of};
use crate::frame::FrameCodec;
use futures::StreamExt;
use hestia_protocol::envelope::{
    Content, DEFAULT_TTL_MS, Envelope, EnvelopeError, EnvelopeId, Letter, MAX_NAME_BYTES,
    MAX_RECEIPT_IDS, MAX_TTL_MS,
};
use hestia_protocol::identity::{Address, Fingerprint, IdentityError, IdentityKey, UserId};
use hestia_protocol::safety::SafetyNumber;
use hestia_protocol::session::SessionError;
use hestia_protocol::session::prekeys::{ONE_TIME_PREKEY_TARGET, PrekeySecrets};
use hestia_protocol::session::ratchet::{MAX_SKIPPED_TOTAL, Session, bound_skipped_total};
use hestia_protocol::session::x3dh;
use hestia_protocol::wire::{
    self, Auth, ClientAuth, ClientError, ClientOp, ClientRequest, ClientResponse, DeliveryState,
    MAX_BATCH_ENVELOPES, Outgoing, SendResult,
};
use hestia_store::client::{
    ClientDb, ClientWrite, Contact, Direction, MessageState, StoredIdentity, StoredMessage, Trust,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long to wait for the home node to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envelopes fetched per request.
pub const FETCH_LIMIT: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ClientLibError {
    #[error("home node address {0} must end in /p2p/<peer id>")]
    AddressWithoutPeerId(Multiaddr),
    #[error("could not reach the home node at {addr}: {reason}")]
    Unreachable { addr: Multiaddr, reason: String },
    #[error("the home node did not answer: {0} (the request may or may not have taken effect)")]
    RequestFailed(String),
    #[error("the home node refused the request: {}", describe_refusal(.0))]
    Refused(ClientError),
    #[error("unexpected answer from the home node: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] hestia_store::StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error(
        "no such user on that node, or they have not published prekeys yet (a first message \
         needs their prekeys to start a forward-secret session)"
    )]
    NoBundle,
    #[error(
        "their node {0} did not answer; a first message needs their prekeys from it to start a \
         session, so try again when it is back"
    )]
    ContactNodeUnreachable(String),
    #[error("no account here yet: run `hestia account create --node <multiaddr>` first")]
    NoAccount,
    #[error("an account already exists in this data directory ({0})")]
    AccountExists(String),
    #[error("no contact named {0:?} (see `hestia contact list`)")]
    NoSuchContact(String),
    #[error(
        "contact {name:?} already exists with another key (pinned {pinned}, offered {offered}); \
         remove it first or pick another name"
    )]
    ContactKeyMismatch {
        name: String,
        pinned: Fingerprint,
        offered: Fingerprint,
    },
    #[error(
        "the key of {name:?} changed (pinned {old}, now {new}); compare fingerprints with them, \
         then run `hestia contact accept {name}`"
    )]
    KeyChanged {
        name: String,
        old: Fingerprint,
        new: Fingerprint,
    },
    #[error("{0:?} has no pending key change")]
    NoKeyChange(String),
    #[error("invalid name {0:?}: 1 to {MAX_NAME_BYTES} bytes, letters, digits, '-', '_' or '.'")]
    BadName(String),
}

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

    async fn send(&mut self, auth: Auth, op: ClientOp) -> Result<ClientResponse, ClientLibError> {
        let id = self
            .swarm
            .behaviour_mut()
            .rr
            .send_request(&self.node, ClientRequest { auth, op });
        loop {
            if let SwarmEvent::Behaviour(ClientBehaviourEvent::Rr(ev)) =
                self.swarm.select_next_some().await
            {
                match ev {
                    request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    } if request_id == id => {
                        return match response {
                            ClientResponse::Error(e) => Err(ClientLibError::Refused(e)),
                            r => Ok(r),
                        };
                    }
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    } if request_id == id => {
                        return Err(ClientLibError::RequestFailed(error.to_string()));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Something that happened while reading the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEvent {
    Message(StoredMessage),
    /// A message from someone using a known contact's name and node under a different key.
    /// If the contact was verified the message is held until the user accepts the new key;
    /// otherwise it is shown, with this warning, and the new key is pinned.
    KeyChanged {
        contact: String,
        old: Fingerprint,
        new: Fingerprint,
        held: bool,
        message: StoredMessage,
    },
    /// A contact's device confirmed these of our messages.
    Delivered(Vec<EnvelopeId>),
    /// An envelope that did not open or decrypt (not for us, tampered, no session). Dropped.
    Undecryptable {
        id: EnvelopeId,
        reason: String,
    },
}

/// Sessions kept per contact: the one in use and older ones, so messages that cross a
/// simultaneous session start (both sides initiating) or a peer's reinstall still decrypt.
pub const MAX_SESSIONS_PER_CONTACT: usize = 3;
/// How often a long-running device checks its prekeys with the home node.
pub const PREKEY_CHECK_INTERVAL_MS: u64 = 10 * 60 * 1000;

/// The user's device: identity, prekeys, sessions, contacts, history.
pub struct Device {
    db: ClientDb,
    key: IdentityKey,
    prekeys: PrekeySecrets,
    name: String,
    home_node: String,
    home_addr: Multiaddr,
    last_prekey_check: Option<u64>,
    /// True once a scan found no message waiting for prekeys; a new waiting message clears it.
    /// (RocksDB lets one process at a time open the database, so no one else adds any.)
    none_waiting: bool,
}

pub fn check_name(name: &str) -> Result<(), ClientLibError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ClientLibError::BadName(name.to_string()))
    }
}

fn describe_refusal(e: &ClientError) -> String {
    match e {
        ClientError::RateLimited { retry_after_ms } => format!(
            "sending too fast for this node's limit; try again in {:.1} s",
            *retry_after_ms as f64 / 1000.0
        ),
        other => format!("{other:?}"),
    }
}

fn unexpected(r: ClientResponse) -> ClientLibError {
    ClientLibError::Unexpected(format!("{r:?}"))
}

fn stored(sessions: &[Session]) -> Vec<Zeroizing<Vec<u8>>> {
    sessions.iter().map(Session::to_stored).collect()
}

impl Device {
    /// Creates an identity and prekeys, registers with the home node, stores them, and
    /// publishes the prekeys.
    pub async fn create(
        dir: &Path,
        name: &str,
        node_addr: &Multiaddr,
    ) -> Result<Device, ClientLibError> {
        check_name(name)?;
        let mut db = ClientDb::open(dir)?;
        if let Some(existing) = db.identity()? {
            return Err(ClientLibError::AccountExists(existing.name.clone()));
        }
        let rng = &mut rand::rng();
        let key = IdentityKey::generate(rng);
        let mut conn = Connection::open(node_addr).await?;
        match conn.call(&key, ClientOp::Register).await? {
            ClientResponse::Registered => {}
            other => return Err(unexpected(other)),
        }
        let stored_id = StoredIdentity {
            seed: *key.seed(),
            name: name.to_string(),
            home_node: conn.node_id(),
            home_addr: node_addr.to_string(),
        };
        db.set_identity(&stored_id)?;
        let prekeys = PrekeySecrets::new(rng, &key, now_millis());
        db.commit(&[ClientWrite::Prekeys(prekeys.to_stored())])?;
        let mut device = Device {
            db,
            key,
            prekeys,
            name: name.to_string(),
            home_node: conn.node_id(),
            home_addr: node_addr.clone(),
            last_prekey_check: None,
            none_waiting: false,
        };
        device.maintain_prekeys(&mut conn).await?;
        Ok(device)
    }

    pub fn open(dir: &Path) -> Result<Device, ClientLibError> {
        if !dir.join("CURRENT").exists() {
            return Err(ClientLibError::NoAccount);
        }
        let mut db = ClientDb::open(dir)?;
        let id = db.identity()?.ok_or(ClientLibError::NoAccount)?;
        let home_addr = id
            .home_addr
            .parse()
            .map_err(|_| ClientLibError::Unexpected("stored home address is unreadable".into()))?;
        let key = IdentityKey::from_seed(&id.seed);
        let prekeys = match db.prekeys()? {
            Some(bytes) => PrekeySecrets::from_stored(&bytes)?,
            None => {
                // An account from before sessions existed: make prekeys now; the next
                // connection publishes them.
                let p = PrekeySecrets::new(&mut rand::rng(), &key, now_millis());
                db.commit(&[ClientWrite::Prekeys(p.to_stored())])?;
                p
            }
        };
        Ok(Device {
            key,
            prekeys,
            name: id.name.clone(),
            home_node: id.home_node.clone(),
            home_addr,
            db,
            last_prekey_check: None,
            none_waiting: false,
        })
    }

    pub async fn connect(&self) -> Result<Connection, ClientLibError> {
        Connection::open(&self.home_addr).await
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn user_id(&self) -> UserId {
        self.key.user_id()
    }

    pub fn address(&self) -> Address {
        Address {
            user: self.key.user_id(),
            node: self.home_node.clone(),
        }
    }

    pub fn home_addr(&self) -> &Multiaddr {
        &self.home_addr
    }

    pub fn contacts(&self) -> Result<Vec<Contact>, ClientLibError> {
        Ok(self.db.contacts()?)
    }

    pub fn contact(&self, name: &str) -> Result<Contact, ClientLibError> {
        self.db
            .contact(name)?
            .ok_or_else(|| ClientLibError::NoSuchContact(name.into()))
    }

    pub fn history(&self) -> Result<Vec<StoredMessage>, ClientLibError> {
        Ok(self.db.messages()?)
    }

    /// Rotates the signed prekey when due and tops up the one-time prekeys the home node holds
    /// when it reports them low. New secrets are stored before anything is published, so the
    /// node never hands out a key this device cannot use.
    pub async fn maintain_prekeys(&mut self, conn: &mut Connection) -> Result<(), ClientLibError> {
        let now = now_millis();
        if self
            .last_prekey_check
            .is_some_and(|t| now.saturating_sub(t) < PREKEY_CHECK_INTERVAL_MS)
        {
            return Ok(());
        }
        let rng = &mut rand::rng();
        let before = self.prekeys.signed_count();
        let rotated = self.prekeys.maintain(rng, &self.key, now);
        // Retired signed prekeys past their grace period were dropped: that is a change to
        // store even when nothing is published.
        let forgot = self.prekeys.signed_count() < before + rotated as usize;
        let (held, low) = match conn.call(&self.key, ClientOp::PrekeyStatus).await? {
            ClientResponse::Prekeys { one_time, low } => (one_time as usize, low),
            other => return Err(unexpected(other)),
        };
        // A node that holds no one-time prekeys may hold no signed prekey either (a new or
        // migrated account): publishing the signed one again is harmless.
        if rotated || low || held == 0 {
            let fresh = self
                .prekeys
                .generate_one_time(rng, ONE_TIME_PREKEY_TARGET.saturating_sub(held));
            self.db
                .commit(&[ClientWrite::Prekeys(self.prekeys.to_stored())])?;
            let op = ClientOp::PublishPrekeys {
                signed: Box::new(self.prekeys.current_signed().clone()),
                one_time: fresh,
            };
            match conn.call(&self.key, op).await? {
                ClientResponse::Prekeys { .. } => {}
                other => return Err(unexpected(other)),
            }
        } else if forgot {
            self.db
                .commit(&[ClientWrite::Prekeys(self.prekeys.to_stored())])?;
        }
        self.last_prekey_check = Some(now);
        Ok(())
    }

    /// Adds a contact from an address or a contact card, pinning its key.
    pub fn add_contact(
        &self,
        name: Option<&str>,
        address_or_card: &str,
    ) -> Result<Contact, ClientLibError> {
        let (address, card_name) = Address::parse_card(address_or_card)?;
        address
            .node
            .parse::<PeerId>()
            .map_err(|_| IdentityError::MalformedAddress(address.to_string()))?;
        let name = name
            .map(str::to_string)
            .or(card_name.clone())
            .ok_or_else(|| {
                ClientLibError::BadName("(none: give a name for a bare address)".into())
            })?;
        check_name(&name)?;
        if let Some(existing) = self.db.contact(&name)? {
            if existing.address.user == address.user {
                return Ok(existing);
            }
            return Err(ClientLibError::ContactKeyMismatch {
                name,
                pinned: existing.address.user.fingerprint(),
                offered: address.user.fingerprint(),
            });
        }
        let c = Contact {
            name,
            handle: card_name,
            address,
            trust: Trust::Unverified,
            added_at: now_millis(),
        };
        self.db.put_contact(&c)?;
        Ok(c)
    }

    /// The safety number shared with a contact: the same digits on both devices.
    pub fn safety_number(&self, name: &str) -> Result<SafetyNumber, ClientLibError> {
        let c = self.contact(name)?;
        Ok(SafetyNumber::new(&self.address(), &c.address))
    }

    pub fn verify_contact(&self, name: &str) -> Result<Contact, ClientLibError> {
        let mut c = self.contact(name)?;
        if let Trust::Changed { new_key } = c.trust {
            return Err(ClientLibError::KeyChanged {
                name: name.into(),
                old: c.address.user.fingerprint(),
                new: new_key.fingerprint(),
            });
        }
        c.trust = Trust::Verified;
        self.db.put_contact(&c)?;
        Ok(c)
    }

    /// Accepts a contact's new key and releases the messages held under it.
    pub fn accept_key_change(&self, name: &str) -> Result<Contact, ClientLibError> {
        let mut c = self.contact(name)?;
        let Trust::Changed { new_key } = c.trust else {
            return Err(ClientLibError::NoKeyChange(name.into()));
        };
        c.address.user = new_key;
        c.trust = Trust::Unverified;
        self.db.put_contact(&c)?;
        for m in self.db.messages()? {
            if m.peer == new_key && m.state == MessageState::HeldKeyChanged {
                self.db.set_state(&m.envelope_id, MessageState::Received)?;
            }
        }
        Ok(c)
    }

    fn load_sessions(&self, user: &UserId) -> Result<Vec<Session>, ClientLibError> {
        self.db
            .sessions(user)?
            .iter()
            .map(|b| Session::from_stored(b).map_err(ClientLibError::from))
            .collect()
    }

    /// Encrypts `content` for `to` (whose home node is `node`) in the current session, starting
    /// one from a fetched prekey bundle if there is none. Returns the envelope and the session
    /// state to store with it; the caller commits that before the envelope leaves.
    async fn seal_for(
        &mut self,
        conn: &mut Connection,
        id: EnvelopeId,
        to: &UserId,
        node: &str,
        content: Content,
        ttl_ms: u64,
    ) -> Result<(Envelope, ClientWrite), ClientLibError> {
        let rng = &mut rand::rng();
        let now = now_millis();
        let letter = Letter::new(&self.home_node, &self.name, content, now)?;
        let mut sessions = self.load_sessions(to)?;
        if !sessions.first().is_some_and(Session::can_send) {
            let op = ClientOp::FetchBundle {
                user: *to,
                node: node.to_string(),
            };
            let bundle = match conn.call(&self.key, op).await {
                Ok(ClientResponse::Bundle(b)) if b.identity == *to => *b,
                Ok(other) => return Err(unexpected(other)),
                Err(ClientLibError::Refused(ClientError::NoBundle)) => {
                    return Err(ClientLibError::NoBundle);
                }
                Err(ClientLibError::Refused(ClientError::NodeUnreachable)) => {
                    return Err(ClientLibError::ContactNodeUnreachable(node.to_string()));
                }
                Err(e) => return Err(e),
            };
            let (agreement, header) = x3dh::initiate(rng, &self.key, &bundle)?;
            let s = Session::initiate(rng, agreement, *to, bundle.signed_prekey.key, header)?;
            sessions.insert(0, s);
            sessions.truncate(MAX_SESSIONS_PER_CONTACT);
        }
        let message = sessions[0].encrypt(rng, &letter.to_bytes()?)?;
        let env = Envelope::seal_message(rng, id, to, &self.key.user_id(), message, now, ttl_ms)?;
        Ok((env, ClientWrite::Sessions(*to, stored(&sessions))))
    }

    /// Encrypts and sends a text. The message is in local history (as queued), together with
    /// the session state that encrypted it, before it leaves.
    pub async fn send(
        &mut self,
        conn: &mut Connection,
        contact: &str,
        text: &str,
    ) -> Result<StoredMessage, ClientLibError> {
        self.send_with_ttl(conn, contact, text, DEFAULT_TTL_MS)
            .await
    }

    /// [`Device::send`] with a chosen time to live, in milliseconds.
    pub async fn send_with_ttl(
        &mut self,
        conn: &mut Connection,
        contact: &str,
        text: &str,
        ttl_ms: u64,
    ) -> Result<StoredMessage, ClientLibError> {
        let c = self.contact(contact)?;
        if let Trust::Changed { new_key } = c.trust {
            return Err(ClientLibError::KeyChanged {
                name: c.name,
                old: c.address.user.fingerprint(),
                new: new_key.fingerprint(),
            });
        }
        self.maintain_prekeys(conn).await?;
        // Earlier first messages still waiting for their recipient's prekeys go first.
        self.retry_waiting(conn).await?;
        let now = now_millis();
        let id = EnvelopeId::random(&mut rand::rng());
        let mut msg = StoredMessage {
            envelope_id: id,
            direction: Direction::Outgoing,
            peer: c.address.user,
            peer_node: c.address.node.clone(),
            peer_name: c.name.clone(),
            text: text.to_string(),
            at: now,
            expires_at: now.saturating_add(ttl_ms.min(MAX_TTL_MS)),
            state: MessageState::Queued,
        };
        let sealed = self
            .seal_for(
                conn,
                id,
                &c.address.user,
                &c.address.node,
                Content::Text(text.to_string()),
                ttl_ms,
            )
            .await;
        let (env, session_write) = match sealed {
            Ok(s) => s,
            Err(ClientLibError::ContactNodeUnreachable(_)) => {
                // Their node is down and this is a first message: keep it on the device and
                // send it when their node answers (next send, inbox or status).
                msg.state = MessageState::WaitingForKeys;
                self.db.commit(&[ClientWrite::Message(msg.clone())])?;
                self.none_waiting = false;
                return Ok(msg);
            }
            Err(e) => return Err(e),
        };
        msg.expires_at = env.expires_at;
        self.db
            .commit(&[ClientWrite::Message(msg.clone()), session_write])?;
        msg.state = self.submit(conn, &c.address.node, env).await?;
        self.db.set_state(&msg.envelope_id, msg.state.clone())?;
        Ok(msg)
    }

    /// Hands one envelope to the home node; returns the message's new state.
    async fn submit(
        &mut self,
        conn: &mut Connection,
        to_node: &str,
        envelope: Envelope,
    ) -> Result<MessageState, ClientLibError> {
        let op = ClientOp::Send(vec![Outgoing {
            to_node: to_node.to_string(),
            envelope,
        }]);
        let result = match conn.call(&self.key, op).await? {
            ClientResponse::Sent(r) if r.len() == 1 => r[0].clone(),
            other => return Err(unexpected(other)),
        };
        Ok(match result {
            SendResult::Queued => MessageState::Queued,
            SendResult::DeliveredToNode => MessageState::DeliveredToNode,
            SendResult::NoSuchUser => MessageState::NoSuchUser,
            SendResult::Invalid => {
                MessageState::Failed("refused by the home node as invalid".into())
            }
            SendResult::Full => MessageState::Failed("the home node's queue is full".into()),
        })
    }

    /// Tries again to send first messages that waited for their recipient's prekeys, oldest
    /// first, under the ids and expiries they were given. A node that still does not answer
    /// is asked once per pass.
    pub async fn retry_waiting(&mut self, conn: &mut Connection) -> Result<(), ClientLibError> {
        if self.none_waiting {
            return Ok(());
        }
        let waiting: Vec<StoredMessage> = self
            .db
            .messages()?
            .into_iter()
            .filter(|m| {
                m.direction == Direction::Outgoing && m.state == MessageState::WaitingForKeys
            })
            .collect();
        let mut down: Vec<String> = Vec::new();
        let mut still_waiting = false;
        for mut m in waiting {
            let now = now_millis();
            if m.expires_at <= now {
                self.db.set_state(&m.envelope_id, MessageState::Expired)?;
                continue;
            }
            if down.contains(&m.peer_node) {
                still_waiting = true;
                continue;
            }
            let sealed = self
                .seal_for(
                    conn,
                    m.envelope_id,
                    &m.peer,
                    &m.peer_node,
                    Content::Text(m.text.clone()),
                    m.expires_at - now,
                )
                .await;
            match sealed {
                Ok((env, session_write)) => {
                    m.state = MessageState::Queued;
                    self.db
                        .commit(&[ClientWrite::UpdateMessage(m.clone()), session_write])?;
                    let state = self.submit(conn, &m.peer_node, env).await?;
                    self.db.set_state(&m.envelope_id, state)?;
                }
                Err(ClientLibError::ContactNodeUnreachable(node)) => {
                    still_waiting = true;
                    down.push(node);
                }
                Err(ClientLibError::NoBundle) => {
                    self.db
                        .set_state(&m.envelope_id, MessageState::NoSuchUser)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.none_waiting = !still_waiting;
        Ok(())
    }

    /// Asks the home node where our outgoing messages are and records the answer.
    pub async fn refresh_status(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<StoredMessage>, ClientLibError> {
        self.retry_waiting(conn).await?;
        let pending: Vec<StoredMessage> = self
            .db
            .messages()?
            .into_iter()
            .filter(|m| {
                m.direction == Direction::Outgoing
                    && matches!(
                        m.state,
                        MessageState::Queued | MessageState::DeliveredToNode
                    )
            })
            .collect();
        for chunk in pending.chunks(MAX_BATCH_ENVELOPES) {
            let ids: Vec<EnvelopeId> = chunk.iter().map(|m| m.envelope_id).collect();
            let states = match conn.call(&self.key, ClientOp::Status(ids.clone())).await? {
                ClientResponse::Status(s) if s.len() == ids.len() => s,
                other => return Err(unexpected(other)),
            };
            for (m, s) in chunk.iter().zip(states) {
                let new = match s {
                    DeliveryState::Queued { .. } => MessageState::Queued,
                    DeliveryState::DeliveredToNode { .. } => MessageState::DeliveredToNode,
                    DeliveryState::NoSuchUser => MessageState::NoSuchUser,
                    DeliveryState::Expired => MessageState::Expired,
                    DeliveryState::Refused => {
                        MessageState::Failed("refused by the recipient's node".into())
                    }
                    DeliveryState::Unknown => continue,
                };
                // Never step back from a later state a receipt already recorded.
                if m.state != MessageState::DeliveredToDevice {
                    self.db.set_state(&m.envelope_id, new)?;
                }
            }
        }
        Ok(self
            .db
            .messages()?
            .into_iter()
            .filter(|m| m.direction == Direction::Outgoing)
            .collect())
    }

    /// Fetches held envelopes (waiting up to `wait_ms` if there are none), decrypts and stores
    /// what they contain, acknowledges them, and sends delivery receipts. Safe to repeat: an
    /// envelope seen before (same id) is acknowledged again but not decrypted or shown twice.
    pub async fn sync(
        &mut self,
        conn: &mut Connection,
        wait_ms: u32,
    ) -> Result<Vec<InboxEvent>, ClientLibError> {
        self.maintain_prekeys(conn).await?;
        self.retry_waiting(conn).await?;
        let mut events = Vec::new();
        let mut wait = wait_ms;
        loop {
            let envs = match conn
                .call(
                    &self.key,
                    ClientOp::Fetch {
                        limit: FETCH_LIMIT,
                        wait_ms: wait,
                    },
                )
                .await?
            {
                ClientResponse::Envelopes(e) => e,
                other => return Err(unexpected(other)),
            };
            if envs.is_empty() {
                break;
            }
            wait = 0;
            let full = envs.len() as u32 >= FETCH_LIMIT;
            let mut acks = Vec::new();
            let mut receipts: BTreeMap<(UserId, String), Vec<EnvelopeId>> = BTreeMap::new();
            let mut skipped_grew = false;
            for env in envs {
                acks.push(env.id);
                if self.db.has_message(&env.id)? {
                    continue; // stored before a lost acknowledgement: already shown once
                }
                match self.open_envelope(&env) {
                    Ok(opened) => {
                        skipped_grew |= opened.skipped_grew;
                        if let Some(ev) = self.receive(&env, opened, &mut receipts)? {
                            events.push(ev);
                        }
                    }
                    // A receipt fetched again after a lost acknowledgement: nothing to show.
                    Err(ClientLibError::Session(SessionError::Replay)) => {}
                    Err(e) => events.push(InboxEvent::Undecryptable {
                        id: env.id,
                        reason: e.to_string(),
                    }),
                }
            }
            if skipped_grew {
                self.enforce_skipped_total()?;
            }
            // Everything above is synced to the local store; only now may the node delete it.
            conn.call(&self.key, ClientOp::Ack(acks)).await?;
            for ((user, node), ids) in receipts {
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    let id = EnvelopeId::random(&mut rand::rng());
                    let (env, session_write) = self
                        .seal_for(
                            conn,
                            id,
                            &user,
                            &node,
                            Content::Receipt(chunk.to_vec()),
                            DEFAULT_TTL_MS,
                        )
                        .await?;
                    self.db.commit(&[session_write])?;
                    let op = ClientOp::Send(vec![Outgoing {
                        to_node: node.clone(),
                        envelope: env,
                    }]);
                    conn.call(&self.key, op).await?;
                }
            }
            if !full {
                break;
            }
        }
        Ok(events)
    }

    /// Opens the sealed-sender layer and decrypts the session message: in a stored session, or
    /// in a new one from the X3DH header it carries. Returns what to store; stores nothing.
    fn open_envelope(&mut self, env: &Envelope) -> Result<Opened, ClientLibError> {
        let rng = &mut rand::rng();
        let now = now_millis();
        let sealed = env.open_message(&self.key)?;
        let sender = sealed.sender;
        let msg = &sealed.message;
        let mut sessions = self.load_sessions(&sender)?;
        let skipped_before: usize = sessions.iter().map(Session::skipped_len).sum();
        let mut last_err = None;
        let mut found = None;
        for (i, s) in sessions.iter_mut().enumerate() {
            if let Some(p) = &msg.prekey
                && s.base_key() != &p.ephemeral
            {
                continue;
            }
            match s.decrypt(rng, msg, now) {
                Ok(plain) => {
                    found = Some((i, plain));
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let mut prekeys_write = None;
        let plain = match (found, &msg.prekey) {
            (Some((i, plain)), _) => {
                let s = sessions.remove(i);
                sessions.insert(0, s);
                plain
            }
            (None, Some(p)) if !sessions.iter().any(|s| s.base_key() == &p.ephemeral) => {
                if p.identity != sender {
                    return Err(ClientLibError::Session(SessionError::Malformed(
                        "X3DH identity differs from the sealed sender",
                    )));
                }
                let (agreement, spk) = x3dh::respond(&self.key, &self.prekeys, p)?;
                let mut s = Session::respond(agreement, sender, spk, p.ephemeral);
                let plain = s.decrypt(rng, msg, now)?;
                sessions.insert(0, s);
                sessions.truncate(MAX_SESSIONS_PER_CONTACT);
                if let Some(otk) = p.one_time {
                    let mut next = self.prekeys.clone();
                    next.consume_one_time(&otk);
                    prekeys_write = Some(next);
                }
                plain
            }
            (None, _) => {
                return Err(ClientLibError::Session(
                    last_err.unwrap_or(SessionError::UnknownHeaderKey),
                ));
            }
        };
        let letter = Letter::from_bytes(&plain)?;
        let skipped_after: usize = sessions.iter().map(Session::skipped_len).sum();
        Ok(Opened {
            sender,
            letter,
            sessions: ClientWrite::Sessions(sender, stored(&sessions)),
            prekeys: prekeys_write,
            skipped_grew: skipped_after > skipped_before,
        })
    }

    /// Keeps skipped message keys across all sessions within [`MAX_SKIPPED_TOTAL`], dropping
    /// the oldest first. Runs only after a sync stored new skipped keys.
    fn enforce_skipped_total(&mut self) -> Result<(), ClientLibError> {
        let mut all = Vec::new();
        for (user, blobs) in self.db.all_sessions()? {
            let sessions = blobs
                .iter()
                .map(|b| Session::from_stored(b))
                .collect::<Result<Vec<_>, _>>()?;
            let before: Vec<usize> = sessions.iter().map(Session::skipped_len).collect();
            all.push((user, sessions, before));
        }
        let mut refs: Vec<&mut Session> =
            all.iter_mut().flat_map(|(_, s, _)| s.iter_mut()).collect();
        if bound_skipped_total(&mut refs, MAX_SKIPPED_TOTAL) == 0 {
            return Ok(());
        }
        let writes: Vec<ClientWrite> = all
            .into_iter()
            .filter(|(_, s, before)| {
                s.iter()
                    .map(Session::skipped_len)
                    .ne(before.iter().copied())
            })
            .map(|(u, s, _)| ClientWrite::Sessions(u, stored(&s)))
            .collect();
        self.db.commit(&writes)?;
        Ok(())
    }

    fn receive(
        &mut self,
        env: &Envelope,
        opened: Opened,
        receipts: &mut BTreeMap<(UserId, String), Vec<EnvelopeId>>,
    ) -> Result<Option<InboxEvent>, ClientLibError> {
        let Opened {
            sender,
            letter,
            sessions,
            prekeys,
            ..
        } = opened;
        let mut writes = vec![sessions];
        if let Some(p) = &prekeys {
            writes.push(ClientWrite::Prekeys(p.to_stored()));
        }
        let text = match letter.content {
            Content::Receipt(ids) => {
                self.db.commit(&writes)?;
                self.commit_prekeys(prekeys);
                let mut confirmed = Vec::new();
                for id in ids {
                    // Only the recipient of our message may confirm it.
                    if let Some((_, m)) = self.db.message(&id)?
                        && m.direction == Direction::Outgoing
                        && m.peer == sender
                        && self.db.set_state(&id, MessageState::DeliveredToDevice)?
                    {
                        confirmed.push(id);
                    }
                }
                return Ok((!confirmed.is_empty()).then_some(InboxEvent::Delivered(confirmed)));
            }
            Content::Text(t) => t,
        };
        let contacts = self.db.contacts()?;
        let by_key = contacts.iter().find(|c| c.address.user == sender);
        let by_account = contacts.iter().find(|c| {
            c.address.user != sender
                && c.address.node == letter.sender_node
                && c.handle.as_deref() == Some(letter.sender_name.as_str())
        });
        let (contact, state, change) = match (by_key, by_account) {
            (Some(c), _) => {
                let mut c = c.clone();
                if c.handle.is_none() && check_name(&letter.sender_name).is_ok() {
                    c.handle = Some(letter.sender_name.clone());
                    writes.push(ClientWrite::Contact(c.clone()));
                }
                (c, MessageState::Received, None)
            }
            (None, Some(c)) => {
                let mut c = c.clone();
                let old = c.address.user.fingerprint();
                let held = c.trust == Trust::Verified || matches!(c.trust, Trust::Changed { .. });
                if held {
                    // Verified before: hold everything under the new key until the user decides.
                    c.trust = Trust::Changed { new_key: sender };
                } else {
                    // Only ever trusted on first use: pin the new key, and say so loudly.
                    c.address.user = sender;
                    c.trust = Trust::Unverified;
                }
                writes.push(ClientWrite::Contact(c.clone()));
                let state = if held {
                    MessageState::HeldKeyChanged
                } else {
                    MessageState::Received
                };
                (c, state, Some((old, sender.fingerprint(), held)))
            }
            (None, None) => {
                // First contact: pin this key (trust on first use).
                let base = if check_name(&letter.sender_name).is_ok() {
                    letter.sender_name.clone()
                } else {
                    "unknown".to_string()
                };
                let mut name = base.clone();
                if self.db.contact(&name)?.is_some() {
                    name = format!("{base}-{}", &sender.to_hex()[..8]);
                }
                let c = Contact {
                    name,
                    handle: Some(letter.sender_name.clone()),
                    address: Address {
                        user: sender,
                        node: letter.sender_node.clone(),
                    },
                    trust: Trust::Unverified,
                    added_at: now_millis(),
                };
                writes.push(ClientWrite::Contact(c.clone()));
                (c, MessageState::Received, None)
            }
        };
        let msg = StoredMessage {
            envelope_id: env.id,
            direction: Direction::Incoming,
            peer: sender,
            peer_node: letter.sender_node.clone(),
            peer_name: contact.name.clone(),
            text,
            at: letter.sent_at,
            expires_at: env.expires_at,
            state,
        };
        writes.push(ClientWrite::Message(msg.clone()));
        // The message, the session that decrypted it and the consumed prekey: one batch.
        self.db.commit(&writes)?;
        self.commit_prekeys(prekeys);
        let held = matches!(change, Some((_, _, true)));
        if !held {
            receipts
                .entry((sender, letter.sender_node))
                .or_default()
                .push(env.id);
        }
        Ok(Some(match change {
            Some((old, new, held)) => InboxEvent::KeyChanged {
                contact: contact.name,
                old,
                new,
                held,
                message: msg,
            },
            None => InboxEvent::Message(msg),
        }))
    }

    fn commit_prekeys(&mut self, prekeys: Option<PrekeySecrets>) {
        if let Some(p) = prekeys {
            self.prekeys = p;
        }
    }
}

/// A decrypted envelope and the state to store with it.
struct Opened {
    sender: UserId,
    letter: Letter,
    sessions: ClientWrite,
    prekeys: Option<PrekeySecrets>,
    skipped_grew: bool,
}
