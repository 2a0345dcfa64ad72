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
//!
//! Sessions expire: each entry carries a stamp its leader wrote
//! ([`crate::cluster_time`]), and applying it drops every session last
//! active before the stamp's cutoff, the same way on every replica. A
//! session starts with its client's update numbered 1; an update of an
//! unknown client numbered past 1 is refused as
//! [`ExecutionError::SessionExpired`] and never applied, so no copy of a
//! request of an expired session takes effect twice. (The client's first
//! update is the exception by necessity: a copy of it delivered more than a
//! session timeout after the session expired would be applied again. A
//! client stops sending a request long before: its deadline is shorter than
//! the shortest timeout.)

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::cluster_time::Stamp;

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
    /// The cluster time of the client's latest update: the session expires
    /// once an applied entry's cutoff passes it.
    pub last_active: u64,
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
    /// The state's stamp after this batch (its last entry's).
    pub stamp: Stamp,
    /// Sessions this batch expired (none of them is in `sessions`).
    pub expired: BTreeSet<ClientId>,
    /// Changed keys: `Some` sets, `None` deletes.
    pub data: BTreeMap<Key, Option<Value>>,
    /// Sessions created or changed by this batch.
    pub sessions: BTreeMap<ClientId, Session>,
    /// The result for each applied client command, in log order.
    pub results: Vec<(LogIndex, RequestId, CommandResult)>,
}

/// What a replica does with a Nil-ext fast-path write
/// ([`StateMachine::check_fast_write`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastWriteCheck {
    /// Answer at once with this result: the write already took effect
    /// here, or is stale.
    Answer(CommandResult),
    /// Refuse it on the fast path: the client sends it to the leader.
    SlowPath,
    /// Make it durable (the protocol's fast path).
    Accept,
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

/// The state machine's own state: the applied index, its entry's stamp and
/// the sessions.
#[derive(Clone, Debug, Default)]
pub struct StateMachine {
    applied_index: LogIndex,
    stamp: Stamp,
    sessions: HashMap<ClientId, Session>,
    /// The sessions by last activity, oldest first: expiry takes from the
    /// front.
    by_activity: BTreeSet<(u64, ClientId)>,
}

impl StateMachine {
    /// A state machine restored from storage: at `applied_index`, whose
    /// entry has `stamp`.
    pub fn restore(
        applied_index: LogIndex,
        stamp: Stamp,
        sessions: HashMap<ClientId, Session>,
    ) -> Self {
        let by_activity = sessions
            .iter()
            .map(|(&client, session)| (session.last_active, client))
            .collect();
        StateMachine {
            applied_index,
            stamp,
            sessions,
            by_activity,
        }
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// The stamp of the last applied entry.
    pub fn stamp(&self) -> Stamp {
        self.stamp
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
            self.stamp = entry.stamp;
            self.expire(entry.stamp.expire_before, &mut batch);
            let EntryPayload::Command(request) = &entry.payload else {
                continue;
            };
            let result = self.apply_request(store, &mut batch, request.id, &request.command);
            batch.results.push((entry.index, request.id, result));
        }
        batch.applied_index = self.applied_index;
        batch.stamp = self.stamp;
        batch
    }

    /// Drops the sessions last active before `cutoff`.
    fn expire(&mut self, cutoff: u64, batch: &mut ApplyBatch) {
        while let Some(&(last_active, client)) = self.by_activity.first() {
            if last_active >= cutoff {
                break;
            }
            self.by_activity.pop_first();
            self.sessions.remove(&client);
            batch.sessions.remove(&client);
            batch.expired.insert(client);
        }
    }

    /// Records `session` as `client`'s, in the table and in the batch.
    fn keep(&mut self, client: ClientId, session: Session, batch: &mut ApplyBatch) {
        if let Some(old) = self.sessions.get(&client) {
            self.by_activity.remove(&(old.last_active, client));
        }
        self.by_activity.insert((session.last_active, client));
        batch.expired.remove(&client);
        batch.sessions.insert(client, session.clone());
        self.sessions.insert(client, session);
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
        let now = self.stamp.time;
        match self.sessions.get(&id.client) {
            Some(session) if id.seq <= session.last_seq => {
                let answer = if id.seq == session.last_seq {
                    session.answer_again(id, command)
                } else {
                    CommandResult::Failed(ExecutionError::StaleRequest {
                        seq: id.seq,
                        latest: session.last_seq,
                    })
                };
                // A retry is activity too.
                if session.last_active < now {
                    let session = Session {
                        last_active: now,
                        ..session.clone()
                    };
                    self.keep(id.client, session, batch);
                }
                return answer;
            }
            Some(_) => {}
            None if id.seq > 1 => {
                return CommandResult::Failed(ExecutionError::SessionExpired { seq: id.seq });
            }
            None => {}
        }
        let result = execute_update(store, &mut batch.data, command);
        let session = Session {
            last_seq: id.seq,
            last_result: result.clone(),
            command_digest: command.digest(),
            last_active: now,
        };
        self.keep(id.client, session, batch);
        result
    }

