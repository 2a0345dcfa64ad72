//! Network delay injected in user space (this machine's kernel has no
//! netem): a one-way delay with optional jitter, applied alike to every
//! message between peers and to every client request and response.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// A one-way delay with uniform jitter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetDelay {
    /// Base one-way delay.
    pub delay: Duration,
    /// Up to this much more, drawn uniformly per message.
    pub jitter: Duration,
}

impl NetDelay {
    /// True when no delay is configured.
    pub fn is_zero(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero()
    }

    /// One message's delay.
    pub fn sample(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let extra = rand::random::<u64>() % (self.jitter.as_micros() as u64 + 1);
        self.delay + Duration::from_micros(extra)
    }

    /// Waits one message's delay.
    pub async fn wait(&self) {
        if !self.is_zero() {
            sleep_until(Instant::now() + self.sample()).await;
        }
    }

    /// A channel whose messages come out of the returned receiver delayed,
    /// in the order they went in (like a TCP stream through a slow link:
    /// jitter never reorders one link's messages).
    pub fn delayed<T: Send + 'static>(
        self,
        mut input: mpsc::Receiver<T>,
        capacity: usize,
    ) -> mpsc::Receiver<T> {
        if self.is_zero() {
            return input;
        }
        // One task stamps each message with its due time as it enters the
        // link, another lets it out when due: the stamps are monotone, so
        // the second only ever waits for the oldest.
        let (stamped_tx, mut stamped) = mpsc::channel::<(Instant, T)>(capacity);
        let (output, delayed) = mpsc::channel(capacity);
        tokio::spawn(async move {
            let mut last_due = Instant::now();
            while let Some(message) = input.recv().await {
                let due = (Instant::now() + self.sample()).max(last_due);
                last_due = due;
                if stamped_tx.send((due, message)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((due, message)) = stamped.recv().await {
                sleep_until(due).await;
                if output.send(message).await.is_err() {
                    return;
                }
            }
        });
        delayed
    }
}

/// Sleeps until `due` with the precision of a thread's timed wait (tens of
/// microseconds). tokio's timer has a 1 ms granularity and rounds up, which
/// would turn an injected 1 ms delay into 1 to 2 ms per hop; so one
/// process-wide thread keeps the pending deadlines and wakes each sleeper
/// on time.
pub async fn sleep_until(due: Instant) {
    if due <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    delay_line().add(due, wake);
    // The line never drops a sleeper before its deadline.
    let _ = woken.await;
}

/// The deadlines waiting, shared by the sleepers and the delay thread.
struct DelayLine {
    pending: Mutex<Pending>,
    earlier: Condvar,
}

#[derive(Default)]
struct Pending {
    /// Sleepers in a min-heap by deadline.
    sleepers: BinaryHeap<Reverse<Sleeper>>,
    next_seq: u64,
}

/// One sleeper, ordered by its deadline; a sequence number keeps equal
/// deadlines in arrival order.
struct Sleeper {
    due: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Sleeper {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Sleeper {}

impl PartialOrd for Sleeper {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sleeper {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl Pending {
    fn earliest(&self) -> Option<Instant> {
        self.sleepers.peek().map(|Reverse(sleeper)| sleeper.due)
    }
}

impl DelayLine {
    fn add(&self, due: Instant, wake: oneshot::Sender<()>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = pending.earliest();
        let seq = pending.next_seq;
        pending.next_seq += 1;
        pending.sleepers.push(Reverse(Sleeper { due, seq, wake }));
        drop(pending);
        // The thread sleeps until the earliest deadline; it needs waking
        // only when this one comes sooner (with a fixed delay, deadlines
        // arrive in order and it almost never does).
        if earliest.is_none_or(|earliest| due < earliest) {
            self.earlier.notify_one();
        }
    }

    fn run(&self) {
        // The kernel may defer a thread's timed wake-up by its timer slack
        // (50 microseconds by default); this thread's waits should end on
        // time.
        if let Err(error) = nix::sys::prctl::set_timerslack(1_000) {
            tracing::debug!(%error, "could not lower the delay thread's timer slack");
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while pending.earliest().is_some_and(|due| due <= now) {
                if let Some(Reverse(sleeper)) = pending.sleepers.pop() {
                    let _ = sleeper.wake.send(());
                }
            }
            let next = pending.earliest();
            pending = match next {
                None => self
                    .earlier
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(due) => {
                    let timeout = due.saturating_duration_since(now);
                    match self.earlier.wait_timeout(pending, timeout) {
                        Ok((guard, _)) => guard,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        }
    }
}

fn delay_line() -> &'static DelayLine {
    static LINE: OnceLock<&'static DelayLine> = OnceLock::new();
    LINE.get_or_init(|| {
        let line: &'static DelayLine = Box::leak(Box::new(DelayLine {
            pending: Mutex::new(Pending::default()),
            earlier: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("net-delay".into())
            .spawn(move || line.run())
            .expect("spawn the network delay thread");
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_late_and_in_order() {
        let delay = NetDelay {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(20),
        };
        let (tx, rx) = mpsc::channel(16);
        let mut rx = delay.delayed(rx, 16);
        let start = Instant::now();
        for i in 0..10 {
            tx.send(i).await.expect("send");
        }
        for i in 0..10 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(start.elapsed() >= Duration::from_millis(30));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn sleepers_wake_at_their_deadlines_not_before() {
        let start = Instant::now();
        let offsets_ms = [7u64, 2, 5, 2, 0];
        let sleepers = offsets_ms.iter().map(|&ms| {
            let due = start + Duration::from_millis(ms);
            tokio::spawn(async move {
                sleep_until(due).await;
                (Instant::now(), due)
            })
        });
        let mut woke = Vec::new();
        for sleeper in sleepers.collect::<Vec<_>>() {
            let (at, due) = sleeper.await.expect("sleeper");
            assert!(at >= due, "woke {:?} early", due - at);
            woke.push((at, due));
        }
        woke.sort();
        let dues: Vec<Instant> = woke.iter().map(|(_, due)| *due).collect();
        let mut sorted = dues.clone();
        sorted.sort();
        assert_eq!(dues, sorted, "woken out of deadline order");
    }
}
