//! Conversions between the protocol-level types of `consensus` and their
//! protobuf forms, for the wire and for storage, as `From` (to protobuf)
//! and `TryFrom` (from protobuf: a message may be malformed). They live
//! once, here: kvnode's transport, service and storage and kvclient all use
//! them.

use consensus::cluster_time::Stamp;
use consensus::io::HardState;
use consensus::membership::{Membership, MembershipChange, NodeSet};
use consensus::message::{
    AppendEntries, AppendEntriesResponse, DurabilityForward, DurabilityLogRequest,
    DurabilityLogResponse, InstallSnapshot, InstallSnapshotResponse, Message, RequestVote,
    RequestVoteResponse, TimeoutNow,
};
use consensus::snapshot::{SnapshotItem, SnapshotMeta};
use consensus::state_machine::Session;
use consensus::types::ConfigEntry;
use consensus::{
    ClientRequest, Command, CommandResult, DurableRecord, Entry, EntryPayload, ExecutionError,
    RequestId,
};

use crate::{kv, raft};

/// A protobuf message that does not describe a valid value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct ConvertError {
    what: &'static str,
    detail: String,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> ConvertError {
    ConvertError {
        what,
        detail: detail.into(),
    }
}

/// `None` as absent, `Some` as present.
impl From<Option<Vec<u8>>> for kv::OptionalValue {
    fn from(value: Option<Vec<u8>>) -> Self {
        match value {
            Some(value) => kv::OptionalValue {
                present: true,
                value,
            },
            None => kv::OptionalValue::default(),
        }
    }
}

/// Absent as `None`.
impl From<kv::OptionalValue> for Option<Vec<u8>> {
    fn from(value: kv::OptionalValue) -> Self {
        value.present.then_some(value.value)
    }
}

/// A value of a reply or request field, where a missing message (as proto3
/// decodes an unset field) is absent.
pub fn value_of(value: Option<kv::OptionalValue>) -> Option<Vec<u8>> {
    value.and_then(Into::into)
}

/// A command in its wire form.
impl From<&Command> for kv::Command {
    fn from(command: &Command) -> Self {
        use kv::command::Op;
        let op = match command.clone() {
            Command::Put { key, value } => Op::Put(kv::KeyValue { key, value }),
            Command::Delete { key } => Op::Delete(key),
            Command::MultiPut { pairs } => Op::MultiPut(kv::MultiPut {
                pairs: pairs
                    .into_iter()
                    .map(|(key, value)| kv::KeyValue { key, value })
                    .collect(),
            }),
            Command::CompareAndSwap { key, expected, new } => {
                Op::CompareAndSwap(kv::CompareAndSwap {
                    key,
                    expected: Some(expected.into()),
                    new_value: new,
                })
            }
            Command::Increment { key, by } => Op::Increment(kv::Increment { key, by }),
            Command::Get { key } => Op::Get(key),
            Command::MultiGet { keys } => Op::MultiGet(kv::MultiGet { keys }),
        };
        kv::Command { op: Some(op) }
    }
}

/// A command from its wire form.
impl TryFrom<kv::Command> for Command {
    type Error = ConvertError;

    fn try_from(command: kv::Command) -> Result<Self, ConvertError> {
        use kv::command::Op;
        Ok(
            match command
                .op
                .ok_or_else(|| malformed("command", "no operation"))?
            {
                Op::Put(kv::KeyValue { key, value }) => Command::Put { key, value },
                Op::Delete(key) => Command::Delete { key },
                Op::MultiPut(m) => Command::MultiPut {
                    pairs: m.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                },
                Op::CompareAndSwap(c) => Command::CompareAndSwap {
                    key: c.key,
                    expected: value_of(c.expected),
                    new: c.new_value,
                },
                Op::Increment(i) => Command::Increment {
                    key: i.key,
                    by: i.by,
                },
                Op::Get(key) => Command::Get { key },
                Op::MultiGet(m) => Command::MultiGet { keys: m.keys },
            },
        )
    }
}

/// A client request in its wire and storage form.
impl From<&ClientRequest> for raft::ClientCommand {
    fn from(request: &ClientRequest) -> Self {
        raft::ClientCommand {
            client_id: request.id.client,
            seq: request.id.seq,
            command: Some((&request.command).into()),
        }
    }
}

