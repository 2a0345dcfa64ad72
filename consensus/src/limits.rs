//! Request validation, shared by the client library, the server and the
//! state machine, so an invalid request is refused before it is made durable
//! (a nilext write can report no execution error later).

use crate::types::Command;

/// The longest key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// The largest value accepted, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// The most keys one multi-put or multi-get may name.
pub const MULTI_KEYS_MAX: usize = 1024;
/// The largest client request a node decodes, in bytes (kvnode's gRPC
/// limit for client calls; kvclient encodes none larger).
pub const REQUEST_BYTES_MAX: usize = 4 << 20;
/// The largest command accepted, by [`crate::Command::size_bytes`]: below
/// [`REQUEST_BYTES_MAX`] by room for the request's framing (at most a few
/// bytes per key and value), so a valid command always fits a request.
pub const COMMAND_BYTES_MAX: usize = REQUEST_BYTES_MAX - (64 << 10);
/// The largest result a read may return, in bytes of keys and values: a
/// multi-get of more is refused (`ExecutionError::ResultTooLarge`) instead
/// of reading it all, so one read cannot hold the node's loop for long.
pub const READ_RESULT_BYTES_MAX: usize = 16 << 20;
/// The largest message between replicas, by
/// [`crate::Message::size_bytes`] (which bounds its encoded size from
/// above): kvnode's transport sends none larger (it drops it, and its
/// gRPC decoding refuses one), and the simulator drops one larger the same
/// way. A protocol keeps every message within it: an AppendEntries carries
/// entries up to its byte budget and always at least one, so the budget
/// plus one largest entry must fit ([`fits_in_a_message`]).
pub const PEER_MESSAGE_BYTES_MAX: usize = 16 << 20;

/// Whether a message carrying up to `budget_bytes` of entries or records,
/// plus one more of the largest size, stays within
/// [`PEER_MESSAGE_BYTES_MAX`]: what a protocol's batch settings must meet.
pub fn fits_in_a_message(budget_bytes: usize) -> bool {
    budget_bytes
        .checked_add(crate::types::Entry::size_of_command(COMMAND_BYTES_MAX))
        .and_then(|b| b.checked_add(crate::message::MESSAGE_HEADER_BYTES))
        .is_some_and(|total| total <= PEER_MESSAGE_BYTES_MAX)
}

/// Why a request was refused before it did anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// A key of length zero.
    #[error("empty key")]
    EmptyKey,
    /// A key over [`KEY_BYTES_MAX`].
    #[error("key of {len} bytes exceeds the limit of {KEY_BYTES_MAX} bytes")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// A value over [`VALUE_BYTES_MAX`].
    #[error("value of {len} bytes exceeds the limit of {VALUE_BYTES_MAX} bytes")]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
    },
    /// A multi-op naming no keys.
    #[error("a multi-key operation needs at least one key")]
    NoKeys,
    /// A multi-op over [`MULTI_KEYS_MAX`] keys.
    #[error("{count} keys in one operation exceed the limit of {MULTI_KEYS_MAX}")]
    TooManyKeys {
        /// How many keys the request named.
        count: usize,
    },
    /// A command over [`COMMAND_BYTES_MAX`] in all.
    #[error(
        "the request's keys and values take {bytes} bytes, over the limit of {COMMAND_BYTES_MAX}"
    )]
    TooLarge {
        /// Its size, by `Command::size_bytes`.
        bytes: usize,
    },
}

fn check_key(key: &[u8]) -> Result<(), InvalidCommand> {
    if key.is_empty() {
        return Err(InvalidCommand::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(InvalidCommand::KeyTooLong { len: key.len() });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), InvalidCommand> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(InvalidCommand::ValueTooLarge { len: value.len() });
    }
    Ok(())
}

fn check_count(count: usize) -> Result<(), InvalidCommand> {
    match count {
        0 => Err(InvalidCommand::NoKeys),
        n if n > MULTI_KEYS_MAX => Err(InvalidCommand::TooManyKeys { count: n }),
        _ => Ok(()),
    }
}

/// Checks a command against the limits above.
pub fn validate(command: &Command) -> Result<(), InvalidCommand> {
    validate_parts(command)?;
    let bytes = command.size_bytes();
    if bytes > COMMAND_BYTES_MAX {
        return Err(InvalidCommand::TooLarge { bytes });
    }
    Ok(())
}

fn validate_parts(command: &Command) -> Result<(), InvalidCommand> {
    match command {
        Command::Put { key, value } => {
            check_key(key)?;
            check_value(value)
        }
        Command::Delete { key } | Command::Get { key } | Command::Increment { key, .. } => {
            check_key(key)
        }
        Command::CompareAndSwap { key, expected, new } => {
            check_key(key)?;
            if let Some(expected) = expected {
                check_value(expected)?;
            }
            check_value(new)
        }
        Command::MultiPut { pairs } => {
            check_count(pairs.len())?;
            pairs.iter().try_for_each(|(k, v)| {
                check_key(k)?;
                check_value(v)
            })
        }
        Command::MultiGet { keys } => {
            check_count(keys.len())?;
            keys.iter().try_for_each(|k| check_key(k))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        let put = |k: usize, v: usize| Command::Put {
            key: vec![b'k'; k],
            value: vec![0; v],
        };
        assert_eq!(validate(&put(1, 0)), Ok(()));
        assert_eq!(validate(&put(0, 1)), Err(InvalidCommand::EmptyKey));
        assert_eq!(
            validate(&put(KEY_BYTES_MAX + 1, 1)),
            Err(InvalidCommand::KeyTooLong {
                len: KEY_BYTES_MAX + 1
            })
        );
        assert_eq!(validate(&put(KEY_BYTES_MAX, VALUE_BYTES_MAX)), Ok(()));
        assert_eq!(
            validate(&put(1, VALUE_BYTES_MAX + 1)),
            Err(InvalidCommand::ValueTooLarge {
                len: VALUE_BYTES_MAX + 1
            })
        );
        assert_eq!(
            validate(&Command::MultiGet { keys: vec![] }),
            Err(InvalidCommand::NoKeys)
        );
        assert_eq!(
            validate(&Command::MultiGet {
                keys: vec![b"k".to_vec(); MULTI_KEYS_MAX + 1]
            }),
            Err(InvalidCommand::TooManyKeys {
                count: MULTI_KEYS_MAX + 1
            })
        );
        assert_eq!(
            validate(&Command::MultiPut {
                pairs: vec![(b"a".to_vec(), vec![]), (vec![], vec![])]
            }),
            Err(InvalidCommand::EmptyKey)
        );
    }
}
