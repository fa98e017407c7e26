//! Receiving: fetching from the home node, opening sealed envelopes (sessions, X3DH for a first
//! message, skipped keys within their bounds), storing what they carry, acknowledging them, and
//! sending the receipts and session resets they call for.

use super::*;

impl Device {
    /// Fetches held envelopes (waiting up to `wait_ms` if there are none, less if a delivery
    /// receipt falls due sooner), decrypts and stores what they contain, acknowledges them, and
    /// sends the delivery receipts that are due. Safe to repeat: an envelope seen before (same
    /// id) is acknowledged again but not decrypted or shown twice.
    pub async fn sync(
        &mut self,
        conn: &mut Connection,
        wait_ms: u32,
    ) -> Result<Vec<InboxEvent>, ClientLibError> {
        self.maintain_prekeys(conn).await?;
        self.retry_waiting(conn).await?;
        self.send_due_receipts(conn).await?;
        let mut events = Vec::new();
        let mut wait = match receipts::next_due(self.db.pending_receipts()?.iter().map(|(_, p)| p))
        {
            Some(at) => wait_ms.min(at.saturating_sub(now_millis()).min(u32::MAX as u64) as u32),
            None => wait_ms,
        };
        loop {
            let envs = match conn
                .call(
                    &self.key,
                    ClientOp::Fetch {
                        limit: FETCH_LIMIT,
                        wait_ms: wait,
                    },
                )
                .await?
            {
                ClientResponse::Envelopes(e) => e,
                other => return Err(unexpected(other)),
            };
            if envs.is_empty() {
                break;
            }
            wait = 0;
            let full = envs.len() as u32 >= FETCH_LIMIT;
            let mut acks = Vec::new();
            let mut skipped_grew = false;
            let mut broken: BTreeMap<UserId, Vec<EnvelopeId>> = BTreeMap::new();
            for env in envs {
                acks.push(env.id);
                if self.db.has_message(&env.id)? {
                    continue; // stored before a lost acknowledgement: already shown once
                }
                match self.open_envelope(&env) {
                    Ok(None) => {} // from a rejected key: dropped unread
                    Ok(Some(opened)) => {
                        skipped_grew |= opened.skipped_grew;
                        if let Some(ev) = self.receive(&env, opened)? {
                            events.push(ev);
                        }
                    }
                    // A receipt fetched again after a lost acknowledgement: nothing to show.
                    Err((_, ClientLibError::Session(SessionError::Replay))) => {}
                    Err((sender, e)) => {
                        if let Some(sender) = sender
                            && breaks_session(&e)
                        {
                            broken.entry(sender).or_default().push(env.id);
                        }
                        events.push(InboxEvent::Undecryptable {
                            id: env.id,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            if skipped_grew {
                self.enforce_skipped_total()?;
            }
            // Everything above is synced to the local store; only now may the node delete it.
            conn.call(&self.key, ClientOp::Ack(acks)).await?;
            for (sender, ids) in broken {
                if let Some(ev) = self.ask_for_new_session(conn, sender, ids).await? {
                    events.push(ev);
                }
            }
            if !full {
                break;
            }
        }
        self.send_due_receipts(conn).await?;
        Ok(events)
    }

    /// Sends every batch of delivery receipts whose time has come (see [`receipts`]). Each batch
    /// is removed in the same local commit as the session state that sealed it.
    pub(super) async fn send_due_receipts(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(), ClientLibError> {
        let now = now_millis();
        for (user, batch) in self.db.pending_receipts()? {
            if !receipts::due(&batch, now) {
                continue;
            }
            // A contact removed or rejected since: its receipts were dropped with it, but be
            // safe against any left behind.
            if !self.receipts.enabled || self.db.is_blocked(&user)? {
                self.db.commit(&[ClientWrite::Receipts(user, None)])?;
                continue;
            }
            let mut rest = batch.ids.as_slice();
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rest.len().min(MAX_RECEIPT_IDS));
                rest = tail;
                let id = EnvelopeId::random(&mut rand::rng());
                let content = Content::Receipt(chunk.to_vec());
                let sealed = self
                    .seal_for(
                        conn,
                        id,
                        &user,
                        &batch.node,
                        content,
                        DEFAULT_TTL_MS,
                        Fresh::IfNone,
                    )
                    .await;
                let (env, session_write) = match sealed {
                    Ok(s) => s,
                    // A new session is needed and their node is down or has no prekeys: the
                    // batch stays owed, for a later sync. Reading the inbox goes on.
                    Err(ClientLibError::NoBundle | ClientLibError::ContactNodeUnreachable(_)) => {
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let left = (!rest.is_empty()).then(|| PendingReceipts {
                    ids: rest.to_vec(),
                    ..batch.clone()
                });
                self.db
                    .commit(&[session_write, ClientWrite::Receipts(user, left)])?;
                match self.submit(conn, &batch.node, env).await {
                    Ok(_) => {}
                    // Refused (a rate limit, say): that receipt is lost, a courtesy; the
                    // inbox is not.
                    Err(ClientLibError::Refused(e)) => {
                        tracing::debug!(error = ?e, "delivery receipt refused by the home node");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// After envelopes from `sender` failed to decrypt in a way a new session cures: if the
    /// sender is a contact (not a key that claims another's name) and was not asked within
    /// [`SESSION_RESET_INTERVAL_MS`], starts a new session from their bundle and tells them, in
    /// it, which envelopes were lost. Their next messages then go on the new session.
    pub(super) async fn ask_for_new_session(
        &mut self,
        conn: &mut Connection,
        sender: UserId,
        ids: Vec<EnvelopeId>,
    ) -> Result<Option<InboxEvent>, ClientLibError> {
        let now = now_millis();
        let Some(mut c) = self
            .db
            .contacts()?
            .into_iter()
            .find(|c| c.address.user == sender)
        else {
            return Ok(None);
        };
        let recent = c
            .reset_asked_at
            .is_some_and(|at| now.saturating_sub(at) < SESSION_RESET_INTERVAL_MS);
        if c.claims.is_some() || recent {
            return Ok(None);
        }
        let mut ids = ids;
        ids.truncate(MAX_RECEIPT_IDS);
        let id = EnvelopeId::random(&mut rand::rng());
        let content = Content::SessionReset(ids.clone());
        let sealed = self
            .seal_for(
                conn,
                id,
                &sender,
                &c.address.node,
                content,
                DEFAULT_TTL_MS,
                Fresh::Always,
            )
            .await;
        let (env, session_write) = match sealed {
            Ok(s) => s,
            // Their node is down or has no prekeys now: the next failure asks again.
            Err(ClientLibError::NoBundle | ClientLibError::ContactNodeUnreachable(_)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        c.reset_asked_at = Some(now);
        self.db
            .commit(&[session_write, ClientWrite::Contact(c.clone())])?;
        self.submit(conn, &c.address.node, env).await?;
        Ok(Some(InboxEvent::SessionRestarted {
            contact: c.name,
            lost: ids,
        }))
    }

    /// Opens the sealed-sender layer and decrypts the session message: in a stored session, or
    /// in a new one from the X3DH header it carries. Returns what to store; stores nothing.
    /// `None` for an envelope from a rejected key: it is not decrypted, so it costs no session.
    /// A failure says who the sealed layer named as sender, if it opened.
    pub(super) fn open_envelope(
        &mut self,
        env: &Envelope,
    ) -> Result<Option<Opened>, (Option<UserId>, ClientLibError)> {
        let sealed = env.open_message(&self.key).map_err(|e| (None, e.into()))?;
        let sender = sealed.sender;
        let fail = |e: ClientLibError| (Some(sender), e);
        if self.db.is_blocked(&sender).map_err(|e| fail(e.into()))? {
            return Ok(None);
        }
        // A stranger beyond the bound on message requests costs no decryption and no session.
        let contacts = self.db.contacts().map_err(|e| fail(e.into()))?;
        if !contacts.iter().any(|c| c.address.user == sender)
            && contacts
                .iter()
                .filter(|c| c.origin == Origin::Request)
                .count()
                >= MAX_MESSAGE_REQUESTS
        {
            return Err(fail(ClientLibError::TooManyRequests));
        }
        let mut opened = self.open_session(sealed).map_err(fail)?;
        opened.contacts = contacts;
        Ok(Some(opened))
    }

    /// Decrypts the session message inside an opened sealed-sender layer.
    pub(super) fn open_session(
        &mut self,
        sealed: hestia_protocol::envelope::SealedSender,
    ) -> Result<Opened, ClientLibError> {
        let rng = &mut rand::rng();
        let now = now_millis();
        let sender = sealed.sender;
        let msg = &sealed.message;
        let mut sessions = self.load_sessions(&sender)?;
        let skipped_before: usize = sessions.iter().map(Session::skipped_len).sum();
        let mut last_err = None;
        let mut found = None;
        for (i, s) in sessions.iter_mut().enumerate() {
            if let Some(p) = &msg.prekey
                && s.base_key() != &p.ephemeral
            {
                continue;
            }
            match s.decrypt(rng, msg, now) {
                Ok(plain) => {
                    found = Some((i, plain));
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let mut prekeys_write = None;
        let plain = match (found, &msg.prekey) {
            (Some((i, plain)), _) => {
                let s = sessions.remove(i);
                sessions.insert(0, s);
                plain
            }
            (None, Some(p)) if !sessions.iter().any(|s| s.base_key() == &p.ephemeral) => {
                if p.identity != sender {
                    return Err(ClientLibError::Session(SessionError::Malformed(
                        "X3DH identity differs from the sealed sender",
                    )));
                }
                let (agreement, spk) = x3dh::respond(&self.key, &self.prekeys, p)?;
                let mut s = Session::respond(agreement, sender, spk, p.ephemeral);
                let plain = s.decrypt(rng, msg, now)?;
                sessions.insert(0, s);
                sessions.truncate(MAX_SESSIONS_PER_CONTACT);
                if let Some(otk) = p.one_time {
                    let mut next = self.prekeys.clone();
                    next.consume_one_time(&otk);
                    prekeys_write = Some(next);
                }
                plain
            }
            (None, _) => {
                return Err(ClientLibError::Session(
                    last_err.unwrap_or(SessionError::UnknownHeaderKey),
                ));
            }
        };
        let letter = Letter::from_bytes(&plain)?;
        let skipped_after: usize = sessions.iter().map(Session::skipped_len).sum();
        Ok(Opened {
            sender,
            letter,
            sessions: sessions_write(sender, &sessions),
            prekeys: prekeys_write,
            skipped_grew: skipped_after > skipped_before,
            contacts: Vec::new(),
        })
    }

    /// Keeps skipped message keys within [`MAX_SKIPPED_TOTAL`] across the sessions with
    /// contacts and within [`MAX_SKIPPED_STRANGERS`] across the sessions with everyone else
    /// (message requests, keys with no contact), dropping the oldest first in each: a stranger
    /// cannot evict the keys of messages still on their way from the people the user talks to.
    /// Runs after a sync stored new skipped keys; decodes sessions only when a bound is passed
    /// (the stored per-user counts tell) or some sessions have no count yet.
    pub(super) fn enforce_skipped_total(&mut self) -> Result<(), ClientLibError> {
        let known: HashSet<UserId> = self
            .db
            .contacts()?
            .into_iter()
            .filter(|c| c.origin != Origin::Request)
            .map(|c| c.address.user)
            .collect();
        let counts: HashMap<UserId, u32> = self.db.skipped_counts()?.into_iter().collect();
        let uncounted = self
            .db
            .session_users()?
            .iter()
            .any(|u| !counts.contains_key(u));
        let total = |contacts: bool| -> usize {
            counts
                .iter()
                .filter(|(u, _)| known.contains(*u) == contacts)
                .map(|(_, n)| *n as usize)
                .sum()
        };
        if !uncounted && total(true) <= MAX_SKIPPED_TOTAL && total(false) <= MAX_SKIPPED_STRANGERS {
            return Ok(());
        }
        let mut all = Vec::new();
        for (user, blobs) in self.db.all_sessions()? {
            let sessions = blobs
                .iter()
                .map(|b| Session::from_stored(b))
                .collect::<Result<Vec<_>, _>>()?;
            let before: Vec<usize> = sessions.iter().map(Session::skipped_len).collect();
            all.push((user, sessions, before));
        }
        for (contacts, max) in [(true, MAX_SKIPPED_TOTAL), (false, MAX_SKIPPED_STRANGERS)] {
            let mut refs: Vec<&mut Session> = all
                .iter_mut()
                .filter(|(u, _, _)| known.contains(u) == contacts)
                .flat_map(|(_, s, _)| s.iter_mut())
                .collect();
            bound_skipped_total(&mut refs, max);
        }
        let writes: Vec<ClientWrite> = all
            .into_iter()
            .filter(|(u, s, before)| {
                !counts.contains_key(u)
                    || s.iter()
                        .map(Session::skipped_len)
                        .ne(before.iter().copied())
            })
            .map(|(u, s, _)| sessions_write(u, &s))
            .collect();
        self.db.commit(&writes)?;
        Ok(())
    }

    pub(super) fn receive(
        &mut self,
        env: &Envelope,
        opened: Opened,
    ) -> Result<Option<InboxEvent>, ClientLibError> {
        let Opened {
            sender,
            mut letter,
            sessions,
            prekeys,
            contacts,
            ..
        } = opened;
        // Receipts and session resets concern our messages to a contact; from a key that is
        // not one they mean nothing, and keeping their session would let any number of keys
        // make sessions here without ever becoming a (bounded) message request.
        if !matches!(letter.content, Content::Text(_) | Content::File(_))
            && !contacts.iter().any(|c| c.address.user == sender)
        {
            return Ok(None);
        }
        let mut writes = vec![sessions];
        if let Some(p) = &prekeys {
            writes.push(ClientWrite::Prekeys(p.to_stored()?));
        }
        let text = match std::mem::replace(&mut letter.content, Content::Text(String::new())) {
            Content::Receipt(ids) => {
                self.db.commit(&writes)?;
                self.commit_prekeys(prekeys);
                let mut confirmed = Vec::new();
                for id in ids {
                    // Only the recipient of our message may confirm it.
                    if let Some((_, m)) = self.db.message(&id)?
                        && m.direction == Direction::Outgoing
                        && m.peer == sender
                        && self.db.set_state(&id, MessageState::DeliveredToDevice)?
                    {
                        confirmed.push(id);
                    }
                }
                return Ok((!confirmed.is_empty()).then_some(InboxEvent::Delivered(confirmed)));
            }
            Content::SessionReset(ids) => {
                // The session this message came in (new, from our bundle) is now first, so our
                // next messages go on it. What it lost is marked, for the user to send again.
                self.db.commit(&writes)?;
                self.commit_prekeys(prekeys);
                let mut lost = Vec::new();
                for id in ids {
                    if let Some((_, m)) = self.db.message(&id)?
                        && m.direction == Direction::Outgoing
                        && m.peer == sender
                        && self.db.set_state(
                            &id,
                            MessageState::Failed(
                                "their device could not decrypt it; a new session has started, \
                                 so send it again"
                                    .into(),
                            ),
                        )?
                    {
                        lost.push(id);
                    }
                }
                let Some(c) = contacts.into_iter().find(|c| c.address.user == sender) else {
                    return Ok(None);
                };
                return Ok((!lost.is_empty()).then_some(InboxEvent::PeerLostMessages {
                    contact: c.name,
                    lost,
                }));
            }
            Content::Call(signal) => {
                // Only contacts may ring this device (checked above: a stranger's is dropped).
                let Some(c) = contacts.into_iter().find(|c| c.address.user == sender) else {
                    self.db.commit(&writes)?;
                    self.commit_prekeys(prekeys);
                    return Ok(None);
                };
                // An offer is a missed call in the history until a running call answers it
                // (which writes how it went under the same id).
                if let hestia_protocol::call::CallSignal::Offer { call, .. } = &signal
                    && !self.db.has_message(&EnvelopeId(call.0))?
                {
                    writes.push(ClientWrite::Message(calls::history_entry(
                        &c,
                        *call,
                        Direction::Incoming,
                        CallOutcome::NoAnswer,
                        letter.sent_at,
                    )));
                }
                self.db.commit(&writes)?;
                self.commit_prekeys(prekeys);
                return Ok(Some(InboxEvent::Call {
                    contact: c.name,
                    signal,
                    sent_at: letter.sent_at,
                }));
            }
            Content::Text(t) => t,
            // The file itself stays on the sender's node until `hestia file get`.
            Content::File(f) => {
                let caption = f.caption.clone();
                writes.push(ClientWrite::File(
                    env.id,
                    StoredFile {
                        file: *f,
                        direction: Direction::Incoming,
                        state: FileState::Received,
                    },
                ));
                caption
            }
        };
        let now = now_millis();
        let (contact, first) = match trust::classify(&contacts, &sender, &letter, now) {
            trust::Sender::Known(c) => (c, false),
            trust::Sender::New(c) => {
                writes.push(ClientWrite::Contact(c.clone()));
                (c, true)
            }
        };
        let msg = StoredMessage {
            envelope_id: env.id,
            direction: Direction::Incoming,
            peer: sender,
            // Where replies go is the contact's, not what this letter claims.
            peer_node: contact.address.node.clone(),
            peer_name: contact.name.clone(),
            text,
            at: letter.sent_at,
            expires_at: env.expires_at,
            state: MessageState::Received,
        };
        writes.push(ClientWrite::Message(msg.clone()));
        // A key that claims another contact's name gets no receipts until the user decides:
        // they would tell it that the impersonation reached a device.
        if contact.claims.is_none() {
            let batch = receipts::owe(
                self.db.receipts(&sender)?,
                &contact.address.node,
                &[env.id],
                self.receipts,
                now,
                &mut rand::rng(),
            );
            if batch.is_some() {
                writes.push(ClientWrite::Receipts(sender, batch));
            }
        }
        // The message, the session that decrypted it, the consumed prekey, a new contact and
        // the receipt owed: one batch.
        self.db.commit(&writes)?;
        self.commit_prekeys(prekeys);
        Ok(Some(match (&contact.claims, first) {
            (Some(claims), _) => {
                let claimed = contacts.iter().find(|c| &c.name == claims);
                InboxEvent::Claimed {
                    contact: contact.name.clone(),
                    key: sender.fingerprint(),
                    claims: claims.clone(),
                    claimed_key: claimed.map(|c| c.address.user.fingerprint()),
                    claimed_verified: claimed.is_some_and(|c| c.trust == Trust::Verified),
                    first,
                    message: msg,
                }
            }
            (None, true) => InboxEvent::NewContact {
                contact,
                message: msg,
            },
            (None, false) => InboxEvent::Message(msg),
        }))
    }

    pub(super) fn commit_prekeys(&mut self, prekeys: Option<PrekeySecrets>) {
        if let Some(p) = prekeys {
            self.prekeys = p;
        }
    }
}

/// A decrypted envelope and the state to store with it.
pub(super) struct Opened {
    pub(super) sender: UserId,
    pub(super) letter: Letter,
    pub(super) sessions: ClientWrite,
    pub(super) prekeys: Option<PrekeySecrets>,
    pub(super) skipped_grew: bool,
    /// The contact list as it was when the envelope was opened (read once per envelope).
    pub(super) contacts: Vec<Contact>,
}