/// A client request from its wire and storage form.
impl TryFrom<raft::ClientCommand> for ClientRequest {
    type Error = ConvertError;

    fn try_from(c: raft::ClientCommand) -> Result<Self, ConvertError> {
        Ok(ClientRequest {
            id: RequestId {
                client: c.client_id,
                seq: c.seq,
            },
            command: c
                .command
                .ok_or_else(|| malformed("request", "no command"))?
                .try_into()?,
        })
    }
}

/// A durability-log record in its wire and storage form.
impl From<&DurableRecord> for raft::DurableRecord {
    fn from(record: &DurableRecord) -> Self {
        raft::DurableRecord {
            request: Some((&record.request).into()),
            term: record.term,
        }
    }
}

/// A durability-log record from its wire and storage form.
impl TryFrom<raft::DurableRecord> for DurableRecord {
    type Error = ConvertError;

    fn try_from(record: raft::DurableRecord) -> Result<Self, ConvertError> {
        Ok(DurableRecord {
            request: record
                .request
                .ok_or_else(|| malformed("record", "no request"))?
                .try_into()?,
            term: record.term,
        })
    }
}

/// A log entry in its wire and storage form.
impl From<&Entry> for raft::Entry {
    fn from(entry: &Entry) -> Self {
        let payload = match &entry.payload {
            EntryPayload::Noop => raft::entry::Payload::Noop(true),
            EntryPayload::Command(request) => raft::entry::Payload::Command(request.into()),
            EntryPayload::Config(config) => raft::entry::Payload::Config(config.into()),
        };
        raft::Entry {
            term: entry.term,
            index: entry.index,
            payload: Some(payload),
            time: entry.stamp.time,
            expire_before: entry.stamp.expire_before,
        }
    }
}

/// A log entry from its wire and storage form.
impl TryFrom<raft::Entry> for Entry {
    type Error = ConvertError;

    fn try_from(entry: raft::Entry) -> Result<Self, ConvertError> {
        let payload = match entry
            .payload
            .ok_or_else(|| malformed("entry", "no payload"))?
        {
            raft::entry::Payload::Noop(_) => EntryPayload::Noop,
            raft::entry::Payload::Command(c) => EntryPayload::Command(c.try_into()?),
            raft::entry::Payload::Config(c) => EntryPayload::Config(c.try_into()?),
        };
        if entry.index == 0 {
            return Err(malformed("entry", "index 0"));
        }
        Ok(Entry {
            term: entry.term,
            index: entry.index,
            stamp: Stamp {
                time: entry.time,
                expire_before: entry.expire_before,
            },
            payload,
        })
    }
}

