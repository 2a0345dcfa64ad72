//! Shared vocabulary: identifiers, commands, log entries and command results.

use std::fmt;

/// A replica's identity within its cluster. Ids start at 1; 0 means "none".
pub type NodeId = u64;
/// A Raft term (Figure 2: `currentTerm`).
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1.
pub type LogIndex = u64;
/// A client's identity, chosen by the client at random so ids do not collide.
pub type ClientId = u64;
/// A client's request number; a client numbers its requests 1, 2, 3, ...
pub type Seq = u64;

/// Identifies one client request across all its retries: the state machine
/// applies each `RequestId` at most once (exactly-once client sessions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    /// Who sent the request.
    pub client: ClientId,
    /// The client's sequence number for it.
    pub seq: Seq,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}/{}", self.client, self.seq)
    }
}

/// Keys and values are arbitrary bytes.
pub type Key = Vec<u8>;
/// See [`Key`].
pub type Value = Vec<u8>;

/// One operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Set `key` to `value`. Nilext: returns only an acknowledgement.
    Put {
        /// The key to set.
        key: Key,
        /// Its new value.
        value: Value,
    },
    /// Remove `key`. Nilext.
    Delete {
        /// The key to remove.
        key: Key,
    },
    /// Set several keys atomically. Nilext.
    MultiPut {
        /// The pairs to set, applied together.
        pairs: Vec<(Key, Value)>,
    },
    /// Set `key` to `new` if its current value equals `expected` (`None`:
    /// the key is absent). A non-nilext update: returns whether it swapped.
    CompareAndSwap {
        /// The key to test and set.
        key: Key,
        /// The value the key must hold for the swap to happen.
        expected: Option<Value>,
        /// The value to set.
        new: Value,
    },
    /// Add `by` to the decimal integer stored at `key` (absent reads as 0)
    /// and return the result. A non-nilext update.
    Increment {
        /// The counter's key.
        key: Key,
        /// The amount to add (may be negative).
        by: i64,
    },
    /// Read one key.
    Get {
        /// The key to read.
        key: Key,
    },
    /// Read several keys at one point in time.
    MultiGet {
        /// The keys to read.
        keys: Vec<Key>,
    },
}

/// How a command relates to Nil-ext's fast path (`docs/architecture.md`, "Nil-ext Raft").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandClass {
    /// Returns nothing but an acknowledgement: put, delete, multi-put.
    Nilext,
    /// An update whose result depends on the state: compare-and-swap, increment.
    NonNilextUpdate,
    /// A read: get, multi-get.
    Read,
}

