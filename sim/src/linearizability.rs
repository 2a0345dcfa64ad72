//! A linearizability checker for key-value histories.
//!
//! The search is Wing & Gong's, with Lowe's memoization as Porcupine does it:
//! walk the history's call and return events in time order; at a call, try to
//! linearize that operation now (its effect on the model state must match
//! what it returned); at a return whose operation is not yet linearized,
//! backtrack. A cache of (set of linearized operations, model state) pairs
//! already explored prunes the search.
//!
//! Histories are split into independent parts before the search: two keys
//! belong to the same part when some operation touches both (a multi-put or
//! multi-get), so multi-key operations are checked whole, atomically, and no
//! operation is dropped. Each part is checked alone (linearizability is
//! compositional over independent objects).
//!
//! An operation whose outcome is unknown (a timeout, a crash) has no return
//! event: it may take effect at any point after its call, or never (taking
//! effect after everything else is the same as never), and any output is
//! accepted for it.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A key in a checked history.
pub type Key = Vec<u8>;
/// A value in a checked history.
pub type Value = Vec<u8>;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read a key.
    Get(Key),
    /// Read several keys at one instant.
    MultiGet(Vec<Key>),
    /// Set a key.
    Put(Key, Value),
    /// Remove a key.
    Delete(Key),
    /// Set several keys atomically.
    MultiPut(Vec<(Key, Value)>),
    /// Set `key` to `new` if it holds `expected` (`None`: absent).
    Cas {
        /// The key.
        key: Key,
        /// The value required.
        expected: Option<Value>,
        /// The value set on success.
        new: Value,
    },
    /// Add to a decimal counter (absent reads as 0).
    Increment(Key, i64),
    /// Concatenate to a key's value (absent reads as empty).
    Append(Key, Value),
}