/// A peer message in its wire form, from `from` to `to`.
pub fn peer_message(from: u64, to: u64, message: &Message) -> raft::PeerMessage {
    use raft::peer_message::Msg;
    let msg = match message {
        Message::AppendEntries(m) => Msg::AppendEntries(raft::AppendEntries {
            term: m.term,
            leader_id: m.leader_id,
            prev_log_index: m.prev_log_index,
            prev_log_term: m.prev_log_term,
            entries: m.entries.iter().map(Into::into).collect(),
            leader_commit: m.leader_commit,
            context: m.context,
        }),
        Message::AppendEntriesResponse(m) => {
            Msg::AppendEntriesResponse(raft::AppendEntriesResponse {
                term: m.term,
                success: m.success,
                match_index: m.match_index,
                conflict_index: m.conflict_index,
                conflict_term: m.conflict_term,
                context: m.context,
            })
        }
        Message::RequestVote(m) => Msg::RequestVote(raft::RequestVote {
            term: m.term,
            candidate_id: m.candidate_id,
            last_log_index: m.last_log_index,
            last_log_term: m.last_log_term,
            pre_vote: m.pre_vote,
            transfer: m.transfer,
        }),
        Message::RequestVoteResponse(m) => Msg::RequestVoteResponse(raft::RequestVoteResponse {
            term: m.term,
            vote_granted: m.vote_granted,
            pre_vote: m.pre_vote,
            not_a_voter_at: m.not_a_voter_at,
        }),
        Message::DurabilityLogRequest(m) => Msg::DurabilityLogRequest(raft::DurabilityLogRequest {
            term: m.term,
            from: m.from,
        }),
        Message::DurabilityLogResponse(m) => {
            Msg::DurabilityLogResponse(raft::DurabilityLogResponse {
                term: m.term,
                records: m.records.iter().map(Into::into).collect(),
                from: m.from,
                next: m.next,
                done: m.done,
            })
        }
        Message::DurabilityForward(m) => Msg::DurabilityForward(raft::DurabilityForward {
            term: m.term,
            records: m.records.iter().map(Into::into).collect(),
        }),
        Message::InstallSnapshot(m) => Msg::InstallSnapshot(raft::InstallSnapshot {
            term: m.term,
            leader_id: m.leader_id,
            snapshot: Some(m.snapshot.into()),
            position: m.position.clone(),
            items: m.items.iter().map(Into::into).collect(),
            next: m.next.clone(),
            done: m.done,
        }),
        Message::InstallSnapshotResponse(m) => {
            Msg::InstallSnapshotResponse(raft::InstallSnapshotResponse {
                term: m.term,
                snapshot: Some(m.snapshot.into()),
                next: m.next.clone(),
                rejected: m.rejected,
                installed: m.installed,
            })
        }
        Message::TimeoutNow(m) => Msg::TimeoutNow(raft::TimeoutNow {
            term: m.term,
            leader_id: m.leader_id,
            leader_commit: m.leader_commit,
        }),
    };
    raft::PeerMessage {
        from,
        to,
        msg: Some(msg),
    }
}

/// A peer message from its wire form.
impl TryFrom<raft::PeerMessage> for Message {
    type Error = ConvertError;

    fn try_from(message: raft::PeerMessage) -> Result<Self, ConvertError> {
        use raft::peer_message::Msg;
        Ok(
            match message
                .msg
                .ok_or_else(|| malformed("peer message", "empty"))?
            {
                Msg::AppendEntries(m) => Message::AppendEntries(AppendEntries {
                    term: m.term,
                    leader_id: m.leader_id,
                    prev_log_index: m.prev_log_index,
                    prev_log_term: m.prev_log_term,
                    entries: m
                        .entries
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?,
                    leader_commit: m.leader_commit,
                    context: m.context,
                }),
                Msg::AppendEntriesResponse(m) => {
                    Message::AppendEntriesResponse(AppendEntriesResponse {
                        term: m.term,
                        success: m.success,
                        match_index: m.match_index,
                        conflict_index: m.conflict_index,
                        conflict_term: m.conflict_term,
                        context: m.context,
                    })
                }
                Msg::RequestVote(m) => Message::RequestVote(RequestVote {
                    term: m.term,
                    candidate_id: m.candidate_id,
                    last_log_index: m.last_log_index,
                    last_log_term: m.last_log_term,
                    pre_vote: m.pre_vote,
                    transfer: m.transfer,
                }),
                Msg::RequestVoteResponse(m) => Message::RequestVoteResponse(RequestVoteResponse {
                    term: m.term,
                    vote_granted: m.vote_granted,
                    pre_vote: m.pre_vote,
                    not_a_voter_at: m.not_a_voter_at,
                }),
                Msg::DurabilityLogRequest(m) => {
                    Message::DurabilityLogRequest(DurabilityLogRequest {
                        term: m.term,
                        from: m.from,
                    })
                }
                Msg::DurabilityLogResponse(m) => {
                    Message::DurabilityLogResponse(DurabilityLogResponse {
                        term: m.term,
                        from: m.from,
                        records: m
                            .records
                            .into_iter()
                            .map(TryInto::try_into)
                            .collect::<Result<_, _>>()?,
                        next: m.next,
                        done: m.done,
                    })
                }
                Msg::DurabilityForward(m) => Message::DurabilityForward(DurabilityForward {
                    term: m.term,
                    records: m
                        .records
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?,
                }),
                Msg::InstallSnapshot(m) => Message::InstallSnapshot(InstallSnapshot {
                    term: m.term,
                    leader_id: m.leader_id,
                    snapshot: m.snapshot.unwrap_or_default().try_into()?,
                    position: m.position,
                    items: m
                        .items
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?,
                    next: m.next,
                    done: m.done,
                }),
                Msg::InstallSnapshotResponse(m) => {
                    Message::InstallSnapshotResponse(InstallSnapshotResponse {
                        term: m.term,
                        snapshot: m.snapshot.unwrap_or_default().try_into()?,
                        next: m.next,
                        rejected: m.rejected,
                        installed: m.installed,
                    })
                }
                Msg::TimeoutNow(m) => Message::TimeoutNow(TimeoutNow {
                    term: m.term,
                    leader_id: m.leader_id,
                    leader_commit: m.leader_commit,
                }),
            },
        )
    }
}