impl Command {
    /// A digest of the command, the same on every replica and in every
    /// build (FNV-1a over a tagged, length-prefixed encoding; never 0): a
    /// session keeps its latest update's, so that another request sent
    /// under the same (client, sequence number) is refused instead of
    /// answered with that update's result.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv::default();
        let bytes = |hash: &mut Fnv, b: &[u8]| {
            hash.write(&(b.len() as u64).to_le_bytes());
            hash.write(b);
        };
        match self {
            Command::Put { key, value } => {
                hash.write(&[1]);
                bytes(&mut hash, key);
                bytes(&mut hash, value);
            }
            Command::Delete { key } => {
                hash.write(&[2]);
                bytes(&mut hash, key);
            }
            Command::MultiPut { pairs } => {
                hash.write(&[3]);
                hash.write(&(pairs.len() as u64).to_le_bytes());
                for (key, value) in pairs {
                    bytes(&mut hash, key);
                    bytes(&mut hash, value);
                }
            }
            Command::CompareAndSwap { key, expected, new } => {
                hash.write(&[4]);
                bytes(&mut hash, key);
                match expected {
                    Some(value) => {
                        hash.write(&[1]);
                        bytes(&mut hash, value);
                    }
                    None => hash.write(&[0]),
                }
                bytes(&mut hash, new);
            }
            Command::Increment { key, by } => {
                hash.write(&[5]);
                bytes(&mut hash, key);
                hash.write(&by.to_le_bytes());
            }
            Command::Get { key } => {
                hash.write(&[6]);
                bytes(&mut hash, key);
            }
            Command::MultiGet { keys } => {
                hash.write(&[7]);
                hash.write(&(keys.len() as u64).to_le_bytes());
                for key in keys {
                    bytes(&mut hash, key);
                }
            }
        }
        hash.0.max(1)
    }

    /// The command's class (nilext write, non-nilext update, read).
    pub fn class(&self) -> CommandClass {
        match self {
            Command::Put { .. } | Command::Delete { .. } | Command::MultiPut { .. } => {
                CommandClass::Nilext
            }
            Command::CompareAndSwap { .. } | Command::Increment { .. } => {
                CommandClass::NonNilextUpdate
            }
            Command::Get { .. } | Command::MultiGet { .. } => CommandClass::Read,
        }
    }

    /// Whether Nil-ext may complete the command on its fast path (durable on
    /// every replica, ordered later): a nilext write of one key, put or
    /// delete. A multi-put returns nothing too, but it goes to the leader:
    /// a new leader orders the unordered writes it recovers as its own
    /// durability log has them, which may differ from the order the old
    /// leader's reads implied for writes that were concurrent. For writes of
    /// one key each that difference cannot be seen (writes of different keys
    /// commute, and a read of a key with a pending write waits until the
    /// order is committed); for a multi-put it can (simulator seed 8801550:
    /// a multi-put of k4 and k5 ordered before a completed put of k4, after a
    /// read of k5 at the old leader had missed it).
    pub fn takes_fast_path(&self) -> bool {
        matches!(self, Command::Put { .. } | Command::Delete { .. })
    }

    /// True for commands that do not change the state.
    pub fn is_read(&self) -> bool {
        self.class() == CommandClass::Read
    }

    /// Every key the command reads or writes.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key }
            | Command::CompareAndSwap { key, .. }
            | Command::Increment { key, .. }
            | Command::Get { key } => vec![key.as_slice()],
            Command::MultiPut { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            Command::MultiGet { keys } => keys.iter().map(Vec::as_slice).collect(),
        }
    }

    /// An upper bound of the command's size encoded (on the wire and on
    /// disk): its keys and values, plus framing (a tag and a length) for
    /// each, plus a fixed part.
    pub fn encoded_bound(&self) -> usize {
        let fields = match self {
            Command::Put { .. } | Command::Increment { .. } => 2,
            Command::Delete { .. } | Command::Get { .. } => 1,
            Command::CompareAndSwap { .. } => 3,
            Command::MultiPut { pairs } => 2 * pairs.len(),
            Command::MultiGet { keys } => keys.len(),
        };
        COMMAND_FRAMING_BYTES + self.size_bytes() + FIELD_FRAMING_BYTES * fields
    }

    /// The bytes of the command's keys and values (the request limits and
    /// batches count these).
    pub fn size_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } | Command::Get { key } => key.len(),
            Command::MultiPut { pairs } => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Command::CompareAndSwap { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.len()
            }
            Command::Increment { key, .. } => key.len() + 8,
            Command::MultiGet { keys } => keys.iter().map(Vec::len).sum(),
        }
    }
}

/// A command together with the identity that makes its retries idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientRequest {
    /// Who asked, and which of their requests this is.
    pub id: RequestId,
    /// What to do.
    pub command: Command,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryPayload {
    /// An entry with no command (a new leader's first entry, where a protocol
    /// uses one).
    Noop,
    /// A client command.
    Command(ClientRequest),
    /// A configuration change: the whole membership from here on
    /// ([`crate::membership`]).
    Config(ConfigEntry),
}

/// A configuration entry's contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigEntry {
    /// The membership in force from this entry on.
    pub membership: crate::membership::Membership,
    /// The change that made it from the one before.
    pub change: crate::membership::MembershipChange,
    /// The address of the node added (empty for other changes): the
    /// protocol does not use it; runtimes learn where to reach a new
    /// member from it.
    pub address: String,
}

/// One entry of the replicated log (Figure 2: "log[]").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The term in which a leader created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// The cluster time its leader created it at, and the session-expiry
    /// cutoff applying it enforces ([`crate::cluster_time`]).
    pub stamp: crate::cluster_time::Stamp,
    /// The command, if any.
    pub payload: EntryPayload,
}

