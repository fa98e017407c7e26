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
