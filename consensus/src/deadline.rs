//! A queue of items by deadline, for the simulator's event queue and the
//! node's network-delay line.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Items waiting for their deadline: the earliest comes out first, and
/// items with the same deadline come out in the order they went in.
#[derive(Debug)]
pub struct DeadlineQueue<A, T> {
    heap: BinaryHeap<Reverse<Scheduled<A, T>>>,
    next_seq: u64,
}

impl<A: Ord + Copy, T> Default for DeadlineQueue<A, T> {
    fn default() -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<A: Ord + Copy, T> DeadlineQueue<A, T> {
    /// An empty queue.
    pub fn new() -> Self {
        DeadlineQueue::default()
    }

    /// Adds `item`, due at `at`.
    pub fn push(&mut self, at: A, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq, item }));
    }

    /// The earliest deadline, if any item waits.
    pub fn earliest(&self) -> Option<A> {
        self.heap.peek().map(|Reverse(scheduled)| scheduled.at)
    }

    /// Takes out the earliest item, with its deadline.
    pub fn pop(&mut self) -> Option<(A, T)> {
        self.heap
            .pop()
            .map(|Reverse(scheduled)| (scheduled.at, scheduled.item))
    }
}

/// One item, ordered by its deadline, then by when it was added.
#[derive(Debug)]
struct Scheduled<A, T> {
    at: A,
    seq: u64,
    item: T,
}

impl<A: Ord, T> PartialEq for Scheduled<A, T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<A: Ord, T> Eq for Scheduled<A, T> {}

impl<A: Ord, T> PartialOrd for Scheduled<A, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<A: Ord, T> Ord for Scheduled<A, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.at, self.seq).cmp(&(&other.at, other.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_equal_deadlines_in_arrival_order() {
        let mut queue = DeadlineQueue::new();
        for (at, item) in [
            (5, "e"),
            (1, "a"),
            (3, "c1"),
            (3, "c2"),
            (2, "b"),
            (3, "c3"),
        ] {
            queue.push(at, item);
        }
        assert_eq!(queue.earliest(), Some(1));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            vec![
                (1, "a"),
                (2, "b"),
                (3, "c1"),
                (3, "c2"),
                (3, "c3"),
                (5, "e")
            ]
        );
        assert_eq!(queue.earliest(), None);
    }
}
