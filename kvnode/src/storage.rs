//! Durable storage on RocksDB: two databases per node, as production Raft
//! stores keep them (TiKV's raft and kv engines, etcd's WAL and bbolt).
//!
//! The **raft database** (the data directory itself) holds what the
//! protocol makes durable:
//!
//! | family | key | value |
//! |---|---|---|
//! | `log` | index, 8 bytes big-endian | `raft.Entry` |
//! | `hard_state` | `hs` | `raft.StoredHardState` (term, vote) |
//! | `durability_log` | (Nil-ext) | (Nil-ext durability-log records) |
//! | `meta` | `cluster_id`, `protocol`, `node_id` | the directory's identity |
//!
//! The **state database** (`state/` inside it) holds the state machine:
//!
//! | family | key | value |
//! |---|---|---|
//! | `data` | the user's key | the user's value |
//! | `meta` | `applied_index`, `s/<client>` | applied index, client sessions |
//!
//! [`Storage::persist`] writes what a protocol asked to make durable in one
//! `WriteBatch` with `sync` on: nothing that depends on it leaves the node
//! before it returns. [`Storage::apply`] writes the data changes of applied
//! entries, the new applied index and the changed sessions in one atomic
//! `WriteBatch`, so a crash never applies an entry twice; it is neither
//! synced nor written to a WAL, since the log it came from is durable:
//! the state database's families flush together (atomic flush), a crash
//! returns it to its last flush, the state after some whole apply, and the
//! entries applied since are applied again from the log on restart. (Only
//! durable entries are ever applied, so the state database never gets ahead
//! of the raft database.)
//!
//! Why two databases: RocksDB carries out one write at a time, so in one
//! database an apply waits behind the log write syncing ahead of it; the
//! runtime loop, which applies, stood still for that sync (measured: 230 to
//! 285 us per apply under load, most of it waiting).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use consensus::cache::ReadCache;
use consensus::cluster_time::Stamp;
use consensus::config::Durability;
use consensus::io::{HardState, Recovered, Write};
use consensus::lock;
use consensus::snapshot::{ChunkRequest, SnapshotItem, SnapshotMeta};
use consensus::state_machine::{ApplyBatch, KvRead, Session, StateMachine};
use consensus::{ClientId, DurableRecord, Entry, LogIndex, RequestId, Term, Value};
use prost::Message as _;
use proto::raft;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions,
};

const CF_LOG: &str = "log";
const CF_HARD_STATE: &str = "hard_state";
const CF_DURABILITY_LOG: &str = "durability_log";
const CF_DATA: &str = "data";
const CF_META: &str = "meta";
/// Families of the raft database.
const FAMILIES: [&str; 4] = [CF_LOG, CF_HARD_STATE, CF_DURABILITY_LOG, CF_META];
/// Families of the state database.
const STATE_FAMILIES: [&str; 2] = [CF_DATA, CF_META];
/// Memtable size of each state-database family (RocksDB's default is
/// 64 MiB). Every apply inserts the written keys, a session and the applied
/// index at random places in the memtable's skiplist; in a small memtable
/// each insert searches less memory. Measured with `bench compare
/// --protocols optimized --workloads write --clients 256`: 9 to 17% more
/// writes per second and 12% less CPU per write than with 64 MiB. The raft
/// database keeps the default: its log keys arrive in order, which the
/// skiplist inserts cheaply.
///
/// 1 MiB rather than 4 MiB once client calls shared one stream per
/// connection and the inserts became the largest single cost in a
/// system-wide profile at 64 clients (about 12% of all CPU in the skiplist
/// search and key comparisons): 4 to 6% more writes per second at 64 and
/// 256 clients. The smaller memtables flush more often, so reads meet more
/// level-0 files; [`STATE_BLOOM_BITS_PER_KEY`] keeps those lookups cheap.
const STATE_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Bloom filter bits per key in the state database's tables: a read skips
/// every table file that does not hold its key without reading a block. On
/// `ycsb-c` at 256 clients, reads per second with 1 MiB memtables went from
/// 201k without filters to 221k with them (4 MiB memtables, no filters:
/// 230k).
const STATE_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// WAL the raft database keeps before it flushes the families that hold
/// its oldest file (see `open_db`).
const RAFT_WAL_BYTES_MAX: u64 = 128 << 20;
/// The state database's directory, inside the data directory, until a
/// snapshot is installed (then `state-<index>-<term>`, named by the raft
/// database's `state_dir`).
const STATE_DIR: &str = "state";
/// Where a snapshot being received is staged.
const STAGING_DIR: &str = "staging";
/// Where captures of the state database (RocksDB checkpoints) live, one
/// directory `<index>-<term>` each.
const SNAPSHOTS_DIR: &str = "snapshots";

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_PROTOCOL: &[u8] = b"protocol";
const KEY_NODE_ID: &[u8] = b"node_id";
const KEY_APPLIED_INDEX: &[u8] = b"applied_index";
const KEY_STATE_DIR: &[u8] = b"state_dir";
const KEY_LOG_BASE: &[u8] = b"log_base";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The address book (`crate::members`).
const KEY_ADDRESSES: &[u8] = b"addresses";
/// The state's stamp: its last applied entry's (`consensus::cluster_time`).
const KEY_STAMP: &[u8] = b"stamp";
/// The durability the directory was created with (absent: sync).
const KEY_DURABILITY: &[u8] = b"durability";
const SESSION_PREFIX: &[u8] = b"s/";

/// What a data directory belongs to. Fixed at first start; a node refuses to
/// start on a directory of another cluster, protocol or node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's id.
    pub cluster_id: String,
    /// The protocol the cluster runs.
    pub protocol: String,
    /// This node's id.
    pub node_id: u64,
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused to open the directory (corrupt, locked, unreadable).
    #[error("cannot open data directory {dir}: {source}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// RocksDB's reason.
        source: rocksdb::Error,
    },
    /// Another process has the directory open (RocksDB's lock is held).
    #[error(
        "data directory {dir} is in use by another process (a kvnode on it is running); stop that process, or give this node its own directory"
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory holds files but no kvnode database.
    #[error(
        "{dir} is not a kvnode data directory (it is not empty and holds no database); choose an empty or new directory"
    )]
    NotADataDir {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory belongs to another cluster, protocol or node.
    #[error(
        "data directory {dir} belongs to {field} {found:?}, but this node was started with {field} {expected:?}; use that directory with the matching setting, or start on a new directory"
    )]
    IdentityMismatch {
        /// The directory.
        dir: PathBuf,
        /// Which setting differs.
        field: &'static str,
        /// What the directory holds.
        found: String,
        /// What the node was started with.
        expected: String,
    },
    /// The directory was written by a kvnode that kept the state machine in
    /// the raft database (before `state/`).
    #[error(
        "data directory {dir} was written by an older kvnode (one database, no state/ directory) and cannot be read by this one; start on a new directory"
    )]
    OldLayout {
        /// The directory.
        dir: PathBuf,
    },
    /// A stored record could not be decoded or the log has a gap.
    #[error("data directory is corrupt: {0}")]
    Corrupt(String),
    /// A backup is restored only into a new or empty directory.
    #[error(
        "cannot restore into {dir}: it is not empty (a node's data directory, or other files); restore into a new or empty directory"
    )]
    RestoreTargetInUse {
        /// The directory.
        dir: PathBuf,
    },
    /// A backup could not be restored.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// A RocksDB read or write failed.
    #[error("storage I/O failed: {0}")]
    Io(#[from] rocksdb::Error),
}

/// What a node finds on disk at start.
#[derive(Debug)]
pub struct Loaded {
    /// Hard state, log and applied index, for the protocol.
    pub recovered: Recovered,
    /// The state machine's own state (applied index, stamp, sessions).
    pub state_machine: StateMachine,
}

/// One node's RocksDB databases. Shared by the runtime thread (applies and
/// reads, in the state database), the persist thread (log, hard-state and
/// durability-log writes, in the raft database; snapshot chunks, in the
/// staging database) and the snapshot sender (captures, read-only);
/// RocksDB is safe for concurrent use, and the durable log's ends are
/// behind a mutex.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    db: DB,
    /// The state database; replaced when a snapshot is installed.
    state: RwLock<StateDb>,
    /// The durable log's ends.
    ends: Mutex<LogEnds>,
    synced_writes: AtomicU64,
    /// Position given to the next durability-log record (keeps their order).
    next_record_position: AtomicU64,
    /// A snapshot being received, staged (persist thread only).
    staging: Mutex<Option<(SnapshotMeta, DB)>>,
    /// When a transfer last read each capture: one read lately is kept
    /// when a newer snapshot is recorded.
    captures_in_use: Mutex<HashMap<SnapshotMeta, std::time::Instant>>,
    /// The read cache in front of the state database (`--cache-bytes`;
    /// `consensus::cache`): updated by every apply, cleared when a snapshot
    /// is installed.
    read_cache: ReadCache,
    /// RocksDB's own row cache for the state database
    /// (`--row-cache-bytes`), kept for comparison.
    row_cache: Option<RowCache>,
    /// Whether `write_synced` syncs.
    durability: Durability,
}

