//! What a run reports: the summary, the time series, each operator's view, traced messages,
//! and the figures computed at the end (percentiles, linkability).

use super::*;

/// One row of the time series. The counts are of every envelope that carries something to a
/// person (messages, file announcements, call signals; not cover traffic).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub sent: u64,
    pub delivered_to_node: u64,
    pub delivered_to_device: u64,
    pub outbox_envelopes: usize,
    pub mailbox_envelopes: usize,
    pub max_node_envelopes: usize,
    /// Bytes held across all nodes: envelope bodies in mailboxes, and sealed file chunks.
    pub mailbox_bytes: u64,
    pub file_bytes: u64,
    /// The most one node held of both together.
    pub max_node_bytes: u64,
}

/// Files (`files_per_user_per_hour`): what became of them, how long they took, what moved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FileFigures {
    pub sent: u64,
    pub uploaded: u64,
    /// The recipient's device has every chunk.
    pub fetched: u64,
    /// Expired (or gone from the holding node) before the recipient's device had them.
    pub expired: u64,
    /// Refused by the sender's node (too large, over quota).
    pub refused: u64,
    /// Still uploading, announced or downloading when the run ended.
    pub pending: u64,
    pub bytes_sent: u64,
    /// From the upload's start to the last chunk stored on the sender's node.
    pub upload: Percentiles,
    /// From the upload's start to the recipient's device having the whole file.
    pub send_to_fetched: Percentiles,
    /// Sealed chunk bytes: devices to their nodes, node to node, nodes to devices.
    pub chunk_bytes_uploaded: u64,
    pub chunk_bytes_between_nodes: u64,
    pub chunk_bytes_downloaded: u64,
    /// Share of fetched files whose holding node learnt the recipient (both on one node: the
    /// node serves its own user's fetch); for the others it learns only the fetching node.
    pub recipient_known_to_holding_node: f64,
}

/// Push wake-ups (`phone_fraction`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushFigures {
    pub phones: usize,
    pub wake_ups_sent: u64,
    /// Wake-ups per phone per day of the run.
    pub wake_ups_per_phone_day: f64,
    /// Wake-ups that found the phone connected already.
    pub wake_ups_redundant: u64,
    /// From the first envelope sent to a sleeping phone to the wake-up waking it.
    pub send_to_wake: Percentiles,
    /// From the arrival that armed a wake-up to its request leaving the node: how precisely
    /// the push service learns when mail arrived (the node's random delay widens it).
    pub arrival_to_wake_request: Percentiles,
    /// Share of wake-ups that left within a second of the arrival that armed them.
    pub arrivals_timed_within_1s: f64,
    /// Send-to-device latency of messages to phones, and to the others.
    pub latency_to_phones: Percentiles,
    pub latency_to_others: Percentiles,
}

