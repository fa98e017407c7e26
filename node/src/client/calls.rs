//! Calls on a device: ringing a contact, taking a call, and the history of both. The signals
//! travel inside the end-to-end sessions like any letter (`Content::Call`); the media runs on
//! the [`call`](super::call) machine under its UDP driver, relayed by each side's home node
//! unless the user asks for a direct call.
//!
//! While a call runs, the device reads its inbox every [`SIGNAL_POLL_MS`] for the other side's
//! signals, and sends its own as the machine makes them. An offer from anyone else meanwhile is
//! answered "busy" (and stays a missed call in the history); an offer from the same contact
//! while ringing them is glare, settled by [`theirs_wins`] the same way on both sides.

use super::call::audio::{AudioSink, AudioSource};
use super::call::udp::{self, Command, Report};
use super::call::{Call, CallEvent, EndReason, Route};
use super::{ClientLibError, Device, InboxEvent, unexpected};
use crate::client::Connection;
use crate::driver::now_millis;
use crate::turn::client::{Credentials, TurnClient};
use hestia_protocol::Millis;
use hestia_protocol::call::{CallId, CallSignal, MAX_OFFER_AGE_MS, theirs_wins};
use hestia_protocol::envelope::{Content, EnvelopeId};
use hestia_protocol::wire::{ClientOp, ClientResponse};
use hestia_store::client::{
    CallOutcome, ClientWrite, Contact, Direction, MessageState, StoredMessage,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How long a read of the inbox waits during a call: the most a signal from this side waits
/// for the read to end before it goes out.
pub const SIGNAL_POLL_MS: u32 = 100;
/// Signals a call's signalling sends at once toward one contact: a call makes a handful.
const MAX_SIGNALS_PER_CALL: usize = 64;
/// "Busy" answers one call sends to other callers: a contact flooding offers gets this many,
/// then silence (each offer stays a missed call in the history).
pub const MAX_BUSY_REPLIES: usize = 8;
/// A call's signals live as long as an offer may ring, plus the slack a device that was
/// offline needs to show the missed call: they are small and carry no address but relays'.
const SIGNAL_TTL_MS: Millis = 24 * 3600 * 1000;

/// What to play, where what is heard goes, and how the media travels.
pub struct CallSetup {
    pub source: Box<dyn AudioSource>,
    pub sink: Box<dyn AudioSink>,
    pub media: Media,
}

/// How a call's media travels, and for how long.
#[derive(Clone, Copy, Debug, Default)]
pub struct Media {
    /// Straight between the devices (each learns the other's address) instead of through the
    /// home nodes' relays. Needs `bind`: the address the other device reaches this one at.
    pub direct: bool,
    /// The local address to take calls' media on (default: any).
    pub bind: Option<IpAddr>,
    /// Hang up after media flowed this long.
    pub max: Option<Duration>,
    /// Ring this long before giving up (at most, and by default, a minute).
    pub ring: Option<Duration>,
}

/// What a running call shows its user.
#[derive(Debug, PartialEq, Eq)]
pub enum CallProgress {
    /// The offer went out; the other side's devices ring.
    Ringing {
        to: String,
    },
    /// `from` is calling this device.
    Incoming {
        from: String,
    },
    /// Media flows. `remote`: the candidates the other side sent (with relays, its node's
    /// relay address only).
    Connected {
        remote: Vec<String>,
    },
    /// Text from the other side on the call's data channel (untrusted: display it through
    /// `protocol::display`).
    Text(String),
    /// Another contact rang meanwhile and was told this device is busy.
    Busy {
        from: String,
    },
    Ended {
        reason: EndReason,
        talked: Duration,
    },
    /// Something else the inbox brought meanwhile (a message, a file): stored like any, for
    /// the user to see.
    Inbox(Box<InboxEvent>),
}

/// The history entry of a call, under the call's id.
pub(crate) fn history_entry(
    c: &Contact,
    call: CallId,
    direction: Direction,
    outcome: CallOutcome,
    at: Millis,
) -> StoredMessage {
    StoredMessage {
        envelope_id: EnvelopeId(call.0),
        direction,
        peer: c.address.user,
        peer_node: c.address.node.clone(),
        peer_name: c.name.clone(),
        text: String::new(),
        at,
        expires_at: at,
        state: MessageState::Call(outcome),
    }
}

/// How a call that ended for `reason` goes into the history.
pub fn outcome_of(reason: EndReason, talked: Duration) -> CallOutcome {
    match reason {
        _ if talked > Duration::ZERO => CallOutcome::Talked {
            secs: talked.as_secs(),
        },
        EndReason::NoAnswer | EndReason::HungUp { .. } => CallOutcome::NoAnswer,
        EndReason::Declined { .. } => CallOutcome::Declined,
        EndReason::Busy => CallOutcome::Busy,
        EndReason::SetupFailed | EndReason::ConnectionLost | EndReason::RelayFailed(_) => {
            CallOutcome::Failed
        }
    }
}

/// How a call ended, or that it gave way to the other side's (glare).
enum Finish {
    Ended(EndReason, Duration),
    /// Their offer won: it is to be answered with the audio our call had.
    Glare {
        call: CallId,
        sdp: String,
        audio: Option<(Box<dyn AudioSource>, Box<dyn AudioSink>)>,
    },
}

fn random_call_id() -> CallId {
    CallId(rand::random())
}

impl Device {
    /// Short-lived credentials for the home node's call relay.
    pub async fn relay_credentials(
        &self,
        conn: &mut Connection,
    ) -> Result<Credentials, ClientLibError> {
        match conn.call(&self.key, ClientOp::TurnCredentials).await? {
            ClientResponse::Turn(g) => {
                let server = g.server.parse().map_err(|_| {
                    ClientLibError::CallSetup(format!(
                        "your node named a relay address that is not ip:port ({:?})",
                        hestia_protocol::display::line(&g.server)
                    ))
                })?;
                Ok(Credentials {
                    server,
                    username: g.username,
                    password: g.password,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// The route and socket for a call's media (see [`CallSetup`]).
    async fn media_route(
        &self,
        conn: &mut Connection,
        setup: &Media,
    ) -> Result<(Route, UdpSocket), ClientLibError> {
        let setup_err = |e: std::io::Error| ClientLibError::CallSetup(e.to_string());
        if setup.direct {
            let ip = setup
                .bind
                .filter(|ip| !ip.is_unspecified())
                .ok_or_else(|| {
                    ClientLibError::CallSetup(
                    "a direct call needs --bind IP, the address the other device reaches you at"
                        .into(),
                )
                })?;
            let socket = UdpSocket::bind((ip, 0)).await.map_err(setup_err)?;
            let local = socket.local_addr().map_err(setup_err)?;
            return Ok((Route::Direct(vec![local]), socket));
        }
        let creds = self.relay_credentials(conn).await?;
        let ip = setup.bind.unwrap_or(match creds.server {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let socket = UdpSocket::bind((ip, 0)).await.map_err(setup_err)?;
        let local = socket.local_addr().map_err(setup_err)?;
        let turn = Box::new(TurnClient::new(creds, rand::random()));
        Ok((Route::Relayed { turn, local }, socket))
    }

    /// Sends one call signal to `c`, sealed in the session like a message but kept out of the
    /// history and the outbox: a signal that did not go out is not worth sending late.
    pub async fn send_call_signal(
        &mut self,
        conn: &mut Connection,
        c: &Contact,
        signal: CallSignal,
    ) -> Result<(), ClientLibError> {
        let id = EnvelopeId::random(&mut rand::rng());
        let (env, session_write) = self
            .seal_for(
                conn,
                id,
                &c.address.user,
                &c.address.node,
                Content::Call(signal),
                SIGNAL_TTL_MS,
                super::Fresh::IfNone,
            )
            .await?;
        self.db.commit(&[session_write])?;
        self.submit(conn, &c.address.node, env).await.map(drop)
    }

    /// Rings contact `name` and runs the call to its end; `controls` are the user's (hang up,
    /// text), `on` shows progress. The history records how it went.
    pub async fn call(
        &mut self,
        conn: &mut Connection,
        name: &str,
        setup: CallSetup,
        controls: &mut mpsc::Receiver<Command>,
        on: &mut (dyn FnMut(CallProgress) + Send),
    ) -> Result<(EndReason, Duration), ClientLibError> {
        let c = self.contact(name)?;
        let media = setup.media;
        let (route, socket) = self.media_route(conn, &media).await?;
        let id = random_call_id();
        let mut call = Call::dial(id, Instant::now(), route, setup.source, setup.sink)
            .map_err(|e| ClientLibError::CallSetup(e.to_string()))?;
        if let Some(ring) = media.ring {
            call.ring_for(Instant::now(), ring);
        }
        let now = now_millis();
        self.db.commit(&[ClientWrite::Message(history_entry(
            &c,
            id,
            Direction::Outgoing,
            CallOutcome::NoAnswer,
            now,
        ))])?;
        on(CallProgress::Ringing { to: c.name.clone() });
        match self
            .run_call(conn, &c, id, call, socket, media.max, false, controls, on)
            .await?
        {
            Finish::Ended(reason, talked) => {
                self.record_call(&c, id, Direction::Outgoing, reason, talked, now)?;
                Ok((reason, talked))
            }
            // They rang us at the same moment and their call won: ours stays in the history
            // unanswered, and theirs is answered at once, since both meant to talk.
            Finish::Glare { call, sdp, audio } => {
                let (source, sink) = audio
                    .ok_or_else(|| ClientLibError::CallSetup("the call's driver stopped".into()))?;
                let (route, socket) = self.media_route(conn, &media).await?;
                let theirs = Call::incoming(call, &sdp, Instant::now(), route, source, sink)
                    .map_err(|e| ClientLibError::CallSetup(e.to_string()))?;
                on(CallProgress::Incoming {
                    from: c.name.clone(),
                });
                match self
                    .run_call(
                        conn, &c, call, theirs, socket, media.max, true, controls, on,
                    )
                    .await?
                {
                    Finish::Ended(reason, talked) => {
                        self.record_call(&c, call, Direction::Incoming, reason, talked, now)?;
                        Ok((reason, talked))
                    }
                    Finish::Glare { .. } => Err(ClientLibError::CallSetup(
                        "both sides kept ringing each other".into(),
                    )),
                }
            }
        }
    }

    /// Waits up to `wait` for a contact's call; with one ringing, `controls` answer or decline
    /// it (or the caller gives up), and it runs to its end. `None`: nobody called.
    pub async fn take_call(
        &mut self,
        conn: &mut Connection,
        setup: CallSetup,
        wait: Duration,
        controls: &mut mpsc::Receiver<Command>,
        on: &mut (dyn FnMut(CallProgress) + Send),
    ) -> Result<Option<(EndReason, Duration)>, ClientLibError> {
        let until = Instant::now() + wait;
        let (from, id, sdp, sent_at) = 'found: loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let wait_ms = left.as_millis().min(5_000) as u32;
            for ev in self.sync(conn, wait_ms).await? {
                if let InboxEvent::Call {
                    contact,
                    signal: CallSignal::Offer { call, sdp },
                    sent_at,
                } = ev
                    && now_millis().saturating_sub(sent_at) <= MAX_OFFER_AGE_MS
                {
                    break 'found (contact, call, sdp, sent_at);
                }
            }
        };
        self.answer_offer(conn, &from, id, &sdp, sent_at, setup, controls, on)
            .await
    }

    /// Rings for an offer that came from contact `from` (in [`InboxEvent::Call`]), until
    /// `controls` answer or decline it or the caller gives up, then runs the call to its end.
    /// `None`: the offer was too old to ring, or did not parse.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer_offer(
        &mut self,
        conn: &mut Connection,
        from: &str,
        id: CallId,
        sdp: &str,
        sent_at: Millis,
        setup: CallSetup,
        controls: &mut mpsc::Receiver<Command>,
        on: &mut (dyn FnMut(CallProgress) + Send),
    ) -> Result<Option<(EndReason, Duration)>, ClientLibError> {
        if now_millis().saturating_sub(sent_at) > MAX_OFFER_AGE_MS {
            return Ok(None);
        }
        let c = self.contact(from)?;
        let max = setup.media.max;
        let (route, socket) = match self.media_route(conn, &setup.media).await {
            Ok(r) => r,
            Err(e) => {
                // This side cannot take calls (no relay, say): the caller stops ringing now
                // rather than after a minute.
                let hangup = CallSignal::Hangup {
                    call: id,
                    reason: hestia_protocol::call::HangupReason::Failed,
                };
                let _ = self.send_call_signal(conn, &c, hangup).await;
                return Err(e);
            }
        };
        let mut call =
            match Call::incoming(id, sdp, Instant::now(), route, setup.source, setup.sink) {
                Ok(call) => call,
                Err(e) => {
                    tracing::info!(error = %e, "an offer that does not parse rings nothing");
                    return Ok(None);
                }
            };
        // It rings until a minute after the caller rang, not after it arrived here.
        let age = Duration::from_millis(now_millis().saturating_sub(sent_at));
        call.ring_for(
            Instant::now(),
            super::call::RING_TIMEOUT.saturating_sub(age),
        );
        on(CallProgress::Incoming {
            from: c.name.clone(),
        });
        match self
            .run_call(conn, &c, id, call, socket, max, false, controls, on)
            .await?
        {
            Finish::Ended(reason, talked) => {
                self.record_call(&c, id, Direction::Incoming, reason, talked, sent_at)?;
                Ok(Some((reason, talked)))
            }
            Finish::Glare { .. } => Ok(None),
        }
    }

    fn record_call(
        &mut self,
        c: &Contact,
        id: CallId,
        direction: Direction,
        reason: EndReason,
        talked: Duration,
        at: Millis,
    ) -> Result<(), ClientLibError> {
        let entry = history_entry(c, id, direction, outcome_of(reason, talked), at);
        let write = if self.db.has_message(&entry.envelope_id)? {
            ClientWrite::UpdateMessage(entry)
        } else {
            ClientWrite::Message(entry)
        };
        self.db.commit(&[write])?;
        Ok(())
    }

    /// Runs `call` with `c` on `socket` until it ends: its signals out, theirs in, the user's
    /// controls through, other callers told "busy".
    #[allow(clippy::too_many_arguments)]
    async fn run_call(
        &mut self,
        conn: &mut Connection,
        c: &Contact,
        id: CallId,
        call: Call,
        socket: UdpSocket,
        max: Option<Duration>,
        answer_now: bool,
        controls: &mut mpsc::Receiver<Command>,
        on: &mut (dyn FnMut(CallProgress) + Send),
    ) -> Result<Finish, ClientLibError> {
        let caller = call.role() == super::call::Role::Caller;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (rep_tx, mut rep_rx) = mpsc::channel(1024);
        if answer_now {
            let _ = cmd_tx.send(Command::Answer).await;
        }
        let mut task = tokio::spawn(udp::run(call, socket, cmd_rx, rep_tx));
        let mut connected_at: Option<Instant> = None;
        let mut hung_up = false;
        let mut ended: Option<(EndReason, Duration)> = None;
        let mut remote: Vec<String> = Vec::new();
        let mut busy_sent = 0usize;
        let mut sent = 0usize;
        let mut ringing = true;
        loop {
            // What the call made: signals to send, events to show.
            loop {
                match rep_rx.try_recv() {
                    Ok(Report::Signal(s)) => {
                        if sent < MAX_SIGNALS_PER_CALL {
                            sent += 1;
                            if let Err(e) = self.send_call_signal(conn, c, s).await {
                                tracing::info!(error = %e, "a call signal did not go out");
                                if ringing && caller && sent == 1 {
                                    let _ = cmd_tx.send(Command::Hangup).await;
                                    let _ = (&mut task).await;
                                    return Err(e);
                                }
                            }
                        }
                    }
                    Ok(Report::Event(e)) => match e {
                        CallEvent::Connected => {
                            ringing = false;
                            connected_at = Some(Instant::now());
                            on(CallProgress::Connected {
                                remote: std::mem::take(&mut remote),
                            });
                        }
                        CallEvent::Text(t) => on(CallProgress::Text(t)),
                        CallEvent::Ended { reason, talked } => {
                            ended = Some((reason, talked));
                            on(CallProgress::Ended { reason, talked });
                        }
                    },
                    Err(_) => break,
                }
            }
            if let Some((reason, talked)) = ended {
                if task.is_finished() && rep_rx.is_empty() {
                    return Ok(Finish::Ended(reason, talked));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if task.is_finished() {
                // The driver ended without saying why (it panicked): the call is over.
                return Ok(Finish::Ended(EndReason::ConnectionLost, Duration::ZERO));
            }
            if let (Some(max), Some(at)) = (max, connected_at)
                && !hung_up
                && at.elapsed() >= max
            {
                hung_up = true;
                let _ = cmd_tx.send(Command::Hangup).await;
            }
            // The user's controls.
            while let Ok(cmd) = controls.try_recv() {
                let _ = cmd_tx.send(cmd).await;
            }
            // Their signals (and anyone else's offers).
            let events = match self.sync(conn, SIGNAL_POLL_MS).await {
                Ok(events) => events,
                // The home node is gone: no more signals either way, so the call ends here
                // (and the other side's ends when media stops).
                Err(e) => {
                    let _ = cmd_tx.send(Command::Hangup).await;
                    let _ = (&mut task).await;
                    return Err(e);
                }
            };
            for ev in events {
                let InboxEvent::Call {
                    contact,
                    signal,
                    sent_at,
                } = ev
                else {
                    on(CallProgress::Inbox(Box::new(ev)));
                    continue;
                };
                if contact == c.name && signal.call() == id {
                    if let CallSignal::Candidates { candidates, .. } = &signal
                        && remote.len() < hestia_protocol::call::MAX_CANDIDATES
                    {
                        remote.extend(candidates.iter().take(8).cloned());
                    }
                    let _ = cmd_tx.send(Command::Signal(signal)).await;
                    continue;
                }
                let CallSignal::Offer { call: theirs, sdp } = signal else {
                    continue; // about another call: over already
                };
                if now_millis().saturating_sub(sent_at) > MAX_OFFER_AGE_MS {
                    continue;
                }
                if contact == c.name && caller && ringing && theirs_wins(id, theirs) {
                    // Glare, and theirs wins: ours stops (they ignore our offer alike).
                    let _ = cmd_tx.send(Command::Hangup).await;
                    let audio = (&mut task).await.ok().map(Call::into_audio);
                    return Ok(Finish::Glare {
                        call: theirs,
                        sdp,
                        audio,
                    });
                }
                if contact == c.name && caller && ringing {
                    continue; // glare, and ours wins: they drop theirs
                }
                if busy_sent >= MAX_BUSY_REPLIES {
                    continue;
                }
                if let Ok(other) = self.contact(&contact) {
                    busy_sent += 1;
                    let _ = self
                        .send_call_signal(conn, &other, CallSignal::Busy { call: theirs })
                        .await;
                    on(CallProgress::Busy { from: contact });
                }
            }
        }
    }
}
