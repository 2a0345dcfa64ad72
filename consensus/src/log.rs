//! The in-memory copy of a replica's log, shared by the Raft variants.

use std::collections::VecDeque;

use crate::types::{Entry, LogIndex, Term};

/// Entries per chunk of the in-memory log.
const CHUNK_ENTRIES: usize = 4096;

/// A replica's log: entries at indexes `base + 1 ..= last`, without gaps,
/// where `base` is the last entry compacted away (section 7; index 0 when
/// none was), whose index and term the log still knows.
///
/// Held in chunks of [`CHUNK_ENTRIES`] entries rather than one vector: a
/// vector that doubles copies the whole log into fresh memory each time,
/// on the runtime thread, a stall that grows with the log (at a million
/// entries, about 100 MB to copy). In a `perf` profile at 64 clients that
/// copy was about 6% of the leader's runtime thread. A chunk is allocated
/// once and never moves; compaction frees whole chunks, so at most one
/// chunk's worth of compacted entries stays in memory. Throughput is the
/// same within noise (A/B, `bench compare --protocols optimized --workloads
/// write --clients 64`, three alternating 10-second runs each).
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    chunks: VecDeque<Vec<Entry>>,
    /// Index of `chunks[0][0]`.
    origin: LogIndex,
    /// The last compacted entry: (index, term).
    base: (LogIndex, Term),
    last: LogIndex,
}

impl RaftLog {
    /// A log holding `entries`, which must start at index 1 and have no gaps.
    pub fn new(entries: Vec<Entry>) -> Self {
        RaftLog::after((0, 0), entries)
    }

    /// A log whose entries up to `base` (index, term) were compacted away,
    /// holding `entries`, which must start right after it and have no gaps.
    pub fn after(base: (LogIndex, Term), entries: Vec<Entry>) -> Self {
        let mut log = RaftLog {
            chunks: VecDeque::new(),
            origin: base.0 + 1,
            base,
            last: base.0,
        };
        for entry in entries {
            assert_eq!(entry.index, log.last + 1, "log has a gap");
            log.push(entry);
        }
        log
    }

    /// Index of the last entry (the base's when none follows it; 0: empty).
    pub fn last_index(&self) -> LogIndex {
        self.last
    }

    /// Term of the last entry (as [`RaftLog::last_index`]).
    pub fn last_term(&self) -> Term {
        self.term(self.last).unwrap_or(0)
    }

    /// The last compacted entry (index, term): (0, 0) when none was.
    pub fn base(&self) -> (LogIndex, Term) {
        self.base
    }

    /// Index of the first entry the log holds (or would hold).
    pub fn first_index(&self) -> LogIndex {
        self.base.0 + 1
    }