/// Call signalling (`calls_per_user_per_hour`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallFigures {
    pub placed: u64,
    /// The offer reached the callee's device in time and it rang.
    pub rang: u64,
    pub connected: u64,
    pub busy: u64,
    /// Rang, nobody picked up in time.
    pub unanswered: u64,
    /// The offer did not reach the callee's device within the ring timeout (offline, or a
    /// phone not woken in time): a missed call when it does.
    pub missed_not_reached: u64,
    /// Of the calls to phones asleep when the offer went out: how many rang.
    pub to_sleeping_phones: u64,
    pub rang_sleeping_phones: u64,
    /// From the offer sent to the callee's device ringing, and to connected.
    pub ring: Percentiles,
    pub connect: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// The run was stopped before its end: every figure covers only the simulated time reached.
    pub interrupted: bool,
    pub seed: u64,
    pub nodes: usize,
    pub users: usize,
    pub simulated_s: f64,
    pub events: u64,
    pub messages_sent: u64,
    pub not_sent_home_node_down: u64,
    pub delivered_to_node: u64,
    pub delivered_to_device: u64,
    /// delivered_to_device / messages_sent.
    pub delivery_ratio: f64,
    pub undelivered_expired: u64,
    pub undelivered_lost_with_disk: u64,
    /// Refused by the recipient's node because it did not know the user: it had lost its disk
    /// and the user's device had not registered again yet. The sender is told.
    pub undelivered_refused_unknown_user: u64,
    pub undelivered_pending: u64,
    pub latency_send_to_node: Percentiles,
    /// `latency_send_to_node` over only the messages whose recipient is homed on another node
    /// than the sender: what federation links (bandwidth, latency, queueing) add.
    pub latency_send_to_other_node: Percentiles,
    pub latency_send_to_device: Percentiles,
    pub max_outbox_envelopes: usize,
    pub max_mailbox_envelopes: usize,
    pub max_envelopes_on_one_node: usize,
    pub bytes_client: u64,
    pub bytes_fed_requests: u64,
    pub bytes_fed_responses: u64,
    /// Conversations (sender, recipient) with any message.
    pub conversations: usize,
    /// Dummy envelopes sent (cover traffic); not counted in `messages_sent`.
    pub cover_envelopes_sent: u64,
    /// How well one operator can link conversations: the mean, over conversations (sender,
    /// recipient), of the best single operator's posterior probability that the pair is a real
    /// conversation given the envelopes it saw between them. The sender's home node sees every
    /// envelope's sender and recipient (sealed sender hides the sender only from the recipient's
    /// node), so without cover traffic this is 1.0; cover envelopes, indistinguishable by size
    /// and timing, make each observed envelope possibly a dummy. See docs/simulations.md.
    pub linkable_by_one_operator: f64,
    /// The same for two colluding operators (the sender's and the recipient's home nodes).
    /// Their joint view adds what the recipient sends back to the sender (replies, receipts),
    /// seen at the recipient's node: both directions' envelopes must all be dummies for the
    /// pair not to be a conversation. At least the single-operator figure.
    pub linkable_by_two_colluding_operators: f64,
    pub files: FileFigures,
    pub push: PushFigures,
    pub calls: CallFigures,
    /// The scenario as run, every setting with its default filled in: with `seed`, all it
    /// takes to run it again (`write_results` also writes it as `scenario.toml`).
    pub resolved_scenario: Scenario,
}

/// What one node's operator observed over the run (counts of distinct pairs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct OperatorView {
    pub node: usize,
    /// Local users seen sending.
    pub senders: usize,
    /// Distinct (local user, remote node) pairs: which of its users talk to which nodes.
    pub user_to_node_pairs: usize,
    /// Distinct (local user, recipient) pairs: conversations it can link outright.
    pub user_to_recipient_pairs: usize,
    /// Distinct (sending node, local recipient) pairs seen on federation traffic.
    pub node_to_user_pairs: usize,
    /// Envelopes its users handed it (messages and cover alike: it cannot tell them apart).
    pub envelopes_from_local_users: u64,
    pub envelopes_for_local_users: u64,
    /// Distinct body sizes it saw (at most the number of padding buckets when padding is on).
    pub distinct_body_sizes: usize,
    /// As a file's holding node: distinct (local uploader, node that fetched it) pairs, and
    /// (local uploader, local user who fetched it) pairs, and distinct sealed file sizes.
    pub uploader_to_fetching_node_pairs: usize,
    pub uploader_to_local_fetcher_pairs: usize,
    pub distinct_file_sizes: usize,
}

pub struct Outcome {
    pub summary: Summary,
    pub series: Vec<Sample>,
    /// One row per node, in node order.
    pub operators: Vec<OperatorView>,
    /// Send-to-device latencies in ms, sorted.
    pub device_latencies: Vec<f64>,
    /// Every message sent, in sending order, when the run was traced ([`Sim::traced`]); empty
    /// otherwise (a million-message run need not keep them).
    pub messages: Vec<TracedMessage>,
    /// Every file begun, in order, when the run was traced; empty otherwise.
    pub files: Vec<TracedFile>,
}

