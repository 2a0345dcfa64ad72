//! What the benchmark reads off the nodes: syncs (from Status) and CPU time
//! (from /proc), before and after each run.

use std::collections::BTreeMap;

use kvnode::local_cluster::LocalCluster;

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    let ticks = 100.0;
    Some((utime + stime) / ticks)
}

/// Per-node counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Synced write batches per node.
    pub syncs: BTreeMap<u64, u64>,
    /// CPU seconds per node process.
    pub cpu: BTreeMap<u64, f64>,
}

/// Reads every running node's counters.
pub async fn snapshot(cluster: &LocalCluster) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (id, status) in cluster.statuses().await {
        snapshot.syncs.insert(id, status.synced_writes);
    }
    for &id in cluster.members().keys() {
        if let Some(cpu) = cluster.pid(id).and_then(cpu_seconds) {
            snapshot.cpu.insert(id, cpu);
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_used_some_cpu() {
        let used = super::cpu_seconds(std::process::id()).expect("readable /proc");
        assert!(used >= 0.0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(super::cpu_seconds(std::process::id()).expect("readable") >= used);
    }
}
