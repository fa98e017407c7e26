//! The relay core: a node's store-and-forward logic as a sans-IO state machine.
//!
//! [`Core`] never reads the clock, spawns, or touches a socket or a database. The driver owns all
//! of that and talks to the core in three kinds of calls, in the manner of quinn-proto and str0m:
//!
//! - inputs, each with `now`: [`Core::handle_client`], [`Core::handle_fed_request`],
//!   [`Core::handle_fed_response`], [`Core::handle_timeout`];
//! - durable writes: [`Core::take_writes`];
//! - outputs: [`Core::poll_output`] until `None`, and [`Core::poll_timeout`].
//!
//! **The driving contract.** After feeding any number of inputs, the driver first takes the
//! writes and makes them durable (one atomic, synced batch), and only then drains the outputs.
//! Every output may acknowledge something in the writes taken with it, so an output must never
//! leave before its writes are durable. Feeding many inputs before one `take_writes` is how the
//! driver group-commits. `now` must never go backwards; the core clamps it if it does.
//!
//! State held here is bounded by the constants below; the store holds the same state durably,
//! and [`Core::from_store`] rebuilds the core from the store after a restart.

use hestia_protocol::Millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::{MAX_NODE_ID_LEN, UserId};
use hestia_protocol::redact;
use hestia_protocol::session::prekeys::{
    MAX_ONE_TIME_PREKEYS, ONE_TIME_PREKEY_LOW, PrekeyBundle, SignedPrekey,
};
use hestia_protocol::wire::{
    Auth, ClientError, ClientOp, ClientRequest, ClientResponse, DeliverResult, DeliveryState,
    FedRequest, FedResponse, MAX_BATCH_BYTES, MAX_BATCH_ENVELOPES, MAX_FETCH_WAIT_MS, Refusal,
    SendResult,
};
use hestia_store::StoreError;
use hestia_store::node::{
    AccountRecord, MailboxEntry, NodeSnapshot, NodeStore, NodeWrite, OutboxEntry, OutboxRecord,
    StatusRecord,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod admin;
mod blobs;
mod counters;
mod limits;
mod mailbox;
mod origins;
mod outbox;
mod output;
mod parked;
mod prekeys;
mod push;

pub use admin::{
    AdminRequest, AdminResponse, AdminStatus, BackupInfo, FederationEntry, InviteInfo,
    MAX_INVITE_USES, REGISTRATIONS_PER_ADDRESS_PER_HOUR, Registration, UserInfo,
};
use blobs::Blobs;
pub use blobs::{
    BLOB_QUOTA_PER_USER, IDLE_UPLOAD_MS, MAX_BLOB_BYTES, MAX_BLOB_STORED_BYTES, MAX_BLOBS,
    MAX_BLOBS_PER_USER, MAX_UPLOADS_PER_USER,
};
pub use counters::Counters;
use limits::Bucket;
pub use limits::{FED_LIMIT, Limits, MAX_FED_BUCKETS, SEND_BURST, SENDS_PER_SECOND, SendLimit};
pub use origins::MAX_STORED_BYTES_PER_NODE;
use origins::{Origins, UNATTRIBUTED};
pub use output::{Output, Ready};
use parked::{Parked, ParkedFetches};
use push::Pushes;
pub use push::{
    MAX_PENDING_ENDPOINT_CHECKS, MAX_WAKE_ATTEMPTS, MAX_WAKES_IN_FLIGHT, PushConfig,
    WAKE_RETRY_BASE_MS, WAKE_RETRY_MAX_MS, WakeId, WakeOutcome,
};

/// The core's hash maps use foldhash (the hasher hashbrown itself defaults to): several times
/// faster than SipHash on these short keys, and seeded at random per process, so keys a peer
/// chooses (user ids, peer ids, envelope ids) cannot be aimed at one bucket without the seed.
/// Nothing the core outputs depends on a map's iteration order.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Envelopes held per user. A user who never comes online cannot fill the node's disk.
pub const MAX_MAILBOX_ENVELOPES: usize = 10_000;
/// Body bytes held per user: a user's share of the node's disk (a full mailbox of the largest
/// envelopes would otherwise be 160 MiB).
pub const MAX_MAILBOX_BYTES: u64 = 64 << 20;
/// Body bytes held for all users together: the node's budget for stored mail. Past it every
/// delivery is refused (`MailboxFull`, which the sender retries) until mail is fetched or expires.
pub const MAX_STORED_BYTES: u64 = 32 << 30;
/// Accounts per node: bounds the in-memory account table.
pub const MAX_ACCOUNTS: usize = 100_000;
/// Envelopes queued for one destination node while it is unreachable.
pub const MAX_OUTBOX_PER_NODE: usize = 50_000;
/// Destination nodes with a non-empty outbox at once.
pub const MAX_OUTBOX_DESTINATIONS: usize = 10_000;
/// Fetches held open (long poll) at once; beyond this a fetch is answered at once, empty. Above
/// the ten thousand connected devices a node is sized for (issue 10), each with one wait.
pub const MAX_PARKED_FETCHES: usize = 16_384;
/// Fetches one user may hold open at once (a few devices or windows). A further one answers
/// the user's oldest empty, so no user can take the node-wide table from the others.
pub const MAX_PARKED_PER_USER: usize = 4;
/// Ids of envelopes already handed to a device and acknowledged, remembered so a retransmission
/// from a sender's node is answered `Duplicate` instead of being delivered twice. Memory only:
/// after a restart the device's own dedupe by envelope id is what holds.
pub const MAX_SEEN: usize = 200_000;
/// First retry delay for an unreachable destination, doubled per failure up to [`RETRY_MAX_MS`].
pub const RETRY_BASE_MS: Millis = 250;
/// Longest retry delay: a node that comes back is tried again within this.
pub const RETRY_MAX_MS: Millis = 30_000;
/// Authenticated client connections remembered at once (see [`hestia_protocol::wire::Auth`]).
/// Beyond it the oldest are forgotten and their clients sign again.
pub const MAX_SESSIONS: usize = 200_000;
/// Federation batches in flight to one destination at once. More than one keeps the link busy
/// while the remote syncs the previous batch; a bounded number bounds what a retry resends
/// (16 batches of at most [`hestia_protocol::wire::MAX_BATCH_ENVELOPES`]). 16 moved about 1.3x as much as 4 in `hestia bench`: docs/benchmarks.md.
pub const MAX_IN_FLIGHT_PER_NODE: usize = 16;
/// Envelope bytes in flight to all destinations together: the driver holds each batch's bodies
/// in memory until the remote answers, so this bounds that memory whatever the number of
/// destinations. One batch may go over it.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Delivery-state records one user's sends may hold at once (each lives until a day past its
/// envelope's expiry). Sends are rate-limited, but a month of them is not small: beyond this a
/// send is still relayed and answered, only its later state is not recorded (the device keeps
/// the last state it learned).
pub const MAX_STATUS_PER_USER: usize = 100_000;
/// How long a sender's delivery-state record outlives its envelope's expiry.
pub const STATUS_GRACE_MS: Millis = 24 * 3600 * 1000;

/// Bundle fetches from local users waiting on another node's answer. Beyond this a fetch is
/// refused as overloaded: each holds a client request open until the remote answers or the
/// request-response timeout fails it.
pub const MAX_PENDING_BUNDLE_FETCHES: usize = 1024;
/// Chunk fetches (and deletions) forwarded to other nodes and not yet answered, in all and per
/// local user: each answer carries up to a chunk (256 KiB) through this node's memory.
pub const MAX_PENDING_BLOB_REQUESTS: usize = 256;
pub const MAX_PENDING_BLOB_REQUESTS_PER_USER: usize = 16;
/// Of those, at most this many from one local user: a person starts a few sessions at a time.
pub const MAX_PENDING_BUNDLE_FETCHES_PER_USER: usize = 16;
/// A bundle fetch whose node could not be dialled (its address not yet learnt, as just after
/// either node starts; the driver looks it up on the failed dial) is tried again after these
/// delays before the device hears "unreachable".
pub const BUNDLE_RETRY_MS: [Millis; 2] = [1_000, 3_000];

/// One-time prekeys of one user handed out to one requesting node per hour. Beyond it bundles
/// still go out, without a one-time prekey (X3DH then runs without DH4): a node (or a local
/// user) fetching bundles in a loop cannot drain a user's pool for everyone else.
pub const ONE_TIME_PREKEYS_PER_NODE_PER_HOUR: u32 = 10;
/// One-time prekeys of one user handed out per hour in all, whoever asks. A requesting "node" is
/// only a peer id, and a peer id is a free key pair: without this bound, fetches from fresh peer
/// ids drain any pool. Fifty new correspondents an hour is far beyond a person's need; beyond it
/// bundles go out without one. It also bounds the per-requester counters to fifty per user.
pub const ONE_TIME_PREKEYS_PER_USER_PER_HOUR: u32 = 50;
const HOUR_MS: Millis = 3600 * 1000;
/// One user's one-time prekey hand-outs in the current hour.
#[derive(Default)]
struct Handouts {
    total: u32,
    by_node: HashMap<String, u32>,
}

/// Next value of the core's seeded generator (xorshift64): retry jitter, push delays.
fn next_random(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Identifies an inbound request awaiting its response; chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// Identifies an outbound federation request; chosen by the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

#[derive(Clone, Debug)]
pub struct Config {
    /// This node's peer id, as text: what clients sign and senders put in `to_node`.
    pub node_id: String,
    /// Who may create an account (the operator's suspensions, invites and federation policy
    /// are in the store).
    pub registration: Registration,
    /// Seeds the retry jitter, so simulations replay.
    pub seed: u64,
    pub limits: Limits,
    pub push: PushConfig,
    /// The node's call relay, if it runs one.
    pub turn: Option<CallRelay>,
}

/// Where the node's call relay listens, and the keys its credentials are minted with (the
/// relay checks them with the same keys).
#[derive(Clone, Debug)]
pub struct CallRelay {
    pub server: std::net::SocketAddr,
    pub keys: std::sync::Arc<hestia_protocol::turn::TurnKeys>,
}

/// Why an outbound federation request got no answer. After `Timeout` the remote may or may not
/// have stored the envelopes: the core resends and the remote answers `Duplicate` if it had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FedFailure {
    Unreachable,
    Timeout,
    Protocol,
}

/// A local user's request for another node's user's prekey bundle.
#[derive(Clone, Debug)]
struct BundleFetch {
    /// The client request waiting for the answer.
    token: Token,
    /// Whose bundle.
    target: UserId,
    /// The local user who asked.
    requester: UserId,
    node: String,
    /// Sends so far after the first (see [`BUNDLE_RETRY_MS`]).
    attempt: u8,
}

/// Counts for the operator and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accounts: usize,
    pub mailbox_envelopes: usize,
    pub outbox_envelopes: usize,
    pub parked_fetches: usize,
    pub in_flight_batches: usize,
    /// Body bytes held in mailboxes.
    pub stored_bytes: u64,
    /// Blobs held (uploading, complete, or fetched and kept as a record).
    pub blobs: usize,
    /// Sealed file bytes held for uploads.
    pub blob_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    /// The destination is found through `Core::queued`, so no node id is copied per envelope.
    Outbox(EnvelopeId),
    Status(EnvelopeId),
}