/// One file of a traced run: who sent how many bytes to whom when, and when it was whole on
/// the recipient's device.
#[derive(Clone, Debug, Serialize)]
pub struct TracedFile {
    /// Milliseconds after the start of the run.
    pub begun_ms: Millis,
    pub from_user: usize,
    pub to_user: usize,
    pub size: u64,
    /// How long after its begin it expires, as its upload declares.
    pub ttl_ms: Millis,
    /// Begin-to-fetched time; None if the recipient never had all of it.
    pub fetched_after_ms: Option<Millis>,
}

/// One message of a traced run: who sent it to whom when, and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct TracedMessage {
    /// Milliseconds after the start of the run.
    pub sent_ms: Millis,
    pub from_user: usize,
    pub to_user: usize,
    /// Send-to-device latency; None if it never arrived.
    pub latency_ms: Option<Millis>,
}

impl Shard {
    /// Mean posteriors that a conversation is real: for the best single operator, and for
    /// the sender's and the recipient's home nodes together (docs/simulations.md). Each
    /// envelope seen from s to r is a dummy with probability `q = (c/(N-1)) / (c/(N-1) +
    /// m·p_r)`, where c and m are the cover and message rates, N the users and p_r the chance
    /// a message goes to r; so after k envelopes the pair is real with probability `1 - q^k`.
    /// Summed in sorted order, so the figure does not depend on hashing.
    pub(super) fn linkability(&self) -> (f64, f64) {
        if self.all_conversations.is_empty() {
            return (0.0, 0.0);
        }
        let n = self.devices.len().max(2) as f64;
        let c = self.sc.cover_messages_per_user_per_hour;
        let m = self.sc.messages_per_user_per_hour;
        let total_weight = self.w.recipient_weights.last().copied().unwrap_or(0.0);
        let p_r = |r: usize| {
            if self.w.recipient_weights.is_empty() {
                1.0 / (n - 1.0)
            } else {
                let prev = if r == 0 {
                    0.0
                } else {
                    self.w.recipient_weights[r - 1]
                };
                (self.w.recipient_weights[r] - prev) / total_weight
            }
        };
        // The chance that one envelope seen from `s` to `r` is a dummy, and how many the
        // sender's home node saw.
        let q = |r: usize| {
            let cover = c / (n - 1.0);
            if cover <= 0.0 {
                0.0
            } else {
                cover / (cover + m * p_r(r))
            }
        };
        let seen = |s: usize, r: usize| {
            self.nodes[self.devices[s].node]
                .observed
                .user_to_recipient
                .get(&(s, r))
                .copied()
                .unwrap_or(0) as i32
        };
        let mut pairs: Vec<(usize, usize)> = self.all_conversations.iter().copied().collect();
        pairs.sort_unstable();
        let (mut one, mut two) = (0.0, 0.0);
        for &(s, r) in &pairs {
            let (k_sr, k_rs) = (seen(s, r), seen(r, s));
            // Every envelope either way a dummy: the pair is not a conversation. `s`'s node
            // sees the envelopes from s to r; `r`'s node those from r to s (its own user
            // sending), which replies and receipts make.
            let both_dummies = q(r).powi(k_sr) * q(s).powi(k_rs);
            let joint = if k_sr + k_rs == 0 {
                0.0 // never reached a node (it was down): nothing observed
            } else {
                1.0 - both_dummies
            };
            let forward = if k_sr == 0 {
                0.0
            } else {
                1.0 - q(r).powi(k_sr)
            };
            let backward = if k_rs == 0 {
                0.0
            } else {
                1.0 - q(s).powi(k_rs)
            };
            // One node homing both users sees both directions by itself.
            one += if self.devices[s].node == self.devices[r].node {
                joint
            } else {
                forward.max(backward)
            };
            two += joint;
        }
        (one / pairs.len() as f64, two / pairs.len() as f64)
    }

