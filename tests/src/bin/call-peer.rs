//! Hestia's side of the call interop test: one call on its own machine (`client::call::Call`
//! under its UDP driver), straight to a peer on loopback, signalled as JSON lines on standard
//! input and output so another WebRTC implementation can answer it.
//!
//! Out: `{"type":"offer","sdp":..}`, `{"type":"candidates","candidates":[..]}`,
//! `{"type":"connected"}`, `{"type":"ended","reason":..,"talked_ms":..}`.
//! In: `{"type":"answer","sdp":..}`, `{"type":"candidates","candidates":[..]}`,
//! `{"type":"hangup"}`.
//!
//!   call-peer TONE_HZ RECORD.wav SECONDS

use hestia_node::client::call::audio::Tone;
use hestia_node::client::call::udp::{self, Command, Report};
use hestia_node::client::call::wav::WavRecorder;
use hestia_node::client::call::{Call, CallEvent, Route};
use hestia_protocol::call::{CallId, CallSignal};
use serde_json::{Value, json};
use std::io::BufRead;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, hz, record, secs] = &args[..] else {
        eprintln!("usage: call-peer TONE_HZ RECORD.wav SECONDS");
        std::process::exit(2);
    };
    let hz: f64 = hz.parse().expect("a frequency");
    let secs: u64 = secs.parse().expect("seconds");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let id = CallId(rand::random());
    let call = Call::dial(
        id,
        Instant::now(),
        Route::Direct(vec![local]),
        Box::new(Tone::new(hz)),
        Box::new(WavRecorder::create(std::path::Path::new(record)).unwrap()),
    )
    .unwrap();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(16);
    let (rep_tx, mut rep_rx) = tokio::sync::mpsc::channel(256);
    let driver = tokio::spawn(udp::run(call, socket, cmd_rx, rep_tx));
    let stdin_tx = cmd_tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let cmd = match v["type"].as_str() {
                Some("answer") => Command::Signal(CallSignal::Answer {
                    call: id,
                    sdp: v["sdp"].as_str().unwrap_or_default().to_string(),
                }),
                Some("candidates") => Command::Signal(CallSignal::Candidates {
                    call: id,
                    candidates: v["candidates"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Some("hangup") => Command::Hangup,
                _ => continue,
            };
            if stdin_tx.blocking_send(cmd).is_err() {
                break;
            }
        }
    });
    let say = |v: Value| println!("{v}");
    let mut hang_up_at = None;
    loop {
        let report = tokio::select! {
            r = rep_rx.recv() => r,
            _ = tokio::time::sleep_until(hang_up_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))) => {
                let _ = cmd_tx.send(Command::Hangup).await;
                hang_up_at = None;
                continue;
            }
        };
        match report {
            Some(Report::Signal(CallSignal::Offer { sdp, .. })) => {
                say(json!({"type": "offer", "sdp": sdp}))
            }
            Some(Report::Signal(CallSignal::Candidates { candidates, .. })) => {
                say(json!({"type": "candidates", "candidates": candidates}))
            }
            Some(Report::Signal(_)) => {}
            Some(Report::Event(CallEvent::Connected)) => {
                say(json!({"type": "connected"}));
                hang_up_at = Some(tokio::time::Instant::now() + Duration::from_secs(secs));
            }
            Some(Report::Event(CallEvent::Ended { reason, talked })) => {
                say(json!({
                    "type": "ended",
                    "reason": format!("{reason:?}"),
                    "talked_ms": talked.as_millis() as u64,
                }));
            }
            Some(Report::Event(_)) => {}
            None => break,
        }
    }
    // The recorder finishes its file when the call (and so the sink) is dropped.
    drop(driver.await);
}