/// Local users with mail, each by a small index: per-envelope state names the recipient by
/// index, which keeps the core's memory per stored envelope to its id, expiry and size.
/// Indexes are never reused (a node has at most [`MAX_ACCOUNTS`] accounts).
#[derive(Default)]
struct Users {
    ix: HashMap<UserId, u32>,
    ids: Vec<UserId>,
}

impl Users {
    fn intern(&mut self, user: UserId) -> u32 {
        if let Some(i) = self.ix.get(&user) {
            return *i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(user);
        self.ix.insert(user, i);
        i
    }

    fn get(&self, user: &UserId) -> Option<u32> {
        self.ix.get(user).copied()
    }

    fn id(&self, i: u32) -> UserId {
        self.ids[i as usize]
    }
}

/// What the core keeps of an envelope in a mailbox (keyed by its id): no body. With the
/// recipient's index and its expiry entry this is the core's whole cost per stored envelope,
/// about a hundred bytes (docs/benchmarks.md measures it).
#[derive(Clone, Copy)]
struct MailRef {
    /// Arrival order: a fetch answers oldest first.
    seq: u64,
    expires_at: Millis,
    size: u32,
    /// The sending node's index in `Core::origins`, or [`UNATTRIBUTED`].
    from: u32,
}

/// A mailbox entry's expiry, ordered by time: whole seconds rounded up, the recipient's
/// [`Users`] index, the id. 24 bytes; a fetch never answers with an expired entry meanwhile.
type MailExpiry = (u32, u32, EnvelopeId);

fn mail_expiry(expires_at: Millis, ix: u32, id: EnvelopeId) -> MailExpiry {
    let secs = expires_at.div_ceil(1000).min(u32::MAX as u64) as u32;
    (secs, ix, id)
}

/// What the core keeps of an envelope in an outbox: no body.
struct OutRef {
    owner: UserId,
    expires_at: Millis,
    size: u32,
    attempts: u32,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<EnvelopeId>,
    records: HashMap<EnvelopeId, OutRef>,
    /// Batches to this destination awaiting an answer (ids in `Core::in_flight`).
    in_flight: usize,
    failures: u32,
    next_attempt: Millis,
}

pub struct Core {
    config: Config,
    now: Millis,
    accounts: HashMap<UserId, AccountRecord>,
    users: Users,
    mailboxes: HashMap<u32, HashMap<EnvelopeId, MailRef>>,
    mail_count: usize,
    /// Body bytes held, per recipient index and in all (see [`MAX_MAILBOX_BYTES`]).
    mail_bytes: HashMap<u32, u64>,
    /// Stored bytes per remote node that delivered them (the per-sending-node quota).
    origins: Origins,
    stored_bytes: u64,
    mail_expiries: BTreeSet<MailExpiry>,
    /// Keyed by recipient and id: ids are chosen by senders, so one recipient's envelope must
    /// never shadow another's.
    next_arrival: u64,
    outboxes: BTreeMap<String, Outbox>,
    /// Batches awaiting an answer: destination, ids, body bytes.
    in_flight: HashMap<BatchId, (String, Vec<EnvelopeId>, usize)>,
    /// Body bytes of the batches in `in_flight`.
    in_flight_bytes: usize,
    /// Which destination's outbox holds an envelope, for status queries.
    queued: HashMap<EnvelopeId, String>,
    next_batch: u64,
    status: HashMap<EnvelopeId, StatusRecord>,
    /// Delivery-state records per sender, bounded by [`MAX_STATUS_PER_USER`].
    status_per_owner: HashMap<UserId, usize>,
    seen: HashSet<(UserId, EnvelopeId)>,
    seen_order: VecDeque<(UserId, EnvelopeId)>,
    parked: ParkedFetches,
    /// Connection peer id → the user it authenticated as.
    sessions: HashMap<String, UserId>,
    session_order: VecDeque<String>,
    expiries: BTreeSet<(Millis, Expiry)>,
    writes: Vec<NodeWrite>,
    outputs: VecDeque<Output>,
    rng: u64,
    /// Each local user's current signed prekey and unused one-time prekeys.
    signed_prekeys: HashMap<UserId, SignedPrekey>,
    one_time_prekeys: HashMap<UserId, BTreeSet<[u8; 32]>>,
    /// Bundle fetches waiting on another node's answer.
    bundle_fetches: HashMap<BatchId, BundleFetch>,
    /// Bundle fetches to send again at a time, after their node could not be dialled.
    bundle_retries: BTreeMap<(Millis, BatchId), BundleFetch>,
    /// One-time prekeys handed out this hour, per (requesting node, user).
    /// Per local user, this hour: one-time prekeys handed out, in all and per requester.
    handouts: HashMap<UserId, Handouts>,
    handout_window: Millis,
    /// Per local user: send allowance left (in thousandths of a send) and when it was counted.
    send_budget: HashMap<UserId, Bucket>,
    /// Per remote node: its delivery allowance left (see [`Limits::fed`]).
    fed_budget: HashMap<String, Bucket>,
    /// Uploads held here for local users.
    blobs: Blobs,
    /// Chunk fetches and deletions forwarded to another node: the client's token, who asked.
    blob_requests: HashMap<BatchId, (Token, UserId)>,
    /// Push subscriptions and wake-up state.
    pushes: Pushes,
    /// Sessions open per user: a user with none has no device connected (push wakes them).
    online: HashMap<UserId, u32>,
    /// Registration, suspensions, invites, federation policy.
    policy: admin::Policy,
    counters: Counters,
}

impl Core {
    /// Rebuilds the core from what the store holds. Expired entries found here are removed by
    /// the first [`Core::handle_timeout`].
    pub fn new(config: Config, snapshot: NodeSnapshot, now: Millis) -> Core {
        let rng = config.seed | 1;
        let push_config = config.push.clone();
        let policy = admin::Policy::new(
            config.registration,
            snapshot.suspensions,
            snapshot.invites,
            snapshot.federation,
        );
        let mut core = Core {
            config,
            now,
            accounts: snapshot.accounts.into_iter().collect(),
            users: Users::default(),
            mailboxes: HashMap::default(),
            mail_count: 0,
            mail_bytes: HashMap::default(),
            origins: Origins::default(),
            stored_bytes: 0,
            mail_expiries: BTreeSet::new(),
            next_arrival: 0,
            outboxes: BTreeMap::new(),
            in_flight: HashMap::default(),
            in_flight_bytes: 0,
            queued: HashMap::default(),
            next_batch: 0,
            status: HashMap::default(),
            status_per_owner: HashMap::default(),
            seen: HashSet::default(),
            seen_order: VecDeque::new(),
            parked: ParkedFetches::default(),
            sessions: HashMap::default(),
            session_order: VecDeque::new(),
            expiries: BTreeSet::new(),
            writes: Vec::new(),
            outputs: VecDeque::new(),
            rng,
            signed_prekeys: snapshot.signed_prekeys.into_iter().collect(),
            one_time_prekeys: HashMap::default(),
            bundle_fetches: HashMap::default(),
            bundle_retries: BTreeMap::new(),
            handouts: HashMap::default(),
            handout_window: now,
            send_budget: HashMap::default(),
            fed_budget: HashMap::default(),
            blobs: Blobs::from_records(snapshot.blobs),
            blob_requests: HashMap::default(),
            pushes: Pushes::new(push_config, snapshot.push),
            online: HashMap::default(),
            policy,
            counters: Counters::default(),
        };
        for (user, key) in snapshot.one_time_prekeys {
            core.one_time_prekeys.entry(user).or_default().insert(key);
        }
        for rec in snapshot.outbox {
            core.insert_outbox(rec, 0);
        }
        for (id, rec) in snapshot.status {
            core.expiries.insert((
                rec.expires_at.saturating_add(STATUS_GRACE_MS),
                Expiry::Status(id),
            ));
            *core.status_per_owner.entry(rec.owner).or_default() += 1;
            core.status.insert(id, rec);
        }
        core
    }

