//! `hestia bench --only chat`: one person's device to another's, end to end, beside Prosody.
//!
//! Hestia: two real devices (the `Device` library: X3DH, Double Ratchet with header
//! encryption, sealed sender, each device's own RocksDB history) on the same node and on two
//! federated nodes (libp2p over loopback, in this process). The sender sends one message at a
//! time as `hestia send` does: the message is committed on the device, sealed, and handed to
//! the home node, which acknowledges once it is durable; the receiver holds a long poll open
//! (as `hestia inbox --follow` does), decrypts, commits and acknowledges. Flat out, and paced
//! at fixed rates; latency is from the moment a message was due to be sent (so a sender that
//! falls behind counts its lateness: no coordinated omission) to the moment the receiving
//! device has it decrypted and stored.
//!
//! Prosody (the Debian package) relays the same-sized messages between two accounts on
//! 127.0.0.1 through a minimal raw XMPP client written here (a client library would measure
//! itself). Prosody does not sync anything to disk before it forwards a message to an online
//! recipient, so Hestia is measured twice: with durable acknowledgements (every node and
//! device write synced, the default) and without (writes reach the operating system's cache
//! only, a benchmark-only switch).

use crate::bench::{Cluster, cluster, percentile};
use anyhow::{Context, Result, bail};
use hestia_node::client::{Device, InboxEvent, receipts};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Characters of text per message: a typical chat line (Hestia pads it to the 256 B bucket).
const TEXT_BYTES: usize = 64;
/// No run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Offered load: as fast as one sender goes, or a fixed rate.
#[derive(Clone, Copy)]
enum Rate {
    Flat,
    Paced(u32),
}

impl Rate {
    fn label(self) -> String {
        match self {
            Rate::Flat => "flat out".into(),
            Rate::Paced(r) => format!("{r}/s"),
        }
    }
}

struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn text(i: usize) -> String {
    let mut t = format!("{i:010}:");
    while t.len() < TEXT_BYTES {
        t.push('x');
    }
    t
}

fn index_of(text: &str) -> Option<usize> {
    text.split(':').next()?.parse().ok()
}

/// When each message arrived, by index; the sending side waits on it without polling.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<usize, Instant>>,
    more: tokio::sync::Notify,
}

impl Arrivals {
    async fn record(&self, i: usize) -> usize {
        let mut at = self.at.lock().await;
        at.insert(i, Instant::now());
        self.more.notify_one();
        at.len()
    }

    /// Waits until `n` have arrived or `deadline` passes; returns how many did.
    async fn wait_for(&self, n: usize, deadline: Instant) -> usize {
        loop {
            let got = self.at.lock().await.len();
            if got >= n {
                return got;
            }
            let wake = tokio::time::timeout_at(deadline.into(), self.more.notified()).await;
            if wake.is_err() {
                return self.at.lock().await.len();
            }
        }
    }
}

/// One side that sends message `i` and returns when its server has taken it.
trait Sender {
    async fn send(&mut self, i: usize) -> Result<()>;
}

/// Sends `n` messages at `rate` through `sender` while `received` fills; returns the figures
/// once all `n` are in `received` (index → arrival).
async fn measure(
    n: usize,
    rate: Rate,
    received: Arc<Arrivals>,
    sender: &mut impl Sender,
) -> Result<Figures> {
    let start = Instant::now();
    let mut due = Vec::with_capacity(n);
    for i in 0..n {
        let at = match rate {
            Rate::Flat => Instant::now(),
            Rate::Paced(r) => {
                let at = start + Duration::from_secs_f64(i as f64 / r as f64);
                tokio::time::sleep_until(at.into()).await;
                at
            }
        };
        due.push(at);
        sender.send(i).await?;
        if start.elapsed() > RUN_LIMIT {
            bail!("sent {i} of {n} in {RUN_LIMIT:?}");
        }
    }
    let arrived = received.wait_for(n, start + RUN_LIMIT).await;
    if arrived < n {
        bail!("{arrived} of {n} arrived in {RUN_LIMIT:?}");
    }
    let got = received.at.lock().await;
    let mut lat: Vec<f64> = (0..n)
        .map(|i| got[&i].saturating_duration_since(due[i]).as_secs_f64() * 1e3)
        .collect();
    let last = got.values().max().copied().unwrap_or(start);
    lat.sort_by(f64::total_cmp);
    Ok(Figures {
        per_sec: n as f64 / last.duration_since(start).as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    })
}

