//! `hestia call CONTACT` and `hestia call --listen`: voice calls from the terminal, with a tone
//! or a WAV file as the voice and a WAV file as the ear. Typed lines control the call: `a` to
//! answer, `d` to decline, `h` to hang up; anything else goes as text on the call's channel.

use crate::safe;
use anyhow::{Result, bail};
use clap::Args;
use hestia_node::client::Device;
use hestia_node::client::call::EndReason;
use hestia_node::client::call::audio::{AudioSink, AudioSource, Meter, Silence, Tone};
use hestia_node::client::call::udp::Command;
use hestia_node::client::call::wav::{WavRecorder, WavSource};
use hestia_node::client::calls::{CallProgress, CallSetup, Media};
use serde_json::json;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Args)]
pub struct CallArgs {
    /// The contact to ring (leave out with --listen).
    contact: Option<String>,
    /// Wait for a contact's call instead of ringing one.
    #[arg(long, conflicts_with = "contact")]
    listen: bool,
    /// With --listen: answer the first call at once.
    #[arg(long, requires = "listen")]
    auto_answer: bool,
    /// What you send: `tone:HZ`, a 48 kHz 16-bit PCM WAV file, `silence`, or (in a build with
    /// the `mic` feature) `mic` for the default microphone or `mic:DEVICE` for a named one.
    #[arg(long, default_value = "tone:440")]
    audio: String,
    /// Record what you hear into this WAV file (48 kHz mono).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Play what you hear on the default speaker, or on the named DEVICE (a build with the
    /// `mic` feature).
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, default_missing_value = "")]
    speaker: Option<String>,
    /// Hang up after this many seconds of talk.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_secs: Option<u64>,
    /// How long to ring before giving up, in seconds (at most 60).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=60))]
    ring_secs: u64,
    /// With --listen: how long to wait for a call, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    wait_secs: u64,
    /// Send media straight to the other device instead of through your node's relay: the
    /// other side learns your address (and you theirs). Needs --bind.
    #[arg(long)]
    direct: bool,
    /// The local address for the call's media (default: any).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Print the call's events as JSON, one object per line, and a summary at the end.
    #[arg(long)]
    json: bool,
}

/// Hears into a meter (for the summary) and, if asked, a WAV file; notes when the first
/// frame came.
struct Ear {
    meter: Arc<Mutex<Meter>>,
    first: Arc<Mutex<Option<Instant>>>,
    recorder: Option<WavRecorder>,
    speaker: Option<Box<dyn AudioSink>>,
}

impl AudioSink for Ear {
    fn frame(&mut self, samples: &[i16]) {
        if let Ok(mut m) = self.meter.lock() {
            m.frame(samples);
        }
        if let Ok(mut f) = self.first.lock() {
            f.get_or_insert_with(Instant::now);
        }
        if let Some(r) = &mut self.recorder {
            r.frame(samples);
        }
        if let Some(s) = &mut self.speaker {
            s.frame(samples);
        }
    }
}

fn source(spec: &str) -> Result<Box<dyn AudioSource>> {
    if spec == "silence" {
        return Ok(Box::new(Silence));
    }
    if let Some(hz) = spec.strip_prefix("tone:") {
        let hz: f64 = hz
            .parse()
            .ok()
            .filter(|h: &f64| (20.0..=20_000.0).contains(h))
            .ok_or_else(|| anyhow::anyhow!("--audio tone:HZ needs 20 to 20000 Hz, not {hz:?}"))?;
        return Ok(Box::new(Tone::new(hz)));
    }
    if let Some(device) = spec.strip_prefix("mic") {
        let device = match device.strip_prefix(':') {
            Some(name) => Some(name),
            None if device.is_empty() => None,
            // A WAV file whose name starts with "mic".
            None => return wav(spec),
        };
        return microphone(device);
    }
    wav(spec)
}

fn wav(spec: &str) -> Result<Box<dyn AudioSource>> {
    let path = Path::new(spec);
    WavSource::open(path)
        .map(|s| Box::new(s) as Box<dyn AudioSource>)
        .map_err(|e| anyhow::anyhow!("--audio {}: {e}", path.display()))
}

#[cfg(feature = "mic")]
fn microphone(device: Option<&str>) -> Result<Box<dyn AudioSource>> {
    Ok(Box::new(crate::sound::device::Mic::open(device)?))
}

#[cfg(not(feature = "mic"))]
fn microphone(_: Option<&str>) -> Result<Box<dyn AudioSource>> {
    bail!(
        "--audio mic needs a build with the mic feature (cargo build -p hestia-cli --features mic); use tone:HZ or a WAV file"
    )
}

#[cfg(feature = "mic")]
fn speaker(device: &str) -> Result<Box<dyn AudioSink>> {
    let device = Some(device).filter(|d| !d.is_empty());
    Ok(Box::new(crate::sound::device::Speaker::open(device)?))
}

#[cfg(not(feature = "mic"))]
fn speaker(_: &str) -> Result<Box<dyn AudioSink>> {
    bail!(
        "--speaker needs a build with the mic feature (cargo build -p hestia-cli --features mic); use --record FILE.wav"
    )
}

