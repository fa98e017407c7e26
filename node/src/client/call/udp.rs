//! The call's thin driver: one UDP socket, the clock, and two channels to whoever runs the
//! signalling (the device). Every decision is the [`Call`]'s.

use super::{Call, CallEvent, CallOutput, State};
use hestia_protocol::call::CallSignal;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What the device tells the running call.
#[derive(Debug)]
pub enum Command {
    /// A signal from the other device about this call.
    Signal(CallSignal),
    Answer,
    Decline,
    Hangup,
    Text(String),
}

/// What the running call tells the device.
#[derive(Debug)]
pub enum Report {
    /// For the other device, inside the end-to-end session.
    Signal(CallSignal),
    Event(CallEvent),
}

/// How long the driver goes on after the call ended, so the last datagrams (the relay's
/// release) leave.
const LINGER: Duration = Duration::from_millis(200);
/// Largest datagram read: more than any relayed media or STUN message.
const MAX_DATAGRAM: usize = 2048;

/// Runs `call` on `socket` until it has ended and lingered, and gives it back. Commands in,
/// reports out; the reports channel closing ends nothing (the call runs its course).
pub async fn run(
    mut call: Call,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    reports: mpsc::Sender<Report>,
) -> Call {
    let local = socket.local_addr().ok();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ended_at: Option<tokio::time::Instant> = None;
    let mut closed = false;
    loop {
        let next = loop {
            match call.poll_output() {
                CallOutput::Timeout(t) => break t,
                CallOutput::Transmit {
                    destination,
                    contents,
                    ..
                } => {
                    // UDP: a full socket buffer drops the datagram, as the network may.
                    let _ = socket.try_send_to(&contents, destination);
                }
                CallOutput::Signal(s) => {
                    let _ = reports.send(Report::Signal(s)).await;
                }
                CallOutput::Event(e) => {
                    if matches!(e, CallEvent::Ended { .. }) {
                        ended_at = Some(tokio::time::Instant::now());
                    }
                    let _ = reports.send(Report::Event(e)).await;
                }
            }
        };
        if let Some(at) = ended_at
            && at.elapsed() >= LINGER
        {
            return call;
        }
        let mut wake = tokio::time::Instant::from_std(next);
        if let Some(at) = ended_at {
            wake = wake.min(at + LINGER);
        }
        let now = || std::time::Instant::now();
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                if let (Ok((n, from)), Some(local)) = (got, local) {
                    let _ = call.handle_packet(now(), from, local, &buf[..n]);
                }
            }
            cmd = commands.recv(), if !closed => {
                closed = cmd.is_none();
                let t = now();
                let r = match cmd {
                    Some(Command::Signal(s)) => call.handle_signal(t, s),
                    Some(Command::Answer) => call.answer(t),
                    Some(Command::Decline) => call.decline(t),
                    Some(Command::Text(text)) => call.send_text(t, &text).map(drop),
                    Some(Command::Hangup) | None => {
                        call.hangup(t);
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "call command failed");
                    if !matches!(call.state(), State::Ended(_)) && matches!(e, super::CallError::Rtc(_)) {
                        call.hangup(now());
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Err(e) = call.handle_timeout(now()) {
                    tracing::debug!(error = %e, "call timer failed");
                    call.hangup(now());
                }
            }
        }
    }
}
