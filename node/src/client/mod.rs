//! The client library a user's device runs against its home node.
//!
//! - [`Connection`]: one libp2p connection to the home node speaking `/hestia/client/1`; every
//!   request is signed with the user's identity key for this node and this connection.
//! - [`Device`]: the user's side of Hestia: identity, contacts with pinned keys (trust on first
//!   use), prekeys it publishes, forward-secret sessions (X3DH and the Double Ratchet) with each
//!   contact, history in the local [`ClientDb`], sealed-sender envelopes, delivery receipts.
//!   Plaintext exists only here.
//! - [`calls`]: ringing a contact and taking calls: the signalling, the call history, and the
//!   [`call`] machine on its UDP driver.

pub mod call;
pub mod calls;
mod connection;
pub mod files;
mod outbox;
pub use outbox::RERUN_WINDOW_MS;
pub mod push;
pub mod receipts;
mod receive;
mod send;
pub mod trust;

pub use connection::{CONNECT_TIMEOUT, Connection};

use crate::driver::{NodeError, now_millis};
use hestia_protocol::envelope::{
    Content, DEFAULT_TTL_MS, Envelope, EnvelopeError, EnvelopeId, Letter, MAX_NAME_BYTES,
    MAX_RECEIPT_IDS, MAX_TTL_MS, valid_name,
};
use hestia_protocol::identity::{Address, Fingerprint, IdentityError, IdentityKey, UserId};
use hestia_protocol::safety::SafetyNumber;
use hestia_protocol::session::SessionError;
use hestia_protocol::session::prekeys::{ONE_TIME_PREKEY_TARGET, PrekeySecrets};
use hestia_protocol::session::ratchet::{MAX_SKIPPED_TOTAL, Session, bound_skipped_total};

/// Skipped message keys kept across all sessions with strangers (message requests and keys
/// with no contact): one session's worth ([`hestia_protocol::session::ratchet`] keeps 2000
/// per session), apart from the device-wide bound for contacts.
pub const MAX_SKIPPED_STRANGERS: usize = 2000;
/// Unanswered message requests kept. A further stranger's message is dropped unread (and
/// said so) until the user answers, accepts or rejects some: strangers cost bounded storage
/// and sessions, however many keys write.
pub const MAX_MESSAGE_REQUESTS: usize = 100;
use hestia_protocol::session::x3dh;
use hestia_protocol::wire::{
    ClientError, ClientOp, ClientResponse, DeliveryState, MAX_BATCH_ENVELOPES,
};
use hestia_store::client::{
    CallOutcome, ClientDb, ClientWrite, Contact, Direction, FileState, MessageState, Origin,
    PendingReceipts, StoredFile, StoredIdentity, StoredMessage, Trust, UnsentEnvelope,
};
use hestia_store::vault::KdfParams;
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

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
        "{0:?} does not claim to be another contact; to trust its key, compare safety numbers \
         with `hestia contact verify {0}`"
    )]
    NotAClaim(String),
    #[error(
        "{0:?} claims to be another contact: compare its safety number first, then accept it \
         as that contact's new key (`hestia contact accept {0} --confirm`) or reject it"
    )]
    IsAClaim(String),
    #[error("that key is already your contact {0:?}")]
    KeyAlreadyContact(String),
    #[error(
        "from a stranger, dropped unread: {MAX_MESSAGE_REQUESTS} message requests are waiting; \
         answer, accept or reject some (`hestia contact list`)"
    )]
    TooManyRequests,
    #[error(
        "{claimant:?} claims to be {claims:?}, but there is no contact {claims:?} any more; \
         verify {claimant:?} as a contact of its own"
    )]
    ClaimedContactGone { claimant: String, claims: String },
    #[error("invalid name {0:?}: 1 to {MAX_NAME_BYTES} bytes, letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("{}: {source}", path.display())]
    FileIo {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    File(hestia_protocol::file::FileError),
    #[error("{} changed while it was being sent; send it again to start over", .0.display())]
    FileChanged(std::path::PathBuf),
    #[error("file expired: the node that held it no longer has it")]
    FileExpired,
    #[error("no file {0:?} (see `hestia file list`)")]
    NoSuchFile(String),
    #[error("{0:?} names more than one file; give more of its id")]
    AmbiguousFile(String),
    #[error("{} already exists; choose another place with --out", .0.display())]
    OutputExists(std::path::PathBuf),
    #[error("the file did not verify ({0}); nothing was written at the output path")]
    FileCorrupt(hestia_protocol::file::FileError),
    #[error("the call could not start: {0}")]
    CallSetup(String),
}

