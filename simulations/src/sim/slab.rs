//! The shard's containers: a contiguous range of nodes or users indexed by their run-wide
//! numbers, and files and calls by theirs.

use super::FxMap;

/// A contiguous range of nodes or users, indexed by their global numbers.
pub(super) struct Slab<T> {
    pub(super) base: usize,
    pub(super) items: Vec<T>,
}

impl<T> Slab<T> {
    pub(super) fn new(base: usize, items: Vec<T>) -> Slab<T> {
        Slab { base, items }
    }
    pub(super) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether global number `i` is in this range.
    pub(super) fn holds(&self, i: usize) -> bool {
        i >= self.base && i < self.base + self.items.len()
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        debug_assert!(self.holds(i), "{i} is not in this shard");
        &self.items[i - self.base]
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        debug_assert!(self.holds(i), "{i} is not in this shard");
        &mut self.items[i - self.base]
    }
}

/// Files and calls by their run-wide numbers (`local count × shards + shard`, so numbers do not
/// depend on the order shards run in).
pub(super) struct IdMap<T>(pub(super) FxMap<usize, T>);

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        IdMap(FxMap::default())
    }
}

impl<T> IdMap<T> {
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.values()
    }
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
    /// Values in the order of their numbers.
    pub(super) fn sorted(&self) -> Vec<&T> {
        let mut v: Vec<(&usize, &T)> = self.0.iter().collect();
        v.sort_unstable_by_key(|(k, _)| **k);
        v.into_iter().map(|(_, t)| t).collect()
    }
}

impl<T> std::ops::Index<usize> for IdMap<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.0[&i]
    }
}

impl<T> std::ops::IndexMut<usize> for IdMap<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.0.get_mut(&i).expect("a known number")
    }
}
