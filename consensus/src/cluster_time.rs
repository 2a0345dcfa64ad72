//! Cluster time, and when client sessions expire (after LogCabin's cluster
//! clock).
//!
//! Sessions must expire at the same point of the log on every replica, or
//! replicas would disagree on whether a request is a retry (answered from
//! its session) or the request of a client they forgot (refused). Local
//! clocks cannot decide that; the log can. So every entry carries a
//! [`Stamp`] its leader wrote when it created the entry:
//!
//! - `time`: the cluster time, in ticks. It advances only while a node
//!   leads (one per tick), and a new leader continues from the latest stamp
//!   it holds, so stamps never decrease along a log and cluster time never
//!   runs ahead of real time.
//! - `expire_before`: applying the entry expires every session whose last
//!   activity is older. The leader derives it from its time and its own
//!   session timeout, but never raises it faster than [`CUTOFF_RATE`] times
//!   the clock since the stamp before: a leader started with a shorter
//!   timeout closes the gap gradually, not at once.
//!
//! Replicas apply the stamp as written: expiry is a deterministic function
//! of the log, whatever the local clocks and settings.
//!
//! # Why the cutoff rises gradually: Nil-ext's fast path
//!
//! A Nil-ext write completed on the fast path is ordered later. If its
//! session expired in between, applying it would be refused and a write the
//! client was told is durable would be lost. So a replica accepts a fast
//! write only from a session that will outlive its ordering by a margin
//! ([`Stamp::keeps_fresh`]). The replica knows the stamp of its last applied
//! entry and the cluster time it reads now (the leader's clock goes on while
//! no entry is created: a quiet cluster's last stamp may be long past). From
//! the stamp, the cutoff can have risen at most [`CUTOFF_RATE`] times the
//! time since; the session must be active after that reach plus half the
//! timeout in effect, so that it survives any ordering within a quarter of
//! the timeout, in cluster time. The leader, whose acknowledgement every
//! fast write needs, orders its durability log at once; a new leader orders
//! what it recovers before anything else. kvnode refuses timeouts shorter
//! than [`session_timeout_min_ticks`] so that a quarter is many elections.

/// How much faster than the clock the expiry cutoff may rise (see the module
/// documentation).
pub const CUTOFF_RATE: u64 = 2;

/// The shortest session timeout kvnode accepts, whatever the tick.
pub const SESSION_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client may retry its first update under one id: half the
/// shortest session timeout. Applied, then expired, a copy of the first
/// update would be applied again; a client that stops retrying it after
/// this long never sends one that late.
pub const FIRST_UPDATE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// How soon after its first send a request refused as session-expired may
/// be sent again under a fresh id: no copy of it can have been applied (a
/// copy applied would have kept the session alive for a whole timeout).
pub const EXPIRED_RESEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// The shortest session timeout a node accepts, in ticks, for a base
/// election timeout of `election_timeout_ticks`: 20 election timeouts, so
/// that Nil-ext's ordering margin (a quarter of the timeout) spans five.
pub fn session_timeout_min_ticks(election_timeout_ticks: u64) -> u64 {
    20 * election_timeout_ticks
}

/// The cluster time at which a leader created an entry, and the expiry
/// cutoff it derived. All zero: no time known, nothing expires (entries
/// written before stamps existed decode so).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    /// Cluster time, in ticks.
    pub time: u64,
    /// Sessions last active before this cluster time expire when the entry
    /// is applied.
    pub expire_before: u64,
}

impl Stamp {
    /// Whether a session last active at `last_active` may still take
    /// Nil-ext's fast path, under this stamp (the latest applied) at
    /// cluster time `now`: it is active after the cutoff's farthest reach
    /// by then (`expire_before + CUTOFF_RATE * (now - time)`) plus half the
    /// timeout in effect (`time - expire_before`), so it outlives any
    /// ordering within a quarter of that timeout.
    pub fn keeps_fresh(&self, last_active: u64, now: u64) -> bool {
        let (time, cutoff) = (u128::from(self.time), u128::from(self.expire_before));
        let elapsed = u128::from(now).saturating_sub(time);
        let reach = cutoff + u128::from(CUTOFF_RATE) * elapsed;
        // Doubled, so that the half timeout rounds against the session.
        2 * u128::from(last_active) >= 2 * reach + time.saturating_sub(cutoff)
    }
}