/// Something that happened while reading the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEvent {
    /// A message from a contact.
    Message(StoredMessage),
    /// The first message from a key no contact had: `contact` is new and unverified.
    NewContact {
        contact: Contact,
        message: StoredMessage,
    },
    /// A message from a key that wrote under the name of another contact, `claims` (whose key is
    /// `claimed_key`, if that contact still exists). It is shown under its own contact
    /// (`contact`, key `key`), never as `claims`; sent for every message from it until the user
    /// accepts it as `claims`'s new key or rejects it.
    Claimed {
        contact: String,
        key: Fingerprint,
        claims: String,
        claimed_key: Option<Fingerprint>,
        claimed_verified: bool,
        first: bool,
        message: StoredMessage,
    },
    /// A contact's device confirmed these of our messages.
    Delivered(Vec<EnvelopeId>),
    /// Envelopes from `contact` did not decrypt in a way a new session cures (`lost`): this
    /// device started a new session with them and told them which.
    SessionRestarted {
        contact: String,
        lost: Vec<EnvelopeId>,
    },
    /// `contact`'s device could not decrypt these of our messages and started a new session;
    /// they are marked failed, to be sent again.
    PeerLostMessages {
        contact: String,
        lost: Vec<EnvelopeId>,
    },
    /// Call signalling from a contact (`client::call` turns it into a call).
    Call {
        contact: String,
        signal: hestia_protocol::call::CallSignal,
        /// When the caller's device sent it (an offer older than a minute rings nothing).
        sent_at: hestia_protocol::Millis,
    },
    /// An envelope that did not open or decrypt (not for us, tampered, no session). Dropped.
    Undecryptable { id: EnvelopeId, reason: String },
}

/// Sessions kept per contact: the one in use and older ones, so messages that cross a
/// simultaneous session start (both sides initiating) or a peer's reinstall still decrypt.
pub const MAX_SESSIONS_PER_CONTACT: usize = 3;
/// The stored setting that holds the [`receipts::Policy`].
const RECEIPTS_SETTING: &str = "receipts";
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
    receipts: receipts::Policy,
}

pub fn check_name(name: &str) -> Result<(), ClientLibError> {
    if valid_name(name) {
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
        ClientError::NoSuchBlob => "file expired or unknown".into(),
        ClientError::BlobTooLarge { max } => {
            format!(
                "the file is larger than this node accepts ({} MiB sealed)",
                max >> 20
            )
        }
        ClientError::BlobQuota => "your file storage on this node is full, or 4 uploads are \
             already going; wait for files to be fetched or expire"
            .into(),
        ClientError::PushRefused(reason) => reason.to_string(),
        ClientError::TooManySubscriptions => format!(
            "you already have {} push subscriptions on this node; unregister one first",
            hestia_protocol::push::MAX_SUBSCRIPTIONS_PER_USER
        ),
        ClientError::PushDisabled => "this node does not send push wake-ups".into(),
        ClientError::CallsDisabled => {
            "your node does not relay calls (its admin has not given it --turn-listen)".into()
        }
        ClientError::Suspended => "your account on this node is suspended by its admin".into(),
        ClientError::InviteRequired => {
            "this node takes new accounts by invite only: ask its admin for one and give \
             --invite TOKEN"
                .into()
        }
        ClientError::InviteInvalid => "that invite is not valid (mistyped, or revoked)".into(),
        ClientError::InviteExpired => "that invite has expired: ask for a new one".into(),
        ClientError::InviteUsedUp => "that invite has been used up: ask for a new one".into(),
        ClientError::RegistrationClosed => "this node takes no new accounts".into(),
        ClientError::NodeDenied => {
            "your node and theirs do not federate (an admin's policy)".into()
        }
        other => format!("{other:?}"),
    }
}

fn unexpected(r: ClientResponse) -> ClientLibError {
    ClientLibError::Unexpected(format!("{r:?}"))
}

/// The write that stores the sessions with `user` and how many skipped keys they hold.
fn sessions_write(user: UserId, sessions: &[Session]) -> ClientWrite {
    let skipped: usize = sessions.iter().map(Session::skipped_len).sum();
    ClientWrite::Sessions(
        user,
        sessions.iter().map(Session::to_stored).collect(),
        skipped.min(u32::MAX as usize) as u32,
    )
}

