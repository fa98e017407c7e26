//! Stored mail by the node that delivered it: the per-sending-node quota on this node's disk.
//!
//! Every mailbox entry a remote node delivered carries a small index into this table; the
//! table counts the bytes each sending node has stored here and refuses more beyond
//! [`MAX_STORED_BYTES_PER_NODE`]. An entry whose node's bytes fall to zero is forgotten and its
//! index reused, so the table is never larger than the number of nodes with mail held here.
//! Local sends, and mail read from the store at start (its origin is not stored), carry
//! [`UNATTRIBUTED`] and count only toward the per-user and node-wide bounds.

use std::collections::HashMap;

/// Bytes of mail one remote node may have stored here at once: 1/32 of the node-wide bound, so
/// no single node (or operator of one) can fill the disk for everyone, while a busy peer with
/// many offline recipients here still gets far more than a day of heavy traffic.
pub const MAX_STORED_BYTES_PER_NODE: u64 = super::MAX_STORED_BYTES / 32;

/// The origin of mail that is not charged to any node.
pub const UNATTRIBUTED: u32 = u32::MAX;

#[derive(Default)]
pub(super) struct Origins {
    ix: HashMap<String, u32>,
    /// By index: the node's id and its bytes stored here (empty name: a free slot).
    slots: Vec<(String, u64)>,
    free: Vec<u32>,
}

impl Origins {
    /// Charges `size` bytes to `node` and returns its index, or `None` if that would take the
    /// node past `quota`.
    pub(super) fn charge(&mut self, node: &str, size: u64, quota: u64) -> Option<u32> {
        if let Some(&i) = self.ix.get(node) {
            let held = &mut self.slots[i as usize].1;
            if held.saturating_add(size) > quota {
                return None;
            }
            *held += size;
            return Some(i);
        }
        if size > quota {
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = (node.to_string(), size);
                i
            }
            None => {
                self.slots.push((node.to_string(), size));
                (self.slots.len() - 1) as u32
            }
        };
        self.ix.insert(node.to_string(), i);
        Some(i)
    }

    /// Gives back `size` bytes charged to index `i` (the entry was fetched, acknowledged or
    /// expired).
    pub(super) fn release(&mut self, i: u32, size: u64) {
        if i == UNATTRIBUTED {
            return;
        }
        let Some((name, held)) = self.slots.get_mut(i as usize) else {
            return;
        };
        *held = held.saturating_sub(size);
        if *held == 0 && !name.is_empty() {
            self.ix.remove(name.as_str());
            name.clear();
            self.free.push(i);
        }
    }

    /// Bytes `node` has stored here.
    pub(super) fn held(&self, node: &str) -> u64 {
        self.ix
            .get(node)
            .map(|&i| self.slots[i as usize].1)
            .unwrap_or(0)
    }

    /// Nodes with mail stored here.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ix.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_held_to_its_quota_and_slots_are_reused() {
        let mut o = Origins::default();
        let a = o.charge("A", 60, 100).unwrap();
        assert_eq!(o.charge("A", 50, 100), None, "over A's quota");
        let b = o.charge("B", 90, 100).unwrap();
        assert_ne!(a, b);
        assert_eq!(o.charge("A", 40, 100), Some(a), "exactly the quota fits");
        assert_eq!(o.held("A"), 100);
        o.release(a, 100);
        assert_eq!(o.held("A"), 0);
        assert_eq!(o.len(), 1, "A is forgotten once it holds nothing");
        let c = o.charge("C", 10, 100).unwrap();
        assert_eq!(c, a, "A's slot is reused");
        assert_eq!(o.held("B"), 90);
        o.release(UNATTRIBUTED, 5);
        o.release(b, 1000);
        assert_eq!(o.held("B"), 0);
        assert_eq!(
            o.charge("D", 101, 100),
            None,
            "one envelope above the quota"
        );
        assert_eq!(o.len(), 1);
    }
}
