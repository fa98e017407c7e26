//! `--json`: what the reading commands print, as one JSON object per line (a stream, for
//! `inbox --follow`), with ids and Unix-millisecond times. Text from other users goes out
//! as JSON strings, whose encoding escapes every control character; nothing here is for a
//! terminal.

use hestia_node::client::{Device, InboxEvent};
use hestia_protocol::wire::{PushInfo, PushState, WakeFailure};
use hestia_store::client::{
    CallOutcome, Contact, Direction, FileState, MessageState, StoredFile, StoredMessage,
};
use serde_json::{Value, json};

/// `--json` on a command that reads.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct JsonFlag {
    /// Print as JSON, one object per line, with ids and Unix-millisecond times.
    #[arg(long)]
    pub json: bool,
}

pub fn print(v: Value) {
    println!("{v}");
}

fn state(s: &MessageState) -> Value {
    let (name, detail) = match s {
        MessageState::Queued => ("queued", None),
        MessageState::DeliveredToNode => ("delivered_to_node", None),
        MessageState::DeliveredToDevice => ("delivered_to_device", None),
        MessageState::Expired => ("expired", None),
        MessageState::NoSuchUser => ("no_such_user", None),
        MessageState::Failed(why) => ("failed", Some(why.as_str())),
        MessageState::Received => ("received", None),
        MessageState::HeldKeyChanged => ("held_key_changed", None),
        MessageState::WaitingForKeys => ("waiting_for_keys", None),
        MessageState::Unsent => ("unsent", None),
        MessageState::Call(o) => {
            let (name, secs) = match o {
                CallOutcome::Talked { secs } => ("call_talked", Some(*secs)),
                CallOutcome::NoAnswer => ("call_no_answer", None),
                CallOutcome::Declined => ("call_declined", None),
                CallOutcome::Busy => ("call_busy", None),
                CallOutcome::Failed => ("call_failed", None),
            };
            return match secs {
                Some(s) => json!({ "name": name, "seconds": s }),
                None => json!({ "name": name }),
            };
        }
    };
    match detail {
        Some(d) => json!({ "name": name, "detail": d }),
        None => json!({ "name": name }),
    }
}

fn file_state(s: &FileState) -> &'static str {
    match s {
        FileState::Sent => "sent",
        FileState::Fetched => "fetched",
        FileState::Received => "received",
        FileState::Downloading { .. } => "downloading",
        FileState::Downloaded { .. } => "downloaded",
        FileState::Expired => "expired",
    }
}

pub fn file(id: &str, f: &StoredFile, contact: &str) -> Value {
    let mut v = json!({
        "id": id,
        "contact": contact,
        "direction": if f.direction == Direction::Incoming { "in" } else { "out" },
        "name": f.file.name,
        "mime": f.file.mime,
        "size": f.file.size,
        "caption": f.file.caption,
        "expires_at": f.file.expires_at,
        "state": file_state(&f.state),
    });
    if let FileState::Downloaded { path } = &f.state {
        v["path"] = json!(path);
    }
    v
}

pub fn message(d: &Device, m: &StoredMessage) -> Value {
    let mut v = json!({
        "id": m.envelope_id.to_hex(),
        "direction": if m.direction == Direction::Incoming { "in" } else { "out" },
        "contact": m.peer_name,
        "key": m.peer.fingerprint().to_string(),
        "text": m.text,
        "at": m.at,
        "expires_at": m.expires_at,
        "state": state(&m.state),
    });
    if let Ok(Some(f)) = d.file(&m.envelope_id) {
        v["file"] = file(&m.envelope_id.to_hex(), &f, &m.peer_name);
    }
    v
}

pub fn contact(c: &Contact) -> Value {
    json!({
        "name": c.name,
        "address": c.address.to_string(),
        "key": c.address.user.fingerprint().to_string(),
        "handle": c.handle,
        "trust": match c.trust {
            hestia_store::client::Trust::Unverified => "unverified",
            hestia_store::client::Trust::Verified => "verified",
        },
        "request": c.origin == hestia_store::client::Origin::Request,
        "claims": c.claims,
        "added_at": c.added_at,
    })
}

pub fn event(d: &Device, ev: &InboxEvent) -> Value {
    let ids = |v: &[hestia_protocol::envelope::EnvelopeId]| -> Vec<String> {
        v.iter().map(|i| i.to_hex()).collect()
    };
    match ev {
        InboxEvent::Message(m) => json!({ "event": "message", "message": message(d, m) }),
        InboxEvent::NewContact {
            contact: c,
            message: m,
        } => json!({
            "event": "new_contact", "contact": contact(c), "message": message(d, m),
        }),
        InboxEvent::Claimed {
            contact,
            key,
            claims,
            claimed_key,
            claimed_verified,
            first,
            message: m,
        } => json!({
            "event": "claimed",
            "contact": contact,
            "key": key.to_string(),
            "claims": claims,
            "claimed_key": claimed_key.as_ref().map(|k| k.to_string()),
            "claimed_verified": claimed_verified,
            "first": first,
            "message": message(d, m),
        }),
        InboxEvent::Delivered(v) => json!({ "event": "delivered", "ids": ids(v) }),
        InboxEvent::SessionRestarted { contact, lost } => {
            json!({ "event": "session_restarted", "contact": contact, "ids": ids(lost) })
        }
        InboxEvent::PeerLostMessages { contact, lost } => {
            json!({ "event": "peer_lost_messages", "contact": contact, "ids": ids(lost) })
        }
        InboxEvent::Call {
            contact, signal, ..
        } => json!({
            "event": "call",
            "contact": contact,
            "call": signal.call().to_hex(),
            "kind": match signal {
                hestia_protocol::call::CallSignal::Offer { .. } => "offer",
                hestia_protocol::call::CallSignal::Answer { .. } => "answer",
                hestia_protocol::call::CallSignal::Candidates { .. } => "candidates",
                hestia_protocol::call::CallSignal::Decline { .. } => "decline",
                hestia_protocol::call::CallSignal::Busy { .. } => "busy",
                hestia_protocol::call::CallSignal::Hangup { .. } => "hangup",
            },
        }),
        InboxEvent::Undecryptable { id, reason } => {
            json!({ "event": "undecryptable", "id": id.to_hex(), "reason": reason })
        }
    }
}

pub fn push(info: &PushInfo) -> Value {
    use base64::Engine;
    let subs: Vec<Value> = info
        .subscriptions
        .iter()
        .map(|s| {
            let state = match &s.state {
                PushState::Removed { at, status } => {
                    json!({ "name": "removed", "at": at, "status": status })
                }
                PushState::Active {
                    woken,
                    wakes_sent,
                    last_wake_at,
                    failed_attempts,
                    last_failure,
                } => json!({
                    "name": "active",
                    "woken": woken,
                    "wakes_sent": wakes_sent,
                    "last_wake_at": last_wake_at,
                    "failed_attempts": failed_attempts,
                    "last_failure": last_failure.map(|f| match f {
                        WakeFailure::Status(s) => format!("http {s}"),
                        WakeFailure::Unreachable => "unreachable".into(),
                        WakeFailure::Timeout => "timeout".into(),
                        WakeFailure::Refused(r) => r.to_string(),
                    }),
                }),
            };
            json!({ "endpoint": s.endpoint, "registered_at": s.registered_at, "state": state })
        })
        .collect();
    json!({
        "vapid_key": (!info.vapid_key.is_empty())
            .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&info.vapid_key)),
        "subscriptions": subs,
    })
}
