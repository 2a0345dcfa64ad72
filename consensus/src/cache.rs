//! A bounded read cache in front of the state machine's data (kvnode's
//! `--cache-bytes`): recently read and written keys, with their values (or
//! their absence), in memory.
//!
//! It never serves a value older than the applied state, by three rules
//! that the backends follow (kvnode's storage, the simulator):
//!
//! 1. every read the state machine does goes through it ([`Cached`]):
//!    reads served outside the log (lease, ReadIndex) and the reads inside
//!    compare-and-swap and increment;
//! 2. every applied batch's changes go into it ([`ReadCache::apply`]) in the
//!    same step that commits them to the store, before any other read: a
//!    put, multi-put, compare-and-swap or increment sets the new value, a
//!    delete records the key's absence;
//! 3. anything that replaces the store's contents otherwise clears it
//!    ([`ReadCache::clear`]): a snapshot installed, a state database rolled
//!    back. A restart starts with an empty cache.
//!
//! A read that misses loads from the store and keeps what it loaded. Loads
//! and applies happen on one thread (the node's runtime), so a load never
//! races an apply of the same key.
//!
//! The cache is [`quick_cache`]'s (S3-FIFO eviction, bounded by weight):
//! each entry weighs its key and value bytes plus [`ENTRY_OVERHEAD_BYTES`].

use std::collections::BTreeMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state_machine::KvRead;
use crate::types::{Key, Value};

/// What an entry costs beyond its key and value bytes (the cache's slot,
/// the two vectors' headers, the hash table's share), by estimate.
pub const ENTRY_OVERHEAD_BYTES: usize = 96;

/// Weighs entries by their bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Bytes;

impl quick_cache::Weighter<Key, Option<Value>> for Bytes {
    fn weight(&self, key: &Key, value: &Option<Value>) -> u64 {
        (ENTRY_OVERHEAD_BYTES + key.len() + value.as_ref().map_or(0, Vec::len)) as u64
    }
}

/// A fixed hash (SipHash with zero keys): the same eviction in every run of
/// a simulation seed.
type FixedHash = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

type Inner = quick_cache::sync::Cache<Key, Option<Value>, Bytes, FixedHash>;

/// Counts of a cache's use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that loaded from the store.
    pub misses: u64,
    /// Bytes held (by [`ReadCache`]'s weights).
    pub bytes: u64,
    /// Keys held.
    pub entries: u64,
}

impl CacheStats {
    /// Hits per read, 0 when there was none.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// A read cache of at most `capacity_bytes` (0: none; every read goes to
/// the store).
pub struct ReadCache {
    inner: Option<Inner>,
    capacity_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for ReadCache {
    /// No cache.
    fn default() -> Self {
        ReadCache::new(0)
    }
}

impl ReadCache {
    /// A cache of at most `capacity_bytes` (0: none).
    pub fn new(capacity_bytes: u64) -> Self {
        let inner = (capacity_bytes > 0).then(|| {
            // Sized for entries of about 200 bytes; the weight bounds it.
            let items = (capacity_bytes / 200).clamp(16, 1 << 24) as usize;
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(items)
                .weight_capacity(capacity_bytes)
                // Few shards: a small cache split in many holds little.
                .shards(if capacity_bytes < (1 << 20) { 1 } else { 8 })
                .build()
                .expect("valid cache options");
            Inner::with_options(options, Bytes, FixedHash::default(), Default::default())
        });
        ReadCache {
            inner,
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether it caches anything.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The value at `key`: from the cache, or else from `load` (the
    /// store), kept.
    pub fn get(&self, key: &[u8], load: impl FnOnce() -> Option<Value>) -> Option<Value> {
        let Some(inner) = &self.inner else {
            return load();
        };
        if let Some(cached) = inner.get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return cached;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let loaded = load();
        inner.insert(key.to_vec(), loaded.clone());
        loaded
    }

    /// An applied batch's changes (`Some`: set; `None`: deleted), committed
    /// to the store in this same step.
    pub fn apply(&self, changes: &BTreeMap<Key, Option<Value>>) {
        let Some(inner) = &self.inner else {
            return;
        };
        for (key, change) in changes {
            inner.insert(key.clone(), change.clone());
        }
    }

    /// Forgets everything: the store's contents were replaced.
    pub fn clear(&self) {
        if let Some(inner) = &self.inner {
            inner.clear();
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.inner.as_ref().map_or(0, Inner::weight),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
        }
    }
}

/// A store read through a cache: what the state machine reads.
#[derive(Debug)]
pub struct Cached<'a, S: ?Sized> {
    /// The store.
    pub store: &'a S,
    /// Its cache.
    pub cache: &'a ReadCache,
}

impl<S: KvRead + ?Sized> KvRead for Cached<'_, S> {
    fn get(&self, key: &[u8]) -> Option<Value> {
        self.cache.get(key, || self.store.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::MemKv;

    fn changes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Key, Option<Value>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn serves_what_was_applied_last_and_counts_hits() {
        let cache = ReadCache::new(64 << 10);
        let store = MemKv::default();
        let cached = Cached {
            store: &store,
            cache: &cache,
        };
        assert_eq!(cached.get(b"k"), None, "absent, loaded");
        assert_eq!(cached.get(b"k"), None, "absent, cached");
        cache.apply(&changes(&[("k", Some("v1"))]));
        assert_eq!(cached.get(b"k"), Some(b"v1".to_vec()));
        cache.apply(&changes(&[("k", None)]));
        assert_eq!(cached.get(b"k"), None, "a delete is seen at once");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (3, 1));
        assert_eq!(stats.entries, 1);
        cache.clear();
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn stays_within_its_bytes() {
        let cache = ReadCache::new(10_000);
        for i in 0..1_000u32 {
            cache.apply(&changes(&[(&format!("key{i}"), Some(&"x".repeat(100)))]));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 10_000, "{stats:?}");
        assert!(stats.entries > 10, "{stats:?}");
    }

    #[test]
    fn a_disabled_cache_reads_the_store_every_time() {
        let cache = ReadCache::new(0);
        let mut loads = 0;
        for _ in 0..3 {
            cache.get(b"k", || {
                loads += 1;
                None
            });
        }
        assert_eq!(loads, 3);
        assert_eq!(cache.stats(), CacheStats::default());
    }
}