impl Device {
    /// Creates an identity and prekeys, registers with the home node, stores them, and
    /// publishes the prekeys.
    pub async fn create(
        dir: &Path,
        name: &str,
        node_addr: &Multiaddr,
    ) -> Result<Device, ClientLibError> {
        Device::create_with(dir, name, node_addr, None, None).await
    }

    /// [`Device::create`], with everything this device stores encrypted under `passphrase`
    /// from the first write ([`hestia_store::vault`]), registering with the node operator's
    /// `invite` token if given.
    pub async fn create_with(
        dir: &Path,
        name: &str,
        node_addr: &Multiaddr,
        passphrase: Option<&[u8]>,
        invite: Option<&str>,
    ) -> Result<Device, ClientLibError> {
        check_name(name)?;
        let mut db = ClientDb::open(dir, passphrase)?;
        if let Some(existing) = db.identity()? {
            return Err(ClientLibError::AccountExists(existing.name.clone()));
        }
        if let Some(pass) = passphrase
            && db.encryption()?.is_none()
        {
            db.encrypt(pass, KdfParams::DEFAULT)?;
        }
        let rng = &mut rand::rng();
        let key = IdentityKey::generate(rng);
        let mut conn = Connection::open(node_addr).await?;
        let op = match invite {
            Some(token) => ClientOp::RegisterWithInvite(token.trim().to_string()),
            None => ClientOp::Register,
        };
        match conn.call(&key, op).await? {
            ClientResponse::Registered => {}
            ClientResponse::Error(e) => return Err(ClientLibError::Refused(e)),
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
        db.commit(&[ClientWrite::Prekeys(prekeys.to_stored()?)])?;
        let mut device = Device {
            db,
            key,
            prekeys,
            name: name.to_string(),
            home_node: conn.node_id(),
            home_addr: node_addr.clone(),
            last_prekey_check: None,
            none_waiting: false,
            receipts: receipts::Policy::default(),
        };
        device.maintain_prekeys(&mut conn).await?;
        Ok(device)
    }

    /// Opens the device in `dir` (its data must not be encrypted: see [`Device::open_with`]).
    pub fn open(dir: &Path) -> Result<Device, ClientLibError> {
        Device::open_with(dir, None)
    }

    /// Opens the device in `dir`, unlocking its data with `passphrase` if it is encrypted.
    pub fn open_with(dir: &Path, passphrase: Option<&[u8]>) -> Result<Device, ClientLibError> {
        if !dir.join("CURRENT").exists() {
            return Err(ClientLibError::NoAccount);
        }
        let mut db = ClientDb::open(dir, passphrase)?;
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
                db.commit(&[ClientWrite::Prekeys(p.to_stored()?)])?;
                p
            }
        };
        Ok(Device {
            key,
            prekeys,
            name: id.name.clone(),
            home_node: id.home_node.clone(),
            home_addr,
            receipts: db
                .setting(RECEIPTS_SETTING)?
                .map_or_else(receipts::Policy::default, |b| {
                    receipts::Policy::from_bytes(&b)
                }),
            db,
            last_prekey_check: None,
            none_waiting: false,
        })
    }

    /// How this device's data is encrypted at rest, if it is.
    pub fn encryption(&self) -> Result<Option<KdfParams>, ClientLibError> {
        Ok(self.db.encryption()?)
    }

    /// Encrypts everything this device has stored under `passphrase` (it was in clear).
    pub fn encrypt(&mut self, passphrase: &[u8]) -> Result<(), ClientLibError> {
        Ok(self.db.encrypt(passphrase, KdfParams::DEFAULT)?)
    }

    /// Sets a new passphrase (the old one opened this device).
    pub fn change_passphrase(&mut self, passphrase: &[u8]) -> Result<(), ClientLibError> {
        Ok(self.db.change_passphrase(passphrase, KdfParams::DEFAULT)?)
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
            let fresh = self.prekeys.generate_one_time(
                rng,
                ONE_TIME_PREKEY_TARGET.saturating_sub(held),
                now,
            );
            self.db
                .commit(&[ClientWrite::Prekeys(self.prekeys.to_stored()?)])?;
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
                .commit(&[ClientWrite::Prekeys(self.prekeys.to_stored()?)])?;
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
        // A contact is its key: one key, one contact.
        if let Some(same) = self
            .db
            .contacts()?
            .into_iter()
            .find(|c| c.address.user == address.user)
        {
            return Err(ClientLibError::KeyAlreadyContact(same.name));
        }
        let c = Contact {
            name,
            handle: card_name,
            address,
            trust: Trust::Unverified,
            added_at: now_millis(),
            origin: Origin::Added,
            claims: None,
            reset_asked_at: None,
        };
        self.db.put_contact(&c)?;
        Ok(c)
    }

    /// The safety number shared with a contact, over the contact's own key: the same digits on
    /// both devices. For a contact that claims to be another, this is the *new* key's number.
    pub fn safety_number(&self, name: &str) -> Result<SafetyNumber, ClientLibError> {
        let c = self.contact(name)?;
        Ok(SafetyNumber::new(&self.address(), &c.address))
    }

    /// Marks a contact verified: the user compared its safety number.
    pub fn verify_contact(&self, name: &str) -> Result<Contact, ClientLibError> {
        let mut c = self.contact(name)?;
        c.trust = Trust::Verified;
        if c.origin == Origin::Request {
            c.origin = Origin::Accepted;
        }
        self.db.put_contact(&c)?;
        Ok(c)
    }

    /// Answers a message request without writing to it: the stranger becomes a contact
    /// (unverified, trusted on first use). A key that claims another contact's name is not a
    /// request to accept this way: [`Device::accept_new_key`] after comparing safety numbers.
    pub fn accept_request(&self, name: &str) -> Result<Contact, ClientLibError> {
        let mut c = self.contact(name)?;
        if c.claims.is_some() {
            return Err(ClientLibError::IsAClaim(name.into()));
        }
        if c.origin == Origin::Request {
            c.origin = Origin::Accepted;
            self.db.put_contact(&c)?;
        }
        Ok(c)
    }

    /// Accepts `claimant`, a contact whose key wrote under another contact's name, as that
    /// contact's new key: the claimed contact now has the claimant's key and is verified (the
    /// caller has had the user compare `safety_number(claimant)`, the new key's number), the
    /// claimant's messages show under the claimed name, and the old key's sessions go. The only
    /// way a contact ever moves to another key.
    pub fn accept_new_key(&mut self, claimant: &str) -> Result<Contact, ClientLibError> {
        let new = self.contact(claimant)?;
        let claims = new
            .claims
            .clone()
            .ok_or_else(|| ClientLibError::NotAClaim(claimant.into()))?;
        let old = self
            .db
            .contact(&claims)?
            .ok_or_else(|| ClientLibError::ClaimedContactGone {
                claimant: claimant.into(),
                claims: claims.clone(),
            })?;
        let merged = Contact {
            name: old.name.clone(),
            handle: new.handle.clone().or(old.handle.clone()),
            address: new.address.clone(),
            trust: Trust::Verified,
            added_at: old.added_at,
            origin: old.origin,
            claims: None,
            reset_asked_at: None,
        };
        let writes = [
            ClientWrite::RemoveContact(new.name.clone()),
            ClientWrite::Contact(merged.clone()),
            ClientWrite::RenamePeer {
                user: new.address.user,
                name: old.name.clone(),
            },
            ClientWrite::RemoveSessions(old.address.user),
            ClientWrite::Receipts(old.address.user, None),
        ];
        // Other keys that claimed the old name still claim it: the claim is about the name.
        self.db.commit(&writes)?;
        Ok(merged)
    }

    /// Rejects a contact's key: the contact is removed, with its sessions and owed receipts,
    /// and everything that key sends from now on is dropped unread. History stays.
    pub fn reject_contact(&mut self, name: &str) -> Result<Contact, ClientLibError> {
        self.forget_contact(name, true)
    }

    /// Removes a contact, with its sessions and owed receipts; history stays. A later message
    /// from its key makes it a new contact again.
    pub fn remove_contact(&mut self, name: &str) -> Result<Contact, ClientLibError> {
        self.forget_contact(name, false)
    }

    fn forget_contact(&mut self, name: &str, block: bool) -> Result<Contact, ClientLibError> {
        let c = self.contact(name)?;
        let user = c.address.user;
        let mut writes = vec![
            ClientWrite::RemoveContact(c.name.clone()),
            ClientWrite::RemoveSessions(user),
            ClientWrite::Receipts(user, None),
        ];
        if block {
            writes.push(ClientWrite::Block(user));
        }
        self.db.commit(&writes)?;
        Ok(c)
    }

    pub fn receipts_policy(&self) -> receipts::Policy {
        self.receipts
    }

    /// Turns delivery receipts on or off and sets their longest delay. Turning them off also
    /// drops the ones still owed.
    pub fn set_receipts_policy(&mut self, p: receipts::Policy) -> Result<(), ClientLibError> {
        let p = receipts::Policy {
            max_delay_ms: p.max_delay_ms.min(receipts::MAX_MAX_DELAY_MS),
            ..p
        };
        self.db.set_setting(RECEIPTS_SETTING, &p.to_bytes())?;
        // Receipts already owed keep their times, but none waits longer than the new bound.
        let latest = now_millis().saturating_add(p.max_delay_ms);
        let writes: Vec<ClientWrite> = self
            .db
            .pending_receipts()?
            .into_iter()
            .filter(|(_, r)| !p.enabled || r.due_at > latest)
            .map(|(u, r)| {
                let r = p.enabled.then_some(PendingReceipts {
                    due_at: latest,
                    ..r
                });
                ClientWrite::Receipts(u, r)
            })
            .collect();
        self.db.commit(&writes)?;
        self.receipts = p;
        Ok(())
    }

    fn load_sessions(&self, user: &UserId) -> Result<Vec<Session>, ClientLibError> {
        self.db
            .sessions(user)?
            .iter()
            .map(|b| Session::from_stored(b).map_err(ClientLibError::from))
            .collect()
    }
}

