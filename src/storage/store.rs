//! The in-memory map of keys to values.
//!
//! Owns the data while the server runs and the locks that order every read
//! and write. It must never do I/O, know about formats or block on anything
//! but its own locks: the HTTP handlers call it on tokio worker threads, so
//! every operation here is a short, bounded critical section.
//!
//! Pairs live in hash sets rather than a B-tree: a lookup touches two or
//! three cache lines instead of one per tree level, which is what keeps a
//! GET over a large store close to the cost of an empty request. Key order
//! is only needed when the whole store is written out, and sorting then
//! (see [`View::sorted`]) costs less than a tree on every request.
//!
//! The sets are split into [`SHARDS`] shards, each behind its own lock, so
//! that growing a table (which rehashes all of it) stalls one shard's keys
//! for a fraction of a millisecond instead of every request for tens of
//! milliseconds. (`dashmap` shards the same way, but hides the shard locks
//! that `clear` and `view` must take together.)
//!
//! Writes come from one thread only: the write-ahead log's writer (`wal`)
//! on a single node, the Raft loop (`cluster::raft_loop`) in a cluster; each
//! applies a write after logging it, and that single writer is what keeps
//! the map equal to the log, so this module needs no notion of shutdown.
//!
//! Each pair is reference-counted, so a checkpoint's copy of the store
//! ([`Store::fuzzy_copy`]) shares the pairs instead of duplicating them: it
//! costs a pointer a pair, not a second copy of the data. A pair is never
//! changed in place; a write replaces it with a new one, and the old one
//! lives on only for as long as a copy still holds it.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use triomphe::ThinArc;

use rayon::iter::{
    IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, ParallelIterator,
};
use rayon::slice::ParallelSliceMut;

/// How many independently locked parts the map is split into.
const SHARDS: usize = 64;

/// The key/value map, safe to share between threads.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// Picks a key's shard. Seeded at random, like the sets' own hashers,
    /// so that clients cannot aim many keys at one shard.
    shard_hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    entries: HashSet<Entry>,
}

/// Ends the key inside an [`Entry`]. Valid keys never contain it.
const KEY_END: u8 = b'\0';

/// One pair in a single 8-byte handle and a single allocation: a
/// reference count and a length, then the key, [`KEY_END`] and the value,
/// as UTF-8. Against a `(String, String)` this saves 40 bytes of table and
/// one allocation per pair: a third of the memory of a store of small
/// values. Cloning it (a checkpoint's copy) costs an atomic increment.
///
/// The handle is thin (the length lives in the allocation, not in the
/// table) because the table has to be sized for the next growth too: at
/// its usual load a byte saved in the handle saves about two a pair.
#[derive(Clone)]
struct Entry(ThinArc<(), u8>);

impl Entry {
    fn new(key: &str, value: &str) -> Self {
        debug_assert!(
            !key.as_bytes().contains(&KEY_END),
            "keys are validated before they get here"
        );
        let mut text = Vec::with_capacity(key.len() + 1 + value.len());
        text.extend_from_slice(key.as_bytes());
        text.push(KEY_END);
        text.extend_from_slice(value.as_bytes());
        Entry(ThinArc::from_header_and_slice((), &text))
    }

    fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// Where the key ends: the first [`KEY_END`], which no key contains.
    fn key_len(&self) -> usize {
        let bytes = self.bytes();
        memchr::memchr(KEY_END, bytes).unwrap_or(bytes.len())
    }

    /// The key's bytes: all that hashing, comparing and sorting need, with
    /// no UTF-8 check (byte order is the data file's order).
    fn key_bytes(&self) -> &[u8] {
        &self.bytes()[..self.key_len()]
    }

    /// The value's length in bytes, without a UTF-8 check. Zero only for
    /// a deletion recorded by [`Builder::delete`]: real values are never
    /// empty.
    fn value_len(&self) -> usize {
        self.bytes().len().saturating_sub(self.key_len() + 1)
    }

