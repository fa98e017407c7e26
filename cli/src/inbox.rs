//! `hestia inbox [--all] [--follow]`: what arrived, once or as it comes; a call that rings
//! meanwhile can be answered here.

use crate::{call, files, json, print_message, show_event, unlock};
use anyhow::Result;
use hestia_node::client::{ClientLibError, InboxEvent};
use std::path::Path;

/// Reconnection backoff for `inbox --follow`.
const FOLLOW_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const FOLLOW_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Backoff for `inbox --follow` when the node answers a long poll empty at once.
const FOLLOW_IDLE_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const FOLLOW_IDLE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// `hestia inbox`.
pub async fn run(home: &Path, follow: bool, all: bool, as_json: bool) -> Result<()> {
    let mut d = unlock::open_device(home)?;
    if all {
        for m in d.history()? {
            if as_json {
                json::print(serde_json::json!({
                    "event": "history", "message": json::message(&d, &m),
                }));
            } else {
                print_message(&m);
                files::print_file_of(&d, &m);
            }
        }
    }
    let mut conn = d.connect().await?;
    files::resume_uploads(&mut d, &mut conn).await;
    if !follow {
        for ev in d.sync(&mut conn, 0).await? {
            show_event(&d, &ev, as_json);
        }
        return Ok(());
    }
    // Follow: stay connected; if the home node goes away, say so and reconnect with
    // backoff. Nothing is lost meanwhile: the node holds the mail until it is acknowledged.
    let mut backoff = FOLLOW_RETRY_MIN;
    let mut idle = FOLLOW_IDLE_MIN;
    // Typed lines answer a call that rings here (read only then).
    let mut typed = call::controls(false);
    loop {
        let started = tokio::time::Instant::now();
        match d
            .sync(&mut conn, hestia_protocol::wire::MAX_FETCH_WAIT_MS)
            .await
        {
            Ok(events) => {
                backoff = FOLLOW_RETRY_MIN;
                // A wait that came back empty at once (the node's table of waiting
                // fetches is full, or another of our windows took our place): back off
                // instead of asking again in a tight loop.
                if events.is_empty() && started.elapsed() < FOLLOW_IDLE_MIN {
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(FOLLOW_IDLE_MAX);
                } else {
                    idle = FOLLOW_IDLE_MIN;
                }
                for ev in events {
                    if let InboxEvent::Call {
                        contact,
                        signal: hestia_protocol::call::CallSignal::Offer { call, sdp },
                        sent_at,
                    } = &ev
                        && hestia_node::driver::now_millis().saturating_sub(*sent_at)
                            <= hestia_protocol::call::MAX_OFFER_AGE_MS
                    {
                        let offer = (contact.as_str(), *call, sdp.as_str(), *sent_at);
                        if let Err(e) =
                            call::ring_in_inbox(&mut d, &mut conn, &mut typed, offer, as_json).await
                        {
                            eprintln!("the call failed: {e}");
                        }
                        continue;
                    }
                    show_event(&d, &ev, as_json);
                }
            }
            Err(e @ (ClientLibError::RequestFailed(_) | ClientLibError::Unreachable { .. })) => {
                eprintln!("connection to the home node lost ({e}); reconnecting in {backoff:?}");
                loop {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FOLLOW_RETRY_MAX);
                    match d.connect().await {
                        Ok(c) => {
                            conn = c;
                            eprintln!("reconnected");
                            break;
                        }
                        Err(e) => {
                            eprintln!("still unreachable ({e}); next try in {backoff:?}")
                        }
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