impl From<&CommandResult> for raft::StoredResult {
    fn from(result: &CommandResult) -> Self {
        use raft::stored_result::Result as R;
        let result = match result.clone() {
            CommandResult::Written => R::Written(true),
            CommandResult::Value(v) => R::Value(v.into()),
            CommandResult::Values(values) => R::Values(kv::MultiGetResponse {
                values: values.into_iter().map(Into::into).collect(),
            }),
            CommandResult::Swapped { succeeded, current } => {
                R::Swapped(kv::CompareAndSwapResponse {
                    succeeded,
                    current: Some(current.into()),
                })
            }
            CommandResult::Counter(n) => R::Counter(n),
            CommandResult::Failed(e) => R::Failed(match e {
                ExecutionError::NotAnInteger => "not_an_integer".into(),
                ExecutionError::Overflow => "overflow".into(),
                ExecutionError::StaleRequest { seq, latest } => format!("stale:{seq}:{latest}"),
                ExecutionError::RequestIdReused { seq } => format!("reused:{seq}"),
                ExecutionError::SessionExpired { seq } => format!("expired:{seq}"),
                ExecutionError::ResultTooLarge { limit } => format!("too_large:{limit}"),
            }),
        };
        raft::StoredResult {
            result: Some(result),
        }
    }
}

impl TryFrom<raft::StoredResult> for CommandResult {
    type Error = ConvertError;

    fn try_from(result: raft::StoredResult) -> Result<Self, ConvertError> {
        use raft::stored_result::Result as R;
        Ok(
            match result.result.ok_or_else(|| malformed("result", "empty"))? {
                R::Written(_) => CommandResult::Written,
                R::Value(v) => CommandResult::Value(v.into()),
                R::Values(v) => {
                    CommandResult::Values(v.values.into_iter().map(Into::into).collect())
                }
                R::Swapped(s) => CommandResult::Swapped {
                    succeeded: s.succeeded,
                    current: value_of(s.current),
                },
                R::Counter(n) => CommandResult::Counter(n),
                R::Failed(code) => CommandResult::Failed(match code.as_str() {
                    "not_an_integer" => ExecutionError::NotAnInteger,
                    "overflow" => ExecutionError::Overflow,
                    other if other.starts_with("reused:") => ExecutionError::RequestIdReused {
                        seq: other["reused:".len()..]
                            .parse()
                            .map_err(|_| malformed("result", format!("bad failure {other:?}")))?,
                    },
                    other if other.starts_with("expired:") => ExecutionError::SessionExpired {
                        seq: other["expired:".len()..]
                            .parse()
                            .map_err(|_| malformed("result", format!("bad failure {other:?}")))?,
                    },
                    other if other.starts_with("too_large:") => ExecutionError::ResultTooLarge {
                        limit: other["too_large:".len()..]
                            .parse()
                            .map_err(|_| malformed("result", format!("bad failure {other:?}")))?,
                    },
                    other => {
                        let mut parts = other.strip_prefix("stale:").unwrap_or_default().split(':');
                        let mut number = || parts.next().and_then(|p| p.parse().ok());
                        match (number(), number()) {
                            (Some(seq), Some(latest)) => {
                                ExecutionError::StaleRequest { seq, latest }
                            }
                            _ => {
                                return Err(malformed(
                                    "result",
                                    format!("unknown failure {other:?}"),
                                ));
                            }
                        }
                    }
                }),
            },
        )
    }
}