    fn split(&self) -> (&str, &str) {
        // Built from a key and a value that were `&str`s (see `new`), and
        // never changed since: always UTF-8 with a key end.
        let text = std::str::from_utf8(self.bytes()).expect("entries are built from strings");
        let (key, value) = text.split_at(self.key_len());
        (key, value.get(1..).unwrap_or_default())
    }

    fn value(&self) -> &str {
        self.split().1
    }
}

// Entries hash and compare by key alone, so the set behaves as a map and
// can be searched with a key's bytes through `Borrow`.
impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key_bytes()
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_bytes().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}

impl Eq for Entry {}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            shard_hasher: RandomState::new(),
        }
    }
}

impl Store {
    /// A copy of the value stored under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let shard = self.read(key);
        shard
            .entries
            .get(key.as_bytes())
            .map(|e| e.value().to_owned())
    }

    /// The length in bytes of the value under `key`, without copying it.
    pub fn value_len(&self, key: &str) -> Option<usize> {
        self.read(key)
            .entries
            .get(key.as_bytes())
            .map(Entry::value_len)
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn put(&self, key: &str, value: &str) {
        // Build the entry before taking the lock: the copy of a large value
        // must not stall other requests. The old entry is freed after the
        // lock is released, for the same reason.
        let entry = Entry::new(key, value);
        let old = self.write(key).entries.replace(entry);
        drop(old);
    }

    /// Removes `key`; says whether it was there.
    pub fn delete(&self, key: &str) -> bool {
        let old = self.write(key).entries.take(key.as_bytes());
        old.is_some()
    }

    /// Removes every pair. Takes every shard's lock first, so no reader
    /// sees a half-cleared store.
    pub fn clear(&self) {
        let mut shards: Vec<_> = self.shards.iter().map(lock_write).collect();
        let old: Vec<_> = shards
            .iter_mut()
            .map(|s| std::mem::take(&mut s.entries))
            .collect();
        drop(shards);
        // Freeing a million entries takes a while; do it outside the locks.
        drop(old);
    }

    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A sorted copy of every pair, taken one shard at a time so that reads
    /// and writes go on meanwhile: each key is as it was at some moment
    /// during the copy. That is all a checkpoint needs (see `wal`).
    ///
    /// The copy shares the pairs with the store (8 bytes a pair, plus a
    /// reference count's increment), so a checkpoint does not need room
    /// for a second copy of the data. A pair overwritten or deleted while
    /// the copy exists is freed when the copy is dropped.
    pub fn fuzzy_copy(&self) -> Sorted {
        let mut entries = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = lock_read(shard);
            entries.extend(shard.entries.iter().cloned());
        }
        // Keys are unique, so an unstable sort gives the one order.
        entries.par_sort_unstable_by(|a: &Entry, b: &Entry| a.key_bytes().cmp(b.key_bytes()));
        Sorted(entries)
    }

    /// A consistent view of every pair: every shard is read-locked at
    /// once. Writers wait while it is held, so hold it only for as long as
    /// a save or a dump takes.
    pub fn view(&self) -> View<'_> {
        View {
            shards: self.shards.iter().map(lock_read).collect(),
        }
    }

    fn shard_index(&self, key: &[u8]) -> usize {
        let hash = self.shard_hasher.hash_one(key);
        // The sets hash with other seeds, so the low bits used here do not
        // bunch keys within a shard's table.
        (hash % SHARDS as u64) as usize
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_index(key.as_bytes())]
    }

    fn read(&self, key: &str) -> RwLockReadGuard<'_, Shard> {
        lock_read(self.shard(key))
    }

    fn write(&self, key: &str) -> RwLockWriteGuard<'_, Shard> {
        lock_write(self.shard(key))
    }
}

/// Room for `pairs` pairs spread over the shards, with a little slack:
/// keys do not spread perfectly evenly.
fn per_shard_capacity(pairs: usize) -> usize {
    pairs.div_ceil(SHARDS) + pairs.div_ceil(SHARDS * 16)
}

