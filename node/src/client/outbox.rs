//! The device's outbox: every sealed envelope is kept (`envelopeid_unsent`, committed with its
//! message and session state) until the home node answers for it. An answer lost to a crash
//! or a broken connection leaves it there, and the next command that reaches the node hands
//! over the same envelope again, which the node answers `Duplicate` if it had it.

use super::{ClientLibError, Connection, Device, unexpected};
use crate::driver::now_millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::wire::{ClientOp, ClientResponse, MAX_BATCH_ENVELOPES, Outgoing, SendResult};
use hestia_store::client::{Contact, MessageState, StoredMessage};

/// How long running `hestia send` again with the same text to the same contact counts as a
/// retry of an unsent message rather than a new one.
pub const RERUN_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// What the home node's answer to a send makes of the message.
fn sent_state(result: SendResult) -> MessageState {
    match result {
        SendResult::Queued => MessageState::Queued,
        SendResult::DeliveredToNode => MessageState::DeliveredToNode,
        SendResult::NoSuchUser => MessageState::NoSuchUser,
        SendResult::Invalid => MessageState::Failed("refused by the home node as invalid".into()),
        SendResult::Full => MessageState::Failed("the home node's queue is full".into()),
        SendResult::Denied => MessageState::Failed(
            "your node does not federate with theirs (its admin's policy)".into(),
        ),
        SendResult::TooLarge { max_bytes } => MessageState::Failed(format!(
            "larger than your node takes ({max_bytes} bytes); send it as a file"
        )),
        SendResult::TtlTooLong { max_secs } => MessageState::Failed(format!(
            "your node holds mail for at most {} days: send it with a shorter --ttl",
            max_secs / 86_400
        )),
    }
}

impl Device {
    /// The same text to the same contact while an earlier one is still unsent is the person
    /// running the command again after the home node did not answer: that message goes out
    /// again (the same envelope) and is the answer, instead of a second one.
    pub(super) async fn rerun_of(
        &mut self,
        c: &Contact,
        text: &str,
        conn: &mut Connection,
    ) -> Result<Option<StoredMessage>, ClientLibError> {
        let now = now_millis();
        for u in self.db.unsent()? {
            if let Some((_, m)) = self.db.message(&u.envelope.id)?
                && m.peer == c.address.user
                && m.text == text
                && now.saturating_sub(m.at) < RERUN_WINDOW_MS
            {
                self.retry_unsent(conn).await?;
                let id = m.envelope_id;
                return Ok(Some(self.db.message(&id)?.map_or(m, |(_, m)| m)));
            }
        }
        Ok(None)
    }

    /// Hands the home node again every envelope it has not acknowledged, unchanged, and
    /// records its answers; expired ones are given up.
    pub async fn retry_unsent(&mut self, conn: &mut Connection) -> Result<(), ClientLibError> {
        let now = now_millis();
        let mut answered = Vec::new();
        let mut due = Vec::new();
        for u in self.db.unsent()? {
            if u.envelope.expires_at <= now {
                answered.push((u.envelope.id, MessageState::Expired));
            } else {
                due.push(u);
            }
        }
        for batch in due.chunks(MAX_BATCH_ENVELOPES) {
            let ids: Vec<EnvelopeId> = batch.iter().map(|u| u.envelope.id).collect();
            let outgoing = batch
                .iter()
                .map(|u| Outgoing {
                    to_node: u.to_node.clone(),
                    envelope: u.envelope.clone(),
                })
                .collect();
            let states = self.submit_all(conn, outgoing).await?;
            answered.extend(ids.into_iter().zip(states));
        }
        if !answered.is_empty() {
            self.db.settle_unsent(&answered)?;
        }
        Ok(())
    }

    /// Hands one envelope to the home node; returns the message's new state.
    pub(super) async fn submit(
        &mut self,
        conn: &mut Connection,
        to_node: &str,
        envelope: Envelope,
    ) -> Result<MessageState, ClientLibError> {
        let outgoing = vec![Outgoing {
            to_node: to_node.to_string(),
            envelope,
        }];
        let mut states = self.submit_all(conn, outgoing).await?;
        Ok(states.pop().expect("one answer per envelope"))
    }

    /// One `Send` of these envelopes (at most [`MAX_BATCH_ENVELOPES`]); the messages' new
    /// states, in the same order.
    async fn submit_all(
        &mut self,
        conn: &mut Connection,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<MessageState>, ClientLibError> {
        let n = outgoing.len();
        match conn.call(&self.key, ClientOp::Send(outgoing)).await? {
            ClientResponse::Sent(r) if r.len() == n => Ok(r.into_iter().map(sent_state).collect()),
            other => Err(unexpected(other)),
        }
    }
}
