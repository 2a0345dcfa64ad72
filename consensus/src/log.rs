//! The in-memory copy of a replica's log, shared by the Raft variants.

use crate::types::{Entry, LogIndex, Term};

/// A replica's log: entries at indexes 1..=last, without gaps.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log holding `entries`, which must start at index 1 and have no gaps.
    pub fn new(entries: Vec<Entry>) -> Self {
        for (position, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, position as LogIndex + 1, "log has a gap");
        }
        RaftLog { entries }
    }

    /// Index of the last entry (0: empty).
    pub fn last_index(&self) -> LogIndex {
        self.entries.len() as LogIndex
    }

    /// Term of the last entry (0: empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// The term of the entry at `index`: `Some(0)` for index 0 (the empty
    /// prefix every log shares), `None` past the end.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1)
    }

    /// Entries from `from` (inclusive) up to at most `max_count` entries and
    /// `max_bytes` bytes, but always at least one entry if any exist.
    pub fn slice(&self, from: LogIndex, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let start = (from.max(1) - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.entries.iter().skip(start) {
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
        assert_eq!(entry.index, self.last_index() + 1, "append leaves a gap");
        self.entries.push(entry);
    }

    /// Removes every entry with index >= `from`.
    pub fn truncate_from(&mut self, from: LogIndex) {
        assert!(from >= 1);
        self.entries.truncate(from as usize - 1);
    }

    /// True if a candidate whose log ends at (`last_index`, `last_term`) is at
    /// least as up to date as this log (Raft paper, section 5.4.1).
    pub fn candidate_is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index of the term of the entry at `index` (for conflict
    /// hints).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut first = index;
        while first > 1 && self.term(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }
}
