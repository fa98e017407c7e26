//! `hestia bench --only calls [--calls N]`: Alice on one node calls Bob on another, every party
//! its own process (the shared harness), media relayed by both nodes. Per call: the time from
//! dialling (starting `hestia call`) to Bob's device ringing, to media flowing, and to the first
//! decoded audio frame at Alice's; the CPU each device and each relaying node spent; the frames
//! lost. Beside it, in the same run and on the same nodes, the message round trip (Alice's text
//! to Bob's device and his answer back to hers, the devices running in the bench process).

use anyhow::{Context, Result, bail};
use hestia_tests::{Net, use_hestia_bin};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Talk per call, in seconds.
const TALK_SECS: u64 = 3;

/// CPU seconds a process has used (user and system), from /proc.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn hestia(net: &Net, user: &str, args: &[&str], out: &Path) -> Result<Child> {
    let file = std::fs::File::create(out)?;
    Ok(Command::new(hestia_tests::hestia_bin())
        .arg("--home")
        .arg(net.home(user))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?)
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(evs: &'a [Value], name: &str) -> Option<&'a Value> {
    evs.iter().find(|e| e["event"] == name)
}

fn wait(child: &mut Child, what: &str, limit: Duration) -> Result<()> {
    let until = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            if !s.success() {
                bail!("{what} failed ({s})");
            }
            return Ok(());
        }
        if Instant::now() > until {
            let _ = child.kill();
            bail!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct CallRun {
    ring_ms: f64,
    connected_ms: f64,
    first_audio_ms: f64,
    lost: f64,
    alice_cpu: f64,
    bob_cpu: f64,
    node_cpu: [f64; 2],
    talked_s: f64,
}

fn one_call(net: &Net, node_pids: [u32; 2], i: usize) -> Result<CallRun> {
    let dir = net.tmp.path();
    let (a_out, b_out) = (
        dir.join(format!("a{i}.json")),
        dir.join(format!("b{i}.json")),
    );
    let max = TALK_SECS.to_string();
    let mut bob = hestia(
        net,
        "bob",
        &[
            "--json",
            "call",
            "--listen",
            "--auto-answer",
            "--audio",
            "tone:1000",
            "--wait-secs",
            "60",
        ],
        &b_out,
    )?;
    // Bob's device is waiting (its first read of the inbox went out) before Alice dials.
    std::thread::sleep(Duration::from_millis(800));
    let nodes_before = node_pids.map(cpu_of);
    let children_before = children_cpu();
    let dialled = hestia_node::driver::now_millis() as f64;
    let mut alice = hestia(
        net,
        "alice",
        &[
            "--json",
            "call",
            "bob",
            "--audio",
            "tone:440",
            "--max-secs",
            &max,
        ],
        &a_out,
    )?;
    wait(&mut alice, "alice's call", Duration::from_secs(90))?;
    let after_alice = children_cpu();
    wait(&mut bob, "bob's call", Duration::from_secs(30))?;
    let after_bob = children_cpu();
    let nodes_after = node_pids.map(cpu_of);
    let (a, b) = (events(&a_out), events(&b_out));
    let at = |evs: &[Value], name: &str| -> Result<f64> {
        event(evs, name)
            .and_then(|e| e["at"].as_f64())
            .with_context(|| format!("no {name} event in {evs:?}"))
    };
    let heard = event(&a, "heard").context("no heard summary")?;
    let ended = event(&a, "ended").context("no ended event")?;
    let talked_s = ended["talked_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let frames = heard["frames"].as_f64().unwrap_or(0.0);
    let expected = (talked_s * 50.0).max(1.0);
    Ok(CallRun {
        ring_ms: at(&b, "incoming")? - dialled,
        connected_ms: at(&a, "connected")? - dialled,
        first_audio_ms: heard["first_audio_at"].as_f64().context("no audio heard")? - dialled,
        lost: (1.0 - frames / expected).max(0.0),
        alice_cpu: after_alice - children_before,
        bob_cpu: after_bob - after_alice,
        node_cpu: [
            nodes_after[0] - nodes_before[0],
            nodes_after[1] - nodes_before[1],
        ],
        talked_s,
    })
}

/// Alice's text to Bob's device and his answer to hers, through both nodes, each device a
/// library `Device` in this process (the call's processes hold the devices otherwise): ms.
fn message_round_trip(net: &Net, i: usize) -> Result<f64> {
    use hestia_node::client::{Device, InboxEvent};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut alice = Device::open(&net.home("alice"))?;
        let mut bob = Device::open(&net.home("bob"))?;
        let (mut ac, mut bc) = (alice.connect().await?, bob.connect().await?);
        let (ping, pong) = (format!("ping-{i}"), format!("pong-{i}"));
        async fn until_text(
            d: &mut Device,
            c: &mut hestia_node::client::Connection,
            text: &str,
        ) -> Result<()> {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                for ev in d.sync(c, 1_000).await? {
                    if let InboxEvent::Message(m) = ev
                        && m.text == text
                    {
                        return Ok(());
                    }
                }
            }
            bail!("{text} never arrived")
        }
        // Sessions exist and the inboxes are empty before the clock starts.
        until_sync(&mut alice, &mut ac).await?;
        until_sync(&mut bob, &mut bc).await?;
        let t = Instant::now();
        alice.send(&mut ac, "bob", &ping).await?;
        until_text(&mut bob, &mut bc, &ping).await?;
        bob.send(&mut bc, "alice", &pong).await?;
        until_text(&mut alice, &mut ac, &pong).await?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    })
}

