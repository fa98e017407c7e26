//! Sending: sealing a message for each of a contact's devices (a session per device, started
//! by X3DH when none can send), handing envelopes to the home node through the outbox, retrying
//! what an ambiguous failure left, and refreshing what the node knows of their delivery.

use super::*;

impl Device {
    /// Encrypts `content` for `to` (whose home node is `node`) in the current session, starting
    /// one from a fetched prekey bundle if there is none. Returns the envelope and the session
    /// state to store with it; the caller commits that before the envelope leaves.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn seal_for(
        &mut self,
        conn: &mut Connection,
        id: EnvelopeId,
        to: &UserId,
        node: &str,
        content: Content,
        ttl_ms: u64,
        fresh: Fresh,
    ) -> Result<(Envelope, ClientWrite), ClientLibError> {
        let rng = &mut rand::rng();
        let now = now_millis();
        let letter = Letter::new(&self.home_node, &self.name, content, now)?;
        let mut sessions = self.load_sessions(to)?;
        if fresh == Fresh::Always || !sessions.first().is_some_and(Session::can_send) {
            let op = ClientOp::FetchBundle {
                user: *to,
                node: node.to_string(),
            };
            let bundle = match conn.call(&self.key, op).await {
                Ok(ClientResponse::Bundle(b)) if b.identity == *to => *b,
                Ok(other) => return Err(unexpected(other)),
                Err(ClientLibError::Refused(ClientError::NoBundle)) => {
                    return Err(ClientLibError::NoBundle);
                }
                Err(ClientLibError::Refused(ClientError::NodeUnreachable)) => {
                    return Err(ClientLibError::ContactNodeUnreachable(node.to_string()));
                }
                Err(e) => return Err(e),
            };
            let (agreement, header) = x3dh::initiate(rng, &self.key, &bundle)?;
            let s = Session::initiate(rng, agreement, *to, bundle.signed_prekey.key, header)?;
            sessions.insert(0, s);
            sessions.truncate(MAX_SESSIONS_PER_CONTACT);
        }
        let message = sessions[0].encrypt(rng, &letter.to_bytes()?)?;
        let env = Envelope::seal_message(rng, id, to, &self.key.user_id(), message, now, ttl_ms)?;
        Ok((env, sessions_write(*to, &sessions)))
    }

    /// Encrypts and sends a text. The message is in local history (as queued), together with
    /// the session state that encrypted it, before it leaves.
    pub async fn send(
        &mut self,
        conn: &mut Connection,
        contact: &str,
        text: &str,
    ) -> Result<StoredMessage, ClientLibError> {
        self.send_with_ttl(conn, contact, text, DEFAULT_TTL_MS)
            .await
    }

    /// [`Device::send`] with a chosen time to live, in milliseconds.
    pub async fn send_with_ttl(
        &mut self,
        conn: &mut Connection,
        contact: &str,
        text: &str,
        ttl_ms: u64,
    ) -> Result<StoredMessage, ClientLibError> {
        let c = self.contact(contact)?;
        if let Some(m) = self.rerun_of(&c, text, conn).await? {
            return Ok(m);
        }
        let id = EnvelopeId::random(&mut rand::rng());
        let content = Content::Text(text.to_string());
        self.send_content(conn, &c, id, text, content, ttl_ms, Vec::new())
            .await
    }

    /// Seals `content` under `id` for contact `c` and hands it to the home node. The message
    /// (shown as `text`), the session state that sealed it and `extra` are committed together
    /// before it leaves. A first text to a contact whose node is down waits on the device
    /// ([`MessageState::WaitingForKeys`]); anything else fails with
    /// [`ClientLibError::ContactNodeUnreachable`], and nothing is stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_content(
        &mut self,
        conn: &mut Connection,
        c: &Contact,
        id: EnvelopeId,
        text: &str,
        content: Content,
        ttl_ms: u64,
        extra: Vec<ClientWrite>,
    ) -> Result<StoredMessage, ClientLibError> {
        self.maintain_prekeys(conn).await?;
        // Earlier first messages still waiting for their recipient's prekeys go first.
        self.retry_waiting(conn).await?;
        let now = now_millis();
        let can_wait = matches!(content, Content::Text(_));
        let mut msg = StoredMessage {
            envelope_id: id,
            direction: Direction::Outgoing,
            peer: c.address.user,
            peer_node: c.address.node.clone(),
            peer_name: c.name.clone(),
            text: text.to_string(),
            at: now,
            expires_at: now.saturating_add(ttl_ms.min(MAX_TTL_MS)),
            state: MessageState::Queued,
        };
        let sealed = self
            .seal_for(
                conn,
                id,
                &c.address.user,
                &c.address.node,
                content,
                ttl_ms,
                Fresh::IfNone,
            )
            .await;
        let (env, session_write) = match sealed {
            Ok(s) => s,
            Err(ClientLibError::ContactNodeUnreachable(_)) if can_wait => {
                // Their node is down and this is a first message: keep it on the device and
                // send it when their node answers (next send, inbox or status).
                msg.state = MessageState::WaitingForKeys;
                self.db.commit(&[ClientWrite::Message(msg.clone())])?;
                self.none_waiting = false;
                return Ok(msg);
            }
            Err(e) => return Err(e),
        };
        msg.expires_at = env.expires_at;
        let mut writes = vec![ClientWrite::Message(msg.clone()), session_write];
        writes.extend(extra);
        // Writing to a message request answers it: a contact from now on.
        if c.origin == Origin::Request {
            writes.push(ClientWrite::Contact(Contact {
                origin: Origin::Accepted,
                ..c.clone()
            }));
        }
        // The sealed envelope is kept until the node answers for it, so a send whose answer
        // is lost goes out again as itself, never as a second message.
        writes.push(ClientWrite::Unsent(
            id,
            Some(UnsentEnvelope {
                to_node: c.address.node.clone(),
                envelope: env.clone(),
            }),
        ));
        self.db.commit(&writes)?;
        match self.submit(conn, &c.address.node, env).await {
            Ok(state) => {
                // The node's answer is the node's to repeat (`status` asks again): no second
                // fsync on every send's path.
                self.db.settle_unsent(&[(id, state.clone())])?;
                msg.state = state;
            }
            Err(ClientLibError::RequestFailed(_)) => {
                // It may or may not have arrived: the next command that reaches the node
                // sends it again (the node answers `Duplicate` if it had it).
                self.db.set_state(&id, MessageState::Unsent)?;
                msg.state = MessageState::Unsent;
            }
            Err(e) => {
                let failed = MessageState::Failed(e.to_string());
                self.db.settle_unsent(&[(id, failed)])?;
                return Err(e);
            }
        }
        Ok(msg)
    }

    /// Tries again to send first messages that waited for their recipient's prekeys, oldest
    /// first, under the ids and expiries they were given. A node that still does not answer
    /// is asked once per pass.
    pub async fn retry_waiting(&mut self, conn: &mut Connection) -> Result<(), ClientLibError> {
        self.retry_unsent(conn).await?;
        if self.none_waiting {
            return Ok(());
        }
        let waiting: Vec<StoredMessage> = self
            .db
            .messages()?
            .into_iter()
            .filter(|m| {
                m.direction == Direction::Outgoing && m.state == MessageState::WaitingForKeys
            })
            .collect();
        let mut down: Vec<String> = Vec::new();
        let mut still_waiting = false;
        for mut m in waiting {
            let now = now_millis();
            if m.expires_at <= now {
                self.db.set_state(&m.envelope_id, MessageState::Expired)?;
                continue;
            }
            if down.contains(&m.peer_node) {
                still_waiting = true;
                continue;
            }
            let sealed = self
                .seal_for(
                    conn,
                    m.envelope_id,
                    &m.peer,
                    &m.peer_node,
                    Content::Text(m.text.clone()),
                    m.expires_at - now,
                    Fresh::IfNone,
                )
                .await;
            match sealed {
                Ok((env, session_write)) => {
                    m.state = MessageState::Queued;
                    self.db
                        .commit(&[ClientWrite::UpdateMessage(m.clone()), session_write])?;
                    let state = self.submit(conn, &m.peer_node, env).await?;
                    self.db.set_state(&m.envelope_id, state)?;
                }
                Err(ClientLibError::ContactNodeUnreachable(node)) => {
                    still_waiting = true;
                    down.push(node);
                }
                Err(ClientLibError::NoBundle) => {
                    self.db
                        .set_state(&m.envelope_id, MessageState::NoSuchUser)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.none_waiting = !still_waiting;
        Ok(())
    }

    /// Asks the home node where our outgoing messages are and records the answer.
    pub async fn refresh_status(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<StoredMessage>, ClientLibError> {
        self.retry_waiting(conn).await?;
        let pending: Vec<StoredMessage> = self
            .db
            .messages()?
            .into_iter()
            .filter(|m| {
                m.direction == Direction::Outgoing
                    && matches!(
                        m.state,
                        MessageState::Queued | MessageState::DeliveredToNode
                    )
            })
            .collect();
        for chunk in pending.chunks(MAX_BATCH_ENVELOPES) {
            let ids: Vec<EnvelopeId> = chunk.iter().map(|m| m.envelope_id).collect();
            let states = match conn.call(&self.key, ClientOp::Status(ids.clone())).await? {
                ClientResponse::Status(s) if s.len() == ids.len() => s,
                other => return Err(unexpected(other)),
            };
            for (m, s) in chunk.iter().zip(states) {
                let new = match s {
                    DeliveryState::Queued { .. } => MessageState::Queued,
                    DeliveryState::DeliveredToNode { .. } => MessageState::DeliveredToNode,
                    DeliveryState::NoSuchUser => MessageState::NoSuchUser,
                    DeliveryState::Expired => MessageState::Expired,
                    DeliveryState::Refused => {
                        MessageState::Failed("refused by the recipient's node".into())
                    }
                    DeliveryState::Unknown => continue,
                };
                // Never step back from a later state a receipt already recorded.
                if m.state != MessageState::DeliveredToDevice {
                    self.db.set_state(&m.envelope_id, new)?;
                }
            }
        }
        Ok(self
            .db
            .messages()?
            .into_iter()
            .filter(|m| m.direction == Direction::Outgoing)
            .collect())
    }
}
