//! The client library a user's device runs against its home node.
//!
//! - [`Connection`]: one libp2p connection to the home node speaking `/hestia/client/1`; every
//!   request is signed with the user's identity key for this node and this connection.
//! - [`Device`]: the user's side of Hestia: identity, contacts with pinned keys (trust on first
//!   use), history in the local [`ClientDb`], sealing and opening envelopes, delivery receipts.
//!   Plaintext exists only here.

use crate::driver::{self, NodeError, build_swarm, now_millis, peer_of};
use crate::frame::FrameCodec;
use futures::StreamExt;
use hestia_protocol::envelope::{
    Content, DEFAULT_TTL_MS, Envelope, EnvelopeError, EnvelopeId, MAX_NAME_BYTES, MAX_RECEIPT_IDS,
};
use hestia_protocol::identity::{Address, Fingerprint, IdentityError, IdentityKey, UserId};
use hestia_protocol::wire::{
    self, Auth, ClientAuth, ClientError, ClientOp, ClientRequest, ClientResponse, DeliveryState,
    MAX_BATCH_ENVELOPES, Outgoing, SendResult,
};
use hestia_store::client::{
    ClientDb, Contact, Direction, MessageState, StoredIdentity, StoredMessage, Trust,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

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
    #[error("the home node refused the request: {0:?}")]
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
        let answer = self.send(Auth::Signed(auth), op).await;
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
    /// A message from someone using a known contact's name and node under a different key. It
    /// is held, not shown as trusted.
    KeyChanged {
        contact: String,
        old: Fingerprint,
        new: Fingerprint,
        message: StoredMessage,
    },
    /// A contact's device confirmed these of our messages.
    Delivered(Vec<EnvelopeId>),
    /// An envelope that did not open (not for us, tampered, bad signature). Dropped.
    Undecryptable {
        id: EnvelopeId,
        reason: String,
    },
}

/// The user's device: identity, contacts, history.
pub struct Device {
    db: ClientDb,
    key: IdentityKey,
    name: String,
    home_node: String,
    home_addr: Multiaddr,
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

impl Device {
    /// Creates an identity, registers it with the home node and stores it.
    pub async fn create(
        dir: &Path,
        name: &str,
        node_addr: &Multiaddr,
    ) -> Result<Device, ClientLibError> {
        check_name(name)?;
        let db = ClientDb::open(dir)?;
        if let Some(existing) = db.identity()? {
            return Err(ClientLibError::AccountExists(existing.name.clone()));
        }
        let key = IdentityKey::generate(&mut rand::rng());
        let mut conn = Connection::open(node_addr).await?;
        match conn.call(&key, ClientOp::Register).await? {
            ClientResponse::Registered => {}
            other => return Err(ClientLibError::Unexpected(format!("{other:?}"))),
        }
        let stored = StoredIdentity {
            seed: *key.seed(),
            name: name.to_string(),
            home_node: conn.node_id(),
            home_addr: node_addr.to_string(),
        };
        db.set_identity(&stored)?;
        Ok(Device {
            db,
            key,
            name: name.to_string(),
            home_node: conn.node_id(),
            home_addr: node_addr.clone(),
        })
    }

    pub fn open(dir: &Path) -> Result<Device, ClientLibError> {
        if !dir.join("CURRENT").exists() {
            return Err(ClientLibError::NoAccount);
        }
        let db = ClientDb::open(dir)?;
        let id = db.identity()?.ok_or(ClientLibError::NoAccount)?;
        let home_addr = id
            .home_addr
            .parse()
            .map_err(|_| ClientLibError::Unexpected("stored home address is unreadable".into()))?;
        Ok(Device {
            key: IdentityKey::from_seed(&id.seed),
            name: id.name.clone(),
            home_node: id.home_node.clone(),
            home_addr,
            db,
        })
    }

    pub async fn connect(&self) -> Result<Connection, ClientLibError> {
        Connection::open(&self.home_addr).await
    }

