//! The mailbox: envelopes held for local users until their devices fetch and acknowledge them,
//! within the per-user and node-wide bounds; parked fetches woken when mail arrives.

use super::*;

impl Core {
    /// Stores an envelope for a local user. `from` is the remote node that delivered it (None
    /// for a local user's send), charged against its quota on this node's disk.
    pub(super) fn deliver_local(
        &mut self,
        envelope: Envelope,
        from: Option<&str>,
        now: Millis,
    ) -> DeliverResult {
        match envelope.check_header(now) {
            Ok(()) => {}
            Err(hestia_protocol::envelope::EnvelopeError::Expired) => {
                return DeliverResult::Expired;
            }
            Err(_) => return DeliverResult::Invalid,
        }
        if let Err(r) = self.within_limits(&envelope, now) {
            tracing::debug!(result = ?r, "envelope refused: past this node's limits");
            return DeliverResult::Invalid;
        }
        let user = envelope.recipient;
        if !self.accounts.contains_key(&user) {
            return DeliverResult::NoSuchUser;
        }
        let ix = self.users.intern(user);
        if self
            .mailboxes
            .get(&ix)
            .is_some_and(|m| m.contains_key(&envelope.id))
            || self.seen.contains(&(user, envelope.id))
        {
            return DeliverResult::Duplicate;
        }
        let size = envelope.body.len() as u64;
        let user_bytes = self.mail_bytes.get(&ix).copied().unwrap_or(0);
        if self
            .mailboxes
            .get(&ix)
            .is_some_and(|m| m.len() >= self.config.limits.mailbox_envelopes)
            || user_bytes.saturating_add(size) > self.config.limits.mailbox_bytes
            || self.stored_bytes.saturating_add(size) > MAX_STORED_BYTES
        {
            return DeliverResult::MailboxFull;
        }
        let origin = match from {
            None => UNATTRIBUTED,
            Some(node) => match self
                .origins
                .charge(node, size, self.config.limits.stored_per_node)
            {
                Some(i) => i,
                None => {
                    // Answered like a full mailbox: the sender keeps it queued and retries
                    // with backoff, and room comes back as recipients fetch.
                    tracing::debug!(from = node, "delivery refused: the node's stored quota");
                    return DeliverResult::MailboxFull;
                }
            },
        };
        // The body goes to the store with this write; the core keeps only its entry.
        let entry = MailboxEntry::of(&envelope);
        self.writes.push(NodeWrite::PutMailbox(envelope));
        self.insert_mailbox(entry, origin);
        self.wake_parked(&user);
        if !self.online.contains_key(&user) {
            let random = next_random(&mut self.rng);
            self.pushes.mail_arrived(&user, now, random);
        }
        DeliverResult::Accepted
    }

    pub(super) fn insert_mailbox(&mut self, e: MailboxEntry, from: u32) {
        let seq = self.next_arrival;
        self.next_arrival += 1;
        let ix = self.users.intern(e.recipient);
        let old = self.mailboxes.entry(ix).or_default().insert(
            e.id,
            MailRef {
                seq,
                expires_at: e.expires_at,
                size: e.size,
                from,
            },
        );
        match old {
            Some(old) => {
                self.origins.release(old.from, old.size as u64);
                self.mail_expiries
                    .remove(&mail_expiry(old.expires_at, ix, e.id));
                self.count_bytes(ix, -(old.size as i64));
            }
            None => self.mail_count += 1,
        }
        self.count_bytes(ix, e.size as i64);
        self.mail_expiries
            .insert(mail_expiry(e.expires_at, ix, e.id));
    }

    pub(super) fn remove_mailbox(&mut self, user: &UserId, id: &EnvelopeId) -> bool {
        let Some(ix) = self.users.get(user) else {
            return false;
        };
        let Some(m) = self.mailboxes.get_mut(&ix) else {
            return false;
        };
        let Some(e) = m.remove(id) else {
            return false;
        };
        if m.is_empty() {
            self.mailboxes.remove(&ix);
        }
        self.mail_count -= 1;
        self.count_bytes(ix, -(e.size as i64));
        self.origins.release(e.from, e.size as u64);
        self.mail_expiries
            .remove(&mail_expiry(e.expires_at, ix, *id));
        self.writes.push(NodeWrite::DeleteMailbox(*user, *id));
        true
    }

    pub(super) fn count_bytes(&mut self, ix: u32, delta: i64) {
        let user = self.mail_bytes.entry(ix).or_default();
        *user = user.saturating_add_signed(delta);
        if *user == 0 {
            self.mail_bytes.remove(&ix);
        }
        self.stored_bytes = self.stored_bytes.saturating_add_signed(delta);
    }

    /// Whether `user`'s mailbox holds an unexpired envelope (what a fetch would return): a
    /// scan that stops at the first, without ordering the mailbox as a fetch does.
    pub(super) fn holds_mail(&self, user: &UserId) -> bool {
        self.users
            .get(user)
            .and_then(|ix| self.mailboxes.get(&ix))
            .is_some_and(|m| m.values().any(|e| e.expires_at > self.now))
    }

    /// The oldest envelopes of `user`'s mailbox that fit one answer, by id.
    pub(super) fn mailbox_batch(&self, user: &UserId, limit: usize) -> Vec<EnvelopeId> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        let Some(ix) = self.users.get(user) else {
            return out;
        };
        let Some(m) = self.mailboxes.get(&ix) else {
            return out;
        };
        // Oldest first. A mailbox holds at most MAX_MAILBOX_ENVELOPES, so ordering it here is
        // cheaper than keeping a second, ordered index of every stored envelope.
        let mut held: Vec<(u64, EnvelopeId, u32)> = m
            .iter()
            .filter(|(_, e)| e.expires_at > self.now)
            .map(|(id, e)| (e.seq, *id, e.size))
            .collect();
        held.sort_unstable();
        for (_, id, size) in held {
            let size = size as usize;
            if out.len() >= limit || bytes.saturating_add(size) > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            out.push(id);
        }
        out
    }

    pub(super) fn respond_mail(&mut self, token: Token, user: UserId, ids: Vec<EnvelopeId>) {
        self.outputs
            .push_back(Output::ClientMail { token, user, ids });
    }

    pub(super) fn wake_parked(&mut self, user: &UserId) {
        if let Some(p) = self.parked.take_oldest_of(user) {
            let batch = self.mailbox_batch(user, p.limit);
            self.respond_mail(p.token, *user, batch);
        }
    }

    pub(super) fn ack(&mut self, user: &UserId, id: &EnvelopeId) -> bool {
        if !self.remove_mailbox(user, id) {
            return false;
        }
        if self.seen.insert((*user, *id)) {
            self.seen_order.push_back((*user, *id));
            if self.seen_order.len() > MAX_SEEN
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
        true
    }
}
