//! `hestia demo`: the whole story in one process on loopback. A bootstrap node and two nodes
//! (real libp2p over TCP, real RocksDB in a temporary directory), two users. Alice messages Bob
//! while Bob is offline; Bob comes online and reads it; then each operator's storage is shown,
//! and every node file is scanned for the message text.

use crate::inspect;
use anyhow::{Context, Result, bail};
use hestia_bootstrap::Bootstrap;
use hestia_node::client::{Device, InboxEvent};
use hestia_node::driver::{Node, NodeConfig};
use hestia_store::client::MessageState;
use hestia_tests::files_containing;
use libp2p::Multiaddr;
use std::path::Path;
use std::time::Duration;

const TEXT: &str = "Meet me at the old lighthouse at nine. Bring the blue notebook.";
/// Bound on every wait in the demo, so it never hangs.
/// Written all through the demo's file: it must be on no node's disk either.
const FILE_MARKER: &[u8] = b"PHOTO-PLAINTEXT-7d2e ";
/// The demo's file: 1 MiB, four chunks.
const FILE_BYTES: usize = 1 << 20;
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The demo's longest receipt delay: long enough to show, short enough to wait for.
const DEMO_RECEIPT_DELAY_MS: u64 = 2_000;

fn step(s: &str) {
    println!("\n== {s}");
}

