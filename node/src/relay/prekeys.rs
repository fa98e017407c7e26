//! Prekeys: what a user publishes (signed prekey, one-time prekeys), what the node tells them
//! of their stock, and bundles handed out to local and remote senders within the hourly bounds
//! per requesting node and per user.

use super::*;

impl Core {
    pub(super) fn prekey_status(&self, user: &UserId) -> ClientResponse {
        let n = self.one_time_prekeys.get(user).map_or(0, BTreeSet::len);
        ClientResponse::Prekeys {
            one_time: n as u32,
            low: n < ONE_TIME_PREKEY_LOW,
        }
    }

    pub(super) fn publish_prekeys(
        &mut self,
        user: UserId,
        signed: SignedPrekey,
        one_time: Vec<[u8; 32]>,
    ) -> ClientResponse {
        if signed.verify(&user).is_err() || one_time.len() > MAX_ONE_TIME_PREKEYS {
            return ClientResponse::Error(ClientError::BadPrekeys);
        }
        if self.signed_prekeys.get(&user) != Some(&signed) {
            self.writes
                .push(NodeWrite::PutSignedPrekey(user, signed.clone()));
            self.signed_prekeys.insert(user, signed);
        }
        let pool = self.one_time_prekeys.entry(user).or_default();
        for key in one_time {
            if pool.len() >= MAX_ONE_TIME_PREKEYS {
                break;
            }
            if pool.insert(key) {
                self.writes.push(NodeWrite::PutOneTimePrekey(user, key));
            }
        }
        self.prekey_status(&user)
    }

    /// A bundle for `user` asked for by `from_node`, handing out (and durably deleting) one
    /// one-time prekey while that node is within its hourly allowance for this user.
    pub(super) fn take_bundle(
        &mut self,
        from_node: &str,
        user: &UserId,
        now: Millis,
    ) -> Option<PrekeyBundle> {
        let signed = self.signed_prekeys.get(user)?.clone();
        if now.saturating_sub(self.handout_window) >= HOUR_MS {
            self.handouts.clear();
            self.handout_window = now;
        }
        let h = self.handouts.get(user);
        let allowed = h.is_none_or(|h| {
            h.total < ONE_TIME_PREKEYS_PER_USER_PER_HOUR
                && h.by_node
                    .get(from_node)
                    .is_none_or(|n| *n < ONE_TIME_PREKEYS_PER_NODE_PER_HOUR)
        });
        let one_time = if allowed {
            self.one_time_prekeys
                .get_mut(user)
                .and_then(BTreeSet::pop_first)
        } else {
            None
        };
        if one_time.is_some() {
            // At most ONE_TIME_PREKEYS_PER_USER_PER_HOUR entries per user: each is a hand-out.
            let h = self.handouts.entry(*user).or_default();
            h.total += 1;
            *h.by_node.entry(from_node.to_string()).or_insert(0) += 1;
        } else if !allowed {
            tracing::debug!(user = %redact::User(user), "one-time prekey allowance spent");
        }
        if let Some(k) = one_time {
            self.writes.push(NodeWrite::DeleteOneTimePrekey(*user, k));
        }
        Some(PrekeyBundle {
            identity: *user,
            signed_prekey: signed,
            one_time,
        })
    }
}
