//! Workloads and key distributions.

use consensus::Command;
use rand::Rng;
use rand::rngs::SmallRng;

/// A workload: what each client operation is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Workload {
    /// Puts only (nilext writes).
    Write,
    /// `percent` writes (puts), the rest gets.
    Mixed {
        /// Share of writes, 0..=100.
        percent: u8,
    },
    /// Write a key, then read it back at once: the case where Nil-ext must
    /// order its durability log before answering.
    ReadRecent,
    /// YCSB A: 50% reads, 50% updates.
    YcsbA,
    /// YCSB B: 95% reads, 5% updates.
    YcsbB,
    /// YCSB C: reads only.
    YcsbC,
    /// YCSB D: 95% reads of recently inserted keys, 5% inserts.
    YcsbD,
    /// YCSB F: 50% reads, 50% read-modify-write (get, then compare-and-swap).
    YcsbF,
    /// `percent` non-nilext updates (increments), the rest puts.
    NonNilext {
        /// Share of increments, 0..=100.
        percent: u8,
    },
}

impl Workload {
    /// Parses a workload name: write, mixed-P, read-recent, ycsb-a|b|c|d|f,
    /// nonnilext-P.
    pub fn parse(name: &str) -> Result<Workload, String> {
        let percent = |rest: &str| -> Result<u8, String> {
            rest.parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{name:?}: the percentage must be 0..=100"))
        };
        Ok(match name {
            "write" => Workload::Write,
            "read-recent" => Workload::ReadRecent,
            "ycsb-a" => Workload::YcsbA,
            "ycsb-b" => Workload::YcsbB,
            "ycsb-c" | "read" => Workload::YcsbC,
            "ycsb-d" => Workload::YcsbD,
            "ycsb-f" => Workload::YcsbF,
            other => {
                if let Some(rest) = other.strip_prefix("mixed-") {
                    Workload::Mixed {
                        percent: percent(rest)?,
                    }
                } else if let Some(rest) = other.strip_prefix("nonnilext-") {
                    Workload::NonNilext {
                        percent: percent(rest)?,
                    }
                } else {
                    return Err(format!(
                        "unknown workload {other:?}; use write, mixed-P, read-recent, ycsb-a, ycsb-b, ycsb-c, ycsb-d, ycsb-f or nonnilext-P"
                    ));
                }
            }
        })
    }

    /// The workload's name as `parse` takes it.
    pub fn name(&self) -> String {
        match self {
            Workload::Write => "write".into(),
            Workload::Mixed { percent } => format!("mixed-{percent}"),
            Workload::ReadRecent => "read-recent".into(),
            Workload::YcsbA => "ycsb-a".into(),
            Workload::YcsbB => "ycsb-b".into(),
            Workload::YcsbC => "ycsb-c".into(),
            Workload::YcsbD => "ycsb-d".into(),
            Workload::YcsbF => "ycsb-f".into(),
            Workload::NonNilext { percent } => format!("nonnilext-{percent}"),
        }
    }
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's zipfian (theta 0.99): a few keys are hot.
    Zipfian,
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            other => Err(format!(
                "unknown distribution {other:?}; use uniform or zipfian"
            )),
        }
    }
}

/// Draws key numbers in `0..n` (Gray et al.'s zipfian generator, as YCSB).
#[derive(Clone, Debug)]
pub struct KeyChooser {
    n: u64,
    distribution: Distribution,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl KeyChooser {
    /// A chooser over `n` keys.
    pub fn new(n: u64, distribution: Distribution) -> Self {
        let n = n.max(1);
        let theta = 0.99;
        let zeta_n = if distribution == Distribution::Zipfian {
            zeta(n, theta)
        } else {
            1.0
        };
        let zeta_2 = zeta(2, theta);
        KeyChooser {
            n,
            distribution,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    /// The next key number.
    pub fn next(&self, rng: &mut SmallRng) -> u64 {
        match self.distribution {
            Distribution::Uniform => rng.random_range(0..self.n),
            Distribution::Zipfian => {
                let u: f64 = rng.random();
                let uz = u * self.zeta_n;
                if uz < 1.0 {
                    return 0;
                }
                if uz < 1.0 + 0.5f64.powf(self.theta) {
                    return 1.min(self.n - 1);
                }
                let k = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
                k.min(self.n - 1)
            }
        }
    }
}

/// The key for key number `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("user{i:010}").into_bytes()
}

/// One step of a client's work: one or two commands (read-modify-write and
/// read-recent need the first's result).
#[derive(Debug, Clone)]
pub enum Step {
    /// One command.
    One(Command),
    /// Put a key, then read it.
    WriteThenRead(Vec<u8>, Vec<u8>),
    /// Read a key, then swap it from what was read.
    ReadModifyWrite(Vec<u8>, Vec<u8>),
}

/// Draws the next step of `workload`.
pub fn next_step(
    workload: &Workload,
    keys: &KeyChooser,
    rng: &mut SmallRng,
    value: &[u8],
    recent: &mut u64,
) -> Step {
    let k = key(keys.next(rng));
    let put = |k: Vec<u8>| Command::Put {
        key: k,
        value: value.to_vec(),
    };
    let roll: u8 = rng.random_range(0..100);
    match workload {
        Workload::Write => Step::One(put(k)),
        Workload::Mixed { percent } => Step::One(if roll < *percent {
            put(k)
        } else {
            Command::Get { key: k }
        }),
        Workload::ReadRecent => Step::WriteThenRead(k, value.to_vec()),
        Workload::YcsbA => Step::One(if roll < 50 {
            Command::Get { key: k }
        } else {
            put(k)
        }),
        Workload::YcsbB => Step::One(if roll < 95 {
            Command::Get { key: k }
        } else {
            put(k)
        }),
        Workload::YcsbC => Step::One(Command::Get { key: k }),
        Workload::YcsbD => {
            if roll < 5 {
                *recent += 1;
                Step::One(put(key(keys.n + *recent)))
            } else {
                let back = keys.next(rng).min(*recent);
                Step::One(Command::Get {
                    key: key(keys.n + *recent - back),
                })
            }
        }
        Workload::YcsbF => {
            if roll < 50 {
                Step::One(Command::Get { key: k })
            } else {
                Step::ReadModifyWrite(k, value.to_vec())
            }
        }
        Workload::NonNilext { percent } => Step::One(if roll < *percent {
            Command::Increment {
                key: format!("counter{}", keys.next(rng) % 64).into_bytes(),
                by: 1,
            }
        } else {
            put(k)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn workload_names_round_trip_and_bad_names_are_explained() {
        for name in [
            "write",
            "mixed-30",
            "read-recent",
            "ycsb-a",
            "ycsb-b",
            "ycsb-c",
            "ycsb-d",
            "ycsb-f",
            "nonnilext-10",
        ] {
            assert_eq!(Workload::parse(name).expect("valid").name(), name);
        }
        assert!(Workload::parse("mixed-130").is_err());
        assert!(
            Workload::parse("tpcc")
                .expect_err("unknown")
                .contains("unknown workload")
        );
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let chooser = KeyChooser::new(1000, Distribution::Zipfian);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        let hottest = counts[0];
        let median = {
            let mut sorted = counts.clone();
            sorted.sort();
            sorted[500]
        };
        assert!(
            hottest > 50 * median.max(1),
            "hottest {hottest}, median {median}"
        );
        let uniform = KeyChooser::new(1000, Distribution::Uniform);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[uniform.next(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40 && c < 200));
    }
}
