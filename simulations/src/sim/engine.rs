//! The engine: the run split into shards ([`Shard`]), each a contiguous range of nodes with the
//! users homed on them, its own event queue and its own random streams, run on every core.
//!
//! Conservative parallel simulation by windows: nothing gets from one node to another in less
//! than the scenario's shortest link latency (the lookahead, `L`), so events of different
//! shards inside `[t, t + L)`, where `t` is the earliest event anywhere, cannot affect one
//! another. Each window, every shard runs its events before `t + L` on whichever thread takes
//! it; what crosses to another shard (a federation request or answer, the record of a message
//! for a user there, an envelope lost with a disk) waits in the shard's outbox, and at the end
//! of the window the outboxes are handed over in shard order. A shard's run is a function of
//! its own state and what it is handed, in an order that does not depend on threads, so the
//! number of threads changes the wall time and nothing else. Samples, the drain check, the
//! progress call and the event bound happen between windows.

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A run: its shards and what the engine keeps between windows.
pub struct Sim {
    shards: Vec<Shard>,
    sc: Scenario,
    threads: usize,
    end: Millis,
}

impl Sim {
    pub fn new(sc: Scenario, seed: u64) -> Sim {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut nodes: Vec<Node> = (0..sc.nodes)
            .map(|i| Node {
                id: node_id(i),
                core: None,
                store: MemNodeStore::without_chunk_bytes(),
                timer_at: None,
                next_token: 0,
                client_tokens: FxMap::default(),
                fed_tokens: FxMap::default(),
                pending: BTreeSet::new(),
                observed: Observed::default(),
                users: Vec::new(),
            })
            .collect();
        // Key seeds are drawn in order from the one RNG; the keys (a scalar multiplication each)
        // are then derived on every core: the same keys as drawing them one by one.
        let sizes = sc.node_sizes();
        let mut seeds = Vec::new();
        for (n, size) in sizes.iter().enumerate() {
            let config = node_config(&sc, nodes[n].id.clone(), rng.next_u64());
            nodes[n].core = Some(relay::Core::new(config, Default::default(), EPOCH_MS));
            for _ in 0..*size {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                seeds.push((n, seed));
            }
        }
        let keys = par_map(&seeds, |(_, seed)| IdentityKey::from_seed(seed));
        let mut devices = Vec::with_capacity(keys.len());
        let mut by_key = FxMap::default();
        for ((n, _), key) in seeds.iter().zip(keys) {
            let u = devices.len();
            by_key.insert(key.user_id(), u);
            // A fixed draw per user, so the share of phones moves no other stream.
            let draw = mix64(seed ^ PHONES_STREAM ^ mix64(u as u64)) >> 11;
            let phone = (draw as f64) < sc.phone_fraction * (1u64 << 53) as f64;
            devices.push(Device {
                key,
                node: *n,
                peer: format!("D{u}"),
                online: false,
                fetching: false,
                fetch_epoch: 0,
                session: false,
                conn: 0,
                phone,
                awake: false,
                awake_until: 0,
                in_call: None,
                files: Vec::new(),
                waiting_since: None,
                arrived_since: None,
                up_free_us: 0,
                down_free_us: 0,
                held: None,
                renew: None,
                renews: 0,
            });
            nodes[*n].users.push(u);
        }
        let users = devices.len();
        let recipient_weights = match sc.social_graph {
            SocialGraph::Uniform => Vec::new(),
            SocialGraph::PowerLaw => {
                let mut acc = 0.0;
                (0..users)
                    .map(|r| {
                        acc += 1.0 / ((r + 1) as f64).powf(sc.power_law_exponent);
                        acc
                    })
                    .collect()
            }
        };
        // Shards of about equal numbers of users, each at least one node.
        let k = if sc.lookahead_ms() == 0 {
            1
        } else {
            sc.shards.clamp(1, sc.nodes.max(1))
        };
        let mut starts = vec![0usize];
        let mut before = 0usize;
        for (n, size) in sizes.iter().enumerate() {
            let p = starts.len();
            let last = *starts.last().expect("one start");
            if p < k && n > last && (before * k >= users * p || sc.nodes - n <= k - p) {
                starts.push(n);
            }
            before += size;
        }
        let mut shard_of_node = vec![0u32; sc.nodes];
        for (p, &start) in starts.iter().enumerate() {
            for s in &mut shard_of_node[start..] {
                *s = p as u32;
            }
        }
        // The registrations' signatures do not depend on one another: made on every core.
        let registrations = par_map(&devices, |d: &Device| {
            ClientAuth::sign(
                &d.key,
                &nodes[d.node].id,
                &d.peer,
                EPOCH_MS,
                &ClientOp::Register,
            )
            .expect("client operations encode")
        });
        let w = std::sync::Arc::new(World {
            node_ids: nodes.iter().map(|n| n.id.clone()).collect(),
            homes: devices.iter().map(|d| d.node).collect(),
            phones: devices.iter().map(|d| d.phone).collect(),
            user_ids: devices.iter().map(|d| d.key.user_id()).collect(),
            by_key,
            recipient_weights,
            shard_of_node,
            session_overhead: session_overhead(),
            lookahead: sc.lookahead_ms(),
        });
        // One shard continues the set-up's stream and the scenario's own seeds, as the engine
        // did before it had shards; more draw theirs from it, in order.
        let mut streams: Vec<Streams> = Vec::with_capacity(k);
        let stream = |s: u64| rand::rngs::StdRng::seed_from_u64(s);
        for p in 0..k {
            let tag = if k == 1 { 0 } else { mix64(p as u64 + 1) };
            streams.push(Streams {
                rng: if k == 1 {
                    std::mem::replace(&mut rng, stream(0))
                } else {
                    stream(rng.next_u64())
                },
                workload: stream(seed ^ WORKLOAD_STREAM ^ tag),
                files: stream(seed ^ FILES_STREAM ^ tag),
                calls: stream(seed ^ CALLS_STREAM ^ tag),
            });
        }
        let mut shards = Vec::with_capacity(k);
        let mut registrations = registrations.into_iter();
        let (mut nodes, mut devices) = (nodes.into_iter(), devices.into_iter());
        for (p, streams) in streams.into_iter().enumerate() {
            let (first, last) = (starts[p], starts.get(p + 1).copied().unwrap_or(sc.nodes));
            let own_nodes: Vec<Node> = nodes.by_ref().take(last - first).collect();
            let user_base = w.homes.partition_point(|h| *h < first);
            let own_users = w.homes.partition_point(|h| *h < last) - user_base;
            let own_devices: Vec<Device> = devices.by_ref().take(own_users).collect();
            let mut shard = Shard::new(
                sc.clone(),
                seed,
                w.clone(),
                (p, k),
                streams,
                (first, own_nodes),
                (user_base, own_devices),
            );
            for u in user_base..user_base + own_users {
                let auth = registrations.next().expect("one per user");
                shard.start_user(u, auth);
            }
            for (i, c) in sc.crashes.iter().enumerate() {
                if (first..last).contains(&c.node) {
                    shard.schedule(EPOCH_MS + ms(c.at_s), Ev::Crash(i));
                }
            }
            shards.push(shard);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Sim {
            end: EPOCH_MS + ms(sc.duration_s + sc.drain_s),
            threads,
            shards,
            sc,
        }
    }

    /// Keeps every message's sender, recipient, time and fate for [`Outcome::messages`].
    pub fn traced(mut self) -> Sim {
        for s in &mut self.shards {
            s.trace = Some(Vec::new());
        }
        self
    }

    /// Runs on at most `n` threads (default: one per core). The results do not change.
    pub fn threads(mut self, n: usize) -> Sim {
        self.threads = n.max(1);
        self
    }

    /// How many threads will run it: [`Sim::threads`], at most one per shard.
    pub fn thread_count(&self) -> usize {
        self.threads.min(self.shards.len())
    }

    /// How many shards the run has (the scenario's `shards`, or 1 without a lookahead).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Simulated seconds the run lasts at most.
    pub fn horizon_s(&self) -> f64 {
        (self.end - EPOCH_MS) as f64 / 1000.0
    }

    /// Runs to the end of the scenario (or until nothing is left to happen) and summarises.
    /// `progress` is called now and then with (simulated seconds, events so far); when it returns
    /// false the run stops there and the summary says it was interrupted.
    pub fn run(self, mut progress: impl FnMut(f64, u64) -> bool) -> Outcome {
        let Sim {
            shards,
            sc,
            threads,
            end,
        } = self;
        let threads = threads.min(shards.len());
        let lookahead = shards[0].w.lookahead.max(1);
        let every = ms(sc.sample_every_s).max(1);
        let sending_end = EPOCH_MS + ms(sc.duration_s);
        let shards: Vec<Mutex<Shard>> = shards.into_iter().map(Mutex::new).collect();
        let window = Window::default();
        let barrier = SpinBarrier::new(threads);
        let mut series: Vec<Sample> = Vec::new();
        let mut next_sample = EPOCH_MS;
        let mut interrupted = false;
        let mut reported = 0u64;
        let mut ran_out = false;
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|| {
                    loop {
                        barrier.wait();
                        if window.done.load(Ordering::Acquire) {
                            break;
                        }
                        window.work(&shards);
                        barrier.wait();
                    }
                });
            }
            // However the loop ends (a panic included), the workers are let go.
            let _release = Release {
                window: &window,
                barrier: &barrier,
            };
            // The earliest pending event anywhere: found again at the end of each window.
            let mut next = shards.iter().filter_map(|s| lock(s).queue.next_at()).min();
            loop {
                let Some(t) = next.filter(|t| *t <= end) else {
                    ran_out = true;
                    break;
                };
                // A sample at time T covers what happened before T.
                while next_sample <= t && next_sample <= end {
                    series.push(sample_at(
                        shards.iter().map(|s| lock(s).tally()),
                        next_sample,
                    ));
                    next_sample += every;
                }
                let limit = (t + lookahead).min(next_sample).min(end + 1);
                window.claim.store(0, Ordering::Relaxed);
                window.limit.store(limit, Ordering::Relaxed);
                barrier.wait();
                window.work(&shards);
                barrier.wait();
                if window.failed.load(Ordering::Acquire) {
                    break;
                }
                // Hand over what crossed, in shard order.
                let mut guards: Vec<_> = shards.iter().map(lock).collect();
                for p in 0..guards.len() {
                    for (to, item) in std::mem::take(&mut guards[p].outbox) {
                        guards[to].receive(item);
                    }
                }
                let events: u64 = guards.iter().map(|s| s.events).sum();
                let now = guards.iter().map(|s| s.now).max().unwrap_or(EPOCH_MS);
                let sent: u64 = guards.iter().map(|s| s.sent).sum();
                let (settled, active) = guards
                    .iter()
                    .map(|s| s.settled())
                    .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
                next = guards.iter().filter_map(|s| s.queue.next_at()).min();
                drop(guards);
                if events >= MAX_EVENTS {
                    break;
                }
                if events / 100_000 > reported / 100_000 {
                    reported = events;
                    if !progress((now - EPOCH_MS) as f64 / 1000.0, events) {
                        interrupted = true;
                        break;
                    }
                }
                if now > sending_end && active == 0 && settled == sent {
                    break; // drained
                }
            }
        });
        assert!(
            !window.failed.load(Ordering::Acquire),
            "a simulation shard panicked"
        );
        let shards: Vec<Shard> = shards
            .into_iter()
            .map(|s| s.into_inner().expect("no shard panicked"))
            .collect();
        let mut now = shards.iter().map(|s| s.now).max().unwrap_or(EPOCH_MS);
        // Nothing more happens before the end: the samples up to it are still taken.
        while ran_out && next_sample <= end {
            series.push(sample_at(shards.iter().map(|s| s.tally()), next_sample));
            now = now.max(next_sample);
            next_sample += every;
        }
        let last = sample_at(shards.iter().map(|s| s.tally()), now);
        // The closing sample of a run that went to its full end falls on the last scheduled
        // one: it replaces it rather than repeating it.
        if series.last().is_some_and(|s| s.t_s == last.t_s) {
            series.pop();
        }
        series.push(last);
        let mut merged = merge(shards);
        merged.now = now;
        merged.unsend_held_renewals(window.limit.load(Ordering::Relaxed));
        merged.series = series;
        merged.interrupted = interrupted;
        merged.finish()
    }
}

