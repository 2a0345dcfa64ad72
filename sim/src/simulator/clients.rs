//! Clients: random operations with timeouts and retries under the same
//! (client, sequence), Nil-ext's fast path decided by kvclient's own rule,
//! restarts, and the history of invocations and completions they record.

use super::*;

pub(super) struct ClientOp {
    pub(super) history_index: usize,
    pub(super) request: ClientRequest,
    pub(super) attempt: u64,
    pub(super) started: Time,
    /// Fast-path acknowledgements so far, counted by kvclient's rule.
    pub(super) fast_acks: FastAcks,
    /// The first update of its session (numbered 1): retried for half the
    /// session timeout at most, as kvclient does
    /// (`consensus::cluster_time::FIRST_UPDATE_RETRY_MAX`).
    pub(super) first_update: bool,
}

pub(super) struct Client {
    pub(super) id: ClientId,
    pub(super) seq: u64,
    pub(super) leader_guess: NodeId,
    pub(super) current: Option<ClientOp>,
    pub(super) ops_after_heal_left: usize,
    pub(super) last_seen: Option<Vec<u8>>,
    /// Restarted with its id, numbering from 1: its next write puts this
    /// key of its own...
    pub(super) restarted_carelessly: Option<Vec<u8>>,
    /// ... and the operation after reads it back.
    pub(super) read_back: Option<Vec<u8>>,
    /// Numbering its requests again from 1 under an id whose numbers the
    /// sessions have passed, until it takes a fresh id.
    pub(super) reusing_numbers: bool,
    /// An update under this id was answered (the session exists or
    /// existed). Until then, as kvclient: the first update is numbered 1
    /// (a client whose reads, or a first update whose outcome is unknown,
    /// used numbers takes a fresh id for it), and no other update goes
    /// under the id before it is answered.
    pub(super) session_open: bool,
}

/// Pads a value to `bytes` in all: a `#`, then a byte that says how the
/// padding was made, repeated. The unique prefix before `#` stays.
pub(super) fn pad(value: &mut Vec<u8>, bytes: usize) {
    if bytes > value.len() + 1 {
        let fill = (bytes % 251) as u8;
        let extra = bytes - value.len() - 1;
        value.push(b'#');
        value.extend(std::iter::repeat_n(fill, extra));
    }
}

/// A value's unique prefix, after checking its padding is whole: the
/// history compares prefixes (the checker need not copy megabytes), and
/// a padding a node cut short or changed fails the run here.
pub(super) fn unpad(value: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some(hash) = value.iter().position(|&b| b == b'#') else {
        return Ok(value);
    };
    let fill = (value.len() % 251) as u8;
    if value[hash + 1..].iter().any(|&b| b != fill) {
        return Err(format!(
            "a value read back ({} bytes) has a damaged padding",
            value.len()
        ));
    }
    Ok(value[..hash].to_vec())
}

pub(super) fn unpadded_input(input: KvInput) -> KvInput {
    let strip = |v: Vec<u8>| unpad(v.clone()).unwrap_or(v);
    match input {
        KvInput::Put(k, v) => KvInput::Put(k, strip(v)),
        KvInput::MultiPut(pairs) => {
            KvInput::MultiPut(pairs.into_iter().map(|(k, v)| (k, strip(v))).collect())
        }
        KvInput::Cas { key, expected, new } => KvInput::Cas {
            key,
            expected: expected.map(strip),
            new: strip(new),
        },
        other => other,
    }
}

