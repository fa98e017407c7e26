//! A device's connection to its home node, as the engine models it: connected while the person
//! uses it, a wake-up keeps it awake or a call holds it; a phone that is none of these drops its
//! connection (the node sees it leave); one fetch loop per device; and the marks a wake-up's
//! delays are measured from.

use super::*;

impl Shard {
    /// Whether a device holds a connection to its home node: the person is using it, a wake-up
    /// woke it, or it is in a call.
    pub(super) fn connected(&self, u: usize) -> bool {
        let d = &self.devices[u];
        d.online || d.awake || d.in_call.is_some()
    }

    /// The device stops waiting on its long poll (it went offline): the answer is dropped.
    pub(super) fn stop_fetching(&mut self, u: usize) {
        self.release_held(u);
        let d = &mut self.devices[u];
        if d.fetching {
            d.fetching = false;
            d.fetch_epoch += 1;
        }
    }

    /// An envelope for `r` was stored at its home node now.
    pub(super) fn arrived(&mut self, r: usize) {
        if self.devices[r].phone && !self.connected(r) {
            self.devices[r].arrived_since.get_or_insert(self.now);
        }
    }

    /// A device connects (the person opened it, or a wake-up woke it): it fetches, and takes
    /// up its file transfers (anew if its connection had dropped).
    pub(super) fn came_online(&mut self, u: usize, reconnected: bool) {
        self.devices[u].waiting_since = None;
        self.devices[u].arrived_since = None;
        self.start_fetch(u);
        self.resume_files(u, reconnected);
    }

    /// A phone nobody uses, that no wake-up keeps awake and no call holds, drops its
    /// connection: the node sees it leave (and pushes the next envelope).
    pub(super) fn sleep_if_idle(&mut self, u: usize) {
        if !self.devices[u].phone || self.connected(u) {
            return;
        }
        self.stop_fetching(u);
        let d = &mut self.devices[u];
        d.session = false;
        d.conn += 1;
        let n = d.node;
        let peer = d.peer.clone();
        if let Some(core) = self.nodes[n].core.as_mut() {
            core.handle_client_disconnected(&peer);
            self.drive(n);
        }
    }
}

impl Shard {
    /// An answer leaves `u`'s home node now. If it is an empty answer to the device's current
    /// long poll, it is held and the renewal it brings about is scheduled as one event
    /// ([`Ev::Renew`]); true if so.
    pub(super) fn hold_empty_answer(
        &mut self,
        u: usize,
        kind: &Kind,
        resp: &ClientResponse,
    ) -> bool {
        let (Kind::Fetch(epoch), ClientResponse::Envelopes(envs)) = (kind, resp) else {
            return false;
        };
        let d = &self.devices[u];
        // With no session the renewal would be signed at its own time: not held.
        if !envs.is_empty()
            || *epoch != d.fetch_epoch
            || !d.fetching
            || !d.session
            // A held answer has its renewal in flight too.
            || d.renew.is_some()
            || !self.connected(u)
        {
            return false;
        }
        let arrives = self.now + self.sc.client_latency_ms;
        let d = &mut self.devices[u];
        d.renews += 1;
        let generation = d.renews;
        d.held = Some(HeldAnswer {
            arrives,
            epoch: *epoch,
        });
        d.renew = Some(generation);
        // The renewal the device sends when the answer arrives.
        self.bytes_client += fetch_request_len();
        let ev = Ev::Renew {
            user: u,
            generation,
            epoch: *epoch,
        };
        self.schedule(arrives + self.sc.client_latency_ms, ev);
        true
    }

    /// `u`'s connection, fetch loop or session is about to change. A held answer still on its
    /// way meets the change as the ordinary answer it stands for (and its renewal is void); one
    /// that arrived before it brought about its renewal, which is on its way to the node.
    pub(super) fn release_held(&mut self, u: usize) {
        let Some(h) = self.devices[u].held.take() else {
            return;
        };
        if h.arrives > self.now {
            self.devices[u].renew = None;
            self.bytes_client -= fetch_request_len();
            let ev = Ev::ClientResp {
                user: u,
                kind: Kind::Fetch(h.epoch),
                resp: ClientResponse::Envelopes(Vec::new()),
            };
            self.schedule(h.arrives, ev);
        }
    }

    /// At the end of a run whose last window ended at `limit`: the renewals of answers that
    /// would have arrived after it were never sent. (The count of bytes devices sent can still
    /// differ from a run with two events per renewal by the few renewals in flight when the run
    /// stops, as its windows can fall differently.)
    pub(super) fn unsend_held_renewals(&mut self, limit: Millis) {
        let unsent = self
            .devices
            .items
            .iter()
            .filter(|d| d.held.is_some_and(|h| h.arrives >= limit))
            .count() as u64;
        self.bytes_client -= unsent * fetch_request_len();
    }

    /// The renewal of `u`'s long poll reaches its home node (unless its answer met a change).
    pub(super) fn renew_arrives(&mut self, u: usize, generation: u32, epoch: u32) {
        let d = &mut self.devices[u];
        if d.renew != Some(generation) {
            return;
        }
        d.renew = None;
        // Its answer arrived before anything changed.
        d.held = None;
        let req = ClientRequest {
            auth: Auth::Session(d.key.user_id()),
            op: FETCH,
        };
        self.client_request_arrives(u, Kind::Fetch(epoch), req);
    }
}

/// Bytes of a long poll on a device's session, as [`Shard::send_client_request`] counts them.
fn fetch_request_len() -> u64 {
    static LEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        let req = ClientRequest {
            auth: Auth::Session(UserId([0; 32])),
            op: FETCH,
        };
        codec::encoded_len(&req).map_or(0, |n| n as u64)
    })
}
