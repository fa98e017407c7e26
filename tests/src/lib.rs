//! The shared harness for Hestia's integration tests: builds the `hestia` binary once, starts a
//! bootstrap node and nodes as separate processes on loopback, runs client commands, kills and
//! restarts nodes, and scans directories for plaintext. Every wait is bounded.

pub mod push_service;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound on waiting for a process to start listening or a state to be reached.
pub const WAIT: Duration = Duration::from_secs(45);

static HESTIA_BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `hestia` binary, built (or found up to date) once per test process.
pub fn hestia_bin() -> &'static Path {
    HESTIA_BIN.get_or_init(|| built_bin("hestia-cli", "hestia"))
}

/// Makes the harness run `exe` as `hestia` instead of building it: for callers that are the
/// binary themselves (the benchmarks). No effect once the harness has started a process.
pub fn use_hestia_bin(exe: PathBuf) {
    let _ = HESTIA_BIN.set(exe);
}

/// Builds one binary of a workspace package (a no-op when up to date) and returns its path.
pub fn built_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building {bin} failed");
    // target/<profile>/deps/<test binary> → target/<profile>/<bin>
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "no {bin} binary at {}", path.display());
    path
}

/// Runs `hestia` with these arguments to completion (no standard input).
pub fn hestia(args: &[&str]) -> Output {
    Command::new(hestia_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running hestia")
}

/// How to start one `hestia` process (a node, a bootstrap node): the one place that knows how,
/// for the tests, the demo, the benchmarks and `sim run --real`. Its output goes to a log file;
/// it records its listen addresses in `listen.addr` in its directory, which is how a caller
/// learns it is up ([`Proc::listening`], [`Proc::wait_listening`]).
pub struct Launch {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    dir: PathBuf,
    log: PathBuf,
    rust_log: String,
    namespace: Option<String>,
    die_with_thread: bool,
}

impl Launch {
    /// `exe` with its state in `dir`, logging to `dir/process.log` at `info,libp2p=warn`.
    pub fn new(exe: &Path, dir: &Path) -> Launch {
        Launch {
            exe: exe.to_path_buf(),
            args: Vec::new(),
            dir: dir.to_path_buf(),
            log: dir.join("process.log"),
            rust_log: "info,libp2p=warn".into(),
            namespace: None,
            die_with_thread: false,
        }
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Launch {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Appends the process's output to `path` instead.
    pub fn log(mut self, path: &Path) -> Launch {
        self.log = path.to_path_buf();
        self
    }

    /// The process's `RUST_LOG`.
    pub fn rust_log(mut self, filter: &str) -> Launch {
        self.rust_log = filter.into();
        self
    }

    /// Runs it inside the network namespace `ns` (`ip netns exec`, which execs it in place).
    pub fn in_namespace(mut self, ns: &str) -> Launch {
        self.namespace = Some(ns.into());
        self
    }

    /// The process dies when the thread that started it ends, even when this whole process is
    /// SIGKILLed and no Drop runs: a parent-death signal, asked for in the child before exec.
    /// Start it from a thread that lives as long as it should (a runtime worker, not a
    /// blocking-pool thread, which ends when idle).
    pub fn die_with_this_thread(mut self) -> Launch {
        self.die_with_thread = true;
        self
    }

    /// Starts the process (a stale `listen.addr` from a previous start removed first); it is
    /// not yet listening.
    pub fn spawn(&self) -> std::io::Result<Proc> {
        std::fs::create_dir_all(&self.dir)?;
        let _ = std::fs::remove_file(self.dir.join("listen.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.die_with_thread {
            use std::os::unix::process::CommandExt;
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: between fork and exec only async-signal-safe calls are made (prctl,
            // getppid, _exit), touching no memory of the parent's. If the parent is already
            // gone, the child leaves at once.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        Ok(Proc {
            child: cmd.spawn()?,
            dir: self.dir.clone(),
            log: self.log.clone(),
            addr: String::new(),
        })
    }
}

/// Why a started process is not listening.
#[derive(Debug)]
pub enum NotListening {
    /// It exited first; the end of its log.
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    TimedOut {
        dir: PathBuf,
        log: PathBuf,
    },
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotListening::Exited { status, log, tail } => write!(
                f,
                "it exited with {status} before listening; its log ({}) ends:\n{tail}",
                log.display()
            ),
            NotListening::TimedOut { dir, log } => write!(
                f,
                "{} did not start listening; its log: {}",
                dir.display(),
                log.display()
            ),
        }
    }
}

impl std::error::Error for NotListening {}

/// A running `hestia` process; killed when dropped.
pub struct Proc {
    child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Its TCP listen address (with `/p2p/<peer id>`), once known.
    pub addr: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its TCP listen address if it has recorded one (and remembers it in `addr`), without
    /// waiting; an error if it has exited.
    pub fn listening(&mut self) -> Result<Option<String>, NotListening> {
        if let Ok(t) = std::fs::read_to_string(self.dir.join("listen.addr"))
            && let Some(l) = t.lines().find(|l| l.contains("/tcp/"))
        {
            self.addr = l.to_string();
            return Ok(Some(self.addr.clone()));
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let from = log.len().saturating_sub(4000);
            let from = (from..log.len())
                .find(|i| log.is_char_boundary(*i))
                .unwrap_or(0);
            return Err(NotListening::Exited {
                status,
                log: self.log.clone(),
                tail: log[from..].to_string(),
            });
        }
        Ok(None)
    }

    /// Waits at most `within` for [`Proc::listening`].
    pub fn wait_listening(&mut self, within: Duration) -> Result<String, NotListening> {
        let start = Instant::now();
        loop {
            if let Some(a) = self.listening()? {
                return Ok(a);
            }
            if start.elapsed() > within {
                return Err(NotListening::TimedOut {
                    dir: self.dir.clone(),
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits at most `secs` for the process to exit by itself; its status and
    /// how long it took.
    pub fn terminate(mut self, secs: u64) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not signal {pid}");
        let status = wait_exit(&mut self.child, secs, "the terminated process");
        (status, started.elapsed())
    }

    /// Sends `signal` (such as `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "could not signal {pid}");
    }

    /// The QUIC address the process listens on, once it does.
    pub fn quic_addr(&self) -> String {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.dir.join("listen.addr")).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains("/quic-v1")) {
                return l.to_string();
            }
            assert!(
                start.elapsed() < WAIT,
                "{} never listened on QUIC",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> &str {
        self.addr
            .split("/tcp/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("tcp port")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, args: &[&str]) -> Proc {
    spawn_exe(hestia_bin(), dir, args)
}

/// Starts `exe` (a `hestia` binary) with `args`, logging to `dir/process.log`, and waits until
/// it records a TCP listen address in `dir`; panics if it does not (for tests and benchmarks).
pub fn spawn_exe(exe: &Path, dir: &Path, args: &[&str]) -> Proc {
    let mut p = Launch::new(exe, dir)
        .args(args)
        .spawn()
        .expect("spawning hestia");
    if let Err(e) = p.wait_listening(WAIT) {
        panic!("{}: {e}", dir.display());
    }
    p
}

/// A bootstrap node and `n` nodes, each its own process, in one temporary directory.
pub struct Net {
    pub tmp: tempfile::TempDir,
    pub bootstrap: Proc,
    pub nodes: Vec<Option<Proc>>,
    ports: Vec<String>,
    /// Further `hestia node run` arguments every node gets (settings under test).
    node_args: Vec<String>,
    /// Each node runs a call relay (see [`Net::start_with_call_relays`]).
    call_relays: bool,
}

impl Net {
    pub fn start(n: usize) -> Net {
        Net::start_with(n, &[])
    }

    /// [`Net::start`] with a call relay in every node: node `i`'s on 127.0.0.{11+i}, so a test
    /// can tell the relays' addresses apart (and from the devices', 127.0.0.2x).
    pub fn start_with_call_relays(n: usize) -> Net {
        Net::start_inner(n, &[], true)
    }

    /// [`Net::start`] with further `hestia node run` arguments for every node.
    pub fn start_with(n: usize, node_args: &[&str]) -> Net {
        Net::start_inner(n, node_args, false)
    }

    fn start_inner(n: usize, node_args: &[&str], call_relays: bool) -> Net {
        let tmp = tempfile::tempdir().unwrap();
        let bdir = tmp.path().join("bootstrap");
        let bootstrap = spawn(
            &bdir,
            &[
                "bootstrap",
                "run",
                "--data-dir",
                bdir.to_str().unwrap(),
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ],
        );
        let mut net = Net {
            tmp,
            bootstrap,
            nodes: Vec::new(),
            ports: Vec::new(),
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
            call_relays,
        };
        for i in 0..n {
            let p = net.spawn_node(i, "0");
            net.ports.push(p.port().to_string());
            net.nodes.push(Some(p));
        }
        net
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("node{i}"))
    }

    fn spawn_node(&self, i: usize, port: &str) -> Proc {
        let dir = self.node_dir(i);
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        // QUIC too, on a fresh port each start; `addr` is always the TCP one.
        let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
        let mut args = vec![
            "node",
            "run",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
            "--listen",
            quic,
            "--bootstrap",
            &self.bootstrap.addr,
        ];
        args.extend(self.node_args.iter().map(String::as_str));
        let relay = format!("127.0.0.{}:0", 11 + i);
        if self.call_relays {
            args.extend(["--turn-listen", &relay, "--turn-allow-loopback"]);
        }
        spawn(&dir, &args)
    }

    pub fn node_addr(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .expect("node is running")
            .addr
            .clone()
    }

    pub fn node_peer(&self, i: usize) -> String {
        self.node_addr(i).rsplit('/').next().unwrap().to_string()
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("node is running").kill9();
    }

    /// Stops node `i` with SIGTERM; its exit status and how long it took.
    pub fn terminate(&mut self, i: usize, secs: u64) -> (std::process::ExitStatus, Duration) {
        self.nodes[i]
            .take()
            .expect("node is running")
            .terminate(secs)
    }

    /// Runs `hestia node admin --data-dir <node i's> ARGS`.
    pub fn admin(&self, i: usize, args: &[&str]) -> Output {
        let dir = self.node_dir(i);
        let dir = dir.to_str().expect("temporary paths are UTF-8");
        hestia(&[&["node", "admin", "--data-dir", dir], args].concat())
    }

    /// [`Net::admin`] that must succeed; its standard output.
    pub fn admin_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.admin(i, args);
        assert!(
            out.status.success(),
            "hestia node admin {args:?} on node {i} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restarts node `i` on its old port, with its old data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        let p = self.spawn_node(i, &self.ports[i].clone());
        self.nodes[i] = Some(p);
    }

    /// Decodes every entry each node's database and these users' device databases hold
    /// (`hestia_store::records::check`), read-only beside the running nodes.
    pub fn check_stores(&self, users: &[&str]) {
        for i in 0..self.nodes.len() {
            let db =
                hestia_store::node::NodeDb::open_read_only(&self.node_dir(i).join("db")).unwrap();
            let n = db.check().unwrap_or_else(|e| panic!("node {i}: {e}"));
            assert!(n > 0, "node {i} holds nothing");
        }
        for u in users {
            let db = hestia_store::client::ClientDb::open(&self.home(u), None).unwrap();
            db.check().unwrap_or_else(|e| panic!("{u}'s device: {e}"));
        }
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.tmp.path().join(format!("home-{user}"))
    }

    /// Runs a client command as `user`.
    pub fn run(&self, user: &str, args: &[&str]) -> Output {
        let home = self.home(user);
        hestia(
            &[
                &["--home", home.to_str().expect("temporary paths are UTF-8")],
                args,
            ]
            .concat(),
        )
    }

    /// Runs a client command as `user` with these environment variables set.
    pub fn run_env(&self, user: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(hestia_bin())
            .arg("--home")
            .arg(self.home(user))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("running hestia")
    }

    /// Starts a long-running client command as `user` (such as `inbox --follow`); its standard
    /// output goes to the returned file. Kill the child when done.
    pub fn spawn_client(&self, user: &str, args: &[&str]) -> (Child, PathBuf) {
        let out = self
            .tmp
            .path()
            .join(format!("{user}-{}.out", args.join("-").replace('/', "_")));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(hestia_bin())
            .arg("--home")
            .arg(self.home(user))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawning hestia");
        (child, out)
    }

    /// Runs a client command that must succeed; returns its standard output.
    pub fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.run(user, args);
        assert!(
            out.status.success(),
            "hestia {args:?} as {user} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `a` on node `i` and `b` on node `j`, each the other's contact.
    pub fn contacts_both_ways(&self, a: &str, i: usize, b: &str, j: usize) {
        let (a_addr, b_addr) = (self.account(a, i), self.account(b, j));
        self.ok(a, &["contact", "add", b, &b_addr]);
        self.ok(b, &["contact", "add", a, &a_addr]);
    }

    /// Creates `user` on node `i`; returns their address.
    pub fn account(&self, user: &str, i: usize) -> String {
        self.account_named(user, user, i)
    }

    /// Creates an account going by `name` on node `i`, on the device whose home is `home`.
    pub fn account_named(&self, home: &str, name: &str, i: usize) -> String {
        let node = self.node_addr(i);
        self.ok(
            home,
            &["account", "create", "--node", &node, "--name", name],
        );
        self.ok(home, &["account", "show", "--address"])
            .trim()
            .to_string()
    }

    /// Waits for `reader`'s device receipt to reach `sender`: sets the reader's receipt delay to
    /// its shortest (a batch leaves 0.5-1 s after the message), then lets the reader's device
    /// run (receipts leave only while it runs) until the sender's status shows it.
    pub fn until_receipt(&self, reader: &str, sender: &str) {
        self.ok(reader, &["account", "receipts", "on", "--max-delay", "1"]);
        let start = Instant::now();
        let mut seen = String::new();
        while start.elapsed() < WAIT {
            self.ok(reader, &["inbox"]);
            seen = self.ok(sender, &["status"]);
            if seen.contains("delivered to their device") {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{reader}'s receipt never reached {sender}; last status:\n{seen}");
    }

    /// Repeats `args` as `user` until its output contains `needle`; returns that output.
    pub fn until(&self, user: &str, args: &[&str], needle: &str) -> String {
        let start = Instant::now();
        let mut seen = String::new();
        while start.elapsed() < WAIT {
            let out = self.run(user, args);
            seen = String::from_utf8_lossy(&out.stdout).into_owned();
            if seen.contains(needle) {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("`hestia {args:?}` as {user} never printed {needle:?}; last output:\n{seen}");
    }
}

/// Waits for `child` to exit by itself, for at most `secs`; its exit status.
pub fn wait_exit(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM` in /proc).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Fills the node database in `dir` (a node's data directory, created if needed) with `users`
/// accounts, each holding `per_user` envelopes of `body` bytes: a node keeping mail for
/// offline users. Written through the store in large synced batches, as fast as it allows.
/// Returns the envelopes written per second.
pub fn fill_mailboxes(dir: &Path, users: usize, per_user: usize, body: usize) -> f64 {
    use hestia_protocol::envelope::{Envelope, EnvelopeId};
    use hestia_protocol::identity::UserId;
    use hestia_store::node::{AccountRecord, NodeDb, NodeStore, NodeWrite};
    let mut db = NodeDb::open(&dir.join("db")).expect("opening the node database");
    let now = 1_900_000_000_000; // far in the future: nothing expires during a run
    let start = Instant::now();
    let mut writes = Vec::new();
    let mut n = 0u64;
    for u in 0..users {
        let mut user = [0u8; 32];
        user[..8].copy_from_slice(&(u as u64).to_be_bytes());
        let user = UserId(user);
        writes.push(NodeWrite::PutAccount(user, AccountRecord { created_at: 1 }));
        for _ in 0..per_user {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            n += 1;
            writes.push(NodeWrite::PutMailbox(Envelope {
                version: 1,
                id: EnvelopeId(id),
                recipient: user,
                expires_at: now,
                body: vec![(n % 251) as u8; body],
            }));
            if writes.len() >= 4096 {
                db.apply(&writes).expect("writing");
                writes.clear();
            }
        }
    }
    db.apply(&writes).expect("writing");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    // Closed as a node closes on shutdown: a node started on it then holds only its own state,
    // not however much of the log the background flushes had not reached (which varies with
    // the machine's load).
    db.flush().expect("flushing");
    rate
}

/// The `hestia-safety:1:…` code in the output of `hestia contact verify`.
pub fn safety_code(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("hestia-safety:1:"))
        })
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no safety code in {out}"))
}

/// Waits until the file at `path` contains `needle`; returns its text.
pub fn wait_for_text(path: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} never contained {needle:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(p);
            }
        }
    }
    hits
}
