//! The backup file format, written by `kvctl snapshot save` and read by
//! `kvnode restore`:
//!
//! 1. the line [`MAGIC`];
//! 2. the backup's chunks ([`crate::kv::BackupChunk`]), each
//!    length-delimited (a varint length, then the message), the last one
//!    with `done` set; every chunk names the same index and term;
//! 3. an 8-byte checksum (FNV-1a, little-endian) of everything before it.
//!
//! A reader checks the magic, the checksum and the last chunk before it
//! trusts a byte of it, and reads one chunk at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use consensus::snapshot::{SnapshotItem, SnapshotMeta};
use prost::Message as _;

use crate::kv::BackupChunk;

/// The first bytes of a backup file.
pub const MAGIC: &[u8] = b"raftstore backup 1\n";

/// Why a backup file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a whole backup.
    #[error("{path} is not a valid backup: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// 64-bit FNV-1a, streaming.
#[derive(Clone, Copy, Debug)]
struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Writes a backup to `path`, through a temporary file renamed into place
/// once whole and synced: a backup interrupted leaves no file that looks
/// whole.
#[derive(Debug)]
pub struct BackupWriter {
    path: PathBuf,
    temporary: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    checksum: Checksum,
}

impl BackupWriter {
    /// Starts a backup file at `path` (its temporary beside it).
    pub fn create(path: &Path) -> Result<BackupWriter, BackupError> {
        let temporary = path.with_extension("partial");
        let io = |source| BackupError::Io {
            path: temporary.clone(),
            source,
        };
        let file = std::fs::File::create(&temporary).map_err(io)?;
        let mut writer = BackupWriter {
            path: path.to_path_buf(),
            temporary: temporary.clone(),
            file: std::io::BufWriter::new(file),
            checksum: Checksum::default(),
        };
        writer.write(MAGIC)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.checksum.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|source| BackupError::Io {
                path: self.temporary.clone(),
                source,
            })
    }

    /// Appends a chunk.
    pub fn chunk(&mut self, chunk: &BackupChunk) -> Result<(), BackupError> {
        self.write(&chunk.encode_length_delimited_to_vec())
    }

    /// Ends the file with its checksum, syncs it and moves it into place.
    pub fn finish(mut self) -> Result<(), BackupError> {
        let checksum = self.checksum.0.to_le_bytes();
        let io = |source| BackupError::Io {
            path: self.temporary.clone(),
            source,
        };
        self.file.write_all(&checksum).map_err(io)?;
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.temporary, &self.path).map_err(io)?;
        Ok(())
    }

    /// Gives up: removes the temporary file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

/// A backup file checked whole (magic, checksum, a last chunk), read a
/// chunk at a time.
#[derive(Debug)]
pub struct BackupReader {
    path: PathBuf,
    file: BufReader<std::io::Take<std::fs::File>>,
    /// Where the backup's state machine stands.
    pub snapshot: SnapshotMeta,
    done: bool,
}

