//! Readers for the history formats of `sim/testdata/linearizability`:
//! Jepsen's etcd register logs and Porcupine's key-value EDN histories.

use std::collections::HashMap;

use crate::linearizability::{KvInput, KvOutput, Operation};

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// The register's key in Jepsen etcd histories.
pub const REGISTER_KEY: &[u8] = b"r";

/// Reads a Jepsen etcd log (one register; read, write, cas). A read that
/// timed out constrains nothing and is dropped; `:info` outcomes and
/// operations never answered are unknown; a failed cas observed a value other
/// than its expected one. Lines of other shapes are Jepsen's other output and
/// are skipped. Time is the line number.
pub fn parse_jepsen_register(text: &str) -> Result<Vec<Operation>, ParseError> {
    let mut open: HashMap<u64, Operation> = HashMap::new();
    let mut done = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let time = number as u64;
        let Some((_, event)) = line.split_once("jepsen.util - ") else {
            continue;
        };
        let fields: Vec<&str> = event.split('\t').map(str::trim).collect();
        let [process, kind, f, value] = fields[..] else {
            continue;
        };
        let Ok(process) = process.parse::<u64>() else {
            continue;
        };
        let int = |s: &str| -> Result<Vec<u8>, ParseError> {
            s.parse::<i64>()
                .map(|n| n.to_string().into_bytes())
                .map_err(|_| error(number + 1, format!("not an integer: {s:?}")))
        };
        let cas_args = |s: &str| -> Result<(Vec<u8>, Vec<u8>), ParseError> {
            let inner = s.trim_start_matches('[').trim_end_matches(']');
            let mut parts = inner.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => Ok((int(a)?, int(b)?)),
                _ => Err(error(number + 1, format!("bad cas arguments: {s:?}"))),
            }
        };
        let key = REGISTER_KEY.to_vec();
        match kind {
            ":invoke" => {
                let input = match f {
                    ":read" => KvInput::Get(key),
                    ":write" => KvInput::Put(key, int(value)?),
                    ":cas" => {
                        let (expected, new) = cas_args(value)?;
                        KvInput::Cas {
                            key,
                            expected: Some(expected),
                            new,
                        }
                    }
                    other => return Err(error(number + 1, format!("unknown operation {other}"))),
                };
                let op = Operation {
                    client: process,
                    call: time,
                    ret: None,
                    input,
                    output: None,
                };
                if let Some(previous) = open.insert(process, op) {
                    return Err(error(
                        number + 1,
                        format!("process {process} invoked again while {previous:?} is open"),
                    ));
                }
            }
            ":ok" | ":fail" | ":info" => {
                let Some(mut op) = open.remove(&process) else {
                    return Err(error(
                        number + 1,
                        format!("process {process} completes nothing"),
                    ));
                };
                match (kind, f) {
                    (":ok", ":read") => {
                        op.output = Some(KvOutput::Value(match value {
                            "nil" => None,
                            v => Some(int(v)?),
                        }));
                    }
                    (":ok", ":write") => op.output = Some(KvOutput::Written),
                    (":ok" | ":fail", ":cas") => {
                        op.output = Some(KvOutput::Cas {
                            succeeded: kind == ":ok",
                            current: None,
                        });
                    }
                    // A read that timed out returned nothing: it constrains nothing.
                    (":fail" | ":info", ":read") => continue,
                    // Definitely did not happen.
                    (":fail", _) => continue,
                    // Outcome unknown: may take effect any time after its call.
                    (":info", _) => {
                        done.push(op);
                        continue;
                    }
                    _ => return Err(error(number + 1, format!("unexpected {kind} {f}"))),
                }
                op.ret = Some(time);
                done.push(op);
            }
            _ => continue,
        }
    }
    // Never answered: unknown outcome.
    let mut rest: Vec<Operation> = open.into_values().collect();
    rest.sort_by_key(|op| op.call);
    done.extend(rest);
    Ok(done)
}

fn edn_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(name)? + name.len();
    let rest = line[start..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|end| &quoted[..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Reads a Porcupine key-value history (EDN maps, one per line: get, put,
/// append on string keys that start empty). An empty string read back is
/// recorded as an absent key, the same state for this store. Time is the
/// line number.
pub fn parse_kv_edn(text: &str) -> Result<Vec<Operation>, ParseError> {
    let mut open: HashMap<u64, Operation> = HashMap::new();
    let mut done = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let field = |name: &str| {
            edn_field(line, name).ok_or_else(|| error(number + 1, format!("missing {name}")))
        };
        let process: u64 = field(":process")?
            .parse()
            .map_err(|_| error(number + 1, "bad :process"))?;
        let (kind, f, key) = (field(":type")?, field(":f")?, field(":key")?);
        let value = edn_field(line, ":value");
        let key = key.as_bytes().to_vec();
        match kind {
            ":invoke" => {
                let value = || {
                    value
                        .map(|v| v.as_bytes().to_vec())
                        .ok_or_else(|| error(number + 1, "missing :value"))
                };
                let input = match f {
                    ":get" => KvInput::Get(key),
                    ":put" => KvInput::Put(key, value()?),
                    ":append" => KvInput::Append(key, value()?),
                    other => return Err(error(number + 1, format!("unknown operation {other}"))),
                };
                open.insert(
                    process,
                    Operation {
                        client: process,
                        call: number as u64,
                        ret: None,
                        input,
                        output: None,
                    },
                );
            }
            ":ok" => {
                let Some(mut op) = open.remove(&process) else {
                    return Err(error(
                        number + 1,
                        format!("process {process} completes nothing"),
                    ));
                };
                op.ret = Some(number as u64);
                op.output = Some(match f {
                    ":get" => KvOutput::Value(match value {
                        None | Some("") | Some("nil") => None,
                        Some(v) => Some(v.as_bytes().to_vec()),
                    }),
                    _ => KvOutput::Written,
                });
                done.push(op);
            }
            _ => return Err(error(number + 1, format!("unknown :type {kind}"))),
        }
    }
    done.extend(open.into_values());
    Ok(done)
}
