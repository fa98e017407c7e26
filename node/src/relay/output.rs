//! What the core asks of its driver ([`Output`]), and the same with envelope bodies and chunks
//! read from the store ([`Ready`]): the core holds ids, the store holds bytes.

use super::{AdminResponse, BatchId, Token, WakeId};
use hestia_protocol::envelope::EnvelopeId;
use hestia_protocol::file::BlobId;
use hestia_protocol::identity::UserId;
use hestia_protocol::wire::{ClientError, ClientResponse, FedRequest, FedResponse};
use hestia_store::StoreError;
use hestia_store::node::NodeStore;

/// What the core asks the driver to do. Envelope bodies are not in the core: an output that
/// carries mail names it by id, and [`Output::load`] reads the bodies from the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Client {
        token: Token,
        response: ClientResponse,
    },
    /// Answer a fetch with these envelopes of `user`'s mailbox, in this order.
    ClientMail {
        token: Token,
        user: UserId,
        ids: Vec<EnvelopeId>,
    },
    FedResponse {
        token: Token,
        response: FedResponse,
    },
    FedRequest {
        batch: BatchId,
        to_node: String,
        request: FedRequest,
    },
    /// Deliver these envelopes of the outbox for `to_node` as one batch, in this order.
    FedDeliver {
        batch: BatchId,
        to_node: String,
        ids: Vec<EnvelopeId>,
    },
    /// Answer a device's `BlobGet` with this stored chunk.
    ClientChunk {
        token: Token,
        blob: BlobId,
        index: u32,
    },
    /// Answer another node's `BlobGet` with this stored chunk.
    FedChunk {
        token: Token,
        blob: BlobId,
        index: u32,
    },
    /// Resolve this push endpoint's host and report with
    /// [`Core::handle_endpoint_checked`](super::Core::handle_endpoint_checked)
    /// (a registration from an authenticated user waits on it).
    CheckEndpoint {
        token: Token,
        endpoint: String,
    },
    /// Send a wake-up (`hestia_protocol::push::WAKE_BODY`) to this subscription and report
    /// what became of it with [`Core::handle_wake_result`](super::Core::handle_wake_result).
    Wake {
        wake: WakeId,
        target: hestia_protocol::push::Subscription,
    },
    /// Answer the admin request `token` ([`Core::handle_admin`](super::Core::handle_admin)).
    Admin {
        token: Token,
        response: AdminResponse,
    },
}

/// An [`Output`] with its envelope bodies read from the store: what goes on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    Client {
        token: Token,
        response: ClientResponse,
    },
    FedResponse {
        token: Token,
        response: FedResponse,
    },
    FedRequest {
        batch: BatchId,
        to_node: String,
        request: FedRequest,
    },
    Wake {
        wake: WakeId,
        target: hestia_protocol::push::Subscription,
    },
    CheckEndpoint {
        token: Token,
        endpoint: String,
    },
    Admin {
        token: Token,
        response: AdminResponse,
    },
}

impl Output {
    /// Reads the bodies an output names from `store` (which holds every write taken before
    /// it). A mailbox envelope acknowledged or expired since is left out of a fetch answer; an
    /// outbox envelope cannot be (the core deletes none while its batch is in flight).
    pub fn load(self, store: &impl NodeStore) -> Result<Ready, StoreError> {
        Ok(match self {
            Output::Client { token, response } => Ready::Client { token, response },
            Output::Admin { token, response } => Ready::Admin { token, response },
            Output::ClientMail { token, user, ids } => Ready::Client {
                token,
                response: ClientResponse::Envelopes(store.mailbox_envelopes(&user, &ids)?),
            },
            Output::FedResponse { token, response } => Ready::FedResponse { token, response },
            Output::FedRequest {
                batch,
                to_node,
                request,
            } => Ready::FedRequest {
                batch,
                to_node,
                request,
            },
            Output::FedDeliver {
                batch,
                to_node,
                ids,
            } => {
                let envs = store.outbox_envelopes(&to_node, &ids)?;
                if envs.len() != ids.len() {
                    return Err(StoreError::Corrupt {
                        cf: hestia_store::schema::NODEID_ENVELOPEID_OUTBOX,
                        reason: format!(
                            "{} of {} bodies missing",
                            ids.len() - envs.len(),
                            ids.len()
                        ),
                    });
                }
                Ready::FedRequest {
                    batch,
                    to_node,
                    request: FedRequest::Deliver(envs),
                }
            }
            // A chunk deleted since the fetch was decided (fetched, expired) is not there.
            Output::ClientChunk { token, blob, index } => Ready::Client {
                token,
                response: match store.blob_chunk(&blob, index)? {
                    Some(c) => ClientResponse::Chunk(c),
                    None => ClientResponse::Error(ClientError::NoSuchBlob),
                },
            },
            Output::FedChunk { token, blob, index } => Ready::FedResponse {
                token,
                response: match store.blob_chunk(&blob, index)? {
                    Some(c) => FedResponse::Chunk(c),
                    None => FedResponse::NoSuchBlob,
                },
            },
            Output::Wake { wake, target } => Ready::Wake { wake, target },
            Output::CheckEndpoint { token, endpoint } => Ready::CheckEndpoint { token, endpoint },
        })
    }
}