/// A snapshot's place in its wire form.
impl From<SnapshotMeta> for raft::SnapshotMeta {
    fn from(meta: SnapshotMeta) -> Self {
        raft::SnapshotMeta {
            index: meta.index,
            term: meta.term,
            time: meta.stamp.time,
            expire_before: meta.stamp.expire_before,
            membership: (!meta.membership.is_empty()).then(|| meta.membership.into()),
        }
    }
}

/// A snapshot's place from its wire form.
impl TryFrom<raft::SnapshotMeta> for SnapshotMeta {
    type Error = ConvertError;

    fn try_from(meta: raft::SnapshotMeta) -> Result<Self, ConvertError> {
        Ok(SnapshotMeta {
            index: meta.index,
            term: meta.term,
            stamp: Stamp {
                time: meta.time,
                expire_before: meta.expire_before,
            },
            membership: match meta.membership {
                Some(m) => m.try_into()?,
                None => Membership::default(),
            },
        })
    }
}

/// A configuration in its wire form.
impl From<Membership> for raft::Membership {
    fn from(m: Membership) -> Self {
        raft::Membership {
            voters: m.voters.iter().collect(),
            learners: m.learners.iter().collect(),
        }
    }
}

/// A configuration from its wire form: ids 1 to 64, voters and learners
/// apart.
impl TryFrom<raft::Membership> for Membership {
    type Error = ConvertError;

    fn try_from(m: raft::Membership) -> Result<Self, ConvertError> {
        let set = |ids: &[u64]| -> Result<NodeSet, ConvertError> {
            for &id in ids {
                consensus::membership::validate_node_id(id)
                    .map_err(|e| malformed("membership", e))?;
            }
            Ok(NodeSet::of(ids.iter().copied()))
        };
        let membership = Membership {
            voters: set(&m.voters)?,
            learners: set(&m.learners)?,
        };
        if !NodeSet::of(
            membership
                .voters
                .iter()
                .filter(|&id| membership.is_learner(id)),
        )
        .is_empty()
        {
            return Err(malformed("membership", "a node is both voter and learner"));
        }
        Ok(membership)
    }
}

/// A configuration entry in its wire form.
impl From<&ConfigEntry> for raft::ConfigEntry {
    fn from(config: &ConfigEntry) -> Self {
        use raft::config_entry::Change;
        raft::ConfigEntry {
            membership: Some(config.membership.into()),
            change: Some(match config.change {
                MembershipChange::AddLearner(id) => Change::AddLearner(id),
                MembershipChange::Promote(id) => Change::Promote(id),
                MembershipChange::Remove(id) => Change::Remove(id),
            }),
            address: config.address.clone(),
        }
    }
}

/// A configuration entry from its wire form.
impl TryFrom<raft::ConfigEntry> for ConfigEntry {
    type Error = ConvertError;

    fn try_from(config: raft::ConfigEntry) -> Result<Self, ConvertError> {
        use raft::config_entry::Change;
        let change = match config
            .change
            .ok_or_else(|| malformed("config entry", "no change"))?
        {
            Change::AddLearner(id) => MembershipChange::AddLearner(id),
            Change::Promote(id) => MembershipChange::Promote(id),
            Change::Remove(id) => MembershipChange::Remove(id),
        };
        Ok(ConfigEntry {
            membership: config
                .membership
                .ok_or_else(|| malformed("config entry", "no membership"))?
                .try_into()?,
            change,
            address: config.address,
        })
    }
}

/// A snapshot item in its wire form.
impl From<&SnapshotItem> for raft::SnapshotItem {
    fn from(item: &SnapshotItem) -> Self {
        use raft::snapshot_item::Item;
        let item = match item {
            SnapshotItem::Data(key, value) => Item::Data(raft::KeyValue {
                key: key.clone(),
                value: value.clone(),
            }),
            SnapshotItem::Session(client, session) => Item::Session(raft::SessionItem {
                client_id: *client,
                session: Some(session.into()),
            }),
        };
        raft::SnapshotItem { item: Some(item) }
    }
}

/// A snapshot item from its wire form.
impl TryFrom<raft::SnapshotItem> for SnapshotItem {
    type Error = ConvertError;

