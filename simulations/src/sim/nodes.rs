//! The nodes in the model: the engine plays each relay core's driver (apply its writes, turn
//! its outputs into events on the simulated network), its crashes and restarts, and what a
//! sample counts of what it holds.

use super::*;

impl Shard {
    /// Applies a node's writes, then turns its outputs into scheduled events.
    pub(super) fn drive(&mut self, n: usize) {
        let Some(core) = self.nodes[n].core.as_mut() else {
            return;
        };
        let writes = core.take_writes();
        self.nodes[n]
            .store
            .apply(&writes)
            .expect("the memory store does not fail");
        let mut outputs = Vec::new();
        let mut checks = Vec::new();
        while let Some(o) = self.nodes[n].core.as_mut().expect("checked").poll_output() {
            // Bodies from the node's store, as the real driver reads them.
            outputs.push(
                o.load(&self.nodes[n].store)
                    .expect("the memory store does not fail"),
            );
        }
        for o in outputs {
            match o {
                Ready::Client { token, response } => {
                    if let Some((user, kind, conn)) = self.nodes[n].client_tokens.remove(&token) {
                        if conn != self.devices[user].conn {
                            continue; // its connection closed: the answer is lost with it
                        }
                        if let (Kind::Send(ids), ClientResponse::Sent(results)) = (&kind, &response)
                        {
                            for (id, r) in ids.iter().zip(results) {
                                if *r == hestia_protocol::wire::SendResult::DeliveredToNode {
                                    self.reached_node(id);
                                }
                            }
                        }
                        if self.hold_empty_answer(user, &kind, &response) {
                            continue;
                        }
                        let mut at = self.now + self.sc.client_latency_ms;
                        if let ClientResponse::Chunk(c) = &response {
                            self.files.bytes_down += c.len() as u64;
                            at += self.device_link(user, c.len() as u64, false);
                        }
                        self.schedule(
                            at,
                            Ev::ClientResp {
                                user,
                                kind,
                                resp: response,
                            },
                        );
                    }
                }
                Ready::Wake { wake, target } => self.wake_out(n, wake, &target.endpoint),
                // Every endpoint in the model names the one push service, which resolves.
                Ready::CheckEndpoint { token, .. } => checks.push(token),
                Ready::Admin { .. } => {}
                Ready::FedResponse { token, response } => {
                    let Some((from, batch, ids)) = self.nodes[n].fed_tokens.remove(&token) else {
                        continue;
                    };
                    if let FedResponse::Delivered(results) = &response {
                        for (id, r) in ids.iter().zip(results) {
                            match r {
                                DeliverResult::Accepted | DeliverResult::Duplicate => {
                                    self.reached_node(id)
                                }
                                DeliverResult::NoSuchUser => self.refused(id),
                                _ => {}
                            }
                        }
                    }
                    let bytes = codec::encoded_len(&response).map_or(0, |n| n as u64);
                    self.bytes_fed_resp += bytes;
                    if let FedResponse::Chunk(c) = &response {
                        self.files.bytes_fed += c.len() as u64;
                    }
                    let lost = self.rng.random::<f64>() < self.sc.link_loss;
                    if !lost && let Some(through) = self.gets_through_at(n, from) {
                        let at = through + self.link_latency(n, from, bytes);
                        let ev = Ev::FedResp {
                            node: from,
                            batch,
                            result: Ok(response),
                        };
                        self.schedule_at_node(from, at, ev);
                    }
                }
                Ready::FedRequest {
                    batch,
                    to_node,
                    request,
                } => {
                    self.nodes[n].pending.insert(batch);
                    let timeout = self.now + FED_TIMEOUT_MS;
                    self.schedule(timeout, Ev::FedTimeout { node: n, batch });
                    let bytes = codec::encoded_len(&request).map_or(0, |n| n as u64);
                    self.bytes_fed_req += bytes;
                    let Some(to) =
                        Self::node_index(&to_node).filter(|t| *t < self.w.node_ids.len())
                    else {
                        continue;
                    };
                    let lat = self.link_latency(n, to, bytes);
                    let Some(through) = self.gets_through_at(n, to) else {
                        continue; // held up by a partition: the sender times out
                    };
                    if self.rng.random::<f64>() < self.sc.link_loss {
                        continue; // lost: the sender times out
                    }
                    // A node that is down refuses the connection when the request gets there
                    // (see `Ev::FedReq`).
                    let ev = Ev::FedReq {
                        from: n,
                        to,
                        batch,
                        req: request,
                    };
                    self.schedule_at_node(to, through + lat, ev);
                }
            }
        }
        if !checks.is_empty() {
            let now = self.now;
            if let Some(core) = self.nodes[n].core.as_mut() {
                for token in checks {
                    core.handle_endpoint_checked(now, token, Ok(()));
                }
            }
            return self.drive(n);
        }
        self.rearm(n);
    }

