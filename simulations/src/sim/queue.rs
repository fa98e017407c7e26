//! The event queue: events ordered by (time, sequence number), so equal times keep the order
//! they were scheduled in and a run replays exactly.

use super::{Ev, Millis};

/// Boxed so the queue moves 24 bytes per sift, not a whole request.
pub(super) struct Scheduled {
    pub(super) at: Millis,
    pub(super) seq: u64,
    pub(super) ev: Box<Ev>,
}

impl Scheduled {
    pub(super) fn key(&self) -> (Millis, u64) {
        (self.at, self.seq)
    }
}

/// A 4-ary min-heap on (time, sequence number), for events beyond the calendar's window. Four
/// children per node halve the depth of a binary heap; each level of a pop is a likely cache
/// miss, so fewer levels is what counts.
#[derive(Default)]
pub(super) struct Heap {
    pub(super) heap: Vec<Scheduled>,
}

impl Heap {
    pub(super) const D: usize = 4;

    pub(super) fn peek_at(&self) -> Option<Millis> {
        self.heap.first().map(|s| s.at)
    }

    pub(super) fn push(&mut self, item: Scheduled) {
        self.heap.push(item);
        let mut i = self.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / Self::D;
            if self.heap[parent].key() <= self.heap[i].key() {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
    }

    pub(super) fn pop(&mut self) -> Option<Scheduled> {
        let last = self.heap.pop()?;
        if self.heap.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.heap[0], last);
        let n = self.heap.len();
        let mut i = 0;
        loop {
            let first = i * Self::D + 1;
            if first >= n {
                break;
            }
            let end = (first + Self::D).min(n);
            let mut min = first;
            for c in first + 1..end {
                if self.heap[c].key() < self.heap[min].key() {
                    min = c;
                }
            }
            if self.heap[i].key() <= self.heap[min].key() {
                break;
            }
            self.heap.swap(i, min);
            i = min;
        }
        Some(top)
    }
}

/// The event queue, ordered by (time, sequence number); the sequence number makes the order
/// total, so runs replay exactly. A calendar of one bucket per millisecond covers the next
/// [`EventQueue::WINDOW`] ms (most events: request and answer hops, long-poll expiries); later
/// events wait in a heap and move into their bucket when the window reaches them. A bucket is
/// first in, first out, and events enter it in sequence order: those from the heap move in (in
/// heap order) the moment the window first covers their millisecond, before anything can be
/// scheduled there directly. Push and pop are O(1) inside the window.
pub(super) struct EventQueue {
    pub(super) buckets: Vec<std::collections::VecDeque<Scheduled>>,
    /// The millisecond being drained: every bucketed event is in [cursor, cursor + WINDOW).
    pub(super) cursor: Millis,
    pub(super) in_buckets: usize,
    pub(super) far: Heap,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            buckets: (0..Self::WINDOW)
                .map(|_| std::collections::VecDeque::new())
                .collect(),
            cursor: 0,
            in_buckets: 0,
            far: Heap::default(),
        }
    }
}

impl EventQueue {
    pub(super) const WINDOW: u64 = 1 << 16;

    pub(super) fn slot(at: Millis) -> usize {
        (at % Self::WINDOW) as usize
    }

    pub(super) fn push(&mut self, item: Scheduled) {
        // The simulator schedules at now + a delay, never in the past.
        debug_assert!(item.at >= self.cursor, "event scheduled in the past");
        if item.at < self.cursor + Self::WINDOW {
            self.buckets[Self::slot(item.at)].push_back(item);
            self.in_buckets += 1;
        } else {
            self.far.push(item);
        }
    }

    /// The next event if it is due before `limit`. The cursor never passes `limit`, so events
    /// scheduled later at or after `limit` (another shard's, at the end of a window) still go in
    /// order.
    pub(super) fn pop_before(&mut self, limit: Millis) -> Option<Scheduled> {
        loop {
            if self.in_buckets == 0 {
                let next = self.far.peek_at()?;
                if next >= limit {
                    return None;
                }
                self.advance(next.max(self.cursor));
            }
            if self.cursor >= limit {
                return None;
            }
            if let Some(item) = self.buckets[Self::slot(self.cursor)].pop_front() {
                self.in_buckets -= 1;
                return Some(item);
            }
            self.advance(self.cursor + 1);
        }
    }

    /// When the next event is due, if any.
    pub(super) fn next_at(&self) -> Option<Millis> {
        if self.in_buckets == 0 {
            return self.far.peek_at();
        }
        (self.cursor..self.cursor + Self::WINDOW).find(|t| !self.buckets[Self::slot(*t)].is_empty())
    }

    /// Moves the window to start at `t`, taking in the far events it now covers.
    pub(super) fn advance(&mut self, t: Millis) {
        self.cursor = t;
        while let Some(at) = self.far.peek_at()
            && at < self.cursor + Self::WINDOW
        {
            let item = self.far.pop().expect("peeked");
            self.buckets[Self::slot(item.at)].push_back(item);
            self.in_buckets += 1;
        }
    }
}
