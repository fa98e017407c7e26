//! A scenario: the federation, its users, their traffic and the faults, read from TOML. Every
//! field has a default, so a file names only what its question changes. The defaults have no
//! faults: a crash or a partition happens only where a file asks for it. A file that names no
//! `name` is named after the file (`hestia sim run`).

use serde::{Deserialize, Serialize};

/// Bounds on what one run may ask for, so a typo cannot exhaust the machine.
pub const MAX_NODES: usize = 100_000;
pub const MAX_USERS: usize = 1_000_000;
pub const MAX_DURATION_S: f64 = 7.0 * 24.0 * 3600.0;
pub const MAX_SHARDS: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Shown in the summary and the plots; default: the file's name without `.toml`.
    pub name: String,
    pub nodes: usize,
    /// Users per node: exactly, or on average when `node_sizes` is `power_law`.
    pub users_per_node: usize,
    /// `equal`: every node has `users_per_node` users. `power_law`: the node of rank r (from 1)
    /// gets a share of the nodes × users_per_node users proportional to 1/r^`node_size_exponent`
    /// (a few large community nodes, many small ones), every node at least one.
    pub node_sizes: NodeSizes,
    pub node_size_exponent: f64,
    /// Simulated seconds during which users send; the run continues until the network drains or
    /// `drain_s` more seconds pass.
    pub duration_s: f64,
    pub drain_s: f64,
    /// Messages each user sends per hour while online (Poisson).
    pub messages_per_user_per_hour: f64,
    /// Diurnal pattern: the sending rate is multiplied by 1 + amplitude · sin(2π t / period),
    /// t from the start of the run (amplitude 0..=1; 0 is a flat rate).
    pub diurnal_amplitude: f64,
    pub diurnal_period_s: f64,
    /// `uniform`: any user is equally likely to be a recipient; `power_law`: recipients drawn with
    /// weight 1/rank^`power_law_exponent` (a few popular users receive most).
    pub social_graph: SocialGraph,
    pub power_law_exponent: f64,
    /// One-way latency between a device and its home node.
    pub client_latency_ms: u64,
    /// One-way latency between two nodes (of one region), uniform in this range.
    pub link_latency_ms: (u64, u64),
    /// Regions the nodes are spread over (node i is in region i mod `regions`). With more than
    /// one, links between regions take `inter_region_latency_ms` instead.
    pub regions: usize,
    pub inter_region_latency_ms: (u64, u64),
    /// Link bandwidth in megabits per second (0: unlimited): a message of B bytes takes
    /// B·8 / (1000·mbps) ms to transmit, after whatever that directed link is still sending
    /// (first in, first out).
    pub link_bandwidth_mbps: f64,
    /// Probability that a federation request or its answer is lost.
    pub link_loss: f64,
    /// Fraction of time a user is online; sessions and absences are exponential with these means.
    pub online_fraction: f64,
    pub session_mean_s: f64,
    /// Envelope time to live.
    pub ttl_s: f64,
    pub crashes: Vec<Crash>,
    pub partitions: Vec<Partition>,
    /// Parts the engine splits the nodes into, each with its own event queue and random
    /// streams, run on as many threads as the machine has (1..=`MAX_SHARDS`, at most `nodes`).
    /// Results depend on this number, never on the threads: a run with 8 shards gives the same
    /// bytes on one core or on eight. More than one needs links of at least 1 ms (the
    /// lookahead: shards exchange what crosses between them every `link_latency_ms.0`).
    pub shards: usize,
    /// Seconds between rows of the time series.
    pub sample_every_s: f64,
    /// Privacy knob: bodies padded to Hestia's size buckets (as the protocol does), or, if
    /// false, sent at their exact length (what padding costs and what it hides).
    pub padding: bool,
    /// Mean text length in bytes (exponential). 0: every message is the smallest body (the
    /// model before sizes mattered; no random draw).
    pub mean_text_bytes: f64,
    /// Privacy knob: dummy envelopes each online user sends per hour (Poisson) to uniformly
    /// random users; recipients' devices drop them. Same sizes as real messages.
    pub cover_messages_per_user_per_hour: f64,
    /// Privacy knob: a device holds each outgoing envelope (real or cover) for a uniformly
    /// random time up to this before handing it to its node.
    pub batching_delay_ms: u64,
    /// Files each online user sends per hour (Poisson, from a stream of its own, so turning
    /// files on leaves the text messages unchanged). 0: no files. A file is sealed and padded
    /// as `hestia send --file` does, uploaded in chunks to the sender's home node, announced
    /// to the recipient in a message, and fetched chunk by chunk through the recipient's home
    /// node (which fetches across the federation), then deleted from the holding node.
    pub files_per_user_per_hour: f64,
    /// File sizes are log-normal: this median in bytes, and this standard deviation of the
    /// size's natural logarithm (1.5: a tenth of files under a seventh of the median, a tenth
    /// over seven times it).
    pub file_median_bytes: f64,
    pub file_size_sigma: f64,
    /// How long the holding node keeps a file's chunks (at most the protocol's longest TTL).
    pub file_ttl_s: f64,
    /// Bandwidth between a device and its home node, each way, in megabits per second, for
    /// file chunks (0: unlimited). Text requests are small and take `client_latency_ms` only.
    pub device_bandwidth_mbps: f64,
    /// Share of users on phones: their device drops its connection whenever the person is not
    /// using it, registers a Web Push subscription, and is woken by the node's wake-ups (then
    /// stays connected `wake_window_s` to fetch). The others stay connected while online and
    /// are not pushed. Who is on a phone is a fixed draw per user, not from the workload.
    pub phone_fraction: f64,
    /// One-way time from a node's wake-up request to the phone waking (push service and mobile
    /// network), uniform in this range.
    pub push_latency_ms: (u64, u64),
    pub wake_window_s: f64,
    /// Privacy knob: each node holds a wake-up for a uniformly random time up to this before it
    /// goes out (`push.max_delay_ms` in the node's config), so the push service times arrivals
    /// less precisely.
    pub push_max_delay_ms: u64,
    /// Calls each online user places per hour (Poisson, from a stream of its own). 0: none.
    /// Only the signalling is modelled (offer, answer, candidates, busy, hang-up, each an
    /// end-to-end message), not media.
    pub calls_per_user_per_hour: f64,
    /// The chance a person whose device rings answers, and the mean time they take
    /// (exponential); one who would take longer than the ring timeout misses it.
    pub call_answer_probability: f64,
    pub call_answer_mean_s: f64,
    /// Mean length of an answered call (exponential); the caller hangs up.
    pub call_mean_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSizes {
    Equal,
    PowerLaw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocialGraph {
    Uniform,
    PowerLaw,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub node: usize,
    pub at_s: f64,
    pub down_s: f64,
    /// The node comes back with an empty disk: what it held is lost.
    #[serde(default)]
    pub disk_loss: bool,
}

/// Between `start_s` and `end_s`, nodes with index below `split` cannot reach the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub start_s: f64,
    pub end_s: f64,
    pub split: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: String::new(),
            nodes: 50,
            users_per_node: 20,
            node_sizes: NodeSizes::Equal,
            node_size_exponent: 1.0,
            duration_s: 3600.0,
            drain_s: 3600.0,
            messages_per_user_per_hour: 6.0,
            diurnal_amplitude: 0.0,
            diurnal_period_s: 24.0 * 3600.0,
            social_graph: SocialGraph::Uniform,
            power_law_exponent: 1.0,
            client_latency_ms: 20,
            link_latency_ms: (5, 80),
            regions: 1,
            inter_region_latency_ms: (60, 150),
            link_bandwidth_mbps: 0.0,
            link_loss: 0.01,
            online_fraction: 0.5,
            session_mean_s: 900.0,
            ttl_s: 7.0 * 24.0 * 3600.0,
            crashes: Vec::new(),
            partitions: Vec::new(),
            shards: 1,
            sample_every_s: 60.0,
            padding: true,
            mean_text_bytes: 0.0,
            cover_messages_per_user_per_hour: 0.0,
            batching_delay_ms: 0,
            files_per_user_per_hour: 0.0,
            file_median_bytes: 500_000.0,
            file_size_sigma: 1.5,
            file_ttl_s: 7.0 * 24.0 * 3600.0,
            device_bandwidth_mbps: 20.0,
            phone_fraction: 0.0,
            push_latency_ms: (100, 1500),
            wake_window_s: 20.0,
            push_max_delay_ms: 0,
            calls_per_user_per_hour: 0.0,
            call_answer_probability: 0.8,
            call_answer_mean_s: 6.0,
            call_mean_s: 180.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is not TOML or names a field that does not exist: one line, with where.
    #[error("scenario file{0}")]
    Parse(String),
    #[error("scenario: {0}")]
    Invalid(String),
}

