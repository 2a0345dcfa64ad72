//! A small deterministic random number generator, so a protocol's randomized
//! election timeouts replay exactly in the simulator from a seed.

/// SplitMix64: tiny, fast, and good enough for timeouts and fault schedules.
#[derive(Clone, Debug)]
pub struct DetRng(u64);

impl DetRng {
    /// A generator from `seed`; equal seeds give equal sequences.
    pub fn new(seed: u64) -> Self {
        DetRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}
