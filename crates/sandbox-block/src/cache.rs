//! A small bounded map with first-in-first-out eviction.
//!
//! FIFO rather than LRU: the caches here sit in front of sequential guest
//! access patterns where recency tracking buys little and costs a lookup on
//! every hit.

use std::collections::{HashMap, VecDeque};

pub(crate) struct Fifo<V> {
    map: HashMap<u64, V>,
    order: VecDeque<u64>,
    cap: usize,
}

impl<V> Fifo<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.map.get(&key)
    }

    pub(crate) fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.map.iter().map(|(&k, v)| (k, v))
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        // The stale key stays in `order`; evict_oldest skips it.
        self.map.remove(&key)
    }

    /// Insert, evicting the oldest entries while over capacity.
    pub(crate) fn insert(&mut self, key: u64, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.cap {
            if self.evict_oldest().is_none() {
                break;
            }
        }
        // Keep `order` from growing without bound through removed keys.
        if self.order.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    pub(crate) fn evict_oldest(&mut self) -> Option<(u64, V)> {
        while let Some(key) = self.order.pop_front() {
            if let Some(v) = self.map.remove(&key) {
                return Some((key, v));
            }
        }
        None
    }

    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        while self.map.len() > self.cap {
            if self.evict_oldest().is_none() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fifo;

    #[test]
    fn evicts_oldest_first() {
        let mut c = Fifo::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(3, "c");
        assert!(!c.contains(1));
        assert_eq!(c.get(2), Some(&"b"));
        c.remove(2);
        c.insert(4, "d");
        assert_eq!(c.len(), 2);
        assert_eq!(c.evict_oldest(), Some((3, "c")));
    }
}