/// The user's typed controls, and (with `ctrl_c`) Ctrl-C as a hang-up instead of an exit.
pub fn controls(ctrl_c: bool) -> mpsc::Receiver<Command> {
    let (tx, rx) = mpsc::channel(16);
    if ctrl_c {
        let ctrl_c = tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = ctrl_c.send(Command::Hangup).await;
            }
        });
    }
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            let cmd = match line.trim() {
                "" => None,
                "a" | "answer" => Some(Command::Answer),
                "d" | "decline" => Some(Command::Decline),
                "h" | "hangup" | "q" => Some(Command::Hangup),
                text => Some(Command::Text(text.to_string())),
            };
            if let Some(cmd) = cmd
                && tx.blocking_send(cmd).is_err()
            {
                break;
            }
            line.clear();
        }
    });
    rx
}

pub(crate) fn ended_text(peer: &str, reason: EndReason, talked: Duration) -> String {
    let peer = safe(peer);
    let secs = talked.as_secs();
    match reason {
        _ if talked > Duration::ZERO => format!("call ended after {}:{:02}", secs / 60, secs % 60),
        EndReason::NoAnswer => format!("{peer} did not answer"),
        EndReason::HungUp { by_us: true } => "you hung up before an answer".into(),
        EndReason::HungUp { by_us: false } => format!("{peer} hung up"),
        EndReason::Declined { by_us: true } => "you declined".into(),
        EndReason::Declined { by_us: false } => format!("{peer} declined"),
        EndReason::Busy => format!("{peer} is in another call"),
        EndReason::SetupFailed => "the call was answered but its media never flowed".into(),
        EndReason::ConnectionLost => "the call's connection was lost".into(),
        EndReason::RelayFailed(e) => e.to_string(),
    }
}

fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::NoAnswer => "no_answer",
        EndReason::HungUp { .. } => "hung_up",
        EndReason::Declined { .. } => "declined",
        EndReason::Busy => "busy",
        EndReason::SetupFailed => "setup_failed",
        EndReason::ConnectionLost => "connection_lost",
        EndReason::RelayFailed(_) => "relay_failed",
    }
}

/// `hestia call`.
pub async fn run(args: CallArgs, home: &Path, as_json: bool) -> Result<()> {
    let as_json = as_json || args.json;
    if args.contact.is_none() && !args.listen {
        bail!("name a contact to ring, or --listen to wait for a call");
    }
    let started = Instant::now();
    let started_unix = hestia_node::driver::now_millis();
    let meter = Arc::new(Mutex::new(Meter::default()));
    let first = Arc::new(Mutex::new(None));
    let recorder = match &args.record {
        Some(p) => Some(
            WavRecorder::create(p).map_err(|e| anyhow::anyhow!("--record {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let setup = CallSetup {
        source: source(&args.audio)?,
        sink: Box::new(Ear {
            meter: meter.clone(),
            first: first.clone(),
            recorder,
            speaker: args.speaker.as_deref().map(speaker).transpose()?,
        }),
        media: Media {
            direct: args.direct,
            bind: args.bind,
            max: args.max_secs.map(Duration::from_secs),
            ring: Some(Duration::from_secs(args.ring_secs)),
        },
    };
    let mut d = crate::unlock::open_device(home)?;
    let mut conn = d.connect().await?;
    let mut controls = controls(true);
    let (answer_tx, mut answer_rx) = mpsc::channel(1);
    let mut show = Printer {
        as_json,
        direct: args.direct,
        peer: args.contact.clone().unwrap_or_default(),
        answer: args.auto_answer.then_some(answer_tx),
    };
    let mut on = |p: CallProgress| show.show(p);
    // An auto-answer is a control like the user's, sent as soon as the call rings.
    let (merged_tx, mut merged) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let cmd = tokio::select! {
                Some(c) = answer_rx.recv() => c,
                Some(c) = controls.recv() => c,
                else => break,
            };
            if merged_tx.send(cmd).await.is_err() {
                break;
            }
        }
    });
    let result = match &args.contact {
        Some(name) => Some(d.call(&mut conn, name, setup, &mut merged, &mut on).await?),
        None => {
            d.take_call(
                &mut conn,
                setup,
                Duration::from_secs(args.wait_secs),
                &mut merged,
                &mut on,
            )
            .await?
        }
    };
    let Some((reason, talked)) = result else {
        bail!("no call came within {} s", args.wait_secs);
    };
    let peer = show.peer.clone();
    let heard = meter.lock().map(|m| m.clone()).unwrap_or_default();
    if as_json {
        let first = first.lock().ok().and_then(|f| *f);
        crate::json::print(json!({
            "event": "heard",
            "seconds": heard.samples as f64 / 48_000.0,
            "frames": heard.samples / 960,
            // Unix ms, like every event's `at`: when the first frame was decoded.
            "first_audio_at": first.map(|f| started_unix + f.duration_since(started).as_millis() as u64),
        }));
    }
    if talked > Duration::ZERO {
        if !as_json {
            println!(
                "heard {:.1} s of audio (strongest near {:.0} Hz)",
                heard.samples as f64 / 48_000.0,
                heard.frequency_hz()
            );
        }
        return Ok(());
    }
    bail!("{}", ended_text(&peer, reason, talked))
}

