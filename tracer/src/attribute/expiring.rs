//! A map whose entries end by time, found in O(what ends) rather than by a walk over all.
//!
//! The engine asks "what is due?" on every event while anything waits; a walk over every
//! waiting entry made a storm quadratic (100k resets/s that their receivers do not read:
//! 25,000 verdicts waiting, 7.8 s of CPU per second of events). Beside the map a queue holds
//! (time, key) in insertion order. Events come nearly in time order (samples of different
//! CPUs interleave by microseconds), so the queue is nearly sorted: an entry behind a newer
//! one ends when that one does, microseconds late. An entry removed or replaced before its
//! time leaves its queue slot stale; stale slots are skipped when they come up, and dropped
//! whenever the map is empty.
use std::{collections::VecDeque, hash::Hash};

use super::FastMap;

pub struct Expiring<K, V> {
    map: FastMap<K, V>,
    queue: VecDeque<(u64, K)>,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Self {
            map: FastMap::default(),
            queue: VecDeque::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Expiring<K, V> {
    /// Inserts `value`, which ends at `time` (see [`Self::drain_older`]); returns the
    /// value it replaced.
    pub fn insert(&mut self, key: K, value: V, time: u64) -> Option<V> {
        // Removals leave stale slots until their time comes up, which for a long wait
        // (unpaired sends: 5 s) is many slots in a storm: sweep them now and then, at a
        // cost that grows with the slots swept.
        if self.queue.len() >= 4 * self.map.len() + 1024 {
            let map = &self.map;
            self.queue.retain(|(_, k)| map.contains_key(k));
        }
        self.queue.push_back((time, key.clone()));
        self.map.insert(key, value)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let value = self.map.remove(key);
        if self.map.is_empty() {
            self.queue.clear();
        }
        value
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Removes and returns, oldest first, the entries whose time is at or before `cutoff`
    /// (`time` reads it back from a value, to tell a live queue slot from a stale one).
    pub fn drain_older(&mut self, cutoff: u64, time: impl Fn(&V) -> u64) -> Vec<V> {
        let mut drained = Vec::new();
        while let Some((t, _)) = self.queue.front() {
            if *t > cutoff {
                break;
            }
            let Some((t, key)) = self.queue.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|v| time(v) == t) {
                drained.extend(self.map.remove(&key));
            }
        }
        if self.map.is_empty() {
            self.queue.clear();
        }
        drained.sort_by_key(|v| time(v));
        drained
    }

    /// Slots in the queue, live and stale: bounded by what was inserted within the longest
    /// wait, and by the map's emptying.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(e: &mut Expiring<u32, (u64, &'static str)>, cutoff: u64) -> Vec<&'static str> {
        e.drain_older(cutoff, |v| v.0)
            .into_iter()
            .map(|v| v.1)
            .collect()
    }

    #[test]
    fn ends_what_is_due_oldest_first_and_skips_what_went_before() {
        let mut e = Expiring::default();
        e.insert(1, (10, "a"), 10);
        e.insert(2, (12, "b"), 12);
        // Out of order by a little: ends with the entry ahead of it.
        e.insert(3, (11, "c"), 11);
        e.insert(4, (20, "d"), 20);
        assert_eq!(e.remove(&2), Some((12, "b")));
        // Replaced: the first slot of key 1 is stale; the entry ends at its new time, or
        // when the entries queued ahead of it do (d, at 20).
        e.insert(1, (15, "a2"), 15);
        assert!(drained(&mut e, 9).is_empty());
        assert_eq!(drained(&mut e, 12), ["c"]);
        assert!(drained(&mut e, 15).is_empty());
        assert_eq!(e.len(), 2);
        assert_eq!(drained(&mut e, 20), ["a2", "d"]);
        assert_eq!(e.len(), 0);
        assert_eq!(e.queued(), 0, "an empty map keeps no stale slots");
    }

    #[test]
    fn removals_do_not_grow_the_queue_without_bound() {
        let mut e = Expiring::default();
        for i in 0..100_000u32 {
            e.insert(i, (u64::from(i), "x"), u64::from(i));
            e.remove(&i);
        }
        assert_eq!(e.queued(), 0);
        // One entry stays (a send nobody receives), the rest come and go.
        e.insert(u32::MAX, (0, "stays"), 0);
        for i in 0..100_000u32 {
            e.insert(i, (u64::from(i), "x"), u64::from(i));
            e.remove(&i);
        }
        assert!(e.queued() <= 4 * e.len() + 1024, "{}", e.queued());
        assert_eq!(drained(&mut e, u64::MAX), ["stays"]);
    }
}