/// RocksDB's row cache (its handle has no `Debug`).
struct RowCache(rocksdb::Cache);

impl std::fmt::Debug for RowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowCache")
    }
}

/// How a node keeps its data: durability, and the caches in front of the
/// state database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageOptions {
    /// Whether writes are synced (kept in the data directory: a directory
    /// is opened with the setting it was created with only).
    pub durability: Durability,
    /// The read cache's bytes (0: none).
    pub read_cache_bytes: u64,
    /// RocksDB's row cache's bytes (0: none).
    pub row_cache_bytes: u64,
}

/// A capture read for a transfer within this long is kept when a newer
/// snapshot is recorded, so a transfer that goes on (a large snapshot to a
/// slow follower, while the leader takes newer ones) is not cut short.
const CAPTURE_IN_USE: std::time::Duration = std::time::Duration::from_secs(60);

/// The state database and the name of its directory.
#[derive(Debug)]
struct StateDb {
    db: DB,
    dir_name: String,
}

/// The durable log's ends: the last entry, and the last compacted one.
#[derive(Clone, Copy, Debug, Default)]
struct LogEnds {
    last: (LogIndex, Term),
    base: (LogIndex, Term),
}

fn index_key(index: LogIndex) -> [u8; 8] {
    index.to_be_bytes()
}

/// A durability-log record's key: its request id (client, then sequence).
fn record_key(id: RequestId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.client.to_be_bytes());
    key[8..].copy_from_slice(&id.seq.to_be_bytes());
    key
}

fn session_key(client: ClientId) -> Vec<u8> {
    let mut key = SESSION_PREFIX.to_vec();
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// (index, term) as stored: 16 bytes, big-endian.
fn point_bytes(index: LogIndex, term: Term) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes[8..].copy_from_slice(&term.to_be_bytes());
    bytes
}

fn stamp_bytes(stamp: Stamp) -> [u8; 16] {
    point_bytes(stamp.time, stamp.expire_before)
}

fn stamp_of(bytes: &[u8]) -> Option<Stamp> {
    let (time, expire_before) = point_of(bytes)?;
    Some(Stamp {
        time,
        expire_before,
    })
}

/// A snapshot as the raft database records it: index, term, then its stamp
/// (absent in records written before stamps existed), then its
/// configuration as two id masks, voters and learners (absent in records
/// written before configurations were: the initial member list applies).
fn snapshot_bytes(snapshot: SnapshotMeta) -> Vec<u8> {
    let mut bytes = point_bytes(snapshot.index, snapshot.term).to_vec();
    bytes.extend_from_slice(&stamp_bytes(snapshot.stamp));
    let membership = snapshot.membership;
    bytes.extend_from_slice(&point_bytes(
        membership.voters.bits(),
        membership.learners.bits(),
    ));
    bytes
}

fn snapshot_of(bytes: &[u8]) -> Option<SnapshotMeta> {
    let (index, term) = point_of(bytes)?;
    let stamp = match bytes.get(16..) {
        None | Some([]) => Stamp::default(),
        Some(rest) => stamp_of(rest)?,
    };
    let membership = match bytes.get(32..) {
        None | Some([]) => consensus::Membership::default(),
        Some(rest) => {
            let (voters, learners) = point_of(rest)?;
            consensus::Membership {
                voters: consensus::NodeSet::from_bits(voters),
                learners: consensus::NodeSet::from_bits(learners),
            }
        }
    };
    Some(SnapshotMeta {
        index,
        term,
        stamp,
        membership,
    })
}

fn point_of(bytes: &[u8]) -> Option<(LogIndex, Term)> {
    let index = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let term = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((index, term))
}

/// A capture's directory name.
fn capture_name(snapshot: SnapshotMeta) -> String {
    format!("{:020}-{}", snapshot.index, snapshot.term)
}

fn capture_of(name: &str) -> Option<SnapshotMeta> {
    // The name holds the index and term only: a snapshot's identity.
    let (index, term) = name.split_once('-')?;
    Some(SnapshotMeta::at(index.parse().ok()?, term.parse().ok()?))
}

/// A family of `db`.
fn family<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .expect("every column family is created at open")
}

/// Opens (or creates) a database: the state database's kind (small
/// memtables, bloom filters, atomic flushes) when `state`, else the raft
/// database's (RocksDB's defaults).
fn open_db(
    dir: &Path,
    families: &[&str],
    state: bool,
    row_cache: Option<&rocksdb::Cache>,
) -> Result<DB, StorageError> {
    let mut options = Options::default();
    if let Some(cache) = row_cache {
        options.set_row_cache(cache);
    }
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Fail on corruption found while opening rather than dropping data.
    options.set_paranoid_checks(true);
    // A torn last record (a write a crash cut short, never synced,
    // so never acknowledged) is dropped; damage anywhere before it
    // refuses the open. RocksDB's default (point in time) would
    // instead drop everything after the damage, synced entries and
    // votes included, and start as if they were never written.
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    // Applies skip the WAL (see `apply`): the data and metadata
    // families flush together, so the files on disk always hold the
    // state after some whole apply.
    options.set_atomic_flush(state);
    if !state {
        // The raft database's small families (hard state, metadata, the
        // durability log) fill their memtables rarely, and a WAL file is
        // kept until every family's data in it is flushed: by RocksDB's
        // default (four times the memtables, 1 GiB here) the WAL held most
        // of a 1.8 GB directory after 10 minutes at 19k writes/s. Beyond
        // this much WAL the families holding the oldest file are flushed.
        options.set_max_total_wal_size(RAFT_WAL_BYTES_MAX);
    }
    let families = families.iter().map(|name| {
        let mut family = Options::default();
        if state {
            family.set_write_buffer_size(STATE_WRITE_BUFFER_BYTES);
            let mut tables = rocksdb::BlockBasedOptions::default();
            tables.set_bloom_filter(STATE_BLOOM_BITS_PER_KEY, false);
            family.set_block_based_table_factory(&tables);
        }
        ColumnFamilyDescriptor::new(*name, family)
    });
    DB::open_cf_descriptors(&options, dir, families).map_err(|source| {
        // RocksDB's own words name its LOCK file: "While lock file:
        // .../LOCK: Resource temporarily unavailable" (another
        // process), "lock hold by current process ... /LOCK: No locks
        // available" (this one).
        if source.to_string().contains("/LOCK:") {
            StorageError::InUse {
                dir: dir.to_path_buf(),
            }
        } else {
            StorageError::Open {
                dir: dir.to_path_buf(),
                source,
            }
        }
    })
}

/// Makes a directory's entries (a rename, a new directory) durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::Corrupt(format!("cannot sync directory {}: {e}", dir.display())))
}

/// A RocksDB checkpoint of `db` in `target` (its parent created, an older
/// one there replaced): its memtables flushed, its files hard-linked.
fn checkpoint_into(db: &DB, target: &Path) -> Result<(), StorageError> {
    let io = |e: std::io::Error| StorageError::Corrupt(format!("cannot capture: {e}"));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(io)?;
    }
    rocksdb::checkpoint::Checkpoint::new(db)?.create_checkpoint(target)?;
    Ok(())
}

/// The applied index a state database holds (0: none yet).
fn read_applied_index(db: &DB) -> Result<LogIndex, StorageError> {
    match db.get_cf(family(db, CF_META), KEY_APPLIED_INDEX)? {
        None => Ok(0),
        Some(bytes) => Ok(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
            |_| StorageError::Corrupt("applied index: not 8 bytes".into()),
        )?)),
    }
}

/// The stamp a state database stands at (its last applied entry's).
fn read_stamp(db: &DB) -> Result<Stamp, StorageError> {
    match db.get_cf(family(db, CF_META), KEY_STAMP)? {
        None => Ok(Stamp::default()),
        Some(bytes) => stamp_of(&bytes)
            .ok_or_else(|| StorageError::Corrupt("state stamp: not 16 bytes".into())),
    }
}

/// A client session as a state database stores it: its key (after
/// `SESSION_PREFIX`) and value.
fn decode_session(key: &[u8], value: &[u8]) -> Result<(ClientId, Session), StorageError> {
    let corrupt = |e: &dyn std::fmt::Display| StorageError::Corrupt(format!("session: {e}"));
    let client = u64::from_be_bytes(
        key[SESSION_PREFIX.len()..]
            .try_into()
            .map_err(|_| corrupt(&"key not 8 bytes"))?,
    );
    let stored = proto::raft::StoredSession::decode(value).map_err(|e| corrupt(&e))?;
    Ok((client, Session::try_from(stored).map_err(|e| corrupt(&e))?))
}

/// The state machine's own state (applied index, stamp and sessions) as a
/// state database holds it.
fn read_state_machine(db: &DB) -> Result<StateMachine, StorageError> {
    let applied_index = read_applied_index(db)?;
    let stamp = read_stamp(db)?;
    let mut sessions = HashMap::new();
    for item in db.prefix_iterator_cf(family(db, CF_META), SESSION_PREFIX) {
        let (key, value) = item?;
        if !key.starts_with(SESSION_PREFIX) {
            break;
        }
        let (client, session) = decode_session(&key, &value)?;
        sessions.insert(client, session);
    }
    Ok(StateMachine::restore(applied_index, stamp, sessions))
}