    /// The term of the entry at `index`: `Some(0)` for index 0 (the empty
    /// prefix every log shares), the base's term at the base, `None` past
    /// the end or before the base (compacted).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if index == self.base.0 {
            return Some(self.base.1);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`, if the log holds it.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.base.0 || index > self.last {
            return None;
        }
        let position = (index - self.origin) as usize;
        self.chunks
            .get(position / CHUNK_ENTRIES)?
            .get(position % CHUNK_ENTRIES)
    }

    /// Entries from `from` (inclusive, after the base) up to at most
    /// `max_count` entries and `max_bytes` bytes, but always at least one
    /// entry if any exist.
    pub fn slice(&self, from: LogIndex, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let from = from.max(self.first_index());
        let mut out = Vec::new();
        if from > self.last {
            return out;
        }
        let start = (from - self.origin) as usize;
        let mut bytes = 0;
        // Straight to the chunk holding `start` (skipping through a
        // flattened iterator would walk every entry before it).
        let (first, offset) = (start / CHUNK_ENTRIES, start % CHUNK_ENTRIES);
        let in_first = self
            .chunks
            .get(first)
            .map_or(&[][..], |c| c.get(offset..).unwrap_or(&[]));
        let rest = self.chunks.iter().skip(first + 1).flatten();
        for entry in in_first.iter().chain(rest) {
            if out.len() >= max_count || (!out.is_empty() && bytes + entry.size_bytes() > max_bytes)
            {
                break;
            }
            bytes += entry.size_bytes();
            out.push(entry.clone());
        }
        out
    }

    /// Appends one entry, which must follow the last.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last + 1, "append leaves a gap");
        if ((self.last + 1 - self.origin) as usize).is_multiple_of(CHUNK_ENTRIES) {
            self.chunks.push_back(Vec::with_capacity(CHUNK_ENTRIES));
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push(entry);
        }
        self.last += 1;
    }

    /// Removes every entry with index >= `from`, which must be after the
    /// base.
    pub fn truncate_from(&mut self, from: LogIndex) {
        assert!(from > self.base.0, "compacted entries are never truncated");
        if from > self.last {
            return;
        }
        let keep = (from - self.origin) as usize;
        self.chunks.truncate(keep.div_ceil(CHUNK_ENTRIES));
        if keep > 0
            && let Some(chunk) = self.chunks.back_mut()
        {
            chunk.truncate(keep - (keep - 1) / CHUNK_ENTRIES * CHUNK_ENTRIES);
        }
        self.last = from - 1;
    }

    /// Drops the entries up to `through` (which the log must hold, or be
    /// its base): it becomes the base. Whole chunks of compacted entries are
    /// freed.
    pub fn compact_through(&mut self, through: LogIndex) {
        if through <= self.base.0 {
            return;
        }
        let Some(term) = self.term(through) else {
            panic!("compacting through {through}, which the log does not hold");
        };
        self.base = (through, term);
        while self.chunks.len() > 1 && self.origin + CHUNK_ENTRIES as LogIndex <= through + 1 {
            self.chunks.pop_front();
            self.origin += CHUNK_ENTRIES as LogIndex;
        }
        if through == self.last {
            // Nothing left: start afresh after the base.
            self.chunks.clear();
            self.origin = through + 1;
        }
    }

    /// Replaces the log by a snapshot's end: every entry up to `base` is
    /// gone; entries after it stay only when the log held `base` itself
    /// (section 7: "If existing log entry has same index and term as
    /// snapshot's last included entry, retain log entries following it").
    /// Returns whether entries after it stayed.
    pub fn reset_to(&mut self, base: (LogIndex, Term)) -> bool {
        if self.term(base.0) == Some(base.1) && base.0 >= self.base.0 {
            self.compact_through(base.0);
            return true;
        }
        *self = RaftLog::after(base, Vec::new());
        false
    }

    /// True if a candidate whose log ends at (`last_index`, `last_term`) is at
    /// least as up to date as this log (Raft paper, section 5.4.1).
    pub fn candidate_is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index of the term of the entry at `index` that the log
    /// still holds (for conflict hints).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut first = index;
        while first > self.first_index() && self.term(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: LogIndex) -> Entry {
        Entry {
            term: index / 1000 + 1,
            index,
            stamp: Default::default(),
            payload: EntryPayload::Noop,
        }
    }

    fn log_of(n: LogIndex) -> RaftLog {
        RaftLog::new((1..=n).map(entry).collect())
    }

    #[test]
    fn entries_are_found_across_chunk_boundaries() {
        let n = 3 * CHUNK_ENTRIES as LogIndex + 5;
        let log = log_of(n);
        assert_eq!(log.last_index(), n);
        assert_eq!(log.last_term(), entry(n).term);
        for index in 1..=n {
            assert_eq!(log.get(index), Some(&entry(index)), "{index}");
        }
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(n + 1), None);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(n + 1), None);
        // A slice may start in one chunk and end in the next.
        let from = CHUNK_ENTRIES as LogIndex - 2;
        let slice = log.slice(from, 5, usize::MAX);
        let indexes: Vec<LogIndex> = slice.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (from..from + 5).collect::<Vec<_>>());
        assert!(log.slice(n + 1, 5, usize::MAX).is_empty());
        // One starting deep in a later chunk, and one running to the end.
        let from = 2 * CHUNK_ENTRIES as LogIndex + 3;
        assert_eq!(
            log.slice(from, 2, usize::MAX),
            vec![entry(from), entry(from + 1)]
        );
        let tail = log.slice(n - 2, 10, usize::MAX);
        assert_eq!(tail, vec![entry(n - 2), entry(n - 1), entry(n)]);
    }

    #[test]
    fn truncation_at_and_around_chunk_boundaries_keeps_exactly_the_prefix() {
        let chunk = CHUNK_ENTRIES as LogIndex;
        let n = 2 * chunk + 10;
        for from in [
            1,
            2,
            chunk,
            chunk + 1,
            chunk + 2,
            2 * chunk + 1,
            n,
            n + 1,
            n + 5,
        ] {
            let mut log = log_of(n);
            log.truncate_from(from);
            let kept = (from - 1).min(n);
            assert_eq!(log.last_index(), kept, "truncate from {from}");
            assert_eq!(log.get(kept + 1), None);
            if kept > 0 {
                assert_eq!(log.get(kept), Some(&entry(kept)));
            }
            // The log grows again from there, across boundaries.
            for index in kept + 1..=kept + chunk + 3 {
                log.push(entry(index));
            }
            for index in 1..=kept + chunk + 3 {
                assert_eq!(
                    log.get(index),
                    Some(&entry(index)),
                    "{index} after truncating from {from}"
                );
            }
        }
    }

    #[test]
    fn a_compacted_log_knows_its_base_and_frees_whole_chunks() {
        let chunk = CHUNK_ENTRIES as LogIndex;
        let n = 3 * chunk + 7;
        for through in [1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk + 5, n - 1, n] {
            let mut log = log_of(n);
            log.compact_through(through);
            assert_eq!(log.base(), (through, entry(through).term), "{through}");
            assert_eq!(log.first_index(), through + 1);
            assert_eq!(log.last_index(), n);
            assert_eq!(log.get(through), None, "compacted");
            assert_eq!(log.term(through), Some(entry(through).term));
            assert_eq!(
                log.term(through.saturating_sub(1).max(1)).is_some(),
                through == 1
            );
            assert!(log.chunks.len() as LogIndex <= (n - through) / chunk + 2);
            for index in through + 1..=n {
                assert_eq!(
                    log.get(index),
                    Some(&entry(index)),
                    "{index} after {through}"
                );
            }
            let slice = log.slice(1, 3, usize::MAX);
            assert_eq!(
                slice.first().map(|e| e.index),
                (through < n).then_some(through + 1)
            );
            // It grows and truncates after the base as before.
            for index in n + 1..=n + chunk + 2 {
                log.push(entry(index));
            }
            log.truncate_from(n + 2);
            assert_eq!(log.last_index(), n + 1);
            assert_eq!(log.get(n + 1), Some(&entry(n + 1)));
            assert!(log.first_index_of_term_at(log.last_index()) > through);
        }
    }

    #[test]
    fn a_reset_keeps_the_suffix_only_after_a_matching_base() {
        let mut log = log_of(20);
        assert!(log.reset_to((10, entry(10).term)));
        assert_eq!((log.first_index(), log.last_index()), (11, 20));
        // Another term at the base: the whole log goes.
        let mut log = log_of(20);
        assert!(!log.reset_to((10, 99)));
        assert_eq!(
            (log.base(), log.last_index(), log.last_term()),
            ((10, 99), 10, 99)
        );
        log.push(Entry {
            term: 99,
            index: 11,
            stamp: Default::default(),
            payload: EntryPayload::Noop,
        });
        assert_eq!(log.get(11).map(|e| e.term), Some(99));
        // Past the end: likewise.
        let mut log = log_of(5);
        assert!(!log.reset_to((9, 1)));
        assert_eq!((log.first_index(), log.last_index()), (10, 9));
        assert!(log.candidate_is_up_to_date(9, 1));
        assert!(!log.candidate_is_up_to_date(8, 1));
    }
}