    /// Rebuilds the core from a store after a restart: the snapshot, then the mailbox entries
    /// streamed one by one (metadata only; a node may hold millions).
    pub fn from_store(
        config: Config,
        store: &impl NodeStore,
        now: Millis,
    ) -> Result<Core, StoreError> {
        let mut core = Core::new(config, store.load()?, now);
        // Origins are not stored: mail held across a restart counts toward the per-user and
        // node-wide bounds only.
        store.for_each_mailbox(&mut |e| core.insert_mailbox(e, UNATTRIBUTED))?;
        Ok(core)
    }

    // ---- getters ----

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Totals since start, for the operator's metrics.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn stats(&self) -> Stats {
        Stats {
            accounts: self.accounts.len(),
            mailbox_envelopes: self.mail_count,
            stored_bytes: self.stored_bytes,
            outbox_envelopes: self.outboxes.values().map(|o| o.records.len()).sum(),
            parked_fetches: self.parked.len(),
            in_flight_batches: self.in_flight.len(),
            blobs: self.blobs.len(),
            blob_bytes: self.blobs.stored_bytes(),
        }
    }

    // ---- inputs ----

    fn advance(&mut self, now: Millis) -> Millis {
        self.now = self.now.max(now);
        self.now
    }

    /// A request from a user's device. `client_peer` is the connection's authenticated peer id.
    pub fn handle_client(
        &mut self,
        now: Millis,
        token: Token,
        client_peer: &str,
        req: ClientRequest,
    ) {
        self.handle_client_from(now, token, client_peer, None, req)
    }

