//! One voice call as a sans-IO state machine around str0m's [`Rtc`]: ringing, answering,
//! ICE and DTLS-SRTP, the 20 ms media clock, hang-up and every timer. No clock, socket or
//! thread inside: like `relay::Core` and str0m itself, it takes `now` and packets and gives
//! back packets, signals for the other side, events, and when it next needs a timeout.
//!
//! **Driving contract.** After creating a call and after every `handle_*` input or action
//! (`answer`, `decline`, `hangup`), drain [`Call::poll_output`] until it returns
//! [`CallOutput::Timeout`]; call [`Call::handle_timeout`] at (or after) that instant. `now`
//! never goes backwards. [`CallOutput::Signal`]s go to the other device inside the end-to-end
//! session (`protocol::call`); [`CallOutput::Transmit`]s are UDP datagrams.
//!
//! str0m has no ICE gathering and no "failed" state: the [`Route`] says which candidate this
//! device offers, and this machine keeps its own set-up deadline and debounces `Disconnected`.
//!
//! **Relayed by default.** On [`Route::Relayed`] the call allocates an address on the home
//! node's relay (a TURN client inside the machine: the caller when it rings, the callee when
//! it answers), offers only that address, and sends and takes every datagram to and from the
//! relay. The other device learns the relay's address, never this device's.

pub mod audio;
pub mod udp;
pub mod wav;

use crate::turn::client::{TurnClient, TurnError, TurnEvent};
use audio::{AudioSink, AudioSource, Codec, FRAME_SAMPLES};
use hestia_protocol::call::{CallId, CallSignal, HangupReason, MAX_CANDIDATES};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec as Format;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// How long the caller's device rings the other before giving up ("did not answer"), and how
/// long an incoming call rings (the same as an offer's greatest age).
pub const RING_TIMEOUT: Duration = Duration::from_millis(hestia_protocol::call::MAX_OFFER_AGE_MS);
/// From the answer to media flowing; past it the call fails.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long ICE may stay `Disconnected` before the call counts as lost (a blip recovers).
pub const DISCONNECT_GRACE: Duration = Duration::from_secs(5);
/// One media frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames sent at once to catch up after a late timeout; more are skipped (the clock jumps).
const MAX_CATCH_UP_FRAMES: u32 = 5;
/// Longest text message on the call's data channel.
pub const MAX_CHANNEL_TEXT: usize = 4096;
/// Outputs queued at once; a peer flooding us cannot grow this beyond a few frames' worth.
const MAX_QUEUED_OUTPUTS: usize = 4096;

/// Which side of the call this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Caller,
    Callee,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Caller: the offer went out; waiting for an answer.
    Ringing,
    /// Callee: an offer came; the user has not answered yet.
    Incoming,
    /// Answered; ICE and DTLS under way.
    Connecting,
    /// Media flows.
    Active,
    Ended(EndReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `by_us`: this device hung up (or cancelled its ringing).
    HungUp { by_us: bool },
    /// The callee declined (`by_us` on the callee's side).
    Declined { by_us: bool },
    /// The callee was in another call.
    Busy,
    /// Nobody answered within [`RING_TIMEOUT`] (on the callee's side: missed).
    NoAnswer,
    /// Answered, but media never flowed within [`SETUP_TIMEOUT`].
    SetupFailed,
    /// Media stopped for longer than [`DISCONNECT_GRACE`].
    ConnectionLost,
    /// This device's home node's relay did not answer, or refused it.
    RelayFailed(TurnError),
}

