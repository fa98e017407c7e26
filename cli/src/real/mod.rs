//! `hestia sim run --real`: the same scenario on the real stack, to check the model. The model
//! runs first, keeping every message it sent (a traced run). Then every node is a real
//! `hestia node run` process (libp2p over TCP, RocksDB in a temporary directory); each user has
//! two real client connections in this process (one keeps a long-poll fetch open, one sends) and
//! replays exactly the messages the model's user sent, at the same times, to the same
//! recipients, in real time. The two are compared: delivery ratio, and the send-to-device
//! latency distributions (see [`cdf_gap`]), with every message's two fates in
//! real_messages.csv.
//!
//! Faults are real too. A crash is SIGKILL of the node's process; it is started again on the
//! same data directory after `down_s`. With `disk_loss` the database is deleted before the
//! restart and only the node key is put back (an operator restoring the key from a backup, as
//! the model keeps the node's identity). A partition needs network namespaces (so root): each
//! node then runs in its own namespace, linked to a router namespace (addresses in
//! 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks; no packet leaves the machine),
//! and for the partition's span the router silently drops packets between the two sides, as a
//! cut in the middle of a network does. Devices stay reachable from their home node.
//!
//! The nodes die with this process however it ends (a parent-death signal, SIGKILL included);
//! a run's temporary directory and namespaces carry its process id, so the next run removes
//! what a killed one left. Ctrl-C stops sending, stops the nodes, removes the namespaces and
//! the directory, and writes what the run reached, marked `"interrupted": true`.
//!
//! `HESTIA_REAL_KEEP=1` keeps the nodes' directories and logs (the path is printed);
//! `HESTIA_REAL_NODE_LOG` sets the nodes' `RUST_LOG` (default `warn,libp2p=error`).
//!
//! Files are reproduced too (see [`files`]): each file the model's users began is uploaded,
//! announced and fetched across the federation at the same times, and the two sides'
//! begin-to-fetched times are compared as the messages' latencies are.
//!
//! Not reproduced (refused with a message): link loss, offline users, regions, link bandwidth,
//! diurnal rates, cover traffic, batching, phones and calls. Bounded: at most 50 nodes, 200
//! users, 300 s and [`MAX_REAL_FILES`] files of at most [`MAX_REAL_FILE_MEDIAN`] median.

mod files;

use anyhow::{Context, Result, bail};
use hestia_node::client::{ClientLibError, Connection};
use hestia_node::driver::{now_millis, peer_of};
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{ClientError, ClientOp, ClientResponse, Outgoing};
use hestia_simulations::Scenario;
use libp2p::Multiaddr;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Real mode's bounds: every node is a process on this machine and every user two connections.
pub const MAX_REAL_NODES: usize = 50;
pub const MAX_REAL_USERS: usize = 200;
pub const MAX_REAL_SECONDS: f64 = 300.0;
/// Files the scenario may be expected to begin, and their median size: every chunk is a
/// synced write on this machine's disk.
pub const MAX_REAL_FILES: f64 = 500.0;
pub const MAX_REAL_FILE_MEDIAN: f64 = 8.0 * 1024.0 * 1024.0;
/// Files are compared with this much horizontal slack instead of `LATENCY_TOLERANCE_MS`: the
/// model counts no processing time, and a real file costs a synced write per chunk on the
/// holder and work on both nodes' connections per chunk.
pub const FILE_LATENCY_TOLERANCE_MS: f64 = 150.0;
/// Agreement: delivery ratios within this, and the send-to-device latency CDFs within
/// `LATENCY_TOLERANCE_MS` horizontally and `CDF_TOLERANCE` vertically (see [`cdf_gap`]). The
/// model counts no processing time and loopback has none of the configured latency, so
/// latencies are compared in absolute terms.
pub const RATIO_TOLERANCE: f64 = 0.02;
pub const LATENCY_TOLERANCE_MS: f64 = 25.0;
pub const CDF_TOLERANCE: f64 = 0.05;
/// A device whose home node does not take a message within this (reconnecting meanwhile)
/// counts it as not sent, as the model does while the home node is down.
const SEND_GIVE_UP: Duration = Duration::from_secs(2);
const RECONNECT_EVERY: Duration =
    Duration::from_millis(hestia_simulations::sim::DEVICE_RECONNECT_MS);
/// The port every node listens on inside its own network namespace.
const NAMESPACE_PORT: u16 = 4001;

#[derive(Serialize)]
pub struct Side {
    pub messages_sent: u64,
    pub not_sent_home_node_down: u64,
    pub delivered_to_device: u64,
    pub delivery_ratio: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    /// `loopback` or `namespaces` (one network namespace per node, for partitions).
    pub network: &'static str,
    pub crashes: usize,
    pub partitions: usize,
    pub real: Side,
    pub model: Side,
    /// Of the messages both sides sent, the fraction whose fates match: both delivered with
    /// latencies within `latency_tolerance_ms` of each other, or both undelivered. Reported,
    /// not judged: it shows where single messages differ (real_messages.csv lists them).
    pub paired_within_slack: f64,
    /// How far the two send-to-device latency CDFs are apart, given `latency_tolerance_ms` of
    /// horizontal slack (0..=1; see `cdf_gap` and docs/simulations.md).
    pub cdf_gap: f64,
    pub ratio_tolerance: f64,
    pub latency_tolerance_ms: f64,
    pub cdf_tolerance: f64,
    pub agree: bool,
    /// Ctrl-C stopped the run: the real side covers only `real_s` seconds of sending (the
    /// model's side is the whole scenario), so the two are not compared (`agree` is false).
    pub interrupted: bool,
    /// Seconds of the scenario the real side ran, from the first send to the last.
    pub real_s: f64,
    /// The files, if the scenario has any.
    pub files: Option<FileComparison>,
}