impl Storage {
    /// True when `dir` holds a kvnode database (not a new or empty
    /// directory).
    pub fn holds_database(dir: &Path) -> bool {
        dir.join("CURRENT").is_file()
    }

    /// Opens (or creates) the database in `dir` and checks it belongs to
    /// `identity`.
    pub fn open(dir: &Path, identity: &Identity) -> Result<(Storage, Loaded), StorageError> {
        Storage::open_with(dir, identity, StorageOptions::default())
    }

    /// As [`Storage::open`], with `options`: durability, and the caches in
    /// front of the state database.
    pub fn open_with(
        dir: &Path,
        identity: &Identity,
        options: StorageOptions,
    ) -> Result<(Storage, Loaded), StorageError> {
        let exists = Storage::holds_database(dir);
        if !exists
            && dir.is_dir()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(StorageError::NotADataDir {
                dir: dir.to_path_buf(),
            });
        }
        if exists
            && DB::list_cf(&Options::default(), dir)
                .is_ok_and(|families| families.iter().any(|f| f == CF_DATA))
        {
            return Err(StorageError::OldLayout {
                dir: dir.to_path_buf(),
            });
        }
        let db = open_db(dir, &FAMILIES, false, None)?;
        let state_dir = match db.get_cf(family(&db, CF_META), KEY_STATE_DIR)? {
            Some(name) => String::from_utf8_lossy(&name).into_owned(),
            None => STATE_DIR.to_string(),
        };
        let row_cache = (options.row_cache_bytes > 0).then(|| {
            RowCache(rocksdb::Cache::new_lru_cache(
                options.row_cache_bytes as usize,
            ))
        });
        let state = open_db(
            &dir.join(&state_dir),
            &STATE_FAMILIES,
            true,
            row_cache.as_ref().map(|c| &c.0),
        )?;
        let mut storage = Storage {
            dir: dir.to_path_buf(),
            db,
            state: RwLock::new(StateDb {
                db: state,
                dir_name: state_dir,
            }),
            ends: Mutex::new(LogEnds::default()),
            synced_writes: AtomicU64::new(0),
            next_record_position: AtomicU64::new(0),
            staging: Mutex::new(None),
            captures_in_use: Mutex::new(HashMap::new()),
            read_cache: ReadCache::new(options.read_cache_bytes),
            row_cache,
            durability: options.durability,
        };
        storage.check_identity(dir, identity, exists)?;
        let loaded = storage.load()?;
        storage.check_durability(dir)?;
        storage.remove_leftovers(loaded.recovered.snapshot)?;
        Ok((storage, loaded))
    }

    /// Removes what an interrupted install or an older state left: the
    /// staging area, state directories other than the current one, and
    /// captures other than the recorded snapshot's.
    fn remove_leftovers(&self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        let current = self.state_db_name();
        let remove = |path: &Path| {
            std::fs::remove_dir_all(path).map_err(|e| {
                StorageError::Corrupt(format!("cannot remove {}: {e}", path.display()))
            })
        };
        for leftover in [STAGING_DIR, "backups"] {
            let path = self.dir.join(leftover);
            if path.exists() {
                remove(&path)?;
            }
        }
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name == STATE_DIR || name.starts_with("state-")) && name != current {
                tracing::info!(dir = %entry.path().display(), "removing an old state database");
                remove(&entry.path())?;
            }
        }
        for capture in self.captures() {
            if capture != snapshot {
                remove(&self.dir.join(SNAPSHOTS_DIR).join(capture_name(capture)))?;
            }
        }
        Ok(())
    }

    /// The captures on disk, oldest first.
    fn captures(&self) -> Vec<SnapshotMeta> {
        let mut captures: Vec<SnapshotMeta> = std::fs::read_dir(self.dir.join(SNAPSHOTS_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| capture_of(&e.file_name().to_string_lossy()))
            .collect();
        captures.sort();
        captures
    }

    /// The directory of the capture of `snapshot`.
    pub fn capture_dir(&self, snapshot: SnapshotMeta) -> PathBuf {
        self.dir.join(SNAPSHOTS_DIR).join(capture_name(snapshot))
    }

    fn state_db_name(&self) -> String {
        self.state_db().dir_name.clone()
    }

    /// The state database (held for reading: an install waits for it).
    fn state_db(&self) -> RwLockReadGuard<'_, StateDb> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// The durability the directory was created with must be this
    /// start's: a directory written without fsync may already have lost
    /// what its node acknowledged, and one written with it was promised
    /// more than memory mode keeps. (Directories older than the setting
    /// were synced.)
    fn check_durability(&self, dir: &Path) -> Result<(), StorageError> {
        let meta = self.cf(CF_META);
        let expected = self.durability.name();
        match self.db.get_cf(meta, KEY_DURABILITY)? {
            None if self.durability == Durability::Sync => Ok(()),
            None if self.last_log().0 == 0 => {
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, KEY_DURABILITY, expected.as_bytes());
                self.write_synced(batch)
            }
            found => {
                let found = found.map_or("sync".to_string(), |f| {
                    String::from_utf8_lossy(&f).into_owned()
                });
                if found == expected {
                    return Ok(());
                }
                Err(StorageError::IdentityMismatch {
                    dir: dir.to_path_buf(),
                    field: "durability (--durability)",
                    found,
                    expected: expected.to_string(),
                })
            }
        }
    }

    fn check_identity(
        &mut self,
        dir: &Path,
        identity: &Identity,
        existed: bool,
    ) -> Result<(), StorageError> {
        let fields: [(&'static str, &[u8], String); 3] = [
            ("cluster id", KEY_CLUSTER_ID, identity.cluster_id.clone()),
            ("protocol", KEY_PROTOCOL, identity.protocol.clone()),
            ("node id", KEY_NODE_ID, identity.node_id.to_string()),
        ];
        let meta = self.cf(CF_META);
        let stored = self.db.get_cf(meta, KEY_CLUSTER_ID)?;
        if stored.is_none() {
            if existed
                && self
                    .db
                    .iterator_cf(self.cf(CF_LOG), IteratorMode::Start)
                    .next()
                    .is_some()
            {
                return Err(StorageError::Corrupt(
                    "the log exists but the cluster identity is missing".into(),
                ));
            }
            let mut batch = WriteBatch::default();
            for (_, key, value) in &fields {
                batch.put_cf(meta, key, value.as_bytes());
            }
            self.write_synced(batch)?;
            return Ok(());
        }
        for (field, key, expected) in fields {
            let found = self.db.get_cf(self.cf(CF_META), key)?.unwrap_or_default();
            let found = String::from_utf8_lossy(&found).into_owned();
            if found != expected {
                return Err(StorageError::IdentityMismatch {
                    dir: dir.to_path_buf(),
                    field,
                    found,
                    expected,
                });
            }
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Loaded, StorageError> {
        let corrupt =
            |what: &str, e: &dyn std::fmt::Display| StorageError::Corrupt(format!("{what}: {e}"));
        let hard_state = match self.db.get_cf(self.cf(CF_HARD_STATE), KEY_HARD_STATE)? {
            None => HardState::default(),
            Some(bytes) => HardState::from(
                proto::raft::StoredHardState::decode(bytes.as_slice())
                    .map_err(|e| corrupt("hard state", &e))?,
            ),
        };
        let point = |key: &[u8]| -> Result<Option<(LogIndex, Term)>, StorageError> {
            match self.db.get_cf(self.cf(CF_META), key)? {
                None => Ok(None),
                Some(bytes) => point_of(&bytes).map(Some).ok_or_else(|| {
                    StorageError::Corrupt("log base or snapshot: not 16 bytes".into())
                }),
            }
        };
        let log_base = point(KEY_LOG_BASE)?.unwrap_or((0, 0));
        let snapshot = match self.db.get_cf(self.cf(CF_META), KEY_SNAPSHOT)? {
            None => SnapshotMeta::default(),
            Some(bytes) => snapshot_of(&bytes)
                .ok_or_else(|| StorageError::Corrupt("snapshot record: malformed".into()))?,
        };
        let mut log: Vec<Entry> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start) {
            let (key, value) = item?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("log key", &"not 8 bytes"))?,
            );
            let entry =
                proto::raft::Entry::decode(value.as_ref()).map_err(|e| corrupt("log entry", &e))?;
            let entry = Entry::try_from(entry).map_err(|e| corrupt("log entry", &e))?;
            let expected = log_base.0 + log.len() as u64 + 1;
            if entry.index != index || index != expected {
                return Err(StorageError::Corrupt(format!(
                    "log entry {index} out of place: expected {expected} (the log starts after {})",
                    log_base.0
                )));
            }
            log.push(entry);
        }
        let last = log.last().map_or(log_base, |e| (e.index, e.term));
        let state_machine = read_state_machine(&self.state_db().db)?;
        let applied_index = state_machine.applied_index();
        if applied_index > last.0 {
            return Err(StorageError::Corrupt(format!(
                "applied index {applied_index} is past the end of the log ({})",
                last.0
            )));
        }
        if applied_index < log_base.0 || applied_index < snapshot.index {
            return Err(StorageError::Corrupt(format!(
                "the state database stands at {applied_index}, before the log's compacted prefix (through {}) and snapshot {}",
                log_base.0, snapshot.index
            )));
        }
        if snapshot.index > 0 && !self.capture_dir(snapshot).is_dir() {
            return Err(StorageError::Corrupt(format!(
                "snapshot {} is recorded but its capture {} is missing",
                snapshot.index,
                self.capture_dir(snapshot).display()
            )));
        }
        let mut records = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DURABILITY_LOG), IteratorMode::Start)
        {
            let (_, value) = item?;
            let stored = proto::raft::StoredDurableRecord::decode(value.as_ref())
                .map_err(|e| corrupt("durability-log record", &e))?;
            let record = stored
                .record
                .ok_or_else(|| StorageError::Corrupt("empty durability-log record".into()))?;
            let record = DurableRecord::try_from(record)
                .map_err(|e| corrupt("durability-log record", &e))?;
            records.push((stored.position, record));
        }
        records.sort_by_key(|(position, _)| *position);
        let next_position = records.last().map_or(0, |(p, _)| p + 1);
        self.next_record_position
            .store(next_position, Ordering::Relaxed);
        *self.ends.get_mut().unwrap_or_else(|e| e.into_inner()) = LogEnds {
            last,
            base: log_base,
        };
        Ok(Loaded {
            recovered: Recovered {
                hard_state,
                log,
                log_base,
                snapshot,
                applied_index,
                durability_log: records.into_iter().map(|(_, r)| r).collect(),
            },
            state_machine,
        })
    }

    /// Writes `batch` durably as the node's durability says: synced, or
    /// (memory) left to the operating system.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(self.durability == Durability::Sync);
        let started = std::time::Instant::now();
        self.db.write_opt(batch, &options)?;
        let metrics = &*crate::metrics::METRICS;
        metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.synced_writes.inc();
        self.synced_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes `writes` durable, in order, in one synced batch. Called from one
    /// thread at a time (the persist thread), in the order of the outboxes.
    /// Returns the snapshot installed, if the writes install one: the
    /// runtime must then switch to it ([`Storage::switch_to_installed`]).
    pub fn persist(&self, writes: &[Write]) -> Result<Option<SnapshotMeta>, StorageError> {
        let mut batch = WriteBatch::default();
        let mut ends = lock(&self.ends);
        let LogEnds {
            last: (mut last_index, mut last_term),
            mut base,
        } = *ends;
        let mut installed = None;
        let mut recorded = None;
        // Terms of entries appended earlier in this same batch (not yet in
        // the database), for a truncation that ends the log among them.
        let mut appended: HashMap<LogIndex, Term> = HashMap::new();
        let (mut appended_bytes, mut records_appended) = (0, 0);
        for write in writes {
            match write {
                Write::HardState(hard_state) => {
                    let bytes = raft::StoredHardState::from(hard_state).encode_to_vec();
                    batch.put_cf(self.cf(CF_HARD_STATE), KEY_HARD_STATE, bytes);
                }
                Write::TruncateLog { from } => {
                    batch.delete_range_cf(self.cf(CF_LOG), index_key(*from), index_key(u64::MAX));
                    if *from <= last_index {
                        last_index = from - 1;
                        last_term = match appended.get(&last_index) {
                            _ if last_index == 0 => 0,
                            _ if last_index == base.0 => base.1,
                            Some(&term) => term,
                            None => self.stored_term(last_index)?,
                        };
                    }
                }
                Write::AppendLog(entries) => {
                    for entry in entries {
                        debug_assert_eq!(entry.index, last_index + 1, "appends are contiguous");
                        let bytes = raft::Entry::from(entry).encode_to_vec();
                        appended_bytes += bytes.len();
                        batch.put_cf(self.cf(CF_LOG), index_key(entry.index), bytes);
                        appended.insert(entry.index, entry.term);
                        (last_index, last_term) = (entry.index, entry.term);
                    }
                }
                Write::DurabilityAppend(records) => {
                    records_appended += records.len();
                    self.put_records(&mut batch, records);
                }
                Write::DurabilityRemove(ids) => {
                    for id in ids {
                        batch.delete_cf(self.cf(CF_DURABILITY_LOG), record_key(*id));
                    }
                }
                Write::DurabilityReplace(records) => {
                    let cf = self.cf(CF_DURABILITY_LOG);
                    batch.delete_range_cf(cf, [0u8; 16], [0xffu8; 16]);
                    batch.delete_cf(cf, [0xffu8; 16]);
                    self.put_records(&mut batch, records);
                }
                Write::CompactLog {
                    snapshot,
                    through,
                    through_term,
                } => {
                    if *through > base.0 {
                        batch.delete_range_cf(
                            self.cf(CF_LOG),
                            index_key(0),
                            index_key(through + 1),
                        );
                        base = (*through, *through_term);
                        batch.put_cf(self.cf(CF_META), KEY_LOG_BASE, point_bytes(base.0, base.1));
                    }
                    batch.put_cf(self.cf(CF_META), KEY_SNAPSHOT, snapshot_bytes(*snapshot));
                    recorded = Some(*snapshot);
                }
                Write::SnapshotChunk {
                    snapshot,
                    first,
                    items,
                } => self.stage_chunk(*snapshot, *first, items)?,
                Write::InstallSnapshot { snapshot } => {
                    let dir_name = self.finish_staging(*snapshot)?;
                    let meta = self.cf(CF_META);
                    batch.put_cf(meta, KEY_STATE_DIR, dir_name.as_bytes());
                    batch.delete_range_cf(
                        self.cf(CF_LOG),
                        index_key(0),
                        index_key(snapshot.index + 1),
                    );
                    base = (snapshot.index, snapshot.term);
                    batch.put_cf(meta, KEY_LOG_BASE, point_bytes(base.0, base.1));
                    batch.put_cf(meta, KEY_SNAPSHOT, snapshot_bytes(*snapshot));
                    if last_index <= snapshot.index {
                        (last_index, last_term) = base;
                    }
                    installed = Some(*snapshot);
                    recorded = Some(*snapshot);
                }
            }
        }
        self.write_synced(batch)?;
        let metrics = &*crate::metrics::METRICS;
        if !appended.is_empty() {
            let entries = appended.len();
            metrics
                .writes_per_sync
                .with_label_values(&["log_entries"])
                .observe(entries as f64);
            metrics
                .log_appended
                .with_label_values(&["entries"])
                .inc_by(entries as u64);
            metrics
                .log_appended
                .with_label_values(&["bytes"])
                .inc_by(appended_bytes as u64);
        }
        if records_appended > 0 {
            metrics
                .writes_per_sync
                .with_label_values(&["durable_records"])
                .observe(records_appended as f64);
        }
        *ends = LogEnds {
            last: (last_index, last_term),
            base,
        };
        drop(ends);
        if let Some(recorded) = recorded {
            self.prune_captures(recorded);
            // A range deletion frees no space until compaction rewrites the
            // files it covers, which leveled compaction reaches late (in a
            // 10-minute run at 19k writes/s the raft database grew to
            // 1.8 GB): the files wholly within the compacted log go now.
            self.db.delete_file_in_range_cf(
                self.cf(CF_LOG),
                index_key(0),
                index_key(base.0 + 1),
            )?;
        }
        if let Some(snapshot) = installed {
            tracing::info!(
                index = snapshot.index,
                term = snapshot.term,
                "installed the snapshot received from the leader (durable)"
            );
        }
        Ok(installed)
    }

    /// Stages a chunk of a snapshot being received (`first`: afresh). The
    /// staging database has no WAL and is not synced: a crash loses it,
    /// and the transfer starts over.
    fn stage_chunk(
        &self,
        snapshot: SnapshotMeta,
        first: bool,
        items: &[SnapshotItem],
    ) -> Result<(), StorageError> {
        let mut staging = lock(&self.staging);
        let path = self.dir.join(STAGING_DIR);
        if first {
            // Close the old staging database before its files go.
            *staging = None;
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(|e| {
                    StorageError::Corrupt(format!("cannot remove {}: {e}", path.display()))
                })?;
            }
            *staging = Some((snapshot, open_db(&path, &STATE_FAMILIES, true, None)?));
        }
        let Some((staged, db)) = staging.as_ref().filter(|(s, _)| *s == snapshot) else {
            return Err(StorageError::Corrupt(format!(
                "a chunk of snapshot {} arrived with none staged (the protocol sends chunks in order)",
                snapshot.index
            )));
        };
        debug_assert_eq!(*staged, snapshot);
        let mut batch = WriteBatch::default();
        for item in items {
            match item {
                SnapshotItem::Data(key, value) => batch.put_cf(family(db, CF_DATA), key, value),
                SnapshotItem::Session(client, session) => batch.put_cf(
                    family(db, CF_META),
                    session_key(*client),
                    raft::StoredSession::from(session).encode_to_vec(),
                ),
            }
        }
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Makes the staged snapshot a state database of its own, durably:
    /// its applied index set, flushed, captured (for sending it on), closed
    /// and renamed to `state-<index>-<term>`. Returns that name; the raft
    /// database's batch then points to it (the atomic switch).
    fn finish_staging(&self, snapshot: SnapshotMeta) -> Result<String, StorageError> {
        let mut staging = lock(&self.staging);
        let Some((staged, db)) = staging.take() else {
            return Err(StorageError::Corrupt(format!(
                "snapshot {} is installed with nothing staged",
                snapshot.index
            )));
        };
        if staged != snapshot {
            return Err(StorageError::Corrupt(format!(
                "snapshot {} is installed but {} is staged",
                snapshot.index, staged.index
            )));
        }
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        db.put_cf_opt(
            family(&db, CF_META),
            KEY_APPLIED_INDEX,
            snapshot.index.to_be_bytes(),
            &options,
        )?;
        db.put_cf_opt(
            family(&db, CF_META),
            KEY_STAMP,
            stamp_bytes(snapshot.stamp),
            &options,
        )?;
        self.capture_db(&db, snapshot)?;
        drop(db);
        let name = format!("state-{}", capture_name(snapshot));
        let target = self.dir.join(&name);
        let io = |e: std::io::Error| {
            StorageError::Corrupt(format!("cannot move the staged snapshot: {e}"))
        };
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io)?;
        }
        std::fs::rename(self.dir.join(STAGING_DIR), &target).map_err(io)?;
        sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Captures `db` at `snapshot` (a RocksDB checkpoint: its memtables
    /// flushed, its files hard-linked, durable), and removes all but the
    /// latest captures.
    fn capture_db(&self, db: &DB, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        checkpoint_into(db, &self.capture_dir(snapshot))?;
        sync_dir(&self.dir.join(SNAPSHOTS_DIR))
    }

    /// Removes the captures older than `recorded`, the snapshot the raft
    /// database now records durably: the protocol's snapshot (the recorded
    /// one or a newer capture) always keeps its capture. A transfer of an
    /// older one starts over with the latest.
    fn prune_captures(&self, recorded: SnapshotMeta) {
        let mut in_use = lock(&self.captures_in_use);
        in_use.retain(|_, at| at.elapsed() < CAPTURE_IN_USE);
        let prunable: Vec<SnapshotMeta> = self
            .captures()
            .into_iter()
            .filter(|c| *c < recorded && !in_use.contains_key(c))
            .collect();
        drop(in_use);
        for old in prunable {
            if let Err(e) = std::fs::remove_dir_all(self.capture_dir(old)) {
                tracing::warn!(snapshot = old.index, "cannot remove an old capture: {e}");
            }
        }
    }

    /// Captures the state database, which stands at `snapshot` (the
    /// runtime just applied up to it): what the node sends to followers
    /// from, and what the log may be compacted behind.
    pub fn capture(&self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        self.capture_db(&self.state_db().db, snapshot)
    }

    /// Captures the state database into a new directory under `backups/`
    /// for a backup: returns it, with the snapshot it holds (the applied
    /// index and its entry's term). The caller removes the directory.
    pub fn capture_for_backup(&self) -> Result<(SnapshotMeta, PathBuf), StorageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let state = self.state_db();
        let index = read_applied_index(&state.db)?;
        let term = self.term_at(index)?;
        let dir = self.dir.join("backups").join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let stamp = read_stamp(&state.db)?;
        checkpoint_into(&state.db, &dir)?;
        // A backup records no configuration (see `proto::backup`).
        let membership = consensus::Membership::default();
        Ok((
            SnapshotMeta {
                index,
                term,
                stamp,
                membership,
            },
            dir,
        ))
    }

    /// The term of the entry at `index`, which the durable log holds or
    /// compacted last.
    fn term_at(&self, index: LogIndex) -> Result<Term, StorageError> {
        let LogEnds { base, .. } = *lock(&self.ends);
        if index == 0 {
            return Ok(0);
        }
        if index == base.0 {
            return Ok(base.1);
        }
        self.stored_term(index)
    }

    /// Writes a new node's data directory from a backup: the raft
    /// database with `identity`, its log compacted through the backup's
    /// snapshot (its term as the node's), the state database holding the
    /// backup's items, and the capture a leader sends followers from.
    /// `dir` must be new or empty.
    pub fn restore(
        dir: &Path,
        identity: &Identity,
        snapshot: SnapshotMeta,
        mut next_chunk: impl FnMut() -> Result<Option<Vec<SnapshotItem>>, String>,
    ) -> Result<(), StorageError> {
        if Storage::holds_database(dir)
            || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(StorageError::RestoreTargetInUse {
                dir: dir.to_path_buf(),
            });
        }
        let (storage, _) = Storage::open(dir, identity)?;
        let mut first = true;
        while let Some(items) = next_chunk().map_err(StorageError::Restore)? {
            storage.stage_chunk(snapshot, first, &items)?;
            first = false;
        }
        if lock(&storage.staging).is_none() {
            storage.stage_chunk(snapshot, true, &[])?;
        }
        let installed = storage.persist(&[
            Write::HardState(HardState {
                term: snapshot.term,
                voted_for: None,
            }),
            Write::InstallSnapshot { snapshot },
        ])?;
        debug_assert_eq!(installed, Some(snapshot));
        storage.switch_to_installed(snapshot)?;
        Ok(())
    }

    /// After [`Storage::persist`] installed `snapshot`: opens its state
    /// database, makes it the node's, removes the old one, and returns the
    /// state machine it holds.
    pub fn switch_to_installed(
        &self,
        snapshot: SnapshotMeta,
    ) -> Result<StateMachine, StorageError> {
        let name = format!("state-{}", capture_name(snapshot));
        let db = open_db(
            &self.dir.join(&name),
            &STATE_FAMILIES,
            true,
            self.row_cache.as_ref().map(|c| &c.0),
        )?;
        let state_machine = read_state_machine(&db)?;
        if state_machine.applied_index() != snapshot.index {
            return Err(StorageError::Corrupt(format!(
                "the installed snapshot {} stands at {}",
                snapshot.index,
                state_machine.applied_index()
            )));
        }
        let old = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *state, StateDb { db, dir_name: name })
        };
        // The data was replaced: nothing cached from before may be served.
        self.read_cache.clear();
        let old_dir = self.dir.join(&old.dir_name);
        drop(old);
        if let Err(e) = std::fs::remove_dir_all(&old_dir) {
            tracing::warn!(dir = %old_dir.display(), "cannot remove the old state database: {e}");
        }
        Ok(state_machine)
    }

    /// The term of the stored entry at `index`.
    fn stored_term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let bytes = self
            .db
            .get_cf(self.cf(CF_LOG), index_key(index))?
            .ok_or_else(|| StorageError::Corrupt(format!("log entry {index} missing")))?;
        let entry = proto::raft::Entry::decode(bytes.as_slice())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(entry.term)
    }

    fn put_records(&self, batch: &mut WriteBatch, records: &[DurableRecord]) {
        for record in records {
            let position = self.next_record_position.fetch_add(1, Ordering::Relaxed);
            let stored = proto::raft::StoredDurableRecord {
                position,
                record: Some(record.into()),
            };
            batch.put_cf(
                self.cf(CF_DURABILITY_LOG),
                record_key(record.request.id),
                stored.encode_to_vec(),
            );
        }
    }

    /// The last entry of the durable log: (index, term), (0, 0) when empty.
    pub fn last_log(&self) -> (LogIndex, Term) {
        lock(&self.ends).last
    }

    /// The address book as last saved (`crate::members`), empty if none.
    pub fn addresses(&self) -> Result<String, StorageError> {
        let bytes = self.db.get_cf(self.cf(CF_META), KEY_ADDRESSES)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    }

    /// Saves the address book, synced.
    pub fn save_addresses(&self, book: &str) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_ADDRESSES, book.as_bytes());
        self.write_synced(batch)
    }

    /// The log's size in storage: RocksDB's estimate of its files and
    /// memtables (0 when RocksDB does not say).
    pub fn log_bytes(&self) -> u64 {
        let cf = self.cf(CF_LOG);
        [
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ]
        .iter()
        .filter_map(|p| self.db.property_int_value_cf(cf, *p).ok().flatten())
        .sum()
    }

    /// The read cache's counts.
    pub fn read_cache_stats(&self) -> consensus::cache::CacheStats {
        self.read_cache.stats()
    }

    /// How many synced batches this node has written since it started.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes.load(Ordering::Relaxed)
    }

    /// Commits the outcome of applying entries atomically: data changes, the
    /// applied index and changed sessions.
    ///
    /// Without the state database's WAL: the log already holds every applied
    /// entry durably, so writing each apply a second time (as a WAL record,
    /// then in a table file) bought nothing a crash needs. A crash now loses
    /// the applies since the last flush, and the node applies them again
    /// from the log; atomic flushes (see `open`) keep what survives a whole
    /// apply's worth, data, applied index and sessions together. A clean
    /// close flushes everything (RocksDB flushes unlogged writes on close).
    /// Measured with `bench compare --protocols optimized --workloads write
    /// --clients 64`: 27.2k writes/s with the WAL, 29.8k without (three
    /// alternating runs each), and 6-8% less CPU per write.
    pub fn apply(&self, applied: &ApplyBatch) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let state = self.state_db();
        let (data, meta) = (family(&state.db, CF_DATA), family(&state.db, CF_META));
        for (key, change) in &applied.data {
            match change {
                Some(value) => batch.put_cf(data, key, value),
                None => batch.delete_cf(data, key),
            }
        }
        for (client, session) in &applied.sessions {
            batch.put_cf(
                meta,
                session_key(*client),
                raft::StoredSession::from(session).encode_to_vec(),
            );
        }
        for client in &applied.expired {
            batch.delete_cf(meta, session_key(*client));
        }
        batch.put_cf(meta, KEY_APPLIED_INDEX, applied.applied_index.to_be_bytes());
        batch.put_cf(meta, KEY_STAMP, stamp_bytes(applied.stamp));
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        state.db.write_opt(batch, &options)?;
        // In the same step, before any other read (reads and applies are
        // the runtime thread's).
        self.read_cache.apply(&applied.data);
        Ok(())
    }
}

