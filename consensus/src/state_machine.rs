//! The replicated key-value state machine with exactly-once client sessions.
//!
//! The logic lives here once, over the small [`KvRead`] trait: the simulator
//! backs it with [`MemKv`], `kvnode` with RocksDB. Applying entries yields an
//! [`ApplyBatch`] (data changes, changed sessions, the new applied index),
//! which the backend must commit atomically: then a crash never applies an
//! entry twice, and a retried request is always answered from its session.
//!
//! Sessions (after LogCabin): each client numbers its requests 1, 2, 3, ...
//! and has at most one outstanding. The session keeps the client's latest
//! update and its result; a retry of it is answered from the session, an
//! older one is refused as stale. Reads do not touch sessions: executing a
//! read twice is harmless.

use std::collections::{BTreeMap, HashMap};

use crate::types::{
    ClientId, ClientRequest, Command, CommandResult, Entry, EntryPayload, ExecutionError, Key,
    LogIndex, RequestId, Seq, Value,
};

/// Read access to the stored key-value data.
pub trait KvRead {
    /// The value stored at `key`, if any.
    fn get(&self, key: &[u8]) -> Option<Value>;
}

/// One client's session: its latest applied update and that update's result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    /// The latest update's sequence number.
    pub last_seq: Seq,
    /// Its result, returned again to a retry.
    pub last_result: CommandResult,
    /// Its command's [`Command::digest`] (0: not known, as in sessions
    /// stored before digests were kept): a request under the same sequence
    /// number with another command is refused, not answered with this
    /// result.
    pub command_digest: u64,
}

impl Session {
    /// An upper bound of the session's size encoded (its result's keys and
    /// values, plus framing).
    pub fn size_bytes(&self) -> usize {
        const SESSION_FRAMING_BYTES: usize = 64;
        SESSION_FRAMING_BYTES
            + match &self.last_result {
                CommandResult::Value(value) => value.as_ref().map_or(0, Vec::len),
                CommandResult::Values(values) => values
                    .iter()
                    .map(|v| 8 + v.as_ref().map_or(0, Vec::len))
                    .sum(),
                CommandResult::Swapped { current, .. } => current.as_ref().map_or(0, Vec::len),
                _ => 0,
            }
    }

    /// What to answer a request under this session's latest sequence
    /// number: the kept result to a retry of the same request, a refusal to
    /// another request.
    pub fn answer_again(&self, id: RequestId, command: &Command) -> CommandResult {
        if self.command_digest != 0 && self.command_digest != command.digest() {
            return CommandResult::Failed(ExecutionError::RequestIdReused { seq: id.seq });
        }
        self.last_result.clone()
    }
}

/// The outcome of applying entries: what the backend must commit atomically,
/// and the results to hand to waiting clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyBatch {
    /// The applied index after this batch.
    pub applied_index: LogIndex,
    /// Changed keys: `Some` sets, `None` deletes.
    pub data: BTreeMap<Key, Option<Value>>,
    /// Sessions created or changed by this batch.
    pub sessions: BTreeMap<ClientId, Session>,
    /// The result for each applied client command, in log order.
    pub results: Vec<(LogIndex, RequestId, CommandResult)>,
}

/// Reads through a batch's uncommitted changes to the store beneath.
struct Overlay<'a, S: KvRead + ?Sized> {
    store: &'a S,
    data: &'a BTreeMap<Key, Option<Value>>,
}

impl<S: KvRead + ?Sized> KvRead for Overlay<'_, S> {
    fn get(&self, key: &[u8]) -> Option<Value> {
        match self.data.get(key) {
            Some(change) => change.clone(),
            None => self.store.get(key),
        }
    }
}

/// The state machine's own state: the applied index and the sessions.
#[derive(Clone, Debug, Default)]
pub struct StateMachine {
    applied_index: LogIndex,
    sessions: HashMap<ClientId, Session>,
}

