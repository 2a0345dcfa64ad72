//! Storage that knows what was synced: writes become durable after a
//! simulated disk delay, first in, first out; a crash loses every write still
//! waiting for its sync (and may roll the state database back to an earlier
//! apply boundary); a restart rebuilds the protocol from what is durable.

use super::*;

/// Writes waiting for their sync, with what must wait for them.
pub(super) struct PendingPersist {
    pub(super) writes: Vec<Write>,
    pub(super) after: Vec<Envelope>,
    pub(super) replies: Vec<Reply>,
}

/// A node's durable storage: what survives a crash.
#[derive(Default)]
pub(super) struct Storage {
    pub(super) hard_state: HardState,
    /// The log after `base`.
    pub(super) log: Vec<Entry>,
    /// The last entry compacted away: (index, term).
    pub(super) base: (LogIndex, Term),
    /// The latest snapshot recorded.
    pub(super) snapshot: SnapshotMeta,
    pub(super) durability_log: Vec<DurableRecord>,
    /// `chain[i]` digests the log prefix through `log[i]`: equal digests
    /// mean equal prefixes.
    pub(super) chain: Vec<u64>,
    /// The digest of the prefix through `base`.
    pub(super) base_chain: u64,
    /// A snapshot being received: chunks staged so far.
    pub(super) staging: Option<(SnapshotMeta, Vec<SnapshotItem>)>,
}

impl Storage {
    /// The last entry: (index, term), the base's when none follows it.
    pub(super) fn last(&self) -> (LogIndex, Term) {
        self.log.last().map_or(self.base, |e| (e.index, e.term))
    }

    /// The entry at `index`, if held (not compacted, not past the end).
    pub(super) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let position = index.checked_sub(self.base.0 + 1)?;
        self.log.get(position as usize)
    }

    /// Drops the entries through `through` (held, or the base).
    pub(super) fn compact_through(&mut self, through: LogIndex, through_term: Term) {
        if through <= self.base.0 {
            return;
        }
        let drop = ((through - self.base.0) as usize).min(self.log.len());
        self.base_chain = self.chain[drop - 1];
        self.log.drain(..drop);
        self.chain.drain(..drop);
        self.base = (through, through_term);
    }
}