/// Whether [`Device::seal_for`] starts a new session even when one can send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    IfNone,
    Always,
}

/// Session failures a new session cures: the recipient has no state that opens the message (a
/// restored or reinstalled device), or the prekeys it names are gone or were handed out twice.
/// Not tampering (`Unauthentic`) or replays: a new session would not help.
fn breaks_session(e: &ClientLibError) -> bool {
    matches!(
        e,
        ClientLibError::Session(
            SessionError::UnknownHeaderKey
                | SessionError::UnknownSignedPrekey
                | SessionError::UnknownOneTimePrekey
                | SessionError::OneTimePrekeyReused
        )
    )
}

/// How often a device asks one contact for a new session. Anyone can seal an envelope to a user
/// naming any sender (the sealed box is not signed), so a forged one must not make the device
/// fetch bundles and write to that contact in a loop.
pub const SESSION_RESET_INTERVAL_MS: u64 = 3600 * 1000;
#[cfg(test)]
mod tests {
    //! The device fed sealed envelopes directly, without a node: what it keeps for strangers.
    use super::*;
    use hestia_protocol::session::prekeys::PrekeyBundle;

    /// A device with an identity and prekeys but no node (nothing here connects).
    fn offline_device(dir: &Path, name: &str) -> Device {
        let mut db = ClientDb::open(dir, None).unwrap();
        let key = IdentityKey::generate(&mut rand::rng());
        let node = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        db.set_identity(&StoredIdentity {
            seed: *key.seed(),
            name: name.into(),
            home_node: node.to_string(),
            home_addr: format!("/ip4/127.0.0.1/tcp/1/p2p/{node}"),
        })
        .unwrap();
        let prekeys = PrekeySecrets::new(&mut rand::rng(), &key, now_millis());
        db.commit(&[ClientWrite::Prekeys(prekeys.to_stored().unwrap())])
            .unwrap();
        drop(db);
        Device::open(dir).unwrap()
    }