    pub fn name(&self) -> &str {
        &self.name
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

    pub fn history(&self) -> Result<Vec<StoredMessage>, ClientLibError> {
        Ok(self.db.messages()?)
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

    pub fn verify_contact(&self, name: &str) -> Result<Contact, ClientLibError> {
        let mut c = self
            .db
            .contact(name)?
            .ok_or_else(|| ClientLibError::NoSuchContact(name.into()))?;
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
        let mut c = self
            .db
            .contact(name)?
            .ok_or_else(|| ClientLibError::NoSuchContact(name.into()))?;
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

    /// Seals and sends a text. The message is in local history (as queued) before it leaves.
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
        let c = self
            .db
            .contact(contact)?
            .ok_or_else(|| ClientLibError::NoSuchContact(contact.into()))?;
        if let Trust::Changed { new_key } = c.trust {
            return Err(ClientLibError::KeyChanged {
                name: c.name,
                old: c.address.user.fingerprint(),
                new: new_key.fingerprint(),
            });
        }
        let now = now_millis();
        let env = Envelope::seal(
            &mut rand::rng(),
            &self.key,
            &self.home_node,
            &self.name,
            &c.address.user,
            Content::Text(text.to_string()),
            now,
            ttl_ms,
        )?;
        let mut msg = StoredMessage {
            envelope_id: env.id,
            direction: Direction::Outgoing,
            peer: c.address.user,
            peer_node: c.address.node.clone(),
            peer_name: c.name.clone(),
            text: text.to_string(),
            at: now,
            expires_at: env.expires_at,
            state: MessageState::Queued,
        };
        self.db.record_message(&msg)?;
        let op = ClientOp::Send(vec![Outgoing {
            to_node: c.address.node.clone(),
            envelope: env,
        }]);
        let result = match conn.call(&self.key, op).await? {
            ClientResponse::Sent(r) if r.len() == 1 => r[0].clone(),
            other => return Err(ClientLibError::Unexpected(format!("{other:?}"))),
        };
        msg.state = match result {
            SendResult::Queued => MessageState::Queued,
            SendResult::DeliveredToNode => MessageState::DeliveredToNode,
            SendResult::NoSuchUser => MessageState::NoSuchUser,
            SendResult::Invalid => {
                MessageState::Failed("refused by the home node as invalid".into())
            }
            SendResult::Full => MessageState::Failed("the home node's queue is full".into()),
        };
        self.db.set_state(&msg.envelope_id, msg.state.clone())?;
        Ok(msg)
    }

    /// Asks the home node where our outgoing messages are and records the answer.
    pub async fn refresh_status(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<StoredMessage>, ClientLibError> {
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
                other => return Err(ClientLibError::Unexpected(format!("{other:?}"))),
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

    /// Fetches held envelopes (waiting up to `wait_ms` if there are none), stores what they
    /// contain, acknowledges them, and sends delivery receipts. Safe to repeat: an envelope seen
    /// before (same id) is acknowledged again but not stored or shown twice.
    pub async fn sync(
        &mut self,
        conn: &mut Connection,
        wait_ms: u32,
    ) -> Result<Vec<InboxEvent>, ClientLibError> {
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
                other => return Err(ClientLibError::Unexpected(format!("{other:?}"))),
            };
            if envs.is_empty() {
                break;
            }
            wait = 0;
            let full = envs.len() as u32 >= FETCH_LIMIT;
            let mut acks = Vec::new();
            let mut receipts: BTreeMap<(UserId, String), Vec<EnvelopeId>> = BTreeMap::new();
            for env in envs {
                acks.push(env.id);
                match env.open(&self.key) {
                    Ok(letter) => {
                        if let Some(ev) = self.receive(&env, letter, &mut receipts)? {
                            events.push(ev);
                        }
                    }
                    Err(e) => events.push(InboxEvent::Undecryptable {
                        id: env.id,
                        reason: e.to_string(),
                    }),
                }
            }
            // Everything above is synced to the local store; only now may the node delete it.
            conn.call(&self.key, ClientOp::Ack(acks)).await?;
            for ((user, node), ids) in receipts {
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    self.send_receipt(conn, user, &node, chunk.to_vec()).await?;
                }
            }
            if !full {
                break;
            }
        }
        Ok(events)
    }

    async fn send_receipt(
        &mut self,
        conn: &mut Connection,
        to: UserId,
        node: &str,
        ids: Vec<EnvelopeId>,
    ) -> Result<(), ClientLibError> {
        let env = Envelope::seal(
            &mut rand::rng(),
            &self.key,
            &self.home_node,
            &self.name,
            &to,
            Content::Receipt(ids),
            now_millis(),
            DEFAULT_TTL_MS,
        )?;
        let op = ClientOp::Send(vec![Outgoing {
            to_node: node.to_string(),
            envelope: env,
        }]);
        conn.call(&self.key, op).await?;
        Ok(())
    }

    fn receive(
        &mut self,
        env: &Envelope,
        letter: hestia_protocol::envelope::Letter,
        receipts: &mut BTreeMap<(UserId, String), Vec<EnvelopeId>>,
    ) -> Result<Option<InboxEvent>, ClientLibError> {
        let text = match letter.content {
            Content::Receipt(ids) => {
                let mut confirmed = Vec::new();
                for id in ids {
                    // Only the recipient of our message may confirm it.
                    if let Some((_, m)) = self.db.message(&id)?
                        && m.direction == Direction::Outgoing
                        && m.peer == letter.sender
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
        let by_key = contacts.iter().find(|c| c.address.user == letter.sender);
        let by_account = contacts.iter().find(|c| {
            c.address.user != letter.sender
                && c.address.node == letter.sender_node
                && c.handle.as_deref() == Some(letter.sender_name.as_str())
        });
        let (contact, state, change) = match (by_key, by_account) {
            (Some(c), _) => {
                let mut c = c.clone();
                if c.handle.is_none() && check_name(&letter.sender_name).is_ok() {
                    c.handle = Some(letter.sender_name.clone());
                    self.db.put_contact(&c)?;
                }
                (c, MessageState::Received, None)
            }
            (None, Some(c)) => {
                let mut c = c.clone();
                let old = c.address.user.fingerprint();
                c.trust = Trust::Changed {
                    new_key: letter.sender,
                };
                self.db.put_contact(&c)?;
                (
                    c,
                    MessageState::HeldKeyChanged,
                    Some((old, letter.sender.fingerprint())),
                )
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
                    name = format!("{base}-{}", &letter.sender.to_hex()[..8]);
                }
                let c = Contact {
                    name,
                    handle: Some(letter.sender_name.clone()),
                    address: Address {
                        user: letter.sender,
                        node: letter.sender_node.clone(),
                    },
                    trust: Trust::Unverified,
                    added_at: now_millis(),
                };
                self.db.put_contact(&c)?;
                (c, MessageState::Received, None)
            }
        };
        let msg = StoredMessage {
            envelope_id: env.id,
            direction: Direction::Incoming,
            peer: letter.sender,
            peer_node: letter.sender_node.clone(),
            peer_name: contact.name.clone(),
            text,
            at: letter.sent_at,
            expires_at: env.expires_at,
            state,
        };
        if !self.db.record_message(&msg)? {
            return Ok(None); // seen before: already shown once
        }
        if change.is_none() {
            receipts
                .entry((letter.sender, letter.sender_node))
                .or_default()
                .push(env.id);
        }
        Ok(Some(match change {
            Some((old, new)) => InboxEvent::KeyChanged {
                contact: contact.name,
                old,
                new,
                message: msg,
            },
            None => InboxEvent::Message(msg),
        }))
    }
}
