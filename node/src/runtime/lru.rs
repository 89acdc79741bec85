//! A least-recently-used map bounded by the total size of its entries: what the module
//! cache keeps compiled modules in.

use std::collections::HashMap;
use std::hash::Hash;

/// Least-recently-used entries bounded by their total size.
#[derive(Debug)]
pub struct Lru<K, V> {
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<K, LruEntry<V>>,
}

#[derive(Debug)]
struct LruEntry<V> {
    value: V,
    bytes: u64,
    last_used: u64,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    /// Empty, holding at most `budget` bytes.
    pub fn new(budget: u64) -> Lru<K, V> {
        Lru {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// Adds `value` of `bytes` under `key`, then evicts the least recently used others
    /// until the total fits the budget (an entry larger than the budget alone stays).
    /// Returns the evicted keys.
    pub fn insert(&mut self, key: K, value: V, bytes: u64) -> Vec<K> {
        self.clock += 1;
        let entry = LruEntry {
            value,
            bytes,
            last_used: self.clock,
        };
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        let mut evicted = Vec::new();
        while self.used > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let gone = self.entries.remove(&oldest).expect("present");
            self.used -= gone.bytes;
            evicted.push(oldest);
        }
        evicted
    }

    /// The value under `key`, marked as just used, to change in place.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = self.clock;
        Some(&mut entry.value)
    }

    /// Removes the entries `gone` says so of; returns their keys.
    pub fn remove_where(&mut self, mut gone: impl FnMut(&V) -> bool) -> Vec<K> {
        let keys: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, e)| gone(&e.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(e) = self.entries.remove(k) {
                self.used -= e.bytes;
            }
        }
        keys
    }

    /// Every value, in no particular order, without marking any as used.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|e| &e.value)
    }

    /// Total bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used_until_it_fits() {
        let mut lru = Lru::new(100);
        assert!(lru.insert("a", 1, 40).is_empty());
        assert!(lru.insert("b", 2, 40).is_empty());
        // Using `a` makes `b` the oldest.
        assert_eq!(lru.get_mut(&"a").copied(), Some(1));
        assert_eq!(lru.insert("c", 3, 40), vec!["b"]);
        assert_eq!((lru.len(), lru.used()), (2, 80));
        assert_eq!(lru.get_mut(&"b").copied(), None);
        // One entry over the whole budget evicts all others but stays itself.
        let mut evicted = lru.insert("huge", 4, 500);
        evicted.sort();
        assert_eq!(evicted, vec!["a", "c"]);
        assert_eq!(lru.get_mut(&"huge").copied(), Some(4));
        // Replacing an entry counts its new size only.
        assert!(lru.insert("huge", 5, 10).is_empty());
        assert_eq!(lru.used(), 10);
        // Removed by what they hold.
        lru.insert("small", 1, 3);
        assert_eq!(lru.remove_where(|&v| v == 5), vec!["huge"]);
        assert_eq!((lru.len(), lru.used()), (1, 3));
    }
}