impl StateMachine {
    /// A state machine restored from storage.
    pub fn restore(applied_index: LogIndex, sessions: HashMap<ClientId, Session>) -> Self {
        StateMachine {
            applied_index,
            sessions,
        }
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// The session table.
    pub fn sessions(&self) -> &HashMap<ClientId, Session> {
        &self.sessions
    }

    /// Each client's latest applied sequence number (what
    /// `Input::SnapshotInstalled` carries).
    pub fn latest_seqs(&self) -> Vec<(ClientId, crate::types::Seq)> {
        self.sessions
            .iter()
            .map(|(&client, session)| (client, session.last_seq))
            .collect()
    }

    /// Applies `entries`, which must directly follow the applied index, and
    /// returns what the backend must commit atomically.
    pub fn apply<S: KvRead + ?Sized>(&mut self, store: &S, entries: &[Entry]) -> ApplyBatch {
        let mut batch = ApplyBatch {
            applied_index: self.applied_index,
            ..ApplyBatch::default()
        };
        for entry in entries {
            assert_eq!(
                entry.index,
                self.applied_index + 1,
                "entries must be applied in order, without gaps"
            );
            self.applied_index = entry.index;
            let EntryPayload::Command(request) = &entry.payload else {
                continue;
            };
            let result = self.apply_request(store, &mut batch, request.id, &request.command);
            batch.results.push((entry.index, request.id, result));
        }
        batch.applied_index = self.applied_index;
        batch
    }

    fn apply_request<S: KvRead + ?Sized>(
        &mut self,
        store: &S,
        batch: &mut ApplyBatch,
        id: RequestId,
        command: &Command,
    ) -> CommandResult {
        if command.is_read() {
            let view = Overlay {
                store,
                data: &batch.data,
            };
            return execute_read(&view, command);
        }
        if let Some(session) = self.sessions.get(&id.client) {
            if id.seq == session.last_seq {
                return session.answer_again(id, command);
            }
            if id.seq < session.last_seq {
                return CommandResult::Failed(ExecutionError::StaleRequest {
                    seq: id.seq,
                    latest: session.last_seq,
                });
            }
        }
        let result = execute_update(store, &mut batch.data, command);
        let session = Session {
            last_seq: id.seq,
            last_result: result.clone(),
            command_digest: command.digest(),
        };
        self.sessions.insert(id.client, session.clone());
        batch.sessions.insert(id.client, session);
        result
    }

    /// What to answer at once to a Nil-ext fast-path write `request`,
    /// instead of making it durable:
    ///
    /// - the session's latest update is this request: the write took effect
    ///   here (a retry, or a copy that arrived late); its result, as the
    ///   ordered path answers a retry (or, for another command under the
    ///   same number, the refusal apply would give). Stored again, the record would only
    ///   wait in the durability log for a leader that has nothing left to
    ///   order (simulator seed 600098640: a late copy of an applied write
    ///   was forwarded, 1 MiB at a time, for longer than the quiet period);
    /// - a sequence number below the session's latest update: refused as
    ///   stale, as apply would refuse it, after the client had been told it
    ///   was written.
    ///
    /// A client that takes its id back after a restart must go on from the
    /// sequence numbers it used.
    pub fn answer_fast_write(&self, request: &ClientRequest) -> Option<CommandResult> {
        let id = request.id;
        let session = self.sessions.get(&id.client)?;
        match id.seq.cmp(&session.last_seq) {
            std::cmp::Ordering::Equal => Some(session.answer_again(id, &request.command)),
            std::cmp::Ordering::Less => Some(CommandResult::Failed(ExecutionError::StaleRequest {
                seq: id.seq,
                latest: session.last_seq,
            })),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Serves a read outside the log (ReadIndex, lease and Nil-ext reads).
    pub fn read<S: KvRead + ?Sized>(&self, store: &S, command: &Command) -> CommandResult {
        debug_assert!(command.is_read(), "only reads are served outside the log");
        execute_read(store, command)
    }
}

fn execute_read<S: KvRead + ?Sized>(store: &S, command: &Command) -> CommandResult {
    match command {
        Command::Get { key } => CommandResult::Value(store.get(key)),
        Command::MultiGet { keys } => {
            // Stops at the limit rather than reading (and holding) it all.
            let mut values = Vec::with_capacity(keys.len());
            let mut bytes = 0;
            for key in keys {
                let value = store.get(key);
                bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                if bytes > crate::limits::READ_RESULT_BYTES_MAX {
                    return CommandResult::Failed(ExecutionError::ResultTooLarge {
                        limit: crate::limits::READ_RESULT_BYTES_MAX,
                    });
                }
                values.push(value);
            }
            CommandResult::Values(values)
        }
        other => unreachable!("not a read: {other:?}"),
    }
}

fn execute_update<S: KvRead + ?Sized>(
    store: &S,
    data: &mut BTreeMap<Key, Option<Value>>,
    command: &Command,
) -> CommandResult {
    let current = |data: &BTreeMap<Key, Option<Value>>, key: &[u8]| match data.get(key) {
        Some(change) => change.clone(),
        None => store.get(key),
    };
    match command {
        Command::Put { key, value } => {
            data.insert(key.clone(), Some(value.clone()));
            CommandResult::Written
        }
        Command::Delete { key } => {
            data.insert(key.clone(), None);
            CommandResult::Written
        }
        Command::MultiPut { pairs } => {
            for (key, value) in pairs {
                data.insert(key.clone(), Some(value.clone()));
            }
            CommandResult::Written
        }
        Command::CompareAndSwap { key, expected, new } => {
            let found = current(data, key);
            let succeeded = found == *expected;
            if succeeded {
                data.insert(key.clone(), Some(new.clone()));
            }
            CommandResult::Swapped {
                succeeded,
                current: found,
            }
        }
        Command::Increment { key, by } => {
            let found = current(data, key);
            let before = match found.as_deref().map(parse_counter) {
                None => 0,
                Some(Some(n)) => n,
                Some(None) => return CommandResult::Failed(ExecutionError::NotAnInteger),
            };
            let Some(after) = before.checked_add(*by) else {
                return CommandResult::Failed(ExecutionError::Overflow);
            };
            data.insert(key.clone(), Some(after.to_string().into_bytes()));
            CommandResult::Counter(after)
        }
        Command::Get { .. } | Command::MultiGet { .. } => unreachable!("reads are not updates"),
    }
}

fn parse_counter(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// An in-memory key-value store, for the simulator and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv {
    data: BTreeMap<Key, Value>,
}

impl MemKv {
    /// Commits a batch's data changes.
    pub fn commit(&mut self, batch: &ApplyBatch) {
        for (key, change) in &batch.data {
            match change {
                Some(value) => self.data.insert(key.clone(), value.clone()),
                None => self.data.remove(key),
            };
        }
    }

    /// Every key and value, in key order.
    pub fn data(&self) -> &BTreeMap<Key, Value> {
        &self.data
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Option<Value> {
        self.data.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ClientRequest;

    fn entry(index: LogIndex, client: ClientId, seq: Seq, command: Command) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(ClientRequest {
                id: RequestId { client, seq },
                command,
            }),
        }
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn apply(sm: &mut StateMachine, kv: &mut MemKv, entries: &[Entry]) -> Vec<CommandResult> {
        let batch = sm.apply(kv, entries);
        kv.commit(&batch);
        batch.results.into_iter().map(|(_, _, r)| r).collect()
    }

    /// Another request under the number of the session's latest update (a
    /// client that took its id back and numbered its requests again) is
    /// refused and changes nothing, on the ordered path and on Nil-ext's
    /// fast path; a retry of the same request still gets its result.
    #[test]
    fn another_request_under_the_latest_number_is_refused_not_answered() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let first = put("k", "v");
        apply(&mut sm, &mut kv, &[entry(1, 7, 3, first.clone())]);
        let other = Command::CompareAndSwap {
            key: "k".into(),
            expected: None,
            new: "w".into(),
        };
        let reused = CommandResult::Failed(ExecutionError::RequestIdReused { seq: 3 });
        let results = apply(
            &mut sm,
            &mut kv,
            &[entry(2, 7, 3, other.clone()), entry(3, 7, 3, first.clone())],
        );
        assert_eq!(results, vec![reused.clone(), CommandResult::Written]);
        assert_eq!(kv.get(b"k"), Some(b"v".to_vec()));
        let request = |command| ClientRequest {
            id: RequestId { client: 7, seq: 3 },
            command,
        };
        assert_eq!(sm.answer_fast_write(&request(put("k", "x"))), Some(reused));
        assert_eq!(
            sm.answer_fast_write(&request(first)),
            Some(CommandResult::Written)
        );
        assert_ne!(put("k", "v").digest(), put("k", "x").digest());
        assert_ne!(put("ab", "c").digest(), put("a", "bc").digest());
    }

    #[test]
    fn a_retried_update_takes_effect_once_and_gets_the_first_result() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let incr = Command::Increment {
            key: "n".into(),
            by: 5,
        };
        let results = apply(
            &mut sm,
            &mut kv,
            &[entry(1, 7, 1, incr.clone()), entry(2, 7, 1, incr.clone())],
        );
        assert_eq!(
            results,
            vec![CommandResult::Counter(5), CommandResult::Counter(5)]
        );
        assert_eq!(kv.get(b"n"), Some(b"5".to_vec()));
        // A later batch still answers the retry from the session.
        let results = apply(&mut sm, &mut kv, &[entry(3, 7, 1, incr.clone())]);
        assert_eq!(results, vec![CommandResult::Counter(5)]);
        assert_eq!(kv.get(b"n"), Some(b"5".to_vec()));
        // The next sequence number executes; the old one is now stale.
        let results = apply(
            &mut sm,
            &mut kv,
            &[entry(4, 7, 2, incr.clone()), entry(5, 7, 1, incr)],
        );
        assert_eq!(results[0], CommandResult::Counter(10));
        assert_eq!(
            results[1],
            CommandResult::Failed(ExecutionError::StaleRequest { seq: 1, latest: 2 })
        );
        assert_eq!(sm.applied_index(), 5);
    }

    #[test]
    fn sessions_are_per_client_and_reads_see_earlier_writes_of_the_batch() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let results = apply(
            &mut sm,
            &mut kv,
            &[
                entry(1, 1, 1, put("a", "x")),
                entry(2, 2, 1, put("a", "y")),
                entry(3, 3, 1, Command::Get { key: "a".into() }),
                entry(
                    4,
                    1,
                    2,
                    Command::CompareAndSwap {
                        key: "a".into(),
                        expected: Some("y".into()),
                        new: "z".into(),
                    },
                ),
                entry(5, 2, 2, Command::Delete { key: "a".into() }),
                entry(
                    6,
                    3,
                    2,
                    Command::MultiGet {
                        keys: vec!["a".into(), "b".into()],
                    },
                ),
            ],
        );
        assert_eq!(
            results,
            vec![
                CommandResult::Written,
                CommandResult::Written,
                CommandResult::Value(Some("y".into())),
                CommandResult::Swapped {
                    succeeded: true,
                    current: Some("y".into())
                },
                CommandResult::Written,
                CommandResult::Values(vec![None, None]),
            ]
        );
        assert_eq!(kv.get(b"a"), None);
    }

    #[test]
    fn increment_of_a_non_integer_fails_and_changes_nothing() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let results = apply(
            &mut sm,
            &mut kv,
            &[
                entry(1, 1, 1, put("a", "text")),
                entry(
                    2,
                    1,
                    2,
                    Command::Increment {
                        key: "a".into(),
                        by: 1,
                    },
                ),
                entry(3, 1, 3, put("m", &i64::MAX.to_string())),
                entry(
                    4,
                    1,
                    4,
                    Command::Increment {
                        key: "m".into(),
                        by: 1,
                    },
                ),
            ],
        );
        assert_eq!(
            results[1],
            CommandResult::Failed(ExecutionError::NotAnInteger)
        );
        assert_eq!(results[3], CommandResult::Failed(ExecutionError::Overflow));
        assert_eq!(kv.get(b"a"), Some(b"text".to_vec()));
    }
}