/// Reads chunks of captures (for the snapshot sender, and for backups),
/// keeping the capture it read last open (read-only).
#[derive(Default)]
pub struct CaptureReader {
    open: Option<(PathBuf, DB)>,
}

impl std::fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureReader")
            .field("open", &self.open.as_ref().map(|(dir, _)| dir))
            .finish()
    }
}

/// A position in a capture: the phase (0: data, 1: sessions) and the last
/// key sent in it. Later positions compare greater as bytes.
fn position(phase: u8, key: &[u8]) -> Vec<u8> {
    let mut position = Vec::with_capacity(1 + key.len());
    position.push(phase);
    position.extend_from_slice(key);
    position
}

/// A chunk read from a capture.
#[derive(Debug)]
pub struct CaptureChunk {
    /// Its items, in the capture's order.
    pub items: Vec<SnapshotItem>,
    /// Where the next chunk starts.
    pub next: Vec<u8>,
    /// True when nothing is left after it.
    pub done: bool,
}

impl CaptureReader {
    /// The chunk `request` names, of at most `chunk_bytes` of items (at
    /// least one item, if any is left): the data by key, then the sessions
    /// by client. None when this node holds no capture of that snapshot.
    pub fn chunk(
        &mut self,
        storage: &Storage,
        request: &ChunkRequest,
        chunk_bytes: usize,
    ) -> Result<Option<consensus::message::InstallSnapshot>, StorageError> {
        lock(&storage.captures_in_use).insert(request.snapshot, std::time::Instant::now());
        let dir = storage.capture_dir(request.snapshot);
        let Some(chunk) = self.read(&dir, &request.position, chunk_bytes)? else {
            return Ok(None);
        };
        Ok(Some(consensus::message::InstallSnapshot {
            term: request.term,
            leader_id: request.leader_id,
            snapshot: request.snapshot,
            position: request.position.clone(),
            items: chunk.items,
            next: chunk.next,
            done: chunk.done,
        }))
    }