/// Two devices, Alice's on node 0 and Bob's on node 0 or 1, contacts of each other with a
/// session set up both ways (the first message of each way already sent).
async fn devices(c: &Cluster, dir: &Path, across: bool) -> Result<(Device, Device)> {
    let mut alice = Device::create(&dir.join("alice"), "alice", &c.addrs[0]).await?;
    let mut bob = Device::create(&dir.join("bob"), "bob", &c.addrs[usize::from(across)]).await?;
    let off = receipts::Policy {
        enabled: false,
        ..Default::default()
    };
    alice.set_receipts_policy(off)?;
    bob.set_receipts_policy(off)?;
    alice.add_contact(Some("bob"), &bob.address().to_string())?;
    bob.add_contact(Some("alice"), &alice.address().to_string())?;
    let mut ac = alice.connect().await?;
    let mut bc = bob.connect().await?;
    alice.send(&mut ac, "bob", "hello").await?;
    wait_for(&mut bob, &mut bc, 1).await?;
    bob.send(&mut bc, "alice", "hello").await?;
    wait_for(&mut alice, &mut ac, 1).await?;
    Ok((alice, bob))
}

async fn wait_for(
    d: &mut Device,
    conn: &mut hestia_node::client::Connection,
    n: usize,
) -> Result<()> {
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        got += d
            .sync(conn, 1_000)
            .await?
            .iter()
            .filter(|e| matches!(e, InboxEvent::Message(_)))
            .count();
        if start.elapsed() > RUN_LIMIT {
            bail!("the warm-up message did not arrive");
        }
    }
    Ok(())
}

/// One Hestia run: Bob's device follows its inbox while Alice's sends, both in this task (a
/// device's futures stay on the thread that drives them).
async fn hestia_run(alice: &mut Device, bob: &mut Device, n: usize, rate: Rate) -> Result<Figures> {
    let received = Arc::new(Arrivals::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rx = received.clone();
    let receive = async move {
        let mut conn = bob.connect().await?;
        while !*stop.borrow() {
            for e in bob.sync(&mut conn, 200).await? {
                if let InboxEvent::Message(m) = e
                    && let Some(i) = index_of(&m.text)
                {
                    rx.record(i).await;
                }
            }
        }
        anyhow::Ok(())
    };
    let send = async move {
        let conn = alice.connect().await?;
        let mut sender = HestiaSender {
            device: alice,
            conn,
        };
        let figures = measure(n, rate, received, &mut sender).await;
        let _ = stop_tx.send(true);
        figures
    };
    let (received, figures) = tokio::join!(receive, send);
    received?;
    figures
}

struct HestiaSender<'a> {
    device: &'a mut Device,
    conn: hestia_node::client::Connection,
}

impl Sender for HestiaSender<'_> {
    async fn send(&mut self, i: usize) -> Result<()> {
        self.device.send(&mut self.conn, "bob", &text(i)).await?;
        Ok(())
    }
}

/// A Prosody process of our own on a free loopback port, with accounts alice and bob; killed
/// when dropped.
struct Prosody {
    child: tokio::process::Child,
    port: u16,
}

impl Prosody {
    const BIN: &str = "/usr/bin/prosody";
    const CTL: &str = "/usr/bin/prosodyctl";

