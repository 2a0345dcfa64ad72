//! The checker must reproduce every verdict of the test vectors in
//! `sim/testdata/linearizability/VERDICTS.tsv` (histories from Porcupine's
//! test data, MIT licence: see `LICENSE-PORCUPINE.md` there), and check a
//! large per-key-split history quickly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sim::history_formats::{parse_jepsen_register, parse_kv_edn};
use sim::linearizability::{KvOutput, check, generated_history};

/// The test vectors, in the repository: their absence is a failure, not a
/// skip (a checkout without them checks nothing).
fn testdata_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/linearizability");
    assert!(
        dir.join("VERDICTS.tsv").is_file(),
        "the linearizability test vectors are missing at {}",
        dir.display()
    );
    dir
}

#[test]
fn reproduces_every_verdict_of_the_test_vectors() {
    let dir = testdata_dir();
    let verdicts = std::fs::read_to_string(dir.join("VERDICTS.tsv")).expect("read VERDICTS.tsv");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in verdicts.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (file, expected) = line.split_once('\t').expect("file<TAB>verdict");
        let expected: bool = expected.trim().parse().expect("true or false");
        let text = std::fs::read_to_string(dir.join(file)).expect("read history");
        let history = if file.starts_with("jepsen-etcd/") {
            parse_jepsen_register(&text)
        } else {
            parse_kv_edn(&text)
        }
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let started = Instant::now();
        let verdict = check(&history);
        assert!(
            !matches!(verdict, sim::linearizability::Verdict::Unknown),
            "{file}: search budget exhausted"
        );
        if verdict.is_linearizable() != expected {
            wrong.push(format!("{file}: expected {expected}, got {verdict:?}"));
        }
        eprintln!("{file}: {} ops, {:?}", history.len(), started.elapsed());
        checked += 1;
    }
    assert_eq!(checked, 108, "VERDICTS.tsv should list 108 histories");
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

/// A history of 10,000 operations by 20 clients over 100 keys, with
/// overlapping intervals, must check within seconds once split per key.
#[test]
fn checks_a_ten_thousand_operation_history_within_seconds() {
    let mut history = generated_history(10_000, 20, 100, 42);
    let started = Instant::now();
    let verdict = check(&history);
    let elapsed = started.elapsed();
    assert!(verdict.is_linearizable(), "{verdict:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    // Corrupt one read: the checker must notice.
    let position = history
        .iter()
        .rposition(|op| matches!(op.output, Some(KvOutput::Value(Some(_)))))
        .expect("some read saw a value");
    history[position].output = Some(KvOutput::Value(Some(b"never written".to_vec())));
    assert!(!check(&history).is_linearizable());
}