    /// [`Core::handle_client`] from the address `source`, which registrations are counted
    /// against (the driver leaves loopback out).
    pub fn handle_client_from(
        &mut self,
        now: Millis,
        token: Token,
        client_peer: &str,
        source: Option<std::net::IpAddr>,
        req: ClientRequest,
    ) {
        let now = self.advance(now);
        let user = req.auth.user();
        let checked = match &req.auth {
            Auth::Signed(a) => a.verify(&self.config.node_id, client_peer, now, &req.op),
            Auth::Session(u) => match self.sessions.get(client_peer) {
                Some(s) if s == u => Ok(()),
                _ => Err(ClientError::SessionUnknown),
            },
        };
        if let Err(e) = checked {
            tracing::debug!(user = %redact::User(&user), error = ?e, "client request refused");
            return self.respond_client(token, ClientResponse::Error(e));
        }
        if matches!(req.auth, Auth::Signed(_)) {
            self.open_session(client_peer, user);
        }
        let registers = matches!(req.op, ClientOp::Register | ClientOp::RegisterWithInvite(_));
        if !registers && !self.accounts.contains_key(&user) {
            return self.respond_client(token, ClientResponse::Error(ClientError::NotRegistered));
        }
        if !registers && self.policy.is_suspended(&user) {
            self.counters.refuse("suspended", 1);
            return self.respond_client(token, ClientResponse::Error(ClientError::Suspended));
        }
        let response = match req.op {
            ClientOp::Register => self.register(user, None, source, now),
            ClientOp::RegisterWithInvite(t)
                if t.len() > hestia_protocol::wire::MAX_INVITE_TOKEN_LEN =>
            {
                ClientResponse::Error(ClientError::InviteInvalid)
            }
            ClientOp::RegisterWithInvite(t) => self.register(user, Some(&t), source, now),
            ClientOp::Send(items) if items.len() > MAX_BATCH_ENVELOPES => {
                ClientResponse::Error(ClientError::TooMany)
            }
            ClientOp::Send(items) => match self.spend(&user, items.len() as u64, now) {
                Err(e) => {
                    self.counters.refuse("rate_limited", items.len() as u64);
                    ClientResponse::Error(e)
                }
                Ok(()) => {
                    let results: Vec<SendResult> = items
                        .into_iter()
                        .map(|o| self.accept_send(user, o.to_node, o.envelope))
                        .collect();
                    for r in &results {
                        match r {
                            SendResult::Queued | SendResult::DeliveredToNode => {
                                self.counters.received_from_devices += 1
                            }
                            SendResult::NoSuchUser => self.counters.refuse("no_such_user", 1),
                            SendResult::Invalid => self.counters.refuse("invalid", 1),
                            SendResult::Full => self.counters.refuse("full", 1),
                            SendResult::Denied => self.counters.refuse("denied", 1),
                            SendResult::TooLarge { .. } => self.counters.refuse("too_large", 1),
                            SendResult::TtlTooLong { .. } => {
                                self.counters.refuse("ttl_too_long", 1)
                            }
                        }
                    }
                    ClientResponse::Sent(results)
                }
            },
            ClientOp::Fetch { limit, wait_ms } => {
                let limit = (limit as usize).clamp(1, MAX_BATCH_ENVELOPES);
                let batch = self.mailbox_batch(&user, limit);
                if !batch.is_empty() {
                    return self.respond_mail(token, user, batch);
                }
                self.pushes.drained(&user);
                if wait_ms > 0 {
                    if self.parked.of_user(&user) >= MAX_PARKED_PER_USER
                        && let Some(p) = self.parked.take_oldest_of(&user)
                    {
                        // The user's oldest wait ends (empty) to make room for this one.
                        self.respond_client(p.token, ClientResponse::Envelopes(Vec::new()));
                    }
                    if self.parked.len() < MAX_PARKED_FETCHES {
                        let until = now.saturating_add(wait_ms.min(MAX_FETCH_WAIT_MS) as Millis);
                        self.parked.insert(Parked {
                            token,
                            user,
                            client_peer: client_peer.to_string(),
                            until,
                            limit,
                        });
                        return;
                    }
                }
                ClientResponse::Envelopes(Vec::new())
            }
            ClientOp::Ack(ids) if ids.len() > MAX_BATCH_ENVELOPES => {
                ClientResponse::Error(ClientError::TooMany)
            }
            ClientOp::Ack(ids) => {
                let removed = ids.iter().filter(|id| self.ack(&user, id)).count() as u32;
                self.counters.delivered += u64::from(removed);
                if !self.holds_mail(&user) {
                    self.pushes.drained(&user);
                }
                ClientResponse::Acked { removed }
            }
            ClientOp::Status(ids) if ids.len() > MAX_BATCH_ENVELOPES => {
                ClientResponse::Error(ClientError::TooMany)
            }
            ClientOp::Status(ids) => {
                ClientResponse::Status(ids.iter().map(|id| self.state_of(&user, id)).collect())
            }
            ClientOp::PublishPrekeys { signed, one_time } => {
                self.publish_prekeys(user, *signed, one_time)
            }
            ClientOp::PrekeyStatus => self.prekey_status(&user),
            ClientOp::FetchBundle { user: target, node } => {
                if let Err(e) = self.spend(&user, 1, now) {
                    ClientResponse::Error(e)
                } else if node == self.config.node_id {
                    // Each local user is its own requester: one must not spend the others'
                    // allowance for a contact's one-time prekeys.
                    let me = format!("local:{}", user.to_hex());
                    match self.take_bundle(&me, &target, now) {
                        Some(b) => ClientResponse::Bundle(Box::new(b)),
                        None => ClientResponse::Error(ClientError::NoBundle),
                    }
                } else if !self.policy.federates_with(&node) {
                    ClientResponse::Error(ClientError::NodeDenied)
                } else if node.len() > MAX_NODE_ID_LEN
                    || self.bundle_fetches.len() + self.bundle_retries.len()
                        >= MAX_PENDING_BUNDLE_FETCHES
                    || self
                        .bundle_fetches
                        .values()
                        .chain(self.bundle_retries.values())
                        .filter(|f| f.requester == user)
                        .count()
                        >= MAX_PENDING_BUNDLE_FETCHES_PER_USER
                {
                    ClientResponse::Error(ClientError::Overloaded)
                } else {
                    self.send_bundle_fetch(BundleFetch {
                        token,
                        target,
                        requester: user,
                        node,
                        attempt: 0,
                    });
                    return;
                }
            }
            ClientOp::BlobBegin { blob, spec } => {
                match self
                    .blobs
                    .begin(user, blob, spec, now, &self.config.limits, &mut self.writes)
                {
                    Ok(state) => ClientResponse::Blob(state),
                    Err(e) => ClientResponse::Error(e),
                }
            }
            ClientOp::BlobPut { blob, index, chunk } => {
                match self
                    .blobs
                    .put(user, blob, index, chunk, now, &mut self.writes)
                {
                    Ok(held) => ClientResponse::ChunkStored { held },
                    Err(e) => ClientResponse::Error(e),
                }
            }
            ClientOp::BlobStatus(blob) => match self.blobs.status(&user, &blob) {
                Ok(state) => ClientResponse::Blob(state),
                Err(e) => ClientResponse::Error(e),
            },
            ClientOp::BlobGet {
                node,
                blob,
                index,
                cap,
            } => {
                if node == self.config.node_id {
                    if self.blobs.may_fetch(&blob, index, &cap, now) {
                        self.outputs
                            .push_back(Output::ClientChunk { token, blob, index });
                        return;
                    }
                    ClientResponse::Error(ClientError::NoSuchBlob)
                } else {
                    let request = FedRequest::BlobGet { blob, index, cap };
                    match self.forward_blob_request(token, user, node, request) {
                        Ok(()) => return,
                        Err(e) => ClientResponse::Error(e),
                    }
                }
            }
            ClientOp::PushRegister(subscription) => {
                let endpoint = subscription.endpoint.clone();
                match self
                    .pushes
                    .register(token, user, subscription, now, &mut self.writes)
                {
                    push::Registration::Done(Ok(info)) => ClientResponse::Push(info),
                    push::Registration::Done(Err(e)) => ClientResponse::Error(e),
                    push::Registration::Resolve => {
                        self.outputs
                            .push_back(Output::CheckEndpoint { token, endpoint });
                        return;
                    }
                }
            }
            ClientOp::PushUnregister { endpoint } => ClientResponse::Push(self.pushes.unregister(
                user,
                endpoint.as_deref(),
                &mut self.writes,
            )),
            ClientOp::PushStatus => ClientResponse::Push(self.pushes.info(&user)),
            ClientOp::TurnCredentials => match self.config.turn.clone() {
                None => ClientResponse::Error(ClientError::CallsDisabled),
                Some(relay) => match self.spend(&user, 1, now) {
                    Err(e) => ClientResponse::Error(e),
                    Ok(()) => {
                        let c = relay.keys.mint(&user, now);
                        ClientResponse::Turn(hestia_protocol::wire::TurnGrant {
                            server: relay.server.to_string(),
                            username: c.username,
                            password: c.password,
                            expires_at: c.expires_at,
                        })
                    }
                },
            },
            ClientOp::BlobDone { node, blob, cap } => {
                if node == self.config.node_id {
                    if self.blobs.done(&blob, &cap, now, &mut self.writes) {
                        ClientResponse::BlobDeleted
                    } else {
                        ClientResponse::Error(ClientError::NoSuchBlob)
                    }
                } else {
                    let request = FedRequest::BlobDone { blob, cap };
                    match self.forward_blob_request(token, user, node, request) {
                        Ok(()) => return,
                        Err(e) => ClientResponse::Error(e),
                    }
                }
            }
        };
        self.respond_client(token, response);
    }

