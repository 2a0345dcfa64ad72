//! Network delay injected in user space (this machine's kernel has no
//! netem): a one-way delay with optional jitter, applied alike to every
//! message between peers and to every client request and response, at the
//! edges: as peer messages arrive (`transport`) and at the client service
//! boundary (`service`); the runtime never sees it.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use consensus::deadline::DeadlineQueue;
use consensus::lock;
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

    /// Runs `deliver` once one message's delay has passed (at once when
    /// there is none), on the delay thread: nothing else wakes for the
    /// message before then. `deliver` must not block.
    pub fn deliver_later(&self, deliver: impl FnOnce() + Send + 'static) {
        if self.is_zero() {
            deliver();
        } else {
            delay_line().add(Instant::now() + self.sample(), Box::new(deliver));
        }
    }
}

/// The sending end of one link with a delay: each message enters `queue`
/// once its delay has passed, in the order sent (jitter never reorders one
/// link's messages, as on a TCP stream through a slow link). The delay
/// thread hands it over, so no task wakes for it before it is due.
#[derive(Debug)]
pub struct DelayedSender<T> {
    queue: mpsc::Sender<T>,
    delay: NetDelay,
    /// The latest due time given out on this link.
    last_due: Arc<Mutex<Instant>>,
}

impl<T> Clone for DelayedSender<T> {
    fn clone(&self) -> Self {
        DelayedSender {
            queue: self.queue.clone(),
            delay: self.delay,
            last_due: self.last_due.clone(),
        }
    }
}

impl<T: Send + 'static> DelayedSender<T> {
    /// A link into `queue` with `delay`.
    pub fn new(queue: mpsc::Sender<T>, delay: NetDelay) -> Self {
        DelayedSender {
            queue,
            delay,
            last_due: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Sends `message` without waiting. Without a delay a full queue gives
    /// it back; with one, a message that finds the queue full when it is
    /// due is dropped, as a lossy link would drop it.
    pub fn try_send(&self, message: T) -> Result<(), T> {
        if self.delay.is_zero() {
            return self.queue.try_send(message).map_err(|e| e.into_inner());
        }
        let queue = self.queue.clone();
        let deliver = move || {
            if queue.try_send(message).is_err() {
                tracing::debug!("a delayed message found its queue full or closed; dropped");
            }
        };
        // Held while the message joins the line, so that two senders on
        // one link cannot join in the other order from their due times.
        let mut last_due = lock(&self.last_due);
        let due = (Instant::now() + self.delay.sample()).max(*last_due);
        *last_due = due;
        delay_line().add(due, Box::new(deliver));
        Ok(())
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
    delay_line().add(
        due,
        Box::new(move || {
            let _ = wake.send(());
        }),
    );
    // The line never drops a sleeper before its deadline.
    let _ = woken.await;
}

/// What to do at a deadline.
type Action = Box<dyn FnOnce() + Send>;

/// The deadlines waiting, shared by the sleepers and the delay thread.
struct DelayLine {
    /// Actions by deadline (equal deadlines in the order added).
    pending: Mutex<DeadlineQueue<Instant, Action>>,
    earlier: Condvar,
}

impl DelayLine {
    fn add(&self, due: Instant, wake: Action) {
        let mut pending = lock(&self.pending);
        let earliest = pending.earliest();
        pending.push(due, wake);
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
        let mut pending = lock(&self.pending);
        loop {
            let now = Instant::now();
            let mut due_now = Vec::new();
            while pending.earliest().is_some_and(|due| due <= now) {
                if let Some((_, wake)) = pending.pop() {
                    due_now.push(wake);
                }
            }
            if !due_now.is_empty() {
                // Outside the lock: senders add while these are carried out.
                drop(pending);
                for wake in due_now {
                    wake();
                }
                pending = lock(&self.pending);
                continue;
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
            pending: Mutex::new(DeadlineQueue::new()),
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
        let (tx, mut rx) = mpsc::channel(16);
        let link = DelayedSender::new(tx, delay);
        let start = Instant::now();
        // From two clones, as the runtime and persist threads send.
        let senders = [link.clone(), link];
        for i in 0..10 {
            assert!(senders[i % 2].try_send(i).is_ok());
        }
        drop(senders);
        for i in 0..10 {
            assert_eq!(rx.recv().await, Some(i));
            assert!(start.elapsed() >= Duration::from_millis(30), "early");
        }
        // Every sender is gone once the last message is handed over.
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn without_a_delay_a_full_queue_gives_the_message_back() {
        let (tx, _rx) = mpsc::channel(1);
        let link = DelayedSender::new(tx, NetDelay::default());
        assert_eq!(link.try_send(1), Ok(()));
        assert_eq!(link.try_send(2), Err(2));
    }

    #[tokio::test]
    async fn a_delivery_runs_after_its_delay() {
        let delay = NetDelay {
            delay: Duration::from_millis(20),
            jitter: Duration::ZERO,
        };
        let (done, ran) = oneshot::channel();
        let start = Instant::now();
        delay.deliver_later(move || {
            let _ = done.send(Instant::now());
        });
        let at = ran.await.expect("delivered");
        assert!(at - start >= Duration::from_millis(20), "early");
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
