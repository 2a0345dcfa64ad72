//! The network: delays, drops, duplicates, reordering, messages over the
//! peer message limit, and partitions.

use super::*;

pub(super) fn kind(message: &Message) -> &'static str {
    match message {
        Message::AppendEntries(m) if m.entries.is_empty() => "heartbeat",
        Message::AppendEntries(_) => "append_entries",
        Message::AppendEntriesResponse(_) => "append_entries_response",
        Message::RequestVote(m) if m.pre_vote => "pre_vote",
        Message::RequestVote(m) if m.transfer => "transfer_vote",
        Message::RequestVote(_) => "request_vote",
        Message::RequestVoteResponse(_) => "request_vote_response",
        Message::DurabilityLogRequest(_) => "durability_log_request",
        Message::DurabilityLogResponse(_) => "durability_log_response",
        Message::DurabilityForward(_) => "durability_forward",
        Message::InstallSnapshot(_) => "install_snapshot",
        Message::InstallSnapshotResponse(_) => "install_snapshot_response",
        Message::TimeoutNow(_) => "timeout_now",
    }
}

/// A snapshot position as the simulator writes it: the number of the item
/// it starts at (8 bytes, big-endian; empty: 0).
pub(super) fn position_of(position: &[u8]) -> u64 {
    position
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or_default()
}

pub(super) fn short(message: &Message) -> String {
    match message {
        Message::AppendEntries(m) => format!(
            "AE t{} prev {}/{} n={} commit {}",
            m.term,
            m.prev_log_index,
            m.prev_log_term,
            m.entries.len(),
            m.leader_commit
        ),
        Message::AppendEntriesResponse(m) => {
            format!(
                "AER t{} ok={} match {} conflict {}",
                m.term, m.success, m.match_index, m.conflict_index
            )
        }
        Message::RequestVote(m) => format!(
            "RV t{} last {}/{} pre={} transfer={}",
            m.term, m.last_log_index, m.last_log_term, m.pre_vote, m.transfer
        ),
        Message::TimeoutNow(m) => format!(
            "TimeoutNow t{} from {} commit {}",
            m.term, m.leader_id, m.leader_commit
        ),
        Message::RequestVoteResponse(m) => format!(
            "RVR t{} granted={} pre={}",
            m.term, m.vote_granted, m.pre_vote
        ),
        Message::DurabilityLogRequest(m) => format!("DLR t{} from {}", m.term, m.from),
        Message::DurabilityLogResponse(m) => format!(
            "DLRR t{} from {} records={} next {} done={}",
            m.term,
            m.from,
            m.records.len(),
            m.next,
            m.done
        ),
        Message::DurabilityForward(m) => format!("DF t{} records={}", m.term, m.records.len()),
        Message::InstallSnapshot(m) => format!(
            "IS t{} snapshot {}/{} at {} items={} done={}",
            m.term,
            m.snapshot.index,
            m.snapshot.term,
            position_of(&m.position),
            m.items.len(),
            m.done
        ),
        Message::InstallSnapshotResponse(m) => format!(
            "ISR t{} snapshot {}/{} next {} rejected={} installed={}",
            m.term,
            m.snapshot.index,
            m.snapshot.term,
            position_of(&m.next),
            m.rejected,
            m.installed
        ),
    }
}

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    /// A client message's delay.
    pub(super) fn net_delay(&mut self) -> Time {
        self.delay_in(self.config.net_delay_ms)
    }

    /// A delay drawn from `(low, high)`, sometimes far longer during the
    /// fault phase.
    pub(super) fn delay_in(&mut self, (low, high): (Time, Time)) -> Time {
        let mut delay = self.rng.range(low, high + 1);
        if !self.healed && self.config.faults.long_delays && self.rng.chance(0.03) {
            delay += self.rng.range(20, 200);
        }
        delay
    }

    pub(super) fn send_message(&mut self, from: NodeId, envelope: Envelope) {
        *self
            .stats
            .messages
            .entry(kind(&envelope.message))
            .or_default() += 1;
        let to = envelope.to;
        if self.cut.contains(&(from, to)) {
            return;
        }
        // kvnode's transport drops a message over the limit by the same
        // rule (and its peers could not decode one).
        if envelope.message.size_bytes() > consensus::limits::PEER_MESSAGE_BYTES_MAX {
            self.stats.oversized_messages += 1;
            self.log(|| format!("{from}->{to} dropped: over the peer message limit"));
            return;
        }
        let faults = self.config.faults;
        if !self.healed && faults.drops && self.rng.chance(0.05) {
            return;
        }
        let copies = if !self.healed && faults.duplicates && self.rng.chance(0.03) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.delay_in(self.config.peer_delay_ms);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: envelope.message.clone(),
                },
            );
        }
    }

    // ----- crashes -----

    /// Cuts `group` from the other nodes, both ways. Each client lands on
    /// one side (cut from the other) or, a third of the time, keeps
    /// reaching every node.
    pub(super) fn isolate(&mut self, group: &BTreeSet<NodeId>) {
        let members = self.members();
        for &a in group {
            for &b in &members {
                if !group.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
        for client in 0..self.clients.len() {
            let side = self.rng.range(0, 3);
            for &node in &members {
                let in_group = group.contains(&node);
                if (side == 0 && in_group) || (side == 1 && !in_group) {
                    self.client_cut.insert((client, node));
                }
            }
        }
    }
}