    /// The last connection of `client_peer` closed: its session ends, and its parked fetches
    /// are answered (empty, to a closed channel) so they hold no place in the table.
    pub fn handle_client_disconnected(&mut self, client_peer: &str) {
        if let Some(user) = self.sessions.remove(client_peer) {
            self.went_offline(&user);
        }
        for p in self.parked.take_of_peer(client_peer) {
            self.respond_client(p.token, ClientResponse::Envelopes(Vec::new()));
        }
    }

    /// A federation request from another node (already authenticated as `from_node` by Noise).
    pub fn handle_fed_request(
        &mut self,
        now: Millis,
        token: Token,
        from_node: &str,
        req: FedRequest,
    ) {
        let now = self.advance(now);
        if !self.policy.federates_with(from_node) {
            tracing::debug!(from = from_node, "federation request refused: policy");
            self.counters.refuse("denied", 1);
            return self.outputs.push_back(Output::FedResponse {
                token,
                response: FedResponse::Refused(Refusal::Denied),
            });
        }
        let response = match req {
            FedRequest::Deliver(envs) if envs.len() > MAX_BATCH_ENVELOPES => {
                tracing::info!(from = from_node, n = envs.len(), "refused oversized batch");
                self.counters.refuse("too_many", envs.len() as u64);
                FedResponse::Refused(Refusal::TooManyEnvelopes)
            }
            FedRequest::Deliver(envs) => match self.spend_fed(from_node, envs.len() as u64, now) {
                Err(wait) => {
                    tracing::debug!(
                        from = from_node,
                        n = envs.len(),
                        "delivery refused: rate limit"
                    );
                    self.counters.refuse("rate_limited", envs.len() as u64);
                    FedResponse::Refused(Refusal::RateLimited {
                        retry_after_ms: wait.min(u32::MAX as u64) as u32,
                    })
                }
                Ok(()) => {
                    let results: Vec<DeliverResult> = envs
                        .into_iter()
                        .map(|e| self.deliver_local(e, Some(from_node), now))
                        .collect();
                    for r in &results {
                        match r {
                            DeliverResult::Accepted => self.counters.received_from_nodes += 1,
                            DeliverResult::Duplicate => {}
                            DeliverResult::NoSuchUser => self.counters.refuse("no_such_user", 1),
                            DeliverResult::MailboxFull => self.counters.refuse("full", 1),
                            DeliverResult::Expired | DeliverResult::Invalid => {
                                self.counters.refuse("invalid", 1)
                            }
                        }
                    }
                    FedResponse::Delivered(results)
                }
            },
            FedRequest::FetchBundle(user) => {
                FedResponse::Bundle(self.take_bundle(from_node, &user, now).map(Box::new))
            }
            FedRequest::BlobGet { blob, index, cap } => match self.spend_fed(from_node, 1, now) {
                Err(wait) => FedResponse::Refused(Refusal::RateLimited {
                    retry_after_ms: wait.min(u32::MAX as u64) as u32,
                }),
                Ok(()) if self.blobs.may_fetch(&blob, index, &cap, now) => {
                    self.outputs
                        .push_back(Output::FedChunk { token, blob, index });
                    return;
                }
                Ok(()) => FedResponse::NoSuchBlob,
            },
            FedRequest::BlobDone { blob, cap } => {
                if self.blobs.done(&blob, &cap, now, &mut self.writes) {
                    FedResponse::BlobDeleted
                } else {
                    FedResponse::NoSuchBlob
                }
            }
        };
        self.outputs
            .push_back(Output::FedResponse { token, response });
    }

