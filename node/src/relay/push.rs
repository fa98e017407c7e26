//! Push wake-ups, the relay core's side: who to wake, when, and what to do with the answer.
//!
//! A user registers Web Push subscriptions (`protocol::push`). When an envelope is stored for a
//! user none of whose devices is connected, each subscription that is *armed* is due a wake-up
//! (after an optional random delay, a node setting) and goes out as [`super::Output::Wake`]; the
//! driver sends the HTTP request and reports a [`WakeOutcome`] through
//! [`super::Core::handle_wake_result`]. After a wake-up the subscription stays quiet
//! (coalescing) until the user has connected and drained their mailbox; then the next envelope
//! wakes it again.
//!
//! Failures: 404 and 410 mark the subscription removed (durably; the user sees it in
//! `push status`); 429, 5xx and network failures are retried with doubling delays, at most
//! [`MAX_WAKE_ATTEMPTS`] times, after which the subscription is armed again so the next
//! envelope tries anew; other refusals are not retried. Mail never waits for any of this: it is
//! durable and fetchable before a wake-up is even due.
//!
//! Wake-up state (armed, counts) is memory only: after a restart every subscription is armed,
//! so at most one extra wake-up follows a restart.

use super::{HashMap, Output, Token};
use hestia_protocol::Millis;
use hestia_protocol::identity::UserId;
use hestia_protocol::push::{self, MAX_SUBSCRIPTIONS_PER_USER, Subscription};
use hestia_protocol::wire::{ClientError, PushInfo, PushState, PushSubscriptionState, WakeFailure};
use hestia_store::node::{NodeWrite, PushRecord};
use std::collections::{BTreeSet, VecDeque};

/// Wake-ups handed to the driver and not yet answered. Each is one HTTP request the driver
/// holds open; beyond this, due wake-ups wait for an answer to free a place.
pub const MAX_WAKES_IN_FLIGHT: usize = 64;
/// Attempts of one wake-up before it is given up (1 + 2 + 4 + 8 s of waiting between them).
pub const MAX_WAKE_ATTEMPTS: u32 = 5;
/// Delay before the first retry; doubled for each further one.
pub const WAKE_RETRY_BASE_MS: Millis = 1000;
/// Longest delay between attempts, also the most of a push service's `Retry-After` honoured.
pub const WAKE_RETRY_MAX_MS: Millis = 60_000;
/// Registrations whose endpoint name the driver is resolving at once (each a DNS lookup of up
/// to a few seconds); beyond this one is refused as overloaded.
pub const MAX_PENDING_ENDPOINT_CHECKS: usize = 16;

/// The node's push settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushConfig {
    /// The node's VAPID public key (P-256, uncompressed). `None`: the node sends no push and
    /// refuses registrations.
    pub vapid_key: Option<Vec<u8>>,
    /// Accept endpoints on loopback addresses (tests against a local push service).
    pub allow_loopback: bool,
    /// Each wake-up waits a random time up to this before it goes out, so its timing says less
    /// about the arrival of one envelope. 0: at once.
    pub max_delay_ms: Millis,
}

/// Identifies a wake-up handed to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WakeId(pub u64);

/// What became of one wake-up request, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The push service accepted it (2xx).
    Delivered,
    /// The subscription is gone (404 or 410).
    Gone { status: u16 },
    /// Worth another attempt (429, 5xx, no connection, timeout), no sooner than
    /// `retry_after_ms` if the service said so.
    Retry {
        failure: WakeFailure,
        retry_after_ms: Option<Millis>,
    },
    /// Refused for good (another 4xx, or the endpoint now resolves to a refused address).
    Failed(WakeFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The next envelope for an offline user wakes it.
    Armed,
    /// A wake-up is due at `at`; `attempt` attempts failed before.
    Due { at: Millis, attempt: u32 },
    /// With the driver. `drained` is set if the user drained their mailbox meanwhile.
    InFlight {
        wake: WakeId,
        attempt: u32,
        drained: bool,
    },
    /// Woken; quiet until the user connects and drains.
    Woken,
}

