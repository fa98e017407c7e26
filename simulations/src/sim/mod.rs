//! The discrete-event engine. One virtual clock, two seeded random streams (the workload's and
//! the rest's), one event queue ordered by (time, sequence number) ([`queue`]): the same seed and
//! scenario replay the same run exactly. What a run reports is built in [`results`].
//!
//! Each node is the production [`relay::Core`] over a [`MemNodeStore`]; the engine plays the
//! driver's part (apply writes, then deliver outputs) and the network's (latency, loss,
//! partitions, crashed nodes). Devices are modelled: they sign real client requests, keep a
//! long-poll fetch open while online, acknowledge what they receive and send on a Poisson
//! schedule. Envelope bodies are filler of the sizes the real messages would have: the relay
//! never looks inside, and the simulation measures the relay, not the crypto.
//!
//! Beside text, a scenario can carry files ([`files`]: chunked uploads, fetches across the
//! federation, expiry), push wake-ups of phones that sleep ([`push`]) and call signalling
//! ([`calls`]), each through the same core and each drawn from a random stream of its own.

mod calls;
mod devices;
mod engine;
mod files;
mod messages;
mod nodes;
mod push;
mod queue;
mod results;
mod slab;

pub use engine::Sim;
pub use results::{
    CallFigures, FileFigures, OperatorView, Outcome, Percentiles, PushFigures, Sample, Summary,
    TracedFile, TracedMessage, feature_lines,
};

use crate::scenario::{Scenario, SocialGraph};
use hestia_node::relay::{self, BatchId, FedFailure, Ready, Token, WakeId};
use hestia_protocol::Millis;
use hestia_protocol::codec;
use hestia_protocol::envelope::{
    ENVELOPE_VERSION, Envelope, EnvelopeId, MAX_TEXT_BYTES, PADDING_BUCKETS, PREKEY_HEADER_RESERVE,
};
use hestia_protocol::identity::{IdentityKey, UserId};
use hestia_protocol::seal;
use hestia_protocol::wire::{
    Auth, ClientAuth, ClientError, ClientOp, ClientRequest, ClientResponse, DeliverResult,
    FedRequest, FedResponse, Outgoing,
};
use hestia_store::node::{MemNodeStore, NodeStore};
use queue::{EventQueue, Scheduled};
use rand::{Rng, RngExt, SeedableRng};
use serde::Serialize;
use slab::{IdMap, Slab};
use std::collections::{BTreeSet, HashMap, HashSet};

/// A fast, deterministic hasher for the simulator's own maps (sequential tokens, random ids,
/// small integers): an FxHash-style rotate-xor-multiply. Nothing here is adversarial input, and
/// results never depend on map iteration order.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = std::hash::BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, Fx>;
type FxSet<K> = HashSet<K, Fx>;