    /// Someone who writes to `to` from their own key, in a session from `to`'s bundle.
    struct Writer {
        key: IdentityKey,
        name: String,
        session: Session,
    }

    impl Writer {
        fn new(to: &Device, name: &str) -> Writer {
            let rng = &mut rand::rng();
            let key = IdentityKey::generate(rng);
            let bundle = PrekeyBundle {
                identity: to.user_id(),
                signed_prekey: to.prekeys.current_signed().clone(),
                one_time: None,
            };
            let (agreement, header) = x3dh::initiate(rng, &key, &bundle).unwrap();
            let session = Session::initiate(
                rng,
                agreement,
                to.user_id(),
                bundle.signed_prekey.key,
                header,
            )
            .unwrap();
            Writer {
                key,
                name: name.into(),
                session,
            }
        }

        fn envelope(&mut self, to: &Device, content: Content) -> Envelope {
            let rng = &mut rand::rng();
            let letter = Letter::new("12D3KooWx", &self.name, content, now_millis()).unwrap();
            let msg = self
                .session
                .encrypt(rng, &letter.to_bytes().unwrap())
                .unwrap();
            let id = EnvelopeId::random(rng);
            let from = self.key.user_id();
            Envelope::seal_message(rng, id, &to.user_id(), &from, msg, now_millis(), 60_000)
                .unwrap()
        }

