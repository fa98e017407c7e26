//! Call signalling in the model, as `hestia call` does it: every signal is an end-to-end
//! message through the callers' and callees' home nodes. The caller sends an offer and rings
//! for [`MAX_OFFER_AGE_MS`]; the callee's device rings when the offer reaches it in time (a
//! later offer is a missed call), or answers busy when already in a call; a person answers
//! with `call_answer_probability` after an exponential delay; answer and candidates cross,
//! the call is connected when the callee has the caller's candidates, and the caller hangs up
//! after an exponential duration (or, unanswered, at the ring timeout). Media is not modelled.
//!
//! A phone that sleeps rings only if a wake-up gets it connected while the offer is fresh:
//! this is where push latency and a node's wake-up delay show as missed calls.

use super::*;
use hestia_protocol::call::{CallId, CallSignal, HangupReason, MAX_OFFER_AGE_MS};

/// Bytes of the session descriptions (a str0m offer and answer for Opus audio and a data
/// channel, with a DTLS fingerprint and ICE credentials), and of one candidate line.
const OFFER_SDP_BYTES: usize = 1_100;
const ANSWER_SDP_BYTES: usize = 900;
const CANDIDATE_BYTES: usize = 90;
/// Candidates each side sends (a host address and a relayed one).
const CANDIDATES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signal {
    Offer,
    Answer,
    Candidates,
    Busy,
    Hangup,
}

pub(super) struct Call {
    pub(super) caller: usize,
    pub(super) callee: usize,
    pub(super) placed_at: Millis,
    /// The callee's device rang / the person picked up / the callee had the caller's
    /// candidates (connected).
    pub(super) rang_at: Option<Millis>,
    pub(super) answered_at: Option<Millis>,
    pub(super) connected_at: Option<Millis>,
    /// The caller heard the answer before its ring timeout.
    answer_heard: bool,
    /// The callee was in another call.
    pub(super) busy: bool,
    /// The callee's device was a sleeping phone when the offer was sent.
    pub(super) callee_slept: bool,
    /// The offer reached the callee after the ring timeout: shown as a missed call.
    pub(super) seen_late: bool,
}

/// The calls this shard's users placed or were offered. A call between users of two shards has
/// a record in each, each side filling in its own fields; the results merge the two.
#[derive(Default)]
pub(super) struct Calls {
    pub(super) list: IdMap<Call>,
    /// How many calls this shard's users placed.
    made: usize,
    /// Sealed-sender bytes of each kind of signal (measured from the real types once).
    sizes: Option<[usize; 5]>,
}

fn signal_sizes() -> [usize; 5] {
    use hestia_protocol::envelope::Content;
    let call = CallId([0; 16]);
    let sdp = |n: usize| "v".repeat(n);
    let of = |s: CallSignal| sealed_len(Content::Call(s));
    [
        of(CallSignal::Offer {
            call,
            sdp: sdp(OFFER_SDP_BYTES),
        }),
        of(CallSignal::Answer {
            call,
            sdp: sdp(ANSWER_SDP_BYTES),
        }),
        of(CallSignal::Candidates {
            call,
            candidates: vec!["c".repeat(CANDIDATE_BYTES); CANDIDATES],
        }),
        of(CallSignal::Busy { call }),
        of(CallSignal::Hangup {
            call,
            reason: HangupReason::Normal,
        }),
    ]
}

impl Shard {
    /// Time to a user's next call, if the scenario has calls.
    pub(super) fn call_gap(&mut self) -> Option<Millis> {
        let rate = self.sc.calls_per_user_per_hour;
        (rate > 0.0).then(|| exp_from(&mut self.calls_rng, 3_600_000.0 / rate))
    }

    /// Sends one signal of call `c` from `u` to `r`.
    fn signal(&mut self, c: usize, u: usize, r: usize, signal: Signal) {
        if self.nodes[self.devices[u].node].core.is_none() {
            return; // the home node is down: the signal is not sent
        }
        let sizes = *self.calls.sizes.get_or_insert_with(signal_sizes);
        let sealed = sizes[signal as usize];
        let envelope = self.envelope_sealing(r, sealed);
        self.post(u, r, Carries::Call(c, signal), envelope);
    }

    pub(super) fn compose_call(&mut self, u: usize) {
        if let Some(next) = self.call_gap()
            && self.now + next <= EPOCH_MS + ms(self.sc.duration_s)
        {
            self.schedule(self.now + next, Ev::ComposeCall(u));
        }
        let callee = pick(
            &self.w.recipient_weights,
            self.w.homes.len(),
            u,
            &mut self.calls_rng,
        );
        let d = &self.devices[u];
        if !d.online || d.in_call.is_some() || callee == u || self.nodes[d.node].core.is_none() {
            return;
        }
        let c = self.number(self.calls.made);
        self.calls.made += 1;
        self.calls.list.0.insert(
            c,
            Call {
                caller: u,
                callee,
                placed_at: self.now,
                rang_at: None,
                answered_at: None,
                connected_at: None,
                answer_heard: false,
                busy: false,
                // Known where the offer is recorded (`offer_recorded`).
                callee_slept: false,
                seen_late: false,
            },
        );
        self.release_held(u);
        self.devices[u].in_call = Some(c);
        self.signal(c, u, callee, Signal::Offer);
        self.schedule(self.now + MAX_OFFER_AGE_MS, Ev::RingTimeout(c));
    }