    /// The answer (or failure) of an outbound federation request made by [`Output::FedRequest`].
    pub fn handle_fed_response(
        &mut self,
        now: Millis,
        batch: BatchId,
        result: Result<FedResponse, FedFailure>,
    ) {
        let now = self.advance(now);
        if let Some((token, _)) = self.blob_requests.remove(&batch) {
            let full = hestia_protocol::file::SEALED_CHUNK_BYTES as usize;
            let response = match result {
                Ok(FedResponse::Chunk(c)) if c.len() <= full => ClientResponse::Chunk(c),
                Ok(FedResponse::BlobDeleted) => ClientResponse::BlobDeleted,
                Ok(FedResponse::NoSuchBlob) => ClientResponse::Error(ClientError::NoSuchBlob),
                Ok(FedResponse::Refused(Refusal::RateLimited { retry_after_ms })) => {
                    ClientResponse::Error(ClientError::RateLimited { retry_after_ms })
                }
                Ok(FedResponse::Refused(Refusal::Denied)) => {
                    ClientResponse::Error(ClientError::NodeDenied)
                }
                Ok(_) | Err(_) => ClientResponse::Error(ClientError::NodeUnreachable),
            };
            return self.respond_client(token, response);
        }
        if let Some(mut fetch) = self.bundle_fetches.remove(&batch) {
            if matches!(result, Err(FedFailure::Unreachable))
                && let Some(delay) = BUNDLE_RETRY_MS.get(fetch.attempt as usize)
            {
                fetch.attempt += 1;
                let at = now.saturating_add(*delay);
                self.bundle_retries.insert((at, batch), fetch);
                return;
            }
            let (token, user) = (fetch.token, fetch.target);
            let response = match result {
                Ok(FedResponse::Bundle(Some(b))) if b.identity == user => ClientResponse::Bundle(b),
                Ok(FedResponse::Bundle(_)) => ClientResponse::Error(ClientError::NoBundle),
                Ok(FedResponse::Refused(Refusal::Denied)) => {
                    ClientResponse::Error(ClientError::NodeDenied)
                }
                Ok(_) | Err(_) => ClientResponse::Error(ClientError::NodeUnreachable),
            };
            return self.respond_client(token, response);
        }
        let Some((node, ids, bytes)) = self.in_flight.remove(&batch) else {
            return;
        };
        // Outboxes that waited for room in the window are flushed at the end.
        self.in_flight_bytes -= bytes;
        let results = match result {
            Ok(FedResponse::Delivered(results)) if results.len() == ids.len() => Some(results),
            Ok(FedResponse::Refused(Refusal::Denied)) => {
                // Their operator does not take mail from here: final, not a failure to retry.
                tracing::info!(to = %node, n = ids.len(), "federation batch refused: their policy");
                Some(vec![DeliverResult::Invalid; ids.len()])
            }
            Ok(FedResponse::Refused(Refusal::RateLimited { .. })) => {
                // Backed off below like any failure; the envelopes stay queued.
                tracing::debug!(to = %node, "federation batch refused: their rate limit");
                None
            }
            Ok(other) => {
                tracing::warn!(to = %node, answer = ?other, "federation batch not accepted");
                None
            }
            Err(failure) => {
                tracing::debug!(to = %node, ?failure, "federation batch failed");
                self.counters.fed_failed(match failure {
                    FedFailure::Unreachable => "unreachable",
                    FedFailure::Timeout => "timeout",
                    FedFailure::Protocol => "protocol",
                });
                None
            }
        };
        let Some(outbox) = self.outboxes.get_mut(&node) else {
            return;
        };
        outbox.in_flight = outbox.in_flight.saturating_sub(1);
        let mut progressed = false;
        let mut finished = Vec::new();
        match results {
            Some(results) => {
                for (id, r) in ids.iter().zip(results) {
                    let state = match r {
                        DeliverResult::Accepted | DeliverResult::Duplicate => {
                            self.counters.relayed += 1;
                            DeliveryState::DeliveredToNode { at: now }
                        }
                        DeliverResult::NoSuchUser => DeliveryState::NoSuchUser,
                        DeliverResult::Expired => DeliveryState::Expired,
                        DeliverResult::Invalid => DeliveryState::Refused,
                        DeliverResult::MailboxFull => {
                            if let Some(rec) = outbox.records.get_mut(id) {
                                rec.attempts = rec.attempts.saturating_add(1);
                                outbox.queue.push_back(*id);
                            }
                            continue;
                        }
                    };
                    progressed = true;
                    finished.push((*id, state));
                }
            }
            None => {
                // Put the batch back at the front, in order, for the next attempt.
                for id in ids.iter().rev() {
                    if let Some(rec) = outbox.records.get_mut(id) {
                        rec.attempts = rec.attempts.saturating_add(1);
                        outbox.queue.push_front(*id);
                    }
                }
            }
        }
        if progressed {
            outbox.failures = 0;
            outbox.next_attempt = now;
        } else {
            outbox.failures = outbox.failures.saturating_add(1);
            let exp = RETRY_BASE_MS.saturating_mul(1 << outbox.failures.min(16).saturating_sub(1));
            let delay = exp.min(RETRY_MAX_MS);
            let jitter = next_random(&mut self.rng) % (delay / 5 + 1);
            outbox.next_attempt = now.saturating_add(delay - jitter);
        }
        for (id, state) in finished {
            self.finish_outbox(&node, &id, state);
        }
        self.flush_outboxes(now);
    }