    fn try_from(item: raft::SnapshotItem) -> Result<Self, ConvertError> {
        use raft::snapshot_item::Item;
        Ok(
            match item
                .item
                .ok_or_else(|| malformed("snapshot item", "empty"))?
            {
                Item::Data(kv) => SnapshotItem::Data(kv.key, kv.value),
                Item::Session(s) => SnapshotItem::Session(
                    s.client_id,
                    s.session
                        .ok_or_else(|| malformed("snapshot item", "session missing"))?
                        .try_into()?,
                ),
            },
        )
    }
}

/// A client session in its storage form.
impl From<&Session> for raft::StoredSession {
    fn from(session: &Session) -> Self {
        raft::StoredSession {
            last_seq: session.last_seq,
            last_result: Some((&session.last_result).into()),
            command_digest: session.command_digest,
            last_active: session.last_active,
        }
    }
}

/// A client session from its storage form.
impl TryFrom<raft::StoredSession> for Session {
    type Error = ConvertError;

    fn try_from(session: raft::StoredSession) -> Result<Self, ConvertError> {
        Ok(Session {
            last_seq: session.last_seq,
            last_result: session
                .last_result
                .ok_or_else(|| malformed("session", "no result"))?
                .try_into()?,
            command_digest: session.command_digest,
            last_active: session.last_active,
        })
    }
}

/// Term and vote in their storage form.
impl From<&HardState> for raft::StoredHardState {
    fn from(hard_state: &HardState) -> Self {
        raft::StoredHardState {
            term: hard_state.term,
            voted_for: hard_state.voted_for.unwrap_or(0),
        }
    }
}

/// Term and vote from their storage form.
impl From<raft::StoredHardState> for HardState {
    fn from(hard_state: raft::StoredHardState) -> Self {
        HardState {
            term: hard_state.term,
            voted_for: (hard_state.voted_for != 0).then_some(hard_state.voted_for),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_entries_messages_and_sessions_round_trip() {
        let commands = vec![
            Command::Put {
                key: b"k".to_vec(),
                value: vec![],
            },
            Command::Delete { key: b"k".to_vec() },
            Command::MultiPut {
                pairs: vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"2".to_vec()),
                ],
            },
            Command::CompareAndSwap {
                key: b"k".to_vec(),
                expected: None,
                new: b"n".to_vec(),
            },
            Command::CompareAndSwap {
                key: b"k".to_vec(),
                expected: Some(vec![]),
                new: b"n".to_vec(),
            },
            Command::Increment {
                key: b"c".to_vec(),
                by: -3,
            },
            Command::Get { key: b"k".to_vec() },
            Command::MultiGet {
                keys: vec![b"a".to_vec(), b"b".to_vec()],
            },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            let entry = Entry {
                term: 3,
                index: i as u64 + 1,
                stamp: Stamp {
                    time: 1_000 + i as u64,
                    expire_before: 400,
                },
                payload: EntryPayload::Command(ClientRequest {
                    id: RequestId {
                        client: 9,
                        seq: i as u64,
                    },
                    command,
                }),
            };
            let message = Message::AppendEntries(AppendEntries {
                term: 3,
                leader_id: 1,
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![entry.clone()],
                leader_commit: 0,
                context: 7,
            });
            let back = Message::try_from(peer_message(1, 2, &message)).expect("decodes");
            assert_eq!(back, message);
        }
        let results = [
            CommandResult::Written,
            CommandResult::Value(None),
            CommandResult::Value(Some(vec![])),
            CommandResult::Values(vec![None, Some(b"x".to_vec())]),
            CommandResult::Swapped {
                succeeded: false,
                current: Some(b"y".to_vec()),
            },
            CommandResult::Counter(-5),
            CommandResult::Failed(ExecutionError::NotAnInteger),
            CommandResult::Failed(ExecutionError::StaleRequest { seq: 1, latest: 4 }),
            CommandResult::Failed(ExecutionError::ResultTooLarge { limit: 16 }),
            CommandResult::Failed(ExecutionError::RequestIdReused { seq: 7 }),
            CommandResult::Failed(ExecutionError::SessionExpired { seq: 8 }),
        ];
        for result in results {
            let session = Session {
                last_seq: 4,
                last_result: result,
                command_digest: 99,
                last_active: 77,
            };
            assert_eq!(
                Session::try_from(raft::StoredSession::from(&session)).expect("decodes"),
                session
            );
        }
        let hs = HardState {
            term: 5,
            voted_for: Some(2),
        };
        assert_eq!(HardState::from(raft::StoredHardState::from(&hs)), hs);
    }

