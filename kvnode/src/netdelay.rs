//! Network delay injected in user space (this machine's kernel has no
//! netem): a one-way delay with optional jitter, applied alike to every
//! message between peers and to every client request and response.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

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
            tokio::time::sleep(self.sample()).await;
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
        let (output, delayed) = mpsc::channel(capacity);
        tokio::spawn(async move {
            let mut queue: VecDeque<(Instant, T)> = VecDeque::new();
            let mut last_due = Instant::now();
            let mut open = true;
            while open || !queue.is_empty() {
                let next_due = queue.front().map(|(due, _)| *due);
                tokio::select! {
                    message = input.recv(), if open && queue.len() < capacity => match message {
                        Some(message) => {
                            let due = (Instant::now() + self.sample()).max(last_due);
                            last_due = due;
                            queue.push_back((due, message));
                        }
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                        if let Some((_, message)) = queue.pop_front()
                            && output.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        delayed
    }
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
}