/// A finite number above 0.
fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

impl Scenario {
    /// How many users each node has, in node order (see `node_sizes`). Deterministic: no draw.
    pub fn node_sizes(&self) -> Vec<usize> {
        let total = self.nodes * self.users_per_node;
        match self.node_sizes {
            NodeSizes::Equal => vec![self.users_per_node; self.nodes],
            NodeSizes::PowerLaw => {
                // One user each, the rest by largest remainder of the power-law shares.
                let spare = total - self.nodes;
                let w: Vec<f64> = (1..=self.nodes)
                    .map(|r| (r as f64).powf(-self.node_size_exponent))
                    .collect();
                let sum: f64 = w.iter().sum();
                let exact: Vec<f64> = w.iter().map(|x| x / sum * spare as f64).collect();
                let mut sizes: Vec<usize> = exact.iter().map(|x| 1 + *x as usize).collect();
                let mut left = total - sizes.iter().sum::<usize>();
                let mut order: Vec<usize> = (0..self.nodes).collect();
                order.sort_by(|a, b| {
                    let fa = exact[*a] - exact[*a].floor();
                    let fb = exact[*b] - exact[*b].floor();
                    fb.total_cmp(&fa).then(a.cmp(b))
                });
                for i in order {
                    if left == 0 {
                        break;
                    }
                    sizes[i] += 1;
                    left -= 1;
                }
                sizes
            }
        }
    }

    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|r| {
                    format!(
                        ", line {}",
                        1 + text[..r.start.min(text.len())].matches('\n').count()
                    )
                })
                .unwrap_or_default();
            ScenarioError::Parse(format!("{line}: {}", e.message().trim()))
        })?;
        s.check()?;
        Ok(s)
    }

    /// The least time anything takes from one node to another.
    pub fn lookahead_ms(&self) -> u64 {
        if self.regions > 1 {
            self.link_latency_ms.0.min(self.inter_region_latency_ms.0)
        } else {
            self.link_latency_ms.0
        }
    }

    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad(format!("nodes must be 1..={MAX_NODES}"));
        }
        if self.users_per_node == 0 || self.nodes * self.users_per_node > MAX_USERS {
            return bad(format!(
                "users (nodes × users_per_node) must be 1..={MAX_USERS}"
            ));
        }
        for (name, v) in [("duration_s", self.duration_s), ("drain_s", self.drain_s)] {
            if !(0.0..=MAX_DURATION_S).contains(&v) {
                return bad(format!("{name} must be 0..={MAX_DURATION_S}"));
            }
        }
        if !(0.0..=1.0).contains(&self.link_loss) || !(0.0..=1.0).contains(&self.online_fraction) {
            return bad("link_loss and online_fraction are probabilities (0..=1)".into());
        }
        if self.link_latency_ms.0 > self.link_latency_ms.1
            || self.inter_region_latency_ms.0 > self.inter_region_latency_ms.1
        {
            return bad("link_latency_ms and inter_region_latency_ms are (min, max)".into());
        }
        if self.regions == 0 || self.regions > self.nodes {
            return bad("regions must be 1..=nodes".into());
        }
        if self.shards == 0 || self.shards > MAX_SHARDS.min(self.nodes) {
            return bad(format!("shards must be 1..={}", MAX_SHARDS.min(self.nodes)));
        }
        if self.shards > 1 && self.lookahead_ms() == 0 {
            return bad(
                "shards > 1 needs link_latency_ms (and inter_region_latency_ms) of at least 1 ms"
                    .into(),
            );
        }
        if self.link_bandwidth_mbps < 0.0
            || !(0.0..=1.0).contains(&self.diurnal_amplitude)
            || self.diurnal_period_s <= 0.0
        {
            return bad(
                "link_bandwidth_mbps must be >= 0, diurnal_amplitude 0..=1, diurnal_period_s > 0"
                    .into(),
            );
        }
        if !(self.messages_per_user_per_hour.is_finite() && self.messages_per_user_per_hour >= 0.0)
        {
            return bad("messages_per_user_per_hour must be >= 0".into());
        }
        for (name, v) in [
            ("session_mean_s", self.session_mean_s),
            ("ttl_s", self.ttl_s),
            ("sample_every_s", self.sample_every_s),
        ] {
            if !positive(v) {
                return bad(format!("{name} must be above 0"));
            }
        }
        if !(0.0..=hestia_protocol::envelope::MAX_TEXT_BYTES as f64).contains(&self.mean_text_bytes)
            || self.cover_messages_per_user_per_hour < 0.0
            || self.batching_delay_ms > 3_600_000
        {
            return bad(
                "mean_text_bytes must be 0..=12288, cover_messages_per_user_per_hour >= 0, \
                 batching_delay_ms <= 3600000"
                    .into(),
            );
        }
        for (name, v) in [
            ("files_per_user_per_hour", self.files_per_user_per_hour),
            ("calls_per_user_per_hour", self.calls_per_user_per_hour),
            ("device_bandwidth_mbps", self.device_bandwidth_mbps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be >= 0"));
            }
        }
        for (name, v) in [
            ("file_median_bytes", self.file_median_bytes),
            ("file_size_sigma", self.file_size_sigma),
            ("file_ttl_s", self.file_ttl_s),
            ("wake_window_s", self.wake_window_s),
            ("call_answer_mean_s", self.call_answer_mean_s),
            ("call_mean_s", self.call_mean_s),
        ] {
            if !positive(v) {
                return bad(format!("{name} must be above 0"));
            }
        }
        let max_file = hestia_protocol::file::MAX_FILE_BYTES as f64;
        if self.file_median_bytes > max_file || self.file_size_sigma > 5.0 {
            return bad(format!(
                "file_median_bytes must be at most {max_file} and file_size_sigma at most 5"
            ));
        }
        let max_ttl_s = hestia_protocol::envelope::MAX_TTL_MS as f64 / 1000.0;
        if self.file_ttl_s > max_ttl_s {
            return bad(format!(
                "file_ttl_s must be at most {max_ttl_s} (the longest TTL)"
            ));
        }
        for (name, v) in [
            ("phone_fraction", self.phone_fraction),
            ("call_answer_probability", self.call_answer_probability),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} is a probability (0..=1)"));
            }
        }
        if self.push_latency_ms.0 > self.push_latency_ms.1 {
            return bad("push_latency_ms is (min, max)".into());
        }
        if self.push_max_delay_ms > 3_600_000 {
            return bad("push_max_delay_ms must be <= 3600000".into());
        }
        if !(0.0..=4.0).contains(&self.node_size_exponent) || self.node_size_exponent.is_nan() {
            return bad("node_size_exponent must be 0..=4".into());
        }
        for (i, c) in self.crashes.iter().enumerate() {
            if c.node >= self.nodes {
                return bad(format!(
                    "crashes[{i}].node is {}, but nodes are numbered 0..{}",
                    c.node, self.nodes
                ));
            }
            if !(0.0..=self.duration_s).contains(&c.at_s) {
                return bad(format!(
                    "crashes[{i}].at_s must be 0..=duration_s ({})",
                    self.duration_s
                ));
            }
            if !positive(c.down_s) {
                return bad(format!("crashes[{i}].down_s must be above 0"));
            }
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if !(0.0..=self.duration_s).contains(&p.start_s) {
                return bad(format!(
                    "partitions[{i}].start_s must be 0..=duration_s ({})",
                    self.duration_s
                ));
            }
            if !(p.end_s.is_finite() && p.end_s > p.start_s) {
                return bad(format!("partitions[{i}].end_s must be after its start_s"));
            }
            if p.split == 0 || p.split >= self.nodes {
                return bad(format!(
                    "partitions[{i}].split must be 1..={}: nodes below it are cut off from the \
                     rest, so 0 or {} cuts nothing",
                    self.nodes.saturating_sub(1),
                    self.nodes
                ));
            }
        }
        Ok(())
    }
}
