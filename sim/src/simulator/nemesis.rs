//! The nemesis: during the fault phase it crashes, restarts, pauses and
//! resumes nodes, partitions the network and restarts clients; then it heals
//! everything.

use consensus::MembershipChange;

use super::*;

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    pub(super) fn pause(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() || node.paused {
            return;
        }
        node.paused = true;
        self.stats.pauses += 1;
        self.log(|| format!("pause node {id}"));
    }

    /// Resumes a paused node: its backlog (messages, requests, disk
    /// completions) arrives in a random order over the next few
    /// milliseconds, as the runtime would take it from its sockets and
    /// queues; its clock owes it every tick it missed.
    pub(super) fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.paused {
            return;
        }
        node.paused = false;
        let mut backlog = std::mem::take(&mut node.backlog);
        node.tick_chain += 1;
        let chain = node.tick_chain;
        let waiting = backlog.len();
        self.log(|| format!("resume node {id}: {waiting} events waited"));
        // A random interleaving: shuffle, then spread over a few ms.
        for i in (1..backlog.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            backlog.swap(i, j);
        }
        for event in backlog {
            let delay = self.rng.range(0, 3);
            self.schedule(delay, event);
        }
        if self.config.runtime_loses_ticks_in_pauses {
            // A periodic timer that missed its ticks: one fires soon, at
            // some point of the backlog, and time counts from there.
            let (now, tick) = (self.now, self.config.tick_ms);
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.clock = TickClock::new(now.saturating_sub(tick), tick);
        }
        let delay = self.rng.range(0, 3);
        self.schedule(delay, Event::Tick { node: id, chain });
    }

    /// Whether node `id`'s machine may be lost: with it, the voters lost
    /// stay a minority of every configuration that may still decide, that
    /// is, of the one in force at every node that runs (an uncommitted
    /// change seen by the leader alone does not count: judged by it, the
    /// loss of a second voter of four once left two live nodes whose logs
    /// lack the change and need three votes, simulator seed 5900031610).
    fn may_lose_machine(&self, id: NodeId) -> bool {
        if self.nodes[&id].lost {
            return false;
        }
        // (A node that knows it was removed decides nothing.)
        let configurations: Vec<consensus::Membership> = self
            .nodes
            .values()
            .filter_map(|node| node.protocol.as_ref().map(|p| p.status()))
            .filter(|status| !status.removed && !status.membership.is_empty())
            .map(|status| status.membership)
            .collect();
        !configurations.is_empty()
            && configurations.iter().all(|membership| {
                // Learners count as voters-to-be: one promoted after its
                // machine was lost (asked just before) would count against
                // the quorum.
                let lost = membership
                    .voters
                    .iter()
                    .chain(membership.learners.iter())
                    .filter(|&m| self.nodes.get(&m).is_some_and(|n| n.lost) || m == id)
                    .count();
                lost <= consensus::quorum::max_failures(membership.voters.len())
            })
    }

    /// The configuration in force at node `id`, if it runs.
    fn membership_at(&self, id: NodeId) -> Option<consensus::Membership> {
        self.nodes[&id]
            .protocol
            .as_ref()
            .map(|p| p.status().membership)
    }

    /// Memory mode: node `id`'s machine is gone, and its unsynced disk with
    /// it. It never comes back under this id (a new node replaces it), or,
    /// with the deliberate bug, comes back at once with an empty disk.
    fn lose_machine(&mut self, id: NodeId) {
        self.stats.machines_lost += 1;
        if self.config.injected_memory_bug == Some(MemoryBug::LostMachineRejoinsEmpty) {
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.storage = Storage::default();
            node.state_machine = StateMachine::default();
            node.kv = MemKv::default();
            node.cache.clear();
            node.undo.clear();
            node.captures.clear();
            self.log(|| {
                format!("node {id}'s machine is lost; it comes back empty (deliberate bug)")
            });
            let down_for = self.rng.range(50, 800);
            self.schedule(down_for, Event::Restart { node: id });
            return;
        }
        self.nodes.get_mut(&id).expect("node exists").lost = true;
        self.log(|| format!("node {id}'s machine is lost (memory mode): it never comes back"));
    }

    // ----- the nemesis -----

    pub(super) fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.protocol.as_ref().map(|p| (id, p.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    pub(super) fn nemesis(&mut self) {
        let faults = self.config.faults;
        let n = self.config.nodes;
        let mut actions: Vec<&'static str> = vec!["heal"];
        if faults.partitions && n > 1 {
            actions.extend(["random-split", "isolate-leader", "minority-majority"]);
        }
        if faults.one_way && n > 1 {
            actions.push("one-way");
        }
        if faults.crashes {
            actions.extend(["crash", "crash-leader"]);
        }
        if faults.pauses {
            actions.extend(["pause", "pause-leader"]);
        }
        if faults.client_restarts {
            actions.push("restart-client");
        }
        if self.config.leader_transfers && n > 1 {
            actions.push("transfer-leader");
        }
        if self.config.membership_changes {
            // As often as six fault kinds together.
            actions.extend(["membership"; 6]);
        }
        if actions.len() == 1 {
            return;
        }
        let action = actions[self.rng.range(0, actions.len() as u64) as usize];
        let members = self.members();
        match action {
            "heal" => {
                self.cut.clear();
                self.client_cut.clear();
            }
            "random-split" => {
                self.cut.clear();
                self.client_cut.clear();
                let size = self.rng.range(1, n as u64) as usize;
                let mut group = BTreeSet::new();
                while group.len() < size {
                    group.insert(members[self.rng.range(0, n as u64) as usize]);
                }
                self.isolate(&group);
                self.stats.partitions += 1;
            }
            "isolate-leader" => {
                self.cut.clear();
                self.client_cut.clear();
                if let Some(leader) = self.current_leader() {
                    self.isolate(&BTreeSet::from([leader]));
                    self.stats.partitions += 1;
                }
            }
            "minority-majority" => {
                self.cut.clear();
                self.client_cut.clear();
                let minority = consensus::quorum::max_failures(n);
                let mut group = BTreeSet::new();
                while group.len() < minority.max(1) {
                    group.insert(members[self.rng.range(0, n as u64) as usize]);
                }
                self.isolate(&group);
                self.stats.partitions += 1;
            }
            "one-way" => {
                let a = members[self.rng.range(0, n as u64) as usize];
                let deaf = self.rng.chance(0.5);
                for &b in &members {
                    if b != a {
                        self.cut.insert(if deaf { (b, a) } else { (a, b) });
                    }
                }
                self.stats.partitions += 1;
            }
            "crash" | "crash-leader" => {
                let target = if action == "crash-leader" {
                    self.current_leader()
                } else {
                    Some(members[self.rng.range(0, n as u64) as usize])
                };
                if let Some(id) = target {
                    let machine_lost = self.config.memory_durability
                        && self.rng.chance(0.3)
                        && self.may_lose_machine(id);
                    self.crash(id);
                    if machine_lost {
                        self.lose_machine(id);
                    } else {
                        let down_for = self.rng.range(50, 800);
                        self.schedule(down_for, Event::Restart { node: id });
                    }
                }
            }
            "restart-client" => self.restart_client(),
            "membership" => self.change_membership(),
            "transfer-leader" => {
                let leader = self.current_leader().filter(|id| !self.nodes[id].paused);
                if let Some(leader) = leader {
                    // Half the time to a member named (perhaps one that is
                    // down or behind, perhaps the leader itself: refused),
                    // else to the most up-to-date follower.
                    let to = self
                        .rng
                        .chance(0.5)
                        .then(|| members[self.rng.range(0, n as u64) as usize]);
                    self.stats.leader_transfers += 1;
                    self.log(|| format!("node {leader} asked to hand leadership to {to:?}"));
                    self.step(leader, Input::TransferLeadership { to });
                }
            }
            "pause" | "pause-leader" => {
                let target = if action == "pause-leader" {
                    self.current_leader()
                } else {
                    Some(members[self.rng.range(0, n as u64) as usize])
                };
                if let Some(id) = target {
                    self.pause(id);
                    let paused_for = self.rng.range(50, 800);
                    self.schedule(paused_for, Event::Resume { node: id });
                }
            }
            _ => unreachable!(),
        }
        let cut = self.cut.len();
        self.log(|| format!("nemesis: {action} ({cut} links cut)"));
    }

    /// Asks the leader for a random one-server change: add a node outside
    /// the configuration as a learner, promote a learner (perhaps not
    /// caught up: refused), remove a learner, or remove a voter other than
    /// the leader while more than three vote.
    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader().filter(|id| !self.nodes[id].paused) else {
            return;
        };
        let Some(membership) = self.membership_at(leader) else {
            return;
        };
        // A kind of change first, then a node for it: promotions are as
        // common as additions, though fewer nodes qualify.
        let outsiders: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|&id| !membership.contains(id) && !self.nodes[&id].lost)
            .collect();
        let learners: Vec<NodeId> = membership.learners.iter().collect();
        // An operator promotes no learner whose machine is gone.
        let promotable: Vec<NodeId> = learners
            .iter()
            .copied()
            .filter(|id| !self.nodes[id].lost)
            .collect();
        // Lost machines (memory mode) are removed first: removing another
        // voter could leave them a majority.
        let lost_voters: Vec<NodeId> = membership
            .voters
            .iter()
            .filter(|id| self.nodes[id].lost)
            .collect();
        let removable: Vec<NodeId> = if membership.voters.len() <= 3 {
            Vec::new()
        } else if !lost_voters.is_empty() {
            lost_voters
        } else {
            membership
                .voters
                .iter()
                .filter(|&id| id != leader)
                .collect()
        };
        let mut kinds: Vec<Vec<MembershipChange>> = vec![
            outsiders
                .iter()
                .map(|&id| MembershipChange::AddLearner(id))
                .collect(),
            promotable
                .iter()
                .map(|&id| MembershipChange::Promote(id))
                .collect(),
            learners
                .iter()
                .chain(&removable)
                .map(|&id| MembershipChange::Remove(id))
                .collect(),
        ];
        kinds.retain(|choices| !choices.is_empty());
        if kinds.is_empty() {
            return;
        }
        let choices = &kinds[self.rng.range(0, kinds.len() as u64) as usize];
        let change = choices[self.rng.range(0, choices.len() as u64) as usize];
        self.stats.membership_changes_asked += 1;
        self.log(|| format!("node {leader} asked to {change} ({membership})"));
        self.step(
            leader,
            Input::ChangeMembership {
                change,
                address: String::new(),
            },
        );
    }

    // ----- clients -----
}