    fn file_figures(&self) -> FileFigures {
        use files::FileState as S;
        let list = &self.files.list;
        let count = |s: S| list.iter().filter(|f| f.state == s).count() as u64;
        let fetched: Vec<&files::File> = list.iter().filter(|f| f.state == S::Fetched).collect();
        let local = fetched
            .iter()
            .filter(|f| self.devices[f.to].node == f.holder)
            .count();
        FileFigures {
            sent: list.len() as u64,
            uploaded: list.iter().filter(|f| f.uploaded_at.is_some()).count() as u64,
            fetched: fetched.len() as u64,
            expired: count(S::Expired),
            refused: count(S::Refused),
            pending: count(S::Uploading) + count(S::Announced) + count(S::Downloading),
            bytes_sent: list.iter().map(|f| f.size).sum(),
            upload: pct(list
                .iter()
                .filter_map(|f| Some((f.uploaded_at? - f.begun_at) as f64))
                .collect())
            .0,
            send_to_fetched: pct(list
                .iter()
                .filter_map(|f| Some((f.fetched_at? - f.begun_at) as f64))
                .collect())
            .0,
            chunk_bytes_uploaded: self.files.bytes_up,
            chunk_bytes_between_nodes: self.files.bytes_fed,
            chunk_bytes_downloaded: self.files.bytes_down,
            recipient_known_to_holding_node: if fetched.is_empty() {
                0.0
            } else {
                local as f64 / fetched.len() as f64
            },
        }
    }

    fn push_figures(&self) -> PushFigures {
        let phones = self.devices.iter().filter(|d| d.phone).count();
        let days = self.sc.duration_s / 86_400.0;
        let offsets = self.push.arrival_to_wake.clone();
        let within = offsets.iter().filter(|o| **o <= 1000.0).count();
        let latency = |phone: bool| {
            pct(self
                .msgs
                .values()
                .filter(|m| m.carries == Carries::Text)
                .filter_map(|m| Some((m.device_at?, m)))
                .filter(|(_, m)| m.to_phone == phone)
                .map(|(at, m)| (at - m.sent_at) as f64)
                .collect())
            .0
        };
        PushFigures {
            phones,
            wake_ups_sent: self.push.sent,
            wake_ups_per_phone_day: if phones == 0 || days <= 0.0 {
                0.0
            } else {
                self.push.sent as f64 / phones as f64 / days
            },
            wake_ups_redundant: self.push.redundant,
            send_to_wake: pct(self.push.send_to_wake.clone()).0,
            arrivals_timed_within_1s: if offsets.is_empty() {
                0.0
            } else {
                within as f64 / offsets.len() as f64
            },
            arrival_to_wake_request: pct(offsets).0,
            latency_to_phones: latency(true),
            latency_to_others: latency(false),
        }
    }

    fn call_figures(&self) -> CallFigures {
        let list = &self.calls.list;
        let n = |f: &dyn Fn(&calls::Call) -> bool| list.iter().filter(|c| f(c)).count() as u64;
        CallFigures {
            placed: list.len() as u64,
            rang: n(&|c| c.rang_at.is_some()),
            connected: n(&|c| c.connected_at.is_some()),
            busy: n(&|c| c.busy),
            unanswered: n(&|c| c.rang_at.is_some() && c.connected_at.is_none()),
            missed_not_reached: n(&|c| c.rang_at.is_none() && !c.busy),
            to_sleeping_phones: n(&|c| c.callee_slept),
            rang_sleeping_phones: n(&|c| c.callee_slept && c.rang_at.is_some()),
            ring: pct(list
                .iter()
                .filter_map(|c| Some((c.rang_at? - c.placed_at) as f64))
                .collect())
            .0,
            connect: pct(list
                .iter()
                .filter_map(|c| Some((c.connected_at? - c.placed_at) as f64))
                .collect())
            .0,
        }
    }

