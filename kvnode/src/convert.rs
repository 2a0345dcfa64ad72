//! Conversions between the protocol-level types of `consensus` and their
//! protobuf forms in `proto`, for the wire and for storage.

use consensus::io::HardState;
use consensus::message::{
    AppendEntries, AppendEntriesResponse, DurabilityForward, DurabilityLogRequest,
    DurabilityLogResponse, Message, RequestVote, RequestVoteResponse,
};
use consensus::state_machine::Session;
use consensus::{
    ClientRequest, Command, CommandResult, DurableRecord, Entry, EntryPayload, ExecutionError,
    RequestId,
};
use proto::{kv, raft};

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
pub fn optional_value(value: Option<Vec<u8>>) -> kv::OptionalValue {
    match value {
        Some(value) => kv::OptionalValue {
            present: true,
            value,
        },
        None => kv::OptionalValue::default(),
    }
}

/// The inverse of [`optional_value`]; a missing message is absent.
pub fn from_optional_value(value: Option<kv::OptionalValue>) -> Option<Vec<u8>> {
    value.filter(|v| v.present).map(|v| v.value)
}

/// A command in its wire form.
pub fn command_to_proto(command: &Command) -> kv::Command {
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
        Command::CompareAndSwap { key, expected, new } => Op::CompareAndSwap(kv::CompareAndSwap {
            key,
            expected: Some(optional_value(expected)),
            new_value: new,
        }),
        Command::Increment { key, by } => Op::Increment(kv::Increment { key, by }),
        Command::Get { key } => Op::Get(key),
        Command::MultiGet { keys } => Op::MultiGet(kv::MultiGet { keys }),
    };
    kv::Command { op: Some(op) }
}

/// A command from its wire form.
pub fn command_from_proto(command: kv::Command) -> Result<Command, ConvertError> {
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
                expected: from_optional_value(c.expected),
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

/// A client request in its wire and storage form.
pub fn request_to_proto(request: &ClientRequest) -> raft::ClientCommand {
    raft::ClientCommand {
        client_id: request.id.client,
        seq: request.id.seq,
        command: Some(command_to_proto(&request.command)),
    }
}

/// A client request from its wire and storage form.
pub fn request_from_proto(c: raft::ClientCommand) -> Result<ClientRequest, ConvertError> {
    Ok(ClientRequest {
        id: RequestId {
            client: c.client_id,
            seq: c.seq,
        },
        command: command_from_proto(
            c.command
                .ok_or_else(|| malformed("request", "no command"))?,
        )?,
    })
}

/// A durability-log record in its wire and storage form.
pub fn record_to_proto(record: &DurableRecord) -> raft::DurableRecord {
    raft::DurableRecord {
        request: Some(request_to_proto(&record.request)),
        term: record.term,
    }
}

/// A durability-log record from its wire and storage form.
pub fn record_from_proto(record: raft::DurableRecord) -> Result<DurableRecord, ConvertError> {
    Ok(DurableRecord {
        request: request_from_proto(
            record
                .request
                .ok_or_else(|| malformed("record", "no request"))?,
        )?,
        term: record.term,
    })
}

/// A log entry in its wire and storage form.
pub fn entry_to_proto(entry: &Entry) -> raft::Entry {
    let payload = match &entry.payload {
        EntryPayload::Noop => raft::entry::Payload::Noop(true),
        EntryPayload::Command(request) => raft::entry::Payload::Command(request_to_proto(request)),
    };
    raft::Entry {
        term: entry.term,
        index: entry.index,
        payload: Some(payload),
    }
}

/// A log entry from its wire and storage form.
pub fn entry_from_proto(entry: raft::Entry) -> Result<Entry, ConvertError> {
    let payload = match entry
        .payload
        .ok_or_else(|| malformed("entry", "no payload"))?
    {
        raft::entry::Payload::Noop(_) => EntryPayload::Noop,
        raft::entry::Payload::Command(c) => EntryPayload::Command(request_from_proto(c)?),
    };
    if entry.index == 0 {
        return Err(malformed("entry", "index 0"));
    }
    Ok(Entry {
        term: entry.term,
        index: entry.index,
        payload,
    })
}

/// A peer message in its wire form.
pub fn message_to_proto(from: u64, to: u64, message: &Message) -> raft::PeerMessage {
    use raft::peer_message::Msg;
    let msg = match message {
        Message::AppendEntries(m) => Msg::AppendEntries(raft::AppendEntries {
            term: m.term,
            leader_id: m.leader_id,
            prev_log_index: m.prev_log_index,
            prev_log_term: m.prev_log_term,
            entries: m.entries.iter().map(entry_to_proto).collect(),
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
        }),
        Message::RequestVoteResponse(m) => Msg::RequestVoteResponse(raft::RequestVoteResponse {
            term: m.term,
            vote_granted: m.vote_granted,
            pre_vote: m.pre_vote,
        }),
        Message::DurabilityLogRequest(m) => Msg::DurabilityLogRequest(raft::DurabilityLogRequest {
            term: m.term,
            from: m.from,
        }),
        Message::DurabilityLogResponse(m) => {
            Msg::DurabilityLogResponse(raft::DurabilityLogResponse {
                term: m.term,
                records: m.records.iter().map(record_to_proto).collect(),
                from: m.from,
                next: m.next,
                done: m.done,
            })
        }
        Message::DurabilityForward(m) => Msg::DurabilityForward(raft::DurabilityForward {
            term: m.term,
            records: m.records.iter().map(record_to_proto).collect(),
        }),
    };
    raft::PeerMessage {
        from,
        to,
        msg: Some(msg),
    }
}

/// A peer message from its wire form.
pub fn message_from_proto(message: raft::PeerMessage) -> Result<Message, ConvertError> {
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
                    .map(entry_from_proto)
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
            }),
            Msg::RequestVoteResponse(m) => Message::RequestVoteResponse(RequestVoteResponse {
                term: m.term,
                vote_granted: m.vote_granted,
                pre_vote: m.pre_vote,
            }),
            Msg::DurabilityLogRequest(m) => Message::DurabilityLogRequest(DurabilityLogRequest {
                term: m.term,
                from: m.from,
            }),
            Msg::DurabilityLogResponse(m) => {
                Message::DurabilityLogResponse(DurabilityLogResponse {
                    term: m.term,
                    from: m.from,
                    records: m
                        .records
                        .into_iter()
                        .map(record_from_proto)
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
                    .map(record_from_proto)
                    .collect::<Result<_, _>>()?,
            }),
        },
    )
}