struct Sub {
    id: [u8; 16],
    record: PushRecord,
    phase: Phase,
    wakes_sent: u32,
    last_wake_at: Option<Millis>,
    failed_attempts: u32,
    last_failure: Option<WakeFailure>,
}

impl Sub {
    fn new(record: PushRecord) -> Sub {
        Sub {
            id: push::endpoint_id(&record.subscription.endpoint),
            record,
            phase: Phase::Armed,
            wakes_sent: 0,
            last_wake_at: None,
            failed_attempts: 0,
            last_failure: None,
        }
    }

    fn state(&self) -> PushSubscriptionState {
        PushSubscriptionState {
            endpoint: self.record.subscription.endpoint.clone(),
            registered_at: self.record.registered_at,
            state: match self.record.removed {
                Some((at, status)) => PushState::Removed { at, status },
                None => PushState::Active {
                    woken: matches!(self.phase, Phase::Woken),
                    wakes_sent: self.wakes_sent,
                    last_wake_at: self.last_wake_at,
                    failed_attempts: self.failed_attempts,
                    last_failure: self.last_failure,
                },
            },
        }
    }
}

/// `user`'s subscription with endpoint id `id`.
fn find<'a>(
    subs: &'a mut HashMap<UserId, Vec<Sub>>,
    user: &UserId,
    id: &[u8; 16],
) -> Option<&'a mut Sub> {
    subs.get_mut(user)?.iter_mut().find(|s| s.id == *id)
}

/// Every local user's subscriptions and their wake-up state.
pub(super) struct Pushes {
    config: PushConfig,
    subs: HashMap<UserId, Vec<Sub>>,
    /// Due wake-ups: when, whose, which endpoint.
    due: BTreeSet<(Millis, UserId, [u8; 16])>,
    in_flight: HashMap<WakeId, (UserId, [u8; 16])>,
    next_wake: u64,
    /// Registrations waiting for the driver's check of their endpoint's name.
    checking: HashMap<Token, (UserId, Subscription)>,
}

/// What to do with a registration.
pub(super) enum Registration {
    Done(Result<PushInfo, ClientError>),
    /// Its endpoint is a name: have the driver resolve it ([`super::Output::CheckEndpoint`]).
    Resolve,
}

impl Pushes {
    pub(super) fn new(config: PushConfig, records: Vec<(UserId, PushRecord)>) -> Pushes {
        let mut subs: HashMap<UserId, Vec<Sub>> = HashMap::default();
        for (user, record) in records {
            let list = subs.entry(user).or_default();
            if list.len() < MAX_SUBSCRIPTIONS_PER_USER {
                list.push(Sub::new(record));
            }
        }
        Pushes {
            config,
            subs,
            due: BTreeSet::new(),
            in_flight: HashMap::default(),
            next_wake: 0,
            checking: HashMap::default(),
        }
    }

    /// How many subscriptions `user` holds.
    pub(super) fn count(&self, user: &UserId) -> usize {
        self.subs.get(user).map_or(0, Vec::len)
    }

    pub(super) fn info(&self, user: &UserId) -> PushInfo {
        PushInfo {
            vapid_key: self.config.vapid_key.clone().unwrap_or_default(),
            subscriptions: self
                .subs
                .get(user)
                .map(|l| l.iter().map(Sub::state).collect())
                .unwrap_or_default(),
        }
    }

