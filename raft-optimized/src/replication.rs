//! Replication: group commit of proposals (one durable write per batch),
//! AppendEntries sent before the leader's own sync (parallel persist),
//! pipelined to each follower by its flow control (see `progress`), and
//! conflict hints that skip a term at a time.

use consensus::io::{Outbox, ReplyOutcome, Role, Timing};
use consensus::message::{AppendEntriesResponse, Message};
use consensus::{ClientRequest, EntryPayload, LogIndex, NodeId};

use crate::OptimizedRaft;
use crate::progress::ReplicationState;

impl OptimizedRaft {
    pub(crate) fn append_message(
        &self,
        prev_log_index: LogIndex,
        entries: Vec<consensus::Entry>,
        context: u64,
    ) -> Message {
        Message::AppendEntries(self.core.append_request(prev_log_index, entries, context))
    }

    /// Sends what flow control allows to `peer`. Entries leave at once, even
    /// those this leader is still writing (parallel persist).
    pub(crate) fn send_appends(&mut self, peer: NodeId, out: &mut Outbox) {
        let last_index = self.core.log.last_index();
        let Some(p) = self.progress.get(&peer) else {
            return;
        };
        if p.state != ReplicationState::Snapshot && self.core.needs_snapshot(p.next_index) {
            let transfer = self.core.start_transfer(peer, out);
            if let Some(p) = self.progress.get_mut(&peer) {
                p.become_snapshot(transfer);
            }
            return;
        }
        match p.state {
            // Chunks go on answers and timeouts (`on_snapshot_response`,
            // `on_tick`).
            ReplicationState::Snapshot => {}
            ReplicationState::Probe => {
                if p.probe_sent {
                    return;
                }
                let entries = self.core.log.slice(
                    p.next_index,
                    self.config.batch_entries_max,
                    self.config.batch_bytes_max,
                );
                let message = self.append_message(p.next_index - 1, entries, 0);
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.probe_sent = true;
                }
                out.send(peer, message, Timing::Now);
            }
            ReplicationState::Replicate => loop {
                let Some(p) = self.progress.get(&peer) else {
                    return;
                };
                if p.next_index > last_index
                    || self.core.needs_snapshot(p.next_index)
                    || p.inflight.len() >= self.config.inflight_appends_max
                    || p.inflight_bytes >= self.config.inflight_bytes_max
                {
                    return;
                }
                let entries = self.core.log.slice(
                    p.next_index,
                    self.config.batch_entries_max,
                    self.config.batch_bytes_max,
                );
                let last = entries.last().map_or(p.next_index - 1, |e| e.index);
                let bytes: usize = entries.iter().map(|e| e.size_bytes()).sum();
                let message = self.append_message(p.next_index - 1, entries, 0);
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.inflight.push_back((last, bytes));
                    p.inflight_bytes += bytes;
                    p.next_index = last + 1;
                }
                out.send(peer, message, Timing::Now);
            },
        }
    }

    /// Appends buffered commands as one batch: one durable write.
    pub(crate) fn flush_proposals(&mut self, out: &mut Outbox) {
        // While handing leadership over, the log stays as the target has
        // it: an entry appended after TimeoutNow could reach the other
        // voters before the target's vote request, and they would refuse
        // it (its log no longer the most up to date).
        if self.core.role != Role::Leader
            || self.proposals.is_empty()
            || self.transferring_leadership()
        {
            return;
        }
        let mut payloads = Vec::new();
        let mut ids = Vec::new();
        let mut bytes = 0;
        while let Some(request) = self.proposals.front() {
            let size = request.command.size_bytes() + 32;
            if payloads.len() >= self.config.batch_entries_max
                || (!payloads.is_empty() && bytes + size > self.config.batch_bytes_max)
            {
                break;
            }
            let Some(request) = self.proposals.pop_front() else {
                break;
            };
            bytes += size;
            ids.push(request.id);
            payloads.push(EntryPayload::Command(request));
        }
        let last = self.core.append_as_leader(payloads, out);
        let first = last + 1 - ids.len() as LogIndex;
        for (index, id) in (first..=last).zip(ids) {
            self.pending.insert(index, id);
        }
        for peer in self.core.peers() {
            self.send_appends(peer, out);
        }
        self.advance_commit(out);
    }

    pub(crate) fn advance_commit(&mut self, out: &mut Outbox) {
        if self.core.role == Role::Leader
            && let Some(index) = self
                .core
                .quorum_commit(|peer| self.progress.get(&peer).map_or(0, |p| p.match_index))
        {
            self.core.commit_to(index);
        }
        let before = out.apply.len();
        self.core.emit_applies(out);
        self.pending.applying(&out.apply[before..]);
        if self.core.role == Role::Leader
            && self.core.commit_index >= self.term_start_index
            && !self.unrounded_reads.is_empty()
        {
            self.route_reads(out);
        }
    }

    /// Where to resume after a rejection: past the leader's last entry of the
    /// follower's conflicting term if it has that term, else the follower's
    /// hint (section 5.3).
    pub(crate) fn next_after_conflict(&self, m: &AppendEntriesResponse) -> LogIndex {
        if m.conflict_term != 0 {
            let mut index = m.conflict_index.min(self.core.log.last_index());
            let mut last_of_term = None;
            // Scan forward from the hint over the leader's entries of that term.
            while self.core.log.term(index) == Some(m.conflict_term) {
                last_of_term = Some(index);
                index += 1;
            }
            if let Some(last) = last_of_term {
                return last + 1;
            }
        }
        m.conflict_index.max(1)
    }

    /// Queues a command for the log (leader only; others answer "not
    /// leader"). Group commit: while the leader's last log write is syncing,
    /// commands gather for the next one; a full batch goes at once.
    ///
    /// Returns whether the command was accepted: false when this node does
    /// not lead or its queue is full, and the request was answered so.
    pub fn propose(&mut self, request: ClientRequest, out: &mut Outbox) -> bool {
        if self.refused_unless_leader(&request, out) {
            return false;
        }
        if self.proposals.len() >= self.config.proposals_queued_max {
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return false;
        }
        self.proposals.push_back(request);
        if !self.log_write_in_flight() || self.proposals.len() >= self.config.batch_entries_max {
            self.flush_proposals(out);
        }
        true
    }

    /// Appends every queued command to the log now, without waiting for the
    /// write in flight (a layer above needs their indexes).
    pub fn flush_now(&mut self, out: &mut Outbox) {
        while !self.proposals.is_empty()
            && self.core.role == Role::Leader
            && !self.transferring_leadership()
        {
            self.flush_proposals(out);
        }
    }

    /// True while the leader's latest log write is not yet durable.
    pub(crate) fn log_write_in_flight(&self) -> bool {
        self.core.durable_index < self.core.log.last_index()
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        m: AppendEntriesResponse,
        out: &mut Outbox,
    ) {
        if self.core.role != Role::Leader || m.term != self.core.term {
            return;
        }
        let now = self.now_ticks;
        let next_round = self.next_round;
        let last_index = self.core.log.last_index();
        let conflict_next = (!m.success).then(|| self.next_after_conflict(&m));
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.active = true;
        // Only a round this leader has sent can be answered: a round number
        // from elsewhere (an older term's, echoed) would otherwise confirm
        // rounds not yet started.
        if m.context < next_round {
            p.acked_round = p.acked_round.max(m.context);
        }
        if p.state == ReplicationState::Snapshot {
            // A heartbeat's answer during a transfer: it confirms the
            // leadership (above); the transfer decides what is sent.
            if m.success && m.match_index > p.match_index {
                p.match_index = m.match_index;
                p.progress_tick = now;
            }
            self.confirm_rounds(out);
            self.advance_commit(out);
            return;
        }
        if m.success {
            if m.match_index > p.match_index {
                p.match_index = m.match_index;
                p.progress_tick = now;
            }
            while p
                .inflight
                .front()
                .is_some_and(|(last, _)| *last <= p.match_index)
            {
                if let Some((_, bytes)) = p.inflight.pop_front() {
                    p.inflight_bytes -= bytes;
                }
            }
            if p.state == ReplicationState::Probe {
                p.state = ReplicationState::Replicate;
                p.probe_sent = false;
                p.next_index = p.match_index + 1;
                p.inflight.clear();
                p.inflight_bytes = 0;
            }
            p.next_index = p.next_index.max(p.match_index + 1);
        } else if let Some(next) = conflict_next {
            // The optimistic stream broke, or a probe missed: probe from the
            // follower's hint.
            p.become_probe(next.min(last_index + 1));
        }
        self.confirm_rounds(out);
        self.advance_commit(out);
        self.send_appends(from, out);
    }
}