/// Shows a call's progress as lines for a person or JSON objects; answers at once if it holds
/// `answer` (auto-answer).
pub struct Printer {
    pub as_json: bool,
    pub direct: bool,
    /// The other party, once known.
    pub peer: String,
    pub answer: Option<mpsc::Sender<Command>>,
}

impl Printer {
    pub fn show(&mut self, p: CallProgress) {
        let as_json = self.as_json;
        if as_json {
            let at = hestia_node::driver::now_millis();
            let v = match &p {
                CallProgress::Ringing { to } => json!({"event": "ringing", "contact": to}),
                CallProgress::Incoming { from } => json!({"event": "incoming", "contact": from}),
                CallProgress::Connected { remote } => json!({
                    "event": "connected",
                    "direct": self.direct,
                    "remote_candidates": remote,
                }),
                CallProgress::Text(t) => json!({"event": "text", "text": t}),
                CallProgress::Busy { from } => json!({"event": "busy_sent", "contact": from}),
                CallProgress::Ended { reason, talked } => json!({
                    "event": "ended",
                    "reason": reason_name(*reason),
                    "talked_ms": talked.as_millis() as u64,
                }),
                CallProgress::Inbox(_) => json!({"event": "inbox_during_call"}),
            };
            let mut v = v;
            v["at"] = json!(at);
            crate::json::print(v);
        }
        let route = if self.direct {
            "direct"
        } else {
            "relayed by your node"
        };
        match p {
            CallProgress::Ringing { to } if !as_json => println!("ringing {}…", safe(&to)),
            CallProgress::Incoming { from } => {
                if !as_json {
                    println!("{} is calling", safe(&from));
                    if self.answer.is_none() {
                        println!("type a and Enter to answer, d to decline");
                    }
                }
                self.peer = from;
                if let Some(a) = &self.answer {
                    let _ = a.try_send(Command::Answer);
                }
            }
            CallProgress::Connected { .. } if !as_json => {
                println!("connected ({route}); type h and Enter to hang up")
            }
            CallProgress::Text(t) if !as_json => println!("{}: {}", safe(&self.peer), safe(&t)),
            CallProgress::Busy { from } if !as_json => {
                println!("{} called too; they were told you are busy", safe(&from))
            }
            CallProgress::Ended { reason, talked } if !as_json => {
                println!("{}", ended_text(&self.peer, reason, talked))
            }
            CallProgress::Inbox(ev) if !as_json => crate::print_event(&ev),
            _ => {}
        }
    }
}

/// A call that rang `inbox --follow`: it rings here until typed `a` (answer) or `d` (decline)
/// or the caller gives up. The answer speaks through the default microphone and speaker in a
/// build with the `mic` feature that finds them; otherwise it sends silence and reports what it
/// heard.
pub async fn ring_in_inbox(
    d: &mut Device,
    conn: &mut hestia_node::client::Connection,
    controls: &mut mpsc::Receiver<Command>,
    offer: (&str, hestia_protocol::call::CallId, &str, u64),
    as_json: bool,
) -> Result<()> {
    let (from, id, sdp, sent_at) = offer;
    let meter = Arc::new(Mutex::new(Meter::default()));
    let (source, speaker, without) = default_sound();
    let setup = CallSetup {
        source,
        sink: Box::new(Ear {
            meter: meter.clone(),
            first: Arc::new(Mutex::new(None)),
            recorder: None,
            speaker,
        }),
        media: Media::default(),
    };
    let mut show = Printer {
        as_json,
        direct: false,
        peer: from.to_string(),
        answer: None,
    };
    // Typed lines from before the call rang are not its answer.
    while controls.try_recv().is_ok() {}
    let result = d
        .answer_offer(conn, from, id, sdp, sent_at, setup, controls, &mut |p| {
            show.show(p)
        })
        .await?;
    if let Some((_, talked)) = result
        && talked > Duration::ZERO
        && !as_json
    {
        let heard = meter.lock().map(|m| m.clone()).unwrap_or_default();
        println!(
            "heard {:.1} s of audio (strongest near {:.0} Hz){}",
            heard.samples as f64 / 48_000.0,
            heard.frequency_hz(),
            without
                .map(|w| format!("; you sent silence ({w})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// A call's voice, its speaker if any, and why it sends silence if it does.
pub(crate) type Sound = (
    Box<dyn AudioSource>,
    Option<Box<dyn AudioSink>>,
    Option<String>,
);

/// The default microphone and speaker, when this build has them and they open; otherwise
/// silence, and why.
pub(crate) fn default_sound() -> Sound {
    let sound = microphone(None).and_then(|m| Ok((m, speaker("")?)));
    match sound {
        Ok((mic, out)) => (mic, Some(out), None),
        Err(e) if cfg!(feature = "mic") => (Box::new(Silence), None, Some(format!("{e:#}"))),
        Err(_) => (
            Box::new(Silence),
            None,
            Some("no microphone in this build".into()),
        ),
    }
}