/// How a call's media travels.
pub enum Route {
    /// Through this device's home node's relay; `local` is the device's own socket (which
    /// only the relay sees).
    Relayed {
        turn: Box<TurnClient>,
        local: SocketAddr,
    },
    /// Straight between the devices: these addresses are this device's candidates, and the
    /// other side learns them. A choice a user makes per call.
    Direct(Vec<SocketAddr>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// Media flows both ways.
    Connected,
    /// Text from the other side on the call's data channel (untrusted: display through
    /// `protocol::display`).
    Text(String),
    /// The call is over; `talked` is the time media flowed (zero if it never did).
    Ended { reason: EndReason, talked: Duration },
}

#[derive(Debug)]
pub enum CallOutput {
    /// A UDP datagram to send.
    Transmit {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// A signal for the other device (inside the end-to-end session).
    Signal(CallSignal),
    Event(CallEvent),
    /// Nothing more until this instant (or the next input).
    Timeout(Instant),
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the call's WebRTC session failed: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("the other side's call description is not valid SDP: {0}")]
    Sdp(String),
    #[error("a local address is not usable for the call: {0}")]
    Candidate(String),
    #[error(transparent)]
    Codec(#[from] audio::CodecError),
    #[error("not possible in this state of the call ({0:?})")]
    State(State),
}

/// One call. See the module's driving contract.
pub struct Call {
    id: CallId,
    role: Role,
    state: State,
    rtc: Rtc,
    /// The caller's offer, until the answer comes.
    pending: Option<SdpPendingOffer>,
    /// The offer the callee received, until answered.
    offer: Option<SdpOffer>,
    mid: Option<Mid>,
    channel: Option<ChannelId>,
    /// The deadline of the current state (ringing, set-up, disconnected grace).
    deadline: Option<Instant>,
    connected_at: Option<Instant>,
    next_frame: Option<Instant>,
    samples_sent: u64,
    codec: Codec,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    outputs: VecDeque<CallOutput>,
    rtc_timeout: Instant,
    now: Instant,
    /// This device's candidates; they enter ICE (and go to the other side) only once the call
    /// is answered.
    route: Route,
    /// Answered, but the relay's address is not known yet: the candidates go out with it.
    candidates_due: bool,
}

impl Call {
    fn new(
        id: CallId,
        role: Role,
        now: Instant,
        route: Route,
        source: Box<dyn AudioSource>,
        sink: Box<dyn AudioSink>,
    ) -> Result<Call, CallError> {
        // str0m's crypto (DTLS, SRTP) comes from one provider per process.
        static CRYPTO: std::sync::Once = std::sync::Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let route = match route {
            Route::Direct(local) => {
                for addr in &local {
                    Candidate::host(*addr, "udp")
                        .map_err(|e| CallError::Candidate(e.to_string()))?;
                }
                Route::Direct(local.into_iter().take(MAX_CANDIDATES).collect())
            }
            relayed => relayed,
        };
        Ok(Call {
            id,
            role,
            state: if role == Role::Caller {
                State::Ringing
            } else {
                State::Incoming
            },
            rtc,
            pending: None,
            offer: None,
            mid: None,
            channel: None,
            deadline: Some(now + RING_TIMEOUT),
            connected_at: None,
            next_frame: None,
            samples_sent: 0,
            codec: Codec::new()?,
            source,
            sink,
            outputs: VecDeque::new(),
            rtc_timeout: now,
            now,
            route,
            candidates_due: false,
        })
    }

    /// The relay, on a relayed route.
    fn turn(&mut self) -> Option<&mut TurnClient> {
        match &mut self.route {
            Route::Relayed { turn, .. } => Some(turn),
            Route::Direct(_) => None,
        }
    }

    /// Adds this device's candidates to ICE and sends them: only once the call is answered,
    /// and on a relayed route once the relay has given its address.
    fn share_candidates(&mut self) {
        let candidates = match &mut self.route {
            Route::Direct(local) => local
                .iter()
                .filter_map(|a| Candidate::host(*a, "udp").ok())
                .collect::<Vec<_>>(),
            Route::Relayed { turn, local } => match turn.relayed() {
                Some(relayed) => Candidate::relayed(relayed, *local, "udp")
                    .ok()
                    .into_iter()
                    .collect(),
                None => {
                    turn.start(self.now);
                    self.candidates_due = true;
                    return;
                }
            },
        };
        self.candidates_due = false;
        let mut lines = Vec::new();
        for c in candidates {
            if let Some(added) = self.rtc.add_local_candidate(c) {
                lines.push(added.to_sdp_string());
            }
        }
        self.outputs
            .push_back(CallOutput::Signal(CallSignal::Candidates {
                call: self.id,
                candidates: lines,
            }));
    }

    /// Rings: makes the offer (audio and a text channel) as a [`CallOutput::Signal`].
    pub fn dial(
        id: CallId,
        now: Instant,
        route: Route,
        source: Box<dyn AudioSource>,
        sink: Box<dyn AudioSink>,
    ) -> Result<Call, CallError> {
        let mut call = Call::new(id, Role::Caller, now, route, source, sink)?;
        // The caller's relay allocation is made while it rings (it tells the other side
        // nothing), so the answer is not kept waiting for it.
        if let Some(turn) = call.turn() {
            turn.start(now);
        }
        let mut change = call.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.add_channel("text".into());
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| CallError::Sdp("nothing to offer".into()))?;
        call.mid = Some(mid);
        call.pending = Some(pending);
        call.outputs
            .push_back(CallOutput::Signal(CallSignal::Offer {
                call: id,
                sdp: offer.to_sdp_string(),
            }));
        call.drive(now)?;
        Ok(call)
    }

    /// A call offered to this device: it rings until [`Call::answer`], [`Call::decline`], the
    /// caller's hang-up or [`RING_TIMEOUT`].
    pub fn incoming(
        id: CallId,
        sdp: &str,
        now: Instant,
        route: Route,
        source: Box<dyn AudioSource>,
        sink: Box<dyn AudioSink>,
    ) -> Result<Call, CallError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| CallError::Sdp(e.to_string()))?;
        // The callee allocates only on answering: a flood of offers costs its node nothing.
        let mut call = Call::new(id, Role::Callee, now, route, source, sink)?;
        call.offer = Some(offer);
        Ok(call)
    }

