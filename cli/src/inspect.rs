//! `hestia node inspect`: what a node operator can see in their own database. Used by the demo
//! to show that a node holds ciphertext and routing metadata, never text.

use anyhow::{Context, Result};
use hestia_protocol::Millis;
use hestia_protocol::wire::DeliveryState;
use hestia_store::node::{MailboxEntry, NodeDb, NodeSnapshot, NodeStore};
use std::path::Path;

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (civil date from days, after Howard Hinnant).
pub(crate) fn utc(ms: Millis) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn state(s: &DeliveryState) -> String {
    match s {
        DeliveryState::Queued { attempts } => format!("queued ({attempts} attempts)"),
        DeliveryState::DeliveredToNode { at } => format!("delivered to their node at {}", utc(*at)),
        DeliveryState::NoSuchUser => "no such user on that node".into(),
        DeliveryState::Expired => "expired".into(),
        DeliveryState::Refused => "refused by their node".into(),
        DeliveryState::Unknown => "unknown".into(),
    }
}

/// What `node inspect` shows: the snapshot and the mailbox entries.
pub struct Held {
    snapshot: NodeSnapshot,
    mailbox: Vec<MailboxEntry>,
}

pub fn snapshot(data_dir: &Path) -> Result<Held> {
    let db = NodeDb::open_read_only(&data_dir.join("db"))
        .with_context(|| format!("opening the node database in {}", data_dir.display()))?;
    let mut mailbox = Vec::new();
    db.for_each_mailbox(&mut |e| mailbox.push(e))?;
    Ok(Held {
        snapshot: db.load()?,
        mailbox,
    })
}

pub fn render(held: &Held) -> String {
    let s = &held.snapshot;
    let mut out = String::new();
    out.push_str(&format!("  accounts: {}\n", s.accounts.len()));
    for (u, a) in &s.accounts {
        out.push_str(&format!(
            "    user {}  registered {}\n",
            u.fingerprint(),
            utc(a.created_at)
        ));
    }
    out.push_str(&format!(
        "  mailbox (held for offline users): {}\n",
        held.mailbox.len()
    ));
    for e in &held.mailbox {
        out.push_str(&format!(
            "    envelope {}  for {}  {} bytes  expires {}\n",
            e.id,
            e.recipient.fingerprint(),
            e.size,
            utc(e.expires_at)
        ));
    }
    out.push_str(&format!(
        "  outbox (waiting for other nodes): {}\n",
        s.outbox.len()
    ));
    for r in &s.outbox {
        out.push_str(&format!(
            "    envelope {}  from {}  to node {}  {} bytes  expires {}\n",
            r.id,
            r.owner.fingerprint(),
            r.to_node,
            r.size,
            utc(r.expires_at)
        ));
    }
    out.push_str(&format!(
        "  delivery records (for senders homed here): {}\n",
        s.status.len()
    ));
    for (id, r) in &s.status {
        out.push_str(&format!(
            "    envelope {}  sent by {}  {}\n",
            id,
            r.owner.fingerprint(),
            state(&r.state)
        ));
    }
    out.push_str(&format!(
        "  file uploads (encrypted chunks; name, key and recipient are not here): {}\n",
        s.blobs.len()
    ));
    for (id, b) in &s.blobs {
        let held: u32 = b.held.iter().map(|x| x.count_ones()).sum();
        out.push_str(&format!(
            "    blob {}  from {}  {} bytes in {} chunks, {} held  {:?}  expires {}\n",
            id.0[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            b.owner.fingerprint(),
            b.spec.total_bytes(),
            b.spec.chunks,
            held,
            b.phase,
            utc(b.spec.expires_at)
        ));
    }
    // Endpoints are stable pseudonyms of devices at a push service: counted, not listed.
    let removed = s.push.iter().filter(|(_, r)| r.removed.is_some()).count();
    out.push_str(&format!(
        "  push subscriptions (wake-up endpoints of users' devices): {} ({} removed by their push service)\n",
        s.push.len(),
        removed
    ));
    out.push_str(&format!(
        "  prekeys (public; handed out to start sessions): {} users with a signed prekey, {} one-time prekeys\n",
        s.signed_prekeys.len(),
        s.one_time_prekeys.len()
    ));
    for (u, _) in &s.signed_prekeys {
        let n = s.one_time_prekeys.iter().filter(|(o, _)| o == u).count();
        out.push_str(&format!(
            "    user {}  one-time prekeys left {}\n",
            u.fingerprint(),
            n
        ));
    }
    out
}

pub fn print(data_dir: &Path) -> Result<()> {
    print!("{}", render(&snapshot(data_dir)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_645_863_076), "2026-11-25 22:31:03 UTC");
    }
}