/// `f` over `items` on every available core, results in order. For pure, costly set-up work
/// (key derivation, signatures), so the result is the same as a sequential map.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || items.len() < 1024 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("set-up worker"))
            .collect()
    })
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from any 64-bit input (for draws that must
/// not depend on event order).
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Virtual time at which the run starts (a fixed wall-clock instant, so envelope expiry checks
/// behave as in production and runs replay).
pub const EPOCH_MS: Millis = 1_800_000_000_000;
/// How long a node waits for a federation answer before it counts the request failed.
pub const FED_TIMEOUT_MS: Millis = 10_000;
/// Linux's minimum and maximum TCP retransmission timeouts: a segment lost in a partition is
/// sent again after the minimum, then after twice as long each time, up to the maximum.
pub const TCP_MIN_RTO_MS: Millis = 200;
pub const TCP_MAX_RTO_MS: Millis = 120_000;

/// Connections between nodes carry background traffic (gossip, pings, Kademlia), so each loses
/// its first segment soon after a partition starts: uniformly within this, calibrated on the
/// real stack (`sim run --real` showed first losses 0.7 to 1.7 s after the start).
pub const BACKGROUND_GAP_MS: Millis = 2_000;

/// When a connection whose first segment was lost at `first_loss` in partition `p` carries
/// traffic again: at TCP's first retransmission after the partition ends (retransmissions after
/// `TCP_MIN_RTO_MS`, doubling up to `TCP_MAX_RTO_MS`). Everything sent on the connection in the
/// meantime queues behind that segment (head-of-line blocking), messages sent just after the
/// end included. The real stack showed this (`sim run --real`): a request sent into a
/// six-second partition is answered within seconds of its end, not retried after the 10 s
/// timeout, and requests sent just after the end wait too. Constant time, so partitions of
/// days cost nothing per packet.
pub fn tcp_release(first_loss: Millis, p: &crate::scenario::Partition) -> Millis {
    let end = EPOCH_MS + ms(p.end_s);
    let (mut t, mut rto) = (first_loss, TCP_MIN_RTO_MS);
    while t < end && rto < TCP_MAX_RTO_MS {
        t += rto;
        rto = (rto * 2).min(TCP_MAX_RTO_MS);
    }
    if t < end {
        t += (end - t).div_ceil(TCP_MAX_RTO_MS) * TCP_MAX_RTO_MS;
    }
    t
}

/// A device whose home node went away tries to reconnect this often, so it finds a restarted
/// node within this (uniformly). Until then a node that lost its disk does not know the user and
/// refuses mail for them. `sim run --real`'s devices use the same interval.
pub const DEVICE_RECONNECT_MS: Millis = 250;
/// How long a device's fetch waits for mail.
pub const FETCH_WAIT_MS: u32 = 30_000;
/// A device's long poll.
const FETCH: ClientOp = ClientOp::Fetch {
    limit: 256,
    wait_ms: FETCH_WAIT_MS,
};
/// Bound on processed events, so a scenario cannot run forever.
pub const MAX_EVENTS: u64 = 500_000_000;

#[derive(Debug)]
enum Kind {
    Register,
    Send(Vec<EnvelopeId>),
    /// A long poll, in the device's fetch epoch (see [`Device::fetch_epoch`]).
    Fetch(u32),
    Ack,
    /// Of file `.0`, in request generation `.1` (see [`files`]).
    BlobBegin(usize, u32),
    BlobPut(usize, u32, u32),
    BlobGet(usize, u32, u32),
    BlobDone,
    PushRegister,
}

/// What a tracked envelope carries to the person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carries {
    Text,
    /// The message that announces file `.0`.
    File(usize),
    /// A signal of call `.0`.
    Call(usize, calls::Signal),
}

#[derive(Debug)]
enum Ev {
    Timer(usize),
    /// An empty answer to a device's current long poll reached it and the device sent the next
    /// fetch, which reaches the node now: the answer's arrival and the new request in one
    /// event instead of two, as idle devices renew every `FETCH_WAIT_MS`. What the answer would
    /// meet at the device is checked where it could change: anything that changes a device's
    /// connection, fetch loop or session while its answer is held first releases it, and an
    /// answer still on its way then becomes the ordinary `ClientResp` it stands for (and this
    /// event is void). So the model behaves exactly as with the two events (only the count of
    /// bytes devices sent can differ, by the renewals in flight when the run stops).
    Renew {
        user: usize,
        generation: u32,
        epoch: u32,
    },
    ClientReq {
        user: usize,
        kind: Kind,
        req: ClientRequest,
    },
    ClientResp {
        user: usize,
        kind: Kind,
        resp: ClientResponse,
    },
    FedReq {
        from: usize,
        to: usize,
        batch: BatchId,
        req: FedRequest,
    },
    FedResp {
        node: usize,
        batch: BatchId,
        result: Result<FedResponse, FedFailure>,
    },
    FedTimeout {
        node: usize,
        batch: BatchId,
    },
    Compose(usize),
    /// A user's device sends a dummy envelope (cover traffic).
    Cover(usize),
    /// A device hands an envelope it held back (batching delay) to its node.
    Submit {
        user: usize,
        ids: Vec<EnvelopeId>,
        out: Outgoing,
    },
    Toggle(usize),
    /// A user sends a file / places a call (their own random streams).
    ComposeFile(usize),
    ComposeCall(usize),
    /// A file transfer that waited out a passing failure goes on.
    FileRetry(usize),
    /// The push service's answer to a node's wake-up request.
    WakeResult {
        node: usize,
        wake: WakeId,
    },
    /// A wake-up reaches a phone; a woken phone's window ends.
    DeviceWake(usize),
    Sleep(usize),
    /// Of call `.0`: the callee picks up; the caller hangs up; the ring timeout.
    CallAnswer(usize),
    CallEnd(usize),
    RingTimeout(usize),
    Crash(usize),
    Restart(usize),
    /// A device finds its restarted home node again (and registers again if it lost its disk).
    Reconnect {
        user: usize,
        register: bool,
    },
}

struct Node {
    id: String,
    core: Option<relay::Core>,
    store: MemNodeStore,
    timer_at: Option<Millis>,
    next_token: u64,
    /// The device, what it asked, and the connection it asked on ([`Device::conn`]).
    client_tokens: FxMap<Token, (usize, Kind, u32)>,
    fed_tokens: FxMap<Token, (usize, BatchId, Vec<EnvelopeId>)>,
    /// What this node's operator saw.
    observed: Observed,
    /// Outbound batches awaiting an answer or a timeout.
    pending: BTreeSet<BatchId>,
    users: Vec<usize>,
}

struct Device {
    key: IdentityKey,
    node: usize,
    peer: String,
    online: bool,
    fetching: bool,
    /// Counts the fetches the device stopped waiting for (it went offline): an answer to one
    /// does not start another fetch, so a device that comes back before its old long poll
    /// ends runs one fetch loop, not two (the node keeps few waits per user, so two would
    /// displace each other's waits without end).
    fetch_epoch: u32,
    /// Whether the home node knows this device's connection (after a signed request).
    session: bool,
    /// Counts the connections the device dropped: an answer to a request made on an earlier
    /// one is lost with it.
    conn: u32,
    /// On a phone: drops its connection whenever the person is not using it, woken by push.
    phone: bool,
    /// Woken by a wake-up, connected until `awake_until`.
    awake: bool,
    awake_until: Millis,
    /// The call this device is ringing or talking in.
    in_call: Option<usize>,
    /// Files this device is uploading or downloading.
    files: Vec<usize>,
    /// While not connected: when the first envelope for it was sent, and when the first one
    /// reached its home node (what a wake-up's delays are measured from).
    waiting_since: Option<Millis>,
    arrived_since: Option<Millis>,
    /// When this device's link to its node finishes sending what it queued, each way, in
    /// microseconds (file chunks only).
    up_free_us: u64,
    down_free_us: u64,
    /// An empty long-poll answer on its way to this device, and the renewal it will send (see
    /// [`Ev::Renew`]).
    held: Option<HeldAnswer>,
    /// The renewal in flight to the node ([`Ev::Renew`]'s generation), and the count of them.
    renew: Option<u32>,
    renews: u32,
}

/// An empty answer to a device's current long poll, not yet at the device: what it will find
/// when it arrives at `arrives` (see [`Ev::Renew`]).
#[derive(Clone, Copy, Debug)]
struct HeldAnswer {
    arrives: Millis,
    epoch: u32,
}

#[derive(Clone, Copy)]
struct Msg {
    carries: Carries,
    sent_at: Millis,
    /// The recipient is homed on another node than the sender: the message crosses a link.
    across: bool,
    /// The recipient's device is a phone (woken by push).
    to_phone: bool,
    node_at: Option<Millis>,
    device_at: Option<Millis>,
    lost_disk: bool,
    /// The recipient's node refused it: it did not know the user (it lost its disk and the user
    /// had not registered again yet). The sender's node reports the failure to the sender.
    refused: bool,
}

#[derive(Default)]
struct Observed {
    senders: FxSet<usize>,
    user_to_node: FxSet<(usize, usize)>,
    /// Envelopes seen per (local user, recipient).
    user_to_recipient: FxMap<(usize, usize), u32>,
    node_to_user: FxSet<(usize, usize)>,
    sizes: FxSet<usize>,
    sent: u64,
    received: u64,
    /// As the node holding a file: (uploader, node that fetched it for its user) and
    /// (uploader, local user who fetched it), and the sealed sizes of what it held.
    file_fetching_nodes: FxSet<(usize, usize)>,
    file_local_fetchers: FxSet<(usize, usize)>,
    blob_sizes: FxSet<u64>,
}

/// Mixed into the seed for the workload's stream (the bytes of "workload"), the files', the
/// calls' and the phone assignment's.
const WORKLOAD_STREAM: u64 = 0x776f_726b_6c6f_6164;
const FILES_STREAM: u64 = 0x0066_696c_6573;
const CALLS_STREAM: u64 = 0x0063_616c_6c73;
const PHONES_STREAM: u64 = 0x7068_6f6e_6573;

fn exp_from(rng: &mut rand::rngs::StdRng, mean_ms: f64) -> Millis {
    let u: f64 = rng.random::<f64>().max(1e-12);
    (-u.ln() * mean_ms).max(1.0) as Millis
}

/// What every shard reads and none changes: who is homed where, keys, node ids.
struct World {
    pub(super) node_ids: Vec<String>,
    /// Each user's home node, whether their device is a phone, their user id.
    pub(super) homes: Vec<usize>,
    pub(super) phones: Vec<bool>,
    pub(super) user_ids: Vec<UserId>,
    pub(super) by_key: FxMap<UserId, usize>,
    pub(super) recipient_weights: Vec<f64>,
    /// Which shard simulates each node (shards own contiguous ranges of nodes, and so of users).
    pub(super) shard_of_node: Vec<u32>,
    /// Bytes a session message adds to its text inside the sealed box (measured once from the
    /// real types).
    pub(super) session_overhead: usize,
    /// The shortest time anything takes from one node to another: what a shard may run ahead of
    /// the others without missing an event from them ([`engine`]).
    pub(super) lookahead: Millis,
}

impl World {
    pub(super) fn shard_of_user(&self, u: usize) -> usize {
        self.shard_of_node[self.homes[u]] as usize
    }
}

/// What one shard hands another at the end of a window ([`engine`]): an event at one of its
/// nodes (at least the lookahead later than now), the record of a message sent to one of its
/// users (with the file or call it carries), or an envelope lost with a sender node's disk.
enum Cross {
    Event(Millis, Ev),
    Record(Box<Record>),
    Lost(EnvelopeId),
}

/// A message sent, for the shard of its recipient.
struct Record {
    id: EnvelopeId,
    from: usize,
    to: usize,
    msg: Msg,
    file: Option<files::File>,
}

/// One shard of the simulation: a contiguous range of nodes and the users homed on them, with
/// their own event queue and random streams. Shards exchange only [`Cross`] items, at the ends of
/// windows no longer than the lookahead, so a run's outputs depend on the number of shards (a
/// scenario setting) but not on how many threads run them.
struct Shard {
    sc: Scenario,
    seed: u64,
    w: std::sync::Arc<World>,
    /// This shard's index, and how many there are.
    index: usize,
    shards: usize,
    /// Everything the network and the privacy knobs draw: link latencies and losses, ids, cover
    /// traffic, batching delays, the cores' seeds after a restart.
    rng: rand::rngs::StdRng,
    /// What the people do, drawn from a stream of its own (common random numbers): when each
    /// user is online, when they write, to whom and how much. A knob that draws more or fewer
    /// numbers from `rng` (cover traffic, batching) leaves the messages themselves unchanged, so
    /// two runs that differ in one knob are compared on the same messages.
    workload: rand::rngs::StdRng,
    /// When users send files and place calls, to whom, how big, whether they answer: streams
    /// of their own, so turning files or calls on leaves the text messages alone.
    files_rng: rand::rngs::StdRng,
    calls_rng: rand::rngs::StdRng,
    files: files::Files,
    calls: calls::Calls,
    push: push::Pushes,
    now: Millis,
    seq: u64,
    queue: EventQueue,
    nodes: Slab<Node>,
    devices: Slab<Device>,
    /// Every message sent to this shard's users. Results are built from counts and sorted
    /// latencies, never from this map's iteration order.
    msgs: FxMap<EnvelopeId, Msg>,
    /// Messages this shard's users sent.
    sent: u64,
    /// What this shard hands the others at the end of the window, with the shard each is for.
    outbox: Vec<(usize, Cross)>,
    events: u64,
    not_sent: u64,
    cover_sent: u64,
    bytes_client: u64,
    bytes_fed_req: u64,
    bytes_fed_resp: u64,
    /// Every (sender, recipient) pair a user sent to: the ground truth that operators'
    /// observations are measured against. Only counted, so results do not depend on its order.
    all_conversations: FxSet<(usize, usize)>,
    /// When each directed link finishes sending what it has queued, in microseconds (only with
    /// limited bandwidth).
    link_free_us: FxMap<(usize, usize), u64>,
    /// For each partition, a time by which every connection across it gets through again (see
    /// [`tcp_release`]): after that the partition delays nothing.
    partition_release: Vec<Millis>,
    /// (sent at, sender, recipient, envelope id) of every message, in sending order, if traced.
    trace: Option<Vec<(Millis, usize, usize, EnvelopeId)>>,
    /// Messages that reached a node / a device / were lost with a disk (and not delivered).
    count_node: u64,
    count_device: u64,
    count_lost: u64,
    count_refused: u64,
    series: Vec<Sample>,
    interrupted: bool,
}

fn ms(s: f64) -> Millis {
    (s * 1000.0).max(0.0) as Millis
}

/// A shard's random streams.
struct Streams {
    rng: rand::rngs::StdRng,
    workload: rand::rngs::StdRng,
    files: rand::rngs::StdRng,
    calls: rand::rngs::StdRng,
}

impl Shard {
    /// Shard `index` of `shards`, simulating `nodes` (numbered from `node_base`) and `devices`
    /// (from `user_base`).
    #[allow(clippy::too_many_arguments)]
    fn new(
        sc: Scenario,
        seed: u64,
        w: std::sync::Arc<World>,
        (index, shards): (usize, usize),
        streams: Streams,
        (node_base, nodes): (usize, Vec<Node>),
        (user_base, devices): (usize, Vec<Device>),
    ) -> Shard {
        Shard {
            seed,
            w,
            index,
            shards,
            now: EPOCH_MS,
            seq: 0,
            queue: EventQueue::default(),
            nodes: Slab::new(node_base, nodes),
            devices: Slab::new(user_base, devices),
            msgs: FxMap::default(),
            sent: 0,
            outbox: Vec::new(),
            events: 0,
            not_sent: 0,
            cover_sent: 0,
            bytes_client: 0,
            bytes_fed_req: 0,
            bytes_fed_resp: 0,
            all_conversations: FxSet::default(),
            partition_release: sc
                .partitions
                .iter()
                .map(|p| {
                    // A bound on every connection's release: the retransmission that crosses
                    // the end comes at most one interval later, and an interval is at most the
                    // time since the first loss plus the minimum (or the maximum RTO).
                    let (start, end) = (EPOCH_MS + ms(p.start_s), EPOCH_MS + ms(p.end_s));
                    end + (end.saturating_sub(start) + TCP_MIN_RTO_MS).min(TCP_MAX_RTO_MS)
                })
                .collect(),
            trace: None,
            link_free_us: FxMap::default(),
            count_node: 0,
            count_device: 0,
            count_lost: 0,
            count_refused: 0,
            series: Vec::new(),
            interrupted: false,
            rng: streams.rng,
            workload: streams.workload,
            files_rng: streams.files,
            calls_rng: streams.calls,
            files: files::Files::new(),
            calls: calls::Calls::default(),
            push: push::Pushes::default(),
            sc,
        }
    }

    /// User `u`'s start: registration (signed beforehand), then the first toggle, message,
    /// cover message, file and call.
    fn start_user(&mut self, u: usize, auth: ClientAuth) {
        self.send_client_request(u, Kind::Register, ClientOp::Register, Some(auth));
        let online = self.workload.random::<f64>() < self.sc.online_fraction;
        let t = self.now + 1;
        if online {
            self.schedule(t, Ev::Toggle(u));
        } else {
            let d = self.offline_span();
            self.schedule(t + d, Ev::Toggle(u));
        }
        let d = self.compose_gap();
        self.schedule(self.now + d, Ev::Compose(u));
        if self.sc.cover_messages_per_user_per_hour > 0.0 {
            let d = self.cover_gap();
            self.schedule(self.now + d, Ev::Cover(u));
        }
        if let Some(d) = self.file_gap() {
            self.schedule(self.now + d, Ev::ComposeFile(u));
        }
        if let Some(d) = self.call_gap() {
            self.schedule(self.now + d, Ev::ComposeCall(u));
        }
    }

    /// A run-wide number for this shard's next file or call (`count` of them made so far).
    fn number(&self, count: usize) -> usize {
        count * self.shards + self.index
    }

    /// Schedules `ev` at node `n`: here, or in its shard at the end of the window.
    fn schedule_at_node(&mut self, n: usize, at: Millis, ev: Ev) {
        let shard = self.w.shard_of_node[n] as usize;
        if shard == self.index {
            self.schedule(at, ev);
        } else {
            debug_assert!(
                at >= self.now + self.w.lookahead,
                "an event inside the lookahead"
            );
            self.outbox.push((shard, Cross::Event(at, ev)));
        }
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev: Box::new(ev),
        });
    }

    fn exp(&mut self, mean_ms: f64) -> Millis {
        exp_from(&mut self.rng, mean_ms)
    }

    /// An exponential draw from the workload's own stream.
    fn exp_workload(&mut self, mean_ms: f64) -> Millis {
        exp_from(&mut self.workload, mean_ms)
    }

    /// Gaps between a user's send opportunities: Poisson at the peak rate (the diurnal
    /// pattern's maximum); `compose` thins them to the rate at that time of day.
    fn compose_gap(&mut self) -> Millis {
        if self.sc.messages_per_user_per_hour <= 0.0 {
            return Millis::MAX / 4;
        }
        let peak = self.sc.messages_per_user_per_hour * (1.0 + self.sc.diurnal_amplitude);
        self.exp_workload(3_600_000.0 / peak)
    }

    fn offline_span(&mut self) -> Millis {
        let f = self.sc.online_fraction.clamp(1e-6, 1.0 - 1e-6);
        self.exp_workload(self.sc.session_mean_s * 1000.0 * (1.0 - f) / f)
    }

    /// One-way time for `bytes` from node `a` to node `b`: the latency of their region pair, plus,
    /// when bandwidth is limited, the wait behind what the link is still sending (a FIFO per
    /// directed link) and the message's own transmission time.
    fn link_latency(&mut self, a: usize, b: usize, bytes: u64) -> Millis {
        let (lo, hi) = if self.sc.regions > 1 && a % self.sc.regions != b % self.sc.regions {
            self.sc.inter_region_latency_ms
        } else {
            self.sc.link_latency_ms
        };
        let latency = lo
            + if hi > lo {
                self.rng.random_range(0..=hi - lo)
            } else {
                0
            };
        if self.sc.link_bandwidth_mbps <= 0.0 {
            return latency;
        }
        let free_us = self.link_free_us.entry((a, b)).or_insert(0);
        queued(free_us, self.now, bytes, self.sc.link_bandwidth_mbps) + latency
    }

    /// When a packet sent now from node `a` to node `b` gets through: now, unless a partition
    /// separates them and their connection has not recovered from it (see [`tcp_release`]),
    /// then at that recovery; `None` if that is after the sender gives up (`FED_TIMEOUT_MS`).
    fn gets_through_at(&self, a: usize, b: usize) -> Option<Millis> {
        let mut t = self.now;
        // Overlapping partitions can hand a packet from one release to the next.
        for _ in 0..self.sc.partitions.len() {
            let before = t;
            for (i, p) in self.sc.partitions.iter().enumerate() {
                let start = EPOCH_MS + ms(p.start_s);
                if (a < p.split) == (b < p.split) || t < start || t >= self.partition_release[i] {
                    continue;
                }
                // The connection's first lost segment: background traffic soon after the start
                // (a per-link, per-partition draw), or this packet if earlier.
                let draw =
                    mix64(self.seed ^ mix64(((a as u64) << 40) ^ ((b as u64) << 16) ^ i as u64));
                let background = start + draw % BACKGROUND_GAP_MS;
                t = t.max(tcp_release(t.min(background), p));
            }
            if t == before {
                break;
            }
        }
        (t < self.now + FED_TIMEOUT_MS).then_some(t)
    }

    fn node_index(id: &str) -> Option<usize> {
        id.strip_prefix('N')?.replace('o', "0").parse().ok()
    }

    /// A device signs and sends a request to its home node.
    fn client_request(&mut self, u: usize, kind: Kind, op: ClientOp) {
        self.send_client_request(u, kind, op, None);
    }

    /// `signed`: the request's signature, made beforehand for this device, op and `now`.
    fn send_client_request(
        &mut self,
        u: usize,
        kind: Kind,
        op: ClientOp,
        signed: Option<ClientAuth>,
    ) {
        let d = &self.devices[u];
        let auth = if d.session {
            Auth::Session(d.key.user_id())
        } else {
            let signed = signed.unwrap_or_else(|| {
                ClientAuth::sign(&d.key, &self.nodes[d.node].id, &d.peer, self.now, &op)
                    .expect("client operations encode")
            });
            Auth::Signed(Box::new(signed))
        };
        // Requests of one device arrive in order, so the ones after a signed one find the session.
        self.devices[u].session = true;
        let req = ClientRequest { auth, op };
        let bytes = codec::encoded_len(&req).map_or(0, |n| n as u64);
        self.bytes_client += bytes;
        let mut at = self.now + self.sc.client_latency_ms;
        if let ClientOp::BlobPut { chunk, .. } = &req.op {
            self.files.bytes_up += chunk.len() as u64;
            at += self.device_link(u, bytes, true);
        }
        self.schedule(at, Ev::ClientReq { user: u, kind, req });
    }

    /// Extra time `bytes` take on a device's link to its node (`up`) or back, behind what that
    /// direction still sends: 0 when the scenario leaves device bandwidth unlimited.
    fn device_link(&mut self, u: usize, bytes: u64, up: bool) -> Millis {
        if self.sc.device_bandwidth_mbps <= 0.0 {
            return 0;
        }
        let d = &mut self.devices[u];
        let free_us = if up {
            &mut d.up_free_us
        } else {
            &mut d.down_free_us
        };
        queued(free_us, self.now, bytes, self.sc.device_bandwidth_mbps)
    }

    fn start_fetch(&mut self, u: usize) {
        let d = &self.devices[u];
        if self.connected(u) && !d.fetching && self.nodes[d.node].core.is_some() {
            self.devices[u].fetching = true;
            let epoch = self.devices[u].fetch_epoch;
            self.client_request(u, Kind::Fetch(epoch), FETCH);
        }
    }

    fn pick_recipient(&mut self, sender: usize) -> usize {
        pick(
            &self.w.recipient_weights,
            self.w.homes.len(),
            sender,
            &mut self.workload,
        )
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Timer(n) => {
                if self.nodes[n].timer_at != Some(self.now) {
                    return; // superseded
                }
                self.nodes[n].timer_at = None;
                if let Some(core) = self.nodes[n].core.as_mut() {
                    core.handle_timeout(self.now);
                    self.drive(n);
                }
            }
            Ev::ClientReq { user, kind, req } => self.client_request_arrives(user, kind, req),
            Ev::Renew {
                user,
                generation,
                epoch,
            } => self.renew_arrives(user, generation, epoch),
            Ev::ClientResp { user, kind, resp } => self.device_answer(user, kind, resp),
            Ev::FedReq {
                from,
                to,
                batch,
                req,
            } => {
                if self.nodes[to].core.is_none() {
                    // Connection refused: the sender learns it after the way back.
                    let back = self.link_latency(to, from, 0);
                    let result = Err(FedFailure::Unreachable);
                    let ev = Ev::FedResp {
                        node: from,
                        batch,
                        result,
                    };
                    return self.schedule_at_node(from, self.now + back, ev);
                }
                let ids = match &req {
                    FedRequest::Deliver(envs) => {
                        let mut arrived = Vec::new();
                        for e in envs {
                            if let Some(r) = self.w.by_key.get(&e.recipient)
                                && self.w.homes[*r] == to
                            {
                                // The recipient's node sees the sending node, not the sender.
                                self.nodes[to].observed.node_to_user.insert((from, *r));
                                self.nodes[to].observed.sizes.insert(e.body.len());
                                self.nodes[to].observed.received += 1;
                                arrived.push(*r);
                            }
                        }
                        for r in arrived {
                            self.arrived(r);
                        }
                        envs.iter().map(|e| e.id).collect()
                    }
                    FedRequest::BlobGet { blob, .. } => {
                        self.fetched_by_node(to, from, blob);
                        Vec::new()
                    }
                    FedRequest::BlobDone { .. } => Vec::new(),
                    // The model's devices fetch no prekey bundles.
                    _ => return,
                };
                let token = self.token(to);
                self.nodes[to].fed_tokens.insert(token, (from, batch, ids));
                // Split the borrow: the sender's id and the receiver's core are different nodes
                // (or the same one, read before it is changed).
                let now = self.now;
                self.nodes[to]
                    .core
                    .as_mut()
                    .expect("checked")
                    .handle_fed_request(now, token, &self.w.node_ids[from], req);
                self.drive(to);
            }
            Ev::FedResp {
                node,
                batch,
                result,
            } => {
                if self.nodes[node].pending.remove(&batch)
                    && let Some(core) = self.nodes[node].core.as_mut()
                {
                    core.handle_fed_response(self.now, batch, result);
                    self.drive(node);
                }
            }
            Ev::FedTimeout { node, batch } => {
                if self.nodes[node].pending.remove(&batch)
                    && let Some(core) = self.nodes[node].core.as_mut()
                {
                    core.handle_fed_response(self.now, batch, Err(FedFailure::Timeout));
                    self.drive(node);
                }
            }
            Ev::Compose(u) => self.compose(u),
            Ev::Cover(u) => self.cover(u),
            Ev::Submit { user, ids, out } => {
                if self.nodes[self.devices[user].node].core.is_some() {
                    self.client_request(user, Kind::Send(ids), ClientOp::Send(vec![out]));
                }
            }
            Ev::Toggle(u) => {
                let was_connected = self.connected(u);
                self.release_held(u);
                let online = !self.devices[u].online;
                self.devices[u].online = online;
                let next = if online {
                    self.exp_workload(self.sc.session_mean_s * 1000.0)
                } else {
                    self.offline_span()
                };
                self.schedule(self.now + next, Ev::Toggle(u));
                if online {
                    // A phone that slept opens a new connection; a desktop kept its own.
                    let reconnected = self.devices[u].phone && !was_connected;
                    self.came_online(u, reconnected);
                } else if !self.connected(u) {
                    self.stop_fetching(u);
                    self.sleep_if_idle(u);
                }
            }
            Ev::ComposeFile(u) => self.compose_file(u),
            Ev::ComposeCall(u) => self.compose_call(u),
            Ev::FileRetry(f) => self.file_retry(f),
            Ev::WakeResult { node, wake } => {
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_wake_result(self.now, wake, relay::WakeOutcome::Delivered);
                    self.drive(node);
                }
            }
            Ev::DeviceWake(u) => self.device_woken(u),
            Ev::Sleep(u) => self.wake_window_ends(u),
            Ev::CallAnswer(c) => self.call_answer(c),
            Ev::CallEnd(c) => self.call_end(c),
            Ev::RingTimeout(c) => self.ring_timeout(c),
            Ev::Crash(i) => self.crash(i),
            Ev::Restart(i) => self.restart(i),
            Ev::Reconnect { user, register } => {
                if self.nodes[self.devices[user].node].core.is_some() {
                    if register {
                        self.client_request(user, Kind::Register, ClientOp::Register);
                    } else {
                        self.start_fetch(user);
                    }
                    // What it had in flight went with the node's connections.
                    self.resume_files(user, true);
                }
            }
        }
    }

    /// A device's request reaches its home node.
    fn client_request_arrives(&mut self, user: usize, kind: Kind, req: ClientRequest) {
        let n = self.devices[user].node;
        if self.nodes[n].core.is_none() {
            if matches!(kind, Kind::Fetch(_)) {
                self.devices[user].fetching = false;
            }
            return;
        }
        let mut local = Vec::new();
        if let ClientOp::Send(items) = &req.op {
            for o in items {
                if let Some(r) = self.w.by_key.get(&o.envelope.recipient) {
                    if self.w.homes[*r] == n {
                        local.push(*r);
                    }
                    // The sender's home node sees the sending user and the recipient.
                    let to_node = self.w.homes[*r];
                    let seen = &mut self.nodes[n].observed;
                    seen.senders.insert(user);
                    seen.user_to_node.insert((user, to_node));
                    *seen.user_to_recipient.entry((user, *r)).or_insert(0) += 1;
                    seen.sizes.insert(o.envelope.body.len());
                    seen.sent += 1;
                }
            }
        }
        for r in local {
            self.arrived(r);
        }
        if let ClientOp::BlobGet { node, blob, .. } = &req.op
            && *node == self.nodes[n].id
        {
            self.fetched_locally(n, user, blob);
        }
        let token = self.token(n);
        let conn = self.devices[user].conn;
        self.nodes[n]
            .client_tokens
            .insert(token, (user, kind, conn));
        let peer = &self.devices[user].peer;
        self.nodes[n]
            .core
            .as_mut()
            .expect("checked")
            .handle_client(self.now, token, peer, req);
        self.drive(n);
    }

    fn device_answer(&mut self, u: usize, kind: Kind, resp: ClientResponse) {
        if let ClientResponse::Error(ClientError::SessionUnknown) = resp {
            self.release_held(u);
            self.devices[u].session = false;
        }
        if let ClientResponse::Error(ClientError::NotRegistered) = resp {
            // The home node lost its disk: register again, then carry on.
            self.client_request(u, Kind::Register, ClientOp::Register);
        }
        match kind {
            Kind::BlobBegin(f, g) => return self.file_begun(f, g, resp),
            Kind::BlobPut(f, i, g) => return self.chunk_stored(f, i, g, resp),
            Kind::BlobGet(f, i, g) => return self.chunk_got(f, i, g, resp),
            _ => {}
        }
        match kind {
            Kind::Fetch(epoch) => {
                // An answer to a fetch the device gave up on (it went offline and came back
                // before the long poll ended) still brings what it holds, but the fetch loop
                // goes on from the newer fetch.
                let current = epoch == self.devices[u].fetch_epoch;
                if current {
                    self.devices[u].fetching = false;
                }
                if !self.connected(u) {
                    return; // the answer is lost; the envelopes stay held, unacknowledged
                }
                let mut received = Vec::new();
                if let ClientResponse::Envelopes(envs) = resp
                    && !envs.is_empty()
                {
                    let ids: Vec<EnvelopeId> = envs.iter().map(|e| e.id).collect();
                    for id in &ids {
                        if let Some(m) = self.msgs.get_mut(id)
                            && m.device_at.is_none()
                        {
                            m.device_at = Some(self.now);
                            if m.carries != Carries::Text {
                                received.push(m.carries);
                            }
                            self.count_device += 1;
                            if m.node_at.is_none() {
                                m.node_at = Some(self.now);
                                self.count_node += 1;
                            }
                            if m.lost_disk {
                                // A copy survived elsewhere after all.
                                m.lost_disk = false;
                                self.count_lost -= 1;
                            }
                            if m.refused {
                                // Refused once, accepted on a retry.
                                m.refused = false;
                                self.count_refused -= 1;
                            }
                        }
                    }
                    self.client_request(u, Kind::Ack, ClientOp::Ack(ids));
                }
                if current {
                    self.start_fetch(u);
                }
                for carries in received {
                    match carries {
                        Carries::File(f) => self.file_announced(u, f),
                        Carries::Call(c, signal) => self.call_signal(u, c, signal),
                        Carries::Text => {}
                    }
                }
            }
            Kind::Register => {
                self.start_fetch(u);
                if self.devices[u].phone {
                    let op = ClientOp::PushRegister(push::subscription(u));
                    self.client_request(u, Kind::PushRegister, op);
                }
            }
            Kind::PushRegister => self.sleep_if_idle(u),
            Kind::Send(_)
            | Kind::Ack
            | Kind::BlobDone
            | Kind::BlobBegin(..)
            | Kind::BlobPut(..)
            | Kind::BlobGet(..) => {}
        }
    }

    /// Messages of this shard's users settled (at a device, lost, refused), and file
    /// transfers going on.
    fn settled(&self) -> (u64, usize) {
        (
            self.count_device + self.count_lost + self.count_refused,
            self.files.active,
        )
    }

    /// Processes every event before `limit`.
    fn run_until(&mut self, limit: Millis) {
        while let Some(s) = self.queue.pop_before(limit) {
            self.now = s.at;
            self.events += 1;
            self.step(*s.ev);
        }
    }

    /// What another shard handed this one.
    fn receive(&mut self, item: Cross) {
        match item {
            Cross::Event(at, ev) => self.schedule(at, ev),
            Cross::Record(record) => self.recorded(*record),
            Cross::Lost(id) => self.lost_with_disk(&id),
        }
    }
}