pub(super) fn digest<T: Hash>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What undoes one apply: the state machine before it, and the values its
/// keys held before it (`None`: absent).
pub(super) type Undo = (StateMachine, BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    /// Hands a write job to node `id`'s simulated disk: durable after a
    /// random delay, after every job before it.
    pub(super) fn persist_job(&mut self, id: NodeId, job: PersistJob) {
        let delay = self.rng.range(
            self.config.persist_delay_ms.0,
            self.config.persist_delay_ms.1 + 1,
        );
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.pending.push_back(PendingPersist {
            writes: job.writes,
            after: job.after,
            replies: job.replies,
        });
        let incarnation = node.incarnation;
        self.schedule(
            delay,
            Event::PersistDone {
                node: id,
                incarnation,
            },
        );
    }

    pub(super) fn serve_reads(&mut self, id: NodeId, reads: Vec<ClientRequest>) {
        for request in reads {
            self.stats.reads_outside_log += 1;
            let node = &self.nodes[&id];
            let store = Cached {
                store: &node.kv,
                cache: &node.cache,
            };
            let result = node.state_machine.read(&store, &request.command);
            self.answer(id, request.id, false, Answer::Result(result));
        }
    }

    pub(super) fn persist_done(&mut self, id: NodeId, incarnation: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() || node.incarnation != incarnation {
            return;
        }
        let Some(batch) = node.pending.pop_front() else {
            return;
        };
        self.stats.syncs += 1;
        let mut installed = None;
        for write in batch.writes {
            if let Write::InstallSnapshot { snapshot } = &write {
                installed = Some(*snapshot);
            }
            self.durable_write(id, write);
        }
        for envelope in batch.after {
            self.send_message(id, envelope);
        }
        for r in batch.replies {
            self.protocol_reply(id, r);
        }
        if let Some(snapshot) = installed {
            let sessions = self.nodes[&id].state_machine.latest_seqs();
            self.step(id, Input::SnapshotInstalled { snapshot, sessions });
        }
        let (last_index, last_term) = self.nodes[&id].storage.last();
        self.step(
            id,
            Input::Persisted {
                last_index,
                last_term,
            },
        );
    }

    pub(super) fn durable_write(&mut self, id: NodeId, write: Write) {
        let storage = &mut self.nodes.get_mut(&id).expect("node exists").storage;
        match write {
            Write::HardState(hard_state) => {
                let before = storage.hard_state.term;
                storage.hard_state = hard_state;
                if hard_state.term < before {
                    self.fail(format!(
                        "node {id} persisted term {} after term {before}",
                        hard_state.term
                    ));
                }
            }
            Write::TruncateLog { from } => {
                if from <= storage.base.0 {
                    let base = storage.base.0;
                    self.fail(format!(
                        "node {id} truncated its log from {from}, at or before its compacted base {base}"
                    ));
                    return;
                }
                let keep = (from - storage.base.0 - 1) as usize;
                storage.log.truncate(keep);
                storage.chain.truncate(keep);
            }
            Write::AppendLog(entries) => {
                let mut problems = Vec::new();
                for entry in entries {
                    if entry.index != storage.last().0 + 1 {
                        problems.push(format!(
                            "node {id} appended index {} after {}",
                            entry.index,
                            storage.last().0
                        ));
                        break;
                    }
                    let previous = storage.chain.last().copied().unwrap_or(storage.base_chain);
                    let chain = digest(&(previous, &entry));
                    let key = (entry.index, entry.term);
                    match self.invariants.prefix_at.get(&key) {
                        Some(&seen) if seen != chain => problems.push(format!(
                            "log matching: node {id} holds an entry at index {} term {} whose log prefix differs from another node's",
                            entry.index, entry.term
                        )),
                        Some(_) => {}
                        None => {
                            self.invariants.prefix_at.insert(key, chain);
                        }
                    }
                    storage.chain.push(chain);
                    storage.log.push(entry);
                }
                for problem in problems {
                    self.fail(problem);
                }
            }
            Write::DurabilityAppend(records) => storage.durability_log.extend(records),
            Write::DurabilityRemove(ids) => {
                let ids: HashSet<RequestId> = ids.into_iter().collect();
                storage
                    .durability_log
                    .retain(|r| !ids.contains(&r.request.id));
            }
            Write::DurabilityReplace(records) => storage.durability_log = records,
            Write::CompactLog {
                snapshot,
                through,
                through_term,
            } => self.compact_log(id, snapshot, through, through_term),
            Write::SnapshotChunk {
                snapshot,
                first,
                items,
            } => self.stage_chunk(id, snapshot, first, items),
            Write::InstallSnapshot { snapshot } => self.install_snapshot(id, snapshot),
        }
    }

    pub(super) fn apply(&mut self, id: NodeId, entries: &[Entry]) {
        let max_term = self.max_term();
        let node = self.nodes.get_mut(&id).expect("node exists");
        let mut problems = Vec::new();
        for entry in entries {
            // Applied entries must be durable in this node's own log.
            let stored = node.storage.entry(entry.index);
            if stored != Some(entry) {
                problems.push(format!(
                    "node {id} applied index {} term {} that is not durable in its log",
                    entry.index, entry.term
                ));
            }
            let entry_digest = digest(entry);
            match self.invariants.applied_at.get(&entry.index) {
                Some(&(term, d, _)) if d != entry_digest => problems.push(format!(
                    "state machine safety: node {id} applied index {} term {}, another node applied term {term} there",
                    entry.index, entry.term
                )),
                Some(_) => {}
                None => {
                    self.invariants.applied_at.insert(entry.index, (entry.term, entry_digest, max_term));
                    if let consensus::EntryPayload::Config(config) = &entry.payload {
                        problems.extend(self.invariants.config_committed(
                            entry.index,
                            config,
                            self.config.nodes,
                            &mut self.stats,
                        ));
                    }
                }
            }
        }
        let before = node.state_machine.clone();
        let restamped: Vec<Entry>;
        let to_apply = if self.config.injected_session_bug == Some(SessionBug::ExpireByLocalClock) {
            // The deliberate bug: stamps from this node's own clock.
            let local = self.now / self.config.tick_ms;
            let stamp = Stamp {
                time: local,
                expire_before: local.saturating_sub(self.config.session_timeout_ticks),
            };
            restamped = entries
                .iter()
                .map(|e| Entry { stamp, ..e.clone() })
                .collect();
            &restamped
        } else {
            entries
        };
        let store = Cached {
            store: &node.kv,
            cache: &node.cache,
        };
        let batch = node.state_machine.apply(&store, to_apply);
        node.since_snapshot.applied(entries);
        self.stats.entries_applied += entries.len() as u64;
        if self.config.state_rollback_max > 0 {
            let old_values = batch
                .data
                .keys()
                .map(|key| (key.clone(), node.kv.get(key)))
                .collect();
            if node.undo.len() == self.config.state_rollback_max {
                node.undo.pop_front();
            }
            node.undo.push_back((before, old_values));
        }
        node.kv.commit(&batch);
        // In the same step, as kvnode's storage does.
        if self.config.injected_cache_bug == Some(CacheBug::DeletesNotApplied) {
            let mut changes = batch.data.clone();
            changes.retain(|_, change| change.is_some());
            node.cache.apply(&changes);
        } else {
            node.cache.apply(&batch.data);
        }
        self.stats.sessions_expired += batch.expired.len() as u64;
        self.log(|| {
            let mut line = format!("node {id} applied up to {}", batch.applied_index);
            for (index, request, result) in &batch.results {
                if let CommandResult::Failed(error) = result {
                    let _ = write!(line, "; {index} ({request}) refused: {error}");
                }
            }
            if !batch.expired.is_empty() {
                let _ = write!(line, "; sessions expired: {:?}", batch.expired);
            }
            line
        });
        for problem in problems {
            self.fail(problem);
        }
        self.check_state_at(id);
        // As kvnode's runtime: an applied entry answers only a caller of
        // its own command (a client that reused a number waits for its own).
        for (index, request, result) in batch.results {
            let digest = entries
                .iter()
                .find(|e| e.index == index)
                .and_then(|e| match &e.payload {
                    consensus::EntryPayload::Command(r) => Some(r.command.digest()),
                    consensus::EntryPayload::Noop | consensus::EntryPayload::Config(_) => None,
                });
            let node = self.nodes.get(&id).expect("node exists");
            let waits_for_it = node
                .waiters
                .get(&(request, false))
                .is_some_and(|w| Some(w.3) == digest);
            if waits_for_it {
                self.answer(id, request, false, Answer::Result(result));
            }
        }
    }

    pub(super) fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() {
            return;
        }
        node.protocol = None;
        node.incarnation += 1;
        let lost = node.pending.len();
        node.pending.clear();
        node.waiters.clear();
        node.paused = false;
        node.backlog.clear();
        // The process's memory is gone, its read cache with it (unless the
        // deliberate bug keeps it).
        if self.config.injected_cache_bug != Some(CacheBug::KeptAcrossRestart) {
            node.cache.clear();
        }
        // The state database returns to some earlier apply boundary.
        let undo = std::mem::take(&mut node.undo);
        let lose = self.rng.range(0, undo.len() as u64 + 1) as usize;
        if lose > 0 {
            let node = self.nodes.get_mut(&id).expect("node exists");
            for (state_machine, old_values) in undo.into_iter().rev().take(lose) {
                node.kv.commit(&ApplyBatch {
                    data: old_values,
                    ..ApplyBatch::default()
                });
                node.state_machine = state_machine;
            }
            self.stats.state_rollbacks += 1;
            let applied = node.state_machine.applied_index();
            self.log(|| format!("node {id}'s state database rolls back to index {applied}"));
        }
        self.stats.crashes += 1;
        self.log(|| format!("crash node {id}: {lost} unsynced write batches lost"));
    }

    pub(super) fn restart(&mut self, id: NodeId) {
        let members = self.initial_members(id);
        let seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_some() || node.lost {
            return;
        }
        let recovered = Recovered {
            hard_state: node.storage.hard_state,
            log: node.storage.log.clone(),
            log_base: node.storage.base,
            snapshot: node.storage.snapshot,
            applied_index: node.state_machine.applied_index(),
            durability_log: node.storage.durability_log.clone(),
        };
        node.since_snapshot = SinceSnapshot::default();
        // As kvnode's open: only the recorded snapshot's capture stays.
        let recorded = node.storage.snapshot;
        node.captures.retain(|_, (meta, _)| *meta == recorded);
        let mut protocol = (self.factory)(id, &members, recovered, seed);
        protocol.set_session_timeout(self.config.session_timeout_ticks);
        node.protocol = Some(protocol);
        self.log(|| format!("restart node {id}"));
        self.start_clock(id);
    }

    // ----- pauses -----
}