impl KvInput {
    /// The keys the operation touches.
    pub fn keys(&self) -> Vec<&Key> {
        match self {
            KvInput::Get(k)
            | KvInput::Put(k, _)
            | KvInput::Delete(k)
            | KvInput::Cas { key: k, .. }
            | KvInput::Increment(k, _)
            | KvInput::Append(k, _) => vec![k],
            KvInput::MultiGet(keys) => keys.iter().collect(),
            KvInput::MultiPut(pairs) => pairs.iter().map(|(k, _)| k).collect(),
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A write took effect.
    Written,
    /// A get's value.
    Value(Option<Value>),
    /// A multi-get's values, in key order of the input.
    Values(Vec<Option<Value>>),
    /// A compare-and-swap's outcome; `current` is the value seen, when the
    /// system reports it.
    Cas {
        /// Whether the swap happened.
        succeeded: bool,
        /// The value found, when reported.
        current: Option<Option<Value>>,
    },
    /// An increment's new value.
    Counter(i64),
    /// The operation definitely failed and changed nothing.
    Failed,
}

/// One operation of a history: its call and return times and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (process) that ran it.
    pub client: u64,
    /// When it was invoked.
    pub call: u64,
    /// When it returned; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// What it asked for.
    pub input: KvInput,
    /// What it returned; `None` when unknown (any output is accepted).
    pub output: Option<KvOutput>,
}

/// The model state of one part: the values of its keys (absent keys absent).
type State = BTreeMap<Key, Value>;

fn parse_counter(value: Option<&Value>) -> Option<i64> {
    match value {
        None => Some(0),
        Some(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
    }
}

/// The sequential specification: applies `input` to `state` and says
/// whether `output` is what a correct store returns. Returns the next state
/// when the output matches.
fn step(state: &State, input: &KvInput, output: Option<&KvOutput>) -> Option<State> {
    let matches = |expected: KvOutput| output.is_none_or(|o| *o == expected);
    match input {
        KvInput::Get(key) => {
            matches(KvOutput::Value(state.get(key).cloned())).then(|| state.clone())
        }
        KvInput::MultiGet(keys) => matches(KvOutput::Values(
            keys.iter().map(|k| state.get(k).cloned()).collect(),
        ))
        .then(|| state.clone()),
        KvInput::Put(key, value) => matches(KvOutput::Written).then(|| {
            let mut next = state.clone();
            next.insert(key.clone(), value.clone());
            next
        }),
        KvInput::Delete(key) => matches(KvOutput::Written).then(|| {
            let mut next = state.clone();
            next.remove(key);
            next
        }),
        KvInput::MultiPut(pairs) => matches(KvOutput::Written).then(|| {
            let mut next = state.clone();
            next.extend(pairs.iter().cloned());
            next
        }),
        KvInput::Append(key, value) => matches(KvOutput::Written).then(|| {
            let mut next = state.clone();
            next.entry(key.clone())
                .or_default()
                .extend_from_slice(value);
            next
        }),
        KvInput::Cas { key, expected, new } => {
            let current = state.get(key);
            let succeeded = current == expected.as_ref();
            let ok = match output {
                None => true,
                Some(KvOutput::Cas {
                    succeeded: s,
                    current: reported,
                }) => *s == succeeded && reported.as_ref().is_none_or(|r| r.as_ref() == current),
                Some(_) => false,
            };
            ok.then(|| {
                let mut next = state.clone();
                if succeeded {
                    next.insert(key.clone(), new.clone());
                }
                next
            })
        }
        KvInput::Increment(key, by) => {
            let after = parse_counter(state.get(key)).and_then(|n| n.checked_add(*by));
            match (after, output) {
                (Some(n), None | Some(KvOutput::Counter(_))) if matches(KvOutput::Counter(n)) => {
                    let mut next = state.clone();
                    next.insert(key.clone(), n.to_string().into_bytes());
                    Some(next)
                }
                (None, None | Some(KvOutput::Failed)) => Some(state.clone()),
                _ => None,
            }
        }
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, consistent with real time, explains
    /// every output.
    Linearizable,
    /// No such order exists for the operations of one independent part.
    NotLinearizable {
        /// The keys of the failing part.
        keys: Vec<Key>,
        /// Positions (in the checked history) of the part's operations.
        operations: Vec<usize>,
        /// The longest prefix of real-time-ordered linearized operations the
        /// search reached, as positions in the history: where it got stuck.
        deepest: Vec<usize>,
    },
    /// The search exceeded its step budget without an answer.
    Unknown,
}

impl Verdict {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Search steps allowed per part by [`check`] before answering `Unknown`.
pub const DEFAULT_STEP_BUDGET: u64 = 50_000_000;

/// Checks a whole history with the default step budget.
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// Checks a whole history, splitting it into independent parts first.
pub fn check_with_budget(history: &[Operation], step_budget: u64) -> Verdict {
    let mut unknown = false;
    for (keys, operations) in partition(history) {
        let part: Vec<&Operation> = operations.iter().map(|&i| &history[i]).collect();
        match check_part(&part, step_budget) {
            PartResult::Ok => {}
            PartResult::Budget => unknown = true,
            PartResult::Fail { deepest } => {
                return Verdict::NotLinearizable {
                    keys,
                    deepest: deepest.into_iter().map(|i| operations[i]).collect(),
                    operations,
                };
            }
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    }
}

/// Groups operations into independent parts: union-find over keys, joining
/// the keys of every multi-key operation. Returns each part's keys and the
/// positions of its operations, in history order.
fn partition(history: &[Operation]) -> Vec<(Vec<Key>, Vec<usize>)> {
    let mut key_ids: HashMap<&Key, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut first_key = Vec::with_capacity(history.len());
    for op in history {
        let mut ids = op.input.keys().into_iter().map(|k| {
            *key_ids.entry(k).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            })
        });
        let first = ids
            .next()
            .expect("every operation touches at least one key");
        for other in ids.collect::<Vec<_>>() {
            let (a, b) = (find(&mut parent, first), find(&mut parent, other));
            parent[a] = b;
        }
        first_key.push(first);
    }
    let mut parts: BTreeMap<usize, (Vec<Key>, Vec<usize>)> = BTreeMap::new();
    for (position, &key) in first_key.iter().enumerate() {
        let root = find(&mut parent, key);
        parts.entry(root).or_default().1.push(position);
    }
    for (key, &id) in &key_ids {
        let root = find(&mut parent, id);
        parts.entry(root).or_default().0.push((*key).clone());
    }
    parts
        .into_values()
        .map(|(mut keys, ops)| {
            keys.sort();
            (keys, ops)
        })
        .collect()
}

enum PartResult {
    Ok,
    Fail { deepest: Vec<usize> },
    Budget,
}

/// A doubly linked list of call and return events over arrays; node 0 is the
/// head sentinel.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: (operation, is_call, partner node).
    info: Vec<(usize, bool, usize)>,
}

const NIL: usize = usize::MAX;

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        // (time, returns after calls at equal times, node)
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        let mut info = vec![(NIL, false, NIL)];
        for (i, op) in ops.iter().enumerate() {
            let call_node = info.len();
            info.push((i, true, call_node + 1));
            info.push((i, false, call_node));
            order.push((op.call, 0, call_node));
            order.push((op.ret.unwrap_or(u64::MAX), 1, call_node + 1));
        }
        order.sort_unstable();
        let n = info.len();
        let (mut next, mut prev) = (vec![NIL; n], vec![NIL; n]);
        let mut last = 0;
        for &(_, _, node) in &order {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        Events { next, prev, info }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        let ret = self.info[call].2;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`Events::lift`] (in reverse order of unlinking).
    fn unlift(&mut self, call: usize) {
        let ret = self.info[call].2;
        self.relink(ret);
        self.relink(call);
    }
}

fn check_part(ops: &[&Operation], step_budget: u64) -> PartResult {
    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state = State::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut node = events.next[0];
    let mut steps = 0u64;
    while events.next[0] != NIL {
        steps += 1;
        if steps > step_budget {
            return PartResult::Budget;
        }
        let (op, is_call, _) = events.info[node];
        if is_call {
            let next_state = step(&state, &ops[op].input, ops[op].output.as_ref());
            if let Some(next_state) = next_state {
                let mut with_op = linearized.clone();
                with_op[op / 64] |= 1 << (op % 64);
                if cache.insert((with_op.clone(), next_state.clone())) {
                    calls.push((node, std::mem::replace(&mut state, next_state)));
                    linearized = with_op;
                    events.lift(node);
                    if calls.len() > deepest.len() {
                        deepest = calls.iter().map(|&(n, _)| events.info[n].0).collect();
                    }
                    node = events.next[0];
                    continue;
                }
            }
            node = events.next[node];
        } else {
            // A return event of an operation not yet linearized: every
            // order tried so far fails; undo the latest choice.
            let Some((call, previous)) = calls.pop() else {
                return PartResult::Fail { deepest };
            };
            let op = events.info[call].0;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            events.unlift(call);
            node = events.next[call];
        }
    }
    PartResult::Ok
}

/// A linearizable history of `operations` puts and gets by `clients`
/// clients over `keys` keys, from a real sequential execution with
/// overlapping intervals: operations take effect in the order generated, at
/// strictly increasing points, and each one's interval surrounds its point,
/// so intervals of different clients overlap as in a concurrent run. For
/// tests and benchmarks of the checker.
pub fn generated_history(operations: u64, clients: u64, keys: u64, seed: u64) -> Vec<Operation> {
    let mut rng = consensus::rng::DetRng::new(seed);
    let mut store = BTreeMap::<Key, Value>::new();
    let mut history = Vec::with_capacity(operations as usize);
    let mut point = 0u64;
    let mut busy_until = vec![0u64; clients as usize];
    for i in 0..operations {
        let client = rng.range(0, clients);
        let key = format!("k{}", rng.range(0, keys)).into_bytes();
        let free = busy_until[client as usize];
        point = (point + 1).max(free + 1);
        let call = point.saturating_sub(rng.range(0, 4)).max(free);
        let ret = point + rng.range(0, 5);
        busy_until[client as usize] = ret + 1;
        let (input, output) = if rng.chance(0.5) {
            let value = format!("v{i}").into_bytes();
            store.insert(key.clone(), value.clone());
            (KvInput::Put(key, value), KvOutput::Written)
        } else {
            let value = store.get(&key).cloned();
            (KvInput::Get(key), KvOutput::Value(value))
        };
        history.push(Operation {
            client,
            call,
            ret: Some(ret),
            input,
            output: Some(output),
        });
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        call: u64,
        ret: Option<u64>,
        input: KvInput,
        output: Option<KvOutput>,
    ) -> Operation {
        Operation {
            client,
            call,
            ret,
            input,
            output,
        }
    }
    fn k(s: &str) -> Key {
        s.as_bytes().to_vec()
    }
    fn put(key: &str, v: &str) -> KvInput {
        KvInput::Put(k(key), k(v))
    }
    fn get(key: &str) -> KvInput {
        KvInput::Get(k(key))
    }
    fn val(v: Option<&str>) -> Option<KvOutput> {
        Some(KvOutput::Value(v.map(k)))
    }
    const W: Option<KvOutput> = Some(KvOutput::Written);

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(0, 0, Some(1), put("x", "1"), W),
            op(1, 2, Some(3), get("x"), val(None)),
        ];
        assert!(!check(&h).is_linearizable());
        // Overlapping, the same read is fine.
        let h = vec![
            op(0, 0, Some(3), put("x", "1"), W),
            op(1, 1, Some(2), get("x"), val(None)),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let h = vec![
            op(0, 0, None, put("x", "1"), None),
            op(1, 5, Some(6), get("x"), val(None)),
            op(1, 7, Some(8), get("x"), val(Some("1"))),
        ];
        assert!(check(&h).is_linearizable());
        // But not before its call.
        let h = vec![
            op(1, 0, Some(1), get("x"), val(Some("1"))),
            op(0, 2, None, put("x", "1"), None),
        ];
        assert!(!check(&h).is_linearizable());
        // And once seen, it cannot be unseen.
        let h = vec![
            op(0, 0, None, put("x", "1"), None),
            op(1, 5, Some(6), get("x"), val(Some("1"))),
            op(1, 7, Some(8), get("x"), val(None)),
        ];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn multi_key_operations_are_checked_atomically() {
        // A multi-get that sees half of a multi-put is a violation that a
        // per-key projection would miss.
        let mput = KvInput::MultiPut(vec![(k("a"), k("1")), (k("b"), k("1"))]);
        let mget = KvInput::MultiGet(vec![k("a"), k("b")]);
        let torn = Some(KvOutput::Values(vec![Some(k("1")), None]));
        let h = vec![
            op(0, 0, Some(10), mput.clone(), W),
            op(1, 1, Some(9), mget.clone(), torn),
        ];
        let verdict = check(&h);
        assert!(!verdict.is_linearizable());
        match verdict {
            Verdict::NotLinearizable {
                keys, operations, ..
            } => {
                assert_eq!(keys, vec![k("a"), k("b")]);
                assert_eq!(operations, vec![0, 1]);
            }
            other => panic!("{other:?}"),
        }
        let whole = Some(KvOutput::Values(vec![Some(k("1")), Some(k("1"))]));
        let h = vec![op(0, 0, Some(10), mput, W), op(1, 1, Some(9), mget, whole)];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn cas_and_increment_follow_the_model() {
        let cas = |e: Option<&str>, n: &str| KvInput::Cas {
            key: k("x"),
            expected: e.map(k),
            new: k(n),
        };
        let swapped = |s: bool| {
            Some(KvOutput::Cas {
                succeeded: s,
                current: None,
            })
        };
        let h = vec![
            op(0, 0, Some(1), cas(None, "a"), swapped(true)),
            op(0, 2, Some(3), cas(None, "b"), swapped(false)),
            op(0, 4, Some(5), cas(Some("a"), "c"), swapped(true)),
            op(0, 6, Some(7), get("x"), val(Some("c"))),
        ];
        assert!(check(&h).is_linearizable());
        let h = vec![
            op(0, 0, Some(1), cas(None, "a"), swapped(true)),
            op(0, 2, Some(3), cas(None, "b"), swapped(true)),
        ];
        assert!(!check(&h).is_linearizable());
        let incr = |by| KvInput::Increment(k("n"), by);
        let h = vec![
            op(0, 0, Some(1), incr(2), Some(KvOutput::Counter(2))),
            op(1, 0, Some(3), incr(3), Some(KvOutput::Counter(5))),
        ];
        assert!(check(&h).is_linearizable());
        let h = vec![
            op(0, 0, Some(1), incr(2), Some(KvOutput::Counter(2))),
            op(1, 2, Some(3), incr(3), Some(KvOutput::Counter(3))),
        ];
        assert!(!check(&h).is_linearizable());
    }
}
