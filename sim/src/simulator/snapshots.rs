//! Snapshots in the simulator's runtime: captures taken by the policy,
//! chunks read from them, staging and the atomic switch of an install, and
//! the check that nodes at equal applied indexes hold equal states.

use super::*;

/// A capture read for a transfer within this long is kept when a newer
/// snapshot is recorded (kvnode keeps one in use likewise), so a transfer
/// that goes on is not cut short.
const CAPTURE_IN_USE_MS: Time = 1_000;

/// A state machine's contents as a snapshot's items: the data by key, then
/// the sessions by client.
fn items_of(kv: &MemKv, state_machine: &StateMachine, sessions: bool) -> Vec<SnapshotItem> {
    let mut items: Vec<SnapshotItem> = kv
        .data()
        .iter()
        .map(|(k, v)| SnapshotItem::Data(k.clone(), v.clone()))
        .collect();
    if sessions {
        let sessions: BTreeMap<_, _> = state_machine.sessions().iter().collect();
        items.extend(
            sessions
                .into_iter()
                .map(|(&client, session)| SnapshotItem::Session(client, session.clone())),
        );
    }
    items
}

/// A digest of a state machine's contents: data, sessions (their last
/// activity included) and stamp.
fn state_digest(kv: &MemKv, state_machine: &StateMachine) -> u64 {
    let sessions: BTreeMap<_, _> = state_machine.sessions().iter().collect();
    digest(&(kv.data(), sessions, state_machine.stamp()))
}

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    /// After an apply up to `at`: captures the state machine when the
    /// policy says a snapshot is due. The capture is durable (kvnode's
    /// checkpoint flushes the state database): the state cannot roll back
    /// below it in a crash.
    pub(super) fn snapshot_if_due(&mut self, id: NodeId, at: SnapshotMeta) -> Option<u64> {
        let policy = self.config.snapshots;
        let bug = self.config.injected_snapshot_bug;
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.since_snapshot.take_if_due(&policy) {
            return None;
        }
        assert_eq!(node.state_machine.applied_index(), at.index);
        let items = items_of(
            &node.kv,
            &node.state_machine,
            bug != Some(SnapshotBug::CaptureWithoutSessions),
        );
        // Captures older than the recorded snapshot go once a newer one is
        // recorded (`compact_log`), as kvnode's do: the protocol's snapshot
        // always has its capture.
        node.captures.insert(at.index, (at, items));
        if bug != Some(SnapshotBug::CaptureNotDurable) {
            node.undo.clear();
        }
        self.stats.snapshots_taken += 1;
        self.log(|| format!("node {id} takes a snapshot at {}/{}", at.index, at.term));
        Some(policy.keep_entries)
    }

    /// Reads the chunk `request` names from node `id`'s capture and sends
    /// it; nothing when the capture is gone.
    pub(super) fn send_snapshot_chunk(&mut self, id: NodeId, request: ChunkRequest) {
        let chunk_bytes = self.config.snapshots.chunk_bytes;
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.capture_used.insert(request.snapshot.index, now);
        let node = &self.nodes[&id];
        let Some((_, items)) = node
            .captures
            .get(&request.snapshot.index)
            .filter(|(meta, _)| *meta == request.snapshot)
        else {
            let index = request.snapshot.index;
            self.log(|| format!("node {id} no longer holds snapshot {index}: no chunk sent"));
            return;
        };
        let start = (position_of(&request.position) as usize).min(items.len());
        let (mut end, mut bytes) = (start, 0);
        while end < items.len() && (end == start || bytes + items[end].size_bytes() <= chunk_bytes)
        {
            bytes += items[end].size_bytes();
            end += 1;
        }
        let message = consensus::message::InstallSnapshot {
            term: request.term,
            leader_id: request.leader_id,
            snapshot: request.snapshot,
            position: request.position,
            items: items[start..end].to_vec(),
            next: (end as u64).to_be_bytes().to_vec(),
            done: end == items.len(),
        };
        self.send_message(
            id,
            Envelope {
                to: request.to,
                message: Message::InstallSnapshot(message),
                timing: consensus::Timing::Now,
            },
        );
    }

    /// A chunk made durable in node `id`'s staging area.
    pub(super) fn stage_chunk(
        &mut self,
        id: NodeId,
        snapshot: SnapshotMeta,
        first: bool,
        items: Vec<SnapshotItem>,
    ) {
        let storage = &mut self.nodes.get_mut(&id).expect("node exists").storage;
        match &mut storage.staging {
            _ if first => storage.staging = Some((snapshot, items)),
            Some((staged, so_far)) if *staged == snapshot => so_far.extend(items),
            _ => self.fail(format!(
                "node {id} staged a chunk of snapshot {}/{} it had not started",
                snapshot.index, snapshot.term
            )),
        }
    }

    /// The atomic switch to a staged snapshot: the state machine becomes
    /// the snapshot's, the log before it goes.
    pub(super) fn install_snapshot(&mut self, id: NodeId, snapshot: SnapshotMeta) {
        let base_chain = self
            .invariants
            .prefix_at
            .get(&(snapshot.index, snapshot.term))
            .copied();
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some((staged, items)) = node.storage.staging.take() else {
            self.fail(format!(
                "node {id} installed snapshot {} with nothing staged",
                snapshot.index
            ));
            return;
        };
        if staged != snapshot {
            self.fail(format!(
                "node {id} installed snapshot {} but staged {}",
                snapshot.index, staged.index
            ));
            return;
        }
        let mut kv = MemKv::default();
        let mut data = BTreeMap::new();
        let mut sessions = HashMap::new();
        for item in &items {
            match item {
                SnapshotItem::Data(key, value) => {
                    data.insert(key.clone(), Some(value.clone()));
                }
                SnapshotItem::Session(client, session) => {
                    sessions.insert(*client, session.clone());
                }
            }
        }
        kv.commit(&ApplyBatch {
            data,
            ..ApplyBatch::default()
        });
        node.kv = kv;
        if self.config.injected_cache_bug != Some(super::CacheBug::KeptAcrossSnapshotInstall) {
            node.cache.clear();
        }
        node.state_machine = StateMachine::restore(snapshot.index, snapshot.stamp, sessions);
        node.undo.clear();
        node.since_snapshot = SinceSnapshot::default();
        let storage = &mut node.storage;
        match storage.entry(snapshot.index) {
            Some(entry) if entry.term == snapshot.term => {
                storage.compact_through(snapshot.index, snapshot.term);
            }
            _ => {
                // Entries after it stay until the protocol truncates them
                // (in this same write).
                let drop =
                    (snapshot.index.saturating_sub(storage.base.0) as usize).min(storage.log.len());
                storage.log.drain(..drop);
                storage.chain.drain(..drop);
                storage.base = (snapshot.index, snapshot.term);
                storage.base_chain = base_chain.unwrap_or_default();
            }
        }
        storage.snapshot = storage.snapshot.max(snapshot);
        node.captures.insert(snapshot.index, (snapshot, items));
        self.prune_captures(id);
        self.stats.snapshots_installed += 1;
        self.log(|| {
            format!(
                "node {id} installs snapshot {}/{}",
                snapshot.index, snapshot.term
            )
        });
        self.check_state_at(id);
    }

    /// Records the snapshot and drops the log through `through`.
    pub(super) fn compact_log(
        &mut self,
        id: NodeId,
        snapshot: SnapshotMeta,
        through: LogIndex,
        through_term: Term,
    ) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.captures.contains_key(&snapshot.index) {
            self.fail(format!(
                "node {id} recorded snapshot {} it never captured",
                snapshot.index
            ));
            return;
        }
        if through > node.storage.base.0
            && node.storage.entry(through).map(|e| e.term) != Some(through_term)
        {
            self.fail(format!(
                "node {id} compacted through {through} (term {through_term}), which its durable log does not hold"
            ));
            return;
        }
        node.storage.compact_through(through, through_term);
        node.storage.snapshot = node.storage.snapshot.max(snapshot);
        self.prune_captures(id);
    }

    /// Drops the captures older than the recorded snapshot, but those a
    /// transfer read lately.
    fn prune_captures(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("node exists");
        let recorded = node.storage.snapshot.index;
        let used = &node.capture_used;
        node.captures.retain(|index, _| {
            *index >= recorded
                || used
                    .get(index)
                    .is_some_and(|&at| at + CAPTURE_IN_USE_MS >= now)
        });
        let kept: Vec<LogIndex> = node.captures.keys().copied().collect();
        node.capture_used.retain(|index, _| kept.contains(index));
    }

    /// State-machine safety over whole states: nodes at equal applied
    /// indexes hold equal data and sessions (a snapshot that lost
    /// something, or an entry applied twice, shows here).
    pub(super) fn check_state_at(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let index = node.state_machine.applied_index();
        let state = state_digest(&node.kv, &node.state_machine);
        match self.invariants.state_at.get(&index) {
            Some(&(other, seen)) if seen != state => self.fail(format!(
                "state-machine safety: node {id} and node {other} hold different states at applied index {index}"
            )),
            Some(_) => {}
            None => {
                self.invariants.state_at.insert(index, (id, state));
            }
        }
    }
}