impl BackupReader {
    /// Opens and checks `path`.
    pub fn open(path: &Path) -> Result<BackupReader, BackupError> {
        let io = |source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: &str| BackupError::Invalid {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let length = std::fs::metadata(path).map_err(io)?.len();
        if length < (MAGIC.len() + 8) as u64 {
            return Err(invalid("too short"));
        }
        // First pass: the checksum of all but the last 8 bytes.
        let body = length - 8;
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut checksum = Checksum::default();
        let mut reader = BufReader::new((&mut file).take(body));
        loop {
            let buffer = reader.fill_buf().map_err(io)?;
            if buffer.is_empty() {
                break;
            }
            checksum.update(buffer);
            let n = buffer.len();
            reader.consume(n);
        }
        let mut stored = [0u8; 8];
        file.read_exact(&mut stored).map_err(io)?;
        if u64::from_le_bytes(stored) != checksum.0 {
            return Err(invalid(
                "its checksum does not match (damaged or cut short)",
            ));
        }
        // Second pass: chunk by chunk.
        let file = std::fs::File::open(path).map_err(io)?;
        let mut file = BufReader::new(file.take(body));
        let mut magic = vec![0u8; MAGIC.len()];
        file.read_exact(&mut magic).map_err(io)?;
        if magic != MAGIC {
            return Err(invalid("it does not start as a backup does"));
        }
        let mut reader = BackupReader {
            path: path.to_path_buf(),
            file,
            snapshot: SnapshotMeta::default(),
            done: false,
        };
        // The first chunk names the snapshot; it is read again by `next`.
        let first = reader
            .peek_first()?
            .ok_or_else(|| invalid("it holds no chunk"))?;
        reader.snapshot = SnapshotMeta {
            index: first.index,
            term: first.term,
            stamp: consensus::cluster_time::Stamp {
                time: first.time,
                expire_before: first.expire_before,
            },
            // A backup records no configuration: a cluster restored from it
            // starts from the member list it is given.
            membership: Default::default(),
        };
        Ok(reader)
    }

    fn peek_first(&mut self) -> Result<Option<BackupChunk>, BackupError> {
        let file = std::fs::File::open(&self.path).map_err(|source| BackupError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut peek = BackupReader {
            path: self.path.clone(),
            file: BufReader::new(file.take(u64::MAX)),
            snapshot: SnapshotMeta::default(),
            done: false,
        };
        let mut magic = vec![0u8; MAGIC.len()];
        peek.file
            .read_exact(&mut magic)
            .map_err(|source| BackupError::Io {
                path: self.path.clone(),
                source,
            })?;
        peek.read_chunk()
    }

    fn read_chunk(&mut self) -> Result<Option<BackupChunk>, BackupError> {
        let invalid = |reason: String| BackupError::Invalid {
            path: self.path.clone(),
            reason,
        };
        if self.file.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            return Ok(None);
        }
        let mut length: u64 = 0;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8; 1];
            self.file
                .read_exact(&mut byte)
                .map_err(|e| invalid(format!("a chunk's length: {e}")))?;
            length |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut bytes = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX).min(1 << 30)];
        self.file
            .read_exact(&mut bytes)
            .map_err(|e| invalid(format!("a chunk cut short: {e}")))?;
        BackupChunk::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| invalid(format!("a chunk: {e}")))
    }

    /// The next chunk's items; None after the last. Every chunk must name
    /// the backup's snapshot, and the last must say it is the last.
    pub fn next_items(&mut self) -> Result<Option<Vec<SnapshotItem>>, BackupError> {
        let path = self.path.clone();
        let invalid = |reason: &str| BackupError::Invalid {
            path: path.clone(),
            reason: reason.to_string(),
        };
        if self.done {
            return Ok(None);
        }
        let Some(chunk) = self.read_chunk()? else {
            return Err(invalid("it ends before its last chunk"));
        };
        if (chunk.index, chunk.term) != (self.snapshot.index, self.snapshot.term) {
            return Err(invalid("its chunks name different snapshots"));
        }
        self.done = chunk.done;
        let mut items = Vec::with_capacity(chunk.data.len() + chunk.sessions.len());
        for kv in chunk.data {
            items.push(SnapshotItem::Data(kv.key, kv.value));
        }
        for session in chunk.sessions {
            let stored = crate::raft::StoredSession::decode(session.session.as_slice())
                .map_err(|e| invalid(&format!("a session: {e}")))?;
            let session_value = consensus::state_machine::Session::try_from(stored)
                .map_err(|e| invalid(&format!("a session: {e}")))?;
            items.push(SnapshotItem::Session(session.client_id, session_value));
        }
        Ok(Some(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{BackupSession, KeyValue};

    fn chunk(index: u64, keys: std::ops::Range<u32>, done: bool) -> BackupChunk {
        BackupChunk {
            index,
            term: 2,
            time: 5_000,
            expire_before: 4_000,
            data: keys
                .map(|k| KeyValue {
                    key: format!("k{k}").into_bytes(),
                    value: vec![k as u8; 10],
                })
                .collect(),
            sessions: if done {
                vec![BackupSession {
                    client_id: 7,
                    session: crate::raft::StoredSession::from(&consensus::state_machine::Session {
                        last_seq: 3,
                        last_result: consensus::CommandResult::Written,
                        command_digest: 9,
                        last_active: 1_234,
                    })
                    .encode_to_vec(),
                }]
            } else {
                vec![]
            },
            done,
        }
    }

    #[test]
    fn a_backup_reads_back_whole_and_a_damaged_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("backup-format-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("b.snap");
        let mut writer = BackupWriter::create(&path).expect("create");
        writer.chunk(&chunk(40, 0..100, false)).expect("chunk");
        writer.chunk(&chunk(40, 100..150, true)).expect("chunk");
        writer.finish().expect("finish");
        assert!(!path.with_extension("partial").exists());

        let mut reader = BackupReader::open(&path).expect("open");
        assert_eq!(reader.snapshot, SnapshotMeta::at(40, 2));
        assert_eq!(reader.snapshot.stamp.time, 5_000);
        assert_eq!(reader.snapshot.stamp.expire_before, 4_000);
        let mut items = Vec::new();
        while let Some(chunk) = reader.next_items().expect("read") {
            items.extend(chunk);
        }
        assert_eq!(items.len(), 151);
        assert!(matches!(items.last(), Some(SnapshotItem::Session(7, s)) if s.last_seq == 3));

        // One byte flipped in the middle, or the file cut short: refused.
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            BackupReader::open(&path),
            Err(BackupError::Invalid { .. })
        ));
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes[..bytes.len() - 20]).expect("write");
        assert!(matches!(
            BackupReader::open(&path),
            Err(BackupError::Invalid { .. })
        ));
        // A whole file whose last chunk is missing: refused as it is read.
        let mut writer = BackupWriter::create(&path).expect("create");
        writer.chunk(&chunk(40, 0..10, false)).expect("chunk");
        writer.finish().expect("finish");
        let mut reader = BackupReader::open(&path).expect("open");
        assert!(reader.next_items().expect("first").is_some());
        assert!(reader.next_items().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
