//! `hestia node inspect`: what a node operator can see in their own database. Used by the demo
//! to show that a node holds ciphertext and routing metadata, never text.

use anyhow::{Context, Result};
use hestia_store::node::{NodeDb, NodeSnapshot, NodeStore};
use std::path::Path;

pub fn snapshot(data_dir: &Path) -> Result<NodeSnapshot> {
    let db = NodeDb::open_read_only(&data_dir.join("db"))
        .with_context(|| format!("opening the node database in {}", data_dir.display()))?;
    Ok(db.load()?)
}

pub fn render(s: &NodeSnapshot) -> String {
    let mut out = String::new();
    out.push_str(&format!("  accounts: {}\n", s.accounts.len()));
    for (u, a) in &s.accounts {
        out.push_str(&format!(
            "    user {}  registered at {}\n",
            u.fingerprint(),
            a.created_at
        ));
    }
    out.push_str(&format!(
        "  mailbox (held for offline users): {}\n",
        s.mailbox.len()
    ));
    for e in &s.mailbox {
        out.push_str(&format!(
            "    envelope {}  for {}  {} bytes  expires {}\n",
            e.id,
            e.recipient.fingerprint(),
            e.body.len(),
            e.expires_at
        ));
    }
    out.push_str(&format!(
        "  outbox (waiting for other nodes): {}\n",
        s.outbox.len()
    ));
    for r in &s.outbox {
        out.push_str(&format!(
            "    envelope {}  from {}  to node {}  {} bytes  expires {}\n",
            r.envelope.id,
            r.owner.fingerprint(),
            r.to_node,
            r.envelope.body.len(),
            r.envelope.expires_at
        ));
    }
    out.push_str(&format!(
        "  delivery records (for senders homed here): {}\n",
        s.status.len()
    ));
    for (id, r) in &s.status {
        out.push_str(&format!(
            "    envelope {}  sent by {}  state {:?}\n",
            id,
            r.owner.fingerprint(),
            r.state
        ));
    }
    out
}

pub fn print(data_dir: &Path) -> Result<()> {
    print!("{}", render(&snapshot(data_dir)?));
    Ok(())
}