    pub fn id(&self) -> CallId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Rings for `d` instead of [`RING_TIMEOUT`] (never longer), from `now`.
    pub fn ring_for(&mut self, now: Instant, d: Duration) {
        if matches!(self.state, State::Ringing | State::Incoming) {
            self.deadline = Some(now + d.min(RING_TIMEOUT));
        }
    }

    /// The call's source and sink, back (to play into another call).
    pub fn into_audio(self) -> (Box<dyn AudioSource>, Box<dyn AudioSink>) {
        (self.source, self.sink)
    }

    /// Answers a ringing incoming call.
    pub fn answer(&mut self, now: Instant) -> Result<(), CallError> {
        let now = self.advance(now);
        let Some(offer) = self.offer.take().filter(|_| self.state == State::Incoming) else {
            return Err(CallError::State(self.state));
        };
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.outputs
            .push_back(CallOutput::Signal(CallSignal::Answer {
                call: self.id,
                sdp: answer.to_sdp_string(),
            }));
        self.share_candidates();
        self.state = State::Connecting;
        self.deadline = Some(now + SETUP_TIMEOUT);
        self.drive(now)
    }

    /// Turns down a ringing incoming call.
    pub fn decline(&mut self, now: Instant) -> Result<(), CallError> {
        let now = self.advance(now);
        if self.state != State::Incoming {
            return Err(CallError::State(self.state));
        }
        self.outputs
            .push_back(CallOutput::Signal(CallSignal::Decline { call: self.id }));
        self.end(now, EndReason::Declined { by_us: true });
        Ok(())
    }

    /// Ends the call from this side (a caller still ringing cancels).
    pub fn hangup(&mut self, now: Instant) {
        let now = self.advance(now);
        if matches!(self.state, State::Ended(_)) {
            return;
        }
        self.signal_hangup(HangupReason::Normal);
        self.end(now, EndReason::HungUp { by_us: true });
    }