    /// What a replica does with a Nil-ext fast-path write `request` before
    /// the protocol sees it:
    ///
    /// - the session's latest update is this request: the write took effect
    ///   here (a retry, or a copy that arrived late). Answered with its
    ///   result, as the ordered path answers a retry (or, for another
    ///   command under the same number, the refusal apply would give).
    ///   Stored again, the record would only wait in the durability log for
    ///   a leader that has nothing left to order (simulator seed 600098640:
    ///   a late copy of an applied write was forwarded, 1 MiB at a time, for
    ///   longer than the quiet period);
    /// - a sequence number below the session's latest update: refused as
    ///   stale, as apply would refuse it, after the client had been told it
    ///   was written;
    /// - a client this replica has no session of (a new one, or one whose
    ///   session expired), or one whose session is not fresh by half the
    ///   timeout in effect ([`Stamp::keeps_fresh`]): sent to the slow path.
    ///   A fast write is ordered later; were its session to expire
    ///   meanwhile, the write the client was told is durable would be
    ///   refused (`crate::cluster_time` says why the margin suffices);
    /// - otherwise: taken, to be made durable.
    ///
    /// A client that takes its id back after a restart must go on from the
    /// sequence numbers it used.
    /// `now` is the cluster time the replica reads (`Status::cluster_time`).
    pub fn check_fast_write(&self, request: &ClientRequest, now: u64) -> FastWriteCheck {
        let id = request.id;
        let Some(session) = self.sessions.get(&id.client) else {
            return FastWriteCheck::SlowPath;
        };
        match id.seq.cmp(&session.last_seq) {
            std::cmp::Ordering::Equal => {
                FastWriteCheck::Answer(session.answer_again(id, &request.command))
            }
            std::cmp::Ordering::Less => {
                FastWriteCheck::Answer(CommandResult::Failed(ExecutionError::StaleRequest {
                    seq: id.seq,
                    latest: session.last_seq,
                }))
            }
            std::cmp::Ordering::Greater if self.stamp.keeps_fresh(session.last_active, now) => {
                FastWriteCheck::Accept
            }
            std::cmp::Ordering::Greater => FastWriteCheck::SlowPath,
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
            stamp: Stamp::default(),
            payload: EntryPayload::Command(ClientRequest {
                id: RequestId { client, seq },
                command,
            }),
        }
    }

    /// `entry` stamped at `time`, expiring sessions last active before
    /// `expire_before`.
    fn at(time: u64, expire_before: u64, entry: Entry) -> Entry {
        Entry {
            stamp: Stamp {
                time,
                expire_before,
            },
            ..entry
        }
    }