// A panic while holding a lock cannot leave a set half-changed (each
// operation is a single std call), so a poisoned lock is safe to keep using.
fn lock_read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A read-locked view of the whole store.
pub struct View<'a> {
    shards: Vec<RwLockReadGuard<'a, Shard>>,
}

impl View<'_> {
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.entries.is_empty())
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.shards.iter().flat_map(|s| s.entries.iter())
    }

    /// Every pair, sorted by key bytes. Costs 32 bytes a pair for the list.
    pub fn sorted(&self) -> Vec<(&str, &str)> {
        self.sorted_with_prefix("")
    }

    /// The pairs whose key starts with `prefix`, sorted by key bytes.
    pub fn sorted_with_prefix(&self, prefix: &str) -> Vec<(&str, &str)> {
        let mut pairs: Vec<(&str, &str)> = self
            .entries()
            .map(Entry::split)
            .filter(|(key, _)| key.starts_with(prefix))
            .collect();
        // Keys are unique, so an unstable sort gives the one order. Sorting
        // a million keys is most of the time a save takes, and it happens
        // when nothing else runs: every core may help.
        pairs.par_sort_unstable_by(|a, b| a.0.cmp(b.0));
        pairs
    }
}

/// Pairs with unique keys in key order; see [`Builder::into_sorted`].
pub struct Sorted(Vec<Entry>);

impl Sorted {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(Entry::split)
    }
}

