//! The safety invariants checked after every event (at most one leader per
//! term, log matching, leader completeness, one entry applied per index) and
//! the drain check after healing.

use super::*;

/// The invariant checker's memory.
#[derive(Default)]
pub(super) struct Invariants {
    pub(super) leader_of_term: HashMap<Term, NodeId>,
    /// (index, term) -> digest of the log prefix ending there.
    pub(super) prefix_at: HashMap<(LogIndex, Term), u64>,
    /// index -> (term, entry digest, highest term in the cluster when first applied).
    pub(super) applied_at: BTreeMap<LogIndex, (Term, u64, Term)>,
    /// (node, term) pairs already checked for leader completeness.
    pub(super) leaders_checked: HashSet<(NodeId, Term)>,
    /// applied index -> (node, digest of the state machine there: data and
    /// sessions), the first seen: every node's state at that index must be
    /// the same.
    pub(super) state_at: HashMap<LogIndex, (NodeId, u64)>,
    /// index -> the configuration entry applied there.
    pub(super) configs_applied: BTreeMap<LogIndex, consensus::Membership>,
}

impl Invariants {
    /// A configuration entry applied for the first time at `index`: it is
    /// the one committed before it (or the initial `nodes` voters) changed
    /// by its one-server change (`consensus::membership`).
    pub(super) fn config_committed(
        &mut self,
        index: LogIndex,
        config: &consensus::types::ConfigEntry,
        nodes: usize,
        stats: &mut RunStats,
    ) -> Option<String> {
        let before = self.configs_applied.range(..index).next_back().map_or_else(
            || consensus::Membership::of_voters(1..=nodes as NodeId),
            |(_, m)| *m,
        );
        let after = config.membership;
        self.configs_applied.insert(index, after);
        stats.membership_changes_applied += 1;
        match config.change {
            consensus::MembershipChange::Promote(_) => stats.promotions_applied += 1,
            consensus::MembershipChange::Remove(_) => stats.removals_applied += 1,
            consensus::MembershipChange::AddLearner(_) => {}
        }
        (before.changed(config.change) != Ok(after)).then(|| {
            format!(
                "configuration committed at {index} ({after}, {}) is not one server away from the one before ({before})",
                config.change
            )
        })
    }
}

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    pub(super) fn max_term(&self) -> Term {
        self.nodes
            .values()
            .map(|n| {
                let live = n.protocol.as_ref().map_or(0, |p| p.status().term);
                live.max(n.storage.hard_state.term)
            })
            .max()
            .unwrap_or(0)
    }

    /// What is left pending anywhere, if anything: every node should run
    /// with the same log, all of it committed and applied, and every
    /// durability log should have drained (ordered and applied, or forwarded
    /// and dropped).
    pub(super) fn pending(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut ends = BTreeSet::new();
        // Nodes outside the configuration in force (spare, or removed) are
        // not expected to follow.
        let membership = self
            .current_leader()
            .and_then(|leader| self.nodes[&leader].protocol.as_ref())
            .map(|p| p.status().membership);
        for (&id, node) in &self.nodes {
            // A lost machine (memory mode) is not expected back.
            if membership.is_some_and(|m| !m.contains(id)) || node.lost {
                continue;
            }
            let Some(protocol) = &node.protocol else {
                problems.push(format!("node {id} is down"));
                continue;
            };
            let status = protocol.status();
            let (last, last_term) = node.storage.last();
            ends.insert((last, last_term));
            if status.last_log_index != last
                || status.commit_index != last
                || status.applied_index != last
            {
                problems.push(format!(
                    "node {id}: log ends at {last} (durable), {} in memory, commit {}, applied {}",
                    status.last_log_index, status.commit_index, status.applied_index
                ));
            }
            if !node.storage.durability_log.is_empty() {
                let ids: Vec<String> = node
                    .storage
                    .durability_log
                    .iter()
                    .take(5)
                    .map(|r| r.request.id.to_string())
                    .collect();
                problems.push(format!(
                    "node {id} still holds {} durability-log records ({}...)",
                    node.storage.durability_log.len(),
                    ids.join(", ")
                ));
            }
        }
        if ends.len() > 1 {
            problems.push(format!("the nodes' logs end differently: {ends:?}"));
        }
        problems
    }

    /// Where catching up stands: per node, its durable log end, commit and
    /// applied index. A quiet period that ends with something pending is
    /// extended while these move (a follower far behind, under the smallest
    /// limits, catches up one entry per round trip). Durability logs that
    /// shrink with no entry ordered do not count: leftover records must
    /// drain within one quiet period (simulator seed 600098640 left them
    /// there, forwarded one at a time).
    pub(super) fn drain_progress(&self) -> Vec<(LogIndex, LogIndex, LogIndex)> {
        self.nodes
            .values()
            .map(|node| {
                let status = node.protocol.as_ref().map(|p| p.status());
                (
                    node.storage.last().0,
                    status.as_ref().map_or(0, |s| s.commit_index),
                    status.as_ref().map_or(0, |s| s.applied_index),
                )
            })
            .collect()
    }

    /// After healing, the clients' last operations and a quiet period (with
    /// its extensions while draining progressed): nothing may be left
    /// pending anywhere.
    pub(super) fn check_drained(&mut self, waited: Time) {
        let problems = self.pending();
        if !problems.is_empty() {
            self.fail(format!(
                "{waited} ms after every client finished, something is left pending: {}",
                problems.join("; ")
            ));
        }
    }

    pub(super) fn check_invariants(&mut self) {
        let mut problems = Vec::new();
        for (&id, node) in &self.nodes {
            let Some(protocol) = &node.protocol else {
                continue;
            };
            let status = protocol.status();
            self.stats.max_term = self.stats.max_term.max(status.term);
            if status.role != Role::Leader {
                continue;
            }
            // A leader is a voter of its configuration, or a node counted
            // as a voter by another's log, elected, which hands leadership
            // to a voter at once (it takes no command meanwhile:
            // RaftCore::note_vote_request).
            if !status.membership.is_voter(id) {
                if !self.invariants.leaders_checked.contains(&(id, status.term)) {
                    self.stats.non_voter_leaders += 1;
                }
                if status.leader_transfer.is_none() {
                    problems.push(format!(
                        "node {id} leads term {} but is not a voter of its configuration ({}), \
                         and hands leadership to none",
                        status.term, status.membership
                    ));
                }
            }
            // Election safety: at most one leader per term.
            match self.invariants.leader_of_term.get(&status.term) {
                Some(&other) if other != id => problems.push(format!(
                    "election safety: nodes {other} and {id} are both leaders of term {}",
                    status.term
                )),
                Some(_) => {}
                None => {
                    self.invariants.leader_of_term.insert(status.term, id);
                }
            }
            // Leader completeness: an entry committed while the highest term
            // was below this leader's term is in this leader's log.
            if self.invariants.leaders_checked.insert((id, status.term)) {
                for (&index, &(term, entry_digest, max_term_then)) in &self.invariants.applied_at {
                    if max_term_then >= status.term {
                        continue;
                    }
                    if index <= node.storage.base.0 {
                        // Compacted: the state holds it (the state checks
                        // compare states at equal applied indexes).
                        continue;
                    }
                    let held = node.storage.entry(index);
                    if held.is_none_or(|e| digest(e) != entry_digest) {
                        problems.push(format!(
                            "leader completeness: leader {id} of term {} lacks committed entry {index} (term {term})",
                            status.term
                        ));
                    }
                }
            }
        }
        for problem in problems {
            self.fail(problem);
        }
    }
}