    #[test]
    fn snapshot_chunks_and_answers_round_trip() {
        let snapshot = SnapshotMeta::at(40, 3);
        let messages = [
            Message::TimeoutNow(TimeoutNow {
                term: 4,
                leader_id: 2,
                leader_commit: 17,
            }),
            Message::RequestVote(RequestVote {
                term: 5,
                candidate_id: 3,
                last_log_index: 40,
                last_log_term: 4,
                pre_vote: false,
                transfer: true,
            }),
            Message::InstallSnapshot(InstallSnapshot {
                term: 3,
                leader_id: 2,
                snapshot,
                position: vec![],
                items: vec![
                    SnapshotItem::Data(b"k".to_vec(), vec![]),
                    SnapshotItem::Session(
                        7,
                        Session {
                            last_seq: 4,
                            last_result: CommandResult::Counter(9),
                            command_digest: 11,
                            last_active: 12,
                        },
                    ),
                ],
                next: vec![1, 2],
                done: false,
            }),
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: 3,
                snapshot,
                next: vec![1, 2],
                rejected: false,
                installed: true,
            }),
        ];
        for message in messages {
            let back = Message::try_from(peer_message(2, 1, &message)).expect("decodes");
            assert_eq!(back, message);
        }
    }

    /// `Message::size_bytes` bounds the encoded size from above, so the
    /// transport and the simulator can compare it with the peer message
    /// limit: checked for the largest commands of every kind, one and many
    /// to a message, with the largest terms and indexes.
    #[test]
    fn a_messages_size_bound_is_above_its_encoded_size() {
        use consensus::limits::{COMMAND_BYTES_MAX, KEY_BYTES_MAX, MULTI_KEYS_MAX};
        use prost::Message as _;
        let key = |i: usize| {
            let mut key = vec![b'k'; KEY_BYTES_MAX];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            key
        };
        // ... and in the most pairs, each as large as the limit allows.
        let per_pair = COMMAND_BYTES_MAX / MULTI_KEYS_MAX - 64;
        let commands = vec![
            Command::Put {
                key: key(0),
                value: vec![7; consensus::limits::VALUE_BYTES_MAX],
            },
            // Near the command limit in few large values...
            Command::MultiPut {
                pairs: (0..3)
                    .map(|i| (key(i), vec![7; consensus::limits::VALUE_BYTES_MAX]))
                    .collect(),
            },
            Command::MultiPut {
                pairs: (0..MULTI_KEYS_MAX)
                    .map(|i| (key(i)[..64].to_vec(), vec![7; per_pair]))
                    .collect(),
            },
            Command::MultiGet {
                keys: (0..MULTI_KEYS_MAX).map(|i| key(i)[..64].to_vec()).collect(),
            },
            Command::CompareAndSwap {
                key: key(0),
                expected: Some(vec![1; 1 << 20]),
                new: vec![2; 1 << 20],
            },
            Command::Increment {
                key: key(0),
                by: i64::MIN,
            },
            Command::Delete { key: key(0) },
        ];
        for command in commands {
            assert!(consensus::limits::validate(&command).is_ok());
            let request = ClientRequest {
                id: RequestId {
                    client: u64::MAX,
                    seq: u64::MAX,
                },
                command,
            };
            let entry = Entry {
                term: u64::MAX,
                index: u64::MAX,
                stamp: Stamp {
                    time: u64::MAX,
                    expire_before: u64::MAX,
                },
                payload: EntryPayload::Command(request.clone()),
            };
            let record = DurableRecord {
                request,
                term: u64::MAX,
            };
            let messages = [
                Message::AppendEntries(AppendEntries {
                    term: u64::MAX,
                    leader_id: u64::MAX,
                    prev_log_index: u64::MAX,
                    prev_log_term: u64::MAX,
                    entries: vec![entry.clone(), entry],
                    leader_commit: u64::MAX,
                    context: u64::MAX,
                }),
                Message::DurabilityLogResponse(DurabilityLogResponse {
                    term: u64::MAX,
                    from: u64::MAX,
                    records: vec![record.clone(), record.clone()],
                    next: u64::MAX,
                    done: true,
                }),
                Message::DurabilityForward(DurabilityForward {
                    term: u64::MAX,
                    records: vec![record],
                }),
                Message::InstallSnapshot(InstallSnapshot {
                    term: u64::MAX,
                    leader_id: u64::MAX,
                    snapshot: SnapshotMeta {
                        index: u64::MAX,
                        term: u64::MAX,
                        stamp: Stamp {
                            time: u64::MAX,
                            expire_before: u64::MAX,
                        },
                        membership: largest_membership(),
                    },
                    position: key(1),
                    items: vec![
                        SnapshotItem::Data(key(2), vec![7; consensus::limits::VALUE_BYTES_MAX]),
                        SnapshotItem::Session(
                            u64::MAX,
                            Session {
                                last_seq: u64::MAX,
                                last_result: CommandResult::Swapped {
                                    succeeded: true,
                                    current: Some(vec![3; 1 << 20]),
                                },
                                command_digest: u64::MAX,
                                last_active: u64::MAX,
                            },
                        ),
                        SnapshotItem::Session(
                            u64::MAX,
                            Session {
                                last_seq: u64::MAX,
                                last_result: CommandResult::Values(vec![Some(vec![1; 100]); 1000]),
                                command_digest: u64::MAX,
                                last_active: u64::MAX,
                            },
                        ),
                    ],
                    next: key(3),
                    done: true,
                }),
                Message::InstallSnapshotResponse(InstallSnapshotResponse {
                    term: u64::MAX,
                    snapshot: SnapshotMeta {
                        index: u64::MAX,
                        term: u64::MAX,
                        stamp: Stamp {
                            time: u64::MAX,
                            expire_before: u64::MAX,
                        },
                        membership: largest_membership(),
                    },
                    next: key(4),
                    rejected: true,
                    installed: true,
                }),
            ];
            for message in messages {
                let encoded = peer_message(u64::MAX, u64::MAX, &message).encoded_len();
                assert!(
                    encoded <= message.size_bytes(),
                    "{encoded} bytes encoded, bound {}",
                    message.size_bytes()
                );
            }
        }
        assert!(
            consensus::limits::fits_in_a_message(0),
            "one largest entry fits"
        );
        // Configuration entries of the most members, round trip and bound.
        let config = Entry {
            term: u64::MAX,
            index: u64::MAX,
            stamp: Stamp {
                time: u64::MAX,
                expire_before: u64::MAX,
            },
            payload: EntryPayload::Config(ConfigEntry {
                membership: largest_membership(),
                change: MembershipChange::AddLearner(64),
                address: "x".repeat(255),
            }),
        };
        let message = Message::AppendEntries(AppendEntries {
            term: u64::MAX,
            leader_id: u64::MAX,
            prev_log_index: u64::MAX,
            prev_log_term: u64::MAX,
            entries: vec![config.clone(), config],
            leader_commit: u64::MAX,
            context: u64::MAX,
        });
        let wire = peer_message(u64::MAX, u64::MAX, &message);
        assert!(wire.encoded_len() <= message.size_bytes());
        assert_eq!(Message::try_from(wire).expect("decodes"), message);
    }

    /// Ids 1 to 32 voting, 33 to 64 learning: the most a membership holds.
    fn largest_membership() -> Membership {
        Membership {
            voters: NodeSet::of(1..=32),
            learners: NodeSet::of(33..=64),
        }
    }

    #[test]
    fn memberships_with_ids_out_of_range_or_twice_are_refused() {
        let bad = [
            raft::Membership {
                voters: vec![0],
                learners: vec![],
            },
            raft::Membership {
                voters: vec![65],
                learners: vec![],
            },
            raft::Membership {
                voters: vec![1, 2],
                learners: vec![2],
            },
        ];
        for m in bad {
            assert!(Membership::try_from(m).is_err());
        }
    }
}