/// One side's files.
#[derive(Serialize)]
pub struct FileSide {
    pub begun: u64,
    pub fetched: u64,
    pub fetched_ratio: f64,
    /// Begin-to-fetched time.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct FileComparison {
    pub real: FileSide,
    pub model: FileSide,
    /// How far the begin-to-fetched CDFs are apart, with `latency_tolerance_ms` of slack.
    pub cdf_gap: f64,
    pub latency_tolerance_ms: f64,
    pub agree: bool,
}

fn file_side(begun: u64, sorted: &[f64]) -> FileSide {
    FileSide {
        begun,
        fetched: sorted.len() as u64,
        fetched_ratio: if begun == 0 {
            1.0
        } else {
            sorted.len() as f64 / begun as f64
        },
        p50_ms: percentile(sorted, 0.5),
        p90_ms: percentile(sorted, 0.9),
        p99_ms: percentile(sorted, 0.99),
    }
}

fn check(sc: &Scenario) -> Result<()> {
    if sc.nodes > MAX_REAL_NODES || sc.nodes * sc.users_per_node > MAX_REAL_USERS {
        bail!("--real runs at most {MAX_REAL_NODES} nodes and {MAX_REAL_USERS} users");
    }
    if sc.duration_s + sc.drain_s > MAX_REAL_SECONDS {
        bail!("--real runs in real time: duration_s + drain_s must be at most {MAX_REAL_SECONDS}");
    }
    if sc.link_loss > 0.0 || sc.online_fraction < 1.0 {
        bail!(
            "--real reproduces crashes and partitions but not link_loss or offline users: set \
             link_loss = 0.0 and online_fraction = 1.0, or run the model only"
        );
    }
    if sc.regions > 1
        || sc.link_bandwidth_mbps > 0.0
        || sc.diurnal_amplitude > 0.0
        || sc.cover_messages_per_user_per_hour > 0.0
        || sc.batching_delay_ms > 0
    {
        bail!(
            "--real does not reproduce regions, bandwidth limits, diurnal rates, cover traffic or \
             batching delays yet; run those in the model only"
        );
    }
    if sc.phone_fraction > 0.0 || sc.calls_per_user_per_hour > 0.0 {
        bail!(
            "--real does not reproduce phones woken by push or calls yet; run those in the \
             model only"
        );
    }
    let users = (sc.nodes * sc.users_per_node) as f64;
    let expected_files = users * sc.files_per_user_per_hour * sc.duration_s / 3600.0;
    if expected_files > MAX_REAL_FILES {
        bail!(
            "--real sends at most about {MAX_REAL_FILES} files: lower files_per_user_per_hour \
             (this scenario begins about {expected_files:.0})"
        );
    }
    if sc.files_per_user_per_hour > 0.0 && sc.file_median_bytes > MAX_REAL_FILE_MEDIAN {
        bail!(
            "--real sends files of at most {} MiB median: lower file_median_bytes",
            MAX_REAL_FILE_MEDIAN / 1024.0 / 1024.0
        );
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The fraction of a sorted sample at or below `x` (0 for an empty sample).
fn ecdf(sorted: &[f64], x: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.partition_point(|v| *v <= x) as f64 / sorted.len() as f64
}

/// How far apart two latency distributions are, allowing `slack_ms` of horizontal shift: the
/// largest vertical gap by which either empirical CDF falls below the other shifted right by
/// the slack (the Lévy distance's construction, with the slack fixed). 0 when every quantile of
/// each sample is within the slack of the other's; 1 when the samples are far apart. Samples
/// are sorted.
fn cdf_gap(a: &[f64], b: &[f64], slack_ms: f64) -> f64 {
    if a.is_empty() || b.is_empty() {
        return if a.len() == b.len() { 0.0 } else { 1.0 };
    }
    let mut gap = 0.0f64;
    for &x in a.iter().chain(b) {
        for t in [x, x + slack_ms] {
            gap = gap
                .max(ecdf(b, t - slack_ms) - ecdf(a, t))
                .max(ecdf(a, t - slack_ms) - ecdf(b, t));
        }
    }
    gap.max(0.0)
}

/// Both send-to-device latency CDFs (sorted samples) at log-spaced latencies, ten a decade from
/// 0.5 ms up to the first grid point at or past the larger of the two maxima (where both CDFs
/// read 1).
fn cdf_table(real: &[f64], model: &[f64]) -> String {
    let mut csv = String::from("latency_ms,real_cdf,model_cdf\n");
    let max = real
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(model.last().copied().unwrap_or(0.0));
    let step = 10f64.powf(0.1);
    for k in 0.. {
        let x = 0.5 * step.powi(k);
        csv += &format!("{x:.1},{:.4},{:.4}\n", ecdf(real, x), ecdf(model, x));
        if x >= max {
            break;
        }
    }
    csv
}

/// One network namespace per node, each linked to a router namespace that forwards between them
/// and to this process's devices. A partition is a set of blackhole rules in the router: packets
/// between the two sides vanish in the middle of the network, as in a real partition (dials and
/// requests time out rather than fail at once). Torn down on drop.
struct Namespaces {
    tag: String,
    subnet: u8,
    nodes: usize,
}

fn ip(args: &[&str], batch: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context(
        "--real with partitions runs each node in a network namespace: it needs `ip` (iproute2)",
    )?;
    if let Some(b) = batch {
        child.stdin.take().expect("piped").write_all(b.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {} (--real with partitions needs root to build network namespaces)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Namespaces {
    fn create(nodes: usize) -> Result<Namespaces> {
        Self::remove_stale();
        let pid = std::process::id();
        let ns = Namespaces {
            tag: format!("hsim{pid}"),
            subnet: (pid % 250) as u8,
            nodes,
        };
        let (router, host, net) = (ns.router(), format!("{}h", ns.tag), ns.subnet);
        let mut batch = format!(
            "netns add {router}\nlink add {host} type veth peer name host netns {router}\n\
             addr add 198.18.{net}.254/32 dev {host}\nlink set {host} up\n\
             route add 198.18.{net}.0/24 dev {host}\n"
        );
        for i in 0..nodes {
            let name = ns.name(i);
            batch += &format!(
                "netns add {name}\nlink add v{i} netns {router} type veth peer name eth0 netns {name}\n"
            );
        }
        ip(&["-batch", "-"], Some(&batch))?;
        // The router forwards, and answers ARP for the addresses behind it.
        let sysctl = std::process::Command::new("ip")
            .args(["netns", "exec", &router, "sh", "-c"])
            .arg(
                "echo 1 > /proc/sys/net/ipv4/ip_forward && \
                 echo 1 > /proc/sys/net/ipv4/conf/all/proxy_arp",
            )
            .status()?;
        if !sysctl.success() {
            bail!("could not turn on forwarding in the simulation's router namespace");
        }
        let mut batch = format!(
            "link set lo up\nlink set host up\naddr add 198.18.{net}.253/32 dev host\n\
             route add 198.18.{net}.254/32 dev host\n"
        );
        for i in 0..nodes {
            batch += &format!(
                "link set v{i} up\naddr add 198.18.{net}.253/32 dev v{i}\nroute add {}/32 dev v{i}\n",
                ns.ip(i)
            );
        }
        ip(&["-n", &router, "-batch", "-"], Some(&batch))?;
        for i in 0..nodes {
            let b = format!(
                "addr add {}/32 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default dev eth0\n",
                ns.ip(i)
            );
            ip(&["-n", &ns.name(i), "-batch", "-"], Some(&b))?;
        }
        Ok(ns)
    }

    fn router(&self) -> String {
        format!("{}r", self.tag)
    }
    fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, i + 1)
    }

    /// Adds (or removes) the router's blackhole rules between nodes below `split` and the rest.
    async fn cut(&self, split: usize, on: bool) -> Result<()> {
        let verb = if on { "add" } else { "del" };
        let split = split.min(self.nodes);
        let mut batch = String::new();
        for a in 0..split {
            for b in split..self.nodes {
                let (x, y) = (self.ip(a), self.ip(b));
                batch += &format!("rule {verb} from {x} to {y} blackhole\n");
                batch += &format!("rule {verb} from {y} to {x} blackhole\n");
            }
        }
        let router = self.router();
        tokio::task::spawn_blocking(move || ip(&["-n", &router, "-batch", "-"], Some(&batch)))
            .await?
    }

    /// Namespaces left by a run that was killed (its process is gone). Deleting a run's router
    /// namespace also deletes its link to this one.
    fn remove_stale() {
        let Ok(out) = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
        else {
            return;
        };
        let dead = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix("hsim") else {
                return false;
            };
            let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
        };
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        for name in list.split_whitespace().filter(|n| dead(n)) {
            let _ = ip(&["netns", "del", name], None);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let mut batch = format!("netns del {}\n", self.router());
        for i in 0..self.nodes {
            batch += &format!("netns del {}\n", self.name(i));
        }
        if let Err(e) = ip(&["-force", "-batch", "-"], Some(&batch)) {
            tracing::warn!(error = %e, "could not remove the simulation's network namespaces");
        }
    }
}

/// One node process and where it lives.
struct NodeProc {
    dir: PathBuf,
    listen: Multiaddr,
    namespace: Option<String>,
    /// Its address with `/p2p/<peer id>`, known once it first listened (fixed across restarts).
    addr: Option<Multiaddr>,
    child: Option<hestia_tests::Proc>,
}

struct Fleet {
    exe: PathBuf,
    nodes: Vec<NodeProc>,
    namespaces: Option<Namespaces>,
}

impl Fleet {
    async fn spawn(&mut self, i: usize, bootstrap: &[Multiaddr]) -> Result<Multiaddr> {
        let n = &mut self.nodes[i];
        let mut launch = hestia_tests::Launch::new(&self.exe, &n.dir)
            .log(&n.dir.with_extension("log"))
            .rust_log(&std::env::var("HESTIA_REAL_NODE_LOG").unwrap_or("warn,libp2p=error".into()))
            .args(["node", "run", "--data-dir"])
            .arg(&n.dir)
            .args(["--listen", &n.listen.to_string()])
            .args([
                "--send-burst",
                "100000000",
                "--sends-per-second",
                "100000000",
            ])
            // The node dies with this process, even when it is SIGKILLed and no Drop runs. The
            // signal follows the forking thread: this runs on a runtime worker, which lives as
            // long as the run.
            .die_with_this_thread();
        if let Some(ns) = &n.namespace {
            launch = launch.in_namespace(ns);
        }
        for b in bootstrap {
            launch = launch.args(["--bootstrap", &b.to_string()]);
        }
        let mut p = launch.spawn().context("starting a node process")?;
        let deadline = Instant::now() + crate::demo::STEP_TIMEOUT;
        let addr = loop {
            match p.listening() {
                Ok(Some(a)) => break a,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => bail!(
                    "node {i} did not start listening; its log: {}",
                    p.log.display()
                ),
                Err(e) => bail!("node {i} did not start: {e}"),
            }
        };
        let addr: Multiaddr = addr.parse().context("a node's recorded listen address")?;
        n.child = Some(p);
        n.addr = Some(addr.clone());
        Ok(addr)
    }

    async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.nodes[i].child.take() {
            tokio::task::spawn_blocking(move || p.kill9()).await?;
        }
        Ok(())
    }

    /// Deletes a stopped node's database, keeping only its key.
    async fn lose_disk(&self, i: usize) -> Result<()> {
        let db = self.nodes[i].dir.join("db");
        tokio::task::spawn_blocking(move || -> Result<()> {
            let key = hestia_store::node::NodeDb::open(&db)?.node_key()?;
            std::fs::remove_dir_all(&db)?;
            let fresh = hestia_store::node::NodeDb::open(&db)?;
            if let Some(k) = key {
                fresh.set_node_key(&k)?;
            }
            Ok(())
        })
        .await?
    }

    fn others(&self, i: usize) -> Vec<Multiaddr> {
        (0..self.nodes.len())
            .filter(|j| *j != i)
            .filter_map(|j| self.nodes[j].addr.clone())
            .collect()
    }
}

fn free_loopback_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

enum Fault {
    Crash(usize),
    Restart(usize),
    Cut(usize),
    Heal(usize),
}

/// The scenario's faults in time order, in seconds from the start of sending.
fn fault_plan(sc: &Scenario) -> Vec<(f64, Fault)> {
    let mut plan = Vec::new();
    for (i, c) in sc.crashes.iter().enumerate() {
        plan.push((c.at_s, Fault::Crash(i)));
        plan.push((c.at_s + c.down_s, Fault::Restart(i)));
    }
    for (i, p) in sc.partitions.iter().enumerate() {
        plan.push((p.start_s, Fault::Cut(i)));
        plan.push((p.end_s, Fault::Heal(i)));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// One message a node took: its index in the model's trace, when it was sent, and its
/// send-to-device latency once delivered.
struct Sent {
    index: usize,
    at: Instant,
    latency_ms: Option<f64>,
}

/// What devices share: the messages nodes took, which home nodes are down, and how many
/// messages could not be sent.
struct Tally {
    sent: Mutex<HashMap<EnvelopeId, Sent>>,
    down: Vec<AtomicBool>,
    not_sent: AtomicU64,
}

/// A connection to `addr`, opened again if it was lost; None while the node does not answer.
async fn connected<'a>(
    conn: &'a mut Option<Connection>,
    addr: &Multiaddr,
) -> Option<&'a mut Connection> {
    if conn.is_none() {
        *conn = Connection::open(addr).await.ok();
    }
    conn.as_mut()
}

/// One device's receiving side: a long-poll fetch, acknowledged, reconnecting across crashes and
/// registering again after a disk loss.
async fn receive(
    key: Arc<IdentityKey>,
    addr: Multiaddr,
    tally: Arc<Tally>,
    files: Arc<files::Files>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<Connection> = None;
    let mut fetches = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() {
            // Each fetch ends on the same signal.
            while fetches.join_next().await.is_some() {}
            return;
        }
        let Some(c) = connected(&mut conn, &addr).await else {
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_EVERY) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let op = ClientOp::Fetch {
            limit: 256,
            wait_ms: 1_000,
        };
        let answer = tokio::select! {
            a = c.call(&key, op) => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let envs = match answer {
            Ok(ClientResponse::Envelopes(envs)) => envs,
            Err(ClientLibError::Refused(ClientError::NotRegistered)) => {
                let _ = c.call(&key, ClientOp::Register).await;
                continue;
            }
            Ok(_) => continue,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        if envs.is_empty() {
            continue;
        }
        let now = Instant::now();
        let ids: Vec<EnvelopeId> = envs.iter().map(|e| e.id).collect();
        for id in &ids {
            if let Some(p) = files.take_announcement(id) {
                let f = files::fetch(files.clone(), p, key.clone(), addr.clone(), stop.clone());
                fetches.spawn(f);
            }
        }
        {
            let mut sent = tally.sent.lock().expect("sent");
            for id in &ids {
                if let Some(m) = sent.get_mut(id)
                    && m.latency_ms.is_none()
                {
                    m.latency_ms = Some((now - m.at).as_secs_f64() * 1000.0);
                }
            }
        }
        if c.call(&key, ClientOp::Ack(ids)).await.is_err() {
            conn = None;
        }
    }
}

/// Hands one envelope to the home node, reconnecting and registering again as needed; false if
/// the node did not take it within `SEND_GIVE_UP`.
async fn send_one(
    conn: &mut Option<Connection>,
    addr: &Multiaddr,
    key: &IdentityKey,
    out: Outgoing,
) -> bool {
    let give_up = Instant::now() + SEND_GIVE_UP;
    while Instant::now() < give_up {
        if let Some(c) = connected(conn, addr).await {
            match c.call(key, ClientOp::Send(vec![out.clone()])).await {
                Ok(ClientResponse::Sent(_)) => return true,
                Err(ClientLibError::Refused(ClientError::NotRegistered)) => {
                    let _ = c.call(key, ClientOp::Register).await;
                    continue;
                }
                Ok(_) => {}
                Err(_) => *conn = None,
            }
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
    false
}

/// Runs the scenario on the model, then on the real stack, and compares them; writes both
/// sides' results to `out`. None if Ctrl-C came while the model ran (its partial results are
/// written; the real stack never started).
pub async fn run(sc: Scenario, seed: u64, out: &Path) -> Result<Option<Comparison>> {
    check(&sc)?;
    // From here Ctrl-C stops the run in order instead of ending the process. The handler is
    // registered now, not when a task is first polled, so a signal during the model's run is
    // caught too.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (interrupt_tx, interrupt) = watch::channel(false);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if sigint.recv().await.is_some() {
                eprintln!(
                    "\ninterrupted: stopping devices and nodes, then writing what the run reached"
                );
                interrupted.store(true, Ordering::SeqCst);
                let _ = interrupt_tx.send(true);
                // The sender stays alive, so receivers never see it closed.
                std::future::pending::<()>().await;
            }
        });
    }
    // The model runs first: its trace is the workload the real devices replay.
    let model_run = hestia_simulations::Sim::new(sc.clone(), seed)
        .traced()
        .run(|_, _| !interrupted.load(Ordering::SeqCst));
    if model_run.summary.interrupted {
        hestia_simulations::write_results(out, &model_run)?;
        return Ok(None);
    }
    remove_stale_dirs();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
        .tempdir()?;
    let tmp_keep = std::env::var_os("HESTIA_REAL_KEEP").is_some();
    let namespaces = if sc.partitions.is_empty() {
        None
    } else {
        Some(Namespaces::create(sc.nodes)?)
    };
    let mut nodes = Vec::new();
    for i in 0..sc.nodes {
        let (listen, namespace) = match &namespaces {
            Some(ns) => (
                format!("/ip4/{}/tcp/{NAMESPACE_PORT}", ns.ip(i)),
                Some(ns.name(i)),
            ),
            None => (
                format!("/ip4/127.0.0.1/tcp/{}", free_loopback_port()?),
                None,
            ),
        };
        nodes.push(NodeProc {
            dir: tmp.path().join(format!("node{i}")),
            listen: listen.parse()?,
            namespace,
            addr: None,
            child: None,
        });
    }
    let mut fleet = Fleet {
        exe: std::env::current_exe().context("finding the hestia binary")?,
        nodes,
        namespaces,
    };
    for i in 0..sc.nodes {
        // Each node knows the ones started before it; Kademlia and presence introduce the rest.
        let bootstrap = fleet.others(i);
        fleet.spawn(i, &bootstrap).await?;
    }
    let addrs: Vec<Multiaddr> = fleet
        .nodes
        .iter()
        .map(|n| n.addr.clone().expect("started"))
        .collect();
    let peers: Vec<String> = addrs
        .iter()
        .map(|a| peer_of(a).map(|p| p.to_string()).context("node address"))
        .collect::<Result<_>>()?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Users are numbered node by node, as in the model.
    let homes: Arc<Vec<usize>> = Arc::new(
        sc.node_sizes()
            .iter()
            .enumerate()
            .flat_map(|(n, size)| std::iter::repeat_n(n, *size))
            .collect(),
    );
    let users = homes.len();
    let keys: Vec<Arc<IdentityKey>> = (0..users)
        .map(|_| Arc::new(IdentityKey::generate(&mut rng)))
        .collect();
    let tally = Arc::new(Tally {
        sent: Mutex::default(),
        down: (0..sc.nodes).map(|_| AtomicBool::new(false)).collect(),
        not_sent: AtomicU64::new(0),
    });
    let file_plan = Arc::new(files::Files::new(model_run.files.clone()));
    // Devices stop before nodes, so no request is cut off by a node shutting down.
    let (stop_devices, devices_stopped) = watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (u, key) in keys.iter().enumerate() {
        let addr = &addrs[homes[u]];
        let mut c = Connection::open(addr).await?;
        c.call(key, ClientOp::Register)
            .await
            .context("registering")?;
        senders.push(Connection::open(addr).await?);
        receivers.push(tokio::spawn(receive(
            key.clone(),
            addr.clone(),
            tally.clone(),
            file_plan.clone(),
            devices_stopped.clone(),
        )));
    }

    let start = Instant::now();
    // Faults run on their own task, on the scenario's schedule; it hands the fleet back.
    let plan = fault_plan(&sc);
    let faults = {
        let (sc, tally) = (sc.clone(), tally.clone());
        let mut stop = interrupt.clone();
        tokio::spawn(async move {
            for (at, fault) in plan {
                tokio::select! {
                    _ = tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()) => {}
                    Ok(_) = stop.wait_for(|s| *s) => break,
                }
                match fault {
                    Fault::Crash(c) => {
                        let n = sc.crashes[c].node;
                        tally.down[n].store(true, Ordering::SeqCst);
                        fleet.kill(n).await?;
                        if sc.crashes[c].disk_loss {
                            fleet.lose_disk(n).await?;
                        }
                    }
                    Fault::Restart(c) => {
                        let n = sc.crashes[c].node;
                        let others = fleet.others(n);
                        fleet.spawn(n, &others).await?;
                        tally.down[n].store(false, Ordering::SeqCst);
                    }
                    Fault::Cut(p) | Fault::Heal(p) => {
                        let on = matches!(fault, Fault::Cut(_));
                        let ns = fleet.namespaces.as_ref().expect("made for partitions");
                        ns.cut(sc.partitions[p].split, on).await?;
                    }
                }
            }
            Ok::<Fleet, anyhow::Error>(fleet)
        })
    };

    // Each user sends exactly what the model's users sent, when they sent it, so the two
    // sides differ only in how the messages travel.
    let mut schedules: Vec<Vec<usize>> = vec![Vec::new(); users];
    for (i, m) in model_run.messages.iter().enumerate() {
        schedules[m.from_user].push(i);
    }
    let plan = Arc::new(model_run.messages.clone());
    let progress_line = tokio::spawn(progress(
        start,
        sc.duration_s,
        tally.clone(),
        file_plan.clone(),
    ));
    let mut send_tasks = Vec::new();
    for ((u, conn), schedule) in senders.into_iter().enumerate().zip(schedules) {
        let mut stop = interrupt.clone();
        let key = keys[u].clone();
        let all_keys = keys.clone();
        let peers = peers.clone();
        let homes = homes.clone();
        let addr = addrs[homes[u]].clone();
        let tally = tally.clone();
        let plan = plan.clone();
        let mut urng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        send_tasks.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            for i in schedule {
                let m = &plan[i];
                let at = start + Duration::from_millis(m.sent_ms);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    Ok(_) = stop.wait_for(|s| *s) => break,
                }
                if tally.down[homes[u]].load(Ordering::SeqCst) {
                    tally.not_sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let r = m.to_user;
                // As in the model, the body is opaque to everything measured here.
                let envelope = Envelope::seal_body(
                    &mut urng,
                    &all_keys[r].user_id(),
                    b"",
                    now_millis(),
                    hestia_protocol::envelope::DEFAULT_TTL_MS,
                )?;
                let id = envelope.id;
                // Recorded before sending: the recipient may fetch it before the answer comes.
                let record = Sent {
                    index: i,
                    at: Instant::now(),
                    latency_ms: None,
                };
                tally.sent.lock().expect("sent").insert(id, record);
                let to_node = peers[homes[r]].clone();
                let out = Outgoing { to_node, envelope };
                if !send_one(&mut conn, &addr, &key, out).await {
                    tally.sent.lock().expect("sent").remove(&id);
                    tally.not_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Each file the model's users began, at the same time, from the same user to the same
    // recipient, with the same size. A file's task ends when it is announced, refused, or the
    // devices stop.
    let mut file_tasks = Vec::new();
    for f in 0..file_plan.plan.len() {
        let planned = file_plan.plan[f].clone();
        let (mut stop, files, tally) = (devices_stopped.clone(), file_plan.clone(), tally.clone());
        let (keys, peers, homes, addrs) =
            (keys.clone(), peers.clone(), homes.clone(), addrs.clone());
        let mut frng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        let mut interrupt = interrupt.clone();
        file_tasks.push(tokio::spawn(async move {
            let at = start + Duration::from_millis(planned.begun_ms);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                Ok(_) = interrupt.wait_for(|s| *s) => return Ok(()),
            }
            let (u, r) = (planned.from_user, planned.to_user);
            let route = files::Route {
                key: &keys[u],
                home: &addrs[homes[u]],
                home_node: homes[u],
                holder_peer: &peers[homes[u]],
                recipient: &keys[r],
                recipient_peer: &peers[homes[r]],
            };
            files::send(&files, f, route, &tally, &mut frng, &mut stop).await
        }));
    }
    for t in send_tasks {
        t.await??;
    }
    let was_interrupted = || interrupted.load(Ordering::SeqCst);
    let real_s = if was_interrupted() {
        start.elapsed().as_secs_f64().min(sc.duration_s)
    } else {
        sc.duration_s
    };
    let mut fleet = faults.await??;
    // The last message may leave before the sending span ends, and files may still be due in
    // it: the drain starts when the span does.
    let sending_ends = start + Duration::from_secs_f64(sc.duration_s);
    let mut stop = interrupt.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(sending_ends.into()) => {}
        Ok(_) = stop.wait_for(|s| *s) => {}
    }
    // Drain: until every message and file arrived or drain_s passes.
    let deadline = Instant::now() + Duration::from_secs_f64(sc.drain_s);
    let undelivered = || {
        let sent = tally.sent.lock().expect("sent");
        sent.values().any(|m| m.latency_ms.is_none())
    };
    while (undelivered() || !file_plan.all_fetched())
        && Instant::now() < deadline
        && !was_interrupted()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress_line.abort();
    eprintln!();
    let _ = stop_devices.send(true);
    for r in receivers {
        r.await?;
    }
    for t in file_tasks {
        t.await??;
    }
    for i in 0..fleet.nodes.len() {
        fleet.kill(i).await?;
    }
    drop(fleet); // removes the namespaces
    if tmp_keep {
        eprintln!("node directories and logs kept in {}", tmp.keep().display());
    }

    // Each message the nodes took, by its index in the model's trace: Some(latency if delivered).
    let mut real_latency: Vec<Option<Option<f64>>> = vec![None; model_run.messages.len()];
    for m in tally.sent.lock().expect("sent").values() {
        real_latency[m.index] = Some(m.latency_ms);
    }
    let sent = real_latency.iter().flatten().count() as u64;
    let mut lat: Vec<f64> = real_latency.iter().flatten().flatten().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let real = Side {
        messages_sent: sent,
        not_sent_home_node_down: tally.not_sent.load(Ordering::Relaxed),
        delivered_to_device: lat.len() as u64,
        delivery_ratio: if sent == 0 {
            1.0
        } else {
            lat.len() as f64 / sent as f64
        },
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
    };
    let o = model_run;
    let m = &o.summary;
    let model = Side {
        messages_sent: m.messages_sent,
        not_sent_home_node_down: m.not_sent_home_node_down,
        delivered_to_device: m.delivered_to_device,
        delivery_ratio: m.delivery_ratio,
        p50_ms: m.latency_send_to_device.p50_ms,
        p90_ms: m.latency_send_to_device.p90_ms,
        p99_ms: m.latency_send_to_device.p99_ms,
    };
    let (mut both, mut matching) = (0u64, 0u64);
    for (m, real) in o.messages.iter().zip(&real_latency) {
        if let Some(real) = real {
            both += 1;
            matching += match (real, m.latency_ms) {
                (Some(r), Some(l)) => u64::from((r - l as f64).abs() <= LATENCY_TOLERANCE_MS),
                (None, None) => 1,
                _ => 0,
            };
        }
    }
    let gap = cdf_gap(&lat, &o.device_latencies, LATENCY_TOLERANCE_MS);
    let interrupted = was_interrupted();
    let agree = !interrupted
        && (real.delivery_ratio - model.delivery_ratio).abs() <= RATIO_TOLERANCE
        && gap <= CDF_TOLERANCE;
    let file_cmp = (!o.files.is_empty()).then(|| {
        let fates = file_plan.fates.lock().expect("fates");
        let mut real_after: Vec<f64> = fates.iter().filter_map(|f| f.fetched_after_ms).collect();
        real_after.sort_by(|a, b| a.total_cmp(b));
        let begun = fates.iter().filter(|f| f.begun).count() as u64;
        let mut model_after: Vec<f64> = o
            .files
            .iter()
            .filter_map(|f| f.fetched_after_ms.map(|t| t as f64))
            .collect();
        model_after.sort_by(|a, b| a.total_cmp(b));
        let real = file_side(begun, &real_after);
        let model = file_side(o.files.len() as u64, &model_after);
        let gap = cdf_gap(&real_after, &model_after, FILE_LATENCY_TOLERANCE_MS);
        FileComparison {
            agree: !interrupted
                && (real.fetched_ratio - model.fetched_ratio).abs() <= RATIO_TOLERANCE
                && gap <= CDF_TOLERANCE,
            real,
            model,
            cdf_gap: gap,
            latency_tolerance_ms: FILE_LATENCY_TOLERANCE_MS,
        }
    });
    let agree = agree && file_cmp.as_ref().is_none_or(|f| f.agree);
    let c = Comparison {
        scenario: sc.name.clone(),
        seed,
        network: if sc.partitions.is_empty() {
            "loopback"
        } else {
            "namespaces"
        },
        crashes: sc.crashes.len(),
        partitions: sc.partitions.len(),
        cdf_gap: gap,
        paired_within_slack: if both == 0 {
            1.0
        } else {
            matching as f64 / both as f64
        },
        real,
        model,
        ratio_tolerance: RATIO_TOLERANCE,
        latency_tolerance_ms: LATENCY_TOLERANCE_MS,
        cdf_tolerance: CDF_TOLERANCE,
        agree,
        interrupted,
        real_s,
        files: file_cmp,
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("real.json"),
        serde_json::to_string_pretty(&c)? + "\n",
    )?;
    let mut csv = String::from(
        "sent_ms,from_user,to_user,from_node,to_node,real_latency_ms,model_latency_ms\n",
    );
    let fmt = |l: Option<f64>| l.map(|l| format!("{l:.1}")).unwrap_or_default();
    for (m, real) in o.messages.iter().zip(&real_latency) {
        let real = match real {
            None => "not sent".to_string(),
            Some(l) => fmt(*l),
        };
        let model = fmt(m.latency_ms.map(|l| l as f64));
        let (from, to) = (homes[m.from_user], homes[m.to_user]);
        csv += &format!(
            "{},{},{},{from},{to},{real},{model}\n",
            m.sent_ms, m.from_user, m.to_user
        );
    }
    std::fs::write(out.join("real_messages.csv"), csv)?;
    if !o.files.is_empty() {
        let mut csv = String::from(
            "begun_ms,from_user,to_user,from_node,to_node,bytes,real,real_fetched_after_ms,model_fetched_after_ms\n",
        );
        let fates = file_plan.fates.lock().expect("fates");
        for (f, real) in o.files.iter().zip(fates.iter()) {
            let state = match real {
                r if !r.begun => "not begun",
                r if r.refused => "refused",
                r if r.fetched_after_ms.is_some() => "fetched",
                r if r.announced => "announced",
                _ => "uploading",
            };
            let model = f
                .fetched_after_ms
                .map(|t| t.to_string())
                .unwrap_or_default();
            csv += &format!(
                "{},{},{},{},{},{},{state},{},{model}\n",
                f.begun_ms,
                f.from_user,
                f.to_user,
                homes[f.from_user],
                homes[f.to_user],
                f.size,
                fmt(real.fetched_after_ms),
            );
        }
        std::fs::write(out.join("real_files.csv"), csv)?;
    }
    std::fs::write(
        out.join("real_vs_model_cdf.csv"),
        cdf_table(&lat, &o.device_latencies),
    )?;
    hestia_simulations::write_results(out, &o)?;
    // The model's plot, redrawn with the real stack's curve beside it.
    let title = format!(
        "send to device latency, CDF ({}; seed {seed}): real stack and model",
        sc.name
    );
    let curves = [("real stack", &lat[..]), ("model", &o.device_latencies[..])];
    std::fs::write(
        out.join("latency_cdf.svg"),
        hestia_simulations::plots::latency_cdf(&title, &curves)?,
    )?;
    Ok(Some(c))
}

/// Where a run keeps its nodes' directories: under the system's temporary directory, named
/// with the process id so the next run can tell a dead run's leftovers.
const TMP_PREFIX: &str = "hestia-real-";

/// Removes the temporary directories of runs whose process is gone (killed before it could
/// clean up).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A progress line on standard error, once a second: time, messages the nodes took and
/// delivered, files begun and fetched (if any), nodes down.
async fn progress(start: Instant, duration_s: f64, tally: Arc<Tally>, files: Arc<files::Files>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let (sent, delivered) = {
            let s = tally.sent.lock().expect("sent");
            let delivered = s.values().filter(|m| m.latency_ms.is_some()).count();
            (s.len(), delivered)
        };
        let down = tally
            .down
            .iter()
            .filter(|d| d.load(Ordering::Relaxed))
            .count();
        let file_part = if files.plan.is_empty() {
            String::new()
        } else {
            let fates = files.fates.lock().expect("fates");
            let begun = fates.iter().filter(|f| f.begun).count();
            let fetched = fates
                .iter()
                .filter(|f| f.fetched_after_ms.is_some())
                .count();
            format!("  files {fetched}/{begun} fetched")
        };
        let done = ((t / duration_s.max(1.0)) * 30.0).clamp(0.0, 30.0) as usize;
        let phase = if t < duration_s {
            format!("{t:>5.0}/{duration_s:.0} s sending")
        } else {
            "draining".to_string()
        };
        eprint!(
            "\r[{}{}] real stack: {phase}  taken {sent}  delivered {delivered}{file_part}  nodes down {down} ",
            "#".repeat(done),
            ".".repeat(30 - done)
        );
    }
}