    /// A registration from `user`: refused, done, or (an endpoint that is a name) held under
    /// `token` until [`Pushes::checked`] says what the name resolves to.
    pub(super) fn register(
        &mut self,
        token: Token,
        user: UserId,
        subscription: Subscription,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> Registration {
        if self.config.vapid_key.is_none() {
            return Registration::Done(Err(ClientError::PushDisabled));
        }
        match push::check_endpoint(&subscription.endpoint, self.config.allow_loopback) {
            Err(e) => return Registration::Done(Err(ClientError::PushRefused(e))),
            Ok(e) if e.ip().is_none() => {
                if let Err(e) = push::check_subscription(&subscription, self.config.allow_loopback)
                {
                    return Registration::Done(Err(ClientError::PushRefused(e)));
                }
                if self.checking.len() >= MAX_PENDING_ENDPOINT_CHECKS {
                    return Registration::Done(Err(ClientError::Overloaded));
                }
                self.checking.insert(token, (user, subscription));
                return Registration::Resolve;
            }
            Ok(_) => {}
        }
        Registration::Done(self.store(user, subscription, now, writes))
    }

    /// The driver's verdict on the endpoint of the registration held under `token`: the
    /// user and the answer, if one was held.
    pub(super) fn checked(
        &mut self,
        token: Token,
        verdict: Result<(), push::EndpointRefusal>,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> Option<Result<PushInfo, ClientError>> {
        let (user, subscription) = self.checking.remove(&token)?;
        Some(match verdict {
            Ok(()) => self.store(user, subscription, now, writes),
            Err(e) => Err(ClientError::PushRefused(e)),
        })
    }

    fn store(
        &mut self,
        user: UserId,
        subscription: Subscription,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> Result<PushInfo, ClientError> {
        push::check_subscription(&subscription, self.config.allow_loopback)
            .map_err(ClientError::PushRefused)?;
        let record = PushRecord {
            subscription,
            registered_at: now,
            removed: None,
        };
        let new = Sub::new(record.clone());
        let list = self.subs.entry(user).or_default();
        if let Some(i) = list.iter().position(|s| s.id == new.id) {
            let old = std::mem::replace(&mut list[i], new);
            self.forget(&user, &old);
        } else {
            if list.len() >= MAX_SUBSCRIPTIONS_PER_USER {
                // A subscription the push service removed makes room; a live one does not.
                let Some(i) = list.iter().position(|s| s.record.removed.is_some()) else {
                    return Err(ClientError::TooManySubscriptions);
                };
                let old = list.remove(i);
                writes.push(NodeWrite::DeletePush(user, old.id));
            }
            self.subs.entry(user).or_default().push(new);
        }
        writes.push(NodeWrite::PutPush(user, record));
        Ok(self.info(&user))
    }

    /// Removes `user`'s subscription with this endpoint, or all of them.
    pub(super) fn unregister(
        &mut self,
        user: UserId,
        endpoint: Option<&str>,
        writes: &mut Vec<NodeWrite>,
    ) -> PushInfo {
        let target = endpoint.map(push::endpoint_id);
        let mut removed = Vec::new();
        if let Some(list) = self.subs.get_mut(&user) {
            let mut i = 0;
            while i < list.len() {
                if target.is_none_or(|t| t == list[i].id) {
                    removed.push(list.remove(i));
                } else {
                    i += 1;
                }
            }
            if list.is_empty() {
                self.subs.remove(&user);
            }
        }
        for old in removed {
            writes.push(NodeWrite::DeletePush(user, old.id));
            self.forget(&user, &old);
        }
        self.info(&user)
    }

    /// Drops a subscription's pending timer or request (its answer is then ignored).
    fn forget(&mut self, user: &UserId, old: &Sub) {
        match old.phase {
            Phase::Due { at, .. } => {
                self.due.remove(&(at, *user, old.id));
            }
            Phase::InFlight { wake, .. } => {
                self.in_flight.remove(&wake);
            }
            Phase::Armed | Phase::Woken => {}
        }
    }

    /// An envelope was stored for `user`, none of whose devices is connected. `random` picks
    /// the delay.
    pub(super) fn mail_arrived(&mut self, user: &UserId, now: Millis, random: u64) {
        let Some(list) = self.subs.get_mut(user) else {
            return;
        };
        let delay = random % (self.config.max_delay_ms + 1);
        for s in list.iter_mut() {
            if s.phase == Phase::Armed && s.record.removed.is_none() {
                let at = now.saturating_add(delay);
                s.phase = Phase::Due { at, attempt: 0 };
                s.failed_attempts = 0;
                self.due.insert((at, *user, s.id));
            }
        }
    }

    /// A device of `user` connected: wake-ups not yet sent are not needed.
    pub(super) fn user_online(&mut self, user: &UserId) {
        let Some(list) = self.subs.get_mut(user) else {
            return;
        };
        for s in list.iter_mut() {
            if let Phase::Due { at, .. } = s.phase {
                self.due.remove(&(at, *user, s.id));
                s.phase = Phase::Woken;
            }
        }
    }

    /// A connected device of `user` found the mailbox empty: the next envelope wakes again.
    pub(super) fn drained(&mut self, user: &UserId) {
        let Some(list) = self.subs.get_mut(user) else {
            return;
        };
        for s in list.iter_mut() {
            match &mut s.phase {
                Phase::Woken => s.phase = Phase::Armed,
                Phase::InFlight { drained, .. } => *drained = true,
                Phase::Armed | Phase::Due { .. } => {}
            }
        }
    }

    /// Hands due wake-ups to the driver, within [`MAX_WAKES_IN_FLIGHT`]. `online` says whether
    /// a user has a device connected now (then the wake-up is not needed).
    pub(super) fn poll(
        &mut self,
        now: Millis,
        online: impl Fn(&UserId) -> bool,
        outputs: &mut VecDeque<Output>,
    ) {
        while self.in_flight.len() < MAX_WAKES_IN_FLIGHT {
            let Some(&(at, user, id)) = self.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.pop_first();
            let Some(s) = find(&mut self.subs, &user, &id) else {
                continue;
            };
            let Phase::Due { attempt, .. } = s.phase else {
                continue;
            };
            if online(&user) {
                s.phase = Phase::Woken;
                continue;
            }
            let wake = WakeId(self.next_wake);
            self.next_wake += 1;
            s.phase = Phase::InFlight {
                wake,
                attempt,
                drained: false,
            };
            self.in_flight.insert(wake, (user, id));
            outputs.push_back(Output::Wake {
                wake,
                target: s.record.subscription.clone(),
            });
        }
    }

    /// When [`Pushes::poll`] next has work, if ever.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        if self.in_flight.len() >= MAX_WAKES_IN_FLIGHT {
            return None; // an answer frees a place, and the core polls again then
        }
        self.due.first().map(|(at, _, _)| *at)
    }

    /// The driver's answer to wake-up `wake`. `random` jitters the retry delay.
    pub(super) fn result(
        &mut self,
        wake: WakeId,
        outcome: WakeOutcome,
        now: Millis,
        random: u64,
        writes: &mut Vec<NodeWrite>,
    ) {
        let Some((user, id)) = self.in_flight.remove(&wake) else {
            return; // unregistered or replaced meanwhile
        };
        let Some(s) = find(&mut self.subs, &user, &id) else {
            return;
        };
        let Phase::InFlight {
            attempt, drained, ..
        } = s.phase
        else {
            return;
        };
        match outcome {
            WakeOutcome::Delivered => {
                s.wakes_sent = s.wakes_sent.saturating_add(1);
                s.last_wake_at = Some(now);
                s.phase = if drained { Phase::Armed } else { Phase::Woken };
            }
            WakeOutcome::Gone { status } => {
                tracing::info!("push subscription removed by its push service");
                s.record.removed = Some((now, status));
                s.phase = Phase::Armed;
                writes.push(NodeWrite::PutPush(user, s.record.clone()));
            }
            WakeOutcome::Retry {
                failure,
                retry_after_ms,
            } => {
                s.failed_attempts = attempt + 1;
                s.last_failure = Some(failure);
                if attempt + 1 >= MAX_WAKE_ATTEMPTS || drained {
                    // Given up (or no longer needed): the next envelope tries again.
                    tracing::debug!(attempts = attempt + 1, "push wake-up given up");
                    s.phase = Phase::Armed;
                } else {
                    let backoff = WAKE_RETRY_BASE_MS
                        .saturating_mul(1 << attempt.min(16))
                        .min(WAKE_RETRY_MAX_MS);
                    let jitter = random % (backoff / 5 + 1);
                    let wait = retry_after_ms.map_or(backoff - jitter, |r| {
                        r.clamp(backoff - jitter, WAKE_RETRY_MAX_MS)
                    });
                    let at = now.saturating_add(wait);
                    s.phase = Phase::Due {
                        at,
                        attempt: attempt + 1,
                    };
                    self.due.insert((at, user, id));
                }
            }
            WakeOutcome::Failed(failure) => {
                s.failed_attempts = attempt + 1;
                s.last_failure = Some(failure);
                s.phase = Phase::Armed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Harness, T0, restarted};
    use super::*;
    use hestia_protocol::push::{EndpointRefusal, P256DH_LEN, WAKE_BODY};
    use hestia_protocol::wire::{ClientOp, ClientResponse};
    use hestia_store::node::NodeStore;

    fn sub(n: u8) -> Subscription {
        Subscription {
            // An IP literal: registered at once (a name waits for the driver's check).
            endpoint: format!("https://93.184.216.34/wake/{n}"),
            p256dh: vec![4; P256DH_LEN],
            auth: [n; 16],
        }
    }

    /// Bob registers `s` on node B and goes offline.
    fn register_offline(h: &mut Harness, s: Subscription) {
        let r = h.client(false, T0, ClientOp::PushRegister(s));
        assert!(matches!(r[..], [ClientResponse::Push(_)]), "{r:?}");
        h.b.handle_client_disconnected("device");
    }

    /// Alice sends `n` envelopes to Bob across the federation at `now`.
    fn mail_bob(h: &mut Harness, n: usize, now: Millis) {
        for i in 0..n {
            let e = h.letter(&format!("m{i}"), now, 3_600_000);
            h.send_to_b(now, e);
        }
        while h.pump(now) > 0 {}
        h.b.handle_timeout(now);
        h.drain(false);
    }

    fn status(h: &mut Harness, now: Millis) -> Vec<PushSubscriptionState> {
        match &h.client(false, now, ClientOp::PushStatus)[..] {
            [ClientResponse::Push(info)] => info.subscriptions.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// Bob connects, fetches and acknowledges everything, and leaves.
    fn drain_bob(h: &mut Harness, now: Millis) {
        loop {
            let got = h.client(
                false,
                now,
                ClientOp::Fetch {
                    limit: 256,
                    wait_ms: 0,
                },
            );
            let [ClientResponse::Envelopes(envs)] = &got[..] else {
                panic!("{got:?}")
            };
            if envs.is_empty() {
                break;
            }
            let ids = envs.iter().map(|e| e.id).collect();
            h.client(false, now, ClientOp::Ack(ids));
        }
        h.b.handle_client_disconnected("device");
    }

    #[test]
    fn twenty_envelopes_wake_an_offline_user_once_and_a_drain_rearms() {
        let mut h = Harness::new();
        register_offline(&mut h, sub(1));
        mail_bob(&mut h, 20, T0 + 1);
        assert_eq!(h.wakes.len(), 1, "one wake-up for twenty envelopes");
        let (wake, target) = h.wakes[0].clone();
        assert_eq!(target, sub(1));
        h.b.handle_wake_result(T0 + 2, wake, WakeOutcome::Delivered);
        mail_bob(&mut h, 5, T0 + 3);
        assert_eq!(h.wakes.len(), 1, "quiet until Bob connects and drains");

        drain_bob(&mut h, T0 + 4);
        mail_bob(&mut h, 1, T0 + 5);
        assert_eq!(
            h.wakes.len(),
            2,
            "the next envelope after a drain wakes again"
        );
        let [s] = &status(&mut h, T0 + 6)[..] else {
            panic!()
        };
        assert!(matches!(
            s.state,
            PushState::Active {
                woken: false,
                wakes_sent: 1,
                ..
            }
        ));
        // The body is the driver's constant; the output carries no envelope, sender or count.
        assert!(!WAKE_BODY.is_empty());
    }

    #[test]
    fn no_wake_up_while_a_device_is_connected_and_none_once_it_connects() {
        let mut h = Harness::new();
        h.client(false, T0, ClientOp::PushRegister(sub(1)));
        // Bob's connection is open: mail goes to him directly.
        mail_bob(&mut h, 3, T0 + 1);
        assert!(h.wakes.is_empty());

        // With a delay, a wake-up due but not sent is dropped when Bob connects first.
        let mut h = Harness::new();
        h.b = {
            let mut c = restarted("NodeB", &h.store_b, T0);
            c.config.push.max_delay_ms = 10_000;
            c.pushes.config.max_delay_ms = 10_000;
            c
        };
        register_offline(&mut h, sub(1));
        mail_bob(&mut h, 1, T0 + 1);
        assert!(h.wakes.is_empty(), "not before its random delay");
        h.client(false, T0 + 2, ClientOp::PrekeyStatus); // Bob connects
        h.b.handle_timeout(T0 + 20_000);
        h.drain(false);
        assert!(h.wakes.is_empty());
    }

    #[test]
    fn a_gone_subscription_is_removed_durably_and_never_tried_again() {
        let mut h = Harness::new();
        register_offline(&mut h, sub(1));
        mail_bob(&mut h, 1, T0 + 1);
        let (wake, _) = h.wakes[0].clone();
        h.b.handle_wake_result(T0 + 2, wake, WakeOutcome::Gone { status: 410 });
        h.drain(false);
        drain_bob(&mut h, T0 + 3);
        mail_bob(&mut h, 1, T0 + 4);
        assert_eq!(
            h.wakes.len(),
            1,
            "nothing more goes to a removed subscription"
        );
        h.b = restarted("NodeB", &h.store_b, T0 + 5);
        let [s] = &status(&mut h, T0 + 5)[..] else {
            panic!()
        };
        assert_eq!(
            s.state,
            PushState::Removed {
                at: T0 + 2,
                status: 410
            }
        );
        // Registering it again makes it live again.
        register_offline(&mut h, sub(1));
        mail_bob(&mut h, 1, T0 + 6);
        assert_eq!(h.wakes.len(), 2);
    }

    #[test]
    fn failures_are_retried_with_growing_delays_then_given_up_until_the_next_envelope() {
        let mut h = Harness::new();
        register_offline(&mut h, sub(1));
        mail_bob(&mut h, 1, T0);
        let retry = WakeOutcome::Retry {
            failure: WakeFailure::Status(503),
            retry_after_ms: None,
        };
        let mut now = T0;
        let mut gaps = Vec::new();
        for attempt in 0..MAX_WAKE_ATTEMPTS {
            assert_eq!(h.wakes.len(), attempt as usize + 1);
            let (wake, _) = h.wakes[attempt as usize].clone();
            h.b.handle_wake_result(now, wake, retry);
            h.drain(false);
            match h.b.poll_timeout() {
                Some(at) if attempt + 1 < MAX_WAKE_ATTEMPTS => {
                    gaps.push(at - now);
                    now = at;
                    h.b.handle_timeout(now);
                    h.drain(false);
                }
                _ => {}
            }
        }
        assert_eq!(h.wakes.len(), MAX_WAKE_ATTEMPTS as usize, "bounded");
        assert!(gaps.windows(2).all(|w| w[1] > w[0]), "growing: {gaps:?}");
        assert!(gaps[0] >= WAKE_RETRY_BASE_MS * 4 / 5 && gaps[0] <= WAKE_RETRY_BASE_MS);
        let now = now + WAKE_RETRY_MAX_MS * 2;
        h.b.handle_timeout(now);
        h.drain(false);
        assert_eq!(h.wakes.len(), MAX_WAKE_ATTEMPTS as usize);
        let [s] = &status(&mut h, now)[..] else {
            panic!()
        };
        assert!(matches!(
            s.state,
            PushState::Active {
                failed_attempts: MAX_WAKE_ATTEMPTS,
                last_failure: Some(WakeFailure::Status(503)),
                ..
            }
        ));
        h.b.handle_client_disconnected("device");
        // The mail itself never waited on any of this; the next envelope tries again.
        mail_bob(&mut h, 1, now + 1);
        assert_eq!(h.wakes.len(), MAX_WAKE_ATTEMPTS as usize + 1);
        // A service's Retry-After is honoured, up to the cap.
        let (wake, _) = h.wakes.last().unwrap().clone();
        h.b.handle_wake_result(
            now + 2,
            wake,
            WakeOutcome::Retry {
                failure: WakeFailure::Status(429),
                retry_after_ms: Some(3_600_000),
            },
        );
        assert_eq!(h.b.poll_timeout(), Some(now + 2 + WAKE_RETRY_MAX_MS));
    }

    #[test]
    fn registrations_are_checked_and_bounded() {
        let mut h = Harness::new();
        let refused = |h: &mut Harness, s: Subscription| match &h.client(
            false,
            T0,
            ClientOp::PushRegister(s),
        )[..]
        {
            [ClientResponse::Error(e)] => *e,
            other => panic!("{other:?}"),
        };
        let with = |endpoint: &str| Subscription {
            endpoint: endpoint.into(),
            ..sub(1)
        };
        assert_eq!(
            refused(&mut h, with("ftp://push.example.org/")),
            ClientError::PushRefused(EndpointRefusal::NotHttp)
        );
        assert_eq!(
            refused(&mut h, with("http://192.168.1.1/push")),
            ClientError::PushRefused(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            refused(&mut h, with("http://127.0.0.1:8090/push")),
            ClientError::PushRefused(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            refused(
                &mut h,
                with(&format!("https://a.example/{}", "x".repeat(1000)))
            ),
            ClientError::PushRefused(EndpointRefusal::TooLong)
        );
        for n in 0..MAX_SUBSCRIPTIONS_PER_USER as u8 {
            h.client(false, T0, ClientOp::PushRegister(sub(n)));
        }
        // The same endpoint again replaces; a fifth is refused.
        h.client(false, T0, ClientOp::PushRegister(sub(0)));
        assert_eq!(status(&mut h, T0).len(), MAX_SUBSCRIPTIONS_PER_USER);
        assert_eq!(refused(&mut h, sub(9)), ClientError::TooManySubscriptions);
        h.client(
            false,
            T0,
            ClientOp::PushUnregister {
                endpoint: Some(sub(0).endpoint),
            },
        );
        assert_eq!(status(&mut h, T0).len(), MAX_SUBSCRIPTIONS_PER_USER - 1);
        h.client(false, T0, ClientOp::PushUnregister { endpoint: None });
        assert!(status(&mut h, T0).is_empty());
        h.drain(false);
        assert!(h.store_b.load().unwrap().push.is_empty(), "deleted durably");

        // An endpoint that is a name waits for the driver to resolve it, within a bound.
        let named = |n: usize| Subscription {
            endpoint: format!("https://push{n}.example.org/x"),
            ..sub(1)
        };
        assert!(
            h.client(false, T0, ClientOp::PushRegister(named(0)))
                .is_empty()
        );
        let (token, endpoint) = h.checks.pop().unwrap();
        assert_eq!(endpoint, named(0).endpoint);
        h.b.handle_endpoint_checked(T0, token, Ok(()));
        assert!(matches!(h.drain(false).2[..], [ClientResponse::Push(_)]));
        assert_eq!(status(&mut h, T0).len(), 1);
        assert!(
            h.client(false, T0, ClientOp::PushRegister(named(1)))
                .is_empty()
        );
        let (token, _) = h.checks.pop().unwrap();
        h.b.handle_endpoint_checked(T0, token, Err(EndpointRefusal::PrivateAddress));
        assert_eq!(
            h.drain(false).2,
            vec![ClientResponse::Error(ClientError::PushRefused(
                EndpointRefusal::PrivateAddress
            ))]
        );
        assert_eq!(
            status(&mut h, T0).len(),
            1,
            "nothing stored for a refused name"
        );
        for n in 0..MAX_PENDING_ENDPOINT_CHECKS {
            assert!(
                h.client(false, T0, ClientOp::PushRegister(named(n)))
                    .is_empty()
            );
        }
        assert_eq!(
            refused(&mut h, named(99)),
            ClientError::Overloaded,
            "checks in flight are bounded"
        );

        // A node without a VAPID key sends no push and says so.
        h.b.pushes.config.vapid_key = None;
        assert_eq!(refused(&mut h, sub(1)), ClientError::PushDisabled);
    }
}