    async fn start(dir: &Path) -> Result<Prosody> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.display();
        // Plain c2s on loopback only; no s2s, HTTP, offline storage or stream management:
        // two online accounts and the router between them.
        let config = format!(
            r#"run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ warn = "{d}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "posix" }}
modules_disabled = {{ "s2s"; "offline"; "c2s_csi"; "carbons"; "pep"; "smacks"; "bookmarks"; "vcard_legacy" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
VirtualHost "localhost"
"#
        );
        let cfg = dir.join("prosody.cfg.lua");
        std::fs::write(&cfg, config)?;
        for user in ["alice", "bob"] {
            let ok = std::process::Command::new(Self::CTL)
                .arg("--config")
                .arg(&cfg)
                .args(["register", user, "localhost", "pw"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running prosodyctl")?
                .success();
            if !ok {
                bail!("prosodyctl register {user} failed");
            }
        }
        let child = tokio::process::Command::new(Self::BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting prosody")?;
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if start.elapsed() > Duration::from_secs(15) {
                bail!("prosody did not listen on 127.0.0.1:{port} in 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Prosody { child, port })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Just enough XMPP for this benchmark: PLAIN login without TLS, resource binding, presence,
/// chat messages out and `<body>` elements in.
struct Xmpp {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

const STREAM_HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

impl Xmpp {
    async fn login(port: u16, user: &str) -> Result<Xmpp> {
        use base64::Engine;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut x = Xmpp {
            stream,
            buf: Vec::new(),
        };
        x.write(STREAM_HEADER).await?;
        x.read_until("</stream:features>").await?;
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
        x.write(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
        ))
        .await?;
        x.read_until("<success").await?;
        x.read_until(">").await?;
        x.write(STREAM_HEADER).await?;
        x.read_until("</stream:features>").await?;
        x.write(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>bench</resource></bind></iq>",
        )
        .await?;
        x.read_until("</iq>").await?;
        x.write("<presence/>").await?;
        Ok(x)
    }

    async fn write(&mut self, s: &str) -> Result<()> {
        Ok(self.stream.write_all(s.as_bytes()).await?)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .context("prosody did not answer in 10 s")??;
        if n == 0 {
            bail!(
                "prosody closed the stream: {}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_until(&mut self, pat: &str) -> Result<()> {
        loop {
            if let Some(at) = find(&self.buf, pat.as_bytes()) {
                self.buf.drain(..at + pat.len());
                return Ok(());
            }
            if self.buf.contains(&b'<') && find(&self.buf, b"<failure").is_some() {
                bail!("prosody refused: {}", String::from_utf8_lossy(&self.buf));
            }
            self.fill().await?;
        }
    }

    /// Reads what arrives next and returns the texts of the complete bodies in it.
    async fn bodies(&mut self) -> Result<Vec<String>> {
        self.fill().await?;
        let mut out = Vec::new();
        while let Some(open) = find(&self.buf, b"<body>") {
            let Some(len) = find(&self.buf[open..], b"</body>") else {
                break;
            };
            out.push(String::from_utf8_lossy(&self.buf[open + 6..open + len]).into_owned());
            self.buf.drain(..open + len + 7);
        }
        Ok(out)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct XmppSender(Xmpp);

impl Sender for XmppSender {
    async fn send(&mut self, i: usize) -> Result<()> {
        // No acknowledgement in plain XMPP: sent once it is in the socket.
        self.0
            .write(&format!(
                "<message to='bob@localhost/bench' type='chat' id='m{i}'><body>{}</body></message>",
                text(i)
            ))
            .await
    }
}

async fn prosody_run(port: u16, n: usize, rate: Rate) -> Result<Figures> {
    let mut bob = Xmpp::login(port, "bob").await?;
    let alice = Xmpp::login(port, "alice").await?;
    let received = Arc::new(Arrivals::default());
    let rx = received.clone();
    let receiver = tokio::spawn(async move {
        loop {
            for b in bob.bodies().await? {
                if let Some(i) = index_of(&b)
                    && rx.record(i).await >= n
                {
                    return anyhow::Ok(());
                }
            }
        }
    });
    let mut sender = XmppSender(alice);
    let figures = measure(n, rate, received, &mut sender).await;
    receiver.abort();
    figures
}

/// Messages in one run: `messages`, or two seconds' worth at a paced rate if that is more.
fn count(rate: Rate, messages: usize) -> usize {
    match rate {
        Rate::Flat => messages,
        Rate::Paced(r) => messages.max(2 * r as usize),
    }
}

pub async fn run(messages: usize) -> Result<()> {
    let rates = [Rate::Flat, Rate::Paced(500), Rate::Paced(2000)];
    let tmp = tempfile::tempdir()?;
    let c = cluster().await?;
    // (path, acknowledgement, rate, figures)
    let mut rows: Vec<(String, &str, Rate, Figures)> = Vec::new();
    for durable in [true, false] {
        hestia_store::benchmark_unsynced(!durable);
        let acks = if durable { "durable" } else { "not synced" };
        for across in [false, true] {
            let path = if across {
                "Hestia, two nodes"
            } else {
                "Hestia, one node"
            };
            eprintln!("chat: {path}, {acks} acknowledgements…");
            let dir = tmp.path().join(format!("{durable}-{across}"));
            let (mut alice, mut bob) = devices(&c, &dir, across).await?;
            for rate in rates {
                let f = hestia_run(&mut alice, &mut bob, count(rate, messages), rate).await?;
                rows.push((path.into(), acks, rate, f));
            }
        }
    }
    hestia_store::benchmark_unsynced(false);
    let _ = c.stop.send(true);
    let prosody_note = if !Path::new(Prosody::BIN).exists() {
        Some(format!(
            "Prosody column skipped: {} not found (install the Debian package as root: \
             `apt-get install prosody`)",
            Prosody::BIN
        ))
    } else {
        eprintln!("chat: Prosody…");
        let p = Prosody::start(&tmp.path().join("prosody")).await?;
        let version = prosody_version();
        for rate in rates {
            let f = prosody_run(p.port, count(rate, messages), rate).await?;
            rows.push((format!("Prosody {version}"), "none (not synced)", rate, f));
        }
        p.stop().await;
        None
    };
    println!("| path | acknowledgement | offered | achieved messages/s | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (path, acks, rate, f) in &rows {
        println!(
            "| {path} | {acks} | {} | {:.0} | {:.2} ms | {:.2} ms |",
            rate.label(),
            f.per_sec,
            f.p50_ms,
            f.p99_ms
        );
    }
    if let Some(note) = prosody_note {
        println!("\n{note}");
    }
    Ok(())
}

fn prosody_version() -> String {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "prosody"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => "(version unknown)".into(),
    }
}