pub(super) fn unpadded_output(output: KvOutput) -> Result<KvOutput, String> {
    let strip_opt = |v: Option<Vec<u8>>| v.map(unpad).transpose();
    Ok(match output {
        KvOutput::Value(v) => KvOutput::Value(strip_opt(v)?),
        KvOutput::Values(values) => KvOutput::Values(
            values
                .into_iter()
                .map(strip_opt)
                .collect::<Result<_, _>>()?,
        ),
        KvOutput::Cas { succeeded, current } => KvOutput::Cas {
            succeeded,
            current: current.map(strip_opt).transpose()?,
        },
        other => other,
    })
}

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    pub(super) fn answer(
        &mut self,
        id: NodeId,
        request: RequestId,
        fast_path: bool,
        answer: Answer,
    ) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some((client, op, attempt, _)) = node.waiters.remove(&(request, fast_path)) else {
            return;
        };
        self.client_send(
            client,
            id,
            Event::ClientReply {
                client,
                op,
                from: id,
                attempt,
                fast: fast_path,
                answer,
            },
        );
    }

    /// The client's operation in progress, if it is `op`.
    pub(super) fn current_op(&self, client: usize, op: usize) -> Option<&ClientOp> {
        self.clients[client]
            .current
            .as_ref()
            .filter(|current| current.history_index == op)
    }

    /// Sends a message between a client and a node, through the network's
    /// faults: lost, duplicated, delayed (so reordered), or cut with a
    /// partition that put the client on the other side.
    pub(super) fn client_send(&mut self, client: usize, node: NodeId, event: Event) {
        let faults = self.config.faults;
        if self.client_cut.contains(&(client, node))
            || (!self.healed && faults.drops && self.rng.chance(0.05))
        {
            return;
        }
        let duplicate = !self.healed && faults.duplicates && self.rng.chance(0.03);
        if duplicate {
            let copy = match &event {
                Event::ClientArrive {
                    node,
                    client,
                    op,
                    attempt,
                    request,
                    fast,
                } => Event::ClientArrive {
                    node: *node,
                    client: *client,
                    op: *op,
                    attempt: *attempt,
                    request: request.clone(),
                    fast: *fast,
                },
                Event::ClientReply {
                    client,
                    op,
                    from,
                    attempt,
                    fast,
                    answer,
                } => Event::ClientReply {
                    client: *client,
                    op: *op,
                    from: *from,
                    attempt: *attempt,
                    fast: *fast,
                    answer: answer.clone(),
                },
                _ => unreachable!("only client messages travel between clients and nodes"),
            };
            let delay = self.net_delay();
            self.schedule(delay, copy);
        }
        let delay = self.net_delay();
        self.schedule(delay, event);
    }

    pub(super) fn next_op(&mut self, client: usize) {
        if self.clients[client].current.is_some() {
            return;
        }
        if self.healed {
            if self.clients[client].ops_after_heal_left == 0 {
                return;
            }
            self.clients[client].ops_after_heal_left -= 1;
        }
        let command = match self.clients[client].restarted_carelessly.take() {
            // The first write of an incarnation that took its id back and
            // numbers its requests from 1 again: a put of a key of its own,
            // read back next (see `restart_client`).
            Some(key) => {
                self.clients[client].read_back = Some(key.clone());
                Command::Put {
                    key,
                    value: format!("{}.restarted", self.clients[client].id).into_bytes(),
                }
            }
            None => match self.clients[client].read_back.take() {
                Some(key) => Command::Get { key },
                None => self.random_command(client),
            },
        };
        let first_update = !command.is_read() && !self.clients[client].session_open;
        if first_update && self.clients[client].seq > 0 {
            self.give_fresh_id(client);
        }
        let c = &mut self.clients[client];
        c.seq += 1;
        let request = ClientRequest {
            id: RequestId {
                client: c.id,
                seq: c.seq,
            },
            command: command.clone(),
        };
        self.history_clock += 1;
        self.history.push(Operation {
            client: c.id,
            call: self.history_clock,
            ret: None,
            input: unpadded_input(to_input(&command)),
            output: None,
        });
        let op = self.history.len() - 1;
        // A replica takes no fast write of a session it does not know yet.
        let fast = self.config.nilext_fast_path
            && !first_update
            && (command.takes_fast_path()
                || (self.config.multi_puts_on_fast_path
                    && matches!(command, Command::MultiPut { .. })));
        c.current = Some(ClientOp {
            history_index: op,
            request: request.clone(),
            attempt: 0,
            started: self.now,
            fast_acks: FastAcks::new(),
            first_update,
        });
        if !fast {
            self.send_attempt(client);
            return;
        }
        // Nil-ext's fast path: to every node at once.
        for node in self.members() {
            let late = self.rng.chance(self.config.fast_copy_delay_chance);
            let event = Event::ClientArrive {
                node,
                client,
                op,
                attempt: 0,
                request: request.clone(),
                fast: true,
            };
            if late {
                // Past the fast-path timeout, so the write takes the slow
                // path while this copy is still on its way.
                let timeout = self.config.fast_path_timeout_ms;
                let delay = self.net_delay() + self.rng.range(timeout, 4 * timeout);
                if !self.client_cut.contains(&(client, node)) {
                    self.schedule(delay, event);
                }
            } else {
                self.client_send(client, node, event);
            }
        }
        let timeout = self.config.fast_path_timeout_ms;
        self.schedule(timeout, Event::ClientFastTimeout { client, op });
    }

    /// A fast-path answer: an acknowledgement counts toward the fast quorum
    /// (even once the slow path has started), by kvclient's own rule; the
    /// result of a write already applied there, or a refusal of a sequence
    /// number below the session's, ends the operation, as kvclient ends it;
    /// anything else is left to the slow path.
    pub(super) fn fast_reply(&mut self, client: usize, op: usize, from: NodeId, answer: Answer) {
        if self.current_op(client, op).is_none() {
            return;
        }
        match answer {
            Answer::Other(ReplyOutcome::DurableAck {
                term,
                from_leader,
                voters,
            }) => {
                let Some(current) = self.clients[client].current.as_mut() else {
                    return;
                };
                if current.fast_acks.add(from, term, from_leader, voters) {
                    self.log(|| format!("client {client} op {op}: fast quorum in term {term}"));
                    self.stats.fast_path_completions += 1;
                    self.complete(client, CommandResult::Written);
                }
            }
            Answer::Result(
                result @ (CommandResult::Written
                | CommandResult::Failed(
                    ExecutionError::StaleRequest { .. } | ExecutionError::RequestIdReused { .. },
                )),
            ) => {
                if result == CommandResult::Written {
                    self.stats.fast_path_applied_answers += 1;
                }
                self.complete(client, result);
            }
            Answer::Other(ReplyOutcome::Rejected(reason)) => {
                self.fail(format!("a valid fast-path write was rejected: {reason}"));
            }
            // No fast quorum this time: the slow path at once, as kvclient.
            Answer::SlowPath if self.current_op(client, op).is_some_and(|o| o.attempt == 0) => {
                self.stats.fast_path_refusals += 1;
                self.log(|| {
                    format!(
                        "client {client} op {op}: refused on the fast path by {from}, slow path"
                    )
                });
                self.send_attempt(client);
            }
            _ => {}
        }
    }

    /// The session timeout in milliseconds of simulated time (`None`:
    /// sessions never expire).
    pub(super) fn session_timeout_ms(&self) -> Option<Time> {
        (self.config.session_timeout_ticks > 0)
            .then(|| self.config.session_timeout_ticks * self.config.tick_ms)
    }

    /// An update refused as session-expired: sent again as the first
    /// update of a fresh session when it was first sent within half the
    /// session timeout (no copy of it can have been applied: one applied
    /// would have kept the session alive for a whole timeout), else
    /// abandoned with an unknown outcome, as kvclient does. True when it
    /// was sent again.
    fn session_expired(&mut self, client: usize) -> bool {
        self.stats.session_expired_refusals += 1;
        self.give_fresh_id(client);
        let window = self.session_timeout_ms().map_or(Time::MAX, |t| t / 2);
        let now = self.now;
        let c = &mut self.clients[client];
        let Some(current) = c.current.as_mut() else {
            return false;
        };
        if now.saturating_sub(current.started) >= window {
            let op = current.history_index;
            c.current = None;
            self.log(|| {
                format!("client {client} op {op}: session expired, outcome unknown; fresh id")
            });
            self.schedule(1, Event::ClientNext { client });
            return false;
        }
        c.seq = 1;
        current.request.id = RequestId {
            client: c.id,
            seq: 1,
        };
        current.first_update = true;
        let (op, id) = (current.history_index, current.request.id);
        self.log(|| format!("client {client} op {op}: session expired; sent again as {id}"));
        self.send_attempt(client);
        true
    }

    pub(super) fn complete(&mut self, client: usize, result: CommandResult) {
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        if op.first_update {
            self.clients[client].session_open = true;
        }
        self.history_clock += 1;
        let output = match unpadded_output(to_output(&result)) {
            Ok(output) => output,
            Err(problem) => {
                self.fail(problem);
                to_output(&result)
            }
        };
        let record = &mut self.history[op.history_index];
        record.ret = Some(self.history_clock);
        record.output = Some(output);
        if let CommandResult::Value(v) = &result {
            self.clients[client].last_seen = v.clone();
        }
        if let CommandResult::Failed(
            ExecutionError::StaleRequest { .. } | ExecutionError::RequestIdReused { .. },
        ) = &result
        {
            // It changed nothing. As kvclient's documentation tells a client
            // whose id was taken back carelessly: take a fresh id.
            self.stats.stale_refusals += 1;
            self.refused_as_stale.insert(op.history_index);
            self.give_fresh_id(client);
        }
        let index = op.history_index;
        self.log(|| {
            format!(
                "client {client} op {index} done: {}",
                show_output(&to_output(&result))
            )
        });
        let think = match self.session_timeout_ms() {
            // Idle long enough for the session to expire, often (while
            // faults last: after them, every client must finish in time).
            Some(timeout)
                if !self.healed
                    && self.config.idle_chance > 0.0
                    && self.rng.chance(self.config.idle_chance) =>
            {
                self.stats.idle_clients += 1;
                let (low, high) = self.config.idle_percent;
                self.rng
                    .range(timeout * low / 100, timeout * high / 100 + 1)
            }
            _ => self.rng.range(0, 10),
        };
        self.schedule(think, Event::ClientNext { client });
    }

    pub(super) fn send_attempt(&mut self, client: usize) {
        let timeout = self.config.client_timeout_ms;
        let c = &mut self.clients[client];
        let current = c.current.as_mut().expect("an operation is in progress");
        current.attempt += 1;
        let (op, attempt, request, node) = (
            current.history_index,
            current.attempt,
            current.request.clone(),
            c.leader_guess,
        );
        self.client_send(
            client,
            node,
            Event::ClientArrive {
                node,
                client,
                op,
                attempt,
                request,
                fast: false,
            },
        );
        self.schedule(
            timeout,
            Event::ClientTimeout {
                client,
                op,
                attempt,
            },
        );
    }

    pub(super) fn client_reply(&mut self, client: usize, op: usize, attempt: u64, answer: Answer) {
        let Some(current) = self.current_op(client, op) else {
            return;
        };
        match answer {
            // Only the latest attempt's: a late answer to an attempt under
            // the id given up must not send the operation again (under yet
            // another id, a second copy that would be applied too).
            Answer::Result(CommandResult::Failed(ExecutionError::SessionExpired { .. })) => {
                if current.attempt == attempt {
                    self.session_expired(client);
                }
            }
            Answer::Result(result) => self.complete(client, result),
            Answer::SlowPath => {
                self.fail("a refusal of the fast path answered an ordered request".into());
            }
            Answer::Other(outcome) => {
                if current.attempt != attempt {
                    return;
                }
                let backoff = match outcome {
                    ReplyOutcome::NotLeader {
                        leader: Some(leader),
                    } => {
                        self.clients[client].leader_guess = leader;
                        self.rng.range(1, 5)
                    }
                    ReplyOutcome::NotLeader { leader: None } | ReplyOutcome::Unavailable => {
                        let guess = self.random_node();
                        self.clients[client].leader_guess = guess;
                        self.rng.range(5, 30)
                    }
                    ReplyOutcome::Rejected(reason) => {
                        self.fail(format!("a valid request was rejected: {reason}"));
                        return;
                    }
                    ReplyOutcome::DurableAck { .. } => {
                        self.fail(
                            "a durability acknowledgement answered an ordered request".into(),
                        );
                        return;
                    }
                };
                // The retry goes out under the same (client, seq).
                self.schedule(
                    backoff,
                    Event::ClientRetry {
                        client,
                        op,
                        attempt,
                    },
                );
            }
        }
    }

    /// A client process restarts. Its operation in progress, if any, is
    /// abandoned (outcome unknown). Half the time it takes a fresh id;
    /// otherwise it takes its id back (a documented kvclient option) and
    /// either goes on from the sequence numbers it used (as a client must)
    /// or numbers its requests from 1 again, as a careless one does: its
    /// first write must then be refused as stale, never acknowledged, and it
    /// takes a fresh id. The careless restart happens only where the nodes
    /// can tell the number is stale: between operations, with every running
    /// node having applied an update of the id numbered 2 or more. (A number
    /// the sessions have not passed yet cannot be told from a new request;
    /// kvclient's documentation forbids reusing one.)
    pub(super) fn restart_client(&mut self) {
        let client = self.rng.range(0, self.clients.len() as u64) as usize;
        self.stats.client_restarts += 1;
        let abandoned = self.clients[client].current.take();
        let roll = self.rng.range(0, 4);
        let id = self.clients[client].id;
        let applied_everywhere = self
            .nodes
            .values()
            .filter(|n| n.protocol.is_some())
            .map(|n| {
                n.state_machine
                    .sessions()
                    .get(&id)
                    .map_or(0, |s| s.last_seq)
            })
            .min()
            .unwrap_or(0);
        let c = &mut self.clients[client];
        c.read_back = None;
        c.restarted_carelessly = None;
        c.leader_guess = 1 + (client % self.config.nodes) as NodeId;
        let kind = if roll < 2 {
            self.give_fresh_id(client);
            "with a fresh id"
        } else if roll == 2 || abandoned.is_some() || applied_everywhere < 2 {
            "with its id, going on from its sequence numbers"
        } else {
            c.seq = 0;
            c.reusing_numbers = true;
            c.restarted_carelessly = Some(format!("restart.{}.{}", c.id, self.now).into_bytes());
            "with its id, numbering its requests from 1 again"
        };
        self.log(|| format!("client {client} restarts {kind}"));
        self.schedule(1, Event::ClientNext { client });
    }

    pub(super) fn give_fresh_id(&mut self, client: usize) {
        self.next_client_id += 1;
        let c = &mut self.clients[client];
        c.id = self.next_client_id;
        c.seq = 0;
        c.reusing_numbers = false;
        c.session_open = false;
    }

    pub(super) fn random_command(&mut self, client: usize) -> Command {
        let keys = self.config.keys as u64;
        let key = |i: u64| format!("k{i}").into_bytes();
        let c = &self.clients[client];
        // A client reusing numbers writes values its earlier requests under
        // the same numbers did not: a command identical to the one the
        // session applied under that number is a retry to the store
        // (answered, not applied again), which no store can tell apart
        // (soak seed 4300078387).
        let again = if c.reusing_numbers { ".again" } else { "" };
        let mut value = format!("{}.{}{again}", c.id, c.seq + 1).into_bytes();
        let last_seen = c.last_seen.clone();
        let (low, high) = self.config.value_padding_bytes;
        if high > 0 {
            let padding = self.rng.range(low as u64, high as u64 + 1) as usize;
            pad(&mut value, padding);
        }
        let pair = self.rng.range(0, keys.div_ceil(2)) * 2;
        let k = pair + self.rng.range(0, 2).min(keys - 1 - pair.min(keys - 1));
        let roll = self.rng.range(0, 100);
        match roll {
            0..30 => Command::Get { key: key(k) },
            30..55 => Command::Put { key: key(k), value },
            55..60 => Command::Delete { key: key(k) },
            60..75 => Command::CompareAndSwap {
                key: key(k),
                expected: if self.rng.chance(0.7) {
                    last_seen
                } else {
                    None
                },
                new: value,
            },
            75..85 => {
                let partner = (pair + 1).min(keys - 1);
                let mut pairs = vec![(key(pair), value.clone())];
                if partner != pair {
                    pairs.push((key(partner), value));
                }
                Command::MultiPut { pairs }
            }
            85..95 => {
                let partner = (pair + 1).min(keys - 1);
                let mut keys = vec![key(pair)];
                if partner != pair {
                    keys.push(key(partner));
                }
                Command::MultiGet { keys }
            }
            _ => {
                let counter = format!("n{}", self.rng.range(0, 2)).into_bytes();
                if self.rng.chance(0.5) {
                    Command::Increment {
                        key: counter,
                        by: self.rng.range(1, 10) as i64,
                    }
                } else {
                    Command::Get { key: counter }
                }
            }
        }
    }

    // ----- invariants -----
}