        fn text(&mut self, to: &Device, text: &str) -> Envelope {
            self.envelope(to, Content::Text(text.into()))
        }
    }

    /// What `sync` does with one envelope, minus the node.
    fn deliver(d: &mut Device, env: &Envelope) -> Result<Option<InboxEvent>, ClientLibError> {
        match d.open_envelope(env) {
            Ok(Some(opened)) => {
                let grew = opened.skipped_grew;
                let ev = d.receive(env, opened)?;
                if grew {
                    d.enforce_skipped_total()?;
                }
                Ok(ev)
            }
            Ok(None) => Ok(None),
            Err((_, e)) => Err(e),
        }
    }

    #[test]
    fn message_requests_are_bounded_and_strangers_receipts_leave_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut bob = offline_device(dir.path(), "bob");
        for i in 0..MAX_MESSAGE_REQUESTS {
            let mut w = Writer::new(&bob, &format!("stranger{i}"));
            let env = w.text(&bob, "hello");
            assert!(matches!(
                deliver(&mut bob, &env),
                Ok(Some(InboxEvent::NewContact { .. }))
            ));
        }
        // One more stranger: dropped unread, with a reason, and nothing stored for it.
        let mut late = Writer::new(&bob, "late");
        let env = late.text(&bob, "hello?");
        assert!(matches!(
            deliver(&mut bob, &env),
            Err(ClientLibError::TooManyRequests)
        ));
        assert!(bob.db.sessions(&late.key.user_id()).unwrap().is_empty());
        // Answering one request makes room.
        let first = bob.contacts().unwrap().remove(0);
        bob.verify_contact(&first.name).unwrap();
        assert!(matches!(
            deliver(&mut bob, &env),
            Ok(Some(InboxEvent::NewContact { .. }))
        ));
        // A receipt from a key that is no contact is dropped with its session.
        let mut r = Writer::new(&bob, "receipts");
        let env = r.envelope(&bob, Content::Receipt(vec![EnvelopeId([1; 16])]));
        let request = bob
            .contacts()
            .unwrap()
            .into_iter()
            .find(|c| c.origin == Origin::Request)
            .unwrap();
        bob.verify_contact(&request.name).unwrap();
        assert!(matches!(deliver(&mut bob, &env), Ok(None)));
        assert!(bob.db.sessions(&r.key.user_id()).unwrap().is_empty());
    }

    #[test]
    fn strangers_cannot_evict_a_contacts_skipped_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut bob = offline_device(dir.path(), "bob");
        // Alice is a contact with 500 messages still on their way (skipped keys).
        let mut alice = Writer::new(&bob, "alice");
        {
            let e = alice.text(&bob, "first");
            deliver(&mut bob, &e).unwrap();
        }
        let name = bob.contacts().unwrap()[0].name.clone();
        bob.verify_contact(&name).unwrap();
        for _ in 0..500 {
            alice.text(&bob, "in flight");
        }
        {
            let e = alice.text(&bob, "after the gap");
            deliver(&mut bob, &e).unwrap();
        }
        // Three strangers each open a session and skip almost a chain's worth.
        let mut strangers: Vec<Writer> = (0..3)
            .map(|i| Writer::new(&bob, &format!("s{i}")))
            .collect();
        for w in &mut strangers {
            {
                let e = w.text(&bob, "hi");
                deliver(&mut bob, &e).unwrap();
            }
            for _ in 0..900 {
                w.text(&bob, "skip");
            }
            {
                let e = w.text(&bob, "gap");
                deliver(&mut bob, &e).unwrap();
            }
        }
        let skipped = |u: &UserId| -> usize {
            bob.load_sessions(u)
                .unwrap()
                .iter()
                .map(Session::skipped_len)
                .sum()
        };
        assert_eq!(skipped(&alice.key.user_id()), 500, "a contact's keys stay");
        let strangers_total: usize = strangers.iter().map(|w| skipped(&w.key.user_id())).sum();
        assert_eq!(strangers_total, MAX_SKIPPED_STRANGERS);
        // The stored counts agree with the sessions, so the next check decodes nothing.
        let counts: HashMap<UserId, u32> = bob.db.skipped_counts().unwrap().into_iter().collect();
        for w in strangers.iter().chain([&alice]) {
            assert_eq!(counts[&w.key.user_id()] as usize, skipped(&w.key.user_id()));
        }
    }
}