/// Waits for a node to record its listen address.
async fn listen_addr(dir: &Path) -> Result<Multiaddr> {
    let path = dir.join("listen.addr");
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(line) = text.lines().next()
        {
            return line.parse().context("recorded listen address");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} never started listening", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node started in this process on loopback (the demo, and the relay benchmark, which
/// measures the relay without process boundaries).
pub struct LocalNode {
    pub peer: String,
    pub addr: Multiaddr,
    pub task: tokio::task::JoinHandle<Result<(), hestia_node::driver::NodeError>>,
}

/// Starts a node with its data in `dir`, listening on a free loopback port, which runs until
/// `stop` turns true.
pub async fn start_local_node(
    dir: &Path,
    bootstrap: Vec<Multiaddr>,
    limits: hestia_node::relay::Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<LocalNode> {
    let node = Node::start(NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap,
        registration: hestia_node::relay::Registration::Open,
        limits,
        metrics_listen: None,
        backup_dir: None,
        backups_keep: hestia_node::driver::BACKUPS_KEPT,
        db: Default::default(),
        log_control: None,
        limit_loopback: false,
        crash_after_sends: None,
        push: hestia_node::driver::PushSettings::default(),
        // Each node relays its own users' calls, on loopback (the demo's calls stay here).
        turn_listen: Some("127.0.0.1:0".parse()?),
        turn: hestia_node::turn::server::TurnSettings {
            allow_loopback_peers: true,
            ..Default::default()
        },
    })?;
    let peer = node.peer_id().to_string();
    let task = tokio::spawn(node.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(LocalNode {
        peer,
        addr: listen_addr(dir).await?,
        task,
    })
}

pub async fn run() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let lo: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    step("Starting a bootstrap node and two nodes on loopback");
    let bdir = root.join("bootstrap");
    let b = Bootstrap::start(&bdir, std::slice::from_ref(&lo))?;
    let bh = tokio::spawn(b.run(until_stop(stopped.clone())));
    let baddr = listen_addr(&bdir).await?;
    println!("bootstrap: {baddr}");
    let mut node_dirs = Vec::new();
    let mut node_addrs = Vec::new();
    let mut handles = Vec::new();
    for i in 1..=2 {
        let dir = root.join(format!("node{i}"));
        let node = start_local_node(
            &dir,
            vec![baddr.clone()],
            Default::default(),
            stopped.clone(),
        )
        .await?;
        println!("node {i}: {}", node.addr);
        handles.push(node.task);
        node_dirs.push(dir);
        node_addrs.push(node.addr);
    }

    step(
        "Alice creates an account on node 1, her device encrypted at rest under a passphrase; \
         Bob on node 2 (each device publishes prekeys)",
    );
    let mut alice = Device::create_with(
        &root.join("alice"),
        "alice",
        &node_addrs[0],
        Some(b"demo passphrase, not a good one"),
        None,
    )
    .await?;
    let mut bob = Device::create(&root.join("bob"), "bob", &node_addrs[1]).await?;
    println!("alice: {}", alice.address());
    println!("bob:   {}", bob.address());

    step("Alice adds Bob from his contact card (his key is pinned: trust on first use)");
    let card = bob.address().card("bob");
    print!("{card}");
    alice.add_contact(None, &card)?;

    step(
        "Bob is offline. Alice fetches his prekeys through the federation, starts a session \
         (X3DH, Double Ratchet) and sends him a message, sealed so his node never learns the sender",
    );
    let mut ac = alice.connect().await?;
    let sent = alice.send(&mut ac, "bob", TEXT).await?;
    println!("alice -> bob: {TEXT:?}  (envelope {})", sent.envelope_id);
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let all = alice.refresh_status(&mut ac).await?;
        let state = all
            .iter()
            .find(|m| m.envelope_id == sent.envelope_id)
            .map(|m| m.state.clone());
        if state == Some(MessageState::DeliveredToNode) {
            println!("state: delivered to Bob's node (node 2 holds it until Bob connects)");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("message not delivered to node 2 in time (state {state:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("what node 2 holds for Bob now:");
    print!("{}", inspect::render(&inspect::snapshot(&node_dirs[1])?));

    step("Bob comes online and reads his inbox");
    // A short receipt delay for the demo; the default is 30-60 s.
    bob.set_receipts_policy(hestia_node::client::receipts::Policy {
        enabled: true,
        max_delay_ms: DEMO_RECEIPT_DELAY_MS,
    })?;
    let mut bc = bob.connect().await?;
    for ev in bob.sync(&mut bc, 0).await? {
        match ev {
            InboxEvent::NewContact { contact, message } => println!(
                "bob's inbox: {} says {:?} (a new contact: key {} pinned on first use, unverified)",
                contact.name,
                message.text,
                contact.address.user.fingerprint()
            ),
            InboxEvent::Message(m) => {
                println!("bob's inbox: {} says {:?}", m.peer_name, m.text)
            }
            other => println!("bob's inbox: {other:?}"),
        }
    }

    step(
        "Bob's device owes Alice an end-to-end receipt. It waits a random delay (here 1-2 s) so \
         his node cannot pair it with her message by timing, then goes out; Alice sees it",
    );
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    'receipt: loop {
        bob.sync(&mut bc, 500).await?;
        for ev in alice.sync(&mut ac, 500).await? {
            if let InboxEvent::Delivered(ids) = ev
                && ids.contains(&sent.envelope_id)
            {
                println!("state: delivered to Bob's device");
                break 'receipt;
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no delivery receipt in time");
        }
    }

    step(
        "Alice sends Bob a file. Her device encrypts it in 256 KiB chunks with a fresh key and \
         uploads them to her node; the key and the file's name travel only inside the message. \
         Bob's node fetches the chunks from hers for him; his device decrypts and verifies them",
    );
    let photo = root.join("lighthouse.jpg");
    let bytes: Vec<u8> = FILE_MARKER
        .iter()
        .copied()
        .cycle()
        .take(FILE_BYTES)
        .collect();
    std::fs::write(&photo, &bytes)?;
    let m = alice
        .send_file(&mut ac, "bob", &photo, "the view from here", &mut |_, _| {})
        .await?;
    println!(
        "alice -> bob: lighthouse.jpg (1 MiB), message {}",
        m.envelope_id
    );
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while bob.file(&m.envelope_id)?.is_none() {
        bob.sync(&mut bc, 500).await?;
        if tokio::time::Instant::now() > deadline {
            bail!("Bob never got the file's message");
        }
    }
    let downloads = root.join("bob-downloads");
    std::fs::create_dir_all(&downloads)?;
    let got = bob
        .fetch_file(&mut bc, &m.envelope_id, Some(&downloads), &mut |_, _| {})
        .await?;
    if std::fs::read(&got)? != bytes {
        bail!("the file Bob got is not the one Alice sent");
    }
    println!(
        "bob: {} verified, identical; Alice's node has deleted the chunks",
        got.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );

    step(
        "Alice calls Bob. The offer, answer and candidates travel inside their sessions; each \
         device sends its media (Opus over DTLS-SRTP) only to its own node's relay, so neither \
         learns the other's address. Alice sends a 440 Hz tone, Bob 1000 Hz, for two seconds",
    );
    talk(&mut alice, &mut ac, &mut bob, &mut bc).await?;

    step("Alice and Bob can compare one safety number out of band (`hestia contact verify`)");
    println!("{}", alice.safety_number("bob")?);

    step("What each node operator stored (sizes, recipient ids, timestamps: never the text)");
    for (i, dir) in node_dirs.iter().enumerate() {
        println!("node {}:", i + 1);
        print!("{}", inspect::render(&inspect::snapshot(dir)?));
    }

    step("Scanning every file of both nodes for the message text, the file's bytes and its name");
    for (i, dir) in node_dirs.iter().enumerate() {
        for needle in [TEXT.as_bytes(), FILE_MARKER, b"lighthouse.jpg"] {
            let hits = files_containing(dir, needle);
            if !hits.is_empty() {
                bail!("node {} stored plaintext in {:?}", i + 1, hits);
            }
        }
        println!("node {}: none of them in any file", i + 1);
    }
    let in_bob = files_containing(&root.join("bob"), TEXT.as_bytes());
    println!(
        "Bob's own device history: {}",
        if in_bob.is_empty() {
            "not found (!)"
        } else {
            "found (history lives on the device, in clear: Bob set no passphrase)"
        }
    );
    let in_alice = files_containing(&root.join("alice"), TEXT.as_bytes());
    if !in_alice.is_empty() {
        bail!("Alice's encrypted device holds the text in clear: {in_alice:?}");
    }
    println!(
        "Alice's device: not found (it is encrypted at rest: {} messages readable with her \
         passphrase only)",
        alice.history()?.len()
    );

    let _ = stop.send(true);
    for h in handles {
        h.await.context("node task")??;
    }
    bh.await.context("bootstrap task")?;
    println!("\ndemo finished");
    Ok(())
}

/// A two-second call from Alice to Bob, each hearing the other's tone.
async fn talk(
    alice: &mut Device,
    ac: &mut hestia_node::client::Connection,
    bob: &mut Device,
    bc: &mut hestia_node::client::Connection,
) -> Result<()> {
    use hestia_node::client::call::audio::{Meter, Tone};
    use hestia_node::client::call::udp::Command;
    use hestia_node::client::calls::{CallProgress, CallSetup, Media};
    use std::sync::{Arc, Mutex};
    let heard_by = |_: &str| Arc::new(Mutex::new(Meter::default()));
    let (alice_ear, bob_ear) = (heard_by("alice"), heard_by("bob"));
    let setup = |hz: f64, ear: &Arc<Mutex<Meter>>, max: Option<Duration>| CallSetup {
        source: Box::new(Tone::new(hz)),
        sink: Box::new(ear.clone()),
        media: Media {
            max,
            ..Default::default()
        },
    };
    let (_alice_tx, mut alice_controls) = tokio::sync::mpsc::channel(4);
    let (bob_tx, mut bob_controls) = tokio::sync::mpsc::channel(4);
    let mut alice_saw = Vec::new();
    let mut on_alice = |p: CallProgress| {
        if let CallProgress::Connected { remote } = &p {
            alice_saw = remote.clone();
        }
    };
    let mut on_bob = |p: CallProgress| {
        if let CallProgress::Incoming { from } = &p {
            println!("bob's device: {from} is calling; answering");
            let _ = bob_tx.try_send(Command::Answer);
        }
    };
    let (a, b) = tokio::join!(
        alice.call(
            ac,
            "bob",
            setup(440.0, &alice_ear, Some(Duration::from_secs(2))),
            &mut alice_controls,
            &mut on_alice,
        ),
        bob.take_call(
            bc,
            setup(1000.0, &bob_ear, None),
            Duration::from_secs(20),
            &mut bob_controls,
            &mut on_bob,
        ),
    );
    let (_, talked) = a?;
    if b?.is_none() {
        bail!("Bob's device never rang");
    }
    let (a, b) = (
        alice_ear.lock().expect("meter").clone(),
        bob_ear.lock().expect("meter").clone(),
    );
    println!(
        "talked {:.1} s: Bob heard {:.0} Hz, Alice heard {:.0} Hz",
        talked.as_secs_f64(),
        b.frequency_hz(),
        a.frequency_hz()
    );
    for c in alice_saw {
        println!("the only address Alice's device was given for Bob: {c}");
    }
    println!("both histories now hold the call (`hestia inbox --all`: \"call to bob: 0:02\")");
    Ok(())
}
