//! The in-memory map of keys to values.
//!
//! Owns the data while the server runs and the one lock that orders every
//! read and write. It must never do I/O, know about formats or block on
//! anything but its own lock: the HTTP handlers call it on tokio worker
//! threads, so every operation here is a short, bounded critical section.
//!
//! Entries are kept in a `BTreeSet` rather than a hash map because the data
//! file is written in key order: the order comes for free at save time, a
//! sorted file loads into full B-tree nodes, and no rehash ever doubles the
//! table's memory mid-load.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

/// Returned by writes once [`Store::freeze`] has been called: the final
/// snapshot is being taken, and a write acknowledged now would be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the store is shutting down and no longer accepts writes")]
pub struct Frozen;

/// The key/value map, safe to share between threads.
#[derive(Default)]
pub struct Store {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Every pair, ordered by key bytes.
    entries: BTreeSet<Entry>,
    /// Set once by `freeze`; makes every later write fail instead of
    /// changing data that the final save may already have read.
    frozen: bool,
}

/// One pair in a single allocation: the key's bytes followed by the
/// value's. One allocation instead of two saves about 30 bytes a pair,
/// which is a fifth of the memory of a store of small values.
struct Entry {
    key_and_value: Box<str>,
    /// Where the key ends. Keys are at most 1 KiB, so `u32` is plenty.
    key_len: u32,
}

impl Entry {
    fn new(key: &str, value: &str) -> Self {
        let mut key_and_value = String::with_capacity(key.len() + value.len());
        key_and_value.push_str(key);
        key_and_value.push_str(value);
        let key_len = u32::try_from(key.len()).expect("keys are validated to at most 1 KiB");
        Entry {
            key_and_value: key_and_value.into_boxed_str(),
            key_len,
        }
    }

    fn key(&self) -> &str {
        &self.key_and_value[..self.key_len as usize]
    }

    fn value(&self) -> &str {
        &self.key_and_value[self.key_len as usize..]
    }
}

// Entries compare by key alone, so the set behaves as a map and can be
// searched with a plain `&str` through `Borrow`.
impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the value stored under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.read().entries.get(key).map(|e| e.value().to_owned())
    }

    /// The length in bytes of the value under `key`, without copying it.
    pub fn value_len(&self, key: &str) -> Option<usize> {
        self.read().entries.get(key).map(|e| e.value().len())
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn put(&self, key: &str, value: &str) -> Result<(), Frozen> {
        // Build the entry before taking the lock: the copy of a large value
        // must not stall other requests.
        let entry = Entry::new(key, value);
        let mut inner = self.write()?;
        inner.entries.replace(entry);
        Ok(())
    }

    /// Removes `key`; says whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, Frozen> {
        let removed = self.write()?.entries.remove(key);
        Ok(removed)
    }

    /// Removes every pair.
    pub fn clear(&self) -> Result<(), Frozen> {
        let old = std::mem::take(&mut self.write()?.entries);
        // Freeing a million entries takes a while; do it outside the lock.
        drop(old);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses every later write. Called once the server has stopped
    /// serving, right before the final save, so that a request still
    /// running past the drain deadline cannot be acknowledged after the
    /// save has read the data.
    pub fn freeze(&self) {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .frozen = true;
    }

    /// A consistent, sorted view of every pair. Writers wait while it is
    /// held, so hold it only for as long as a save or a dump takes.
    pub fn view(&self) -> View<'_> {
        View { inner: self.read() }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the set half-changed
        // (each operation is a single std call), so a poisoned lock is safe
        // to keep using.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>, Frozen> {
        let inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.frozen { Err(Frozen) } else { Ok(inner) }
    }
}

/// A read-locked view of the store, in key order.
pub struct View<'a> {
    inner: RwLockReadGuard<'a, Inner>,
}

impl View<'_> {
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Every pair, sorted by key bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner.entries.iter().map(|e| (e.key(), e.value()))
    }

    /// The pairs whose key starts with `prefix`, sorted by key bytes.
    pub fn with_prefix<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = (&'s str, &'s str)> {
        self.inner
            .entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |e| e.key().starts_with(prefix))
            .map(|e| (e.key(), e.value()))
    }
}

/// Builds a store from pairs read in file order, where a repeated key means
/// the later pair wins.
///
/// Collecting first and building the tree in one pass is what makes loading
/// fast: `BTreeSet::from_iter` on sorted input fills every node.
#[derive(Default)]
pub struct Builder {
    entries: Vec<Entry>,
    /// Whether every key so far was strictly greater than the one before,
    /// as in every file kvs writes; then no sort is needed.
    strictly_sorted: bool,
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            entries: Vec::new(),
            strictly_sorted: true,
        }
    }

    pub fn push(&mut self, key: &str, value: &str) {
        if let Some(last) = self.entries.last() {
            self.strictly_sorted &= last.key() < key;
        }
        self.entries.push(Entry::new(key, value));
    }

    /// Adds every pair of `store`, as if they had been pushed in order.
    pub fn extend_from(&mut self, store: &Store) {
        for (key, value) in store.view().iter() {
            self.push(key, value);
        }
    }

    pub fn build(mut self) -> Store {
        if !self.strictly_sorted {
            // A stable sort keeps equal keys in file order, so keeping the
            // last of each run of equal keys keeps the later line.
            self.entries.sort();
            let mut deduped: Vec<Entry> = Vec::with_capacity(self.entries.len());
            for entry in self.entries.drain(..) {
                match deduped.last_mut() {
                    Some(last) if last.key() == entry.key() => *last = entry,
                    _ => deduped.push(entry),
                }
            }
            self.entries = deduped;
        }
        Store {
            inner: RwLock::new(Inner {
                entries: self.entries.into_iter().collect(),
                frozen: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(store: &Store) -> Vec<(String, String)> {
        store
            .view()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn put_get_delete_clear() {
        let store = Store::new();
        assert_eq!(store.get("a"), None);
        store.put("a", "1").unwrap();
        store.put("a", "2").unwrap();
        assert_eq!(store.get("a").as_deref(), Some("2"));
        assert_eq!(store.value_len("a"), Some(1));
        assert_eq!(store.delete("a"), Ok(true));
        assert_eq!(store.delete("a"), Ok(false));
        store.put("b", "x").unwrap();
        store.clear().unwrap();
        assert!(store.is_empty());
    }

    #[test]
    fn iterates_in_byte_order_and_by_prefix() {
        let store = Store::new();
        for k in ["b", "a:2", "A", "a:1", "a", "a;"] {
            store.put(k, k).unwrap();
        }
        let keys: Vec<_> = pairs(&store).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["A", "a", "a:1", "a:2", "a;", "b"]);
        let view = store.view();
        let a: Vec<_> = view.with_prefix("a:").map(|(k, _)| k).collect();
        assert_eq!(a, ["a:1", "a:2"]);
    }

    #[test]
    fn builder_keeps_the_later_of_repeated_keys() {
        let mut b = Builder::new();
        b.push("z", "1");
        b.push("a", "1");
        b.push("z", "2");
        b.push("a", "2");
        b.push("m", "1");
        let store = b.build();
        assert_eq!(
            pairs(&store),
            [("a", "2"), ("m", "1"), ("z", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn frozen_store_refuses_writes_but_serves_reads() {
        let store = Store::new();
        store.put("a", "1").unwrap();
        store.freeze();
        assert_eq!(store.put("b", "1"), Err(Frozen));
        assert_eq!(store.delete("a"), Err(Frozen));
        assert_eq!(store.clear(), Err(Frozen));
        assert_eq!(store.get("a").as_deref(), Some("1"));
    }
}