/// Framing of one key or value encoded: its field tag and length prefix
/// (at most 1 + 5 bytes for values up to 4 GiB), rounded up, with room for
/// the tag and length of a key-value pair around them.
pub const FIELD_FRAMING_BYTES: usize = 8;
/// A command's fixed part encoded: its kind's tag and length, a counter.
pub const COMMAND_FRAMING_BYTES: usize = 32;
/// An entry's or a durability record's fixed part encoded: term, index,
/// stamp, request id, their tags, and the entry's own tag and length in its
/// message.
pub const ENTRY_FRAMING_BYTES: usize = 96;

impl Entry {
    /// An upper bound of the entry's size encoded, for byte limits on
    /// batches and messages.
    pub fn size_bytes(&self) -> usize {
        ENTRY_FRAMING_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(request) => request.command.encoded_bound(),
                EntryPayload::Config(config) => {
                    // The members' ids (up to 64, a byte or two each).
                    COMMAND_FRAMING_BYTES
                        + 2 * crate::membership::NODE_ID_MAX as usize
                        + config.address.len()
                }
            }
    }

    /// An upper bound of an entry's size encoded when its command takes
    /// `command_bytes` of keys and values, whatever its kind (a multi-put of
    /// the most keys has the most framing).
    pub fn size_of_command(command_bytes: usize) -> usize {
        ENTRY_FRAMING_BYTES
            + COMMAND_FRAMING_BYTES
            + command_bytes
            + 2 * crate::limits::MULTI_KEYS_MAX * FIELD_FRAMING_BYTES
    }
}

/// The result of executing a command on the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CommandResult {
    /// A put, delete or multi-put took effect.
    Written,
    /// The value read by a get (`None`: absent).
    Value(Option<Value>),
    /// The values read by a multi-get, in the order of its keys.
    Values(Vec<Option<Value>>),
    /// The outcome of a compare-and-swap, with the value found.
    Swapped {
        /// Whether the key held the expected value and was set.
        succeeded: bool,
        /// The value the key held before the command.
        current: Option<Value>,
    },
    /// The counter's value after an increment.
    Counter(i64),
    /// The command could not be executed, and changed nothing.
    Failed(ExecutionError),
}

/// Why the state machine refused to execute a command. These are results,
/// not faults: they are replicated and cached like any other result.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ExecutionError {
    /// Increment of a value that is not a decimal integer.
    #[error("the value at the key is not a decimal integer")]
    NotAnInteger,
    /// Increment whose result does not fit in an i64.
    #[error("the increment overflows a 64-bit integer")]
    Overflow,
    /// A read whose keys and values would take more than `limit` bytes
    /// (`limits::READ_RESULT_BYTES_MAX`); read fewer keys at a time.
    #[error("the result would exceed {limit} bytes; read fewer keys at a time")]
    ResultTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Another request under the sequence number of the client's latest
    /// update: a client that took its id back and numbered its requests
    /// again. It changed nothing; the client must take a fresh id.
    #[error(
        "request {seq} reuses the sequence number of this client's latest update for another request; take a fresh client id"
    )]
    RequestIdReused {
        /// The request's sequence number.
        seq: Seq,
    },
    /// An update under a client id the store does not know, numbered past
    /// the first: its session expired (no update for longer than the
    /// cluster's session timeout), so the store can no longer tell a retry
    /// from a new request. It changed nothing, now or later: no copy of a
    /// request of an expired session is ever applied. The client must take
    /// a fresh id; whether an earlier copy of this request took effect
    /// before the session expired is unknown, unless it was first sent less
    /// than the shortest session timeout ago.
    #[error(
        "session expired: request {seq} of a client the store no longer knows (idle for longer than the session timeout); take a fresh client id"
    )]
    SessionExpired {
        /// The request's sequence number.
        seq: Seq,
    },
    /// A request older than the client's latest: its result is no longer kept,
    /// and the client has already moved past it.
    #[error("request {seq} is older than the session's latest ({latest})")]
    StaleRequest {
        /// The request's sequence number.
        seq: Seq,
        /// The newest sequence number the session has applied.
        latest: Seq,
    },
}

/// 64-bit FNV-1a: small, and the same everywhere (std's hashers may change
/// between releases; a digest kept in the state machine must not).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
