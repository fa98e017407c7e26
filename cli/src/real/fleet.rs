//! The node processes of a `--real` run (started by the shared harness, `hestia_tests`), the
//! network namespaces that partitions need, and the removal of what a killed run left.

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One network namespace per node, each linked to a router namespace that forwards between them
/// and to this process's devices. A partition is a set of blackhole rules in the router: packets
/// between the two sides vanish in the middle of the network, as in a real partition (dials and
/// requests time out rather than fail at once). Torn down on drop.
pub(super) struct Namespaces {
    pub(super) tag: String,
    pub(super) subnet: u8,
    pub(super) nodes: usize,
}

pub(super) fn ip(args: &[&str], batch: Option<&str>) -> Result<()> {
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
    pub(super) fn create(nodes: usize) -> Result<Namespaces> {
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

    pub(super) fn router(&self) -> String {
        format!("{}r", self.tag)
    }
    pub(super) fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    pub(super) fn ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, i + 1)
    }

    /// Adds (or removes) the router's blackhole rules between nodes below `split` and the rest.
    pub(super) async fn cut(&self, split: usize, on: bool) -> Result<()> {
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
    pub(super) fn remove_stale() {
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
pub(super) struct NodeProc {
    pub(super) dir: PathBuf,
    pub(super) listen: Multiaddr,
    pub(super) namespace: Option<String>,
    /// Its address with `/p2p/<peer id>`, known once it first listened (fixed across restarts).
    pub(super) addr: Option<Multiaddr>,
    pub(super) child: Option<hestia_tests::Proc>,
}

pub(super) struct Fleet {
    pub(super) exe: PathBuf,
    pub(super) nodes: Vec<NodeProc>,
    pub(super) namespaces: Option<Namespaces>,
}

impl Fleet {
    pub(super) async fn spawn(&mut self, i: usize, bootstrap: &[Multiaddr]) -> Result<Multiaddr> {
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

    pub(super) async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.nodes[i].child.take() {
            tokio::task::spawn_blocking(move || p.kill9()).await?;
        }
        Ok(())
    }

    /// Deletes a stopped node's database, keeping only its key.
    pub(super) async fn lose_disk(&self, i: usize) -> Result<()> {
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

    pub(super) fn others(&self, i: usize) -> Vec<Multiaddr> {
        (0..self.nodes.len())
            .filter(|j| *j != i)
            .filter_map(|j| self.nodes[j].addr.clone())
            .collect()
    }
}

pub(super) fn free_loopback_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where a run keeps its nodes' directories: under the system's temporary directory, named
/// with the process id so the next run can tell a dead run's leftovers.
pub(super) const TMP_PREFIX: &str = "hestia-real-";

/// Removes the temporary directories of runs whose process is gone (killed before it could
/// clean up).
pub(super) fn remove_stale_dirs() {
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
