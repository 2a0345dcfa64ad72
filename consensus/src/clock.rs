//! Real time turned into ticks, for the runtimes that drive a protocol.
//!
//! Protocols count time in ticks ([`crate::Input::Tick`]). A runtime that
//! fed ticks from a periodic timer alone would let a protocol fall behind
//! real time whenever the process stalls: a SIGSTOP, a VM migration, a long
//! I/O or allocation stall, CPU starvation. The timer fires late or not at
//! all, and the inputs that waited meanwhile (peer messages, client
//! requests) are taken as if no time had passed. A leader that counts its
//! lease in ticks would then answer reads from a lease that ended, in real
//! time, long ago, while another leader commits writes: stale reads.
//!
//! So the runtime asks a [`TickClock`] before every input how many ticks
//! real time owes, and delivers them first. Whenever a protocol takes an
//! input at time `t`, it has seen exactly `(t - origin) / tick` ticks: its
//! tick count is real time, however the process was scheduled. Both
//! runtimes (kvnode's and the simulator's) do this; the simulator's pause
//! fault checks it.

/// Counts the ticks real time owes a protocol. Times are in any unit, the
/// same for every argument (kvnode uses microseconds, the simulator
/// milliseconds).
#[derive(Clone, Debug)]
pub struct TickClock {
    origin: u64,
    tick: u64,
    delivered: u64,
}

impl TickClock {
    /// A clock whose first tick falls due one `tick` after `origin`.
    /// Panics when `tick` is zero.
    pub fn new(origin: u64, tick: u64) -> Self {
        assert!(tick > 0, "a tick lasts some time");
        TickClock {
            origin,
            tick,
            delivered: 0,
        }
    }

    /// How many ticks fell due by `now` and were not yet taken; they count
    /// as taken from here on.
    pub fn take_due(&mut self, now: u64) -> u64 {
        let due = now.saturating_sub(self.origin) / self.tick;
        let owed = due.saturating_sub(self.delivered);
        self.delivered += owed;
        owed
    }

    /// When the next tick falls due.
    pub fn next_due(&self) -> u64 {
        self.origin + (self.delivered + 1) * self.tick
    }

    /// Ticks taken so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owes_every_tick_real_time_passed_once() {
        let mut clock = TickClock::new(100, 10);
        assert_eq!(clock.take_due(105), 0);
        assert_eq!(clock.next_due(), 110);
        assert_eq!(clock.take_due(110), 1);
        assert_eq!(clock.take_due(119), 0, "a tick is owed once");
        // A stall of 2,000 units: every tick it missed is owed at once.
        assert_eq!(clock.take_due(2_119), 200);
        assert_eq!(clock.delivered(), 201);
        assert_eq!(clock.next_due(), 2_120);
        // Time read from a clock that went back owes nothing.
        assert_eq!(clock.take_due(50), 0);
        assert_eq!(clock.delivered(), 201);
    }
}