/// Builds a store from pairs read in file order, where a repeated key means
/// the later pair wins.
///
/// Collecting first lets each table be allocated once at its final size:
/// growing tables while loading would briefly hold old and new tables.
#[derive(Default)]
pub struct Builder {
    entries: Vec<Entry>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.entries.push(Entry::new(key, value));
    }

    /// Records that `key` was deleted after what was pushed before: an
    /// entry with an empty value, which no real value can be.
    pub fn delete(&mut self, key: &str) {
        self.entries.push(Entry::new(key, ""));
    }

    /// Forgets everything pushed before.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The pairs in key order, the later of equal keys kept, without
    /// building a store: for tools that only write the pairs out, this
    /// holds the data once, with no hash tables beside it.
    pub fn into_sorted(mut self) -> Sorted {
        // A stable sort keeps equal keys in push order...
        self.entries
            .par_sort_by(|a, b| a.key_bytes().cmp(b.key_bytes()));
        // ...and `dedup_by` keeps the first of a run, so move the later
        // value into the one kept.
        self.entries.dedup_by(|later, kept| {
            let same = later.key_bytes() == kept.key_bytes();
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        self.entries.retain(|e| e.value_len() > 0);
        Sorted(self.entries)
    }

    pub fn build(self) -> Store {
        // The tables are built at their final size below.
        let store = Store::default();
        let shards = self.into_shards(&store);
        shards
            .into_par_iter()
            .zip(store.shards.par_iter())
            .for_each(|(entries, shard)| lock_write(shard).entries = entries);
        store
    }

    /// Makes `store` hold exactly these pairs (a snapshot a cluster member
    /// installs). The new tables are built before any lock is taken, and
    /// every shard is swapped under one set of locks, so readers see the
    /// old pairs or the new ones, never a mixture.
    pub fn replace(self, store: &Store) {
        let shards = self.into_shards(store);
        let mut locked: Vec<_> = store.shards.iter().map(lock_write).collect();
        let old: Vec<_> = locked
            .iter_mut()
            .zip(shards)
            .map(|(shard, entries)| std::mem::replace(&mut shard.entries, entries))
            .collect();
        drop(locked);
        // Freeing the old pairs takes a while; do it outside the locks.
        drop(old);
    }

    /// The pairs as `store`'s shard tables, the later of equal keys kept
    /// and deletions applied.
    fn into_shards(self, store: &Store) -> Vec<HashSet<Entry>> {
        // Sort entries into their shards (keeping file order within each),
        // then fill the shards in parallel: inserting is most of the time a
        // load takes, and nothing else runs while the server loads.
        let per_shard = per_shard_capacity(self.entries.len());
        let mut by_shard: Vec<Vec<Entry>> =
            (0..SHARDS).map(|_| Vec::with_capacity(per_shard)).collect();
        for entry in self.entries {
            by_shard[store.shard_index(entry.key_bytes())].push(entry);
        }
        by_shard
            .into_par_iter()
            .map(|entries| {
                let mut set = HashSet::with_capacity(per_shard);
                for entry in entries {
                    if entry.value_len() == 0 {
                        // A deletion recorded by `Builder::delete`.
                        set.remove(entry.key_bytes());
                    } else {
                        // `replace`, not `insert`: the later of two equal
                        // keys wins.
                        set.replace(entry);
                    }
                }
                set
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(store: &Store) -> Vec<(String, String)> {
        store
            .view()
            .sorted()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn put_get_delete_clear() {
        let store = Store::default();
        assert_eq!(store.get("a"), None);
        store.put("a", "1");
        store.put("a", "2");
        assert_eq!(store.get("a").as_deref(), Some("2"));
        assert_eq!(store.value_len("a"), Some(1));
        assert!(store.delete("a"));
        assert!(!store.delete("a"));
        store.put("b", "x");
        store.clear();
        assert!(store.is_empty());
    }

    #[test]
    fn replace_swaps_in_exactly_the_new_pairs() {
        let store = Store::default();
        store.put("old", "1");
        store.put("kept", "old");
        let mut b = Builder::new();
        b.push("kept", "new");
        b.push("fresh", "2");
        b.replace(&store);
        assert_eq!(
            pairs(&store),
            [("fresh", "2"), ("kept", "new")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn iterates_in_byte_order_and_by_prefix() {
        let store = Store::default();
        for k in ["b", "a:2", "A", "a:1", "a", "a;"] {
            store.put(k, k);
        }
        let keys: Vec<_> = pairs(&store).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["A", "a", "a:1", "a:2", "a;", "b"]);
        let view = store.view();
        let a: Vec<_> = view
            .sorted_with_prefix("a:")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
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
    fn clear_and_len_span_every_shard() {
        let store = Store::default();
        for i in 0..1000 {
            store.put(&format!("k{i}"), "v");
        }
        assert_eq!(store.len(), 1000);
        assert_eq!(store.view().sorted().len(), 1000);
        store.clear();
        assert!(store.is_empty());
    }

    #[test]
    fn sorted_keeps_the_later_of_repeated_keys() {
        let mut b = Builder::new();
        for (k, v) in [
            ("z", "1"),
            ("a", "1"),
            ("z", "2"),
            ("a", "2"),
            ("m", "1"),
            ("a", "3"),
        ] {
            b.push(k, v);
        }
        let sorted = b.into_sorted();
        let pairs: Vec<_> = sorted.iter().collect();
        assert_eq!(pairs, [("a", "3"), ("m", "1"), ("z", "2")]);
    }

    #[test]
    fn builder_applies_deletes_and_clears_in_order() {
        let mut b = Builder::default();
        b.push("gone", "1");
        b.push("a", "1");
        b.clear();
        b.push("a", "2");
        b.push("b", "2");
        b.delete("b");
        b.push("c", "3");
        b.delete("c");
        b.push("c", "4");
        let pairs: Vec<_> = b
            .into_sorted()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(pairs, ["a=2", "c=4"]);

        let mut b = Builder::default();
        b.push("a", "1");
        b.push("b", "1");
        b.delete("a");
        let store = b.build();
        assert_eq!(store.get("a"), None);
        assert_eq!(store.get("b").as_deref(), Some("1"));
        assert_eq!(store.len(), 1);
    }
}