    /// The chunk at `at` of the capture in `dir` (None: no such capture).
    pub fn read(
        &mut self,
        dir: &Path,
        at: &[u8],
        chunk_bytes: usize,
    ) -> Result<Option<CaptureChunk>, StorageError> {
        if self.open.as_ref().map(|(open, _)| open.as_path()) != Some(dir) {
            self.open = None;
            if !dir.is_dir() {
                return Ok(None);
            }
            let db = DB::open_cf_for_read_only(&Options::default(), dir, STATE_FAMILIES, false)?;
            self.open = Some((dir.to_path_buf(), db));
        }
        let Some((_, db)) = &self.open else {
            return Ok(None);
        };
        let (phase, after) = match at.split_first() {
            None => (0, None),
            Some((&phase, key)) => (phase, Some(key)),
        };
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut next = at.to_vec();
        let mut take = |item: SnapshotItem, at: Vec<u8>| -> bool {
            let size = item.size_bytes();
            if !items.is_empty() && bytes + size > chunk_bytes {
                return false;
            }
            bytes += size;
            items.push(item);
            next = at;
            true
        };
        let mut done = true;
        if phase == 0 {
            let data = family(db, CF_DATA);
            let iter = match after {
                Some(key) => {
                    db.iterator_cf(data, IteratorMode::From(key, rocksdb::Direction::Forward))
                }
                None => db.iterator_cf(data, IteratorMode::Start),
            };
            for item in iter {
                let (key, value) = item?;
                if after == Some(&key[..]) {
                    continue;
                }
                if !take(
                    SnapshotItem::Data(key.to_vec(), value.to_vec()),
                    position(0, &key),
                ) {
                    done = false;
                    break;
                }
            }
        }
        if done {
            let meta = family(db, CF_META);
            let from = match after {
                Some(key) if phase == 1 => key.to_vec(),
                _ => SESSION_PREFIX.to_vec(),
            };
            for item in db.iterator_cf(meta, IteratorMode::From(&from, rocksdb::Direction::Forward))
            {
                let (key, value) = item?;
                if !key.starts_with(SESSION_PREFIX) {
                    break;
                }
                if phase == 1 && after == Some(&key[..]) {
                    continue;
                }
                let (client, session) = decode_session(&key, &value)?;
                if !take(SnapshotItem::Session(client, session), position(1, &key)) {
                    done = false;
                    break;
                }
            }
        }
        Ok(Some(CaptureChunk { items, next, done }))
    }
}