    pub(super) fn rearm(&mut self, n: usize) {
        let Some(core) = self.nodes[n].core.as_ref() else {
            return;
        };
        // Only an earlier deadline needs a new timer event: a pending later one is kept (it
        // finds nothing due, or what became due, when it fires), so the queue is not filled
        // with superseded timers as deadlines move later.
        let next = core.poll_timeout().map(|t| t.max(self.now));
        if let Some(t) = next
            && self.nodes[n].timer_at.is_none_or(|cur| t < cur)
        {
            self.nodes[n].timer_at = Some(t);
            self.schedule(t, Ev::Timer(n));
        }
    }

    pub(super) fn refused(&mut self, id: &EnvelopeId) {
        if let Some(m) = self.msgs.get_mut(id)
            && m.device_at.is_none()
            && !m.refused
        {
            m.refused = true;
            self.count_refused += 1;
        }
    }

    pub(super) fn reached_node(&mut self, id: &EnvelopeId) {
        if let Some(m) = self.msgs.get_mut(id)
            && m.node_at.is_none()
        {
            m.node_at = Some(self.now);
            self.count_node += 1;
        }
    }

    pub(super) fn token(&mut self, n: usize) -> Token {
        self.nodes[n].next_token += 1;
        Token(self.nodes[n].next_token)
    }

    pub(super) fn crash(&mut self, i: usize) {
        let c = self.sc.crashes[i].clone();
        let node = &mut self.nodes[c.node];
        node.core = None;
        node.timer_at = None;
        node.client_tokens.clear();
        node.fed_tokens.clear();
        node.pending.clear();
        if c.disk_loss {
            let snap = node.store.load().expect("memory store");
            let mut lost: Vec<EnvelopeId> = Vec::new();
            node.store
                .for_each_mailbox(&mut |e| lost.push(e.id))
                .expect("memory store");
            // What waited to go to another node: its record is with the recipient's shard.
            let mut elsewhere = Vec::new();
            for r in &snap.outbox {
                match Self::node_index(&r.to_node).map(|t| self.w.shard_of_node[t] as usize) {
                    Some(shard) if shard != self.index => elsewhere.push((shard, r.id)),
                    _ => lost.push(r.id),
                }
            }
            node.store = MemNodeStore::without_chunk_bytes();
            for id in lost {
                self.lost_with_disk(&id);
            }
            for (shard, id) in elsewhere {
                self.outbox.push((shard, Cross::Lost(id)));
            }
        }
        for u in self.nodes[c.node].users.clone() {
            // Connections drop with the node: fetches and sessions are gone.
            self.release_held(u);
            self.devices[u].fetching = false;
            self.devices[u].session = false;
        }
        self.schedule(self.now + ms(c.down_s), Ev::Restart(i));
    }

    /// Envelope `id` went with a node's disk (unless a device already has it).
    pub(super) fn lost_with_disk(&mut self, id: &EnvelopeId) {
        if let Some(m) = self.msgs.get_mut(id)
            && m.device_at.is_none()
            && !m.lost_disk
        {
            m.lost_disk = true;
            self.count_lost += 1;
        }
    }

    pub(super) fn restart(&mut self, i: usize) {
        let n = self.sc.crashes[i].node;
        let seed = self.rng.next_u64();
        let config = node_config(&self.sc, self.nodes[n].id.clone(), seed);
        let core = relay::Core::from_store(config, &self.nodes[n].store, self.now);
        self.nodes[n].core = Some(core.expect("memory store"));
        let now = self.now;
        self.nodes[n]
            .core
            .as_mut()
            .expect("just set")
            .handle_timeout(now);
        self.drive(n);
        let register = self.sc.crashes[i].disk_loss;
        for user in self.nodes[n].users.clone() {
            let at = self.now + self.rng.random_range(0..=DEVICE_RECONNECT_MS);
            self.schedule(at, Ev::Reconnect { user, register });
        }
    }

    /// This shard's part of a sample: sums, and the largest node (`t_s` is the engine's).
    pub(super) fn tally(&self) -> Sample {
        let mut t = Sample {
            sent: self.sent,
            delivered_to_node: self.count_node,
            delivered_to_device: self.count_device,
            ..Sample::default()
        };
        for n in self.nodes.iter() {
            if let Some(c) = &n.core {
                let s = c.stats();
                t.outbox_envelopes += s.outbox_envelopes;
                t.mailbox_envelopes += s.mailbox_envelopes;
                t.max_node_envelopes = t
                    .max_node_envelopes
                    .max(s.outbox_envelopes + s.mailbox_envelopes);
                t.mailbox_bytes += s.stored_bytes;
                t.file_bytes += s.blob_bytes;
                t.max_node_bytes = t.max_node_bytes.max(s.stored_bytes + s.blob_bytes);
            }
        }
        t
    }
}