    pub(super) fn finish(self) -> Outcome {
        let text = || self.msgs.values().filter(|m| m.carries == Carries::Text);
        let to_node: Vec<f64> = text()
            .filter_map(|m| Some((m.node_at? - m.sent_at) as f64))
            .collect();
        let to_other_node: Vec<f64> = text()
            .filter(|m| m.across)
            .filter_map(|m| Some((m.node_at? - m.sent_at) as f64))
            .collect();
        let to_device: Vec<f64> = text()
            .filter_map(|m| Some((m.device_at? - m.sent_at) as f64))
            .collect();
        let ttl = ms(self.sc.ttl_s);
        let undelivered = text().filter(|m| m.device_at.is_none());
        let (mut expired, mut lost, mut refused, mut pending) = (0, 0, 0, 0);
        for m in undelivered {
            if m.lost_disk {
                lost += 1;
            } else if m.refused {
                refused += 1;
            } else if m.sent_at + ttl <= self.now {
                expired += 1;
            } else {
                pending += 1;
            }
        }
        let sent = text().count() as u64;
        let (node_p, _) = pct(to_node);
        let (other_node_p, _) = pct(to_other_node);
        let (device_p, device_sorted) = pct(to_device);
        let (linkable, linkable_colluding) = self.linkability();
        let summary = Summary {
            scenario: self.sc.name.clone(),
            interrupted: self.interrupted,
            seed: self.seed,
            nodes: self.sc.nodes,
            users: self.devices.len(),
            simulated_s: (self.now - EPOCH_MS) as f64 / 1000.0,
            events: self.events,
            messages_sent: sent,
            not_sent_home_node_down: self.not_sent,
            delivered_to_node: node_p.count as u64,
            delivered_to_device: device_p.count as u64,
            delivery_ratio: if sent == 0 {
                1.0
            } else {
                device_p.count as f64 / sent as f64
            },
            undelivered_expired: expired,
            undelivered_lost_with_disk: lost,
            undelivered_refused_unknown_user: refused,
            undelivered_pending: pending,
            latency_send_to_node: node_p,
            latency_send_to_other_node: other_node_p,
            latency_send_to_device: device_p,
            max_outbox_envelopes: self
                .series
                .iter()
                .map(|s| s.outbox_envelopes)
                .max()
                .unwrap_or(0),
            max_mailbox_envelopes: self
                .series
                .iter()
                .map(|s| s.mailbox_envelopes)
                .max()
                .unwrap_or(0),
            max_envelopes_on_one_node: self
                .series
                .iter()
                .map(|s| s.max_node_envelopes)
                .max()
                .unwrap_or(0),
            bytes_client: self.bytes_client,
            bytes_fed_requests: self.bytes_fed_req,
            bytes_fed_responses: self.bytes_fed_resp,
            conversations: self.all_conversations.len(),
            cover_envelopes_sent: self.cover_sent,
            linkable_by_one_operator: linkable,
            linkable_by_two_colluding_operators: linkable_colluding,
            files: self.file_figures(),
            push: self.push_figures(),
            calls: self.call_figures(),
            resolved_scenario: self.sc.clone(),
        };
        let operators = self
            .nodes
            .iter()
            .enumerate()
            .map(|(node, n)| OperatorView {
                node,
                senders: n.observed.senders.len(),
                user_to_node_pairs: n.observed.user_to_node.len(),
                user_to_recipient_pairs: n.observed.user_to_recipient.len(),
                node_to_user_pairs: n.observed.node_to_user.len(),
                envelopes_from_local_users: n.observed.sent,
                envelopes_for_local_users: n.observed.received,
                distinct_body_sizes: n.observed.sizes.len(),
                uploader_to_fetching_node_pairs: n.observed.file_fetching_nodes.len(),
                uploader_to_local_fetcher_pairs: n.observed.file_local_fetchers.len(),
                distinct_file_sizes: n.observed.blob_sizes.len(),
            })
            .collect();
        let traced = self.trace.is_some();
        let messages = self
            .trace
            .unwrap_or_default()
            .into_iter()
            .map(|(_, from_user, to_user, id)| {
                let m = &self.msgs[&id];
                TracedMessage {
                    sent_ms: m.sent_at - EPOCH_MS,
                    from_user,
                    to_user,
                    latency_ms: m.device_at.map(|d| d - m.sent_at),
                }
            })
            .collect();
        let files = if traced {
            let mut list = self.files.list.sorted();
            list.sort_by_key(|f| f.begun_at);
            list.into_iter()
                .map(|f| TracedFile {
                    begun_ms: f.begun_at - EPOCH_MS,
                    from_user: f.from,
                    to_user: f.to,
                    size: f.size,
                    ttl_ms: f.spec.expires_at - f.begun_at,
                    fetched_after_ms: f.fetched_at.map(|t| t - f.begun_at),
                })
                .collect()
        } else {
            Vec::new()
        };
        Outcome {
            summary,
            series: self.series,
            operators,
            device_latencies: device_sorted,
            messages,
            files,
        }
    }
}

