//! Settings every binary names alike: the protocols, the read modes, the
//! shared timing defaults, and one syntax for durations (`250ms`, `1.5s`,
//! `1m30s`), so that kvnode, kvctl and bench parse and print them the same
//! way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The consensus protocols a node can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Figure 2 of the Raft paper, nothing more (`raft-vanilla`).
    Vanilla,
    /// Raft with batching, pipelining, parallel leader persist, ReadIndex
    /// and lease reads, pre-vote and check-quorum (`raft-optimized`).
    Optimized,
    /// Nil-ext Raft, Skyros on Raft (`raft-nilext`).
    Nilext,
}

impl Protocol {
    /// Every protocol, in the order reports list them.
    pub const ALL: [Protocol; 3] = [Protocol::Vanilla, Protocol::Optimized, Protocol::Nilext];

    /// The name flags, files and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Vanilla => "vanilla",
            Protocol::Optimized => "optimized",
            Protocol::Nilext => "nilext",
        }
    }

    /// Whether the leader's read mode can be chosen (ReadIndex or lease):
    /// vanilla Raft reads through the log.
    pub fn has_read_modes(self) -> bool {
        self != Protocol::Vanilla
    }

    /// Every name, for error messages and help: "vanilla, optimized, nilext".
    pub fn names() -> String {
        Self::ALL.map(Protocol::name).join(", ")
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown protocol {s:?}; choose one of {}", Self::names()))
    }
}

/// Whether the nodes sync their logs and votes to disk before they count
/// as written (one setting for the whole cluster, every protocol alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every log append, vote and durability-log record is synced (fsync)
    /// before the node acts on it: what is acknowledged survives the loss
    /// of every machine's power.
    #[default]
    Sync,
    /// UNSAFE against the loss of a majority: written without fsync, left
    /// to the operating system. A process that dies loses nothing (the
    /// kernel holds its writes), but a machine that crashes or loses power
    /// may lose what its node acknowledged: what is acknowledged survives
    /// only while a majority of the machines stays up. The setting of the
    /// Skyros paper and of Viewstamped Replication (logs in memory,
    /// replication for durability), and of etcd's `--unsafe-no-fsync`.
    Memory,
}

impl Durability {
    /// The name flags and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Memory => "memory",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Durability::Sync),
            "memory" => Ok(Durability::Memory),
            other => Err(format!("unknown durability {other:?}; use sync or memory")),
        }
    }
}

/// How a leader of raft-optimized or raft-nilext serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex (Raft thesis 6.4): note the commit index, confirm
    /// leadership with a heartbeat round acknowledged by a majority, answer
    /// once the state machine has applied up to the noted index. One round
    /// trip, no log entry, no disk write.
    #[default]
    ReadIndex,
    /// Lease reads (thesis 6.4.1): while a lease from the last heartbeat
    /// round acknowledged by a majority is valid, answer at once. Valid only
    /// with check-quorum, and with a margin for clock drift.
    Lease,
}

impl ReadMode {
    /// The name flags and reports use.
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read-index",
            ReadMode::Lease => "lease",
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read-index" => Ok(ReadMode::ReadIndex),
            "lease" => Ok(ReadMode::Lease),
            other => Err(format!(
                "unknown read mode {other:?}; use read-index or lease"
            )),
        }
    }
}

/// Parses a duration: one or more numbers, each with a unit (`h`, `m`, `s`,
/// `ms`, `us`), a number with a fraction allowed (`1.5s`); `0` alone needs
/// no unit. For example `250ms`, `1.5s`, `1m30s`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration like 250ms, 1.5s or 1m30s");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: a number needs a unit (h, m, s, ms or us)"))?;
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let seconds_per_unit = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" => 1e-6,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use h, m, s, ms or us)"
                ));
            }
        };
        total += value * seconds_per_unit;
        rest = after;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Prints a duration in the syntax [`parse_duration`] reads, in the
/// largest unit that shows it exactly where one does: `250ms`, `1.5s`,
/// `2m`, `1m30s`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros == 0 {
        return "0".to_string();
    }
    if !micros.is_multiple_of(1_000) {
        return format!("{micros}us");
    }
    let millis = micros / 1_000;
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    let (minutes, millis_left) = (millis / 60_000, millis % 60_000);
    let seconds = match millis_left {
        0 => String::new(),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{}s", m as f64 / 1_000.0),
    };
    match minutes {
        0 => seconds,
        m => format!("{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_one_syntax() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        for bad in ["", "5", "1.5", "s", "10 s", "1x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn durations_print_as_they_parse() {
        for text in ["250ms", "1.5s", "1m30s", "2m", "10s", "0", "750us", "61m"] {
            let duration = parse_duration(text).expect("valid");
            assert_eq!(format_duration(duration), text);
        }
    }

    #[test]
    fn protocols_and_read_modes_round_trip_by_name() {
        for protocol in Protocol::ALL {
            assert_eq!(protocol.name().parse(), Ok(protocol));
        }
        assert!(
            "paxos"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("vanilla, optimized, nilext")
        );
        for mode in [ReadMode::ReadIndex, ReadMode::Lease] {
            assert_eq!(mode.name().parse(), Ok(mode));
        }
        assert!("quorum".parse::<ReadMode>().is_err());
    }
}