async fn until_sync(
    d: &mut hestia_node::client::Device,
    c: &mut hestia_node::client::Connection,
) -> Result<()> {
    d.sync(c, 0).await?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(calls: usize) -> Result<()> {
    use_hestia_bin(std::env::current_exe()?);
    let net = Net::start_with_call_relays(2);
    net.contacts_both_ways("alice", 0, "bob", 1);
    let pids: Vec<u32> = net
        .nodes
        .iter()
        .map(|n| n.as_ref().expect("running").pid())
        .collect();
    let node_pids = [pids[0], pids[1]];
    eprintln!("calls: {calls} calls of {TALK_SECS} s across two nodes, relayed by both…");
    let mut runs = Vec::new();
    let mut rtts = Vec::new();
    let mut commands = Vec::new();
    // A first exchange starts the sessions (X3DH), which the round trips then do not count.
    message_round_trip(&net, usize::MAX)?;
    for i in 0..calls {
        rtts.push(message_round_trip(&net, i)?);
        let t = Instant::now();
        net.ok("alice", &["status"]);
        commands.push(t.elapsed().as_secs_f64() * 1000.0);
        runs.push(one_call(&net, node_pids, i)?);
    }
    let col = |f: &dyn Fn(&CallRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    let rtt = median(&mut rtts);
    let command = median(&mut commands);
    let ring = col(&|r| r.ring_ms);
    let connected = col(&|r| r.connected_ms);
    let first = col(&|r| r.first_audio_ms);
    let talked = col(&|r| r.talked_s);
    let per_talk = |cpu: f64| cpu / talked.max(1e-9) * 100.0;
    println!(
        "calls ({calls} of {TALK_SECS} s, medians), beside the message round trip in the same run:"
    );
    println!(
        "  baselines: message round trip between two running devices (send → their inbox → \
         reply → ours) {rtt:.1} ms; one `hestia status` (process start, database, connection, \
         one request) {command:.0} ms"
    );
    println!(
        "  dial (`hestia call` starts) → ringing at the callee: {ring:.0} ms ({:.2} × a command, \
         {:.0} × the round trip)",
        ring / command,
        ring / rtt
    );
    println!(
        "  dial → first decoded audio at the caller: {first:.0} ms ({:.2} × a command); \
         → the caller's loop saw media flowing: {connected:.0} ms",
        first / command
    );
    println!(
        "  CPU per call: caller's device {:.2} s, callee's {:.2} s; relaying nodes {:.2} s and {:.2} s \
         ({:.1}% and {:.1}% of a core while talking)",
        col(&|r| r.alice_cpu),
        col(&|r| r.bob_cpu),
        col(&|r| r.node_cpu[0]),
        col(&|r| r.node_cpu[1]),
        per_talk(col(&|r| r.node_cpu[0])),
        per_talk(col(&|r| r.node_cpu[1])),
    );
    println!(
        "  audio frames lost at the caller: {:.1}% (worst call {:.1}%)",
        col(&|r| r.lost) * 100.0,
        runs.iter().map(|r| r.lost).fold(0.0, f64::max) * 100.0
    );
    Ok(())
}