    /// The offer of call `c` from `caller` was sent to `callee`, one of this shard's users: the
    /// callee's side of the call begins (if the caller is another shard's), with whether the
    /// callee's device was a sleeping phone then.
    pub(super) fn offer_recorded(&mut self, c: usize, caller: usize, callee: usize, at: Millis) {
        let slept = self.w.phones[callee] && !self.connected(callee);
        if let Some(call) = self.calls.list.0.get_mut(&c) {
            call.callee_slept = slept;
            return;
        }
        self.calls.list.0.insert(
            c,
            Call {
                caller,
                callee,
                placed_at: at,
                rang_at: None,
                answered_at: None,
                connected_at: None,
                answer_heard: false,
                busy: false,
                callee_slept: slept,
                seen_late: false,
            },
        );
        // The caller's ring timeout is in its own shard; this is the callee's.
        self.schedule(at + MAX_OFFER_AGE_MS, Ev::RingTimeout(c));
    }

    /// Merges the other side's record of a call into this one (for the results).
    pub(super) fn merge_call(into: &mut Call, other: Call) {
        into.rang_at = into.rang_at.or(other.rang_at);
        into.answered_at = into.answered_at.or(other.answered_at);
        into.connected_at = into.connected_at.or(other.connected_at);
        into.answer_heard |= other.answer_heard;
        into.busy |= other.busy;
        into.callee_slept |= other.callee_slept;
        into.seen_late |= other.seen_late;
    }

    /// Device `u` received a signal of call `c`.
    pub(super) fn call_signal(&mut self, u: usize, c: usize, signal: Signal) {
        let Some(call) = self.calls.list.0.get(&c) else {
            return;
        };
        let (caller, callee, placed_at) = (call.caller, call.callee, call.placed_at);
        match signal {
            Signal::Offer if u == callee => {
                if self.now >= placed_at + MAX_OFFER_AGE_MS {
                    self.calls.list[c].seen_late = true;
                } else if self.devices[u].in_call.is_some() {
                    self.calls.list[c].busy = true;
                    self.signal(c, u, caller, Signal::Busy);
                } else {
                    self.calls.list[c].rang_at = Some(self.now);
                    self.release_held(u);
                    self.devices[u].in_call = Some(c);
                    let answers = self.calls_rng.random::<f64>() < self.sc.call_answer_probability;
                    let delay = exp_from(&mut self.calls_rng, self.sc.call_answer_mean_s * 1000.0);
                    if answers && self.now + delay < placed_at + MAX_OFFER_AGE_MS {
                        self.schedule(self.now + delay, Ev::CallAnswer(c));
                    }
                }
            }
            Signal::Answer if u == caller && self.devices[u].in_call == Some(c) => {
                self.calls.list[c].answer_heard = true;
                self.signal(c, u, callee, Signal::Candidates);
            }
            Signal::Candidates
                if u == callee
                    && self.devices[u].in_call == Some(c)
                    && self.calls.list[c].connected_at.is_none() =>
            {
                self.calls.list[c].connected_at = Some(self.now);
                let length = exp_from(&mut self.calls_rng, self.sc.call_mean_s * 1000.0);
                // The caller hangs up: in its shard, no sooner than the lookahead allows.
                let at = if self.devices.holds(caller) {
                    self.now + length
                } else {
                    self.now + length.max(self.w.lookahead)
                };
                self.schedule_at_node(self.w.homes[caller], at, Ev::CallEnd(c));
            }
            Signal::Busy if u == caller => self.leave_call(u, c),
            Signal::Hangup if u == callee => self.leave_call(u, c),
            _ => {}
        }
    }

    /// The callee picks up, if the call still rings on its side.
    pub(super) fn call_answer(&mut self, c: usize) {
        let call = &self.calls.list[c];
        let (caller, callee) = (call.caller, call.callee);
        if self.devices[callee].in_call != Some(c) || self.now >= call.placed_at + MAX_OFFER_AGE_MS
        {
            return;
        }
        self.calls.list[c].answered_at = Some(self.now);
        self.signal(c, callee, caller, Signal::Answer);
        self.signal(c, callee, caller, Signal::Candidates);
    }

    /// The caller hangs up a call that was connected (the callee leaves when the hang-up
    /// reaches it: a device in a call stays connected).
    pub(super) fn call_end(&mut self, c: usize) {
        let (caller, callee) = (self.calls.list[c].caller, self.calls.list[c].callee);
        if self.devices[caller].in_call == Some(c) {
            self.signal(c, caller, callee, Signal::Hangup);
            self.leave_call(caller, c);
        }
    }

    /// Sixty seconds after the offer: an unanswered caller stops ringing (and says so), and
    /// a callee still ringing stops too.
    /// Each side in its own shard (one event does both when they share one).
    pub(super) fn ring_timeout(&mut self, c: usize) {
        let call = &self.calls.list[c];
        let (caller, callee, heard) = (call.caller, call.callee, call.answer_heard);
        if self.devices.holds(caller) && !heard && self.devices[caller].in_call == Some(c) {
            self.signal(c, caller, callee, Signal::Hangup);
            self.leave_call(caller, c);
        }
        if self.devices.holds(callee)
            && self.calls.list[c].answered_at.is_none()
            && self.devices[callee].in_call == Some(c)
        {
            self.leave_call(callee, c);
        }
    }

    fn leave_call(&mut self, u: usize, c: usize) {
        if self.devices[u].in_call == Some(c) {
            self.release_held(u);
            self.devices[u].in_call = None;
            if !self.connected(u) {
                self.stop_fetching(u);
            }
            self.sleep_if_idle(u);
        }
    }
}