/// Prints the comparison, where the results are and how to run it again.
pub fn report(c: &Comparison, scenario: &Option<PathBuf>, out: &Path) {
    println!(
        "scenario {} (seed {}): network {}, {} crashes, {} partitions",
        c.scenario, c.seed, c.network, c.crashes, c.partitions
    );
    if c.interrupted {
        println!(
            "interrupted after {:.0} s of sending: the real side covers those, the model's the \
             whole scenario; not compared",
            c.real_s
        );
    }
    println!("                 sent  not sent  delivered  ratio   p50 ms   p90 ms   p99 ms");
    for (name, s) in [("real stack", &c.real), ("model", &c.model)] {
        println!(
            "{name:<12} {:>9} {:>9} {:>10} {:>6.3} {:>8.1} {:>8.1} {:>8.1}",
            s.messages_sent,
            s.not_sent_home_node_down,
            s.delivered_to_device,
            s.delivery_ratio,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms
        );
    }
    println!(
        "(not sent: due while the sender's home node was down, or not taken by it within {} s; \
         none unless the scenario crashes a node)",
        SEND_GIVE_UP.as_secs()
    );
    println!(
        "messages with the same fate on both sides (latency within ±{slack} ms): {:.3}\n\
         latency CDFs apart by {:.3} (with ±{slack} ms of slack)\n\
         agree within ±{} delivery ratio and {} of CDF: {}",
        c.paired_within_slack,
        c.cdf_gap,
        c.ratio_tolerance,
        c.cdf_tolerance,
        if c.interrupted {
            "not judged"
        } else if c.agree {
            "yes"
        } else {
            "NO"
        },
        slack = c.latency_tolerance_ms,
    );
    if let Some(f) = &c.files {
        println!(
            "files          begun  fetched  ratio   p50 ms   p90 ms   p99 ms  (begun to fetched)"
        );
        for (name, s) in [("real stack", &f.real), ("model", &f.model)] {
            println!(
                "{name:<12} {:>7} {:>8} {:>6.3} {:>8.1} {:>8.1} {:>8.1}",
                s.begun, s.fetched, s.fetched_ratio, s.p50_ms, s.p90_ms, s.p99_ms
            );
        }
        println!(
            "file CDFs apart by {:.3} (with ±{} ms of slack: the model counts no synced writes)",
            f.cdf_gap, f.latency_tolerance_ms
        );
    }
    println!(
        "results in {} (real.json, real_messages.csv, {}real_vs_model_cdf.csv, latency_cdf.svg \
         and the model's files)",
        out.display(),
        if c.files.is_some() {
            "real_files.csv, "
        } else {
            ""
        }
    );
    let file = scenario
        .as_ref()
        .map(|p| format!("{} ", p.display()))
        .unwrap_or_default();
    println!(
        "replay with: hestia sim run {file}--real --seed {} --out {}",
        c.seed,
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_gap_allows_the_slack_and_catches_what_exceeds_it() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(cdf_gap(&a, &a, 0.0), 0.0);
        assert_eq!(cdf_gap(&a, &[10.0, 11.0], 0.0), 1.0);
        // Shifted by 2: half apart without slack, together with 2 of slack.
        let b = [3.0, 4.0, 5.0, 6.0];
        assert!((cdf_gap(&a, &b, 0.0) - 0.5).abs() < 1e-9);
        assert_eq!(cdf_gap(&a, &b, 2.0), 0.0);
        assert_eq!(cdf_gap(&b, &a, 2.0), 0.0);
        // A tail the other lacks: a quarter of one sample is 1000 later.
        let c = [1.0, 2.0, 3.0, 1004.0];
        assert!((cdf_gap(&a, &c, 25.0) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn faults_are_planned_in_time_order() {
        let sc: Scenario = toml::from_str(
            "crashes = [{ node = 1, at_s = 5.0, down_s = 10.0 }]\n\
             partitions = [{ start_s = 7.0, end_s = 9.0, split = 1 }]\n",
        )
        .unwrap();
        let times: Vec<f64> = fault_plan(&sc).iter().map(|f| f.0).collect();
        assert_eq!(times, vec![5.0, 7.0, 9.0, 15.0]);
    }
}