    fn signal_hangup(&mut self, reason: HangupReason) {
        self.outputs
            .push_back(CallOutput::Signal(CallSignal::Hangup {
                call: self.id,
                reason,
            }));
    }

    /// Sends text on the call's data channel (only once it is open; `false` if not yet).
    pub fn send_text(&mut self, now: Instant, text: &str) -> Result<bool, CallError> {
        let now = self.advance(now);
        let Some(id) = self.channel else {
            return Ok(false);
        };
        let mut end = text.len().min(MAX_CHANNEL_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let sent = match self.rtc.channel(id) {
            Some(mut ch) => ch.write(false, text.as_bytes())?,
            None => false,
        };
        self.drive(now)?;
        Ok(sent)
    }

    /// A signal from the other device about this call.
    pub fn handle_signal(&mut self, now: Instant, signal: CallSignal) -> Result<(), CallError> {
        let now = self.advance(now);
        if signal.call() != self.id || matches!(self.state, State::Ended(_)) {
            return Ok(());
        }
        match signal {
            CallSignal::Answer { sdp, .. } if self.state == State::Ringing => {
                let answer =
                    SdpAnswer::from_sdp_string(&sdp).map_err(|e| CallError::Sdp(e.to_string()))?;
                let pending = self.pending.take().ok_or(CallError::State(self.state))?;
                self.rtc.sdp_api().accept_answer(pending, answer)?;
                self.share_candidates();
                self.state = State::Connecting;
                self.deadline = Some(now + SETUP_TIMEOUT);
            }
            CallSignal::Candidates { candidates, .. }
                if matches!(self.state, State::Connecting | State::Active) =>
            {
                for line in candidates.iter().take(MAX_CANDIDATES) {
                    let c = Candidate::from_sdp_string(line)
                        .map_err(|e| CallError::Candidate(e.to_string()))?;
                    // The relay must let the other side's address in (and refuses one that
                    // is not a public address).
                    let ip = c.addr().ip();
                    if let Some(turn) = self.turn() {
                        turn.permit(now, ip);
                    }
                    self.rtc.add_remote_candidate(c);
                }
            }
            CallSignal::Decline { .. } if self.state == State::Ringing => {
                self.end(now, EndReason::Declined { by_us: false });
            }
            CallSignal::Busy { .. } if self.state == State::Ringing => {
                self.end(now, EndReason::Busy);
            }
            CallSignal::Hangup { reason, .. } => {
                let reason = match (self.state, reason) {
                    // The caller gave up: a missed call here.
                    (State::Incoming, _) => EndReason::NoAnswer,
                    (_, HangupReason::Normal) => EndReason::HungUp { by_us: false },
                    (_, HangupReason::NoAnswer) => EndReason::NoAnswer,
                    (State::Connecting, HangupReason::Failed) => EndReason::SetupFailed,
                    (_, HangupReason::Failed) => EndReason::ConnectionLost,
                };
                self.end(now, reason);
            }
            // A second offer, an answer out of turn, a decline after connecting: ignored.
            _ => {}
        }
        self.drive(now)
    }

    /// A UDP datagram that arrived for this call.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> Result<(), CallError> {
        let now = self.advance(now);
        if matches!(self.state, State::Ended(_)) {
            return Ok(());
        }
        // On a relayed route only the relay's datagrams are read, and what a peer sent
        // arrives inside them.
        let (source, destination, contents) = match &mut self.route {
            Route::Relayed { turn, .. } => {
                let got = turn.handle_datagram(now, source, contents);
                let relayed = turn.relayed();
                self.pump_turn(now);
                match (got, relayed) {
                    (Some((peer, data)), Some(relayed)) => {
                        (peer, relayed, std::borrow::Cow::Owned(data))
                    }
                    _ => return self.drive(now),
                }
            }
            Route::Direct(_) => (source, destination, std::borrow::Cow::Borrowed(contents)),
        };
        if matches!(self.state, State::Ringing | State::Incoming) {
            return self.drive(now);
        }
        let Ok(contents) = contents.as_ref().try_into() else {
            return Ok(()); // not STUN, DTLS or RTP: not ours
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        // A datagram anyone can send: one str0m refuses is dropped, and the call goes on
        // unless it broke the session itself.
        if self.rtc.accepts(&input)
            && let Err(e) = self.rtc.handle_input(input)
        {
            tracing::debug!(error = %e, "call datagram refused");
            if !self.rtc.is_alive() {
                self.signal_hangup(HangupReason::Failed);
                self.end(now, EndReason::ConnectionLost);
                return Ok(());
            }
        }
        self.drive(now)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), CallError> {
        let now = self.advance(now);
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            let reason = match self.state {
                State::Ringing | State::Incoming => Some(EndReason::NoAnswer),
                State::Connecting => Some(EndReason::SetupFailed),
                State::Active => Some(EndReason::ConnectionLost),
                State::Ended(_) => None,
            };
            if let Some(reason) = reason {
                // Tell the other device (a caller giving up stops the other ringing); an
                // incoming call that rang out just ends here.
                match self.state {
                    State::Ringing => self.signal_hangup(HangupReason::NoAnswer),
                    State::Connecting | State::Active => self.signal_hangup(HangupReason::Failed),
                    _ => {}
                }
                self.end(now, reason);
                return Ok(());
            }
        }
        if let Some(turn) = self.turn() {
            turn.handle_timeout(now);
        }
        self.pump_turn(now);
        if matches!(self.state, State::Ended(_)) {
            return Ok(());
        }
        self.send_frames(now)?;
        if !matches!(self.state, State::Ended(_)) && now >= self.rtc_timeout {
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        self.drive(now)
    }

    /// Next output. Drain until [`CallOutput::Timeout`] after every input.
    pub fn poll_output(&mut self) -> CallOutput {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        let mut at = self.rtc_timeout;
        if matches!(self.state, State::Ended(_)) {
            at = self.now + Duration::from_secs(3600);
        }
        let turn = match &self.route {
            Route::Relayed { turn, .. } if !matches!(self.state, State::Ended(_)) => {
                turn.poll_timeout()
            }
            _ => None,
        };
        for d in [self.deadline, self.next_frame, turn].into_iter().flatten() {
            at = at.min(d);
        }
        CallOutput::Timeout(at.max(self.now))
    }

    // ---- internals ----

    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn end(&mut self, now: Instant, reason: EndReason) {
        let talked = self
            .connected_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        self.state = State::Ended(reason);
        self.deadline = None;
        self.next_frame = None;
        self.rtc.disconnect();
        // The relay frees the allocation at once rather than when it lapses.
        if let Some(turn) = self.turn() {
            turn.close(now);
        }
        self.pump_turn(now);
        self.outputs
            .push_back(CallOutput::Event(CallEvent::Ended { reason, talked }));
    }

    /// Moves the relay client's datagrams and events into the call's outputs.
    fn pump_turn(&mut self, now: Instant) {
        let Route::Relayed { turn, local } = &mut self.route else {
            return;
        };
        let (server, local) = (turn.server(), *local);
        let mut events = Vec::new();
        while let Some(bytes) = turn.poll_transmit() {
            if self.outputs.len() < MAX_QUEUED_OUTPUTS {
                self.outputs.push_back(CallOutput::Transmit {
                    source: local,
                    destination: server,
                    contents: bytes,
                });
            }
        }
        while let Some(e) = turn.poll_event() {
            events.push(e);
        }
        for e in events {
            match e {
                TurnEvent::Allocated(_) if self.candidates_due => self.share_candidates(),
                TurnEvent::Allocated(_) => {}
                TurnEvent::PermissionRefused(ip) => {
                    tracing::debug!(%ip, "the relay refused a candidate of the other side");
                }
                TurnEvent::Failed(e) if !matches!(self.state, State::Ended(_)) => {
                    if self.state != State::Incoming {
                        self.signal_hangup(HangupReason::Failed);
                    }
                    self.end(now, EndReason::RelayFailed(e));
                }
                TurnEvent::Failed(_) => {}
            }
        }
    }

    /// Encodes and writes the frames due by `now`.
    fn send_frames(&mut self, now: Instant) -> Result<(), CallError> {
        let (Some(mid), Some(mut due)) = (self.mid, self.next_frame) else {
            return Ok(());
        };
        if self.state != State::Active {
            return Ok(());
        }
        let Some(pt) = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Format::Opus)
            .map(|p| p.pt())
        else {
            return Ok(());
        };
        let mut sent = 0;
        while due <= now {
            if sent < MAX_CATCH_UP_FRAMES {
                let mut frame = [0i16; FRAME_SAMPLES];
                self.source.frame(&mut frame);
                let packet = self.codec.encode(&frame)?;
                let time = MediaTime::new(self.samples_sent, audio_clock());
                if let Some(w) = self.rtc.writer(mid) {
                    w.write(pt, due, time, packet)?;
                }
                sent += 1;
            }
            self.samples_sent += FRAME_SAMPLES as u64;
            due += FRAME;
        }
        self.next_frame = Some(due);
        Ok(())
    }

