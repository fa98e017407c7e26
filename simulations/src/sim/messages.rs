//! Messages in the model: when a user writes (Poisson, thinned by the time of day) and to
//! whom, the envelopes the sizes real ones would have, cover traffic, the batching delay, and
//! the record of each message that goes to its recipient's shard.

use super::*;

impl Shard {
    pub(super) fn compose(&mut self, u: usize) {
        let next = self.compose_gap();
        if self.now + next <= EPOCH_MS + ms(self.sc.duration_s) {
            self.schedule(self.now + next, Ev::Compose(u));
        }
        if !self.devices[u].online {
            return; // people send while they are online
        }
        if self.sc.diurnal_amplitude > 0.0 {
            let a = self.sc.diurnal_amplitude;
            let t = (self.now - EPOCH_MS) as f64 / 1000.0;
            let rate = 1.0 + a * (2.0 * std::f64::consts::PI * t / self.sc.diurnal_period_s).sin();
            if self.workload.random::<f64>() * (1.0 + a) > rate {
                return; // a quiet hour: this opportunity passes
            }
        }
        let home = self.devices[u].node;
        if self.nodes[home].core.is_none() {
            self.not_sent += 1;
            return;
        }
        let r = self.pick_recipient(u);
        self.all_conversations.insert((u, r));
        let text = self.text_len(true);
        let envelope = self.envelope_for(r, text);
        if let Some(trace) = self.trace.as_mut() {
            trace.push((self.now, u, r, envelope.id));
        }
        self.post(u, r, Carries::Text, envelope);
    }

    /// Sends a tracked envelope from `u` to `r` (a message, a file's announcement, a call
    /// signal): recorded, then handed to the home node as any send is.
    pub(super) fn post(&mut self, u: usize, r: usize, carries: Carries, envelope: Envelope) {
        let record = Record {
            id: envelope.id,
            from: u,
            to: r,
            msg: Msg {
                carries,
                sent_at: self.now,
                across: self.w.homes[r] != self.w.homes[u],
                to_phone: self.w.phones[r],
                node_at: None,
                device_at: None,
                lost_disk: false,
                refused: false,
            },
            // A file's record goes where its announcement goes: the recipient's device fetches it.
            file: None,
        };
        self.sent += 1;
        let shard = self.w.shard_of_user(r);
        if shard == self.index {
            self.recorded(record);
        } else {
            let mut record = Box::new(record);
            if let Carries::File(f) = carries {
                record.file = self.files.list.0.remove(&f);
            }
            self.outbox.push((shard, Cross::Record(record)));
        }
        let to_node = self.w.node_ids[self.w.homes[r]].clone();
        let ids = vec![envelope.id];
        self.submit(u, ids, Outgoing { to_node, envelope });
    }

    /// The record of a message to one of this shard's users: kept for the results, and the
    /// file or call it carries taken in.
    pub(super) fn recorded(&mut self, record: Record) {
        let Record {
            id,
            from,
            to,
            msg,
            file,
        } = record;
        self.msgs.insert(id, msg);
        if !self.connected(to) {
            self.devices[to].waiting_since.get_or_insert(msg.sent_at);
        }
        match msg.carries {
            Carries::File(f) => {
                if let Some(file) = file {
                    self.files.list.0.insert(f, file);
                }
            }
            Carries::Call(c, calls::Signal::Offer) => self.offer_recorded(c, from, to, msg.sent_at),
            _ => {}
        }
    }

    /// A dummy envelope to a uniformly random other user, while online: the same size
    /// distribution as messages, so no operator tells the two apart by size or by route.
    pub(super) fn cover(&mut self, u: usize) {
        let next = self.cover_gap();
        if self.now + next <= EPOCH_MS + ms(self.sc.duration_s) {
            self.schedule(self.now + next, Ev::Cover(u));
        }
        let n = self.w.homes.len();
        if !self.devices[u].online || self.nodes[self.devices[u].node].core.is_none() || n < 2 {
            return;
        }
        let r = loop {
            let r = self.rng.random_range(0..n);
            if r != u {
                break r;
            }
        };
        self.cover_sent += 1;
        let text = self.text_len(false);
        let envelope = self.envelope_for(r, text);
        let to_node = self.w.node_ids[self.w.homes[r]].clone();
        self.submit(u, Vec::new(), Outgoing { to_node, envelope });
    }

    pub(super) fn cover_gap(&mut self) -> Millis {
        self.exp(3_600_000.0 / self.sc.cover_messages_per_user_per_hour)
    }

    /// A text length drawn from the scenario's distribution: a message's from the workload's
    /// stream, a dummy's from the other, so cover traffic does not change the messages.
    pub(super) fn text_len(&mut self, message: bool) -> usize {
        if self.sc.mean_text_bytes <= 0.0 {
            return 0;
        }
        let drawn = if message {
            self.exp_workload(self.sc.mean_text_bytes)
        } else {
            self.exp(self.sc.mean_text_bytes)
        };
        (drawn as usize).min(MAX_TEXT_BYTES)
    }

    /// An envelope for `r` whose body has the size a message of `text` bytes would have (padded
    /// to its bucket, or exact when padding is off).
    pub(super) fn envelope_for(&mut self, r: usize, text: usize) -> Envelope {
        if self.sc.mean_text_bytes <= 0.0 {
            return self.envelope_of(r, PADDING_BUCKETS[0] + seal::OVERHEAD);
        }
        let sealed = self.w.session_overhead + text;
        self.envelope_sealing(r, sealed)
    }

    /// An envelope for `r` around a sealed-sender message of `sealed` bytes.
    pub(super) fn envelope_sealing(&mut self, r: usize, sealed: usize) -> Envelope {
        // The sealed box holds `len (4) ‖ sealed-sender bytes`, padded or not.
        let inner = 4 + sealed;
        // Padding picks the bucket as if an X3DH header were present, as the protocol does.
        let padded = if self.sc.padding {
            PADDING_BUCKETS
                .iter()
                .copied()
                .find(|b| *b >= inner + PREKEY_HEADER_RESERVE)
                .unwrap_or(PADDING_BUCKETS[PADDING_BUCKETS.len() - 1])
        } else {
            inner
        };
        self.envelope_of(r, padded + seal::OVERHEAD)
    }

    pub(super) fn envelope_of(&mut self, r: usize, body_len: usize) -> Envelope {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        Envelope {
            version: ENVELOPE_VERSION,
            id: EnvelopeId(id),
            recipient: self.w.user_ids[r],
            expires_at: self.now + ms(self.sc.ttl_s),
            body: vec![0; body_len],
        }
    }

    /// Hands an envelope to the home node now, or after the batching delay.
    pub(super) fn submit(&mut self, u: usize, ids: Vec<EnvelopeId>, out: Outgoing) {
        if self.sc.batching_delay_ms == 0 {
            self.client_request(u, Kind::Send(ids), ClientOp::Send(vec![out]));
        } else {
            let d = self.rng.random_range(0..=self.sc.batching_delay_ms);
            self.schedule(self.now + d, Ev::Submit { user: u, ids, out });
        }
    }
}