fn result_to_proto(result: &CommandResult) -> raft::StoredResult {
    use raft::stored_result::Result as R;
    let result = match result.clone() {
        CommandResult::Written => R::Written(true),
        CommandResult::Value(v) => R::Value(optional_value(v)),
        CommandResult::Values(values) => R::Values(kv::MultiGetResponse {
            values: values.into_iter().map(optional_value).collect(),
        }),
        CommandResult::Swapped { succeeded, current } => R::Swapped(kv::CompareAndSwapResponse {
            succeeded,
            current: Some(optional_value(current)),
        }),
        CommandResult::Counter(n) => R::Counter(n),
        CommandResult::Failed(e) => R::Failed(match e {
            ExecutionError::NotAnInteger => "not_an_integer".into(),
            ExecutionError::Overflow => "overflow".into(),
            ExecutionError::StaleRequest { seq, latest } => format!("stale:{seq}:{latest}"),
            ExecutionError::ResultTooLarge { limit } => format!("too_large:{limit}"),
        }),
    };
    raft::StoredResult {
        result: Some(result),
    }
}

fn result_from_proto(result: raft::StoredResult) -> Result<CommandResult, ConvertError> {
    use raft::stored_result::Result as R;
    Ok(
        match result.result.ok_or_else(|| malformed("result", "empty"))? {
            R::Written(_) => CommandResult::Written,
            R::Value(v) => CommandResult::Value(from_optional_value(Some(v))),
            R::Values(v) => CommandResult::Values(
                v.values
                    .into_iter()
                    .map(|v| from_optional_value(Some(v)))
                    .collect(),
            ),
            R::Swapped(s) => CommandResult::Swapped {
                succeeded: s.succeeded,
                current: from_optional_value(s.current),
            },
            R::Counter(n) => CommandResult::Counter(n),
            R::Failed(code) => CommandResult::Failed(match code.as_str() {
                "not_an_integer" => ExecutionError::NotAnInteger,
                "overflow" => ExecutionError::Overflow,
                other if other.starts_with("too_large:") => ExecutionError::ResultTooLarge {
                    limit: other["too_large:".len()..]
                        .parse()
                        .map_err(|_| malformed("result", format!("bad failure {other:?}")))?,
                },
                other => {
                    let mut parts = other.strip_prefix("stale:").unwrap_or_default().split(':');
                    let mut number = || parts.next().and_then(|p| p.parse().ok());
                    match (number(), number()) {
                        (Some(seq), Some(latest)) => ExecutionError::StaleRequest { seq, latest },
                        _ => return Err(malformed("result", format!("unknown failure {other:?}"))),
                    }
                }
            }),
        },
    )
}

/// A client session in its storage form.
pub fn session_to_proto(session: &Session) -> raft::StoredSession {
    raft::StoredSession {
        last_seq: session.last_seq,
        last_result: Some(result_to_proto(&session.last_result)),
    }
}

/// A client session from its storage form.
pub fn session_from_proto(session: raft::StoredSession) -> Result<Session, ConvertError> {
    Ok(Session {
        last_seq: session.last_seq,
        last_result: result_from_proto(
            session
                .last_result
                .ok_or_else(|| malformed("session", "no result"))?,
        )?,
    })
}

/// Term and vote in their storage form.
pub fn hard_state_to_proto(hard_state: &HardState) -> raft::StoredHardState {
    raft::StoredHardState {
        term: hard_state.term,
        voted_for: hard_state.voted_for.unwrap_or(0),
    }
}

/// Term and vote from their storage form.
pub fn hard_state_from_proto(hard_state: raft::StoredHardState) -> HardState {
    HardState {
        term: hard_state.term,
        voted_for: (hard_state.voted_for != 0).then_some(hard_state.voted_for),
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
            let back = message_from_proto(message_to_proto(1, 2, &message)).expect("decodes");
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
        ];
        for result in results {
            let session = Session {
                last_seq: 4,
                last_result: result,
            };
            assert_eq!(
                session_from_proto(session_to_proto(&session)).expect("decodes"),
                session
            );
        }
        let hs = HardState {
            term: 5,
            voted_for: Some(2),
        };
        assert_eq!(hard_state_from_proto(hard_state_to_proto(&hs)), hs);
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
            ];
            for message in messages {
                let encoded = message_to_proto(u64::MAX, u64::MAX, &message).encoded_len();
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
    }
}