fn lock(s: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    s.lock().expect("no shard panicked")
}

/// What the threads share in a window: its end, which shard is next to take, and whether the
/// run is over or a shard failed.
#[derive(Default)]
struct Window {
    limit: AtomicU64,
    claim: AtomicUsize,
    done: AtomicBool,
    failed: AtomicBool,
}

impl Window {
    /// Takes shards until none is left, running each to the window's end.
    fn work(&self, shards: &[Mutex<Shard>]) {
        let limit = self.limit.load(Ordering::Relaxed);
        loop {
            let i = self.claim.fetch_add(1, Ordering::Relaxed);
            if i >= shards.len() || self.failed.load(Ordering::Relaxed) {
                return;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shards[i].lock().map(|mut s| s.run_until(limit)).is_ok()
            }));
            if !matches!(ran, Ok(true)) {
                self.failed.store(true, Ordering::Release);
            }
        }
    }
}

/// Ends the run for the worker threads, which wait at the start of the next window.
struct Release<'a> {
    window: &'a Window,
    barrier: &'a SpinBarrier,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.window.done.store(true, Ordering::Release);
        self.barrier.wait();
    }
}

/// A barrier for threads that meet every few hundred microseconds: it spins briefly before
/// yielding, as a futex round trip per window would cost more than the window's work.
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> SpinBarrier {
        SpinBarrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        if self.n < 2 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// The run-wide sample at `at`, from the shards' parts: sums, and the largest node.
fn sample_at(parts: impl Iterator<Item = Sample>, at: Millis) -> Sample {
    let mut t = Sample {
        t_s: (at - EPOCH_MS) as f64 / 1000.0,
        ..Sample::default()
    };
    for p in parts {
        t.sent += p.sent;
        t.delivered_to_node += p.delivered_to_node;
        t.delivered_to_device += p.delivered_to_device;
        t.outbox_envelopes += p.outbox_envelopes;
        t.mailbox_envelopes += p.mailbox_envelopes;
        t.max_node_envelopes = t.max_node_envelopes.max(p.max_node_envelopes);
        t.mailbox_bytes += p.mailbox_bytes;
        t.file_bytes += p.file_bytes;
        t.max_node_bytes = t.max_node_bytes.max(p.max_node_bytes);
    }
    t
}

/// One shard holding everything every shard had, for the results: nodes and users in order
/// (shards own contiguous ranges), the two sides of each call between shards merged, the
/// traced messages in sending order.
fn merge(shards: Vec<Shard>) -> Shard {
    // Room for everything first, so no map or list grows by doubling while the shards' own
    // copies are still held.
    let msgs: usize = shards.iter().map(|s| s.msgs.len()).sum();
    let nodes: usize = shards.iter().map(|s| s.nodes.len()).sum();
    let users: usize = shards.iter().map(|s| s.devices.len()).sum();
    let mut shards = shards.into_iter();
    let mut all = shards.next().expect("at least one shard");
    all.msgs.reserve(msgs - all.msgs.len());
    all.nodes.items.reserve(nodes - all.nodes.len());
    all.devices.items.reserve(users - all.devices.len());
    for s in shards {
        all.nodes.items.extend(s.nodes.items);
        all.devices.items.extend(s.devices.items);
        all.msgs.extend(s.msgs);
        all.files.list.0.extend(s.files.list.0);
        all.files.active += s.files.active;
        all.files.bytes_up += s.files.bytes_up;
        all.files.bytes_fed += s.files.bytes_fed;
        all.files.bytes_down += s.files.bytes_down;
        for (c, call) in s.calls.list.0 {
            match all.calls.list.0.get_mut(&c) {
                Some(into) => Shard::merge_call(into, call),
                None => {
                    all.calls.list.0.insert(c, call);
                }
            }
        }
        all.push.sent += s.push.sent;
        all.push.redundant += s.push.redundant;
        all.push.send_to_wake.extend(s.push.send_to_wake);
        all.push.arrival_to_wake.extend(s.push.arrival_to_wake);
        all.sent += s.sent;
        all.events += s.events;
        all.not_sent += s.not_sent;
        all.cover_sent += s.cover_sent;
        all.bytes_client += s.bytes_client;
        all.bytes_fed_req += s.bytes_fed_req;
        all.bytes_fed_resp += s.bytes_fed_resp;
        all.all_conversations.extend(s.all_conversations);
        all.count_node += s.count_node;
        all.count_device += s.count_device;
        all.count_lost += s.count_lost;
        all.count_refused += s.count_refused;
        if let (Some(into), Some(t)) = (all.trace.as_mut(), s.trace) {
            into.extend(t);
        }
    }
    if let Some(t) = all.trace.as_mut() {
        t.sort_by_key(|(at, ..)| *at); // stable: one shard's in order, shards in order
    }
    all
}