    /// Drives timers: retries, parked fetches, expiry. Call at or after [`Core::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Millis) {
        let now = self.advance(now);
        // Expired parked fetches answer empty.
        for p in self.parked.take_expired(now) {
            self.respond_client(p.token, ClientResponse::Envelopes(Vec::new()));
        }
        while let Some(entry) = self.bundle_retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let fetch = entry.remove();
            self.send_bundle_fetch(fetch);
        }
        while let Some((secs, _, _)) = self.mail_expiries.first() {
            if *secs as Millis * 1000 > now {
                break;
            }
            let (_, ix, id) = self.mail_expiries.pop_first().expect("first() was Some");
            let user = self.users.id(ix);
            if self.remove_mailbox(&user, &id) {
                self.counters.expired_mailbox += 1;
                tracing::debug!(user = %redact::User(&user), "expired envelope dropped");
            }
        }
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let (_, what) = self.expiries.pop_first().expect("first() was Some");
            match what {
                Expiry::Outbox(id) => {
                    let Some(node) = self.queued.get(&id).cloned() else {
                        continue;
                    };
                    let in_flight = self.in_flight.values().any(|(_, ids, _)| ids.contains(&id));
                    if !in_flight {
                        self.counters.expired_outbox += 1;
                        self.finish_outbox(&node, &id, DeliveryState::Expired);
                    } else {
                        // Try again once the batch in flight is answered.
                        self.expiries.insert((now + 1, Expiry::Outbox(id)));
                    }
                }
                Expiry::Status(id) => {
                    if let Some(rec) = self.status.remove(&id) {
                        if let Some(n) = self.status_per_owner.get_mut(&rec.owner) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                self.status_per_owner.remove(&rec.owner);
                            }
                        }
                        self.writes.push(NodeWrite::DeleteStatus(id));
                    }
                }
            }
        }
        let expired = self.blobs.expire(now, &mut self.writes);
        if expired > 0 {
            tracing::debug!(blobs = expired, "expired or idle uploads deleted");
        }
        self.poll_wakes(now);
        self.flush_outboxes(now);
    }

    /// The driver's check of the endpoint asked for by [`Output::CheckEndpoint`]: every address
    /// its name resolves to is one a wake-up may go to (`Ok`), or why not.
    pub fn handle_endpoint_checked(
        &mut self,
        now: Millis,
        token: Token,
        verdict: Result<(), hestia_protocol::push::EndpointRefusal>,
    ) {
        let now = self.advance(now);
        if let Some(answer) = self.pushes.checked(token, verdict, now, &mut self.writes) {
            let response = match answer {
                Ok(info) => ClientResponse::Push(info),
                Err(e) => ClientResponse::Error(e),
            };
            self.respond_client(token, response);
        }
    }

    /// What became of a wake-up handed out as [`Output::Wake`].
    pub fn handle_wake_result(&mut self, now: Millis, wake: WakeId, outcome: WakeOutcome) {
        let now = self.advance(now);
        let random = next_random(&mut self.rng);
        self.pushes
            .result(wake, outcome, now, random, &mut self.writes);
        self.poll_wakes(now);
    }

    // ---- outputs ----

    /// The durable writes that the queued outputs depend on. See the driving contract above.
    pub fn take_writes(&mut self) -> Vec<NodeWrite> {
        std::mem::take(&mut self.writes)
    }

    /// Next output, once the writes taken before it are durable.
    pub fn poll_output(&mut self) -> Option<Output> {
        debug_assert!(self.writes.is_empty(), "take_writes before poll_output");
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let retry = self
            .outboxes
            .values()
            .filter(|o| o.in_flight < MAX_IN_FLIGHT_PER_NODE && !o.queue.is_empty())
            .map(|o| o.next_attempt)
            .min();
        let parked = self.parked.next_deadline();
        let expiry = self.expiries.first().map(|(at, _)| *at);
        let mail = self
            .mail_expiries
            .first()
            .map(|(s, _, _)| *s as Millis * 1000);
        let blobs = self.blobs.next_deadline();
        let wakes = self.pushes.next_deadline();
        let bundles = self
            .bundle_retries
            .first_key_value()
            .map(|((at, _), _)| *at);
        [retry, parked, expiry, mail, blobs, wakes, bundles]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- internals ----

    fn send_bundle_fetch(&mut self, fetch: BundleFetch) {
        let batch = self.new_batch_id();
        self.outputs.push_back(Output::FedRequest {
            batch,
            to_node: fetch.node.clone(),
            request: FedRequest::FetchBundle(fetch.target),
        });
        self.bundle_fetches.insert(batch, fetch);
    }

    fn poll_wakes(&mut self, now: Millis) {
        let online = &self.online;
        self.pushes
            .poll(now, |u| online.contains_key(u), &mut self.outputs);
    }

    fn went_offline(&mut self, user: &UserId) {
        if let Some(n) = self.online.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.online.remove(user);
            }
        }
    }

    /// The id of the next outbound federation request (deliveries and bundle fetches alike).
    fn new_batch_id(&mut self) -> BatchId {
        let batch = BatchId(self.next_batch);
        self.next_batch += 1;
        batch
    }

    /// Sends a device's chunk fetch or deletion on to the node holding the blob, within the
    /// bounds on what may be pending.
    fn forward_blob_request(
        &mut self,
        token: Token,
        user: UserId,
        node: String,
        request: FedRequest,
    ) -> Result<(), ClientError> {
        if node.len() > MAX_NODE_ID_LEN || !hestia_protocol::envelope::valid_node_id(&node) {
            return Err(ClientError::NoSuchBlob);
        }
        if !self.policy.federates_with(&node) {
            return Err(ClientError::NodeDenied);
        }
        if self.blob_requests.len() >= MAX_PENDING_BLOB_REQUESTS
            || self.blob_requests.values().filter(|r| r.1 == user).count()
                >= MAX_PENDING_BLOB_REQUESTS_PER_USER
        {
            return Err(ClientError::Overloaded);
        }
        let batch = self.new_batch_id();
        self.blob_requests.insert(batch, (token, user));
        self.outputs.push_back(Output::FedRequest {
            batch,
            to_node: node,
            request,
        });
        Ok(())
    }

    fn respond_client(&mut self, token: Token, response: ClientResponse) {
        self.outputs.push_back(Output::Client { token, response });
    }

    fn open_session(&mut self, client_peer: &str, user: UserId) {
        match self.sessions.insert(client_peer.to_string(), user) {
            Some(previous) if previous == user => return,
            Some(previous) => self.went_offline(&previous),
            None => self.session_order.push_back(client_peer.to_string()),
        }
        let n = self.online.entry(user).or_default();
        *n += 1;
        if *n == 1 {
            self.pushes.user_online(&user);
        }
        // Evict the oldest sessions beyond the bound; their clients sign again when refused.
        while self.session_order.len() > MAX_SESSIONS {
            if let Some(old) = self.session_order.pop_front()
                && let Some(u) = self.sessions.remove(&old)
            {
                self.went_offline(&u);
            }
        }
    }

    /// Takes `n` sends from the user's allowance (the configured [`SendLimit`]), or says when
    /// there will be enough.
    fn spend(&mut self, user: &UserId, n: u64, now: Millis) -> Result<(), ClientError> {
        let limit = self.config.limits.send;
        match Bucket::take(self.send_budget.get(user).copied(), limit, n, now) {
            Ok(b) => {
                self.send_budget.insert(*user, b);
                Ok(())
            }
            Err(wait) => {
                tracing::info!(user = %redact::User(user), n, "sends refused: rate limit");
                Err(ClientError::RateLimited {
                    retry_after_ms: wait.min(u32::MAX as u64) as u32,
                })
            }
        }
    }

    /// Takes `n` deliveries from a remote node's allowance, or says when to come back.
    fn spend_fed(&mut self, from_node: &str, n: u64, now: Millis) -> Result<(), u64> {
        let limit = self.config.limits.fed;
        let b = Bucket::take(self.fed_budget.get(from_node).copied(), limit, n, now)?;
        if self.fed_budget.len() >= MAX_FED_BUCKETS && !self.fed_budget.contains_key(from_node) {
            self.fed_budget.clear();
        }
        self.fed_budget.insert(from_node.to_string(), b);
        Ok(())
    }

    fn accept_send(&mut self, owner: UserId, to_node: String, envelope: Envelope) -> SendResult {
        if envelope.check_header(self.now).is_err() {
            return SendResult::Invalid;
        }
        if let Err(refused) = self.within_limits(&envelope, self.now) {
            return refused;
        }
        let id = envelope.id;
        let expires_at = envelope.expires_at;
        let result = if to_node == self.config.node_id {
            match self.deliver_local(envelope, None, self.now) {
                DeliverResult::Accepted | DeliverResult::Duplicate => SendResult::DeliveredToNode,
                DeliverResult::NoSuchUser => SendResult::NoSuchUser,
                DeliverResult::MailboxFull => SendResult::Full,
                DeliverResult::Expired | DeliverResult::Invalid => SendResult::Invalid,
            }
        } else {
            if to_node.is_empty()
                || to_node.len() > MAX_NODE_ID_LEN
                || !to_node.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return SendResult::Invalid;
            }
            if !self.policy.federates_with(&to_node) {
                return SendResult::Denied;
            }
            let full = match self.outboxes.get(&to_node) {
                Some(o) => o.records.len() >= MAX_OUTBOX_PER_NODE,
                None => self.outboxes.len() >= MAX_OUTBOX_DESTINATIONS,
            };
            if full {
                return SendResult::Full;
            }
            // The same id queued already: a retry by its owner to the same node is a duplicate;
            // anything else (another user's id, another node) would corrupt the bookkeeping.
            if let Some(node) = self.queued.get(&id) {
                let same = *node == to_node
                    && self
                        .outboxes
                        .get(node)
                        .and_then(|o| o.records.get(&id))
                        .is_some_and(|r| r.owner == owner);
                return if same {
                    SendResult::Queued
                } else {
                    SendResult::Invalid
                };
            }
            let rec = OutboxRecord {
                owner,
                to_node,
                envelope,
                attempts: 0,
            };
            // The body goes to the store with this write; the core keeps only its entry.
            let entry = OutboxEntry::of(&rec);
            self.writes.push(NodeWrite::PutOutbox(rec));
            let node = entry.to_node.clone();
            self.insert_outbox(entry, 0);
            self.flush_outbox(&node, self.now);
            SendResult::Queued
        };
        // A queued envelope's state is its outbox record; a record is written when it leaves.
        // A local "no such user" is answered now and needs no record: the device has it.
        let state = match result {
            SendResult::DeliveredToNode => DeliveryState::DeliveredToNode { at: self.now },
            SendResult::Queued
            | SendResult::NoSuchUser
            | SendResult::Invalid
            | SendResult::Denied
            | SendResult::TooLarge { .. }
            | SendResult::TtlTooLong { .. }
            | SendResult::Full => {
                return result;
            }
        };
        self.set_status(
            id,
            StatusRecord {
                owner,
                state,
                expires_at,
            },
        );
        result
    }

    /// The operator's largest envelope and longest hold ([`Limits`]).
    fn within_limits(&self, envelope: &Envelope, now: Millis) -> Result<(), SendResult> {
        let limits = &self.config.limits;
        if envelope.body.len() > limits.max_envelope_bytes {
            return Err(SendResult::TooLarge {
                max_bytes: limits.max_envelope_bytes.min(u32::MAX as usize) as u32,
            });
        }
        // A minute of clock skew, as `Envelope::check_header` allows.
        if envelope.expires_at > now.saturating_add(limits.max_ttl_ms.saturating_add(60_000)) {
            return Err(SendResult::TtlTooLong {
                max_secs: (limits.max_ttl_ms / 1000).min(u32::MAX as u64) as u32,
            });
        }
        Ok(())
    }

    fn set_status(&mut self, id: EnvelopeId, rec: StatusRecord) {
        match self.status.get(&id) {
            // Ids are chosen by senders: another user's envelope under the same id must not
            // overwrite this record.
            Some(old) if old.owner != rec.owner => return,
            Some(_) => {}
            None => {
                let n = self.status_per_owner.entry(rec.owner).or_default();
                if *n >= MAX_STATUS_PER_USER {
                    return;
                }
                *n += 1;
                self.expiries.insert((
                    rec.expires_at.saturating_add(STATUS_GRACE_MS),
                    Expiry::Status(id),
                ));
            }
        }
        self.writes.push(NodeWrite::PutStatus(id, rec.clone()));
        self.status.insert(id, rec);
    }

    /// Body bytes stored here that `node` delivered (since this node started).
    pub fn stored_from(&self, node: &str) -> u64 {
        self.origins.held(node)
    }

    fn state_of(&self, user: &UserId, id: &EnvelopeId) -> DeliveryState {
        let queued = self
            .queued
            .get(id)
            .and_then(|node| self.outboxes.get(node)?.records.get(id));
        if let Some(rec) = queued {
            return match rec.owner == *user {
                true => DeliveryState::Queued {
                    attempts: rec.attempts,
                },
                false => DeliveryState::Unknown,
            };
        }
        match self.status.get(id) {
            Some(rec) if rec.owner == *user => rec.state,
            _ => DeliveryState::Unknown,
        }
    }
}

#[cfg(test)]
mod tests;
