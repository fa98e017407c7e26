//! Push on the device: registering a Web Push subscription with the home node, so it wakes
//! this device when mail waits and no device of the user is connected (`relay::push`). The
//! subscription itself comes from a UnifiedPush distributor or a browser; the device only
//! hands it over, and shows what the node says of it.

use super::{ClientLibError, Device, unexpected};
use hestia_protocol::push::Subscription;
use hestia_protocol::wire::{ClientOp, ClientResponse, PushInfo};

impl Device {
    /// Registers `subscription` (replacing one with the same endpoint).
    pub async fn push_register(
        &self,
        subscription: Subscription,
    ) -> Result<PushInfo, ClientLibError> {
        self.push_call(ClientOp::PushRegister(subscription)).await
    }

    /// Removes the subscription with this endpoint, or every one (`None`).
    pub async fn push_unregister(
        &self,
        endpoint: Option<String>,
    ) -> Result<PushInfo, ClientLibError> {
        self.push_call(ClientOp::PushUnregister { endpoint }).await
    }

    /// The node's VAPID key and this user's subscriptions with their state.
    pub async fn push_status(&self) -> Result<PushInfo, ClientLibError> {
        self.push_call(ClientOp::PushStatus).await
    }

    async fn push_call(&self, op: ClientOp) -> Result<PushInfo, ClientLibError> {
        let mut conn = self.connect().await?;
        match conn.call(&self.key, op).await? {
            ClientResponse::Push(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }
}