/// A node's cluster clock: the latest stamp it knows, the time it reads
/// while it leads, and its own session timeout.
#[derive(Clone, Debug, Default)]
pub struct ClusterClock {
    now: u64,
    last: Stamp,
    session_timeout_ticks: u64,
}

impl ClusterClock {
    /// A clock that continues from `last`, the latest stamp the node holds,
    /// and expires sessions after `session_timeout_ticks` (0: never).
    pub fn new(session_timeout_ticks: u64, last: Stamp) -> Self {
        ClusterClock {
            now: last.time,
            last,
            session_timeout_ticks,
        }
    }

    /// Sets the session timeout this node's stamps enforce (0: never).
    pub fn set_session_timeout(&mut self, ticks: u64) {
        self.session_timeout_ticks = ticks;
    }

    /// Learns a stamp written by a leader (an entry received, a snapshot
    /// installed): this node's time never falls behind a stamp it holds.
    pub fn observe(&mut self, stamp: Stamp) {
        if stamp.time >= self.last.time {
            self.last = stamp;
        }
        self.now = self.now.max(stamp.time);
    }

    /// One tick passed while this node leads.
    pub fn tick(&mut self) {
        self.now += 1;
    }

    /// The time it reads now.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The stamp for an entry this node, as leader, creates now.
    pub fn stamp(&mut self) -> Stamp {
        let target = match self.session_timeout_ticks {
            0 => 0,
            timeout => self.now.saturating_sub(timeout),
        };
        let reach = self
            .last
            .expire_before
            .saturating_add(CUTOFF_RATE.saturating_mul(self.now - self.last.time));
        let stamp = Stamp {
            time: self.now,
            expire_before: target.min(reach),
        };
        self.last = stamp;
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_trails_the_clock_by_the_timeout() {
        let mut clock = ClusterClock::new(100, Stamp::default());
        for _ in 0..150 {
            clock.tick();
        }
        // From a cutoff of 0 at time 0 it may rise by 2 per tick: 300 > 50.
        assert_eq!(
            clock.stamp(),
            Stamp {
                time: 150,
                expire_before: 50
            }
        );
        clock.tick();
        assert_eq!(clock.stamp().expire_before, 51);
    }

    #[test]
    fn a_shorter_timeout_takes_effect_gradually() {
        // The previous leader expired after 1,000 ticks; this one after 100.
        let mut clock = ClusterClock::new(
            100,
            Stamp {
                time: 5_000,
                expire_before: 4_000,
            },
        );
        let mut previous = clock.last;
        for _ in 0..1_000 {
            clock.tick();
            let stamp = clock.stamp();
            assert!(stamp.expire_before <= previous.expire_before + 2);
            assert!(stamp.expire_before <= stamp.time - 100);
            previous = stamp;
        }
        // The gap of 900 closed at one tick per tick.
        assert_eq!(previous.time - previous.expire_before, 100);
    }

    #[test]
    fn a_new_leader_continues_from_the_latest_stamp_it_holds() {
        let mut clock = ClusterClock::new(10, Stamp::default());
        clock.observe(Stamp {
            time: 70,
            expire_before: 60,
        });
        clock.observe(Stamp {
            time: 65,
            expire_before: 55,
        });
        assert_eq!(clock.now(), 70);
        clock.tick();
        assert_eq!(
            clock.stamp(),
            Stamp {
                time: 71,
                expire_before: 61
            }
        );
    }

    #[test]
    fn freshness_is_half_the_timeout_in_effect() {
        let stamp = Stamp {
            time: 1_000,
            expire_before: 800,
        };
        assert!(stamp.keeps_fresh(900, 1_000));
        assert!(!stamp.keeps_fresh(899, 1_000));
        assert!(Stamp::default().keeps_fresh(0, 0));
        // 50 ticks later with no entry since, the cutoff may have risen by
        // 100.
        assert!(stamp.keeps_fresh(1_000, 1_050));
        assert!(!stamp.keeps_fresh(999, 1_050));
    }
}