impl KvRead for Storage {
    fn get(&self, key: &[u8]) -> Option<Value> {
        self.read_cache.get(key, || {
            // A failed read of local storage cannot be answered correctly,
            // and answering "absent" would be a lie: stop the node.
            let state = self.state_db();
            state
                .db
                .get_cf(family(&state.db, CF_DATA), key)
                .expect("RocksDB read failed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state_machine::StateMachine;
    use consensus::{ClientRequest, Command, EntryPayload, RequestId};

    fn identity() -> Identity {
        Identity {
            cluster_id: "c1".into(),
            protocol: "vanilla".into(),
            node_id: 1,
        }
    }

    fn entry(index: u64, term: u64, seq: u64) -> Entry {
        Entry {
            term,
            index,
            stamp: Default::default(),
            payload: EntryPayload::Command(ClientRequest {
                id: RequestId { client: 5, seq },
                command: Command::Put {
                    key: format!("k{index}").into_bytes(),
                    value: b"v".to_vec(),
                },
            }),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kvnode-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_reopened_database_holds_what_was_persisted_and_applied() {
        let dir = temp_dir("reopen");
        {
            let (storage, loaded) = Storage::open(&dir, &identity()).expect("open");
            assert!(loaded.recovered.log.is_empty());
            storage
                .persist(&[
                    Write::HardState(HardState {
                        term: 2,
                        voted_for: Some(1),
                    }),
                    Write::AppendLog(vec![entry(1, 1, 1), entry(2, 1, 2), entry(3, 2, 3)]),
                ])
                .expect("persist");
            storage
                .persist(&[
                    Write::TruncateLog { from: 3 },
                    Write::AppendLog(vec![entry(3, 2, 4)]),
                ])
                .expect("persist");
            storage
                .persist(&[Write::TruncateLog { from: 2 }])
                .expect("persist");
            assert_eq!(storage.last_log(), (1, 1));
            storage
                .persist(&[Write::AppendLog(vec![entry(2, 2, 5)])])
                .expect("persist");
            let mut sm = StateMachine::default();
            let batch = sm.apply(&storage, &[entry(1, 1, 1)]);
            storage.apply(&batch).expect("apply");
        }
        let (storage, loaded) = Storage::open(&dir, &identity()).expect("reopen");
        assert_eq!(
            loaded.recovered.hard_state,
            HardState {
                term: 2,
                voted_for: Some(1)
            }
        );
        assert_eq!(loaded.recovered.log, vec![entry(1, 1, 1), entry(2, 2, 5)]);
        assert_eq!(loaded.recovered.applied_index, 1);
        assert_eq!(loaded.state_machine.sessions()[&5].last_seq, 1);
        assert_eq!(storage.get(b"k1"), Some(b"v".to_vec()));
        assert_eq!(storage.last_log(), (2, 2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lost_state_database_starts_over_from_the_log() {
        // Applies are not synced: a crash may lose the state database's
        // latest writes (here: all of it). The log is whole, and the state
        // machine starts from an applied index it can replay from.
        let dir = temp_dir("lost-state");
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            storage
                .persist(&[Write::AppendLog(vec![entry(1, 1, 1), entry(2, 1, 2)])])
                .expect("persist");
            let mut sm = StateMachine::default();
            let batch = sm.apply(&storage, &[entry(1, 1, 1), entry(2, 1, 2)]);
            storage.apply(&batch).expect("apply");
            assert_eq!(storage.get(b"k2"), Some(b"v".to_vec()));
        }
        std::fs::remove_dir_all(dir.join(STATE_DIR)).expect("lose the state database");
        let (storage, loaded) = Storage::open(&dir, &identity()).expect("reopen");
        assert_eq!(loaded.recovered.log, vec![entry(1, 1, 1), entry(2, 1, 2)]);
        assert_eq!(loaded.recovered.applied_index, 0);
        assert!(loaded.state_machine.sessions().is_empty());
        assert_eq!(storage.get(b"k1"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Copies a directory tree: what a crash leaves on disk, taken while the
    /// database is open (no flush running, so no file is half written).
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create");
        for item in std::fs::read_dir(from).expect("read dir") {
            let item = item.expect("entry");
            let target = to.join(item.file_name());
            if item.file_type().expect("type").is_dir() {
                copy_tree(&item.path(), &target);
            } else {
                std::fs::copy(item.path(), target).expect("copy");
            }
        }
    }

    /// Issue 14, defect 8: damage in the middle of the WAL (here, one byte
    /// flipped in a crash copy of a live database) refuses the open. With
    /// RocksDB's default recovery mode the open succeeded and the synced
    /// entries after the damage were silently gone.
    #[test]
    fn damage_in_the_middle_of_the_wal_refuses_the_open() {
        let dir = temp_dir("wal");
        let crashed = temp_dir("wal-copy");
        let entry = |index: u64| Entry {
            stamp: Default::default(),
            term: 1,
            index,
            payload: EntryPayload::Command(ClientRequest {
                id: RequestId {
                    client: 9,
                    seq: index,
                },
                command: Command::Put {
                    key: b"k".to_vec(),
                    value: vec![index as u8; 512],
                },
            }),
        };
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            for index in 1..=200 {
                storage
                    .persist(&[Write::AppendLog(vec![entry(index)])])
                    .expect("persist");
            }
            copy_tree(&dir, &crashed);
        }
        // The undamaged copy opens whole.
        {
            let check = temp_dir("wal-check");
            copy_tree(&crashed, &check);
            let (_, loaded) = Storage::open(&check, &identity()).expect("an undamaged copy opens");
            assert_eq!(loaded.recovered.log.len(), 200);
        }
        let wal = std::fs::read_dir(&crashed)
            .expect("read")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("a WAL file");
        let mut bytes = std::fs::read(&wal).expect("read the WAL");
        assert!(bytes.len() > 50_000, "the WAL holds the entries");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&wal, bytes).expect("write the WAL");
        match Storage::open(&crashed, &identity()) {
            Ok((_, loaded)) => panic!(
                "opened a damaged WAL, with {} of 200 entries",
                loaded.recovered.log.len()
            ),
            Err(error) => assert!(
                error.to_string().to_lowercase().contains("corrupt"),
                "{error}"
            ),
        }
    }

    /// Issue 14, defect 10: a second process (here, a second open) on a
    /// directory in use is refused with a clear error.
    #[test]
    fn a_directory_in_use_is_refused_clearly() {
        let dir = temp_dir("in-use");
        let (_first, _) = Storage::open(&dir, &identity()).expect("open");
        let error = Storage::open(&dir, &identity()).expect_err("a second open is refused");
        assert!(matches!(error, StorageError::InUse { .. }), "{error}");
        assert!(error.to_string().contains("in use by another process"));
    }

    #[test]
    fn a_crash_leaves_the_state_of_a_whole_apply_and_the_log_replays_the_rest() {
        // Apply n (entries 2n-1 and 2n) sets `latest` to n and writes a
        // 4 KiB `fill<n>`: the data family fills its memtable and flushes
        // by itself several times, while the metadata family (applied
        // index, session) stays small. Without atomic flushes the data
        // would reach disk ahead of the applied index.
        let dir = temp_dir("crash");
        let crashed = temp_dir("crash-copy");
        let entries = |n: u64| -> Vec<Entry> {
            let put = |index: u64, key: String, value: Vec<u8>| Entry {
                stamp: Default::default(),
                term: 1,
                index,
                payload: EntryPayload::Command(ClientRequest {
                    id: RequestId {
                        client: 9,
                        seq: index,
                    },
                    command: Command::Put {
                        key: key.into_bytes(),
                        value,
                    },
                }),
            };
            vec![
                put(2 * n - 1, "latest".into(), n.to_string().into_bytes()),
                put(2 * n, format!("fill{n}"), vec![n as u8; 4096]),
            ]
        };
        let applies = 700u64;
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            let mut sm = StateMachine::default();
            for n in 1..=applies {
                let entries = entries(n);
                storage
                    .persist(&[Write::AppendLog(entries.clone())])
                    .expect("persist");
                let batch = sm.apply(&storage, &entries);
                storage.apply(&batch).expect("apply");
            }
            let busy = |property: &str| {
                storage
                    .state_db()
                    .db
                    .property_int_value(property)
                    .expect("property")
                    .expect("value")
                    > 0
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while busy("rocksdb.num-running-flushes") || busy("rocksdb.mem-table-flush-pending") {
                assert!(std::time::Instant::now() < deadline, "flushes never end");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            copy_tree(&dir, &crashed);
        }
        let (storage, loaded) = Storage::open(&crashed, &identity()).expect("open the crash copy");
        // The log is whole (synced); the state is that after apply `kept`.
        assert_eq!(loaded.recovered.log.len() as u64, 2 * applies);
        let applied = loaded.recovered.applied_index;
        assert!(applied > 0, "the data family flushed at least once");
        assert!(
            applied < 2 * applies,
            "the applies since the last flush are in no file (else this test shows nothing)"
        );
        assert_eq!(applied % 2, 0, "an apply is kept whole or not at all");
        let kept = applied / 2;
        assert_eq!(storage.get(b"latest"), Some(kept.to_string().into_bytes()));
        assert_eq!(loaded.state_machine.sessions()[&9].last_seq, applied);
        for n in 1..=applies {
            let fill = storage.get(format!("fill{n}").as_bytes());
            assert_eq!(
                fill.is_some(),
                n <= kept,
                "fill{n} with {kept} applies kept"
            );
        }
        // The node applies the rest again from the log, each entry once.
        let mut sm = loaded.state_machine;
        assert_eq!(sm.applied_index(), applied);
        let rest: Vec<Entry> = loaded.recovered.log[applied as usize..].to_vec();
        let batch = sm.apply(&storage, &rest);
        storage.apply(&batch).expect("apply");
        assert_eq!(
            storage.get(b"latest"),
            Some(applies.to_string().into_bytes())
        );
        assert_eq!(
            storage.get(format!("fill{applies}").as_bytes()),
            Some(vec![applies as u8; 4096])
        );
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&crashed);
    }

    #[test]
    fn applies_larger_than_a_memtable_survive_flushes_and_reopen() {
        // 3,000 values of 4 KiB (12 MiB) fill the state database's memtable
        // several times over, so flushed files are read back, not the
        // memtable alone.
        let dir = temp_dir("flushes");
        let value = |round: u8, i: u64| vec![round ^ (i as u8); 4096];
        let command = |i: u64, seq: u64, round: u8| {
            let key = format!("key{i}").into_bytes();
            let command = if round == 2 && i.is_multiple_of(3) {
                Command::Delete { key }
            } else {
                Command::Put {
                    key,
                    value: value(round, i),
                }
            };
            Entry {
                term: 1,
                index: seq,
                stamp: Default::default(),
                payload: EntryPayload::Command(ClientRequest {
                    id: RequestId { client: 9, seq },
                    command,
                }),
            }
        };
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            let mut sm = StateMachine::default();
            let mut seq = 0;
            for round in 1..=2 {
                for chunk in (0..1500u64).collect::<Vec<_>>().chunks(100) {
                    let entries: Vec<Entry> = chunk
                        .iter()
                        .map(|&i| {
                            seq += 1;
                            command(i, seq, round)
                        })
                        .collect();
                    // Only durable entries are applied.
                    storage
                        .persist(&[Write::AppendLog(entries.clone())])
                        .expect("persist");
                    let batch = sm.apply(&storage, &entries);
                    storage.apply(&batch).expect("apply");
                }
            }
            // 12 MiB went into the data family; its memtable never held it
            // all (the memtable was switched and flushed on the way).
            let state = storage.state_db();
            let active = state
                .db
                .property_int_value_cf(
                    family(&state.db, CF_DATA),
                    "rocksdb.cur-size-active-mem-table",
                )
                .expect("property")
                .expect("memtable size");
            assert!(
                active <= 2 * STATE_WRITE_BUFFER_BYTES as u64,
                "active memtable {active} bytes"
            );
        }
        let (storage, loaded) = Storage::open(&dir, &identity()).expect("reopen");
        assert_eq!(loaded.recovered.applied_index, 3000);
        assert_eq!(loaded.state_machine.sessions()[&9].last_seq, 3000);
        for i in 0..1500u64 {
            let expected = (!i.is_multiple_of(3)).then(|| value(2, i));
            assert_eq!(
                storage.get(format!("key{i}").as_bytes()),
                expected,
                "key{i}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn record(seq: u64, term: u64) -> DurableRecord {
        let Entry {
            payload: EntryPayload::Command(request),
            ..
        } = entry(1, term, seq)
        else {
            unreachable!()
        };
        DurableRecord { request, term }
    }

    #[test]
    fn the_durability_log_keeps_its_order_across_restarts() {
        let dir = temp_dir("durability");
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            storage
                .persist(&[Write::DurabilityAppend(vec![
                    record(3, 1),
                    record(1, 1),
                    record(2, 1),
                ])])
                .expect("append");
            storage
                .persist(&[Write::DurabilityRemove(vec![record(1, 1).request.id])])
                .expect("remove");
            storage
                .persist(&[Write::DurabilityAppend(vec![record(9, 2)])])
                .expect("append");
        }
        {
            let (storage, loaded) = Storage::open(&dir, &identity()).expect("reopen");
            assert_eq!(
                loaded.recovered.durability_log,
                vec![record(3, 1), record(2, 1), record(9, 2)]
            );
            storage
                .persist(&[Write::DurabilityReplace(vec![record(9, 5), record(2, 5)])])
                .expect("replace");
            storage
                .persist(&[Write::DurabilityAppend(vec![record(4, 5)])])
                .expect("append");
        }
        let (_, loaded) = Storage::open(&dir, &identity()).expect("reopen");
        assert_eq!(
            loaded.recovered.durability_log,
            vec![record(9, 5), record(2, 5), record(4, 5)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_of_another_cluster_protocol_or_node_is_refused() {
        let dir = temp_dir("identity");
        drop(Storage::open(&dir, &identity()).expect("create"));
        for (field, other) in [
            (
                "cluster id",
                Identity {
                    cluster_id: "c2".into(),
                    ..identity()
                },
            ),
            (
                "protocol",
                Identity {
                    protocol: "nilext".into(),
                    ..identity()
                },
            ),
            (
                "node id",
                Identity {
                    node_id: 2,
                    ..identity()
                },
            ),
        ] {
            match Storage::open(&dir, &other) {
                Err(StorageError::IdentityMismatch { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a {field} mismatch, got {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_or_foreign_directory_is_an_error_not_a_panic() {
        let dir = temp_dir("foreign");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("notes.txt"), "hello").expect("write");
        assert!(matches!(
            Storage::open(&dir, &identity()),
            Err(StorageError::NotADataDir { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);

        let dir = temp_dir("old-layout");
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let families = [CF_LOG, CF_HARD_STATE, CF_DURABILITY_LOG, CF_DATA, CF_META];
            drop(DB::open_cf(&options, &dir, families).expect("an old-layout database"));
        }
        let error = Storage::open(&dir, &identity()).expect_err("must refuse");
        assert!(matches!(error, StorageError::OldLayout { .. }), "{error}");
        assert!(!dir.join(STATE_DIR).exists(), "nothing was added to it");
        let _ = std::fs::remove_dir_all(&dir);

        let dir = temp_dir("corrupt");
        drop(Storage::open(&dir, &identity()).expect("create"));
        std::fs::write(dir.join("CURRENT"), "MANIFEST-999999\n").expect("corrupt");
        let error = Storage::open(&dir, &identity()).expect_err("must refuse");
        assert!(matches!(error, StorageError::Open { .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Persists and applies entries 1..=n (term 1), each a put of `k<i>`.
    fn fill(storage: &Storage, sm: &mut StateMachine, from: u64, to: u64) {
        let entries: Vec<Entry> = (from..=to).map(|i| entry(i, 1, i)).collect();
        storage
            .persist(&[Write::AppendLog(entries.clone())])
            .expect("persist");
        let batch = sm.apply(storage, &entries);
        storage.apply(&batch).expect("apply");
    }

    /// Every chunk of `snapshot` as `storage`'s snapshot sender reads it.
    fn read_all(
        storage: &Storage,
        snapshot: SnapshotMeta,
        chunk_bytes: usize,
    ) -> Vec<Vec<SnapshotItem>> {
        let mut reader = CaptureReader::default();
        let mut chunks = Vec::new();
        let mut position = Vec::new();
        loop {
            let request = ChunkRequest {
                to: 2,
                term: 1,
                leader_id: 1,
                snapshot,
                position: position.clone(),
            };
            let chunk = reader
                .chunk(storage, &request, chunk_bytes)
                .expect("read")
                .expect("captured");
            assert!(
                chunk.next > position || chunk.done,
                "positions move forward"
            );
            chunks.push(chunk.items);
            if chunk.done {
                return chunks;
            }
            position = chunk.next;
        }
    }

    #[test]
    fn a_snapshot_compacts_the_log_and_a_reopen_starts_after_it() {
        let dir = temp_dir("compact");
        let snapshot = SnapshotMeta::at(30, 1);
        {
            let (storage, _) = Storage::open(&dir, &identity()).expect("open");
            let mut sm = StateMachine::default();
            fill(&storage, &mut sm, 1, 30);
            storage.capture(snapshot).expect("capture");
            storage
                .persist(&[Write::CompactLog {
                    snapshot,
                    through: 25,
                    through_term: 1,
                }])
                .expect("compact");
            fill(&storage, &mut sm, 31, 40);
            assert_eq!(storage.last_log(), (40, 1));
        }
        let (storage, loaded) = Storage::open(&dir, &identity()).expect("reopen");
        let recovered = &loaded.recovered;
        assert_eq!(recovered.log_base, (25, 1));
        assert_eq!(recovered.snapshot, snapshot);
        assert_eq!(recovered.log.first().map(|e| e.index), Some(26));
        assert_eq!(recovered.log.len(), 15);
        assert!(recovered.applied_index >= 30);
        assert!(storage.capture_dir(snapshot).is_dir());
        // The capture holds the state at 30: k1..k30 and the session at 30.
        let items: Vec<SnapshotItem> = read_all(&storage, snapshot, 200).concat();
        let keys: Vec<&[u8]> = items
            .iter()
            .filter_map(|item| match item {
                SnapshotItem::Data(key, _) => Some(key.as_slice()),
                SnapshotItem::Session(..) => None,
            })
            .collect();
        assert_eq!(keys.len(), 30);
        assert!(!keys.contains(&&b"k31"[..]));
        let sessions: Vec<(u64, u64)> = items
            .iter()
            .filter_map(|item| match item {
                SnapshotItem::Session(client, session) => Some((*client, session.last_seq)),
                SnapshotItem::Data(..) => None,
            })
            .collect();
        assert_eq!(sessions, vec![(5, 30)]);
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_sent_in_chunks_installs_whole_and_survives_a_reopen() {
        let leader_dir = temp_dir("install-leader");
        let follower_dir = temp_dir("install-follower");
        let snapshot = SnapshotMeta::at(50, 1);
        let (leader, _) = Storage::open(&leader_dir, &identity()).expect("open");
        let mut sm = StateMachine::default();
        fill(&leader, &mut sm, 1, 50);
        leader.capture(snapshot).expect("capture");
        let chunks = read_all(&leader, snapshot, 150);
        assert!(chunks.len() > 5, "several chunks ({})", chunks.len());
        let follower_identity = Identity {
            node_id: 2,
            ..identity()
        };
        {
            let (follower, _) = Storage::open(&follower_dir, &follower_identity).expect("open");
            let mut old = StateMachine::default();
            fill(&follower, &mut old, 1, 3);
            // A crash in the middle of the transfer: the staged chunks
            // change nothing.
            for (i, items) in chunks.iter().take(3).enumerate() {
                follower
                    .persist(&[Write::SnapshotChunk {
                        snapshot,
                        first: i == 0,
                        items: items.clone(),
                    }])
                    .expect("stage");
            }
        }
        {
            let (follower, loaded) =
                Storage::open(&follower_dir, &follower_identity).expect("reopen");
            assert!(
                !follower_dir.join(STAGING_DIR).exists(),
                "the staging area is gone"
            );
            assert_eq!(loaded.recovered.log.len(), 3);
            assert_eq!(follower.get(b"k4"), None);
            for (i, items) in chunks.iter().enumerate() {
                let installed = follower
                    .persist(&[Write::SnapshotChunk {
                        snapshot,
                        first: i == 0,
                        items: items.clone(),
                    }])
                    .expect("stage");
                assert_eq!(installed, None);
            }
            let installed = follower
                .persist(&[
                    Write::InstallSnapshot { snapshot },
                    Write::TruncateLog { from: 51 },
                ])
                .expect("install");
            assert_eq!(installed, Some(snapshot));
            assert_eq!(follower.last_log(), (50, 1));
            let sm = follower.switch_to_installed(snapshot).expect("switch");
            assert_eq!(sm.applied_index(), 50);
            assert_eq!(sm.sessions()[&5].last_seq, 50);
            assert_eq!(follower.get(b"k50"), Some(b"v".to_vec()));
            assert!(follower.capture_dir(snapshot).is_dir(), "it can send it on");
        }
        let (follower, loaded) = Storage::open(&follower_dir, &follower_identity).expect("reopen");
        assert_eq!(loaded.recovered.log_base, (50, 1));
        assert_eq!(loaded.recovered.snapshot, snapshot);
        assert!(loaded.recovered.log.is_empty());
        assert_eq!(loaded.recovered.applied_index, 50);
        assert_eq!(follower.get(b"k17"), Some(b"v".to_vec()));
        assert!(
            !follower_dir.join(STATE_DIR).exists(),
            "the old state database is gone"
        );
        drop(follower);
        drop(leader);
        let _ = std::fs::remove_dir_all(&leader_dir);
        let _ = std::fs::remove_dir_all(&follower_dir);
    }
}