/// A node's configuration: the production core with no limits, and push on when the
/// scenario has phones.
fn node_config(sc: &Scenario, node_id: String, seed: u64) -> relay::Config {
    let push = if sc.phone_fraction > 0.0 {
        relay::PushConfig {
            // The core only needs to know it has a key; wake-ups are modelled, not sent.
            vapid_key: Some(push::MODEL_VAPID_KEY.to_vec()),
            allow_loopback: false,
            max_delay_ms: sc.push_max_delay_ms,
        }
    } else {
        relay::PushConfig::default()
    };
    relay::Config {
        node_id,
        registration: hestia_node::relay::Registration::Open,
        seed,
        limits: relay::Limits::UNLIMITED,
        push,
        turn: None,
    }
}

/// The time `bytes` take on a first-in, first-out link of `mbps` that is busy until
/// `free_us`, from `now`: the wait behind what it still sends plus their own transmission. Kept
/// in microseconds, so that sub-millisecond transmissions add up as they should.
fn queued(free_us: &mut u64, now: Millis, bytes: u64, mbps: f64) -> Millis {
    let tx_us = (bytes as f64 * 8.0 / mbps).ceil() as u64;
    let done_us = (*free_us).max(now * 1000) + tx_us;
    *free_us = done_us;
    done_us.div_ceil(1000) - now
}