/// Percentiles of `v`, and `v` sorted.
fn pct(mut v: Vec<f64>) -> (Percentiles, Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    (
        Percentiles {
            count: v.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: v.last().copied().unwrap_or(0.0),
        },
        v,
    )
}

/// `1.5 s`, `320 ms`: a latency for the console.
fn secs(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// One console line for each of files, push and calls that the run had.
pub fn feature_lines(s: &Summary) -> Vec<String> {
    const MIB: f64 = (1u64 << 20) as f64;
    let mut lines = Vec::new();
    let f = &s.files;
    if f.sent > 0 {
        lines.push(format!(
            "files {}: fetched {}, expired {}, refused {}, pending {}; upload p50 {} p99 {}; \
             send→fetched p50 {} p99 {}; chunk MiB up {:.1}, node to node {:.1}, down {:.1}; \
             holding node learnt the recipient of {:.0}%",
            f.sent,
            f.fetched,
            f.expired,
            f.refused,
            f.pending,
            secs(f.upload.p50_ms),
            secs(f.upload.p99_ms),
            secs(f.send_to_fetched.p50_ms),
            secs(f.send_to_fetched.p99_ms),
            f.chunk_bytes_uploaded as f64 / MIB,
            f.chunk_bytes_between_nodes as f64 / MIB,
            f.chunk_bytes_downloaded as f64 / MIB,
            f.recipient_known_to_holding_node * 100.0
        ));
    }
    let p = &s.push;
    if p.phones > 0 {
        lines.push(format!(
            "phones {}: {} wake-ups ({:.1} per phone-day, {} found it awake); send→wake p50 {} \
             p99 {}; {:.0}% of wake-ups left within 1 s of the arrival; to phones p50 {} p99 {}, \
             to others p50 {} p99 {}",
            p.phones,
            p.wake_ups_sent,
            p.wake_ups_per_phone_day,
            p.wake_ups_redundant,
            secs(p.send_to_wake.p50_ms),
            secs(p.send_to_wake.p99_ms),
            p.arrivals_timed_within_1s * 100.0,
            secs(p.latency_to_phones.p50_ms),
            secs(p.latency_to_phones.p99_ms),
            secs(p.latency_to_others.p50_ms),
            secs(p.latency_to_others.p99_ms)
        ));
    }
    let c = &s.calls;
    if c.placed > 0 {
        lines.push(format!(
            "calls {}: rang {} (p50 {} p99 {}), connected {} (p50 {}), busy {}, unanswered {}, \
             not reached within the ring timeout {}; to sleeping phones {} of which rang {}",
            c.placed,
            c.rang,
            secs(c.ring.p50_ms),
            secs(c.ring.p99_ms),
            c.connected,
            secs(c.connect.p50_ms),
            c.busy,
            c.unanswered,
            c.missed_not_reached,
            c.to_sleeping_phones,
            c.rang_sleeping_phones
        ));
    }
    lines
}
