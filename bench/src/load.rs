//! The load generator: closed-loop clients (each issues its next operation
//! when the last one returns) or open-loop at a fixed rate, over the
//! project's client library, with latencies in HDR histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::target::{ConnectionSets, Target, TargetSpec};
use consensus::{Command, CommandClass, CommandResult};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::workload::{Distribution, KeyChooser, Step, Workload, next_step};

/// Width of one bucket of the throughput timeline.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(100);

/// What load to apply.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// What each operation is.
    pub workload: Workload,
    /// Concurrent clients.
    pub clients: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Number of distinct keys.
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: Distribution,
    /// Open loop: total operations per second across clients; closed loop when `None`.
    pub rate: Option<f64>,
    /// A client gives up an operation after this long.
    pub op_timeout: Duration,
    /// Sets of connections the clients share (client i uses set i % n, one
    /// connection per node in each); 0 gives every client its own.
    pub connections: usize,
}

/// What a load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Operations completed successfully.
    pub ops: u64,
    /// Of which writes (puts, deletes, multi-puts, CAS, increments).
    pub writes: u64,
    /// Operations that failed or timed out.
    pub errors: u64,
    /// Measured time.
    pub elapsed: Duration,
    /// Latency of successful operations, microseconds.
    pub latency_us: Histogram<u64>,
    /// Completed operations per [`TIMELINE_BUCKET`].
    pub timeline: Vec<u64>,
    /// When each successful write started and completed, in ms since the start.
    pub write_completions_ms: Vec<(u32, u32)>,
}

impl LoadResult {
    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct ClientTally {
    ops: u64,
    writes: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    write_completions_ms: Vec<(u32, u32)>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `spec` against the cluster at `endpoints`. `on_tick` is called about
/// every 100 ms with the elapsed time and the operations done so far (for
/// progress bars and for injecting faults at a chosen time).
pub async fn run(
    target: &TargetSpec,
    spec: &LoadSpec,
    mut on_tick: impl FnMut(Duration, u64),
) -> anyhow::Result<LoadResult> {
    let buckets = (spec.duration.as_millis() / TIMELINE_BUCKET.as_millis()) as usize + 1;
    let timeline: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.duration;
    let keys = KeyChooser::new(spec.keys, spec.distribution);
    let mut tasks = Vec::new();
    let sets = ConnectionSets::new(spec.connections);
    for i in 0..spec.clients {
        let mut client = Target::connect(target, i, spec.op_timeout, &sets).await?;
        let (spec, keys, timeline, done) =
            (spec.clone(), keys.clone(), timeline.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(0x5EED + i as u64);
            let value = vec![b'x'; spec.value_bytes];
            let mut recent = 0u64;
            let mut tally = ClientTally {
                ops: 0,
                writes: 0,
                errors: 0,
                latency_us: new_histogram(),
                write_completions_ms: Vec::new(),
            };
            let interval = spec
                .rate
                .map(|r| Duration::from_secs_f64(spec.clients as f64 / r.max(1e-6)));
            // Spread the clients' first operations over one interval.
            let offset = interval.map_or(Duration::ZERO, |every| {
                every.mul_f64(i as f64 / spec.clients as f64)
            });
            let mut next_at = start + offset;
            while Instant::now() < deadline {
                // Open loop: latency counts from the scheduled time, so a
                // slow server cannot hide its queueing (no coordinated omission).
                let scheduled = if let Some(interval) = interval {
                    let now = Instant::now();
                    if next_at > now {
                        tokio::time::sleep(next_at - now).await;
                    }
                    let at = next_at;
                    next_at += interval;
                    at
                } else {
                    Instant::now()
                };
                let commands = match next_step(&spec.workload, &keys, &mut rng, &value, &mut recent)
                {
                    Step::One(command) => vec![command],
                    Step::WriteThenRead(k, v) => vec![
                        Command::Put {
                            key: k.clone(),
                            value: v,
                        },
                        Command::Get { key: k },
                    ],
                    Step::ReadModifyWrite(k, v) => {
                        let read = client.execute(Command::Get { key: k.clone() }).await;
                        let expected = match read {
                            Ok(CommandResult::Value(v)) => v,
                            _ => {
                                tally.errors += 1;
                                continue;
                            }
                        };
                        vec![Command::CompareAndSwap {
                            key: k,
                            expected,
                            new: v,
                        }]
                    }
                };
                let mut began = scheduled;
                for command in commands {
                    let is_write = command.class() != CommandClass::Read;
                    let result = client.execute(command).await;
                    let now = Instant::now();
                    match result {
                        Ok(_) => {
                            tally.ops += 1;
                            let micros = now.duration_since(began).as_micros() as u64;
                            let _ = tally.latency_us.record(micros.max(1));
                            let since_start = now.duration_since(start);
                            let bucket =
                                (since_start.as_millis() / TIMELINE_BUCKET.as_millis()) as usize;
                            if let Some(slot) = timeline.get(bucket) {
                                slot.fetch_add(1, Ordering::Relaxed);
                            }
                            if is_write {
                                tally.writes += 1;
                                let started = began.duration_since(start).as_millis() as u32;
                                tally
                                    .write_completions_ms
                                    .push((started, since_start.as_millis() as u32));
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tally.errors += 1,
                    }
                    began = now;
                }
            }
            tally
        }));
    }
    loop {
        let elapsed = start.elapsed();
        on_tick(elapsed, done.load(Ordering::Relaxed));
        if elapsed >= spec.duration {
            break;
        }
        tokio::time::sleep(TIMELINE_BUCKET.min(spec.duration - elapsed)).await;
    }
    let mut result = LoadResult {
        ops: 0,
        writes: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
        timeline: Vec::new(),
        write_completions_ms: Vec::new(),
    };
    for task in tasks {
        let tally = task.await?;
        result.ops += tally.ops;
        result.writes += tally.writes;
        result.errors += tally.errors;
        result.latency_us.add(&tally.latency_us)?;
        result
            .write_completions_ms
            .extend(tally.write_completions_ms);
    }
    result.elapsed = start.elapsed();
    result.timeline = timeline.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    result.write_completions_ms.sort_unstable();
    Ok(result)
}