/// Node `i`'s id: `N` and its number with `o` for `0`, so that it is base58 as a real node's
/// peer id is (the core refuses a file's holding node whose id is not).
fn node_id(i: usize) -> String {
    format!("N{i}").replace('0', "o")
}

/// A recipient drawn with the scenario's social graph (`weights`: cumulative, or empty for
/// uniform), never the sender itself, from `rng`.
fn pick(weights: &[f64], n: usize, sender: usize, rng: &mut rand::rngs::StdRng) -> usize {
    loop {
        let r = if weights.is_empty() {
            rng.random_range(0..n)
        } else {
            let total = *weights.last().expect("users exist");
            let x = rng.random::<f64>() * total;
            weights.partition_point(|w| *w < x).min(n - 1)
        };
        if r != sender || n == 1 {
            return r;
        }
    }
}

/// Bytes a steady-state session message adds to its text inside the sealed box: the sealed
/// sender's identity, the encrypted ratchet header, the AEAD tag and the letter's fields (a
/// 52-character node id, an 8-character name), measured with the real types and codec.
fn session_overhead() -> usize {
    sealed_len(hestia_protocol::envelope::Content::Text(String::new()))
}

/// Bytes of the sealed-sender message that carries `content` in a steady-state session.
fn sealed_len(content: hestia_protocol::envelope::Content) -> usize {
    use hestia_protocol::envelope::{Letter, SealedSender};
    use hestia_protocol::session::ratchet::{ENC_HEADER_LEN, RatchetMessage};
    let letter = Letter {
        sender_node: "N".repeat(52),
        sender_name: "user0000".into(),
        sent_at: EPOCH_MS,
        content,
    };
    let letter_len = codec::encoded_len(&letter).expect("a letter encodes");
    let sealed = SealedSender {
        sender: UserId([0; 32]),
        message: RatchetMessage {
            prekey: None,
            header: vec![0; ENC_HEADER_LEN],
            ciphertext: vec![0; letter_len + 16],
        },
    };
    codec::encoded_len(&sealed).expect("a sealed sender encodes")
}