    #[test]
    fn a_session_expires_at_the_entry_whose_cutoff_passes_it_on_every_replica() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        apply(
            &mut sm,
            &mut kv,
            &[at(10, 0, entry(1, 7, 1, put("a", "1")))],
        );
        apply(
            &mut sm,
            &mut kv,
            &[at(20, 0, entry(2, 8, 1, put("b", "1")))],
        );
        // A cutoff of 10 keeps both (last active at 10 and 20).
        let batch = sm.apply(&kv, &[at(30, 10, entry(3, 8, 2, put("b", "2")))]);
        kv.commit(&batch);
        assert!(batch.expired.is_empty());
        // 11 passes client 7's last activity only.
        let batch = sm.apply(&kv, &[at(40, 11, entry(4, 8, 3, put("b", "3")))]);
        kv.commit(&batch);
        assert_eq!(batch.expired, BTreeSet::from([7]));
        assert!(!sm.sessions().contains_key(&7));
        assert_eq!(sm.sessions()[&8].last_active, 40);
        // Its next update is refused and changes nothing, and so is every
        // copy of it.
        for index in [5, 6] {
            let results = apply(&mut sm, &mut kv, &[entry(index, 7, 2, put("a", "x"))]);
            assert_eq!(
                results,
                vec![CommandResult::Failed(ExecutionError::SessionExpired {
                    seq: 2
                })]
            );
        }
        assert_eq!(kv.get(b"a"), Some(b"1".to_vec()));
        assert!(!sm.sessions().contains_key(&7));
        // A replica that replays the same entries from the start ends with
        // the same sessions.
        let (mut other, mut other_kv) = (StateMachine::default(), MemKv::default());
        apply(
            &mut other,
            &mut other_kv,
            &[
                at(10, 0, entry(1, 7, 1, put("a", "1"))),
                at(20, 0, entry(2, 8, 1, put("b", "1"))),
                at(30, 10, entry(3, 8, 2, put("b", "2"))),
                at(40, 11, entry(4, 8, 3, put("b", "3"))),
                entry(5, 7, 2, put("a", "x")),
                entry(6, 7, 2, put("a", "x")),
            ],
        );
        assert_eq!(other.sessions(), sm.sessions());
        assert_eq!(other.stamp(), sm.stamp());
    }

    #[test]
    fn a_retry_keeps_its_session_alive_and_a_session_expired_and_opened_again_in_one_batch_is_kept()
    {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        apply(
            &mut sm,
            &mut kv,
            &[at(10, 0, entry(1, 7, 1, put("a", "1")))],
        );
        // A retry at 50 is activity: a cutoff of 40 keeps the session.
        let results = apply(
            &mut sm,
            &mut kv,
            &[at(50, 0, entry(2, 7, 1, put("a", "1")))],
        );
        assert_eq!(results, vec![CommandResult::Written]);
        let batch = sm.apply(&kv, &[at(60, 40, entry(3, 9, 1, put("c", "1")))]);
        kv.commit(&batch);
        assert!(batch.expired.is_empty());
        // Expired by the first entry of a batch, opened again by the second:
        // the batch stores the new session and deletes nothing.
        let batch = sm.apply(
            &kv,
            &[
                at(100, 55, entry(4, 9, 2, put("c", "2"))),
                at(101, 55, entry(5, 7, 1, put("a", "again"))),
            ],
        );
        assert!(batch.expired.is_empty(), "{:?}", batch.expired);
        assert_eq!(batch.sessions[&7].last_active, 101);
    }

    #[test]
    fn the_fast_path_takes_only_writes_of_known_fresh_sessions() {
        let (mut sm, mut kv) = (StateMachine::default(), MemKv::default());
        let request = |client, seq| ClientRequest {
            id: RequestId { client, seq },
            command: put("k", "v"),
        };
        assert_eq!(
            sm.check_fast_write(&request(7, 1), 0),
            FastWriteCheck::SlowPath
        );
        apply(
            &mut sm,
            &mut kv,
            &[at(100, 0, entry(1, 7, 1, put("k", "v")))],
        );
        assert_eq!(
            sm.check_fast_write(&request(7, 2), 0),
            FastWriteCheck::Accept
        );
        assert_eq!(
            sm.check_fast_write(&request(7, 1), 0),
            FastWriteCheck::Answer(CommandResult::Written)
        );
        // At time 300 with a cutoff of 100 (a timeout of 200), fresh means
        // active at 200 or later.
        apply(
            &mut sm,
            &mut kv,
            &[at(300, 100, entry(2, 8, 1, put("x", "y")))],
        );
        assert_eq!(
            sm.check_fast_write(&request(7, 2), 0),
            FastWriteCheck::SlowPath
        );
        assert_eq!(
            sm.check_fast_write(&request(8, 2), 0),
            FastWriteCheck::Accept
        );
        assert_eq!(
            sm.check_fast_write(&request(9, 2), 0),
            FastWriteCheck::SlowPath
        );
        // The leader's clock went on for 50 ticks without an entry: the
        // cutoff may have risen to 200, so fresh means active at 300; a
        // tick later, at 302.
        assert_eq!(
            sm.check_fast_write(&request(8, 2), 350),
            FastWriteCheck::Accept
        );
        assert_eq!(
            sm.check_fast_write(&request(8, 2), 351),
            FastWriteCheck::SlowPath
        );
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
        apply(&mut sm, &mut kv, &[entry(1, 7, 1, first.clone())]);
        let other = Command::CompareAndSwap {
            key: "k".into(),
            expected: None,
            new: "w".into(),
        };
        let reused = CommandResult::Failed(ExecutionError::RequestIdReused { seq: 1 });
        let results = apply(
            &mut sm,
            &mut kv,
            &[entry(2, 7, 1, other.clone()), entry(3, 7, 1, first.clone())],
        );
        assert_eq!(results, vec![reused.clone(), CommandResult::Written]);
        assert_eq!(kv.get(b"k"), Some(b"v".to_vec()));
        let request = |command| ClientRequest {
            id: RequestId { client: 7, seq: 1 },
            command,
        };
        assert_eq!(
            sm.check_fast_write(&request(put("k", "x")), 0),
            FastWriteCheck::Answer(reused)
        );
        assert_eq!(
            sm.check_fast_write(&request(first), 0),
            FastWriteCheck::Answer(CommandResult::Written)
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