    /// Drains the relay client and str0m to its timeout, turning their outputs into ours.
    fn drive(&mut self, now: Instant) -> Result<(), CallError> {
        self.pump_turn(now);
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.rtc_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if self.outputs.len() >= MAX_QUEUED_OUTPUTS {
                        continue;
                    }
                    match &mut self.route {
                        Route::Direct(_) => self.outputs.push_back(CallOutput::Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.to_vec(),
                        }),
                        // Wrapped for the relay; dropped until the relay lets that peer in.
                        Route::Relayed { turn, local } => {
                            if let Some(bytes) = turn.send(t.destination, &t.contents) {
                                let server = turn.server();
                                self.outputs.push_back(CallOutput::Transmit {
                                    source: *local,
                                    destination: server,
                                    contents: bytes,
                                });
                            }
                        }
                    }
                }
                Output::Event(e) => self.on_rtc_event(now, e),
            }
        }
    }

    fn on_rtc_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected if self.state == State::Connecting => {
                self.state = State::Active;
                self.deadline = None;
                self.connected_at = Some(now);
                self.next_frame = Some(now);
                self.outputs
                    .push_back(CallOutput::Event(CallEvent::Connected));
            }
            Event::IceConnectionStateChange(s) => match s {
                IceConnectionState::Disconnected if self.state == State::Active => {
                    self.deadline = Some(now + DISCONNECT_GRACE);
                }
                IceConnectionState::Connected | IceConnectionState::Completed
                    if self.state == State::Active =>
                {
                    self.deadline = None;
                }
                _ => {}
            },
            Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.mid.is_none() => {
                self.mid = Some(m.mid);
            }
            Event::MediaData(d) if self.state == State::Active => {
                match self.codec.decode(Some(&d.data)) {
                    Ok(samples) => self.sink.frame(&samples),
                    Err(e) => tracing::debug!(error = %e, "undecodable audio frame dropped"),
                }
            }
            Event::ChannelOpen(id, _) => self.channel = Some(id),
            Event::ChannelData(d) if !d.binary && d.data.len() <= MAX_CHANNEL_TEXT => {
                if let Ok(text) = std::str::from_utf8(&d.data) {
                    self.outputs
                        .push_back(CallOutput::Event(CallEvent::Text(text.to_string())));
                }
            }
            _ => {}
        }
    }
}

fn audio_clock() -> str0m::media::Frequency {
    str0m::media::Frequency::FORTY_EIGHT_KHZ
}

#[cfg(test)]
mod tests;
