//! Client histories: how the simulator and the process-level harness record
//! operations for the checker (`to_input`, `to_output`), and one line per
//! operation for people (`describe`, `show_input`, `show_output`).

use consensus::{Command, CommandResult};

use crate::linearizability::{KvInput, KvOutput, Operation};

/// The checker's view of a command.
pub fn to_input(command: &Command) -> KvInput {
    match command.clone() {
        Command::Put { key, value } => KvInput::Put(key, value),
        Command::Delete { key } => KvInput::Delete(key),
        Command::MultiPut { pairs } => KvInput::MultiPut(pairs),
        Command::CompareAndSwap { key, expected, new } => KvInput::Cas { key, expected, new },
        Command::Increment { key, by } => KvInput::Increment(key, by),
        Command::Get { key } => KvInput::Get(key),
        Command::MultiGet { keys } => KvInput::MultiGet(keys),
    }
}

/// The checker's view of a result.
pub fn to_output(result: &CommandResult) -> KvOutput {
    match result.clone() {
        CommandResult::Written => KvOutput::Written,
        CommandResult::Value(v) => KvOutput::Value(v),
        CommandResult::Values(v) => KvOutput::Values(v),
        CommandResult::Swapped { succeeded, current } => KvOutput::Cas {
            succeeded,
            current: Some(current),
        },
        CommandResult::Counter(n) => KvOutput::Counter(n),
        CommandResult::Failed(_) => KvOutput::Failed,
    }
}

/// Bytes as text when they are UTF-8, else as hex.
pub fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!(
            "0x{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

fn show_opt(value: &Option<Vec<u8>>) -> String {
    value.as_deref().map_or("absent".to_string(), show)
}

pub fn show_input(input: &KvInput) -> String {
    match input {
        KvInput::Get(k) => format!("get {}", show(k)),
        KvInput::MultiGet(keys) => format!(
            "mget {}",
            keys.iter().map(|k| show(k)).collect::<Vec<_>>().join(" ")
        ),
        KvInput::Put(k, v) => format!("put {} = {}", show(k), show(v)),
        KvInput::Delete(k) => format!("delete {}", show(k)),
        KvInput::MultiPut(pairs) => format!(
            "mput {}",
            pairs
                .iter()
                .map(|(k, v)| format!("{} = {}", show(k), show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        KvInput::Cas { key, expected, new } => {
            format!(
                "cas {} from {} to {}",
                show(key),
                show_opt(expected),
                show(new)
            )
        }
        KvInput::Increment(k, by) => format!("incr {} by {by}", show(k)),
        KvInput::Append(k, v) => format!("append {} += {}", show(k), show(v)),
    }
}

pub fn show_output(output: &KvOutput) -> String {
    match output {
        KvOutput::Written => "ok".into(),
        KvOutput::Value(v) => show_opt(v),
        KvOutput::Values(values) => values.iter().map(show_opt).collect::<Vec<_>>().join(" "),
        KvOutput::Cas { succeeded, current } => match current {
            Some(current) => format!(
                "{} (found {})",
                if *succeeded { "swapped" } else { "not swapped" },
                show_opt(current)
            ),
            None => (if *succeeded { "swapped" } else { "not swapped" }).into(),
        },
        KvOutput::Counter(n) => n.to_string(),
        KvOutput::Failed => "failed".into(),
    }
}

/// One line describing an operation of a history.
pub fn describe(op: &Operation) -> String {
    let ret = op.ret.map_or("?".to_string(), |r| r.to_string());
    let output = op
        .output
        .as_ref()
        .map_or("unknown outcome".to_string(), show_output);
    let printable = |s: String| s.chars().take(160).collect::<String>();
    format!(
        "client {:x} [{} .. {}] {} -> {}",
        op.client,
        op.call,
        ret,
        printable(show_input(&op.input)),
        printable(output)
    )
}
